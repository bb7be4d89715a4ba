"""Shared pieces of the weather generators: argument checks, the size rules, blurs, splats,
the depth map and atmospheric scattering (numpy only: scipy is not a dependency)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from PIL import Image

from mofme.errors import MofmeError

SEVERITIES: tuple[str, ...] = ("light", "medium", "heavy")

WeatherFn = Callable[[np.ndarray, np.random.Generator, str, float], np.ndarray]
P = TypeVar("P")  # a parameter set (RainParams, ...)


def check_image(clean: np.ndarray) -> np.ndarray:
    """Validate an ``(H, W, 3)`` image and return it as float32 (no copy if already float32)."""
    arr = np.asarray(clean)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise MofmeError(f"expected an (H, W, 3) image, got an array of shape {arr.shape}")
    if arr.shape[0] < 8 or arr.shape[1] < 8:
        raise MofmeError(f"image of shape {arr.shape} is too small for synthetic weather")
    if np.issubdtype(arr.dtype, np.integer):
        raise MofmeError("expected a float image in [0, 1], got integers (divide by 255 first)")
    return arr.astype(np.float32, copy=False)


def check_severity(severity: str) -> str:
    if severity not in SEVERITIES:
        raise MofmeError(f"unknown severity {severity!r}; choose one of {', '.join(SEVERITIES)}")
    return severity


def checked(
    clean: np.ndarray, params: dict[str, P], severity: str, view: float
) -> tuple[np.ndarray, P, float]:
    """A generator's checked arguments: the image as float32, the parameters of ``severity``
    from ``params``, and the view scale (:class:`MofmeError` for any bad one)."""
    img = check_image(clean)
    return img, params[check_severity(severity)], check_view(view)


def pixel_scale(h: int, w: int, view: float = 1.0) -> float:
    """Pixel scale relative to a 256-pixel image (of a ``view`` times larger frame)."""
    return view * min(h, w) / 256.0


def area_factor(h: int, w: int, view: float = 1.0) -> float:
    """How many "256-squares at the frame's scale" fit into the image (1 for square, view 1)."""
    return (h * w) / float(min(h, w) ** 2) / (view * view)


def check_view(view: float) -> float:
    if not (math.isfinite(view) and view > 0):
        raise MofmeError(f"weather view scale must be a positive number, got {view!r}")
    return float(view)


def _box_sizes(sigma: float, n: int = 3) -> list[int]:
    """Odd box widths whose n-fold convolution approximates a Gaussian of std ``sigma``."""
    w_ideal = math.sqrt(12.0 * sigma * sigma / n + 1.0)
    wl = math.floor(w_ideal)
    if wl % 2 == 0:
        wl -= 1
    wl = max(wl, 1)
    wu = wl + 2
    m = round((12.0 * sigma * sigma - n * wl * wl - 4 * n * wl - 3 * n) / (-4.0 * wl - 4.0))
    return [wl if i < m else wu for i in range(n)]


def _axis_slice(ndim: int, axis: int, start: int, stop: int) -> tuple[slice, ...]:
    idx = [slice(None)] * ndim
    idx[axis] = slice(start, stop)
    return tuple(idx)


def _box_last(a: np.ndarray, width: int) -> np.ndarray:
    """Mean filter of odd ``width`` along the last axis, edges extended (cumulative sums)."""
    if width <= 1:
        return a
    r = width // 2
    pad = [(0, 0)] * (a.ndim - 1) + [(r + 1, r)]
    c = np.cumsum(np.pad(a, pad, mode="edge"), axis=-1)
    n = a.shape[-1]
    return (c[..., width : width + n] - c[..., :n]) * np.float32(1.0 / width)


def _kernel_axis(a: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    """Sampled Gaussian along ``axis`` (used for small sigmas, where boxes are crude)."""
    r = max(1, math.ceil(3.0 * sigma))
    x = np.arange(0, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= k[0] + 2.0 * k[1:].sum()
    pad = [(0, 0)] * a.ndim
    pad[axis] = (r, r)
    p = np.pad(a, pad, mode="edge")
    n = a.shape[axis]
    out = p[_axis_slice(a.ndim, axis, r, r + n)] * np.float32(k[0])
    tmp = np.empty_like(out)
    for i in range(1, r + 1):
        # The kernel is symmetric: add the two mirrored taps before scaling.
        np.add(
            p[_axis_slice(a.ndim, axis, r - i, r - i + n)],
            p[_axis_slice(a.ndim, axis, r + i, r + i + n)],
            out=tmp,
        )
        tmp *= np.float32(k[i])
        out += tmp
    return out


def gaussian_blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of an ``(H, W)`` or ``(H, W, C)`` float array over the first two axes.

    Sigmas below 3 use a sampled kernel, larger ones three box passes done with cumulative
    sums, so the cost stops growing with sigma. Edges are extended (edge padding).
    Returns a new float32 array.
    """
    out = np.asarray(a, dtype=np.float32)
    if sigma < 0.25:
        return out.copy()
    if sigma < 3.0:
        for axis in (0, 1):
            out = _kernel_axis(out, sigma, axis)
        return out
    # Box passes run along the last axis, where numpy's cumsum is ~3x faster: blur in a
    # (C, H, W) layout, then transpose to (C, W, H) for the vertical passes.
    widths = _box_sizes(sigma)
    x = np.ascontiguousarray(out[None] if out.ndim == 2 else np.moveaxis(out, 2, 0))
    for width in widths:
        x = _box_last(x, width)
    x = np.ascontiguousarray(x.swapaxes(1, 2))
    for width in widths:
        x = _box_last(x, width)
    x = x.swapaxes(1, 2)
    return np.ascontiguousarray(x[0] if out.ndim == 2 else np.moveaxis(x, 0, 2))


