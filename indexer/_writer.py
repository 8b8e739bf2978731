"""The writer session: the one protocol by which anything changes an index folder.

Every writer (``build_index``, ``import_embeddings``, the Ray driver, ``check_index(repair=True)``,
``set_dedup_threshold``) goes through it, in this order:

1. ``open_writer``: refuse a non-empty folder that is not an index, take the folder's writer lock, open the catalog
   for writing and migrate a schema-1 folder (once; ``_migrate``);
2. ``WriterSession.open_build``: get or create the build of one metric fingerprint (the one place the build's
   dimension, FAISS type and storage are checked against the request), store the options it remembers (memory
   budget, dedup threshold), and reconcile what a killed run left (shard files no committed row names are deleted,
   vector rows whose shard is gone are dropped so their images are queued again);
3. ``BuildWriter.push`` / ``checkpoint``: rows and vectors arrive in bulk; each checkpoint writes ONE shard file
   (atomically, fsynced) and only then commits, in one transaction, the shard row, the vector rows, the image rows'
   updates and the build's counts. A kill therefore loses at most the work since the last checkpoint;
4. ``BuildWriter.finish``: upkeep (compaction, the derived search structure, ``_upkeep``); when the session ends
   without an error, the SQLite catalog is copied to ``catalog.sqlite.bak`` (what ``check --repair`` restores).

Sources feed it: scan + embed (``_pipeline``, locally or through ``_ray``), embeddings files (``_import``, read by
``_readers``), and the repair (``_check``). Readers never open a session and never take the lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.orm import Session

from lookalike.common.errors import IndexDamaged, IndexLocked, IndexMismatch, InvalidArgument
from lookalike.common.io import file_lock
from lookalike.indexer._bulk import driver, ensure_path_index
from lookalike.indexer._catalog import (
    BACKUP_FILE,
    CATALOG_FILE,
    BuildRow,
    Catalog,
    ImageRow,
    ShardRow,
    StoreRow,
    VectorRow,
    utcnow,
)
from lookalike.indexer._config import BuildConfig
from lookalike.indexer._dtypes import count_dtype, declare_dtype
from lookalike.indexer._migrate import migrate_if_needed
from lookalike.indexer._shard_writer import PendingShard, ShardWriter, clean_orphans
from lookalike.indexer._shards import SHARD_ROOT
from lookalike.indexer._structure import validate_factory
from lookalike.indexer._upkeep import Upkeep, update_structure

_logger = logging.getLogger(__name__)

LOCK_FILE = "writer.lock"
#: Names an index folder may hold (anything else marks a folder that is not an index).
_INDEX_NAMES = re.compile(r"^(\.?catalog\.sqlite.*|writer\.lock|" + re.escape(SHARD_ROOT) + r"|vectors-.*\.faiss)$")


@contextlib.contextmanager
def writer_lock(index_dir: str | os.PathLike[str], *, wait: bool = False) -> Iterator[None]:
    """One writer per index folder (an advisory lock on ``writer.lock``; readers never take it).

    Raises:
        IndexLocked: another process is writing this index (unless ``wait``).
    """
    index_dir = Path(index_dir)
    with file_lock(index_dir / LOCK_FILE, blocking=wait) as held:
        if not held:
            raise IndexLocked(f"another process is writing the index {index_dir}",
                              hint="wait for the other 'lookalike index' run to finish")
        yield


def check_index_folder(index_dir: str | os.PathLike[str], *, db_url: str | None = None) -> None:
    """Refuse to write an index into a folder that holds something else (a folder of photos, a home folder...).

    A missing or empty folder, or one that holds only what an index folder holds, is fine.

    Raises:
        InvalidArgument: ``index_dir`` is a file, or a non-empty folder that is not an index.
        IndexDamaged: an index folder whose catalog is gone but whose backup is there (repair it first).
    """
    d = Path(index_dir)
    if not d.exists():
        return
    if not d.is_dir():
        raise InvalidArgument(f"the index folder {d} is a file", hint="give a new or empty folder for the index")
    names = sorted(os.listdir(d))
    if db_url is None and CATALOG_FILE not in names and BACKUP_FILE in names:
        raise IndexDamaged(d / CATALOG_FILE, "the file is missing (a backup copy is there)", d)
    other = [n for n in names if not _INDEX_NAMES.match(n)]
    if other:
        shown = ", ".join(other[:3]) + (f" and {len(other) - 3} more" if len(other) > 3 else "")
        raise InvalidArgument(f"{d} is not empty and is not a lookalike index (it holds {shown}); nothing was "
                              f"written", hint="give a new or empty folder for the index (--index DIR)")


@dataclass
class _Buffered:
    """What one checkpoint commits: the shard's image ids, the image-row updates, items, whether all are new."""

    ids: np.ndarray | None
    rows: list[dict]
    n: int
    new: bool
    pending: set[int]
    adopted: list[PendingShard]


