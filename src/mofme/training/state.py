"""The training state (``OUT/state_last.pt``): everything ``--resume`` needs to continue a run
bit-exactly: raw weights, optimizer, scaler, EMA, the RNG states of every rank and the data
position. Written atomically by the main rank; read on every rank.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from mofme import checkpoint
from mofme.config import to_dict
from mofme.errors import MofmeError
from mofme.model.config import ModelConfig
from mofme.training.ema import ModelEMA

if TYPE_CHECKING:
    from mofme.train import Trainer

# Model fields a resumed run may change: they alter neither the weights nor what they compute
# at inference (expert_impl: an implementation choice; balance_loss: a training loss, which
# was a train.* setting before it became a model field).
RESUMABLE_CHANGES = ("expert_impl", "balance_loss")


def save_checkpoints(trainer: Trainer) -> None:
    """``model_last.safetensors`` and ``state_last.pt`` (collective under DDP: every rank's
    RNG state goes into the file; the main rank writes)."""
    rng = rng_state()
    if trainer.dist.active:
        gathered: list[Any] = [None] * trainer.dist.world
        dist.all_gather_object(gathered, rng)
    else:
        gathered = [rng]
    if trainer.dist.main:
        save_model(trainer, "model_last.safetensors")
        _save_state(trainer, gathered)


def save_model(trainer: Trainer, name: str, val: dict[str, Any] | None = None) -> None:
    """``OUT/name``: the model that is validated and shipped (EMA weights when enabled), with
    the run's config (and the validation result that chose it) in its metadata."""
    init = trainer.init_report
    extra = {
        "kind": trainer.cfg.data.kind,
        "train_config": to_dict(trainer.cfg),
        "ema": trainer.ema is not None,
        **({"init": init.to_dict()} if init is not None else {}),
        **({"val": val} if val is not None else {}),
    }
    checkpoint.save(trainer.eval_model, trainer.out / name, step=trainer.step, extra=extra)


def _save_state(trainer: Trainer, rng_per_rank: list[Any]) -> None:
    state = {
        "version": 1,
        "step": trainer.step,
        "epoch": trainer.stream.epoch,
        "batch_in_epoch": trainer.stream.batch,
        "world_size": trainer.dist.world,
        "model_config": trainer.model_cfg.to_dict(),
        "model": trainer.raw_model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
        "ema": trainer.ema.state_dict() if trainer.ema is not None else None,
        "rng": rng_per_rank,
        "best_psnr": trainer.best_psnr,
        "skipped": trainer.skipped,
        "total_steps": trainer.total_steps,
        "amp": trainer.cfg.train.amp,  # resolved (never "auto"): a resume keeps the choice
    }
    path = trainer.out / "state_last.pt"
    checkpoint.atomic_write(path, lambda p: torch.save(state, p))


def load_state(trainer: Trainer, path: Path) -> None:
    """Restore ``trainer`` from ``path``; any problem is one ``MofmeError`` naming the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a truncated / foreign file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MofmeError(f"cannot read training state {path}: {reason}") from None
    try:
        _apply_state(trainer, state, path)
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


def _apply_state(trainer: Trainer, state: Any, path: Path) -> None:
    if not isinstance(state, dict):
        raise MofmeError(f"{path} is not a mofme training state (no mapping inside)")
    # Through from_dict: fields added since the state was written take their defaults.
    ours = trainer.model_cfg.to_dict()
    theirs = ModelConfig.from_dict(dict(state["model_config"])).to_dict()
    for key in RESUMABLE_CHANGES:
        ours.pop(key), theirs.pop(key)
    diff = [f"{k}: {theirs.get(k)} -> {ours[k]}" for k in ours if ours[k] != theirs.get(k)]
    if diff:
        raise MofmeError(f"{path} was saved for another model config ({'; '.join(diff)})")
    trainer.raw_model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    if trainer.scaler is not None and state["scaler"] is not None:
        trainer.scaler.load_state_dict(state["scaler"])
    if trainer.ema is not None:
        if state["ema"] is not None:
            trainer.ema.load_state_dict(state["ema"])
        else:
            trainer.ema = ModelEMA(trainer.raw_model, trainer.cfg.train.ema)
    amp = state.get("amp")  # absent in states written before train.amp: auto
    trainer.resumed_amp = str(amp) if amp is not None else None
    trainer.step = int(state["step"])
    trainer.best_psnr = float(state["best_psnr"])
    trainer.skipped = int(state["skipped"])
    trainer.stream.seek(int(state["epoch"]), int(state["batch_in_epoch"]))
    if int(state["world_size"]) == trainer.dist.world:
        set_rng_state(state["rng"][trainer.dist.rank])
    else:
        trainer.note(
            f"warning: resuming a {state['world_size']}-rank run on {trainer.dist.world} "
            "ranks: the data order differs from an uninterrupted run"
        )
    if int(state["total_steps"]) != trainer.total_steps:
        trainer.note(
            f"note: total steps changed from {state['total_steps']} to {trainer.total_steps}; "
            "the learning-rate schedule follows the new total"
        )
    trainer.note(f"resumed {path} at step {trainer.step} (epoch {state['epoch']})")


# ---------------------------------------------------------------------------------- RNGs


def rng_state() -> dict[str, Any]:
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


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved (python's state comes back from the file as lists,
    which ``random.setstate`` refuses)."""
    random.setstate(_as_tuple(state["python"]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _as_tuple(x: Any) -> Any:  # nested lists -> nested tuples
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (every device) alike."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
