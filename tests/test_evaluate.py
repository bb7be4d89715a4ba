"""Evaluation API (``mofme.evaluate``) and ``mofme test`` on tiny fixtures (SPEC §5, §6, §9)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from mofme.cli import main
from mofme.data.pairs import detect_layout, find_image_pairs, find_pairs, find_videos
from mofme.errors import MofmeError
from mofme.evaluate import (
    PSNR_CAP,
    evaluate_images,
    evaluate_videos,
    plot_sweep,
    routing_sweep,
    sweep_markdown,
)
from mofme.inference import tiling
from mofme.metrics import psnr
from mofme.model.net import MoFMENet

torch.set_num_threads(1)

H, W = 16, 24  # fixture size: a multiple of the patch (8) and above the SSIM window (11)
FAST = dict(progress=False, flops_size=(16, 16))


def small_model(in_channels: int = 3) -> MoFMENet:
    """The tiny preset, narrowed further so that every test runs in well under a second."""
    torch.manual_seed(0)
    return MoFMENet.from_preset(
        "tiny", in_channels=in_channels, dim=32, heads=2, head_dim=16,
        head_channels=8, unpatch_channels=16,
    ).eval()  # fmt: skip


def write_pair(folder: Path, name: str, rng: np.random.Generator, noise: int = 30) -> None:
    """A random clean image and a noisy copy, as ``folder/{input,gt}/name``."""
    gt = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    noisy = np.clip(gt.astype(int) + rng.integers(-noise, noise + 1, gt.shape), 0, 255)
    for sub, data in (("input", noisy.astype(np.uint8)), ("gt", gt)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(data).save(folder / sub / name)


@pytest.fixture
def mofme_root(tmp_path: Path) -> Path:
    """MoFME layout: test_rain (2 images) and test_snow (3 images)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "allweather"
    for group, count in (("rain", 2), ("snow", 3)):
        for i in range(count):
            write_pair(root / f"test_{group}", f"{i}.png", rng)
    return root


@pytest.fixture
def rvsd_root(tmp_path: Path) -> Path:
    """RVSD layout: 2 test videos of 3 frames; frames drift so neighbours differ."""
    rng = np.random.default_rng(1)
    root = tmp_path / "rvsd"
    for video in ("a", "b"):
        clean = rng.integers(0, 256, (H, W, 3)).astype(float)
        for t in range(3):
            frame = np.clip(clean + 8 * t, 0, 255).astype(np.uint8)
            snow = np.clip(frame.astype(int) + rng.integers(0, 60, frame.shape), 0, 255)
            for sub, data in (("snow", snow.astype(np.uint8)), ("clean", frame)):
                folder = root / "test" / sub / video
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(data).save(folder / f"{t}.png")
    return root


def identity(model, x, tile=None, **kw):  # stands in for restore_image: output = input
    return x[:, :3].clone()


