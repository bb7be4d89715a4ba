"""The held-out quality table of the README (issue: trustworthy restoration).

Scores image and video checkpoints on a benchmark written by ``mofme synth bench`` (photos the
bundled weights never trained on): every weather type and composite at light / medium / heavy,
the clean (do-no-harm) set, snowy clips and clean clips; input PSNR beside output PSNR; the
token-grid ratio on restored clean images (whole image and flat areas only); dark specks
on the restored snowy clips (scripts/speck_check.py); the default inference path against the
official-style 240x240 crops.

    mofme synth bench --out data/bench --seed 0
    python scripts/quality_study.py --bench data/bench --out docs/results/quality
    python scripts/quality_study.py --bench data/bench --image OLD.safetensors \
        --video OLD_VIDEO.safetensors --out docs/results/quality_before

Writes ``OUT.md`` and ``OUT.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import speck_check  # scripts/speck_check.py (this folder is on sys.path when run as a script)
import torch
from PIL import Image

from mofme.checkpoint import load
from mofme.data.io import read_image, to_tensor
from mofme.data.pairs import find_pairs, find_videos
from mofme.evaluate import InputAsOutput, evaluate_images, evaluate_videos
from mofme.inference.policy import auto_tile
from mofme.metrics import grid_ratio
from mofme.results import severity_gains
from mofme.weights import bundled_path


def _rows(result: Any) -> dict[str, dict[str, float]]:
    return {r["name"]: r for r in result.rows}


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isinf(v)):
        return "∞"
    return f"{v:.2f}"


def side_by_side(paths: list[Path], dest: Path, crop: int = 256) -> None:
    """input | output | clean, each cut to its central ``crop`` square and shown 2x (zoom)."""
    tiles = []
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("RGB")
            w, h = im.size
            box = ((w - crop) // 2, (h - crop) // 2, (w + crop) // 2, (h + crop) // 2)
            tiles.append(im.crop(box).resize((2 * crop, 2 * crop), Image.NEAREST))
    sheet = Image.new("RGB", (len(tiles) * (2 * crop + 8) - 8, 2 * crop), (255, 255, 255))
    for i, t in enumerate(tiles):
        sheet.paste(t, (i * (2 * crop + 8), 0))
    dest.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(dest)


def image_study(ckpt: str, bench: Path, pictures: Path | None = None) -> dict[str, Any]:
    model = load(ckpt)
    pairs = find_pairs(bench / "images", "mofme", "test")
    h, w = read_image(pairs[0].input).shape[:2]
    tile = auto_tile(model, h, w)
    base = _rows(evaluate_images(InputAsOutput(), pairs, progress=False, flops_size=None))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = evaluate_images(model, pairs, tile=tile, save_dir=tmp, progress=False)
        seconds = time.perf_counter() - t0
        out = _rows(res)
        grids, flat = [], []
        for p in pairs:
            if p.group != "clean":
                continue
            restored = to_tensor(read_image(Path(tmp) / p.group / f"{p.input.stem}.png"))
            clean = to_tensor(read_image(p.gt))
            grids.append(grid_ratio(restored))
            flat.append(grid_ratio(restored, flat_of=clean))
            ref_grid = grid_ratio(clean)
        if pictures is not None:
            for group in ("clean", "raindrop_light", "snow_light"):
                pair = next(p for p in pairs if p.group == group)
                restored = Path(tmp) / group / f"{pair.input.stem}.png"
                side_by_side([pair.input, restored, pair.gt], Path(f"{pictures}_{group}.png"))
    official = _rows(evaluate_images(model, pairs, official=True, progress=False))
    sets = {}
    for name, row in out.items():
        sets[name] = {
            "input_psnr": base[name]["psnr"],
            "psnr": row["psnr"],
            "input_ssim": base[name]["ssim"],
            "ssim": row["ssim"],
            "official_psnr": official[name]["psnr"],
        }
    return {
        "ckpt": ckpt,
        "tile": tile,
        "seconds": round(seconds, 1),
        "sets": sets,
        "grid_ratio": float(np.mean(grids)),
        "grid_ratio_flat": float(np.mean(flat)),
        "grid_ratio_clean_reference": ref_grid,
    }


def video_study(ckpt: str, bench: Path) -> dict[str, Any]:
    model = load(ckpt)
    out: dict[str, Any] = {"ckpt": ckpt}
    for sub in ("video", "video_clean"):
        videos = find_videos(bench / sub, "test")
        base = evaluate_videos(InputAsOutput(), videos, progress=False, flops_size=None)
        specks = speck_check.Specks()
        res = evaluate_videos(model, videos, progress=False, observers=[specks])
        out[sub] = {
            "input_psnr": base.average["psnr"],
            "psnr": res.average["psnr"],
            "input_ssim": base.average["ssim"],
            "ssim": res.average["ssim"],
            "psnr_first": res.average.get("psnr_first"),
            "psnr_other": res.average.get("psnr_other"),
            "per_video": {r["name"]: round(r["psnr"], 2) for r in res.rows},
        }
        if sub == "video":
            out[sub]["specks"] = specks.summary()["specks"]
    return out


def markdown(img: dict[str, Any], vid: dict[str, Any]) -> str:
    lines = [
        f"Image model `{img['ckpt']}`, default path (tile: {img['tile'] or 'whole image'}), "
        f"{img['seconds']} s for the set.",
        "",
        "| set | input PSNR | output PSNR | gain | input SSIM | output SSIM | official crops PSNR |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in img["sets"].items():
        gain = s["psnr"] - s["input_psnr"] if math.isfinite(s["input_psnr"]) else None
        lines.append(
            f"| {name} | {_fmt(s['input_psnr'])} | {_fmt(s['psnr'])} | "
            f"{'' if gain is None else f'{gain:+.2f}'} | {s['input_ssim']:.4f} | {s['ssim']:.4f} "
            f"| {_fmt(s['official_psnr'])} |"
        )
    lines.append("")
    scored = {n: s for n, s in img["sets"].items() if math.isfinite(s["input_psnr"])}
    gains = severity_gains(
        {n: s["psnr"] for n, s in scored.items()},
        {n: s["input_psnr"] for n, s in scored.items()},
        skip=(),
    )
    for sev, g in gains.items():
        lines.append(f"- mean gain at {sev}: {g['mean']:+.2f} dB (min {g['worst']:+.2f})")
    mean_default = np.mean([s["psnr"] for n, s in img["sets"].items() if n != "clean"])
    mean_official = np.mean([s["official_psnr"] for n, s in img["sets"].items() if n != "clean"])
    lines.append(
        f"- default path vs official-style crops (weather sets): {mean_default:.3f} vs "
        f"{mean_official:.3f} dB ({mean_default - mean_official:+.3f})"
    )
    lines.append(
        f"- token-grid ratio on restored clean images: {img['grid_ratio']:.3f} whole image, "
        f"{img['grid_ratio_flat']:.3f} on flat areas (clean reference itself: "
        f"{img['grid_ratio_clean_reference']:.3f}; 1.0 = no grid)"
    )
    lines += ["", f"Video model `{vid['ckpt']}`:", ""]
    lines += [
        "| clips | input PSNR | output PSNR | input SSIM | output SSIM | first / other frames "
        "| dark specks / 1000 px |"
    ]
    lines += ["|---|---|---|---|---|---|---|"]
    for sub in ("video", "video_clean"):
        v = vid[sub]
        lines.append(
            f"| {'snowy' if sub == 'video' else 'clean'} | {_fmt(v['input_psnr'])} | "
            f"{_fmt(v['psnr'])} | {v['input_ssim']:.4f} | {v['ssim']:.4f} | "
            f"{_fmt(v['psnr_first'])} / {_fmt(v['psnr_other'])} | "
            f"{_fmt(v['specks']) if 'specks' in v else ''} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", type=Path, required=True, help="folder from `mofme synth bench`")
    ap.add_argument("--image", default=None, help="image checkpoint (default: bundled)")
    ap.add_argument("--video", default=None, help="video checkpoint (default: bundled)")
    ap.add_argument("--out", type=Path, required=True, help="output prefix (.md and .json)")
    args = ap.parse_args()
    torch.manual_seed(0)
    img = image_study(args.image or str(bundled_path("image")), args.bench, args.out)
    vid = video_study(args.video or str(bundled_path("video")), args.bench)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps({"image": img, "video": vid}, indent=1, default=float)
    )
    md = markdown(img, vid)
    args.out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