@dataclass
class WriteStats:
    """What a build writer committed: vectors, checkpoints (shards), seconds spent writing."""

    vectors: int = 0
    checkpoints: int = 0
    seconds: float = 0.0


class WriterSession:
    """An index folder open for writing: the lock held, the catalog open and migrated. Make it with ``open_writer``.

    Attributes:
        index_dir: the folder.
        config: the build options.
        catalog: the open catalog.
    """

    def __init__(self, index_dir: Path, config: BuildConfig, catalog: Catalog,
                 crash: Callable[[str], None] | None = None):
        self.index_dir, self.config, self.catalog = index_dir, config, catalog
        self.crash = crash or (lambda _name: None)
        self.writers: list[BuildWriter] = []

    def find_build(self, fingerprint: str) -> BuildRow | None:
        """The build of ``fingerprint``, or None."""
        with self.catalog.session() as s:
            return s.get(BuildRow, fingerprint)

    def open_build(self, fingerprint: str, metric: str, dim: int) -> BuildWriter:
        """Get or create the build of ``fingerprint`` (see the module docstring, step 2) and a writer for it."""
        build = get_or_create_build(self.catalog, fingerprint, metric, dim, self.config)
        reconciled = reconcile(self.catalog, fingerprint)
        return BuildWriter(self, build, reconciled=reconciled)


@contextlib.contextmanager
def open_writer(index_dir: str | os.PathLike[str], config: BuildConfig | None = None, *,
                crash: Callable[[str], None] | None = None, lock: bool = True) -> Iterator[WriterSession]:
    """Open an index folder for writing (created if missing): lock, catalog, one-time migration.

    Args:
        index_dir: the index folder.
        config: build options (default ``BuildConfig()``).
        crash: test hook called at the checkpoint's crash points (see ``_crash``).
        lock: take the writer lock (False: the caller holds it already, e.g. a repair that restored the catalog).

    Yields:
        A WriterSession. When the block ends without an error the SQLite catalog is backed up.

    Raises:
        InvalidArgument: a non-empty folder that is not an index.
        IndexLocked: another writer holds the folder.
        IndexDamaged: the catalog cannot be read.
    """
    config = config or BuildConfig()
    d = Path(index_dir)
    check_index_folder(d, db_url=config.db_url)
    d.mkdir(parents=True, exist_ok=True)
    with writer_lock(d) if lock else contextlib.nullcontext():
        catalog = Catalog(d, db_url=config.db_url, create=True)
        session = None
        try:
            migrate_if_needed(catalog)
            ensure_path_index(catalog)  # a bulk import killed before it re-created the unique path index
            session = WriterSession(d, config, catalog, crash)
            yield session
            catalog.backup()  # every writer leaves a fresh copy for 'lookalike check --repair'
        finally:
            for w in session.writers if session is not None else ():
                w.abandon()  # no thread outlives the session (an uncommitted shard is an orphan for the next one)
            catalog.close()


