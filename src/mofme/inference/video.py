"""Streaming video restoration with the reference-frame model (SPEC §4).

A video model (``in_channels == 6``) sees ``[degraded_t, restored_{t-1}]``; the reference of
the first frame (and of the first frame after ``reset()``) is all zeros, exactly as in training.
An image model (``in_channels == 3``) restores frame by frame. Only the previous restored frame
is kept, so memory does not grow with the length of the video.

``restore_video_file`` is the whole file-to-file job (``mofme video`` and the Python API's
``restore_video``): decode, restore, encode, keeping the input's frame times (variable frame
rate too) and audio streams (see ``mofme.inference.videoio.VideoWriter``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mofme.data.io import to_numpy, to_tensor
from mofme.errors import MofmeError
from mofme.inference.tiling import model_device, restore_image


def model_in_channels(model: nn.Module) -> int:
    """3 (image model) or 6 (video model with a reference frame)."""
    cfg = getattr(model, "cfg", None)
    return int(cfg.in_channels) if cfg is not None else 3


def with_reference(frame: Tensor, reference: Tensor | None = None) -> Tensor:
    """A video model's input ``(B, 6, H, W)``: ``frame`` and its reference (the previous
    restored frame), all zeros for a first frame (``reference=None``), as in training."""
    return torch.cat([frame, torch.zeros_like(frame) if reference is None else reference], 1)


def still_input(x: Tensor, in_channels: int) -> Tensor:
    """The input for a still image ``(B, 3, H, W)``: itself for an image model, a first frame
    (zero reference) for a 6-channel video model."""
    return with_reference(x) if in_channels == 6 else x


class VideoRestorer:
    """Restore a video one frame at a time.

    >>> restorer = VideoRestorer(model)
    >>> for frame in frames:            # (1, 3, H, W) in [0, 1]
    ...     out = restorer.step(frame)  # (1, 3, H, W) float32 on the model's device

    Args:
        model: a ``MoFMENet`` with 3 or 6 input channels.
        tile, overlap, amp, channels_last, batch_tiles: passed to ``restore_image`` for every
            frame.
    """

    def __init__(
        self,
        model: nn.Module,
        tile: int | None = None,
        overlap: int = 32,
        amp: str = "none",
        channels_last: bool = False,
        batch_tiles: int = 8,
    ) -> None:
        self.model = model
        self.tile = tile
        self.overlap = overlap
        self.batch_tiles = batch_tiles
        self.amp = amp
        self.channels_last = channels_last
        self.in_channels = model_in_channels(model)
        if self.in_channels not in (3, 6):
            raise ValueError(f"VideoRestorer needs a 3- or 6-channel model, got {self.in_channels}")
        self.device = model_device(model)
        self._previous: Tensor | None = None  # (1, 3, H, W) restored frame t-1
        self.frames_done = 0

    @property
    def uses_reference(self) -> bool:
        """Whether the model takes the previous restored frame as a second input."""
        return self.in_channels == 6

    def reset(self) -> None:
        """Start a new sequence: the next frame gets an all-zero reference."""
        self._previous = None
        self.frames_done = 0

    def reference_for(self, frame: Tensor) -> Tensor | None:
        """The reference ``(1, 3, H, W)`` the next ``step`` will use (``None``: all zeros)."""
        if self._previous is not None and self._previous.shape != frame.shape:
            raise ValueError(
                f"frame size changed from {tuple(self._previous.shape[-2:])} to "
                f"{tuple(frame.shape[-2:])} within one sequence; call reset() between videos"
            )
        return self._previous

    def step(self, frame: Tensor) -> Tensor:
        """Restore the next frame ``(1, 3, H, W)`` in [0, 1] -> ``(1, 3, H, W)`` float32."""
        if frame.ndim != 4 or frame.shape[:2] != (1, 3):
            raise ValueError(f"expected a frame (1, 3, H, W), got {tuple(frame.shape)}")
        frame = frame.to(device=self.device, dtype=torch.float32)
        inp = with_reference(frame, self.reference_for(frame)) if self.uses_reference else frame
        out = restore_image(
            self.model,
            inp,
            tile=self.tile,
            overlap=self.overlap,
            batch_tiles=self.batch_tiles,
            amp=self.amp,
            channels_last=self.channels_last,
        )
        if self.uses_reference:
            self._previous = out
        self.frames_done += 1
        return out


def restore_clip(
    model: nn.Module,
    frames: Tensor,
    tile: int | None = None,
    overlap: int = 32,
    amp: str = "none",
) -> Tensor:
    """Restore a whole clip ``(T, 3, H, W)`` -> ``(T, 3, H, W)`` (same values as streaming)."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"expected frames (T, 3, H, W), got {tuple(frames.shape)}")
    restorer = VideoRestorer(model, tile=tile, overlap=overlap, amp=amp)
    return torch.cat([restorer.step(frames[t : t + 1]) for t in range(frames.shape[0])])


@dataclass
class VideoResult:
    """What ``restore_video_file`` wrote.

    Attributes:
        path: the output video file or frame folder.
        frames: frames written.
        seconds: wall time of decode + restore + encode.
        padded: rows, columns added to reach an even size (H.264 needs it; 0 for folders).
        notes: one line per thing the user should know about the output (audio copied,
            re-encoded or dropped, frame timing changed, ...), for printing.
    """

    path: Path
    frames: int
    seconds: float
    padded: tuple[int, int] = (0, 0)
    notes: list[str] = field(default_factory=list)


