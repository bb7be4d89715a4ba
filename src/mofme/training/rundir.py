"""The run folder ``OUT``: one run at a time, a fresh start that leaves other files alone."""

from __future__ import annotations

import shutil
import weakref
from pathlib import Path

from mofme.errors import MofmeError
from mofme.runlock import RunLock

# Files a run writes into OUT (removed by overwrite=True; nothing else there is touched).
RUN_FILES = (
    "state_last.pt",
    "model_last.safetensors",
    "model_best.safetensors",
    "log.jsonl",
    "val.jsonl",
    "config.yaml",
)


class RunFolder:
    """``OUT``, locked (on the main rank) from construction until :meth:`release`.

    One run per folder: a second one would interleave the logs, replace the other's
    checkpoints and delete its in-flight temp files, and ``--resume`` of a live run would fork
    it. The lock is taken before anything in ``OUT`` is read or removed.
    """

    def __init__(self, path: Path, main: bool) -> None:
        self.path = path
        self.main = main
        self.state_path = path / "state_last.pt"
        self._lock = RunLock(path) if main else None
        if self._lock is not None:
            self._lock.acquire()
            # Should the trainer fail before release(), the lock goes with this object (and
            # the kernel drops it when the process ends in any case).
            self._unlock = weakref.finalize(self, self._lock.release)

    def prepare(self, resume: bool, overwrite: bool) -> None:
        """Refuse a start that would lose a run; clear the run files for a fresh one."""
        if resume and not self.state_path.is_file():
            raise self._refuse(f"nothing to resume: {self.state_path} does not exist")
        if not resume and self.state_path.is_file() and not overwrite:
            raise self._refuse(
                f"{self.path} already holds a training run ({self.state_path.name}); pass "
                "--resume to continue it or --overwrite to start over"
            )
        if not self.main:
            return
        if not resume:
            # A fresh run starts with empty logs (also after a run killed before its first
            # checkpoint, which left logs but no state).
            for name in RUN_FILES:
                (self.path / name).unlink(missing_ok=True)
            shutil.rmtree(self.path / "tb", ignore_errors=True)
        # A run killed (SIGKILL) in the middle of an atomic save leaves its temp file (named
        # with its dead pid; the lock above means no live writer of this run is left).
        from mofme.data.io import remove_stale_temps

        remove_stale_temps(self.path)

    def _refuse(self, message: str) -> MofmeError:
        """The error for a refused start, after releasing the lock taken for it."""
        self.release()
        return MofmeError(message)

    def release(self) -> None:
        if self._lock is not None:
            self._unlock()
