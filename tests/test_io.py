"""Image reading / writing: conversions, precision, orientation, bad files, atomic saves."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image, ImageOps

from mofme.data.io import (
    list_images,
    load_image,
    natural_key,
    read_image,
    resize_rgb,
    save_image,
    to_numpy,
    to_tensor,
)
from mofme.errors import MofmeError

H, W = 20, 24


def pattern_u8(h: int = H, w: int = W) -> np.ndarray:
    """An asymmetric RGB pattern, so flips / rotations are visible."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 10 % 256, y * 12 % 256, (x * y) % 256], axis=2).astype(np.uint8)


def test_rgb_png_roundtrip_exact(tmp_path):
    data = pattern_u8()
    Image.fromarray(data).save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    assert loaded.rgb.dtype == np.float32 and loaded.rgb.shape == (H, W, 3)
    assert loaded.alpha is None and loaded.bit_depth == 8 and loaded.mode == "RGB"
    np.testing.assert_array_equal(np.rint(loaded.rgb * 255).astype(np.uint8), data)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), loaded.rgb)


@pytest.mark.parametrize("mode", ["L", "1"])
def test_grayscale_is_replicated(tmp_path, mode):
    gray = pattern_u8()[:, :, 0]
    Image.fromarray(gray).convert(mode).save(tmp_path / "g.png")
    loaded = load_image(tmp_path / "g.png")
    expected = np.asarray(Image.fromarray(gray).convert(mode).convert("L")) / 255.0
    assert loaded.rgb.shape == (H, W, 3) and loaded.alpha is None
    for c in range(3):
        np.testing.assert_allclose(loaded.rgb[:, :, c], expected, atol=1e-6)


def test_rgba_alpha_kept_separately(tmp_path):
    data = pattern_u8()
    alpha = np.linspace(0, 255, H * W).reshape(H, W).astype(np.uint8)
    Image.fromarray(np.dstack([data, alpha])).save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    # Colours are the stored values, not composited over a background.
    np.testing.assert_array_equal(np.rint(loaded.rgb * 255), data)
    assert loaded.alpha is not None and loaded.alpha.shape == (H, W)
    np.testing.assert_array_equal(np.rint(loaded.alpha * 255), alpha)


def test_la_image(tmp_path):
    gray, alpha = pattern_u8()[:, :, 0], pattern_u8()[:, :, 1]
    Image.fromarray(np.dstack([gray, alpha]), mode="LA").save(tmp_path / "la.png")
    loaded = load_image(tmp_path / "la.png")
    np.testing.assert_array_equal(np.rint(loaded.rgb[:, :, 2] * 255), gray)
    np.testing.assert_array_equal(np.rint(loaded.alpha * 255), alpha)


def test_palette_with_and_without_transparency(tmp_path):
    indices = (np.arange(H * W).reshape(H, W) % 4).astype(np.uint8)
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30] + [0] * (256 * 3 - 12)
    img = Image.fromarray(indices, mode="P")
    img.putpalette(palette)
    img.save(tmp_path / "p.png")
    img.save(tmp_path / "pt.png", transparency=1)

    plain = load_image(tmp_path / "p.png")
    assert plain.alpha is None and plain.mode == "P"
    np.testing.assert_allclose(plain.rgb[0, 3], np.array([10, 20, 30]) / 255, atol=1e-6)

    transparent = load_image(tmp_path / "pt.png")
    assert transparent.alpha is not None
    np.testing.assert_array_equal(transparent.alpha, np.where(indices == 1, 0.0, 1.0))
    np.testing.assert_allclose(transparent.rgb[0, 1], [0, 1, 0], atol=1e-6)


def test_cmyk_jpeg_converted(tmp_path):
    Image.fromarray(pattern_u8()).convert("CMYK").save(tmp_path / "c.jpg")
    loaded = load_image(tmp_path / "c.jpg")
    assert loaded.mode == "CMYK" and loaded.rgb.shape == (H, W, 3)
    assert loaded.rgb.min() >= 0.0 and loaded.rgb.max() <= 1.0


def test_16bit_grayscale_png_keeps_precision(tmp_path):
    data = np.full((H, W), 1000, np.uint16)
    data[0, 0], data[1, 1] = 1, 65535
    Image.fromarray(data).save(tmp_path / "g16.png")
    loaded = load_image(tmp_path / "g16.png")
    assert loaded.bit_depth == 16 and loaded.mode.startswith("I")
    assert loaded.rgb[5, 5, 0] == pytest.approx(1000 / 65535, abs=1e-7)
    assert loaded.rgb[0, 0, 1] == pytest.approx(1 / 65535, abs=1e-7)
    assert loaded.rgb[1, 1, 2] == 1.0


