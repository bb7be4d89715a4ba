"""Options and helpers shared by several commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from mofme.errors import MofmeError


def add_device_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when present, else CPU), cpu, cuda, cuda:1, ...",
    )


def resolve_device(name: str):  # -> torch.device
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise MofmeError(f"unknown device {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MofmeError(f"device {name!r} requested but CUDA is not available")
    return dev


def parse_size(text: str) -> tuple[int, int]:
    """``240x320`` (H x W) -> ``(240, 320)``; a single number means a square."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        raise MofmeError(f"bad size {text!r}: use HxW, e.g. 240x320") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise MofmeError(f"bad size {text!r}: use HxW with positive integers, e.g. 240x320")
    return parts[0], parts[1]


def add_model_arguments(p: argparse.ArgumentParser, default_help: str) -> None:
    """``CKPT`` positional (optional) plus ``--preset`` for an untrained model."""
    p.add_argument(
        "ckpt", nargs="?", default=None, help=f"checkpoint (.safetensors); {default_help}"
    )
    p.add_argument(
        "--preset", default=None, help="use an untrained preset (paper, small, tiny) instead"
    )
    p.add_argument(
        "--routing", default=None, help="expert selection: topk:K, topp:P[:KMIN[:KMAX]] or dense"
    )


def load_model(args: argparse.Namespace, device, default: str | None = None):
    """Model from ``args.ckpt`` / ``args.preset`` / the bundled ``default`` weights, in eval mode."""
    from mofme import checkpoint
    from mofme.model.net import MoFMENet

    if args.ckpt and getattr(args, "preset", None):
        raise MofmeError("give either a checkpoint or --preset, not both")
    if getattr(args, "preset", None):
        model = MoFMENet.from_preset(args.preset)
    elif args.ckpt:
        model = checkpoint.load(Path(args.ckpt))
    elif default is not None:
        from mofme.weights import bundled_path

        model = checkpoint.load(bundled_path(default))
    else:
        raise MofmeError("give a checkpoint or --preset")
    if getattr(args, "routing", None):
        model.set_routing(args.routing)
    return model.to(device).eval()
