"""Which golden a bit-exact guard compares with on this machine (the refactor guards).

Float kernels round differently across torch versions, CPU architectures and — within one
architecture — the SIMD level torch dispatches to (AVX2 and AVX-512 kernels sum in different
orders, so the same code gives different last bits). A guard file therefore holds a primary
golden (``torch`` / ``machine`` / optional ``cpu`` at the top level: the run the guarded change was
checked against) and, under ``platforms``, exact digests of the same code recorded on other
platforms, keyed by :func:`platform_key` with the commit they were recorded from.

:func:`exact_entry` returns the digests to match bit for bit here, or ``None`` when none were
recorded on this platform; the guards then fall back to their cross-platform tolerances.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

import torch


def cpu_capability() -> str:
    """The SIMD level torch's CPU kernels dispatch to (``AVX2``, ``AVX512``, ...)."""
    return torch.backends.cpu.get_cpu_capability()


def platform_key() -> str:
    """``torch version / machine / cpu capability``: what bit-identical outputs need."""
    return f"{torch.__version__}/{platform.machine()}/{cpu_capability()}"


def primary_matches(golden: dict[str, Any]) -> bool:
    """The primary golden was recorded on this platform. A golden without a ``cpu`` entry was
    recorded before the capability was kept, so only torch and machine can be compared."""
    if (golden["torch"], golden["machine"]) != (torch.__version__, platform.machine()):
        return False
    return golden.get("cpu", cpu_capability()) == cpu_capability()


def exact_entry(golden: dict[str, Any]) -> dict[str, Any] | None:
    """The digests to match exactly on this platform: the ``platforms`` entry recorded here,
    else the primary golden itself when it was recorded here, else ``None``."""
    entry = golden.get("platforms", {}).get(platform_key())
    if entry is not None:
        return entry
    return golden if primary_matches(golden) else None


def recorded_commit() -> str:
    """The checked-out commit (``-dirty`` with local changes), kept with an added platform entry."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()
