"""Reading image files into float RGB (see :mod:`mofme.data.io` for the conversions)."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mofme.data.io.budget import _open_pillow, check_pixels
from mofme.errors import MofmeError

_EXIF_ORIENTATION = 0x0112
_TIFF_SUFFIXES = (".tif", ".tiff")
# Pillow modes of grayscale files (16-bit ones are "I;16", "I;16B", ...).
_GREY_MODES = ("1", "L", "LA", "La", "I", "F")


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
