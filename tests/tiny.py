"""Shared test constants and fixture helpers (imported by the test modules; pytest puts tests/
on sys.path)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str) -> ModuleType:
    """``scripts/NAME.py`` as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# A very small network: the training loop is under test, not the architecture.
TINY_MODEL = {
    "preset": "tiny",
    "dim": 32,
    "depth": 1,
    "num_experts": 4,
    "heads": 2,
    "head_dim": 16,
    "head_channels": 8,
    "unpatch_channels": 16,
}


def clean_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth colour gradient plus a few flat blocks, uint8 ``(size, size, 3)``."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    c = rng.uniform(0.2, 0.8, size=(3, 3))
    img = np.stack([c[i, 0] + 0.3 * c[i, 1] * xx + 0.3 * c[i, 2] * yy for i in range(3)], -1)
    for _ in range(3):
        y0, x0 = rng.integers(0, size - 8, size=2)
        img[y0 : y0 + 8, x0 : x0 + 8] = rng.uniform(0, 1, size=3)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def save_png(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as a PNG, creating the folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
