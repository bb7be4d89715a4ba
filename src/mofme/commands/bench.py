"""``mofme bench``: speed, memory and quality of inference paths vs the official pipeline."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mofme.commands.common import (
    add_device_argument,
    add_model_arguments,
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
    p.add_argument("--overlap", type=int, default=32, help="tile overlap (default 32)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (slow to build)")
    p.add_argument(
        "--bf16", action="store_true", help="time bf16 autocast even without native bf16"
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--tokens", type=int, default=5400, help="FME table: tokens (default 5400)")
    p.add_argument("--fme-dim", type=int, default=384, help="FME table: token width (default 384)")
    p.add_argument("--experts", type=int, default=16, help="FME table: experts (default 16)")
    p.add_argument("--topk", type=int, default=4, help="FME table: top-k (default 4)")
    p.add_argument("--topp", type=float, default=0.6, help="FME table: top-p (default 0.6)")
    p.add_argument("--no-frame", action="store_true", help="skip the frame table")
    p.add_argument("--no-fme", action="store_true", help="skip the FME expert table")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    add_device_argument(p)


def run(args: argparse.Namespace) -> int:
    import torch

    from mofme.bench import (
        BenchResult,
        machine_info,
        matmul_peak_gflops,
        run_fme_bench,
        run_frame_bench,
        to_markdown,
    )
    from mofme.commands.common import load_model

    if args.repeat < 1 or args.warmup < 0:
        raise MofmeError("--repeat must be >= 1 and --warmup >= 0")
    if args.threads is not None:
        if args.threads < 1:
            raise MofmeError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if not args.ckpt and not args.preset:
        args.preset = "paper"
    if args.topk < 1 or args.topk > args.experts:
        raise MofmeError(f"--topk must be in [1, --experts], got {args.topk}")
    size = parse_size(args.size)
    device = resolve_device(args.device)
    model = load_model(args, device)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    info = machine_info(device)
    log("measuring matmul peaks ...")
    peaks = {
        "fp32": matmul_peak_gflops(torch.float32, device),
        "bf16": matmul_peak_gflops(torch.bfloat16, device),
    }
    info.update(
        peak_fp32_gflops=peaks["fp32"],
        peak_bf16_gflops=peaks["bf16"],
        size=f"{size[0]}x{size[1]}",
        model=(args.ckpt or f"preset {args.preset}") + f", routing {model.cfg.routing.describe()}",
        fme=f"{args.tokens} tokens x {args.fme_dim}, E={args.experts}",
    )
    result = BenchResult(machine=info)
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
                log=log,
            )
            result.frame, result.notes = rows, notes
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
    print(to_markdown(result))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result.to_dict(), indent=2))
    return 0
