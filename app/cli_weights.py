"""``lookalike weights download|verify|path NAME``: fetch, check and locate a metric's weight files."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

_EPILOG = """\
Files are looked up in a fixed order: --weights DIR, then the cache $LOOKALIKE_HOME/<subdir>
(default ~/.cache/lookalike), then downloaded from the official URL into the cache.
Library loads never download when LOOKALIKE_OFFLINE=1 or HF_HUB_OFFLINE=1; 'weights download' does.

examples:
  lookalike weights download dreamsim          # fetch (resumes an interrupted download)
  lookalike weights verify dreamsim            # sizes and sha256 of the files on disk; exit 1 if one is bad
  lookalike weights path dreamsim --json       # where each file is or would go, and its URL
  LOOKALIKE_HOME=/data/weights lookalike weights download dreamsim_dino_vitb16
  lookalike weights verify dreamsim --weights ./models   # reuse a dreamsim cache folder (its default)
"""


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="metric name (see 'lookalike info')")
    p.add_argument("--weights", metavar="DIR", default=None,
                   help="folder searched before the cache (nothing is written there)")
    p.add_argument("--json", action="store_true", help="print JSON on stdout")


def register(subparsers: Any) -> None:
    """Add ``weights`` with its ``download``, ``verify`` and ``path`` subcommands to ``subparsers``."""
    fmt = argparse.RawDescriptionHelpFormatter
    w = subparsers.add_parser("weights", help="download, verify or locate a metric's weight files",
                              description="Download, verify or locate the weight files of a metric.",
                              epilog=_EPILOG, formatter_class=fmt)
    w.set_defaults(func=lambda args: _no_action(w))
    sub = w.add_subparsers(dest="weights_command", metavar="ACTION")

    d = sub.add_parser("download", help="fetch the files that are not on disk yet",
                       description="Fetch every weight file of NAME that is not on disk yet into the cache.",
                       epilog=_EPILOG, formatter_class=fmt)
    _add_common(d)
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_download)

    v = sub.add_parser("verify", help="check size and sha256 of the files on disk (exit 1 if one is bad)",
                       description="Check the weight files of NAME on disk: present, size, sha256. "
                       "Exit status 1 when one is missing or wrong.",
                       epilog=_EPILOG, formatter_class=fmt)
    _add_common(v)
    v.set_defaults(func=cmd_verify)

    p = sub.add_parser("path", help="where each file is or would be downloaded, and its URL",
                       description="Show where each weight file of NAME is (or would be downloaded to) and "
                       "the URL it comes from.",
                       epilog=_EPILOG, formatter_class=fmt)
    _add_common(p)
    p.set_defaults(func=cmd_path)


def _no_action(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2))


def cmd_download(args: argparse.Namespace) -> int:
    """``weights download NAME``: fetch the missing files; print where every file is."""
    from lookalike.metric.weights import download_weights

    paths = download_weights(args.name, weights=args.weights, progress=not args.no_progress)
    if args.json:
        _print_json({"metric": args.name, "files": {k: str(v) for k, v in paths.items()}})
    elif not paths:
        print(f"metric {args.name!r} needs no weight files")
    else:
        print(f"{len(paths)} weight file(s) of {args.name!r} ready:")
        for rel, path in paths.items():
            print(f"  {rel}: {path}")
    return 0


def _fmt_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def cmd_verify(args: argparse.Namespace) -> int:
    """``weights verify NAME``: size and sha256 of every file on disk; 1 when one is missing or wrong."""
    from lookalike.metric.weights import verify_weights

    rows = verify_weights(args.name, weights=args.weights)
    bad = [r for r in rows if not r["ok"]]
    if args.json:
        _print_json({"metric": args.name, "ok": not bad, "files": rows})
    elif not rows:
        print(f"metric {args.name!r} needs no weight files")
    else:
        for r in rows:
            if not r["present"]:
                print(f"MISSING {r['path']}")
                continue
            status = "ok" if r["ok"] else "BAD"
            detail = f"size {_fmt_size(r['size'])} ({r['size_status']}), sha256 {r['sha256']}"
            print(f"{status:8}{r['path']}: {detail}, at {r['location']}")
            if r["size_status"] == "mismatch":
                print(f"        expected {r['expected_size']} bytes, got {r['size']}")
            if r["sha256"] == "mismatch":
                print(f"        expected sha256 {r['expected_sha256']}, got {r['actual_sha256']}")
        if bad:
            fix = f"lookalike weights download {args.name}"
            if any(r["present"] for r in bad):
                fix = f"delete the BAD files, then run: {fix}"
            print(f"{len(bad)} of {len(rows)} file(s) missing or wrong; {fix}")
    return 1 if bad else 0


def cmd_path(args: argparse.Namespace) -> int:
    """``weights path NAME``: where each file is or would be downloaded, and its source URL."""
    from lookalike.metric.weights import weights_paths

    rows = weights_paths(args.name, weights=args.weights)
    if args.json:
        _print_json({"metric": args.name, "files": rows})
    elif not rows:
        print(f"metric {args.name!r} needs no weight files")
    else:
        for r in rows:
            state = f"found in {r['found_in']}" if r["present"] else "not downloaded"
            src = f"from {r['source']}" if r["source"] else "no public URL"
            if r["archive_url"]:
                src = f"from {r['member']} inside {r['archive_url']}"
            print(f"{r['location']}  ({state}; {src})")
    return 0
