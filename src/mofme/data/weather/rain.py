"""Rain streaks (Rain100 / Outdoor-Rain) and rain in fog (Outdoor-Rain)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mofme.data.weather import common
from mofme.data.weather.common import FogParams


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
    s = common.pixel_scale(h, w, view)
    wind = math.radians(rng.uniform(-p.wind, p.wind))
    shares = np.arange(p.layers, 0, -1, dtype=np.float64)  # far layers hold more streaks
    shares /= shares.sum()
    total = p.count * common.area_factor(h, w, view)
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
        canvas = common.splat(h, w, xs, ys, weights)
        sigma = (p.width[0] + (p.width[1] - p.width[0]) * f) * s
        canvas = common.gaussian_blur(canvas, sigma)
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


def rain(
    clean: np.ndarray, rng: np.random.Generator, severity: str = "medium", view: float = 1.0
) -> np.ndarray:
    """Rain streaks (parameters: :data:`RAIN_PARAMS`). ``(H, W, 3)`` -> ``(H, W, 3)``."""
    img, p, view = common.checked(clean, RAIN_PARAMS, severity, view)
    h, w = img.shape[:2]
    alpha = common.combine_layers(_rain_layers(h, w, rng, p, view))
    out = _screen(img, alpha, _streak_colour(rng))
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Rain + fog (Outdoor-Rain)
# --------------------------------------------------------------------------------------------


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
    img, (rp, fp), view = common.checked(clean, RAIN_FOG_PARAMS, severity, view)
    h, w = img.shape[:2]
    layers = _rain_layers(h, w, rng, rp, view)
    colour = _streak_colour(rng)
    out = img
    if len(layers) > 1:
        out = _screen(out, common.combine_layers(layers[:-1]), colour)
    depth = common.depth_map(h, w, rng)
    out = common.scatter(out, depth, rng.uniform(*fp.beta), common.draw_airlight(rng, *fp.airlight))
    out = _screen(out, layers[-1], colour)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
