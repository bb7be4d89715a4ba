"""scripts/error_map.py: the numbers it prints about how a restored image differs."""

from __future__ import annotations

import numpy as np
import pytest

from tiny import load_script

error_map = load_script("error_map")


@pytest.fixture
def gt() -> np.ndarray:
    return np.random.default_rng(0).integers(60, 190, (64, 96, 3)).astype(np.uint8)


def test_a_uniform_shift_is_coarse_error_only(gt):
    stats = error_map.error_stats(gt - 4, gt)
    assert stats["mean_shift"] == pytest.approx(-4.0)
    assert stats["psnr"] == pytest.approx(10 * np.log10(255**2 / 16))
    assert stats["mse_coarse"] == pytest.approx(16.0, abs=0.5)
    assert stats["mse_fine"] < 0.5


def test_vertical_strokes_are_fine_error_with_a_horizontal_gradient(gt):
    restored = gt.astype(np.int16)
    restored[:, ::6] -= 20  # one-pixel vertical strokes, as a streak remover leaves on planks
    restored[:, 3::6] += 20
    stats = error_map.error_stats(np.clip(restored, 0, 255).astype(np.uint8), gt)
    assert stats["mse_fine"] > 5 * stats["mse_coarse"]
    assert stats["gradient_x_over_y"] > 10
    flipped = error_map.error_stats(
        np.ascontiguousarray(np.clip(restored, 0, 255).astype(np.uint8).transpose(1, 0, 2)),
        np.ascontiguousarray(gt.transpose(1, 0, 2)),
    )
    assert flipped["gradient_x_over_y"] < 0.1
