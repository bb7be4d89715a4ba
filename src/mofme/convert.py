"""Official MoFME checkpoints (RoyZry98/MoFME-Pytorch) -> mofme checkpoints, exactly.

The official training code saves ``best_metric.pth`` / ``last_metric.pth`` as a pickled dict
``{"net": <the model object>, "arch": ..., "model_state_dict": ..., "epoch": ..., ...}``; under
DataParallel / DDP the state-dict keys start with ``module.``. We read it with
``torch.load(weights_only=True)``: nothing in the pickle is executed. The ``net`` entry names
the official classes; they are bound to an inert stand-in (:class:`_Inert`) that only absorbs
its state, so no official code is needed and none runs.

Official layout (``--gate film``), per encoder layer ``l`` under
``Img_Encoder.vision_transformer.transformer.layers.l.``::

    0.norm, 0.fn.to_qkv, 0.fn.to_out.0      pre-norm attention
    1.0                                     router Linear(dim, E) (then KeepTopK, softmax)
    2.0, 2.3                                adaptor Linear(dim, 4 dim), Linear(4 dim, dim)
    3.0                                     LayerNorm of the FME layer
    3.1.0.0, 3.1.1.0                        shared base W1 (GELU gate), W2
    3.2                                     GELU (no parameters): router slot 0
    3.{3+j}.expert.0 / .expert.1            expert_j: gamma, beta Linear(dim, dim)
    3.{3+j}.norm                            expert_j LayerNorm, never called

Its forward reads slot ``i`` as ``ff_list[i + 2]``, so slot 0 is the GELU, slots 1..E-1 are
``expert_0 .. expert_{E-2}`` and ``expert_{E-1}`` is never used. The converted model is the
``official`` preset (``gelu_expert``, ``unpatch_order="p1 p2 c"``, ``input_range="signed"``,
``topk_ties``): it takes images in [0, 1] and applies ``2x - 1`` inside, so
``mofme(x) == official(2x - 1)``. Dropped, with a report: the position embedding (built, never
added), the expert LayerNorms and the dead last expert.
"""

from __future__ import annotations

import math
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mofme.errors import MofmeError
from mofme.model.config import ModelConfig, get_preset

VIT = "Img_Encoder.vision_transformer."
LAYER = VIT + "transformer.layers."
_EXPERT_KEY = re.compile(re.escape(LAYER) + r"(\d+)\.3\.(\d+)\.(expert\.[01]|norm)\.(weight|bias)$")
# Official ResBlocks are ``body = [conv, ReLU, conv]``; ours name the two convs.
_RES = {"body.0": "conv1", "body.2": "conv2"}


