"""The ``lookalike`` command line: parse flags, call one library function, print the result.

Subcommands live in small modules (``cli_metric``, ``cli_index``, ...), each exposing ``register(subparsers)``,
which adds its parsers and sets ``func`` to a handler ``(args) -> int``. Errors: a ``LookalikeError`` (bad input,
missing or damaged files, a busy index) or an ``OSError`` is printed as ``error: message`` and ``hint: fix`` with
exit status 2; anything else is a bug and shows its traceback. A closed output pipe (``lookalike info | head -1``)
ends the command quietly with status 141 (128 + SIGPIPE), as a Unix tool killed by SIGPIPE reports.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys

from sqlalchemy.exc import DatabaseError

from lookalike.common.errors import InvalidArgument, LookalikeError

_COMMAND_MODULES = ("lookalike.app.cli_metric", "lookalike.app.cli_index", "lookalike.app.cli_dedup",
                    "lookalike.app.cli_weights",
                    "lookalike.app.cli_app",
                    "lookalike.app.cli_eval", "lookalike.app.cli_import", "lookalike.app.cli_serve")


class CliError(InvalidArgument):
    """A bad combination of command-line flags (printed as ``error: ...`` with exit status 2)."""


class Loading:
    """A ``loading WHAT (DETAIL)...`` line on stderr, so that a command is never silent while it starts (the CLI's
    status lines all start with ``VERB `` and end with ``...``: tests that read errors skip them).

    The start is printed at once, before the heavy imports (torch alone takes seconds); ``done(detail)`` ends the
    line once the details are known (``cpu, fp32``). Used as a context manager the line is always ended, so an error
    message starts on a line of its own.
    """

    def __init__(self, what: str, *, verb: str = "loading") -> None:
        self._open = True
        print(f"{verb} {what}", end="", file=sys.stderr, flush=True)

    def done(self, detail: str = "") -> None:
        if self._open:
            self._open = False
            print(f" ({detail})..." if detail else "...", file=sys.stderr, flush=True)

    def __enter__(self) -> Loading:
        return self

    def __exit__(self, *exc: object) -> None:
        self.done()


def placement(metric: str, device: str | None, dtype: str | None) -> str:
    """``"cpu, fp32"``: where and in which precision ``metric`` would run (nothing is loaded)."""
    from lookalike.metric import dtype_name, resolve_placement

    dev, dt = resolve_placement(metric, device=device, dtype=dtype)
    return f"{dev}, {dtype_name(dt)}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lookalike",
        description="Perceptual image similarity search: DreamSim and friends, FAISS indexes, dedup.",
        epilog="Distances: lower = more similar, unless a metric says otherwise (PSNR, SSIM). "
        "Run 'lookalike COMMAND --help' for examples.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod_name in _COMMAND_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name == mod_name:
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``lookalike`` command; returns its exit status."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, so that a closed pipe is met inside this try and not at exit
        return code
    except BrokenPipeError:  # the reader went away (lookalike info | head -1): stop quietly, as Unix tools do
        _silence_stdout()
        return 128 + getattr(signal, "SIGPIPE", 13)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except LookalikeError as e:  # the user's mistake or a damaged / missing file: a message, never a traceback
        if os.environ.get("LOOKALIKE_DEBUG"):
            raise
        print(f"error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        return 2
    except DatabaseError as e:  # a catalog damaged past its first pages, found mid-query
        if os.environ.get("LOOKALIKE_DEBUG"):
            raise
        where = getattr(args, "index", None) or "the index folder"
        reason = str(getattr(e, "orig", e)).strip().splitlines()[0]
        print(f"error: damaged index file {where}/catalog.sqlite: the SQLite catalog cannot be read ({reason}); "
              f"run 'lookalike check --index {where} --repair'", file=sys.stderr)
        return 2
    except BrokenPipeError:
        raise
    except OSError as e:  # unreadable / missing files, full disks, refused connections
        if os.environ.get("LOOKALIKE_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush does not meet the closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (embedded, replaced by a test)
        pass


if __name__ == "__main__":
    sys.exit(main())
