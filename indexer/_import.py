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

import hashlib
import logging
import os
import posixpath
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import func, select, update

from lookalike.common.errors import IndexMismatch, InvalidArgument
from lookalike.data.image_folder import display_path
from lookalike.indexer._catalog import STATUS_FAILED, STATUS_OK, Catalog, ImageRow, VectorRow, utcnow
from lookalike.indexer._config import DEFAULT_CHUNK_ROWS, BuildConfig, ImportOptions
from lookalike.indexer._crash import CrashHook
from lookalike.indexer._readers import Chunk, read_embeddings
from lookalike.indexer._summary import ImportSummary, Progress
from lookalike.indexer._writer import BuildWriter, check_index_folder, open_writer

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

_logger = logging.getLogger(__name__)

#: Catalog status of an imported vector whose image file was not found at import time.
STATUS_MISSING = "missing"
#: Largest |norm - 1| accepted as a unit vector when ``normalize`` is False.
NORM_TOLERANCE = 1e-3
_IN_CHUNK = 500  # parameters per IN (...) query
_IMAGES = ImageRow.__table__
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
            seen = _Seen(prior_rows=s.scalar(select(ImageRow.id).limit(1)) is not None)
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
                _land(session.catalog, bw, chunk, summary, options=options, root=root_abs, base=base, seen=seen)
                if config.checkpoint_every is None and bw.pending():
                    bw.checkpoint()  # one shard per chunk
                report("import", summary.rows, 0)
                t = time.perf_counter()
        finally:
            report.close()
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


@dataclass
class CheckedRows:
    """One chunk after the row checks: unit float32 vectors of the usable rows, the reasons of the others."""

    xb: np.ndarray
    usable: np.ndarray  # bool per row
    reasons: dict[int, str]
    normalized: int


def check_rows(xb: np.ndarray, dim: int, *, normalize: bool, where: str, offset: int = 0) -> CheckedRows:
    """Check a chunk's vectors: dimension, finite, unit norm (or normalise them).

    Raises:
        ValueError: the dimension differs, or (``normalize=False``) a finite row is not a unit vector.
    """
    if xb.ndim != 2 or xb.shape[1] != dim:
        raise IndexMismatch(f"{where}: {xb.shape[1] if xb.ndim == 2 else xb.shape}-d vectors, but the index holds "
                            f"{dim}-d vectors for this metric", hint="import them with the metric that made them")
    x = np.array(xb, dtype=np.float32, copy=True)
    finite = np.isfinite(x).all(axis=1)
    norms = np.zeros(len(x), dtype=np.float32)
    norms[finite] = np.linalg.norm(x[finite], axis=1)
    zero = finite & (norms == 0)
    usable = finite & ~zero
    off = usable & (np.abs(norms - 1.0) > NORM_TOLERANCE)
    if off.any() and not normalize:
        r = int(np.flatnonzero(off)[0])
        raise InvalidArgument(f"{where}: row {offset + r} has norm {norms[r]:.4g}, not a unit vector "
                              f"({int(off.sum())} such rows in this chunk); pass normalize=True (--normalize) to "
                              f"normalise them on the way in")
    x[usable] /= norms[usable, None]
    reasons = {int(r): "imported vector is not finite (NaN or inf)" for r in np.flatnonzero(~finite)}
    reasons.update({int(r): "imported vector is all zeros" for r in np.flatnonzero(zero)})
    return CheckedRows(x, usable, reasons, int(off.sum()))


def _split_path(p: str, root: str | None, base: str) -> tuple[str, str, str]:
    """(catalog root, relpath, absolute path) of an imported path."""
    if root is not None and not os.path.isabs(p):
        rel = posixpath.normpath(p.replace(os.sep, "/"))
        if not rel.startswith("../") and rel not in ("..", "."):
            return root, rel, os.path.join(root, rel)
    a = os.path.normpath(p if os.path.isabs(p) else os.path.join(root or base, p))
    if root is not None:
        rel = os.path.relpath(a, root)
        if not rel.startswith(".." + os.sep) and rel != "..":
            return root, Path(rel).as_posix(), a
    return os.path.dirname(a), os.path.basename(a), a


def _existing(s: Session, keys: list[tuple[str, str]], fingerprint: str) -> dict[tuple[str, str], tuple[int, bool]]:
    """(root, relpath) → (image id, has a vector of ``fingerprint``) for the keys already catalogued."""
    by_root: dict[str, list[str]] = {}
    for r, rel in keys:
        by_root.setdefault(r, []).append(rel)
    out: dict[tuple[str, str], tuple[int, bool]] = {}
    for r, rels in by_root.items():
        for start in range(0, len(rels), _IN_CHUNK):
            q = (select(ImageRow.id, ImageRow.relpath, VectorRow.faiss_id)
                 .outerjoin(VectorRow, (VectorRow.image_id == ImageRow.id) & (VectorRow.fingerprint == fingerprint))
                 .where(ImageRow.root == r, ImageRow.relpath.in_(rels[start:start + _IN_CHUNK])))
            for i, rel, fid in s.execute(q):
                out[(r, rel)] = (int(i), fid is not None)
    return out


