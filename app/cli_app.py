"""``lookalike app``: start the Streamlit web app on an index (headless, bound to 127.0.0.1 unless asked)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from lookalike.app.cli import CliError
from lookalike.app.settings import (
    DEFAULT_MAX_UPLOAD_MB,
    ENV_DB,
    ENV_IMAGENET_R,
    ENV_INDEX,
    ENV_MAX_UPLOAD_MB,
    ENV_NIGHTS,
)

_EPILOG = """examples:
  lookalike app --index ~/pictures.idx                 then open http://127.0.0.1:8501
  lookalike app --index idx --port 8600
  lookalike app --index idx --nights ~/data/nights --imagenet-r ~/data/imagenet-r
  lookalike app --index idx --host 0.0.0.0             reachable from other machines: only on a trusted network
With no index at DIR yet, the app explains how to build one and can index a folder you type."""

APP_SCRIPT = Path(__file__).with_name("streamlit_app.py")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``app`` subcommand."""
    p = subparsers.add_parser("app", help="start the web app (search, compare metrics, duplicates, datasets)",
                              description="Start the Streamlit app on an index folder and print its URL.",
                              epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", required=True, metavar="DIR", help="index folder (need not exist yet)")
    p.add_argument("--db", default=None, metavar="URL", help="catalog URL when it is not the SQLite file in --index")
    p.add_argument("--port", type=int, default=8501, help="port (default 8501)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes the app)")
    p.add_argument("--nights", metavar="DIR", default=None, help="NIGHTS folder (with data.csv) for Datasets")
    p.add_argument("--imagenet-r", metavar="DIR", default=None, help="ImageNet-R folder for Datasets")
    p.add_argument("--max-upload-mb", type=int, default=DEFAULT_MAX_UPLOAD_MB,
                   help=f"largest upload in MB (default {DEFAULT_MAX_UPLOAD_MB})")
    p.set_defaults(func=run_app)


def streamlit_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The ``streamlit run`` command line and environment for ``args``."""
    if not 0 < args.port < 65536:
        raise CliError(f"--port must be in 1..65535, got {args.port}")
    if args.max_upload_mb < 1:
        raise CliError(f"--max-upload-mb must be >= 1, got {args.max_upload_mb}")
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(APP_SCRIPT),
        "--server.headless", "true",
        "--server.address", args.host,
        "--server.port", str(args.port),
        "--server.maxUploadSize", str(args.max_upload_mb),
        "--server.fileWatcherType", "none",
        "--server.runOnSave", "false",
        "--server.enableStaticServing", "false",
        "--browser.gatherUsageStats", "false",
        "--client.showErrorDetails", "none",
        "--client.toolbarMode", "minimal",
    ]
    env = dict(os.environ)
    env[ENV_INDEX] = str(Path(args.index).expanduser().absolute())
    env[ENV_MAX_UPLOAD_MB] = str(args.max_upload_mb)
    if getattr(args, "db", None):
        env[ENV_DB] = args.db
    else:
        env.pop(ENV_DB, None)
    for var, value in ((ENV_NIGHTS, args.nights), (ENV_IMAGENET_R, args.imagenet_r)):
        if value:
            env[var] = str(Path(value).expanduser().absolute())
        else:
            env.pop(var, None)
    return cmd, env


def run_app(args: argparse.Namespace) -> int:
    """Run Streamlit in the foreground until it exits or Ctrl-C."""
    cmd, env = streamlit_command(args)
    shown = "localhost" if args.host in ("0.0.0.0", "::") else args.host
    host = f"[{shown}]" if ":" in shown else shown
    print(f"lookalike app: http://{host}:{args.port}  (index {env[ENV_INDEX]}; Ctrl-C to stop)", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: bound to {args.host}: anyone who can reach this machine can use the app", file=sys.stderr)
    proc = subprocess.Popen(cmd, env=env)
    previous = signal.signal(signal.SIGTERM, lambda *_: proc.terminate())  # stopping us stops the server
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
