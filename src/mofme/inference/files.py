"""Restore image files: plan the outputs, then read, restore and write one file at a time.

The job behind ``mofme restore``: ``plan_jobs`` maps inputs (files and folders) to output
files and refuses, before anything is written, plans that would lose data (an output replacing
an input or another output; an existing file without ``overwrite``). ``restore_files`` then
decodes the next images in a thread while the network runs (``mofme.inference.pipeline``),
restores each one with the tile the options choose for its size (retrying with smaller tiles
when it runs out of memory), and writes it atomically, grey in / grey out, with its alpha
channel and bit depth. A file that fails is reported, naming it, and the rest go on. Under
``torchrun`` every rank plans the same jobs and restores its share.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mofme.errors import MofmeError, one_line
from mofme.inference.options import InferenceOptions
from mofme.outputs import check_writable, refuse_existing

__all__ = ["FilesResult", "plan_jobs", "restore_files"]


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


@dataclass
class FilesResult:
    """What ``restore_files`` did (summed over the ranks under ``torchrun``)."""

    done: int  # images written
    total: int  # images planned
    skipped: int  # other files in the input folders, ignored
    failed: list[str] = field(default_factory=list)  # one message per failed file or folder
    ranks: int = 1  # processes that shared the work
    main: bool = True  # this process reports (rank 0)


def _stderr(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def restore_files(
    inputs: Sequence[str],
    out_dir: Path,
    load: Callable[[torch.device], nn.Module],
    options: InferenceOptions,
    device: torch.device,
    *,
    ext: str = "png",
    recursive: bool = False,
    overwrite: bool = False,
    max_pixels: int | None = None,
    progress: bool = False,
    log: Callable[[str], None] = _stderr,
) -> FilesResult:
    """Restore the images of ``inputs`` (files and folders) into ``out_dir``.

    Args:
        load: the model for a device (called after the plan is checked, so bad inputs fail
            before a model loads).
        options: tiles, overlap, precision, ...; the model is prepared for them here.
        ext: output format by extension (``png``, ``tif``, ``jpg``, ``webp``).
        recursive: also restore the images in subfolders (mirrored in ``out_dir``).
        overwrite: replace existing outputs (even an input of the same path).
        max_pixels: pixel budget of the image reader (``None``: the default).
        progress: progress bars on stderr.
        log: where notes and per-file failures go, one line each.

    Raises:
        MofmeError: a plan that would lose data, no images at all, an unwritable ``out_dir``.
    """
    from tqdm import tqdm

    from mofme.data.io import (
        load_image,
        luma,
        pixel_budget,
        remove_stale_temps,
        save_image,
        to_numpy,
        to_tensor,
    )
    from mofme.inference.distributed import init_ranks, prepare_on_ranks
    from mofme.inference.pipeline import prefetch
    from mofme.inference.tiling import is_out_of_memory, restore_image_retrying
    from mofme.inference.video import still_input

    # Under torchrun every rank plans the same jobs; each restores its share (rank::world).
    ranks, device = init_ranks(device)
    failed: list[str] = []  # one message per failed file or unreadable folder, naming it
    jobs, skipped = plan_jobs(list(inputs), out_dir, ext, recursive, overwrite, failed)
    if not jobs:
        raise MofmeError(failed[0] if failed else f"no images found in {', '.join(inputs)}")
    # Unwritable output (read-only, /proc, a file on the way) fails now, not image by image.
    if ranks.main:  # it creates and removes a probe file: once, not racing other ranks
        check_writable(out_dir, folder=True)
    for folder in {dst.parent for _, dst in jobs}:
        remove_stale_temps(folder)  # left by runs killed with SIGKILL
    # Every rank has planned (and checked for existing outputs) before any rank writes.
    ranks.barrier()
    model = load(device)
    chosen = prepare_on_ranks(lambda: options.prepare(model, device, log=log), options, ranks)
    if ranks.main:
        log(chosen.note)
    in_channels = model.cfg.in_channels  # type: ignore[union-attr]

    if not ranks.main:
        failed = []  # planning failures are the same on every rank: rank 0 reports them
    for message in failed:
        log(f"skipped: {one_line(message)}")
    done = 0
    total = len(jobs)
    jobs = ranks.shard(jobs)
    show = ranks.main and progress
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
            with pixel_budget(max_pixels):
                return src, dst, load_image(src)
        except MofmeError as e:
            return src, dst, e

    # The next images decode in a thread while the network runs on this one.
    for src, dst, img in prefetch(map(read, bar), depth=2):

        def smaller(tile: int, src: Path = src) -> None:
            log(f"{one_line(str(src))}: out of memory; retrying with {tile}-pixel tiles")

        try:
            if isinstance(img, MofmeError):
                raise img
            if img.frames > 1:
                log(
                    f"note: {one_line(str(src))} has {img.frames} frames; only the first is "
                    f"restored (restore all with: mofme video {one_line(str(src))} OUT.mp4)"
                )
            # A video model restoring a still image: its first-frame input (zero reference).
            x = still_input(to_tensor(img.rgb).unsqueeze(0), in_channels)
            y = restore_image_retrying(
                model,
                x,
                tile=options.tile_for(*x.shape[-2:], model),
                batch_tiles=options.batch_tiles_on(device),
                overlap=options.overlap,  # type: ignore[arg-type]
                amp=options.amp,  # type: ignore[arg-type]
                channels_last=options.channels_last,
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
            log(f"skipped: {one_line(failed[-1])}")
        except RuntimeError as e:  # CPU out of memory is a plain RuntimeError
            if not is_out_of_memory(e):
                raise
            failed.append(f"{src}: out of memory even with the smallest tiles; skipped")
            log(f"skipped: {one_line(failed[-1])}")
            if device.type == "cuda":
                torch.cuda.empty_cache()
    bar.close()
    result = FilesResult(done, total, skipped, failed)
    if ranks.active:  # one merged result on rank 0; every rank knows whether anything failed
        parts = ranks.gather((done, failed))
        ranks.close()
        result.done = sum(d for d, _ in parts)
        result.failed = [m for _, f in parts for m in f]
        result.ranks, result.main = ranks.world, ranks.main
    return result
