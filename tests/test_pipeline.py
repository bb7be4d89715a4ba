"""Pipelined decode / restore / encode: same output as one after another, errors surface."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from mofme import checkpoint
from mofme.cli import main
from mofme.inference.pipeline import Background, Prefetch, prefetch
from mofme.inference.video import restore_video_file
from mofme.inference.videoio import iter_frames
from mofme.model.config import get_preset
from mofme.model.net import MoFMENet


def test_prefetch_yields_everything_in_order():
    assert list(Prefetch(range(100), depth=3)) == list(range(100))
    assert list(prefetch(iter("abc"), enabled=False)) == ["a", "b", "c"]


def test_prefetch_raises_the_readers_error_in_the_consumer():
    def source() -> Iterator[int]:
        yield 1
        raise ValueError("corrupt frame 2")

    it = Prefetch(source(), depth=2)
    assert next(it) == 1
    with pytest.raises(ValueError, match="corrupt frame 2"):
        next(it)


def test_prefetch_close_stops_and_closes_the_source():
    closed = threading.Event()

    def endless() -> Iterator[int]:
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()  # e.g. the video container being closed

    it = Prefetch(endless(), depth=2)
    assert next(it) == 0
    it.close()
    assert closed.is_set()
    with pytest.raises(StopIteration):
        next(it)


def test_background_runs_in_order_and_reraises():
    seen: list[int] = []
    with Background(depth=2) as bg:
        for i in range(50):
            bg.submit(seen.append, i)
    assert seen == list(range(50))

    def fail(i: int) -> None:
        if i == 3:
            raise OSError("disk full")
        seen.append(i)

    seen.clear()
    bg = Background(depth=2)
    with pytest.raises(OSError, match="disk full"):
        for i in range(20):
            bg.submit(fail, i)
        bg.close()
    bg.close(cancel=True)
    assert seen == [0, 1, 2]  # nothing after the failed call ran


def test_background_disabled_runs_inline():
    caller = threading.get_ident()
    where: list[int] = []
    with Background(enabled=False) as bg:
        bg.submit(lambda: where.append(threading.get_ident()))
    assert where == [caller]


def _slim(in_channels: int) -> MoFMENet:
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


def _write_video(path: Path, t: int, h: int, w: int) -> None:
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.height, stream.width, stream.pix_fmt = h, w, "yuv420p"
        for _ in range(t):
            frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.parametrize("dst_name", ["out.mp4", "frames"])
def test_pipelined_video_equals_sequential(tmp_path, dst_name):
    src = tmp_path / "in.mp4"
    _write_video(src, 12, 32, 48)
    model = _slim(6)
    outs = {}
    for pipeline in (False, True):
        dst = tmp_path / f"{pipeline}_{dst_name}"
        result = restore_video_file(model, src, dst, pipeline=pipeline)
        assert result.frames == 12
        outs[pipeline] = list(iter_frames(dst))
    assert len(outs[True]) == 12
    for a, b in zip(outs[False], outs[True]):
        np.testing.assert_array_equal(a, b)  # same frames, same encoder input, same order


def test_pipelined_video_error_leaves_no_output(tmp_path):
    src = tmp_path / "in.mp4"
    _write_video(src, 6, 16, 24)
    model = _slim(6)
    calls = 0
    forward = model.forward

    def failing_forward(x: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise RuntimeError("network failed on frame 4")
        return forward(x)

    model.forward = failing_forward  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="frame 4"):
        restore_video_file(model, src, tmp_path / "out.mp4")
    assert not (tmp_path / "out.mp4").exists()


def test_cli_video_prints_frames_per_second(tmp_path, capsys):
    src = tmp_path / "in.mp4"
    _write_video(src, 5, 16, 24)
    ckpt = tmp_path / "slim.safetensors"
    checkpoint.save(_slim(6), ckpt)
    for flag in ([], ["--no-pipeline"]):
        dst = tmp_path / f"out{len(flag)}.mp4"
        assert main(["video", str(src), str(dst), "--ckpt", str(ckpt), *flag]) == 0
        out = capsys.readouterr().out
        assert "frames/s" in out and "peak memory" in out
        assert ("pipelined" in out) == (not flag)
