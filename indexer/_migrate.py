"""One-time migration of schema-1 index folders (one whole FAISS file per metric) to shards (schema 2).

A folder is migrated the first time any command opens it: the committed vectors of each ``vectors-<fp>.faiss``
file are copied into shards (checked against the catalog rows), the derived search structure the build asked for
is built from them, the catalog is marked schema 2, and only then the old file is deleted. A kill at any point
leaves either the old file (the migration starts over) or committed shards (it carries on): nothing is lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path

import numpy as np
from sqlalchemy import delete, select

from lookalike.indexer._catalog import Catalog, IndexDamaged, StoreRow, VectorRow
from lookalike.indexer._shards import ShardWriter, writer_lock

_logger = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def legacy_file(index_dir: str | os.PathLike[str], fingerprint: str) -> Path:
    """Where schema 1 kept the FAISS file of one metric fingerprint."""
    return Path(index_dir) / f"vectors-{_SAFE.sub('_', fingerprint)}.faiss"


def needs_migration(catalog: Catalog) -> bool:
    """True for a schema-1 catalog, or a folder that still holds a schema-1 FAISS file of one of its builds."""
    if catalog.version < 2:
        return True
    return any(legacy_file(catalog.index_dir, b.fingerprint).is_file() for b in catalog.builds())


def migrate_if_needed(catalog: Catalog, *, lock: bool = False) -> bool:
    """Migrate the folder to schema 2 when it needs it; returns True if something was migrated.

    Args:
        catalog: the open catalog.
        lock: take the writer lock (readers); writers already hold it.
    """
    if not needs_migration(catalog):
        return False
    if lock:
        with writer_lock(catalog.index_dir, wait=True):
            if not needs_migration(catalog):  # another process did it while we waited
                return False
            _migrate(catalog)
    else:
        _migrate(catalog)
    return True


def _migrate(catalog: Catalog) -> None:
    from lookalike.indexer._upkeep import update_structure
    from lookalike.indexer._vectors import VectorIndex

    for b in catalog.builds():
        path = legacy_file(catalog.index_dir, b.fingerprint)
        with catalog.session() as s, s.begin():
            if s.get(StoreRow, b.fingerprint) is None:
                s.add(StoreRow(fingerprint=b.fingerprint, storage="float32", structure="exact"))
        if not path.is_file():
            continue
        _logger.warning("migrating %s to index schema 2 (vector shards); this happens once", path)
        try:
            vi = VectorIndex.load(path, b.current_factory)
        except RuntimeError as e:
            raise IndexDamaged(path, f"faiss cannot read this schema-1 vector file ({str(e).strip()[-120:]}); "
                                     f"delete it and re-run 'lookalike index' to re-embed", None) from None
        if vi.dim != b.dim:
            raise IndexDamaged(path, f"holds {vi.dim}-d vectors, the catalog says {b.dim}-d", catalog.index_dir)
        with catalog.session() as s:
            pending = {int(i) for i in s.scalars(select(VectorRow.faiss_id).where(
                VectorRow.fingerprint == b.fingerprint, VectorRow.shard_id.is_(None)))}
        writer = ShardWriter(catalog, b.fingerprint, b.dim, storage="float32")
        moved = 0
        for ids, xb in vi.iter_blocks(65536):
            keep = np.fromiter((int(i) in pending for i in ids.tolist()), bool, len(ids))
            if not keep.any():
                continue
            p = writer.write(ids[keep], xb[keep])
            with catalog.session() as s, s.begin():
                writer.record(s, p)
            moved += int(keep.sum())
        with catalog.session() as s, s.begin():  # rows whose vector was not in the file: embedded again
            lost = s.execute(delete(VectorRow).where(VectorRow.fingerprint == b.fingerprint,
                                                     VectorRow.shard_id.is_(None))).rowcount
        if lost:
            _logger.warning("%d catalog rows of %s had no vector in %s: they will be embedded again", lost,
                            b.metric, path.name)
        del vi
        fresh = catalog.builds()
        build = next(x for x in fresh if x.fingerprint == b.fingerprint)
        update_structure(catalog, build, force=True)
        with contextlib.suppress(OSError):
            path.unlink()
        _logger.warning("migrated %d %s vectors of %s into shards", moved, b.metric, path.name)
    if catalog.version < 2:
        catalog.set_version(2)

