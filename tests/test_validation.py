"""Hardening II, items 10, 11 and 13-16 (issue 16): wrong content in run files, option and config
validation, short names for the bundled weights, grey in / grey out, one progress rule, the
training config reference, log cadence and loader workers.

Each test failed before its fix. Everything runs in-process on slim models (CPU, seconds).
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from mofme import checkpoint
from mofme.cli import main
from mofme.commands.common import want_progress
from mofme.config import coerce
from mofme.errors import MofmeError, one_line
from mofme.model.config import ModelConfig, get_preset
from mofme.model.net import MoFMENet
from mofme.train import DataConfig, TrainConfig, config_reference, load_config

ROOT = Path(__file__).resolve().parents[1]
SLIM = {"dim": 16, "heads": 2, "head_dim": 8, "head_channels": 4, "unpatch_channels": 8}


def one_line_error(err: str) -> bool:
    lines = [line for line in err.splitlines() if line.strip()]
    return bool(lines) and "Traceback" not in err and "error:" in lines[-1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "slim.safetensors"
    checkpoint.save(MoFMENet(get_preset("tiny", **SLIM)), path)
    return path


def image_data(root: Path, n: int = 4, size: int = 32) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        clean = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        for kind, img in (("gt", clean), ("input", 255 - clean)):
            (root / "train" / kind).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / "train" / kind / f"{i}.png")
    return root


def train_yaml(tmp_path: Path, **sections: dict) -> Path:
    cfg = {
        "model": {"preset": "tiny", "depth": 1, "num_experts": 4, **SLIM},
        "data": {"kind": "image", "root": str(image_data(tmp_path / "data")), "crop": 32,
                 "workers": 0},
        "train": {"batch_size": 2, "steps": 2, "val_every": 0, "ckpt_every": 0,
                  "tensorboard": False, "threads": 1, "perceptual_weight": 0},
        "out": str(tmp_path / "run"),
    }  # fmt: skip
    for name, values in sections.items():
        cfg[name] = {**cfg[name], **values} if isinstance(cfg[name], dict) else values
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def rewrite_metadata(src: Path, dst: Path, **changes: str) -> Path:
    with safe_open(str(src), framework="pt") as sf:
        meta = dict(sf.metadata())
        tensors = {k: sf.get_tensor(k) for k in sf.keys()}  # noqa: SIM118 - safe_open API
    meta.update(changes)
    save_file(tensors, str(dst), metadata=meta)
    return dst


# ------------------------------------------------------------------ item 10: wrong content


@pytest.mark.parametrize(
    "changes",
    [
        {"step": "abc"},
        {"extra": "{not json"},
        {"extra": "[1, 2]"},
        {"config": "[1, 2]"},
        {"config": json.dumps({**get_preset("tiny", **SLIM).to_dict(), "global_residual": "yes"})},
        {"config": json.dumps({**get_preset("tiny", **SLIM).to_dict(), "dim": "16"})},
        {"config": json.dumps({**get_preset("tiny", **SLIM).to_dict(), "routing": 7})},
    ],
    ids=["step", "extra-json", "extra-list", "config-list", "bool-str", "int-str", "routing-int"],
)
def test_checkpoint_metadata_with_wrong_content(ckpt, tmp_path, capsys, changes):
    bad = rewrite_metadata(ckpt, tmp_path / "bad.safetensors", **changes)
    with pytest.raises(MofmeError, match=re.escape(str(bad))):
        checkpoint.load(bad)
    assert main(["info", str(bad), "--size", "16x16"]) == 2
    err = capsys.readouterr().err
    assert one_line_error(err) and str(bad) in err


def test_checkpoint_routing_as_a_bare_string_is_read(ckpt, tmp_path):
    cfg = {**get_preset("tiny", **SLIM).to_dict(), "routing": "topk:1"}
    path = rewrite_metadata(ckpt, tmp_path / "r.safetensors", config=json.dumps(cfg))
    assert checkpoint.load(path).cfg.routing.k == 1


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A 2-step run (stopped at step 1, so it can be resumed) to damage copies of."""
    tmp = tmp_path_factory.mktemp("run")
    path = train_yaml(tmp)
    assert main(["train", str(path), "--no-progress", "--stop-after", "1"]) == 0
    return tmp


