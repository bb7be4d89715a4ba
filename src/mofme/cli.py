"""``mofme`` command line: one subcommand per module in ``mofme.commands``.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args)``.
Heavy imports (torch) happen inside ``run`` so ``--help`` stays fast. A ``MofmeError`` becomes
one line on stderr and exit code 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mofme.errors import MofmeError

COMMANDS = ("info", "synth", "train", "test", "restore", "video", "stats", "bench", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mofme",
        description="All-in-one deweathering (rain, raindrops, snow, haze) of images and videos "
        "with a sparse feature-modulation mixture of experts.",
    )
    from mofme import __version__

    parser.add_argument("--version", action="version", version=f"mofme {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"mofme.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"mofme.commands.{name}":
                continue  # command not built yet
            raise
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except MofmeError as e:
        print(f"mofme {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mofme {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
