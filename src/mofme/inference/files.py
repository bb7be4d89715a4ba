"""Restore image files: plan the outputs, then read, restore and write them in order.

The job behind ``mofme restore``: ``plan_jobs`` maps inputs (files and folders) to output
files and refuses, before anything is written, plans that would lose data (an output replacing
an input or another output; an existing file without ``overwrite``). ``restore_files`` then
decodes the next images in a thread while the network runs (``mofme.inference.pipeline``),
restores each one with the tile the options choose for its size (retrying with smaller tiles
when it runs out of memory), and writes it atomically, grey in / grey out, with its alpha
channel and bit depth. Consecutive images of the same size that are restored whole go through
the network together, up to ``batch`` per forward (``batch_limit``: on CUDA by default, on CPU
when asked); the model treats every image of a batch on its own (global attention within an
image, routing per token), so a batch gives the single-image outputs up to float rounding. A
file that fails is reported, naming it, and the rest go on. Under ``torchrun`` every rank plans
the same jobs and restores its share.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mofme.errors import MofmeError, one_line
from mofme.inference.options import AUTO_MAX_PIXELS, InferenceOptions
from mofme.outputs import check_writable, refuse_existing

__all__ = [
    "AUTO_BATCH",
    "AUTO_BATCH_PIXELS",
    "FilesResult",
    "batch_limit",
    "parse_batch",
    "plan_jobs",
    "restore_files",
]

#: ``--batch auto`` on CUDA: at most this many same-size whole images per forward ...
AUTO_BATCH = 8
#: ... holding at most this many pixels together (twice what ``--tile auto`` runs whole in one
#: forward, so memory stays within twice a single image's). On CPU ``auto`` is one image:
#: batches measured no faster there (README, "Pipelined video and folders").
AUTO_BATCH_PIXELS = 2 * AUTO_MAX_PIXELS


def parse_batch(value: int | str | None) -> int | None:
    """``--batch``: ``auto`` (or ``None``) -> ``None``; a number of images ``>= 1`` -> itself.

    Raises:
        MofmeError: anything else, naming the option and the value.
    """
    if value is None or str(value).strip().lower() == "auto":
        return None
    try:
        n = int(str(value).strip())
    except ValueError:
        n = 0
    if n < 1:
        raise MofmeError(f"--batch must be auto or a number of images >= 1, got {value!r}")
    return n


def batch_limit(batch: int | None, device: torch.device, h: int, w: int) -> int:
    """How many ``h x w`` images (restored whole) go through one forward at most.

    ``batch`` (``parse_batch``): a number is used as it is; ``None`` (auto) is, on CUDA, up to
    ``AUTO_BATCH`` images within ``AUTO_BATCH_PIXELS`` (at least one), and 1 on other devices.
    """
    if batch is not None:
        return batch
    if device.type != "cuda":
        return 1
    return max(1, min(AUTO_BATCH, AUTO_BATCH_PIXELS // max(1, h * w)))


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
    seconds: float = 0.0  # restoring (after the model loaded), the slowest rank's
    device: torch.device | None = None  # where this process ran the network


class _Lookahead:
    """How far the reader thread decodes ahead while images are batched: always two images
    (as without batching), more only while the decoded images waiting hold fewer than
    ``pixels`` pixels, so a folder of large images does not pile up in memory."""

    def __init__(self, pixels: int) -> None:
        self._limit = pixels
        self._cond = threading.Condition()
        self._count = 0
        self._pixels = 0
        self._stopped = False

    def wait(self) -> None:
        """On the reader thread, before decoding the next image."""
        with self._cond:
            while not self._stopped and self._count >= 2 and self._pixels >= self._limit:
                self._cond.wait()

    def add(self, pixels: int) -> None:
        """An image was decoded (on the reader thread)."""
        with self._cond:
            self._count += 1
            self._pixels += pixels

    def take(self, pixels: int) -> None:
        """The loop took a decoded image from the queue."""
        with self._cond:
            self._count -= 1
            self._pixels -= pixels
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()


def _pixels(img: Any) -> int:
    return 0 if isinstance(img, MofmeError) else int(img.rgb.shape[0] * img.rgb.shape[1])


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
    batch: int | None = None,
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
        batch: consecutive same-size images restored whole go through one forward, up to
            this many (``None``: auto, see ``batch_limit``); tiled images go one by one
            (their tiles are batched). A batch that runs out of memory is restored one image
            at a time, and later batches are halved.
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
    from mofme.inference.tiling import (
        is_out_of_memory,
        restore_image,
        restore_image_retrying,
    )
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
    most = batch_limit(batch, device, 1, 1)  # images per forward at most, for any size
    if most > 1 and chosen.name == "int8":
        # Dynamic int8 quantises each forward's activations together: a batch would change
        # every image's output.
        if batch is not None and ranks.main:
            log(f"note: --batch {batch} ignored with int8 (outputs would depend on the batch)")
        most = 1
    ceiling = most  # lowered when a batch runs out of memory
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

    # Batching reads further ahead (a batch's worth), bounded by pixels; one image per
    # forward keeps the reader two images ahead, as before.
    ahead = (
        _Lookahead(AUTO_BATCH_PIXELS if batch is None else most * AUTO_MAX_PIXELS)
        if most > 1
        else None
    )

    def read(job: tuple[Path, Path]) -> tuple[Path, Path, Any]:
        """Decode on the reader thread; a bad file's error travels with it into the loop."""
        src, dst = job
        if ahead is not None:
            ahead.wait()
        try:
            with pixel_budget(max_pixels):
                img = load_image(src)
        except MofmeError as e:
            img = e
        if ahead is not None:
            ahead.add(_pixels(img))
        return src, dst, img

    def report(src: Path, e: MofmeError) -> None:
        failed.append(str(e) if str(src) in str(e) else f"{src}: {e}")
        log(f"skipped: {one_line(failed[-1])}")

    def save(src: Path, dst: Path, img: Any, y: torch.Tensor) -> None:
        nonlocal done
        out = to_numpy(y)
        # Grey in, grey out: the luma of the restored RGB, not an RGB file with a tint.
        save_image(dst, luma(out) if img.grey else out, alpha=img.alpha, bit_depth=img.bit_depth)
        done += 1

    def restore_one(src: Path, dst: Path, img: Any, x: torch.Tensor, tile: int | None) -> None:
        """One image on its own (tiled, or whole): retried with smaller tiles on OOM."""

        def smaller(tile: int) -> None:
            log(f"{one_line(str(src))}: out of memory; retrying with {tile}-pixel tiles")

        try:
            y = restore_image_retrying(
                model,
                x,
                tile=tile,
                batch_tiles=options.batch_tiles_on(device),
                overlap=options.overlap,  # type: ignore[arg-type]
                amp=options.amp,  # type: ignore[arg-type]
                channels_last=options.channels_last,
                on_retry=smaller,
                on_tiles=on_tiles,
            )
            save(src, dst, img, y)
        except MofmeError as e:
            report(src, e)
        except RuntimeError as e:  # CPU out of memory is a plain RuntimeError
            if not is_out_of_memory(e):
                raise
            failed.append(f"{src}: out of memory even with the smallest tiles; skipped")
            log(f"skipped: {one_line(failed[-1])}")
            if device.type == "cuda":
                torch.cuda.empty_cache()

    pending: list[tuple[Path, Path, Any, torch.Tensor]] = []  # same-size whole images

    def flush() -> None:
        """Restore the pending images: one forward for all, or one by one after an OOM."""
        nonlocal ceiling
        items = pending[:]
        pending.clear()
        if len(items) == 1:
            restore_one(*items[0], None)
        if len(items) <= 1:
            return
        ys = None
        try:
            ys = restore_image(
                model,
                torch.cat([x for *_, x in items]),
                amp=options.amp,  # type: ignore[arg-type]
                channels_last=options.channels_last,
            )
        except RuntimeError as e:
            if not is_out_of_memory(e):
                raise
        if ys is None:  # outside the except block, so the failed batch's tensors are freed
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            ceiling = max(1, len(items) // 2)
            log(
                f"out of memory with {len(items)} images in one forward; restoring them one "
                f"at a time, then at most {ceiling} per forward"
            )
            for item in items:
                restore_one(*item, None)
            return
        for (src, dst, img, _), y in zip(items, ys.split(1)):
            try:
                save(src, dst, img, y)
            except MofmeError as e:
                report(src, e)

    start = time.perf_counter()
    # The next images decode in a thread while the network runs on this one.
    reader = prefetch(map(read, bar), depth=2 * most if most > 1 else 2)
    try:
        for src, dst, img in reader:
            if ahead is not None:
                ahead.take(_pixels(img))
            if isinstance(img, MofmeError):
                flush()  # the images before it first: the order stays the input order
                report(src, img)
                continue
            if img.frames > 1:
                log(
                    f"note: {one_line(str(src))} has {img.frames} frames; only the first is "
                    f"restored (restore all with: mofme video {one_line(str(src))} OUT.mp4)"
                )
            # A video model restoring a still image: its first-frame input (zero reference).
            x = still_input(to_tensor(img.rgb).unsqueeze(0), in_channels)
            h, w = x.shape[-2:]
            tile = options.tile_for(h, w, model)
            limit = min(ceiling, batch_limit(batch, device, h, w))
            if tile is not None or limit == 1:
                flush()
                restore_one(src, dst, img, x, tile)
                continue
            if pending and (pending[0][3].shape != x.shape or len(pending) >= limit):
                flush()
            pending.append((src, dst, img, x))
            if len(pending) >= limit:
                flush()
        flush()
    finally:
        if ahead is not None:
            ahead.stop()  # a reader waiting for room stops waiting
        with contextlib.suppress(Exception):
            reader.close()  # type: ignore[attr-defined]
    seconds = time.perf_counter() - start
    bar.close()
    result = FilesResult(done, total, skipped, failed, seconds=seconds, device=device)
    if ranks.active:  # one merged result on rank 0; every rank knows whether anything failed
        parts = ranks.gather((done, failed, seconds))
        ranks.close()
        result.done = sum(d for d, _, _ in parts)
        result.failed = [m for _, f, _ in parts for m in f]
        result.seconds = max(t for *_, t in parts)
        result.ranks, result.main = ranks.world, ranks.main
    return result
