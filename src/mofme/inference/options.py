"""Everything between a command's options and the model call: validate the speed options,
prepare the model (fast paths, precision), and choose tiles and batches per input.

The commands (``restore``, ``video``, ``test``, ...), the Python API and the web app share these,
so a setting means the same everywhere. ``opts`` is any object with the attributes of the
command-line options (``tile``, ``overlap``, ``precision``, ``amp``, ``plain``): an argparse
namespace, or the API's ``SimpleNamespace``.
"""

from __future__ import annotations

from typing import Any

from mofme.errors import MofmeError
from mofme.inference.policy import AUTO_MAX_PIXELS, AUTO_TILE, auto_tile, model_card

__all__ = [
    "AUTO_MAX_PIXELS",
    "AUTO_TILE",
    "apply_precision_option",
    "auto_tile",
    "batch_tiles_for",
    "check_speed_options",
    "model_card",
    "prepare_model",
    "tile_for",
]


def prepare_model(model, opts: Any, device, log=None):  # -> Precision
    """Apply the device's fast paths unless ``--plain`` (see ``mofme.inference.fast``), then
    ``--precision`` (``auto`` measures; see ``mofme.inference.precision``); sets ``opts.amp``."""
    from mofme.inference.fast import optimize

    if not opts.plain:
        optimize(model, device)
    # After the conv fast paths: the probe times the model as it will run.
    return apply_precision_option(model, opts, device, log=log)


def check_speed_options(opts: Any) -> None:
    """Validate ``--tile`` / ``--overlap``; ``opts.tile`` becomes ``"auto"``, 0 or N >= 8."""
    if str(opts.tile).lower() != "auto":
        try:
            opts.tile = int(opts.tile)
        except ValueError:
            raise MofmeError(
                f"--tile must be auto, 0 or a size in pixels, got {opts.tile!r}"
            ) from None
        if opts.tile != 0 and opts.tile < 8:
            raise MofmeError(
                f"--tile must be 0 (whole image) or at least 8 pixels, got {opts.tile}"
            )
    else:
        opts.tile = "auto"
    limit = AUTO_TILE if opts.tile == "auto" else opts.tile
    if opts.overlap < 0 or (limit and opts.overlap >= limit):
        raise MofmeError(f"--overlap must be in [0, tile), got {opts.overlap}")


def batch_tiles_for(device) -> int:  # device: torch.device
    """Tiles per forward pass: batches only pay off on GPUs; on CPU one tile keeps memory low."""
    return 8 if device.type == "cuda" else 1


def tile_for(opts: Any, h: int, w: int, model: Any = None) -> int | None:
    """The tile size to use for an ``h×w`` input (``None`` = whole image); ``auto`` follows
    ``model``'s card (:func:`mofme.inference.policy.auto_tile`)."""
    if opts.tile == "auto":
        return auto_tile(model, h, w)
    return opts.tile or None


def apply_precision_option(model, opts: Any, device, log=None):  # -> Precision
    """Resolve ``--precision`` (and the older ``--amp``) for ``model``, in place.

    Sets ``opts.amp`` to the autocast mode the chosen precision needs, so code that passes
    ``amp=opts.amp`` on runs it. ``--amp bf16`` / ``--amp none`` mean ``--precision bf16`` /
    ``fp32``; namespaces without ``--precision`` (the Python API's) keep fp32 unless ``--amp``.
    """
    from mofme.inference.precision import apply_precision

    amp = getattr(opts, "amp", None)
    precision = getattr(opts, "precision", None)
    if amp is not None:
        legacy = "bf16" if amp == "bf16" else "fp32"
        if precision not in (None, "auto", legacy):
            raise MofmeError(f"--amp {amp} contradicts --precision {precision}; give one of them")
        precision = legacy
    chosen = apply_precision(model, precision or "fp32", device, log=log)
    opts.amp = chosen.amp
    return chosen
