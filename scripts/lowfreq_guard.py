"""Would shrinking a restoration's faint, smooth change help? A check on a selection set.

The bundled model's harm to clean and lightly degraded photos is mostly a faint global darkening
(it reads a soft, bright photo as hazy; README, "Where the light-severity harm comes from"). This
tests an inference-time guard against it, without retraining: split the model's correction
``c = restored - input`` into its smooth part ``low`` (a Gaussian blur of ``sigma`` pixels, or the
per-channel mean with ``dc``) and the rest, soft-threshold the smooth part by ``t`` grey levels,
and add it back: ``input + (c - low) + sign(low) * max(|low| - t, 0)``. It prints the mean gain per
set and per severity and the clean PSNR for each variant. Run it on a selection set, never on
the held-out photos: the thresholds are tuned here.

    python scripts/lowfreq_guard.py data/valsel_third/images src/mofme/weights/mofme_tiny_allweather.safetensors
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from mofme.checkpoint import load
from mofme.data.io import read_image, to_uint8
from mofme.data.pairs import find_pairs
from mofme.data.synth.items import psnr_u8
from mofme.data.weather.common import gaussian_blur
from mofme.evaluate import evaluate_images
from mofme.results import severity_gains

VARIANTS = [("dc", 2.0), ("dc", 4.0), ("dc", 6.0), (32.0, 2.0), (32.0, 4.0), (32.0, 6.0)]


def guard(inp: np.ndarray, restored: np.ndarray, sigma: float | str, t: float) -> np.ndarray:
    """``(H, W, 3)`` uint8 input and restored image -> the guarded restoration (uint8)."""
    x = inp.astype(np.float64)
    c = restored.astype(np.float64) - x
    if sigma == "dc":
        low = np.broadcast_to(c.mean(axis=(0, 1), keepdims=True), c.shape)
    else:
        low = gaussian_blur(c, float(sigma)).astype(np.float64)
    shrunk = np.sign(low) * np.maximum(np.abs(low) - t, 0.0)
    return np.clip(np.rint(x + c - low + shrunk), 0, 255).astype(np.uint8)


def _u8(path: Path) -> np.ndarray:
    return to_uint8(read_image(path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images", type=Path, help="benchmark images folder (test_<set>/input, gt)")
    ap.add_argument("ckpt")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pairs = find_pairs(args.images, "mofme", "test")
    names = ["model", *(f"{s}/{t:g}" for s, t in VARIANTS)]
    per_set: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    inputs: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        evaluate_images(load(args.ckpt), pairs, save_dir=tmp, progress=False, flops_size=None)
        for p in pairs:
            x, y = _u8(p.input), _u8(p.gt)
            z = _u8(Path(tmp) / p.group / f"{p.input.stem}.png")
            inputs.setdefault(p.group, []).append(psnr_u8(x, y))
            outs = [z, *(guard(x, z, s, t) for s, t in VARIANTS)]
            for name, out in zip(names, outs):
                per_set[name].setdefault(p.group, []).append(psnr_u8(out, y))
    base = {g: float(np.mean(v)) for g, v in inputs.items() if g != "clean"}
    print(
        "| variant | clean PSNR | gain light (worst) | gain medium (worst) | gain heavy (worst) |"
    )
    print("|---|---|---|---|---|")
    for name in names:
        res = {g: float(np.mean(v)) for g, v in per_set[name].items()}
        gains = severity_gains(res, base)
        cells = [
            f"{gains[s]['mean']:+.2f} ({gains[s]['worst']:+.2f})"
            for s in ("light", "medium", "heavy")
        ]
        print(f"| {name} | {res['clean']:.2f} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
