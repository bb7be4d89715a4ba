"""Hardening (SPEC §10): bad input gets a clear one-line error naming the file, nothing is lost.

Complements test_restore_cli.py (corrupt / empty / non-image files, refusals, 16-bit + alpha),
test_video.py (empty and random-byte videos, odd sizes, output == input), test_io.py (each
image mode and EXIF orientation at the API level), test_model.py (damaged checkpoints at the
API level) and test_train.py (SIGTERM, NaN skipping, bit-identical resume). Here the same
kinds of damage go through the command line, mixed together, plus a SIGKILL-and-resume run.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
import tifffile
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mofme import checkpoint
from mofme.cli import main
from mofme.data.io import load_image, save_image
from mofme.model.net import MoFMENet

SLIM = {"dim": 16, "heads": 2, "head_dim": 8, "head_channels": 4, "unpatch_channels": 8}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """Slim image (3-channel) and video (6-channel) checkpoints."""
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    paths = {}
    for name, channels in (("image", 3), ("video", 6)):
        paths[name] = folder / f"{name}.safetensors"
        checkpoint.save(MoFMENet.from_preset("tiny", in_channels=channels, **SLIM), paths[name])
    return paths


def rng_u8(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def temp_leftovers(folder: Path) -> list[str]:
    """Hidden or ``.tmp`` files anywhere under ``folder`` (atomic writes leave none)."""
    return [p.name for p in folder.rglob("*") if p.name.startswith(".") or ".tmp" in p.name]


def one_line_error(err: str) -> bool:
    return err.count("\n") == 1 and "Traceback" not in err


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width x height`` RGB pixels (a decompression bomb) but holds none."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data).to_bytes(4, "big")
        return len(data).to_bytes(4, "big") + kind + data + crc

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# ------------------------------------------------------------------------------- restore


def test_restore_mixed_folder(tmp_path, ckpts, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(rng_u8((12, 10))).save(src / "gray.png")
    rgba = rng_u8((9, 11, 4), seed=1)
    Image.fromarray(rgba, "RGBA").save(src / "rgba.png")
    Image.fromarray(rng_u8((13, 7, 3), seed=2)).convert("P").save(src / "palette.png")
    deep = (np.random.default_rng(3).integers(0, 65536, (10, 14))).astype(np.uint16)
    Image.fromarray(deep).save(src / "deep16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 24 wide x 16 high, displayed rotated: 16 wide x 24 high
    Image.fromarray(rng_u8((16, 24, 3), seed=4)).save(src / "rotated.jpg", exif=exif)
    Image.fromarray(rng_u8((1, 1, 3), seed=5)).save(src / "one.png")
    Image.fromarray(rng_u8((8, 8, 3), seed=6)).save(src / "été photo 1.png")
    whole = tmp_path / "whole.png"
    Image.fromarray(rng_u8((32, 32, 3), seed=7)).save(whole)
    (src / "truncated.png").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    (src / "text.png").write_text("just some text, not an image\n")
    (src / "zero.png").write_bytes(b"")
    (src / "bomb.png").write_bytes(png_header_only(60000, 60000))

    rc = main(["restore", str(src), "--out", str(out), "--ckpt", str(ckpts["image"])])
    captured = capsys.readouterr()
    assert rc == 1
    assert "4 failed" in captured.err and "Traceback" not in captured.err
    for bad in ("truncated.png", "text.png", "zero.png", "bomb.png"):
        assert bad in captured.err
    assert "restored 7 of 11" in captured.out
    good = ["deep16", "gray", "one", "palette", "rgba", "rotated", "été photo 1"]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{g}.png" for g in good)
    assert temp_leftovers(out) == []

    restored = {g: load_image(out / f"{g}.png") for g in good}
    assert restored["gray"].rgb.shape == (12, 10, 3)
    assert restored["rgba"].alpha is not None
    np.testing.assert_allclose(restored["rgba"].alpha, rgba[..., 3] / 255, atol=1e-6)
    assert restored["palette"].rgb.shape == (13, 7, 3) and restored["palette"].alpha is None
    assert restored["deep16"].bit_depth == 16 and restored["deep16"].rgb.shape == (10, 14, 3)
    assert restored["rotated"].rgb.shape == (24, 16, 3)  # orientation honoured
    assert restored["one"].rgb.shape == (1, 1, 3)
    assert restored["été photo 1"].rgb.shape == (8, 8, 3)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_restore_nan_tiff_names_the_file(tmp_path, ckpts, capsys, bad):
    data = np.random.default_rng(0).random((8, 9, 3), dtype=np.float32)
    data[2, 3, 1] = bad
    tifffile.imwrite(tmp_path / "float nan.tif", data, photometric="rgb")
    src, ckpt = str(tmp_path / "float nan.tif"), str(ckpts["image"])
    rc = main(["restore", src, "--out", str(tmp_path / "o"), "--ckpt", ckpt])
    err = capsys.readouterr().err
    assert rc == 1 and "float nan.tif" in err and "NaN or infinite" in err
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []


def test_output_never_replaces_input(tmp_path, ckpts, capsys):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(rng_u8((8, 8, 3))).save(src / "a.png")
    Image.fromarray(rng_u8((8, 8, 3), seed=1)).save(src / "b.jpg")
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    ckpt = ["--ckpt", str(ckpts["image"])]

    # The input folder reached through a symlink is still the input folder.
    (tmp_path / "link").symlink_to(src, target_is_directory=True)
    assert main(["restore", str(src), "--out", str(tmp_path / "link"), *ckpt]) == 2
    err = capsys.readouterr().err
    assert "input folder" in err and one_line_error(err)
    # Even --overwrite does not make a folder its own output.
    assert main(["restore", str(src), "--out", str(src), "--overwrite", *ckpt]) == 2
    assert "input folder" in capsys.readouterr().err
    # One file whose output name would replace another input: refused before any write.
    args = ["restore", str(src / "b.jpg"), str(src / "a.png"), "--out", str(src), *ckpt]
    assert main(args) == 2
    assert "overwrite an input" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before
    # A different output name next to the input is fine; the input is untouched.
    assert main(["restore", str(src / "b.jpg"), "--out", str(src), *ckpt]) == 0
    assert (src / "b.jpg").read_bytes() == before["b.jpg"] and (src / "b.png").is_file()
    assert temp_leftovers(src) == []
    # With --overwrite the user asked for the replacement; it is written atomically.
    assert main(["restore", str(src / "a.png"), "--out", str(src), "--overwrite", *ckpt]) == 0
    assert load_image(src / "a.png").rgb.shape == (8, 8, 3) and temp_leftovers(src) == []


MODES = ["L", "LA", "RGB", "RGBA", "P", "PA", "I;16", "RGB16", "RGBA16"]


@settings(max_examples=15, deadline=None)
@given(
    h=st.integers(1, 70),
    w=st.integers(1, 70),
    mode=st.sampled_from(MODES),
    seed=st.integers(0, 2**16),
)
def test_restore_any_size_and_mode(ckpts, h, w, mode, seed):
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp) / "in.png", Path(tmp) / "out"
        alpha_in = mode in ("LA", "RGBA", "PA", "RGBA16")
        if mode.endswith("16") and mode != "I;16":
            rgb = rng.random((h, w, 3), dtype=np.float32)
            alpha = rng.random((h, w), dtype=np.float32) if alpha_in else None
            save_image(path, rgb, alpha=alpha, bit_depth=16)
        elif mode == "I;16":
            Image.fromarray(rng.integers(0, 65536, (h, w)).astype(np.uint16)).save(path)
        elif mode in ("P", "PA"):
            img = Image.fromarray(rng_u8((h, w, 3), seed)).convert("P")
            if mode == "PA":
                img.info["transparency"] = 0
            img.save(path, **({"transparency": 0} if mode == "PA" else {}))
        else:
            channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[mode]
            shape = (h, w) if channels == 1 else (h, w, channels)
            Image.fromarray(rng_u8(shape, seed), mode).save(path)
        src = load_image(path)
        assert main(["restore", str(path), "--out", str(out), "--ckpt", str(ckpts["image"])]) == 0
        res = load_image(out / "in.png")
        assert res.rgb.shape == (h, w, 3)
        assert (res.alpha is None) == (src.alpha is None)
        assert res.bit_depth == src.bit_depth == (16 if mode.endswith("16") else 8)
        assert np.isfinite(res.rgb).all()
        assert sorted(p.name for p in out.iterdir()) == ["in.png"]


# ------------------------------------------------------------------------------- video


def write_mp4(path: Path, frames: np.ndarray) -> None:
    """H.264 frames ``(T, H, W, 3)`` uint8 written with PyAV (T may be 0)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.height, stream.width = (frames.shape[1:3]) if len(frames) else (16, 16)
        stream.pix_fmt = "yuv420p"
        container.start_encoding()  # writes the header even when there are no frames
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _zero_frame(path: Path) -> None:
    write_mp4(path, np.zeros((0, 16, 16, 3), np.uint8))
    assert path.stat().st_size > 0


