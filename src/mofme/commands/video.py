"""``mofme video``: restore a video file or frame folder, streaming one frame at a time."""

from __future__ import annotations

import argparse
import sys
import time
from fractions import Fraction
from pathlib import Path

from mofme.commands.common import (
    add_inference_arguments,
    add_output_arguments,
    model_from_args,
    resolve_device,
    want_progress,
)
from mofme.errors import MofmeError

# Frame rates above this are typos (or inf), and would make the encoder's time base degenerate.
MAX_FPS = 1000.0

HELP = "restore a video file or a folder of frames, streaming, with the reference-frame model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "input", metavar="INPUT", help="video file (.mp4, .mov, .avi, .mkv, ...) or frame folder"
    )
    p.add_argument(
        "output",
        metavar="OUTPUT",
        help="video file (.mp4, .mkv, .mov: H.264; .avi: MPEG-4) or a folder for PNG frames",
    )
    add_inference_arguments(p, "default: the bundled video desnowing model")
    p.add_argument(
        "--fps",
        type=float,
        default=None,
        help="re-time to this constant frame rate (drops the audio, which would no longer line "
        "up); default: each frame keeps its input time (variable frame rate too; 25 fps for a "
        "frame folder)",
    )
    p.add_argument(
        "--no-audio",
        action="store_true",
        help="drop the sound; by default audio streams are copied (re-encoded to AAC/MP3 only "
        "when the output container cannot hold their codec; a frame folder has no sound)",
    )
    p.add_argument(
        "--side-by-side", action="store_true", help="write input | restored next to each other"
    )
    p.add_argument(
        "--no-pipeline",
        action="store_true",
        help="decode, restore and encode one after another (default: decoding and encoding run "
        "in threads alongside the network; same output)",
    )
    p.add_argument(
        "--crf", type=int, default=18, help="H.264 quality, lower is better (default 18)"
    )
    add_output_arguments(p, "replace an existing output file")


def _peak_memory_mb(device) -> str:  # device: torch.device
    """Peak memory of this process: it stays flat with the video's length (streaming)."""
    import resource

    import torch

    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MB on {device}"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return f"{peak / (2**20 if sys.platform == 'darwin' else 2**10):.0f} MB resident"


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mofme.inference.options import InferenceOptions
    from mofme.inference.video import restore_video_file
    from mofme.inference.videoio import probe

    options = InferenceOptions.from_args(args, routing=None)  # load_model applies --routing
    src, dst = Path(args.input), Path(args.output)
    if not src.exists():
        raise MofmeError(f"cannot read video {src}: no such file or folder")
    if dst.resolve() == src.resolve():
        raise MofmeError(f"OUTPUT {dst} is the INPUT; choose another output")
    # `not 0 < x <= max` also refuses NaN (every comparison with NaN is false) and inf.
    if args.fps is not None and not 0.01 <= args.fps <= MAX_FPS:
        raise MofmeError(f"--fps must be between 0.01 and {MAX_FPS}, got {args.fps}")
    if not 0 <= args.crf <= 51:
        raise MofmeError(f"--crf must be in [0, 51] (H.264 quality), got {args.crf}")
    from mofme.data.io import remove_stale_temps
    from mofme.inference.videoio import check_output_name, is_video_file
    from mofme.outputs import check_writable

    # A bad or unwritable output fails now, not after the first frames; temp files left by
    # killed runs go.
    check_output_name(dst)
    check_writable(dst, folder=not is_video_file(dst))
    remove_stale_temps(dst.parent)
    info = probe(src)
    fps = Fraction(args.fps).limit_denominator(100_000) if args.fps else info.fps or Fraction(25)

    device = resolve_device(args.device)
    model = model_from_args(args, device, default="video")
    chosen = options.prepare(model, device, log=lambda m: print(m, file=sys.stderr))
    print(chosen.note, file=sys.stderr)
    reference = model.cfg.in_channels == 6
    mode = "reference frame" if reference else "frame by frame (image model)"
    print(
        f"{src}: {info.width}x{info.height}, {info.n_frames or '?'} frames, {float(fps):g} fps; "
        f"{mode}, routing {model.cfg.routing.describe()}",
        file=sys.stderr,
    )

    start = time.perf_counter()
    bar = tqdm(
        total=info.n_frames,
        desc="video",
        unit="frame",
        disable=not want_progress(args),
        file=sys.stderr,
    )

    def progress(done: int, total: int | None) -> None:
        bar.update(done - bar.n)
        bar.set_postfix(fps=f"{done / (time.perf_counter() - start):.2f}")

    try:
        result = restore_video_file(
            model,
            src,
            dst,
            tile=options.tile_for(info.height, info.width, model),
            overlap=options.overlap,
            amp=options.amp,
            channels_last=options.channels_last,
            batch_tiles=options.batch_tiles_on(device),
            fps=Fraction(args.fps).limit_denominator(100_000) if args.fps else None,
            side_by_side=args.side_by_side,
            crf=args.crf,
            overwrite=args.overwrite,
            keep_audio=not args.no_audio,
            pipeline=not args.no_pipeline,
            progress=progress,
        )
    finally:
        bar.close()
    for note in result.notes:  # what happened to the sound and the frame timing
        print(note, file=sys.stderr)
    n, elapsed = result.frames, result.seconds
    pad = ""
    if any(result.padded):
        pad = f" (padded by {result.padded[0]} row / {result.padded[1]} column to an even size)"
    print(
        f"wrote {n} frames to {dst}{pad} in {elapsed:.1f} s ({n / elapsed:.2f} frames/s"
        f"{'' if args.no_pipeline else ', pipelined'}; peak memory {_peak_memory_mb(device)})"
    )
    return 0
