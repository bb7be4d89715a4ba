"""Hardening II (issue 16, items 1-9): limits checked before allocating, nothing silently lost,
one line instead of a traceback, one overwrite rule.

Bomb files are tiny and never decoded here: the decoders are patched to fail the test if they
are reached, so a missing check shows as a failure, not as gigabytes of memory.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image, ImageFile
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mofme import checkpoint
from mofme.cli import main
from mofme.data.io import load_image, remove_stale_temps, save_image
from mofme.errors import MofmeError
from mofme.model.config import get_preset
from mofme.model.net import MoFMENet
from mofme.runlock import LOCK_NAME, RunLock, pid_alive

SLIM = {"dim": 16, "heads": 2, "head_dim": 8, "head_channels": 4, "unpatch_channels": 8}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "slim.safetensors"
    checkpoint.save(MoFMENet(get_preset("tiny", **SLIM)), path)
    return path


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if Pillow or tifffile decodes pixel data."""

    def refuse(*args, **kwargs):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    monkeypatch.setattr(tifffile.TiffPage, "asarray", refuse)


def rand_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


def one_line_error(err: str) -> bool:
    return err.count("\n") == 1 and "Traceback" not in err


def hidden_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width x height`` RGB pixels but holds no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def tiled_tiff_bomb(size: int, tile: int = 1024) -> bytes:
    """A valid zlib-tiled 8-bit grayscale TIFF of ``size x size`` pixels, a few KB on disk: every
    tile entry points at the same compressed all-zero tile."""
    data = zlib.compress(bytes(tile * tile), 9)
    n = ((size + tile - 1) // tile) ** 2
    entries = [  # (tag, type, count, value); type 3 = SHORT, 4 = LONG
        (256, 4, 1, size),  # ImageWidth
        (257, 4, 1, size),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 8),  # Compression: Deflate
        (262, 3, 1, 1),  # Photometric: min-is-black
        (277, 3, 1, 1),  # SamplesPerPixel
        (284, 3, 1, 1),  # PlanarConfiguration: contiguous
        (322, 3, 1, tile),  # TileWidth
        (323, 3, 1, tile),  # TileLength
        (324, 4, n, None),  # TileOffsets
        (325, 4, n, None),  # TileByteCounts
    ]
    ifd_offset = 8
    ifd_size = 2 + 12 * len(entries) + 4
    offsets_at = ifd_offset + ifd_size
    counts_at = offsets_at + 4 * n
    data_at = counts_at + 4 * n
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        if tag == 324:
            value = offsets_at
        elif tag == 325:
            value = counts_at
        packed = struct.pack("<I", value) if kind == 4 else struct.pack("<HH", value, 0)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    ifd += struct.pack("<I", 0)
    header = b"II*\x00" + struct.pack("<I", ifd_offset)
    arrays = struct.pack(f"<{n}I", *([data_at] * n)) + struct.pack(f"<{n}I", *([len(data)] * n))
    return header + ifd + arrays + data


# ------------------------------------------------------------------------- 1. pixel budget


def test_png_bomb_refused_from_its_header(tmp_path, no_decoding):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(12000, 12000))  # 144 MP: Pillow only warns at this size
    with pytest.raises(MofmeError, match=r"bomb\.png: 12000x12000 .* pixel budget of 100 MP"):
        load_image(path)


def test_tiled_tiff_bomb_refused_by_every_reader(tmp_path, no_decoding):
    path = tmp_path / "bomb.tif"
    path.write_bytes(tiled_tiff_bomb(20000))
    assert path.stat().st_size < 20_000
    assert tifffile.TiffFile(path).pages[0].shape == (20000, 20000)  # a real 400 MP TIFF
    with pytest.raises(MofmeError, match=r"bomb\.tif: 20000x20000 .* pixel budget"):
        load_image(path)


def test_tifffile_fallback_checks_the_budget(tmp_path, monkeypatch):
    # Float RGB TIFFs are read by tifffile only (Pillow cannot open them).
    path = tmp_path / "float.tif"
    tifffile.imwrite(path, rand_rgb(40, 30), photometric="rgb")
    monkeypatch.setenv("MOFME_MAX_PIXELS", "1000")
    with pytest.raises(MofmeError, match=r"float\.tif: 30x40 .* MOFME_MAX_PIXELS"):
        load_image(path)
    monkeypatch.setenv("MOFME_MAX_PIXELS", "0")  # 0: no limit
    assert load_image(path).rgb.shape == (40, 30, 3)


