"""``mofme app``: serve the local web app (Gradio) — before/after, routing maps, video."""

from __future__ import annotations

import argparse
import socket
import sys

from mofme.errors import MofmeError

HELP = "local web app (Gradio): before/after slider, routing maps, video; CPU, no download"

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes the "
        "app to your network)",
    )
    p.add_argument(
        "--ckpt",
        default="image",
        help="image checkpoint: image (bundled, default), video, or a .safetensors path",
    )
    p.add_argument(
        "--video-ckpt",
        default="video",
        help="checkpoint for the video tab: video (bundled, default), image, or a path",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu (default), auto (CUDA when present), cuda, cuda:1, ...",
    )
    p.add_argument(
        "--max-megapixels",
        type=float,
        default=None,
        help="largest image the app restores (default 40; larger images are refused with a "
        "message, smaller large ones are tiled)",
    )
    p.add_argument("--open", action="store_true", help="open the page in a browser")


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.port <= 65535:
        raise MofmeError(f"--port must be in 1..65535, got {args.port}")
    # `not 0 < x < inf` also refuses NaN, which passes any `<=` check.
    if args.max_megapixels is not None and not 0 < args.max_megapixels < float("inf"):
        raise MofmeError(f"--max-megapixels must be a number > 0, got {args.max_megapixels}")
    try:
        import gradio  # noqa: F401  (only to give a clear message when it is missing)
    except ModuleNotFoundError:
        raise MofmeError(
            "the web app needs Gradio: pip install 'mofme[app]' (or pip install gradio)"
        ) from None
    if not _port_free(args.host, args.port):
        raise MofmeError(f"port {args.port} on {args.host} is in use; choose another with --port")

    from mofme.app import MAX_MEGAPIXELS, build_app, launch_options

    demo = build_app(
        device=args.device,
        ckpt=args.ckpt,
        video_ckpt=args.video_ckpt,
        max_megapixels=args.max_megapixels or MAX_MEGAPIXELS,
    )
    if args.host not in LOCAL_HOSTS:
        print(
            f"mofme app: listening on {args.host}: anyone who can reach this machine can use "
            "the app",
            file=sys.stderr,
        )
    shown = "localhost" if args.host in LOCAL_HOSTS else args.host
    print(f"mofme app: http://{shown}:{args.port}  (Ctrl-C to stop)", flush=True)
    demo.queue(default_concurrency_limit=1).launch(
        server_name=args.host,
        server_port=args.port,
        inbrowser=args.open,
        quiet=True,
        **launch_options(),
    )
    return 0