class _Inert:
    """Stand-in for every class a pickled official model object names: accepts any
    construction arguments and any state and does nothing with them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def read_official(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The state dict of an official checkpoint (``module.`` prefixes removed) and the
    checkpoint's scalar fields (``epoch``, ``psnr``, ``ssim``, ``arch`` when present)."""
    path = Path(path)
    if not path.is_file():
        raise MofmeError(f"official checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as first:
        # A full official checkpoint also pickles the model object (``net``): bind the classes
        # it names to an inert stand-in. ``get_unsafe_globals_in_checkpoint`` only reads names.
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            with torch.serialization.safe_globals([(_Inert, n) for n in names]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            raise MofmeError(
                f"{path} is not a readable PyTorch checkpoint ({str(first).splitlines()[0]})"
            ) from None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise MofmeError(f"{path} is not a readable PyTorch checkpoint ({e})") from None
    state = _find_state_dict(obj, path)
    info = {}
    if isinstance(obj, dict):
        for k in ("arch", "epoch", "psnr", "ssim"):
            v = obj.get(k)
            if isinstance(v, (str, int, float)):
                info[k] = v
    return state, info


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def _find_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    candidates = [obj]
    if isinstance(obj, dict):
        candidates = [obj.get(k) for k in ("model_state_dict", "state_dict", "model")] + [obj]
    for c in candidates:
        if _is_state_dict(c):
            state = dict(c)
            # DataParallel / DDP save every key under ``module.`` (possibly more than once).
            while state and all(k.startswith("module.") for k in state):
                state = {k[len("module.") :]: v for k, v in state.items()}
            return state
    keys = sorted(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
    raise MofmeError(
        f"{path} holds no state dict (expected a dict of tensors or a 'model_state_dict' entry; "
        f"found {keys})"
    )


# ------------------------------------------------------------------------------------ config


def _shape(state: dict[str, Tensor], key: str, path: Path | str) -> tuple[int, ...]:
    if key not in state:
        raise MofmeError(
            f"{path} is not an official MoFME (--gate film) state dict: no tensor {key!r}"
        )
    return tuple(state[key].shape)


def expert_counts(state: dict[str, Tensor]) -> dict[int, int]:
    """Experts per encoder layer, ``{layer: count}`` (from the ``expert.0`` tensors)."""
    found: dict[int, set[int]] = {}
    for k in state:
        m = _EXPERT_KEY.match(k)
        if m and m.group(3) == "expert.0":
            found.setdefault(int(m.group(1)), set()).add(int(m.group(2)) - 3)
    return {layer: len(js) for layer, js in sorted(found.items())}


def official_config(
    state: dict[str, Tensor],
    top_k: int = 4,
    experts: int | None = None,
    path: Path | str = "state dict",
) -> ModelConfig:
    """The ``official``-preset ``ModelConfig`` whose shapes match an official state dict.

    ``top_k`` is not stored in official checkpoints (a command-line flag there; 0 = dense).
    ``experts``: the expert count the caller expects; a different count is an error.
    """
    for key in ("head.0.weight", "patch_embed_to_img_feature.0.weight"):
        _shape(state, key, path)
    if not any(k.startswith(LAYER) for k in state):
        raise MofmeError(f"{path} is not an official MoFME state dict: no transformer layers")
    counts = expert_counts(state)
    if not counts:
        raise MofmeError(
            f"{path} has no FiLM experts: an official baseline (no --moe-enable) or another "
            "gate, not MoFME (--gate film)"
        )
    if len(set(counts.values())) > 1:
        per = ", ".join(f"layer {i}: {c}" for i, c in counts.items())
        raise MofmeError(f"{path}: the layers have different expert counts ({per})")
    n = next(iter(counts.values()))
    if experts is not None and n != experts:
        raise MofmeError(f"{path} has {n} experts per layer, expected {experts}")
    if n < 2:
        raise MofmeError(f"{path} has {n} expert per layer; MoFME needs at least 2")
    depth = len(counts)
    dim, head_ch, patch, _ = _shape(state, VIT + "to_patch_embedding.proj.weight", path)
    head_out, in_ch, _, _ = _shape(state, "head.0.weight", path)
    rows, _ = _shape(state, "patch_embed_to_img_feature.0.weight", path)
    out_ch = _shape(state, "tail.4.weight", path)[0]
    inner = _shape(state, LAYER + "0.0.fn.to_qkv.weight", path)[0] // 3
    mlp = _shape(state, LAYER + "0.2.0.weight", path)[0]
    if head_out != head_ch or rows % (patch * patch) or mlp % dim or inner % 8:
        raise MofmeError(f"{path}: tensor shapes do not fit the official MoFME network")
    if top_k < 0 or top_k > n:
        raise MofmeError(f"--top-k {top_k} is out of range for {n} experts (0 = dense)")
    routing = dict(selection="topk", k=top_k) if top_k else dict(selection="dense")
    return get_preset(
        "official",
        in_channels=in_ch,
        out_channels=out_ch,
        dim=dim,
        depth=depth,
        num_experts=n,
        patch=patch,
        heads=8,  # fixed in the official code (n_heads=8); inner = heads x head_dim
        head_dim=inner // 8,
        head_channels=head_ch,
        unpatch_channels=rows // (patch * patch),
        ffn_mult=mlp // dim,
        routing=routing,
    )


# ----------------------------------------------------------------------------------- mapping


@dataclass
class Conversion:
    """Result of :func:`convert_state_dict`: mofme tensors plus what was dropped."""

    tensors: dict[str, Tensor]
    config: ModelConfig
    dropped: dict[str, list[str]] = field(default_factory=dict)  # reason -> official keys

    def dropped_params(self, state: dict[str, Tensor]) -> int:
        return sum(state[k].numel() for keys in self.dropped.values() for k in keys)

    def summary(self, state: dict[str, Tensor]) -> str:
        """One line: what was converted and what was dropped (and why)."""
        n_params = sum(v.numel() for v in self.tensors.values())
        parts = []
        for reason, keys in self.dropped.items():
            count = sum(state[k].numel() for k in keys)
            parts.append(f"{reason} ({count:,})")
        dropped = "; dropped, unused by the official forward: " + ", ".join(parts) if parts else ""
        return f"{len(self.tensors)} tensors, {n_params:,} params{dropped}"


def _map_resblock(prefix_in: str, prefix_out: str, state: dict[str, Tensor], out: dict) -> None:
    for theirs, ours in _RES.items():
        for kind in ("weight", "bias"):
            out[f"{prefix_out}.{ours}.{kind}"] = state[f"{prefix_in}.{theirs}.{kind}"]


def convert_state_dict(
    state: dict[str, Tensor], cfg: ModelConfig, path: Path | str = "state dict"
) -> Conversion:
    """Map every tensor of an official state dict onto a mofme ``cfg`` model (``official``
    layout). Unknown or missing tensors are errors; unused ones are reported as dropped."""
    out: dict[str, Tensor] = {}
    used: set[str] = set()

    def take(theirs: str, ours: str) -> None:
        if theirs not in state:
            raise MofmeError(f"{path}: missing tensor {theirs!r} of the official network")
        out[ours] = state[theirs]
        used.add(theirs)

    def linear(theirs: str, ours: str, bias: bool = True) -> None:
        take(f"{theirs}.weight", f"{ours}.weight")
        if bias:
            take(f"{theirs}.bias", f"{ours}.bias")

    linear("head.0", "head.0")
    for i in (1, 2):
        for theirs, ours in _RES.items():
            linear(f"head.{i}.{theirs}", f"head.{i}.{ours}")
    linear(VIT + "to_patch_embedding.proj", "embed")
    linear(VIT + "to_patch_embedding.norm", "embed_norm")
    e, dropped_experts, expert_norms = cfg.num_experts, [], []
    for layer in range(cfg.depth):
        p, b = f"{LAYER}{layer}.", f"blocks.{layer}."
        linear(p + "0.norm", b + "norm")
        linear(p + "0.fn.to_qkv", b + "attn.qkv", bias=False)
        linear(p + "0.fn.to_out.0", b + "attn.out")
        linear(p + "1.0", b + "fme.router.proj")
        linear(p + "2.0", b + "fme.ffn.0")
        linear(p + "2.3", b + "fme.ffn.3")
        linear(p + "3.0", b + "fme.norm")
        linear(p + "3.1.0.0", b + "fme.base_gate")
        linear(p + "3.1.1.0", b + "fme.base_value")
        # Router slot i >= 1 is expert_{i-1} (module index i + 2); gamma rows then beta rows,
        # as our fused Linear(D, 2D) splits them.
        weights, biases = [], []
        for j in range(e):
            q = f"{p}3.{3 + j}."
            keys = [q + f"expert.{g}.{kind}" for g in (0, 1) for kind in ("weight", "bias")]
            for k in keys:
                if k not in state:
                    raise MofmeError(f"{path}: missing tensor {k!r} of the official network")
            if j == e - 1:  # never read by the official forward
                dropped_experts += keys
            else:
                weights.append(torch.cat([state[keys[0]], state[keys[2]]], 0))
                biases.append(torch.cat([state[keys[1]], state[keys[3]]], 0))
            used.update(keys)
            for kind in ("weight", "bias"):
                if q + f"norm.{kind}" in state:
                    expert_norms.append(q + f"norm.{kind}")
        out[b + "fme.experts.weight"] = torch.stack(weights)
        out[b + "fme.experts.bias"] = torch.stack(biases)
    linear("patch_embed_to_img_feature.0", "unpatch")
    # Official tail: [Upsampler(scale 1) = empty, ResBlock, conv, ResBlock, conv, Sigmoid].
    for i, ours in ((1, 0), (3, 2)):
        for theirs, name in _RES.items():
            linear(f"tail.{i}.{theirs}", f"tail.{ours}.{name}")
    linear("tail.2", "tail.1")
    linear("tail.4", "tail.3")

    pos = [k for k in state if k == VIT + "img_pos_embedding"]
    used.update(pos, expert_norms)
    unknown = sorted(set(state) - used)
    if unknown:
        raise MofmeError(
            f"{path}: {len(unknown)} tensor(s) the official MoFME network does not have "
            f"(e.g. {unknown[0]!r}); is this a MoFME (--gate film) checkpoint?"
        )
    dropped: dict[str, list[str]] = {}
    if pos:
        dropped["position embedding"] = pos
    if expert_norms:
        dropped[f"{len(expert_norms) // 2} expert LayerNorms"] = expert_norms
    dropped[f"dead expert_{e - 1} x {cfg.depth}"] = dropped_experts
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in out.items()}
    return Conversion(tensors, cfg, dropped)


def convert(
    src: str | Path,
    dst: str | Path,
    top_k: int = 4,
    experts: int | None = None,
    overwrite: bool = False,
) -> tuple[Conversion, str]:
    """Convert ``src`` (official ``.pth``) to the mofme checkpoint ``dst``; returns the
    conversion and its one-line report."""
    from mofme import checkpoint
    from mofme.model.net import MoFMENet

    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve():
        raise MofmeError("the output would replace the input; give another output path")
    if dst.exists() and not overwrite:
        raise MofmeError(f"{dst} exists; pass --overwrite to replace it")
    state, info = read_official(src)
    cfg = official_config(state, top_k=top_k, experts=experts, path=src)
    conv = convert_state_dict(state, cfg, path=src)
    model = MoFMENet(cfg)
    try:
        model.load_state_dict(conv.tensors, strict=True)
    except RuntimeError as e:
        raise MofmeError(f"{src}: {str(e).splitlines()[0]}") from None
    for k, v in conv.tensors.items():
        if not bool(torch.isfinite(v).all()):
            raise MofmeError(f"{src}: weight {k} contains NaN or inf")
    extra = {
        "kind": "image" if cfg.in_channels == 3 else "video",
        "converted_from": {"file": src.name, "format": "official MoFME (RoyZry98/MoFME-Pytorch)"}
        | info,
    }
    checkpoint.save(model, dst, step=0, extra=extra)
    return conv, conv.summary(state)


# ------------------------------------------------------------------------- parameter counts


def official_param_count(cfg: ModelConfig, size_hw: tuple[int, int]) -> dict[str, int]:
    """Parameters the official code would count for the network ``cfg`` (``gelu_expert``)
    built for ``size_hw`` inputs: ``ours`` + the tensors it builds but never uses.

    ``position_embedding``: ``(H/P)·(W/P)·dim`` (it depends on the input size, official models
    are built for one size); ``expert_layernorms``: ``2·dim`` per expert per layer;
    ``dead_expert``: one FiLM expert ``2·(dim² + dim)`` per layer.
    """
    if not cfg.gelu_expert:
        raise MofmeError("official_param_count needs a gelu_expert config (the official preset)")
    from mofme.model.net import MoFMENet

    ours = sum(p.numel() for p in MoFMENet(cfg).parameters())
    h, w = size_hw
    d, e = cfg.dim, cfg.num_experts
    tokens = math.ceil(h / cfg.patch) * math.ceil(w / cfg.patch)
    unused = {
        "position_embedding": tokens * d,
        "expert_layernorms": cfg.depth * e * 2 * d,
        "dead_expert": cfg.depth * 2 * (d * d + d),
    }
    return {"ours": ours, **unused, "official": ours + sum(unused.values())}