def read_u8(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# ---------------------------------------------------------------------------- images


def test_groups_average_and_psnr_by_hand(mofme_root: Path) -> None:
    model = small_model()
    pairs = find_pairs(mofme_root, "mofme", "test")
    res = evaluate_images(model, pairs, **FAST)

    assert [r["name"] for r in res.rows] == ["rain", "snow"]
    assert [r["count"] for r in res.rows] == [2, 3]
    for key in ("psnr", "ssim", "psnr_y", "ssim_y", "active_experts"):
        assert res.average[key] == pytest.approx((res.rows[0][key] + res.rows[1][key]) / 2)
        assert res.overall[key] == pytest.approx(np.mean([getattr(r, key) for r in res.records]))
    # Groups of different sizes: the average over sets differs from the mean over images.
    assert res.average["psnr"] != pytest.approx(res.overall["psnr"], abs=1e-9)
    assert res.average["count"] == 5
    # Every token of the tiny preset keeps exactly k = 2 experts.
    assert all(r.active_experts == pytest.approx(2.0) for r in res.records)

    # The PSNR of one image equals the metric on the model's output computed here.
    pair, record = pairs[3], res.records[3]
    x = torch.from_numpy(read_u8(pair.input).transpose(2, 0, 1) / 255.0).float()[None]
    gt = torch.from_numpy(read_u8(pair.gt).transpose(2, 0, 1) / 255.0).float()[None]
    with torch.no_grad():
        out = model(x).clamp(0, 1)
    assert (record.group, record.name) == ("snow", "1.png")
    assert record.psnr == pytest.approx(float(psnr(out, gt)[0]), abs=1e-4)
    assert res.params["total"] == sum(p.numel() for p in model.parameters())
    assert res.gflops is not None and res.gflops > 0


def test_identity_restore_matches_scikit_image(
    mofme_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With output = input, every score must equal scikit-image on the files themselves."""
    monkeypatch.setattr(tiling, "restore_image", identity)
    pairs = find_pairs(mofme_root, "mofme", "test")
    res = evaluate_images(small_model(), pairs, **FAST)
    for pair, record in zip(pairs, res.records):
        a, b = read_u8(pair.input) / 255.0, read_u8(pair.gt) / 255.0
        assert record.psnr == pytest.approx(peak_signal_noise_ratio(b, a, data_range=1), abs=1e-4)
        expected_ssim = structural_similarity(
            b, a, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
            data_range=1, channel_axis=-1,
        )  # fmt: skip
        assert record.ssim == pytest.approx(expected_ssim, abs=1e-4)
    # No model forward ran, so no expert counts: reported as missing, not as 0.
    assert res.average["active_experts"] is None


def test_exact_match_psnr_is_capped_and_json_is_finite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "same"
    write_pair(root, "x.png", np.random.default_rng(2), noise=0)  # input == gt
    monkeypatch.setattr(tiling, "restore_image", identity)
    res = evaluate_images(small_model(), find_pairs(root, "folder", None), **FAST)
    assert res.records[0].psnr == PSNR_CAP and res.records[0].psnr_y == PSNR_CAP
    assert res.records[0].ssim == pytest.approx(1.0)
    data = json.loads(res.to_json())  # allow_nan=False inside: would raise on inf
    assert data["average"]["psnr"] == PSNR_CAP


def test_resize_protocol(mofme_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiling, "restore_image", identity)
    pairs = find_pairs(mofme_root, "mofme", "rain")
    full = evaluate_images(small_model(), pairs, **FAST)
    small = evaluate_images(small_model(), pairs, resize=(20, 12), **FAST)
    assert {(r.height, r.width) for r in full.records} == {(H, W)}
    assert {(r.height, r.width) for r in small.records} == {(12, 20)}
    # Both images are resized with Pillow's bicubic filter before scoring.
    a, b = (
        np.asarray(Image.open(p).convert("RGB").resize((20, 12), Image.Resampling.BICUBIC)) / 255.0
        for p in (pairs[0].input, pairs[0].gt)
    )
    assert small.records[0].psnr == pytest.approx(peak_signal_noise_ratio(b, a, data_range=1), 1e-4)
    assert small.meta["resize"] == [20, 12]


def test_unreadable_image_is_skipped_named_or_fatal_when_strict(mofme_root: Path) -> None:
    bad = mofme_root / "test_rain" / "input" / "1.png"
    bad.write_bytes(b"not an image")
    pairs = find_pairs(mofme_root, "mofme", "test")
    with pytest.warns(UserWarning, match=r"1\.png"):
        res = evaluate_images(small_model(), pairs, **FAST)
    assert [r["count"] for r in res.rows] == [1, 3]
    assert res.failed and res.failed[0]["path"] == str(bad)
    assert "failed: 1 image(s) skipped: 1.png" in res.to_markdown()
    with pytest.raises(MofmeError, match=r"1\.png"):
        evaluate_images(small_model(), pairs, strict=True, **FAST)


def test_tiled_evaluation_counts_every_tile_and_saves_images(
    mofme_root: Path, tmp_path: Path
) -> None:
    pairs = find_pairs(mofme_root, "mofme", "test")
    out_dir = tmp_path / "restored"
    res = evaluate_images(small_model(), pairs, tile=16, overlap=8, save_dir=out_dir, **FAST)
    assert res.meta["tile"] == 16
    assert all(r.active_experts == pytest.approx(2.0) for r in res.records)
    saved = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*.png"))
    assert saved == ["rain/0.png", "rain/1.png", "snow/0.png", "snow/1.png", "snow/2.png"]
    assert Image.open(out_dir / "rain" / "0.png").size == (W, H)


def test_markdown_and_json_structure(mofme_root: Path) -> None:
    model = small_model().train()  # e.g. validation during training
    res = evaluate_images(model, find_pairs(mofme_root, "mofme", "test"), **FAST)
    assert model.training  # the caller's mode is restored
    md = res.to_markdown()
    lines = md.splitlines()
    assert lines[0].startswith("| test set | images | PSNR | SSIM | PSNR (Y) | SSIM (Y) |")
    assert any(line.startswith("| rain | 2 |") for line in lines)
    assert any(line.startswith("| **average** | 5 |") for line in lines)
    assert "params:" in md and "GFLOPs:" in md and "per 16x16 input" in md
    data = json.loads(res.to_json())
    assert [r["name"] for r in data["rows"]] == ["rain", "snow"]
    assert len(data["records"]) == 5 and data["routing"] == "topk:2"


# ---------------------------------------------------------------------------- videos


def test_videos_first_and_other_frames(rvsd_root: Path) -> None:
    model = small_model(in_channels=6)
    videos = find_videos(rvsd_root, "test_video")  # alias of test
    res = evaluate_videos(model, videos, **FAST)
    assert res.kind == "video" and [r["name"] for r in res.rows] == ["a", "b"]
    for row in res.rows:
        assert (row["count"], row["count_first"], row["count_other"]) == (3, 1, 2)
    for key in ("psnr", "ssim_y", "psnr_first", "psnr_other", "active_experts_other"):
        assert res.average[key] == pytest.approx(np.mean([r[key] for r in res.rows]))
    assert res.meta["reference_frame"] is True

    # Frame 1 of video b is restored with the restored frame 0 as its reference.
    frames = [
        torch.from_numpy(read_u8(p).transpose(2, 0, 1) / 255.0).float()[None]
        for p in videos[1].snow_frames[:2]
    ]
    gt1 = torch.from_numpy(read_u8(videos[1].clean_frames[1]).transpose(2, 0, 1) / 255.0)
    with torch.no_grad():
        out0 = model(torch.cat([frames[0], torch.zeros_like(frames[0])], 1))
        out1 = model(torch.cat([frames[1], out0], 1)).clamp(0, 1)
    record = next(r for r in res.records if r.group == "b" and r.index == 1)
    assert not record.first_frame
    assert record.psnr == pytest.approx(float(psnr(out1, gt1.float()[None])[0]), abs=1e-4)

    md = res.to_markdown()
    assert "| video | frames |" in md and "PSNR 1st" in md and "**mean over videos**" in md


def test_videos_with_an_image_model_and_frame_limit(rvsd_root: Path) -> None:
    res = evaluate_videos(small_model(), find_videos(rvsd_root, "test"), max_frames=2, **FAST)
    assert [r["count"] for r in res.rows] == [2, 2]
    assert res.meta["reference_frame"] is False


# ---------------------------------------------------------------------------- routing sweep


def test_routing_sweep_active_experts_grow_and_plot(mofme_root: Path, tmp_path: Path) -> None:
    model = small_model()
    pairs = find_pairs(mofme_root, "mofme", "rain")
    specs = ["topk:1", "topk:2", "topk:4", "topp:0.5", "dense"]
    rows = routing_sweep(model, specs, lambda: evaluate_images(model, pairs, **FAST))
    assert [r["routing"] for r in rows] == specs
    active = {r["routing"]: r["active_experts"] for r in rows}
    assert [active[s] for s in ("topk:1", "topk:2", "topk:4", "dense")] == pytest.approx(
        [1, 2, 4, 8]
    )
    assert 1 <= active["topp:0.5"] <= 8
    # More experts cost more: the GFLOPs follow the routing.
    assert rows[0]["gflops"] < rows[2]["gflops"] < rows[4]["gflops"]
    assert model.cfg.routing.describe() == "topk:2"  # restored after the sweep

    table = sweep_markdown(rows)
    assert len(table.splitlines()) == 2 + len(specs) and "| topp:0.5 |" in table
    png = plot_sweep(rows, tmp_path / "plots" / "sweep.png")
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size[0] > 100
    with pytest.raises(MofmeError, match="topk:99"):
        routing_sweep(model, ["topk:1", "topk:99"], lambda: pytest.fail("must not run"))


# ---------------------------------------------------------------------------- CLI


def test_cli_prints_table_and_writes_json(
    mofme_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "res" / "results.json"
    rc = main(
        ["test", "--preset", "tiny", "--data", str(mofme_root), "--out", str(out),
         "--no-progress", "--flops-size", "16x16", "--max-images", "1", "--device", "cpu"]
    )  # fmt: skip
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "| rain | 1 |" in stdout and "| snow | 1 |" in stdout and "**average**" in stdout
    data = json.loads(out.read_text())
    assert [r["name"] for r in data["rows"]] == ["rain", "snow"]
    assert data["meta"]["layout"] == "mofme" and data["meta"]["source"].startswith("preset tiny")
    assert math.isfinite(data["average"]["psnr"])


def test_cli_video_sweep_writes_plot(
    rvsd_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep.json"
    rc = main(
        ["test", "--preset", "tiny", "--data", str(rvsd_root), "--routing", "topk:1,dense",
         "--out", str(out), "--no-progress", "--flops-size", "none", "--max-images", "2"]
    )  # fmt: skip
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "| topk:1 |" in stdout and "| dense |" in stdout and "PSNR 1st" in stdout
    assert (tmp_path / "sweep_sweep.png").is_file()
    data = json.loads(out.read_text())
    assert [r["routing"] for r in data["sweep"]] == ["topk:1", "dense"]
    assert data["results"]["dense"]["kind"] == "video"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "{tmp}/missing"], "data root {tmp}/missing does not exist"),
        (["--data", "{tmp}", "--routing", "topk:1,bogus"], "bad routing 'bogus'"),
        (["--data", "{tmp}", "--resize", "720"], "bad --resize '720'"),
        (["--data", "{tmp}"], "cannot tell the dataset layout of {tmp}"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    rc = main(["test", "--preset", "tiny", *(a.format(tmp=tmp_path) for a in args)])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message.format(tmp=tmp_path) in err


def test_layout_detection_and_transweather_default_lists(
    tmp_path: Path, mofme_root: Path, rvsd_root: Path
) -> None:
    assert detect_layout(mofme_root) == "mofme"
    assert detect_layout(rvsd_root) == "rvsd"
    rng = np.random.default_rng(3)
    folder = tmp_path / "plain"
    write_pair(folder, "a.png", rng)
    assert detect_layout(folder) == "folder"

    tw = tmp_path / "tw"
    write_pair(tw, "r1.png", rng)
    write_pair(tw, "s1.png", rng)
    (tw / "test1.txt").write_text("input/r1.png\n")
    (tw / "snowtest100k_L.txt").write_text("./input/s1.png\n")
    (tw / "hazetest.txt").write_text("input/s1.png\n")
    (tw / "allweather.txt").write_text("input/r1.png\n")  # a training list: not a default
    assert detect_layout(tw) == "transweather"
    pairs = find_image_pairs(tw, "transweather", None)
    assert [(p.group, p.input.name) for p in pairs] == [
        ("test1", "r1.png"),
        ("snowtest100k_L", "s1.png"),
        ("hazetest", "s1.png"),
    ]
    only = find_image_pairs(tw, "transweather", "snowtest100k_L.txt")
    assert [p.group for p in only] == ["snowtest100k_L"]


def test_cli_input_baseline_scores_the_degraded_inputs(
    mofme_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mofme.data.io import read_image, to_tensor
    from mofme.data.pairs import find_pairs
    from mofme.metrics import psnr

    out = tmp_path / "results.json"
    rc = main(
        ["test", "--preset", "tiny", "--data", str(mofme_root), "--out", str(out), "--input-baseline",
         "--no-progress", "--flops-size", "none", "--max-images", "1", "--device", "cpu"]
    )  # fmt: skip
    assert rc == 0
    assert "input (no restoration):" in capsys.readouterr().out
    baseline = json.loads(out.read_text())["input_baseline"]
    first: dict[str, Any] = {}
    for p in find_pairs(mofme_root, "mofme", "test"):
        first.setdefault(p.group, p)
    for row in baseline["rows"]:
        pair = first[row["name"]]
        x, y = (to_tensor(read_image(p))[None] for p in (pair.input, pair.gt))
        assert row["psnr"] == pytest.approx(min(float(psnr(x, y)[0]), 100.0), abs=1e-6)


def test_official_crops_path_scores_the_official_output(mofme_root: Path) -> None:
    from mofme.data.io import read_image, to_tensor
    from mofme.data.pairs import find_pairs
    from mofme.inference.tiling import official_crops

    model = small_model()
    pairs = find_pairs(mofme_root, "mofme", "test")[:1]
    res = evaluate_images(model, pairs, official=True, progress=False, flops_size=None)
    x, gt = (to_tensor(read_image(p))[None] for p in (pairs[0].input, pairs[0].gt))
    expected = float(psnr(official_crops(model, x).clamp(0, 1), gt)[0])
    assert res.records[0].psnr == pytest.approx(expected, abs=1e-6)
    assert res.meta["official_crops"] is True
    assert model.cfg.expert_impl == "sparse"  # official_crops restored the model's setting


def test_severity_gains_mean_and_worst_per_severity() -> None:
    from mofme.results import severity_gains

    inputs = {"clean": 100.0, "rain_light": 28.0, "snow_light": 27.0, "rain_haze_heavy": 12.0}
    restored = {"clean": 40.0, "rain_light": 29.0, "snow_light": 26.5, "rain_haze_heavy": 16.0}
    gains = severity_gains(restored, inputs)
    assert set(gains) == {"light", "heavy"}  # the clean set is left out
    assert gains["light"] == {"mean": 0.25, "worst": -0.5}
    assert gains["heavy"] == {"mean": 4.0, "worst": 4.0}
