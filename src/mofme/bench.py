"""Speed / memory / quality benchmark of MoFME inference (``mofme bench``).

Two tables, all numbers from one run on one machine:

1. **Frame table** — one ``H×W`` frame restored by:
   the *official-style baseline* (the official MoFME evaluation: overlapping ``crop²`` crops at
   stride ``crop/2``, each run alone with every expert computed densely, fp32, overlaps averaged —
   15 crops for 480×720), then the baseline with **one** option changed (sparse experts, whole
   image, channels-last, NNPACK convs, bf16 autocast, torch.compile), then mofme's default path
   (whole image, sparse experts, ``mofme.inference.fast.optimize``) and its tiled variant.
   Columns: median ms/frame, speed-up vs the baseline, GFLOPs/frame as executed (the baseline is
   counted on its crops; sparse experts count only routed tokens), achieved GFLOP/s and its share
   of this machine's measured matmul peak, peak memory, PSNR of the output against the baseline's.
2. **FME expert table** — the expert stage alone on ``N`` random tokens × ``dim`` with ``E``
   experts and a random linear router: dense (every expert on every token) vs sparse top-k vs
   sparse top-p, with the max abs difference to the dense result for the same routing weights.
3. **ONNX Runtime table** (when ``onnx`` and ``onnxruntime`` are installed) — the same frame,
   whole image, through PyTorch (default path: sparse experts, fast paths; and dense experts)
   and through the ``mofme export`` graph in ONNX Runtime's CPU provider (dense masked experts,
   the same thread count), with the max abs difference of the outputs.

Timing (interleaved rounds, medians), peak memory, the matmul peak and the test frame come from
:mod:`mofme.inference.timing`; the official crops, autocast and the tiles per pass from the
inference path itself (:mod:`mofme.inference.tiling`, :mod:`mofme.inference.options`), so the
bench times what the commands run.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from mofme.inference.fast import optimize
from mofme.inference.options import batch_tiles_for
from mofme.inference.tiling import (
    autocast_context,
    expert_impl,
    official_boxes,
    official_crops,
    restore_image,
)
from mofme.inference.timing import (
    bench_input,
    median,
    paired_ratios,
    peak_memory_mb,
    spread,
    time_interleaved,
)
from mofme.model.analysis import active_experts, count_flops
from mofme.model.moe import ModulationExperts, select_topk, select_topp
from mofme.model.net import MoFMENet

# ------------------------------------------------------------------------------- FLOPs


def forward_flops(model: MoFMENet, sizes: list[tuple[int, int]]) -> float:
    """Total FLOPs of one forward per ``(h, w)`` in ``sizes`` (routing/experts as configured)."""
    total = 0.0
    cache: dict[tuple[int, int], float] = {}
    for size in sizes:
        if size not in cache:
            cache[size] = count_flops(model, size).total  # attention included
        total += cache[size]
    return total


def tile_sizes(h: int, w: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Sizes of the tiles ``restore_image`` runs for an ``h×w`` image."""
    from mofme.inference.tiling import tile_starts

    th, tw = min(tile, h), min(tile, w)
    n = len(tile_starts(h, th, tile - overlap)) * len(tile_starts(w, tw, tile - overlap))
    return [(th, tw)] * n


# ------------------------------------------------------------------------------- frame table


@dataclass
class FrameRow:
    name: str
    ms: float | None = None  # median ms per frame
    speedup: float | None = None  # median over rounds of (baseline ms / this ms), same round
    ms_min: float | None = None  # spread of the timed rounds
    ms_max: float | None = None
    speedup_min: float | None = None  # spread of the per-round speed-ups
    speedup_max: float | None = None
    gflops: float | None = None  # GFLOPs executed per frame
    gflops_per_s: float | None = None
    peak_pct: float | None = None  # of the fp32 (or bf16) matmul peak
    memory_mb: float | None = None
    psnr_db: float | None = None  # output vs the baseline's output
    note: str = ""


@dataclass
class FmeRow:
    name: str
    ms: float
    speedup: float
    max_abs_diff: float
    mean_active_experts: float
    ktokens_per_s: float
    speedup_min: float | None = None  # spread of the per-round speed-ups
    speedup_max: float | None = None


@dataclass
class OnnxRow:
    name: str
    ms: float  # median ms per frame
    ms_min: float
    ms_max: float
    speedup: float  # median over rounds of (PyTorch default ms / this ms), same round
    max_abs_diff: float  # output vs the PyTorch default path's


