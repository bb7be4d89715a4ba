"""``mofme restore``: restore image files or folders of images (any size, optionally tiled)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mofme.commands.common import add_device_argument, resolve_device
from mofme.errors import MofmeError

HELP = "restore images or folders of images (any size; whole-image or tiled, overlap-blended)"

# Whole-image inference is best (global attention sees everything; on 480×720 frames it also beat
# the official 240-pixel crops by 0.8 dB with the bundled weights) and fastest up to about a
# megapixel; beyond that attention's quadratic cost and the activations' memory favour tiles.
AUTO_MAX_PIXELS = 1 << 20
AUTO_TILE = 512


def add_model_options(p: argparse.ArgumentParser, default_help: str) -> None:
    """``--ckpt`` / ``--preset`` / ``--routing`` (the inputs are the positional arguments here)."""
    p.add_argument("--ckpt", default=None, help=f"checkpoint (.safetensors); {default_help}")
    p.add_argument("--preset", default=None, help="use an untrained preset (paper, small, tiny)")
    p.add_argument(
        "--routing", default=None, help="expert selection: topk:K, topp:P[:KMIN[:KMAX]] or dense"
    )


def add_speed_options(p: argparse.ArgumentParser) -> None:
    """Tiling and precision options shared by ``restore`` and ``video``."""
    p.add_argument(
        "--tile",
        default="auto",
        help="N: overlapping N×N tiles (less memory); 0: whole image in one pass; auto "
        f"(default): whole image up to {AUTO_MAX_PIXELS / 2**20:g} MP, else {AUTO_TILE}-pixel tiles",
    )
    p.add_argument("--overlap", type=int, default=32, help="tile overlap in pixels (default 32)")
    p.add_argument(
        "--amp",
        choices=("none", "bf16"),
        default="none",
        help="bf16 autocast (faster on GPUs with bf16 support; the router stays fp32)",
    )
    p.add_argument(
        "--channels-last", action="store_true", help="channels-last memory layout for all convs"
    )
    p.add_argument(
        "--plain",
        action="store_true",
        help="turn off the CPU fast paths (NNPACK Winograd convs, channels-last head); "
        "they change outputs only by fp32 rounding",
    )


def prepare_model(model, args: argparse.Namespace, device) -> None:  # model: MoFMENet
    """Apply the device's fast paths unless ``--plain`` (see ``mofme.inference.fast``)."""
    from mofme.inference.fast import optimize

    if not args.plain:
        optimize(model, device)


def check_speed_options(args: argparse.Namespace) -> None:
    """Validate ``--tile`` / ``--overlap``; ``args.tile`` becomes ``"auto"``, 0 or N >= 8."""
    if str(args.tile).lower() != "auto":
        try:
            args.tile = int(args.tile)
        except ValueError:
            raise MofmeError(
                f"--tile must be auto, 0 or a size in pixels, got {args.tile!r}"
            ) from None
        if args.tile != 0 and args.tile < 8:
            raise MofmeError(
                f"--tile must be 0 (whole image) or at least 8 pixels, got {args.tile}"
            )
    else:
        args.tile = "auto"
    limit = AUTO_TILE if args.tile == "auto" else args.tile
    if args.overlap < 0 or (limit and args.overlap >= limit):
        raise MofmeError(f"--overlap must be in [0, tile), got {args.overlap}")


def batch_tiles_for(device) -> int:  # device: torch.device
    """Tiles per forward pass: batches only pay off on GPUs; on CPU one tile keeps memory low."""
    return 8 if device.type == "cuda" else 1


def tile_for(args: argparse.Namespace, h: int, w: int) -> int | None:
    """The tile size to use for an ``h×w`` input (``None`` = whole image)."""
    if args.tile == "auto":
        return AUTO_TILE if h * w > AUTO_MAX_PIXELS else None
    return args.tile or None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    add_model_options(p, "default: the bundled all-in-one image model")
    add_speed_options(p)
    p.add_argument("--recursive", action="store_true", help="also restore images in subfolders")
    p.add_argument(
        "--ext", default="png", help="output format by extension: png (default), tif, jpg, webp"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="allow an output file to replace an input file of the same path",
    )
    add_device_argument(p)


