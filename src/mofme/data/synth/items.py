"""One synthetic item: the draws that make it and the files it writes.

An image item (:class:`ImageJob`) is a clean view of the content pool with weather on it; a
video item (:class:`VideoJob`) a clean clip (a camera move over a photo or dead leaves, or a cut
from a video file) with coherent falling snow. Each draws everything from its own generator
``numpy.random.default_rng([seed, stream, index])``, in a fixed order, and returns its record
for ``meta.json``.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mofme.data.clips import camera_clip, video_clip, video_length
from mofme.data.content import (
    LEAVES_SHARE,
    Look,
    colour_cast,
    dead_leaves,
    draw_look,
    training_view,
)
from mofme.data.io import atomic_write_bytes, to_uint8
from mofme.data.synth.runner import worker_sources
from mofme.data.weather import ALL_TYPES, CLEAN, SEVERITIES, apply_weather, snow_video
from mofme.errors import MofmeError

TRAIN_TYPES: tuple[str, ...] = ALL_TYPES
"""Weather of train item ``i`` is ``TRAIN_TYPES[i % len(TRAIN_TYPES)]`` (a balanced mix of the
single and composite types), unless the item is an identity pair (``clean``)."""


def parse_type_mix(spec: str | None) -> tuple[str, ...]:
    """The training weather cycle from ``"rain:2,snow,raindrop"`` (``name[:weight]``, weights are
    whole numbers >= 1); ``None`` or ``""``: the balanced :data:`TRAIN_TYPES`.

    Item ``i`` gets ``cycle[i % len(cycle)]``; a weight repeats its type in the cycle, so
    ``rain:2,snow`` gives two rain items per snow item.
    """
    if not spec:
        return TRAIN_TYPES
    cycle: list[str] = []
    for part in spec.split(","):
        name, _, weight = part.strip().partition(":")
        if name not in ALL_TYPES:
            raise MofmeError(
                f"unknown weather type {name!r} in the type mix {spec!r}; "
                f"choose from {', '.join(ALL_TYPES)}"
            )
        if weight and not (weight.isdigit() and int(weight) >= 1):
            raise MofmeError(f"weight {weight!r} of {name!r} must be a whole number >= 1")
        cycle.extend([name] * (int(weight) if weight else 1))
    return tuple(cycle)


IDENTITY_SHARE = 0.12
"""Default share of identity pairs (clean -> clean) in synthetic training data."""
SEVERITY_WEIGHTS = (0.4, 0.35, 0.25)
"""Training severity mix (light, medium, heavy); light items are also weakened at random."""
LIGHT_STRENGTH = (0.1, 1.0)
"""Blend range of light training items toward the clean image (0.1 = barely visible)."""
RENDER_SCALE = (0.75, 1.75)
"""Training views are rendered at this scale (log-uniform) and resized to the item size, so
content detail appears at many sizes relative to the image (resolution jitter)."""
VIEW_SCALE = (0.75, 3.5)
"""Training weather is drawn at this particle scale (log-uniform; ``view`` of
:func:`mofme.data.weather.apply_weather`): each item looks like a crop of a frame up to 3.5x
larger, so streaks, flakes and drops reach the pixel sizes they have in full-size photos."""


def _draw_view(rng: np.random.Generator) -> float:
    return math.exp(rng.uniform(math.log(VIEW_SCALE[0]), math.log(VIEW_SCALE[1])))


def draw_severity(rng: np.random.Generator, fixed: str | None, jitter: bool) -> tuple[str, float]:
    """The item's severity (``fixed``, or the training mix) and blend strength: light training
    items are weakened at random, down to barely visible; everything else is full strength."""
    severity = str(rng.choice(SEVERITIES, p=SEVERITY_WEIGHTS)) if fixed is None else fixed
    strength = float(rng.uniform(*LIGHT_STRENGTH)) if jitter and severity == "light" else 1.0
    return severity, strength


def is_identity(seed: int, stream: int, index: int, share: float) -> bool:
    """Whether an item is an identity pair (clean -> clean). Its own generator, so the choice
    is known when naming files, before the item is drawn."""
    return bool(np.random.default_rng([seed, stream, index, 1]).random() < share)


def item_look(seed: int, stream: int, index: int, jitter: bool) -> Look | None:
    """The photographic look of a training item's clean content (:func:`draw_look`), or
    ``None``; its own generator, so the weather drawn for the item does not depend on it.
    Benchmark items (``jitter`` off) keep their photos as they are."""
    return draw_look(np.random.default_rng([seed, stream, index, 2])) if jitter else None


def _look_record(look: Look | None) -> dict[str, Any] | None:
    if look is None:
        return None
    return {
        k: (round(v, 3) if isinstance(v, float) else [round(x, 3) for x in v])
        for k, v in asdict(look).items()
    }


def png_bytes(img: np.ndarray) -> bytes:
    """``(H, W, 3)`` uint8 as PNG file bytes (zlib level 4: fast, the datasets are large)."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=4)
    return buf.getvalue()


def psnr_u8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of two uint8 images; ``inf`` when they are equal."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def _resize_u8(img: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    if img.shape[:2] == tuple(size_hw):
        return img
    return np.asarray(Image.fromarray(img).resize((size_hw[1], size_hw[0]), Image.LANCZOS))


# --------------------------------------------------------------------------------------------
# Image items
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageJob:
    """One image pair: ``folder/{input,gt}/`` names, seed stream and weather."""

    root: str
    folder: str
    index: int
    stream: int
    weather: str
    in_name: str
    gt_name: str
    seed: int
    size_hw: tuple[int, int]
    copy_to: str | None = None  # an extra folder receiving the pair as <index>.png in both
    severity: str | None = None  # None: random (training mix); else fixed (benchmark)
    jitter: bool = True  # render-scale and particle-scale jitter, random weakening of light items
    leaves_share: float = LEAVES_SHARE
    structure_share: float = 0.0  # share of views of thin vertical structure (planks, railings)
    soft_share: float = 0.0  # share of views made soft, pale and low in contrast (soft_photo)


