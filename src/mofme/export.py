"""ONNX export of a MoFMENet, checked against PyTorch with ONNX Runtime.

>>> from mofme import checkpoint
>>> from mofme.export import export_onnx, check_onnx
>>> model = checkpoint.load("model.safetensors")
>>> export_onnx(model, "model.onnx")                    # opset 17, dynamic batch, H, W
>>> check_onnx("model.onnx", model)                     # [(64, 96, 3.6e-07), (37, 50, ...), ...]

The graph (one input ``input`` ``(B, C_in, H, W)`` float32 in [0, 1], one output ``output``
``(B, 3, H, W)`` in [0, 1]; ``C_in`` is 3 for an image model, 6 for a video model fed
``[frame_t, restored_{t-1}]`` with zeros for the first frame):

* **Any size.** Batch, height and width are dynamic. Heights and widths that are multiples of
  the patch size (8) run as they are; other sizes are reflect-padded *inside the graph* at the
  bottom/right to the next multiple of the patch and the output is cropped back, exactly as
  ``MoFMENet.forward`` does, so any H, W >= 8 works (reflection needs the pad, at most 7, to
  be smaller than the side). Very large images cost what whole-image PyTorch inference costs
  (global attention); tile them as ``mofme.inference.tiling.restore_image`` does.
* **Trained routing, in the graph.** The router, its selection (top-k as ONNX ``TopK`` +
  softmax over the kept logits + scatter; top-p via a descending ``TopK`` over all experts and a
  cumulative sum) and the expert mixture are all exported. ONNX has no data-dependent gather of
  the tokens each expert receives, so the experts are computed **densely with a mask**: every
  expert runs on every token and its output is multiplied by the routing weight, which is
  exactly 0 outside the selected experts. The result equals the sparse PyTorch path to fp32
  rounding (the test checks <= 1e-4 at three sizes); the experts cost E/k times their sparse
  FLOPs (small next to attention and the convolutions).
* **Opset 17** by default (the first with ``LayerNormalization``; attention is exported as
  MatMul/Softmax); 17-20 are accepted with the TorchScript exporter, 18-20 with the
  ``torch.export``-based one.
* **Exporter.** ``"torchscript"`` (``torch.onnx.export(dynamo=False)``: seconds, no extra
  dependency; PyTorch has deprecated it) is what ``"auto"`` uses while PyTorch ships it;
  ``"dynamo"`` (``torch.export``, needs ``onnxscript``; about 10x slower to export) computes
  the same graph (tested to the same tolerance) and is what ``"auto"`` falls back to.

The ONNX file's metadata holds the mofme model config (``mofme_config``), the routing, patch
size and input channels.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mofme.errors import MofmeError
from mofme.model.net import MoFMENet

DEFAULT_OPSET = 17
OPSETS = (17, 18, 19, 20)
EXPORTERS = ("auto", "torchscript", "dynamo")
#: Sizes ``check_onnx`` compares at: a patch multiple, an odd size (padded in the graph), a
#: non-square one.
CHECK_SIZES: tuple[tuple[int, int], ...] = ((64, 96), (37, 50), (120, 80))
#: The parity the export must reach against PyTorch (fp32, max abs difference).
TOLERANCE = 1e-4


class PadCrop(nn.Module):
    """``MoFMENet`` with its patch padding written as tensor ops, so the graph takes any size.

    ``MoFMENet.forward`` decides in Python whether to pad; a traced graph would keep only the
    branch of the example input. Here the pad amounts are computed from the (dynamic) input
    shape and applied unconditionally (a zero pad is a no-op), then the output is cropped.
    ``(B, C_in, H, W) -> (B, 3, H, W)``, identical values to ``net(x)``.
    """

    def __init__(self, net: MoFMENet) -> None:
        super().__init__()
        self.net = net
        self.patch = int(net.cfg.patch)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2], x.shape[-1]
        p = self.patch
        pad_h, pad_w = (p - h % p) % p, (p - w % p) % p
        padded = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        return self.net(padded)[..., :h, :w]


def select_topp_exportable(
    logits: Tensor, p: float, k_min: int = 1, k_max: int | None = None
) -> Tensor:
    """``mofme.model.moe.select_topp`` without a stable sort (which ONNX lacks). ``(N, E)``.

    A descending ``topk`` over all experts gives the same order as the stable argsort except
    between exactly equal probabilities, where either order keeps the same weights.
    """
    num_experts = logits.shape[-1]
    k_max = num_experts if k_max is None else k_max
    probs = logits.softmax(dim=-1)
    sorted_p, order = probs.topk(num_experts, dim=-1)  # (N, E), descending
    if p >= 1.0:
        count = torch.full_like(sorted_p[..., 0], float(k_max))
    else:
        before = sorted_p.cumsum(dim=-1) - sorted_p  # weight strictly before each position
        count = (before <= p).to(probs.dtype).sum(dim=-1).clamp(k_min, k_max)
    ranks = torch.arange(num_experts, device=logits.device, dtype=probs.dtype)
    rank_kept = (ranks < count.unsqueeze(-1)).to(probs.dtype)
    keep = torch.zeros_like(probs).scatter(-1, order, rank_kept)
    kept = probs * keep
    return kept / kept.sum(dim=-1, keepdim=True)


@contextlib.contextmanager
def _exportable_selection() -> Iterator[None]:
    """Route ``FMELayer.forward``'s top-p selection through ``select_topp_exportable``."""
    from mofme.model import moe

    original = moe.select

    def select(logits: Tensor, routing: Any, *args: Any, **kwargs: Any) -> Tensor:
        if routing.selection == "topp":
            return select_topp_exportable(logits, routing.p, routing.k_min, routing.k_max)
        return original(logits, routing, *args, **kwargs)

    moe.select = select  # type: ignore[assignment]
    try:
        yield
    finally:
        moe.select = original  # type: ignore[assignment]


