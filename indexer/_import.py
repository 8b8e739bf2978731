"""``lookalike import``: embeddings computed elsewhere land in an index as shards, through the writer session.

The readers (``_readers``) stream the input in chunks. Every row is checked before it lands: the dimension (the
metric's, or the index's, or the first file's), finite values, unit norm (within ``1e-3``; rows are normalised on
the way in with ``normalize=True``), and whether the image file exists (missing files are kept, with status
"missing": their vectors are searchable, they cannot be shown or re-embedded). Rows that cannot be used (NaN / inf, a
zero vector) are catalogued as failed with the reason, like an unreadable image.

Each chunk's image rows are committed first (new paths inserted, known ones updated), then its vectors go to the
writer session, whose checkpoints write a shard and commit its vector rows (by default one checkpoint per chunk;
``checkpoint_every`` sets another size). A killed import therefore leaves image rows whose vectors did not land, and
re-running it lands exactly those: rows whose image already has a vector of the build are skipped.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from lookalike.common.errors import IndexMismatch, InvalidArgument
from lookalike.data.image_folder import display_path
from lookalike.indexer._bulk import drop_path_index, ensure_path_index
from lookalike.indexer._catalog import ImageRow
from lookalike.indexer._config import DEFAULT_CHUNK_ROWS, BuildConfig, ImportOptions
from lookalike.indexer._crash import CrashHook
from lookalike.indexer._import_rows import Seen, land
from lookalike.indexer._readers import read_embeddings
from lookalike.indexer._summary import ImportSummary, Progress
from lookalike.indexer._writer import BuildWriter, check_index_folder, open_writer

_logger = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,100}$")


def import_embeddings(
    source: str | os.PathLike[str],
    index_dir: str | os.PathLike[str],
    *,
    metric: Any,
    format: str = "auto",
    paths: str | os.PathLike[str] | None = None,
    path_column: str | None = None,
    vector_column: str | None = None,
    root: str | os.PathLike[str] | None = None,
    normalize: bool = False,
    check_files: bool = True,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: bool = False,
    crash_at: str | None = None,
    **build_options: Any,
) -> ImportSummary:
    """Import embeddings computed elsewhere into an index folder, as shards of one metric's vectors.

    The keyword arguments are gathered into ``ImportOptions`` and a ``BuildConfig`` (the build options every writer
    shares); ``import_into`` takes those directly.

    Args:
        source: a ``.npy`` / ``.parquet`` file, a folder of them, or a clip-retrieval output folder.
        index_dir: the index folder (created if missing; a non-empty folder that is not an index is refused).
        metric: the metric that made the embeddings: a registered name (its weights, when present, give the real
            fingerprint, so queries by image work), a loaded Metric, or any other name for an outside model.
        format: "auto", "npy", "parquet" or "clip-retrieval" (see ``lookalike.indexer._readers``).
        paths: the paths file of ``npy`` embeddings (default: ``<stem>.paths.txt`` per shard, else ``paths.txt``).
        path_column: the path column of Parquet embeddings (default: path, image_path, filepath...).
        vector_column: the vector column of Parquet embeddings (default: vector, embedding, emb...).
        root: the folder the images live under: relative paths are taken from it and the images are catalogued
            under it (so that ``build_index(root, ...)`` later recognises them). Default: relative paths are taken
            from the current directory and each image is catalogued under its own folder.
        normalize: normalise rows that are not unit vectors (default: such rows are an error).
        check_files: stat each image file (missing ones get status "missing"); False records them all as missing
            without touching the disk (for synthetic benchmarks).
        chunk_rows: rows per read (and per shard, unless ``checkpoint_every`` says otherwise).
        progress: show a tqdm bar.
        crash_at: test hook (see ``lookalike.indexer._crash``).
        **build_options: the options every writer shares, the fields of ``BuildConfig`` under the names
            ``build_index`` takes them: ``faiss``, ``storage``, ``max_memory``, ``compact_at``,
            ``dedup_threshold``, ``checkpoint_every`` (rows per shard) and ``db_url``. A misspelt one is a
            TypeError.

    Returns:
        An ImportSummary.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: an unknown layout, a file that does not fit (other dimension, misaligned paths, a non-unit row
            without ``normalize``), or another writer on the folder; rows landed before the error stay.
    """
    config = BuildConfig(**build_options)
    options = ImportOptions(format=format, paths=paths, path_column=path_column, vector_column=vector_column,
                            root=root, normalize=normalize, check_files=check_files, chunk_rows=chunk_rows)
    return import_into(source, index_dir, metric=metric, config=config, options=options, progress=progress,
                       crash_at=crash_at)


def import_into(source: str | os.PathLike[str], index_dir: str | os.PathLike[str], *, metric: Any,
                config: BuildConfig | None = None, options: ImportOptions | None = None, progress: bool = False,
                crash_at: str | None = None) -> ImportSummary:
    """``import_embeddings`` with its options as objects (see there)."""
    t0 = time.perf_counter()
    config, options = config or BuildConfig(), options or ImportOptions()
    crash = CrashHook(crash_at)
    index_path = Path(index_dir)
    check_index_folder(index_path, db_url=config.db_url)
    name, fingerprint, dim = _resolve_metric(metric)
    fmt, chunks = read_embeddings(source, options)
    root_abs = os.path.abspath(os.fspath(options.root)) if options.root is not None else None
    if root_abs is not None and not os.path.isdir(root_abs):
        raise FileNotFoundError(f"image root not found: {display_path(root_abs)}")
    fp = fingerprint or f"{name}-import"
    summary = ImportSummary(index_dir=str(index_path), metric=name, fingerprint=fp, format=fmt)
    report = Progress(progress, f"import {name}", stage="import", unit="vec")
    with open_writer(index_path, config, crash=crash) as session:
        existing = session.find_build(fp)
        if existing is not None:
            if dim is not None and existing.dim != dim:
                raise IndexMismatch(f"index {index_path} holds {existing.dim}-d vectors for {fp} but {name!r} "
                                    f"gives {dim}-d vectors", hint="use another index folder")
            dim = existing.dim
        with session.catalog.session() as s:
            seen = Seen(prior_rows=s.scalar(select(ImageRow.id).limit(1)) is not None)
        # a fresh import builds the unique path index once, after its rows (see _bulk)
        deferred = not seen.prior_rows and drop_path_index(session.catalog)
        bw: BuildWriter | None = None
        files: set[str] = set()
        base = os.getcwd()
        try:
            t = time.perf_counter()
            for chunk in chunks:
                summary.seconds["read"] += time.perf_counter() - t
                files.add(chunk.source)
                summary.rows += len(chunk.paths)
                if bw is None:
                    dim = dim or (int(chunk.xb.shape[1]) if chunk.xb.ndim == 2 else 0)
                    bw = session.open_build(fp, name, dim)
                land(session.catalog, bw, chunk, summary, options=options, root=root_abs, base=base, seen=seen)
                if config.checkpoint_every is None and bw.pending():
                    bw.checkpoint(background=True)  # one shard per chunk, written while the next chunk is read
                report("import", summary.rows, 0)
                t = time.perf_counter()
            if bw is not None:
                bw.wait()
        finally:
            report.close()
        if deferred:
            t = time.perf_counter()
            ensure_path_index(session.catalog)
            summary.seconds["write"] += time.perf_counter() - t
        summary.files, summary.dim = len(files), int(dim or 0)
        if bw is not None:
            t = time.perf_counter()
            upkeep = bw.finish()
            summary.seconds["derive"] = time.perf_counter() - t
            summary.structure = upkeep.factory
            summary.shards, summary.imported = bw.stats.checkpoints, bw.stats.vectors
            summary.seconds["write"] += bw.stats.seconds - summary.seconds["derive"]
            summary.total_vectors = bw.live_vectors()
    summary.seconds["total"] = time.perf_counter() - t0
    _logger.info("imported: %s", summary.format_text().replace("\n", " | "))
    return summary


def _resolve_metric(metric: Any) -> tuple[str, str | None, int | None]:
    """(name, fingerprint or None, dim or None) of the metric the embeddings come from.

    A registered embedding metric whose weights are here gives its real fingerprint (queries by image then work);
    any other name (a model lookalike does not know, or weights not present) gets ``"<name>-import"``.
    """
    from lookalike.indexer._index import is_metric

    if is_metric(metric):
        return metric.name, metric.fingerprint, int(metric.dim)
    name = str(metric).strip()
    if not _NAME_RE.match(name):
        raise InvalidArgument(f"metric name {name!r} is not usable; use letters, digits and . _ - : +")
    from lookalike.metric import is_metric as is_registered
    from lookalike.metric import load_metric

    if is_registered(name):
        try:
            m = load_metric(name, device="cpu")
        except FileNotFoundError as e:  # WeightsNotFound: the vectors are still usable, queries by image are not
            _logger.warning("weights of %s not found (%s): vectors are imported under %s-import; searching them by "
                            "a new image needs the weights", name, str(e).splitlines()[0], name)
            return name, None, None
        if m.kind != "embedding" or not m.dim:
            raise InvalidArgument(f"metric {name!r} is pairwise: it has no embeddings to import")
        return m.name, m.fingerprint, int(m.dim)
    return name, None, None
