"""Inference fast paths that keep the model's output (to fp32 rounding), chosen per device.

Measured on the 2-core AVX2 CPU this project was built on (``mofme bench``; paper preset,
480×720), the time of a whole-frame forward goes to the full-resolution convolution tail
(two 128→128 and one 128→64 3×3 convs: ~300 of ~450 GFLOPs), global attention over 5400 tokens,
and the 32-channel conv head. What helps there, and what ``optimize`` switches on:

* **Winograd convolutions (NNPACK)** for wide 3×3 convs (≥ 64 channels in and out): about
  2× faster than oneDNN's direct convolution for 128→128, 1.3× for 128→64, equal for 64→64, and
  slower for narrow convs (which keep the default). Winograd changes rounding only: ≤ 1e-5
  relative to the direct result. It runs on CPU, fp32, without autograd; anything else (GPU,
  bf16 autocast, training) falls through to ``nn.Conv2d``.
* **channels-last head**: the 3→32 and 32→32 convs run about 2× faster in NHWC layout. Only the
  head is converted; the patch embedding reads NHWC directly, so no layout copies are added.

Not switched on by default, because they did not help here (measured with ``mofme bench``):
bf16 autocast (this CPU has no native bf16: a bf16 matmul ran at ~1 GFLOP/s vs ~60 in fp32),
full channels-last (the NNPACK tail needs NCHW), ``torch.compile`` (about 2 minutes to compile
the paper preset, then no faster than eager at 240×360). Sparse experts are the model's own default (``model.set_expert_impl``).

Those measurements hold for that CPU only. ``--precision auto`` (``mofme.inference.precision``)
times fp32, bf16 autocast and the dynamic int8 Linear layers defined here (``quantize_int8``) on
the user's machine, and these fast convs against plain ones (``undo_optimize``).
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Convs with at least this many input and output channels use NNPACK on CPU.
NNPACK_MIN_CHANNELS = 64


@functools.lru_cache(maxsize=1)
def nnpack_usable() -> bool:
    """Whether NNPACK is built in and agrees with ``F.conv2d`` on a random problem."""
    try:
        # is_available() also initialises the library; the op fails without it.
        if not torch.backends.nnpack.is_available():
            return False
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(2, 16, 9, 13, generator=gen)
        w = torch.randn(16, 16, 3, 3, generator=gen) * 0.1
        b = torch.randn(16, generator=gen)
        with torch.no_grad():
            got = torch._nnpack_spatial_convolution(x, w, b, [1, 1])
            ref = F.conv2d(x, w, b, padding=1)
        return bool(torch.allclose(got, ref, rtol=1e-4, atol=1e-4))
    except (RuntimeError, AttributeError):
        return False


class NNPackConv2d(nn.Conv2d):
    """A 3×3 ``nn.Conv2d`` that uses NNPACK's Winograd kernels for CPU fp32 inference.

    Same parameters and state-dict keys as the conv it replaces; every case NNPACK does not
    cover (GPU, other dtypes, autograd, or an NNPACK failure) runs ``nn.Conv2d.forward``.
    """

    nnpack_failed = False

    def forward(self, x: Tensor) -> Tensor:
        if (
            not self.nnpack_failed
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and x.ndim == 4
            and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
        ):
            try:
                return torch._nnpack_spatial_convolution(
                    x.contiguous(), self.weight.contiguous(), self.bias, list(self.padding)
                )
            except RuntimeError as e:
                self.nnpack_failed = True
                warnings.warn(f"NNPACK convolution failed ({e}); using the default", stacklevel=2)
        return super().forward(x)


def _nnpack_eligible(conv: nn.Module, min_channels: int) -> bool:
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and isinstance(conv.padding, tuple)
        and conv.bias is not None
        and conv.in_channels >= min_channels
        and conv.out_channels >= min_channels
    )


def use_nnpack(model: nn.Module, min_channels: int = NNPACK_MIN_CHANNELS) -> int:
    """Replace eligible 3×3 convs by ``NNPackConv2d`` (sharing their parameters), in place.

    Returns how many were replaced (0 when NNPACK is unusable).
    """
    if not nnpack_usable():
        return 0
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _nnpack_eligible(child, min_channels):
                new = NNPackConv2d(
                    child.in_channels,
                    child.out_channels,
                    3,
                    padding=child.padding,
                    device="meta",
                )
                new.weight, new.bias = child.weight, child.bias  # shared, not copied
                new.train(child.training)
                setattr(parent, name, new)
                replaced += 1
    return replaced


def channels_last_head(model: nn.Module) -> bool:
    """Store the conv head's weights channels-last so the head runs in NHWC. In place."""
    head = getattr(model, "head", None)
    if head is None:
        return False
    head.to(memory_format=torch.channels_last)  # type: ignore[call-arg]
    return True


def optimize(model: nn.Module, device: torch.device | str | None = None) -> list[str]:
    """Switch on the fast paths that pay off on ``device`` (default: the model's), in place.

    Returns one line per change, for logs. Outputs stay equal to the plain model's within fp32
    rounding (checked in tests/test_fastpaths.py).
    """
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    notes: list[str] = []
    if device.type != "cpu":
        return notes  # cuDNN already picks fast kernels; see the bench for bf16 / compile
    n = use_nnpack(model)
    if n:
        notes.append(f"NNPACK Winograd for {n} wide 3x3 convs")
    if channels_last_head(model):
        notes.append("channels-last conv head")
    return notes


