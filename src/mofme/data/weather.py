"""Synthetic weather on clean photos: rain, rain + fog, lens raindrops, snow, haze, snowy video.

Every image generator has the signature ``fn(clean, rng, severity="medium", view=1.0) ->
degraded`` where
``clean`` is a float32 ``(H, W, 3)`` array in [0, 1] (never modified), ``rng`` a
``numpy.random.Generator`` (the only source of randomness, so a seed reproduces an image
exactly) and ``severity`` one of ``"light"``, ``"medium"``, ``"heavy"``. The output has the
shape of ``clean``, dtype float32, values in [0, 1].

Sizes (streak lengths, flake and drop radii) are given for a 256-pixel image and scaled by
``min(H, W) / 256``; counts are given per 256 x 256 square, so the look of a weather type does
not depend on the image size. ``view`` (default 1) treats the image as a crop of a ``view``
times larger frame: particles ``view`` times bigger and ``view**2`` times fewer, as in a crop
of a large photo. Training data draws it at random, so a model sees the same weather at many
pixel sizes (a model trained on small crops otherwise misses the large flakes and drops of
full-size photos).

The models, each a simplified version of how the public datasets were made:

* **rain** (Rain100 / Outdoor-Rain streaks): several streak layers, far to near, sharing a wind
  angle with per-layer jitter; nearer layers have longer, wider, brighter and sparser streaks.
  Streaks are rendered as anti-aliased line segments (bilinear splats of points along the
  segment, i.e. sparse seeds convolved with an oriented line kernel), blurred across by a
  Gaussian, and screen-blended onto the scene.
* **rain_fog** (Outdoor-Rain): the far streak layers, then atmospheric scattering
  ``I = J·t + A·(1 − t)``, ``t = exp(−β·d)``, then the nearest layer (it is in front of the fog).
* **raindrop** (RainDrop): drops on the lens, ellipses with wobbly outlines, each a small
  wide-angle lens showing an inverted, zoomed-out and defocused view of the scene, darker at the
  rim, with a specular highlight; the drop layer is out of focus and the scene right behind the
  drops is slightly blurred.
* **snow** (Snow100K): flake layers of increasing size and decreasing number, random opacities,
  a fraction motion-blurred into short streaks, soft edges; ``heavy`` adds a veiling haze.
* **haze** (RESIDE-like): the scattering model alone, airlight ``A`` in ~[0.7, 1.0] with a slight
  tint.

The depth map used by fog and haze is a vertical gradient (the top of the frame is farther) with
a random horizon height plus smooth noise, values in (0, 1].

The measured PSNR range per type and severity is in :mod:`mofme.data.calibration`
(``python -m mofme.data.calibration``). Reading clips from video files is
:func:`mofme.data.synth.video_clip` (through :mod:`mofme.inference.videoio`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mofme.errors import MofmeError

SEVERITIES: tuple[str, ...] = ("light", "medium", "heavy")

WeatherFn = Callable[[np.ndarray, np.random.Generator, str, float], np.ndarray]


# --------------------------------------------------------------------------------------------
# Low-level helpers (numpy only: scipy is not a dependency)
# --------------------------------------------------------------------------------------------


def _check_image(clean: np.ndarray) -> np.ndarray:
    """Validate an ``(H, W, 3)`` image and return it as float32 (no copy if already float32)."""
    arr = np.asarray(clean)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise MofmeError(f"expected an (H, W, 3) image, got an array of shape {arr.shape}")
    if arr.shape[0] < 8 or arr.shape[1] < 8:
        raise MofmeError(f"image of shape {arr.shape} is too small for synthetic weather")
    if np.issubdtype(arr.dtype, np.integer):
        raise MofmeError("expected a float image in [0, 1], got integers (divide by 255 first)")
    return arr.astype(np.float32, copy=False)


def _check_severity(severity: str) -> str:
    if severity not in SEVERITIES:
        raise MofmeError(f"unknown severity {severity!r}; choose one of {', '.join(SEVERITIES)}")
    return severity


def _scale(h: int, w: int, view: float = 1.0) -> float:
    """Pixel scale relative to a 256-pixel image (of a ``view`` times larger frame)."""
    return view * min(h, w) / 256.0


def _area_factor(h: int, w: int, view: float = 1.0) -> float:
    """How many "256-squares at the frame's scale" fit into the image (1 for square, view 1)."""
    return (h * w) / float(min(h, w) ** 2) / (view * view)


def _check_view(view: float) -> float:
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


def _splat(h: int, w: int, xs: np.ndarray, ys: np.ndarray, weights: np.ndarray) -> np.ndarray:
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


def _bilinear_sample(img: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
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


def _airlight(rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    """Airlight colour ``(3,)``: a grey level in [lo, hi] with a slight random tint."""
    level = rng.uniform(lo, hi)
    tint = rng.normal(0.0, 0.025, size=3)
    tint[2] += rng.uniform(-0.01, 0.03)  # skies tend to be a little bluish
    return np.clip(level * (1.0 + tint), 0.0, 1.0).astype(np.float32)


def scatter(img: np.ndarray, depth: np.ndarray, beta: float, airlight: np.ndarray) -> np.ndarray:
    """Atmospheric scattering ``I = J·t + A·(1 − t)``, ``t = exp(−β·d)``. -> ``(H, W, 3)``."""
    t = np.exp(-beta * depth)[..., None].astype(np.float32)
    return img * t + airlight[None, None, :] * (1.0 - t)


# --------------------------------------------------------------------------------------------
# Rain streaks
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RainParams:
    """Rain streak parameters (pixels of a 256-pixel image).

    layers: number of streak layers from far to near.
    count: streaks per 256 x 256 image over all layers (far layers get more of them).
    length: streak length range; the far layer uses the low end, the nearest the high end,
        each streak varies by ±30 %.
    width: Gaussian blur sigma across streaks, far → near layer.
    opacity: peak streak opacity range (far layers are dimmed further).
    wind: maximum absolute shared wind angle from vertical, degrees.
    jitter: std of the per-layer deviation from the shared angle, degrees.
    """

    layers: int
    count: int
    length: tuple[float, float]
    width: tuple[float, float]
    opacity: tuple[float, float]
    wind: float = 20.0
    jitter: float = 3.0


RAIN_PARAMS: dict[str, RainParams] = {
    "light": RainParams(layers=2, count=280, length=(10, 22), width=(0.4, 0.8), opacity=(0.2, 0.42)),
    "medium": RainParams(layers=3, count=600, length=(12, 32), width=(0.45, 1.0), opacity=(0.25, 0.45)),
    "heavy": RainParams(layers=4, count=1000, length=(16, 40), width=(0.5, 1.3), opacity=(0.3, 0.55)),
}  # fmt: skip


def _rain_layers(
    h: int, w: int, rng: np.random.Generator, p: RainParams, view: float = 1.0
) -> list[np.ndarray]:
    """Render the streak layers, far to near, each an ``(H, W)`` opacity map in [0, 1]."""
    s = _scale(h, w, view)
    wind = math.radians(rng.uniform(-p.wind, p.wind))
    shares = np.arange(p.layers, 0, -1, dtype=np.float64)  # far layers hold more streaks
    shares /= shares.sum()
    total = p.count * _area_factor(h, w, view)
    layers = []
    for k in range(p.layers):
        f = k / (p.layers - 1) if p.layers > 1 else 1.0
        n = max(1, int(rng.poisson(total * shares[k])))
        angle = wind + math.radians(rng.normal(0.0, p.jitter))
        base_len = (p.length[0] + (p.length[1] - p.length[0]) * f) * s
        lengths = base_len * rng.uniform(0.7, 1.3, size=n)
        angles = angle + np.radians(rng.normal(0.0, 1.0, size=n))
        dx = np.sin(angles)
        dy = np.cos(angles)
        # Start points cover an enlarged frame so that streaks also enter from the edges.
        x0 = rng.uniform(-base_len, w + base_len, size=n)
        y0 = rng.uniform(-1.3 * base_len, h, size=n)
        k_samples = max(2, math.ceil(1.5 * float(lengths.max())))
        t = np.linspace(0.0, 1.0, k_samples, dtype=np.float64)
        xs = x0[:, None] + t[None, :] * (lengths * dx)[:, None]
        ys = y0[:, None] + t[None, :] * (lengths * dy)[:, None]
        # Streak ends fade out: drops are caught mid-exposure.
        taper = np.sqrt(np.sin(np.pi * (0.05 + 0.9 * t)))
        dim = 0.6 + 0.4 * f
        opac = rng.uniform(p.opacity[0], p.opacity[1], size=n) * dim
        weights = (opac * lengths / k_samples)[:, None] * taper[None, :]
        canvas = _splat(h, w, xs, ys, weights)
        sigma = (p.width[0] + (p.width[1] - p.width[0]) * f) * s
        canvas = gaussian_blur(canvas, sigma)
        # A line of unit density blurred across by sigma peaks at ~1 / (sqrt(2π)·sigma):
        # restore the intended peak opacity (the bilinear splat adds ~0.5 px of spread).
        gain = max(1.0, math.sqrt(2.0 * math.pi) * math.sqrt(sigma * sigma + 0.15))
        layers.append(np.clip(canvas * gain, 0.0, 1.0))
    return layers


def _screen(img: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Screen blend of a light layer ``alpha (H, W)`` of ``colour (3,)`` onto ``img``."""
    return 1.0 - (1.0 - img) * (1.0 - alpha[..., None] * colour[None, None, :])


