"""Whole-image and tiled inference, blending weights and the official crop pipeline."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from mofme.inference.tiling import (
    official_boxes,
    official_crops,
    ramp_weights,
    restore_image,
    tile_starts,
)
from mofme.model.net import MoFMENet


class PerPixel(nn.Module):
    """A per-pixel stand-in model: tiling cannot change its output."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :3] * self.scale + 0.1 * x[:, :1]


@pytest.fixture(scope="module")
def tiny() -> MoFMENet:
    torch.manual_seed(0)
    return MoFMENet.from_preset("tiny").eval()


@pytest.mark.parametrize("size", [(1, 1), (7, 300), (37, 61), (16, 16), (5, 9), (100, 64)])
@pytest.mark.parametrize(("tile", "overlap"), [(16, 0), (16, 5), (32, 8), (24, 23)])
def test_tiled_equals_whole_for_per_pixel_model(size, tile, overlap):
    x = torch.rand(2, 3, *size)
    model = PerPixel()
    whole = restore_image(model, x)
    tiled = restore_image(model, x, tile=tile, overlap=overlap, batch_tiles=3)
    assert tiled.shape == (2, 3, *size)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)  # fp32 rounding of the blend


@pytest.mark.parametrize(
    ("size", "tile", "stride"),
    [(100, 32, 24), (32, 32, 24), (5, 32, 24), (33, 32, 1), (300, 16, 16)],
)
def test_tile_starts_cover_the_axis(size, tile, stride):
    starts = tile_starts(size, tile, stride)
    length = min(tile, size)
    assert starts[0] == 0
    assert starts[-1] + length == size
    assert all(0 <= s <= size - length for s in starts)
    assert all(b - a <= stride for a, b in itertools.pairwise(starts))  # no gaps


def test_ramp_weights_blend_to_one_and_never_vanish():
    overlap = 8
    left = ramp_weights(100, 0, 32, overlap)  # tile at the left border, neighbour on the right
    right = ramp_weights(56, 24, 32, overlap)  # ends at the border; overlaps `left` by 8
    # Image border side is not ramped; interiors are 1.
    assert left[0] == 1 and right[-1] == 1
    assert torch.all(left[: 32 - overlap] == 1) and torch.all(right[overlap:] == 1)
    # In the shared pixels the two weights sum to one (partition of unity) and stay positive.
    torch.testing.assert_close(left[32 - overlap :] + right[:overlap], torch.ones(overlap))
    assert left.min() > 0 and right.min() > 0
    # A tile spanning the whole axis is not ramped at all.
    assert torch.all(ramp_weights(20, 0, 20, overlap) == 1)


def _forward_shapes(model: nn.Module) -> tuple[list[tuple[int, ...]], object]:
    """The input shapes of every forward pass of ``model`` (and the hook, to remove)."""
    shapes: list[tuple[int, ...]] = []
    handle = model.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    return shapes, handle


def test_tile_larger_than_image_is_the_whole_image(tiny):
    """A tile covering the image is one forward pass over the whole image: the model's own
    output, not a blend of tiles."""
    x = torch.rand(1, 3, 20, 28)
    shapes, handle = _forward_shapes(tiny)
    try:
        out = restore_image(tiny, x, tile=64)
    finally:
        handle.remove()
    assert shapes == [(1, 3, 20, 28)]
    with torch.no_grad():
        torch.testing.assert_close(out, tiny(x))


def test_tile_longer_than_one_side_takes_that_side_whole():
    """The tiled path with a tile longer than the image's height: every tile spans the whole
    height, and the blend of the tiles is the whole-image result of a per-pixel model."""
    model = PerPixel()
    x = torch.rand(1, 3, 20, 100)
    shapes, handle = _forward_shapes(model)
    try:
        out = restore_image(model, x, tile=64, overlap=16, batch_tiles=1)
    finally:
        handle.remove()
    assert shapes == [(1, 3, 20, 64), (1, 3, 20, 64)]  # columns 0 and 36
    with torch.no_grad():
        torch.testing.assert_close(out, model(x), rtol=0, atol=1e-6)


def test_mofme_tiled_close_to_whole(tiny):
    """Global attention sees less context per tile, so values differ near seams (bounded)."""
    torch.manual_seed(1)
    x = torch.rand(1, 3, 64, 96)
    whole = restore_image(tiny, x)
    tiled = restore_image(tiny, x, tile=48, overlap=16)
    diff = (whole - tiled).abs()
    assert tiled.min() >= 0 and tiled.max() <= 1
    # Measured with this seed and random tiny weights: mean 1.4e-3, max 1.4e-2.
    assert diff.mean() < 5e-3
    assert diff.max() < 5e-2


def test_batch_and_tile_batching_do_not_change_results(tiny):
    x = torch.rand(2, 3, 40, 56)
    one_by_one = torch.cat(
        [restore_image(tiny, x[i : i + 1], tile=32, overlap=8) for i in range(2)]
    )
    batched = restore_image(tiny, x, tile=32, overlap=8, batch_tiles=1)
    batched8 = restore_image(tiny, x, tile=32, overlap=8, batch_tiles=8)
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=0)
    torch.testing.assert_close(batched8, one_by_one, atol=1e-5, rtol=0)


def test_restore_keeps_training_mode_and_works_in_train_mode(tiny):
    tiny.train()
    try:
        restore_image(tiny, torch.rand(1, 3, 16, 16))
        assert tiny.training
    finally:
        tiny.eval()


def test_bad_tile_arguments():
    with pytest.raises(ValueError):
        restore_image(PerPixel(), torch.rand(1, 3, 40, 40), tile=16, overlap=16)
    with pytest.raises(ValueError):
        restore_image(PerPixel(), torch.rand(3, 40, 40))


def test_official_geometry_480x720():
    boxes = official_boxes(480, 720, crop=240)
    assert len(boxes) == 15
    assert sorted({b[0] for b in boxes}) == [0, 120, 240]
    assert sorted({b[1] for b in boxes}) == [0, 120, 240, 360, 480]
    assert all(b[2:] == (240, 240) for b in boxes)


@pytest.mark.parametrize("size", [(480, 720), (250, 250), (100, 500), (1, 1), (241, 239)])
def test_official_boxes_cover_any_size(size):
    h, w = size
    cover = torch.zeros(h, w)
    for y0, x0, ch, cw in official_boxes(h, w, crop=240):
        assert y0 >= 0 and y0 + ch <= h and x0 >= 0 and x0 + cw <= w
        cover[y0 : y0 + ch, x0 : x0 + cw] += 1
    assert cover.min() >= 1


def test_official_crops_average_and_dense_experts(tiny):
    x = torch.rand(1, 3, 48, 80)
    torch.testing.assert_close(official_crops(PerPixel(), x, crop=32), PerPixel()(x))
    seen = []
    handle = tiny.blocks[0].fme.experts.register_forward_hook(
        lambda mod, args, kwargs, out: seen.append(kwargs.get("impl")), with_kwargs=True
    )
    try:
        out = official_crops(tiny, x, crop=32)
    finally:
        handle.remove()
    assert out.shape == (1, 3, 48, 80)
    assert len(seen) == len(official_boxes(48, 80, 32)) and set(seen) == {"dense"}
    assert tiny.cfg.expert_impl == "sparse"  # restored afterwards
