"""Running the dataset writers: output folders, seeds and sizes, and the worker pool.

Every item is a job (:mod:`mofme.data.synth.items`) run in order by :func:`run_jobs`, in this
process or in a pool of ``spawn`` workers; either way a job sees the same clean sources
(:func:`worker_sources`), so the output does not depend on the number of workers.
"""

from __future__ import annotations

import multiprocessing
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mofme.data.content import Source, make_pool
from mofme.errors import MofmeError


def prepare_out(
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


def check_seed(seed: int) -> int:
    """``seed`` as an int; refuses a negative one."""
    if int(seed) < 0:
        raise MofmeError(f"the seed must be a non-negative integer, got {seed}")
    return int(seed)


def check_size(size_hw: tuple[int, int]) -> tuple[int, int]:
    """``(h, w)`` as ints; refuses sizes under 16 x 16."""
    h, w = (int(v) for v in size_hw)
    if h < 16 or w < 16:
        raise MofmeError(f"image size {h}x{w} is too small; use at least 16x16")
    return h, w


# Worker state: the clean source pool, loaded once per process.
_SOURCES: list[Source] | None = None


def worker_sources() -> list[Source]:
    """The clean source pool of the job being run (set by :func:`run_jobs`)."""
    assert _SOURCES is not None, "synthetic-data jobs run inside run_jobs()"
    return _SOURCES


def _init_worker(source_folder: str | None, pool: str = "train") -> None:
    global _SOURCES
    _SOURCES = make_pool(pool, source_folder)


def run_jobs(
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
