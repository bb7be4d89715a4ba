"""Model configuration and the preset registry.

A ``ModelConfig`` fully describes a network: checkpoints store it as JSON so that a file
alone rebuilds its model. Presets are plain named configs; every field can be overridden.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mofme.config import from_dict
from mofme.errors import MofmeError

ROUTERS = ("linear", "uar")
SELECTIONS = ("topk", "topp", "dense")
EXPERT_IMPLS = ("sparse", "dense")
UNPATCH_KINDS = ("linear", "overlap")
UNPATCH_ORDERS = ("c p1 p2", "p1 p2 c")
INPUT_RANGES = ("unit", "signed")
BALANCE_LOSSES = ("switch", "cv2")


@dataclass
class RoutingConfig:
    """How router logits become sparse expert weights (switchable at run time)."""

    selection: str = "topk"  # topk | topp | dense
    k: int = 4  # topk: experts kept per token
    p: float = 0.6  # topp: keep the shortest prefix of sorted weights whose sum exceeds p
    k_min: int = 1  # topp: at least this many experts
    k_max: int | None = None  # topp: at most this many (None = all E)

    def check(self, num_experts: int) -> None:
        if self.selection not in SELECTIONS:
            raise MofmeError(
                f"unknown routing selection {self.selection!r}; use one of {SELECTIONS}"
            )
        if self.selection == "topk" and not 1 <= self.k <= num_experts:
            raise MofmeError(f"top-k routing needs 1 <= k <= {num_experts}, got k={self.k}")
        if self.selection == "topp":
            if not 0.0 <= self.p <= 1.0:
                raise MofmeError(f"top-p routing needs 0 <= p <= 1, got p={self.p}")
            k_max = num_experts if self.k_max is None else self.k_max
            if not 1 <= self.k_min <= k_max <= num_experts:
                raise MofmeError(
                    f"top-p routing needs 1 <= k_min <= k_max <= {num_experts}, "
                    f"got k_min={self.k_min}, k_max={self.k_max}"
                )

    @classmethod
    def from_spec(cls, spec: str) -> RoutingConfig:
        """The command-line spelling (``topk:4``, ...): the config loader accepts it too."""
        return parse_routing(spec)

    def describe(self) -> str:
        if self.selection == "topk":
            return f"topk:{self.k}"
        if self.selection == "topp":
            extra = (
                ""
                if (self.k_min == 1 and self.k_max is None)
                else f" (k in [{self.k_min}, {self.k_max or 'E'}])"
            )
            return f"topp:{self.p:g}{extra}"
        return "dense"


def parse_routing(spec: str) -> RoutingConfig:
    """Parse ``topk:4``, ``topp:0.6``, ``topp:0.6:1:4`` (p, k_min, k_max) or ``dense``."""
    parts = spec.strip().lower().split(":")
    try:
        if parts[0] == "dense" and len(parts) == 1:
            return RoutingConfig(selection="dense")
        if parts[0] == "topk" and len(parts) == 2:
            return RoutingConfig(selection="topk", k=int(parts[1]))
        if parts[0] == "topp" and 2 <= len(parts) <= 4:
            k_min = int(parts[2]) if len(parts) > 2 else 1
            k_max = int(parts[3]) if len(parts) > 3 else None
            return RoutingConfig(selection="topp", p=float(parts[1]), k_min=k_min, k_max=k_max)
    except ValueError:
        pass
    raise MofmeError(f"bad routing {spec!r}: use topk:K, topp:P[:KMIN[:KMAX]] or dense")


@dataclass
class ModelConfig:
    """Architecture of ``MoFMENet`` (SPEC §1-3)."""

    in_channels: int = 3  # 3 = image model, 6 = video model (frame ‖ previous restored frame)
    out_channels: int = 3
    dim: int = 384
    depth: int = 2
    num_experts: int = 16
    patch: int = 8
    heads: int = 8
    head_dim: int = 64
    head_channels: int = 32  # conv head width
    unpatch_channels: int = 128
    ffn_mult: int = 4
    dropout: float = 0.0  # FFN-adaptor dropout
    router: str = "linear"  # linear | uar
    uar_samples: int = 8  # S Monte-Carlo dropout passes of the UaR router
    uar_dropout: float = 0.2
    uar_tau: float = 10.0  # initial temperature of the UaR router (learned)
    expert_impl: str = "sparse"  # sparse (gather/scatter) | dense (reference)
    global_residual: bool = False
    # How tokens become pixels: "linear" (the paper: one Linear per token, pixel-shuffled; each
    # 8x8 block is computed from one token alone, so any error shows as a block grid) or
    # "overlap" (a transposed conv, kernel 2P stride P: every pixel blends the 4 nearest
    # tokens, which removes the grid on flat areas). The paper presets keep "linear".
    unpatch: str = "linear"
    # Add the conv head's full-resolution features to the unpatched features (a 1x1 conv,
    # zero at initialisation): pixel-level detail (a snowflake's edge, a streak's width) then
    # reaches the tail directly, not only through the D token features of its 8x8 block.
    # Off in the paper presets (the official network has no such path).
    head_skip: bool = False
    # Load-balancing loss of training (weight train.balance_weight): switch (E·Σ f_e·P_e − 1)
    # or cv2 (squared coefficients of variation of expert importance and load)
    balance_loss: str = "switch"
    # -- options that reproduce the official MoFME code exactly (the ``official`` preset) -----
    # Router slot 0 is the parameter-free GELU(y) of the shared base output instead of a FiLM
    # expert (the official forward reads ``ff_list[idx + 2]`` with ``ff_list = [LayerNorm,
    # basenet, GELU, expert_0, ...]``); slots 1..E-1 are FiLM experts, so E-1 exist.
    gelu_expert: bool = False
    # Feature order of the linear unpatch's output rows: "c p1 p2" (ours, pixel_shuffle's
    # order) or "p1 p2 c" (the official einops rearrange). Same function class; the order only
    # decides which row of the weight feeds which pixel, so converted weights map unchanged.
    unpatch_order: str = "c p1 p2"
    # What the first conv sees: "unit" = the [0, 1] input itself, "signed" = 2x - 1 (the
    # official data pipeline normalises to [-1, 1]). Inputs and outputs stay in [0, 1] either
    # way; folding 2x - 1 into the first conv is not exact at the zero-padded borders.
    input_range: str = "unit"
    attn_dropout: float = 0.0  # dropout after the attention output projection (official 0.1)
    ffn_out_dropout: float = 0.0  # dropout after the adaptor's last Linear (official 0.1)
    # Top-k keeps every expert whose logit ties with the k-th (the official KeepTopK masks
    # ``logit < k-th``), so a token may use more than k experts on exact ties.
    topk_ties: bool = False
    routing: RoutingConfig = field(default_factory=RoutingConfig)

    def validate(self) -> None:
        if self.router not in ROUTERS:
            raise MofmeError(f"unknown router {self.router!r}; use one of {ROUTERS}")
        if self.expert_impl not in EXPERT_IMPLS:
            raise MofmeError(f"unknown expert_impl {self.expert_impl!r}; use one of {EXPERT_IMPLS}")
        if self.unpatch not in UNPATCH_KINDS:
            raise MofmeError(f"unknown unpatch {self.unpatch!r}; use one of {UNPATCH_KINDS}")
        if self.unpatch == "overlap" and self.patch % 2:
            raise MofmeError(f"unpatch 'overlap' needs an even patch size, got {self.patch}")
        if self.unpatch_order not in UNPATCH_ORDERS:
            raise MofmeError(
                f"unknown unpatch_order {self.unpatch_order!r}; use one of {UNPATCH_ORDERS}"
            )
        if self.balance_loss not in BALANCE_LOSSES:
            raise MofmeError(
                f"unknown balance_loss {self.balance_loss!r}; use one of {BALANCE_LOSSES}"
            )
        if self.input_range not in INPUT_RANGES:
            raise MofmeError(f"unknown input_range {self.input_range!r}; use one of {INPUT_RANGES}")
        if self.gelu_expert and self.num_experts < 2:
            raise MofmeError(
                "gelu_expert needs num_experts >= 2 (slot 0 + at least one FiLM expert)"
            )
        for name in (
            "in_channels",
            "out_channels",
            "dim",
            "depth",
            "num_experts",
            "patch",
            "heads",
            "head_dim",
            "head_channels",
            "unpatch_channels",
            "ffn_mult",
            "uar_samples",
        ):
            if getattr(self, name) < 1:
                raise MofmeError(f"model config: {name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.uar_dropout < 1.0:
            raise MofmeError(f"model config: uar_dropout must be in [0, 1), got {self.uar_dropout}")
        for name in ("dropout", "attn_dropout", "ffn_out_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise MofmeError(
                    f"model config: {name} must be in [0, 1), got {getattr(self, name)}"
                )
        self.routing.check(self.num_experts)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Strictly typed, like a training config: checkpoint metadata is user input too (a
        config with ``"global_residual": "yes"`` or ``"dim": "64"`` is refused, not half-built);
        fields missing from an older file take their defaults."""
        return from_dict(cls, d, "model config")


