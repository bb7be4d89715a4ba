"""``mofme synth``: write synthetic Allweather-style or RVSD-style datasets.

Examples::

    mofme synth allweather --out data/synth --train 1000 --test 100 --preview
    mofme synth rvsd --out data/rvsd_synth --videos 12 --test-videos 4 --frames 30
    mofme synth bench --out data/bench       # held-out benchmark (photos no training set uses)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mofme.commands.common import add_progress_argument, parse_size, want_progress
from mofme.errors import MofmeError

HELP = "write synthetic Allweather-style (rain, raindrop, snow, haze) or RVSD-style snowy-video datasets"

DEFAULT_IMAGE_SIZE = "256x256"
DEFAULT_VIDEO_SIZE = "240x320"


def _common(p: argparse.ArgumentParser, default_size: str) -> None:
    p.add_argument("--out", required=True, type=Path, help="output folder (new or empty)")
    p.add_argument("--size", default=default_size, help=f"image size HxW (default {default_size})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--source",
        type=Path,
        default=None,
        help="folder of your own clean photos: added to the training content (allweather, "
        "rvsd); for bench, they replace the held-out photos",
    )
    p.add_argument("--preview", action="store_true", help="also write OUT/preview.png")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty OUT, replacing the dataset folders written before",
    )
    p.add_argument(
        "--workers", type=int, default=1, help="worker processes (default 1; same output)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar (as --no-progress)")
    add_progress_argument(p)


def _identity_share(p: argparse.ArgumentParser, what: str) -> None:
    # None = the writers' own default (mofme.data.synth.IDENTITY_SHARE, 12 %); not imported here
    # so that --help stays fast.
    p.add_argument(
        "--identity-share", type=float, default=None, help=f"share of {what} (default 0.12)"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``allweather`` and ``rvsd`` sub-commands on ``parser``."""
    sub = parser.add_subparsers(dest="kind", required=True, metavar="{allweather,rvsd,bench}")
    aw = sub.add_parser(
        "allweather",
        help="rain+fog / raindrop / snow / haze image pairs",
        description=(
            "Write image pairs in the MoFME layout (train/, test_rain/, test_raindrop/, "
            "test_snow/, test_haze/) and the TransWeather list files (allweather.txt, "
            "test1.txt, raindroptesta.txt, snowtest100k_L.txt, hazetest.txt)."
        ),
    )
    aw.add_argument("--train", type=int, default=1000, help="train pairs (default 1000)")
    aw.add_argument("--test", type=int, default=100, help="pairs per test split (default 100)")
    _identity_share(aw, "identity (clean -> clean) train pairs")
    aw.add_argument(
        "--types",
        default=None,
        help="training weather mix as name[:weight],... e.g. rain:2,snow,raindrop (default: "
        "every single and composite type, balanced); test splits are unchanged",
    )
    aw.add_argument(
        "--structure-share",
        type=float,
        default=0.0,
        help="share of train views showing thin near-vertical structure (plank walls, "
        "railings, shelves) that rain models must keep (default 0)",
    )
    aw.add_argument(
        "--soft-share",
        type=float,
        default=0.0,
        help="share of train views made soft, pale and low in contrast (shallow depth of "
        "field, pale walls and skies), which a dehazer must keep (default 0)",
    )
    _common(aw, DEFAULT_IMAGE_SIZE)
    rv = sub.add_parser(
        "rvsd",
        help="snowy / clean video pairs",
        description="Write snowy videos in the RVSD layout {train,test}/{snow,clean}/<video>/.",
    )
    rv.add_argument("--videos", type=int, default=8, help="videos in total (default 8)")
    rv.add_argument(
        "--test-videos",
        type=int,
        default=None,
        help="how many of the videos go to test/ (default: about 30/110 of them, as RVSD)",
    )
    rv.add_argument("--frames", type=int, default=30, help="frames per video (default 30)")
    rv.add_argument(
        "--video",
        type=Path,
        nargs="+",
        default=None,
        help="clean video file(s) to use instead of camera moves over photos",
    )
    _identity_share(rv, "clean train clips (snow = clean)")
    _common(rv, DEFAULT_VIDEO_SIZE)
    bn = sub.add_parser(
        "bench",
        help="held-out benchmark: every weather at light/medium/heavy, clean images, clips",
        description=(
            "Write the held-out benchmark from photos the bundled weights never trained on: "
            "images/test_<type>_<severity>/ and images/test_clean/ (MoFME layout), "
            "video/ (snowy clips) and video_clean/ (clean clips) in the RVSD layout."
        ),
    )
    bn.add_argument("--per-set", type=int, default=8, help="images per set (default 8)")
    bn.add_argument("--clips", type=int, default=6, help="snowy and clean clips (default 6 each)")
    bn.add_argument("--frames", type=int, default=12, help="frames per clip (default 12)")
    bn.add_argument("--clip-size", default="192x256", help="clip size HxW (default 192x256)")
    _common(bn, DEFAULT_IMAGE_SIZE)


def _share(args: argparse.Namespace) -> dict[str, float]:
    return {} if args.identity_share is None else {"identity_share": args.identity_share}


def run(args: argparse.Namespace) -> int:
    """Write the requested dataset; print where it went. Returns the exit code."""
    from mofme.data.synth import contact_sheet, write_allweather, write_benchmark, write_rvsd
    from mofme.outputs import check_writable

    size = parse_size(args.size)
    if args.workers < 1:
        raise MofmeError(f"--workers must be at least 1, got {args.workers}")
    check_writable(args.out, folder=True)  # a read-only or /proc --out: one line, up front
    # What every writer takes, from the options every sub-command has.
    common = dict(
        size_hw=size,
        seed=args.seed,
        source_folder=args.source,
        progress=want_progress(args) and not args.quiet,
        overwrite=args.overwrite,
        workers=args.workers,
    )
    if args.kind == "bench":
        meta = write_benchmark(
            args.out,
            n_per_set=args.per_set,
            n_clips=args.clips,
            n_frames=args.frames,
            clip_size_hw=parse_size(args.clip_size),
            **common,
        )
        print(
            f"wrote {len(meta['sets'])} image sets of {args.per_set} and 2 x {args.clips} clips "
            f"to {args.out} in {meta['seconds']:.1f} s"
        )
    elif args.kind == "allweather":
        meta = write_allweather(
            args.out,
            n_train=args.train,
            n_test=args.test,
            types=args.types,
            structure_share=args.structure_share,
            soft_share=args.soft_share,
            **common,
            **_share(args),
        )
        print(
            f"wrote {meta['n_train']} train pairs and 4 x {meta['n_test']} test pairs "
            f"({size[0]}x{size[1]}) to {args.out} in {meta['seconds']:.1f} s"
        )
    else:
        meta = write_rvsd(
            args.out,
            n_videos=args.videos,
            n_frames=args.frames,
            split_test=args.test_videos,
            video_files=args.video,
            **common,
            **_share(args),
        )
        print(
            f"wrote {meta['n_train']} train and {meta['n_test']} test videos of "
            f"{args.frames} frames ({size[0]}x{size[1]}) to {args.out} in {meta['seconds']:.1f} s"
        )
    if args.preview:
        path = contact_sheet(
            Path(args.out) / "preview.png", seed=args.seed, source_folder=args.source
        )
        print(f"preview: {path}")
    return 0
