"""``lookalike import``: a thin wrapper over ``lookalike.indexer.import_embeddings``."""

from __future__ import annotations

import argparse
import json
import sys

from lookalike.app.cli import CliError
from lookalike.app.cli_index import add_build_flags, build_config

_EPILOG = """examples:
  lookalike import embeddings/ --index idx --metric dreamsim --root ~/Pictures      (*.npy + paths.txt)
  lookalike import vectors.parquet --index idx --metric clip_vitb32 --vector-column emb
  lookalike import clip_out/ --index idx --metric my-clip-l14 --normalize           (img_emb/ + metadata/)
  lookalike import clip_out/ --index idx --metric my-clip-l14 --storage fp16 --max-memory 4G   (large collections)
Rows are checked (dimension, finite, unit norm) and land as shards; missing image files are recorded as
"missing". Re-running the same import skips the rows already imported. Then: lookalike search / dedup --index idx."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``import`` subcommand."""
    p = subparsers.add_parser("import", help="import embeddings computed elsewhere (npy, Parquet, clip-retrieval)",
                              epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                              description="Bring your own embeddings: .npy shards with a paths file, Parquet with a "
                              "path and a vector column, or the clip-retrieval layout (img_emb/img_emb_N.npy + "
                              "metadata/metadata_N.parquet, column image_path).")
    p.add_argument("embeddings", metavar="EMBEDDINGS", help="a .npy / .parquet file or a folder of them")
    p.add_argument("--index", required=True, metavar="DIR", help="index folder (created if missing)")
    p.add_argument("--db", default=None, metavar="URL",
                   help="SQLAlchemy URL of the catalog (default: catalog.sqlite in the index folder)")
    p.add_argument("--metric", required=True, metavar="NAME",
                   help="the metric that made the embeddings: a registered name (with its weights here, queries by "
                        "image work) or any name for an outside model")
    p.add_argument("--format", default="auto", choices=["auto", "npy", "parquet", "clip-retrieval"],
                   help="layout of EMBEDDINGS (default: detected)")
    p.add_argument("--paths", default=None, metavar="FILE",
                   help="npy: the paths file, one per row (default: STEM.paths.txt per shard, else paths.txt)")
    p.add_argument("--path-column", default=None, metavar="COL", help="Parquet: the path column (default: path, "
                   "image_path, filepath...)")
    p.add_argument("--vector-column", default=None, metavar="COL", help="Parquet: the vector column (default: "
                   "vector, embedding, emb...)")
    p.add_argument("--root", default=None, metavar="DIR",
                   help="folder the images live under: relative paths start there, and a later 'lookalike index "
                        "DIR' recognises the imported images (default: the current directory)")
    p.add_argument("--normalize", action="store_true", help="normalise rows that are not unit vectors (default: "
                   "such rows are an error)")
    add_build_flags(p, unit="rows")
    p.add_argument("--fp16", action="store_true", help=argparse.SUPPRESS)  # deprecated alias of --storage fp16
    p.add_argument("--chunk-rows", type=int, default=65_536, metavar="N", help="rows read at a time (default 65536)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_import)


def run_import(args: argparse.Namespace) -> int:
    from lookalike.indexer import ImportOptions, import_into

    if args.fp16:
        if args.storage == "fp32":
            raise CliError("--fp16 and --storage fp32 contradict each other; --fp16 is the old name of --storage fp16")
        print("warning: --fp16 is deprecated; use --storage fp16 (the same flag as 'lookalike index')",
              file=sys.stderr)
    options = ImportOptions(format=args.format, paths=args.paths, path_column=args.path_column,
                            vector_column=args.vector_column, root=args.root, normalize=args.normalize,
                            chunk_rows=args.chunk_rows)
    summary = import_into(args.embeddings, args.index, metric=args.metric,
                          config=build_config(args, storage="fp16" if args.fp16 else None), options=options,
                          progress=not args.no_progress and not args.json)
    print(json.dumps(summary.as_dict(), indent=1) if args.json else summary.format_text())
    return 0
