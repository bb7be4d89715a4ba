"""Training: image models on paired crops, video models on clips with a reference frame.

One plain loop, no framework (SPEC §4, §7, §8):

* **Config**: :class:`TrainRunConfig` (sections ``model``, ``data``, ``train``, ``video``,
  ``out``), loaded strictly from YAML with ``--set key=value`` overrides (:func:`load_config`).
  ``model`` is a preset name plus any ``ModelConfig`` field as an override.
* **Optimisation**: AdamW; learning rate from :func:`lr_at` (linear warm-up, then cosine down
  to ``min_lr``), set by hand at every step so a resumed run follows the same curve; gradient
  clipping after backward (unscaled first under fp16); optional bf16 / fp16 autocast; optional
  EMA of the weights (the EMA weights become the saved model).
* **Loss**: ``RestorationLoss`` (SmoothL1 + λ·VGG16) plus ``balance_weight`` × the model's
  load-balancing loss. The balancing loss is always logged, even at weight 0.
* **Video** (``data.kind: video``): clips ``(B, T, 3, H, W)``. A 6-channel model sees
  ``[frame_t, reference_t]``; frame 0 gets zeros, later frames get the model's own detached
  output for frame t-1 (``video.reference: prediction``, what inference sees), the previous
  ground truth (``teacher``) or zeros (``none``); with probability ``zero_ref_prob`` a non-first
  frame gets zeros anyway (robustness to scene cuts). Each frame's loss is back-propagated as
  soon as it is computed (one frame's graph alive at a time), averaged over frames. A
  3-channel model on video data treats the frames as independent images (single-frame
  baseline).
* **Data order**: every epoch is a fixed permutation seeded by ``(seed, epoch)``
  (``DistributedSampler``, sharded over ranks), and every item's crop / flip is seeded by
  ``(seed, epoch, index)``. The data position is thus just ``(epoch, batch)``: a resumed run
  skips sampler indices without loading images and sees exactly the batches the uninterrupted
  run would have seen, whatever the number of loader workers.
* **Checkpoints**: ``OUT/model_last.safetensors`` (+ ``model_best`` by validation PSNR) and
  ``OUT/state_last.pt`` (optimizer, scaler, EMA, RNG states of every rank, data position), both
  written atomically; ``resume=True`` continues bit-exactly (deterministic CPU runs).
* **Interruption**: SIGINT / SIGTERM finish the current step, save, and return.
* **DDP**: under ``torchrun`` (``WORLD_SIZE > 1``) the process group is created here (NCCL on
  CUDA, gloo on CPU); ``train.batch_size`` is the global batch. Rank 0 alone logs, validates
  and writes files.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
import typing
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from mofme import checkpoint
from mofme.config import coerce, load_yaml, to_dict
from mofme.errors import MofmeError
from mofme.inference.distributed import Ranks as _Dist  # training and inference share ranks
from mofme.model.config import PRESETS, ModelConfig, RoutingConfig, get_preset, parse_routing
from mofme.model.net import MoFMENet
from mofme.runlock import RunLock

__all__ = [
    "DataConfig",
    "EpochBatchSampler",
    "ModelEMA",
    "TrainConfig",
    "TrainRunConfig",
    "Trainer",
    "VideoConfig",
    "build_model_config",
    "load_config",
    "lr_at",
    "model_input",
    "train",
]

KINDS = ("image", "video")
AMP_MODES = ("none", "bf16", "fp16")
REFERENCES = ("prediction", "teacher", "none")
NONFINITE_MODES = ("skip", "stop")
BALANCE_LOSSES = ("switch", "cv2")
# Non-finite steps in a row after which training is declared diverged, even in skip mode.
MAX_NONFINITE_IN_ROW = 20
# Files a run writes into OUT (removed by overwrite=True; nothing else there is touched).
RUN_FILES = (
    "state_last.pt",
    "model_last.safetensors",
    "model_best.safetensors",
    "log.jsonl",
    "val.jsonl",
    "config.yaml",
)

# ============================================================================== configuration


@dataclass
class DataConfig:
    """Where the training / validation data is and how it is cut."""

    kind: str = "image"  # image | video
    root: str = ""  # dataset root (relative paths: to the current folder)
    layout: str = "mofme"  # image data: mofme | transweather | folder (video: RVSD layout)
    train_split: str = "train"  # mofme: train; transweather: list file, e.g. allweather.txt
    val_split: list[str] | str | None = None  # e.g. test, or [test1.txt, raindroptesta.txt]
    crop: int = 240  # random square training crop
    flip: bool = True  # random horizontal flips
    clip_len: int = 3  # video: frames per training clip
    clip_stride: int = 1  # video: step between clip starts
    # DataLoader worker processes (0 = load in the training process; None = from the machine:
    # min(4, CPUs per rank - 1))
    workers: int | None = None
    strict: bool = False  # raise on an unreadable training sample instead of skipping it
    val_max_images: int | None = None  # image: evenly spaced subset; video: frames per video
    val_max_videos: int | None = None  # video: first N validation videos
    val_tile: int | None = None  # validate with tiled inference (tile side) to bound memory
    val_samples: int = 4  # validation images shown in TensorBoard (input | output | gt)
    identity_share: float = 0.0  # image: chance of an identity pair (input = gt), e.g. 0.1


@dataclass
class TrainConfig:
    """Optimisation, precision, logging and checkpointing."""

    batch_size: int = 64  # global batch (divided across DDP ranks)
    steps: int | None = None  # total optimizer steps (or give epochs)
    epochs: float | None = None  # training length in passes over the data (or give steps)
    warmup_steps: int | None = None  # overrides warmup_epochs when set
    warmup_epochs: float = 0.0  # linear learning-rate warm-up, in epochs
    lr: float = 2e-4  # peak learning rate (AdamW), reached after the warm-up
    min_lr: float = 1e-6  # learning rate at the last step (cosine schedule)
    weight_decay: float = 0.01  # AdamW weight decay
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    grad_clip: float = 1.0  # max gradient norm; 0 = no clipping
    amp: str = "none"  # none | bf16 | fp16 (fp16: CUDA only, with a GradScaler)
    ema: float = 0.0  # EMA decay of the weights, e.g. 0.999; 0 = off
    seed: int = 0  # weights, data order, crops and flips all follow from it
    perceptual_weight: float = 0.04  # weight of the VGG16 perceptual loss (needs vgg_weights)
    vgg_weights: str | None = None  # local VGG16 weights; without them the VGG term is off
    balance_weight: float = 0.0  # weight of the expert load-balancing loss
    balance_loss: str = "switch"  # switch | cv2
    log_every: int = 50  # steps between log.jsonl lines (first and last step always logged)
    val_every: int = 1000  # steps between validations (0 = only at the end)
    ckpt_every: int = 1000  # steps between checkpoints (0 = only at the end)
    on_nonfinite: str = "skip"  # NaN / inf loss: skip the step (counted) or stop
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:N
    threads: int = 0  # CPU threads for PyTorch (0 = its default)
    tensorboard: bool = True  # write TensorBoard logs to OUT/tb
    # Fine-tuning (mofme.finetune): start from this mofme checkpoint (a path, or image / video
    # for the bundled weights) instead of random weights; ignored by --resume.
    init: str | None = None
    init_strict: bool = True  # every tensor must fit (an image checkpoint may start a video model)
    freeze: list[str] = field(default_factory=list)  # parts kept fixed, e.g. [head, tail]
    train_only: list[str] = field(default_factory=list)  # or: train only these, e.g. [experts]


@dataclass
class VideoConfig:
    """Reference-frame training (``data.kind: video`` with a 6-channel model)."""

    reference: str = "prediction"  # prediction | teacher | none
    zero_ref_prob: float = 0.1  # chance of a zero reference for a non-first frame


@dataclass
class TrainRunConfig:
    """A whole training run. ``model``: ``preset`` plus ``ModelConfig`` field overrides."""

    model: dict[str, Any] = field(default_factory=lambda: {"preset": "paper"})
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    out: str = "runs/mofme"  # run folder: checkpoints, logs, config.yaml

    def model_config(self) -> ModelConfig:
        return build_model_config(self.model, init=self.train.init)

    def validate(self) -> None:
        d, t, v = self.data, self.train, self.video
        mcfg = self.model_config()
        _choice("data.kind", d.kind, KINDS)
        if d.kind == "image":
            from mofme.data.datasets import LAYOUTS

            _choice("data.layout", d.layout, LAYOUTS)
            if mcfg.in_channels != 3:
                raise MofmeError(
                    f"model.in_channels={mcfg.in_channels} needs video data (data.kind: video); "
                    "image models have in_channels 3"
                )
        elif mcfg.in_channels not in (3, 6):
            raise MofmeError(
                f"video training needs model.in_channels 6 (frame + reference) or 3 "
                f"(single-frame baseline), got {mcfg.in_channels}"
            )
        if not d.root:
            raise MofmeError("data.root: give the dataset folder")
        for name in ("crop", "clip_len", "clip_stride"):
            _at_least(f"data.{name}", getattr(d, name), 1)
        if d.workers is not None:
            _at_least("data.workers", d.workers, 0)
        _at_least("data.val_samples", d.val_samples, 0)
        for name in ("val_max_images", "val_max_videos", "val_tile"):
            if getattr(d, name) is not None:
                _at_least(f"data.{name}", getattr(d, name), 1)
        _at_least("train.batch_size", t.batch_size, 1)
        if t.steps is not None and t.epochs is not None:
            raise MofmeError("train: set either steps or epochs, not both")
        if t.steps is None and t.epochs is None:
            raise MofmeError("train: set steps or epochs")
        if t.steps is not None:
            _at_least("train.steps", t.steps, 1)
        if t.epochs is not None and not t.epochs > 0:
            raise MofmeError(f"train.epochs must be > 0, got {t.epochs}")
        if t.warmup_steps is not None:
            _at_least("train.warmup_steps", t.warmup_steps, 0)
        if t.warmup_epochs < 0:
            raise MofmeError(f"train.warmup_epochs must be >= 0, got {t.warmup_epochs}")
        if t.lr <= 0 or not 0 <= t.min_lr <= t.lr:
            raise MofmeError(f"train: need 0 < lr and 0 <= min_lr <= lr, got {t.lr}, {t.min_lr}")
        if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
            raise MofmeError(f"train.betas must be two numbers in [0, 1), got {t.betas}")
        if t.weight_decay < 0 or t.grad_clip < 0 or t.perceptual_weight < 0:
            raise MofmeError("train: weight_decay, grad_clip and perceptual_weight must be >= 0")
        if t.balance_weight < 0:
            raise MofmeError(f"train.balance_weight must be >= 0, got {t.balance_weight}")
        if not 0 <= t.ema < 1:
            raise MofmeError(f"train.ema is a decay in [0, 1) (0 = off), got {t.ema}")
        _choice("train.amp", t.amp, AMP_MODES)
        _choice("train.balance_loss", t.balance_loss, BALANCE_LOSSES)
        _choice("train.on_nonfinite", t.on_nonfinite, NONFINITE_MODES)
        for name in ("log_every",):
            _at_least(f"train.{name}", getattr(t, name), 1)
        for name in ("val_every", "ckpt_every", "threads"):
            _at_least(f"train.{name}", getattr(t, name), 0)
        from mofme.device import check_threads

        check_threads("train.threads", t.threads)
        _choice("video.reference", v.reference, REFERENCES)
        if not 0 <= v.zero_ref_prob <= 1:
            raise MofmeError(f"video.zero_ref_prob must be in [0, 1], got {v.zero_ref_prob}")
        if not self.out:
            raise MofmeError("out: give the run folder")
        from mofme.finetune import check_parts

        check_parts(t.freeze, "train.freeze")
        check_parts(t.train_only, "train.train_only")
        if t.freeze and t.train_only:
            raise MofmeError("train: set either freeze or train_only, not both")

    def val_splits(self) -> list[str]:
        vs = self.data.val_split
        return [] if vs is None else [vs] if isinstance(vs, str) else list(vs)


# Meanings of the model keys whose source carries no comment (model/config.py documents the
# rest); config_reference() fails loudly when a key has neither, so the README cannot drift.
_MODEL_KEY_DOCS = {
    "preset": "starting point: " + ", ".join(PRESETS) + "; every other model key overrides it",
    "out_channels": "output channels (RGB)",
    "dim": "token width",
    "depth": "transformer blocks",
    "num_experts": "experts per FME layer",
    "patch": "patch side in pixels (tokens are patch x patch blocks)",
    "heads": "attention heads",
    "head_dim": "width per attention head",
    "unpatch_channels": "channels of the conv tail after unpatching",
    "ffn_mult": "hidden width of the FFN adaptor, as a multiple of dim",
    "uar_dropout": "dropout of the UaR router's Monte-Carlo passes",
    "global_residual": "add the input to the output (the network predicts a correction)",
    "routing": "expert selection: topk:K, topp:P[:KMIN[:KMAX]], dense, or a mapping of the "
    "keys below",
}


def config_reference() -> str:
    """The README's training config reference: every key, its default and meaning, generated
    from the dataclasses (``tests/test_validation.py`` checks the README against it)."""
    from mofme.config import field_docs, reference_rows, yaml_value

    header = ["| key | default | meaning |", "|---|---|---|"]
    paper = get_preset("paper")
    model_docs = {**field_docs(ModelConfig), **_MODEL_KEY_DOCS}
    model_rows = [f"| `model.preset` | `paper` | {_MODEL_KEY_DOCS['preset']} |"]
    for f in dataclasses.fields(ModelConfig):
        if f.name == "routing":
            model_rows.append(
                f"| `model.routing` | `{paper.routing.describe()}` | {model_docs['routing']} |"
            )
            model_rows += reference_rows(RoutingConfig, "model.routing.", paper.routing)
            continue
        meaning = model_docs.get(f.name, "").replace("|", "\\|")
        model_rows.append(
            f"| `model.{f.name}` | `{yaml_value(getattr(paper, f.name))}` | {meaning} |"
        )
    sections = [
        ("model", "Model (defaults: the `paper` preset)", model_rows),
        ("data", "Data", reference_rows(DataConfig, "data.")),
        ("train", "Training", reference_rows(TrainConfig, "train.")),
        ("video", "Video", reference_rows(VideoConfig, "video.")),
        ("out", "Run folder", [r for r in reference_rows(TrainRunConfig, "") if "`out`" in r]),
    ]
    parts = []
    for _, title, rows in sections:
        for row in rows:
            if row.rstrip().endswith("|  |"):
                raise AssertionError(f"undocumented training config key: {row}")
        parts.append("\n".join([f"**{title}**", "", *header, *rows]))
    return "\n\n".join(parts) + "\n"


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise MofmeError(f"{name}: {value!r} is not one of {', '.join(allowed)}")


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise MofmeError(f"{name} must be >= {low}, got {value}")


def build_model_config(spec: dict[str, Any], init: str | None = None) -> ModelConfig:
    """``{"preset": "tiny", "dim": 32, "routing": {"selection": "topp"}}`` -> ``ModelConfig``.

    Every key besides ``preset`` must be a ``ModelConfig`` field and is type-checked;
    ``routing`` may be a mapping (merged over the preset's) or a spec such as ``topp:0.6``.
    ``preset: init`` starts from the config stored in the ``init`` checkpoint (fine-tuning).
    """
    spec = dict(spec)
    preset = spec.pop("preset", "paper")
    if preset == "init":
        if not init:
            raise MofmeError("model.preset: init needs train.init (the checkpoint to start from)")
    elif not isinstance(preset, str) or preset not in PRESETS:
        raise MofmeError(
            f"model.preset: unknown preset {preset!r}; available: {', '.join(PRESETS)}, init"
        )
    hints = typing.get_type_hints(ModelConfig)
    unknown = sorted(set(spec) - set(hints))
    if unknown:
        raise MofmeError(
            f"model: unknown key(s) {', '.join(unknown)}; allowed: preset, {', '.join(hints)}"
        )
    overrides: dict[str, Any] = {}
    for key, value in spec.items():
        if key == "routing":
            overrides[key] = _routing_override(value)
        else:
            overrides[key] = coerce(value, hints[key], f"model.{key}")
    if preset == "init":
        from mofme.finetune import init_config

        base = init_config(init or "").to_dict()
        routing = overrides.pop("routing", None)
        if isinstance(routing, RoutingConfig):
            base["routing"] = dataclasses.asdict(routing)
        elif isinstance(routing, dict):
            base["routing"] = {**base["routing"], **routing}
        return ModelConfig.from_dict({**base, **overrides})
    return get_preset(preset, **overrides)


def _routing_override(value: Any) -> RoutingConfig | dict[str, Any]:
    if isinstance(value, str):
        return parse_routing(value)
    if not isinstance(value, dict):
        raise MofmeError(
            f"model.routing: expected a mapping or a spec like topp:0.6, got {value!r}"
        )
    hints = typing.get_type_hints(RoutingConfig)
    unknown = sorted(set(value) - set(hints))
    if unknown:
        raise MofmeError(
            f"model.routing: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(hints)}"
        )
    return {k: coerce(v, hints[k], f"model.routing.{k}") for k, v in value.items()}


def load_config(
    path: str | os.PathLike[str] | None, overrides: list[str] | None = None
) -> TrainRunConfig:
    """Load a training YAML plus ``key.sub=value`` overrides into a validated config.

    Strict: unknown keys and wrong types raise ``MofmeError`` naming the key (and the file).
    """
    return load_yaml(TrainRunConfig, path, overrides)


# ================================================================================== schedule


def lr_at(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr: float) -> float:
    """Learning rate of optimizer step ``step`` (0-based).

    Linear warm-up ``lr·(step+1)/warmup_steps`` over the first ``warmup_steps`` steps, then a
    cosine from ``lr`` (first step after warm-up) down to exactly ``min_lr`` (last step).
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    span = total_steps - warmup_steps - 1
    progress = min(1.0, (step - warmup_steps) / span) if span > 0 else 1.0
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ====================================================================================== data


def _item_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class _EpochSeeded(Dataset):
    """Items keyed by ``(index, epoch)``; the dataset's randomness is seeded by that key.

    The datasets draw one number from PyTorch's global RNG per item. Seeding it here (inside
    ``fork_rng``, so the caller's RNG is untouched) makes every crop a function of
    ``(seed, epoch, index)``, independent of workers and of where a run was resumed.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, epoch = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_item_seed(self.seed, epoch, index))
            return self.dataset[index]


def _ignore_sigint(worker_id: int) -> None:
    """Loader workers leave Ctrl-C to the training process, which finishes its step and saves
    (a worker that died of SIGINT would make the next batch fetch fail instead)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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
        dataset: Dataset,
        batch_size: int,
        rank: int,
        world: int,
        seed: int,
        workers: int,
        pin_memory: bool,
    ) -> None:
        size = len(dataset)  # type: ignore[arg-type]
        self.sampler = EpochBatchSampler(size, batch_size, rank, world, seed)
        if self.sampler.batches_per_epoch == 0:
            raise MofmeError(
                f"the training set has {size} samples, fewer than one batch of "
                f"{batch_size * world} (train.batch_size); lower the batch size"
            )
        with _quiet_worker_warning():
            self.loader = DataLoader(
                _EpochSeeded(dataset, seed),
                batch_sampler=self.sampler,
                num_workers=workers,
                pin_memory=pin_memory,
                persistent_workers=workers > 0,
                worker_init_fn=_ignore_sigint,
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
    twice per run, with a source line; the trainer says it once (``_loader_workers``)."""
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


# ======================================================================================= EMA


class ModelEMA:
    """Exponential moving average of a model's weights (buffers are copied).

    The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so a short
    run is not dominated by the initial weights.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1.0 - d)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])


