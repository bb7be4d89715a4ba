"""``mofme`` command line: one subcommand per module in ``mofme.commands``.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args)``.
Heavy imports (torch) happen inside ``run`` so ``--help`` stays fast. A ``MofmeError`` becomes
one line on stderr and exit code 2; Ctrl-C exits with 130, SIGTERM with 143 (both remove
unfinished outputs).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading

from mofme.errors import MofmeError, one_line

COMMANDS = (
    "info",
    "synth",
    "train",
    "test",
    "restore",
    "video",
    "stats",
    "bench",
    "demo",
    "convert",
    "export",
    "app",
)


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
        mod = importlib.import_module(f"mofme.commands.{name}")
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so the same clean-up code runs
    (temporary outputs removed by their ``finally`` / ``__exit__``)."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = None
    if threading.current_thread() is threading.main_thread():
        # `mofme train` installs its own handler while training (finish the step, save).
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        code = int(args._run(args) or 0)
        sys.stdout.flush()  # a closed pipe (`| head`) shows here, in the handler below
        return code
    except MofmeError as e:
        print(f"mofme {args.command}: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        terminated = isinstance(e, Terminated)
        what = "terminated" if terminated else "interrupted"
        print(f"mofme {args.command}: {what}", file=sys.stderr)
        return 143 if terminated else 130
    except BrokenPipeError:
        # `mofme info | head`: the reader left early. Like other Unix tools, stop quietly;
        # stdout goes to /dev/null so the interpreter's final flush cannot fail again.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as e:
        # The file system refused something no command checked for (full disk, read-only
        # mount, a file vanished): one line naming the file, not a traceback.
        where = one_line(f"{e.filename}: ") if e.filename else ""
        print(f"mofme {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def entry() -> None:
    """The ``mofme`` console script: :func:`main`, then the exit. After Ctrl-C or SIGTERM (the
    unfinished outputs already removed) the process ends at once, without the interpreter's
    finalization: there a native library's static destructors can abort the process
    (``terminate called without an active exception``, exit status 134 instead of 143) in
    about one SIGTERM run in seven."""
    code = main()
    if code in (130, 143):
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