def test_budget_raised_by_option_and_environment(tmp_path, ckpt, monkeypatch, capsys):
    save_image(tmp_path / "in" / "a.png", rand_rgb(40, 40))
    monkeypatch.setenv("MOFME_MAX_PIXELS", "1000")
    args = ["restore", str(tmp_path / "in" / "a.png"), "--ckpt", str(ckpt)]
    assert main([*args, "--out", str(tmp_path / "o1")]) == 1
    err = capsys.readouterr().err
    assert "a.png: 40x40" in err and "--max-pixels" in err and "Traceback" not in err
    assert main([*args, "--out", str(tmp_path / "o2"), "--max-pixels", "2000"]) == 0
    monkeypatch.delenv("MOFME_MAX_PIXELS")
    assert load_image(tmp_path / "o2" / "a.png").rgb.shape == (40, 40, 3)
    monkeypatch.setenv("MOFME_MAX_PIXELS", "lots")
    assert main([*args, "--out", str(tmp_path / "o3")]) == 1
    assert "MOFME_MAX_PIXELS" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "o4"), "--max-pixels", "x"]) == 2


def test_video_frames_are_under_the_budget_too(tmp_path, ckpt, monkeypatch, capsys):
    import av

    with av.open(str(tmp_path / "in.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.height, stream.width, stream.pix_fmt = 32, 48, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((32, 48, 3), np.uint8), format="rgb24")
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    monkeypatch.setenv("MOFME_MAX_PIXELS", "1000")
    argv = ["video", str(tmp_path / "in.mp4"), str(tmp_path / "out.mp4"), "--ckpt", str(ckpt)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert one_line_error(err) and "in.mp4: 48x32" in err and "pixel budget" in err


# ------------------------------------------------------------ 2. checkpoint metadata budget


def forged(ckpt: Path, folder: Path, **changes) -> Path:
    """``ckpt``'s tensors under metadata whose config says ``changes``."""
    from safetensors import safe_open

    with safe_open(str(ckpt), framework="pt") as sf:
        meta = dict(sf.metadata())
    config = json.loads(meta["config"])
    config.update(changes)
    meta["config"] = json.dumps(config)
    path = folder / "forged.safetensors"
    save_file(load_file(str(ckpt)), str(path), metadata=meta)
    return path


@pytest.fixture
def guard_build(monkeypatch):
    """Fail the test if a model is built for real from an absurd config."""
    real = checkpoint.MoFMENet

    def build(cfg):
        if torch.get_default_device().type != "meta" and (cfg.depth > 50 or cfg.dim > 4096):
            raise AssertionError(f"built dim={cfg.dim} depth={cfg.depth} before checking")
        return real(cfg)

    monkeypatch.setattr(checkpoint, "MoFMENet", build)


def test_forged_depth_refused_before_building(ckpt, tmp_path, guard_build, capsys):
    path = forged(ckpt, tmp_path, dim=2048, depth=10_000)
    with pytest.raises(MofmeError, match="depth=10000, the file holds 2 blocks"):
        checkpoint.load(path)
    assert main(["info", str(path)]) == 2
    assert one_line_error(capsys.readouterr().err)


def test_forged_dim_refused_before_building(ckpt, tmp_path, guard_build):
    with pytest.raises(MofmeError, match="model-size budget"):
        checkpoint.load(forged(ckpt, tmp_path, dim=1_000_000))
    with pytest.raises(MofmeError, match=r"shape mismatch for .*vs config"):
        checkpoint.load(forged(ckpt, tmp_path, dim=24))


def test_model_size_budget_is_raisable(ckpt, monkeypatch):
    monkeypatch.setenv("MOFME_MAX_PARAMS", "1000")
    with pytest.raises(MofmeError, match="MOFME_MAX_PARAMS"):
        checkpoint.load(ckpt)
    monkeypatch.setenv("MOFME_MAX_PARAMS", "0")
    assert checkpoint.load(ckpt).cfg.dim == 16


# ---------------------------------------------------------------------- 3. run-folder lock


def test_run_lock_in_process(tmp_path):
    busy = rf"in use by another training run \(pid {os.getpid()}"
    with RunLock(tmp_path / "run"), pytest.raises(MofmeError, match=busy):
        RunLock(tmp_path / "run").acquire()
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    with RunLock(tmp_path / "run") as lock:
        assert lock.held


def test_run_lock_of_other_process_and_stale(tmp_path):
    run = tmp_path / "run"
    holder = textwrap.dedent(
        f"""
        import sys, time
        from mofme.runlock import RunLock
        RunLock({str(run)!r}).acquire()
        print("locked", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(MofmeError, match=rf"pid {proc.pid} on {socket.gethostname()}"):
            RunLock(run).acquire()
    finally:
        proc.kill()  # SIGKILL: no clean-up; the lock file stays behind
        proc.wait()
    assert (run / LOCK_NAME).exists()
    with RunLock(run):  # stale: its process is gone
        pass


def test_run_lock_without_flock(tmp_path, monkeypatch):
    """On file systems without flock (some network mounts) the recorded pid decides."""
    import mofme.runlock

    monkeypatch.setattr(mofme.runlock, "fcntl", None)
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()}))
    with RunLock(run) as lock:  # stale: that process is gone
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
        holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / LOCK_NAME).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
        with pytest.raises(MofmeError, match=rf"in use by another training run \(pid {holder.pid}"):
            lock.acquire()
    finally:
        holder.kill()
        holder.wait()
    (run / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": 0}))
    with pytest.raises(MofmeError, match=r"another machine .* delete"):
        RunLock(run).acquire()


def train_config(tmp_path: Path) -> dict:
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for i in range(4):
        clean = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        for kind, img in (("gt", clean), ("input", 255 - clean)):
            (root / "train" / kind).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / "train" / kind / f"{i}.png")
    model = {"preset": "tiny", "depth": 1, "num_experts": 4, **SLIM}
    cfg = {
        "model": model,
        "data": {"kind": "image", "root": str(root), "crop": 32, "workers": 0},
        "train": {"batch_size": 2, "steps": 2, "val_every": 0, "ckpt_every": 0,
                  "tensorboard": False, "threads": 1},
        "out": str(tmp_path / "run"),
    }  # fmt: skip
    return cfg


def test_two_training_runs_on_one_folder(tmp_path):
    from mofme.config import from_dict
    from mofme.train import Trainer, TrainRunConfig

    cfg = train_config(tmp_path)
    first = Trainer(from_dict(TrainRunConfig, cfg), progress=False)
    try:
        for resume in (False, True):
            with pytest.raises(
                MofmeError, match=rf"in use by another training run \(pid {os.getpid()}"
            ):
                Trainer(from_dict(TrainRunConfig, cfg), resume=resume, progress=False)
    finally:
        first.close()
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    # A refused start does not keep the lock either.
    with pytest.raises(MofmeError, match="nothing to resume"):
        Trainer(from_dict(TrainRunConfig, cfg), resume=True, progress=False)
    second = Trainer(from_dict(TrainRunConfig, cfg), progress=False)
    second.close()


def test_training_save_failure_is_one_line(tmp_path, monkeypatch, capsys):
    """7: a checkpoint save that fails (full disk) ends the run with one line naming the file."""
    import yaml

    cfg = train_config(tmp_path)

    def full_disk(*args, **kwargs):
        raise SafetensorError("Error while serializing: No space left on device (os error 28)")

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "cannot write" in err and "model_last.safetensors" in err and "No space left" in err
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    assert hidden_files(tmp_path / "run") == []


# ------------------------------------------------------------------- 4. one overwrite rule


def test_restore_refuses_to_replace_an_existing_output(tmp_path, ckpt, capsys):
    save_image(tmp_path / "in" / "one.png", rand_rgb(16, 16))
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "one.png").write_text("precious")
    args = ["restore", str(tmp_path / "in" / "one.png"), "--out", str(tmp_path / "o")]
    assert main([*args, "--ckpt", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert one_line_error(err) and "one.png already exists" in err and "--overwrite" in err
    assert (tmp_path / "o" / "one.png").read_text() == "precious"
    assert main([*args, "--ckpt", str(ckpt), "--overwrite"]) == 0
    assert load_image(tmp_path / "o" / "one.png").rgb.shape == (16, 16, 3)


def test_other_commands_refuse_to_replace_outputs(tmp_path, ckpt, capsys):
    taken = tmp_path / "taken.json"
    taken.write_text("precious")
    data = tmp_path / "data"
    save_image(data / "input" / "a.png", rand_rgb(16, 16))
    save_image(data / "gt" / "a.png", rand_rgb(16, 16, seed=1))
    argv = ["test", str(ckpt), "--data", str(data), "--layout", "folder", "--flops-size", "none"]
    assert main([*argv, "--out", str(taken), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "taken.json already exists" in err and "evaluating" not in err
    assert main(["bench", "--json", str(taken), "--no-fme", "--size", "16x16"]) == 2
    assert "taken.json already exists" in capsys.readouterr().err
    (tmp_path / "stats").mkdir()
    (tmp_path / "stats" / "stats.md").write_text("precious")
    argv = ["stats", str(ckpt), "--data", str(data), "--layout", "folder"]
    assert main([*argv, "--out", str(tmp_path / "stats")]) == 2
    assert "stats.md already exists" in capsys.readouterr().err
    assert (
        taken.read_text() == "precious"
        and (tmp_path / "stats" / "stats.md").read_text() == "precious"
    )


# ------------------------------------------------------------ 5. GIF names, animated GIFs


def test_video_to_gif_name_is_refused(tmp_path, ckpt, capsys):
    frames = tmp_path / "frames"
    for i in range(2):
        save_image(frames / f"{i}.png", rand_rgb(16, 16, seed=i))
    assert main(["video", str(frames), str(tmp_path / "out.gif"), "--ckpt", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert one_line_error(err) and ".gif output is not supported" in err
    assert not (tmp_path / "out.gif").exists()


def test_animated_gif_restore_says_only_the_first_frame(tmp_path, ckpt, capsys):
    frames = [Image.fromarray((rand_rgb(16, 16, seed=i) * 255).astype(np.uint8)) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    assert load_image(tmp_path / "anim.gif").frames == 3
    rc = main(
        ["restore", str(tmp_path / "anim.gif"), "--out", str(tmp_path / "o"), "--ckpt", str(ckpt)]
    )
    err = capsys.readouterr().err
    assert rc == 0 and "has 3 frames; only the first is restored" in err


# ----------------------------------------------------------- 6. SIGTERM, stale temp files

SIGTERM_SCRIPT = """
import os, signal, sys
from PIL import Image
from mofme.cli import entry  # what the `mofme` console script runs
real_save = Image.Image.save
def save(self, fp, *args, **kwargs):
    real_save(self, fp, *args, **kwargs)  # the temp file exists now
    os.kill(os.getpid(), signal.SIGTERM)
Image.Image.save = save
entry()
"""


def test_sigterm_during_restore_leaves_no_temp_file(tmp_path, ckpt):
    save_image(tmp_path / "in" / "a.png", rand_rgb(16, 16))
    out = tmp_path / "o"
    argv = ["restore", str(tmp_path / "in"), "--out", str(out), "--ckpt", str(ckpt), "--ext", "jpg"]
    proc = subprocess.run(
        [sys.executable, "-c", SIGTERM_SCRIPT, *argv], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 143, proc.stderr
    assert (
        proc.stderr.strip().endswith("mofme restore: terminated") and "Traceback" not in proc.stderr
    )
    assert hidden_files(out) == [] and not (out / "a.jpg").exists()


def test_sigterm_during_video_leaves_no_temp_file(tmp_path, ckpt):
    frames = tmp_path / "frames"
    for i in range(3):
        save_image(frames / f"{i}.png", rand_rgb(16, 16, seed=i))
    script = SIGTERM_SCRIPT.replace("Image.Image.save = save", "import av\n")
    script += ""  # the video is written by PyAV: interrupt the first encoded frame instead
    script = script.replace(
        "import av\n",
        "from mofme.inference import videoio\n"
        "real_encode = videoio.VideoWriter._encode\n"
        "sent = []\n"
        "def encode(self, *args):\n"
        "    real_encode(self, *args)\n"
        "    if not sent:  # one SIGTERM, as a service manager sends; the pipelined encoder\n"
        "        sent.append(1)  # runs on a writer thread and may encode once more\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "videoio.VideoWriter._encode = encode\n",
    )
    argv = ["video", str(frames), str(tmp_path / "out.mp4"), "--ckpt", str(ckpt)]
    proc = subprocess.run(
        [sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 143, proc.stderr
    assert "Traceback" not in proc.stderr
    assert hidden_files(tmp_path) == [] and not (tmp_path / "out.mp4").exists()


def test_stale_temp_files_of_dead_processes_are_removed(tmp_path, ckpt):
    out = tmp_path / "o"
    out.mkdir()
    dead, alive = dead_pid(), os.getpid()
    (out / f".a.tmp-{dead}.png").write_bytes(b"half")
    (out / f".clip.tmp-{dead}.mp4").mkdir()
    (out / f".b.tmp-{alive}.png").write_bytes(b"in flight")
    (out / f".stats.json.tmp-{dead}.x1y2.tmp").write_bytes(b"half")
    (out / ".notes.txt").write_text("not ours")
    assert pid_alive(alive) and not pid_alive(dead)
    save_image(tmp_path / "in" / "a.png", rand_rgb(16, 16))
    assert main(["restore", str(tmp_path / "in"), "--out", str(out), "--ckpt", str(ckpt)]) == 0
    assert hidden_files(out) == [f".b.tmp-{alive}.png", ".notes.txt"]
    assert remove_stale_temps(tmp_path / "missing") == []


# ------------------------------------------------------------------- 7. unwritable output


def test_unwritable_outputs_give_one_line(tmp_path, ckpt, capsys):
    save_image(tmp_path / "in" / "a.png", rand_rgb(16, 16))
    data = tmp_path / "data"
    save_image(data / "input" / "a.png", rand_rgb(16, 16))
    save_image(data / "gt" / "a.png", rand_rgb(16, 16, seed=1))
    (tmp_path / "file").write_text("a file, not a folder")
    c = ["--ckpt", str(ckpt)]
    cases = [
        ["restore", str(tmp_path / "in"), "--out", "/proc/mofme-out", *c],
        ["restore", str(tmp_path / "in"), "--out", str(tmp_path / "file" / "sub"), *c],
        ["video", str(tmp_path / "in"), "/proc/mofme-out.mp4", *c],
        ["video", str(tmp_path / "in"), str(tmp_path / "file" / "x.mp4"), *c],
        ["test", str(ckpt), "--data", str(data), "--layout", "folder", "--out", "/proc/x/r.json"],
        ["stats", str(ckpt), "--data", str(data), "--layout", "folder", "--out", "/proc/mofme"],
        ["bench", "--json", "/proc/mofme.json", "--no-fme"],
        ["synth", "allweather", "--out", "/proc/mofme", "--train", "1", "--test", "1", "--quiet"],
        ["demo", "--out", "/proc/mofme"],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert one_line_error(err) and "cannot write" in err, (argv, err)
        assert "evaluating" not in err
    assert not (tmp_path / "file").is_dir()


def test_save_image_reports_the_real_error(tmp_path, monkeypatch):
    def disk_full(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    def cannot_unlink(self, missing_ok=False):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    monkeypatch.setattr(Path, "unlink", cannot_unlink)
    with pytest.raises(MofmeError, match=r"x\.png: No space left on device"):
        save_image(tmp_path / "x.png", rand_rgb(4, 4))
    monkeypatch.undo()
    with pytest.raises(MofmeError, match=r"cannot write image /proc/nope/x\.png"):
        save_image("/proc/nope/x.png", rand_rgb(4, 4))


# ------------------------------------------------- 8. symlink loops, unreadable folders


def test_symlink_loop_does_not_abort_the_batch(tmp_path, ckpt, capsys):
    save_image(tmp_path / "in" / "good.png", rand_rgb(16, 16))
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    argv = ["restore", str(tmp_path / "loop.png"), str(tmp_path / "in" / "good.png")]
    assert main([*argv, "--out", str(tmp_path / "o"), "--ckpt", str(ckpt)]) == 1
    captured = capsys.readouterr()
    assert "loop.png" in captured.err and "symbolic links" in captured.err
    assert "Traceback" not in captured.err and "restored 1 of 2" in captured.out
    assert (tmp_path / "o" / "good.png").is_file()


def unreadable(monkeypatch, folder: Path) -> None:
    """Make ``folder`` unlistable, as chmod 000 would for a user other than root."""
    real_scandir, real_listdir = os.scandir, os.listdir

    def check(path):
        if Path(os.fsdecode(path)) == folder:
            raise PermissionError(13, "Permission denied", str(folder))

    def scandir(path="."):
        check(path)
        return real_scandir(path)

    def listdir(path="."):
        check(path)
        return real_listdir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "listdir", listdir)


def test_unreadable_folders_are_reported(tmp_path, ckpt, capsys, monkeypatch):
    save_image(tmp_path / "in" / "a.png", rand_rgb(16, 16))
    save_image(tmp_path / "in" / "locked" / "b.png", rand_rgb(16, 16))
    save_image(tmp_path / "other" / "c.png", rand_rgb(16, 16))
    unreadable(monkeypatch, tmp_path / "in" / "locked")
    argv = ["restore", str(tmp_path / "in"), "--recursive", "--ckpt", str(ckpt)]
    assert main([*argv, "--out", str(tmp_path / "o1")]) == 1  # not 0: something was skipped
    captured = capsys.readouterr()
    assert "cannot read folder" in captured.err and "locked: Permission denied" in captured.err
    assert (tmp_path / "o1" / "a.png").is_file() and "Traceback" not in captured.err
    # Without --recursive the unreadable folder is an input of its own; the others go on.
    argv = [
        "restore",
        str(tmp_path / "in" / "locked"),
        str(tmp_path / "other"),
        "--ckpt",
        str(ckpt),
    ]
    assert main([*argv, "--out", str(tmp_path / "o2")]) == 1
    captured = capsys.readouterr()
    assert "locked: Permission denied" in captured.err and "Traceback" not in captured.err
    assert (tmp_path / "o2" / "c.png").is_file()


# ---------------------------------------------------------------- 9. CPU out of memory


CPU_OOM = "[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory: you tried to allocate 99999999999 bytes."


def test_cpu_out_of_memory_retries_with_smaller_tiles(tmp_path, ckpt, capsys, monkeypatch):
    from mofme.inference import tiling

    real = tiling.restore_image
    calls: list[int | None] = []

    def restore_image(model, x, tile=None, **kwargs):
        calls.append(tile)
        # a.png fits in 64-pixel tiles only, b.png never fits, c.png always does.
        if x.shape[-1] == 160 or (x.shape[-1] == 130 and (tile is None or tile > 64)):
            raise RuntimeError(CPU_OOM)
        return real(model, x, tile=tile, **kwargs)

    monkeypatch.setattr(tiling, "restore_image", restore_image)
    save_image(tmp_path / "in" / "a.png", rand_rgb(100, 130))
    save_image(tmp_path / "in" / "b.png", rand_rgb(100, 160, seed=1))
    save_image(tmp_path / "in" / "c.png", rand_rgb(24, 40, seed=2))
    argv = ["restore", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--ckpt", str(ckpt)]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "a.png: out of memory; retrying with 64-pixel tiles" in captured.err
    assert "b.png: out of memory even with the smallest tiles; skipped" in captured.err
    assert "Traceback" not in captured.err and "restored 2 of 3" in captured.out
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a.png", "c.png"]
    assert load_image(tmp_path / "o" / "a.png").rgb.shape == (100, 130, 3)
    assert None in calls and 64 in calls


def test_other_runtime_errors_are_not_taken_for_oom(tmp_path, ckpt, monkeypatch):
    from mofme.inference import tiling

    def broken(*args, **kwargs):
        raise RuntimeError("a bug, not memory")

    monkeypatch.setattr(tiling, "restore_image", broken)
    save_image(tmp_path / "a.png", rand_rgb(16, 16))
    with pytest.raises(RuntimeError, match="a bug"):
        main(
            ["restore", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"), "--ckpt", str(ckpt)]
        )


def test_signal_module_handler_restored():
    before = signal.getsignal(signal.SIGTERM)
    assert main(["restore", "/nonexistent.png", "--out", "/tmp/x", "--preset", "tiny"]) in (1, 2)
    assert signal.getsignal(signal.SIGTERM) == before
