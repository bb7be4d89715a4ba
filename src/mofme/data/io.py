"""Reading and writing images, robustly.

Everything inside mofme works on float RGB in ``[0, 1]``; this module is the single place where
files on disk become such arrays and back.

Reading (:func:`load_image`) converts rather than rejects:

* EXIF orientation is applied, so the array is upright as a photo viewer shows it.
* Grayscale (``1``, ``L``, ``I;16``, ``I``, ``F``) is replicated to three channels.
* Palette images become RGB, or RGB + alpha when the palette has transparency.
* CMYK / YCbCr / LAB / HSV are converted to RGB by Pillow.
* Alpha (RGBA, LA, PA, transparency keys) is returned *separately* in
  :attr:`LoadedImage.alpha`; ``rgb`` holds the stored colour values, not composited on a
  background, so a restored image can be written back with its original alpha.
* 16-bit data keeps its precision: grayscale PNG/TIFF through Pillow; 16-bit RGB/RGBA PNG
  (which Pillow would truncate to 8 bits) is decoded with PyAV/FFmpeg, and 16-bit RGB TIFF with
  ``tifffile`` (installed with scikit-image). Values are divided by 65535.
* Float images (TIFF mode ``F``) are taken as already in ``[0, 1]`` and clipped to it; a float
  image containing NaN or inf is refused with an error naming the file (there is no faithful
  value to put there).
* Anything unreadable (missing, empty, not an image, truncated) raises
  :class:`~mofme.errors.MofmeError` ``"cannot read image PATH: reason"``.
* A pixel budget (:data:`DEFAULT_MAX_PIXELS`, 100 megapixels; raise it with the environment
  variable ``MOFME_MAX_PIXELS`` or :func:`pixel_budget`) is checked against the size in the file
  header before any decoding, for every reader (Pillow, tifffile, FFmpeg), so a small file that
  claims a huge size cannot exhaust memory. It replaces Pillow's own decompression-bomb limit.
* Multi-frame files (animated GIF/PNG/WebP, multi-page TIFF): the first frame is read;
  :attr:`LoadedImage.frames` says how many there are, so callers can tell the user.

Writing (:func:`save_image`) is atomic (temporary file in the same folder, then ``os.replace``),
so an interrupted run never leaves a half-written image under the final name.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mofme.errors import MofmeError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "LoadedImage",
    "list_images",
    "load_image",
    "luma",
    "max_pixels",
    "natural_key",
    "parse_pixels",
    "pixel_budget",
    "read_image",
    "remove_stale_temps",
    "resize_rgb",
    "save_image",
    "to_numpy",
    "to_tensor",
]

#: File extensions (lower case) treated as images when listing folders.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pnm",
)

_EXIF_ORIENTATION = 0x0112

#: Largest image (width x height) the readers accept unless raised: 100 MP is about 1.2 GB as
#: float RGB and a few GB at peak while converting; it covers 108 MP phone sensors only when
#: raised, which is deliberate (a header is cheap to forge, memory is not).
DEFAULT_MAX_PIXELS = 100_000_000
_MAX_PIXELS_ENV = "MOFME_MAX_PIXELS"
_budget_override: int | None = None  # set by pixel_budget(); wins over the environment
_pillow_limit_lock = threading.Lock()
_TIFF_SUFFIXES = (".tif", ".tiff")
# Pillow modes of grayscale files (16-bit ones are "I;16", "I;16B", ...).
_GREY_MODES = ("1", "L", "LA", "La", "I", "F")
# ITU-R BT.601 luma weights, as Pillow's convert("L"): how an RGB result becomes grey again.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
# Formats whose Pillow writers store an alpha channel.
_ALPHA_SUFFIXES = (".png", ".tif", ".tiff", ".webp")


@dataclass
class LoadedImage:
    """An image as read from disk.

    Attributes:
        rgb: ``(H, W, 3)`` float32 in ``[0, 1]`` (grayscale is replicated to 3 channels).
        alpha: ``(H, W)`` float32 in ``[0, 1]``, or ``None`` when the file has no alpha.
        bit_depth: precision to write results at without losing any: 8 for 8-bit sources,
            16 for 16-bit and floating-point sources.
        mode: the Pillow mode of the file (``"RGB"``, ``"I;16"``, ``"P"``, ...), or
            ``"tifffile"`` when only tifffile could read it.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    bit_depth: int
    mode: str
    frames: int = 1  # frames/pages in the file; only the first is in ``rgb``

    @property
    def grey(self) -> bool:
        """The file is grayscale (with or without alpha): results go back as grayscale."""
        return self.mode in _GREY_MODES or self.mode.startswith("I;16")


