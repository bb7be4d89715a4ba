"""Reading and writing videos (files via PyAV/FFmpeg, or folders of frames), one frame at a time.

Frames are float32 RGB ``(H, W, 3)`` in ``[0, 1]``, as everywhere in mofme.

Reading (``iter_frames``, ``probe``): any container/codec FFmpeg decodes (.mp4, .mov, .avi,
.mkv, ...), the first video stream, frames in decoding order (variable frame rate is fine: every
decoded frame is returned once); 10/12-bit sources keep their precision. A folder is read as
its image files in natural order (``2.png`` before ``10.png``). Unreadable or empty inputs
raise ``MofmeError`` naming the file.

Writing (``VideoWriter``): a video file (H.264 in .mp4/.mkv/.mov, MPEG-4 Part 2 in .avi) or a
folder of PNG frames. The output goes to a hidden temporary name in the destination folder and
is renamed only by ``close()``; leaving the ``with`` block through an exception removes it, so
an aborted run leaves nothing behind. H.264 in 4:2:0 chroma needs an even width and height: an
odd-sized video gets one replicated row and/or column at the bottom/right (``VideoWriter.padded``
says how many; the container's ``comment`` metadata records it). PNG folders are never padded.
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

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
# Output codec per container; everything else about the encoder is the same.
_ENCODERS = {".mp4": "libx264", ".mkv": "libx264", ".mov": "libx264", ".m4v": "libx264",
             ".avi": "mpeg4"}  # fmt: skip


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
        raise MofmeError(f"cannot read video {path}: {_reason(e)}") from None
    if not container.streams.video:
        container.close()
        raise MofmeError(f"cannot read video {path}: it has no video stream")
    return container


def _reason(e: BaseException) -> str:
    # FFmpeg errors carry "[Errno N] message: 'file'"; the message alone reads best.
    text = getattr(e, "strerror", None) or str(e).strip() or type(e).__name__
    return text.splitlines()[0]


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
        )


def iter_frames(path: str | os.PathLike[str]) -> Iterator[np.ndarray]:
    """Yield the frames of a video file or frame folder as ``(H, W, 3)`` float32 in [0, 1].

    Raises:
        MofmeError: the input cannot be opened or decoded, or holds no frame at all.
    """
    path = Path(path)
    if path.is_dir():
        from mofme.data.io import read_image

        for f in _frame_files(path):
            yield read_image(f)
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
                yield rgb
        except (av.FFmpegError, OSError, ValueError) as e:
            raise MofmeError(
                f"cannot read video {path}: decoding failed after {count} frames ({_reason(e)})"
            ) from None
    if count == 0:
        raise MofmeError(f"cannot read video {path}: it contains no decodable frames")


class VideoWriter:
    """Write frames to a video file or a folder of PNGs, atomically.

    >>> with VideoWriter("out.mp4", fps=25) as writer:
    ...     for rgb in frames:        # (H, W, 3) float in [0, 1]
    ...         writer.write(rgb)
    # "out.mp4" appears only here; an exception inside the block leaves no file.

    Args:
        path: a file with a video extension (see ``_ENCODERS``), or a folder (any other name;
            it must not exist or be empty).
        fps: frame rate of a video file (``Fraction`` keeps NTSC rates exact).
        crf: H.264 constant rate factor (lower = better; 18 is visually lossless).
        overwrite: replace an existing video file (folders are never merged or replaced).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float | Fraction = 25,
        crf: int = 18,
        overwrite: bool = False,
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.stem}.tmp-{os.getpid()}{self.path.suffix}")
        self.frames_written = 0
        self.padded = (0, 0)  # rows, columns added to reach an even size (video files only)
        self._container = None
        self._stream = None
        self._size: tuple[int, int] | None = None
        self._closed = False
        if self.is_folder:
            self.tmp.mkdir()

    # -- writing ------------------------------------------------------------------------------

    def write(self, rgb: np.ndarray, name: str | None = None) -> None:
        """Append one frame ``(H, W, 3)`` float in [0, 1]; ``name`` = PNG stem (folders only)."""
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
            self._encode(rgb)
        self.frames_written += 1

    def _open_video(self, h: int, w: int) -> None:
        import av

        encoder = _ENCODERS[self.suffix]
        self.padded = (h % 2, w % 2)
        try:
            self._container = av.open(str(self.tmp), mode="w")
            options = {"crf": str(self.crf)} if encoder == "libx264" else {"qscale": "2"}
            stream = self._container.add_stream(encoder, rate=self.fps, options=options)
        except (av.FFmpegError, OSError, ValueError) as e:
            raise MofmeError(f"cannot write video {self.path}: {_reason(e)}") from None
        stream.width, stream.height = w + self.padded[1], h + self.padded[0]
        stream.pix_fmt = "yuv420p"
        if any(self.padded):
            self._container.metadata["comment"] = (
                f"mofme: padded from {w}x{h} to {stream.width}x{stream.height} "
                "(H.264 4:2:0 needs even sizes)"
            )
        self._stream = stream

    def _encode(self, rgb: np.ndarray) -> None:
        import av

        if self._container is None:
            self._open_video(*rgb.shape[:2])
        data = np.rint(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)
        if any(self.padded):
            data = np.pad(data, ((0, self.padded[0]), (0, self.padded[1]), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(data, format="rgb24")
        frame.pts = self.frames_written
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        except (av.FFmpegError, OSError, ValueError) as e:
            raise MofmeError(f"cannot write video {self.path}: {_reason(e)}") from None

    # -- finishing ----------------------------------------------------------------------------

    def close(self) -> Path:
        """Finish the file (flush the encoder) and move it to its final name."""
        if self._closed:
            return self.path
        if self.frames_written == 0:
            self.abort()
            raise MofmeError(f"no frames were written to {self.path}")
        try:
            if self._container is not None:
                for packet in self._stream.encode():
                    self._container.mux(packet)
                self._container.close()
                self._container = None
            if self.is_folder and self.path.is_dir():
                self.path.rmdir()  # checked empty in __init__; rename needs it gone
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.path

    def abort(self) -> None:
        """Stop and delete everything written so far."""
        self._closed = True
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
