"""Synthetic weather generators, dataset writers and the ``mofme synth`` command."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from mofme.commands import synth as synth_cmd
from mofme.data import clips, content, synth, weather
from mofme.data.calibration import PSNR_BANDS, band_sample
from mofme.data.synth.items import parse_type_mix
from mofme.data.weather import SEVERITIES, WEATHER_TYPES
from mofme.errors import MofmeError

TYPES = list(WEATHER_TYPES)
LOCAL = [("rain", s) for s in SEVERITIES] + [("raindrop", s) for s in SEVERITIES]
LOCAL += [("snow", "light"), ("snow", "medium")]  # heavy snow adds a veiling haze everywhere


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    """A non-square natural view, (96, 128, 3) float32."""
    return content.random_view(content.clean_sources()[1], (96, 128), np.random.default_rng(3))


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


# ------------------------------------------------------------------------------ generators


def test_registry_and_params_cover_all_severities() -> None:
    assert set(WEATHER_TYPES) == {"rain", "rain_fog", "raindrop", "snow", "haze"}
    assert set(PSNR_BANDS) == set(WEATHER_TYPES)
    for name in TYPES:
        assert set(PSNR_BANDS[name]) == set(SEVERITIES)
        for lo, hi in PSNR_BANDS[name].values():
            assert 5.0 < lo < hi < 60.0


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("severity", SEVERITIES)
def test_generator_output_and_input_untouched(clean: np.ndarray, name: str, severity: str) -> None:
    before = clean.copy()
    out = WEATHER_TYPES[name](clean, np.random.default_rng(0), severity)
    np.testing.assert_array_equal(clean, before)
    assert out.shape == clean.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out is not clean
    # Weather is present: a visible mean change.
    assert np.abs(out - clean).mean() > 0.004


@pytest.mark.parametrize("name", TYPES)
def test_generators_deterministic_by_seed(clean: np.ndarray, name: str) -> None:
    fn = WEATHER_TYPES[name]
    a = fn(clean, np.random.default_rng(7), "medium")
    b = fn(clean, np.random.default_rng(7), "medium")
    c = fn(clean, np.random.default_rng(8), "medium")
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.01


@pytest.mark.parametrize(("name", "severity"), LOCAL)
def test_local_weather_leaves_some_pixels_alone(
    clean: np.ndarray, name: str, severity: str
) -> None:
    out = WEATHER_TYPES[name](clean, np.random.default_rng(1), severity)
    untouched = np.abs(out - clean).max(axis=2) < 1.0 / 255.0
    assert 0.05 < untouched.mean() < 0.999


def test_severity_orders_degradation(clean: np.ndarray) -> None:
    for name, fn in WEATHER_TYPES.items():
        psnr = [
            np.mean(
                [
                    peak_signal_noise_ratio(
                        clean, fn(clean, np.random.default_rng(s), sev), data_range=1
                    )
                    for s in range(3)
                ]
            )
            for sev in SEVERITIES
        ]
        assert psnr[0] > psnr[1] > psnr[2], (name, psnr)


def test_bad_arguments_are_clear_errors(clean: np.ndarray) -> None:
    with pytest.raises(MofmeError, match="severity"):
        weather.rain(clean, np.random.default_rng(0), "extreme")
    with pytest.raises(MofmeError, match="shape"):
        weather.snow(clean[..., 0], np.random.default_rng(0))
    with pytest.raises(MofmeError, match="float"):
        weather.haze((clean * 255).astype(np.uint8), np.random.default_rng(0))


@pytest.mark.parametrize("name", ["rain", "raindrop", "snow"])
def test_view_scales_particles_up_and_thins_them(name: str) -> None:
    """view=v looks like a crop of a v-times larger frame: fewer, bigger particles. Measured
    on a flat grey image: the weather mask's area per connected blob grows with view."""
    flat = np.full((128, 128, 3), 0.3, np.float32)

    def blob_area(view: float) -> float:
        outs = [
            weather.apply_weather(name, flat, np.random.default_rng([5, k]), "medium", view=view)
            for k in range(4)
        ]
        mask = np.concatenate([np.abs(o - flat).max(-1) > 0.05 for o in outs])
        from skimage.measure import label

        n = label(mask).max()
        return float(mask.sum()) / max(1, n)

    assert blob_area(3.0) > 2.0 * blob_area(1.0)
    same = weather.apply_weather(name, flat, np.random.default_rng(1), "medium")
    one = weather.apply_weather(name, flat, np.random.default_rng(1), "medium", view=1.0)
    assert np.array_equal(same, one)
    with pytest.raises(MofmeError, match="view"):
        weather.apply_weather(name, flat, np.random.default_rng(1), "medium", view=0.0)


