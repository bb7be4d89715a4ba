"""MoFMENet: conv head -> patch tokens -> [MHSA + FME] × depth -> unpatch -> conv tail.

With ``head_skip`` the head's features also reach the tail directly (1x1 conv, added to the
unpatched features).

Shapes for an input ``(B, C_in, H, W)`` with patch ``P`` and width ``D``:
head ``(B, 32, H, W)`` -> tokens ``(B, N, D)``, ``N = ⌈H/P⌉·⌈W/P⌉`` -> unpatch
``(B, 128, H', W')`` -> tail ``(B, 3, H, W)`` in [0, 1]. Inputs are reflect-padded to a multiple
of ``P`` and the output cropped back, so any size works.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mofme.model.config import ModelConfig, RoutingConfig, get_preset, parse_routing
from mofme.model.moe import FMELayer


class ResBlock(nn.Module):
    """conv3x3 -> ReLU -> conv3x3, plus the input."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        # In place on the fresh conv outputs (autograd-safe: conv backward does not need its
        # output): same values, two fewer full-resolution buffers, ~10 % of a CPU forward.
        return self.conv2(F.relu(self.conv1(x), inplace=True)).add_(x)


class Attention(nn.Module):
    """Multi-head self-attention over all tokens, ``(B, N, D) -> (B, N, D)``."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.qkv = nn.Linear(dim, 3 * heads * head_dim, bias=False)
        self.out = nn.Linear(heads * head_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, N, head_dim)
        return self.out(y.transpose(1, 2).reshape(b, n, -1))


class Block(nn.Module):
    """``x + MHSA(LN(x))`` (dropout ``attn_dropout`` on the attention output), then ``+ FME``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(cfg.dim)
        self.attn = Attention(cfg.dim, cfg.heads, cfg.head_dim)
        self.attn_dropout = cfg.attn_dropout
        self.fme = FMELayer(cfg)

    def forward(self, x: Tensor) -> Tensor:
        a = self.attn(self.norm(x))
        if self.attn_dropout > 0:  # skipped at 0 so default models draw no random numbers
            a = F.dropout(a, self.attn_dropout, self.training)
        x = x + a
        return x + self.fme(x)


