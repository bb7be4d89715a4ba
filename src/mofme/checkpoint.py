"""Model checkpoints: one ``.safetensors`` file whose metadata holds the full config.

``load(path)`` rebuilds the model from that file alone. Writes are atomic (temp file in the same
folder, then ``os.replace``), so an interrupted save never leaves a truncated checkpoint.
"""

from __future__ import annotations

import json
import math
import os
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

#: Largest model (parameters) a checkpoint may describe unless raised with the environment
#: variable MOFME_MAX_PARAMS (0: no limit). 10^9 fp32 parameters are 4 GB, far beyond any
#: MoFME model (the paper's is about 10^7), so only forged or corrupt metadata reaches it.
DEFAULT_MAX_PARAMS = 1_000_000_000
_MAX_PARAMS_ENV = "MOFME_MAX_PARAMS"


def atomic_write(path: str | Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename the temp file onto ``path``
    (:func:`mofme.data.io.atomic_write`; safetensors' and torch.save's write errors count as
    I/O failures too).

    A failed write (full disk, read-only or missing folder, ...) raises ``MofmeError`` naming
    ``path``; the previous file, if any, is left as it was.
    """
    from mofme.data.io import atomic_write as _atomic_write

    _atomic_write(path, write, failure=_is_write_failure)


def _is_write_failure(e: BaseException) -> bool:
    """An I/O failure of a writer: OSError, safetensors' error, or torch.save's RuntimeError."""
    if isinstance(e, (OSError, SafetensorError)):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and (
        "PytorchStreamWriter" in text or "inline_container" in text or "file write failed" in text
    )


def _io_reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


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
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise MofmeError(f"{path}: corrupt model config in metadata ({e})") from None
    except MofmeError as e:
        raise MofmeError(f"{path}: {e}") from None
    # The other entries are user-editable text too: wrong content is one line naming the file.
    try:
        step = int(meta.get("step", "0"))
    except ValueError:
        raise MofmeError(
            f"{path}: corrupt metadata: step {meta['step']!r} is not a number"
        ) from None
    try:
        extra = json.loads(meta.get("extra", "{}"))
    except json.JSONDecodeError as e:
        raise MofmeError(f"{path}: corrupt metadata: extra is not valid JSON ({e})") from None
    if not isinstance(extra, dict):
        raise MofmeError(f"{path}: corrupt metadata: extra must be a JSON object")
    return {"config": cfg, "step": step, "extra": extra}


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise MofmeError(f"{path} is truncated or corrupt ({e})") from None
    for k, v in tensors.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise MofmeError(f"{path}: weight {k} contains NaN or inf")
    return tensors


def _check_layout(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], path: Path, side: str
) -> None:
    """Tensor names and shapes of a file (``found``) against what the model needs; one line
    naming the first missing, unexpected and mis-shaped tensor. ``side``: "model" or "config"."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    bad_shape = [k for k in expected if k in found and found[k] != expected[k]]
    if missing or unexpected or bad_shape:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
        if bad_shape:
            k = bad_shape[0]
            parts.append(f"shape mismatch for {k}: file {found[k]} vs {side} {expected[k]}")
        raise MofmeError(f"checkpoint {path} does not match its model config: {'; '.join(parts)}")


def _load_tensors(model: MoFMENet, tensors: dict[str, torch.Tensor], path: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    _check_layout(expected, {k: tuple(v.shape) for k, v in tensors.items()}, path, "model")
    model.load_state_dict(tensors, strict=True)


def max_params() -> int:
    """The model-size budget in parameters (``MOFME_MAX_PARAMS``; 0 = unlimited)."""
    text = os.environ.get(_MAX_PARAMS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PARAMS
    try:
        value = int(float(text))
    except (ValueError, OverflowError):
        value = -1
    if value < 0:
        raise MofmeError(f"bad {_MAX_PARAMS_ENV} value {text!r}: give a number of parameters")
    return value


def _header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from the safetensors header (no tensor data is read)."""
    try:
        with safe_open(str(path), framework="pt") as sf:  # type: ignore[no-untyped-call]
            return {k: tuple(sf.get_slice(k).get_shape()) for k in sf.keys()}  # noqa: SIM118 (a safe_open handle, not a dict)
    except (SafetensorError, OSError, ValueError) as e:
        raise MofmeError(f"{path} is not a readable .safetensors checkpoint ({e})") from None


def check_config(cfg: ModelConfig, path: str | Path) -> None:
    """Check a checkpoint's config against the tensors in its file before building the model.

    The metadata is only text: forged or corrupt, it could ask for a model of any size (dim
    10^6, depth 10^4) and building it would allocate without bound. So the number of blocks
    is compared with the file first (it decides how many modules are made), then the model is
    built on the ``meta`` device (shapes only, no memory) and every tensor shape compared, and
    the size checked against the budget (``MOFME_MAX_PARAMS``).
    """
    path = Path(path)
    shapes = _header_shapes(path)
    blocks = {k.split(".")[1] for k in shapes if k.startswith("blocks.")}
    if cfg.depth != len(blocks):
        raise MofmeError(
            f"checkpoint {path} does not match its model config: the metadata says depth="
            f"{cfg.depth}, the file holds {len(blocks)} blocks"
        )
    try:
        with torch.device("meta"):
            skeleton = MoFMENet(cfg)
    except MofmeError as e:
        raise MofmeError(f"{path}: {e}") from None
    except (ValueError, TypeError, RuntimeError, ZeroDivisionError) as e:
        raise MofmeError(f"{path}: the model config in its metadata is invalid ({e})") from None
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    n_params = sum(math.prod(shape) for shape in expected.values())
    limit = max_params()
    if limit and n_params > limit:
        raise MofmeError(
            f"checkpoint {path}: its config describes {n_params / 1e6:,.0f} M parameters, over "
            f"the model-size budget of {limit / 1e6:,.0f} M (raise it with {_MAX_PARAMS_ENV}=N)"
        )
    _check_layout(expected, shapes, path, "config")


def load(path: str | Path, device: str | torch.device = "cpu") -> MoFMENet:
    """Rebuild a model (config from metadata, weights from tensors), in eval mode.

    The config is checked against the file (``check_config``) before anything is built.
    """
    path = Path(path)
    meta = read_metadata(path)
    check_config(meta["config"], path)
    model = MoFMENet(meta["config"])
    _load_tensors(model, _read_tensors(path), path)
    model.step = meta["step"]  # type: ignore[attr-defined]
    model.extra = meta["extra"]  # type: ignore[attr-defined]
    return model.to(device).eval()
