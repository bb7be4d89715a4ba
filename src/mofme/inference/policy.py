"""``--tile auto``: whole image or tiles, chosen per checkpoint from its model card.

A model sees its whole input through global attention, so the best tile size depends on what
it was trained on: a model trained on 128-pixel crops can lose quality on a whole 1-MP image
(more tokens, other statistics) where one trained on larger crops gains. The bundling script
(``scripts/bundle.py``) measures this on the held-out benchmark and records the fastest
setting within 0.05 dB of the official-style 240x240 crops in the model card
(``card["inference"]["tile"]``, 0 = whole image). Without a card: whole image up to
:data:`AUTO_MAX_PIXELS`, else :data:`AUTO_TILE`-pixel tiles (memory).
"""

from __future__ import annotations

from typing import Any

from torch import nn

AUTO_MAX_PIXELS = 1 << 20
AUTO_TILE = 512


def model_card(model: nn.Module) -> dict[str, Any]:
    """The model card stored in a checkpoint's metadata (``{}`` when it has none)."""
    extra = getattr(model, "extra", None)
    card = extra.get("card") if isinstance(extra, dict) else None
    return card if isinstance(card, dict) else {}


def auto_tile(model: nn.Module | None, h: int, w: int) -> int | None:
    """The tile side for an ``h x w`` input under ``--tile auto`` (``None`` = whole image)."""
    inference = model_card(model).get("inference", {}) if model is not None else {}
    tile = inference.get("tile") if isinstance(inference, dict) else None
    if isinstance(tile, int) and not isinstance(tile, bool) and tile >= 8:
        return tile if max(h, w) > tile else None
    return AUTO_TILE if h * w > AUTO_MAX_PIXELS else None
