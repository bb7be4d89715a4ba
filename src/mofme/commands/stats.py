"""``mofme stats``: routing statistics of a model on a dataset (per-expert weights, active experts).

Video data (RVSD layout) is streamed frame by frame through ``VideoRestorer`` and split into the
first frame of each video (all-zero reference) and the other frames; image data is grouped by
test set / list file. Writes ``stats.md``, ``stats.json`` and three PNG plots to ``--out`` and
prints the Markdown report.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mofme.commands.common import (
    add_model_arguments,
    add_output_arguments,
    add_tile_arguments,
    model_from_args,
    resolve_device,
    want_progress,
)
from mofme.errors import MofmeError

HELP = (
    "routing statistics: per-expert weights and frequencies, first vs other frames, active experts"
)

LAYOUT_CHOICES = ("rvsd", "mofme", "transweather", "folder")
# What write_report puts in --out (checked against the overwrite rule before any work).
REPORT_FILES = ("stats.md", "stats.json", "top8.png", "heatmap.png", "active_hist.png")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(
        p, "default: the bundled model for the data (video for RVSD videos, else image)"
    )
    p.add_argument(
        "--data", required=True, help="dataset root (RVSD videos or Allweather-style images)"
    )
    p.add_argument("--out", required=True, help="folder for stats.md, stats.json and the plots")
    p.add_argument(
        "--layout",
        choices=LAYOUT_CHOICES,
        default=None,
        help="dataset layout (default: detected from the folders under --data)",
    )
    p.add_argument(
        "--split",
        default=None,
        help="rvsd: train or test (default test); mofme: train, test (every test_* set, default) "
        "or one test set such as test_snow; transweather: the list file (required, e.g. "
        "test1.txt); folder: optional subfolder",
    )
    p.add_argument("--max-frames", type=int, default=None, help="use at most N frames per video")
    p.add_argument("--max-images", type=int, default=None, help="use at most N images per group")
    add_tile_arguments(p, "tiled inference with this tile side (default: whole images)")
    add_output_arguments(p, "replace a report already in --out")


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise MofmeError(f"{name} must be >= 1, got {value}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def run(args: argparse.Namespace) -> int:
    from mofme.data.pairs import detect_layout, find_pairs, find_videos
    from mofme.inference.options import check_tiling
    from mofme.outputs import check_writable, refuse_existing
    from mofme.stats import collect_images, collect_video, to_markdown, write_report

    for name in ("max_frames", "max_images"):
        _check_positive("--" + name.replace("_", "-"), getattr(args, name))
    tile, overlap = check_tiling(args.tile, args.overlap, auto=False)

    out = Path(args.out)
    refuse_existing([out / name for name in REPORT_FILES], args.overwrite)
    check_writable(out, folder=True)
    root = Path(args.data)
    layout = args.layout or detect_layout(root, args.split)
    # Find the data before loading the model: a bad path fails fast.
    split = args.split or ("test" if layout in ("rvsd", "mofme") else None)
    if layout == "rvsd":
        videos = find_videos(root, split)
    else:
        pairs = find_pairs(root, layout, split)
    device = resolve_device(args.device)
    # The bundled model that fits the data: a video model cannot run on image pairs.
    bundled = "video" if layout == "rvsd" else "image"
    model = model_from_args(args, device, default=bundled)
    cfg = model.cfg
    if layout != "rvsd" and cfg.in_channels != 3:
        raise MofmeError(
            f"the model takes {cfg.in_channels}-channel input (a video model with a reference "
            f"frame); it needs video data in the RVSD layout, but {root} is {layout} image data"
        )
    progress = want_progress(args)
    if layout == "rvsd":
        stats = collect_video(model, videos, tile=tile or None, device=device, overlap=overlap,
                              max_frames=args.max_frames, progress=progress)  # fmt: skip
        amount = f"{_count(len(videos), 'video')}, {_count(stats.samples('all'), 'frame')}"
    else:
        stats = collect_images(model, pairs, tile=tile or None, device=device, overlap=overlap,
                               max_images=args.max_images, progress=progress)  # fmt: skip
        amount = _count(stats.samples("all"), "image")
    summary = stats.summary()
    source = args.ckpt or (
        f"preset {args.preset} (untrained)" if args.preset else f"bundled {bundled} model"
    )
    summary["meta"] = {
        "model": source,
        "input channels": cfg.in_channels,
        "router": cfg.router,
        "routing": cfg.routing.describe(),
        "data": f"{root} (layout {layout}, split {split or '-'}; {amount})",
    }
    if tile:
        summary["meta"]["tiles"] = f"{tile} px, overlap {overlap} px"
    paths = write_report(summary, Path(args.out))
    print(to_markdown(summary), end="")
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0
