"""Training content (dead leaves, package photos), the do-no-harm recipe and the benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mofme.data import content, synth
from mofme.data.weather import ALL_TYPES, COMPOSITES, apply_weather
from mofme.errors import MofmeError


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_pools_are_disjoint_and_demo_uses_held_out() -> None:
    assert not set(content.TRAIN_PHOTOS) & set(content.HELD_OUT_PHOTOS)
    held = {content.package_photo(n).tobytes()[:4096] for n in content.HELD_OUT_PHOTOS}
    train = {s.image.tobytes()[:4096] for s in content.training_sources()}
    assert not held & train
    # The demo and the benchmark draw from clean_sources(), the held-out photos.
    assert content.BUNDLED_PHOTOS == content.HELD_OUT_PHOTOS
    assert len(content.training_sources()) == len(content.TRAIN_PHOTOS)


@pytest.mark.parametrize("size", [(48, 64), (97, 33)])
def test_dead_leaves_deterministic_range_and_texture(size: tuple[int, int]) -> None:
    a = content.dead_leaves(size, np.random.default_rng(5))
    b = content.dead_leaves(size, np.random.default_rng(5))
    c = content.dead_leaves(size, np.random.default_rng(6))
    assert a.shape == (*size, 3) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert a.std() > 0.02  # not a flat image


def test_apply_weather_composites_strength_and_clean() -> None:
    clean = content.random_view(content.clean_sources()[0], (64, 64), np.random.default_rng(0))
    assert np.array_equal(apply_weather("clean", clean, np.random.default_rng(0)), clean)
    full = apply_weather("snow_haze", clean, np.random.default_rng(1), "medium")
    weak = apply_weather("snow_haze", clean, np.random.default_rng(1), "medium", strength=0.2)
    err_full, err_weak = np.abs(full - clean).mean(), np.abs(weak - clean).mean()
    assert err_weak == pytest.approx(0.2 * err_full, rel=0.05)
    for name in COMPOSITES:
        out = apply_weather(name, clean, np.random.default_rng(2), "heavy")
        assert out.shape == clean.shape and np.abs(out - clean).mean() > 0.01
    with pytest.raises(MofmeError, match="unknown weather"):
        apply_weather("hail", clean, np.random.default_rng(0))


def test_identity_pairs_are_exact(tmp_path: Path) -> None:
    out = tmp_path / "aw"
    meta = synth.write_allweather(out, 10, 1, size_hw=(48, 48), progress=False, identity_share=1.0)
    train = sorted((out / "train" / "input").iterdir())
    assert len(train) == 10 and all(p.name.endswith("_clean.png") for p in train)
    for p in train:
        assert np.array_equal(_rgb(p), _rgb(out / "train" / "gt" / p.name))
    assert all(r["psnr"] == float("inf") for r in meta["files"] if r["type"] == "clean")


def test_default_share_and_light_items(tmp_path: Path) -> None:
    meta = synth.write_allweather(tmp_path / "aw", 80, 0, size_hw=(32, 32), progress=False)
    train = [r for r in meta["files"] if r["input"].startswith("train/")]
    share = sum(r["type"] == "clean" for r in train) / len(train)
    assert 0.03 <= share <= 0.25  # default 12 %
    light = [r for r in train if r["severity"] == "light"]
    assert light and min(r["strength"] for r in light) < 0.6  # some barely visible
    assert {r["type"] for r in train} >= set(COMPOSITES)
    assert len({tuple(r["render_hw"]) for r in train}) > 5  # render-scale jitter


def test_write_benchmark_layout(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    meta = synth.write_benchmark(
        out, n_per_set=1, size_hw=(32, 32), n_clips=1, n_frames=2, clip_size_hw=(32, 32),
        progress=False,
    )  # fmt: skip
    sets = sorted(p.name for p in (out / "images").iterdir())
    assert len(sets) == 1 + 3 * len(ALL_TYPES) and "test_clean" in sets
    assert "test_snow_haze_light" in sets and "test_rain_heavy" in sets
    clean_in = _rgb(out / "images/test_clean/input/00000.png")
    assert np.array_equal(clean_in, _rgb(out / "images/test_clean/gt/00000.png"))
    for sub in ("video", "video_clean"):
        frames = sorted((out / sub / "test" / "snow" / "0000").iterdir())
        assert len(frames) == 2
    clean_clip = out / "video_clean/test"
    assert np.array_equal(
        _rgb(clean_clip / "snow/0000/00000.png"), _rgb(clean_clip / "clean/0000/00000.png")
    )
    assert json.loads((out / "meta.json").read_text())["photos"] == list(content.HELD_OUT_PHOTOS)
    assert meta["sets"] == sorted(meta["sets"], key=lambda s: meta["sets"].index(s))
