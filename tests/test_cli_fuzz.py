"""Fuzz / property suite over the command line (issue 16, "Done when").

A table of bad command lines for every command, plus hypothesis-generated option values, run
in-process through ``mofme.cli.main`` (fast: no interpreter start per case). For each case:

* no Python traceback on stderr;
* exit code 0, 1 or 2, and with 2 exactly one ``error:`` line (argparse adds its usage line);
* no file outside the case's output folder is created, changed or removed (inputs, the
  current folder);
* no temporary file is left anywhere (hidden ``.NAME.tmp...`` files);
* the peak memory of the process grows by less than a bound.

Cases use a slim checkpoint and tiny inputs, so the whole file runs in well under 2 minutes.
"""

from __future__ import annotations

import contextlib
import io
import resource
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mofme import checkpoint
from mofme.cli import main
from mofme.model.config import get_preset
from mofme.model.net import MoFMENet

SLIM = {"dim": 16, "heads": 2, "head_dim": 8, "head_channels": 4, "unpatch_channels": 8}
# Peak RSS growth allowed per case: the slim models and 16-pixel inputs need a few MB; a
# runaway allocation (a forged size, a bomb) would need GBs.
PEAK_GROWTH_MB = 1024


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Inputs shared by every case (read-only for the commands): images, a frame folder, a
    slim checkpoint, configs and assorted junk."""
    root = tmp_path_factory.mktemp("fuzz")
    inp = root / "in"
    inp.mkdir()
    torch.manual_seed(0)
    ckpt = inp / "slim.safetensors"
    checkpoint.save(MoFMENet(get_preset("tiny", **SLIM)), ckpt)
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(inp / "a.png")
    (inp / "frames").mkdir()
    for i in range(2):
        Image.fromarray(rgb).save(inp / "frames" / f"{i}.png")
    (inp / "empty").mkdir()
    (inp / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (inp / "zero.png").write_bytes(b"")
    (inp / "junk.mp4").write_bytes(bytes(range(256)) * 8)
    (inp / "junk.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    (inp / "text.txt").write_text("hello\n")
    (inp / "binary.yaml").write_bytes(bytes(range(256)))
    (inp / "list.yaml").write_text("- 1\n- 2\n")
    pairs = inp / "pairs"
    for kind in ("input", "gt"):
        (pairs / kind).mkdir(parents=True)
        Image.fromarray(rgb).save(pairs / kind / "a.png")
    mixed = inp / "mixed"
    mixed.mkdir()
    Image.fromarray(rgb).save(mixed / "good.png")
    (mixed / "bad.png").write_bytes(b"broken")
    (mixed / "x\nrestored 9 of 9\n.png").write_bytes(b"forged")
    cfg = {
        "model": {"preset": "tiny", "depth": 1, "num_experts": 4, **SLIM},
        "data": {"kind": "image", "root": str(pairs.parent / "train_data"), "crop": 16,
                 "workers": 0},
        "train": {"batch_size": 1, "steps": 1, "val_every": 0, "ckpt_every": 0,
                  "tensorboard": False, "threads": 1, "perceptual_weight": 0},
        "out": "OUT",
    }  # fmt: skip
    (inp / "train.yaml").write_text(yaml.safe_dump(cfg))
    return {"root": root, "in": inp, "ckpt": ckpt}


def snapshot(folder: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """``relative path -> (size, mtime_ns)`` of every file under ``folder`` outside ``skip``."""
    files = {}
    for path in folder.rglob("*"):
        if path == skip or skip in path.parents or not path.is_file():
            continue
        stat = path.stat()
        files[str(path.relative_to(folder))] = (stat.st_size, stat.st_mtime_ns)
    return files


def temp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.startswith(".") and ".tmp" in p.name]


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_case(argv: list[str], world: dict[str, Path], out: Path) -> tuple[int, str, str]:
    """Run one command line in-process from inside ``world['root']``; check the invariants."""
    root = world["root"]
    before = snapshot(root, out)
    peak = peak_mb()
    stdout, stderr = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    with (
        contextlib.redirect_stdout(stdout),
        contextlib.redirect_stderr(stderr),
        contextlib.chdir(root),
    ):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse: --help, usage errors
            code = e.code if isinstance(e.code, int) else 2
    torch.set_num_threads(threads)  # bench --threads changes the process's setting
    err = stderr.getvalue()
    assert "Traceback" not in err, err
    assert code in (0, 1, 2), (code, err)
    if code == 2:
        errors = [line for line in err.splitlines() if "error:" in line]
        assert len(errors) == 1, err
        assert errors[0].startswith(("mofme", "usage: mofme")) or "mofme" in errors[0], err
    assert snapshot(root, out) == before, f"files outside {out} changed"
    assert not temp_files(root), temp_files(root)
    assert peak_mb() - peak < PEAK_GROWTH_MB
    return code, stdout.getvalue(), err


Case = Callable[[dict[str, Path], Path], list[str]]


def _cases() -> list[tuple[str, Case, tuple[int, ...]]]:
    """``(id, argv builder, allowed exit codes)``; the builder gets the world and the out folder."""

    def c(i: dict[str, Path], name: str) -> str:
        return str(i["in"] / name)

    ck = "--ckpt"
    fp32 = ["--precision", "fp32", "--device", "cpu"]
    return [
        # -- the top level
        ("no-command", lambda w, o: [], (2,)),
        ("unknown-command", lambda w, o: ["frobnicate"], (2,)),
        ("help", lambda w, o: ["restore", "--help"], (0,)),
        # -- info
        ("info-missing", lambda w, o: ["info", str(o / "nope.safetensors")], (2,)),
        ("info-text", lambda w, o: ["info", c(w, "text.txt")], (2,)),
        ("info-junk", lambda w, o: ["info", c(w, "junk.safetensors")], (2,)),
        ("info-size", lambda w, o: ["info", c(w, "slim.safetensors"), "--size", "0x3"], (2,)),
        ("info-size-text", lambda w, o: ["info", c(w, "slim.safetensors"), "--size", "big"], (2,)),
        ("info-routing", lambda w, o: ["info", c(w, "slim.safetensors"), "--routing", "topk:99"], (2,)),
        ("info-routing-junk", lambda w, o: ["info", "--routing", "%%%"], (2,)),
        ("info-preset", lambda w, o: ["info", "--preset", "huge"], (2,)),
        ("info-both", lambda w, o: ["info", c(w, "slim.safetensors"), "--preset", "tiny"], (2,)),
        ("info-meta", lambda w, o: ["info", "--device", "meta"], (2,)),
        ("info-device", lambda w, o: ["info", "--device", "cuda:99"], (2,)),
        # -- restore
        ("restore-missing", lambda w, o: ["restore", str(o / "nope.png"), "--out", str(o), ck, str(w["ckpt"]), *fp32], (1, 2)),
        ("restore-empty-folder", lambda w, o: ["restore", c(w, "empty"), "--out", str(o), *fp32], (2,)),
        ("restore-junk", lambda w, o: ["restore", c(w, "junk.png"), c(w, "zero.png"), "--out", str(o), ck, str(w["ckpt"]), *fp32], (1,)),
        ("restore-folder-mixed", lambda w, o: ["restore", c(w, "mixed"), "--out", str(o), ck, str(w["ckpt"]), *fp32], (1,)),
        ("restore-tile", lambda w, o: ["restore", c(w, "a.png"), "--out", str(o), "--tile", "abc"], (2,)),
        ("restore-tile-small", lambda w, o: ["restore", c(w, "a.png"), "--out", str(o), "--tile", "3"], (2,)),
        ("restore-overlap", lambda w, o: ["restore", c(w, "a.png"), "--out", str(o), "--tile", "16", "--overlap", "16"], (2,)),
        ("restore-ext", lambda w, o: ["restore", c(w, "a.png"), "--out", str(o), "--ext", "xyz"], (2,)),
        ("restore-out-file", lambda w, o: ["restore", c(w, "a.png"), "--out", c(w, "text.txt")], (2,)),
        ("restore-into-input", lambda w, o: ["restore", c(w, "frames"), "--out", c(w, "frames")], (2,)),
        ("restore-pixels", lambda w, o: ["restore", c(w, "a.png"), "--out", str(o), "--max-pixels", "lots"], (2,)),
        ("restore-ckpt", lambda w, o: ["restore", c(w, "a.png"), "--out", str(o), ck, c(w, "junk.safetensors"), *fp32], (2,)),
        ("restore-device", lambda w, o: ["restore", c(w, "a.png"), "--out", str(o), "--device", "meta"], (2,)),
        # -- video
        ("video-missing", lambda w, o: ["video", str(o / "nope.mp4"), str(o / "x.mp4")], (2,)),
        ("video-junk", lambda w, o: ["video", c(w, "junk.mp4"), str(o / "x.mp4"), ck, str(w["ckpt"]), *fp32], (2,)),
        ("video-fps-nan", lambda w, o: ["video", c(w, "frames"), str(o / "x.mp4"), "--fps", "nan"], (2,)),
        ("video-fps-inf", lambda w, o: ["video", c(w, "frames"), str(o / "x.mp4"), "--fps", "inf"], (2,)),
        ("video-fps-text", lambda w, o: ["video", c(w, "frames"), str(o / "x.mp4"), "--fps", "fast"], (2,)),
        ("video-crf", lambda w, o: ["video", c(w, "frames"), str(o / "x.mp4"), "--crf", "99"], (2,)),
        ("video-same", lambda w, o: ["video", c(w, "frames"), c(w, "frames")], (2,)),
        ("video-gif", lambda w, o: ["video", c(w, "frames"), str(o / "x.gif")], (2,)),
        # -- train
        ("train-missing", lambda w, o: ["train", str(o / "nope.yaml")], (2,)),
        ("train-binary", lambda w, o: ["train", c(w, "binary.yaml")], (2,)),
        ("train-list", lambda w, o: ["train", c(w, "list.yaml")], (2,)),
        ("train-text", lambda w, o: ["train", c(w, "text.txt")], (2,)),
        ("train-unknown-key", lambda w, o: ["train", c(w, "train.yaml"), "--out", str(o), "--set", "train.lrr=1"], (2,)),
        ("train-nan", lambda w, o: ["train", c(w, "train.yaml"), "--out", str(o), "--set", "train.grad_clip=.nan"], (2,)),
        ("train-inf", lambda w, o: ["train", c(w, "train.yaml"), "--out", str(o), "--set", "train.steps=null", "--set", "train.epochs=.inf"], (2,)),
        ("train-threads", lambda w, o: ["train", c(w, "train.yaml"), "--out", str(o), "--set", "train.threads=100000"], (2,)),
        ("train-bool", lambda w, o: ["train", c(w, "train.yaml"), "--out", str(o), "--set", 'model.global_residual="yes"'], (2,)),
        ("train-set", lambda w, o: ["train", c(w, "train.yaml"), "--out", str(o), "--set", "nonsense"], (2,)),
        ("train-no-data", lambda w, o: ["train", c(w, "train.yaml"), "--out", str(o)], (2,)),
        ("train-resume", lambda w, o: ["train", c(w, "train.yaml"), "--out", str(o), "--resume"], (2,)),
        ("train-device", lambda w, o: ["train", c(w, "train.yaml"), "--out", str(o), "--device", "meta"], (2,)),
        # -- test, stats
        ("test-missing", lambda w, o: ["test", ck, str(w["ckpt"]), "--data", str(o / "nope")], (2,)),
        ("test-resize", lambda w, o: ["test", "--data", c(w, "pairs"), "--resize", "big"], (2,)),
        ("test-layout", lambda w, o: ["test", "--data", c(w, "pairs"), "--layout", "nope"], (2,)),
        ("stats-missing", lambda w, o: ["stats", "--data", str(o / "nope"), "--out", str(o)], (2,)),
        ("stats-frames", lambda w, o: ["stats", "--data", c(w, "pairs"), "--out", str(o), "--max-frames", "0"], (2,)),
        ("stats-overlap", lambda w, o: ["stats", "--data", c(w, "pairs"), "--out", str(o), "--tile", "16", "--overlap", "99"], (2,)),
        ("stats-video-on-images", lambda w, o: ["stats", "video", "--data", c(w, "pairs"), "--layout", "folder", "--out", str(o), "--device", "cpu"], (2,)),
        # -- bench, synth, demo
        ("bench-crop", lambda w, o: ["bench", "--preset", "tiny", "--crop", "0"], (2,)),
        ("bench-topp", lambda w, o: ["bench", "--preset", "tiny", "--topp", "nan"], (2,)),
        ("bench-repeat", lambda w, o: ["bench", "--preset", "tiny", "--repeat", "0"], (2,)),
        ("bench-size", lambda w, o: ["bench", "--preset", "tiny", "--size", "0x1"], (2,)),
        ("bench-threads", lambda w, o: ["bench", "--preset", "tiny", "--threads", "100000"], (2,)),
        ("synth-size", lambda w, o: ["synth", "allweather", "--out", str(o), "--size", "0x0", "--quiet"], (2,)),
        ("synth-workers", lambda w, o: ["synth", "allweather", "--out", str(o), "--workers", "0", "--quiet"], (2,)),
        ("demo-frames", lambda w, o: ["demo", "--out", str(o), "--frames", "0"], (2,)),
        ("export-missing", lambda w, o: ["export", str(o / "nope.safetensors"), str(o / "m.onnx")], (2,)),
        ("export-junk", lambda w, o: ["export", c(w, "junk.safetensors"), str(o / "m.onnx")], (2,)),
        ("export-opset", lambda w, o: ["export", str(w["ckpt"]), str(o / "m.onnx"), "--opset", "5"], (2,)),
        ("export-into-input", lambda w, o: ["export", str(w["ckpt"]), str(w["ckpt"])], (2,)),
        # app: only refusals (a valid command line would start a server)
        ("app-port", lambda w, o: ["app", "--port", "99999"], (2,)),
        ("app-megapixels-nan", lambda w, o: ["app", "--max-megapixels", "nan"], (2,)),
        ("app-megapixels-zero", lambda w, o: ["app", "--max-megapixels", "0"], (2,)),
    ]  # fmt: skip


CASES = _cases()


@pytest.mark.parametrize("build, codes", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_command_lines(world, tmp_path, build, codes):
    out = world["root"] / "out" / tmp_path.name
    code, _, err = run_case(build(world, out), world, out)
    assert code in codes, (code, err)


def test_forged_file_names_stay_on_their_line(world, tmp_path):
    out = world["root"] / "out" / tmp_path.name
    argv = ["restore", str(world["in"] / "mixed"), "--out", str(out), "--ckpt", str(world["ckpt"])]
    code, stdout, err = run_case([*argv, "--precision", "fp32", "--device", "cpu"], world, out)
    assert code == 1
    assert not any(line.startswith("restored 9") for line in (stdout + err).splitlines())


# ------------------------------------------------------------------ generated option values

# Text that argparse receives as one option value: numbers in every spelling, junk, control
# characters and very long strings. (A leading "-" would be read as another option.)
values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**12), 10**12).map(str),
    st.sampled_from(["nan", "inf", "-inf", "1e309", "0x10", "", " ", "1_000", "½", "8\n8"]),
    st.text(min_size=0, max_size=40),
).map(lambda v: v if not v.startswith("-") else " " + v)

FUZZ = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)


@FUZZ
@given(fps=values, crf=values)
def test_video_options_property(world, tmp_path, fps, crf):
    out = world["root"] / "out" / "video-property"
    # An unwritable model path keeps valid values from running a model: they stop at loading.
    argv = ["video", str(world["in"] / "frames"), str(out / "x.mp4"), f"--fps={fps}"]
    argv += [f"--crf={crf}", "--ckpt", str(world["in"] / "junk.safetensors"), "--device", "cpu"]
    run_case(argv, world, out)


@FUZZ
@given(tile=values, overlap=values, pixels=values)
def test_restore_options_property(world, tmp_path, tile, overlap, pixels):
    out = world["root"] / "out" / "restore-property"
    argv = ["restore", str(world["in"] / "a.png"), "--out", str(out), f"--tile={tile}"]
    argv += [f"--overlap={overlap}", f"--max-pixels={pixels}", "--overwrite"]
    argv += ["--ckpt", str(world["in"] / "junk.safetensors"), "--device", "cpu"]
    run_case(argv, world, out)


@FUZZ
@given(key=st.sampled_from(["train.lr", "train.epochs", "train.threads", "train.grad_clip",
                            "data.crop", "data.workers", "model.global_residual", "model.dim",
                            "model.routing", "train.betas", "video.zero_ref_prob"]),
       value=values)  # fmt: skip
def test_train_overrides_property(world, tmp_path, key, value):
    out = world["root"] / "out" / "train-property"
    # The data root does not exist: a config that validates stops there, before training.
    argv = ["train", str(world["in"] / "train.yaml"), "--out", str(out), "--no-progress"]
    run_case([*argv, "--set", f"{key}={value}"], world, out)


@FUZZ
@given(size=values, routing=values)
def test_info_options_property(world, tmp_path, size, routing):
    out = world["root"] / "out" / "info-property"
    argv = ["info", str(world["in"] / "junk.safetensors"), f"--size={size}"]
    run_case([*argv, f"--routing={routing}", "--device", "cpu"], world, out)


def test_suite_cases_cover_every_command():
    from mofme.cli import COMMANDS

    covered = {c[0].split("-")[0] for c in CASES}
    missing = [name for name in COMMANDS if name not in covered and name not in ("convert",)]
    assert not missing, missing


if sys.platform != "linux":  # ru_maxrss units differ (bytes on macOS)
    PEAK_GROWTH_MB = 10**9
