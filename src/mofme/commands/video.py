"""``mofme video``: restore a video file or frame folder, streaming one frame at a time."""

from __future__ import annotations

import argparse
import sys
import time
from fractions import Fraction
from pathlib import Path

from mofme.commands.common import add_device_argument, resolve_device
from mofme.commands.restore import (
    add_model_options,
    add_speed_options,
    batch_tiles_for,
    check_speed_options,
    prepare_model,
    tile_for,
)
from mofme.errors import MofmeError

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
    add_model_options(p, "default: the bundled video desnowing model")
    add_speed_options(p)
    p.add_argument(
        "--fps",
        type=float,
        default=None,
        help="output frame rate (default: the input's; 25 for a frame folder)",
    )
    p.add_argument(
        "--side-by-side", action="store_true", help="write input | restored next to each other"
    )
    p.add_argument(
        "--crf", type=int, default=18, help="H.264 quality, lower is better (default 18)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    add_device_argument(p)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from mofme.commands.common import load_model
    from mofme.data.io import to_numpy, to_tensor
    from mofme.inference.video import VideoRestorer
    from mofme.inference.videoio import VideoWriter, frame_names, iter_frames, probe

    check_speed_options(args)
    src, dst = Path(args.input), Path(args.output)
    if not src.exists():
        raise MofmeError(f"cannot read video {src}: no such file or folder")
    if dst.resolve() == src.resolve():
        raise MofmeError(f"OUTPUT {dst} is the INPUT; choose another output")
    if args.fps is not None and args.fps <= 0:
        raise MofmeError(f"--fps must be > 0, got {args.fps}")
    info = probe(src)
    fps = Fraction(args.fps).limit_denominator(100_000) if args.fps else info.fps or Fraction(25)

    device = resolve_device(args.device)
    model = load_model(args, device, default="video")
    prepare_model(model, args, device)
    restorer = VideoRestorer(
        model,
        tile=tile_for(args, info.height, info.width),
        overlap=args.overlap,
        amp=args.amp,
        channels_last=args.channels_last,
        batch_tiles=batch_tiles_for(device),
    )
    mode = "reference frame" if restorer.uses_reference else "frame by frame (image model)"
    print(
        f"{src}: {info.width}x{info.height}, {info.n_frames or '?'} frames, {float(fps):g} fps; "
        f"{mode}, routing {model.cfg.routing.describe()}",
        file=sys.stderr,
    )

    start = time.perf_counter()
    bar = tqdm(total=info.n_frames, desc="video", unit="frame", disable=None, file=sys.stderr)
    with VideoWriter(dst, fps=fps, crf=args.crf, overwrite=args.overwrite) as writer:
        # Frame folder -> PNG folder keeps the frame names (when they are unique).
        names = frame_names(src) if writer.is_folder else None
        if names and len(set(names)) != len(names):
            names = None
        first_shape = None
        for i, rgb in enumerate(iter_frames(src)):
            first_shape = first_shape or rgb.shape
            if rgb.shape != first_shape:
                raise MofmeError(
                    f"{src}: frame {i} is {rgb.shape[1]}x{rgb.shape[0]}, earlier frames are "
                    f"{first_shape[1]}x{first_shape[0]}; the frame size must not change"
                )
            frame = to_tensor(rgb).unsqueeze(0)
            out = to_numpy(restorer.step(frame))
            if args.side_by_side:
                out = np.concatenate([rgb, out], axis=1)
            writer.write(out, name=names[i] if names else None)
            bar.update(1)
            bar.set_postfix(fps=f"{(i + 1) / (time.perf_counter() - start):.2f}")
    bar.close()
    elapsed = time.perf_counter() - start
    n = writer.frames_written
    pad = ""
    if any(writer.padded):
        pad = f" (padded by {writer.padded[0]} row / {writer.padded[1]} column to an even size)"
    print(f"wrote {n} frames to {dst}{pad} in {elapsed:.1f} s ({n / elapsed:.2f} frames/s)")
    return 0
