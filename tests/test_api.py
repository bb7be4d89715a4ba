"""The Python API: ``mofme.load()`` and ``Restorer.restore`` / ``routing_map`` / ``restore_video``."""

from __future__ import annotations

import subprocess
import sys

import av
import numpy as np
import pytest
import torch
from PIL import Image

import mofme
from mofme import checkpoint
from mofme.api import Restorer, resolve_checkpoint
from mofme.cli import main
from mofme.errors import MofmeError
from mofme.inference.tiling import restore_image
from mofme.model.config import get_preset
from mofme.model.net import MoFMENet


def slim_model(in_channels: int = 3) -> MoFMENet:
    """The tiny preset made narrower: fast enough for many calls per test."""
    torch.manual_seed(0)
    cfg = get_preset(
        "tiny", in_channels=in_channels, dim=16, heads=2, head_dim=8, head_channels=4,
        unpatch_channels=8,
    )  # fmt: skip
    return MoFMENet(cfg).eval()


@pytest.fixture(scope="module")
def bundled() -> Restorer:
    return mofme.load(device="cpu")


@pytest.fixture
def slim() -> Restorer:
    return Restorer(slim_model(), device="cpu", fast=False)


def photo(h: int = 37, w: int = 50, seed: int = 0) -> np.ndarray:
    """A smooth uint8 RGB picture (odd size: the model pads to its patch size and crops)."""
    rng = np.random.default_rng(seed)
    low = rng.random((4, 5, 3))
    img = Image.fromarray((low * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(img)


def reference(model: MoFMENet, rgb01: np.ndarray) -> np.ndarray:
    """The float RGB output of the inference path itself, ``(H, W, 3)``."""
    x = torch.from_numpy(np.ascontiguousarray(rgb01.transpose(2, 0, 1))).float()[None]
    return restore_image(model, x)[0].permute(1, 2, 0).numpy()


# ------------------------------------------------------------------------------- loading


def test_import_mofme_does_not_import_torch():
    code = "import sys, mofme; assert 'torch' not in sys.modules; print(mofme.load.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "load"


def test_load_short_names_paths_and_options(tmp_path):
    image = mofme.load(device="cpu", routing="topp:0.6")
    assert image.in_channels == 3 and image.routing == "topp:0.6"
    video = mofme.load("video", device="cpu")
    assert video.in_channels == 6
    path = tmp_path / "slim.safetensors"
    checkpoint.save(slim_model(), path)
    assert mofme.load(path, device="cpu").model.cfg.dim == 16
    assert resolve_checkpoint("image").name.endswith(".safetensors")
    with pytest.raises(MofmeError, match="image"):
        mofme.load(tmp_path / "missing.safetensors")
    with pytest.raises(MofmeError, match="precision"):
        mofme.load(precision="fp64")
    with pytest.raises(MofmeError, match="routing"):
        mofme.load(routing="best")


# ------------------------------------------------------------------------------- images


def test_numpy_dtypes_round_trip(slim):
    rgb8 = photo()
    want = reference(slim.model, rgb8.astype(np.float32) / 255)
    out8 = slim.restore(rgb8)
    assert out8.dtype == np.uint8 and out8.shape == rgb8.shape
    np.testing.assert_array_equal(out8, np.rint(want * 255).astype(np.uint8))

    rgb16 = rgb8.astype(np.uint16) * 257  # the same picture at 16 bits
    out16 = slim.restore(rgb16)
    assert out16.dtype == np.uint16
    np.testing.assert_array_equal(out16, np.rint(want * 65535).astype(np.uint16))

    for dtype in (np.float32, np.float64, np.float16):
        outf = slim.restore((rgb8 / 255).astype(dtype))
        assert outf.dtype == dtype and outf.shape == rgb8.shape
        np.testing.assert_allclose(
            outf.astype(np.float32), want, atol=1e-3 if dtype == np.float16 else 1e-6
        )


def test_grey_and_alpha_arrays(slim):
    rgb8 = photo()
    grey = rgb8[:, :, 1]
    out = slim.restore(grey)
    assert out.shape == grey.shape and out.dtype == np.uint8
    want = reference(slim.model, np.repeat(grey[:, :, None], 3, 2).astype(np.float32) / 255)
    luma = want @ np.array([0.299, 0.587, 0.114], np.float32)
    np.testing.assert_array_equal(out, np.rint(luma * 255).astype(np.uint8))

    alpha = np.arange(rgb8.shape[0] * rgb8.shape[1], dtype=np.uint8).reshape(rgb8.shape[:2])
    rgba = np.concatenate([rgb8, alpha[:, :, None]], axis=2)
    out = slim.restore(rgba)
    assert out.shape == rgba.shape
    np.testing.assert_array_equal(out[:, :, 3], alpha)  # alpha untouched
    np.testing.assert_array_equal(out[:, :, :3], slim.restore(rgb8))
    la = slim.restore(np.stack([grey, alpha], axis=2))
    assert la.shape == (*grey.shape, 2)
    np.testing.assert_array_equal(la[:, :, 1], alpha)


def test_pil_modes_round_trip(slim):
    rgb8 = photo()
    cases = {
        "RGB": Image.fromarray(rgb8),
        "RGBA": Image.fromarray(np.concatenate([rgb8, rgb8[:, :, :1]], axis=2)),
        "L": Image.fromarray(rgb8[:, :, 0]),
        "LA": Image.fromarray(rgb8[:, :, :2]),
        "I;16": Image.fromarray(rgb8[:, :, 0].astype(np.uint16) * 257),
        "F": Image.fromarray(rgb8[:, :, 0].astype(np.float32) / 255),
    }
    for mode, img in cases.items():
        assert img.mode == mode
        out = slim.restore(img)
        assert isinstance(out, Image.Image) and out.mode == mode and out.size == img.size, mode
    # Palette images have no faithful way back to a palette: RGB out.
    assert slim.restore(Image.fromarray(rgb8).convert("P")).mode == "RGB"
    # RGB through PIL equals RGB through NumPy.
    np.testing.assert_array_equal(np.asarray(slim.restore(cases["RGB"])), slim.restore(rgb8))


def test_tensors_keep_shape_dtype_and_batch(slim):
    x = torch.rand(2, 3, 24, 40, generator=torch.Generator().manual_seed(0))
    want = restore_image(slim.model, x)
    out = slim.restore(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, want, atol=0, rtol=0)
    single = slim.restore(x[1])
    assert single.shape == (3, 24, 40)
    torch.testing.assert_close(single, want[1], atol=1e-6, rtol=0)
    assert slim.restore(x.double()).dtype == torch.float64
    u8 = (x * 255).round().to(torch.uint8)
    assert slim.restore(u8).dtype == torch.uint8


def test_bad_inputs_are_one_line_errors(slim):
    with pytest.raises(MofmeError, match="PIL image"):
        slim.restore("rainy.png")
    with pytest.raises(MofmeError, match="shape"):
        slim.restore(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(MofmeError, match="dtype"):
        slim.restore(np.zeros((4, 4, 3), np.int64))
    with pytest.raises(MofmeError, match="NaN"):
        slim.restore(np.full((8, 8, 3), np.nan, np.float32))
    with pytest.raises(MofmeError, match="tensor"):
        slim.restore(torch.rand(1, 4, 8, 8))


def test_restore_equals_the_restore_command(bundled, tmp_path, capsys):
    """``mofme.load().restore(PIL)`` gives the pixels ``mofme restore`` writes."""
    src = tmp_path / "in.png"
    Image.fromarray(photo(61, 83, seed=3)).save(src)
    rc = main(["restore", str(src), "--out", str(tmp_path / "out"), "--device", "cpu",
               "--precision", "fp32"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    cli = np.asarray(Image.open(tmp_path / "out" / "in.png"))
    api = np.asarray(bundled.restore(Image.open(src)))
    np.testing.assert_array_equal(api, cli)


def test_tiled_restore_matches_restore_image():
    model = slim_model()
    tiled = Restorer(model, device="cpu", tile=32, overlap=8, fast=False)
    x = torch.rand(1, 3, 50, 70, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(tiled.restore(x), restore_image(model, x, tile=32, overlap=8))


def test_video_model_restores_still_images_with_zero_reference():
    model = slim_model(6)
    api = Restorer(model, device="cpu", fast=False)
    x = torch.rand(1, 3, 16, 24)
    want = restore_image(model, torch.cat([x, torch.zeros_like(x)], 1))
    torch.testing.assert_close(api.restore(x), want, atol=0, rtol=0)


# ------------------------------------------------------------------------------- routing


def test_routing_map_shapes_and_counts(bundled):
    img = Image.fromarray(photo(37, 50))
    rmap = bundled.routing_map(img)
    layers, experts = bundled.model.cfg.depth, bundled.model.cfg.num_experts
    assert rmap.expert.shape == (layers, 5, 7) == rmap.active.shape  # ceil(37/8), ceil(50/8)
    assert rmap.weights.shape == (layers, 5, 7, experts)
    assert rmap.routing == "topk:2" and rmap.mean_active == 2.0
    assert np.all(rmap.active == 2) and rmap.expert.max() < experts
    np.testing.assert_allclose(rmap.weights.sum(-1), 1.0, atol=1e-5)
    assert rmap.pixels("expert", layer=1).shape == (37, 50)
    assert rmap.usage().sum() == pytest.approx(1.0)
    assert isinstance(rmap.restored, Image.Image) and rmap.restored.size == img.size
    assert rmap.seconds > 0
    bundled.set_routing("topp:0.9")
    try:
        wider = bundled.routing_map(img)
    finally:
        bundled.set_routing("topk:2")
    assert wider.routing == "topp:0.9" and wider.mean_active > 1.0
    assert np.all((wider.active >= 1) & (wider.active <= experts))


# ------------------------------------------------------------------------------- video


def test_restore_video_streams_through_the_video_command_code(tmp_path):
    src = tmp_path / "in.mp4"
    frames = np.stack([photo(32, 48, seed=s) for s in range(3)])
    with av.open(str(src), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.height, stream.width, stream.pix_fmt = 32, 48, "yuv420p"
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())
    model = mofme.load("video", device="cpu")
    seen: list[tuple[int, int | None]] = []
    result = model.restore_video(
        src, tmp_path / "out.mp4", progress=lambda d, t: seen.append((d, t))
    )
    assert result.frames == 3 and (tmp_path / "out.mp4").is_file()
    assert [d for d, _ in seen] == [1, 2, 3]
    with pytest.raises(MofmeError, match="exists"):
        model.restore_video(src, tmp_path / "out.mp4")
    with pytest.raises(MofmeError, match="input"):
        model.restore_video(src, src)
