"""Streaming video restoration, video I/O and the ``mofme video`` command."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from mofme import checkpoint
from mofme.cli import main
from mofme.data.io import save_image
from mofme.errors import MofmeError
from mofme.inference.tiling import restore_image
from mofme.inference.video import VideoRestorer, restore_clip
from mofme.inference.videoio import VideoWriter, frame_names, iter_frames, probe
from mofme.model.config import get_preset
from mofme.model.net import MoFMENet


def slim_model(in_channels: int) -> MoFMENet:
    """The tiny preset made narrower, so that hundreds of frames run in seconds."""
    torch.manual_seed(0)
    cfg = get_preset(
        "tiny",
        in_channels=in_channels,
        dim=16,
        heads=2,
        head_dim=8,
        head_channels=4,
        unpatch_channels=8,
    )
    return MoFMENet(cfg).eval()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[int, Path]:
    folder = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for c in (3, 6):
        paths[c] = folder / f"slim{c}.safetensors"
        checkpoint.save(slim_model(c), paths[c])
    return paths


def write_video(path: Path, frames: np.ndarray, codec: str = "libx264", fps: int = 25) -> None:
    """Write uint8 frames ``(T, H, W, 3)`` with PyAV directly (independent of VideoWriter)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p" if codec == "libx264" else "bgr0"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def random_frames(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------- restorer


def test_streaming_equals_restore_clip_and_reset_repeats():
    model = slim_model(6)
    frames = torch.rand(4, 3, 24, 40)
    clip = restore_clip(model, frames)
    restorer = VideoRestorer(model)
    streamed = torch.cat([restorer.step(frames[t : t + 1]) for t in range(4)])
    torch.testing.assert_close(streamed, clip, atol=0, rtol=0)
    restorer.reset()
    torch.testing.assert_close(restorer.step(frames[:1]), clip[:1], atol=0, rtol=0)


def test_reference_is_zero_then_previous_output():
    model = slim_model(6)
    inputs: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda mod, args: inputs.append(args[0].clone()))
    restorer = VideoRestorer(model)
    frames = torch.rand(3, 3, 16, 24)
    outs = [restorer.step(frames[t : t + 1]) for t in range(3)]
    assert len(inputs) == 3 and inputs[0].shape == (1, 6, 16, 24)
    assert torch.all(inputs[0][:, 3:] == 0)
    torch.testing.assert_close(inputs[0][:, :3], frames[:1])
    torch.testing.assert_close(inputs[1][:, 3:], outs[0])
    torch.testing.assert_close(inputs[2][:, 3:], outs[1])
    restorer.reset()
    restorer.step(frames[:1])
    assert torch.all(inputs[3][:, 3:] == 0)


def test_image_model_runs_frame_by_frame():
    model = slim_model(3)
    frames = torch.rand(3, 3, 16, 24)
    clip = restore_clip(model, frames)
    for t in range(3):
        torch.testing.assert_close(clip[t : t + 1], restore_image(model, frames[t : t + 1]))


def test_tiled_streaming_and_size_change():
    model = slim_model(6)
    frames = torch.rand(2, 3, 40, 56)
    restorer = VideoRestorer(model, tile=32, overlap=8)
    out = restorer.step(frames[:1])
    assert out.shape == (1, 3, 40, 56)
    with pytest.raises(ValueError, match="reset"):
        restorer.step(torch.rand(1, 3, 24, 24))


# ------------------------------------------------------------------------------- video I/O


@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".mov", ".avi"])
def test_writer_round_trip_pads_odd_sizes(tmp_path, ext):
    frames = random_frames(3, 33, 47).astype(np.float32) / 255
    path = tmp_path / f"v{ext}"
    with VideoWriter(path, fps=Fraction(30000, 1001)) as writer:
        for f in frames:
            writer.write(f)
    assert writer.padded == (1, 1)
    info = probe(path)
    assert (info.height, info.width) == (34, 48)
    assert info.fps == Fraction(30000, 1001)
    decoded = list(iter_frames(path))
    assert len(decoded) == 3 and decoded[0].shape == (34, 48, 3) and decoded[0].dtype == np.float32
    assert leftovers(tmp_path) == [path.name]


def test_writer_folder_and_abort(tmp_path):
    frames = random_frames(2, 9, 11).astype(np.float32) / 255
    with VideoWriter(tmp_path / "frames", fps=25) as writer:
        writer.write(frames[0], name="a1")
        writer.write(frames[1], name="a10")
    assert frame_names(tmp_path / "frames") == ["a1", "a10"]
    back = list(iter_frames(tmp_path / "frames"))
    np.testing.assert_allclose(back[1], frames[1], atol=0.5 / 255)
    with pytest.raises(RuntimeError), VideoWriter(tmp_path / "x.mp4", fps=25) as writer:
        writer.write(frames[0][:8, :8])
        raise RuntimeError("interrupted")
    with pytest.raises(RuntimeError), VideoWriter(tmp_path / "y", fps=25) as writer:
        writer.write(frames[0])
        raise RuntimeError("interrupted")
    assert leftovers(tmp_path) == ["frames"]


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 50])
def test_unreadable_video_names_the_file(tmp_path, content):
    path = tmp_path / "broken.mp4"
    path.write_bytes(content)
    with pytest.raises(MofmeError, match=r"broken\.mp4"):
        list(iter_frames(path))