def _streak_colour(rng: np.random.Generator) -> np.ndarray:
    return np.clip(rng.uniform(0.85, 1.0) + rng.normal(0.0, 0.02, size=3), 0.0, 1.0).astype(
        np.float32
    )


def _combine(layers: Sequence[np.ndarray]) -> np.ndarray:
    """Stack opacity layers as independent occluders: ``1 − Π(1 − a_k)``."""
    keep = np.ones_like(layers[0])
    for a in layers:
        keep *= 1.0 - a
    return 1.0 - keep


def rain(
    clean: np.ndarray, rng: np.random.Generator, severity: str = "medium", view: float = 1.0
) -> np.ndarray:
    """Rain streaks (parameters: :data:`RAIN_PARAMS`). ``(H, W, 3)`` -> ``(H, W, 3)``."""
    img = _check_image(clean)
    p = RAIN_PARAMS[_check_severity(severity)]
    h, w = img.shape[:2]
    alpha = _combine(_rain_layers(h, w, rng, p, _check_view(view)))
    out = _screen(img, alpha, _streak_colour(rng))
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Rain + fog (Outdoor-Rain)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FogParams:
    """Scattering parameters: ``beta`` range of the extinction coefficient (depth in [0, 1])
    and ``airlight`` range of the airlight grey level."""

    beta: tuple[float, float]
    airlight: tuple[float, float]