@dataclass
class BenchResult:
    machine: dict[str, object]
    frame: list[FrameRow] = field(default_factory=list)
    fme: list[FmeRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    onnx: list[OnnxRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "machine": self.machine,
            "frame": [asdict(r) for r in self.frame],
            "fme": [asdict(r) for r in self.fme],
            "notes": self.notes,
            "onnx": [asdict(r) for r in self.onnx],
        }


def _bf16_native(device: torch.device, fp32_peak: float, bf16_peak: float) -> bool:
    # Without native bf16 units the matmul falls back to slow conversions: skip those rows.
    return bf16_peak >= 0.8 * fp32_peak


def run_frame_bench(
    model: MoFMENet,
    size: tuple[int, int],
    device: torch.device,
    repeat: int,
    warmup: int,
    crop: int = 240,
    tile: int = 256,
    overlap: int = 32,
    compile_model: bool = False,
    force_bf16: bool = False,
    precision: str = "fp32",
    fast_convs: bool = True,
    matched_tile: tuple[int, int] | None = (240, 120),
    peaks: dict[str, float] | None = None,
    log: Callable[[str], None] = print,
) -> tuple[list[FrameRow], list[str]]:
    """Time the baseline, one-option variants and the default path on one frame.

    ``notes`` lists what was skipped and why (bf16 without native support, torch.compile
    failures) and what the fast paths switched on.
    """
    from mofme.metrics import psnr

    h, w = size
    notes: list[str] = []
    peaks = peaks or {}
    batch_tiles = batch_tiles_for(device)  # as mofme restore / video
    x = bench_input(size, model.cfg.in_channels).to(device)
    boxes = official_boxes(h, w, crop)
    crop_sizes = [(bh, bw) for _, _, bh, bw in boxes]

    plain = copy.deepcopy(model).to(device).eval()
    plain.set_expert_impl("sparse")
    fast = copy.deepcopy(plain)
    fast_notes = optimize(fast, device)
    cl = copy.deepcopy(plain).to(memory_format=torch.channels_last)

    def crops_with(m: MoFMENet, impl: str = "dense", amp: str = "none") -> Callable[[], Tensor]:
        def run() -> Tensor:
            # The official crops, with the experts computed as ``impl``.
            with expert_impl(m, impl), autocast_context(device, amp):
                return official_crops(m, x, crop, dense=False).float()

        return run

    if fast_notes:
        notes.append("fast convs = " + "; ".join(fast_notes))
    variants: dict[str, tuple[Callable[[], Tensor], float, str]] = {}
    dense_flops = _with_impl(plain, "dense", lambda: forward_flops(plain, crop_sizes))
    sparse_crop_flops = forward_flops(plain, crop_sizes)
    whole_sparse_flops = forward_flops(plain, [size])
    base_name = f"official: {len(boxes)} crops {crop}², dense experts, fp32"
    variants[base_name] = (crops_with(plain), dense_flops, "baseline")
    variants["+ sparse experts (crops)"] = (crops_with(plain, "sparse"), sparse_crop_flops, "")
    variants["+ whole image (dense experts)"] = (
        lambda: _with_impl(plain, "dense", lambda: restore_image(plain, x)),
        _with_impl(plain, "dense", lambda: forward_flops(plain, [size])),
        "",
    )
    variants["+ channels-last (crops)"] = (crops_with(cl), dense_flops, "")
    if device.type == "cpu" and fast_notes:
        variants["+ fast convs: NNPACK, NHWC head (crops)"] = (
            crops_with(fast),
            dense_flops,
            "",
        )
    fp32_peak, bf16_peak = peaks.get("fp32", 0.0), peaks.get("bf16", 0.0)
    bf16_ok = force_bf16 or _bf16_native(device, fp32_peak, bf16_peak)
    if bf16_ok:
        variants["+ bf16 autocast (crops)"] = (crops_with(plain, amp="bf16"), dense_flops, "")
    else:
        notes.append(
            f"bf16 autocast skipped: bf16 matmul runs at {bf16_peak:.0f} GFLOP/s vs "
            f"{fp32_peak:.0f} fp32 on this device (no native bf16; --bf16 forces it)"
        )
    if compile_model:
        log("compiling the model (torch.compile) ...")
        try:
            compiled = torch.compile(copy.deepcopy(plain))
            start = time.perf_counter()
            with torch.inference_mode():
                compiled(x[:, :, :crop, :crop])
            notes.append(f"torch.compile took {time.perf_counter() - start:.0f} s to compile")
            variants["+ torch.compile (crops)"] = (
                crops_with(compiled),  # type: ignore[arg-type]
                dense_flops,
                "",
            )
        except Exception as e:  # compilation failures vary by platform and toolchain
            notes.append(f"torch.compile skipped: {type(e).__name__}: {str(e).splitlines()[0]}")
    variants[
        "mofme default: whole image, sparse experts" + (", fast convs" if fast_notes else "")
    ] = (
        lambda: restore_image(fast, x),
        whole_sparse_flops,
        "default",
    )
    variants[f"mofme tiled {tile}/{overlap} (sparse" + (", fast convs)" if fast_notes else ")")] = (
        lambda: restore_image(fast, x, tile=tile, overlap=overlap, batch_tiles=batch_tiles),
        forward_flops(plain, tile_sizes(h, w, tile, overlap)),
        "",
    )
    # The chosen precision (probe or --precision): the default path as `mofme restore` runs it,
    # and the tiling that matches the official pipeline's quality (README: 240/120 tiles were
    # within 0.05 dB of the official crops with the bundled weights; whole frames were not).
    # fast_convs=False: the probe measured optimize()'s convs as slower here.
    chosen, amp = (fast if fast_convs else plain), "none"
    convs = "" if fast_convs or not fast_notes else ", plain convs"
    if precision == "int8":
        from mofme.inference.fast import quantize_int8

        chosen = copy.deepcopy(chosen)
        quantize_int8(chosen)
    elif precision == "bf16":
        amp = "bf16"
    if precision != "fp32" or convs:
        variants[f"mofme default, {precision}{convs}: whole image, sparse experts"] = (
            lambda: restore_image(chosen, x, amp=amp),
            whole_sparse_flops,
            "chosen",
        )
    if matched_tile is not None:
        mt, mo = matched_tile
        variants[f"matched quality: tiles {mt}/{mo}, sparse, {precision}{convs}"] = (
            lambda: restore_image(chosen, x, tile=mt, overlap=mo, batch_tiles=batch_tiles, amp=amp),
            forward_flops(plain, tile_sizes(h, w, mt, mo)),
            "matched",
        )

    log(f"frame bench: {len(variants)} variants x (1 + {warmup} warm-up + {repeat} timed) runs")
    # The first run of each variant (kept for the PSNR column) also warms it up.
    outputs = {name: fn() for name, (fn, _, _) in variants.items()}
    times = time_interleaved({n: v[0] for n, v in variants.items()}, warmup, repeat, device)
    reference = outputs[base_name]
    peak = fp32_peak
    rows = []
    ratios = paired_ratios(times, base_name)
    for name, (fn, flops, note) in variants.items():
        ms = median(times[name]) * 1e3
        gps = flops / (ms / 1e3) / 1e9
        # int8 rows are shown against the fp32 peak (no int8 peak is measured).
        use_peak = bf16_peak if "bf16" in name else peak
        rows.append(
            FrameRow(
                name=name,
                ms=ms,
                speedup=median(ratios[name]),
                ms_min=spread(times[name])[0] * 1e3,
                ms_max=spread(times[name])[1] * 1e3,
                speedup_min=spread(ratios[name])[0],
                speedup_max=spread(ratios[name])[1],
                gflops=flops / 1e9,
                gflops_per_s=gps,
                peak_pct=100 * gps / use_peak if use_peak else None,
                memory_mb=peak_memory_mb(fn, device),
                psnr_db=float(
                    psnr(outputs[name].clamp(0, 1).cpu(), reference.clamp(0, 1).cpu())[0]
                ),
                note=note,
            )
        )
    return rows, notes


def _with_impl(model: MoFMENet, impl: str, fn: Callable[[], object]):  # -> fn's result
    with expert_impl(model, impl):
        return fn()


# ------------------------------------------------------------------------------- FME table


def run_fme_bench(
    tokens: int,
    dim: int,
    experts: int,
    k: int,
    p: float,
    device: torch.device,
    repeat: int,
    warmup: int,
    seed: int = 0,
) -> list[FmeRow]:
    """Expert stage alone: dense vs sparse top-k vs sparse top-p on random tokens."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    layer = ModulationExperts(dim, experts).to(device)
    router = torch.nn.Linear(dim, experts).to(device)
    y = torch.randn(tokens, dim, generator=gen).to(device)
    with torch.inference_mode():
        logits = router(y)
        w_topk = select_topk(logits, k)
        w_topp = select_topp(logits, p)
        fns = {
            "dense (all experts)": lambda: layer.forward_dense(y, w_topk),
            f"sparse top-{k}": lambda: layer.forward_sparse(y, w_topk),
            f"sparse top-p {p:g}": lambda: layer.forward_sparse(y, w_topp),
        }
        ref = {
            "dense (all experts)": layer.forward_dense(y, w_topk),
            f"sparse top-{k}": layer.forward_dense(y, w_topk),
            f"sparse top-p {p:g}": layer.forward_dense(y, w_topp),
        }
        weights = {
            "dense (all experts)": None,
            f"sparse top-{k}": w_topk,
            f"sparse top-p {p:g}": w_topp,
        }
        times = time_interleaved(fns, warmup, repeat, device)
        ratios = paired_ratios(times, "dense (all experts)")
        rows = []
        for name, fn in fns.items():
            ms = median(times[name]) * 1e3
            wts = weights[name]
            active = float(experts) if wts is None else float(active_experts(wts).float().mean())
            rows.append(
                FmeRow(
                    name=name,
                    ms=ms,
                    speedup=median(ratios[name]),
                    speedup_min=spread(ratios[name])[0],
                    speedup_max=spread(ratios[name])[1],
                    max_abs_diff=float((fn() - ref[name]).abs().max()),
                    mean_active_experts=active,
                    ktokens_per_s=tokens / (ms / 1e3) / 1e3,
                )
            )
    return rows


# ------------------------------------------------------------------------------- report


def _fmt(v: float | None, spec: str, suffix: str = "") -> str:
    if v is None:
        return "–"
    if math.isinf(v):
        return "∞"
    return format(v, spec) + suffix


def _range(lo: float | None, hi: float | None, spec: str) -> str:
    """`` (lo–hi)`` after a median; empty when there is no spread to show."""
    if lo is None or hi is None or format(lo, spec) == format(hi, spec):
        return ""
    return f" ({format(lo, spec)}–{format(hi, spec)})"


def summary_lines(rows: list[FrameRow]) -> list[str]:
    """The headline numbers: default / chosen-precision / matched-quality speed-ups."""
    out = []
    labels = {
        "default": "default path (whole frame, fp32)",
        "chosen": "default path with the chosen precision",
        "matched": "matched quality (official-quality tiling)",
    }
    for r in rows:
        if r.note not in labels or r.speedup is None:
            continue
        pct = f", {r.peak_pct:.0f} % of the measured peak" if r.peak_pct is not None else ""
        psnr_txt = "" if r.psnr_db is None else f", PSNR {r.psnr_db:.2f} dB vs the baseline"
        out.append(
            f"- {labels[r.note]}: **{r.speedup:.2f}×**"
            f"{_range(r.speedup_min, r.speedup_max, '.2f')} vs the official-style "
            f"pipeline{pct}{psnr_txt} ({r.name})"
        )
    return ["", "Speed-ups (median of per-round ratios, min–max over rounds):", *out] if out else []


def to_markdown(result: BenchResult) -> str:
    m = result.machine
    lines = [
        f"Device: {m['name']} ({m['device']}, {m['threads']} threads), torch {m['torch']}; "
        f"matmul peak {_fmt(m.get('peak_fp32_gflops'), '.0f')} GFLOP/s fp32, "
        f"{_fmt(m.get('peak_bf16_gflops'), '.0f')} GFLOP/s bf16 (best of alternating rounds; "
        f"medians {_fmt(m.get('median_fp32_gflops'), '.0f')} / "
        f"{_fmt(m.get('median_bf16_gflops'), '.0f')})",
    ]
    if result.frame:
        lines += [
            "",
            f"Frame {m['size']} ({m['model']}):",
            "",
            "| variant | ms/frame (min–max) | speed-up (min–max) | GFLOPs/frame | GFLOP/s | % of peak | peak memory (MB) | PSNR vs baseline (dB) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in result.frame:
            lines.append(
                f"| {r.name} | {_fmt(r.ms, '.0f')}{_range(r.ms_min, r.ms_max, '.0f')} | "
                f"{_fmt(r.speedup, '.2f', '×')}{_range(r.speedup_min, r.speedup_max, '.2f')} | "
                f"{_fmt(r.gflops, '.1f')} | {_fmt(r.gflops_per_s, '.1f')} | "
                f"{_fmt(r.peak_pct, '.0f', ' %')} | {_fmt(r.memory_mb, '.0f')} | "
                f"{_fmt(r.psnr_db, '.2f')} |"
            )
    if result.fme:
        lines += [
            "",
            f"FME expert stage alone ({m['fme']}):",
            "",
            "| experts | ms | speed-up (min–max) | mean active experts | ktokens/s | max abs diff vs dense |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in result.fme:
            lines.append(
                f"| {r.name} | {r.ms:.1f} | {r.speedup:.2f}×"
                f"{_range(r.speedup_min, r.speedup_max, '.2f')} | {r.mean_active_experts:.2f} | "
                f"{r.ktokens_per_s:.1f} | {r.max_abs_diff:.1e} |"
            )
    notes = list(result.notes)
    if result.onnx:
        lines += [
            "",
            f"ONNX Runtime vs PyTorch, whole frame {m['size']} ({m.get('onnx', '')}):",
            "",
            "| runtime | ms/frame (min–max) | speed-up vs PyTorch default | max abs diff vs it |",
            "|---|---:|---:|---:|",
        ]
        for r in result.onnx:
            lines.append(
                f"| {r.name} | {r.ms:.0f}{_range(r.ms_min, r.ms_max, '.0f')} | "
                f"{r.speedup:.2f}× | {r.max_abs_diff:.1e} |"
            )
    lines += summary_lines(result.frame)
    if result.frame:
        notes.append(
            "GFLOPs count a direct convolution; Winograd (NNPACK) convs do fewer multiplications, "
            "so their nominal GFLOP/s can exceed the measured matmul peak"
        )
        notes.append(
            "GFLOPs include attention (added analytically where PyTorch's FLOP counter misses "
            "the fused kernel); the tiled row runs one tile per pass on CPU, 8 on GPU "
            "(as mofme restore / video)"
        )
    lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines)


# ------------------------------------------------------------------------------- ONNX table


def run_onnx_bench(
    model: MoFMENet,
    size: tuple[int, int],
    device: torch.device,
    repeat: int,
    warmup: int,
    log: Callable[[str], None] = lambda m: None,
) -> tuple[list[OnnxRow], str]:
    """Time one whole frame in PyTorch (sparse and dense experts) and in ONNX Runtime (CPU).

    The model is exported with ``mofme.export.export_onnx`` into a temporary folder; ORT gets
    ``torch.get_num_threads()`` intra-op threads, as PyTorch uses. Returns the rows and a
    one-line description (exporter, opset, threads, device) for the table title.
    """
    import tempfile

    from mofme.export import export_onnx, onnx_opset, ort_session, run_onnx

    x = bench_input(size, model.cfg.in_channels).to(device)
    threads = torch.get_num_threads()
    fast = copy.deepcopy(model).to(device).eval()
    optimize(fast, device)  # mofme's default inference path
    with tempfile.TemporaryDirectory(prefix="mofme-bench-onnx-") as tmp:
        log("exporting to ONNX ...")
        path = export_onnx(model, os.path.join(tmp, "model.onnx"))
        opset = onnx_opset(path)
        session = ort_session(path, threads=threads)
    x_np = x.cpu().numpy()

    def torch_run(impl: str) -> Callable[[], object]:
        return lambda: _with_impl(fast, impl, lambda: fast(x))

    fns: dict[str, Callable[[], object]] = {
        f"PyTorch {device.type}, sparse experts (default path)": torch_run("sparse"),
        f"PyTorch {device.type}, dense experts": torch_run("dense"),
        "ONNX Runtime CPU, dense masked experts": lambda: run_onnx(session, x_np),
    }
    with torch.inference_mode():
        reference = fast(x).float().cpu().numpy()
        outputs = {name: fn() for name, fn in fns.items()}  # also the warm-up run
        log("timing ONNX Runtime vs PyTorch ...")
        times = time_interleaved(fns, warmup, repeat, device)
    base = next(iter(fns))
    ratios = paired_ratios(times, base)
    rows = []
    for name, ts in times.items():
        out = outputs[name]
        out = out.float().cpu().numpy() if isinstance(out, Tensor) else out
        rows.append(
            OnnxRow(
                name=name,
                ms=1e3 * median(ts),
                ms_min=1e3 * min(ts),
                ms_max=1e3 * max(ts),
                speedup=median(ratios[name]),
                max_abs_diff=float(abs(out - reference).max()),
            )
        )
    title = f"opset {opset}, {threads} threads, ONNX Runtime {_ort_version()}"
    return rows, title


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)
