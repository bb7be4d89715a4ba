"""Bundled trained weights (tiny preset, trained here on synthetic data; see README)."""

from __future__ import annotations

from pathlib import Path

from mofme.errors import MofmeError

WEIGHTS_DIR = Path(__file__).parent
BUNDLED = {
    "image": "mofme_tiny_allweather.safetensors",  # all-in-one image model, 3-channel input
    "video": "mofme_tiny_video.safetensors",  # reference-frame video desnowing, 6-channel input
}


def bundled_path(kind: str) -> Path:
    """Path of the bundled ``image`` or ``video`` checkpoint."""
    if kind not in BUNDLED:
        raise MofmeError(f"no bundled weights named {kind!r}; available: {', '.join(BUNDLED)}")
    path = WEIGHTS_DIR / BUNDLED[kind]
    if not path.is_file():
        raise MofmeError(f"bundled {kind} weights missing from the installation: {path}")
    return path