# ------------------------------------------------------------------------------ pixel budget


def parse_pixels(text: str, what: str = "pixel budget") -> int:
    """``"250000000"``, ``"250M"`` / ``"250MP"`` or ``"2.5e8"`` -> pixels; ``0`` = no limit."""
    value = str(text).strip().upper().removesuffix("P")
    scale = 1_000_000 if value.endswith("M") else 1
    try:
        pixels = float(value.removesuffix("M")) * scale
    except ValueError:
        pixels = -1.0
    if not (pixels >= 0 and pixels < float("inf")):
        raise MofmeError(f"bad {what} {text!r}: give a number of pixels such as 250M (0: none)")
    return int(pixels)


def max_pixels() -> int:
    """The pixel budget in force (0 = unlimited): :func:`pixel_budget`, else the environment."""
    if _budget_override is not None:
        return _budget_override
    env = os.environ.get(_MAX_PIXELS_ENV)
    if env is None or not env.strip():
        return DEFAULT_MAX_PIXELS
    return parse_pixels(env, f"{_MAX_PIXELS_ENV} value")


@contextlib.contextmanager
def pixel_budget(pixels: int | str | None) -> Iterator[None]:
    """Use another pixel budget inside the block (``None``: leave it as it is; 0: no limit)."""
    global _budget_override
    old = _budget_override
    if pixels is not None:
        _budget_override = parse_pixels(str(pixels)) if isinstance(pixels, str) else int(pixels)
    try:
        yield
    finally:
        _budget_override = old


def check_pixels(path: Path, width: int, height: int, what: str = "image") -> None:
    """Refuse ``width x height`` beyond the budget, before anything is allocated for it."""
    limit = max_pixels()
    if limit and int(width) * int(height) > limit:
        raise MofmeError(
            f"cannot read {what} {path}: {width}x{height} is {width * height / 1e6:.3g} MP, over "
            f"the pixel budget of {limit / 1e6:g} MP (raise it with --max-pixels or "
            f"{_MAX_PIXELS_ENV}=N)"
        )


def _open_pillow(path: Path) -> Image.Image:
    """``Image.open`` without Pillow's own bomb check: mofme checks its budget right after.

    Pillow's fixed 89 MP warning / 179 MP error would make the documented, raisable budget
    unraisable and, for TIFF, send bombs to the tifffile fallback that decoded them anyway.
    """
    with _pillow_limit_lock:
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = old


# ----------------------------------------------------------------------------------- reading


