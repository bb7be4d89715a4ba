"""``mofme test``: evaluate a checkpoint on Allweather / RVSD / a paired folder (SPEC §6, §9)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from mofme.commands.common import (
    add_amp_argument,
    add_max_pixels_argument,
    add_model_arguments,
    add_output_arguments,
    add_precision_argument,
    add_tile_arguments,
    model_from_args,
    parse_size,
    resolve_device,
    want_progress,
)
from mofme.errors import MofmeError

HELP = "evaluate a checkpoint (PSNR/SSIM on RGB and Y, speed, active experts) on test data"

LAYOUTS = ("mofme", "transweather", "folder", "rvsd")
EPILOG = """\
layouts (auto-detected unless --layout is given):
  rvsd          ROOT/{train,test,test_video}/{snow,clean}/<video>/<frame>   (split: test)
  mofme         ROOT/test_*/{input,gt}                 (split: all test_* sets, or e.g. rain,snow)
  transweather  ROOT/<list>.txt with paths under input/ (split: test1.txt, raindroptesta.txt,
                snowtest100k_L.txt, snowtest100k_S.txt and any other *test*.txt present)
  folder        ROOT/input and ROOT/gt

--routing also takes a comma list: a routing sweep (one evaluation per spec, a table of PSNR
vs. active experts, and a plot with --plot or next to --out).

examples:
  mofme test model.safetensors --data data/allweather --out results.json
  mofme test model.safetensors --data data/allweather --resize 720x480   # official protocol
  mofme test --data data/rvsd --routing topk:1,topk:2,topk:4,topp:0.6,dense --plot sweep.png
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add_model_arguments(
        p, "default: the bundled image model (the bundled video model for --layout rvsd)"
    )
    p.add_argument("--data", required=True, metavar="ROOT", help="dataset root folder")
    p.add_argument("--layout", choices=LAYOUTS, default=None, help="dataset layout (default: auto)")
    p.add_argument(
        "--split",
        default=None,
        help="comma-separated test sets: mofme folder names (test_rain or rain), transweather "
        "list files, a folder subfolder, or the rvsd split (default: all test sets)",
    )
    p.add_argument(
        "--resize",
        default=None,
        metavar="WxH",
        help="resize input and ground truth to WIDTHxHEIGHT (bicubic) before evaluating; "
        "720x480 is the official MoFME protocol (default: full resolution)",
    )
    add_tile_arguments(p, "restore in tiles of N pixels (default: whole images)")
    add_precision_argument(p)
    add_amp_argument(p)
    p.add_argument("--save-images", default=None, metavar="DIR", help="write restored images here")
    p.add_argument("--out", default=None, metavar="FILE.json", help="write the results as JSON")
    p.add_argument(
        "--plot",
        default=None,
        metavar="FILE.png",
        help="routing-sweep plot (several --routing specs; default: next to --out)",
    )
    p.add_argument(
        "--max-images",
        type=int,
        default=None,
        metavar="N",
        help="evaluate only the first N images of each test set (rvsd: N frames per video)",
    )
    p.add_argument(
        "--flops-size",
        default="240x240",
        metavar="HxW",
        help="input size for the GFLOPs count (default 240x240, the training crop; none: skip)",
    )
    p.add_argument("--strict", action="store_true", help="stop at an unreadable image")
    p.add_argument(
        "--official-crops",
        action="store_true",
        help="restore like the official MoFME code (overlapping 240x240 crops, dense experts, "
        "fp32, overlaps averaged) to compare with the default path (images only)",
    )
    p.add_argument(
        "--input-baseline",
        action="store_true",
        help="also score the degraded inputs themselves (no restoration) for comparison",
    )
    add_max_pixels_argument(p)
    add_output_arguments(
        p, "replace an existing --out / --plot file and images in a non-empty --save-images"
    )
    # --routing (from add_model_arguments) also takes a comma list here: a routing sweep.


def parse_resize(text: str | None) -> tuple[int, int] | None:
    """``720x480`` (width x height, as Pillow's ``resize``) -> ``(720, 480)``."""
    if text is None:
        return None
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise MofmeError(f"bad --resize {text!r}: use WIDTHxHEIGHT, e.g. 720x480") from None
    if width < 1 or height < 1:
        raise MofmeError(f"bad --resize {text!r}: use positive integers, e.g. 720x480")
    return width, height


