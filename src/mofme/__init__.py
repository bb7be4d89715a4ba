"""mofme: all-in-one deweathering with a sparse feature-modulation mixture of experts.

>>> import mofme
>>> model = mofme.load()              # see mofme.api; torch is imported on first use
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mofme.errors import MofmeError

if TYPE_CHECKING:
    from mofme.api import Restorer, load

__version__ = "0.1.0"
__all__ = ["MofmeError", "Restorer", "__version__", "load"]


def __getattr__(name: str) -> Any:
    # Lazy, so that ``import mofme`` (and ``mofme --help``) does not import torch.
    if name in ("load", "Restorer"):
        from mofme import api

        return getattr(api, name)
    raise AttributeError(f"module 'mofme' has no attribute {name!r}")