RAIN_FOG_PARAMS: dict[str, tuple[RainParams, FogParams]] = {
    "light": (RAIN_PARAMS["light"], FogParams(beta=(0.03, 0.08), airlight=(0.7, 0.95))),
    "medium": (RAIN_PARAMS["medium"], FogParams(beta=(0.07, 0.15), airlight=(0.7, 0.95))),
    "heavy": (
        RainParams(layers=4, count=900, length=(16, 40), width=(0.5, 1.3), opacity=(0.25, 0.45)),
        FogParams(beta=(0.18, 0.35), airlight=(0.75, 1.0)),
    ),
}
"""Outdoor-Rain style: the fog shares the degradation budget with the streaks, so the streaks
are a little weaker than in :data:`RAIN_PARAMS` at the heavy end."""


def rain_fog(
    clean: np.ndarray, rng: np.random.Generator, severity: str = "medium", view: float = 1.0
) -> np.ndarray:
    """Rain streaks in fog like Outdoor-Rain (parameters: :data:`RAIN_FOG_PARAMS`).

    Far streak layers are attenuated by the fog together with the scene; the nearest layer is
    composited last because it lies between the camera and the fog. ``(H, W, 3)`` -> same.
    """
    img = _check_image(clean)
    rp, fp = RAIN_FOG_PARAMS[_check_severity(severity)]
    h, w = img.shape[:2]
    layers = _rain_layers(h, w, rng, rp, _check_view(view))
    colour = _streak_colour(rng)
    out = img
    if len(layers) > 1:
        out = _screen(out, _combine(layers[:-1]), colour)
    depth = depth_map(h, w, rng)
    out = scatter(out, depth, rng.uniform(*fp.beta), _airlight(rng, *fp.airlight))
    out = _screen(out, layers[-1], colour)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Raindrops on the lens (RainDrop)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RaindropParams:
    """Lens raindrop parameters (pixels of a 256-pixel image).

    count: range of the number of drops per 256 x 256 image.
    radius: drop radius range (sampled log-uniformly, so small drops are common).
    zoom: how much wider than the drop the (inverted) scene area seen through it is.
    defocus: Gaussian sigma of the out-of-focus drop layer (drop content and rims).
    rim: darkening at the drop rim (0 = none, 1 = black).
    scene_blur: sigma of the blur of the scene right behind the drops.
    """

    count: tuple[int, int]
    radius: tuple[float, float]
    zoom: tuple[float, float] = (2.0, 4.0)
    defocus: float = 1.2
    rim: float = 0.35
    scene_blur: float = 1.5


RAINDROP_PARAMS: dict[str, RaindropParams] = {
    "light": RaindropParams(count=(18, 30), radius=(4.0, 16.0), defocus=1.5),
    "medium": RaindropParams(count=(35, 60), radius=(5.0, 20.0), defocus=1.8),
    "heavy": RaindropParams(count=(60, 100), radius=(6.0, 28.0), defocus=2.2, scene_blur=2.0),
}


