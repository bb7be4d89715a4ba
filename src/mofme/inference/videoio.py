"""Reading and writing videos (files via PyAV/FFmpeg, or folders of frames), one frame at a time.

Frames are float32 RGB ``(H, W, 3)`` in ``[0, 1]``, as everywhere in mofme.

Reading (``iter_frames``, ``iter_timed_frames``, ``probe``): any container/codec FFmpeg decodes
(.mp4, .mov, .avi, .mkv, ...), the first video stream, frames in decoding order (variable frame
rate is fine: every decoded frame is returned once, ``iter_timed_frames`` with its presentation
time); 10/12-bit sources keep their precision. A folder is read as its image files in natural
order (``2.png`` before ``10.png``). Unreadable or empty inputs raise ``MofmeError`` naming the
file.

Writing (``VideoWriter``): a video file (H.264 in .mp4/.mkv/.mov, MPEG-4 Part 2 in .avi) or a
folder of PNG frames. The output goes to a hidden temporary name in the destination folder and
is renamed only by ``close()``; leaving the ``with`` block through an exception removes it, so
an aborted run leaves nothing behind. H.264 in 4:2:0 chroma needs an even width and height: an
odd-sized video gets one replicated row and/or column at the bottom/right (``VideoWriter.padded``
says how many; the container's ``comment`` metadata records it). PNG folders are never padded.

Timing and sound (``VideoWriter(time_base=..., audio_from=...)``): given the input's time base,
each frame is written at its own presentation time (``write(rgb, pts=...)``), so a variable
frame rate survives (.mp4/.mkv/.mov/.m4v; AVI stores one constant rate, so times are rounded
to ``1/fps`` there, with a note). The audio streams of ``audio_from`` are copied packet by
packet, without re-encoding, when the output container can hold their codec (a test mux
decides), else re-encoded (AAC; MP3 in .avi) with a note; they are interleaved with the video as
it is written, so memory stays flat. A PNG folder has no sound: the audio is dropped, with a
note. ``VideoWriter.notes`` collects these one-line messages.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from mofme.errors import MofmeError
from mofme.inference.audio import AudioTracks, count_audio_streams, ffmpeg_reason

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
# Output codec per container; everything else about the encoder is the same.
_ENCODERS = {".mp4": "libx264", ".mkv": "libx264", ".mov": "libx264", ".m4v": "libx264",
             ".avi": "mpeg4"}  # fmt: skip
# Output names that look like a single image or an animation but are not writable as video.
_IMAGE_LIKE = (".gif", ".apng", ".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


@dataclass
class VideoInfo:
    """What is known about a video before decoding it.

    ``fps`` is ``None`` for a frame folder; ``n_frames`` is ``None`` when the container does not
    store a frame count.
    """

    fps: Fraction | None
    n_frames: int | None
    width: int
    height: int
    time_base: Fraction | None = None  # of the video stream's timestamps (None for a folder)
    audio_streams: int = 0
    # FFmpeg's guess of the rate on whose grid all frame times lie (r_frame_rate); differs
    # from ``fps`` (the average) for a variable frame rate.
    base_fps: Fraction | None = None


@dataclass
class TimedFrame:
    """A decoded frame and when to show it.

    ``pts`` and ``duration`` count ``time_base`` units; ``None`` when unknown (frame folders,
    streams without timestamps).
    """

    rgb: np.ndarray  # (H, W, 3) float32 in [0, 1]
    pts: int | None = None
    duration: int | None = None
    time_base: Fraction | None = None


def is_video_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a video file by its extension (it need not exist)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def _frame_files(folder: Path) -> list[Path]:
    from mofme.data.io import list_images

    files = list_images(folder)
    if not files:
        raise MofmeError(f"cannot read video {folder}: the folder contains no image frames")
    return files


def frame_names(path: str | os.PathLike[str]) -> list[str] | None:
    """File stems of a frame folder in reading order (``None`` for a video file)."""
    path = Path(path)
    return [f.stem for f in _frame_files(path)] if path.is_dir() else None


def _open_input(path: Path):  # -> av.container.InputContainer
    import av

    if not path.exists():
        raise MofmeError(f"cannot read video {path}: no such file")
    if path.stat().st_size == 0:
        raise MofmeError(f"cannot read video {path}: the file is empty")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as e:
        raise MofmeError(f"cannot read video {path}: {ffmpeg_reason(e)}") from None
    if not container.streams.video:
        container.close()
        raise MofmeError(f"cannot read video {path}: it has no video stream")
    codec = container.streams.video[0].codec_context
    try:
        # The pixel budget of the image readers holds for frames too, from the stream header.
        from mofme.data.io import check_pixels

        check_pixels(path, int(codec.width or 0), int(codec.height or 0), "video")
    except MofmeError:
        container.close()
        raise
    return container


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Frame rate, frame count and size of a video file or frame folder (no full decode)."""
    path = Path(path)
    if path.is_dir():
        from mofme.data.io import load_image

        files = _frame_files(path)
        h, w = load_image(files[0]).rgb.shape[:2]
        return VideoInfo(fps=None, n_frames=len(files), width=w, height=h)
    with _open_input(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        return VideoInfo(
            fps=Fraction(rate) if rate else None,
            n_frames=int(stream.frames) or None,
            width=int(stream.codec_context.width),
            height=int(stream.codec_context.height),
            time_base=Fraction(stream.time_base) if stream.time_base else None,
            audio_streams=len(container.streams.audio),
            base_fps=Fraction(stream.guessed_rate) if stream.guessed_rate else None,
        )


def grid_fps(path: str | os.PathLike[str], max_fps: float = 120) -> Fraction | None:
    """The lowest frame rate whose ticks hold every frame time of a video file exactly.

    Reads packet timestamps only (no decoding). ``None`` for a folder, a file without
    timestamps, or when that rate would exceed ``max_fps`` (times too irregular for a
    constant-rate container).

    >>> grid_fps("vfr.mkv")      # frames at 0, 40, 80, 200, 500 ms
    Fraction(50, 1)
    """
    import itertools
    import math

    path = Path(path)
    if path.is_dir():
        return None
    with _open_input(path) as container:
        stream = container.streams.video[0]
        stamps = sorted({p.pts for p in container.demux(stream) if p.pts is not None})
        time_base = stream.time_base
    if len(stamps) < 2 or not time_base:
        return None
    step = 0
    for a, b in itertools.pairwise(stamps):
        step = math.gcd(step, b - a)
    rate = 1 / (step * Fraction(time_base))
    return rate if rate <= max_fps else None


def iter_frames(path: str | os.PathLike[str]) -> Iterator[np.ndarray]:
    """Yield the frames of a video file or frame folder as ``(H, W, 3)`` float32 in [0, 1].

    Raises:
        MofmeError: the input cannot be opened or decoded, or holds no frame at all.
    """
    for frame in iter_timed_frames(path):
        yield frame.rgb


def iter_timed_frames(path: str | os.PathLike[str]) -> Iterator[TimedFrame]:
    """Like ``iter_frames``, with each frame's presentation time (``TimedFrame``).

    >>> for f in iter_timed_frames("clip.mp4"):
    ...     f.rgb.shape, f.pts * f.time_base        # ((480, 720, 3), Fraction(1, 25)) ...
    """
    path = Path(path)
    if path.is_dir():
        from mofme.data.io import read_image

        for f in _frame_files(path):
            yield TimedFrame(read_image(f))
        return
    import av

    count = 0
    with _open_input(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                # Keep 10/12/16-bit sources at 16 bits instead of truncating to 8.
                deep = any(c.bits > 8 for c in frame.format.components)
                if deep:
                    rgb = frame.to_ndarray(format="rgb48le").astype(np.float32) / 65535.0
                else:
                    rgb = frame.to_ndarray(format="rgb24").astype(np.float32) / 255.0
                count += 1
                tb = frame.time_base or stream.time_base
                yield TimedFrame(
                    rgb,
                    pts=frame.pts,
                    duration=int(frame.duration) if frame.duration else None,
                    time_base=Fraction(tb) if tb else None,
                )
        except (av.FFmpegError, OSError, ValueError) as e:
            raise MofmeError(
                f"cannot read video {path}: decoding failed after {count} frames ({ffmpeg_reason(e)})"
            ) from None
    if count == 0:
        raise MofmeError(f"cannot read video {path}: it contains no decodable frames")


def check_output_name(path: str | os.PathLike[str]) -> None:
    """Refuse output names ``VideoWriter`` cannot honour: a video extension without an encoder
    here, or an image/animation name (out.gif, out.png) that would silently become a folder."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _ENCODERS and (suffix in VIDEO_EXTENSIONS or suffix in _IMAGE_LIKE):
        raise MofmeError(
            f"cannot write video {path}: {suffix} output is not supported; "
            f"use one of {', '.join(_ENCODERS)} or a folder name for PNG frames"
        )


class VideoWriter:
    """Write frames to a video file or a folder of PNGs, atomically, optionally with sound.

    >>> with VideoWriter("out.mp4", fps=25) as writer:
    ...     for rgb in frames:        # (H, W, 3) float in [0, 1]
    ...         writer.write(rgb)
    # "out.mp4" appears only here; an exception inside the block leaves no file.

    Keeping an input's timing and sound (what ``mofme video`` does):

    >>> info = probe("in.mp4")
    >>> with VideoWriter("out.mp4", fps=info.fps, time_base=info.time_base,
    ...                  audio_from="in.mp4") as writer:
    ...     for f in iter_timed_frames("in.mp4"):
    ...         writer.write(restore(f.rgb), pts=f.pts, duration=f.duration)
    >>> writer.notes
    ['audio: aac stream copied (not re-encoded)']

    Args:
        path: a file with a video extension (see ``_ENCODERS``), or a folder (any other name;
            it must not exist or be empty).
        fps: frame rate of a video file (``Fraction`` keeps NTSC rates exact); the nominal
            rate, and the spacing of frames written without ``pts``.
        crf: H.264 constant rate factor (lower = better; 18 is visually lossless).
        overwrite: replace an existing video file (folders are never merged or replaced).
        time_base: the unit of the ``pts`` / ``duration`` given to ``write`` (the input
            stream's time base); ``None``: frames are spaced ``1/fps`` apart.
        audio_from: a video file whose audio streams are copied into the output (see the
            module docstring); ``None``: no sound.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float | Fraction = 25,
        crf: int = 18,
        overwrite: bool = False,
        time_base: Fraction | None = None,
        audio_from: str | os.PathLike[str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.fps = Fraction(fps).limit_denominator(100_000)
        if self.fps <= 0:
            raise MofmeError(f"cannot write video {self.path}: frame rate must be > 0, got {fps}")
        self.crf = crf
        self.suffix = self.path.suffix.lower()
        self.is_folder = self.suffix not in _ENCODERS
        if self.suffix in VIDEO_EXTENSIONS and self.is_folder:
            raise MofmeError(
                f"cannot write video {self.path}: {self.suffix} output is not supported; "
                f"use one of {', '.join(_ENCODERS)} or a folder name for PNG frames"
            )
        if self.is_folder:
            if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
                raise MofmeError(
                    f"cannot write frames to {self.path}: it exists and is not an empty folder"
                )
        elif self.path.exists() and not overwrite:
            raise MofmeError(f"cannot write video {self.path}: it exists (use --overwrite)")
        self.time_base = Fraction(time_base) if time_base else None
        self.notes: list[str] = []  # one line per thing the user should know about the output
        self.audio_from = Path(audio_from) if audio_from is not None else None
        if self.audio_from is not None and self.is_folder:
            n_audio = count_audio_streams(self.audio_from)
            if n_audio:
                self.notes.append(
                    f"audio dropped: {n_audio} audio stream(s) in {self.audio_from.name}, but a "
                    "folder of PNG frames has no sound (write a .mp4/.mkv/.mov to keep it)"
                )
            self.audio_from = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.stem}.tmp-{os.getpid()}{self.path.suffix}")
        self.frames_written = 0
        self.padded = (0, 0)  # rows, columns added to reach an even size (video files only)
        self._container = None
        self._stream = None
        self._audio: AudioTracks | None = None
        self._size: tuple[int, int] | None = None
        self._closed = False
        # Timestamps of the output video stream (set when it opens): unit, spacing of frames
        # without a pts, the last pts written, and the duration of each pts still in the
        # encoder (encoders with delay do not pass frame durations on to their packets).
        self._tb = Fraction(1) / self.fps
        self._step = 1
        self._last_pts: int | None = None
        self._durations: dict[int, int] = {}
        self._moved = 0  # frames whose time was rounded to the 1/fps grid (AVI)
        self._bumped = 0  # frames whose pts was not after the previous one
        if self.is_folder:
            self.tmp.mkdir()

    # -- writing ------------------------------------------------------------------------------

    def write(
        self,
        rgb: np.ndarray,
        name: str | None = None,
        pts: int | None = None,
        duration: int | None = None,
    ) -> None:
        """Append one frame ``(H, W, 3)`` float in [0, 1].

        Args:
            rgb: the frame.
            name: PNG stem (folders only).
            pts: presentation time in ``time_base`` units (video files with a ``time_base``);
                ``None``: ``1/fps`` after the previous frame.
            duration: how long the frame shows, in ``time_base`` units (the last frame's
                duration sets the end of the video); ``None``: ``1/fps``.
        """
        if self._closed:
            raise RuntimeError("VideoWriter is closed")
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected a frame (H, W, 3), got {rgb.shape}")
        if self._size is None:
            self._size = rgb.shape[:2]
        elif rgb.shape[:2] != self._size:
            raise MofmeError(
                f"cannot write video {self.path}: frame {self.frames_written} is "
                f"{rgb.shape[0]}x{rgb.shape[1]}, earlier frames are {self._size[0]}x{self._size[1]}"
            )
        if self.is_folder:
            from mofme.data.io import save_image

            stem = name if name is not None else f"{self.frames_written:06d}"
            save_image(self.tmp / f"{stem}.png", rgb)
        else:
            self._encode(rgb, pts, duration)
        self.frames_written += 1

    def _open_video(self, h: int, w: int) -> None:
        import av

        encoder = _ENCODERS[self.suffix]
        self.padded = (h % 2, w % 2)
        # The input's time base keeps every frame's own time (variable frame rate); AVI has
        # one constant rate (and MPEG-4 Part 2 caps the time base), so it stays on 1/fps.
        if self.time_base is not None and self.suffix != ".avi":
            self._tb = self.time_base
        self._step = max(1, round(1 / (self.fps * self._tb)))
        try:
            self._container = av.open(str(self.tmp), mode="w")
            options = {"crf": str(self.crf)} if encoder == "libx264" else {"qscale": "2"}
            stream = self._container.add_stream(encoder, rate=self.fps, options=options)
            stream.codec_context.time_base = self._tb
            stream.time_base = self._tb
        except (av.FFmpegError, OSError, ValueError) as e:
            raise MofmeError(f"cannot write video {self.path}: {ffmpeg_reason(e)}") from None
        stream.width, stream.height = w + self.padded[1], h + self.padded[0]
        stream.pix_fmt = "yuv420p"
        if any(self.padded):
            self._container.metadata["comment"] = (
                f"mofme: padded from {w}x{h} to {stream.width}x{stream.height} "
                "(H.264 4:2:0 needs even sizes)"
            )
        self._stream = stream
        if self.audio_from is not None:
            # Streams must all exist before the first packet is written (the header).
            self._audio = AudioTracks(self.audio_from, self._container, self.path)
            self.notes.extend(self._audio.notes)

    def _next_pts(self, pts: int | None, duration: int | None) -> tuple[int, int]:
        """The output ``(pts, duration)`` of the next frame, in ``self._tb`` units."""
        if pts is not None and self.time_base is not None:
            exact = pts * self.time_base / self._tb
            out = round(exact)
            self._moved += out != exact
        else:
            out = 0 if self._last_pts is None else self._last_pts + self._step
        if self._last_pts is not None and out <= self._last_pts:
            # Encoders need strictly increasing times (duplicate or reordered input stamps).
            out = self._last_pts + 1
            self._bumped += 1
        self._last_pts = out
        if duration and self.time_base is not None:
            return out, max(1, round(duration * self.time_base / self._tb))
        return out, self._step

    def _encode(self, rgb: np.ndarray, pts: int | None = None, duration: int | None = None) -> None:
        import av

        if self._container is None:
            self._open_video(*rgb.shape[:2])
        data = np.rint(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)
        if any(self.padded):
            data = np.pad(data, ((0, self.padded[0]), (0, self.padded[1]), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(data, format="rgb24")
        frame.pts, self._durations[frame.pts] = self._next_pts(pts, duration)
        try:
            if self._audio is not None:
                # Sound up to this frame's time goes first, so the file stays interleaved.
                self._audio.pump(float(frame.pts * self._tb))
            self._mux_video(self._stream.encode(frame))
        except (av.FFmpegError, OSError, ValueError) as e:
            raise MofmeError(f"cannot write video {self.path}: {ffmpeg_reason(e)}") from None

    def _mux_video(self, packets) -> None:  # packets: list[av.Packet]
        for packet in packets:
            duration = self._durations.pop(packet.pts, self._step)
            if not packet.duration:
                packet.duration = duration
            self._container.mux(packet)

    # -- finishing ----------------------------------------------------------------------------

    def close(self) -> Path:
        """Finish the file (flush the encoders, copy the rest of the sound), move it in place."""
        if self._closed:
            return self.path
        if self.frames_written == 0:
            self.abort()
            raise MofmeError(f"no frames were written to {self.path}")
        try:
            if self._container is not None:
                import av

                try:
                    self._mux_video(self._stream.encode())
                    if self._audio is not None:
                        self._audio.finish()
                except (av.FFmpegError, OSError, ValueError) as e:
                    raise MofmeError(
                        f"cannot write video {self.path}: {ffmpeg_reason(e)}"
                    ) from None
                self._container.close()
                self._container = None
            if self.is_folder and self.path.is_dir():
                self.path.rmdir()  # checked empty in __init__; rename needs it gone
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        if self._moved:
            self.notes.append(
                f"timing: AVI stores one constant frame rate; {self._moved} frame times were "
                f"rounded to 1/{float(self.fps):g} s (write .mp4/.mkv to keep variable timing)"
            )
        if self._bumped:
            self.notes.append(
                f"timing: {self._bumped} frames had a timestamp not after the previous frame's; "
                "moved one tick later"
            )
        self._closed = True
        return self.path

    def abort(self) -> None:
        """Stop and delete everything written so far."""
        self._closed = True
        if self._audio is not None:
            self._audio.close()
            self._audio = None
        if self._container is not None:
            with contextlib.suppress(Exception):  # the file is deleted anyway
                self._container.close()
            self._container = None
        if self.tmp.is_dir():
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
