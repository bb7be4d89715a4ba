"""Output files of every command that writes: the overwrite rule, and a writability check that
runs before the work instead of after it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from mofme.errors import MofmeError

__all__ = ["check_writable", "refuse_existing"]


def refuse_existing(paths: Iterable[Path], overwrite: bool) -> None:
    """The one rule of every command that writes: never replace a file unless ``--overwrite``."""
    if overwrite:
        return
    existing = [p for p in paths if p.exists() or p.is_symlink()]
    if existing:
        more = f" (and {len(existing) - 1} more outputs)" if len(existing) > 1 else ""
        raise MofmeError(f"{existing[0]} already exists{more}; pass --overwrite to replace it")


def check_writable(path: str | os.PathLike[str], folder: bool = False) -> None:
    """Fail now, in one line, when ``path`` cannot be written, instead of after all the work.

    ``path`` is an output file, or with ``folder`` an output folder. A temporary file is created
    and removed again, and so are any folders created for it: nothing is left behind.
    """
    path = Path(path)
    if not folder and path.is_dir():
        raise MofmeError(f"cannot write {path}: it is a folder")
    target = path if folder else path.parent
    created: list[Path] = []
    probe = None
    try:
        existing = target
        while not existing.exists():
            created.append(existing)
            existing = existing.parent
        if not existing.is_dir():
            raise MofmeError(f"cannot write {path}: {existing} is not a folder")
        for missing in reversed(created):
            missing.mkdir()
        fd, probe = tempfile.mkstemp(
            prefix=f".{path.name}.tmp-{os.getpid()}.", suffix=".tmp", dir=target
        )
        os.close(fd)
    except OSError as e:
        raise MofmeError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if probe is not None:
            with contextlib.suppress(OSError):
                os.unlink(probe)
        for made in created:  # deepest first
            with contextlib.suppress(OSError):
                made.rmdir()
