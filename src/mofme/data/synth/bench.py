"""The held-out benchmark (``mofme synth bench``): every weather at every severity, clean
images, and snowy and clean clips, from photos no training set uses."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mofme.data.content import HELD_OUT_PHOTOS, Source, image_files, load_rgb, make_pool
from mofme.data.io import atomic_write_text
from mofme.data.synth.items import ImageJob, VideoJob, image_job, video_job
from mofme.data.synth.runner import check_seed, check_size, prepare_out, run_jobs
from mofme.data.weather import ALL_TYPES, CLEAN, SEVERITIES
from mofme.errors import MofmeError

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
    size_hw, clip_size_hw = check_size(size_hw), check_size(clip_size_hw)
    seed = check_seed(seed)
    if n_per_set < 1 or n_clips < 0 or n_frames < 1:
        raise MofmeError("need at least one image per set and one frame per clip")
    protect = [Path(source_folder)] if source_folder is not None else []
    prepare_out(out, overwrite, ["images", "video", "video_clean", "meta.json"], protect)
    folder = str(source_folder) if source_folder is not None else None
    if folder is not None:
        sources = [Source(load_rgb(p)) for p in image_files(folder)]
    else:
        sources = make_pool("heldout")
    root = out / "images"
    jobs: list[ImageJob] = []
    sets = [(CLEAN, "none")] + [(t, sev) for t in ALL_TYPES for sev in SEVERITIES]
    for k, (weather, sev) in enumerate(sets):
        name = "test_clean" if weather == CLEAN else f"test_{weather}_{sev}"
        for i in range(n_per_set):
            jobs.append(
                ImageJob(
                    str(root), name, i, BENCH_STREAM + k, weather, f"{i:05d}.png",
                    f"{i:05d}.png", seed, size_hw, None, sev if weather != CLEAN else "light",
                    jitter=False, leaves_share=0.0,
                )
            )  # fmt: skip
    start = time.perf_counter()
    pool_kind = "heldout" if folder is None else "user"
    records = run_jobs(
        image_job, jobs, workers if folder is None else 1, sources, folder, "bench images",
        progress, pool_kind=pool_kind,
    )  # fmt: skip
    vjobs = []
    for i in range(n_clips):
        sev = SEVERITIES[i % len(SEVERITIES)]
        vjobs.append(
            VideoJob(
                str(out / "video"), "test", i, f"{i:04d}", n_frames, seed, clip_size_hw, None,
                severity=sev, jitter=False, leaves_share=0.0, stream=BENCH_STREAM + 50,
            )
        )  # fmt: skip
        vjobs.append(
            VideoJob(
                str(out / "video_clean"), "test", i, f"{i:04d}", n_frames, seed, clip_size_hw,
                None, identity=True, jitter=False, leaves_share=0.0, stream=BENCH_STREAM + 51,
            )
        )  # fmt: skip
    vrecords = run_jobs(
        video_job, vjobs, workers if folder is None else 1, sources, folder, "bench clips",
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
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=1))
    return meta