class MoFMENet(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        c = cfg.head_channels
        self.head = nn.Sequential(
            nn.Conv2d(cfg.in_channels, c, 3, padding=1), ResBlock(c), ResBlock(c)
        )
        self.embed = nn.Conv2d(c, cfg.dim, cfg.patch, stride=cfg.patch)
        self.embed_norm = nn.LayerNorm(cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        u = cfg.unpatch_channels
        if cfg.unpatch == "overlap":
            p = cfg.patch
            self.unpatch: nn.Module = nn.ConvTranspose2d(
                cfg.dim, u, 2 * p, stride=p, padding=p // 2
            )
        else:
            self.unpatch = nn.Linear(cfg.dim, cfg.patch * cfg.patch * u)
        # Optional full-resolution path head -> tail (cfg.head_skip), zero at initialisation
        # so that a model without it loads into one with it and computes the same function.
        self.skip = nn.Conv2d(c, u, 1) if cfg.head_skip else None
        if self.skip is not None:
            nn.init.zeros_(self.skip.weight)
            nn.init.zeros_(self.skip.bias)
        self.tail = nn.Sequential(
            ResBlock(u),
            nn.Conv2d(u, u // 2, 3, padding=1),
            ResBlock(u // 2),
            nn.Conv2d(u // 2, cfg.out_channels, 3, padding=1),
        )
        if cfg.global_residual and cfg.unpatch == "overlap":
            # Start as the identity (zero correction): a clean input is returned unchanged
            # before any training, and training only learns what weather needs removing.
            nn.init.zeros_(self.tail[-1].weight)
            nn.init.zeros_(self.tail[-1].bias)

    @classmethod
    def from_preset(cls, name: str, **overrides: object) -> MoFMENet:
        return cls(get_preset(name, **overrides))

    # -- routing controls --------------------------------------------------------------------

    @property
    def fme_layers(self) -> list[FMELayer]:
        return [blk.fme for blk in self.blocks]

    def set_routing(
        self, selection: str | RoutingConfig = "topk", **kw: float | int | None
    ) -> None:
        """Switch expert selection at run time, e.g. ``set_routing("topp", p=0.6)``,
        ``set_routing("topk", k=4)``, ``set_routing("dense")`` or ``set_routing("topp:0.6")``."""
        if isinstance(selection, RoutingConfig):
            routing = selection
        elif ":" in selection or (selection == "dense" and not kw):
            routing = parse_routing(selection)
        else:
            routing = RoutingConfig(selection=selection, **kw)  # type: ignore[arg-type]
        routing.check(self.cfg.num_experts)
        self.cfg.routing = routing
        for layer in self.fme_layers:
            layer.routing = routing

    def set_expert_impl(self, impl: str) -> None:
        """``sparse`` (gather/scatter, the default) or ``dense`` (reference)."""
        if impl not in ("sparse", "dense"):
            raise ValueError(f"expert_impl must be 'sparse' or 'dense', got {impl!r}")
        self.cfg.expert_impl = impl
        for layer in self.fme_layers:
            layer.expert_impl = impl

    @contextmanager
    def routing(self, spec: str) -> Iterator[None]:
        """Temporarily use another routing: ``with model.routing("topp:0.6"): ...``."""
        old = self.cfg.routing
        self.set_routing(spec)
        try:
            yield
        finally:
            self.set_routing(old)

    def routing_weights(self) -> list[Tensor]:
        """Per layer, the sparse weights ``(B, N, E)`` of the last forward pass."""
        return [layer.last_weights for layer in self.fme_layers if layer.last_weights is not None]

    def aux_loss(self) -> Tensor:
        """Mean load-balancing loss over the FME layers (last training forward)."""
        return torch.stack([layer.aux_loss() for layer in self.fme_layers]).mean()

    # -- forward ---------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C_in, H, W)`` in [0, 1] -> ``(B, 3, H, W)`` in [0, 1]."""
        if x.ndim != 4 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(
                f"expected input (B, {self.cfg.in_channels}, H, W), got {tuple(x.shape)}"
            )
        b, _, h, w = x.shape
        p = self.cfg.patch
        ph, pw = (-h) % p, (-w) % p
        if ph or pw:
            # Reflection needs the pad to be smaller than the side; tiny inputs replicate.
            mode = "reflect" if ph < h and pw < w else "replicate"
            x_in = F.pad(x, (0, pw, 0, ph), mode=mode)
        else:
            x_in = x
        # "signed": the official pipeline feeds 2x - 1; applied after the padding (which
        # commutes with it) so the zero padding of the first conv sees what the official sees.
        feat = self.head(x_in * 2.0 - 1.0 if self.cfg.input_range == "signed" else x_in)
        tok = self.embed(feat)  # (B, D, h', w')
        gh, gw = tok.shape[-2:]
        tok = self.embed_norm(tok.flatten(2).transpose(1, 2))  # (B, N, D)
        for blk in self.blocks:
            tok = blk(tok)
        # Token feature (c, i, j) becomes pixel (c, y·P + i, x·P + j): pixel_shuffle's order,
        # done as one permuted copy (about 4x faster on CPU than transpose + pixel_shuffle).
        u = self.cfg.unpatch_channels
        if self.cfg.unpatch == "overlap":
            grid = tok.transpose(1, 2).reshape(b, -1, gh, gw)  # (B, D, h', w')
            img = self.unpatch(grid)  # (B, 128, H', W'), each pixel from the 4 nearest tokens
        elif self.cfg.unpatch_order == "p1 p2 c":  # official: rows ordered (p1 p2 c)
            up = self.unpatch(tok).view(b, gh, gw, p, p, u)  # (B, h', w', P, P, 128)
            img = up.permute(0, 5, 1, 3, 2, 4).reshape(b, u, gh * p, gw * p)
        else:
            up = self.unpatch(tok).view(b, gh, gw, u, p, p)  # (B, h', w', 128, P, P)
            img = up.permute(0, 3, 1, 4, 2, 5).reshape(b, u, gh * p, gw * p)
        if self.skip is not None:
            img = img + self.skip(feat)  # (B, 128, H', W') + head features
        out = self.tail(img)  # (B, 3, H', W')
        if self.cfg.global_residual:
            out = out + torch.logit(x_in[:, :3].clamp(1e-4, 1 - 1e-4))
        return torch.sigmoid(out)[..., :h, :w]
