"""Clean clips for synthetic video: a camera move over a still photo, or a cut from a video file.

:func:`camera_clip` pans, zooms and rolls a view window over a photo; :func:`video_clip` reads
frames from a video file through :mod:`mofme.inference.videoio` (the one video reader) and fits
them to the clip size with :func:`fit_to_size`. Frames are float32 ``(h, w, 3)`` in [0, 1]; the
weather (:func:`mofme.data.weather.snow_video`) is added afterwards.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from mofme.errors import MofmeError
from mofme.inference.videoio import iter_frames, probe


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


def video_clip(
    path: str | Path, n_frames: int, size_hw: tuple[int, int], start: int = 0
) -> list[np.ndarray]:
    """Up to ``n_frames`` consecutive frames of a video file from index ``start``, each
    centre-cropped to the aspect of ``size_hw`` and resized: float32 ``(h, w, 3)`` in [0, 1]
    (fewer when the video is shorter). Raises :class:`MofmeError` naming the file when it cannot
    be decoded or holds no frame at or after ``start``."""
    frames: list[np.ndarray] = []
    for i, rgb in enumerate(iter_frames(path)):
        if i < start:
            continue
        frames.append(fit_to_size(rgb, size_hw))
        if len(frames) >= n_frames:
            break
    if not frames:
        raise MofmeError(f"video {path} has no frames (from frame {start} on)")
    return frames


def video_length(path: str | Path) -> int:
    """Frames the container declares for its first video stream (0 if unknown)."""
    return probe(path).n_frames or 0