def raindrop(
    clean: np.ndarray, rng: np.random.Generator, severity: str = "medium", view: float = 1.0
) -> np.ndarray:
    """Raindrops on the lens or a window, like RainDrop (parameters: :data:`RAINDROP_PARAMS`).

    ``(H, W, 3)`` -> ``(H, W, 3)``; pixels away from drops are unchanged.
    """
    img = _check_image(clean)
    p = RAINDROP_PARAMS[_check_severity(severity)]
    h, w = img.shape[:2]
    view = _check_view(view)
    s = _scale(h, w, view)
    n = round(float(rng.integers(p.count[0], p.count[1] + 1)) * _area_factor(h, w, view))
    radii = np.exp(rng.uniform(math.log(p.radius[0]), math.log(p.radius[1]), size=n)) * s
    # Centres may lie a little outside the frame: drops cut by the border are common.
    cx = rng.uniform(0.0, 1.0, size=n) * (w + 0.6 * radii) - 0.3 * radii
    cy = rng.uniform(0.0, 1.0, size=n) * (h + 0.6 * radii) - 0.3 * radii
    aspect = rng.uniform(0.8, 1.25, size=n)
    rx = np.maximum(radii * aspect, 1.0)
    ry = np.maximum(radii / aspect, 1.0)
    e2 = rng.uniform(0.0, 0.08, size=n)
    e3 = rng.uniform(0.0, 0.05, size=n)
    ph2 = rng.uniform(0.0, 2 * np.pi, size=n)
    ph3 = rng.uniform(0.0, 2 * np.pi, size=n)
    cos2, sin2, cos3, sin3 = np.cos(ph2), np.sin(ph2), np.cos(ph3), np.sin(ph3)
    zoom = rng.uniform(p.zoom[0], p.zoom[1], size=n)
    glint = rng.uniform(0.15, 0.45, size=n)

    # Rasterise: each pixel belongs to the drop in which its normalised radius is smallest.
    rho_map = np.full((h, w), np.inf, dtype=np.float32)
    id_map = np.full((h, w), -1, dtype=np.int64)
    for i in range(n):
        ext = 1.15 * max(rx[i], ry[i])
        x0, x1 = max(0, int(cx[i] - ext)), min(w, int(cx[i] + ext) + 2)
        y0, y1 = max(0, int(cy[i] - ext)), min(h, int(cy[i] + ext) + 2)
        if x0 >= x1 or y0 >= y1:
            continue
        dx = (np.arange(x0, x1, dtype=np.float32)[None, :] - cx[i]) / rx[i]
        dy = (np.arange(y0, y1, dtype=np.float32)[:, None] - cy[i]) / ry[i]
        r = np.sqrt(dx * dx + dy * dy) + 1e-6
        c, sn = dx / r, dy / r  # cos and sin of the polar angle, without trigonometry
        c2, s2 = c * c - sn * sn, 2.0 * c * sn
        c3, s3 = c * (4.0 * c * c - 3.0), sn * (3.0 - 4.0 * sn * sn)
        wobble = e2[i] * (c2 * cos2[i] - s2 * sin2[i]) + e3[i] * (c3 * cos3[i] - s3 * sin3[i])
        rho = r / (1.0 + wobble)
        sub_rho = rho_map[y0:y1, x0:x1]
        take = rho < np.minimum(sub_rho, 1.0)
        sub_rho[take] = rho[take]
        id_map[y0:y1, x0:x1][take] = i

    inside = id_map >= 0
    if not inside.any():
        return img.copy()
    ys, xs = np.nonzero(inside)
    ids = id_map[ys, xs]
    rho = rho_map[ys, xs]
    # Each drop is a tiny wide-angle lens: it shows the scene around it, inverted and zoomed
    # out, more compressed towards the rim.
    k = zoom[ids] * (1.0 + 0.35 * rho * rho)
    src_x = cx[ids] - (xs - cx[ids]) * k
    src_y = cy[ids] - (ys - cy[ids]) * k
    soft = gaussian_blur(img, p.scene_blur * s)
    drop = _bilinear_sample(soft, src_x, src_y)
    drop = 0.88 * drop + 0.12 * drop.mean(axis=1, keepdims=True)  # water mutes colours a bit
    edge = np.clip((rho - 0.6) / 0.4, 0.0, 1.0)
    drop *= (1.0 - p.rim * edge * edge)[:, None]
    gx = (xs - cx[ids]) / rx[ids] + 0.35
    gy = (ys - cy[ids]) / ry[ids] + 0.4
    drop += (glint[ids] * np.exp(-(gx * gx + gy * gy) / (2 * 0.15**2)))[:, None]

    mask = np.zeros((h, w), dtype=np.float32)
    mask[ys, xs] = 1.0
    layer = np.zeros_like(img)
    layer[ys, xs] = np.clip(drop, 0.0, 1.0)
    # The drops are out of focus: blur the premultiplied layer and its coverage alike.
    sigma = p.defocus * s
    mask_b = gaussian_blur(mask, sigma)
    layer_b = gaussian_blur(layer, sigma)
    around = np.clip(gaussian_blur(mask, 2.0 * sigma) * 1.3, 0.0, 1.0)[..., None]
    background = img * (1.0 - around) + soft * around
    out = background * (1.0 - mask_b[..., None]) + layer_b
    # Pixels no drop can reach keep their exact value (only float noise would change them).
    far = around[..., 0] < 1e-4
    out[far] = img[far]
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Snow (Snow100K)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SnowParams:
    """Snow parameters (pixels of a 256-pixel image).

    flakes: flakes per 256 x 256 image over all layers (smaller layers get more).
    sizes: Gaussian sigma of a flake per layer, far → near.
    opacity: flake opacity range.
    streak_fraction: share of flakes motion-blurred into a short streak.
    streak_length: streak length range for the far layer (nearer layers: up to 2x longer).
    wind: maximum absolute fall angle from vertical, degrees.
    gain: how flat-topped a flake is (its blurred splat is multiplied by this and clipped).
    haze_beta: extinction coefficient of a veiling haze (0 = none).
    """

    flakes: int
    sizes: tuple[float, ...]
    opacity: tuple[float, float]
    streak_fraction: float
    streak_length: tuple[float, float]
    wind: float = 25.0
    gain: float = 1.6
    haze_beta: float = 0.0


