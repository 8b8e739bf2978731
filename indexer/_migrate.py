"""One-time migration of schema-1 index folders (one whole FAISS file per metric) to shards (schema 2).

Only writers migrate: the writer session (``_writer``) calls ``migrate_if_needed`` once, under the lock, right after
opening the catalog, so any writer command (``lookalike index``, ``import``, ``check --repair``) upgrades a folder.
Readers never get here: the catalog refuses to open an older schema for reading (``IndexNeedsUpgrade``), and the read
path of an up-to-date index contains none of this.

The committed vectors of each ``vectors-<fp>.faiss`` file are copied into shards (checked against the catalog rows),
the derived search structure the build asked for is built from them, the catalog is marked schema 2, and only then
is the old file deleted. A kill at any point leaves either the old file (the migration starts over) or committed
shards (it carries on): nothing is lost.

Schema 1 kept Flat / HNSW / refined types inside an ``IndexIDMap2`` and inverted files with their ids natively;
``legacy_blocks`` reads both (all this module needs of the schema-1 vector index).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
from sqlalchemy import delete, select

from lookalike.common.errors import IndexDamaged
from lookalike.indexer._catalog import Catalog, StoreRow, VectorRow
from lookalike.indexer._shard_writer import ShardWriter

_logger = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
#: Vectors copied per shard while migrating.
BLOCK_ROWS = 65536


def legacy_file(index_dir: str | os.PathLike[str], fingerprint: str) -> Path:
    """Where schema 1 kept the FAISS file of one metric fingerprint."""
    return Path(index_dir) / f"vectors-{_SAFE.sub('_', fingerprint)}.faiss"


def needs_migration(catalog: Catalog) -> bool:
    """True for a schema-1 catalog, or a folder that still holds a schema-1 FAISS file of one of its builds."""
    if catalog.version < 2:
        return True
    return any(legacy_file(catalog.index_dir, b.fingerprint).is_file() for b in catalog.builds())


def legacy_blocks(index: faiss.Index, block: int = BLOCK_ROWS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, float32 vectors) of a schema-1 FAISS index in blocks: an ``IndexIDMap2`` around any type, or an
    inverted file holding its ids natively."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap):
        ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        inner = faiss.downcast_index(index.index)
        for s in range(0, len(ids), block):
            n = min(block, len(ids) - s)
            yield ids[s:s + n], np.asarray(inner.reconstruct_n(s, n), np.float32)
        return
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        raise TypeError(f"expected a faiss IndexIDMap2 or IndexIVF, got {type(index).__name__}")
    inv = ivf.invlists
    parts = [np.zeros(0, np.int64)]
    for lst in range(ivf.nlist):
        n = inv.list_size(lst)
        if n:
            parts.append(faiss.rev_swig_ptr(inv.get_ids(lst), n).astype(np.int64, copy=True))
    ids = np.concatenate(parts)
    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
    for s in range(0, len(ids), block):
        chunk = ids[s:s + block]
        yield chunk, np.stack([index.reconstruct(int(i)) for i in chunk]).astype(np.float32) if len(chunk) else \
            np.zeros((0, index.d), np.float32)


def migrate_if_needed(catalog: Catalog) -> bool:
    """Migrate the folder to schema 2 when it needs it (hold the writer lock); returns True if it did."""
    if not needs_migration(catalog):
        return False
    _migrate(catalog)
    return True


def _migrate(catalog: Catalog) -> None:
    from lookalike.indexer._upkeep import update_structure

    for b in catalog.builds():
        path = legacy_file(catalog.index_dir, b.fingerprint)
        with catalog.session() as s, s.begin():
            if s.get(StoreRow, b.fingerprint) is None:
                s.add(StoreRow(fingerprint=b.fingerprint, storage="float32", structure="exact"))
        if not path.is_file():
            continue
        _logger.warning("migrating %s to index schema 2 (vector shards); this happens once", path)
        try:
            index = faiss.read_index(os.fspath(path))
        except RuntimeError as e:
            raise IndexDamaged(path, f"faiss cannot read this schema-1 vector file ({str(e).strip()[-120:]}); "
                                     f"delete it and re-run 'lookalike index' to re-embed", None) from None
        if index.d != b.dim:
            raise IndexDamaged(path, f"holds {index.d}-d vectors, the catalog says {b.dim}-d", catalog.index_dir)
        with catalog.session() as s:
            pending = np.fromiter(s.scalars(select(VectorRow.faiss_id).where(
                VectorRow.fingerprint == b.fingerprint, VectorRow.shard_id.is_(None))), np.int64)
        writer = ShardWriter(catalog, b.fingerprint, b.dim, storage="float32")
        moved = 0
        for ids, xb in legacy_blocks(index):
            keep = np.isin(ids, pending)
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
        del index
        build = next(x for x in catalog.builds() if x.fingerprint == b.fingerprint)
        update_structure(catalog, build, force=True)
        with contextlib.suppress(OSError):
            path.unlink()
        _logger.warning("migrated %d %s vectors of %s into shards", moved, b.metric, path.name)
    if catalog.version < 2:
        catalog.set_version(2)
