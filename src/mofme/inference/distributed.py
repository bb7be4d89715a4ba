"""Sharding inference over ``torchrun`` ranks: ``restore`` and ``test`` past one machine.

``torchrun --nproc_per_node N -m mofme.cli restore IN --out OUT`` (and multi-node, the same
way) starts N copies of the command. Each builds the same sorted job list, keeps every N-th job
from its rank on (``shard``), and writes only those outputs, so every file is written exactly
once with no scheduler of ours; the summaries are gathered to rank 0, which prints the merged
one. The process group is torch.distributed's, as in training: NCCL on GPUs (rank r on
``cuda:LOCAL_RANK``), gloo on CPU. Without ``WORLD_SIZE > 1`` everything here is a no-op.

A static round-robin split is used rather than a work queue: the files of one folder are
usually of similar size, and it needs no communication until the end.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass
class Ranks:
    """This process's place among the ranks (``world == 1``: a plain single process)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    created_group: bool = False

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's items: ``items[rank::world]`` (all ranks must pass the same list)."""
        return list(items[self.rank :: self.world])

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (picklable objects; a collective call)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (a collective call)."""
        if not self.active:
            return obj
        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group if this module created it."""
        if self.created_group and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
            self.created_group = False


def init_ranks(device: torch.device) -> tuple[Ranks, torch.device]:
    """Join the ``torchrun`` process group when ``WORLD_SIZE > 1``; the device for this rank.

    A CUDA device becomes ``cuda:LOCAL_RANK`` (one GPU per process, as torchrun expects).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks(), device
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    created = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        created = True
    return Ranks(rank, world, local_rank, created), device


def prepare_on_ranks(prepare: Callable[[], Any], args: Any, ranks: Ranks) -> Any:
    """Run ``prepare`` (``InferenceOptions.prepare``) so that all ranks use the same precision.

    With ``--precision auto`` only rank 0 probes (N concurrent probes on shared cores would
    time each other) and the others apply its choice.
    """
    auto = getattr(args, "precision", None) == "auto" and getattr(args, "amp", None) is None
    if not ranks.active or not auto:
        return prepare()
    chosen = prepare() if ranks.main else None
    name = ranks.broadcast(chosen.name if chosen is not None else None)
    if not ranks.main:
        args.precision = name
        chosen = prepare()
    return chosen


def merge_eval_results(parts: list[Any], order: list[str], model: Any) -> Any:
    """One ``EvalResult`` from the per-rank results of disjoint shards.

    ``order`` lists the evaluated items' keys (``group/name`` for images, the video name for
    videos) in the unsharded order: records are put back in it and re-indexed within their
    group, so the merged table equals a single process's.
    """
    from mofme.results import summarise

    first = parts[0]
    rank_of = {key: i for i, key in enumerate(order)}
    records = [r for p in parts for r in p.records]
    video = first.kind == "video"

    def key(r: Any) -> tuple[int, int]:
        return (rank_of.get(r.group if video else f"{r.group}/{r.name}", len(order)), r.index)

    records.sort(key=key)
    if not video:
        position: dict[str, int] = {}
        for r in records:
            r.index = position.get(r.group, 0)
            position[r.group] = r.index + 1
    failed = [f for p in parts for f in p.failed]
    meta = dict(first.meta, ranks=len(parts))
    return summarise(first.kind, records, failed, model, first.flops_size, meta)