def load_image(path: str | os.PathLike[str]) -> LoadedImage:
    """Read an image file into float RGB ``(H, W, 3)`` in ``[0, 1]`` plus optional alpha.

    See the module docstring for how each kind of file is converted.

    Raises:
        MofmeError: the file is missing, empty, not an image, truncated, or holds NaN/inf.
    """
    path = Path(path)
    try:
        info = path.stat()
    except OSError as exc:  # missing, symlink loop, unreadable folder on the way, ...
        reason = "no such file" if isinstance(exc, FileNotFoundError) else _reason(exc)
        raise MofmeError(f"cannot read image {path}: {reason}") from None
    if path.is_dir():
        raise MofmeError(f"cannot read image {path}: it is a folder")
    if not stat.S_ISREG(info.st_mode):  # a FIFO would block, a device never end
        raise MofmeError(f"cannot read image {path}: not a regular file")
    if info.st_size == 0:
        raise MofmeError(f"cannot read image {path}: the file is empty")
    try:
        with _open_pillow(path) as img:
            # The header alone gives the size: refuse a bomb before load() decodes it.
            check_pixels(path, *img.size)
            # Animations and multi-page files; not MPO "JPEGs", whose extra frames are
            # previews or depth maps of the same photo.
            animated = img.format in ("GIF", "PNG", "WEBP", "TIFF")
            frames = int(getattr(img, "n_frames", 1) or 1) if animated else 1
            mode = img.mode
            rawmode = _tile_rawmode(img)
            # load() decodes the whole file, so truncated or corrupt data fails here.
            img.load()
            orientation = int(img.getexif().get(_EXIF_ORIENTATION, 1) or 1)
            if mode in ("RGB", "RGBA", "LA") and ";16" in rawmode:
                # Pillow has no 16-bit-per-channel colour mode and would keep only the high
                # byte; decode the file again with a reader that keeps all 16 bits.
                array = _read_wide(path, img.format, with_alpha=mode != "RGB")
                rgb, alpha, bit_depth = _split_channels(array, path)
            else:
                rgb, alpha, bit_depth = _from_pil(img, path)
    except MofmeError:
        raise
    except Exception as exc:
        # Pillow raises many exception types for bad data (OSError, SyntaxError, ValueError,
        # struct.error, DecompressionBombError, ...); all mean "this file cannot be read".
        if path.suffix.lower() in _TIFF_SUFFIXES:
            # Float RGB TIFFs (and a few other layouts) are not supported by Pillow at all.
            return _load_with_tifffile(path, exc)
        raise MofmeError(f"cannot read image {path}: {_reason(exc)}") from exc
    loaded = _finish(rgb, alpha, bit_depth, mode, orientation, path)
    loaded.frames = frames
    return loaded


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Shortcut for ``load_image(path).rgb``: float32 ``(H, W, 3)`` in ``[0, 1]``."""
    return load_image(path).rgb


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror  # "No space left on device", without "[Errno 28]"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text


def _tile_rawmode(img: Image.Image) -> str:
    """The raw (on-disk) pixel layout Pillow will decode, e.g. ``"RGB;16B"``; ``""`` if unknown."""
    tile = getattr(img, "tile", None) or []
    if not tile:
        return ""
    args = tile[0][3]
    if isinstance(args, tuple):
        args = args[0] if args else ""
    return args if isinstance(args, str) else ""


def _from_pil(img: Image.Image, path: Path) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Convert a loaded Pillow image to ``(rgb, alpha, bit_depth)``."""
    mode = img.mode
    if mode.startswith("I;16"):
        array = np.asarray(img).astype(np.float32) / 65535.0
        return _split_channels(array, path, bit_depth=16)
    if mode == "I":
        # 32-bit integer mode: Pillow uses it for 16-bit PNGs in some versions; values beyond
        # 16 bits have no agreed scale, so refuse them instead of guessing.
        array = np.asarray(img)
        lo, hi = int(array.min()), int(array.max())
        if lo < 0 or hi > 65535:
            raise MofmeError(
                f"cannot read image {path}: 32-bit integer pixels range {lo}..{hi}; "
                "only 0..65535 is supported"
            )
        return _split_channels(array.astype(np.float32) / 65535.0, path, bit_depth=16)
    if mode == "F":
        return _split_channels(np.asarray(img, dtype=np.float32), path, bit_depth=16)
    if mode in ("PA", "RGBa") or ("transparency" in img.info and mode in ("P", "L", "RGB")):
        img = img.convert("RGBA")
    elif mode == "La":
        img = img.convert("LA")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        img = img.convert("RGB")  # 1, P, CMYK, YCbCr, LAB, HSV, RGBX, ...
    array = np.asarray(img).astype(np.float32) / 255.0
    return _split_channels(array, path, bit_depth=8)


