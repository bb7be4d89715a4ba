"""Synthetic weather on clean photos: rain, rain + fog, lens raindrops, snow, haze, snowy video.

Every image generator has the signature ``fn(clean, rng, severity="medium", view=1.0) ->
degraded`` where
``clean`` is a float32 ``(H, W, 3)`` array in [0, 1] (never modified), ``rng`` a
``numpy.random.Generator`` (the only source of randomness, so a seed reproduces an image
exactly) and ``severity`` one of ``"light"``, ``"medium"``, ``"heavy"``. The output has the
shape of ``clean``, dtype float32, values in [0, 1].

Sizes (streak lengths, flake and drop radii) are given for a 256-pixel image and scaled by
``min(H, W) / 256``; counts are given per 256 x 256 square, so the look of a weather type does
not depend on the image size. ``view`` (default 1) treats the image as a crop of a ``view``
times larger frame: particles ``view`` times bigger and ``view**2`` times fewer, as in a crop
of a large photo. Training data draws it at random, so a model sees the same weather at many
pixel sizes (a model trained on small crops otherwise misses the large flakes and drops of
full-size photos).

The models, each a simplified version of how the public datasets were made:

* **rain** (Rain100 / Outdoor-Rain streaks): several streak layers, far to near, sharing a wind
  angle with per-layer jitter; nearer layers have longer, wider, brighter and sparser streaks.
  Streaks are rendered as anti-aliased line segments (bilinear splats of points along the
  segment, i.e. sparse seeds convolved with an oriented line kernel), blurred across by a
  Gaussian, and screen-blended onto the scene.
* **rain_fog** (Outdoor-Rain): the far streak layers, then atmospheric scattering
  ``I = J·t + A·(1 − t)``, ``t = exp(−β·d)``, then the nearest layer (it is in front of the fog).
* **raindrop** (RainDrop): drops on the lens, ellipses with wobbly outlines, each a small
  wide-angle lens showing an inverted, zoomed-out and defocused view of the scene, darker at the
  rim, with a specular highlight; the drop layer is out of focus and the scene right behind the
  drops is slightly blurred.
* **snow** (Snow100K): flake layers of increasing size and decreasing number, random opacities,
  a fraction motion-blurred into short streaks, soft edges; ``heavy`` adds a veiling haze.
* **haze** (RESIDE-like): the scattering model alone, airlight ``A`` in ~[0.7, 1.0] with a slight
  tint.

The depth map used by fog and haze is a vertical gradient (the top of the frame is farther) with
a random horizon height plus smooth noise, values in (0, 1].

The measured PSNR range per type and severity is in :mod:`mofme.data.calibration`
(``python -m mofme.data.calibration``). Clean clips for the snowy video (camera moves over a
photo, or cuts from a video file) are made by :mod:`mofme.data.clips`.

One module per weather type, all re-exported here: :mod:`~mofme.data.weather.rain` (rain and
rain + fog), :mod:`~mofme.data.weather.raindrop`, :mod:`~mofme.data.weather.snow` (images and
:class:`SnowField` / :func:`snow_video`), :mod:`~mofme.data.weather.haze`;
:mod:`~mofme.data.weather.registry` names them and builds the composites
(:func:`apply_weather`); :mod:`~mofme.data.weather.common` holds the shared low-level helpers
(checks, size rules, :func:`gaussian_blur`, splats, :func:`depth_map`, :func:`scatter`).
"""

from mofme.data.weather.common import (
    SEVERITIES,
    FogParams,
    WeatherFn,
    depth_map,
    gaussian_blur,
    scatter,
)
from mofme.data.weather.haze import HAZE_PARAMS, haze
from mofme.data.weather.rain import RAIN_FOG_PARAMS, RAIN_PARAMS, RainParams, rain, rain_fog
from mofme.data.weather.raindrop import RAINDROP_PARAMS, RaindropParams, raindrop
from mofme.data.weather.registry import ALL_TYPES, CLEAN, COMPOSITES, WEATHER_TYPES, apply_weather
from mofme.data.weather.snow import (
    SNOW_PARAMS,
    SNOW_VIDEO_PARAMS,
    SnowField,
    SnowParams,
    SnowVideoParams,
    snow,
    snow_video,
)

__all__ = [
    "ALL_TYPES",
    "CLEAN",
    "COMPOSITES",
    "HAZE_PARAMS",
    "RAINDROP_PARAMS",
    "RAIN_FOG_PARAMS",
    "RAIN_PARAMS",
    "SEVERITIES",
    "SNOW_PARAMS",
    "SNOW_VIDEO_PARAMS",
    "WEATHER_TYPES",
    "FogParams",
    "RainParams",
    "RaindropParams",
    "SnowField",
    "SnowParams",
    "SnowVideoParams",
    "WeatherFn",
    "apply_weather",
    "depth_map",
    "gaussian_blur",
    "haze",
    "rain",
    "rain_fog",
    "raindrop",
    "scatter",
    "snow",
    "snow_video",
]