@pytest.mark.parametrize("with_alpha", [False, True])
def test_16bit_rgb_png_roundtrip(tmp_path, with_alpha):
    rng = np.random.default_rng(0)
    values = rng.integers(0, 65536, size=(H, W, 3)).astype(np.uint16)
    alpha = rng.integers(0, 65536, size=(H, W)).astype(np.uint16) if with_alpha else None
    save_image(
        tmp_path / "c16.png",
        values / 65535.0,
        alpha=None if alpha is None else alpha / 65535.0,
        bit_depth=16,
    )
    loaded = load_image(tmp_path / "c16.png")
    assert loaded.bit_depth == 16
    np.testing.assert_array_equal(np.rint(loaded.rgb.astype(np.float64) * 65535), values)
    if with_alpha:
        np.testing.assert_array_equal(np.rint(loaded.alpha.astype(np.float64) * 65535), alpha)
    # An independent decoder (Pillow, which keeps the high byte) reads the same pixels.
    pillow = np.asarray(Image.open(tmp_path / "c16.png"))
    np.testing.assert_array_equal(pillow[:, :, :3], values >> 8)


def test_16bit_grayscale_save_roundtrip(tmp_path):
    gray = np.linspace(0, 1, H * W).reshape(H, W)
    save_image(tmp_path / "g.png", gray, bit_depth=16)
    with Image.open(tmp_path / "g.png") as img:
        assert img.mode.startswith("I;16")
        np.testing.assert_array_equal(np.asarray(img), np.rint(gray * 65535))
    loaded = load_image(tmp_path / "g.png")
    np.testing.assert_allclose(loaded.rgb[:, :, 1], np.rint(gray * 65535) / 65535, atol=1e-7)


def test_16bit_rgb_tiff(tmp_path):
    values = (np.arange(H * W * 3).reshape(H, W, 3) * 37 % 65536).astype(np.uint16)
    tifffile.imwrite(tmp_path / "c.tif", values, photometric="rgb")
    loaded = load_image(tmp_path / "c.tif")
    assert loaded.bit_depth == 16
    np.testing.assert_array_equal(np.rint(loaded.rgb.astype(np.float64) * 65535), values)


def test_float_tiffs(tmp_path):
    gray = np.linspace(-0.5, 1.5, H * W, dtype=np.float32).reshape(H, W)
    tifffile.imwrite(tmp_path / "f.tif", gray)
    loaded = load_image(tmp_path / "f.tif")
    assert loaded.mode == "F" and loaded.bit_depth == 16
    np.testing.assert_allclose(loaded.rgb[:, :, 0], np.clip(gray, 0, 1))

    colour = np.random.default_rng(1).random((H, W, 3), dtype=np.float32)
    tifffile.imwrite(tmp_path / "f3.tif", colour, photometric="rgb")
    np.testing.assert_allclose(load_image(tmp_path / "f3.tif").rgb, colour)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_float_tiff_with_nan_is_refused(tmp_path, bad):
    data = np.full((H, W), 0.5, np.float32)
    data[3, 4] = bad
    tifffile.imwrite(tmp_path / "nan.tif", data)
    with pytest.raises(MofmeError, match=r"nan\.tif.*NaN or infinite"):
        load_image(tmp_path / "nan.tif")


def test_exif_orientation_6_jpeg(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pattern_u8()).save(tmp_path / "o.jpg", exif=exif.tobytes())
    loaded = load_image(tmp_path / "o.jpg")
    assert loaded.rgb.shape == (W, H, 3)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pattern_u8()).save(tmp_path / "o.png", exif=exif.tobytes())
    with Image.open(tmp_path / "o.png") as img:
        expected = np.asarray(ImageOps.exif_transpose(img))
    loaded = load_image(tmp_path / "o.png")
    np.testing.assert_array_equal(np.rint(loaded.rgb * 255).astype(np.uint8), expected)


