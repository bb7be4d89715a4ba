"""The held-out examples of the page: synthetic weather on photos the bundled weights never saw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mofme.data.clips import camera_clip, fit_to_size
from mofme.data.content import BUNDLED_PHOTOS, clean_sources
from mofme.data.io import atomic_write, to_uint8
from mofme.data.weather import WEATHER_TYPES, snow_video
from mofme.inference.videoio import VideoWriter

#: Held-out examples: (scikit-image photo, weather type). Seeds from ``mofme.demo.DEMO_SEED``,
#: which the bundled weights never trained on.
EXAMPLES: tuple[tuple[str, str], ...] = (
    ("chelsea", "snow"),
    ("coffee", "rain"),
    ("astronaut", "raindrop"),
    ("rocket", "haze"),
    ("motorcycle", "rain_fog"),
)
EXAMPLE_SIZE_HW = (320, 448)


def make_examples(folder: Path) -> list[Path]:
    """Write the held-out example photos (synthetic weather, ``EXAMPLE_SIZE_HW``) to ``folder``."""
    from mofme.demo import DEMO_SEED

    photos = dict(zip(BUNDLED_PHOTOS, clean_sources()))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (name, weather) in enumerate(EXAMPLES):
        path = folder / f"{name}_{weather}.png"
        if not path.exists():
            rng = np.random.default_rng([DEMO_SEED, 50, i])
            clean = fit_to_size(photos[name], EXAMPLE_SIZE_HW)
            degraded = WEATHER_TYPES[weather](clean, rng, "medium")
            image = Image.fromarray(to_uint8(degraded))
            atomic_write(path, lambda tmp, image=image: image.save(tmp, format="PNG"))
        paths.append(path)
    return paths


def make_video_example(
    folder: Path, frames: int = 16, size_hw: tuple[int, int] = (192, 256)
) -> Path:
    """Write a held-out snowy clip (a camera move over ``coffee`` plus synthetic snow, seeds
    from ``DEMO_SEED``) as ``folder/snowy_coffee.mp4``."""
    from mofme.demo import DEMO_SEED

    path = folder / "snowy_coffee.mp4"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([DEMO_SEED, 51])
    photo = dict(zip(BUNDLED_PHOTOS, clean_sources()))["coffee"]
    with VideoWriter(path, fps=8) as writer:
        for frame in snow_video(camera_clip(photo, frames, size_hw, rng), rng, "medium"):
            writer.write(frame)
    return path
