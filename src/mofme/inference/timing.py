"""Measuring inference: synchronised timing in interleaved rounds, peak memory, the machine's
matmul peak, and a fixed test frame. Shared by ``mofme bench`` (:mod:`mofme.bench`), the precision
probe (:mod:`mofme.inference.precision`) and the evaluation's timings (:mod:`mofme.evaluate`).

Timing rounds interleave the variants (round r runs every variant once), so a machine whose load
changes during the run (shared CPUs) biases every variant alike; medians are reported.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` minus what was allocated before the
run; on CPU the peak growth of the process's resident set (RSS) during the run, sampled every
2 ms by a thread, after handing freed heap back to the OS (glibc ``malloc_trim``).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import platform
import threading
import time
from collections.abc import Callable

import torch
from torch import Tensor


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work (CUDA runs asynchronously), so a clock reads its end."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def spread(values: list[float]) -> tuple[float, float]:
    """``(min, max)`` of ``values``: the spread reported next to a median."""
    return min(values), max(values)


def time_interleaved(
    fns: dict[str, Callable[[], object]], warmup: int, repeat: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per call of every function, measured in alternating rounds.

    Round r runs every variant once, in the listed order on even rounds and reversed on odd
    rounds: a load change on a shared machine then hits every variant alike (a variant's
    repeats are never back to back), and a steady drift within a round cancels between
    rounds. Times of round r of different variants are paired (see ``paired_ratios``).
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns.items())
    for r in range(repeat):
        for name, fn in order if r % 2 == 0 else order[::-1]:
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def paired_ratios(times: dict[str, list[float]], base: str) -> dict[str, list[float]]:
    """Per round, ``base``'s time over each variant's (the speed-up measured in that round).

    Two runs of the same round saw about the same machine load, so their ratio moves much
    less than the ratio of two medians taken at different times.
    """
    return {
        name: [b / max(t, 1e-12) for b, t in zip(times[base], ts)] for name, ts in times.items()
    }


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource  # no /proc: max RSS so far (only grows, so deltas are lower bounds)

        scale = 1 if platform.system() == "Darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _trim_heap() -> None:
    """Return freed heap pages to the OS so RSS growth reflects the next run's needs."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Extra memory (MB) ``fn`` needs at its peak: CUDA allocator peak or CPU RSS growth."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    _trim_heap()
    base = _rss_bytes()
    peak = base
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    peak = max(peak, _rss_bytes())
    return (peak - base) / 2**20


#: Peak matmuls are at least this large: smaller products do not reach the machine's peak
#: (call overheads, caches), which made the reported fp32 peak move by 2x between runs.
PEAK_MIN_N = 2048


def _product_seconds(n: int, dtype: torch.dtype, device: torch.device) -> float:
    """Seconds of one ``(n, n) @ (n, n)`` product, timed after a first call (kernel selection,
    page faults)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    synchronize(device)
    start = time.perf_counter()
    a @ b
    synchronize(device)
    return time.perf_counter() - start


def _matmul_size(dtype: torch.dtype, device: torch.device, min_s: float) -> tuple[int, float]:
    """Side ``n`` of a square product taking >= ``min_s`` (from PEAK_MIN_N), and its seconds.

    A dtype this device only emulates (bf16 on a CPU without native bf16: ~1 GFLOP/s, a 2048
    product ~17 s) is measured on the largest smaller side whose product is estimated, from a 256
    product, to take at most 20 x ``min_s`` (1 s at the default), so a benchmark does not spend
    minutes on it."""
    n = PEAK_MIN_N
    probe = 256
    per_flop = _product_seconds(probe, dtype, device) / (2 * probe**3)
    while n > probe and per_flop * 2 * n**3 > 20 * max(min_s, 0.05):
        n //= 2
    while True:
        elapsed = _product_seconds(n, dtype, device)
        if elapsed >= min_s or n >= 8192:
            return n, elapsed
        n *= 2


def matmul_peaks(
    device: torch.device,
    dtypes: dict[str, torch.dtype] | None = None,
    rounds: int = 5,
    min_s: float = 0.05,
) -> dict[str, dict[str, float]]:
    """Measured matmul GFLOP/s per dtype: ``{"fp32": {"best", "median", "n"}, ...}``.

    Square products of at least ``PEAK_MIN_N`` (grown until one takes ``min_s``), each
    measurement repeated until it lasts ``min_s``, dtypes alternated over ``rounds`` rounds.
    ``best`` is the peak (load on a shared machine only ever slows a run down), ``median`` the
    typical rate under the current load.
    """
    dtypes = dtypes or {"fp32": torch.float32, "bf16": torch.bfloat16}
    setup = {}
    for name, dtype in dtypes.items():
        n, elapsed = _matmul_size(dtype, device, min_s)
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        setup[name] = (a, b, n, max(1, math.ceil(min_s / max(elapsed, 1e-9))))
    rates: dict[str, list[float]] = {name: [] for name in dtypes}
    for r in range(rounds):
        names = list(dtypes) if r % 2 == 0 else list(dtypes)[::-1]
        for name in names:
            a, b, n, reps = setup[name]
            synchronize(device)
            start = time.perf_counter()
            for _ in range(reps):
                a @ b
            synchronize(device)
            rates[name].append(2 * n**3 * reps / (time.perf_counter() - start) / 1e9)
    return {
        name: {"best": max(v), "median": median(v), "n": float(setup[name][2])}
        for name, v in rates.items()
    }


def bench_input(size: tuple[int, int], in_channels: int, seed: int = 0) -> Tensor:
    """A deterministic natural-looking test frame ``(1, C_in, H, W)`` in [0, 1].

    scikit-image's bundled astronaut photo, resized; a video model gets a zero reference.
    """
    import numpy as np
    from PIL import Image

    from mofme.inference.video import still_input

    h, w = size
    try:
        from skimage import data

        photo = Image.fromarray(data.astronaut()).resize((w, h), Image.Resampling.BICUBIC)
        rgb = np.asarray(photo, dtype=np.float32) / 255.0
    except Exception:  # scikit-image without its data files: smooth random pattern
        gen = torch.Generator().manual_seed(seed)
        low = torch.rand(1, 3, max(1, h // 16), max(1, w // 16), generator=gen)
        smooth = torch.nn.functional.interpolate(low, size=size, mode="bicubic").clamp(0, 1)
        return still_input(smooth, in_channels)
    x = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).contiguous()
    return still_input(x, in_channels)


def machine_info(device: torch.device) -> dict[str, object]:
    """The device, its name, threads and CPUs, the torch version, whether NNPACK works."""
    from mofme.inference.fast import nnpack_usable

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                name = next(
                    (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                    name,
                )
        except OSError:
            pass
    return {
        "device": str(device),
        "name": name,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "nnpack": nnpack_usable() if device.type == "cpu" else None,
    }