def test_truncated_png_names_file(tmp_path):
    Image.fromarray(pattern_u8(64, 64)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(MofmeError, match=r"cannot read image .*cut\.png"):
        load_image(tmp_path / "cut.png")


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("notes.png", b"this is not an image\n", "cannot identify"),
        ("empty.jpg", b"", "empty"),
    ],
)
def test_bad_files_name_the_file(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(MofmeError, match=rf"cannot read image .*{name}: .*{reason}"):
        load_image(tmp_path / name)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(MofmeError, match="no such file"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(MofmeError, match="folder"):
        load_image(tmp_path)


def test_save_is_atomic_and_creates_folders(tmp_path):
    rgb = pattern_u8() / 255.0
    out = tmp_path / "deep" / "er" / "out.png"
    assert save_image(out, rgb) == out
    save_image(out, 1.0 - rgb)  # overwrite in place
    np.testing.assert_allclose(read_image(out), 1.0 - rgb, atol=1e-6)
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.png"]


def test_save_refuses_nan_and_unknown_extension(tmp_path):
    rgb = np.zeros((H, W, 3))
    rgb[0, 0, 0] = np.nan
    with pytest.raises(MofmeError, match=r"bad\.png.*NaN"):
        save_image(tmp_path / "bad.png", rgb)
    with pytest.raises(MofmeError, match=r"x\.nope"):
        save_image(tmp_path / "x.nope", np.zeros((H, W, 3)))
    assert list(tmp_path.iterdir()) == []


def test_save_clips_and_rounds(tmp_path):
    rgb = np.full((H, W, 3), 0.5)
    rgb[0, 0] = [-1.0, 2.0, 0.2]
    save_image(tmp_path / "c.png", rgb)
    pixels = np.asarray(Image.open(tmp_path / "c.png"))
    np.testing.assert_array_equal(pixels[0, 0], [0, 255, 51])
    assert pixels[1, 1, 0] == 128  # rint(127.5) rounds half to even -> 128


def test_save_jpeg_warns_for_alpha_and_16_bits(tmp_path):
    rgb = pattern_u8() / 255.0
    with pytest.warns(UserWarning, match="alpha"):
        save_image(tmp_path / "a.jpg", rgb, alpha=np.ones((H, W)))
    with pytest.warns(UserWarning, match="8 bits"):
        save_image(tmp_path / "b.jpg", rgb, bit_depth=16)
    assert load_image(tmp_path / "b.jpg").rgb.shape == (H, W, 3)


def test_save_rgba_png_roundtrip(tmp_path):
    rgb = pattern_u8() / 255.0
    alpha = np.linspace(0, 1, H * W).reshape(H, W)
    save_image(tmp_path / "a.png", rgb, alpha=alpha)
    loaded = load_image(tmp_path / "a.png")
    np.testing.assert_allclose(loaded.rgb, rgb, atol=1e-6)
    np.testing.assert_allclose(loaded.alpha, np.rint(alpha * 255) / 255, atol=1e-6)


def test_tensor_conversions():
    rgb = np.random.default_rng(0).random((H, W, 3), dtype=np.float32)
    tensor = to_tensor(rgb)
    assert tensor.shape == (3, H, W) and tensor.dtype == torch.float32
    np.testing.assert_array_equal(to_numpy(tensor), rgb)
    np.testing.assert_array_equal(to_numpy(tensor[None].requires_grad_()), rgb)
    with pytest.raises(ValueError):
        to_numpy(torch.zeros(2, 3, 4, 4))


def test_resize_8bit_matches_pillow():
    data = pattern_u8()
    expected = np.asarray(Image.fromarray(data).resize((36, 10), Image.Resampling.BICUBIC))
    resized = resize_rgb(data / 255.0, (36, 10))
    assert resized.shape == (10, 36, 3)
    np.testing.assert_array_equal(np.rint(resized * 255), expected)
    smooth = resize_rgb(data / 255.0, (36, 10), bit_depth=16)
    assert smooth.shape == (10, 36, 3) and smooth.min() >= 0 and smooth.max() <= 1
    # Pillow's float (mode F) and 8-bit bicubic kernels differ in rounding and edge handling by
    # up to ~2/255 on Pillow 13 and ~4.4/255 on Pillow 12 (which gradio pins): same filter.
    assert np.abs(smooth - resized).max() < 6 / 255


def test_natural_sort_and_listing(tmp_path):
    names = ["10.png", "2.png", "1.JPG", "img_10.png", "img_9.png", ".hidden.png", "notes.txt"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    listed = [p.name for p in list_images(tmp_path)]
    assert listed == ["1.JPG", "2.png", "10.png", "img_9.png", "img_10.png"]
    assert natural_key("a2b") < natural_key("a10b") < natural_key("b1")
    with pytest.raises(MofmeError, match="does not exist"):
        list_images(tmp_path / "missing")


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_gray_alpha_and_tiff_alpha_roundtrip(tmp_path, suffix):
    rng = np.random.default_rng(2)
    gray = rng.integers(0, 65536, size=(H, W)).astype(np.uint16)
    alpha = rng.integers(0, 65536, size=(H, W)).astype(np.uint16)
    rgb = np.dstack([gray, gray[::-1], gray[:, ::-1]]) if suffix == ".tif" else gray
    save_image(tmp_path / f"a{suffix}", rgb / 65535.0, alpha=alpha / 65535.0, bit_depth=16)
    loaded = load_image(tmp_path / f"a{suffix}")
    assert loaded.bit_depth == 16
    expected = rgb if rgb.ndim == 3 else np.dstack([gray] * 3)
    np.testing.assert_array_equal(np.rint(loaded.rgb.astype(np.float64) * 65535), expected)
    np.testing.assert_array_equal(np.rint(loaded.alpha.astype(np.float64) * 65535), alpha)