def _stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


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


def _text(s: str) -> str:
    return s if s.isascii() else display_path(s)


class _Seen:
    """Hashes of the (root, relpath) keys this run inserted (8 bytes each), to skip look-ups of paths that cannot be
    catalogued yet; a hash collision only costs a look-up."""

    def __init__(self, prior_rows: bool):
        self.prior_rows = prior_rows
        self.parts: list[np.ndarray] = []
        self.sorted = np.zeros(0, np.int64)

    @staticmethod
    def _hash(keys: list[tuple[str, str]]) -> np.ndarray:
        return np.fromiter((int.from_bytes(hashlib.blake2b(f"{r}\0{rel}".encode("utf-8", "surrogateescape"),
                                                           digest_size=8).digest(), "little", signed=True)
                            for r, rel in keys), dtype=np.int64, count=len(keys))

    def add(self, keys: list[tuple[str, str]]) -> None:
        if keys:
            self.sorted = np.union1d(self.sorted, self._hash(keys))

    def maybe(self, key: tuple[str, str]) -> bool:
        if not len(self.sorted):
            return False
        h = self._hash([key])[0]
        i = int(np.searchsorted(self.sorted, h))
        return i < len(self.sorted) and int(self.sorted[i]) == int(h)


def _land(catalog: Catalog, bw: BuildWriter, chunk: Chunk, summary: ImportSummary, *, options: ImportOptions,
          root: str | None, base: str, seen: _Seen) -> None:
    """Check one chunk, commit its image rows, and hand its usable vectors to the build writer."""
    t = time.perf_counter()
    checked = check_rows(chunk.xb, bw.dim, normalize=options.normalize, where=chunk.source, offset=chunk.offset)
    summary.normalized += checked.normalized
    keyed: dict[tuple[str, str], int] = {}
    key_of: dict[int, tuple[str, str]] = {}
    abs_paths: list[str] = []
    for j, p in enumerate(chunk.paths):
        if not p:
            checked.reasons.setdefault(j, "no image path")
            checked.usable[j] = False
        r, rel, a = _split_path(p or f"<row {chunk.offset + j}>", root, base)
        abs_paths.append(a)
        key = (_text(r), _text(rel))  # as the catalog stores them
        if key in keyed:
            summary.duplicates += 1
            continue
        keyed[key] = j
        key_of[j] = key
    summary.seconds["check"] += time.perf_counter() - t
    t = time.perf_counter()
    vec_ids: list[int] = []
    vec_j: list[int] = []
    with catalog.session() as s, s.begin():
        # Only paths that may be catalogued already are looked up: all of them when the catalog held rows before
        # this run (a resumed or repeated import), else those whose hash an earlier chunk of this run inserted.
        maybe = list(keyed) if seen.prior_rows else [k for k in keyed if seen.maybe(k)]
        known = _existing(s, maybe, bw.fingerprint) if maybe else {}
        max_before = int(s.scalar(select(func.max(ImageRow.id))) or 0)
        now = utcnow()
        new_rows: list[dict] = []
        new_rows_j: list[int] = []
        status_updates: list[dict] = []
        for key, j in keyed.items():
            hit = known.get(key)
            if hit is not None and (hit[1] or bw.is_pending(hit[0])):
                summary.skipped += 1
                continue
            st = _stat(abs_paths[j]) if options.check_files else None
            if checked.usable[j]:
                status, error = (STATUS_OK, None) if st else (STATUS_MISSING, "image file not found at import")
            else:
                status, error = STATUS_FAILED, checked.reasons.get(j, "unusable vector")
            if st is None and checked.usable[j]:
                summary.missing += 1
            if not checked.usable[j]:
                summary.rejected += 1
            values = {"status": status, "error": error, "size": st[0] if st else 0, "mtime_ns": st[1] if st else 0}
            if hit is not None:
                status_updates.append({"id": hit[0], **values})
                if checked.usable[j]:
                    vec_ids.append(hit[0])
                    vec_j.append(j)
                continue
            new_rows.append({"root": key[0], "relpath": key[1],
                             "path_raw": os.fsencode(abs_paths[j]), "sha256": None, "added": now, **values})
            new_rows_j.append(j)
        if status_updates:
            s.execute(update(ImageRow), status_updates)
        if new_rows:
            # Core executemany (not ORM, no per-row RETURNING): then one indexed look-up for the new ids
            for start in range(0, len(new_rows), 5000):
                s.connection().execute(_IMAGES.insert(), new_rows[start:start + 5000])
            got = {(r, rel): int(i) for i, r, rel in s.execute(
                select(ImageRow.id, ImageRow.root, ImageRow.relpath).where(ImageRow.id > max_before))}
            seen.add([key_of[j] for j in new_rows_j])
            for j in new_rows_j:
                if checked.usable[j]:
                    vec_ids.append(got[key_of[j]])
                    vec_j.append(j)
    summary.seconds["write"] += time.perf_counter() - t
    if vec_ids:
        bw.push(np.asarray(vec_ids, dtype=np.int64), checked.xb[np.asarray(vec_j)])
