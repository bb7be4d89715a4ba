"""Model-size and crop-size pilot for the bundled image model: equal wall-clock budgets.

Each variant of ``configs/bundled_image.yaml`` (a wider token dimension, a wider full-resolution
conv head and tail, smaller or larger training crops) is trained from scratch for the same
number of seconds on this machine (a short probe measures its steps per second first, so a
slower variant gets fewer steps), then scored on the held-out benchmark (``mofme synth bench``:
photos no training set uses), whole images, one image per set: mean gain at light, medium and
heavy severity, and clean photos (do no harm). Lanes run side by side (one core each).

    python scripts/size_pilot.py --data data/aw4 --bench data/bench --budget 540 \
        --out docs/results/size_pilot --lanes 2

Writes ``OUT.md`` and ``OUT.json``; runs go to ``runs/pilot_<variant>``.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mofme.checkpoint import load
from mofme.data.pairs import find_pairs
from mofme.evaluate import InputAsOutput, evaluate_images

BASE = "configs/bundled_image.yaml"
SEVERITIES = ("light", "medium", "heavy")
VARIANTS: dict[str, list[str]] = {
    "dim64-crop128 (bundled)": [],
    "dim64-crop96": ["data.crop=96"],
    "dim96-crop128": ["model.dim=96"],
    "dim64-head32-crop128": ["model.head_channels=32", "model.unpatch_channels=48"],
}


def _slug(name: str) -> str:
    return name.split(" ")[0]


def _train(data: str, name: str, sets: list[str], steps: int, out: Path) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "mofme.cli", "train", BASE, "--overwrite", "--no-progress",
        "--out", str(out), "--steps", str(steps),
        "--set", f"data.root={data}", "--set", "train.val_every=0",
        "--set", f"train.ckpt_every={max(steps, 1)}", "--set", "train.tensorboard=false",
        "--set", "train.warmup_steps=" + str(min(100, max(1, steps // 10))),
    ]  # fmt: skip
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return {"seconds": seconds, "steps": steps, "steps_per_s": log[-1].get("steps_per_s")}


def run_variant(name: str, args: argparse.Namespace) -> dict[str, Any]:
    sets = VARIANTS[name]
    out = Path("runs") / f"pilot_{_slug(name)}"
    probe = _train(args.data, name, sets, args.probe_steps, out)
    # Steps per second of the whole run (startup included) from the probe's own clock.
    sps = float(probe["steps_per_s"] or args.probe_steps / probe["seconds"])
    steps = max(args.probe_steps, int(args.budget * sps))
    run = _train(args.data, name, sets, steps, out)
    return {
        "variant": name,
        "overrides": sets,
        **run,
        **score(out / "model_last.safetensors", args.bench),
    }


def score(ckpt: Path, bench: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    model = load(ckpt)
    pairs = find_pairs(bench / "images", "mofme", "test")
    firsts: dict[str, Any] = {}
    for p in pairs:
        firsts.setdefault(p.group, p)
    pairs = list(firsts.values())
    base = {
        r["name"]: r["psnr"]
        for r in evaluate_images(InputAsOutput(), pairs, progress=False, flops_size=None).rows
    }
    res = {
        r["name"]: r["psnr"]
        for r in evaluate_images(model, pairs, progress=False, flops_size=None).rows
    }
    gains: dict[str, list[float]] = {}
    for name, psnr in res.items():
        if name == "clean":
            continue
        gains.setdefault(name.rsplit("_", 1)[-1], []).append(psnr - base[name])
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "clean_psnr": res["clean"],
        **{f"gain_{sev}": float(np.mean(g)) for sev, g in gains.items()},
        **{f"worst_{sev}": float(min(g)) for sev, g in gains.items()},
    }


def markdown(rows: list[dict[str, Any]], budget: float) -> str:
    lines = [
        f"Equal wall-clock budget: {budget:.0f} s of training per variant (one core each, two "
        "variants at a time), from scratch on the same data; held-out benchmark, one image per "
        "set, whole images.",
        "",
        "| variant | params | steps | clean PSNR | gain light (worst) | gain medium (worst) "
        "| gain heavy (worst) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        g = {sev: f"{r[f'gain_{sev}']:+.2f} ({r[f'worst_{sev}']:+.2f})" for sev in SEVERITIES}
        clean = "∞" if math.isinf(r["clean_psnr"]) else f"{r['clean_psnr']:.2f}"
        lines.append(
            f"| {r['variant']} | {r['params'] / 1e6:.2f} M | {r['steps']} | {clean} | "
            f"{g['light']} | {g['medium']} | {g['heavy']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="data/aw4", help="training data (mofme layout)")
    ap.add_argument("--bench", type=Path, default=Path("data/bench"))
    ap.add_argument("--budget", type=float, default=540.0, help="training seconds per variant")
    ap.add_argument("--probe-steps", type=int, default=30)
    ap.add_argument("--lanes", type=int, default=2, help="variants trained at once")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--out", type=Path, default=Path("docs/results/size_pilot"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    with ThreadPoolExecutor(args.lanes) as pool:
        rows = list(pool.map(lambda v: run_variant(v, args), args.variants))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1, default=float))
    md = markdown(rows, args.budget)
    args.out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
