"""The Allweather dataset, written in both the MoFME and the TransWeather layouts."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mofme.data.content import (
    HELD_OUT_PHOTOS,
    LEAVES_SHARE,
    TRAIN_PHOTOS,
    image_files,
    training_sources,
)
from mofme.data.io import atomic_write_text
from mofme.data.synth.items import (
    IDENTITY_SHARE,
    RENDER_SCALE,
    VIEW_SCALE,
    ImageJob,
    image_job,
    is_identity,
    parse_type_mix,
)
from mofme.data.synth.runner import check_seed, check_size, prepare_out, run_jobs
from mofme.data.weather import CLEAN
from mofme.errors import MofmeError


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
    types: str | None = None,
    structure_share: float = 0.0,
    soft_share: float = 0.0,
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
    ``types`` (e.g. ``"rain:2,snow,raindrop"``, see :func:`parse_type_mix`) replaces the balanced
    training mix, for a specialist or a mix weighted toward the types a model is weak at; the
    test splits do not change. ``structure_share`` of the training views are thin near-vertical
    structure (:func:`~mofme.data.content.planks`: plank walls, railings, shelves), which a rain
    model must learn to keep; ``soft_share`` of them are made soft, pale and low in contrast
    (:func:`~mofme.data.content.soft_photo`: what a dehazer mistakes for haze). 0 (the default
    of both) writes the same data as before the options existed.

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
    size_hw = check_size(size_hw)
    seed = check_seed(seed)
    if n_train < 0 or n_test < 0:
        raise MofmeError("the numbers of train and test images must not be negative")
    if not 0.0 <= identity_share <= 1.0:
        raise MofmeError(f"the identity share must be in [0, 1], got {identity_share}")
    if not 0.0 <= structure_share <= 1.0:
        raise MofmeError(f"the structure share must be in [0, 1], got {structure_share}")
    if not 0.0 <= soft_share <= 1.0:
        raise MofmeError(f"the soft share must be in [0, 1], got {soft_share}")
    cycle = parse_type_mix(types)
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
    prepare_out(out, overwrite, managed, protect)
    folder = str(source_folder) if source_folder is not None else None
    sources = training_sources(folder)  # fail early on unreadable files, before any work

    jobs: list[ImageJob] = []
    for i in range(n_train):
        weather = cycle[i % len(cycle)]
        if is_identity(seed, 0, i, identity_share):
            weather = CLEAN
        name = f"{i:05d}_{weather}.png"
        jobs.append(
            ImageJob(str(out), "train", i, 0, weather, name, name, seed, size_hw,
                     structure_share=structure_share, soft_share=soft_share)
        )  # fmt: skip
    for split in TEST_SPLITS:
        for i in range(n_test):
            if split.weather == "raindrop":
                in_name, gt_name = f"{i:05d}_rain.png", f"{i:05d}_clean.png"
                copy_to: str | None = TRANSWEATHER_RAINDROP
            else:
                in_name = gt_name = f"{i:05d}.png"
                copy_to = None
            jobs.append(
                ImageJob(
                    str(out), split.folder, i, split.stream, split.weather, in_name, gt_name,
                    seed, size_hw, copy_to,
                )
            )  # fmt: skip
    for sub in ["train", *(s.folder for s in TEST_SPLITS), TRANSWEATHER_RAINDROP]:
        for side in ("input", "gt"):
            (out / sub / side).mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    records = run_jobs(image_job, jobs, workers, sources, folder, "allweather", progress)
    seconds = time.perf_counter() - start

    by_folder: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        by_folder.setdefault(rec["input"].split("/", 1)[0], []).append(rec)
    atomic_write_text(
        out / TRAIN_LIST, "".join(f"{r['input']}\n" for r in by_folder.get("train", []))
    )
    for split in TEST_SPLITS:
        recs = by_folder.get(split.folder, [])
        if split.weather == "raindrop":
            lines = [f"{TRANSWEATHER_RAINDROP}/input/{i:05d}.png\n" for i in range(len(recs))]
        else:
            lines = [f"{r['input']}\n" for r in recs]
        atomic_write_text(out / split.list_name, "".join(lines))

    meta: dict[str, Any] = {
        "kind": "allweather",
        "seed": seed,
        "size_hw": list(size_hw),
        "n_train": n_train,
        "n_test": n_test,
        "identity_share": identity_share,
        "train_types": list(cycle),
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
    if structure_share > 0:  # recorded only when used: older meta.json files stay as they were
        meta["content"]["structure_share"] = structure_share
    if soft_share > 0:
        meta["content"]["soft_share"] = soft_share
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=1))
    return meta
