"""Options and helpers shared by several commands: the argparse pieces, the progress rule and
the one way a command turns its model argument into a model (:func:`load_model`)."""

from __future__ import annotations

import argparse
import os
import sys

from mofme.device import check_threads, cpu_count, max_threads, resolve_device
from mofme.errors import MofmeError
from mofme.outputs import check_writable, refuse_existing

__all__ = [  # re-exported for the commands
    "check_threads",
    "check_writable",
    "cpu_count",
    "max_threads",
    "refuse_existing",
    "resolve_device",
]

CKPT_HELP = "checkpoint (.safetensors), or image / video for the bundled weights"
ROUTING_HELP = "expert selection: topk:K, topp:P[:KMIN[:KMAX]] or dense"


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


def add_output_arguments(p: argparse.ArgumentParser, overwrite_help: str) -> None:
    """The options every command that writes ends with: ``--overwrite``, progress, device."""
    p.add_argument("--overwrite", action="store_true", help=overwrite_help)
    add_progress_argument(p)
    add_device_argument(p)


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


def add_model_arguments(
    p: argparse.ArgumentParser, default_help: str, positional: bool = True
) -> None:
    """The model: ``CKPT`` (positional, optional) or, where the positional arguments are the
    inputs, ``--ckpt``; plus ``--preset`` for an untrained model and ``--routing``."""
    if positional:
        p.add_argument("ckpt", nargs="?", default=None, help=f"{CKPT_HELP}; {default_help}")
    else:
        p.add_argument("--ckpt", default=None, help=f"{CKPT_HELP}; {default_help}")
    p.add_argument(
        "--preset", default=None, help="use an untrained preset (paper, small, tiny) instead"
    )
    p.add_argument("--routing", default=None, help=ROUTING_HELP)


def load_model(
    ckpt: str | None,
    device,  # torch.device
    *,
    preset: str | None = None,
    routing: str | None = None,
    default: str | None = None,
):  # -> MoFMENet
    """The model a command runs, on ``device`` in eval mode; every command's one way to it.

    ``ckpt``: a checkpoint path, or ``image`` / ``video`` for the bundled weights (as in
    ``mofme.load()``, SPEC §9); ``preset``: an untrained preset instead; neither: the bundled
    ``default`` weights. ``routing`` replaces the checkpoint's expert selection.
    """
    from mofme import checkpoint
    from mofme.api import resolve_checkpoint
    from mofme.model.net import MoFMENet

    if ckpt and preset:
        raise MofmeError("give either a checkpoint or --preset, not both")
    if preset:
        model = MoFMENet.from_preset(preset)
    elif ckpt:
        model = checkpoint.load(resolve_checkpoint(ckpt))
    elif default:
        from mofme.weights import bundled_path

        model = checkpoint.load(bundled_path(default))
    else:
        raise MofmeError("give a checkpoint or --preset")
    if routing:
        model.set_routing(routing)
    return model.to(device).eval()


def model_from_args(args: argparse.Namespace, device, default: str | None = None):  # -> MoFMENet
    """:func:`load_model` from the arguments of :func:`add_model_arguments`."""
    return load_model(
        args.ckpt,
        device,
        preset=getattr(args, "preset", None),
        routing=getattr(args, "routing", None),
        default=default,
    )


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


def add_amp_argument(p: argparse.ArgumentParser) -> None:
    """``--amp``: the older spelling of ``--precision fp32 / bf16``."""
    p.add_argument(
        "--amp",
        choices=("none", "bf16"),
        default=None,
        help="older spelling of --precision fp32 / bf16 (bf16 autocast; the router stays fp32)",
    )


def add_tile_arguments(
    p: argparse.ArgumentParser, tile_help: str, tile_type: type = int, default: object = None
) -> None:
    """``--tile`` / ``--overlap`` (checked by ``mofme.inference.options.check_tiling``)."""
    p.add_argument("--tile", type=tile_type, default=default, help=tile_help)
    p.add_argument(
        "--overlap",
        type=int,
        default=None,
        help="tile overlap in pixels (default 32, at most half the tile)",
    )


def add_inference_arguments(p: argparse.ArgumentParser, default_help: str) -> None:
    """The model (``--ckpt``, ``--preset``, ``--routing``) and how it runs (tiles, precision,
    layout, fast paths): the options of ``restore`` and ``video``."""
    add_model_arguments(p, default_help, positional=False)
    add_speed_arguments(p)


def add_speed_arguments(p: argparse.ArgumentParser) -> None:
    """Tiling and precision options shared by ``restore`` and ``video``."""
    from mofme.inference.options import AUTO_MAX_PIXELS, AUTO_TILE

    add_tile_arguments(
        p,
        "N: overlapping N×N tiles (less memory); 0: whole image in one pass; auto "
        "(default): what the checkpoint's model card says is within 0.05 dB of the official "
        f"240-pixel crops; without a card, whole image up to {AUTO_MAX_PIXELS / 2**20:g} MP, "
        f"else {AUTO_TILE}-pixel tiles",
        tile_type=str,
        default="auto",
    )
    add_precision_argument(p)
    add_amp_argument(p)
    p.add_argument(
        "--channels-last", action="store_true", help="channels-last memory layout for all convs"
    )
    p.add_argument(
        "--plain",
        action="store_true",
        help="turn off the CPU fast paths (NNPACK Winograd convs, channels-last head); "
        "they change outputs only by fp32 rounding",
    )


def add_max_pixels_argument(p: argparse.ArgumentParser) -> None:
    """``--max-pixels``: raise (or lower) the pixel budget of the image readers."""
    p.add_argument(
        "--max-pixels",
        default=None,
        metavar="N",
        help="largest image accepted, in pixels (e.g. 250M; 0: no limit); default: "
        "$MOFME_MAX_PIXELS or 100M. Checked from the file header before decoding",
    )