def prepare_for_export(model: MoFMENet) -> PadCrop:
    """A CPU fp32 eval copy of ``model`` with dense (masked) experts, wrapped in ``PadCrop``.

    The caller's model is not changed.
    """
    net = copy.deepcopy(model).to("cpu", torch.float32).eval()
    net.set_expert_impl("dense")
    for p in net.parameters():
        p.requires_grad_(False)
    return PadCrop(net).eval()


def _torchscript_export(wrapped: nn.Module, x: Tensor, path: str, opset: int) -> None:
    """``torch.onnx.export`` with the TorchScript exporter and dynamic batch / H / W."""
    import inspect

    # Before PyTorch 2.5 this exporter was the only one and the argument did not exist.
    extra = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    torch.onnx.export(
        wrapped,
        (x,),
        path,
        opset_version=opset,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={
            "input": {0: "batch", 2: "height", 3: "width"},
            "output": {0: "batch", 2: "height", 3: "width"},
        },
        **extra,
    )


def _dynamo_export(wrapped: nn.Module, x: Tensor, path: str, opset: int) -> None:
    """``torch.onnx.export(dynamo=True)`` (``torch.export``; needs onnxscript)."""
    dims = {
        0: torch.export.Dim("batch", min=1, max=1024),
        2: torch.export.Dim("height", min=8, max=16384),
        3: torch.export.Dim("width", min=8, max=16384),
    }
    program = torch.onnx.export(
        wrapped,
        (x,),
        dynamo=True,
        opset_version=opset,
        input_names=["input"],
        output_names=["output"],
        dynamic_shapes=(dims,),
        verbose=False,
    )
    program.save(path)


