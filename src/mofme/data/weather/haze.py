"""Haze (RESIDE-like): atmospheric scattering over a random depth map."""

from __future__ import annotations

import numpy as np

from mofme.data.weather import common
from mofme.data.weather.common import FogParams

HAZE_PARAMS: dict[str, FogParams] = {
    "light": FogParams(beta=(0.09, 0.2), airlight=(0.7, 1.0)),
    "medium": FogParams(beta=(0.18, 0.36), airlight=(0.7, 1.0)),
    "heavy": FogParams(beta=(0.4, 0.7), airlight=(0.7, 1.0)),
}


def haze(
    clean: np.ndarray, rng: np.random.Generator, severity: str = "medium", view: float = 1.0
) -> np.ndarray:
    """Haze by atmospheric scattering with a random depth map (parameters:
    :data:`HAZE_PARAMS`). ``(H, W, 3)`` -> ``(H, W, 3)``. ``view`` is accepted for a
    uniform signature: scattering has no particle size."""
    img, p, _ = common.checked(clean, HAZE_PARAMS, severity, view)
    h, w = img.shape[:2]
    depth = common.depth_map(h, w, rng)
    out = common.scatter(img, depth, rng.uniform(*p.beta), common.draw_airlight(rng, *p.airlight))
    return np.clip(out, 0.0, 1.0).astype(np.float32)
