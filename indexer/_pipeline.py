"""build_index: the scan + embed source of the writer session.

scan → diff against the catalog (``_diff``) → decode (DataLoader workers, or Ray tasks: ``_ray``) → embed → the
writer session's checkpoints (``_writer``: one shard file, then its rows) → finish (upkeep, derived structure,
backup). Crash safety is the session's: a kill loses at most the work since the last checkpoint, and the next run
reconciles and resumes.

Before anything is written, the metric is resolved against what the folder already holds: without a metric the
index's own is used (the default metric for a new index), and with ``dtype="auto"`` an existing build keeps the
precision it recorded (``_dtypes.dtype_for_build``), so an update or a repair adds vectors like the ones it holds.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from lookalike.common.errors import InvalidArgument
from lookalike.data.image_folder import display_path, scan_images
from lookalike.data.images import DEFAULT_MAX_PIXELS
from lookalike.data.loader import ImageFileDataset, create_loader, decode_raw_batch
from lookalike.data.transforms import supports_tensor_resize
from lookalike.indexer._catalog import STATUS_FAILED, STATUS_OK, Catalog
from lookalike.indexer._config import DEFAULT_METRIC, BuildConfig, EmbedOptions
from lookalike.indexer._cores import plan_cores, torch_threads
from lookalike.indexer._crash import CrashHook
from lookalike.indexer._diff import diff_scan, queue_of
from lookalike.indexer._dtypes import build_dtypes, dtype_for_build, metric_dtype, recorded_dtype
from lookalike.indexer._index import is_metric, load_vectors
from lookalike.indexer._ray import import_ray, parse_ray_address, run_on_ray
from lookalike.indexer._ray_worker import split_crash_spec
from lookalike.indexer._summary import IndexSummary, Progress, ProgressFn
from lookalike.indexer._writer import BuildWriter, WriterSession, check_index_folder, open_writer

if TYPE_CHECKING:
    from lookalike.metric import Metric

_logger = logging.getLogger(__name__)


def build_index(
    roots: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    index_dir: str | os.PathLike[str],
    *,
    metric: str | Metric | None = None,
    device: str | None = None,
    dtype: str | None = "auto",
    batch_size: int | None = None,
    workers: int | None = None,
    threads: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    fast_decode: bool = False,
    ray: bool | str | None = None,
    progress: bool | ProgressFn = True,
    crash_at: str | None = None,
    follow_links: bool = False,
    **build_options: Any,
) -> IndexSummary:
    """Index image folders, or bring an existing index up to date.

    New and changed files are embedded, removed files dropped, moved files (same content hash) relinked without
    re-embedding; re-running on an unchanged tree embeds nothing. Unreadable files are recorded with a reason and
    the run goes on. Safe to kill at any moment: the next run resumes and loses at most one checkpoint of work.
    The keyword arguments are gathered into ``EmbedOptions`` and a ``BuildConfig`` (the options every writer
    shares); ``index_folders`` takes those directly.

    Args:
        roots: one folder or several.
        index_dir: the index folder (created if missing; a non-empty folder that is not an index is refused).
            Several metrics can share it.
        metric: a metric name from ``list_metrics()`` (kind "embedding") or a loaded Metric. Default: the metric of
            the index's vectors (an error naming them when it holds several), or "dreamsim" for a new index.
        device: "cuda", "mps", "cpu" (default: cuda > mps > cpu).
        dtype: "auto" (default: for an existing build the precision it recorded when the device runs it natively,
            else fp32, and the summary says so; for a new build bf16 where the device runs it natively, else fp32;
            see ``lookalike.metric.resolve_dtype``), "fp32", "bf16", "fp16". The dtype is recorded with the build;
            a run that adds vectors of another precision to an existing build says so in ``IndexSummary.warnings``.
        batch_size: images per embedding batch (default: ``suggest_batch_size`` — 32 on the CPU, fitted to free
            memory on a GPU).
        workers: decoding processes (0 decodes in this process). Default: on a GPU, CPUs - 1 (at most 8); on the
            CPU, a quarter of the cores (at least 1), the rest left to the model (``lookalike.indexer._cores``).
        threads: torch threads of the model during the run (default: on the CPU, the cores not given to decoding;
            all of them up to 3 cores); restored afterwards.
        progress: True shows a tqdm bar; a callable is called as ``progress(stage, done, total)`` with stage "load"
            (the metric), "scan" (files found so far), "diff", "embed" (images embedded or failed), "derive" (search
            structure rows); False: nothing.
        max_pixels: decompression-bomb limit per image.
        fast_decode: faster, not bit-exact decoding: large JPEGs decoded at a reduced scale (PIL ``draft`` to at
            least twice the metric's input size), or on CUDA decoded and resized on the GPU (``decode_jpeg`` +
            antialiased bicubic). Embeddings then differ slightly from the exact path (cosine ~0.998 measured on
            efficientnet_lite0), beyond the 1e-5 parity tolerance; vectors stay comparable for search and dedup.
        ray: decode and embed on a Ray cluster (``pip install "lookalike[ray]"``): "auto" / True (the running
            cluster, else a local one for this run) or an address ("HOST:6379", "ray://HOST:10001"). This process
            stays the single writer; vectors equal the local path's. See ``lookalike.indexer._ray``.
        crash_at: test hook (see ``lookalike.indexer._crash``); also read from ``$LOOKALIKE_CRASH_AT``.
        follow_links: also index files behind symbolic links that lead outside their root (by default such links
            are skipped and logged; links inside the root are followed; see ``lookalike.data.image_folder``).
        **build_options: the options every writer shares, the fields of ``BuildConfig`` (documented there):
            ``faiss`` (the search structure: "auto" by default, "Flat" or a FAISS factory string), ``storage``
            ("fp32" / "fp16"), ``max_memory`` ("4G"), ``compact_at``, ``dedup_threshold``, ``checkpoint_every``
            (images per checkpoint; default 65,536 or 30 s) and ``db_url`` (the catalog; default
            ``catalog.sqlite`` in the folder). A misspelt one is a TypeError.

    Returns:
        An IndexSummary.

    Raises:
        FileNotFoundError: a root folder does not exist.
        ValueError: a pairwise-only metric, an index built with another dimension, FAISS type or storage, another
            writer, a folder that is not an index; ``IndexDamaged`` (a ValueError) for a damaged index file (repair
            with ``check_index``).
        OSError: a shard could not be written (disk full...); the previous index stays intact.
    """
    config = BuildConfig(**build_options)
    options = EmbedOptions(device=device, dtype=dtype, batch_size=batch_size, workers=workers, threads=threads,
                           max_pixels=max_pixels, fast_decode=fast_decode, ray=ray, crash_at=crash_at,
                           follow_links=follow_links)
    return index_folders(roots, index_dir, metric=metric, config=config, options=options, progress=progress)


def index_folders(roots: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], index_dir: str | os.PathLike[str],
                  *, metric: str | Metric | None = None, config: BuildConfig | None = None,
                  options: EmbedOptions | None = None, progress: bool | ProgressFn = True) -> IndexSummary:
    """``build_index`` with its options as objects (see there)."""
    t_start = time.perf_counter()
    config, options = config or BuildConfig(), options or EmbedOptions()
    ray_address = parse_ray_address(options.ray)
    crash_spec, worker_crash = options.crash_at, None
    if ray_address is not None:
        import_ray()  # before any work: without Ray, say how to get it
        crash_spec, worker_crash = split_crash_spec(crash_spec)
    crash = CrashHook(crash_spec)
    abs_roots = _check_roots(roots)
    index_path = Path(index_dir)
    check_index_folder(index_path, db_url=config.db_url)
    report = Progress(progress, "")
    # The model loads before the folder is created: a missing weight file leaves nothing behind.
    m, note = load_index_metric(index_path, metric, options, db_url=config.db_url, report=report,
                                on_cpu=ray_address is not None)
    report.name = f"index {m.name}"
    with open_writer(index_path, config, crash=crash) as session:
        summary = index_roots(session, abs_roots, m, options, report=report, ray_address=ray_address,
                              worker_crash=worker_crash)
    if note:
        summary.warnings.insert(0, note)
    summary.seconds["total"] = time.perf_counter() - t_start
    _logger.info("indexed: %s", summary.format().replace("\n", " | "))
    return summary


def _check_roots(roots: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[str]:
    root_list = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
    if not root_list:
        raise InvalidArgument("no folder to index; give at least one root")
    out = []
    for r in root_list:
        a = os.path.abspath(os.fspath(r))
        if not os.path.exists(a):
            raise FileNotFoundError(f"folder to index not found: {display_path(a)}")
        if not os.path.isdir(a):
            raise InvalidArgument(f"index roots must be folders, got a file: {display_path(a)}")
        out.append(a)
    return out


def _peek_builds(index_dir: Path, db_url: str | None) -> list[tuple[str, str, dict[str, int]]]:
    """(metric, fingerprint, {dtype: vectors}) of the builds already in the folder (read only, before the lock)."""
    if db_url is None and not (index_dir / "catalog.sqlite").is_file():
        return []
    try:
        cat = Catalog(index_dir, db_url=db_url, any_version=True)
    except FileNotFoundError:
        return []
    with cat:
        return [(b.metric, b.fingerprint, build_dtypes(cat, b.fingerprint)) for b in cat.builds()]


def load_index_metric(index_dir: Path, metric: str | Metric | None, options: EmbedOptions, *,
                      db_url: str | None = None, report: Progress | None = None, on_cpu: bool = False,
                      fingerprint: str | None = None) -> tuple[Metric, str | None]:
    """The metric to embed with, and a note for the summary: the index's own metric when ``metric`` is None, loaded
    in the precision its build recorded when ``options.dtype`` is "auto" (see ``_dtypes.dtype_for_build``).

    Args:
        fingerprint: the build to match (a repair); default the most recent build of the metric's name.
        on_cpu: load on the CPU whatever ``options.device`` says (the Ray driver only needs the metric's facts).
    """
    builds = _peek_builds(index_dir, db_url)
    if metric is None:
        names = sorted({name for name, _, _ in builds})
        if len(names) > 1:
            raise InvalidArgument(f"index {index_dir} holds vectors of several metrics ({', '.join(names)}); say "
                                  f"which one to update", hint=f"name the metric, e.g. {names[0]}")
        metric = names[0] if names else DEFAULT_METRIC
    m: Metric
    if is_metric(metric):
        m = cast("Metric", metric)
    else:
        from lookalike.metric import get_device, load_metric

        device = "cpu" if on_cpu else options.device
        mine = [d for name, fp, d in builds if (fp == fingerprint if fingerprint else name == metric)]
        dtype, note = dtype_for_build(recorded_dtype(mine[-1]) if mine else None, options.dtype,
                                      get_device(device), str(metric))
        if report is not None:
            report("load", 0, 0)
        m = load_metric(str(metric), device=device, dtype=dtype)
    if m.kind != "embedding" or not m.dim:
        raise InvalidArgument(f"metric {m.name!r} is pairwise (it compares two images) and cannot be indexed; "
                              f"choose an embedding metric such as 'dreamsim' or 'efficientnet_lite0'")
    return m, (note if not is_metric(metric) else None)


def index_roots(session: WriterSession, roots: list[str], m: Metric, options: EmbedOptions, *,
                report: Progress, ray_address: str | None = None, worker_crash: str | None = None) -> IndexSummary:
    """Scan ``roots``, diff them against the catalog and embed what needs a vector of ``m``, through ``session``."""
    crash = session.crash
    batch_size = options.batch_size
    if batch_size is None and ray_address is None:  # with Ray: fitted on a worker's GPU (see _ray)
        from lookalike.metric import suggest_batch_size

        batch_size = suggest_batch_size(m)  # CPU: 32; CUDA: the largest power of two that fits
    bw = session.open_build(m.fingerprint, m.name, int(m.dim))
    summary = IndexSummary(index_dir=str(session.index_dir), metric=m.name, fingerprint=m.fingerprint)
    summary.reconciled = bw.reconciled
    load_vectors(session.catalog, bw.build)  # a damaged shard or search file stops the run here, naming the file

    t = time.perf_counter()
    report("scan", 0, 0)
    scan = scan_images(roots, outside_links=options.follow_links, progress=lambda n: report("scan", n, 0))
    summary.scanned, summary.scan_errors = len(scan.files), len(scan.errors)
    summary.seconds["scan"] = time.perf_counter() - t
    report("scan", summary.scanned, summary.scanned)

    t = time.perf_counter()
    report("diff", 0, summary.scanned)
    diff_scan(session.catalog, roots, scan.files, summary)  # removed / changed vectors are tombstoned in its commit
    queue = queue_of(session.catalog, roots, bw.fingerprint)
    summary.seconds["diff"] = time.perf_counter() - t
    report("diff", summary.scanned, summary.scanned)
    crash("scan")
    _logger.info("scan: %d files (%d new, %d changed, %d moved, %d removed); %d to embed", summary.scanned,
                 summary.new, summary.changed, summary.moved, summary.removed, len(queue))

    draft_size = 2 * m.input_size if options.fast_decode else None
    device_decode = _device_decode(m, options.fast_decode)
    summary.decoder = "device" if device_decode else "draft" if options.fast_decode else "exact"
    summary.dtype = metric_dtype(m)
    if queue:
        note = bw.declare_dtype(summary.dtype)
        if note:
            summary.warnings.append(note)
    report("embed", 0, len(queue))
    plan = plan_cores(m.device, workers=options.workers, threads=options.threads)
    try:
        if queue and ray_address is not None:  # decode + embed on Ray; this process stays the single writer
            summary.decoder = "ray, " + ("draft" if options.fast_decode else "exact")
            run_on_ray(queue, m, bw, summary, address=ray_address, batch_size=batch_size,
                       max_pixels=options.max_pixels, draft_size=draft_size, report=report, crash=crash,
                       worker_crash=worker_crash)
        elif queue:
            assert batch_size is not None
            with torch_threads(plan.threads):
                _embed_local(queue, m, bw, summary, batch_size=batch_size, workers=plan.workers,
                             prefetch=plan.prefetch, options=options, draft_size=draft_size,
                             device_decode=device_decode, report=report)
    finally:
        report.close()
    upkeep = bw.finish(progress=lambda d, n: report("derive", d, n))
    summary.embedded, summary.checkpoints = bw.stats.vectors, bw.stats.checkpoints
    summary.seconds["write"] = bw.stats.seconds
    summary.factory = upkeep.factory
    summary.total_vectors = bw.live_vectors()
    return summary


def _embed_local(queue: list[tuple[int, str]], m: Metric, bw: BuildWriter, summary: IndexSummary, *,
                 batch_size: int, workers: int, prefetch: int, options: EmbedOptions, draft_size: int | None,
                 device_decode: bool, report: Progress) -> None:
    """Decode in DataLoader workers, embed in this process, push each batch to the build writer."""
    crash = bw.session.crash
    dataset = ImageFileDataset(queue, m.preprocess, max_pixels=options.max_pixels, draft_size=draft_size,
                               raw_jpeg=device_decode)
    summary.workers = min(workers, max(0, len(queue) // batch_size))
    summary.threads = torch.get_num_threads()
    loader = create_loader(dataset, batch_size=batch_size, workers=summary.workers, prefetch=prefetch,
                           pin_memory=m.device.type == "cuda")
    it = iter(loader)
    done = 0
    try:
        while True:
            t = time.perf_counter()
            batch = next(it, None)
            if batch is not None and batch.raw:
                batch = decode_raw_batch(batch, m.cfg.preprocess, m.device, m.preprocess,
                                         max_pixels=options.max_pixels, draft_size=draft_size)
                _sync(m.device)
            summary.seconds["decode"] += time.perf_counter() - t
            if batch is None:
                break
            crash("decode")
            vecs = None
            if batch.pixels is not None:
                t = time.perf_counter()
                x = batch.pixels.to(m.device, non_blocking=True)
                _sync(m.device)
                t1 = time.perf_counter()
                summary.seconds["transfer"] += t1 - t
                with torch.inference_mode():
                    vecs = m.embed(x).float().cpu().numpy()
                summary.seconds["model"] += time.perf_counter() - t1
                crash("embed")
            ok = [{"id": i.key, "status": STATUS_OK, "error": None, "width": i.width, "height": i.height,
                   "format": i.format[:16]} for i in batch.infos]
            failed = [{"id": f.key, "status": STATUS_FAILED, "error": f.reason} for f in batch.failures]
            for f in batch.failures:
                summary.failed += 1
                summary.failures.append((display_path(f.path), f.reason))
            bw.push(batch.keys, vecs, ok, failed)
            done += len(batch)
            report("embed", done, len(queue))
    finally:
        del it


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that stage timings are the stage's own."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_decode(m: Metric, fast_decode: bool) -> bool:
    """Decode JPEGs on the GPU: with ``fast_decode`` on a CUDA metric whose preprocessing the tensor resize
    reproduces (``supports_tensor_resize``) and a torchvision that can decode JPEGs."""
    if not fast_decode or m.device.type != "cuda":
        return False
    if not supports_tensor_resize(m.cfg.preprocess):
        return False
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError:
        _logger.info("torchvision is not installed: JPEGs are decoded on the CPU (PIL draft)")
        return False
    return True