def export_onnx(
    model: MoFMENet,
    path: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    exporter: str = "auto",
    example_size: tuple[int, int] = (64, 96),
) -> Path:
    """Write ``model`` as an ONNX file (atomically) and return its path.

    Args:
        model: the network; its current routing (``model.set_routing``) is what the graph
            computes. It is copied, not modified.
        path: the ``.onnx`` file to write (replaced if it exists; callers refuse first).
        opset: ONNX opset, one of ``OPSETS`` (default 17).
        exporter: ``"auto"``, ``"torchscript"`` or ``"dynamo"`` (see the module docstring).
        example_size: the ``(H, W)`` traced; any multiple of the patch size (the graph is
            size-independent).

    Raises:
        MofmeError: an unsupported opset / exporter, a missing ``onnx`` package, or an
            exporter failure (with its message).
    """
    from mofme.checkpoint import atomic_write

    if opset not in OPSETS:
        raise MofmeError(f"opset must be one of {OPSETS}, got {opset}")
    try:
        import onnx
    except ImportError:
        raise MofmeError("ONNX export needs the onnx package: pip install 'mofme[onnx]'") from None
    if exporter not in EXPORTERS:
        raise MofmeError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if exporter == "dynamo" and opset < 18:
        raise MofmeError(f"the dynamo exporter needs opset >= 18, got {opset}")
    wrapped = prepare_for_export(model)
    cfg = model.cfg
    # Batch 2: the dynamo exporter specialises a dimension whose example size is 1.
    x = torch.rand(2, cfg.in_channels, *example_size, generator=torch.Generator().manual_seed(0))
    path = Path(path)

    def write(tmp: str) -> None:
        with _exportable_selection(), warnings.catch_warnings(), torch.no_grad():
            # The TorchScript exporter warns that it is deprecated and that Python booleans
            # (MoFMENet's own "pad or not" test, always False after PadCrop) are constants.
            warnings.simplefilter("ignore")
            if exporter != "dynamo":
                try:
                    _torchscript_export(wrapped, x, tmp, opset)
                except (TypeError, NotImplementedError, AttributeError, ImportError):
                    # "auto" on a PyTorch that no longer ships the TorchScript exporter.
                    if exporter == "torchscript":
                        raise
                    _dynamo_export(wrapped, x, tmp, max(opset, 18))
            else:
                _dynamo_export(wrapped, x, tmp, opset)
        proto = onnx.load(tmp)
        meta = {
            "mofme_config": cfg.to_json(),
            "mofme_routing": cfg.routing.describe(),
            "mofme_patch": str(cfg.patch),
            "mofme_in_channels": str(cfg.in_channels),
            "mofme_experts": "dense with routing mask (weights 0 outside the selected experts)",
        }
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, tmp)

    try:
        atomic_write(path, write)
    except MofmeError:
        raise
    except Exception as e:  # the exporters raise many types; all mean "export failed"
        raise MofmeError(f"ONNX export failed ({type(e).__name__}: {e})") from e
    return path


def onnx_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (``mofme_config``, ``mofme_routing``, ...)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def onnx_opset(path: str | os.PathLike[str]) -> int:
    """The default-domain opset an ONNX file was written with."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return next(int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def ort_session(path: str | os.PathLike[str], threads: int | None = None):  # -> InferenceSession
    """An ONNX Runtime CPU session for ``path`` (``threads``: intra-op threads, default ORT's).

    Raises:
        MofmeError: onnxruntime is not installed, or the file cannot be loaded.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise MofmeError(
            "ONNX Runtime is not installed: pip install 'mofme[onnx]' (or onnxruntime)"
        ) from None
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: ORT's shape-inference notes are noise here
    try:
        return ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as e:
        raise MofmeError(f"ONNX Runtime cannot load {path}: {e}") from None


def run_onnx(session: Any, x: np.ndarray) -> np.ndarray:
    """Run an exported model: ``(B, C_in, H, W)`` float32 in [0, 1] -> ``(B, 3, H, W)``."""
    return session.run(None, {"input": np.ascontiguousarray(x, dtype=np.float32)})[0]


def check_onnx(
    path: str | os.PathLike[str],
    model: MoFMENet,
    sizes: Sequence[tuple[int, int]] = CHECK_SIZES,
    batch: int = 1,
    seed: int = 0,
    session: Any = None,
    device: str | torch.device = "cpu",
) -> list[tuple[int, int, float]]:
    """Max abs difference between ONNX Runtime (CPU) and PyTorch (fp32) at each size.

    PyTorch runs a copy of ``model`` on ``device`` (its current expert implementation: sparse
    by default, the inference path) on the same random inputs in [0, 1].

    Returns:
        ``[(H, W, max_abs_diff), ...]`` in the order of ``sizes``.
    """
    session = session or ort_session(path)
    reference = copy.deepcopy(model).to(device, torch.float32).eval()
    gen = torch.Generator().manual_seed(seed)
    results = []
    for h, w in sizes:
        x = torch.rand(batch, model.cfg.in_channels, h, w, generator=gen)
        with torch.inference_mode():
            want = reference(x.to(device)).cpu().numpy()
        got = run_onnx(session, x.numpy())
        if got.shape != want.shape:
            raise MofmeError(f"ONNX output {got.shape} != PyTorch output {want.shape} at {h}x{w}")
        results.append((h, w, float(np.abs(got - want).max())))
    return results
