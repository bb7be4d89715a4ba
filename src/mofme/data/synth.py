"""Synthetic datasets in the real datasets' layouts (SPEC §5), from clean photos.

Clean photos come from scikit-image's bundled colour photos (they ship inside the package, so
nothing is downloaded) and, optionally, a folder of the user's images. Each dataset item is
drawn from its own generator ``numpy.random.default_rng([seed, stream, index])``:

* item ``i`` does not depend on how many items come before or after it, nor on the number of
  worker processes, so a seed reproduces a dataset file for file;
* train and test items use different ``stream`` numbers (train 0, the test splits 1–4, RVSD
  train videos 10 and test videos 11), so no test item shares a seed sequence with a train item.
  (With only a handful of bundled photos, test crops do come from the same photos as train
  crops; pass ``source_folder`` with separate photos for a stricter split.)

Files are written to ``<name>.part`` and renamed when complete, and ``meta.json`` (seed, sizes,
per-file weather type, severity and PSNR) is written last.
"""

from __future__ import annotations

import functools
import io
import json
import math
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageOps
from tqdm import tqdm

from mofme.data.content import (
    GREY_PHOTOS,
    HELD_OUT_PHOTOS,
    LEAVES_SHARE,
    TRAIN_PHOTOS,
    colour_cast,
    dead_leaves,
    package_photo,
)
from mofme.data.weather import (
    ALL_TYPES,
    CLEAN,
    SEVERITIES,
    WEATHER_TYPES,
    apply_weather,
    camera_clip,
    fit_to_size,
    snow_video,
)
from mofme.errors import MofmeError

BUNDLED_PHOTOS: tuple[str, ...] = HELD_OUT_PHOTOS
"""The held-out photos (scikit-image, no download): demo and benchmark, never training."""

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"})
MAX_SOURCE_SIDE = 1024
"""User photos are shrunk so that their longer side is at most this (bounds memory)."""

TRAIN_TYPES: tuple[str, ...] = ALL_TYPES
"""Weather of train item ``i`` is ``TRAIN_TYPES[i % len(TRAIN_TYPES)]`` (a balanced mix of the
single and composite types), unless the item is an identity pair (``clean``)."""

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


@dataclass(frozen=True)
class SplitSpec:
    """One Allweather test split: its folder, weather type, TransWeather list and seed stream."""

    folder: str
    weather: str
    list_name: str
    stream: int


TEST_SPLITS: tuple[SplitSpec, ...] = (
    SplitSpec("test_rain", "rain_fog", "test1.txt", 1),  # Outdoor-Rain Test1
    SplitSpec("test_raindrop", "raindrop", "raindroptesta.txt", 2),  # RainDrop test_a
    SplitSpec("test_snow", "snow", "snowtest100k_L.txt", 3),  # Snow100K-L
    SplitSpec("test_haze", "haze", "hazetest.txt", 4),  # ours
)
TRAIN_LIST = "allweather.txt"
TRANSWEATHER_RAINDROP = "transweather_raindrop"
RVSD_STREAMS = {"train": 10, "test": 11}


# --------------------------------------------------------------------------------------------
# Clean sources
# --------------------------------------------------------------------------------------------


def _source_names(folder: str | None) -> list[str]:
    """Names of :func:`clean_sources` entries, in the same order (for ``meta.json``)."""
    return [*BUNDLED_PHOTOS, *(str(p) for p in (image_files(folder) if folder else []))]


def _pil_to_rgb8(im: Image.Image) -> np.ndarray:
    """Any Pillow image (grey, RGBA, palette, 16-bit, float) -> ``(H, W, 3)`` uint8."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if im.mode == "F" and arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        elif arr.size and arr.max() > 255.0:
            arr = arr / 257.0  # 16-bit range
        grey = np.clip(arr + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode == "P":
        im = im.convert("RGBA")
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def load_rgb(path: str | Path, max_side: int | None = MAX_SOURCE_SIDE) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB (EXIF orientation applied).

    Grey, RGBA, palette and 16-bit images are converted. Images whose longer side exceeds
    ``max_side`` are shrunk. Raises :class:`MofmeError` naming the file if it cannot be read.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            rgb = _pil_to_rgb8(ImageOps.exif_transpose(im))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise MofmeError(f"cannot read image {path}: {exc}") from exc
    if max_side is not None and max(rgb.shape[:2]) > max_side:
        f = max_side / max(rgb.shape[:2])
        size = (max(1, round(rgb.shape[1] * f)), max(1, round(rgb.shape[0] * f)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.LANCZOS))
    return rgb


@functools.lru_cache(maxsize=1)
def _bundled_photos() -> tuple[np.ndarray, ...]:
    return tuple(package_photo(name) for name in BUNDLED_PHOTOS)


def image_files(folder: str | Path) -> list[Path]:
    """Image files (by suffix) under ``folder``, recursively, in sorted order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MofmeError(f"source folder {folder} does not exist or is not a folder")
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise MofmeError(f"source folder {folder} holds no image files")
    return files