def test_psnr_within_measured_bands() -> None:
    """Fresh samples (seed 99, not the calibration seed) fall inside the measured bands."""
    for i in range(2):
        view = band_sample(i, seed=99)
        for ti, (name, fn) in enumerate(WEATHER_TYPES.items()):
            for si, sev in enumerate(SEVERITIES):
                out = fn(view, np.random.default_rng([99, 8, i, ti, si]), sev)
                psnr = peak_signal_noise_ratio(view, out, data_range=1.0)
                lo, hi = PSNR_BANDS[name][sev]
                assert lo <= psnr <= hi, (name, sev, psnr, (lo, hi))


@pytest.mark.parametrize("sigma", [0.8, 2.0, 4.0, 9.0])
def test_gaussian_blur_matches_sigma_and_keeps_mass(sigma: float) -> None:
    img = np.zeros((121, 121), np.float32)
    img[60, 60] = 1.0
    out = weather.gaussian_blur(img, sigma)
    yy, xx = np.mgrid[:121, :121]
    assert out.sum() == pytest.approx(1.0, abs=1e-4)
    assert np.sqrt((out * (xx - 60) ** 2).sum()) == pytest.approx(sigma, rel=0.08)
    assert np.sqrt((out * (yy - 60) ** 2).sum()) == pytest.approx(sigma, rel=0.08)
    rgb = np.random.default_rng(0).random((20, 30, 3)).astype(np.float32)
    np.testing.assert_allclose(
        weather.gaussian_blur(rgb, sigma)[..., 1],
        weather.gaussian_blur(rgb[..., 1], sigma),
        atol=1e-5,
    )


# ------------------------------------------------------------------------------ video


