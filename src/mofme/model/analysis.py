"""Parameter and FLOP accounting for ``MoFMENet`` (used by ``mofme info``, ``test``, ``bench``).

FLOPs are counted by ``torch.utils.flop_counter`` on a real forward pass, so the sparse
expert path is counted as executed (only routed tokens), and attention is included. The
counter counts matmuls, convolutions and attention (2 FLOPs per multiply-add); elementwise ops,
norms and activations are not counted (they are < 2 % here).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from mofme.model.net import MoFMENet

PARTS = ("head", "embed", "attention", "fme_base", "router", "experts", "ffn", "unpatch", "tail")


def _part_of(name: str) -> str:
    if name.startswith("head."):
        return "head"
    if name.startswith(("embed.", "embed_norm.")):
        return "embed"
    if name.startswith(("unpatch.", "skip.")):
        return "unpatch"
    if name.startswith("tail."):
        return "tail"
    if ".attn." in name or (
        name.startswith("blocks.") and ".norm." in name and ".fme." not in name
    ):
        return "attention"
    if ".fme.router." in name:
        return "router"
    if ".fme.experts." in name:
        return "experts"
    if ".fme.ffn." in name:
        return "ffn"
    return "fme_base"


def active_experts(weights: Tensor) -> Tensor:
    """Experts with a nonzero routing weight, per token: ``(..., E)`` -> ``(...)`` (int64).

    The one count of "active experts" (evaluation, routing statistics, bench, training logs).
    """
    return (weights > 0).sum(-1)


def mean_active_experts(weights_per_layer: Sequence[Tensor]) -> float:
    """Active experts per token, averaged over the tokens of each layer, then over layers."""
    active = [float(active_experts(w).float().mean()) for w in weights_per_layer]
    return sum(active) / max(len(active), 1)


def param_counts(model: MoFMENet) -> dict[str, int]:
    """Parameters per part (see ``PARTS``) plus ``total``."""
    counts = dict.fromkeys(PARTS, 0)
    for name, p in model.named_parameters():
        counts[_part_of(name)] += p.numel()
    counts["total"] = sum(counts[k] for k in PARTS)
    return counts


def active_params_per_token(model: MoFMENet, mean_active_experts: float | None = None) -> float:
    """Parameters a token touches: everything except the experts it is not routed to."""
    counts = param_counts(model)
    e = model.cfg.num_experts
    r = model.cfg.routing
    if mean_active_experts is None:
        mean_active_experts = {"topk": r.k, "dense": e}.get(r.selection, float("nan"))
    return counts["total"] - counts["experts"] * (1 - mean_active_experts / e)


@dataclass
class FlopReport:
    total: float  # FLOPs of one forward pass
    parts: dict[
        str, float
    ]  # head / encoder (attention+fme_base+router+ffn) / experts / unpatch / tail
    mean_active_experts: float


def count_flops(
    model: MoFMENet, size_hw: tuple[int, int], batch: int = 1, seed: int = 0
) -> FlopReport:
    """FLOPs of one forward pass at ``size_hw`` on a random input (routing as configured)."""
    h, w = size_hw
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    x = torch.rand(batch, model.cfg.in_channels, h, w, generator=gen).to(device)
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, depth=None)
    with torch.no_grad(), counter:
        model(x)
    model.train(was_training)
    per_module = counter.get_flop_counts()

    def flops(prefix: str) -> float:
        return float(sum(per_module.get(prefix, {}).values()))

    total = flops("Global")
    # PyTorch's counter has no formula for the CPU fused-attention kernel: add QKᵀ and AV
    # (2 matmuls of 2·N²·head_dim FLOPs per head) analytically when it counted none.
    counted_attention = any("scaled_dot_product" in str(op) for op in per_module.get("Global", {}))
    attention = 0.0
    if not counted_attention:
        cfg = model.cfg
        n = math.ceil(h / cfg.patch) * math.ceil(w / cfg.patch)
        attention = cfg.depth * batch * cfg.heads * 4.0 * n * n * cfg.head_dim
        total += attention
    parts = {"head": flops("MoFMENet.head"), "embed": flops("MoFMENet.embed")}
    experts = sum(flops(f"MoFMENet.blocks.{i}.fme.experts") for i in range(model.cfg.depth))
    blocks = sum(flops(f"MoFMENet.blocks.{i}") for i in range(model.cfg.depth))
    parts["encoder"] = blocks - experts + attention
    parts["experts"] = experts
    parts["unpatch"] = flops("MoFMENet.unpatch") + flops("MoFMENet.skip")
    parts["tail"] = flops("MoFMENet.tail")
    return FlopReport(total, parts, mean_active_experts(model.routing_weights()))