def clean_sources(
    folder: str | Path | None = None, include_bundled: bool = True
) -> list[np.ndarray]:
    """Clean photos as ``(H, W, 3)`` uint8 arrays, in a fixed order.

    The bundled scikit-image photos (:data:`BUNDLED_PHOTOS`, unless ``include_bundled`` is
    false) followed by every image file under ``folder`` (sorted paths; shrunk to
    :data:`MAX_SOURCE_SIDE`). The bundled arrays are shared and read-only.
    """
    photos: list[np.ndarray] = list(_bundled_photos()) if include_bundled else []
    if folder is not None:
        photos.extend(load_rgb(p) for p in image_files(folder))
    if not photos:
        raise MofmeError("no clean source photos: give a source folder or include the bundled ones")
    return photos


@dataclass(frozen=True)
class Source:
    """One clean source photo of a training pool; grey photos get a colour cast per view."""

    image: np.ndarray
    grey: bool = False


def training_sources(folder: str | Path | None = None) -> list[Source]:
    """The train pool: package photos disjoint from the held-out ones, then the user's photos
    (``folder``). Dead-leaves images are added per item, not listed here."""
    pool = [Source(package_photo(n), n in GREY_PHOTOS) for n in TRAIN_PHOTOS]
    if folder is not None:
        pool.extend(Source(load_rgb(p)) for p in image_files(folder))
    return pool


def training_view(
    pool: Sequence[Source],
    size_hw: tuple[int, int],
    rng: np.random.Generator,
    leaves_share: float = LEAVES_SHARE,
) -> np.ndarray:
    """A clean training view ``(h, w, 3)`` float32: dead leaves (``leaves_share``) or a random
    view of a pool photo."""
    if not pool or rng.random() < leaves_share:
        return dead_leaves(size_hw, rng)
    src = pool[int(rng.integers(len(pool)))]
    view = random_view(src.image, size_hw, rng)
    return colour_cast(view, rng) if src.grey else view


