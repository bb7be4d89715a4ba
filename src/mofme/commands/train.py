"""``mofme train``: train an image or video model from a YAML config."""

from __future__ import annotations

import argparse
from pathlib import Path

from mofme.errors import MofmeError

HELP = "train an image or video model from a YAML config (resume, TensorBoard, DDP via torchrun)"

EPILOG = """\
examples:
  mofme train configs/bundled_image.yaml
  mofme train configs/bundled_image.yaml --set train.lr=1e-3 --set model.router=uar
  mofme train configs/bundled_image.yaml --resume        # continue after an interruption
  mofme train --resume --out runs/bundled_image           # same, config from OUT/config.yaml
  torchrun --nproc_per_node 4 -m mofme.cli train configs/allweather_paper.yaml   # 4 GPUs, DDP

Ctrl-C (or SIGTERM) finishes the current step and saves OUT/model_last.safetensors and
OUT/state_last.pt; --resume continues exactly where the run stopped.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument(
        "config",
        nargs="?",
        default=None,
        help="training config (YAML); with --resume and --out it defaults to OUT/config.yaml",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.lr=1e-3 (repeatable)",
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT/state_last.pt")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start fresh even though OUT holds a run (its checkpoints and logs are replaced)",
    )
    p.add_argument("--out", default=None, help="run folder (overrides the config's out)")
    p.add_argument(
        "--steps", type=int, default=None, help="total steps (overrides train.steps/epochs)"
    )
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="STEP",
        help="save and stop at this step as if interrupted (resume later with --resume)",
    )
    p.add_argument(
        "--device", default=None, help="auto, cpu, cuda, cuda:1 ... (overrides train.device)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from mofme.train import load_config, train

    path = args.config
    if path is None:
        if not (args.resume and args.out):
            raise MofmeError("give a config file (or --resume --out DIR to reuse DIR/config.yaml)")
        path = Path(args.out) / "config.yaml"
    cfg = load_config(path, args.overrides)
    if args.out is not None:
        cfg.out = args.out
    if args.steps is not None:
        cfg.train.steps, cfg.train.epochs = args.steps, None
    if args.device is not None:
        cfg.train.device = args.device
    cfg.validate()
    result = train(
        cfg,
        resume=args.resume,
        overwrite=args.overwrite,
        stop_after=args.stop_after,
        progress=not args.no_progress,
    )
    if result["interrupted"] == "SIGINT":
        return 130
    if result["interrupted"] == "SIGTERM":
        return 143
    return 0
