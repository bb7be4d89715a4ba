"""``mofme restore``: restore image files or folders of images (any size, optionally tiled)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from mofme.commands.common import (
    add_device_argument,
    add_precision_argument,
    add_progress_argument,
    resolve_device,
    want_progress,
)
from mofme.errors import MofmeError, one_line

# Option checks, the auto tile policy and model preparation live in the library (shared with the
# Python API and the web app); re-exported here for the other commands.
from mofme.inference.options import (
    AUTO_MAX_PIXELS,
    AUTO_TILE,
    batch_tiles_for,
    check_speed_options,
    prepare_model,
    tile_for,
)

HELP = "restore images or folders of images (any size; whole-image or tiled, overlap-blended)"



def add_model_options(p: argparse.ArgumentParser, default_help: str) -> None:
    """``--ckpt`` / ``--preset`` / ``--routing`` (the inputs are the positional arguments here)."""
    p.add_argument(
        "--ckpt",
        default=None,
        help=f"checkpoint (.safetensors), or image / video for the bundled weights; {default_help}",
    )
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
        "(default): what the checkpoint's model card says is within 0.05 dB of the official "
        f"240-pixel crops; without a card, whole image up to {AUTO_MAX_PIXELS / 2**20:g} MP, "
        f"else {AUTO_TILE}-pixel tiles",
    )
    p.add_argument("--overlap", type=int, default=32, help="tile overlap in pixels (default 32)")
    add_precision_argument(p)
    p.add_argument(
        "--amp",
        choices=("none", "bf16"),
        default=None,
        help="older spelling of --precision fp32 / bf16 (bf16 autocast; the router stays fp32)",
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
        help="replace output files that already exist (even an input file of the same path)",
    )
    add_max_pixels_option(p)
    add_progress_argument(p)
    add_device_argument(p)


def add_max_pixels_option(p: argparse.ArgumentParser) -> None:
    """``--max-pixels``: raise (or lower) the pixel budget of the image readers."""
    p.add_argument(
        "--max-pixels",
        default=None,
        metavar="N",
        help="largest image accepted, in pixels (e.g. 250M; 0: no limit); default: "
        "$MOFME_MAX_PIXELS or 100M. Checked from the file header before decoding",
    )


def _folder_images(
    folder: Path, recursive: bool, problems: list[str] | None = None
) -> tuple[list[Path], int]:
    """Image files in ``folder`` (naturally sorted) and how many other files were skipped.

    A folder that cannot be listed (permissions, a symlink loop, I/O error) is reported in
    ``problems`` (one message naming it) and contributes nothing; without ``problems`` the
    error is raised as ``MofmeError``.
    """
    from mofme.data.io import IMAGE_EXTENSIONS, list_images, natural_key

    def unreadable(err: OSError) -> None:
        message = f"cannot read folder {err.filename or folder}: {err.strerror or err}"
        if problems is None:
            raise MofmeError(message)
        problems.append(message)

    if not recursive:
        try:
            files = list_images(folder)
            others = sum(1 for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
        except OSError as err:
            unreadable(err)
            return [], 0
        return files, others - len(files)
    files, others = [], 0
    # os.walk stays silent about subfolders it cannot list unless told; each one is reported.
    for root, dirs, names in os.walk(folder, onerror=unreadable):
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


def _resolve(path: Path) -> Path:
    """``path.resolve()``, or the absolute path when it cannot be resolved (a symlink loop):
    such an input fails when it is read, with a message naming it, not the whole batch."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(path))