def get_or_create_build(catalog: Catalog, fingerprint: str, metric: str, dim: int, config: BuildConfig) -> BuildRow:
    """The build of ``fingerprint``, created with ``config``'s structure and storage when new.

    Raises:
        IndexMismatch: an existing build of another dimension, FAISS type or storage than asked for.
        InvalidArgument: no dimension, or an invalid FAISS factory string for a new build.
    """
    where = catalog.index_dir
    with catalog.session() as s, s.begin():
        b = s.get(BuildRow, fingerprint)
        st = s.get(StoreRow, fingerprint)
        if b is None:
            if dim < 1:
                raise InvalidArgument(f"vectors of {metric!r} have no columns (dim {dim})")
            for other in s.scalars(select(BuildRow).where(BuildRow.metric == metric)):
                _logger.info("index already holds %s vectors of other weights (%s); adding a separate vector file",
                             metric, other.fingerprint)
            target = config.faiss or "auto"
            validate_factory(dim, target)
            b = BuildRow(fingerprint=fingerprint, metric=metric, dim=dim, factory=target, current_factory="Flat",
                         search_params=None, count=0)
            s.add(b)
        else:
            if b.dim != dim:
                raise IndexMismatch(f"index {where} holds {b.dim}-d vectors for {b.metric!r} but the metric gives "
                                    f"{dim}-d vectors", hint="use another index folder")
            if config.faiss and config.faiss != b.factory:
                raise IndexMismatch(
                    f"index {where} stores {b.metric!r} vectors as faiss {b.factory!r}, not {config.faiss!r}",
                    hint="leave out the FAISS type to keep the index's own, or use a new index folder")
            if st is not None and config.storage is not None and config.storage != st.storage:
                raise IndexMismatch(
                    f"index {where} stores {b.metric!r} vectors as {st.storage}, not {config.storage}",
                    hint="leave out the storage type to keep the index's own, or use a new index folder")
        if st is None:
            s.add(StoreRow(fingerprint=fingerprint, storage=config.storage or "float32", max_memory=config.budget,
                           structure="exact"))
        elif config.budget is not None:
            st.max_memory = config.budget
        if config.dedup_threshold is not None:
            b.dedup_threshold = config.dedup_threshold
    return b


def reconcile(catalog: Catalog, fingerprint: str) -> int:
    """Make the shards and the catalog agree after a crash: delete shard files no committed row names, and drop
    vector rows whose shard row is missing (their images are queued again). Returns how many files/rows were fixed.
    """
    n = clean_orphans(catalog, fingerprint)
    with catalog.session() as s, s.begin():
        known = select(ShardRow.id).where(ShardRow.fingerprint == fingerprint)
        res = s.execute(delete(VectorRow).where(VectorRow.fingerprint == fingerprint,
                                                (VectorRow.shard_id.is_(None)) | (VectorRow.shard_id.not_in(known))))
        missing = int(res.rowcount or 0)
    if n or missing:
        _logger.warning("reconciled index: removed %d uncommitted shard files, re-queued %d images without a "
                        "vector", n, missing)
    return n + missing


def update_images(s: Session, rows: Sequence[dict]) -> None:
    """UPDATE images by id (each dict holds "id" and the columns to set), one executemany per set of columns: of
    tuples through the DB-API on SQLite (plain values), else SQLAlchemy Core; several times faster than the ORM
    bulk update on the writer's hot path."""
    t = ImageRow.__table__
    by_keys: dict[tuple[str, ...], list[dict]] = defaultdict(list)
    for r in rows:
        by_keys[tuple(sorted(k for k in r if k != "id"))].append(r)
    raw = s.get_bind().dialect.name == "sqlite"
    for keys, batch in by_keys.items():
        if raw and all(isinstance(v, _PLAIN) for v in batch[0].values()) and set(keys) <= set(t.c.keys()):
            sql = f"UPDATE images SET {', '.join(f'{k} = ?' for k in keys)} WHERE id = ?"
            driver(s).executemany(sql, ([r[k] for k in keys] + [r["id"]] for r in batch))
            continue
        stmt = t.update().where(t.c.id == bindparam("b_id")).values({k: bindparam(f"b_{k}") for k in keys})
        s.connection().execute(stmt, [{f"b_{k}": v for k, v in r.items()} for r in batch])


_PLAIN = (int, float, str, bytes, type(None))