SNOW_PARAMS: dict[str, SnowParams] = {
    "light": SnowParams(
        flakes=130, sizes=(0.6, 1.0, 1.6), opacity=(0.3, 0.8), streak_fraction=0.2,
        streak_length=(2.0, 6.0),
    ),
    "medium": SnowParams(
        flakes=330, sizes=(0.6, 1.0, 1.6, 2.4), opacity=(0.35, 0.85), streak_fraction=0.3,
        streak_length=(3.0, 8.0),
    ),
    "heavy": SnowParams(
        flakes=550, sizes=(0.6, 1.0, 1.6, 2.4, 3.2), opacity=(0.4, 0.9), streak_fraction=0.35,
        streak_length=(3.0, 10.0), haze_beta=0.12,
    ),
}  # fmt: skip


def _flake_layer(
    h: int,
    w: int,
    xs: np.ndarray,
    ys: np.ndarray,
    opacity: np.ndarray,
    dx: np.ndarray,
    dy: np.ndarray,
    sigma: float,
    gain: float,
) -> np.ndarray:
    """One depth layer of flakes. Flake ``i`` is a segment from ``(xs, ys)`` back along
    ``(dx, dy)`` (its motion during the exposure; zero for a still flake), blurred by ``sigma``.
    The splat conserves each flake's "mass", so streaky flakes are fainter, as motion blur is.
    Returns an opacity map ``(H, W)`` in [0, 1]."""
    length = np.hypot(dx, dy)
    k = max(1, math.ceil(1.5 * float(length.max(initial=0.0))) + 1)
    t = np.linspace(0.0, 1.0, k)[None, :] if k > 1 else np.zeros((1, 1))
    px = xs[:, None] - t * dx[:, None]
    py = ys[:, None] - t * dy[:, None]
    canvas = _splat(h, w, px, py, (opacity / k)[:, None] * np.ones_like(t))
    sigma = max(sigma, 0.5)
    canvas = gaussian_blur(canvas, sigma)
    return np.clip(canvas * (2.0 * math.pi * (sigma * sigma + 0.15) * gain), 0.0, 1.0)


def _snow_colour(rng: np.random.Generator) -> np.ndarray:
    level = rng.uniform(0.9, 1.0)
    return np.clip(level * np.array([0.97, 0.98, 1.0]) + rng.normal(0, 0.01, 3), 0, 1).astype(
        np.float32
    )


def snow(
    clean: np.ndarray, rng: np.random.Generator, severity: str = "medium", view: float = 1.0
) -> np.ndarray:
    """Falling snow like Snow100K (parameters: :data:`SNOW_PARAMS`). ``(H, W, 3)`` -> same."""
    img = _check_image(clean)
    p = SNOW_PARAMS[_check_severity(severity)]
    h, w = img.shape[:2]
    view = _check_view(view)
    s = _scale(h, w, view)
    out = img
    if p.haze_beta > 0:
        depth = depth_map(h, w, rng)
        out = scatter(out, depth, p.haze_beta * rng.uniform(0.7, 1.3), _airlight(rng, 0.8, 1.0))
    wind = math.radians(rng.uniform(-p.wind, p.wind))
    n_layers = len(p.sizes)
    shares = 1.0 / np.arange(1, n_layers + 1, dtype=np.float64)
    shares /= shares.sum()
    total = p.flakes * _area_factor(h, w, view)
    alphas = []
    for k, size in enumerate(p.sizes):
        n = max(1, int(rng.poisson(total * shares[k])))
        xs = rng.uniform(-5, w + 5, size=n)
        ys = rng.uniform(-5, h + 5, size=n)
        opacity = rng.uniform(p.opacity[0], p.opacity[1], size=n)
        streaky = rng.random(n) < p.streak_fraction
        near = 1.0 + k / max(1, n_layers - 1)  # near flakes move farther during the exposure
        length = np.where(streaky, rng.uniform(*p.streak_length, size=n) * near * s, 0.0)
        angle = wind + np.radians(rng.normal(0.0, 8.0, size=n))
        alphas.append(
            _flake_layer(
                h, w, xs, ys, opacity, length * np.sin(angle), length * np.cos(angle),
                size * s, p.gain,
            )
        )  # fmt: skip
    alpha = _combine(alphas)[..., None]
    out = out * (1.0 - alpha) + _snow_colour(rng)[None, None, :] * alpha
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Haze
# --------------------------------------------------------------------------------------------

HAZE_PARAMS: dict[str, FogParams] = {
    "light": FogParams(beta=(0.09, 0.2), airlight=(0.7, 1.0)),
    "medium": FogParams(beta=(0.18, 0.36), airlight=(0.7, 1.0)),
    "heavy": FogParams(beta=(0.4, 0.7), airlight=(0.7, 1.0)),
}


