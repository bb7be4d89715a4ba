"""Options and helpers shared by several commands."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from mofme.device import check_threads, cpu_count, max_threads, resolve_device
from mofme.errors import MofmeError
from mofme.inference.options import apply_precision_option

__all__ = [  # re-exported for the commands
    "apply_precision_option",
    "check_threads",
    "cpu_count",
    "max_threads",
    "resolve_device",
]


def refuse_existing(paths: Iterable[Path], overwrite: bool) -> None:
    """The one rule of every command that writes: never replace a file unless ``--overwrite``."""
    if overwrite:
        return
    existing = [p for p in paths if p.exists() or p.is_symlink()]
    if existing:
        more = f" (and {len(existing) - 1} more outputs)" if len(existing) > 1 else ""
        raise MofmeError(f"{existing[0]} already exists{more}; pass --overwrite to replace it")


def check_writable(path: str | os.PathLike[str], folder: bool = False) -> None:
    """Fail now, in one line, when ``path`` cannot be written, instead of after all the work.

    ``path`` is an output file, or with ``folder`` an output folder. A temporary file is created
    and removed again, and so are any folders created for it: nothing is left behind.
    """
    path = Path(path)
    if not folder and path.is_dir():
        raise MofmeError(f"cannot write {path}: it is a folder")
    target = path if folder else path.parent
    created: list[Path] = []
    probe = None
    try:
        existing = target
        while not existing.exists():
            created.append(existing)
            existing = existing.parent
        if not existing.is_dir():
            raise MofmeError(f"cannot write {path}: {existing} is not a folder")
        for missing in reversed(created):
            missing.mkdir()
        fd, probe = tempfile.mkstemp(
            prefix=f".{path.name}.tmp-{os.getpid()}.", suffix=".tmp", dir=target
        )
        os.close(fd)
    except OSError as e:
        raise MofmeError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if probe is not None:
            with contextlib.suppress(OSError):
                os.unlink(probe)
        for made in created:  # deepest first
            with contextlib.suppress(OSError):
                made.rmdir()


def add_progress_argument(p: argparse.ArgumentParser) -> None:
    """``--progress`` / ``--no-progress``: one rule for every command's progress bars."""
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress bars on stderr (default: only when stderr is a terminal)",
    )


def want_progress(args: argparse.Namespace) -> bool:
    """The progress rule: ``--progress`` / ``--no-progress`` if given, else stderr is a terminal.

    Bars redrawn with carriage returns are noise in a log file or a pipe, and a silent terminal
    during a long run looks hung.
    """
    choice = getattr(args, "progress", None)
    if choice is not None:
        return bool(choice)
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def add_device_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when present, else CPU), cpu, cuda, cuda:1, ...",
    )


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
        "ckpt",
        nargs="?",
        default=None,
        help=f"checkpoint (.safetensors), or image / video for the bundled weights; {default_help}",
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
        from mofme.api import resolve_checkpoint

        # `image` / `video` name the bundled weights here as in mofme.load() (SPEC §9).
        model = checkpoint.load(resolve_checkpoint(args.ckpt))
    elif default is not None:
        from mofme.weights import bundled_path

        model = checkpoint.load(bundled_path(default))
    else:
        raise MofmeError("give a checkpoint or --preset")
    if getattr(args, "routing", None):
        model.set_routing(args.routing)
    return model.to(device).eval()


def add_precision_argument(p: argparse.ArgumentParser) -> None:
    """``--precision auto|fp32|bf16|int8`` for every command that runs a network."""
    from mofme.inference.precision import PRECISIONS, TOLERANCE_DB

    default = os.environ.get("MOFME_PRECISION", "auto")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=default if default in PRECISIONS else "auto",
        help="auto (default, or $MOFME_PRECISION): measure fp32, bf16 autocast and int8 Linear "
        "layers once on this machine and model (cached in ~/.cache/mofme) and use the fastest "
        f"within {TOLERANCE_DB:g} dB of the fp32 output; fp32, bf16 or int8 (CPU) force one",
    )