def _resize_u8(img: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    if img.shape[:2] == tuple(size_hw):
        return img
    return np.asarray(Image.fromarray(img).resize((size_hw[1], size_hw[0]), Image.LANCZOS))


def random_view(img: np.ndarray, size_hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A random crop of ``img`` ``(H, W, 3)`` (uint8, or float in [0, 1]) resized to ``size_hw``
    with a random horizontal flip. The crop covers 40–100 % of the largest window of the target
    aspect, but is never upscaled more than 1.25x when the photo allows. -> float32 ``(h, w, 3)``.
    """
    h, w = size_hw
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    ih, iw = arr.shape[:2]
    aspect = w / h
    ch_max = min(ih, iw / aspect)
    frac_min = min(1.0, max(0.4, (h / 1.25) / ch_max))
    ch = ch_max * rng.uniform(frac_min, 1.0)
    cw = ch * aspect
    y0 = rng.uniform(0.0, ih - ch)
    x0 = rng.uniform(0.0, iw - cw)
    view = Image.fromarray(arr).resize((w, h), Image.LANCZOS, box=(x0, y0, x0 + cw, y0 + ch))
    out = np.asarray(view, dtype=np.float32) / 255.0
    if rng.random() < 0.5:
        out = out[:, ::-1].copy()
    return out


# --------------------------------------------------------------------------------------------
# Writing helpers
# --------------------------------------------------------------------------------------------


def _png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=4)
    return buf.getvalue()


def _quantise(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a ``.part`` file renamed when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _psnr_u8(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def _prepare_out(
    out: Path, overwrite: bool, managed: Iterable[str], protect: Iterable[Path]
) -> None:
    """Refuse a non-empty ``out`` unless ``overwrite``; then clear only the entries this writer
    manages (so no stale files from an earlier, larger run mix in)."""
    if out.exists() and not out.is_dir():
        raise MofmeError(f"output path {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise MofmeError(
                f"output folder {out} is not empty; choose another folder or pass --overwrite"
            )
        targets = [out.resolve() / name for name in managed]
        for p in protect:
            pr = Path(p).resolve()
            for target in targets:
                if pr == target or target in pr.parents:
                    raise MofmeError(f"refusing to overwrite {target}: it holds the input {p}")
        for target in targets:
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _write_text(path: Path, text: str) -> None:
    write_atomic(path, text.encode("utf-8"))


# Worker state: the clean source pool, loaded once per process.
_SOURCES: list[Source] | None = None


def make_pool(kind: str, source_folder: str | Path | None = None) -> list[Source]:
    """``"train"``: :func:`training_sources`; ``"heldout"``: the held-out photos (+ ``folder``);
    ``"user"``: the photos in ``folder`` alone."""
    if kind == "user" and source_folder is not None:
        return [Source(load_rgb(p)) for p in image_files(source_folder)]
    if kind == "train":
        return training_sources(source_folder)
    if kind == "heldout":
        return [Source(p) for p in clean_sources(source_folder)]
    raise MofmeError(f"unknown content pool {kind!r}; use train or heldout")


def _init_worker(source_folder: str | None, pool: str = "train") -> None:
    global _SOURCES
    _SOURCES = make_pool(pool, source_folder)


def _run_jobs(
    fn: Callable[[Any], Any],
    jobs: Sequence[Any],
    workers: int,
    sources: list[Source],
    source_folder: str | None,
    desc: str,
    progress: bool,
    weight: Callable[[Any], int] = lambda job: 1,
    pool_kind: str = "train",
) -> list[Any]:
    """Run ``fn`` over ``jobs`` in order (optionally in a process pool) with a progress bar.
    In-process runs use ``sources``; pool workers load them again from ``source_folder``."""
    global _SOURCES
    results = []
    with tqdm(
        total=sum(weight(j) for j in jobs), desc=desc, unit="img", disable=not progress
    ) as bar:
        if workers <= 1 or len(jobs) <= 1:
            _SOURCES = sources
            try:
                for job in jobs:
                    results.append(fn(job))
                    bar.update(weight(job))
            finally:
                _SOURCES = None
        else:
            # "spawn": workers start clean even if the caller has threads running (e.g. torch).
            ctx = multiprocessing.get_context("spawn")
            init_args = (source_folder, pool_kind)
            with ctx.Pool(workers, initializer=_init_worker, initargs=init_args) as pool:
                for job, res in zip(jobs, pool.imap(fn, jobs, chunksize=4)):
                    results.append(res)
                    bar.update(weight(job))
    return results


def _check_seed(seed: int) -> int:
    if int(seed) < 0:
        raise MofmeError(f"the seed must be a non-negative integer, got {seed}")
    return int(seed)


def _check_size(size_hw: tuple[int, int]) -> tuple[int, int]:
    h, w = (int(v) for v in size_hw)
    if h < 16 or w < 16:
        raise MofmeError(f"image size {h}x{w} is too small; use at least 16x16")
    return h, w


# --------------------------------------------------------------------------------------------
# Allweather
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ImageJob:
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


def _draw_severity(
    rng: np.random.Generator, fixed: str | None, jitter: bool
) -> tuple[str, float]:
    """The item's severity (``fixed``, or the training mix) and blend strength: light training
    items are weakened at random, down to barely visible; everything else is full strength."""
    severity = str(rng.choice(SEVERITIES, p=SEVERITY_WEIGHTS)) if fixed is None else fixed
    strength = float(rng.uniform(*LIGHT_STRENGTH)) if jitter and severity == "light" else 1.0
    return severity, strength


def _image_job(job: _ImageJob) -> dict[str, Any]:
    assert _SOURCES is not None
    rng = np.random.default_rng([job.seed, job.stream, job.index])
    h, w = job.size_hw
    if job.jitter:
        u = math.exp(rng.uniform(math.log(RENDER_SCALE[0]), math.log(RENDER_SCALE[1])))
        render_hw = (max(16, round(h * u)), max(16, round(w * u)))
        view = _draw_view(rng)
    else:
        render_hw, view = (h, w), 1.0
    clean = training_view(_SOURCES, render_hw, rng, job.leaves_share)
    severity, strength = _draw_severity(rng, job.severity, job.jitter)
    degraded = apply_weather(job.weather, clean, rng, severity, strength, view)
    clean8 = _resize_u8(_quantise(clean), job.size_hw)
    deg8 = _resize_u8(_quantise(degraded), job.size_hw)
    if job.weather == CLEAN:
        deg8 = clean8  # exactly the identity, whatever the resampling did
    root = Path(job.root)
    in_png, gt_png = _png_bytes(deg8), _png_bytes(clean8)
    write_atomic(root / job.folder / "input" / job.in_name, in_png)
    write_atomic(root / job.folder / "gt" / job.gt_name, gt_png)
    if job.copy_to is not None:
        name = f"{job.index:05d}.png"
        write_atomic(root / job.copy_to / "input" / name, in_png)
        write_atomic(root / job.copy_to / "gt" / name, gt_png)
    record = {
        "input": f"{job.folder}/input/{job.in_name}",
        "gt": f"{job.folder}/gt/{job.gt_name}",
        "type": job.weather,
        "severity": severity if job.weather != CLEAN else "none",
        "strength": round(strength, 3),
        "render_hw": list(render_hw),
        "psnr": round(_psnr_u8(deg8, clean8), 3),
    }
    if job.copy_to is not None:
        record["copy"] = f"{job.copy_to}/input/{job.index:05d}.png"
    return record


def _is_identity(seed: int, stream: int, index: int, share: float) -> bool:
    # Its own generator, so the choice is known when naming files, before the item is drawn.
    return bool(np.random.default_rng([seed, stream, index, 1]).random() < share)


def write_allweather(
    out: str | Path,
    n_train: int,
    n_test: int,
    size_hw: tuple[int, int] = (256, 256),
    seed: int = 0,
    source_folder: str | Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
    workers: int = 1,
    identity_share: float = IDENTITY_SHARE,
) -> dict[str, Any]:
    """Write a synthetic Allweather dataset in both the MoFME and TransWeather layouts.

    MoFME layout: ``out/train/{input,gt}/`` (``<i>_<type>.png``, same name in both),
    ``out/test_rain/`` (rain + fog), ``out/test_snow/``, ``out/test_haze/`` (``<i>.png``) and
    ``out/test_raindrop/`` (``<i>_rain.png`` in ``input``, ``<i>_clean.png`` in ``gt``, as in
    RainDrop). Train mixes :data:`TRAIN_TYPES` (single and composite weather) with a share
    ``identity_share`` of identity pairs (``<i>_clean.png``: input = ground truth); severities
    follow :data:`SEVERITY_WEIGHTS`, light items are weakened down to barely visible, and every
    view is rendered at a random scale (:data:`RENDER_SCALE`). Content is the train pool
    (:func:`training_view`: dead leaves and package photos disjoint from the held-out ones,
    plus ``source_folder``); the target is always the source itself, so haze or low contrast
    already in a photo is content, not weather. Test splits use the same content pool.

    TransWeather layout: list files ``out/allweather.txt``, ``test1.txt``,
    ``raindroptesta.txt``, ``snowtest100k_L.txt``, ``hazetest.txt`` with one path per line
    relative to ``out``, ``<split>/input/<name>``; the ground truth path replaces the ``input``
    component by ``gt``. Because that rule needs identical names, the raindrop list points to a
    copy of the raindrop test pairs in ``out/transweather_raindrop/{input,gt}/<i>.png``.

    n_test is the number of items per test split. ``workers`` > 1 uses a process pool (the
    output is identical). Refuses a non-empty ``out`` unless ``overwrite`` (which removes only
    the folders and files this function writes). Returns the ``meta.json`` content.
    """
    out = Path(out)
    size_hw = _check_size(size_hw)
    seed = _check_seed(seed)
    if n_train < 0 or n_test < 0:
        raise MofmeError("the numbers of train and test images must not be negative")
    if not 0.0 <= identity_share <= 1.0:
        raise MofmeError(f"the identity share must be in [0, 1], got {identity_share}")
    managed = [
        "train",
        *(s.folder for s in TEST_SPLITS),
        TRANSWEATHER_RAINDROP,
        TRAIN_LIST,
        *(s.list_name for s in TEST_SPLITS),
        "meta.json",
        "preview.png",
    ]
    protect = [Path(source_folder)] if source_folder is not None else []
    _prepare_out(out, overwrite, managed, protect)
    folder = str(source_folder) if source_folder is not None else None
    sources = training_sources(folder)  # fail early on unreadable files, before any work

    jobs: list[_ImageJob] = []
    for i in range(n_train):
        weather = TRAIN_TYPES[i % len(TRAIN_TYPES)]
        if _is_identity(seed, 0, i, identity_share):
            weather = CLEAN
        name = f"{i:05d}_{weather}.png"
        jobs.append(_ImageJob(str(out), "train", i, 0, weather, name, name, seed, size_hw))
    for split in TEST_SPLITS:
        for i in range(n_test):
            if split.weather == "raindrop":
                in_name, gt_name = f"{i:05d}_rain.png", f"{i:05d}_clean.png"
                copy_to: str | None = TRANSWEATHER_RAINDROP
            else:
                in_name = gt_name = f"{i:05d}.png"
                copy_to = None
            jobs.append(
                _ImageJob(
                    str(out), split.folder, i, split.stream, split.weather, in_name, gt_name,
                    seed, size_hw, copy_to,
                )
            )  # fmt: skip
    for sub in ["train", *(s.folder for s in TEST_SPLITS), TRANSWEATHER_RAINDROP]:
        for side in ("input", "gt"):
            (out / sub / side).mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    records = _run_jobs(_image_job, jobs, workers, sources, folder, "allweather", progress)
    seconds = time.perf_counter() - start

    by_folder: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        by_folder.setdefault(rec["input"].split("/", 1)[0], []).append(rec)
    _write_text(out / TRAIN_LIST, "".join(f"{r['input']}\n" for r in by_folder.get("train", [])))
    for split in TEST_SPLITS:
        recs = by_folder.get(split.folder, [])
        if split.weather == "raindrop":
            lines = [f"{TRANSWEATHER_RAINDROP}/input/{i:05d}.png\n" for i in range(len(recs))]
        else:
            lines = [f"{r['input']}\n" for r in recs]
        _write_text(out / split.list_name, "".join(lines))

    meta: dict[str, Any] = {
        "kind": "allweather",
        "seed": seed,
        "size_hw": list(size_hw),
        "n_train": n_train,
        "n_test": n_test,
        "identity_share": identity_share,
        "render_scale": list(RENDER_SCALE),
        "view_scale": list(VIEW_SCALE),
        "content": {
            "leaves_share": LEAVES_SHARE,
            "photos": list(TRAIN_PHOTOS),
            "user_photos": [str(p) for p in (image_files(folder) if folder else [])],
            "held_out_never_used": list(HELD_OUT_PHOTOS),
        },
        "seed_streams": {"train": 0, **{s.folder: s.stream for s in TEST_SPLITS}},
        "item_rng": "numpy.random.default_rng([seed, stream, index])",
        "lists": {"train": TRAIN_LIST, **{s.folder: s.list_name for s in TEST_SPLITS}},
        "seconds": round(seconds, 2),
        "files": records,
    }
    _write_text(out / "meta.json", json.dumps(meta, indent=1))
    return meta


# --------------------------------------------------------------------------------------------
# RVSD-style snowy videos
# --------------------------------------------------------------------------------------------


def video_clip(
    path: str | Path, n_frames: int, size_hw: tuple[int, int], start: int = 0
) -> list[np.ndarray]:
    """Up to ``n_frames`` consecutive frames of a video file from index ``start``, each
    centre-cropped to the aspect of ``size_hw`` and resized: float32 ``(h, w, 3)`` in [0, 1]
    (fewer when the video is shorter). Raises :class:`MofmeError` naming the file when it cannot
    be decoded or holds no frame at or after ``start``."""
    from mofme.inference.videoio import iter_frames

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
    from mofme.inference.videoio import probe

    return probe(path).n_frames or 0


@dataclass(frozen=True)
class _VideoJob:
    root: str
    split: str
    index: int
    name: str
    n_frames: int
    seed: int
    size_hw: tuple[int, int]
    video_file: str | None
    identity: bool = False  # a clean clip: snow frames = clean frames
    severity: str | None = None  # None: random training mix; else fixed (benchmark)
    jitter: bool = True  # particle-scale jitter, light clips weakened at random
    leaves_share: float = LEAVES_SHARE
    stream: int | None = None  # default: RVSD_STREAMS[split]


def _video_job(job: _VideoJob) -> dict[str, Any]:
    assert _SOURCES is not None
    stream = RVSD_STREAMS[job.split] if job.stream is None else job.stream
    rng = np.random.default_rng([job.seed, stream, job.index])
    if job.video_file is not None:
        length = video_length(job.video_file)
        start = int(rng.integers(0, max(1, length - job.n_frames + 1)))
        frames = video_clip(job.video_file, job.n_frames, job.size_hw, start=start)
        source: Any = {"video": job.video_file, "start": start}
    elif not _SOURCES or rng.random() < job.leaves_share:
        h, w = job.size_hw
        scene = dead_leaves((round(h * 1.6), round(w * 1.6)), rng)  # room for the camera move
        frames = camera_clip(scene, job.n_frames, job.size_hw, rng)
        source = {"dead_leaves": True}
    else:
        src_i = int(rng.integers(len(_SOURCES)))
        src = _SOURCES[src_i]
        photo = colour_cast(src.image.astype(np.float32) / 255.0, rng) if src.grey else src.image
        frames = camera_clip(photo, job.n_frames, job.size_hw, rng)
        source = {"photo": src_i}
    severity, strength = _draw_severity(rng, job.severity, job.jitter)
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
        clean8, bad8 = _quantise(clean), _quantise(bad)
        write_atomic(root / "snow" / job.name / f"{t:05d}.png", _png_bytes(bad8))
        write_atomic(root / "clean" / job.name / f"{t:05d}.png", _png_bytes(clean8))
        psnrs.append(_psnr_u8(bad8, clean8))
    return {
        "split": job.split,
        "video": job.name,
        "frames": len(frames),
        "severity": severity,
        "strength": round(strength, 3),
        "source": source,
        "psnr_mean": round(float(np.mean(psnrs)), 3),
    }


def write_rvsd(
    out: str | Path,
    n_videos: int,
    n_frames: int,
    size_hw: tuple[int, int] = (240, 320),
    seed: int = 0,
    split_test: int | None = None,
    source_folder: str | Path | None = None,
    video_files: Sequence[str | Path] | None = None,
    progress: bool = True,
    overwrite: bool = False,
    workers: int = 1,
    identity_share: float = IDENTITY_SHARE,
) -> dict[str, Any]:
    """Write synthetic snowy videos in the RVSD layout.

    ``out/{train,test}/{snow,clean}/<video>/<NNNNN>.png`` (frames numbered from 00000).
    n_videos is the total number of videos, ``split_test`` how many of them go to ``test``
    (default: about 30/110, as in RVSD; at least one when ``n_videos`` >= 2).
    Clean clips are camera moves over the clean photos (:func:`camera_clip`), or, when
    ``video_files`` are given, clips cut from them in turn (train video ``i`` uses file
    ``i mod F``, test video ``j`` file ``(n_train + j) mod F``, at a random start; a video
    shorter than ``n_frames`` gives a shorter clip). Each video has one random severity (light
    ones weakened at random); a share ``identity_share`` of the train videos are clean clips
    (snow = clean). Photos come from the train pool (dead leaves and package photos disjoint
    from the held-out ones, plus ``source_folder``).
    Refuses a non-empty ``out`` unless ``overwrite``. Returns the ``meta.json`` content.
    """
    out = Path(out)
    size_hw = _check_size(size_hw)
    seed = _check_seed(seed)
    if n_videos < 1 or n_frames < 1:
        raise MofmeError("need at least one video of at least one frame")
    if split_test is None:
        split_test = min(n_videos - 1, max(1, round(n_videos * 30 / 110))) if n_videos > 1 else 0
    if not 0 <= split_test <= n_videos:
        raise MofmeError(f"test videos ({split_test}) must be between 0 and {n_videos}")
    files = [str(Path(v)) for v in video_files] if video_files else []
    for f in files:
        if not Path(f).is_file():
            raise MofmeError(f"video file {f} does not exist")
    protect = [Path(p) for p in files] + ([Path(source_folder)] if source_folder else [])
    _prepare_out(out, overwrite, ["train", "test", "meta.json", "preview.png"], protect)
    if not 0.0 <= identity_share <= 1.0:
        raise MofmeError(f"the identity share must be in [0, 1], got {identity_share}")
    folder = str(source_folder) if source_folder is not None else None
    sources = training_sources(folder)  # fail early on unreadable files

    n_train = n_videos - split_test
    jobs = []
    for split, count, offset in (("train", n_train, 0), ("test", split_test, n_train)):
        for i in range(count):
            video = files[(offset + i) % len(files)] if files else None
            ident = split == "train" and _is_identity(seed, RVSD_STREAMS[split], i, identity_share)
            jobs.append(
                _VideoJob(str(out), split, i, f"{i:04d}", n_frames, seed, size_hw, video, ident)
            )
    start = time.perf_counter()
    records = _run_jobs(
        _video_job, jobs, workers, sources, folder, "rvsd", progress, weight=lambda j: j.n_frames
    )
    meta: dict[str, Any] = {
        "kind": "rvsd",
        "seed": seed,
        "size_hw": list(size_hw),
        "n_frames": n_frames,
        "n_train": n_train,
        "n_test": split_test,
        "identity_share": identity_share,
        "view_scale": list(VIEW_SCALE),
        "content": {"leaves_share": LEAVES_SHARE, "photos": list(TRAIN_PHOTOS)},
        "seed_streams": dict(RVSD_STREAMS),
        "item_rng": "numpy.random.default_rng([seed, stream, index])",
        "seconds": round(time.perf_counter() - start, 2),
        "videos": records,
    }
    _write_text(out / "meta.json", json.dumps(meta, indent=1))
    return meta


# --------------------------------------------------------------------------------------------
# Held-out benchmark
# --------------------------------------------------------------------------------------------

BENCH_STREAM = 100
"""Seed streams of the benchmark start here (never used by training data)."""


def write_benchmark(
    out: str | Path,
    n_per_set: int = 8,
    size_hw: tuple[int, int] = (256, 256),
    n_clips: int = 6,
    n_frames: int = 12,
    clip_size_hw: tuple[int, int] = (192, 256),
    seed: int = 0,
    source_folder: str | Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
    workers: int = 1,
) -> dict[str, Any]:
    """Write the held-out benchmark from photos no training set uses.

    ``out/images/test_<type>_<severity>/{input,gt}/<i>.png`` for every weather type and
    composite (:data:`~mofme.data.weather.ALL_TYPES`) at light / medium / heavy (full strength),
    plus ``out/images/test_clean/`` (input = ground truth: the do-no-harm set). Videos in the
    RVSD layout: ``out/video/test/{snow,clean}/<clip>/`` (snowy clips at light, medium and heavy
    in turn) and ``out/video_clean/test/{snow,clean}/<clip>/`` (clean clips). Content: the
    held-out photos (:data:`~mofme.data.content.HELD_OUT_PHOTOS`; ``source_folder`` replaces
    them when given), no dead leaves. Score it with ``mofme test CKPT --data out/images``.
    """
    out = Path(out)
    size_hw, clip_size_hw = _check_size(size_hw), _check_size(clip_size_hw)
    seed = _check_seed(seed)
    if n_per_set < 1 or n_clips < 0 or n_frames < 1:
        raise MofmeError("need at least one image per set and one frame per clip")
    protect = [Path(source_folder)] if source_folder is not None else []
    _prepare_out(out, overwrite, ["images", "video", "video_clean", "meta.json"], protect)
    folder = str(source_folder) if source_folder is not None else None
    if folder is not None:
        sources = [Source(load_rgb(p)) for p in image_files(folder)]
    else:
        sources = make_pool("heldout")
    root = out / "images"
    jobs: list[_ImageJob] = []
    sets = [(CLEAN, "none")] + [(t, sev) for t in ALL_TYPES for sev in SEVERITIES]
    for k, (weather, sev) in enumerate(sets):
        name = "test_clean" if weather == CLEAN else f"test_{weather}_{sev}"
        for i in range(n_per_set):
            jobs.append(
                _ImageJob(
                    str(root), name, i, BENCH_STREAM + k, weather, f"{i:05d}.png",
                    f"{i:05d}.png", seed, size_hw, None, sev if weather != CLEAN else "light",
                    jitter=False, leaves_share=0.0,
                )
            )  # fmt: skip
    start = time.perf_counter()
    pool_kind = "heldout" if folder is None else "user"
    records = _run_jobs(
        _image_job, jobs, workers if folder is None else 1, sources, folder, "bench images",
        progress, pool_kind=pool_kind,
    )  # fmt: skip
    vjobs = []
    for i in range(n_clips):
        sev = SEVERITIES[i % len(SEVERITIES)]
        vjobs.append(
            _VideoJob(
                str(out / "video"), "test", i, f"{i:04d}", n_frames, seed, clip_size_hw, None,
                severity=sev, jitter=False, leaves_share=0.0, stream=BENCH_STREAM + 50,
            )
        )  # fmt: skip
        vjobs.append(
            _VideoJob(
                str(out / "video_clean"), "test", i, f"{i:04d}", n_frames, seed, clip_size_hw,
                None, identity=True, jitter=False, leaves_share=0.0, stream=BENCH_STREAM + 51,
            )
        )  # fmt: skip
    vrecords = _run_jobs(
        _video_job, vjobs, workers if folder is None else 1, sources, folder, "bench clips",
        progress, weight=lambda j: j.n_frames, pool_kind=pool_kind,
    )  # fmt: skip
    meta: dict[str, Any] = {
        "kind": "benchmark",
        "seed": seed,
        "size_hw": list(size_hw),
        "clip_size_hw": list(clip_size_hw),
        "photos": [str(p) for p in image_files(folder)] if folder else list(HELD_OUT_PHOTOS),
        "sets": [f"test_{t}_{s}" if t != CLEAN else "test_clean" for t, s in sets],
        "seconds": round(time.perf_counter() - start, 2),
        "files": records,
        "videos": vrecords,
    }
    _write_text(out / "meta.json", json.dumps(meta, indent=1))
    return meta


# --------------------------------------------------------------------------------------------
# Contact sheet
# --------------------------------------------------------------------------------------------


def contact_sheet(
    out_png: str | Path, seed: int = 0, size: int = 160, source_folder: str | Path | None = None
) -> Path:
    """A labelled PNG grid of every weather type at every severity, plus snowy-video frames.

    Rows: the weather types and one row "snow video"; columns: clean / light / medium / heavy
    (for the video row: clean frame 0 and snowy frames 0, 2, 4 of a medium clip). Each tile
    shows its PSNR against the clean tile. Returns the written path.
    """
    out_png = Path(out_png)
    seed = _check_seed(seed)
    sources = clean_sources(str(source_folder) if source_folder is not None else None)
    rng = np.random.default_rng([seed, 20])
    clean = random_view(sources[int(rng.integers(len(sources)))], (size, size), rng)
    rows: list[tuple[str, list[tuple[np.ndarray, str]]]] = []
    for r, (name, fn) in enumerate(WEATHER_TYPES.items()):
        tiles = [(clean, "")]
        for c, sev in enumerate(SEVERITIES):
            bad = fn(clean, np.random.default_rng([seed, 21, r, c]), sev)
            tiles.append((bad, f"{_psnr_u8(_quantise(bad), _quantise(clean)):.1f} dB"))
        rows.append((name, tiles))
    vrng = np.random.default_rng([seed, 22])
    clip = camera_clip(sources[int(vrng.integers(len(sources)))], 5, (size, size), vrng)
    snowy = snow_video(clip, vrng, "medium")
    rows.append(
        (
            "snow video",
            [(clip[0], "clean t=0")] + [(snowy[t], f"t={t}") for t in (0, 2, 4)],
        )
    )

    label_w, header_h, pad = 90, 22, 4
    n_cols = 4
    sheet_w = label_w + n_cols * (size + pad) + pad
    sheet_h = header_h + len(rows) * (size + pad) + pad
    sheet = Image.new("RGB", (sheet_w, sheet_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(("clean", *SEVERITIES)):
        draw.text((label_w + c * (size + pad) + pad + 2, 5), title, fill=(0, 0, 0))
    for r, (name, tiles) in enumerate(rows):
        y = header_h + r * (size + pad)
        draw.text((6, y + size // 2 - 6), name, fill=(0, 0, 0))
        for c, (tile, caption) in enumerate(tiles):
            x = label_w + c * (size + pad) + pad
            sheet.paste(Image.fromarray(_quantise(tile)), (x, y))
            if caption:
                box = draw.textbbox((x + 3, y + size - 14), caption)
                draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=(0, 0, 0))
                draw.text((x + 3, y + size - 14), caption, fill=(255, 255, 255))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    write_atomic(out_png, buf.getvalue())
    return out_png