def haze(
    clean: np.ndarray, rng: np.random.Generator, severity: str = "medium", view: float = 1.0
) -> np.ndarray:
    """Haze by atmospheric scattering with a random depth map (parameters:
    :data:`HAZE_PARAMS`). ``(H, W, 3)`` -> ``(H, W, 3)``. ``view`` is accepted for a
    uniform signature: scattering has no particle size."""
    _check_view(view)
    img = _check_image(clean)
    p = HAZE_PARAMS[_check_severity(severity)]
    h, w = img.shape[:2]
    depth = depth_map(h, w, rng)
    out = scatter(img, depth, rng.uniform(*p.beta), _airlight(rng, *p.airlight))
    return np.clip(out, 0.0, 1.0).astype(np.float32)


WEATHER_TYPES: dict[str, WeatherFn] = {
    "rain": rain,
    "rain_fog": rain_fog,
    "raindrop": raindrop,
    "snow": snow,
    "haze": haze,
}

COMPOSITES: dict[str, tuple[str, ...]] = {
    "snow_haze": ("haze", "snow"),  # flakes in front of the haze
    "rain_drops": ("rain", "raindrop"),  # streaks in the scene, drops on the lens
    "rain_haze": ("haze", "rain"),
}
"""Composite weather: generators applied in order (farthest first)."""

ALL_TYPES: tuple[str, ...] = (*WEATHER_TYPES, *COMPOSITES)
CLEAN = "clean"
"""The identity "weather": the input is the clean photo itself."""


def apply_weather(
    name: str,
    clean: np.ndarray,
    rng: np.random.Generator,
    severity: str = "medium",
    strength: float = 1.0,
    view: float = 1.0,
) -> np.ndarray:
    """Any single, composite or ``"clean"`` weather, optionally weakened.

    ``strength`` in [0, 1] blends the degradation toward the clean image
    (``clean + s·(weathered − clean)``): with ``"light"`` severity, small strengths give
    degradations that are barely visible; ``view`` scales particle sizes as for a crop of a
    ``view`` times larger frame (module docstring). ``(H, W, 3)`` float32 -> same.
    """
    img = _check_image(clean)
    if name == CLEAN:
        return img.copy()
    if name not in WEATHER_TYPES and name not in COMPOSITES:
        raise MofmeError(f"unknown weather {name!r}; choose one of {', '.join(ALL_TYPES)}")
    out = img
    for part in COMPOSITES.get(name, (name,)):
        out = WEATHER_TYPES[part](out, rng, severity, view)
    if strength < 1.0:
        out = img + float(strength) * (out - img)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Snowy video
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SnowVideoParams:
    """Snow-video parameters (pixels and pixels per frame of a 256-pixel video).

    flakes: flakes per 256 x 256 frame over all depth layers.
    sizes: flake sigma per depth layer, far → near (near flakes are bigger and blurrier).
    speeds: mean fall speed per layer in px/frame (near flakes cross the frame faster).
    wind: maximum absolute shared horizontal drift, as a fraction of the fall speed.
    sway: maximum amplitude (px) of each flake's own sinusoidal sideways sway.
    exposure: fraction of a frame interval the shutter is open (motion-blur streak length).
    opacity: flake opacity range.
    gain: flake flatness, as in :class:`SnowParams`.
    haze_beta: extinction coefficient of the (static) haze.
    """

    flakes: int
    sizes: tuple[float, ...]
    speeds: tuple[float, ...]
    wind: float
    sway: float
    exposure: float
    opacity: tuple[float, float]
    gain: float = 1.6
    haze_beta: float = 0.2


SNOW_VIDEO_PARAMS: dict[str, SnowVideoParams] = {
    "light": SnowVideoParams(
        flakes=130, sizes=(0.6, 1.0, 1.8), speeds=(1.2, 2.5, 5.0), wind=0.4, sway=1.0,
        exposure=0.5, opacity=(0.35, 0.8), haze_beta=0.05,
    ),
    "medium": SnowVideoParams(
        flakes=280, sizes=(0.6, 1.0, 1.8, 2.6), speeds=(1.2, 2.5, 4.5, 7.0), wind=0.5, sway=1.5,
        exposure=0.5, opacity=(0.4, 0.85), haze_beta=0.12,
    ),
    "heavy": SnowVideoParams(
        flakes=500, sizes=(0.6, 1.1, 2.0, 3.0), speeds=(1.5, 3.0, 5.5, 8.5), wind=0.6,
        sway=2.0, exposure=0.6, opacity=(0.45, 0.95), haze_beta=0.25,
    ),
}  # fmt: skip


