"""Pick the inference precision by measuring, not assuming (``--precision auto``).

Which path is fastest depends on the machine: bf16 autocast is several times faster than fp32
on CPUs with AVX-512 BF16 or AMX and on recent GPUs, and tens of times *slower* on CPUs
without native bf16; dynamic int8 Linear layers pay where the token-wise matmuls dominate and
the CPU has VNNI. So ``probe`` runs the model itself (its real layer shapes, at a small probe
size) in each candidate precision, interleaving the candidates over a few rounds (see
``mofme.inference.timing.time_interleaved``) and picks the fastest one whose output stays within
tolerance of the fp32 output. Candidates: ``fp32``, ``bf16`` (autocast; the router stays fp32),
``int8`` (dynamic int8 Linear layers, CPU only; ``mofme.inference.fast.quantize_int8``).

**Tolerance**: PSNR of the candidate's output against the fp32 output on the probe image
(scikit-image's astronaut photo) of at least ``TOLERANCE_DB`` = 50 dB, i.e. an RMS deviation of
at most 0.32 % of the range. A deviation that size, uncorrelated with the restoration error,
moves a 30 dB result by 10·log10(1 + 10^((30 − 50)/10)) = 0.04 dB, inside the 0.05 dB budget of
issue 18; closer results move less. A faster path must also win by ``MIN_GAIN`` (5 %) over fp32
in the median of the per-round ratios, so timing noise does not switch precision.

The result is cached in ``~/.cache/mofme/precision.json`` (``$MOFME_CACHE_DIR`` or
``$XDG_CACHE_HOME/mofme`` when set), keyed by the machine (CPU model and flags, or GPU name),
the torch version, the device, the thread count and the model (config and a weight checksum),
so the probe runs once per machine and model; ``refresh=True`` (``mofme bench --reprobe``)
measures again.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from mofme.data.io import atomic_write_text
from mofme.errors import MofmeError

#: Choices of ``--precision``.
PRECISIONS = ("auto", "fp32", "bf16", "int8")
#: A candidate must reach this PSNR (dB) against the fp32 output on the probe image.
TOLERANCE_DB = 50.0
#: ... and be at least this much faster than fp32 (median per-round ratio).
MIN_GAIN = 1.05
#: Probe input size (H, W): real channel widths and token width, few pixels, so it is quick.
PROBE_SIZE = (96, 96)
PROBE_ROUNDS = 3
CACHE_VERSION = 2
#: Candidate name of the fp32 model without ``optimize``'s fast convs (timed, never "chosen").
PLAIN = "fp32-plain-convs"


@dataclass
class ProbeResult:
    """What the probe measured and chose."""

    choice: str  # fp32 | bf16 | int8
    reason: str
    ms: dict[str, float] = field(default_factory=dict)  # median ms per forward at the probe size
    speedup: dict[str, float] = field(default_factory=dict)  # median per-round fp32 / candidate
    psnr_db: dict[str, float] = field(default_factory=dict)  # candidate vs fp32 output
    skipped: dict[str, str] = field(default_factory=dict)  # candidate -> why it was not timed
    tolerance_db: float = TOLERANCE_DB
    size: tuple[int, int] = PROBE_SIZE
    key: str = ""
    cached: bool = False
    fast_convs: bool | None = None  # keep optimize()'s convs (None: the model had none)

    def describe(self) -> str:
        """One line for logs: the choice, why, and what was measured."""
        parts = []
        for name in ("fp32", "bf16", "int8"):
            if name in self.ms:
                q = self.psnr_db.get(name)
                acc = "" if name == "fp32" or q is None else f", {q:.1f} dB vs fp32"
                parts.append(f"{name} {self.ms[name]:.0f} ms ({self.speedup[name]:.2f}x{acc})")
            elif name in self.skipped:
                parts.append(f"{name} skipped: {self.skipped[name]}")
        if PLAIN in self.ms:
            verdict = "kept" if self.fast_convs else "turned off"
            parts.append(
                f"fast convs {verdict} (plain convs {self.ms[PLAIN]:.0f} ms, "
                f"{self.speedup[PLAIN]:.2f}x)"
            )
        how = "cached probe" if self.cached else "probe"
        return f"precision {self.choice} ({how}: {self.reason}; " + "; ".join(parts) + ")"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> ProbeResult:
        d = dict(d)
        d["size"] = tuple(d.get("size", PROBE_SIZE))  # type: ignore[arg-type]
        return cls(**d)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- cache


def cache_path() -> Path:
    root = os.environ.get("MOFME_CACHE_DIR")
    if root:
        return Path(root) / "precision.json"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "mofme" / "precision.json"


def machine_id(device: torch.device) -> str:
    """The hardware a timing is valid for: GPU name, or CPU model plus its ISA flags."""
    if device.type == "cuda":
        return "cuda:" + torch.cuda.get_device_name(device)
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            k, _, v = line.partition(":")
            fields.setdefault(k.strip(), v.strip())  # the first CPU's entry
    name = fields.get("model name") or platform.processor() or platform.machine()
    flags = fields.get("flags", "")
    digest = hashlib.sha1(flags.encode()).hexdigest()[:10] if flags else "noflags"
    return f"cpu:{name}:{digest}"


def model_fingerprint(model: nn.Module) -> str:
    """Config plus a checksum of a sample of every tensor: the tolerance depends on weights."""
    h = hashlib.sha1()
    cfg = getattr(model, "cfg", None)
    h.update(repr(cfg).encode())
    with torch.no_grad():
        for name, t in model.state_dict().items():
            h.update(name.encode())
            h.update(str(tuple(t.shape)).encode())
            sample = t.detach().flatten()[:256].float().cpu().contiguous()
            h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def probe_key(model: nn.Module, device: torch.device, size: tuple[int, int]) -> str:
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    return (
        f"v{CACHE_VERSION}|{machine_id(device)}|torch {torch.__version__}|{device.type}|"
        f"threads {threads}|{size[0]}x{size[1]}|model {model_fingerprint(model)}"
    )


def _read_cache(path: Path) -> dict[str, dict[str, object]]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # missing or corrupt cache: measure again


def _write_cache(path: Path, key: str, result: ProbeResult) -> None:
    """Add one entry, atomically (temp file + rename): concurrent runs never see half a file."""
    data = _read_cache(path)
    data[key] = result.to_dict()
    with contextlib.suppress(MofmeError):  # a read-only home only costs a re-probe next time
        atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))


# ------------------------------------------------------------------------------- probing


def bf16_supported(device: torch.device) -> tuple[bool, str]:
    """Whether bf16 is worth timing at all (a CPU without native bf16 would take minutes)."""
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ok, "" if ok else "this GPU has no bf16"
    if device.type != "cpu":
        return False, f"not probed on {device.type}"
    with contextlib.suppress(AttributeError, RuntimeError):
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False, "no native bf16 on this CPU (oneDNN reports none)"
    return True, ""


def candidate_forwards(
    model: nn.Module, device: torch.device, skipped: dict[str, str]
) -> dict[str, Callable[[Tensor], Tensor]]:
    """``{precision: forward}`` for every candidate that can run on ``device``."""
    from mofme.inference.fast import NNPackConv2d, int8_usable, quantize_int8, undo_optimize
    from mofme.inference.tiling import autocast_context

    def with_amp(m: nn.Module, amp: str) -> Callable[[Tensor], Tensor]:
        def run(x: Tensor) -> Tensor:
            with autocast_context(device, amp):
                return m(x).float()

        return run

    cands = {"fp32": with_amp(model, "none")}
    if any(isinstance(m, NNPackConv2d) for m in model.modules()):
        # optimize()'s Winograd convs were measured on an AVX2 CPU; check them here too.
        plain = copy.deepcopy(model)
        undo_optimize(plain)
        cands[PLAIN] = with_amp(plain, "none")
    ok, why = bf16_supported(device)
    if ok:
        cands["bf16"] = with_amp(model, "bf16")
    else:
        skipped["bf16"] = why
    if device.type != "cpu":
        skipped["int8"] = "dynamic int8 runs on CPU only"
    elif not int8_usable():
        skipped["int8"] = "this PyTorch build has no int8 CPU engine"
    else:
        q = copy.deepcopy(model)
        quantize_int8(q)
        cands["int8"] = with_amp(q, "none")
    return cands


def choose(
    ms: dict[str, float],
    speedup: dict[str, float],
    psnr_db: dict[str, float],
    tolerance_db: float = TOLERANCE_DB,
    min_gain: float = MIN_GAIN,
) -> tuple[str, str]:
    """The fastest candidate within tolerance that beats fp32 by ``min_gain``; else fp32."""
    others = [n for n in ms if n not in ("fp32", PLAIN)]
    ok = [n for n in others if psnr_db.get(n, -1.0) >= tolerance_db and speedup[n] >= min_gain]
    if not ok:
        out = [n for n in others if psnr_db.get(n, -1.0) < tolerance_db]
        slow = [n for n in others if n not in out]
        why = []
        if out:
            why.append(f"{', '.join(out)} out of tolerance (< {tolerance_db:g} dB vs fp32)")
        if slow:
            why.append(f"{', '.join(slow)} not >= {min_gain:g}x faster")
        return "fp32", "; ".join(why) or "no other candidate"
    best = max(ok, key=lambda n: speedup[n])
    return best, f"fastest within {tolerance_db:g} dB of fp32"


def probe(
    model: nn.Module,
    device: torch.device | str | None = None,
    size: tuple[int, int] | None = None,
    rounds: int | None = None,
    refresh: bool = False,
    use_cache: bool = True,
    candidates: dict[str, Callable[[Tensor], Tensor]] | None = None,
    log: Callable[[str], None] | None = None,
) -> ProbeResult:
    """Measure the candidate precisions on ``model`` and choose one (see the module doc).

    ``model`` is used as it will run (fast convs applied or not); it is not modified.
    ``candidates`` replaces the built-in ones (tests inject a fast but inaccurate path).
    ``size`` / ``rounds`` default to ``PROBE_SIZE`` / ``PROBE_ROUNDS``.
    """
    from mofme.inference.tiling import eval_mode, model_device
    from mofme.inference.timing import bench_input, median, paired_ratios, time_interleaved
    from mofme.metrics import psnr

    device = torch.device(device) if device is not None else model_device(model)
    size = size or PROBE_SIZE
    rounds = rounds or PROBE_ROUNDS
    key = probe_key(model, device, size)
    path = cache_path()
    if use_cache and not refresh and candidates is None:
        hit = _read_cache(path).get(key)
        if hit is not None:
            with contextlib.suppress(TypeError, ValueError):
                result = ProbeResult.from_dict(hit)
                result.cached = True
                return result
    skipped: dict[str, str] = {}
    cands = candidates or candidate_forwards(model, device, skipped)
    if "fp32" not in cands:
        raise ValueError("the candidates must include the fp32 reference")
    in_ch = int(getattr(getattr(model, "cfg", None), "in_channels", 3))
    x = bench_input(size, in_ch).to(device)
    if log:
        log(f"probing precisions {', '.join(cands)} at {size[0]}x{size[1]} ...")
    start = time.perf_counter()
    with eval_mode(model), torch.inference_mode():
        outs = {name: fn(x).float().clamp(0, 1).cpu() for name, fn in cands.items()}
        times = time_interleaved(
            {n: (lambda f=f: f(x)) for n, f in cands.items()}, 0, rounds, device
        )
    ratios = paired_ratios(times, "fp32")
    ms = {n: median(t) * 1e3 for n, t in times.items()}
    speedup = {n: median(r) for n, r in ratios.items()}
    psnr_db = {n: min(float(psnr(o, outs["fp32"])[0]), 999.0) for n, o in outs.items()}
    choice, reason = choose(ms, speedup, psnr_db)
    result = ProbeResult(choice, reason, ms, speedup, psnr_db, skipped, TOLERANCE_DB, size, key)
    if PLAIN in ms:  # same values to rounding: only speed decides
        result.fast_convs = speedup[PLAIN] < MIN_GAIN
    if log:
        log(f"probe took {time.perf_counter() - start:.1f} s")
    if use_cache and candidates is None:
        _write_cache(path, key, result)
    return result


# ------------------------------------------------------------------------------- applying


@dataclass
class Precision:
    """What a command runs with: ``amp`` for ``restore_image``, and the notes for logs."""

    name: str  # fp32 | bf16 | int8
    amp: str  # "none" | "bf16"
    note: str
    probe: ProbeResult | None = None


def apply_precision(
    model: nn.Module,
    precision: str = "auto",
    device: torch.device | str | None = None,
    refresh: bool = False,
    log: Callable[[str], None] | None = None,
) -> Precision:
    """Resolve ``precision`` (``auto`` probes) and prepare ``model`` for it, in place.

    ``int8`` converts the model's Linear layers (``quantize_int8``); ``bf16`` and ``fp32``
    leave the weights alone and return the autocast mode for ``restore_image``.
    """
    from mofme.inference.fast import int8_usable, quantize_int8
    from mofme.inference.tiling import model_device

    if precision not in PRECISIONS:
        raise MofmeError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = torch.device(device) if device is not None else model_device(model)
    result = None
    if precision == "auto":
        result = probe(model, device, refresh=refresh, log=log)
        name, note = result.choice, result.describe()
        if result.fast_convs is False:
            from mofme.inference.fast import undo_optimize

            undo_optimize(model)
    else:
        name, note = precision, f"precision {precision} (--precision)"
        if name == "bf16" and not bf16_supported(device)[0] and device.type == "cuda":
            raise MofmeError(f"--precision bf16: {bf16_supported(device)[1]}")
    if name == "int8":
        if device.type != "cpu":
            raise MofmeError("--precision int8 runs on CPU only (dynamic int8 Linear layers)")
        if not int8_usable():
            raise MofmeError("--precision int8: this PyTorch build has no int8 CPU engine")
        quantize_int8(model)
    return Precision(name, "bf16" if name == "bf16" else "none", note, result)