class BuildWriter:
    """Buffers one build's vectors and image-row updates; a checkpoint writes one shard, then commits.

    Attributes:
        build: the build row.
        stats: what was committed so far.
        reconciled: shard files / vector rows fixed when the build was opened (work lost by a crash).
        dtype: the precision of the vectors pushed (recorded per build; None: not recorded, e.g. imported).
    """

    #: Default checkpoint triggers (``checkpoint_every=None``): this many rows, or this many seconds since the last.
    MAX_ROWS = 65536
    MAX_SECONDS = 30.0

    def __init__(self, session: WriterSession, build: BuildRow, *, reconciled: int = 0):
        self.session, self.build, self.reconciled = session, build, reconciled
        self.catalog = session.catalog
        self.shards = ShardWriter(self.catalog, build.fingerprint, build.dim, crash=session.crash)
        self.every = session.config.checkpoint_every
        self.stats = WriteStats()
        self.dtype: str | None = None
        self._ids: list[np.ndarray] = []
        self._vecs: list[np.ndarray] = []
        self._n = 0
        self._rows: list[dict] = []
        self._failed = 0
        self._pending: set[int] = set()
        self._new = True
        self._adopted: list[PendingShard] = []
        self._n_adopted = 0
        self._last = time.perf_counter()
        self._inflight: tuple[Future, _Buffered] | None = None
        self._pool: ThreadPoolExecutor | None = None
        session.writers.append(self)

    @property
    def fingerprint(self) -> str:
        return self.build.fingerprint

    @property
    def dim(self) -> int:
        return int(self.build.dim)

    def declare_dtype(self, dtype: str) -> str | None:
        """Record, before pushing vectors, the precision they are computed in; returns a warning when the build
        already holds vectors of another precision (see ``_dtypes``)."""
        self.dtype = dtype
        return declare_dtype(self.catalog, self.build, dtype)

    def pending(self) -> int:
        """Items waiting for the next checkpoint: vectors, and rows without a vector (failed images)."""
        return self._n + self._n_adopted + self._failed

    def is_pending(self, image_id: int) -> bool:
        """True when a vector of ``image_id`` waits for the next checkpoint."""
        i = int(image_id)
        return i in self._pending or (self._inflight is not None and i in self._inflight[1].pending)

    def push(self, ids: Iterable[int] | np.ndarray, xb: np.ndarray | None, rows: Sequence[dict] = (),
             failed: Sequence[dict] = (), *, new: bool = False) -> None:
        """Hand over vectors and image-row updates to be committed together; checkpoints when one is due.

        Args:
            ids: image ids of the vectors.
            xb: their (n, dim) vectors, or None.
            rows: updates of the images that have a vector here (dicts with "id" and the columns to set).
            failed: updates of images without a vector (decode failures); each counts as an item.
            new: none of these images has a committed vector of this build (no tombstone look-up needed).
        """
        self._new = self._new and new
        if xb is not None:
            ids_a = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids), dtype=np.int64)
            if len(ids_a):
                self._ids.append(ids_a)
                self._vecs.append(xb)
                self._n += len(ids_a)
                self._pending.update(ids_a.tolist())
        self._rows.extend(rows)
        self._rows.extend(failed)
        self._failed += len(failed)
        if self._due():
            self.checkpoint()

    def push_shard(self, shard: PendingShard, rows: Sequence[dict] = ()) -> None:
        """Hand over a shard another process wrote (``ShardWriter.adopt``: a Ray worker's) with the updates of its
        images; it commits at the next checkpoint like a shard of ours (one is started when due)."""
        self._adopted.append(shard)
        self._n_adopted += shard.rows
        self._pending.update(shard.image_ids.tolist())
        self._rows.extend(rows)
        if self._due():
            self.checkpoint()

    def _due(self) -> bool:
        if not self.pending():
            return False
        if self.every is not None:
            return self.every <= 0 or self.pending() >= self.every
        # a checkpoint costs one shard whatever the index size: bound the work a kill can lose, and keep shards
        # large enough that a big index is not thousands of tiny files
        return self._n + self._n_adopted >= self.MAX_ROWS or time.perf_counter() - self._last >= self.MAX_SECONDS

    def checkpoint(self, *, background: bool = False) -> None:
        """Write the buffered vectors as one shard, then commit it with the buffered rows in one transaction.

        With ``background=True`` the shard file is written (and fsynced) in a thread while the caller goes on; its
        rows commit at the next ``checkpoint`` / ``finish`` / ``wait``, always after the file is on disk, so the
        crash-safety rules are the same (a kill in between leaves an uncommitted file the next writer deletes).
        """
        self.wait()
        t0 = time.perf_counter()
        buf = _Buffered(np.concatenate(self._ids) if self._n else None, self._rows, self._n + self._n_adopted,
                        self._new, self._pending, self._adopted)
        xb = np.concatenate(self._vecs) if self._n else None
        self._ids, self._vecs, self._n, self._rows, self._failed, self._new = [], [], 0, [], 0, True
        self._pending, self._adopted, self._n_adopted = set(), [], 0
        if buf.ids is None:
            self._commit(None, buf)
        elif background:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lookalike-shard")
            self._inflight = (self._pool.submit(self.shards.write, buf.ids, xb), buf)
        else:
            self._commit(self.shards.write(buf.ids, xb), buf)
        self.stats.seconds += time.perf_counter() - t0

    def wait(self) -> None:
        """Commit the shard a background checkpoint is writing (after its file is on disk)."""
        if self._inflight is None:
            return
        fut, buf = self._inflight
        t0 = time.perf_counter()
        self._inflight = None
        self._commit(fut.result(), buf)
        self.stats.seconds += time.perf_counter() - t0

    def abandon(self) -> None:
        """Wait for a background shard write without committing it (the session ends with an error)."""
        if self._inflight is not None:
            fut, _ = self._inflight
            self._inflight = None
            with contextlib.suppress(Exception):
                fut.result()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _commit(self, pending: PendingShard | None, buf: _Buffered) -> None:
        fp = self.fingerprint
        with self.catalog.session() as s, s.begin():
            if buf.rows:
                update_images(s, buf.rows)
            if pending is not None:
                self.shards.record(s, pending, new=buf.new)
            for p in buf.adopted:
                self.shards.record(s, p)
            s.execute(update(BuildRow).where(BuildRow.fingerprint == fp)
                      .values(count=BuildRow.count + buf.n, updated=utcnow()))
            if self.dtype is not None:
                count_dtype(s, fp, self.dtype, buf.n)
            s.flush()
            self.session.crash("during_commit")
        self.session.crash("after_commit")
        self.stats.vectors += buf.n
        self.stats.checkpoints += 1
        self._last = time.perf_counter()

    def finish(self, progress: Callable[[int, int], None] | None = None, *, force: bool = False) -> Upkeep:
        """Commit what is buffered, then compact and bring the derived search structure up to date.

        Args:
            progress: called as ``progress(done, total)`` in rows of the derived structure.
            force: rebuild the derived structure from the shards even if it looks current (repair).
        """
        if self.pending():
            self.checkpoint()
        self.wait()
        self.abandon()
        t0 = time.perf_counter()
        up = update_structure(self.catalog, self.build, compact_at=self.session.config.compact_at, force=force,
                              progress=progress)
        self.stats.seconds += time.perf_counter() - t0
        return up

    def live_vectors(self) -> int:
        """Vectors of this build in the catalog (committed)."""
        from sqlalchemy import func

        with self.catalog.session() as s:
            return int(s.scalar(select(func.count()).select_from(VectorRow)
                                .where(VectorRow.fingerprint == self.fingerprint)) or 0)