def restore_video_file(
    model: nn.Module,
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    tile: int | None = None,
    overlap: int = 32,
    amp: str = "none",
    channels_last: bool = False,
    batch_tiles: int = 8,
    fps: float | Fraction | None = None,
    side_by_side: bool = False,
    crf: int = 18,
    overwrite: bool = False,
    keep_audio: bool = True,
    progress: Callable[[int, int | None], None] | None = None,
    pipeline: bool = True,
) -> VideoResult:
    """Restore a video file or frame folder ``src`` into ``dst``, streaming one frame at a time.

    The one implementation behind ``mofme video`` and ``mofme.load("video").restore_video``.
    Frames are decoded, restored by a ``VideoRestorer`` and encoded one by one, so memory does
    not depend on the length of the video. A video file keeps each frame's presentation time
    (variable frame rate included) and its audio streams (copied without re-encoding where the
    output container accepts the codec, else re-encoded); see ``VideoWriter``.

    Args:
        model: a ``MoFMENet`` with 3 (frame by frame) or 6 (reference frame) input channels.
        src: a video file (anything FFmpeg reads) or a folder of image frames.
        dst: ``.mp4`` / ``.mkv`` / ``.mov`` / ``.m4v`` (H.264), ``.avi`` (MPEG-4) or a folder
            for PNG frames (a folder has no sound: the audio is dropped, with a note).
        tile, overlap, amp, channels_last, batch_tiles: per-frame inference options
            (``restore_image``); ``tile=None`` restores whole frames.
        fps: force a constant output frame rate (frames are re-timed, audio dropped);
            default: the input's timing (25 fps for a frame folder).
        side_by_side: write ``input | restored`` next to each other (twice the width).
        crf: H.264 quality (lower is better).
        overwrite: replace an existing output file.
        keep_audio: copy the input's audio streams (default); ``False`` drops them.
        progress: called as ``progress(frames_done, total_or_None)`` after every frame.
        pipeline: decode ahead and encode behind in threads (``mofme.inference.pipeline``),
            so the network does not wait on I/O; ``False`` runs the three one after another
            (same output; for measuring what the pipelining gains).

    Returns:
        A ``VideoResult``; ``dst`` appears only when it is complete.

    Raises:
        MofmeError: unreadable input, frame size changing mid-video, unwritable output.

    Example:
        >>> model = checkpoint.load(bundled_path("video"))
        >>> result = restore_video_file(model, "snowy.mp4", "clean.mp4")
        >>> result.frames, result.notes
        (120, ['audio: aac stream copied'])
    """
    from mofme.inference.pipeline import Background, prefetch
    from mofme.inference.videoio import (
        VideoWriter,
        frame_names,
        grid_fps,
        iter_timed_frames,
        probe,
    )

    src, dst = Path(src), Path(dst)
    info = probe(src)
    restorer = VideoRestorer(
        model,
        tile=tile,
        overlap=overlap,
        amp=amp,
        channels_last=channels_last,
        batch_tiles=batch_tiles,
    )
    notes: list[str] = []
    retime = fps is not None
    out_fps = Fraction(fps).limit_denominator(100_000) if retime else info.fps or Fraction(25)
    if not retime and dst.suffix.lower() == ".avi":
        # AVI has one constant rate: the grid all input times lie on keeps them exact (the
        # average rate of a variable-rate input would move most frames).
        out_fps = grid_fps(src) or out_fps
    audio_src = src if keep_audio and not src.is_dir() else None
    if audio_src is not None and retime:
        notes.append("audio dropped: --fps re-times the frames, so the sound would not line up")
        audio_src = None
    start = time.perf_counter()
    with VideoWriter(
        dst,
        fps=out_fps,
        crf=crf,
        overwrite=overwrite,
        time_base=None if retime else info.time_base,
        audio_from=audio_src,
    ) as writer:
        # Frame folder -> PNG folder keeps the frame names (when they are unique).
        names = frame_names(src) if writer.is_folder else None
        if names and len(set(names)) != len(names):
            names = None
        first_shape = None
        # Decoder thread ahead of the network, encoder thread behind it (bounded queues).
        frames = prefetch(iter_timed_frames(src), depth=4, enabled=pipeline)
        encoder = Background(depth=4, enabled=pipeline)
        with contextlib.closing(frames), encoder:
            for i, timed in enumerate(frames):
                rgb = timed.rgb
                first_shape = first_shape or rgb.shape
                if rgb.shape != first_shape:
                    raise MofmeError(
                        f"{src}: frame {i} is {rgb.shape[1]}x{rgb.shape[0]}, earlier frames are "
                        f"{first_shape[1]}x{first_shape[0]}; the frame size must not change"
                    )
                out = to_numpy(restorer.step(to_tensor(rgb).unsqueeze(0)))
                if side_by_side:
                    out = np.concatenate([rgb, out], axis=1)
                encoder.submit(
                    writer.write,
                    out,
                    name=names[i] if names else None,
                    pts=None if retime else timed.pts,
                    duration=None if retime else timed.duration,
                )
                if progress is not None:
                    progress(i + 1, info.n_frames)
    notes.extend(writer.notes)
    return VideoResult(
        path=dst,
        frames=writer.frames_written,
        seconds=time.perf_counter() - start,
        padded=writer.padded,
        notes=notes,
    )
