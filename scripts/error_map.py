"""Where a restored image differs from its ground truth, for several checkpoints side by side.

PSNR says how much a model changed a clean (or barely degraded) photo, not how. This restores one
input with each checkpoint (the default path of ``mofme restore``) and prints per checkpoint: the
PSNR, the mean shift in grey levels (a global darkening reads as haze removal), the squared error
below and above an 8-pixel Gaussian blur (coarse shift against fine-scale change), and the ratio of
the error's horizontal to vertical gradient (above 1: the error is made of vertical strokes, as
when thin vertical structure is taken for rain streaks). It writes the maps |error| x 8 side by
side, one per checkpoint, labelled.

    python scripts/error_map.py data/bench/images/test_clean/input/00003.png \
        runs/stage3_image_soup.safetensors runs/image_stage7_a/model_last.safetensors \
        --labels bundled "stage 7" --out docs/results/stage7_clean_motorcycle_error.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mofme.api import Restorer
from mofme.checkpoint import load
from mofme.data.synth.items import psnr_u8
from mofme.data.weather.common import gaussian_blur


def error_stats(restored: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """``(H, W, 3)`` uint8 images -> PSNR, mean shift, coarse / fine squared error and the
    error's horizontal-to-vertical gradient ratio."""
    err = restored.astype(np.float64) - gt.astype(np.float64)
    coarse = gaussian_blur(err, 8.0).astype(np.float64)
    grey = err.mean(axis=2)
    gx = np.abs(np.diff(grey, axis=1)).mean()
    gy = np.abs(np.diff(grey, axis=0)).mean()
    return {
        "psnr": psnr_u8(restored, gt),
        "mean_shift": float(err.mean()),
        "mse_coarse": float((coarse**2).mean()),
        "mse_fine": float(((err - coarse) ** 2).mean()),
        "gradient_x_over_y": float(gx / max(gy, 1e-12)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("input", type=Path, help="input image; its ground truth is ../gt/<name>")
    ap.add_argument("ckpts", nargs="+")
    ap.add_argument("--gt", type=Path, default=None, help="ground truth (default: ../gt/<name>)")
    ap.add_argument("--labels", nargs="+", default=None, help="one label per checkpoint")
    ap.add_argument("--out", type=Path, required=True, help="PNG of the error maps")
    args = ap.parse_args()
    labels = args.labels or [Path(c).parent.name for c in args.ckpts]
    if len(labels) != len(args.ckpts):
        ap.error(f"{len(labels)} labels for {len(args.ckpts)} checkpoints")
    gt_path = args.gt or args.input.parent.parent / "gt" / args.input.name
    image = Image.open(args.input).convert("RGB")
    gt = np.asarray(Image.open(gt_path).convert("RGB"))
    maps = []
    for ckpt, label in zip(args.ckpts, labels, strict=True):
        restored = np.asarray(Restorer(load(ckpt)).restore(image))
        stats = error_stats(restored, gt)
        print(f"{label}: " + ", ".join(f"{k} {v:.2f}" for k, v in stats.items()))
        err = np.abs(restored.astype(np.float64) - gt.astype(np.float64)).mean(axis=2)
        tile = Image.fromarray(np.clip(err * 8, 0, 255).astype(np.uint8)).convert("RGB")
        ImageDraw.Draw(tile).text((6, 4), f"{label}: |error| x8", fill=(255, 255, 0))
        maps.append(np.asarray(tile))
    gap = np.full((gt.shape[0], 8, 3), 255, np.uint8)
    row = [m for pair in zip(maps, [gap] * len(maps), strict=True) for m in pair][:-1]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(row, axis=1)).save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
