"""Opening an index folder for reading: the catalog, one metric's vectors, and the rows behind FAISS ids.

Readers never write and never take the writer lock: the catalog is opened read-only (an older schema is refused with
the command that upgrades it, see ``Catalog``), and vectors are memory-mapped from the committed shards.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import and_, or_, select, text

from lookalike.common.errors import IndexDamaged, IndexMismatch, InvalidArgument
from lookalike.data.image_folder import display_path
from lookalike.indexer._catalog import CATALOG_FILE, BuildRow, Catalog, ImageRow, ShardRow, StoreRow, VectorRow
from lookalike.indexer._models import BuildInfo, ImageInfo

if TYPE_CHECKING:
    from lookalike.metric import Metric

_logger = logging.getLogger(__name__)

#: Distinct roots a relative path is looked up under (beyond: one query on the relative path alone).
MAX_ROOTS = 1000


def is_metric(obj: object) -> bool:
    """A loaded Metric (duck-typed, so that opening an index does not import the model code)."""
    return not isinstance(obj, str) and hasattr(obj, "fingerprint") and hasattr(obj, "embed")


def select_build(builds: list[BuildRow], metric: str | Metric | None, where: object) -> BuildRow:
    """The build (vector index) of ``metric`` among ``builds``; clear errors when there is none or several."""
    if not builds:
        raise IndexMismatch(f"index {where} holds no vectors yet",
                            hint=f"build them with: lookalike index FOLDER --index {where}")
    have = ", ".join(f"{b.metric} ({b.fingerprint}, {b.dim}-d)" for b in builds)
    if metric is None:
        if len(builds) > 1:
            raise IndexMismatch(f"index {where} holds vectors of several metrics: {have}",
                                hint="choose one of these metrics")
        return builds[0]
    if is_metric(metric):
        for b in builds:
            if b.fingerprint == metric.fingerprint:
                return b
        same = [b for b in builds if b.metric == metric.name]
        if same:
            raise InvalidArgument(
                f"index {where} was built with metric {metric.name!r} but other weights (fingerprint "
                f"{same[0].fingerprint}, loaded {metric.fingerprint}); vectors of different weights never mix: "
                f"re-index with these weights or load the ones the index was built with"
            )
        raise InvalidArgument(f"index {where} has no vectors for metric {metric.name!r}; it holds: {have}")
    matches = [b for b in builds if b.metric == metric or b.fingerprint == metric]
    if not matches:
        raise InvalidArgument(f"index {where} has no vectors for metric {metric!r}; it holds: {have}")
    return max(matches, key=lambda b: b.updated)


def load_vectors(catalog: Catalog, build: BuildRow, *, verify: bool | None = None):  # -> ShardedVectors
    """The live vectors of ``build`` (memory-mapped shards + derived FAISS file), checked against the catalog.

    A compaction may remove shard files between reading the catalog and opening them: that case is retried once.
    """
    from lookalike.indexer._store import ShardedVectors

    try:
        return ShardedVectors(catalog, build, verify=verify)
    except IndexDamaged as e:
        if "missing" not in str(e):
            raise
        return ShardedVectors(catalog, build, verify=verify)


def state_stamp(catalog: Catalog, fingerprint: str) -> tuple:
    """A value that changes whenever a writer commits shards, tombstones or a new derived file for a build."""
    with catalog.session() as s:
        shards = s.execute(select(ShardRow.id, ShardRow.dead).where(ShardRow.fingerprint == fingerprint)
                           .order_by(ShardRow.id)).all()
        derived = s.scalar(select(StoreRow.derived_file).where(StoreRow.fingerprint == fingerprint))
    return (tuple(map(tuple, shards)), derived)


class ImageIndex:
    """A read view of an index folder for one metric: catalog rows + FAISS vectors + (lazily) the metric.

    Readers never write and take no lock: vectors flushed by a running writer whose catalog rows are not committed
    yet are ignored, so a reader always sees the last committed state.

    Args:
        index_dir: the index folder.
        metric: metric name, fingerprint or a loaded Metric; None when the folder holds one metric only.
        db_url: SQLAlchemy URL of the catalog when it is not the SQLite file in ``index_dir``.
        device: device to load the metric on (for image queries).
        dtype: dtype to load the metric with (default "auto": the build's recorded precision where the device runs it
            natively, else fp32).
    """

    def __init__(
        self,
        index_dir: str | os.PathLike[str],
        *,
        metric: str | Metric | None = None,
        db_url: str | None = None,
        device: str | None = None,
        dtype: str | None = "auto",
    ):
        self.index_dir = Path(index_dir)
        if db_url is None and not self.index_dir.is_dir():
            raise FileNotFoundError(f"index folder not found: {self.index_dir}")
        self.catalog = Catalog(self.index_dir, db_url=db_url, create=False)
        try:
            self.build = select_build(self.catalog.builds(), metric, self.index_dir)
            self._stamp = state_stamp(self.catalog, self.build.fingerprint)
            self.vectors = load_vectors(self.catalog, self.build)
        except BaseException:
            self.catalog.close()
            raise
        self._metric = metric if is_metric(metric) else None
        self._device, self._dtype = device, dtype
        self._checked: tuple | None = None
        self._roots: tuple[tuple, list[str] | None] | None = None

    @property
    def fingerprint(self) -> str:
        return self.build.fingerprint

    @property
    def metric(self) -> Metric:
        """The metric the index was built with (loaded on first use; fingerprint checked). With ``dtype="auto"`` it
        computes in the precision the build recorded (where the device runs it natively), so that an indexed image
        given as a file finds itself at distance ~0."""
        if self._metric is None:
            from lookalike.indexer._dtypes import build_dtypes, dtype_for_build, recorded_dtype
            from lookalike.metric import get_device, load_metric

            recorded = recorded_dtype(build_dtypes(self.catalog, self.build.fingerprint))
            dtype, note = dtype_for_build(recorded, self._dtype, get_device(self._device), self.build.metric)
            if note:
                _logger.warning(note)
            m = load_metric(self.build.metric, device=self._device, dtype=dtype)
            if m.fingerprint != self.build.fingerprint:
                raise InvalidArgument(
                    f"index {self.index_dir} was built with metric {self.build.metric!r} fingerprint "
                    f"{self.build.fingerprint}, but the weights found now give {m.fingerprint}; load the weights the "
                    f"index was built with (weights=...) or re-index"
                )
            self._metric = m
        return self._metric

    def refresh(self) -> bool:
        """Reload the vectors if a writer committed since; returns True when reloaded."""
        m = state_stamp(self.catalog, self.build.fingerprint)
        if m == self._stamp:
            return False
        self.build = select_build(self.catalog.builds(), self.build.fingerprint, self.index_dir)
        self.vectors = load_vectors(self.catalog, self.build)
        self._stamp = m
        return True

    def check_catalog(self) -> None:
        """Read the whole catalog once per committed state (SQLite's quick check: every page, nothing written).

        Searches read only the rows they return, so a damaged page elsewhere goes unseen; work that acts on the
        whole catalog (dedup, whose report may drive file moves) calls this first.

        Raises:
            IndexDamaged: the catalog file is damaged (the message names the repair command).
        """
        if self._checked == self._stamp:
            return
        damaged = self.catalog.damaged()
        if damaged is not None:
            raise damaged
        self._checked = self._stamp

    def rows(self, ids: Iterable[int]) -> dict[int, ImageRow]:
        """Catalog rows of FAISS ids that have a committed vector row for this metric (others are left out)."""
        ids = sorted({int(i) for i in ids if int(i) >= 0})
        out: dict[int, ImageRow] = {}
        with self.catalog.session() as s:
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                q = (
                    select(VectorRow.faiss_id, ImageRow)
                    .join(ImageRow, ImageRow.id == VectorRow.image_id)
                    .where(VectorRow.fingerprint == self.fingerprint, VectorRow.faiss_id.in_(chunk))
                )
                for fid, row in s.execute(q):
                    out[int(fid)] = row
        return out

    def list_paths(self, limit: int | None = None) -> list[str]:
        """Relative paths of the catalogued images that have a vector for this metric, in id order."""
        q = (select(ImageRow.relpath).join(VectorRow, VectorRow.image_id == ImageRow.id)
             .where(VectorRow.fingerprint == self.fingerprint).order_by(ImageRow.id).limit(limit))
        with self.catalog.session() as s:
            return list(s.scalars(q))

    def find_row(self, path: str | os.PathLike[str]) -> ImageRow | None:
        """The catalog row of an indexed file: an absolute path, or a path relative to an indexed root.

        Looked up through the unique (root, relpath) index: an absolute path as each (folder above it, rest)
        split, a relative one under each indexed root (``roots``). No table scan, whatever the index size.
        """
        p = os.fspath(path)
        a = os.path.abspath(p)
        raw = os.fsencode(a)
        rel = p.replace(os.sep, "/")
        with self.catalog.session() as s:
            if os.sep != "/":  # the catalog's roots are POSIX-style splits
                row = s.scalar(select(ImageRow).where(ImageRow.path_raw == raw))
            else:
                parts = a.split("/")
                splits = [(display_path("/".join(parts[:i]) or "/"), display_path("/".join(parts[i:])))
                          for i in range(1, len(parts))]
                row = next((r for r in s.scalars(select(ImageRow).where(
                    or_(*(and_(ImageRow.root == r, ImageRow.relpath == x) for r, x in splits))))
                    if r.path_raw == raw), None)
            if row is None and not os.path.isabs(p):
                roots = self.roots()
                q = select(ImageRow).where(ImageRow.relpath == display_path(rel))
                rows = list(s.scalars((q if roots is None else q.where(ImageRow.root.in_(roots))).limit(2)))
                if len(rows) > 1:
                    raise InvalidArgument(f"{p!r} is indexed under several roots", hint="give the full path")
                row = rows[0] if rows else None
        return row

    def roots(self) -> list[str] | None:
        """The distinct catalog roots (one index seek each, read once per committed state), or None when there are
        more than ``MAX_ROOTS`` (each image catalogued under its own folder)."""
        if self._roots is None or self._roots[0] != self._stamp:
            q = text("WITH RECURSIVE r(root) AS (SELECT min(root) FROM images UNION ALL "
                     "SELECT (SELECT min(root) FROM images WHERE root > r.root) FROM r WHERE r.root IS NOT NULL) "
                     f"SELECT root FROM r WHERE root IS NOT NULL LIMIT {MAX_ROOTS + 1}")
            with self.catalog.session() as s:
                got = [str(x) for x in s.scalars(q)]
            self._roots = (self._stamp, got if len(got) <= MAX_ROOTS else None)
        return self._roots[1]

    def find_image(self, path: str | os.PathLike[str]) -> ImageInfo | None:
        """The catalogued image at ``path`` (absolute, or relative to an indexed root), or None.

        Raises:
            InvalidArgument: a relative path indexed under several roots.
        """
        row = self.find_row(path)
        return None if row is None else ImageInfo.from_row(row)

    @property
    def info(self) -> BuildInfo:
        """What this index holds for its metric (name, fingerprint, dim, FAISS type, count, dedup threshold)."""
        return BuildInfo.from_row(self.build)

    def vector_of(self, row: ImageRow | ImageInfo) -> np.ndarray | None:
        """The stored vector of a catalogued image for this metric (None when it has none)."""
        with self.catalog.session() as s:
            fid = s.scalar(select(VectorRow.faiss_id).where(VectorRow.image_id == row.id,
                                                             VectorRow.fingerprint == self.fingerprint))
        if fid is None or int(fid) not in self.vectors:
            return None
        return self.vectors.vectors([int(fid)])[0]

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> ImageIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def index_exists(index_dir: str | os.PathLike[str], *, db_url: str | None = None) -> bool:
    """True when there is an index catalog: the SQLite file in ``index_dir``, or the catalog at ``db_url``."""
    if db_url is None:
        return (Path(index_dir) / CATALOG_FILE).is_file()
    try:
        with Catalog(index_dir, db_url=db_url, any_version=True) as cat:
            cat.builds()
    except Exception:  # noqa: BLE001 - any failure to open the catalog means "no index there"
        return False
    return True


def open_index(
    index_dir: str | os.PathLike[str],
    *,
    metric: str | Metric | None = None,
    db_url: str | None = None,
    device: str | None = None,
    dtype: str | None = "auto",
) -> ImageIndex:
    """Open an index folder for search and dedup (read only).

    Args:
        index_dir: the folder given to ``build_index``.
        metric: metric name, fingerprint or loaded Metric; None when the folder holds a single metric.
        db_url: SQLAlchemy URL of the catalog if it is not the SQLite file in the folder.
        device: device for embedding image queries (default cuda > mps > cpu).
        dtype: precision for embedding image queries: "auto" (default: the precision the build recorded where the
            device runs it natively, else fp32; see ``ImageIndex.metric``), "fp32", "bf16" or "fp16".

    Returns:
        An ImageIndex (use it as a context manager, or call ``close()``).

    Raises:
        FileNotFoundError: no index there.
        ValueError: no vectors for ``metric``, several metrics and none chosen, a damaged or newer index, or
            one written by an older lookalike (``IndexNeedsUpgrade``: upgrade it with any writer command).
    """
    return ImageIndex(index_dir, metric=metric, db_url=db_url, device=device, dtype=dtype)
