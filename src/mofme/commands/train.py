"""``mofme train``: train an image or video model from a YAML config."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mofme.commands.common import add_progress_argument, want_progress
from mofme.errors import MofmeError

HELP = "train an image or video model from a YAML config (resume, TensorBoard, DDP via torchrun)"

EPILOG = """\
examples:
  mofme train configs/bundled_image.yaml
  mofme train configs/bundled_image.yaml --set train.lr=1e-3 --set model.router=uar
  mofme train configs/bundled_image.yaml --resume        # continue after an interruption
  mofme train --resume --out runs/bundled_image           # same, config from OUT/config.yaml
  mofme train configs/finetune.yaml --init image          # fine-tune the bundled image model
  torchrun --nproc_per_node 4 -m mofme.cli train configs/allweather_paper.yaml   # 4 GPUs, DDP

Ctrl-C (or SIGTERM) finishes the current step and saves OUT/model_last.safetensors and
OUT/state_last.pt; --resume continues exactly where the run stopped.

A run folder is locked while a run uses it (OUT/.mofme-train.lock: pid, host, start time); a
second run on it, --resume included, is refused with a message naming the first. A lock left
by a process that has died is taken over.
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
        "--init",
        default=None,
        metavar="CKPT",
        help="fine-tune: start from this mofme checkpoint (or image / video for the bundled "
        "weights); sets train.init",
    )
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
    add_progress_argument(p)


def run(args: argparse.Namespace) -> int:
    from mofme.train import load_config, train

    path = args.config
    if path is None:
        if not (args.resume and args.out):
            raise MofmeError("give a config file (or --resume --out DIR to reuse DIR/config.yaml)")
        path = Path(args.out) / "config.yaml"
    # The flags are overrides like --set (after them, so they win): the config is loaded and
    # checked once, with them. JSON quoting keeps a path a YAML string whatever it looks like.
    overrides = list(args.overrides)
    if args.init is not None:
        overrides.append(f"train.init={json.dumps(args.init)}")
    if args.out is not None:
        overrides.append(f"out={json.dumps(args.out)}")
    if args.steps is not None:
        overrides += [f"train.steps={args.steps}", "train.epochs=null"]
    if args.device is not None:
        overrides.append(f"train.device={json.dumps(args.device)}")
    cfg = load_config(path, overrides)
    result = train(
        cfg,
        resume=args.resume,
        overwrite=args.overwrite,
        stop_after=args.stop_after,
        progress=want_progress(args),
    )
    if result["interrupted"] == "SIGINT":
        return 130
    if result["interrupted"] == "SIGTERM":
        return 143
    return 0
