"""The pixel budget: how large an image any reader (Pillow, tifffile, FFmpeg) may decode.

The size in a file's header is checked before any decoding, so a small file that claims a huge
size cannot exhaust memory. It replaces Pillow's own decompression-bomb limit.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from mofme.errors import MofmeError

#: Largest image (width x height) the readers accept unless raised: 100 MP is about 1.2 GB as
#: float RGB and a few GB at peak while converting; it covers 108 MP phone sensors only when
#: raised, which is deliberate (a header is cheap to forge, memory is not).
DEFAULT_MAX_PIXELS = 100_000_000
_MAX_PIXELS_ENV = "MOFME_MAX_PIXELS"
_budget_override: int | None = None  # set by pixel_budget(); wins over the environment
_pillow_limit_lock = threading.Lock()


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


def image_size(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """``(height, width)`` from an image file's header, without decoding it; ``None`` when
    Pillow cannot tell (the full reader, :func:`~mofme.data.io.load_image`, then says why)."""
    try:
        with _open_pillow(Path(path)) as img:
            return img.height, img.width
    except Exception:
        return None
