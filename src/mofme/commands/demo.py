"""``mofme demo``: the whole tool in one command, on bundled weights and photos."""

from __future__ import annotations

import argparse
from pathlib import Path

from mofme.commands.common import add_device_argument, load_model, parse_size, resolve_device

HELP = "restore weathered images and a snowy clip with the bundled weights (no download)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="mofme_demo", help="output folder (default ./mofme_demo)")
    p.add_argument("--size", default="192x256", help="image and frame size HxW (default 192x256)")
    p.add_argument("--frames", type=int, default=16, help="frames of the snowy clip (default 16)")
    p.add_argument(
        "--routing",
        default=None,
        help="expert selection, e.g. topk:2 or topp:0.6 (default: each model's trained routing)",
    )
    p.add_argument("--image-ckpt", default=None, help="image checkpoint (default: bundled)")
    p.add_argument("--video-ckpt", default=None, help="video checkpoint (default: bundled)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace the results of an earlier demo in --out"
    )
    add_device_argument(p)


# What the demo writes directly in --out (images/ holds the rest), for the overwrite rule.
DEMO_FILES = (
    "summary.html",
    "summary.md",
    "results.json",
    "routing_top8.png",
    "snowy_clip_restored.mp4",
)


def run(args: argparse.Namespace) -> int:
    from mofme.demo import run_demo
    from mofme.errors import MofmeError
    from mofme.outputs import check_writable, refuse_existing

    if args.frames < 1:
        raise MofmeError(f"--frames must be at least 1, got {args.frames}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise MofmeError(f"--out {out} exists and is not a folder")
    refuse_existing([out / name for name in DEMO_FILES], args.overwrite)
    check_writable(out, folder=True)
    device = resolve_device(args.device)
    image_model = load_model(args.image_ckpt or "image", device, routing=args.routing)
    video_model = load_model(args.video_ckpt or "video", device, routing=args.routing)
    res = run_demo(image_model, video_model, out, parse_size(args.size), args.frames)
    print(f"\ndone in {res.seconds:.0f} s; wrote")
    for name, path in res.files.items():
        print(f"  {name:<13} {path}")
    return 0
