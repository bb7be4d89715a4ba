"""``mofme bench``: speed, memory and quality of inference paths vs the official pipeline."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mofme.commands.common import (
    add_device_argument,
    add_model_arguments,
    add_precision_argument,
    check_threads,
    model_from_args,
    parse_size,
    resolve_device,
)
from mofme.errors import MofmeError

HELP = "benchmark inference: official crop pipeline vs sparse / whole-image / fast paths, per frame"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(
        p, "default: --preset paper (random weights; speed does not depend on them)"
    )
    p.add_argument("--size", default="480x720", help="frame size HxW (default 480x720)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per variant (default 3)")
    p.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="extra untimed runs per variant (default 0: the first run, kept for PSNR, warms up)",
    )
    p.add_argument("--crop", type=int, default=240, help="official crop size (default 240)")
    p.add_argument("--tile", type=int, default=256, help="tile size of the tiled row (default 256)")
    p.add_argument(
        "--overlap", type=int, default=None, help="tile overlap (default 32, at most tile/2)"
    )
    p.add_argument("--compile", action="store_true", help="also time torch.compile (slow to build)")
    p.add_argument(
        "--bf16", action="store_true", help="time bf16 autocast even without native bf16"
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    add_precision_argument(p)
    p.add_argument(
        "--reprobe",
        action="store_true",
        help="with --precision auto: measure again instead of using the cached probe",
    )
    p.add_argument("--tokens", type=int, default=5400, help="FME table: tokens (default 5400)")
    p.add_argument("--fme-dim", type=int, default=384, help="FME table: token width (default 384)")
    p.add_argument("--experts", type=int, default=16, help="FME table: experts (default 16)")
    p.add_argument("--topk", type=int, default=4, help="FME table: top-k (default 4)")
    p.add_argument("--topp", type=float, default=0.6, help="FME table: top-p (default 0.6)")
    p.add_argument("--no-frame", action="store_true", help="skip the frame table")
    p.add_argument("--no-fme", action="store_true", help="skip the FME expert table")
    p.add_argument(
        "--no-onnx",
        action="store_true",
        help="skip the ONNX Runtime vs PyTorch table (run when onnx and onnxruntime are "
        "installed: pip install 'mofme[onnx]')",
    )
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    add_device_argument(p)


def check_bench_options(args: argparse.Namespace) -> None:
    """Refuse sizes the timed paths cannot run (a crop or tile below the model's 8-pixel patch
    ends in a convolution error; a huge frame in an allocation failure), before any timing."""
    from mofme.data.io import max_pixels
    from mofme.inference.options import MIN_TILE, check_tiling

    if args.crop < MIN_TILE:
        raise MofmeError(f"--crop must be at least {MIN_TILE} pixels, got {args.crop}")
    args.tile, args.overlap = check_tiling(args.tile, args.overlap, auto=False, whole=False)
    for name in ("tokens", "fme_dim", "experts"):
        if getattr(args, name) < 1:
            flag = "--" + name.replace("_", "-")
            raise MofmeError(f"{flag} must be >= 1, got {getattr(args, name)}")
    if not 0 < args.topp <= 1:  # also refuses NaN
        raise MofmeError(f"--topp must be in (0, 1], got {args.topp}")
    h, w = parse_size(args.size)
    limit = max_pixels()
    if limit and h * w > limit:
        raise MofmeError(
            f"--size {h}x{w} is beyond the pixel budget of {limit / 1e6:g} MP "
            "(raise it with MOFME_MAX_PIXELS=N)"
        )


def run(args: argparse.Namespace) -> int:
    import torch

    from mofme.bench import BenchResult, run_fme_bench, run_frame_bench, to_markdown
    from mofme.inference.timing import machine_info, matmul_peaks

    if args.repeat < 1 or args.warmup < 0:
        raise MofmeError("--repeat must be >= 1 and --warmup >= 0")
    check_bench_options(args)
    if args.threads is not None:
        if args.threads < 1:
            raise MofmeError(f"--threads must be >= 1, got {args.threads}")
        check_threads("--threads", args.threads)
        torch.set_num_threads(args.threads)
    if not args.ckpt and not args.preset:
        args.preset = "paper"
    if args.topk < 1 or args.topk > args.experts:
        raise MofmeError(f"--topk must be in [1, --experts], got {args.topk}")
    size = parse_size(args.size)
    if args.json:
        from mofme.outputs import check_writable, refuse_existing

        # Before minutes of timing, not after.
        refuse_existing([Path(args.json)], args.overwrite)
        check_writable(args.json)
    device = resolve_device(args.device)
    model = model_from_args(args, device)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    info = machine_info(device)
    log("measuring matmul peaks ...")
    measured = matmul_peaks(device)
    peaks = {name: m["best"] for name, m in measured.items()}
    info.update(
        peak_fp32_gflops=peaks["fp32"],
        peak_bf16_gflops=peaks["bf16"],
        median_fp32_gflops=measured["fp32"]["median"],
        median_bf16_gflops=measured["bf16"]["median"],
        peak_matmul_n=int(measured["fp32"]["n"]),
        size=f"{size[0]}x{size[1]}",
        model=(args.ckpt or f"preset {args.preset}") + f", routing {model.cfg.routing.describe()}",
        fme=f"{args.tokens} tokens x {args.fme_dim}, E={args.experts}",
    )
    result = BenchResult(machine=info)
    precision, probe_note, fast_convs = args.precision, "", True
    if not args.no_frame and precision == "auto":
        import copy

        from mofme.inference.fast import optimize
        from mofme.inference.precision import probe

        prepared = copy.deepcopy(model)
        optimize(prepared, device)  # the probe times the model as the default path runs it
        found = probe(prepared, device, refresh=args.reprobe, log=log)
        precision, probe_note = found.choice, found.describe()
        fast_convs = found.fast_convs is not False
        info["probe"] = found.to_dict()
        del prepared
    info["precision"] = precision
    with torch.inference_mode():
        if not args.no_frame:
            rows, notes = run_frame_bench(
                model,
                size,
                device,
                repeat=args.repeat,
                warmup=args.warmup,
                crop=args.crop,
                tile=args.tile,
                overlap=args.overlap,
                compile_model=args.compile,
                force_bf16=args.bf16,
                peaks=peaks,
                precision=precision,
                fast_convs=fast_convs,
                log=log,
            )
            result.frame, result.notes = rows, notes
            result.notes.insert(0, probe_note or f"precision {precision} (--precision)")
        if not args.no_fme:
            log("FME expert bench ...")
            result.fme = run_fme_bench(
                args.tokens,
                args.fme_dim,
                args.experts,
                args.topk,
                args.topp,
                device,
                repeat=max(args.repeat, 3),
                warmup=max(args.warmup, 1),
            )
    if not args.no_onnx:
        import importlib.util

        if all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime")):
            from mofme.bench import run_onnx_bench

            result.onnx, info["onnx"] = run_onnx_bench(
                model, size, device, repeat=args.repeat, warmup=args.warmup, log=log
            )
        else:
            result.notes.append("ONNX Runtime table skipped: pip install 'mofme[onnx]' for it")
    print(to_markdown(result))
    if args.json:
        from mofme.checkpoint import atomic_write

        text = json.dumps(result.to_dict(), indent=2)
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(text))
    return 0
