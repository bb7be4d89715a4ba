"""Dark specks of video checkpoints on the held-out snowy clips (issue: trustworthy restoration).

A snow model that over-subtracts leaves a dark, often reddish speck where a flake was; PSNR
barely sees it. For each checkpoint this restores every snowy clip of a benchmark written by
``mofme synth bench`` (held-out photos, 192x256) frame by frame with the reference-frame path
of ``mofme video`` and reports PSNR beside :func:`mofme.metrics.dark_speck_share` (pixels per
thousand whose most darkened channel dips below the clean frame by more than its neighbourhood's
error, where the snowy input did not), per clip, per frame and on average, first frame (no
reference yet) apart from the others.

    python scripts/speck_check.py --bench data/bench --video runs/stage3_video.safetensors \
        --video runs/video_stage4b/model_last.safetensors --out docs/results/specks
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mofme.checkpoint import load
from mofme.data.pairs import find_videos
from mofme.evaluate import Sample, evaluate_videos
from mofme.metrics import dark_speck_share


class Specks:
    """An observer for :func:`mofme.evaluate.evaluate_videos`: the dark-speck share of every
    scored frame, so the clips are restored once for PSNR and specks alike."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def __call__(self, s: Sample) -> None:
        if s.target is None or s.record is None:
            return
        specks = 1000 * dark_speck_share(s.output, s.target, s.input)
        self.rows.append(dict(clip=s.group, frame=s.index, psnr=s.record.psnr, specks=specks))

    def summary(self) -> dict[str, Any]:
        """Means over all frames, the first frames, the others, per frame index and per clip."""
        rows = self.rows

        def mean(key: str, sel: list[dict[str, Any]]) -> float:
            return float(np.mean([r[key] for r in sel]))

        return {
            "psnr": mean("psnr", rows),
            "specks": mean("specks", rows),
            "specks_first": mean("specks", [r for r in rows if r["frame"] == 0]),
            "specks_other": mean("specks", [r for r in rows if r["frame"] > 0]),
            "by_frame": [
                round(mean("specks", [r for r in rows if r["frame"] == t]), 2)
                for t in sorted({r["frame"] for r in rows})
            ],
            "per_clip": {
                c: {
                    k: round(mean(k, [r for r in rows if r["clip"] == c]), 3)
                    for k in ("psnr", "specks")
                }
                for c in sorted({r["clip"] for r in rows})
            },
        }


def check(ckpt: str | Path, bench: Path) -> dict[str, Any]:
    """Restore the benchmark's snowy clips with checkpoint ``ckpt``; PSNR and dark specks."""
    specks = Specks()
    videos = find_videos(bench / "video", "test")
    evaluate_videos(load(ckpt), videos, progress=False, flops_size=None, observers=[specks])
    return {"ckpt": str(ckpt), **specks.summary()}


def markdown(results: list[dict[str, Any]]) -> str:
    clips = list(results[0]["per_clip"])
    head = "| checkpoint | PSNR | specks / 1000 px | first frame | other frames | "
    head += " | ".join(f"clip {c}" for c in clips) + " |"
    lines = [head, "|" + "---|" * (5 + len(clips))]
    for r in results:
        per = " | ".join(f"{r['per_clip'][c]['specks']:.2f}" for c in clips)
        lines.append(
            f"| `{r['ckpt']}` | {r['psnr']:.2f} | {r['specks']:.2f} | {r['specks_first']:.2f} | "
            f"{r['specks_other']:.2f} | {per} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench", type=Path, required=True)
    ap.add_argument("--video", action="append", required=True, help="checkpoint (repeatable)")
    ap.add_argument("--out", type=Path, required=True, help="writes OUT.md and OUT.json")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = [check(c, args.bench) for c in args.video]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
