"""The sound of ``VideoWriter`` (:mod:`mofme.inference.videoio`): the audio streams of an input
video, copied packet by packet into the output container where it can hold their codec (a test
mux decides), else re-encoded (AAC; MP3 in .avi), interleaved with the video as it is written.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path


def ffmpeg_reason(e: BaseException) -> str:
    """The message of an FFmpeg / OS error, for one-line errors and notes."""
    # FFmpeg errors carry "[Errno N] message: 'file'"; the message alone reads best.
    text = getattr(e, "strerror", None) or str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def count_audio_streams(path: Path) -> int:
    """Audio streams in a video file (0 when it cannot be opened: the video reader says why)."""
    import av

    try:
        with av.open(str(path)) as container:
            return len(container.streams.audio)
    except (av.FFmpegError, OSError, ValueError):
        return 0


def _can_copy(stream, format_name: str) -> bool:  # stream: av.AudioStream
    """Whether ``stream``'s packets can go unchanged into a ``format_name`` container.

    Asking FFmpeg (``avformat_query_codec``) is not enough: some muxers list a codec and then
    refuse it when writing the header (e.g. experimental mappings). So write a header for real,
    into memory.
    """
    import av

    try:
        with av.open(io.BytesIO(), mode="w", format=format_name) as probe_out:
            if stream.codec_context.name not in probe_out.supported_codecs:
                return False
            probe_out.add_stream_from_template(stream)
            probe_out.start_encoding()
        return True
    except (av.FFmpegError, OSError, ValueError, TypeError):
        return False


class AudioTracks:
    """The audio streams of an input file, written into an output container alongside video.

    Each stream is copied packet by packet when the container can hold its codec, else decoded
    and re-encoded (AAC, or MP3 in AVI). ``pump(t)`` moves packets up to time ``t`` seconds;
    ``finish()`` the rest. ``notes`` says what happened to each stream.
    """

    def __init__(self, src: Path, output, dst: Path) -> None:  # output: av.OutputContainer
        import av

        self.notes: list[str] = []
        self._input = av.open(str(src))
        streams = list(self._input.streams.audio)
        # input stream index -> (output stream, True when re-encoded)
        self._routes: dict[int, tuple[object, bool]] = {}
        fmt = output.format.name
        for i, s in enumerate(streams):
            label = f"audio stream {i + 1}" if len(streams) > 1 else "audio"
            name = s.codec_context.name
            if _can_copy(s, fmt):
                out = output.add_stream_from_template(s)
                self._routes[s.index] = (out, False)
                self.notes.append(f"{label}: {name} copied (not re-encoded)")
                continue
            codec = "libmp3lame" if fmt == "avi" else "aac"
            try:
                out = output.add_stream(codec, rate=s.rate or 48000)
                out.layout = s.layout
            except (av.FFmpegError, ValueError) as e:
                self.notes.append(
                    f"{label} dropped: {name} cannot go into {dst.suffix} and re-encoding "
                    f"failed ({ffmpeg_reason(e)})"
                )
                continue
            self._routes[s.index] = (out, True)
            self.notes.append(
                f"{label}: {name} cannot be stored in {dst.suffix} as is; re-encoded to "
                f"{'MP3' if codec == 'libmp3lame' else 'AAC'}"
            )
        self._packets = self._input.demux(*streams) if self._routes else iter(())
        self._pending = None  # the first packet past the last pump's time
        self._output = output

    def _write(self, packet) -> None:  # packet: av.Packet
        out, reencode = self._routes[packet.stream.index]
        if not reencode:
            if packet.dts is None:  # the demuxer's end-of-stream marker, not data
                return
            packet.stream = out
            self._output.mux(packet)
            return
        for frame in packet.decode():  # an end-of-stream packet flushes the decoder
            self._output.mux(out.encode(frame))

    def pump(self, until: float | None) -> None:
        """Write the packets that start at or before ``until`` seconds (``None``: all)."""
        while True:
            packet = self._pending or next(self._packets, None)
            self._pending = None
            if packet is None:
                return
            if packet.stream.index not in self._routes:
                continue
            start = packet.pts if packet.pts is not None else packet.dts
            if (
                until is not None
                and start is not None
                and packet.time_base is not None
                and float(start * packet.time_base) > until
            ):
                self._pending = packet
                return
            self._write(packet)

    def finish(self) -> None:
        """Write the remaining packets, flush the re-encoders, close the input."""
        self.pump(None)
        for out, reencode in self._routes.values():
            if reencode:
                self._output.mux(out.encode(None))
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._input.close()