def image_job(job: ImageJob) -> dict[str, Any]:
    """Draw one pair and write it (PNG) under ``root``; returns its ``meta.json`` record."""
    rng = np.random.default_rng([job.seed, job.stream, job.index])
    h, w = job.size_hw
    if job.jitter:
        u = math.exp(rng.uniform(math.log(RENDER_SCALE[0]), math.log(RENDER_SCALE[1])))
        render_hw = (max(16, round(h * u)), max(16, round(w * u)))
        view = _draw_view(rng)
    else:
        render_hw, view = (h, w), 1.0
    clean = training_view(
        worker_sources(), render_hw, rng, job.leaves_share, job.structure_share, job.soft_share
    )
    look = item_look(job.seed, job.stream, job.index, job.jitter)
    if look is not None:
        clean = look.apply(clean)
    severity, strength = draw_severity(rng, job.severity, job.jitter)
    degraded = apply_weather(job.weather, clean, rng, severity, strength, view)
    clean8 = _resize_u8(to_uint8(clean), job.size_hw)
    deg8 = _resize_u8(to_uint8(degraded), job.size_hw)
    if job.weather == CLEAN:
        deg8 = clean8  # exactly the identity, whatever the resampling did
    root = Path(job.root)
    in_png, gt_png = png_bytes(deg8), png_bytes(clean8)
    atomic_write_bytes(root / job.folder / "input" / job.in_name, in_png)
    atomic_write_bytes(root / job.folder / "gt" / job.gt_name, gt_png)
    if job.copy_to is not None:
        name = f"{job.index:05d}.png"
        atomic_write_bytes(root / job.copy_to / "input" / name, in_png)
        atomic_write_bytes(root / job.copy_to / "gt" / name, gt_png)
    record = {
        "input": f"{job.folder}/input/{job.in_name}",
        "gt": f"{job.folder}/gt/{job.gt_name}",
        "type": job.weather,
        "severity": severity if job.weather != CLEAN else "none",
        "strength": round(strength, 3),
        "render_hw": list(render_hw),
        "psnr": round(psnr_u8(deg8, clean8), 3),
    }
    if look is not None:
        record["look"] = _look_record(look)
    if job.copy_to is not None:
        record["copy"] = f"{job.copy_to}/input/{job.index:05d}.png"
    return record


# --------------------------------------------------------------------------------------------
# Video items
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoJob:
    """One clip: ``n_frames`` frames of ``size_hw``, drawn from seed stream ``stream``."""

    root: str
    split: str
    index: int
    name: str
    n_frames: int
    seed: int
    size_hw: tuple[int, int]
    video_file: str | None
    stream: int
    identity: bool = False  # a clean clip: snow frames = clean frames
    severity: str | None = None  # None: random training mix; else fixed (benchmark)
    jitter: bool = True  # particle-scale jitter, light clips weakened at random
    leaves_share: float = LEAVES_SHARE


def video_job(job: VideoJob) -> dict[str, Any]:
    """Draw one clip and write its snowy and clean frames as ``root/split/{snow,clean}/name/``;
    returns its ``meta.json`` record."""
    rng = np.random.default_rng([job.seed, job.stream, job.index])
    sources = worker_sources()
    if job.video_file is not None:
        length = video_length(job.video_file)
        start = int(rng.integers(0, max(1, length - job.n_frames + 1)))
        frames = video_clip(job.video_file, job.n_frames, job.size_hw, start=start)
        source: Any = {"video": job.video_file, "start": start}
    elif not sources or rng.random() < job.leaves_share:
        h, w = job.size_hw
        scene = dead_leaves((round(h * 1.6), round(w * 1.6)), rng)  # room for the camera move
        frames = camera_clip(scene, job.n_frames, job.size_hw, rng)
        source = {"dead_leaves": True}
    else:
        src_i = int(rng.integers(len(sources)))
        src = sources[src_i]
        photo = colour_cast(src.image.astype(np.float32) / 255.0, rng) if src.grey else src.image
        frames = camera_clip(photo, job.n_frames, job.size_hw, rng)
        source = {"photo": src_i}
    look = item_look(job.seed, job.stream, job.index, job.jitter)
    if look is not None:
        frames = [look.apply(f) for f in frames]
    severity, strength = draw_severity(rng, job.severity, job.jitter)
    if job.identity:
        snowy, severity, strength = [np.array(f, dtype=np.float32) for f in frames], "none", 0.0
    else:
        view = _draw_view(rng) if job.jitter else 1.0
        snowy = snow_video(frames, rng, severity, view)
        if strength < 1.0:
            snowy = [c + strength * (s - c) for c, s in zip(frames, snowy)]
    root = Path(job.root) / job.split
    psnrs = []
    for t, (clean, bad) in enumerate(zip(frames, snowy)):
        clean8, bad8 = to_uint8(clean), to_uint8(bad)
        atomic_write_bytes(root / "snow" / job.name / f"{t:05d}.png", png_bytes(bad8))
        atomic_write_bytes(root / "clean" / job.name / f"{t:05d}.png", png_bytes(clean8))
        psnrs.append(psnr_u8(bad8, clean8))
    return {
        "split": job.split,
        "video": job.name,
        "frames": len(frames),
        "severity": severity,
        "strength": round(strength, 3),
        "source": source,
        "psnr_mean": round(float(np.mean(psnrs)), 3),
        **({"look": _look_record(look)} if look is not None else {}),
    }
