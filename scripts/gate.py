"""The release gate for a new bundled image model (``scripts/selection.py``, stages 6-9): pass or
fail on the held-out benchmark, never a score to tune on.

Reads two ``scripts/quality_study.py`` reports (``OUT.json``) — the candidate's and the bundled
model's — and checks that the candidate keeps the issue's bars the bundled model meets (clean
>= 38 dB, token-grid ratio <= 1.1), does less harm at light severity (a worst light gain above
the bundled model's) and gives up at most 0.1 dB of the bundled mean medium gain. Prints one
line per criterion; exits 1 when any fails.

    python scripts/quality_study.py --bench data/bench --image CKPT --out runs/q_candidate
    python scripts/gate.py runs/q_candidate.json docs/results/quality_after.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mofme.results import severity_gains

CLEAN_BAR = 38.0
GRID_BAR = 1.1
MEDIUM_SLACK = 0.1


def summary(image: dict[str, Any]) -> dict[str, float]:
    """Clean PSNR, grid ratio and mean / worst gains per severity of a quality_study image part."""
    sets = image["sets"]
    gains = severity_gains({k: v["psnr"] for k, v in sets.items()},
                           {k: v["input_psnr"] for k, v in sets.items()})  # fmt: skip
    out = {"clean": sets["clean"]["psnr"], "grid": image["grid_ratio"]}
    for sev, g in gains.items():
        out[f"gain_{sev}"], out[f"worst_{sev}"] = g["mean"], g["worst"]
    return out


def gate(candidate: dict[str, float], bundled: dict[str, float]) -> list[tuple[str, bool]]:
    """(criterion, passed) pairs for ``candidate`` against ``bundled`` (both from :func:`summary`)."""
    medium_floor = bundled["gain_medium"] - MEDIUM_SLACK
    return [
        (f"clean {candidate['clean']:.2f} dB >= {CLEAN_BAR}", candidate["clean"] >= CLEAN_BAR),
        (f"grid ratio {candidate['grid']:.3f} <= {GRID_BAR}", candidate["grid"] <= GRID_BAR),
        (f"worst light gain {candidate['worst_light']:+.2f} dB > bundled "
         f"{bundled['worst_light']:+.2f}", candidate["worst_light"] > bundled["worst_light"]),
        (f"mean medium gain {candidate['gain_medium']:+.2f} dB >= bundled "
         f"{bundled['gain_medium']:+.2f} - {MEDIUM_SLACK}", candidate["gain_medium"] >= medium_floor),
    ]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("candidate", type=Path, help="quality_study.py report of the candidate")
    ap.add_argument("bundled", type=Path, help="quality_study.py report of the bundled model")
    args = ap.parse_args()
    cand, base = (
        summary(json.loads(p.read_text())["image"]) for p in (args.candidate, args.bundled)
    )
    checks = gate(cand, base)
    for text, ok in checks:
        print(f"{'pass' if ok else 'FAIL'}  {text}")
    sys.exit(0 if all(ok for _, ok in checks) else 1)


if __name__ == "__main__":
    main()
