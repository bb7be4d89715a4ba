"""PSNR and SSIM, batched in PyTorch and numerically matched to scikit-image.

Conventions (SPEC §6):

* Inputs are ``(B, 3, H, W)`` (or a single ``(3, H, W)``) tensors in ``[0, 1]``, on any device,
  any float dtype. Values are used as given: clamp model outputs to ``[0, 1]`` first, as the
  evaluation protocol does. Computation runs in float64.
* **RGB** metrics use all three channels with ``data_range = 1``.
* **Y** metrics use BT.601 luma as BasicSR / TransWeather / WeatherDiffusion compute it
  (``rgb2ycbcr(..., y_only=True)``): on ``[0, 1]`` RGB,
  ``Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255``, so Y lies in ``[16/255, 235/255]``.
  ``data_range = 1`` on this scale is the same as BasicSR's 255 on its ``[0, 255]`` scale.
* PSNR = ``10 log10(data_range² / MSE)`` with the MSE over all channels and pixels of each
  image (scikit-image ``peak_signal_noise_ratio``). Identical images give ``inf``, as in
  scikit-image.
* SSIM follows scikit-image ``structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1, channel_axis=-1)``: Gaussian window with
  ``truncate = 3.5`` (11 taps, radius 5), population covariance, K1 = 0.01, K2 = 0.03; the SSIM
  map is averaged per channel over the region ``(win - 1) // 2 = 5`` pixels away from every
  border, then averaged over channels. scikit-image filters with reflect padding and crops the
  5-pixel border afterwards; the cropped region never sees the padding, so a *valid*
  convolution here gives the same numbers.
* SSIM needs images of at least 11 × 11 pixels (scikit-image raises for smaller ones, too);
  smaller images raise :class:`~mofme.errors.MofmeError` rather than returning a value from a
  different window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mofme.errors import MofmeError

__all__ = ["SSIM_WINDOW", "psnr", "rgb_to_y", "ssim"]

#: Side of the Gaussian SSIM window (sigma 1.5, truncate 3.5, as scikit-image).
SSIM_WINDOW = 11
_SIGMA = 1.5
_K1, _K2 = 0.01, 0.03

_Y_WEIGHTS = (65.481, 128.553, 24.966)


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of RGB in ``[0, 1]``: ``(B, 3, H, W) -> (B, 1, H, W)`` in ``[16/255, 235/255]``.

    ``Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255`` (BasicSR ``rgb2ycbcr`` ``y_only``).
    """
    if x.dim() < 3 or x.shape[-3] != 3:
        raise ValueError(f"expected (..., 3, H, W) RGB, got {tuple(x.shape)}")
    r, g, b = x.unbind(dim=-3)
    y = (16.0 + _Y_WEIGHTS[0] * r + _Y_WEIGHTS[1] * g + _Y_WEIGHTS[2] * b) / 255.0
    return y.unsqueeze(-3)


