"""A lock on a training run folder, so two runs never write one folder at the same time.

The lock is the file ``OUT/.mofme-train.lock``, held with ``flock`` for as long as the run lives
and holding the owner's pid, host and start time (for the message the second run prints). The
kernel drops an ``flock`` when its process dies, however it dies, so a lock file left behind by
a killed run is stale by construction and the next run simply takes it over. On file systems
without ``flock`` (some network mounts) the pid is checked instead: a lock of a dead process on
this host is stale; a lock from another host is honoured (its process cannot be checked from
here), and the message says to delete the file if that run is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from mofme.errors import MofmeError

try:
    import fcntl
except ImportError:  # Windows: pid checks only
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".mofme-train.lock"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (pids <= 0 count as dead)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    except OSError:
        return False
    return True


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may contain spaces, so count after its ")".
    fields = text.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _describe(owner: dict[str, Any]) -> str:
    since = owner.get("since")
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(since)) if since else "?"
    return f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}, started {when}"


class RunLock:
    """``with RunLock(folder):`` or ``acquire()`` / ``release()``; see the module docstring."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self._created = False  # the folder was made for the lock: removed again if left empty

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise ``MofmeError`` naming the process that holds it."""
        if self._fd is not None:
            return
        try:
            self._created = not self.folder.exists()
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MofmeError(f"cannot create the run folder {self.folder}: {_reason(e)}") from None
        for _ in range(10):  # retried only when the holder removed the file meanwhile
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise MofmeError(f"cannot create {self.path}: {_reason(e)}") from None
            try:
                if self._lock_fd(fd) and self._same_file(fd):
                    self._write_owner(fd)
                    self._fd = fd
                    return
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        raise MofmeError(f"cannot lock {self.path}: it keeps being replaced by another process")

    def _lock_fd(self, fd: int) -> bool:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                self._refuse(self._owner(), alive=True)
            except OSError:
                pass  # no flock on this file system: fall back to the pid check
        owner = self._owner()
        if owner is None or not owner.get("pid"):
            return True
        if owner.get("host") != socket.gethostname():
            self._refuse(owner, alive=False)
        pid = int(owner["pid"])
        started = owner.get("start")
        alive = pid_alive(pid) and (started is None or _start_time(pid) in (None, started))
        if alive and pid != os.getpid():
            self._refuse(owner, alive=True)
        return True  # stale: its process is gone

    def _same_file(self, fd: int) -> bool:
        # The previous holder may have unlinked the file between our open() and flock(); a lock
        # on that orphaned inode protects nothing, so start again with the current file.
        try:
            return os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            return False

    def _owner(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8") or "null")
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _refuse(self, owner: dict[str, Any] | None, alive: bool) -> None:
        who = _describe(owner) if owner else "another process"
        if alive:
            raise MofmeError(
                f"{self.folder} is in use by another training run ({who}); wait for it to "
                "finish or stop it, or train into another folder"
            )
        raise MofmeError(
            f"{self.folder} is locked by a training run on another machine ({who}); if that run "
            f"is gone, delete {self.path}"
        )

    def _write_owner(self, fd: int) -> None:
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.time(),
            "start": _start_time(os.getpid()),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(owner) + "\n").encode(), 0)

    def release(self) -> None:
        """Give the lock up and remove the file (a no-op when not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # while still locked, so no one else's lock is removed
        with contextlib.suppress(OSError):
            os.close(fd)  # also drops the flock
        if self._created:  # e.g. "nothing to resume": leave no empty run folder behind
            with contextlib.suppress(OSError):
                self.folder.rmdir()

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _reason(e: OSError) -> str:
    return e.strerror or str(e)