def splat(h: int, w: int, xs: np.ndarray, ys: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Bilinear splatting of weighted points (any shape) onto an ``(H, W)`` float32 canvas."""
    xs, ys, weights = (np.ravel(a) for a in np.broadcast_arrays(xs, ys, weights))
    x0 = np.floor(xs)
    y0 = np.floor(ys)
    fx = xs - x0
    fy = ys - y0
    x0 = x0.astype(np.int64)
    y0 = y0.astype(np.int64)
    idx_parts = []
    wt_parts = []
    for dx, dy, cw in (
        (0, 0, (1 - fx) * (1 - fy)),
        (1, 0, fx * (1 - fy)),
        (0, 1, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        xi = x0 + dx
        yi = y0 + dy
        ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        idx_parts.append(yi[ok] * w + xi[ok])
        wt_parts.append((cw * weights)[ok])
    acc = np.bincount(np.concatenate(idx_parts), np.concatenate(wt_parts), minlength=h * w)
    return acc.reshape(h, w).astype(np.float32)


def bilinear_sample(img: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Sample ``img`` ``(H, W, C)`` at float coordinates (clamped to the image). -> ``(N, C)``."""
    h, w, c = img.shape
    xs = np.clip(xs, 0.0, w - 1.001)
    ys = np.clip(ys, 0.0, h - 1.001)
    x0 = xs.astype(np.int64)
    y0 = ys.astype(np.int64)
    fx = (xs - x0).astype(np.float32)[:, None]
    fy = (ys - y0).astype(np.float32)[:, None]
    flat = img.reshape(h * w, c)
    i00 = y0 * w + x0
    top = flat.take(i00, axis=0) * (1 - fx) + flat.take(i00 + 1, axis=0) * fx
    bot = flat.take(i00 + w, axis=0) * (1 - fx) + flat.take(i00 + w + 1, axis=0) * fx
    return top * (1 - fy) + bot * fy


def _smooth_noise(h: int, w: int, rng: np.random.Generator, cells: int = 4) -> np.ndarray:
    """Low-frequency noise ``(H, W)``, roughly in [-1, 1]: a coarse random grid, upsampled."""
    gh = max(2, round(cells * h / min(h, w)))
    gw = max(2, round(cells * w / min(h, w)))
    grid = rng.uniform(-1.0, 1.0, size=(gh, gw)).astype(np.float32)
    up = Image.fromarray(grid, mode="F").resize((w, h), Image.BICUBIC)
    return np.asarray(up, dtype=np.float32)


def depth_map(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A plausible outdoor depth map ``(H, W)`` in (0, 1], 1 = far.

    Above a random horizon (25–60 % of the height) everything is far; below it depth falls off
    towards the bottom edge (0.1–0.3 there). Smooth noise adds hills and objects.
    """
    y = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    horizon = rng.uniform(0.25, 0.6)
    d_min = rng.uniform(0.1, 0.3)
    gamma = rng.uniform(0.8, 1.8)
    below = np.clip((y - horizon) / (1.0 - horizon), 0.0, 1.0) ** gamma
    d = 1.0 - (1.0 - d_min) * below
    d = d + 0.12 * _smooth_noise(h, w, rng, cells=int(rng.integers(3, 7)))
    return np.clip(d, 0.05, 1.0).astype(np.float32)


def draw_airlight(rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    """Airlight colour ``(3,)``: a grey level in [lo, hi] with a slight random tint."""
    level = rng.uniform(lo, hi)
    tint = rng.normal(0.0, 0.025, size=3)
    tint[2] += rng.uniform(-0.01, 0.03)  # skies tend to be a little bluish
    return np.clip(level * (1.0 + tint), 0.0, 1.0).astype(np.float32)


def scatter(img: np.ndarray, depth: np.ndarray, beta: float, airlight: np.ndarray) -> np.ndarray:
    """Atmospheric scattering ``I = J·t + A·(1 − t)``, ``t = exp(−β·d)``. -> ``(H, W, 3)``."""
    t = np.exp(-beta * depth)[..., None].astype(np.float32)
    return img * t + airlight[None, None, :] * (1.0 - t)


def combine_layers(layers: Sequence[np.ndarray]) -> np.ndarray:
    """Stack opacity layers as independent occluders: ``1 − Π(1 − a_k)``."""
    keep = np.ones_like(layers[0])
    for a in layers:
        keep *= 1.0 - a
    return 1.0 - keep


@dataclass(frozen=True)
class FogParams:
    """Scattering parameters: ``beta`` range of the extinction coefficient (depth in [0, 1])
    and ``airlight`` range of the airlight grey level."""

    beta: tuple[float, float]
    airlight: tuple[float, float]
