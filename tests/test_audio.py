"""``mofme video`` keeps the sound (copied, else re-encoded) and each frame's time (VFR too)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from mofme import checkpoint
from mofme.cli import main
from mofme.inference.videoio import VideoWriter, iter_timed_frames, probe
from mofme.model.config import get_preset
from mofme.model.net import MoFMENet

# Irregular frame times (seconds): bursts and gaps, as a phone or screen recorder writes.
VFR_TIMES = [0.0, 0.04, 0.08, 0.2, 0.24, 0.5, 0.54, 0.58, 1.0, 1.1]
TONE_HZ = 440


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = get_preset(
        "tiny", in_channels=6, dim=16, heads=2, head_dim=8, head_channels=4, unpatch_channels=8
    )
    path = tmp_path_factory.mktemp("ckpt") / "slim.safetensors"
    checkpoint.save(MoFMENet(cfg).eval(), path)
    return path


def make_video(
    path: Path,
    times: list[float],
    audio: list[tuple[str, int]] | None = (("aac", 44100),),
    seconds: float | None = None,
    size: tuple[int, int] = (32, 48),
) -> None:
    """H.264 frames shown at ``times`` (ms time base) plus sine-tone audio streams."""
    h, w = size
    tb = Fraction(1, 1000)
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        video.codec_context.time_base = tb
        video.time_base = tb
        tracks = []
        for codec, rate in audio or ():
            stream = container.add_stream(codec, rate=rate)
            stream.layout = "mono"
            tracks.append((stream, rate))
        for t in times:
            frame = av.VideoFrame.from_ndarray(
                rng.integers(0, 256, (h, w, 3), dtype=np.uint8), format="rgb24"
            )
            frame.pts = round(t / tb)
            container.mux(video.encode(frame))
        container.mux(video.encode())
        for stream, rate in tracks:
            n = int((seconds if seconds is not None else times[-1] + 0.04) * rate)
            tone = (0.3 * np.sin(2 * np.pi * TONE_HZ * np.arange(n) / rate)).astype(np.float32)
            for start in range(0, n, 1024):
                chunk = tone[start : start + 1024][None]
                frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
                container.mux(stream.encode(frame))
            container.mux(stream.encode())


def audio_of(path: Path) -> list[dict[str, object]]:
    """Per audio stream: codec, decoded duration (s), the packets' bytes, the tone's frequency."""
    out = []
    with av.open(str(path)) as container:
        for index in range(len(container.streams.audio)):
            stream = container.streams.audio[index]
            packets = [bytes(p) for p in container.demux(stream) if p.size]
            out.append({"codec": stream.codec_context.name, "packets": packets})
            container.seek(0)
    with av.open(str(path)) as container:
        for index, info in enumerate(out):
            samples = np.concatenate(
                [f.to_ndarray().reshape(-1) for f in container.decode(audio=index)]
            )
            rate = container.streams.audio[index].rate
            info["seconds"] = len(samples) / rate
            spectrum = np.abs(np.fft.rfft(samples))
            info["peak_hz"] = float(np.argmax(spectrum) * rate / len(samples))
            container.seek(0)
    return out


def frame_times(path: Path) -> list[float]:
    return [float(f.pts * f.time_base) for f in iter_timed_frames(path)]


def run_video(src: Path, dst: Path, ckpt: Path, *extra: str) -> int:
    return main(["video", str(src), str(dst), "--ckpt", str(ckpt), "--device", "cpu", *extra])


def test_aac_tone_is_copied_not_reencoded(tmp_path, ckpt, capsys):
    src, dst = tmp_path / "tone.mp4", tmp_path / "out.mp4"
    make_video(src, [i / 25 for i in range(12)], seconds=0.5)
    assert run_video(src, dst, ckpt) == 0
    assert "aac copied (not re-encoded)" in capsys.readouterr().err
    (before,), (after,) = audio_of(src), audio_of(dst)
    assert after["codec"] == "aac"
    assert after["packets"] == before["packets"]  # the very same bytes: a remux
    assert after["seconds"] == pytest.approx(before["seconds"], abs=0.03)
    assert after["seconds"] == pytest.approx(0.5, abs=0.05)
    assert after["peak_hz"] == pytest.approx(TONE_HZ, abs=5)
    assert probe(dst).n_frames == 12


def test_two_audio_streams_into_mkv_and_opus_into_mov_is_reencoded(tmp_path, ckpt, capsys):
    src = tmp_path / "two.mkv"
    make_video(src, [i / 25 for i in range(8)], audio=[("aac", 44100), ("libopus", 48000)])
    assert run_video(src, tmp_path / "out.mkv", ckpt) == 0
    assert [a["codec"] for a in audio_of(tmp_path / "out.mkv")] == ["aac", "opus"]
    capsys.readouterr()
    # QuickTime .mov cannot hold Opus: that stream is re-encoded to AAC, and the user is told.
    assert run_video(src, tmp_path / "out.mov", ckpt) == 0
    err = capsys.readouterr().err
    assert "audio stream 1: aac copied" in err
    assert "audio stream 2: opus cannot be stored in .mov as is; re-encoded to AAC" in err
    streams = audio_of(tmp_path / "out.mov")
    assert [a["codec"] for a in streams] == ["aac", "aac"]
    for info in streams:
        assert info["seconds"] == pytest.approx(8 / 25 + 0.04, abs=0.06)
        assert info["peak_hz"] == pytest.approx(TONE_HZ, abs=8)


def test_variable_frame_rate_survives(tmp_path, ckpt, capsys):
    src = tmp_path / "vfr.mkv"
    make_video(src, VFR_TIMES)
    assert frame_times(src) == pytest.approx(VFR_TIMES, abs=1e-3)
    for name in ("out.mp4", "out.mkv", "out.mov"):
        assert run_video(src, tmp_path / name, ckpt) == 0, capsys.readouterr().err
        got = frame_times(tmp_path / name)
        # The same spacing (a container may shift the whole timeline to start at the audio).
        assert np.diff(got) == pytest.approx(np.diff(VFR_TIMES), abs=2e-3), name
        with av.open(str(tmp_path / name)) as container:
            duration = container.duration / 1e6
        assert duration == pytest.approx(VFR_TIMES[-1] + 0.04, abs=0.05), name


def test_avi_keeps_a_constant_rate_on_the_grid_of_the_input_times(tmp_path, ckpt, capsys):
    src = tmp_path / "vfr.mkv"
    make_video(src, VFR_TIMES, audio=None)
    assert run_video(src, tmp_path / "out.avi", ckpt) == 0
    got = frame_times(tmp_path / "out.avi")
    assert got == pytest.approx(VFR_TIMES, abs=1e-3)


def test_when_the_sound_cannot_be_kept_it_says_so(tmp_path, ckpt, capsys):
    src = tmp_path / "tone.mp4"
    make_video(src, [i / 25 for i in range(4)])
    assert run_video(src, tmp_path / "frames", ckpt) == 0
    assert "audio dropped" in capsys.readouterr().err
    assert run_video(src, tmp_path / "retimed.mp4", ckpt, "--fps", "10") == 0
    assert "audio dropped: --fps" in capsys.readouterr().err
    assert probe(tmp_path / "retimed.mp4").fps == 10
    assert audio_of(tmp_path / "retimed.mp4") == []
    assert run_video(src, tmp_path / "silent.mp4", ckpt, "--no-audio") == 0
    assert audio_of(tmp_path / "silent.mp4") == []


def test_writer_without_timing_is_unchanged(tmp_path):
    """Frames written without pts are 1/fps apart, as before timing support."""
    with VideoWriter(tmp_path / "cfr.mp4", fps=Fraction(30000, 1001)) as writer:
        for _ in range(5):
            writer.write(np.zeros((16, 16, 3), np.float32))
    assert writer.notes == []
    assert frame_times(tmp_path / "cfr.mp4") == pytest.approx(
        [i * 1001 / 30000 for i in range(5)], abs=1e-4
    )