class SnowField:
    """Temporally coherent falling snow for a ``(H, W)`` video.

    Each flake keeps a position, a velocity (fall speed of its depth layer x jitter, plus the
    shared wind drift), a size and opacity given by its layer, and a sideways sway with its own
    amplitude, frequency and phase. A flake that leaves the bottom re-enters at the top at a new
    random column; one that drifts out sideways re-enters from the other side.
    Call :meth:`render` for the current frame, then :meth:`step` to advance one frame.
    """

    def __init__(
        self, h: int, w: int, rng: np.random.Generator, severity: str = "medium", view: float = 1.0
    ):
        self.p = SNOW_VIDEO_PARAMS[_check_severity(severity)]
        self.h, self.w = h, w
        self.rng = rng
        view = _check_view(view)
        s = _scale(h, w, view)
        self.s = s
        n_layers = len(self.p.sizes)
        shares = 1.0 / np.arange(1, n_layers + 1, dtype=np.float64)
        shares /= shares.sum()
        counts = np.round(self.p.flakes * _area_factor(h, w, view) * shares)
        counts = np.maximum(1, counts).astype(int)
        self.layer = np.repeat(np.arange(n_layers), counts)
        n = int(counts.sum())
        self.margin = 4.0 * max(self.p.sizes) * s + max(self.p.speeds) * s
        self.x = rng.uniform(-self.margin, w + self.margin, size=n)
        self.y = rng.uniform(-self.margin, h + self.margin, size=n)
        drift = rng.uniform(-self.p.wind, self.p.wind)
        speed = np.asarray(self.p.speeds)[self.layer] * s
        self.vy = speed * rng.uniform(0.8, 1.2, size=n)
        self.vx = drift * speed * rng.uniform(0.9, 1.1, size=n)
        self.opacity = rng.uniform(self.p.opacity[0], self.p.opacity[1], size=n)
        self.sway_amp = rng.uniform(0.0, self.p.sway, size=n) * s
        self.sway_freq = rng.uniform(0.1, 0.35, size=n)
        self.sway_phase = rng.uniform(0.0, 2 * np.pi, size=n)
        self.t = 0
        self.depth = depth_map(h, w, rng)
        self.beta = self.p.haze_beta * rng.uniform(0.7, 1.3)
        self.airlight = _airlight(rng, 0.75, 1.0)
        self.colour = _snow_colour(rng)

    def _displacement(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-flake motion from frame ``t`` to ``t + 1`` (px)."""
        sway = self.sway_amp * (
            np.sin(self.sway_freq * (self.t + 1) + self.sway_phase)
            - np.sin(self.sway_freq * self.t + self.sway_phase)
        )
        return self.vx + sway, self.vy

    @property
    def mean_velocity(self) -> tuple[float, float]:
        """Coverage-weighted mean flake motion ``(dx, dy)`` in px/frame (sway averages out)."""
        sizes = np.asarray(self.p.sizes)[self.layer] * self.s
        wgt = self.opacity * (sizes * sizes + 0.15)
        return float(np.average(self.vx, weights=wgt)), float(np.average(self.vy, weights=wgt))

    def alpha(self) -> np.ndarray:
        """Snow opacity ``(H, W)`` of the current frame; streaks follow each flake's motion."""
        dx, dy = self._displacement()
        e = self.p.exposure
        alphas = []
        for k, size in enumerate(self.p.sizes):
            sel = self.layer == k
            alphas.append(
                _flake_layer(
                    self.h, self.w, self.x[sel], self.y[sel], self.opacity[sel],
                    e * dx[sel], e * dy[sel], size * self.s, self.p.gain,
                )
            )  # fmt: skip
        return _combine(alphas)

    def render(self, frame: np.ndarray) -> np.ndarray:
        """Hazy, snowy version of ``frame`` ``(H, W, 3)`` at the current time step."""
        img = _check_image(frame)
        if img.shape[:2] != (self.h, self.w):
            raise MofmeError(f"frame of shape {img.shape} does not match the video size")
        out = scatter(img, self.depth, self.beta, self.airlight)
        a = self.alpha()[..., None]
        out = out * (1.0 - a) + self.colour[None, None, :] * a
        return np.clip(out, 0.0, 1.0).astype(np.float32)

    def step(self) -> None:
        """Advance every flake by one frame, recycling those that left the frame."""
        dx, dy = self._displacement()
        self.x = self.x + dx
        self.y = self.y + dy
        self.t += 1
        m = self.margin
        gone = self.y > self.h + m
        if gone.any():
            self.y[gone] -= self.h + 2 * m
            self.x[gone] = self.rng.uniform(-m, self.w + m, size=int(gone.sum()))
        span = self.w + 2 * m
        self.x = (self.x + m) % span - m


def snow_video(
    frames: Sequence[np.ndarray],
    rng: np.random.Generator,
    severity: str = "medium",
    view: float = 1.0,
) -> list[np.ndarray]:
    """Add coherent falling snow and haze to a clip (see :class:`SnowField`).

    frames: clean frames, each float32 ``(H, W, 3)`` in [0, 1], all the same size.
    view: particle scale, as for :func:`apply_weather`.
    Returns the snowy frames (new arrays, same shapes).
    """
    if len(frames) == 0:
        raise MofmeError("snow_video needs at least one frame")
    h, w = np.asarray(frames[0]).shape[:2]
    field = SnowField(h, w, rng, severity, view)
    out = []
    for frame in frames:
        out.append(field.render(frame))
        field.step()
    return out


# --------------------------------------------------------------------------------------------
# Clean clips
# --------------------------------------------------------------------------------------------


def _to_uint8(img: np.ndarray) -> np.ndarray:
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return arr
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def camera_clip(
    photo: np.ndarray, n_frames: int, size_hw: tuple[int, int], rng: np.random.Generator
) -> list[np.ndarray]:
    """A clean clip from a still photo by a smooth camera move (pan, zoom, small roll).

    photo: ``(H, W, 3)`` uint8, or float in [0, 1].
    Returns ``n_frames`` float32 frames ``(h, w, 3)`` in [0, 1]. The view window stays inside
    the photo; motion follows an ease-in/ease-out curve plus a faint hand-held wobble.
    """
    if n_frames < 1:
        raise MofmeError(f"n_frames must be at least 1, got {n_frames}")
    h, w = size_hw
    src = Image.fromarray(_to_uint8(photo)).convert("RGB")
    sw, sh = src.size
    steps = max(1, n_frames - 1)
    # Per-frame limits keep the move gentle whatever the clip length: about 1 % of the view
    # width of pan, 0.6 % of zoom and 0.2 degrees of roll per frame.
    max_roll = math.radians(3.0)
    roll0 = rng.uniform(-max_roll, max_roll)
    roll1 = float(
        np.clip(roll0 + math.radians(rng.uniform(-0.2, 0.2)) * steps, -max_roll, max_roll)
    )

    def fit(angle: float) -> float:
        """Largest source-pixels-per-output-pixel scale whose rotated window fits the photo."""
        c, s = abs(math.cos(angle)), abs(math.sin(angle))
        return min(sw / (w * c + h * s), sh / (w * s + h * c))

    s_fit = min(fit(roll0), fit(roll1))
    scale0 = s_fit * rng.uniform(0.55, 0.95)
    scale1 = float(
        np.clip(scale0 * math.exp(rng.uniform(-0.006, 0.006) * steps), 0.5 * s_fit, 0.97 * s_fit)
    )
    # Pre-shrink so that the affine resampling below never minifies much (it does not
    # low-pass filter).
    shrink = max(1.0, min(scale0, scale1))
    if shrink > 1.0:
        src = src.resize((max(1, round(sw / shrink)), max(1, round(sh / shrink))), Image.LANCZOS)
        sw, sh = src.size
        scale0, scale1 = scale0 / shrink, scale1 / shrink

    def half_extent(scale: float, angle: float) -> tuple[float, float]:
        c, s = abs(math.cos(angle)), abs(math.sin(angle))
        return scale * (w * c + h * s) / 2.0, scale * (w * s + h * c) / 2.0

    def clamp(cx: float, cy: float, scale: float, angle: float) -> tuple[float, float]:
        ex, ey = half_extent(scale, angle)
        return min(max(cx, ex), max(ex, sw - ex)), min(max(cy, ey), max(ey, sh - ey))

    ex, ey = half_extent(scale0, roll0)
    c0 = (rng.uniform(ex, max(ex, sw - ex)), rng.uniform(ey, max(ey, sh - ey)))
    heading = rng.uniform(0.0, 2 * np.pi)
    pan = rng.uniform(0.2, 1.0) * 0.01 * w * scale0 * steps
    c1 = clamp(c0[0] + pan * math.cos(heading), c0[1] + pan * math.sin(heading), scale1, roll1)
    wobble_amp = rng.uniform(0.0, 0.5) * scale0
    wobble_phase = rng.uniform(0.0, 2 * np.pi, size=2)
    frames = []
    for t in range(n_frames):
        u = t / steps
        u = u * u * (3.0 - 2.0 * u)  # ease in and out
        scale = scale0 + (scale1 - scale0) * u
        angle = roll0 + (roll1 - roll0) * u
        cx, cy = clamp(
            c0[0] + (c1[0] - c0[0]) * u + wobble_amp * math.sin(0.7 * t + wobble_phase[0]),
            c0[1] + (c1[1] - c0[1]) * u + wobble_amp * math.sin(0.9 * t + wobble_phase[1]),
            scale,
            angle,
        )
        # PIL's affine maps output (x, y) to input (a x + b y + c, d x + e y + f).
        ca, sa = math.cos(angle) * scale, math.sin(angle) * scale
        ox, oy = w / 2.0, h / 2.0
        coeffs = (ca, -sa, cx - ca * ox + sa * oy, sa, ca, cy - sa * ox - ca * oy)
        frame = src.transform((w, h), Image.AFFINE, coeffs, resample=Image.BICUBIC)
        frames.append(np.asarray(frame, dtype=np.float32) / 255.0)
    return frames


def fit_to_size(img: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Centre-crop ``img`` ``(H, W, 3)`` uint8 to the aspect of ``size_hw`` and resize to it.
    Returns float32 ``(h, w, 3)`` in [0, 1]."""
    h, w = size_hw
    ih, iw = img.shape[:2]
    scale = min(ih / h, iw / w)
    ch, cw = h * scale, w * scale
    y0, x0 = (ih - ch) / 2.0, (iw - cw) / 2.0
    pil = Image.fromarray(_to_uint8(img)).convert("RGB")
    out = pil.resize((w, h), Image.LANCZOS, box=(x0, y0, x0 + cw, y0 + ch))
    return np.asarray(out, dtype=np.float32) / 255.0