def _folder_images(folder: Path, recursive: bool) -> tuple[list[Path], int]:
    """Image files in ``folder`` (naturally sorted) and how many other files were skipped."""
    from mofme.data.io import IMAGE_EXTENSIONS, list_images, natural_key

    if not recursive:
        files = list_images(folder)
        others = sum(1 for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
        return files, others - len(files)
    files, others = [], 0
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            if name.startswith("."):
                continue
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                files.append(Path(root) / name)
            else:
                others += 1
    files.sort(key=lambda f: ([natural_key(part) for part in f.relative_to(folder).parts]))
    return files, others


def plan_jobs(
    inputs: list[str], out_dir: Path, ext: str, recursive: bool, overwrite: bool
) -> tuple[list[tuple[Path, Path]], int]:
    """``(input file, output file)`` pairs; output names mirror the inputs (same stem).

    Raises ``MofmeError`` before anything is written when the output folder is an input
    folder, when two inputs map to the same output, or when an output would replace an input.
    """
    out_resolved = out_dir.resolve()
    jobs: list[tuple[Path, Path]] = []
    skipped = 0
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            if path.resolve() == out_resolved:
                raise MofmeError(
                    f"the output folder {out_dir} is the input folder {path}; choose another --out"
                )
            files, others = _folder_images(path, recursive)
            skipped += others
            for f in files:
                rel = f.relative_to(path).with_suffix(f".{ext}")
                jobs.append((f, out_dir / rel))
        else:
            # Missing / unreadable files are reported per file when they are read.
            jobs.append((path, out_dir / f"{path.stem}.{ext}"))
    seen: dict[Path, Path] = {}
    inputs_resolved = {src.resolve() for src, _ in jobs}
    for src, dst in jobs:
        key = dst.resolve()
        if key in seen:
            raise MofmeError(
                f"{src} and {seen[key]} would both be written to {dst}; restore them separately"
            )
        seen[key] = src
        if key in inputs_resolved and not overwrite:
            raise MofmeError(
                f"writing {dst} would overwrite an input image; choose another --out "
                "(or pass --overwrite)"
            )
    return jobs, skipped


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from mofme.commands.common import load_model
    from mofme.data.io import load_image, save_image, to_numpy, to_tensor
    from mofme.inference.tiling import restore_image

    check_speed_options(args)
    from PIL import Image

    ext = args.ext.lower().lstrip(".")
    if f".{ext}" not in Image.registered_extensions():
        raise MofmeError(f"--ext {args.ext!r} is not an image format Pillow can write")
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise MofmeError(f"--out {out_dir} exists and is not a folder")
    jobs, skipped = plan_jobs(args.inputs, out_dir, ext, args.recursive, args.overwrite)
    if not jobs:
        raise MofmeError(f"no images found in {', '.join(args.inputs)}")
    device = resolve_device(args.device)
    model = load_model(args, device, default="image")
    prepare_model(model, args, device)
    in_channels = model.cfg.in_channels

    failed: list[str] = []  # one message per failed file, naming it
    done = 0
    bar = tqdm(jobs, desc="restore", unit="img", disable=None, file=sys.stderr)
    for src, dst in bar:
        try:
            img = load_image(src)
            x = to_tensor(img.rgb).unsqueeze(0)
            if in_channels == 6:
                # A video model restoring a still image: its first-frame input (zero reference).
                x = torch.cat([x, torch.zeros_like(x)], 1)
            y = restore_image(
                model,
                x,
                tile=tile_for(args, *x.shape[-2:]),
                batch_tiles=batch_tiles_for(device),
                overlap=args.overlap,
                amp=args.amp,
                channels_last=args.channels_last,
            )
            save_image(dst, to_numpy(y), alpha=img.alpha, bit_depth=img.bit_depth)
            done += 1
        except MofmeError as e:
            failed.append(str(e) if str(src) in str(e) else f"{src}: {e}")
            bar.write(f"skipped: {failed[-1]}", file=sys.stderr)
        except torch.OutOfMemoryError:
            failed.append(f"{src}: out of memory; try --tile 512")
            bar.write(f"skipped: {failed[-1]}", file=sys.stderr)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    bar.close()
    note = f" ({skipped} non-image files ignored)" if skipped else ""
    print(f"restored {done} of {len(jobs)} images into {out_dir}{note}")
    if failed:
        print(f"{len(failed)} failed:", file=sys.stderr)
        for message in failed:
            print(f"  {message}", file=sys.stderr)
        return 1
    return 0
