"""Every weather by name: the single types, the composites, and :func:`apply_weather`."""

from __future__ import annotations

import numpy as np

from mofme.data.weather import common
from mofme.data.weather.common import WeatherFn
from mofme.data.weather.haze import haze
from mofme.data.weather.rain import rain, rain_fog
from mofme.data.weather.raindrop import raindrop
from mofme.data.weather.snow import snow
from mofme.errors import MofmeError

WEATHER_TYPES: dict[str, WeatherFn] = {
    "rain": rain,
    "rain_fog": rain_fog,
    "raindrop": raindrop,
    "snow": snow,
    "haze": haze,
}

COMPOSITES: dict[str, tuple[str, ...]] = {
    "snow_haze": ("haze", "snow"),  # flakes in front of the haze
    "rain_drops": ("rain", "raindrop"),  # streaks in the scene, drops on the lens
    "rain_haze": ("haze", "rain"),
}
"""Composite weather: generators applied in order (farthest first)."""

ALL_TYPES: tuple[str, ...] = (*WEATHER_TYPES, *COMPOSITES)
CLEAN = "clean"
"""The identity "weather": the input is the clean photo itself."""


def apply_weather(
    name: str,
    clean: np.ndarray,
    rng: np.random.Generator,
    severity: str = "medium",
    strength: float = 1.0,
    view: float = 1.0,
) -> np.ndarray:
    """Any single, composite or ``"clean"`` weather, optionally weakened.

    ``strength`` in [0, 1] blends the degradation toward the clean image
    (``clean + s·(weathered − clean)``): with ``"light"`` severity, small strengths give
    degradations that are barely visible; ``view`` scales particle sizes as for a crop of a
    ``view`` times larger frame (module docstring). ``(H, W, 3)`` float32 -> same.
    """
    img = common.check_image(clean)
    if name == CLEAN:
        return img.copy()
    if name not in WEATHER_TYPES and name not in COMPOSITES:
        raise MofmeError(f"unknown weather {name!r}; choose one of {', '.join(ALL_TYPES)}")
    out = img
    for part in COMPOSITES.get(name, (name,)):
        out = WEATHER_TYPES[part](out, rng, severity, view)
    if strength < 1.0:
        out = img + float(strength) * (out - img)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
