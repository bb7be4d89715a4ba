"""Model checkpoints: one ``.safetensors`` file whose metadata holds the full config.

``load(path)`` rebuilds the model from that file alone. Writes are atomic (temp file in the same
folder, then ``os.replace``), so an interrupted save never leaves a truncated checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from mofme.errors import MofmeError
from mofme.model.config import ModelConfig
from mofme.model.net import MoFMENet

FORMAT = "mofme"
FORMAT_VERSION = "1"


def atomic_write(path: str | Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename the temp file onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates 0600 files; give the result the permissions of a normal new file.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save(
    model: MoFMENet, path: str | Path, step: int = 0, extra: dict[str, Any] | None = None
) -> None:
    """Write the weights and config of ``model`` to ``path`` (``.safetensors``)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.cfg.to_json(),
        "step": str(int(step)),
        "extra": json.dumps(extra or {}),
    }
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The decoded metadata of a checkpoint: ``{"config": ModelConfig, "step": int, "extra": dict}``."""
    path = Path(path)
    if not path.is_file():
        raise MofmeError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as sf:  # type: ignore[no-untyped-call]
            meta = sf.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise MofmeError(f"{path} is not a readable .safetensors checkpoint ({e})") from None
    if meta.get("format") != FORMAT or "config" not in meta:
        raise MofmeError(
            f"{path} is a safetensors file but not a mofme checkpoint (no model config)"
        )
    try:
        cfg = ModelConfig.from_dict(json.loads(meta["config"]))
    except (json.JSONDecodeError, TypeError) as e:
        raise MofmeError(f"{path}: corrupt model config in metadata ({e})") from None
    except MofmeError as e:
        raise MofmeError(f"{path}: {e}") from None
    return {
        "config": cfg,
        "step": int(meta.get("step", 0)),
        "extra": json.loads(meta.get("extra", "{}")),
    }


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise MofmeError(f"{path} is truncated or corrupt ({e})") from None
    for k, v in tensors.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise MofmeError(f"{path}: weight {k} contains NaN or inf")
    return tensors


def load_state(model: MoFMENet, path: str | Path) -> dict[str, Any]:
    """Load weights from ``path`` into an existing ``model``; the configs must match."""
    path = Path(path)
    meta = read_metadata(path)
    ours, theirs = model.cfg.to_dict(), meta["config"].to_dict()
    ours.pop("routing"), theirs.pop("routing")  # routing is a run-time choice
    ours.pop("expert_impl"), theirs.pop("expert_impl")
    diff = [f"{k}={theirs[k]} (model has {ours[k]})" for k in sorted(ours) if ours[k] != theirs[k]]
    if diff:
        raise MofmeError(f"checkpoint {path} was saved for a different model: {', '.join(diff)}")
    _load_tensors(model, _read_tensors(path), path)
    return meta


def _load_tensors(model: MoFMENet, tensors: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    bad_shape = [k for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    if missing or unexpected or bad_shape:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
        if bad_shape:
            k = bad_shape[0]
            parts.append(
                f"shape mismatch for {k}: file {tuple(tensors[k].shape)} vs model {tuple(expected[k].shape)}"
            )
        raise MofmeError(f"checkpoint {path} does not match its model config: {'; '.join(parts)}")
    model.load_state_dict(tensors, strict=True)


def load(path: str | Path, device: str | torch.device = "cpu") -> MoFMENet:
    """Rebuild a model (config from metadata, weights from tensors), in eval mode."""
    path = Path(path)
    meta = read_metadata(path)
    model = MoFMENet(meta["config"])
    _load_tensors(model, _read_tensors(path), path)
    model.step = meta["step"]  # type: ignore[attr-defined]
    model.extra = meta["extra"]  # type: ignore[attr-defined]
    return model.to(device).eval()
