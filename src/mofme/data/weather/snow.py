"""Falling snow: single images (Snow100K) and temporally coherent snowy video (RVSD)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mofme.data.weather import common
from mofme.errors import MofmeError


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
    canvas = common.splat(h, w, px, py, (opacity / k)[:, None] * np.ones_like(t))
    sigma = max(sigma, 0.5)
    canvas = common.gaussian_blur(canvas, sigma)
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
    img, p, view = common.checked(clean, SNOW_PARAMS, severity, view)
    h, w = img.shape[:2]
    s = common.pixel_scale(h, w, view)
    out = img
    if p.haze_beta > 0:
        depth = common.depth_map(h, w, rng)
        out = common.scatter(
            out, depth, p.haze_beta * rng.uniform(0.7, 1.3), common.draw_airlight(rng, 0.8, 1.0)
        )
    wind = math.radians(rng.uniform(-p.wind, p.wind))
    n_layers = len(p.sizes)
    shares = 1.0 / np.arange(1, n_layers + 1, dtype=np.float64)
    shares /= shares.sum()
    total = p.flakes * common.area_factor(h, w, view)
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
    alpha = common.combine_layers(alphas)[..., None]
    out = out * (1.0 - alpha) + _snow_colour(rng)[None, None, :] * alpha
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
        self.p = SNOW_VIDEO_PARAMS[common.check_severity(severity)]
        self.h, self.w = h, w
        self.rng = rng
        view = common.check_view(view)
        s = common.pixel_scale(h, w, view)
        self.s = s
        n_layers = len(self.p.sizes)
        shares = 1.0 / np.arange(1, n_layers + 1, dtype=np.float64)
        shares /= shares.sum()
        counts = np.round(self.p.flakes * common.area_factor(h, w, view) * shares)
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
        self.depth = common.depth_map(h, w, rng)
        self.beta = self.p.haze_beta * rng.uniform(0.7, 1.3)
        self.airlight = common.draw_airlight(rng, 0.75, 1.0)
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
        return common.combine_layers(alphas)

    def render(self, frame: np.ndarray) -> np.ndarray:
        """Hazy, snowy version of ``frame`` ``(H, W, 3)`` at the current time step."""
        img = common.check_image(frame)
        if img.shape[:2] != (self.h, self.w):
            raise MofmeError(f"frame of shape {img.shape} does not match the video size")
        out = common.scatter(img, self.depth, self.beta, self.airlight)
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