def _truncated(path: Path) -> None:
    write_mp4(path, rng_u8((6, 32, 32, 3)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _text(path: Path) -> None:
    path.write_text("this is a text file, not a video\n" * 20)


@pytest.mark.parametrize("make", [_zero_frame, _truncated, _text], ids=lambda f: f.__name__[1:])
@pytest.mark.parametrize("output", ["out.mp4", "frames"])
def test_video_bad_input_exit_2_nothing_left(tmp_path, ckpts, capsys, make, output):
    src = tmp_path / "bad clip.mp4"
    make(src)
    rc = main(["video", str(src), str(tmp_path / output), "--ckpt", str(ckpts["video"])])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and "bad clip.mp4" in lines[0] and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad clip.mp4"]


def test_video_failing_midway_keeps_existing_output(tmp_path, ckpts, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        Image.fromarray(rng_u8((16, 16, 3), seed=i)).save(frames / f"{i}.png")
    (frames / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    dst = tmp_path / "out.mp4"
    dst.write_bytes(b"an earlier result")
    argv = ["video", str(frames), str(dst), "--ckpt", str(ckpts["video"])]
    assert main(argv) == 2  # exists, no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 2  # frame 3 is corrupt: fails after 3 frames
    err = capsys.readouterr().err
    assert "3.png" in err and "Traceback" not in err
    assert dst.read_bytes() == b"an earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames", "out.mp4"]


# ------------------------------------------------------------------------------- checkpoints


def _damaged(kind: str, good: Path, folder: Path) -> Path:
    path = folder / f"{kind}.safetensors"
    if kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "not_safetensors":
        torch.save({"weight": torch.zeros(3)}, path)
    elif kind == "nan":
        model = checkpoint.load(good)
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))
        checkpoint.save(model, path)
    elif kind == "other_shapes":
        # Metadata of one model, tensors of another: a hand-edited or mixed-up file.
        from safetensors.torch import save_file

        other = MoFMENet.from_preset("tiny", **{**SLIM, "dim": 24})
        meta = {"format": "mofme", "format_version": "1"}
        meta["config"] = checkpoint.load(good).cfg.to_json()
        save_file({k: v.contiguous() for k, v in other.state_dict().items()}, path, meta)
    elif kind == "empty":
        path.write_bytes(b"")
    return path


@pytest.mark.parametrize("kind", ["truncated", "not_safetensors", "nan", "other_shapes", "empty"])
@pytest.mark.parametrize("command", ["info", "restore", "video"])
def test_bad_checkpoint_one_line_exit_2(tmp_path, ckpts, capsys, kind, command):
    bad = _damaged(kind, ckpts["image"], tmp_path)
    Image.fromarray(rng_u8((8, 8, 3))).save(tmp_path / "x.png")
    argv = {
        "info": ["info", str(bad)],
        "restore": ["restore", str(tmp_path / "x.png"), "--out", str(tmp_path / "o")],
        "video": ["video", str(tmp_path / "x.png"), str(tmp_path / "o.mp4")],
    }[command]
    if command != "info":
        argv += ["--ckpt", str(bad)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert bad.name in err and one_line_error(err), err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.mp4").exists()


def test_video_checkpoint_restores_images_and_image_checkpoint_video(tmp_path, ckpts, capsys):
    Image.fromarray(rng_u8((10, 12, 3))).save(tmp_path / "x.png")
    args = ["restore", str(tmp_path / "x.png"), "--out", str(tmp_path / "o")]
    assert main([*args, "--ckpt", str(ckpts["video"])]) == 0  # zero reference frame
    assert load_image(tmp_path / "o" / "x.png").rgb.shape == (10, 12, 3)
    write_mp4(tmp_path / "v.mp4", rng_u8((2, 16, 16, 3)))
    args = ["video", str(tmp_path / "v.mp4"), str(tmp_path / "o.mp4")]
    assert main([*args, "--ckpt", str(ckpts["image"])]) == 0
    assert "frame by frame" in capsys.readouterr().err


# ------------------------------------------------------------------------------- training

TRAIN_STEPS, CKPT_EVERY = 40, 5


def _train_fixture(root: Path) -> None:
    """MoFME layout, 6 training pairs of 32x32: a clean gradient and a streaked copy."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32] / 32
    for i in range(6):
        c = rng.uniform(0.2, 0.8, (3, 2))
        clean = np.stack([c[k, 0] + 0.3 * c[k, 1] * (xx + yy) for k in range(3)], -1)
        rainy = clean.copy()
        rainy[:, rng.integers(0, 32, 8)] = 0.5 * rainy[:, rng.integers(0, 32, 8)] + 0.5
        for split, img in (("gt", clean), ("input", rainy)):
            (root / "train" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray((img * 255).astype(np.uint8)).save(root / "train" / split / f"{i}.png")


def _log_steps(log: Path) -> list[dict]:
    if not log.is_file():
        return []
    records = []
    for line in log.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line cut by the kill
            records.append(json.loads(line))
    return records


def test_sigkill_then_resume(tmp_path, capsys):
    _train_fixture(tmp_path / "data")
    run = tmp_path / "run"
    cfg = {
        "model": {"preset": "tiny", "depth": 1, "num_experts": 4, **SLIM},
        "data": {"root": str(tmp_path / "data"), "crop": 32, "workers": 0},
        "train": {
            "batch_size": 2,
            "steps": TRAIN_STEPS,
            "lr": 2e-3,
            "warmup_steps": 2,
            "log_every": 1,
            "ckpt_every": CKPT_EVERY,
            "val_every": 0,
            "tensorboard": False,
            "threads": 1,
        },
        "out": str(run),
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    kill_at = random.Random().randint(CKPT_EVERY + 1, TRAIN_STEPS - CKPT_EVERY)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mofme.cli", "train", str(tmp_path / "cfg.yaml"), "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.time() + 60
    while len(_log_steps(run / "log.jsonl")) < kill_at:
        assert proc.poll() is None, proc.communicate()[1].decode()
        assert time.time() < deadline, "training too slow"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    last_logged = _log_steps(run / "log.jsonl")[-1]["step"]
    saved = torch.load(run / "state_last.pt", weights_only=True)["step"]
    assert saved % CKPT_EVERY == 0 and 0 < saved <= last_logged < TRAIN_STEPS
    assert last_logged - saved <= CKPT_EVERY  # at most one checkpoint interval lost

    assert main(["train", "--resume", "--out", str(run), "--no-progress"]) == 0
    assert f"at step {saved}" in capsys.readouterr().err
    assert torch.load(run / "state_last.pt", weights_only=True)["step"] == TRAIN_STEPS
    records = _log_steps(run / "log.jsonl")
    # Lines past the checkpoint were dropped and redone once: every step exactly once.
    assert [r["step"] for r in records] == list(range(1, TRAIN_STEPS + 1))
    losses = [r["loss"] for r in records]
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    assert checkpoint.read_metadata(run / "model_last.safetensors")["step"] == TRAIN_STEPS
    assert temp_leftovers(run) == []

    # A damaged training state: one clear line, and the run folder is left as it was.
    state = run / "state_last.pt"
    state.write_bytes(state.read_bytes()[:1000])
    log_before = (run / "log.jsonl").read_bytes()
    assert main(["train", "--resume", "--out", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "state_last.pt" in errors[0] and "Traceback" not in err
    assert (run / "log.jsonl").read_bytes() == log_before


def test_run_folder_removes_temp_files_of_a_killed_save(tmp_path: Path) -> None:
    """Both temp-name styles of a SIGKILLed atomic save go when the run is resumed; a live
    process's temp file stays."""
    from mofme.training.rundir import RunFolder

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    (tmp_path / "state_last.pt").write_bytes(b"state")
    stale = [f".state_last.tmp-{dead}.ab12.pt", f".log.jsonl.tmp-{dead}.cd34.tmp"]
    alive = f".model_last.tmp-{os.getpid()}.ef56.safetensors"
    for name in (*stale, alive):
        (tmp_path / name).write_bytes(b"half")
    run = RunFolder(tmp_path, main=True)
    try:
        run.prepare(resume=True, overwrite=False)
    finally:
        run.release()
    assert not any((tmp_path / n).exists() for n in stale)
    assert (tmp_path / alive).exists()
