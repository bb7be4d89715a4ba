"""``mofme export``: a checkpoint -> an ONNX file (dynamic batch, height, width), checked with ONNX
Runtime against PyTorch."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mofme.errors import MofmeError

HELP = "export a checkpoint to ONNX (any height/width, routing in the graph), checked with ORT"

_EPILOG = """\
The graph takes input (B, C_in, H, W) float32 in [0, 1] (C_in 3 for an image model; 6 for a
video model: current frame + previous restored frame, zeros for the first) and returns
(B, 3, H, W). Batch, height and width are dynamic: multiples of the patch size (8) run as they
are; any other size >= 8 is reflect-padded inside the graph at the bottom/right to the next
multiple of 8 and the output cropped back, as in PyTorch. The trained routing (router + top-k,
or the --routing given) is inside the graph; the experts are computed densely with a mask
(every expert on every token, weights exactly 0 outside the selected ones), which equals the
sparse PyTorch path to fp32 rounding. Opset 17 by default (LayerNormalization); 18-20 also
work. The file is checked with ONNX Runtime against PyTorch at 64x96, 37x50 and 120x80 (max abs
difference <= 1e-4, else nothing is written).
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = _EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument(
        "ckpt",
        metavar="CKPT",
        help="checkpoint (.safetensors), or 'image' / 'video' for the bundled weights",
    )
    p.add_argument("output", metavar="OUT.onnx", help="the ONNX file to write")
    p.add_argument(
        "--routing",
        default=None,
        help="expert selection baked into the graph: topk:K, topp:P[:KMIN[:KMAX]] or dense "
        "(default: the checkpoint's)",
    )
    p.add_argument(
        "--opset",
        type=int,
        default=None,
        help="ONNX opset, 17-20 (default 17; 18 with --exporter dynamo)",
    )
    p.add_argument(
        "--exporter",
        choices=("auto", "torchscript", "dynamo"),
        default="auto",
        help="PyTorch exporter: torchscript (fast, no extra dependency; what auto uses while "
        "PyTorch ships it) or dynamo (torch.export; needs onnxscript, opset >= 18)",
    )
    p.add_argument(
        "--no-check",
        action="store_true",
        help="skip the ONNX Runtime vs PyTorch comparison (done by default when onnxruntime "
        "is installed)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT.onnx")
    p.add_argument(
        "--device",
        default="cpu",
        help="device of the PyTorch reference in the check: cpu (default; fp32 like ONNX "
        "Runtime's CPU provider: GPU TF32 convolutions would blur a 1e-4 comparison), cuda, ...",
    )


def run(args: argparse.Namespace) -> int:
    import importlib.util
    import tempfile

    from mofme.api import resolve_checkpoint
    from mofme.commands.common import load_model, resolve_device
    from mofme.export import CHECK_SIZES, TOLERANCE, check_onnx, export_onnx, onnx_opset
    from mofme.outputs import check_writable, refuse_existing

    out = Path(args.output)
    if out.suffix.lower() != ".onnx":
        raise MofmeError(f"OUT must end in .onnx, got {out}")
    refuse_existing([out], args.overwrite)
    check_writable(out)  # now, not after the export
    device = resolve_device(args.device)
    path = resolve_checkpoint(args.ckpt)
    # Exported from the CPU copy; --device is where the PyTorch reference of the check runs.
    model = load_model(str(path), "cpu", routing=args.routing)
    cfg = model.cfg
    print(
        f"{path.name}: {cfg.in_channels}-channel input, dim {cfg.dim}, depth {cfg.depth}, "
        f"{cfg.num_experts} experts, routing {cfg.routing.describe()}",
        file=sys.stderr,
    )
    check = not args.no_check and importlib.util.find_spec("onnxruntime") is not None
    # Export next to the output, check, and only then move into place: a file that fails the
    # check never appears under the output name.
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}.export-") as tmp:
        staged = Path(tmp) / out.name
        opset = args.opset or (18 if args.exporter == "dynamo" else 17)
        export_onnx(model, staged, opset=opset, exporter=args.exporter)
        if check:
            results = check_onnx(staged, model, device=device)
            worst = max(diff for _, _, diff in results)
            for h, w, diff in results:
                print(f"  {h}x{w}: max |ONNX Runtime - PyTorch| = {diff:.2e}", file=sys.stderr)
            if worst > TOLERANCE:
                raise MofmeError(
                    f"ONNX Runtime differs from PyTorch by {worst:.2e} (> {TOLERANCE:g}); "
                    f"{out} not written"
                )
            verdict = f"checked with ONNX Runtime: max abs diff {worst:.1e} at " + ", ".join(
                f"{h}x{w}" for h, w in CHECK_SIZES
            )
        elif args.no_check:
            verdict = "not checked (--no-check)"
        else:
            verdict = "not checked: onnxruntime is not installed (pip install 'mofme[onnx]')"
        opset = onnx_opset(staged)
        staged.replace(out)
    size_mb = out.stat().st_size / 2**20
    print(f"wrote {out} ({size_mb:.1f} MB, opset {opset}); {verdict}")
    return 0
