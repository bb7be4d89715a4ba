"""Feature-modulation experts (FME), routers and sparse dispatch (SPEC §1.4, §2, §3).

Per token ``x`` (the residual stream after attention), the FME layer computes

    y = LN(x);  y = GELU(W1 y) ⊙ (W2 y)                      shared base
    r = select(router(x))                                     sparse weights, (N, E)
    m = Σ_i r_i · (γ_i(y) ⊙ y + β_i(y))                       feature-modulation experts
    out = FFN(m)                                              shared adaptor

Experts cost in proportion to the tokens routed to them: tokens are gathered per expert, only
selected (token, expert) pairs are computed and the weighted results are scatter-added back.

Uncertainty-aware routing (UaR). The paper writes ``r = Σ⁻¹(l − μ) / ‖Σ⁻¹(l − μ)‖₂`` where
``l`` is a router output under dropout and ``μ, Σ`` the mean and (diagonal) covariance of S
Monte-Carlo dropout passes. Read literally, ``l − μ`` is the deviation of one noisy sample from
its own mean: zero-mean noise that says nothing about which expert suits the token; in eval
(no dropout) ``l = μ`` and the weights are ``0 / 0``. We instead use the *uncertainty-scaled
mean logit*: ``z = (μ − mean_e μ) / σ``, L2-normalised per token, times a learnable temperature
``τ``. Experts the router is confident about (large mean, small variance) get large logits;
noisy preferences are damped. The S dropout masks are a buffer, frozen for eval (deterministic
outputs, saved in checkpoints) and resampled at every training step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mofme.model.config import ModelConfig, RoutingConfig

# ---------------------------------------------------------------------------------------------
# Selection: logits (N, E) -> sparse weights (N, E) with exact zeros


def select_topk(logits: Tensor, k: int, ties: bool = False) -> Tensor:
    """Keep the k largest logits per token, softmax over them; others exactly 0. ``(N, E)``.

    ``ties=True`` keeps every logit equal to the k-th as well (the official ``KeepTopK``:
    logits below the k-th are set to -inf before the softmax), so a token can use more than k.
    """
    if ties:
        kth = logits.topk(k, dim=-1).values[..., -1:]
        return logits.masked_fill(logits < kth, float("-inf")).softmax(dim=-1)
    vals, idx = logits.topk(k, dim=-1)
    return torch.zeros_like(logits).scatter_(-1, idx, vals.softmax(dim=-1))


def select_topp(logits: Tensor, p: float, k_min: int = 1, k_max: int | None = None) -> Tensor:
    """Dynamic top-k: the shortest prefix of the sorted softmax whose sum exceeds ``p``.

    The prefix length is clamped to ``[k_min, k_max]`` and the kept weights renormalised.
    ``p -> 0`` gives top-1, ``p = 1`` keeps every expert. ``(N, E) -> (N, E)``.
    """
    num_experts = logits.shape[-1]
    k_max = num_experts if k_max is None else k_max
    probs = logits.softmax(dim=-1)
    if p >= 1.0:
        # The running sum never exceeds 1: all experts, up to k_max.
        count = torch.full(probs.shape[:-1], k_max, device=probs.device, dtype=torch.long)
    else:
        sorted_p, _ = probs.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(dim=-1) - sorted_p  # weight strictly before each position
        # Position j is needed while the prefix before it has not yet exceeded p.
        count = (before <= p).sum(dim=-1).clamp(k_min, k_max)
    order = probs.argsort(dim=-1, descending=True, stable=True)
    rank_kept = torch.arange(num_experts, device=probs.device) < count.unsqueeze(-1)
    keep = torch.zeros_like(rank_kept).scatter_(-1, order, rank_kept)
    kept = probs * keep
    return kept / kept.sum(dim=-1, keepdim=True)


def select(logits: Tensor, routing: RoutingConfig, topk_ties: bool = False) -> Tensor:
    """Apply a ``RoutingConfig`` to router logits ``(N, E)`` (``topk_ties``: see ``select_topk``)."""
    if routing.selection == "topk":
        return select_topk(logits, routing.k, ties=topk_ties)
    if routing.selection == "topp":
        return select_topp(logits, routing.p, routing.k_min, routing.k_max)
    return logits.softmax(dim=-1)


# ---------------------------------------------------------------------------------------------
# Routers: token x (N, D) -> logits (N, E), computed in fp32


class LinearRouter(nn.Module):
    def __init__(self, dim: int, num_experts: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, num_experts)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x.float(), self.proj.weight.float(), self.proj.bias.float())


class UncertaintyRouter(nn.Module):
    """Monte-Carlo-dropout router; see the module docstring for the formula and why."""

    def __init__(
        self, dim: int, num_experts: int, samples: int, dropout: float, tau: float
    ) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, num_experts)
        self.samples = samples
        self.dropout = dropout
        self.log_tau = nn.Parameter(torch.tensor(math.log(tau)))
        # Frozen eval masks, (S, D), saved with the model so eval is reproducible.
        self.register_buffer("masks", self._draw_masks(dim, torch.Generator().manual_seed(0)))

    def _draw_masks(self, dim: int, generator: torch.Generator | None = None) -> Tensor:
        keep = 1.0 - self.dropout
        device = None if generator is not None else self.proj.weight.device
        m = torch.rand(self.samples, dim, generator=generator, device=device) < keep
        return m.float() / keep

    def forward(self, x: Tensor) -> Tensor:
        x = x.float()
        masks = self._draw_masks(x.shape[-1]) if self.training else self.masks.float()
        w, b = self.proj.weight.float(), self.proj.bias.float()
        # (S, N, E): S router passes, each with its own dropout mask on the input features.
        logits = torch.stack([F.linear(x * m, w, b) for m in masks])
        mu = logits.mean(0)
        sigma = logits.var(0, unbiased=False).add(1e-6).sqrt()
        z = (mu - mu.mean(-1, keepdim=True)) / sigma
        z = F.normalize(z, dim=-1)
        return self.log_tau.exp() * z


# ---------------------------------------------------------------------------------------------
# Experts


class ModulationExperts(nn.Module):
    """E expert slots; a FiLM expert is ``γ_i(y) ⊙ y + β_i(y)`` with γ and β fused into one
    ``(2D, D)`` matrix each.

    ``gelu_slot=True`` (the official network): slot 0 is the parameter-free ``GELU(y)`` and
    slots 1..E-1 are FiLM experts, so ``weight`` holds E-1 experts; slot ``i`` uses
    ``weight[i - 1]``. Otherwise every slot is a FiLM expert and slot ``i`` uses ``weight[i]``.
    """

    def __init__(self, dim: int, num_experts: int, gelu_slot: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.num_experts = num_experts  # router slots
        self.gelu_slot = gelu_slot
        self.num_film = num_experts - int(gelu_slot)  # FiLM experts with parameters
        self.weight = nn.Parameter(torch.empty(self.num_film, 2 * dim, dim))
        self.bias = nn.Parameter(torch.empty(self.num_film, 2 * dim))
        bound = 1.0 / math.sqrt(dim)  # nn.Linear's default init, per expert
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def expert(self, i: int, y: Tensor) -> Tensor:
        """Output of expert slot ``i`` on tokens ``y`` ``(n, D) -> (n, D)``."""
        if self.gelu_slot:
            return F.gelu(y) if i == 0 else self.film(i - 1, y)
        return self.film(i, y)

    def film(self, j: int, y: Tensor) -> Tensor:
        """FiLM expert ``j`` (``weight[j]``): ``γ_j(y) ⊙ y + β_j(y)``, ``(n, D) -> (n, D)``."""
        gamma, beta = F.linear(y, self.weight[j], self.bias[j]).chunk(2, dim=-1)
        return gamma * y + beta

    def forward(self, y: Tensor, weights: Tensor, impl: str = "sparse") -> Tensor:
        """``Σ_i w_i · expert_i(y)`` for tokens ``y`` ``(N, D)`` and weights ``(N, E)``, in fp32."""
        if impl == "sparse":
            return self.forward_sparse(y, weights)
        return self.forward_dense(y, weights)

    def forward_dense(self, y: Tensor, weights: Tensor) -> Tensor:
        """Reference: every expert on every token, ``Σ_i w_i · expert_i(y)``. ``(N, D)``."""
        out = torch.zeros(y.shape, device=y.device, dtype=torch.float32)
        for i in range(self.num_experts):
            out += weights[:, i : i + 1] * self.expert(i, y).float()
        return out

    def forward_sparse(self, y: Tensor, weights: Tensor) -> Tensor:
        """Only the (token, expert) pairs with nonzero weight are computed. ``(N, D)``."""
        token_idx, expert_idx = weights.nonzero(as_tuple=True)
        order = expert_idx.argsort(stable=True)
        token_idx, expert_idx = token_idx[order], expert_idx[order]
        counts = torch.bincount(expert_idx, minlength=self.num_experts).tolist()
        out = torch.zeros(y.shape, device=y.device, dtype=torch.float32)
        for i, (tok, exp) in enumerate(zip(token_idx.split(counts), expert_idx.split(counts))):
            if tok.numel() == 0:
                continue
            w = weights[tok, exp].unsqueeze(-1)
            out.index_add_(0, tok, w * self.expert(i, y[tok]).float())
        return out


class FMELayer(nn.Module):
    """The FME layer: shared base, router, sparse experts, shared FFN adaptor."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dim, e = cfg.dim, cfg.num_experts
        self.norm = nn.LayerNorm(dim)
        self.base_gate = nn.Linear(dim, dim)  # W1
        self.base_value = nn.Linear(dim, dim)  # W2
        if cfg.router == "uar":
            self.router: nn.Module = UncertaintyRouter(
                dim, e, cfg.uar_samples, cfg.uar_dropout, cfg.uar_tau
            )
        else:
            self.router = LinearRouter(dim, e)
        self.experts = ModulationExperts(dim, e, gelu_slot=cfg.gelu_expert)
        ffn: list[nn.Module] = [
            nn.Linear(dim, cfg.ffn_mult * dim),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.ffn_mult * dim, dim),
        ]
        if cfg.ffn_out_dropout > 0:
            # Appended only when used, so the default module tree (and RNG use) is unchanged.
            ffn.append(nn.Dropout(cfg.ffn_out_dropout))
        self.ffn = nn.Sequential(*ffn)
        self.topk_ties = cfg.topk_ties
        self.routing = cfg.routing
        self.expert_impl = cfg.expert_impl
        self.balance_loss = cfg.balance_loss  # switch | cv2: what aux_loss() computes
        # Filled at every forward so statistics need no second pass:
        self.last_weights: Tensor | None = None  # (B, N, E), detached
        self.last_probs: Tensor | None = None  # (B, N, E) full softmax, with grad (for aux loss)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, N, D) -> (B, N, D)`` (the block adds the residual)."""
        b, n, d = x.shape
        flat = x.reshape(b * n, d)
        y = self.norm(flat)
        y = F.gelu(self.base_gate(y)) * self.base_value(y)
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = self.router(flat)  # fp32: low precision here changes which experts win
            weights = select(logits, self.routing, self.topk_ties)
        m = self.experts(y, weights, impl=self.expert_impl)
        self.last_weights = weights.detach().reshape(b, n, -1)
        self.last_probs = logits.softmax(-1).reshape(b, n, -1) if self.training else None
        return self.ffn(m.to(y.dtype)).reshape(b, n, d)

    def aux_loss(self) -> Tensor:
        """Load-balancing loss of the last forward (training only); 0 when perfectly balanced.

        ``switch``: ``E · Σ_e f_e · P_e`` − 1 (f = fraction of routed (token, expert) slots,
        P = mean router probability). ``cv2``: squared coefficient of variation of the
        per-expert importance (sum of weights) plus that of the load (token counts, via P).
        """
        if self.last_probs is None or self.last_weights is None:
            raise RuntimeError("aux_loss needs a training-mode forward pass first")
        probs = self.last_probs.reshape(-1, self.last_probs.shape[-1])
        used = (self.last_weights.reshape(-1, probs.shape[-1]) > 0).float()
        e = probs.shape[-1]
        if self.balance_loss == "cv2":

            def cv2(v: Tensor) -> Tensor:
                return v.var(unbiased=False) / (v.mean() ** 2 + 1e-10)

            return cv2(probs.sum(0)) + cv2(used.sum(0))
        frac = used.sum(0) / used.sum().clamp_min(1.0)
        return e * (frac * probs.mean(0)).sum() - 1.0
