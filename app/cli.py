"""The ``lookalike`` command line: parse flags, call one library function, print the result.

Subcommands live in small modules (``cli_metric``, ``cli_index``, ...), each exposing ``register(subparsers)``,
which adds its parsers and sets ``func`` to a handler ``(args) -> int``. Errors: a ``LookalikeError`` (bad input,
missing or damaged files, a busy index) or an ``OSError`` is printed as ``error: message`` and ``hint: fix`` with
exit status 2; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from sqlalchemy.exc import DatabaseError

from lookalike.common.errors import InvalidArgument, LookalikeError

_COMMAND_MODULES = ("lookalike.app.cli_metric", "lookalike.app.cli_index", "lookalike.app.cli_dedup",
                    "lookalike.app.cli_weights",
                    "lookalike.app.cli_app",
                    "lookalike.app.cli_eval", "lookalike.app.cli_import", "lookalike.app.cli_serve")


class CliError(InvalidArgument):
    """A bad combination of command-line flags (printed as ``error: ...`` with exit status 2)."""


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
    except OSError as e:  # unreadable / missing files, full disks, refused connections
        if os.environ.get("LOOKALIKE_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2

if __name__ == "__main__":
    sys.exit(main())