def _splits(text: str | None) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()] if text else []


def run(args: argparse.Namespace) -> int:
    from mofme.data.io import parse_pixels, pixel_budget

    budget = None if args.max_pixels is None else parse_pixels(args.max_pixels, "--max-pixels")
    # Under torchrun only rank 0 prints the tables (the other ranks compute their share).
    quiet = int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) > 0
    hush = contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext()
    with warnings.catch_warnings(), pixel_budget(budget), hush:
        warnings.showwarning = _show_warning
        return _run(args)


def check_outputs(args: argparse.Namespace, sweep: bool) -> None:
    """Apply the overwrite rule and check that every output can be written, before evaluating
    (an evaluation can take hours; a typo in --out must not cost them)."""
    from mofme.outputs import check_writable, refuse_existing

    files = [Path(args.out)] if args.out else []
    plot = args.plot or (
        str(Path(args.out).with_name(Path(args.out).stem + "_sweep.png"))
        if args.out and sweep
        else None
    )
    if plot:
        files.append(Path(plot))
    saved = Path(args.save_images) if args.save_images else None
    if saved is not None and saved.is_dir() and any(saved.iterdir()) and not args.overwrite:
        raise MofmeError(
            f"--save-images {saved} is not empty; pass --overwrite to replace the images in it"
        )
    refuse_existing(files, args.overwrite)
    for path in files:
        check_writable(path)
    if saved is not None:
        check_writable(saved, folder=True)


def _show_warning(message: Any, category: Any, filename: Any, lineno: Any, *rest: Any) -> None:
    from tqdm import tqdm

    tqdm.write(f"mofme test: warning: {message}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    from mofme.checkpoint import atomic_write
    from mofme.dataset_eval import DatasetRequest, evaluate_dataset
    from mofme.evaluate import plot_sweep, sweep_markdown
    from mofme.inference.options import InferenceOptions
    from mofme.model.config import parse_routing

    root = Path(args.data)
    if not root.is_dir():
        raise MofmeError(f"data root {root} does not exist")
    if args.max_images is not None and args.max_images < 1:
        raise MofmeError(f"--max-images must be >= 1, got {args.max_images}")
    options = InferenceOptions(
        tile=args.tile, overlap=args.overlap, precision=args.precision, amp=args.amp
    )
    resize = parse_resize(args.resize)
    flops_size = None if args.flops_size.lower() == "none" else parse_size(args.flops_size)
    specs = _splits(args.routing)
    for spec in specs:
        parse_routing(spec)  # a typo fails now, not after an evaluation
    args.routing = specs[0] if len(specs) == 1 else None  # a sweep sets routing per run
    check_outputs(args, sweep=len(specs) > 1)
    request = DatasetRequest(
        root,
        layout=args.layout,
        split=args.split,
        resize=resize,
        max_images=args.max_images,
        flops_size=flops_size,
        routings=specs,
        official_crops=args.official_crops,
        input_baseline=args.input_baseline,
        save_images=args.save_images,
        strict=args.strict,
        progress=want_progress(args),
        source=args.ckpt or (f"preset {args.preset} (untrained)" if args.preset else "bundled"),
    )
    report = evaluate_dataset(
        request,
        lambda default, device: model_from_args(args, device, default=default),
        options,
        resolve_device(args.device),
        log=lambda message: print(message, file=sys.stderr),
    )
    if report.baseline is not None:
        print("input (no restoration):")
        print(report.baseline.to_markdown().split("\n\nparams:")[0] + "\n")
        print("restored:")
    if report.result is not None:
        print(report.result.to_markdown())
    else:
        print(sweep_markdown(report.sweep or []))
        size = f"; GFLOPs per {flops_size[0]}x{flops_size[1]} random input" if flops_size else ""
        print(f"\nparams: {report.results[0].params['total'] / 1e6:.3f} M{size}")
        plot_path = args.plot or (
            str(Path(args.out).with_name(Path(args.out).stem + "_sweep.png")) if args.out else None
        )
        if plot_path and report.main:
            plot_sweep(report.sweep or [], plot_path)
            print(f"plot: {plot_path}")
    if args.out and report.main:
        text = json.dumps(report.payload, indent=2, allow_nan=False)
        atomic_write(args.out, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))
        print(f"results: {args.out}", file=sys.stderr)
    return 0