def _prepare(
    x: torch.Tensor, y: torch.Tensor, y_channel: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check shapes, add a batch dim if needed, go to float64, optionally take luma."""
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.dim() == 3:
        x, y = x.unsqueeze(0), y.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"expected (B, C, H, W) or (C, H, W), got {tuple(x.shape)}")
    x = x.detach().to(torch.float64)
    y = y.detach().to(torch.float64)
    if y_channel:
        x, y = rgb_to_y(x), rgb_to_y(y)
    return x, y


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return values
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


@torch.no_grad()
def psnr(
    x: torch.Tensor,
    y: torch.Tensor,
    y_channel: bool = False,
    data_range: float = 1.0,
    reduction: str = "none",
) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB.

    Args:
        x, y: ``(B, 3, H, W)`` or ``(3, H, W)`` images in ``[0, 1]`` (order does not matter).
        y_channel: compare BT.601 luma instead of RGB.
        data_range: peak value (1 for ``[0, 1]`` images, also for Y).
        reduction: ``"none"`` -> ``(B,)`` float64, ``"mean"`` / ``"sum"`` -> scalar.
    """
    x, y = _prepare(x, y, y_channel)
    mse = (x - y).pow(2).flatten(1).mean(dim=1)
    return _reduce(10.0 * torch.log10(data_range**2 / mse), reduction)


def _gaussian_taps(device: torch.device) -> torch.Tensor:
    """1-D Gaussian of 11 taps, sigma 1.5, normalised to sum 1 (scipy.ndimage weights)."""
    radius = SSIM_WINDOW // 2
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    taps = torch.exp(-0.5 * (offsets / _SIGMA) ** 2)
    return taps / taps.sum()


def _blur_valid(planes: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter without padding: ``(N, 1, H, W) -> (N, 1, H-10, W-10)``."""
    planes = F.conv2d(planes, taps.view(1, 1, 1, -1))
    return F.conv2d(planes, taps.view(1, 1, -1, 1))


@torch.no_grad()
def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    y_channel: bool = False,
    data_range: float = 1.0,
    reduction: str = "none",
) -> torch.Tensor:
    """Structural similarity, scikit-image compatible (see the module docstring).

    Args:
        x, y: ``(B, 3, H, W)`` or ``(3, H, W)`` images in ``[0, 1]``, H and W >= 11.
        y_channel: compare BT.601 luma instead of RGB.
        data_range: dynamic range of the values (1 for ``[0, 1]`` images, also for Y).
        reduction: ``"none"`` -> ``(B,)`` float64, ``"mean"`` / ``"sum"`` -> scalar.

    Raises:
        MofmeError: an image side is smaller than the 11-pixel window.
    """
    x, y = _prepare(x, y, y_channel)
    _, channels, height, width = x.shape
    if height < SSIM_WINDOW or width < SSIM_WINDOW:
        raise MofmeError(
            f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, "
            f"got {height}x{width}"
        )
    taps = _gaussian_taps(x.device)
    c1 = (_K1 * data_range) ** 2
    c2 = (_K2 * data_range) ** 2
    per_channel = []
    # One channel at a time keeps peak memory at a few full-resolution planes.
    for c in range(channels):
        a = x[:, c : c + 1]
        b = y[:, c : c + 1]
        mu_a, mu_b = _blur_valid(a, taps), _blur_valid(b, taps)
        var_a = _blur_valid(a * a, taps) - mu_a * mu_a
        var_b = _blur_valid(b * b, taps) - mu_b * mu_b
        cov = _blur_valid(a * b, taps) - mu_a * mu_b
        numerator = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
        denominator = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
        per_channel.append((numerator / denominator).flatten(1).mean(dim=1))
    return _reduce(torch.stack(per_channel, dim=1).mean(dim=1), reduction)


def grid_ratio(
    img: torch.Tensor, patch: int = 8, flat_of: torch.Tensor | None = None, flat_below: float = 0.02
) -> float:
    """How visible a ``patch``-pixel block grid is: the mean squared step between neighbouring
    pixels *across* block borders divided by the same *inside* blocks (both directions).

    ``img`` is ``(3, H, W)`` or ``(B, 3, H, W)`` in [0, 1]. 1.0 means borders look like any
    other pixel step (no grid); a token grid shows as a ratio above 1. With ``flat_of`` (the
    clean reference, same shape), only steps where the reference is flat (its own step below
    ``flat_below``) count: the grid is most visible, and most measurable, on flat areas.
    """
    x = img.float().reshape(-1, *img.shape[-3:])
    ref = None if flat_of is None else flat_of.float().reshape(-1, *flat_of.shape[-3:])
    border_sum = inner_sum = 0.0
    border_n = inner_n = 0
    for dim in (-1, -2):
        d = x.diff(dim=dim).pow(2).mean(dim=1)  # (B, H, W-1) or (B, H-1, W)
        n = d.shape[dim]
        is_border = (torch.arange(n) % patch) == patch - 1  # step between pixel kP-1 and kP
        shape = [1, 1, 1]
        shape[dim] = n
        is_border = is_border.view(shape).expand_as(d)
        keep = torch.ones_like(d, dtype=torch.bool)
        if ref is not None:
            keep = ref.diff(dim=dim).abs().amax(dim=1) < flat_below
        border_sum += float(d[keep & is_border].sum())
        border_n += int((keep & is_border).sum())
        inner_sum += float(d[keep & ~is_border].sum())
        inner_n += int((keep & ~is_border).sum())
    if border_n == 0 or inner_n == 0 or inner_sum == 0.0:
        return 1.0
    return (border_sum / border_n) / (inner_sum / inner_n)


def local_deviation(x: torch.Tensor, window: int) -> torch.Tensor:
    """``x`` minus its ``window x window`` box mean, per channel (``(B, C, H, W)``; at the
    borders the mean of the pixels inside): a particle or speck stands out, a smooth offset
    (brightness, haze) does not. Shared by :func:`dark_speck_share`,
    :func:`mofme.losses.speck_penalty` and :func:`mofme.losses.weather_mask`."""
    return x - F.avg_pool2d(x, window, stride=1, padding=window // 2, count_include_pad=False)


def dark_speck_share(
    pred: torch.Tensor,
    clean: torch.Tensor,
    degraded: torch.Tensor,
    threshold: float = 0.06,
    window: int = 9,
) -> float:
    """Share of pixels where a restoration left a dark speck the input did not have: the mark an
    over-subtracting snow or rain model leaves where a particle was.

    All ``(3, H, W)`` or ``(B, 3, H, W)`` in [0, 1]. With ``e = clean - pred`` of the most
    darkened channel (so a coloured speck, e.g. purple on a red surface, counts too) clamped at
    0 (too bright is another error), a pixel counts when ``e`` exceeds its own
    ``window x window`` neighbourhood mean by more than ``threshold`` (a local dip, so a global
    brightness or haze error is not counted) while ``clean - degraded`` there is not above
    ``threshold`` (snow, rain and haze brighten, so such a dip is an error the model added).
    PSNR hides specks: each costs little energy next to the flake it replaced, but it is what
    one sees.
    """

    def err(x: torch.Tensor) -> torch.Tensor:  # (B, 1, H, W)
        e = (clean.float() - x.float()).amax(dim=-3, keepdim=True)
        return e.reshape(-1, 1, *e.shape[-2:])

    e = err(pred).clamp(min=0.0)  # only darkening: snow left in beside a pixel is no dip
    speck = local_deviation(e, window) > threshold
    return float((speck & ~(err(degraded) > threshold)).float().mean())
