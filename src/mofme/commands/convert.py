"""``mofme convert``: an official MoFME checkpoint (``best_metric.pth``) -> a mofme checkpoint."""

from __future__ import annotations

import argparse

HELP = "convert an official MoFME checkpoint (best_metric.pth) into a mofme checkpoint, exactly"

EPILOG = """\
The official checkpoint is read with torch.load(weights_only=True): nothing in it is executed.
The result is the `official` preset (GELU router slot 0, (p1 p2 c) unpatch, 2x-1 inside): it
takes images in [0, 1] like every mofme model and equals the official forward on 2x - 1.

examples:
  mofme convert output/train/EXP/best_metric.pth mofme_official.safetensors
  mofme convert best_metric.pth n8k2.safetensors --top-k 2      # trained with --top-k 2
  mofme test mofme_official.safetensors --data data/allweather --resize 720x480
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("official", help="official checkpoint (.pth): a state dict or the training dict")
    p.add_argument("out", help="mofme checkpoint to write (.safetensors)")
    p.add_argument(
        "--top-k",
        type=int,
        default=4,
        help="the --top-k it was trained with (not stored in official checkpoints; "
        "default 4, 0 = dense)",
    )
    p.add_argument(
        "--experts",
        type=int,
        default=None,
        help="expected experts per layer (its --num-expert); a different count is an error "
        "(default: whatever the file has)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def run(args: argparse.Namespace) -> int:
    from mofme.convert import convert

    _, line = convert(
        args.official, args.out, top_k=args.top_k, experts=args.experts, overwrite=args.overwrite
    )
    print(f"wrote {args.out}: {line}")
    return 0
