"""``lookalike index | search | check``: thin wrappers over ``lookalike.indexer`` (``dedup`` and ``label`` live in
``cli_dedup``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING

from lookalike.app.cli import Loading, placement

if TYPE_CHECKING:
    from lookalike.indexer import BuildConfig

_INDEX_EPILOG = """examples:
  lookalike index ~/Pictures --index ~/pictures.idx
  lookalike index photos/ scans/ --index idx --metric efficientnet_lite0 --batch-size 64 --workers 4
  lookalike index ~/Pictures --index idx --faiss HNSW32 --json
  lookalike index ~/Pictures --index idx --fast-decode        (faster on large JPEGs; not bit-exact)
  lookalike index /data/crawl --index idx --max-memory 4G --storage fp16   (large collections)
  lookalike index ~/Pictures --index idx --repair              (first repair damaged index files)
  lookalike index /data/crawl --index idx --ray                (decode + embed on Ray; pip install "lookalike[ray]")
  lookalike index /data/crawl --index idx --ray=HEAD:6379      (a running Ray cluster)
Re-running on the same folders only embeds what is new or changed; moved files are relinked by content hash.
The run can be interrupted (Ctrl-C, kill) at any moment and resumed by running it again."""

_SEARCH_EPILOG = """examples:
  lookalike search query.jpg --index idx -k 5
  lookalike search holidays/IMG_0042.jpg --index idx --json     (an indexed path, relative to its root)
  lookalike search query.jpg --index idx --rerank lpips_vgg --rerank-k 50
  lookalike search query.jpg --index idx --rerank diffsim --rerank-weights ~/models/stable-diffusion-v1-5
Distances are 1 - cosine of the embeddings: lower = more similar (0 = same embedding). With --rerank the top
--rerank-k results are re-scored pairwise by that metric and re-ordered by it (its own direction)."""

_CHECK_EPILOG = """examples:
  lookalike check --index idx                  (sha256 of every shard and search file against the catalog)
  lookalike check --index idx --repair         (restore / rebuild / re-embed what can be; says what could not)
The search file is rebuilt from the shards without re-embedding; a lost shard's images are embedded again, in the
precision the index recorded; a damaged catalog is restored from catalog.sqlite.bak (refreshed by every 'lookalike
index' / 'lookalike import' run); a folder written by an older lookalike is upgraded."""


def _add_catalog_flags(p: argparse.ArgumentParser, *, required_index: bool = True) -> None:
    p.add_argument("--index", required=required_index, metavar="DIR", help="index folder")
    p.add_argument("--db", default=None, metavar="URL",
                   help="SQLAlchemy URL of the catalog (default: catalog.sqlite in the index folder)")


def add_build_flags(p: argparse.ArgumentParser, *, unit: str) -> None:
    """The build options every writer shares (``lookalike.indexer.BuildConfig``), under the same names for
    ``index`` and ``import``; ``unit`` is what a checkpoint counts ("images" or "rows")."""
    p.add_argument("--faiss", default=None, metavar="FACTORY",
                   help="search structure of a new index: Flat (exact) or a FAISS factory string (HNSW32, "
                        "IVF4096,Flat, IVF4096,SQ8...) (default auto: exact up to 50k vectors, beyond an inverted "
                        "file of 8-bit codes with about sqrt(n) lists, re-ranked from the stored vectors)")
    p.add_argument("--storage", default=None, choices=["fp32", "fp16"],
                   help="vector storage of a new index: fp32 (default) or fp16 (half the disk and page cache)")
    p.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="memory budget of the search structure, e.g. 4G: exact search while the vectors fit it, "
                        "else an inverted file whose codes fit (SQ8, else PQ of at most 96 bytes), re-ranked "
                        "from the stored vectors; 'lookalike info' says what was chosen (default: no budget)")
    p.add_argument("--compact-at", type=float, default=None, metavar="SHARE",
                   help="rewrite a shard once this share of its rows belongs to removed images (default 0.25)")
    p.add_argument("--dedup-threshold", type=float, default=None, metavar="T",
                   help="store T as the default 'lookalike dedup --threshold' of this index and metric")
    zero, default = (("every batch", "65,536 images or 30 s") if unit == "images" else
                     ("every chunk read", "one shard per --chunk-rows rows read"))
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                   help=f"{unit} between checkpoints, each one new shard file (0 = {zero}; default {default})")


