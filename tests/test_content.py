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


def test_look_is_deterministic_in_range_and_changes_the_photo() -> None:
    img = content.random_view(content.clean_sources()[0], (40, 56), np.random.default_rng(0))
    looks = [content.draw_look(np.random.default_rng(i)) for i in range(400)]
    drawn = [lk for lk in looks if lk is not None]
    assert 0.4 <= len(drawn) / len(looks) <= 0.6  # LOOK_SHARE = 0.5
    assert content.draw_look(np.random.default_rng(3), share=0.0) is None
    for lk in drawn[:20]:
        out = lk.apply(img)
        assert out.shape == img.shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
        assert np.array_equal(out, lk.apply(img))
        assert np.abs(out - img).mean() > 1e-3  # at least one part is on
    assert np.allclose(content.Look().apply(img), img, atol=1e-6)  # neutral look: identity
    # A veil lowers contrast toward its colour, as natural haze does.
    veiled = content.Look(veil=0.3, veil_colour=(0.7, 0.7, 0.7)).apply(img)
    assert veiled.std() == pytest.approx(0.7 * img.std(), rel=1e-4)


def test_training_items_keep_their_look_in_the_target_and_bench_has_none(tmp_path: Path) -> None:
    """The look is content: the ground truth carries it (an identity pair stays exact); clips
    get looks too; benchmark photos are left as they are."""
    out = tmp_path / "aw"
    meta = synth.write_allweather(out, 24, 0, size_hw=(32, 32), progress=False, identity_share=1.0)
    looked = [r for r in meta["files"] if "look" in r]
    assert 4 <= len(looked) <= 20
    for r in looked:
        assert np.array_equal(_rgb(out / r["input"]), _rgb(out / r["gt"]))
    vmeta = synth.write_rvsd(tmp_path / "rv", 8, 3, size_hw=(24, 32), seed=1, progress=False)
    assert any("look" in v for v in vmeta["videos"])
    bench = synth.write_benchmark(
        tmp_path / "bench",
        n_per_set=1,
        size_hw=(16, 16),
        n_clips=1,
        n_frames=2,
        clip_size_hw=(16, 24),
        progress=False,
    )
    assert not any("look" in r for r in bench["files"] + bench["videos"])


@pytest.mark.parametrize("size", [(64, 64), (41, 90)])
def test_planks_are_thin_vertical_structure(size: tuple[int, int]) -> None:
    views = [content.planks(size, np.random.default_rng(s)) for s in range(6)]
    again = content.planks(size, np.random.default_rng(0))
    assert all(v.shape == (*size, 3) and v.dtype == np.float32 for v in views)
    assert all(v.min() >= 0.0 and v.max() <= 1.0 for v in views)
    assert np.array_equal(views[0], again) and not np.array_equal(views[0], views[1])
    # Near-vertical strokes: the image changes more across columns than down them.
    across = np.mean([np.abs(np.diff(v, axis=1)).mean() for v in views])
    down = np.mean([np.abs(np.diff(v, axis=0)).mean() for v in views])
    assert across > 1.3 * down


def test_structure_share_draws_planks_and_zero_changes_nothing(tmp_path: Path) -> None:
    pool = content.training_sources()
    a, b = np.random.default_rng(4), np.random.default_rng(4)
    assert np.array_equal(
        content.training_view(pool, (32, 32), a), content.training_view(pool, (32, 32), b, 0.6, 0.0)
    )
    assert a.random() == b.random()  # no extra draw at share 0: older data sets stay bit-identical
    rng = np.random.default_rng(9)
    rng.random()  # the share draw
    expected = content.planks((32, 32), rng)
    got = content.training_view(pool, (32, 32), np.random.default_rng(9), structure_share=1.0)
    assert np.array_equal(got, expected)
    meta = synth.write_allweather(
        tmp_path / "aw", 4, 0, size_hw=(32, 32), progress=False, structure_share=0.5
    )
    assert meta["content"]["structure_share"] == 0.5
    plain = synth.write_allweather(tmp_path / "plain", 2, 0, size_hw=(32, 32), progress=False)
    assert "structure_share" not in plain["content"]
    with pytest.raises(MofmeError, match="structure share"):
        synth.write_allweather(tmp_path / "bad", 2, 0, progress=False, structure_share=1.5)


def test_synth_command_passes_the_structure_share(tmp_path: Path, capsys) -> None:
    from mofme.cli import main

    out = tmp_path / "aw"
    args = ["synth", "allweather", "--out", str(out), "--train", "2", "--test", "0"]
    assert main([*args, "--size", "32x32", "--structure-share", "0.25", "--quiet"]) == 0
    assert json.loads((out / "meta.json").read_text())["content"]["structure_share"] == 0.25
    assert main([*args, "--structure-share", "-1", "--overwrite", "--quiet"]) != 0
    assert "structure share must be in [0, 1]" in capsys.readouterr().err


def _gradient_energy(v: np.ndarray) -> float:
    return float(np.abs(np.diff(v, axis=1)).mean() + np.abs(np.diff(v, axis=0)).mean())


def test_soft_share_softens_views_and_zero_changes_nothing(tmp_path: Path) -> None:
    pool = content.training_sources()
    a, b = np.random.default_rng(4), np.random.default_rng(4)
    assert np.array_equal(
        content.training_view(pool, (32, 32), a),
        content.training_view(pool, (32, 32), b, 0.6, 0.0, 0.0),
    )
    assert a.random() == b.random()  # no extra draw at share 0: older data sets stay bit-identical
    rng = np.random.default_rng(9)
    base = content.training_view(pool, (48, 48), rng)
    rng.random()  # the share draw
    expected = content.soft_photo(base, rng)
    got = content.training_view(pool, (48, 48), np.random.default_rng(9), soft_share=1.0)
    assert np.array_equal(got, expected)
    for seed in range(12):  # softer (less gradient energy) and pale, whatever the base view
        base = content.training_view(pool, (64, 80), np.random.default_rng([seed, 1]))
        soft = content.soft_photo(base, np.random.default_rng([seed, 2]))
        assert soft.shape == base.shape and soft.dtype == np.float32
        assert soft.min() >= 0.0 and soft.max() <= 1.0
        assert _gradient_energy(soft) < _gradient_energy(base)
        assert 0.45 < soft.mean() < 0.95
    meta = synth.write_allweather(
        tmp_path / "aw", 4, 0, size_hw=(32, 32), progress=False, soft_share=0.5
    )
    assert meta["content"]["soft_share"] == 0.5
    plain = synth.write_allweather(tmp_path / "plain", 2, 0, size_hw=(32, 32), progress=False)
    assert "soft_share" not in plain["content"]
    with pytest.raises(MofmeError, match="soft share"):
        synth.write_allweather(tmp_path / "bad", 2, 0, progress=False, soft_share=-0.1)


def test_synth_command_passes_the_soft_share(tmp_path: Path, capsys) -> None:
    from mofme.cli import main

    out = tmp_path / "aw"
    args = ["synth", "allweather", "--out", str(out), "--train", "2", "--test", "0"]
    assert main([*args, "--size", "32x32", "--soft-share", "0.3", "--quiet"]) == 0
    assert json.loads((out / "meta.json").read_text())["content"]["soft_share"] == 0.3
    assert main([*args, "--soft-share", "2", "--overwrite", "--quiet"]) != 0
    assert "soft share must be in [0, 1]" in capsys.readouterr().err
