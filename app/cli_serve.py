"""``lookalike serve``: the REST search service (app/service/) under uvicorn; loopback unless a token is given."""

from __future__ import annotations

import argparse
import ipaddress
import os
from pathlib import Path

ENV_TOKEN = "LOOKALIKE_SERVE_TOKEN"
MIN_TOKEN_CHARS = 16

_EPILOG = f"""examples:
  lookalike serve --index ~/pictures.idx                       http://127.0.0.1:8000 (docs at /docs)
  curl -F image=@query.jpg -F k=5 http://127.0.0.1:8000/search
  curl -H 'Content-Type: application/json' -d '{{"id": 42, "k": 5}}' http://127.0.0.1:8000/search
  {ENV_TOKEN}=$(python -c 'import secrets; print(secrets.token_urlsafe(32))') \\
    lookalike serve --index idx --host 0.0.0.0                other machines: only with a token
  curl -H "Authorization: Bearer $TOKEN" -F image=@q.jpg http://HOST:8000/search

Binds to 127.0.0.1 unless --host says otherwise, and refuses any other address without a token
(--token T or ${ENV_TOKEN}; at least {MIN_TOKEN_CHARS} characters). With a token, every endpoint except
/health and the docs needs 'Authorization: Bearer T'."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``serve`` subcommand."""
    p = subparsers.add_parser("serve", help="REST search service over an index (FastAPI; docs at /docs)",
                              description="Serve search, compare, duplicates and images of one index over HTTP.",
                              epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", required=True, metavar="DIR", help="index folder")
    p.add_argument("--metric", metavar="NAME", help="which metric's vectors, when the index holds several")
    p.add_argument("--db", metavar="URL", help="catalog URL when it is not the SQLite file in --index")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; any other address needs a token)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--token", default=None,
                   help=f"bearer token clients must send (default ${ENV_TOKEN}; prefer the variable: "
                        f"a flag shows in the process list)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest uploaded file in MB (default 20)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="largest upload in pixels, checked before decoding (default 50,000,000)")
    p.add_argument("--device", help="device for embedding uploads: cuda, mps or cpu (default: best available)")
    p.add_argument("--follow-links", action="store_true",
                   help="also serve indexed files whose real location is outside their indexed folder (symbolic "
                        "links; for indexes built with 'lookalike index --follow-links'); refused by default")
    p.set_defaults(func=run_serve)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost"."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_token(args: argparse.Namespace) -> str | None:
    """The token from --token or the environment; refuses a short one and a non-loopback host without one.

    Raises:
        InvalidArgument: (a ValueError) a token under MIN_TOKEN_CHARS characters, or a non-loopback --host and no
            token.
    """
    from lookalike.common.errors import InvalidArgument

    token = args.token if args.token is not None else os.environ.get(ENV_TOKEN) or None
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise InvalidArgument(f"the token has {len(token)} characters; use at least {MIN_TOKEN_CHARS}",
                              hint="make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    if token is None and not is_loopback(args.host):
        raise InvalidArgument(f"refusing to bind {args.host} without a token: anyone who can reach this machine "
                              f"could read the indexed images",
                              hint=f"set {ENV_TOKEN} (or --token T; clients then send 'Authorization: Bearer T'), "
                                   f"or bind 127.0.0.1")
    return token


def run_serve(args: argparse.Namespace) -> int:
    """Open the index, load its metric, and serve until Ctrl-C."""
    from lookalike.common.errors import InvalidArgument, MissingDependency

    if not 0 < args.port < 65536:
        raise InvalidArgument(f"--port must be in 1..65535, got {args.port}")
    if args.max_upload_mb <= 0:
        raise InvalidArgument(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    token = resolve_token(args)
    try:
        import uvicorn

        from lookalike.app.service import ServeConfig, create_app
    except ImportError as e:  # printed by the CLI as one line
        raise MissingDependency(f"'lookalike serve' needs the serve extra ({e.name or e} is not installed): "
                                f"pip install 'lookalike[serve]'") from None
    from lookalike.app.views import UPLOAD_MAX_PIXELS

    cfg = ServeConfig(index_dir=Path(args.index).expanduser().absolute(), metric=args.metric, db_url=args.db,
                      device=args.device, token=token, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                      max_pixels=args.max_pixels or UPLOAD_MAX_PIXELS, follow_links=args.follow_links)
    app = create_app(cfg)
    holder = app.state.holder
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"lookalike serve: http://{shown}:{args.port}  (index {cfg.index_dir}, {holder.metric.name}, "
          f"{holder.get().vectors.ntotal} vectors; docs at /docs; token {'required' if token else 'off'}; "
          f"Ctrl-C to stop)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False, server_header=False)
    return 0
