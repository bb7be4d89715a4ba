"""The order of training items: which item, in which batch, with which randomness.

Every epoch is a fixed permutation seeded by ``(seed, epoch)`` (``DistributedSampler``,
sharded over ranks), and every item's crop / flip comes from a generator seeded by
``(seed, epoch, index)``. The data position is thus just ``(epoch, batch)``: a resumed run
skips sampler indices without loading images and sees exactly the batches the uninterrupted
run would have seen, whatever the number of loader workers.
"""

from __future__ import annotations

import contextlib
import signal
import warnings
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from mofme.errors import MofmeError


def _item_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class ItemDataset(Protocol):
    """A training dataset whose item ``index`` draws its randomness from ``generator``."""

    def __len__(self) -> int: ...

    def item(self, index: int, generator: torch.Generator | None = None) -> Any: ...


class EpochSeeded(Dataset):
    """Items keyed by ``(index, epoch)``, each drawn with its own generator seeded by
    ``(seed, epoch, index)``: every crop is a function of that key, independent of loader
    workers and of where a run was resumed, and the process's global RNG is never touched.
    """

    def __init__(self, dataset: ItemDataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, epoch = key
        generator = torch.Generator().manual_seed(_item_seed(self.seed, epoch, index))
        return self.dataset.item(index, generator)


def _ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave Ctrl-C and SIGTERM to the training process, which finishes its step
    and saves (a worker that died of one would make the next batch fetch fail instead). Both
    reach the workers too when sent to the process group: Ctrl-C in a terminal, ``kill -TERM
    -PGID``, a batch scheduler. The workers still end with the trainer: the loader shuts them
    down, and each exits by itself when its parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """This rank's batches of one epoch as ``(index, epoch)`` keys, from batch ``start`` on.

    The permutation is ``DistributedSampler``'s (seeded by ``(seed, epoch)``, sharded over
    ``world`` ranks, tail dropped so every rank gets the same count); incomplete batches are
    dropped. Skipping ``start`` batches touches no data.
    """

    def __init__(self, size: int, batch_size: int, rank: int, world: int, seed: int) -> None:
        self.size = size
        self.batch_size = batch_size
        self._order = DistributedSampler(
            range(size),  # type: ignore[arg-type]
            num_replicas=world,
            rank=rank,
            shuffle=True,
            seed=seed,
            drop_last=True,
        )
        self.batches_per_epoch = len(self._order) // batch_size
        self.epoch = 0
        self.start = 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def epoch_indices(self, epoch: int) -> list[int]:
        self._order.set_epoch(epoch)
        return list(self._order)

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        indices = self.epoch_indices(self.epoch)
        for b in range(self.start, self.batches_per_epoch):
            chunk = indices[b * self.batch_size : (b + 1) * self.batch_size]
            yield [(i, self.epoch) for i in chunk]


class DataStream:
    """Endless batches over epochs, with a resumable position ``(epoch, batch)``."""

    def __init__(
        self,
        dataset: ItemDataset,
        batch_size: int,
        rank: int,
        world: int,
        seed: int,
        workers: int,
        pin_memory: bool,
    ) -> None:
        size = len(dataset)
        self.sampler = EpochBatchSampler(size, batch_size, rank, world, seed)
        if self.sampler.batches_per_epoch == 0:
            raise MofmeError(
                f"the training set has {size} samples, fewer than one batch of "
                f"{batch_size * world} (train.batch_size); lower the batch size"
            )
        with _quiet_worker_warning():
            self.loader = DataLoader(
                EpochSeeded(dataset, seed),
                batch_sampler=self.sampler,
                num_workers=workers,
                pin_memory=pin_memory,
                persistent_workers=workers > 0,
                worker_init_fn=_ignore_stop_signals,
                # Own generator: creating an iterator must not consume the global RNG (resume).
                generator=torch.Generator(),
            )
        self.epoch = 0
        self.batch = 0
        self._it: Iterator[Any] | None = None

    @property
    def batches_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch

    def seek(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch
        self._it = None

    def __next__(self) -> Any:
        if self._it is None:
            self.sampler.set_position(self.epoch, self.batch)
            with _quiet_worker_warning():
                self._it = iter(self.loader)
        try:
            item = next(self._it)
        except MofmeError as e:
            # A worker's MofmeError comes back with the worker's traceback inside its message
            # ("Caught MofmeError in DataLoader worker process 0. Original Traceback ...");
            # the user gets the original one line.
            raise MofmeError(_worker_message(str(e))) from None
        self.batch += 1
        if self.batch == self.batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
            self._it = None
        return item


@contextlib.contextmanager
def _quiet_worker_warning() -> Iterator[None]:
    """Without PyTorch's "This DataLoader will create N worker processes" warning: it comes
    twice per run, with a source line; the trainer says it once (``data.loader_workers``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This DataLoader will create")
        yield


def _worker_message(text: str) -> str:
    """The original message of an exception re-raised by a DataLoader worker."""
    marker = "MofmeError: "
    if "DataLoader worker" in text and marker in text:
        return text.rsplit(marker, 1)[1].strip()
    return text


def default_workers(world: int = 1) -> int:
    """Loader workers per rank when ``data.workers`` is not set: one CPU is left to training,
    and more than 4 rarely pays off for crops of a few hundred pixels."""
    from mofme.device import cpu_count

    return max(0, min(4, cpu_count() // max(1, world) - 1))