def set_dedup_threshold(index_dir: str | os.PathLike[str], threshold: float, *, metric: object = None,
                        db_url: str | None = None) -> str:
    """Store ``threshold`` as the index's default dedup distance for one metric's vectors (a writer: takes the lock).

    ``lookalike dedup --index DIR`` (``find_duplicates`` with ``threshold=None``) then uses it.

    Args:
        index_dir: the index folder.
        threshold: a distance (1 - cosine) in [0, 2].
        metric: metric name, fingerprint or loaded Metric; None when the folder holds a single metric.
        db_url: SQLAlchemy URL of the catalog if it is not the SQLite file in the folder.

    Returns:
        The fingerprint of the build that now carries the threshold.

    Raises:
        FileNotFoundError: no index there.
        ValueError: threshold out of range (``InvalidArgument``), or no / several builds for ``metric``.
    """
    from lookalike.indexer._catalog import check_dedup_threshold
    from lookalike.indexer._index import index_exists, select_build

    check_dedup_threshold(threshold)
    if not index_exists(index_dir, db_url=db_url):
        from lookalike.common.errors import IndexNotFound

        raise IndexNotFound(f"no index at {index_dir}", hint=f"build one with: lookalike index FOLDER --index "
                                                             f"{index_dir}")
    with open_writer(index_dir, BuildConfig(db_url=db_url)) as session:
        build = select_build(session.catalog.builds(), metric, index_dir)  # type: ignore[arg-type]
        session.catalog.set_dedup_threshold(build.fingerprint, threshold)
        return build.fingerprint
