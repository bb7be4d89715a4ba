"""RVSD-style snowy videos: ``{train,test}/{snow,clean}/<video>/<frame>.png``."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mofme.data.content import LEAVES_SHARE, TRAIN_PHOTOS, training_sources
from mofme.data.io import atomic_write_text
from mofme.data.synth.items import IDENTITY_SHARE, VIEW_SCALE, VideoJob, is_identity, video_job
from mofme.data.synth.runner import check_seed, check_size, prepare_out, run_jobs
from mofme.errors import MofmeError

RVSD_STREAMS = {"train": 10, "test": 11}
"""Seed streams of the train and test videos."""


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
    Clean clips are camera moves over the clean photos (:func:`~mofme.data.clips.camera_clip`), or, when
    ``video_files`` are given, clips cut from them in turn (train video ``i`` uses file
    ``i mod F``, test video ``j`` file ``(n_train + j) mod F``, at a random start; a video
    shorter than ``n_frames`` gives a shorter clip). Each video has one random severity (light
    ones weakened at random); a share ``identity_share`` of the train videos are clean clips
    (snow = clean). Photos come from the train pool (dead leaves and package photos disjoint
    from the held-out ones, plus ``source_folder``).
    Refuses a non-empty ``out`` unless ``overwrite``. Returns the ``meta.json`` content.
    """
    out = Path(out)
    size_hw = check_size(size_hw)
    seed = check_seed(seed)
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
    prepare_out(out, overwrite, ["train", "test", "meta.json", "preview.png"], protect)
    if not 0.0 <= identity_share <= 1.0:
        raise MofmeError(f"the identity share must be in [0, 1], got {identity_share}")
    folder = str(source_folder) if source_folder is not None else None
    sources = training_sources(folder)  # fail early on unreadable files

    n_train = n_videos - split_test
    jobs = []
    for split, count, offset in (("train", n_train, 0), ("test", split_test, n_train)):
        for i in range(count):
            video = files[(offset + i) % len(files)] if files else None
            stream = RVSD_STREAMS[split]
            ident = split == "train" and is_identity(seed, stream, i, identity_share)
            jobs.append(
                VideoJob(
                    str(out), split, i, f"{i:04d}", n_frames, seed, size_hw, video, stream, ident
                )
            )
    start = time.perf_counter()
    records = run_jobs(
        video_job, jobs, workers, sources, folder, "rvsd", progress, weight=lambda j: j.n_frames
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
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=1))
    return meta
