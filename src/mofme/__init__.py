"""mofme: all-in-one deweathering with a sparse feature-modulation mixture of experts."""

from mofme.errors import MofmeError

__version__ = "0.1.0"
__all__ = ["MofmeError", "__version__"]