# ==================================================================================== video


def model_input(
    frame: Tensor,
    t: int,
    previous_pred: Tensor | None,
    previous_gt: Tensor | None,
    reference: str,
    zero_ref_prob: float,
) -> Tensor:
    """Input ``(B, 6, H, W)`` of a reference-frame model for frame ``t`` of a clip.

    ``frame``: degraded frame t ``(B, 3, H, W)``. The reference is zeros for ``t == 0`` and for
    ``reference == "none"``; otherwise the detached prediction (``"prediction"``) or the ground
    truth (``"teacher"``) of frame t-1, replaced by zeros per sample with probability
    ``zero_ref_prob`` (drawn from the global RNG of the frame's device).
    """
    if t == 0 or reference == "none":
        ref = torch.zeros_like(frame)
    else:
        source = previous_pred if reference == "prediction" else previous_gt
        if source is None:
            raise ValueError(f"reference {reference!r} for frame {t} needs frame {t - 1}")
        ref = source.detach().to(frame.dtype)
        if zero_ref_prob > 0:
            keep = torch.rand(frame.shape[0], device=frame.device) >= zero_ref_prob
            ref = ref * keep.to(frame.dtype).view(-1, 1, 1, 1)
    return torch.cat([frame, ref], dim=1)


# ============================================================================= distributed




