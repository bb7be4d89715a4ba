"""Overlap decoding, restoring and encoding: a reader thread ahead, a writer thread behind.

``mofme video`` and ``mofme restore`` spend part of every frame in work that is not the
network: decoding (FFmpeg / Pillow), colour conversion, encoding (libx264 / PNG deflate) and
file writes. Run one after the other, the network waits for all of it. Here the decoder runs
``depth`` items ahead in a thread (``prefetch``) and the encoder a few items behind in another
(``Background``), so the network runs back to back. Threads suffice: PyAV, Pillow, zlib and
PyTorch release the GIL in their heavy parts. Queues are bounded, so memory stays flat (at most
``depth`` decoded and ``depth`` restored frames in flight) whatever the length of the input.

Errors cross threads: an exception in the reader is raised by the consumer's next ``next()``;
one in the writer by the next ``submit`` or by ``close``. Stopping early (an error in the
network, Ctrl-C) stops both threads without waiting for the rest of the input.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_DONE = object()  # end of the reader's input
_POLL_S = 0.1  # how often a blocked thread checks whether it was told to stop


class Prefetch(Generic[T]):
    """Iterate ``source`` in a background thread, at most ``depth`` items ahead.

    Use as an iterator, and ``close()`` it (or use ``with``) when stopping before the end, so
    the thread stops and ``source`` (e.g. an open video file) is closed in the thread using it.
    """

    def __init__(self, source: Iterable[T], depth: int = 4, name: str = "mofme-reader") -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        # The thread holds the queue and the event, not self: a Prefetch dropped without
        # close() is collected, and __del__ stops the thread.
        self._thread = threading.Thread(
            target=_read_ahead, args=(source, self._queue, self._stop), name=name, daemon=True
        )
        self._thread.start()

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)  # absent when __init__ raised
        if stop is not None:
            stop.set()

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if item is _DONE:
            self._finished = True
            self._thread.join()
            raise StopIteration
        if isinstance(item, _Raised):
            self._finished = True
            self._thread.join()
            raise item.error
        return item  # type: ignore[no-any-return]

    def close(self) -> None:
        """Stop the reader thread (dropping what it read ahead) and wait for it."""
        self._stop.set()
        self._finished = True
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):  # unblock a put() waiting on a full queue
                self._queue.get(timeout=_POLL_S)
        self._thread.join()

    def __enter__(self) -> Prefetch[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Raised:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _put(q: queue.Queue[Any], stop: threading.Event, item: Any) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _read_ahead(source: Iterable[Any], q: queue.Queue[Any], stop: threading.Event) -> None:
    """The reader thread: ``source``'s items into ``q``, then ``_DONE`` or the error."""
    it = iter(source)
    try:
        for item in it:
            if not _put(q, stop, item):
                break
        else:
            _put(q, stop, _DONE)
    except BaseException as e:  # handed to the consumer, raised there
        _put(q, stop, _Raised(e))
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()  # a generator's cleanup (closing the container) runs in its own thread


class Background:
    """Run submitted calls one at a time, in order, on a worker thread (at most ``depth`` queued).

    ``submit`` blocks while ``depth`` calls are waiting, so a slow encoder slows the producer
    instead of piling up frames. ``close`` waits for the queue to drain and raises the first
    error a call raised; after an error further calls are skipped. ``enabled=False`` runs each
    call at once in the caller's thread (the unpipelined reference, same results).
    """

    def __init__(self, depth: int = 4, enabled: bool = True, name: str = "mofme-writer") -> None:
        self.enabled = enabled
        self._error: BaseException | None = None
        self._closed = False
        if enabled:
            self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is _DONE:
                return
            if self._error is None:
                fn, args, kwargs = job
                try:
                    fn(*args, **kwargs)
                except BaseException as e:  # raised in the caller by submit / close
                    self._error = e

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        if self._closed:
            raise RuntimeError("Background.submit after close")
        if not self.enabled:
            fn(*args, **kwargs)
            return
        self._raise()
        self._queue.put((fn, args, kwargs))

    def close(self, cancel: bool = False) -> None:
        """Wait for the submitted calls (``cancel``: skip those not started); re-raise errors."""
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        if cancel:
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
        self._queue.put(_DONE)
        self._thread.join()
        if not cancel:
            self._raise()

    def __enter__(self) -> Background:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        # On an error in the with-block, drop pending work: the output is abandoned anyway.
        self.close(cancel=exc_type is not None)


def prefetch(source: Iterable[T], depth: int = 4, enabled: bool = True) -> Iterator[T]:
    """``Prefetch(source, depth)`` or, with ``enabled=False``, plain iteration (the reference).

    Close the result (``contextlib.closing``) when stopping early.
    """
    return Prefetch(source, depth) if enabled else _Plain(source)


class _Plain(Generic[T]):
    """``iter(source)`` with the ``close`` method of ``Prefetch``."""

    def __init__(self, source: Iterable[T]) -> None:
        self._it = iter(source)

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        return next(self._it)

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()