# ------------------------------------------------------------------------------- command


def test_cli_one_frame_video(tmp_path, ckpts, capsys):
    src = tmp_path / "one.mp4"
    write_video(src, random_frames(1, 32, 48))
    rc = main(["video", str(src), str(tmp_path / "out.mp4"), "--ckpt", str(ckpts[6])])
    assert rc == 0, capsys.readouterr().err
    info = probe(tmp_path / "out.mp4")
    assert (info.width, info.height) == (48, 32)
    assert len(list(iter_frames(tmp_path / "out.mp4"))) == 1


def test_cli_odd_size_video_to_file_and_folder(tmp_path, ckpts, capsys):
    src = tmp_path / "odd.mkv"
    write_video(src, random_frames(3, 33, 47), codec="ffv1")  # lossless codec, odd size OK
    rc = main(["video", str(src), str(tmp_path / "out.mp4"), "--ckpt", str(ckpts[6])])
    assert rc == 0, capsys.readouterr().err
    assert "padded" in capsys.readouterr().out
    assert (probe(tmp_path / "out.mp4").height, probe(tmp_path / "out.mp4").width) == (34, 48)
    rc = main(
        ["video", str(src), str(tmp_path / "pngs"), "--ckpt", str(ckpts[3]), "--side-by-side"]
    )
    assert rc == 0
    frames = list(iter_frames(tmp_path / "pngs"))
    assert len(frames) == 3 and frames[0].shape == (33, 94, 3)


def test_cli_folder_input_keeps_names_and_default_fps(tmp_path, ckpts):
    src = tmp_path / "frames"
    with VideoWriter(src, fps=25) as writer:
        for i, f in enumerate(random_frames(3, 16, 24)):
            writer.write(f.astype(np.float32) / 255, name=str([2, 10, 1][i]))
    assert main(["video", str(src), str(tmp_path / "out"), "--ckpt", str(ckpts[6])]) == 0
    assert frame_names(tmp_path / "out") == ["1", "2", "10"]
    assert main(["video", str(src), str(tmp_path / "out.mp4"), "--ckpt", str(ckpts[6])]) == 0
    assert probe(tmp_path / "out.mp4").fps == 25


@pytest.mark.parametrize("content", [b"", os.urandom(4096)])
def test_cli_bad_video_exit_2_and_no_output(tmp_path, ckpts, capsys, content):
    src = tmp_path / "bad.mp4"
    src.write_bytes(content)
    rc = main(["video", str(src), str(tmp_path / "out.mp4"), "--ckpt", str(ckpts[6])])
    assert rc == 2
    err = capsys.readouterr().err
    assert "bad.mp4" in err and "Traceback" not in err
    assert leftovers(tmp_path) == ["bad.mp4"]


def test_cli_refuses_output_equal_to_input(tmp_path, ckpts, capsys):
    src = tmp_path / "in.mp4"
    write_video(src, random_frames(1, 16, 16))
    assert main(["video", str(src), str(src), "--ckpt", str(ckpts[6]), "--overwrite"]) == 2
    assert "INPUT" in capsys.readouterr().err


def test_streaming_memory_is_flat(tmp_path):
    """RSS must not grow with the number of frames (decode -> restore -> encode, 240x320)."""
    psutil = pytest.importorskip("psutil")
    src, dst = tmp_path / "long.mp4", tmp_path / "out.mp4"
    base = random_frames(1, 240, 320)[0]
    # Slowly changing content: cheap to encode, still a real decode per frame.
    write_video(src, np.stack([np.roll(base, t, axis=1) for t in range(200)]))
    restorer = VideoRestorer(slim_model(6))
    process = psutil.Process()
    rss = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # steadier timing when other jobs share the CPU
    try:
        with VideoWriter(dst, fps=25) as writer:
            for i, rgb in enumerate(iter_frames(src), start=1):
                frame = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0)
                writer.write(restorer.step(frame)[0].permute(1, 2, 0).numpy())
                if i in (10, 200):
                    rss[i] = process.memory_info().rss
    finally:
        torch.set_num_threads(threads)
    assert writer.frames_written == 200
    growth_mb = (rss[200] - rss[10]) / 2**20
    assert growth_mb < 30, f"RSS grew by {growth_mb:.1f} MB between frames 10 and 200"


def test_cli_frame_size_change_is_an_error(tmp_path, ckpts, capsys):
    src = tmp_path / "frames"
    src.mkdir()
    save_image(src / "1.png", random_frames(1, 16, 24)[0].astype(np.float32) / 255)
    save_image(src / "2.png", random_frames(1, 20, 24)[0].astype(np.float32) / 255)
    rc = main(["video", str(src), str(tmp_path / "out.mp4"), "--ckpt", str(ckpts[6])])
    assert rc == 2 and "frame size" in capsys.readouterr().err
    assert not (tmp_path / "out.mp4").exists()
    assert leftovers(tmp_path) == ["frames"]
