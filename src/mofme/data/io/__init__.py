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
so an interrupted run never leaves a half-written image under the final name;
:func:`atomic_write` is that one atomic write, for every file mofme writes.

Modules: :mod:`~mofme.data.io.budget` (the pixel budget, header sizes),
:mod:`~mofme.data.io.read` (:func:`load_image`), :mod:`~mofme.data.io.write` (:func:`save_image`,
:func:`atomic_write`), :mod:`~mofme.data.io.convert` (resizing, uint8, tensors),
:mod:`~mofme.data.io.listing` (image files of a folder). Import from ``mofme.data.io``.
"""

from mofme.data.io.budget import (
    DEFAULT_MAX_PIXELS,
    check_pixels,
    image_size,
    max_pixels,
    parse_pixels,
    pixel_budget,
)
from mofme.data.io.convert import luma, resize_rgb, to_numpy, to_tensor, to_uint8
from mofme.data.io.listing import IMAGE_EXTENSIONS, list_images, natural_key
from mofme.data.io.read import LoadedImage, load_image, read_image
from mofme.data.io.write import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    remove_stale_temps,
    save_image,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "LoadedImage",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_pixels",
    "image_size",
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
    "to_uint8",
]