def _shift(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    h, w = mask.shape
    out = np.zeros_like(mask)
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = mask[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_snow_video_is_temporally_coherent() -> None:
    h, w = 96, 128
    frames = [np.full((h, w, 3), 0.3, np.float32)] * 4
    snowy = weather.snow_video(frames, np.random.default_rng(5), "light")
    other = weather.snow_video(frames, np.random.default_rng(6), "light")
    vx, vy = weather.SnowField(h, w, np.random.default_rng(5), "light").mean_velocity
    assert vy > 0.3  # snow falls

    def mask(img: np.ndarray) -> np.ndarray:
        return np.abs(img - frames[0]).max(axis=2) > 0.1

    for t in range(3):
        now, nxt = mask(snowy[t]), mask(snowy[t + 1])
        moved = _iou(nxt, _shift(now, round(vx), round(vy)))
        assert moved > 0.3
        assert moved > 5 * _iou(nxt, mask(other[t + 1]))
        assert 0.01 < now.mean() < 0.5


def test_snow_video_flakes_recycle() -> None:
    field = weather.SnowField(64, 64, np.random.default_rng(0), "heavy")
    n = field.x.size
    for _ in range(200):  # long enough for every flake to fall through the frame
        field.step()
    m = field.margin
    assert field.x.size == n
    assert np.all((field.y > -m - 64) & (field.y <= 64 + m))
    assert np.all((field.x >= -m) & (field.x < 64 + m))
    assert field.alpha().mean() > 0.01  # still snowing


def test_camera_clip_is_smooth() -> None:
    photo = content.clean_sources()[0]
    clip = clips.camera_clip(photo, 8, (60, 80), np.random.default_rng(2))
    assert len(clip) == 8
    assert all(f.shape == (60, 80, 3) and f.dtype == np.float32 for f in clip)
    step = np.mean([np.abs(clip[t + 1] - clip[t]).mean() for t in range(7)])
    assert step < np.abs(clip[7] - clip[0]).mean() + 1e-6
    assert step < 0.08


def _write_video(path: Path, n: int = 6, size: tuple[int, int] = (48, 64)) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for i in range(n):
            img = np.zeros((*size, 3), np.uint8)
            img[:, : 8 * (i + 1)] = 200
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_video_frames_reads_and_rejects(tmp_path: Path) -> None:
    video = tmp_path / "clip.mp4"
    _write_video(video)
    frames = clips.video_clip(video, 4, (24, 32))
    assert len(frames) == 4 and frames[0].shape == (24, 32, 3)
    assert frames[3].mean() > frames[0].mean()  # the bright bar grows
    assert len(clips.video_clip(video, 100, (24, 32), start=2)) == 4
    bad = tmp_path / "not_a_video.mp4"
    bad.write_bytes(b"definitely not a video")
    with pytest.raises(MofmeError, match="not_a_video"):
        clips.video_clip(bad, 4, (24, 32))


# ------------------------------------------------------------------------------ sources


def test_bundled_sources_are_colour_photos() -> None:
    photos = content.clean_sources()
    assert len(photos) == len(content.BUNDLED_PHOTOS) >= 4
    for p in photos:
        assert p.dtype == np.uint8 and p.ndim == 3 and p.shape[2] == 3
        assert np.abs(p[..., 0].astype(int) - p[..., 2]).mean() > 3  # not grey


def test_user_folder_sources(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.full((20, 30), 128, np.uint8)).save(folder / "grey.png")
    Image.fromarray(np.full((20, 30, 4), 90, np.uint8), "RGBA").save(folder / "rgba.png")
    Image.fromarray(np.full((20, 30), 40000, np.uint16)).save(folder / "deep.png")
    (folder / "notes.txt").write_text("not an image, ignored")
    photos = content.clean_sources(folder)
    assert len(photos) == len(content.BUNDLED_PHOTOS) + 3
    user = photos[-3:]  # sorted: deep, grey, rgba
    assert all(p.shape == (20, 30, 3) and p.dtype == np.uint8 for p in user)
    assert user[0][0, 0, 0] == round(40000 / 257)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(MofmeError, match=r"broken\.jpg"):
        content.clean_sources(folder)
    with pytest.raises(MofmeError, match="missing"):
        content.clean_sources(tmp_path / "missing")


def test_random_view_size_and_determinism() -> None:
    photo = content.clean_sources()[2]
    a = content.random_view(photo, (40, 50), np.random.default_rng(1))
    b = content.random_view(photo, (40, 50), np.random.default_rng(1))
    c = content.random_view(photo, (40, 50), np.random.default_rng(2))
    assert a.shape == (40, 50, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


# ------------------------------------------------------------------------------ writers


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "meta.json"
    }


def test_write_allweather_layout(tmp_path: Path) -> None:
    out = tmp_path / "aw"
    meta = synth.write_allweather(
        out, n_train=8, n_test=2, size_hw=(64, 64), progress=False, identity_share=0.0
    )
    for split in ("train", "test_rain", "test_raindrop", "test_snow", "test_haze"):
        assert (out / split / "input").is_dir() and (out / split / "gt").is_dir()
    train = sorted(p.name for p in (out / "train" / "input").iterdir())
    assert train == sorted(p.name for p in (out / "train" / "gt").iterdir())
    assert len(train) == 8 and {n.split("_", 1)[1][:-4] for n in train} == set(synth.TRAIN_TYPES)
    assert sorted(p.name for p in (out / "test_raindrop" / "input").iterdir()) == [
        "00000_rain.png",
        "00001_rain.png",
    ]
    assert sorted(p.name for p in (out / "test_raindrop" / "gt").iterdir()) == [
        "00000_clean.png",
        "00001_clean.png",
    ]
    assert not list(out.rglob("*.part")) and not list(out.rglob(".*"))  # no temporary files
    img = _load(out / "test_snow" / "input" / "00000.png")
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8

    counts = {"allweather.txt": 8, "test1.txt": 2, "raindroptesta.txt": 2}
    counts |= {"snowtest100k_L.txt": 2, "hazetest.txt": 2}
    for name, n in counts.items():
        lines = (out / name).read_text().splitlines()
        assert len(lines) == n
        for line in lines:
            parts = Path(line).parts
            assert parts[1] == "input" and (out / line).is_file()
            gt = Path(*[("gt" if i == 1 else p) for i, p in enumerate(parts)])
            assert (out / gt).is_file()
    # The TransWeather raindrop copy holds the same pairs as the MoFME raindrop test split.
    assert (out / "transweather_raindrop/input/00001.png").read_bytes() == (
        out / "test_raindrop/input/00001_rain.png"
    ).read_bytes()

    on_disk = json.loads((out / "meta.json").read_text())
    assert on_disk["seed"] == 0 and on_disk["size_hw"] == [64, 64]
    assert len(on_disk["files"]) == 8 + 4 * 2 == len(meta["files"])
    for rec in on_disk["files"]:
        assert rec["type"] in synth.TRAIN_TYPES and rec["severity"] in SEVERITIES
        assert (out / rec["input"]).is_file() and (out / rec["gt"]).is_file()


def test_write_allweather_deterministic_and_order_free(tmp_path: Path) -> None:
    kw = {"size_hw": (32, 48), "progress": False, "identity_share": 0.0}
    synth.write_allweather(tmp_path / "a", 5, 1, seed=3, **kw)
    synth.write_allweather(tmp_path / "b", 5, 1, seed=3, workers=2, **kw)
    synth.write_allweather(tmp_path / "c", 5, 1, seed=4, **kw)
    synth.write_allweather(tmp_path / "d", 2, 1, seed=3, **kw)
    a, b, c, d = (_tree(tmp_path / x) for x in "abcd")
    assert a == b  # same seed, two worker processes: same bytes
    assert a["train/input/00001_rain_fog.png"] != c["train/input/00001_rain_fog.png"]
    for name in ("train/input/00000_rain.png", "train/gt/00001_rain_fog.png"):
        assert d[name] == a[name]  # item i does not depend on the number of items
    # Test items draw from their own seed streams: no test image repeats a train image.
    train = {v for k, v in a.items() if k.startswith("train/")}
    assert not train & {v for k, v in a.items() if k.startswith("test_")}


def test_write_rvsd_layout(tmp_path: Path) -> None:
    video = tmp_path / "clip.mp4"
    _write_video(video, n=8)
    out = tmp_path / "rv"
    meta = synth.write_rvsd(
        out, n_videos=3, n_frames=4, size_hw=(32, 40), split_test=1, progress=False
    )
    assert meta["n_train"] == 2 and meta["n_test"] == 1
    for split, n in (("train", 2), ("test", 1)):
        videos = sorted(p.name for p in (out / split / "snow").iterdir())
        assert len(videos) == n
        assert videos == sorted(p.name for p in (out / split / "clean").iterdir())
        for v in videos:
            names = sorted(p.name for p in (out / split / "snow" / v).iterdir())
            assert names == [f"{t:05d}.png" for t in range(4)]
            assert names == sorted(p.name for p in (out / split / "clean" / v).iterdir())
            assert _load(out / split / "snow" / v / names[0]).shape == (32, 40, 3)
    out2 = tmp_path / "rv_video"
    meta2 = synth.write_rvsd(
        out2, 2, 5, size_hw=(24, 32), split_test=1, video_files=[video], progress=False
    )
    assert all(v["source"]["video"] == str(video) for v in meta2["videos"])
    assert len(list((out2 / "test" / "clean").rglob("*.png"))) == 5
    with pytest.raises(MofmeError, match=r"nope\.mp4"):
        synth.write_rvsd(tmp_path / "x", 2, 3, video_files=[tmp_path / "nope.mp4"])


def test_contact_sheet(tmp_path: Path) -> None:
    path = synth.contact_sheet(tmp_path / "sheet.png", size=48)
    img = _load(path)
    assert img.ndim == 3 and img.shape[0] > 6 * 48 and img.shape[1] > 4 * 48


# ------------------------------------------------------------------------------ command


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mofme synth")
    synth_cmd.add_arguments(parser)
    return synth_cmd.run(parser.parse_args(argv))


def test_synth_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "aw"
    args = ["allweather", "--out", str(out), "--train", "4", "--test", "1", "--size", "32x40"]
    args += ["--identity-share", "0"]
    assert _cli([*args, "--preview", "--quiet"]) == 0
    assert "wrote 4 train pairs" in capsys.readouterr().out
    assert (out / "preview.png").is_file()
    assert _load(out / "train/input/00001_rain_fog.png").shape == (32, 40, 3)
    with pytest.raises(MofmeError, match="not empty"):
        _cli([*args, "--quiet"])
    # --overwrite replaces the dataset, dropping files of the larger earlier run.
    args[4] = "2"
    assert _cli([*args, "--quiet", "--overwrite"]) == 0
    assert len(list((out / "train" / "input").iterdir())) == 2

    # Photos kept inside a folder that --overwrite would replace are never deleted.
    photos = out / "train" / "mine"
    photos.mkdir()
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(photos / "a.png")
    with pytest.raises(MofmeError, match="refusing"):
        _cli([*args, "--quiet", "--overwrite", "--source", str(photos)])
    assert (photos / "a.png").is_file() and (out / "meta.json").is_file()
    with pytest.raises(MofmeError, match="seed"):
        _cli(["allweather", "--out", str(tmp_path / "neg"), "--seed", "-1"])

    rv = tmp_path / "rv"
    rv_args = ["rvsd", "--out", str(rv), "--videos", "2", "--test-videos", "1", "--frames", "3"]
    assert _cli([*rv_args, "--size", "24x32", "--quiet"]) == 0
    assert len(list((rv / "test" / "snow").rglob("*.png"))) == 3
    with pytest.raises(MofmeError, match="size"):
        _cli(["allweather", "--out", str(tmp_path / "z"), "--size", "big"])


def test_synth_command_needs_a_kind() -> None:
    parser = argparse.ArgumentParser(prog="mofme synth")
    synth_cmd.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args([])


@pytest.mark.parametrize(
    ("spec", "cycle"),
    [
        (None, synth.TRAIN_TYPES),
        ("", synth.TRAIN_TYPES),
        ("snow", ("snow",)),
        ("rain:2, snow", ("rain", "rain", "snow")),
        ("raindrop:3,haze", ("raindrop",) * 3 + ("haze",)),
    ],
)
def test_parse_type_mix(spec: str | None, cycle: tuple[str, ...]) -> None:
    assert parse_type_mix(spec) == cycle


@pytest.mark.parametrize("spec", ["snowx", "rain:0", "rain:-1", "rain:1.5", "rain,", "clean"])
def test_parse_type_mix_rejects(spec: str) -> None:
    with pytest.raises(MofmeError, match=r"type mix|whole number"):
        parse_type_mix(spec)


def test_write_allweather_type_mix(tmp_path: Path) -> None:
    """``types`` sets the training cycle (weights repeat a type); test splits are unchanged."""
    kw = {"n_test": 1, "size_hw": (32, 32), "progress": False, "identity_share": 0.0}
    meta = synth.write_allweather(tmp_path / "a", n_train=6, types="rain:2,snow", **kw)
    names = sorted(p.name for p in (tmp_path / "a" / "train" / "input").iterdir())
    assert [n.split("_", 1)[1][:-4] for n in names] == ["rain", "rain", "snow"] * 2
    assert meta["train_types"] == ["rain", "rain", "snow"]
    synth.write_allweather(tmp_path / "b", n_train=0, **kw)
    for split in ("test_rain", "test_snow", "test_haze", "test_raindrop"):
        assert _tree(tmp_path / "a" / split) == _tree(tmp_path / "b" / split)
    with pytest.raises(MofmeError, match="snowx"):
        synth.write_allweather(tmp_path / "c", n_train=2, types="snowx", **kw)
    assert not (tmp_path / "c").exists()  # refused before anything was written


def test_synth_cli_types(tmp_path: Path) -> None:
    out = tmp_path / "aw"
    argv = ["allweather", "--out", str(out), "--train", "3", "--test", "0", "--size", "32x32"]
    assert _cli([*argv, "--identity-share", "0", "--types", "haze", "--quiet"]) == 0
    assert sorted(p.name for p in (out / "train" / "input").iterdir()) == [
        f"{i:05d}_haze.png" for i in range(3)
    ]
    with pytest.raises(MofmeError, match="unknown weather type 'fog'"):
        _cli([*argv[:2], str(tmp_path / "x"), *argv[3:], "--types", "fog"])