def build_config(args: argparse.Namespace, *, storage: str | None = None) -> BuildConfig:
    """The ``BuildConfig`` of the flags ``add_build_flags`` added (and ``--db``)."""
    from lookalike.indexer import BuildConfig

    return BuildConfig(faiss=args.faiss, storage=storage or args.storage, max_memory=args.max_memory,
                       dedup_threshold=args.dedup_threshold, checkpoint_every=args.checkpoint_every,
                       db_url=args.db, **({"compact_at": args.compact_at} if args.compact_at is not None else {}))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``index``, ``search`` and ``check`` subcommands."""
    fmt = argparse.RawDescriptionHelpFormatter

    p = subparsers.add_parser("index", help="index image folders (incremental, crash-safe)", epilog=_INDEX_EPILOG,
                              formatter_class=fmt, description="Scan folders, embed new or changed images, drop "
                              "removed ones and keep a FAISS + SQLite index up to date.")
    p.add_argument("roots", nargs="+", metavar="ROOT", help="image folders")
    _add_catalog_flags(p)
    p.add_argument("--metric", default=None, help="embedding metric (see 'lookalike info'; default: the index's own "
                   "metric, dreamsim for a new index)")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="precision (default auto: an existing index keeps the precision it recorded; a new one gets "
                        "bf16 where the device runs it natively - CUDA compute capability >= 8, CPUs with AMX / "
                        "AVX-512 BF16 - else fp32; 'lookalike info' says which). The dtype is recorded with the "
                        "index; fp32 is the exact path")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per batch (default: 32 on the CPU; on a GPU the largest power of two up to 1024 that "
                        "fits in its free memory)")
    p.add_argument("--workers", type=int, default=None,
                   help="decoding processes (default: on a GPU CPUs - 1, at most 8; on the CPU a quarter of the "
                        "cores, at least 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of the model on the CPU (default: the cores not used for decoding)")
    p.add_argument("--fast-decode", action="store_true",
                   help="faster but NOT bit-exact decoding: large JPEGs are decoded at a reduced scale (PIL draft, "
                        ">= 2x the model input), and on a CUDA device JPEGs are decoded and resized on the GPU. "
                        "Embeddings differ slightly from the default exact decode (cosine ~0.998 on "
                        "efficientnet_lite0), outside the 1e-5 parity tolerance with the DreamSim reference, "
                        "hence opt-in (default: exact PIL decode + PIL bicubic resize)")
    p.add_argument("--ray", nargs="?", const="auto", default=None, metavar="ADDRESS",
                   help="decode and embed on a Ray cluster, this process writing the index: 'auto' (the default "
                        "when the flag is given: the running cluster, else a local one for this run) or an address "
                        "(HOST:6379, ray://HOST:10001). Needs pip install \"lookalike[ray]\"")
    add_build_flags(p, unit="images")
    p.add_argument("--repair", action="store_true",
                   help="first check the index files and repair what is damaged (see 'lookalike check')")
    p.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help="decompression-bomb limit in pixels (default 178,956,970)")
    p.add_argument("--follow-links", action="store_true",
                   help="also index files behind symbolic links that lead outside ROOT (default: links are followed "
                        "only when their target lies inside ROOT; the others are skipped with a warning)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_index)

    p = subparsers.add_parser("search", help="find the indexed images most similar to an image",
                              epilog=_SEARCH_EPILOG, formatter_class=fmt)
    p.add_argument("query", metavar="QUERY", help="an image file, or the path of an indexed image")
    _add_catalog_flags(p)
    p.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    p.add_argument("--metric", default=None, help="which metric's vectors, when the index holds several")
    p.add_argument("--device", default=None, help="device for embedding the query (and for the re-ranker)")
    p.add_argument("--rerank", default=None, metavar="METRIC",
                   help="re-score the top --rerank-k results with this pairwise metric (e.g. diffsim, lpips_vgg, "
                        "ssim; 'lookalike info' lists them) and re-order them by it")
    p.add_argument("--rerank-k", type=int, default=50, metavar="K", help="results the re-ranker scores (default 50)")
    p.add_argument("--rerank-weights", default=None, metavar="DIR", help="folder searched first for the "
                   "re-ranker's weight files (e.g. a diffusers Stable Diffusion 1.5 folder for diffsim)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="precision for embedding the query (default auto, as for index)")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.set_defaults(func=run_search)

    p = subparsers.add_parser("check", help="check an index folder's files and repair them", epilog=_CHECK_EPILOG,
                              formatter_class=fmt)
    _add_catalog_flags(p)
    p.add_argument("--repair", action="store_true", help="repair what can be repaired")
    p.add_argument("--device", default=None, help="device for re-embedding the images of lost shards")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="precision of that re-embedding (default auto: the one the index recorded, where this "
                        "machine runs it natively; else fp32, and the report says so)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run_check)


class _Bars:
    """A tqdm bar per stage of ``build_index``, driven by its ``progress(stage, done, total)`` callback."""

    LABELS = {"scan": "scan", "diff": "diff", "embed": "embed", "derive": "search structure",
              "import": "import"}

    def __init__(self, *, announce_load: bool = True) -> None:
        self.bar = None
        self.stage = None
        self.announce_load = announce_load

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm.auto import tqdm

        if stage == "load":  # loading a model can take seconds: say what is happening
            self.close()
            if self.announce_load:
                print("loading the metric ...", file=sys.stderr, flush=True)
            return
        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=total or None, desc=self.LABELS.get(stage, stage),
                            unit={"embed": "img", "derive": "img", "import": "vec"}.get(stage, "file"),
                            dynamic_ncols=True, leave=stage in ("embed", "import"))
        if total and self.bar.total != total:
            self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_index(args: argparse.Namespace) -> int:
    new_index = not args.db and not os.path.isfile(os.path.join(args.index, "catalog.sqlite"))
    name = args.metric or ("dreamsim" if new_index else "the index's own metric")
    with Loading(name) as loading:
        from lookalike.data.images import DEFAULT_MAX_PIXELS
        from lookalike.indexer import EmbedOptions, check_index, index_folders

        if new_index or (args.metric and args.dtype not in (None, "auto")):
            # an existing build keeps its recorded precision under "auto": the summary names it
            loading.done(placement(name, args.device, args.dtype))

    config = build_config(args)
    options = EmbedOptions(device=args.device, dtype=args.dtype, batch_size=args.batch_size, workers=args.workers,
                           threads=args.threads, fast_decode=args.fast_decode, ray=args.ray,
                           follow_links=args.follow_links,
                           max_pixels=args.max_pixels if args.max_pixels is not None else DEFAULT_MAX_PIXELS)
    bars = _Bars(announce_load=False) if not args.no_progress and not args.json else None
    try:
        if args.repair and os.path.isdir(args.index):
            report = check_index(args.index, repair=True, db_url=args.db, device=args.device, dtype=args.dtype,
                                 progress=bars if bars is not None else False)
            if report.problems:
                print(report.format(), file=sys.stderr)
        summary = index_folders(args.roots, args.index, metric=args.metric, config=config, options=options,
                                progress=bars if bars is not None else False)
    finally:
        if bars is not None:
            bars.close()
    if args.json:
        print(json.dumps(summary.as_dict(), indent=1))
    else:
        print(summary.format())
    return 0


def run_search(args: argparse.Namespace) -> int:
    with Loading(f"index {args.index}") as loading:
        from lookalike.data.image_folder import display_path
        from lookalike.indexer import open_index, search
        from lookalike.metric import is_metric

        with open_index(args.index, metric=args.metric, db_url=args.db, device=args.device, dtype=args.dtype) as idx:
            loading.done(f"{idx.build.metric}, {placement(idx.build.metric, args.device, args.dtype)}"
                         if is_metric(idx.build.metric) else idx.build.metric)
            hits = search(idx, args.query, k=args.k, rerank=args.rerank, rerank_k=args.rerank_k,
                          rerank_weights=args.rerank_weights, device=args.device)
    if args.json:
        print(json.dumps([h.as_dict() for h in hits], indent=1))
        return 0
    if args.rerank and hits:
        way = "lower" if hits[0].lower_is_better else "higher"
        print(f"re-ranked by {hits[0].scored_by} ({way} = more similar); the index's distance beside it")
        print(f"{'#':>3}  {hits[0].scored_by:>10}  {'distance':>8}  path")
        for n, h in enumerate(hits, 1):
            print(f"{n:3d}  {h.score:10.4f}  {h.distance:8.4f}  {display_path(h.path)}")
        return 0
    print(f"{'#':>3}  {'distance':>8}  path   (1 - cosine: lower = more similar)")
    for n, h in enumerate(hits, 1):
        print(f"{n:3d}  {h.distance:8.4f}  {display_path(h.path)}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    Loading(f"index {args.index} (the sha256 of every file)", verb="checking").done()
    from lookalike.indexer import check_index

    bars = _Bars() if args.repair and not args.no_progress and not args.json else None
    try:
        report = check_index(args.index, repair=args.repair, db_url=args.db, device=args.device, dtype=args.dtype,
                             progress=bars if bars is not None else False)
    finally:
        if bars is not None:
            bars.close()
    if args.json:
        print(json.dumps(report.as_dict(), indent=1))
    else:
        print(report.format())
    return 0 if report.ok else 1