def _setup_distributed(device_name: str) -> tuple[_Dist, torch.device]:
    """The ``torchrun`` process group and this rank's device (the same setup as inference)."""
    from mofme.device import resolve_device
    from mofme.inference.distributed import init_ranks

    return init_ranks(resolve_device(device_name))


# ================================================================================== trainer


def _rng_state() -> dict[str, Any]:
    """RNG states of python, numpy and torch (CPU + current CUDA device), loadable with
    ``torch.load(weights_only=True)`` (numpy's key array stored as a tensor)."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [
            np_name,
            torch.from_numpy(np_keys.astype(np.int64)),
            np_pos,
            np_has_gauss,
            np_gauss,
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _read_jsonl_upto(path: Path, step: int) -> None:
    """Drop lines of a JSONL log written after ``step`` (by a run killed before its checkpoint)."""
    if not path.is_file():
        return
    try:
        # Undecodable bytes (a foreign or damaged file) must not stop a resume: they become
        # U+FFFD, and such lines fail to parse below like a line cut by a kill.
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as e:
        raise MofmeError(f"cannot read {path}: {e.strerror or e}") from None
    kept = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        # Lines that are not our records (a list, a string step, ...) are kept as they are:
        # only records known to come after ``step`` are dropped.
        later = (
            isinstance(record, dict)
            and isinstance(record.get("step"), (int, float))
            and not isinstance(record.get("step"), bool)
            and record["step"] > step
        )
        if not later:
            kept.append(line)
    checkpoint.atomic_write(path, lambda tmp: Path(tmp).write_text("".join(k + "\n" for k in kept)))


class Trainer:
    """Builds model, data, optimizer from a config; :meth:`run` trains.

    Args:
        cfg: the run config.
        resume: continue from ``OUT/state_last.pt``.
        overwrite: start fresh even if ``OUT`` holds a run. A fresh run removes the run files
            of ``OUT`` (:data:`RUN_FILES`, ``tb/``); nothing else there is touched.
        progress: show a tqdm progress bar (rank 0).
    """

    def __init__(
        self,
        cfg: TrainRunConfig,
        resume: bool = False,
        overwrite: bool = False,
        progress: bool = True,
    ) -> None:
        cfg.validate()
        self.cfg = cfg
        t = cfg.train
        self.out = Path(cfg.out)
        self.dist, self.device = _setup_distributed(t.device)
        self.is_video = cfg.data.kind == "video"
        self.progress = progress
        if t.threads > 0:
            torch.set_num_threads(t.threads)
        if t.amp == "fp16" and self.device.type != "cuda":
            raise MofmeError("train.amp=fp16 needs a CUDA device (GradScaler); use bf16 on CPU")
        if t.batch_size % self.dist.world:
            raise MofmeError(
                f"train.batch_size={t.batch_size} is not divisible by the {self.dist.world} ranks"
            )
        self.batch_per_rank = t.batch_size // self.dist.world
        # One run per folder: a second one would interleave the logs, replace the other's
        # checkpoints and delete its in-flight temp files, and --resume of a live run would
        # fork it. Taken before anything in OUT is read or removed.
        self._lock = RunLock(self.out) if self.dist.main else None
        if self._lock is not None:
            self._lock.acquire()
            # close() releases it; should __init__ fail below, it goes with this object (and
            # the kernel drops it when the process ends in any case).
            self._unlock = weakref.finalize(self, self._lock.release)
        state_path = self.out / "state_last.pt"
        if resume and not state_path.is_file():
            raise self._refuse(f"nothing to resume: {state_path} does not exist")
        if not resume and state_path.is_file() and not overwrite:
            raise self._refuse(
                f"{self.out} already holds a training run ({state_path.name}); pass --resume to "
                "continue it or --overwrite to start over"
            )
        if not resume and self.dist.main:
            # A fresh run starts with empty logs (also after a run killed before its first
            # checkpoint, which left logs but no state).
            for name in RUN_FILES:
                (self.out / name).unlink(missing_ok=True)
            shutil.rmtree(self.out / "tb", ignore_errors=True)
        if self.dist.main:
            # A run killed (SIGKILL) in the middle of an atomic save leaves its temp file.
            for name in RUN_FILES:
                for stale in self.out.glob(f".{name}.*.tmp"):
                    stale.unlink(missing_ok=True)
        self._barrier()

        # Same seed on every rank for the weights (DDP also broadcasts them from rank 0).
        _seed_everything(t.seed)
        self.model_cfg = cfg.model_config()
        self.raw_model = MoFMENet(self.model_cfg).to(self.device).train()
        self.init_report: Any = None
        if t.init and not resume:  # a resumed run's weights come from its state
            from mofme.finetune import init_from_checkpoint

            self.init_report = init_from_checkpoint(self.raw_model, t.init, t.init_strict)
            self._print(f"init: {self.init_report.summary()}")
        from mofme.finetune import freeze, frozen_parts

        parts = frozen_parts(t.freeze, t.train_only)
        if parts:
            n_frozen = freeze(self.raw_model, parts)
            self._print(f"frozen: {', '.join(parts)} ({n_frozen:,} parameters)")
        trainable = [p for p in self.raw_model.parameters() if p.requires_grad]
        if not trainable:
            raise MofmeError("train: every part is frozen; nothing to train")
        for layer in self.raw_model.fme_layers:
            layer.balance_loss = t.balance_loss
        # Per-rank streams for dropout / UaR masks / zero references.
        _seed_everything(t.seed + 1 + self.dist.rank)
        self.model: nn.Module = self.raw_model
        if self.dist.active:
            self.model = nn.parallel.DistributedDataParallel(
                self.raw_model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False,  # the only buffers are UaR's fixed eval masks
            )
        self.ema = ModelEMA(self.raw_model, t.ema) if t.ema > 0 else None
        self.optimizer = torch.optim.AdamW(
            trainable,  # frozen parts stay bit-identical (no weight decay either)
            lr=t.lr,
            betas=(t.betas[0], t.betas[1]),
            weight_decay=t.weight_decay,
        )
        self.scaler = torch.amp.GradScaler("cuda") if t.amp == "fp16" else None
        self.criterion = self._build_loss().to(self.device)

        self.train_set = self._build_train_set()
        self.stream = DataStream(
            self.train_set,
            self.batch_per_rank,
            self.dist.rank,
            self.dist.world,
            t.seed,
            self._loader_workers(),
            pin_memory=self.device.type == "cuda",
        )
        per_epoch = self.stream.batches_per_epoch
        self.steps_per_epoch = per_epoch
        self.total_steps = t.steps if t.steps is not None else max(1, round(t.epochs * per_epoch))
        self.warmup_steps = (
            t.warmup_steps if t.warmup_steps is not None else round(t.warmup_epochs * per_epoch)
        )
        self.warmup_steps = min(self.warmup_steps, self.total_steps)

        self.step = 0
        self.best_psnr = -math.inf
        self.skipped = 0
        self._nonfinite_in_row = 0
        self._stop_signal: int | None = None
        self.last_val: dict[str, Any] = {}
        self._val_samples: list[tuple[str, Tensor]] = []
        if resume:
            self._load_state(state_path)
        self.val_items = self._find_val_items() if self.dist.main else []
        self._writer: Any = None
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
            checkpoint.atomic_write(self.out / "config.yaml", lambda p: Path(p).write_text(text))
            if resume:
                _read_jsonl_upto(self.out / "log.jsonl", self.step)
                _read_jsonl_upto(self.out / "val.jsonl", self.step)
            if t.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(
                    str(self.out / "tb"), purge_step=self.step if resume else None
                )

    def _refuse(self, message: str) -> MofmeError:
        """The error for a refused start, after releasing the run-folder lock taken for it."""
        if self._lock is not None:
            self._unlock()
        return MofmeError(message)

    # -- construction ----------------------------------------------------------------------

    def _build_loss(self) -> nn.Module:
        from mofme.losses import RestorationLoss

        t = self.cfg.train
        weight = t.perceptual_weight
        if weight > 0 and t.vgg_weights is None:
            self._print(
                "note: perceptual (VGG16) term off: set train.vgg_weights to a local VGG16 "
                "file (e.g. torchvision's vgg16-397923af.pth) to enable it"
            )
            weight = 0.0
        return RestorationLoss(perceptual_weight=weight, vgg_weights=t.vgg_weights)

    def _build_train_set(self) -> Dataset:
        from mofme.data.datasets import (
            PairedImageDataset,
            VideoClipDataset,
            find_pairs,
            find_videos,
        )

        d, seed = self.cfg.data, self.cfg.train.seed
        if self.is_video:
            videos = find_videos(d.root, d.train_split)
            self._check_crop([v.snow_frames[0] for v in videos[:8] if v.snow_frames])
            return VideoClipDataset(
                videos, d.clip_len, d.crop, d.flip, d.clip_stride, seed=seed, strict=d.strict
            )
        pairs = find_pairs(d.root, d.layout, d.train_split)
        self._check_crop([p.input for p in pairs[:8]])
        return PairedImageDataset(
            pairs, crop=d.crop, flip=d.flip, strict=d.strict, seed=seed,
            identity_share=d.identity_share,
        )  # fmt: skip

    def _check_crop(self, samples: list[Path]) -> None:
        """Say so when ``data.crop`` exceeds the training images: they are padded up to the
        crop, which costs (crop / side)^2 times the compute and trains on padding."""
        from PIL import Image

        crop = self.cfg.data.crop
        smallest: tuple[int, Path] | None = None
        for path in samples:  # headers only, a few files: cheap even for a large set
            try:
                with Image.open(path) as img:
                    side = min(img.size)
            except Exception:  # unreadable files are reported when they are loaded
                continue
            if smallest is None or side < smallest[0]:
                smallest = (side, path)
        if smallest is not None and smallest[0] < crop:
            side, path = smallest
            fits = side // 8 * 8 or side  # a multiple of the patch size, when there is one
            self._print(
                f"note: data.crop={crop} is larger than the training images (e.g. {path.name} "
                f"is {side} px on its short side): they are padded to {crop}, "
                f"{(crop / side) ** 2:.1f}x the compute per image; set data.crop to {fits} or less"
            )

    def _find_val_items(self) -> list[Any]:
        """Validation pairs (image) or videos (video), limited as configured."""
        from mofme.data.datasets import find_pairs, find_videos

        d = self.cfg.data
        items: list[Any] = []
        for split in self.cfg.val_splits():
            if self.is_video:
                items.extend(find_videos(d.root, split))
            else:
                items.extend(find_pairs(d.root, d.layout, split))
        if self.is_video and d.val_max_videos is not None:
            items = items[: d.val_max_videos]
        if not self.is_video and d.val_max_images is not None and len(items) > d.val_max_images:
            # Evenly spaced, so every test set keeps its share.
            pick = np.linspace(0, len(items) - 1, d.val_max_images).round().astype(int)
            items = [items[i] for i in sorted(set(pick.tolist()))]
        return items

    # -- helpers ---------------------------------------------------------------------------

    def _loader_workers(self) -> int:
        """``data.workers``, or the machine's default; one note (not PyTorch's warning at every
        epoch) when more workers than CPUs were asked for."""
        from mofme.device import cpu_count

        workers = self.cfg.data.workers
        if workers is None:
            return default_workers(self.dist.world)
        cpus = cpu_count()
        if workers > cpus:
            self._print(
                f"note: data.workers={workers} on {cpus} CPUs: the loaders compete with "
                f"training; leave data.workers unset for the machine's default "
                f"({default_workers(self.dist.world)})"
            )
        return workers

    def _print(self, msg: str) -> None:
        if self.dist.main:
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stderr)

    def _barrier(self) -> None:
        if self.dist.active:
            dist.barrier()

    def _autocast(self) -> contextlib.AbstractContextManager:
        amp = self.cfg.train.amp
        if amp == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if amp == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _grad_sync(self, sync: bool) -> contextlib.AbstractContextManager:
        """DDP all-reduces gradients at every backward unless inside ``no_sync``."""
        if sync or not self.dist.active:
            return contextlib.nullcontext()
        return self.model.no_sync()  # type: ignore[operator]

    @property
    def eval_model(self) -> MoFMENet:
        """The model that is validated and saved: the EMA weights when enabled."""
        return self.ema.model if self.ema is not None else self.raw_model  # type: ignore[return-value]

    def lr(self, step: int) -> float:
        t = self.cfg.train
        return lr_at(step, self.total_steps, self.warmup_steps, t.lr, t.min_lr)

    # -- one step --------------------------------------------------------------------------

    def train_step(self, batch: dict[str, Any]) -> dict[str, Any]:
        """One optimizer step on ``batch`` (``input``/``gt``: ``(B, 3, H, W)`` or clips
        ``(B, T, 3, H, W)``). Returns the losses, ``lr``, ``grad_norm``, ``skipped``, ``stop``.
        """
        t = self.cfg.train
        x = batch["input"].to(self.device, non_blocking=True)
        gt = batch["gt"].to(self.device, non_blocking=True)
        uses_reference = x.ndim == 5 and self.model_cfg.in_channels == 6
        if x.ndim == 5 and not uses_reference:
            # Single-frame baseline: the frames of a clip are independent images.
            x, gt = x.flatten(0, 1), gt.flatten(0, 1)
        frames = x.shape[1] if uses_reference else 1
        lr = self.lr(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)

        parts_sum: dict[str, float] = {}
        aux_sum = 0.0
        previous: Tensor | None = None
        for f in range(frames):
            if uses_reference:
                inp = model_input(
                    x[:, f],
                    f,
                    previous,
                    gt[:, f - 1] if f > 0 else None,
                    self.cfg.video.reference,
                    self.cfg.video.zero_ref_prob,
                )
                target = gt[:, f]
            else:
                inp, target = x, gt
            # Gradients are synchronised across ranks on the last frame's backward only.
            with self._grad_sync(f == frames - 1):
                with self._autocast():
                    pred = self.model(inp)
                loss, parts = self.criterion(pred, target)
                if t.balance_weight > 0:
                    aux = self.raw_model.aux_loss()
                    loss = loss + t.balance_weight * aux
                else:
                    with torch.no_grad():
                        aux = self.raw_model.aux_loss()
                loss = loss / frames
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
            previous = pred.detach()
            aux_sum += float(aux.detach())
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v
        parts_mean = {k: v / frames for k, v in parts_sum.items()}
        if self.cfg.train.balance_weight > 0:
            parts_mean["total"] += t.balance_weight * aux_sum / frames
        loss_value = parts_mean["total"]

        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        max_norm = t.grad_clip if t.grad_clip > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), max_norm))
        bad = not math.isfinite(loss_value)
        if self.scaler is None:
            bad = bad or not math.isfinite(grad_norm)
        stop = self._stop_signal is not None
        if self.dist.active:
            # Every rank must take the same decision (skip / stop), or the next collective hangs.
            flags = torch.tensor([float(bad), float(stop)], device=self.device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            bad, stop = bool(flags[0]), bool(flags[1])

        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.update()  # unscale_ was called; this also lowers the scale
            if t.on_nonfinite == "stop":
                raise MofmeError(
                    f"non-finite loss ({loss_value}) or gradient at step {self.step + 1}; "
                    "check the data for NaN, lower train.lr, or set train.on_nonfinite=skip"
                )
            self.skipped += 1
            self._nonfinite_in_row += 1
            self._print(
                f"warning: step {self.step + 1}: non-finite loss ({loss_value:g}) or gradient "
                f"norm ({grad_norm:g}); step skipped ({self.skipped} so far)"
            )
            if self._nonfinite_in_row >= MAX_NONFINITE_IN_ROW:
                raise MofmeError(
                    f"{MAX_NONFINITE_IN_ROW} non-finite steps in a row (step {self.step + 1}): "
                    "training diverged; lower train.lr or check the data"
                )
        else:
            self._nonfinite_in_row = 0
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self.raw_model)
        self.step += 1
        return {
            **parts_mean,
            "loss": loss_value,
            "aux": aux_sum / frames,
            "lr": lr,
            "grad_norm": grad_norm,
            "skipped": bad,
            "stop": stop,
        }

    # -- validation ------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        """PSNR / SSIM (RGB, [0, 1]) of ``eval_model`` on the validation items (rank 0).

        Runs under ``fork_rng`` so the training RNG streams are the same with or without it.
        """
        if not self.val_items:
            return {}
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            result = self._validate_video() if self.is_video else self._validate_images()
        result["step"] = self.step
        return result

    def _validate_images(self) -> dict[str, Any]:
        from mofme.data.io import read_image, to_tensor
        from mofme.evaluate import evaluate_images
        from mofme.inference.tiling import restore_image

        tile = self.cfg.data.val_tile
        res = evaluate_images(
            self.eval_model, self.val_items, tile=tile, progress=False, strict=True,
            flops_size=None, warmup=False,
        )  # fmt: skip
        samples = []
        for pair in self.val_items[: self.cfg.data.val_samples]:
            inp, gt = (to_tensor(read_image(p))[None] for p in (pair.input, pair.gt))
            out = restore_image(self.eval_model, inp, tile=tile).clamp(0, 1).cpu()
            samples.append((pair.input.name, torch.cat([inp[0], out[0], gt[0]], dim=2)))
        return self._summarise(res, samples)

    def _validate_video(self) -> dict[str, Any]:
        from mofme.data.io import read_image, to_tensor
        from mofme.evaluate import evaluate_videos
        from mofme.inference.video import restore_clip

        d = self.cfg.data
        # The inference path itself (VideoRestorer): mean over frames per video, then videos.
        res = evaluate_videos(
            self.eval_model, self.val_items, tile=d.val_tile, progress=False, strict=True,
            max_frames=d.val_max_images, flops_size=None, warmup=False,
        )  # fmt: skip
        samples = []
        for video in self.val_items[: d.val_samples]:
            f = min(1, len(video.snow_frames) - 1)  # frame 1: restored with a reference
            frames = torch.stack([to_tensor(read_image(p)) for p in video.snow_frames[: f + 1]])
            out = restore_clip(self.eval_model, frames)[f].clamp(0, 1).cpu()
            gt = to_tensor(read_image(video.clean_frames[f]))
            samples.append((f"{video.name}/{f}", torch.cat([frames[f], out, gt], 2)))
        return self._summarise(res, samples, group="video")

    def _summarise(
        self, res: Any, samples: list[tuple[str, Tensor]], group: str | None = None
    ) -> dict[str, Any]:
        """Validation summary from an ``EvalResult``: the mean over test sets (or videos)."""
        avg = res.average
        if group is None:
            groups = {r["name"]: {"psnr": r["psnr"], "ssim": r["ssim"]} for r in res.rows}
        else:
            groups = {group: {"psnr": avg["psnr"], "ssim": avg["ssim"]}}
        self._val_samples = samples
        return {
            "psnr": avg["psnr"],
            "ssim": avg["ssim"],
            "groups": groups,
            "count": len(res.rows) if group else len(res.records),
        }

    def _record_validation(self) -> None:
        """Validate on rank 0, log, keep the best model; other ranks wait."""
        if self.dist.main and self.val_items:
            result = self.validate()
            self.last_val = result
            with (self.out / "val.jsonl").open("a") as fh:
                fh.write(json.dumps(result) + "\n")
            if self._writer is not None:
                self._writer.add_scalar("val/psnr", result["psnr"], self.step)
                self._writer.add_scalar("val/ssim", result["ssim"], self.step)
                for g, v in result["groups"].items():
                    self._writer.add_scalar(f"val_psnr/{g}", v["psnr"], self.step)
                for name, img in self._val_samples:
                    self._writer.add_image(f"samples/{name}", img.clamp(0, 1), self.step)
            if result["psnr"] > self.best_psnr:
                self.best_psnr = result["psnr"]
                checkpoint.save(
                    self.eval_model,
                    self.out / "model_best.safetensors",
                    step=self.step,
                    extra={**self._extra(), "val": result},
                )
            groups = ", ".join(f"{g} {v['psnr']:.2f}" for g, v in result["groups"].items())
            self._print(
                f"step {self.step}: val PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.4f}"
                + (f" ({groups})" if len(result["groups"]) > 1 else "")
            )
        self._barrier()

    # -- checkpoints -----------------------------------------------------------------------

    def _extra(self) -> dict[str, Any]:
        return {
            "kind": self.cfg.data.kind,
            "train_config": to_dict(self.cfg),
            "ema": self.ema is not None,
            **({"init": self.init_report.to_dict()} if self.init_report is not None else {}),
        }

    def save(self) -> None:
        """Write ``model_last.safetensors`` and ``state_last.pt`` (collective under DDP)."""
        rng = _rng_state()
        if self.dist.active:
            gathered: list[Any] = [None] * self.dist.world
            dist.all_gather_object(gathered, rng)
        else:
            gathered = [rng]
        if self.dist.main:
            checkpoint.save(
                self.eval_model, self.out / "model_last.safetensors", self.step, self._extra()
            )
            state = {
                "version": 1,
                "step": self.step,
                "epoch": self.stream.epoch,
                "batch_in_epoch": self.stream.batch,
                "world_size": self.dist.world,
                "model_config": self.model_cfg.to_dict(),
                "model": self.raw_model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "rng": gathered,
                "best_psnr": self.best_psnr,
                "skipped": self.skipped,
                "total_steps": self.total_steps,
            }
            checkpoint.atomic_write(self.out / "state_last.pt", lambda p: torch.save(state, p))
        self._barrier()

    def _load_state(self, path: Path) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for a truncated / foreign file
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise MofmeError(f"cannot read training state {path}: {reason}") from None
        try:
            self._apply_state(state, path)
        except MofmeError as e:
            if str(path) in str(e):
                raise
            raise MofmeError(f"{path}: {e}") from None
        except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError) as e:
            # A readable file with the wrong content (a missing key, a string step, a foreign
            # pickle-free dict): name the file, not the Python error deep inside.
            what = f"missing entry {e}" if isinstance(e, KeyError) else str(e).strip()
            what = what.splitlines()[0] if what else type(e).__name__
            raise MofmeError(
                f"{path} is not a usable mofme training state ({what}); start over with --overwrite"
            ) from None

    def _apply_state(self, state: Any, path: Path) -> None:
        """Restore model, optimizer, EMA, RNG and data position from a loaded ``state``."""
        if not isinstance(state, dict):
            raise MofmeError(f"{path} is not a mofme training state (no mapping inside)")
        # Through from_dict: fields added since the state was written take their defaults.
        ours = self.model_cfg.to_dict()
        theirs = ModelConfig.from_dict(dict(state["model_config"])).to_dict()
        ours.pop("expert_impl"), theirs.pop("expert_impl")
        diff = [f"{k}: {theirs.get(k)} -> {ours[k]}" for k in ours if ours[k] != theirs.get(k)]
        if diff:
            raise MofmeError(f"{path} was saved for another model config ({'; '.join(diff)})")
        self.raw_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if state["ema"] is not None:
                self.ema.load_state_dict(state["ema"])
            else:
                self.ema = ModelEMA(self.raw_model, self.cfg.train.ema)
        self.step = int(state["step"])
        self.best_psnr = float(state["best_psnr"])
        self.skipped = int(state["skipped"])
        self.stream.seek(int(state["epoch"]), int(state["batch_in_epoch"]))
        if int(state["world_size"]) == self.dist.world:
            _set_rng_state(state["rng"][self.dist.rank])
        else:
            self._print(
                f"warning: resuming a {state['world_size']}-rank run on {self.dist.world} ranks: "
                "the data order differs from an uninterrupted run"
            )
        if int(state["total_steps"]) != self.total_steps:
            self._print(
                f"note: total steps changed from {state['total_steps']} to {self.total_steps}; "
                "the learning-rate schedule follows the new total"
            )
        self._print(f"resumed {path} at step {self.step} (epoch {state['epoch']})")

    # -- logging ---------------------------------------------------------------------------

    def _log(self, means: dict[str, float], elapsed: float, rate: float) -> None:
        if not self.dist.main:
            return
        active = [float((w > 0).sum(-1).float().mean()) for w in self.raw_model.routing_weights()]
        record = {
            "step": self.step,
            "epoch": self.step / self.steps_per_epoch,
            **{k: round(v, 6) for k, v in means.items()},
            "active_experts": [round(a, 3) for a in active],
            "skipped": self.skipped,
            "steps_per_s": round(rate, 3),
            "elapsed_s": round(elapsed, 1),
        }
        with (self.out / "log.jsonl").open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for k, v in means.items():
                self._writer.add_scalar(f"train/{k}", v, self.step)
            self._writer.add_scalar("train/skipped", self.skipped, self.step)
            for i, a in enumerate(active):
                self._writer.add_scalar(f"routing/active_experts_layer{i}", a, self.step)

    # -- main loop -------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop_signal is not None:
            raise KeyboardInterrupt  # second signal: stop now
        self._stop_signal = signum
        self._print(
            f"{signal.Signals(signum).name}: finishing the current step, then saving a checkpoint"
        )

    def run(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train until ``total_steps`` (or step ``stop_after``, or a signal); save; return
        ``{"step", "loss", "val", "best_psnr", "skipped", "interrupted", "finished", "out"}``.
        """
        from tqdm import tqdm

        handlers: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, self._on_signal)
        t = self.cfg.train
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not (self.dist.main and self.progress),
            dynamic_ncols=True,
            desc="train",
        )
        if self.dist.main:
            n_params = sum(p.numel() for p in self.raw_model.parameters())
            self._print(
                f"training {'a video' if self.is_video else 'an image'} model ({n_params / 1e6:.2f} M params, "
                f"in_channels {self.model_cfg.in_channels}) on {len(self.train_set)} "  # type: ignore[arg-type]
                f"{'clips' if self.is_video else 'pairs'}: {self.total_steps} steps "
                f"({self.steps_per_epoch} per epoch), batch {t.batch_size} "
                f"over {self.dist.world} rank(s), device {self.device}; out: {self.out}"
            )
        interrupted: str | None = None
        sums: dict[str, float] = {}
        count = 0
        started = time.time()
        window_start, window_step = started, self.step
        last_loss = math.nan
        validated_at = -1
        try:
            while self.step < self.total_steps:
                info = self.train_step(next(self.stream))
                bar.update(1)
                if not info["skipped"]:
                    count += 1
                    for k in ("loss", "smooth_l1", "perceptual", "aux", "grad_norm"):
                        if k in info:
                            sums[k] = sums.get(k, 0.0) + info[k]
                    last_loss = info["loss"]
                bar.set_postfix(loss=f"{info['loss']:.4f}", lr=f"{info['lr']:.2e}", refresh=False)
                # Step 1, every log_every, and the last step of this run (finished, stopped
                # or interrupted): a short run still logs its start and its end.
                ending = (
                    self.step == self.total_steps
                    or info["stop"]
                    or (stop_after is not None and self.step >= stop_after)
                )
                if self.step % t.log_every == 0 or self.step == 1 or ending:
                    now = time.time()
                    means = {k: v / max(count, 1) for k, v in sums.items()}
                    means["lr"] = info["lr"]
                    rate = (self.step - window_step) / max(now - window_start, 1e-9)
                    self._log(means, now - started, rate)
                    sums, count = {}, 0
                    window_start, window_step = now, self.step
                if t.val_every and self.step % t.val_every == 0 and self.step < self.total_steps:
                    self._record_validation()
                    validated_at = self.step
                if t.ckpt_every and self.step % t.ckpt_every == 0 and self.step < self.total_steps:
                    self.save()
                if info["stop"]:
                    interrupted = signal.Signals(self._stop_signal or signal.SIGTERM).name
                    break
                if stop_after is not None and self.step >= stop_after:
                    break
            finished = self.step >= self.total_steps
            if finished and validated_at != self.step:
                self._record_validation()
            self.save()
        finally:
            bar.close()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            self.close()
        if interrupted:
            self._print(
                f"interrupted ({interrupted}) at step {self.step}: saved {self.out}/"
                f"model_last.safetensors and state_last.pt; continue with: "
                f"mofme train {self.out}/config.yaml --resume"
            )
        elif not finished:
            self._print(
                f"stopped at step {self.step}; continue with: "
                f"mofme train {self.out}/config.yaml --resume"
            )
        else:
            self._print(f"done: {self.step} steps; weights in {self.out}/model_last.safetensors")
        return {
            "step": self.step,
            "total_steps": self.total_steps,
            "loss": last_loss,
            "val": self.last_val,
            "best_psnr": self.best_psnr if math.isfinite(self.best_psnr) else None,
            "skipped": self.skipped,
            "interrupted": interrupted,
            "finished": finished,
            "out": str(self.out),
        }

    def close(self) -> None:
        """Flush logs and leave the process group (if this trainer created it)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.dist.created_group and dist.is_initialized():
            dist.destroy_process_group()
            self.dist.created_group = False
        if getattr(self, "_lock", None) is not None:
            self._unlock()


def train(
    cfg: TrainRunConfig,
    resume: bool = False,
    *,
    overwrite: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a model as ``cfg`` says; returns the final metrics (see :meth:`Trainer.run`).

    ``stop_after``: stop at that global step as if interrupted (state saved; resume later).
    """
    return Trainer(cfg, resume=resume, overwrite=overwrite, progress=progress).run(stop_after)
