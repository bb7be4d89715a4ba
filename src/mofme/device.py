"""Devices and CPU threads: what the library (training, inference, the API) and the commands share."""

from __future__ import annotations

import os

from mofme.errors import MofmeError


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def max_threads() -> int:
    """Most CPU threads a setting may ask for: beyond a few per CPU threads only compete, and
    ``torch.set_num_threads(100000)`` crashes the process (thread stacks exhaust memory)."""
    return max(64, 4 * cpu_count())


def check_threads(name: str, threads: int | None) -> None:
    """Refuse a thread count (``0`` / ``None``: PyTorch's default) above :func:`max_threads`."""
    if threads is not None and threads > max_threads():
        raise MofmeError(
            f"{name}={threads} is more than {max_threads()} threads "
            f"(4 per CPU, {cpu_count()} CPUs here); use at most that, or 0 for the default"
        )


def resolve_device(name: str):  # -> torch.device
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise MofmeError(f"unknown device {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MofmeError(f"device {name!r} requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise MofmeError(
            f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise MofmeError(f"device {name!r} requested but Apple's MPS is not available here")
    # `meta` has no data and the other types need builds or hardware mofme does not support:
    # refuse them here rather than fail deep inside a model with a traceback.
    if dev.type not in ("cpu", "cuda", "mps"):
        raise MofmeError(f"device {name!r} is not supported: use auto, cpu, cuda, cuda:N or mps")
    return dev
