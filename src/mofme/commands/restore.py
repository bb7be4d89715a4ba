"""``mofme restore``: restore image files or folders of images (any size, optionally tiled)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mofme.commands.common import (
    add_inference_arguments,
    add_max_pixels_argument,
    add_output_arguments,
    model_from_args,
    resolve_device,
    want_progress,
)
from mofme.errors import MofmeError, one_line

HELP = "restore images or folders of images (any size; whole-image or tiled, overlap-blended)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    add_inference_arguments(p, "default: the bundled all-in-one image model")
    p.add_argument("--recursive", action="store_true", help="also restore images in subfolders")
    p.add_argument(
        "--ext", default="png", help="output format by extension: png (default), tif, jpg, webp"
    )
    add_max_pixels_argument(p)
    p.add_argument(
        "--batch",
        default="auto",
        metavar="N",
        help="restore up to N consecutive same-size images in one forward (images restored "
        "whole; tiled ones go one by one); auto (default): on CUDA up to 8 within 2 MP, on "
        "CPU 1 (batches measured no faster there); outputs equal one-at-a-time up to float "
        "rounding",
    )
    add_output_arguments(
        p, "replace output files that already exist (even an input file of the same path)"
    )


def run(args: argparse.Namespace) -> int:
    import sys

    from PIL import Image

    from mofme.commands.video import _peak_memory_mb
    from mofme.data.io import parse_pixels
    from mofme.inference.files import parse_batch, restore_files
    from mofme.inference.options import InferenceOptions

    options = InferenceOptions.from_args(args, routing=None)  # load_model applies --routing
    budget = None if args.max_pixels is None else parse_pixels(args.max_pixels, "--max-pixels")
    batch = parse_batch(args.batch)
    ext = args.ext.lower().lstrip(".")
    if f".{ext}" not in Image.registered_extensions():
        raise MofmeError(f"--ext {args.ext!r} is not an image format Pillow can write")
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise MofmeError(f"--out {out_dir} exists and is not a folder")
    result = restore_files(
        args.inputs,
        out_dir,
        lambda device: model_from_args(args, device, default="image"),
        options,
        resolve_device(args.device),
        ext=ext,
        recursive=args.recursive,
        overwrite=args.overwrite,
        max_pixels=budget,
        batch=batch,
        progress=want_progress(args),
    )
    failed = result.failed
    if not result.main:  # under torchrun rank 0 reports; every rank exits with the same code
        return 1 if failed else 0
    note = f" ({result.skipped} non-image files ignored)" if result.skipped else ""
    ranks_note = f" by {result.ranks} processes" if result.ranks > 1 else ""
    rate = result.done / result.seconds if result.seconds > 0 else 0.0
    # Peak memory stays flat with the number of images (bounded read-ahead, one batch at a
    # time); under torchrun it is rank 0's.
    peak = _peak_memory_mb(result.device) if result.device is not None else "?"
    # File names may hold newlines: escaped, they cannot forge lines of this summary.
    print(
        f"restored {result.done} of {result.total} images into {one_line(str(out_dir))}"
        f"{ranks_note}{note} in {result.seconds:.1f} s ({rate:.2f} images/s; peak memory "
        f"{peak}{' on rank 0' if result.ranks > 1 else ''})"
    )
    # failed also holds the folders that could not be read: exit 1 says something was skipped.
    if failed:
        print(f"{len(failed)} failed:", file=sys.stderr)
        for message in failed:
            print(f"  {one_line(message)}", file=sys.stderr)
        return 1
    return 0
