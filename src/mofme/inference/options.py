"""Everything between a command's options and the model call: the inference options, checked in
one place, the model's preparation (fast paths, precision), and the tile and batch per input.

``InferenceOptions`` is the typed form every entry point builds: the commands (``restore``,
``video``, ``test``, ``stats``, ``bench``) from their command line, the Python API and the web
app from their arguments, so a setting means the same everywhere. ``apply_precision_option``
also takes any object with the same attributes (an argparse namespace).

Tiles: ``"auto"`` follows the checkpoint's model card (:mod:`mofme.inference.policy`), ``0`` (or
``None``) is one whole-image pass, ``N >= 8`` overlapping ``N x N`` tiles. Overlap: 32 pixels by
default, at most half a smaller tile.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from mofme.errors import MofmeError
from mofme.inference.policy import AUTO_MAX_PIXELS, AUTO_TILE, auto_tile, model_card

__all__ = [
    "AUTO_MAX_PIXELS",
    "AUTO_TILE",
    "DEFAULT_OVERLAP",
    "MIN_TILE",
    "InferenceOptions",
    "apply_precision_option",
    "auto_tile",
    "batch_tiles_for",
    "check_tiling",
    "model_card",
]

#: Tile overlap in pixels unless one is given (at most half of a smaller tile).
DEFAULT_OVERLAP = 32
#: The smallest tile: the model's patch size.
MIN_TILE = 8


def check_tiling(
    tile: int | str | None, overlap: int | None = None, *, auto: bool = True, whole: bool = True
) -> tuple[int | str, int]:
    """The one check of ``--tile`` / ``--overlap``: ``(tile, overlap)`` normalised.

    ``tile``: ``"auto"`` (when ``auto``), ``0`` / ``None`` for the whole image (when ``whole``)
    or a size ``>= 8`` in pixels, as a number or text; it comes back as ``"auto"``, ``0`` or the
    size. ``overlap``: ``None`` is :data:`DEFAULT_OVERLAP`, or half the tile when that is less;
    it must lie in ``[0, tile)``.

    Raises:
        MofmeError: naming the option, with the value given.
    """
    if tile is None:
        tile = 0
    if auto and str(tile).lower() == "auto":
        tile = "auto"
    else:
        kinds = ("auto, " if auto else "") + ("0 or " if whole else "")
        try:
            tile = int(tile)
        except (TypeError, ValueError, OverflowError):
            raise MofmeError(f"--tile must be {kinds}a size in pixels, got {tile!r}") from None
        if (tile != 0 or not whole) and tile < MIN_TILE:
            first = "0 (whole image) or " if whole else ""
            raise MofmeError(f"--tile must be {first}at least {MIN_TILE} pixels, got {tile}")
    limit = AUTO_TILE if tile == "auto" else tile
    if overlap is None:
        overlap = DEFAULT_OVERLAP if tile == "auto" or not tile else min(DEFAULT_OVERLAP, tile // 2)
    if overlap < 0 or (limit and overlap >= limit):
        raise MofmeError(f"--overlap must be in [0, --tile), got {overlap}")
    return tile, overlap


@dataclass
class InferenceOptions:
    """How a model restores: tiles, overlap, precision, memory layout, batch, routing.

    Checked when built (``MofmeError`` on a bad value). ``amp`` is the older spelling of
    ``precision`` (``"none"`` / ``"bf16"``); after :meth:`prepare` it holds the autocast mode the
    chosen precision needs, for :func:`mofme.inference.tiling.restore_image`.
    """

    tile: int | str | None = "auto"  # "auto" | 0 (whole image) | N >= 8
    overlap: int | None = None  # None: DEFAULT_OVERLAP, at most half the tile
    precision: str | None = None  # auto | fp32 | bf16 | int8; None: fp32, or as ``amp`` says
    amp: str | None = None
    channels_last: bool = False
    plain: bool = False  # no CPU fast paths (mofme.inference.fast)
    batch_tiles: int | None = None  # tiles per forward pass; None: batch_tiles_for(device)
    routing: str | None = None  # expert selection for the run; None: the checkpoint's

    def __post_init__(self) -> None:
        self.tile, self.overlap = check_tiling(self.tile, self.overlap)

    @classmethod
    def from_args(cls, args: Any, **overrides: Any) -> InferenceOptions:
        """The options a command line holds (``args`` attributes of the same names)."""
        given = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        return cls(**{**given, **overrides})

    def tile_for(self, h: int, w: int, model: Any = None) -> int | None:
        """The tile for an ``h x w`` input (``None``: whole image); ``auto`` follows ``model``'s
        card (:func:`mofme.inference.policy.auto_tile`)."""
        if self.tile == "auto":
            return auto_tile(model, h, w)
        return self.tile or None  # type: ignore[return-value]

    def batch_tiles_on(self, device: Any) -> int:  # device: torch.device
        """Tiles per forward pass on ``device`` (``batch_tiles``, else the device's rule)."""
        return self.batch_tiles or batch_tiles_for(device)

    def prepare(self, model: Any, device: Any, log: Any = None) -> Any:  # -> Precision
        """Prepare ``model`` for these options, in place: the routing, the device's fast paths
        unless ``plain`` (:mod:`mofme.inference.fast`), then the precision (``auto`` measures;
        :mod:`mofme.inference.precision`), which sets ``amp``."""
        from mofme.inference.fast import optimize

        if self.routing:
            model.set_routing(self.routing)
        if not self.plain:
            optimize(model, device)
        # After the conv fast paths: the probe times the model as it will run.
        return apply_precision_option(model, self, device, log=log)


def batch_tiles_for(device) -> int:  # device: torch.device
    """Tiles per forward pass: batches only pay off on GPUs; on CPU one tile keeps memory low."""
    return 8 if device.type == "cuda" else 1


def apply_precision_option(model, opts: Any, device, log=None):  # -> Precision
    """Resolve ``opts.precision`` (and the older ``opts.amp``) for ``model``, in place.

    Sets ``opts.amp`` to the autocast mode the chosen precision needs, so code that passes
    ``amp=opts.amp`` on runs it. ``amp="bf16"`` / ``"none"`` mean ``precision="bf16"`` /
    ``"fp32"``; objects without ``precision`` keep fp32 unless ``amp``.
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