def plan_jobs(
    inputs: list[str],
    out_dir: Path,
    ext: str,
    recursive: bool,
    overwrite: bool,
    problems: list[str] | None = None,
) -> tuple[list[tuple[Path, Path]], int]:
    """``(input file, output file)`` pairs; output names mirror the inputs (same stem).

    Raises ``MofmeError`` before anything is written when the output folder is an input
    folder, when two inputs map to the same output, when an output would replace an input, or
    (without ``overwrite``) when an output file exists already. Folders that cannot be listed
    go to ``problems`` when it is given (see ``_folder_images``).
    """
    from mofme.commands.common import refuse_existing

    out_resolved = _resolve(out_dir)
    jobs: list[tuple[Path, Path]] = []
    skipped = 0
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            if _resolve(path) == out_resolved:
                raise MofmeError(
                    f"the output folder {out_dir} is the input folder {path}; choose another --out"
                )
            files, others = _folder_images(path, recursive, problems)
            skipped += others
            for f in files:
                rel = f.relative_to(path).with_suffix(f".{ext}")
                jobs.append((f, out_dir / rel))
        else:
            # Missing / unreadable files are reported per file when they are read.
            jobs.append((path, out_dir / f"{path.stem}.{ext}"))
    seen: dict[Path, Path] = {}
    inputs_resolved = {_resolve(src) for src, _ in jobs}
    for src, dst in jobs:
        key = _resolve(dst)
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
    refuse_existing([dst for _, dst in jobs], overwrite)
    return jobs, skipped


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from mofme.commands.common import check_writable, load_model
    from mofme.data.io import (
        load_image,
        luma,
        parse_pixels,
        pixel_budget,
        remove_stale_temps,
        save_image,
        to_numpy,
        to_tensor,
    )
    from mofme.inference.tiling import is_out_of_memory, restore_image_retrying

    check_speed_options(args)
    budget = None if args.max_pixels is None else parse_pixels(args.max_pixels, "--max-pixels")
    from PIL import Image

    ext = args.ext.lower().lstrip(".")
    if f".{ext}" not in Image.registered_extensions():
        raise MofmeError(f"--ext {args.ext!r} is not an image format Pillow can write")
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise MofmeError(f"--out {out_dir} exists and is not a folder")
    from mofme.inference.distributed import init_ranks, prepare_on_ranks
    from mofme.inference.pipeline import prefetch

    # Under torchrun every rank plans the same jobs; each restores its share (rank::world).
    ranks, device = init_ranks(resolve_device(args.device))
    failed: list[str] = []  # one message per failed file or unreadable folder, naming it
    jobs, skipped = plan_jobs(args.inputs, out_dir, ext, args.recursive, args.overwrite, failed)
    if not jobs:
        raise MofmeError(failed[0] if failed else f"no images found in {', '.join(args.inputs)}")
    # Unwritable --out (read-only, /proc, a file on the way) fails now, not image by image.
    if ranks.main:  # it creates and removes a probe file: once, not racing other ranks
        check_writable(out_dir, folder=True)
    for folder in {dst.parent for _, dst in jobs}:
        remove_stale_temps(folder)  # left by runs killed with SIGKILL
    # Every rank has planned (and checked for existing outputs) before any rank writes.
    ranks.barrier()
    model = load_model(args, device, default="image")
    chosen = prepare_on_ranks(
        lambda: prepare_model(model, args, device, log=lambda m: print(m, file=sys.stderr)),
        args,
        ranks,
    )
    if ranks.main:
        print(chosen.note, file=sys.stderr)
    in_channels = model.cfg.in_channels

    if not ranks.main:
        failed = []  # planning failures are the same on every rank: rank 0 reports them
    for message in failed:
        print(f"skipped: {one_line(message)}", file=sys.stderr)
    done = 0
    total = len(jobs)
    jobs = ranks.shard(jobs)
    show = ranks.main and want_progress(args)
    bar = tqdm(jobs, desc="restore", unit="img", disable=not show, file=sys.stderr)
    tile_bar: Any = None  # a second bar while a large image is restored tile by tile

    def on_tiles(done: int, total: int) -> None:
        nonlocal tile_bar
        if not show or total < 4:  # a few tiles take seconds: no bar needed
            return
        if tile_bar is not None and tile_bar.total != total:  # retried with smaller tiles
            tile_bar.close()
            tile_bar = None
        if tile_bar is None:
            tile_bar = tqdm(total=total, desc="tiles", unit="tile", leave=False, file=sys.stderr)
        tile_bar.update(done - tile_bar.n)
        if done >= total:
            tile_bar.close()
            tile_bar = None

    def read(job: tuple[Path, Path]) -> tuple[Path, Path, Any]:
        """Decode on the reader thread; a bad file's error travels with it into the loop."""
        src, dst = job
        try:
            with pixel_budget(budget):
                return src, dst, load_image(src)
        except MofmeError as e:
            return src, dst, e

    # The next images decode in a thread while the network runs on this one.
    for src, dst, img in prefetch(map(read, bar), depth=2):

        def smaller(tile: int, src: Path = src) -> None:
            bar.write(
                f"{one_line(str(src))}: out of memory; retrying with {tile}-pixel tiles",
                file=sys.stderr,
            )

        try:
            if isinstance(img, MofmeError):
                raise img
            if img.frames > 1:
                bar.write(
                    f"note: {one_line(str(src))} has {img.frames} frames; only the first is "
                    f"restored (restore all with: mofme video {one_line(str(src))} OUT.mp4)",
                    file=sys.stderr,
                )
            x = to_tensor(img.rgb).unsqueeze(0)
            if in_channels == 6:
                # A video model restoring a still image: its first-frame input (zero reference).
                x = torch.cat([x, torch.zeros_like(x)], 1)
            y = restore_image_retrying(
                model,
                x,
                tile=tile_for(args, *x.shape[-2:], model),
                batch_tiles=batch_tiles_for(device),
                overlap=args.overlap,
                amp=args.amp,
                channels_last=args.channels_last,
                on_retry=smaller,
                on_tiles=on_tiles,
            )
            out = to_numpy(y)
            # Grey in, grey out: the luma of the restored RGB, not an RGB file with a tint.
            save_image(
                dst, luma(out) if img.grey else out, alpha=img.alpha, bit_depth=img.bit_depth
            )
            done += 1
        except MofmeError as e:
            failed.append(str(e) if str(src) in str(e) else f"{src}: {e}")
            bar.write(f"skipped: {one_line(failed[-1])}", file=sys.stderr)
        except RuntimeError as e:  # CPU out of memory is a plain RuntimeError
            if not is_out_of_memory(e):
                raise
            failed.append(f"{src}: out of memory even with the smallest tiles; skipped")
            bar.write(f"skipped: {one_line(failed[-1])}", file=sys.stderr)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    bar.close()
    if ranks.active:  # one merged summary, from rank 0; every rank exits with the same code
        parts = ranks.gather((done, failed))
        ranks.close()
        done, failed = sum(d for d, _ in parts), [m for _, f in parts for m in f]
        if not ranks.main:
            return 1 if failed else 0
    note = f" ({skipped} non-image files ignored)" if skipped else ""
    ranks_note = f" by {ranks.world} processes" if ranks.active else ""
    # File names may hold newlines: escaped, they cannot forge lines of this summary.
    print(f"restored {done} of {total} images into {one_line(str(out_dir))}{ranks_note}{note}")
    # failed also holds the folders that could not be read: exit 1 says something was skipped.
    if failed:
        print(f"{len(failed)} failed:", file=sys.stderr)
        for message in failed:
            print(f"  {one_line(message)}", file=sys.stderr)
        return 1
    return 0
