"""Writing files atomically: a hidden temporary file in the same folder, then ``os.replace``.

:func:`atomic_write` is the one way mofme writes a file (images, synthetic datasets, reports):
an interrupted run never leaves a half-written file under the final name, and a failed write
leaves any earlier file as it was. The temporary name holds the pid, so a later run can remove
what a killed process left (:func:`remove_stale_temps`).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mofme.data.io.read import _TIFF_SUFFIXES, _reason
from mofme.errors import MofmeError

# Formats whose Pillow writers store an alpha channel.
_ALPHA_SUFFIXES = (".png", ".tif", ".tiff", ".webp")


def _is_os_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError)


def atomic_write(
    path: str | os.PathLike[str],
    write: Callable[[Path], Any],
    what: str = "",
    failure: Callable[[BaseException], bool] = _is_os_error,
) -> Path:
    """Call ``write(tmp)``, then rename ``tmp`` onto ``path``; returns ``path``.

    ``tmp`` is a new, hidden file in ``path``'s folder (same file system, so the rename is
    atomic) named ``.STEM.tmp-PID.XXXXXXXX.SUFFIX``: it keeps the suffix, so a writer that
    goes by the extension sees a normal name. Parent folders are created; the result gets the
    permissions of a normal new file. ``what`` names the kind of file in messages
    (``"image"``: "cannot write image PATH: ...").

    Raises:
        MofmeError: the folder cannot be created or written, or ``write`` raised an exception
            for which ``failure(exc)`` is true (default: any ``OSError``); other exceptions
            propagate. Either way the temporary file is removed and an earlier ``path`` is
            left as it was.
    """
    path = Path(path)
    name = f"{what} {path}" if what else str(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{path.stem}.tmp-{os.getpid()}.", suffix=path.suffix, dir=path.parent
        )
    except OSError as exc:
        raise MofmeError(f"cannot write {name}: {_reason(exc)}") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        # mkstemp creates 0600 files; give the result the permissions of a normal new file.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as exc:
        # On a read-only or vanished folder unlink fails too; that must not hide the real error.
        with contextlib.suppress(OSError):
            tmp.unlink()
        if failure(exc):
            raise MofmeError(
                f"cannot write {name}: {_reason(exc)} (any earlier {path.name} is unchanged)"
            ) from exc
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, what: str = "") -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), what)


def atomic_write_text(path: str | os.PathLike[str], text: str, what: str = "") -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write`)."""
    return atomic_write_bytes(path, text.encode("utf-8"), what)


def save_image(
    path: str | os.PathLike[str],
    rgb: np.ndarray,
    alpha: np.ndarray | None = None,
    bit_depth: int = 8,
    quality: int = 95,
) -> Path:
    """Write an image atomically; the format follows the file extension.

    Args:
        path: destination; parent folders are created.
        rgb: ``(H, W, 3)`` float RGB, or ``(H, W)`` float grayscale; values are clipped to
            ``[0, 1]`` and rounded.
        alpha: optional ``(H, W)`` float alpha in ``[0, 1]``. Formats without alpha (JPEG,
            BMP, PPM) drop it with a warning.
        bit_depth: 8 or 16. 16 bits are written for PNG (grayscale, RGB and with alpha) and TIFF;
            other formats fall back to 8 bits with a warning.
        quality: JPEG / WebP quality.

    Returns:
        The destination path.

    Raises:
        MofmeError: unknown extension, NaN/inf in the data, or the file cannot be written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None:
        raise MofmeError(f"cannot write image {path}: unknown image extension {suffix!r}")
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    rgb = np.asarray(rgb)
    if rgb.ndim not in (2, 3) or (rgb.ndim == 3 and rgb.shape[2] != 3):
        raise ValueError(f"rgb must be (H, W, 3) or (H, W), got {rgb.shape}")
    if not np.issubdtype(rgb.dtype, np.floating):
        raise ValueError(f"rgb must be a float array in [0, 1], got {rgb.dtype}")
    planes = rgb if rgb.ndim == 3 else rgb[:, :, None]
    if alpha is not None:
        alpha = np.asarray(alpha)
        if alpha.shape != planes.shape[:2]:
            raise ValueError(f"alpha must be {planes.shape[:2]}, got {alpha.shape}")
        if suffix in _ALPHA_SUFFIXES:
            planes = np.concatenate([planes, alpha[:, :, None]], axis=2)
        else:
            warnings.warn(f"{path}: {fmt} has no alpha channel; alpha not saved", stacklevel=2)
    if not np.all(np.isfinite(planes)):
        raise MofmeError(f"cannot write image {path}: the data contains NaN or infinite values")
    if bit_depth == 16 and suffix not in (".png", *_TIFF_SUFFIXES):
        warnings.warn(f"{path}: {fmt} cannot store 16 bits; writing 8 bits", stacklevel=2)
        bit_depth = 8

    scale = 65535.0 if bit_depth == 16 else 255.0
    data = np.rint(np.clip(planes, 0.0, 1.0) * scale)
    data = data.astype(np.uint16 if bit_depth == 16 else np.uint8)

    def write(tmp: Path) -> None:
        if bit_depth == 16 and suffix == ".png":
            _write_png16(tmp, data)
        elif bit_depth == 16:
            import tifffile  # installed with scikit-image

            photometric = "minisblack" if data.shape[2] <= 2 else "rgb"
            extra = ["unassalpha"] if data.shape[2] in (2, 4) else None
            tifffile.imwrite(
                tmp, data.squeeze(2) if data.shape[2] == 1 else data,
                photometric=photometric, extrasamples=extra,
            )  # fmt: skip
        else:
            image = Image.fromarray(data.squeeze(2) if data.shape[2] == 1 else data)
            options = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
            image.save(tmp, format=fmt, **options)

    atomic_write(path, write, what="image")
    return path


_TEMP_NAME = re.compile(r"^\..+\.tmp-(\d+)(\..*)?$")


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the hidden ``.NAME.tmp-PID...`` files/folders of dead processes in ``folder``.

    Atomic writes (:func:`save_image`, videos, checkpoints) put the pid in their temporary
    names; a process killed by SIGKILL cannot remove its own, so the next run does. Temp files
    of live processes (a concurrent run) are left alone. Returns what was removed.
    """
    import shutil

    from mofme.runlock import pid_alive

    removed: list[Path] = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed  # missing or unreadable: nothing of ours to clean
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or pid_alive(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
    return removed


def _write_png16(path: Path, data: np.ndarray) -> None:
    """Write ``(H, W, C)`` uint16 data (C = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA) as a 16-bit PNG.

    Pillow cannot write 16-bit colour PNGs, and the format is simple enough to write directly:
    big-endian samples, each row prefixed by its filter type, zlib-compressed.
    """
    import struct
    import zlib

    height, width, channels = data.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = data.astype(">u2").view(np.uint8).reshape(height, width * channels * 2)
    # PNG filter "Up" (type 2): each byte minus the byte above, modulo 256. It needs no
    # sequential scan and usually compresses photos much better than no filter.
    filtered = rows.copy()
    filtered[1:] -= rows[:-1]
    raw = np.concatenate([np.full((height, 1), 2, np.uint8), filtered], axis=1).tobytes()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    with open(path, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n")
        handle.write(chunk(b"IHDR", header))
        handle.write(chunk(b"IDAT", zlib.compress(raw, 6)))
        handle.write(chunk(b"IEND", b""))