def _split_channels(
    array: np.ndarray, path: Path, bit_depth: int | None = None
) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Turn ``(H, W)`` or ``(H, W, 1..4)`` pixel data into float ``(rgb, alpha, bit_depth)``.

    Integer data is scaled by its dtype's range (uint8 / uint16); float data is used as is.
    """
    if array.dtype == np.uint8:
        array, bit_depth = array.astype(np.float32) / 255.0, 8
    elif array.dtype == np.uint16:
        array, bit_depth = array.astype(np.float32) / 65535.0, 16
    elif np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
        bit_depth = bit_depth or 16
    else:
        raise MofmeError(f"cannot read image {path}: unsupported pixel type {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise MofmeError(f"cannot read image {path}: unsupported pixel layout {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise MofmeError(f"cannot read image {path}: the image has zero size")
    channels = array.shape[2]
    colour = array[:, :, :1].repeat(3, axis=2) if channels <= 2 else array[:, :, :3]
    alpha = array[:, :, channels - 1] if channels in (2, 4) else None
    return colour, alpha, bit_depth


def _finish(
    rgb: np.ndarray,
    alpha: np.ndarray | None,
    bit_depth: int,
    mode: str,
    orientation: int,
    path: Path,
) -> LoadedImage:
    """Refuse NaN/inf, clip, apply EXIF orientation, make contiguous float32 arrays."""
    bad = int(np.count_nonzero(~np.isfinite(rgb)))
    if alpha is not None:
        bad += int(np.count_nonzero(~np.isfinite(alpha)))
    if bad:
        raise MofmeError(f"cannot read image {path}: {bad} pixel values are NaN or infinite")
    return LoadedImage(
        rgb=np.ascontiguousarray(_orient(np.clip(rgb, 0.0, 1.0), orientation), np.float32),
        alpha=None
        if alpha is None
        else np.ascontiguousarray(_orient(np.clip(alpha, 0.0, 1.0), orientation), np.float32),
        bit_depth=bit_depth,
        mode=mode,
    )


def _orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to ``(H, W, ...)`` data, as ``ImageOps.exif_transpose``."""
    if orientation == 2:
        return array[:, ::-1]
    if orientation == 3:
        return array[::-1, ::-1]
    if orientation == 4:
        return array[::-1]
    if orientation == 5:
        return array.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(array, k=-1)
    if orientation == 7:
        return array[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(array, k=1)
    return array


def _read_wide(path: Path, fmt: str | None, with_alpha: bool) -> np.ndarray:
    """Decode a 16-bit-per-channel colour PNG or TIFF to a uint16 ``(H, W, C)`` array."""
    if fmt == "PNG":
        import av  # FFmpeg's PNG decoder keeps 16-bit colour; PyAV is a mofme dependency

        with av.open(str(path), format="png_pipe") as container:
            frame = next(container.decode(video=0))
            # Gray + alpha comes back as RGBA with R = G = B, which _split_channels accepts.
            return frame.to_ndarray(format="rgba64le" if with_alpha else "rgb48le")
    if fmt == "TIFF":
        return _tifffile_array(path)[0]
    raise MofmeError(f"cannot read image {path}: 16-bit colour {fmt} files are not supported")


def _tifffile_array(path: Path) -> tuple[np.ndarray, int]:
    """First page of a TIFF as ``(H, W[, C])`` plus its orientation tag (tifffile)."""
    import tifffile  # installed with scikit-image

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        # Pillow may have refused this file before reading its size; check the budget here too,
        # from the page header, before asarray() allocates the whole image.
        check_pixels(path, int(page.imagewidth), int(page.imagelength))
        array = page.asarray()
        if array.ndim == 3 and int(page.planarconfig) == 2:  # separate planes: (C, H, W)
            array = np.moveaxis(array, 0, -1)
        tag = page.tags.get(274)
        orientation = int(tag.value) if tag is not None else 1
    return array, orientation


def _load_with_tifffile(path: Path, pillow_error: Exception) -> LoadedImage:
    try:
        array, orientation = _tifffile_array(path)
    except MofmeError:
        raise
    except ImportError:
        raise MofmeError(f"cannot read image {path}: {_reason(pillow_error)}") from pillow_error
    except Exception as exc:
        raise MofmeError(f"cannot read image {path}: {_reason(exc)}") from exc
    rgb, alpha, bit_depth = _split_channels(array, path)
    return _finish(rgb, alpha, bit_depth, "tifffile", orientation, path)


# ----------------------------------------------------------------------------------- writing


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

    # Same folder (same file system, so os.replace is atomic); hidden so listings skip it;
    # keeps the extension so every writer sees a normal file name; the pid lets a later run
    # remove it if this process dies (remove_stale_temps).
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
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
        os.replace(tmp, path)
    except OSError as exc:
        raise MofmeError(f"cannot write image {path}: {_reason(exc)}") from exc
    finally:
        # On a read-only or vanished folder unlink fails too; that must not hide the real error.
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
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


# ------------------------------------------------------------------------- resizing / tensors


def resize_rgb(rgb: np.ndarray, size: tuple[int, int], bit_depth: int = 8) -> np.ndarray:
    """Bicubic resize of float RGB ``(H, W, 3)`` to ``size = (width, height)`` with Pillow.

    8-bit images are resized as 8-bit RGB, exactly as PIL-based evaluation scripts do
    (``Image.resize(size, Image.BICUBIC)``), so ``--resize 720x480`` reproduces their numbers.
    Higher bit depths are resized per channel in float (mode ``F``) and clipped to ``[0, 1]``.
    """
    width, height = size
    if bit_depth == 8:
        data = np.rint(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)
        resized = Image.fromarray(data).resize((width, height), Image.Resampling.BICUBIC)
        return np.asarray(resized).astype(np.float32) / 255.0
    planes = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(rgb[:, :, c], np.float32), mode="F").resize(
                (width, height), Image.Resampling.BICUBIC
            )
        )
        for c in range(rgb.shape[2])
    ]
    return np.clip(np.stack(planes, axis=2), 0.0, 1.0).astype(np.float32)


