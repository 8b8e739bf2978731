"""The ``lookalike`` command line: parse flags, call one library function, print the result.

Subcommands live in small modules (``cli_metric``, ``cli_index``, ...), each exposing ``register(subparsers)``,
which adds its parsers and sets ``func`` to a handler ``(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

_COMMAND_MODULES = ("lookalike.app.cli_metric", "lookalike.app.cli_index", "lookalike.app.cli_weights",
                    "lookalike.app.cli_app",
                    "lookalike.app.cli_eval", "lookalike.app.cli_serve")


class CliError(Exception):
    """An error to print as one line (``error: ...``) with exit status 2."""


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
    except ImportError as e:
        if os.environ.get("LOOKALIKE_DEBUG"):
            raise
        missing = getattr(e, "name", None) or str(e)
        hint = " (for a postgresql:// catalog: pip install 'psycopg[binary]')" if missing == "psycopg" else ""
        print(f"error: a Python package this needs is not installed: {missing}{hint}", file=sys.stderr)
        return 2
    except (CliError, KeyError, ValueError, FileNotFoundError, PermissionError, TypeError, OSError) as e:
        if os.environ.get("LOOKALIKE_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
