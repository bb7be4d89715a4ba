"""Training: image models on paired crops, video models on clips with a reference frame.

One plain loop, no framework (SPEC §4, §7, §8). This module is the loop (:class:`Trainer`);
its pieces live in ``mofme.training``: ``config`` (the typed config), ``sampling`` (data order
and per-item randomness), ``data`` (training set, validation items), ``video`` (the reference
frame), ``ema``, ``state`` (``state_last.pt`` and RNG states), ``rundir`` (the locked run
folder), ``logs`` (log.jsonl, val.jsonl, TensorBoard) and ``validation``. It stays one file of
about 650 lines on purpose: the loop is read top to bottom (build, step, validate, save, run),
and splitting it further would make a reader jump between files for one training step.

* **Config**: :class:`TrainRunConfig` (sections ``model``, ``data``, ``train``, ``video``,
  ``out``), loaded strictly from YAML with ``--set key=value`` overrides (:func:`load_config`).
  ``model`` is written as a preset name plus any ``ModelConfig`` field as an override.
* **Optimisation**: AdamW; learning rate from :func:`lr_at` (linear warm-up, then cosine down
  to ``min_lr``), set by hand at every step so a resumed run follows the same curve; gradient
  clipping after backward (unscaled first under fp16); optional bf16 / fp16 autocast
  (``train.amp: auto``: bf16 where this machine measures it faster, ``training.precision``,
  resolved once and kept on resume); optional EMA of the weights (the EMA weights become the
  saved model).
* **Loss**: ``RestorationLoss`` (SmoothL1 + λ·VGG16) plus ``balance_weight`` × the model's
  load-balancing loss (``model.balance_loss``). The balancing loss is always logged, even at
  weight 0.
* **Video** (``data.kind: video``): clips ``(B, T, 3, H, W)``. A 6-channel model sees
  ``[frame_t, reference_t]``; frame 0 gets zeros, later frames get the model's own detached
  output for frame t-1 (``video.reference: prediction``, what inference sees), the previous
  ground truth (``teacher``) or zeros (``none``); with probability ``zero_ref_prob`` a non-first
  frame gets zeros anyway (robustness to scene cuts). Each frame's loss is back-propagated as
  soon as it is computed (one frame's graph alive at a time), averaged over frames. A
  3-channel model on video data treats the frames as independent images (single-frame
  baseline).
* **Data order**: a fixed permutation per epoch and a generator per item, both seeded, so the
  data position is just ``(epoch, batch)`` (``training.sampling``).
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
import dataclasses
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import Tensor, nn

from mofme import checkpoint
from mofme.config import to_dict
from mofme.device import resolve_device
from mofme.errors import MofmeError
from mofme.inference.distributed import init_ranks
from mofme.model.analysis import active_experts
from mofme.model.net import MoFMENet
from mofme.training.config import (
    DataConfig,
    TrainConfig,
    TrainRunConfig,
    VideoConfig,
    config_reference,
    load_config,
    resolve_model,
)
from mofme.training.data import build_train_set, find_val_items, loader_workers
from mofme.training.ema import ModelEMA
from mofme.training.logs import LossWindow, RunLog, Window
from mofme.training.precision import resolve_auto, shown
from mofme.training.rundir import RUN_FILES, RunFolder
from mofme.training.sampling import DataStream, EpochBatchSampler, default_workers
from mofme.training.state import load_state, save_checkpoints, save_model, seed_everything
from mofme.training.validation import validate
from mofme.training.video import model_input

__all__ = [
    "RUN_FILES",
    "DataConfig",
    "DataStream",
    "EpochBatchSampler",
    "ModelEMA",
    "TrainConfig",
    "TrainRunConfig",
    "Trainer",
    "VideoConfig",
    "config_reference",
    "default_workers",
    "load_config",
    "lr_at",
    "model_input",
    "resolve_model",
    "train",
]

# Non-finite steps in a row after which training is declared diverged, even in skip mode.
MAX_NONFINITE_IN_ROW = 20
# A log window (starting at or after DATA_WAIT_AFTER) in which the loop waited for data more
# than this share of the time gets one warning per run: the loader does not keep up.
DATA_WAIT_WARN = 0.3
DATA_WAIT_AFTER = 50


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
        # Loaded configs are checked already; this catches one built or changed in code.
        cfg.validate()
        self.cfg = cfg
        t = cfg.train
        self.out = Path(cfg.out)
        # The torchrun process group and this rank's device: the same setup as inference.
        self.dist, self.device = init_ranks(resolve_device(t.device))
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
        self.folder = RunFolder(self.out, self.dist.main)
        self.folder.prepare(resume, overwrite)
        self._barrier()

        # The order below fixes which random numbers go where: keep it (resume, golden runs).
        seed_everything(t.seed)  # the same weights on every rank (DDP also broadcasts them)
        self.model_cfg = cfg.model
        self.raw_model = MoFMENet(self.model_cfg).to(self.device).train()
        trainable = self._init_and_freeze(resume)
        seed_everything(t.seed + 1 + self.dist.rank)  # per-rank dropout / UaR / zero references
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

        self.train_set = build_train_set(cfg, self.note)
        self.workers = loader_workers(cfg.data.workers, self.dist.world, self.note)
        self.stream = DataStream(
            self.train_set,
            self.batch_per_rank,
            self.dist.rank,
            self.dist.world,
            t.seed,
            self.workers,
            pin_memory=self.device.type == "cuda",
        )
        self.steps_per_epoch = self.stream.batches_per_epoch
        if t.steps is not None:
            self.total_steps = t.steps
        else:  # validate() made sure one of the two is set
            self.total_steps = max(1, round((t.epochs or 0.0) * self.steps_per_epoch))
        warmup = t.warmup_steps
        if warmup is None:
            warmup = round(t.warmup_epochs * self.steps_per_epoch)
        self.warmup_steps = min(warmup, self.total_steps)

        self.step = 0
        self.best_psnr = -math.inf
        self.skipped = 0
        self._nonfinite_in_row = 0
        self._stop_signal: int | None = None
        self.last_val: dict[str, Any] = {}
        self._val_samples: list[tuple[str, Tensor]] = []
        self._warned_data_wait = False
        self.resumed_amp: str | None = None  # set by load_state
        if resume:
            load_state(self, self.folder.state_path)
        amp_note = self._resolve_amp()  # self.cfg.train.amp is never "auto" from here on
        self.val_items = find_val_items(cfg) if self.dist.main else []
        self.log: RunLog | None = None
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            # The resolved amp goes into config.yaml: a resume from it runs the same way.
            text = amp_note + yaml.safe_dump(to_dict(self.cfg), sort_keys=False)
            checkpoint.atomic_write(self.out / "config.yaml", lambda p: Path(p).write_text(text))
            self.log = RunLog(self.out, t.tensorboard, self.step if resume else None)

    # -- construction ----------------------------------------------------------------------

    def _init_and_freeze(self, resume: bool) -> list[nn.Parameter]:
        """Fine-tuning: the ``train.init`` weights (not on resume: the state has the weights)
        and the frozen parts. Returns the parameters left to train."""
        from mofme.finetune import freeze, frozen_parts, init_from_checkpoint

        t = self.cfg.train
        self.init_report: Any = None
        if t.init and not resume:
            self.init_report = init_from_checkpoint(self.raw_model, t.init, t.init_strict)
            self.note(f"init: {self.init_report.summary()}")
        parts = frozen_parts(t.freeze, t.train_only)
        if parts:
            n_frozen = freeze(self.raw_model, parts)
            self.note(f"frozen: {', '.join(parts)} ({n_frozen:,} parameters)")
        trainable = [p for p in self.raw_model.parameters() if p.requires_grad]
        if not trainable:
            raise MofmeError("train: every part is frozen; nothing to train")
        return trainable

    def _resolve_amp(self) -> str:
        """``train.amp: auto`` -> ``bf16`` or ``none`` (a resumed run keeps its state's
        choice); ``self.cfg`` then holds the resolved value. Returns a comment line for
        ``config.yaml`` saying how it was chosen ("" when it was not auto)."""
        t = self.cfg.train
        resumed = self.resumed_amp
        if t.amp != "auto":
            if resumed is not None and resumed != t.amp:
                self.note(f"note: train.amp={t.amp}; the resumed run trained with {resumed} so far")
            return ""
        if resumed is not None and resumed != "auto":
            amp, why = resumed, "auto: kept from the resumed run"
        else:
            amp, why = self._probe_amp()
        if amp == "fp16" and self.device.type != "cuda":
            raise MofmeError("train.amp=fp16 needs a CUDA device (GradScaler); use bf16 on CPU")
        self.note(f"training precision {shown(amp)} ({why})")
        self.cfg = dataclasses.replace(self.cfg, train=dataclasses.replace(t, amp=amp))
        return f"# train.amp: auto resolved to {amp}: {why}\n"

    def _probe_amp(self) -> tuple[str, str]:
        """``resolve_auto`` on the main rank; every rank takes its answer (DDP on CPU)."""
        if not (self.dist.active and self.device.type == "cpu"):
            return resolve_auto(self.raw_model, self.device, self.note)
        box: list[Any] = [None]
        if self.dist.main:
            box[0] = resolve_auto(self.raw_model, self.device, self.note)
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _build_loss(self) -> nn.Module:
        from mofme.losses import RestorationLoss

        t = self.cfg.train
        weight = t.perceptual_weight
        if weight > 0 and t.vgg_weights is None:
            self.note(
                "note: perceptual (VGG16) term off: set train.vgg_weights to a local VGG16 "
                "file (e.g. torchvision's vgg16-397923af.pth) to enable it"
            )
            weight = 0.0
        return RestorationLoss(
            perceptual_weight=weight,
            vgg_weights=t.vgg_weights,
            speck_weight=t.speck_weight,
            smooth_l1_beta=t.smooth_l1_beta,
            weather_weight=t.weather_weight,
            weather_mask=t.weather_mask,
        )

    # -- helpers ---------------------------------------------------------------------------

    def note(self, msg: str) -> None:
        """A line for the user (main rank), printed above the progress bar."""
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
        lr = self.lr(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        parts, aux = self._forward_backward(batch)
        loss = parts["total"]
        grad_norm = self._clip_gradients()
        # Under fp16 an inf gradient is the GradScaler's business (it skips and lowers the
        # scale); without it, any non-finite value skips the step.
        bad = not math.isfinite(loss) or (self.scaler is None and not math.isfinite(grad_norm))
        bad, stop = self._agree(bad, self._stop_signal is not None)
        if bad:
            self._skip_update(loss, grad_norm)
        else:
            self._update()
        self.step += 1
        return {
            **parts,
            "loss": loss,
            "aux": aux,
            "lr": lr,
            "grad_norm": grad_norm,
            "skipped": bad,
            "stop": stop,
        }

    def _forward_backward(self, batch: dict[str, Any]) -> tuple[dict[str, float], float]:
        """Back-propagate every frame of ``batch``; the loss parts and the balancing loss,
        averaged over the frames."""
        bw = self.cfg.train.balance_weight
        x = batch["input"].to(self.device, non_blocking=True)
        gt = batch["gt"].to(self.device, non_blocking=True)
        uses_reference = x.ndim == 5 and self.model_cfg.in_channels == 6
        if x.ndim == 5 and not uses_reference:
            # Single-frame baseline: the frames of a clip are independent images.
            x, gt = x.flatten(0, 1), gt.flatten(0, 1)
        frames = x.shape[1] if uses_reference else 1
        sums: dict[str, float] = {}
        aux_sum = 0.0
        previous: Tensor | None = None
        for f in range(frames):
            if uses_reference:
                inp, target = self._reference_input(x, gt, f, previous), gt[:, f]
            else:
                inp, target = x, gt
            # Gradients are synchronised across ranks on the last frame's backward only.
            with self._grad_sync(f == frames - 1):
                pred, parts, aux = self._frame_loss(inp, target, frames)
            previous = pred.detach()
            aux_sum += aux
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
        means = {k: v / frames for k, v in sums.items()}
        if bw > 0:
            means["total"] += bw * aux_sum / frames
        return means, aux_sum / frames

    def _reference_input(self, x: Tensor, gt: Tensor, f: int, previous: Tensor | None) -> Tensor:
        """Frame ``f`` of the clips ``x`` with its reference channels (``video`` section)."""
        v = self.cfg.video
        previous_gt = gt[:, f - 1] if f > 0 else None
        return model_input(x[:, f], f, previous, previous_gt, v.reference, v.zero_ref_prob)

    def _frame_loss(
        self, inp: Tensor, target: Tensor, frames: int
    ) -> tuple[Tensor, dict[str, float], float]:
        """Forward and backward of one frame; ``(prediction, loss parts, balancing loss)``."""
        bw = self.cfg.train.balance_weight
        with self._autocast():
            pred = self.model(inp)
        loss, parts = self.criterion(pred, target, inp[:, :3])
        # The balancing loss comes from the routing the FME layers kept from this forward.
        if bw > 0:
            aux = self.raw_model.aux_loss()
            loss = loss + bw * aux
        else:
            with torch.no_grad():
                aux = self.raw_model.aux_loss()
        loss = loss / frames
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        return pred, parts, float(aux.detach())

    def _clip_gradients(self) -> float:
        """The gradient norm before clipping (fp16: after unscaling, so the limit is real)."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.train.grad_clip if self.cfg.train.grad_clip > 0 else math.inf
        return float(torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), max_norm))

    def _agree(self, bad: bool, stop: bool) -> tuple[bool, bool]:
        """Every rank must take the same decision (skip / stop), or the next collective hangs."""
        if not self.dist.active:
            return bad, stop
        flags = torch.tensor([float(bad), float(stop)], device=self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return bool(flags[0]), bool(flags[1])

    def _update(self) -> None:
        self._nonfinite_in_row = 0
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.raw_model)

    def _skip_update(self, loss: float, grad_norm: float) -> None:
        """A non-finite step: no update; stop when asked to, or when it keeps happening."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.update()  # unscale_ was called; this also lowers the scale
        if self.cfg.train.on_nonfinite == "stop":
            raise MofmeError(
                f"non-finite loss ({loss}) or gradient at step {self.step + 1}; "
                "check the data for NaN, lower train.lr, or set train.on_nonfinite=skip"
            )
        self.skipped += 1
        self._nonfinite_in_row += 1
        self.note(
            f"warning: step {self.step + 1}: non-finite loss ({loss:g}) or gradient "
            f"norm ({grad_norm:g}); step skipped ({self.skipped} so far)"
        )
        if self._nonfinite_in_row >= MAX_NONFINITE_IN_ROW:
            raise MofmeError(
                f"{MAX_NONFINITE_IN_ROW} non-finite steps in a row (step {self.step + 1}): "
                "training diverged; lower train.lr or check the data"
            )

    # -- validation and checkpoints ------------------------------------------------------------

    def validate(self) -> dict[str, Any]:
        """PSNR / SSIM (RGB, [0, 1]) of ``eval_model`` on the validation items (rank 0)."""
        if not self.val_items:
            return {}
        d = self.cfg.data
        result, self._val_samples = validate(
            self.eval_model, self.val_items, video=self.is_video, device=self.device,
            tile=d.val_tile, max_frames=d.val_max_images, samples=d.val_samples,
        )  # fmt: skip
        result["step"] = self.step
        return result

    def _record_validation(self) -> None:
        """Validate on rank 0, log, keep the best model; other ranks wait."""
        if self.dist.main and self.val_items:
            result = self.validate()
            self.last_val = result
            if self.log is not None:
                self.log.val(result, self._val_samples, self.step)
            if result["psnr"] > self.best_psnr:
                self.best_psnr = result["psnr"]
                save_model(self, "model_best.safetensors", val=result)
            groups = ", ".join(f"{g} {v['psnr']:.2f}" for g, v in result["groups"].items())
            self.note(
                f"step {self.step}: val PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.4f}"
                + (f" ({groups})" if len(result["groups"]) > 1 else "")
            )
        self._barrier()

    def save(self) -> None:
        """Write ``model_last.safetensors`` and ``state_last.pt`` (collective under DDP)."""
        save_checkpoints(self)
        self._barrier()

    def _log(self, w: Window) -> None:
        if self.log is not None:
            weights = self.raw_model.routing_weights()
            active = [float(active_experts(r).float().mean()) for r in weights]
            epoch = self.step / self.steps_per_epoch
            self.log.train(
                self.step, epoch, w.means, active, self.skipped, w.rate, w.elapsed,
                samples_per_s=w.rate * self.cfg.train.batch_size,
                data_wait=w.data_wait,
                amp=self.cfg.train.amp,
            )  # fmt: skip
        self._check_data_wait(w)

    def _check_data_wait(self, w: Window) -> None:
        """One warning per run when the loop waits for data most of a (post warm-up) window."""
        if self._warned_data_wait or w.first_step < DATA_WAIT_AFTER:
            return
        if w.data_wait > DATA_WAIT_WARN:
            from mofme.device import cpu_count

            self._warned_data_wait = True
            self.note(
                f"warning: steps {w.first_step}-{self.step}: the loop waited for the next batch "
                f"{w.data_wait:.0%} of the time (data.workers={self.workers}, "
                f"{cpu_count()} CPUs): the data loader does not keep up; raise data.workers, "
                "or use smaller data.crop / faster storage"
            )

    # -- main loop -------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop_signal is not None:
            raise KeyboardInterrupt  # second signal: stop now
        self._stop_signal = signum
        self.note(
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
        self._announce()
        interrupted: str | None = None
        window = LossWindow(self.step)
        speed: dict[str, str] = {}  # samples/s and data wait of the last log window
        last_loss = math.nan
        validated_at = -1
        try:
            while self.step < self.total_steps:
                waiting = time.perf_counter()
                batch = next(self.stream)
                window.add_wait(time.perf_counter() - waiting)
                info = self.train_step(batch)
                bar.update(1)
                window.add(info)
                if not info["skipped"]:
                    last_loss = info["loss"]
                shown_now = {"loss": f"{info['loss']:.4f}", "lr": f"{info['lr']:.2e}", **speed}
                bar.set_postfix(ordered_dict=shown_now, refresh=False)
                # Step 1, every log_every, and the last step of this run (finished, stopped
                # or interrupted): a short run still logs its start and its end.
                ending = (
                    self.step == self.total_steps
                    or info["stop"]
                    or (stop_after is not None and self.step >= stop_after)
                )
                if self.step % t.log_every == 0 or self.step == 1 or ending:
                    w = window.flush(self.step, info["lr"])
                    self._log(w)
                    speed = {
                        "samples/s": f"{w.rate * t.batch_size:.3g}",
                        "data_wait": f"{w.data_wait:.0%}",
                    }
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
        self._farewell(interrupted, finished)
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

    def _announce(self) -> None:
        if not self.dist.main:
            return
        t = self.cfg.train
        n_params = sum(p.numel() for p in self.raw_model.parameters())
        self.note(
            f"training {'a video' if self.is_video else 'an image'} model ({n_params / 1e6:.2f} M params, "
            f"in_channels {self.model_cfg.in_channels}) on {len(self.train_set)} "
            f"{'clips' if self.is_video else 'pairs'}: {self.total_steps} steps "
            f"({self.steps_per_epoch} per epoch), batch {t.batch_size} "
            f"over {self.dist.world} rank(s), device {self.device}, "
            f"precision {shown(t.amp)}, {self.workers} loader worker(s); out: {self.out}"
        )

    def _farewell(self, interrupted: str | None, finished: bool) -> None:
        resume = f"mofme train {self.out}/config.yaml --resume"
        if interrupted:
            self.note(
                f"interrupted ({interrupted}) at step {self.step}: saved {self.out}/"
                f"model_last.safetensors and state_last.pt; continue with: {resume}"
            )
        elif not finished:
            self.note(f"stopped at step {self.step}; continue with: {resume}")
        else:
            self.note(f"done: {self.step} steps; weights in {self.out}/model_last.safetensors")

    def close(self) -> None:
        """Flush logs and leave the process group (if this trainer created it)."""
        if self.log is not None:
            self.log.close()
        if self.dist.created_group and dist.is_initialized():
            dist.destroy_process_group()
            self.dist.created_group = False
        self.folder.release()


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