def luma(rgb: np.ndarray) -> np.ndarray:
    """Float RGB ``(H, W, 3)`` -> grayscale ``(H, W)`` (BT.601 weights, as Pillow's ``"L"``).

    A grayscale input goes through the network as three equal channels, and the restored
    channels differ slightly; writing them as RGB would tint a grey image.
    """
    return np.asarray(rgb, np.float32) @ _LUMA


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` array -> float32 tensor ``(3, H, W)``."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(rgb).transpose(2, 0, 1))).float()


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """Tensor ``(3, H, W)`` or ``(1, 3, H, W)`` -> float32 array ``(H, W, 3)`` (CPU, no grad)."""
    if tensor.dim() == 4:
        if tensor.shape[0] != 1:
            raise ValueError(f"expected a single image (1, 3, H, W), got {tuple(tensor.shape)}")
        tensor = tensor[0]
    if tensor.dim() != 3:
        raise ValueError(f"expected (3, H, W), got {tuple(tensor.shape)}")
    return tensor.detach().to("cpu", torch.float32).permute(1, 2, 0).contiguous().numpy()


# ----------------------------------------------------------------------------------- listing


def natural_key(name: str | os.PathLike[str]) -> tuple[list[str | int], str]:
    """Sort key that orders digit runs by value: ``"2.png"`` < ``"10.png"``.

    Paths are keyed by their file name. Text parts compare case-insensitively; the original
    name breaks ties so the order is total and deterministic.
    """
    text = Path(name).name if isinstance(name, os.PathLike) else str(name)
    parts: list[str | int] = []
    for i, part in enumerate(re.split(r"(\d+)", text)):
        # re.split with a capture group alternates text (even) and digits (odd), so positions
        # always hold the same type and keys compare without TypeError.
        parts.append(int(part) if i % 2 else part.casefold())
    return parts, text


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files directly inside ``folder``, naturally sorted, hidden files skipped.

    Raises:
        MofmeError: ``folder`` does not exist or is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MofmeError(f"image folder {folder} does not exist")
    files = [
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    ]
    return sorted(files, key=natural_key)