def damaged_copy(trained_run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(trained_run, dst)
    cfg = yaml.safe_load((dst / "cfg.yaml").read_text())
    cfg["out"] = str(dst / "run")
    cfg["data"]["root"] = str(dst / "data")
    (dst / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return dst


@pytest.mark.parametrize(
    "damage",
    [
        lambda s: s.pop("optimizer"),
        lambda s: s.update(step="abc"),
        lambda s: s.update(rng=[]),
        lambda s: s.update(model_config="paper"),
        lambda s: s.update(model_config={**s["model_config"], "dim": "x"}),
        lambda s: s.clear() or s.update(hello=1),
    ],
    ids=["missing-key", "str-step", "empty-rng", "config-str", "config-type", "foreign-dict"],
)
def test_training_state_with_wrong_content(trained_run, tmp_path, capsys, damage):
    run = damaged_copy(trained_run, tmp_path)
    state_path = run / "run" / "state_last.pt"
    state = torch.load(state_path, weights_only=True)
    damage(state)
    torch.save(state, state_path)
    assert main(["train", str(run / "cfg.yaml"), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert one_line_error(err) and "state_last.pt" in err, err


def test_training_state_not_a_mapping(trained_run, tmp_path, capsys):
    run = damaged_copy(trained_run, tmp_path)
    torch.save([1, 2, 3], run / "run" / "state_last.pt")
    assert main(["train", str(run / "cfg.yaml"), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert one_line_error(err) and "state_last.pt" in err


def test_log_with_foreign_lines_does_not_stop_a_resume(trained_run, tmp_path, capsys):
    run = damaged_copy(trained_run, tmp_path)
    log = run / "run" / "log.jsonl"
    foreign = ["[1, 2]", '"text"', '{"step": "abc"}', '{"note": "mine"}']
    log.write_bytes(log.read_bytes() + ("\n".join(foreign) + "\n").encode() + b"\xff\xfe\n")
    assert main(["train", str(run / "cfg.yaml"), "--resume", "--no-progress"]) == 0
    text = log.read_text()
    for line in foreign:
        assert line in text  # not ours: kept, not silently dropped
    records = [json.loads(x) for x in text.splitlines() if x.startswith('{"step": ')]
    steps = [r["step"] for r in records if isinstance(r["step"], int)]
    assert steps == [1, 2]  # step 1 before the resume, step 2 after it


# -------------------------------------------------------------- item 11: options and configs


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=.inf", "finite"),
        ("train.grad_clip=.nan", "finite"),
        ("train.lr=.inf", "finite"),
        ('model.global_residual="yes"', "true/false"),
        ("train.threads=100000", "threads"),
        ("data.workers=-1", "data.workers"),
        ("train.smooth_l1_beta=0", "smooth_l1_beta"),
        ("train.weather_mask=global", "weather_mask"),
        ('model.head_skip="yes"', "true/false"),
    ],
)
def test_bad_training_values_are_refused(tmp_path, capsys, override, message):
    path = train_yaml(tmp_path)
    argv = ["train", str(path), "--no-progress", "--set", override]
    if "epochs" in override:
        argv += ["--set", "train.steps=null"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert one_line_error(err) and message in err, err
    assert not (tmp_path / "run").exists()


def test_nan_is_refused_by_every_float_field():
    with pytest.raises(MofmeError, match="finite"):
        coerce(float("nan"), float, "x")
    with pytest.raises(MofmeError, match="finite"):
        coerce(float("-inf"), float | None, "x")
    assert coerce(2, float, "x") == 2.0 and coerce("1e-3", float, "x") == 1e-3


@pytest.mark.parametrize("content", [bytes(range(256)) * 4, b"train:\n  lr: 1\n\xff\xfe\x00"])
def test_binary_yaml_file_is_one_line(tmp_path, capsys, content):
    path = tmp_path / "binary.yaml"
    path.write_bytes(content)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert one_line_error(err) and str(path) in err


def test_model_config_is_strictly_typed():
    base = get_preset("tiny").to_dict()
    for key, value in (("global_residual", "yes"), ("dim", 1.5), ("dim", True), ("dropout", "x")):
        with pytest.raises(MofmeError, match=key):
            ModelConfig.from_dict({**base, key: value})


@pytest.mark.parametrize("fps", ["nan", "inf", "-inf", "0", "1e9"])
def test_video_fps_must_be_finite_and_sane(tmp_path, capsys, fps):
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(frames / "0.png")
    argv = ["video", str(frames), str(tmp_path / "out"), f"--fps={fps}", "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert one_line_error(err) and "--fps" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--crop", "0"], "--crop"),
        (["--crop", "4"], "--crop"),
        (["--tile", "0"], "--tile"),
        (["--overlap", "300"], "--overlap"),
        (["--overlap", "-1"], "--overlap"),
        (["--tokens", "0"], "--tokens"),
        (["--topp", "nan"], "--topp"),
        (["--size", "100000x100000"], "pixel budget"),
        (["--threads", "100000"], "threads"),
    ],
)
def test_bench_options_are_checked_first(capsys, monkeypatch, args, message):
    import mofme.bench

    def no_timing(*a, **k):
        raise AssertionError("bench started timing")

    monkeypatch.setattr(mofme.bench, "matmul_peaks", no_timing, raising=False)
    monkeypatch.setattr(mofme.bench, "run_frame_bench", no_timing)
    threads = torch.get_num_threads()
    try:
        assert main(["bench", "--preset", "tiny", "--size", "32x32", *args]) == 2
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert one_line_error(err) and message in err, err


@pytest.mark.parametrize("device", ["meta", "mps", "cuda:99", "xla", "nonsense"])
def test_unusable_devices_are_refused(ckpt, capsys, device):
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("MPS is available here")
    if device == "cuda:99" and torch.cuda.device_count() > 99:
        pytest.skip("a machine with 100 GPUs")
    assert main(["info", str(ckpt), "--size", "16x16", "--device", device]) == 2
    err = capsys.readouterr().err
    assert one_line_error(err) and device in err


def test_worker_errors_have_no_worker_traceback(tmp_path, capsys):
    path = train_yaml(tmp_path, data={"workers": 1, "strict": True})
    (tmp_path / "data" / "train" / "input" / "0.png").write_bytes(b"not an image")
    assert main(["train", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert one_line_error(err) and "0.png" in err
    assert "DataLoader worker" not in err and "Original Traceback" not in err


def test_newlines_in_file_names_cannot_forge_summary_lines(tmp_path, ckpt, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "good.png")
    forged = folder / "x\nrestored 9 of 9 images into y\n.png"
    forged.write_bytes(b"not an image")
    out = tmp_path / "out"
    argv = ["restore", str(folder), "--out", str(out), "--ckpt", str(ckpt), "--device", "cpu"]
    assert main([*argv, "--precision", "fp32"]) == 1
    captured = capsys.readouterr()
    lines = (captured.out + captured.err).splitlines()
    assert not any(line.startswith("restored 9") for line in lines)
    assert any("x\\nrestored 9 of 9" in line for line in lines)
    assert one_line("a\nb\x1b") == "a\\nb\\x1b" and one_line("é ok") == "é ok"


# ------------------------------------------------------------ item 13: the bundled weights


def test_info_without_argument_is_the_bundled_image_model(capsys):
    assert main(["info", "--size", "16x16", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["source"] == "bundled image model" and info["config"]["in_channels"] == 3


@pytest.mark.parametrize("name, channels", [("image", 3), ("video", 6)])
def test_short_names_for_the_bundled_weights(capsys, name, channels):
    assert main(["info", name, "--size", "16x16", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["in_channels"] == channels


def test_restore_accepts_a_short_name(tmp_path, capsys):
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "a.png")
    argv = ["restore", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"), "--ckpt", "image"]
    assert main([*argv, "--device", "cpu", "--precision", "fp32"]) == 0
    assert (tmp_path / "o" / "a.png").is_file()


def test_stats_default_model_matches_image_data(tmp_path, capsys):
    root = tmp_path / "d"
    for kind in ("input", "gt"):
        (root / kind).mkdir(parents=True)
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / kind / "a.png")
    argv = ["stats", "--data", str(root), "--layout", "folder", "--out", str(tmp_path / "s")]
    assert main([*argv, "--device", "cpu"]) == 0
    assert "bundled image model" in (tmp_path / "s" / "stats.md").read_text()


class ClosedPipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_closed_stdout_ends_quietly(ckpt, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["info", str(ckpt), "--size", "16x16"]) == 1
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------- item 14: grey in/out


@pytest.mark.parametrize(
    "array, mode",
    [
        (np.random.default_rng(0).integers(0, 65536, (24, 20), dtype=np.uint16), "I;16"),
        (np.random.default_rng(0).integers(0, 256, (24, 20), dtype=np.uint8), "L"),
    ],
)
def test_grey_in_grey_out(tmp_path, ckpt, capsys, array, mode):
    Image.fromarray(array).save(tmp_path / "g.png")
    argv = ["restore", str(tmp_path / "g.png"), "--out", str(tmp_path / "o"), "--ckpt", str(ckpt)]
    assert main([*argv, "--device", "cpu", "--precision", "fp32"]) == 0
    with Image.open(tmp_path / "o" / "g.png") as out:
        assert out.mode == mode and out.size == (20, 24)


# --------------------------------------------------------------- item 15: one progress rule


def test_progress_rule(monkeypatch):
    class Tty(io.StringIO):
        def __init__(self, tty: bool) -> None:
            super().__init__()
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    for tty in (True, False):
        monkeypatch.setattr(sys, "stderr", Tty(tty))
        assert want_progress(argparse.Namespace(progress=None)) is tty
        assert want_progress(argparse.Namespace(progress=True)) is True
        assert want_progress(argparse.Namespace(progress=False)) is False
        assert want_progress(argparse.Namespace()) is tty


def test_restore_shows_tile_progress_for_a_large_image(tmp_path, ckpt, capsys):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "big.png")
    argv = ["restore", str(tmp_path / "big.png"), "--out", str(tmp_path / "o"), "--ckpt", str(ckpt)]
    argv += ["--device", "cpu", "--precision", "fp32", "--tile", "16", "--overlap", "4"]
    assert main([*argv, "--progress"]) == 0
    assert "tiles" in capsys.readouterr().err
    assert main([*argv, "--no-progress", "--overwrite"]) == 0
    err = capsys.readouterr().err
    assert "tiles" not in err and "restore:" not in err


@pytest.mark.parametrize("command", ["train", "test", "restore", "video", "stats", "synth"])
def test_every_long_command_has_the_progress_options(command):
    from mofme.cli import build_parser

    parser = build_parser()
    argv = [command] + (["allweather"] if command == "synth" else []) + ["--help"]
    out = io.StringIO()
    monkey = pytest.MonkeyPatch()
    monkey.setattr(sys, "stdout", out)
    try:
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
    finally:
        monkey.undo()
    assert "--progress, --no-progress" in out.getvalue()


# ------------------------------------------------- item 16: docs, crop, workers, log cadence


def test_readme_has_the_training_config_reference():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("<!-- config-reference:start")
    body = readme[readme.index("-->", start) + 3 : readme.index("<!-- config-reference:end")]
    # Regenerate with: python scripts/update_config_reference.py
    assert body.strip() == config_reference().strip()
    for cls, section in ((DataConfig, "data"), (TrainConfig, "train")):
        for name in cls.__dataclass_fields__:
            assert f"`{section}.{name}`" in body


def test_short_run_logs_first_and_last_step(tmp_path, capsys):
    path = train_yaml(tmp_path, train={"steps": 3, "log_every": 50})
    assert main(["train", str(path), "--no-progress"]) == 0
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 3]


def test_crop_larger_than_the_images_is_reported(tmp_path, capsys):
    path = train_yaml(tmp_path, data={"crop": 240}, train={"steps": 1})
    assert main(["train", str(path), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "data.crop=240 is larger than the training images" in err and "32" in err


def test_workers_default_from_the_machine(tmp_path, capsys, monkeypatch):
    import mofme.device as common
    from mofme.train import default_workers

    assert DataConfig().workers is None
    monkeypatch.setattr(common, "cpu_count", lambda: 2)
    assert default_workers() == 1
    monkeypatch.setattr(common, "cpu_count", lambda: 1)
    assert default_workers() == 0
    monkeypatch.setattr(common, "cpu_count", lambda: 64)
    assert default_workers() == 4
    assert load_config(train_yaml(tmp_path)).data.workers == 0


def test_too_many_workers_are_noted_once(tmp_path, capsys, monkeypatch):
    import mofme.device as common

    monkeypatch.setattr(common, "cpu_count", lambda: 1)
    path = train_yaml(tmp_path, data={"workers": 2}, train={"steps": 1})
    assert main(["train", str(path), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert err.count("data.workers=2") == 1 and "This DataLoader will create" not in err


def test_demo_folder_is_ignored_by_git():
    assert "mofme_demo/" in (ROOT / ".gitignore").read_text().splitlines()
