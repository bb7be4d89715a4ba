"""PSNR / SSIM agree with scikit-image (RGB and Y), batch and edge-case behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from mofme.errors import MofmeError
from mofme.metrics import dark_speck_share, psnr, rgb_to_y, ssim


def skimage_ssim(gt: np.ndarray, x: np.ndarray, channel_axis: int | None) -> float:
    return structural_similarity(
        gt,
        x,
        channel_axis=channel_axis,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
    )


def image_pair(kind: str, h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(gt, restored) float64 (H, W, 3) in [0, 1]."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        gt = rng.random((h, w, 3))
    else:  # structured: smooth gradients + an edge, like a photo
        y, x = np.mgrid[0:h, 0:w] / max(h, w)
        gt = np.stack([x, y, 0.5 + 0.4 * np.sin(6 * x + 3 * y)], axis=2)
        gt[h // 2 :, : w // 3] *= 0.3
    restored = np.clip(gt + rng.normal(0, 0.05, gt.shape) + 0.02, 0, 1)
    return gt, restored


def as_batch(*images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)


@pytest.mark.parametrize("kind", ["random", "structured"])
@pytest.mark.parametrize(("h", "w"), [(11, 11), (16, 16), (33, 47), (64, 64)])
def test_rgb_metrics_match_skimage(kind, h, w):
    gt, restored = image_pair(kind, h, w, seed=h * w)
    x, y = as_batch(restored).float(), as_batch(gt).float()  # float32 in, like real use
    # skimage sees the same float32-rounded values
    gt32, restored32 = (a.astype(np.float32).astype(np.float64) for a in (gt, restored))
    assert psnr(x, y).item() == pytest.approx(
        peak_signal_noise_ratio(gt32, restored32, data_range=1.0), abs=1e-3
    )
    assert ssim(x, y).item() == pytest.approx(skimage_ssim(gt32, restored32, -1), abs=1e-3)


@pytest.mark.parametrize("kind", ["random", "structured"])
@pytest.mark.parametrize(("h", "w"), [(16, 16), (33, 47), (64, 64)])
def test_y_metrics_match_skimage_on_luma(kind, h, w):
    gt, restored = image_pair(kind, h, w, seed=7 + h)
    x, y = as_batch(restored), as_batch(gt)
    y_gt = rgb_to_y(y)[0, 0].numpy()
    y_restored = rgb_to_y(x)[0, 0].numpy()
    assert psnr(x, y, y_channel=True).item() == pytest.approx(
        peak_signal_noise_ratio(y_gt, y_restored, data_range=1.0), abs=1e-3
    )
    assert ssim(x, y, y_channel=True).item() == pytest.approx(
        skimage_ssim(y_gt, y_restored, None), abs=1e-3
    )


def test_rgb_to_y_formula():
    rgb = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]).view(3, 3, 1, 1)
    y = rgb_to_y(rgb).flatten()
    expected = torch.tensor([16.0, 16.0 + 65.481 + 128.553 + 24.966, 16.0 + 65.481]) / 255
    torch.testing.assert_close(y, expected)
    assert y[1].item() == pytest.approx(235 / 255, abs=1e-4)


def test_batch_values_are_per_image():
    pairs = [image_pair("structured", 24, 30, seed=s) for s in range(3)]
    x = as_batch(*(r for _, r in pairs))
    y = as_batch(*(g for g, _ in pairs))
    batch_psnr, batch_ssim = psnr(x, y), ssim(x, y)
    assert batch_psnr.shape == (3,) and batch_ssim.shape == (3,)
    for i in range(3):
        assert batch_ssim[i].item() == pytest.approx(ssim(x[i], y[i]).item(), abs=1e-12)
        assert batch_psnr[i].item() == pytest.approx(psnr(x[i : i + 1], y[i : i + 1]).item())
    assert psnr(x, y, reduction="mean").item() == pytest.approx(batch_psnr.mean().item())


def test_identical_images():
    x = as_batch(image_pair("random", 16, 16, 0)[0])
    assert math.isinf(psnr(x, x).item())
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-12)


def test_small_images_raise_clear_error():
    x = torch.rand(1, 3, 10, 40)
    with pytest.raises(MofmeError, match="at least 11x11"):
        ssim(x, x)
    assert math.isfinite(psnr(x, x.flip(-1)).item())  # PSNR has no size limit


def test_shape_mismatch_and_grad_enabled():
    with pytest.raises(ValueError, match="shape mismatch"):
        psnr(torch.rand(1, 3, 12, 12), torch.rand(1, 3, 12, 13))
    x = torch.rand(2, 3, 12, 12, requires_grad=True)
    values = ssim(x, torch.rand(2, 3, 12, 12))
    assert values.dtype == torch.float64 and not values.requires_grad


def test_group_means_and_average():
    """The evaluation's table: means per test set; the average weights test sets equally."""
    from mofme.evaluate import InputAsOutput
    from mofme.results import Record, summarise

    def record(group: str, value: float, ssim_value: float) -> Record:
        return Record(group, "x.png", 0, value, ssim_value, value, ssim_value, 1.0, None, 8, 8)

    records = [record("rain", 30.0, 0.9), record("rain", 32.0, 0.8), record("rain", 34.0, 0.7)]
    records.append(record("snow", 20.0, 0.5))
    res = summarise("images", records, [], InputAsOutput(), None, {})
    rows = {r["name"]: r for r in res.rows}
    assert list(rows) == ["rain", "snow"] and rows["rain"]["count"] == 3
    assert (rows["rain"]["psnr"], rows["rain"]["ssim"]) == pytest.approx((32.0, 0.8))
    # the average weights test sets equally, not images
    assert (res.average["psnr"], res.average["ssim"]) == pytest.approx((26.0, 0.65))
    assert res.overall["psnr"] == pytest.approx(29.0) and res.average["count"] == 4


def test_dark_speck_share() -> None:
    """Counts local dark dips the restoration added, not darkness already in the input and not a
    global brightness error."""
    clean = torch.full((3, 20, 20), 0.5)
    snowy = clean.clone()
    snowy[:, :2, :] = 1.0  # 40 flake pixels
    pred = clean.clone()
    assert dark_speck_share(pred, clean, snowy) == 0.0  # perfect restoration
    assert dark_speck_share(snowy, clean, snowy) == 0.0  # snow left in: too bright, no speck
    assert dark_speck_share(pred - 0.2, clean, snowy) == 0.0  # uniformly too dark: no speck
    pred[:, 10, 10] = 0.3  # one isolated speck
    pred[:, 15, 5] = 0.47  # a faint dip: below the threshold
    assert dark_speck_share(pred, clean, snowy) == pytest.approx(1 / 400)
    assert dark_speck_share(pred - 0.2, clean - 0.2, snowy - 0.2) == pytest.approx(1 / 400)
    dim = clean.clone()
    dim[:, 10, 10] = 0.3  # the input was already that dark there: not the model's speck
    assert dark_speck_share(pred, clean, dim) == 0.0
    purple = clean.clone()
    purple[0, 3, 3] -= 0.2  # red too dark, blue too bright: a coloured speck, mean error 0
    purple[2, 3, 3] += 0.2
    assert dark_speck_share(purple, clean, snowy) == pytest.approx(1 / 400)
    batch = torch.stack([pred, clean])
    two = torch.stack([clean, clean])
    assert dark_speck_share(batch, two, torch.stack([snowy, snowy])) == pytest.approx(1 / 800)