PRESETS: dict[str, dict[str, Any]] = {
    # The paper's model (MoFME, AAAI 2024, Allweather).
    "paper": dict(dim=384, depth=2, num_experts=16, patch=8, routing=dict(selection="topk", k=4)),
    # CPU-trainable.
    "small": dict(dim=192, depth=2, num_experts=16, patch=8, routing=dict(selection="topk", k=4)),
    # Tests and the bundled demo weights.
    "tiny": dict(dim=64, depth=2, num_experts=8, patch=8, routing=dict(selection="topk", k=2)),
    # The network of the official code (RoyZry98/MoFME-Pytorch, ``--gate film --num-expert 16
    # --top-k 4``) exactly: GELU router slot 0 + 15 FiLM experts, (p1 p2 c) unpatch, 2x - 1
    # inputs, its dropouts, top-k with ties. ``mofme convert`` loads its checkpoints into it.
    "official": dict(
        dim=384,
        depth=2,
        num_experts=16,
        patch=8,
        gelu_expert=True,
        unpatch_order="p1 p2 c",
        input_range="signed",
        dropout=0.1,
        attn_dropout=0.1,
        ffn_out_dropout=0.1,
        topk_ties=True,
        routing=dict(selection="topk", k=4),
    ),
}


def build_config(
    base: Mapping[str, Any], overrides: Mapping[str, Any], where: str = "model config"
) -> ModelConfig:
    """``base`` (a preset, or a checkpoint's config, as a mapping) with ``overrides`` on top,
    through the strict loader. ``routing`` in ``overrides``: a mapping is merged over the
    base's, a spec such as ``topp:0.6`` or a ``RoutingConfig`` replaces it."""
    merged: dict[str, Any] = json.loads(json.dumps(dict(base)))  # no aliasing of PRESETS
    for key, value in overrides.items():
        if key == "routing" and isinstance(value, RoutingConfig):
            value = dataclasses.asdict(value)
        elif key == "routing" and isinstance(value, dict):
            value = {**merged.get("routing", {}), **value}
        merged[key] = value
    return from_dict(ModelConfig, merged, where)


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """Build a preset config; ``overrides`` replace fields (``routing`` may be a dict or spec)."""
    if name not in PRESETS:
        raise MofmeError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return build_config(PRESETS[name], overrides)