def undo_optimize(model: nn.Module) -> bool:
    """Undo ``optimize``: plain ``nn.Conv2d`` again (same parameters), NCHW head. In place.

    For machines where the probe (``mofme.inference.precision``) measured the fast convs as
    slower, e.g. CPUs whose oneDNN direct convolution beats NNPACK's AVX2 Winograd kernels.
    Returns whether anything changed.
    """
    changed = False
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, NNPackConv2d):
                conv = nn.Conv2d(
                    child.in_channels, child.out_channels, 3, padding=child.padding, device="meta"
                )
                conv.weight, conv.bias = child.weight, child.bias  # shared, not copied
                conv.train(child.training)
                setattr(parent, name, conv)
                changed = True
    head = getattr(model, "head", None)
    if head is not None:
        for p in head.parameters():
            if p.ndim == 4 and not p.is_contiguous():
                p.data = p.data.contiguous()
                changed = True
    return changed


# ------------------------------------------------------------------------------- int8


def int8_usable() -> bool:
    """Whether this PyTorch build has a CPU engine for dynamic int8 Linear layers."""
    engines = torch.backends.quantized.supported_engines
    return any(e in engines for e in ("x86", "fbgemm", "onednn"))


def _quantize_weight(weight: Tensor) -> Tensor:
    """Symmetric per-output-channel int8 weight (zero point 0), as PyTorch's dynamic quant.

    Per channel because the rows of the expert and adaptor matrices differ in scale by an order
    of magnitude: one scale for the whole matrix would waste most of the 8 bits on small rows.
    """
    w = weight.detach().float().contiguous()
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12).double()
    zero = torch.zeros(w.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        # Quantised tensors are deprecated in favour of torchao, but they are what the fbgemm /
        # oneDNN dynamic-int8 kernels take; the path is optional and tested against fp32.
        warnings.simplefilter("ignore", UserWarning)
        return torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)


def _prepack(weight: Tensor, bias: Tensor | None) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        b = None if bias is None else bias.detach().float().contiguous()
        return torch.ops.quantized.linear_prepack(_quantize_weight(weight), b)


def _linear_int8(x: Tensor, packed: object, out_features: int) -> Tensor:
    """``x @ Wᵀ + b`` with int8 weights; activations quantised per call (per tensor, uint8).

    ``reduce_range`` keeps activations to 7 bits: without VNNI the int8 dot product saturates
    its 16-bit intermediate sums otherwise, and the probe/tests measure the accuracy that costs.
    """
    flat = x.reshape(-1, x.shape[-1]).float().contiguous()
    y = torch.ops.quantized.linear_dynamic(flat, packed, True)
    return y.view(*x.shape[:-1], out_features)


class Int8Linear(nn.Module):
    """Inference-only stand-in for an ``nn.Linear`` with dynamic int8 quantisation.

    Keeps the original fp32 parameters (shared, not copied) so ``state_dict`` keys and values
    are unchanged; the int8 copy is packed once at construction.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self._packed = _prepack(linear.weight, linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        return _linear_int8(x, self._packed, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def _int8_experts(experts: nn.Module) -> nn.Module:
    """A ``ModulationExperts`` whose per-expert fused ``(2D, D)`` matmuls run in int8."""
    from mofme.model.moe import ModulationExperts

    class Int8ModulationExperts(ModulationExperts):
        def __init__(self, src: ModulationExperts) -> None:
            nn.Module.__init__(self)  # no fresh fp32 weights: share the source's
            self.dim, self.num_experts = src.dim, src.num_experts
            # The official layout's slot 0 is GELU(y), without weights: only FiLM slots pack.
            self.gelu_slot, self.num_film = src.gelu_slot, src.num_film
            self.weight, self.bias = src.weight, src.bias
            self._packed = [_prepack(src.weight[j], src.bias[j]) for j in range(src.num_film)]

        def film(self, j: int, y: Tensor) -> Tensor:
            gamma, beta = _linear_int8(y, self._packed[j], 2 * self.dim).chunk(2, dim=-1)
            return gamma * y + beta

    return Int8ModulationExperts(experts)  # type: ignore[arg-type]


def quantize_int8(model: nn.Module) -> int:
    """Dynamic int8 for the token-wise Linear layers of a ``MoFMENet``, in place (CPU only).

    Converted: attention ``qkv`` / ``out``, the FME shared base (W1, W2), the experts' fused
    γ/β matrices, the FFN adaptor and a Linear unpatch. Not converted: the routers (their
    logits choose the experts, and low precision there changes the choice; SPEC §3), the
    convolutions and LayerNorms. Returns the number of converted matrices (experts count one
    each). Raises ``RuntimeError`` when this build has no int8 CPU engine.
    """
    if not int8_usable():
        raise RuntimeError("this PyTorch build has no int8 CPU engine (x86 / fbgemm / onednn)")
    from mofme.model.moe import LinearRouter, ModulationExperts, UncertaintyRouter

    routers = [m for m in model.modules() if isinstance(m, (LinearRouter, UncertaintyRouter))]
    keep = {id(p) for r in routers for p in r.parameters()}
    converted = 0
    for parent in list(model.modules()):
        if isinstance(parent, (LinearRouter, UncertaintyRouter)):
            continue
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and id(child.weight) not in keep:
                setattr(parent, name, Int8Linear(child))
                converted += 1
            elif type(child) is ModulationExperts:
                setattr(parent, name, _int8_experts(child))
                converted += child.num_film
    return converted
