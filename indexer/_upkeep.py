"""Writer upkeep at the end of a run: compact shards with many tombstones, bring the derived search structure up to
date (chosen from the memory budget), and record the choice in the catalog."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sqlalchemy import delete, select, update

from lookalike.indexer import _structure
from lookalike.indexer._catalog import BuildRow, Catalog, ShardRow, StoreRow, TombstoneRow, utcnow
from lookalike.indexer._config import DEFAULT_COMPACT_AT
from lookalike.indexer._derive import build_derived, remove_stale_derived
from lookalike.indexer._shard_writer import ShardWriter
from lookalike.indexer._shards import list_shards, open_shards
from lookalike.indexer._structure import Structure, choose_structure

_logger = logging.getLogger(__name__)

#: Shards with fewer live rows than this are merged once there are ``SMALL_SHARDS_MAX`` of them.
SMALL_SHARD_ROWS = 4096
SMALL_SHARDS_MAX = 32
#: The derived file is extended / rebuilt once the shards it does not cover hold this share of its rows, or more
#: rows than an exact scan answers as fast as the file (``AUTO_EXACT_MAX``): readers scan the tail exactly.
TAIL_SHARE = 0.10
#: Rows per shard written by compaction.
COMPACT_ROWS = 1 << 18


@dataclass
class Upkeep:
    """What ``update_structure`` did: the structure in use ("Flat" = exact), why, rows compacted, derived rows."""

    factory: str
    reason: str
    compacted_shards: int = 0
    derived_rows: int = 0


def compact(catalog: Catalog, fingerprint: str, dim: int, compact_at: float = DEFAULT_COMPACT_AT) -> int:
    """Rewrite the live rows of shards whose dead share reached ``compact_at`` (and of many small shards) into new
    shards, then drop the old ones. Crash-safe: each new shard commits like any other (its rows' old locations are
    tombstoned in the same transaction), and the old shard rows go in a last transaction. Returns shards removed."""
    with catalog.session() as s:
        shards = list_shards(s, fingerprint)
    victims = [sh for sh in shards if sh.dead and sh.dead >= compact_at * sh.rows]
    small = [sh for sh in shards if sh not in victims and sh.live < SMALL_SHARD_ROWS]
    if len(small) >= SMALL_SHARDS_MAX:
        victims += small
    if not victims:
        return 0
    victims.sort(key=lambda sh: sh.seq)
    ids_v = {sh.id for sh in victims}
    view = open_shards(catalog, fingerprint, dim)
    parts = [p for p in view.parts if p.shard.id in ids_v]
    writer = ShardWriter(catalog, fingerprint, dim, storage=victims[-1].dtype)
    buf_ids: list[np.ndarray] = []
    buf_x: list[np.ndarray] = []
    nbuf = 0

    def flush() -> None:
        nonlocal buf_ids, buf_x, nbuf
        if not nbuf:
            return
        pending = writer.write(np.concatenate(buf_ids), np.concatenate(buf_x).astype(writer.dtype, copy=False))
        with catalog.session() as s, s.begin():
            writer.record(s, pending)
        buf_ids, buf_x, nbuf = [], [], 0

    for p in parts:
        for start in range(0, len(p.ids), 65536):
            ids = np.asarray(p.ids[start:start + 65536])
            xb = np.asarray(p.xb[start:start + 65536])
            if p.live is not None:
                m = p.live[start:start + 65536]
                ids, xb = ids[m], xb[m]
            if len(ids):
                buf_ids.append(ids)
                buf_x.append(xb)
                nbuf += len(ids)
            if nbuf >= COMPACT_ROWS:
                flush()
    flush()
    del view, parts
    with catalog.session() as s, s.begin():
        s.execute(delete(TombstoneRow).where(TombstoneRow.shard_id.in_(sorted(ids_v))))
        s.execute(delete(ShardRow).where(ShardRow.id.in_(sorted(ids_v))))
    for sh in victims:
        for rel in (sh.file, sh.ids_file):
            with contextlib.suppress(OSError):
                (catalog.index_dir / rel).unlink()
    _logger.info("compacted %d shards of %s", len(victims), fingerprint)
    return len(victims)


def _same_family(prev: str, new: str) -> bool:
    """Keep an existing inverted file while the auto choice only drifts (nlist within 4x, same code type)."""
    mp, mn = re.match(r"IVF(\d+),(.*)", prev), re.match(r"IVF(\d+),(.*)", new)
    if not (mp and mn) or mp.group(2) != mn.group(2):
        return False
    a, b = int(mp.group(1)), int(mn.group(1))
    return max(a, b) < 4 * min(a, b)


def update_structure(catalog: Catalog, build: BuildRow, *, compact_at: float = DEFAULT_COMPACT_AT,
                     force: bool = False, progress: Callable[[int, int], None] | None = None) -> Upkeep:
    """Compact, choose the search structure from the live count and the memory budget, and (re)build or extend the
    derived FAISS file when it is missing, of another type, or its uncovered tail passed ``TAIL_SHARE``.

    Args:
        catalog: the open catalog (hold the writer lock).
        build: the build row.
        compact_at: see ``compact``.
        force: rebuild the derived file from the shards even if it looks current (repair).
        progress: called as ``progress(done, total)`` in derived rows.

    Returns:
        An Upkeep.
    """
    fp = build.fingerprint
    compacted = compact(catalog, fp, build.dim, compact_at)
    with catalog.session() as s:
        st = s.get(StoreRow, fp)
        shards = list_shards(s, fp)
    if st is None:
        st = StoreRow(fingerprint=fp, storage="float32", structure="exact")
        with catalog.session() as s, s.begin():
            s.add(st)
    n = sum(sh.live for sh in shards)
    itemsize = 2 if st.storage == "float16" else 4
    want = choose_structure(n, build.dim, requested=build.factory, max_memory=st.max_memory, itemsize=itemsize)
    if (build.factory == "auto" and not want.exact and st.structure != "exact" and st.derived_file
            and _same_family(st.structure, want.factory)):
        want = Structure(st.structure, build.search_params, st.reason or want.reason)
    cols: dict | None = None
    rebuild = force or compacted > 0 or not st.derived_file or st.structure != want.factory
    if not want.exact:
        tail = sum(sh.rows for sh in shards if sh.id > int(st.derived_upto or 0))
        covered = int(st.derived_rows or 0)
        if rebuild or tail > min(TAIL_SHARE * covered, _structure.AUTO_EXACT_MAX):
            total = n
            if progress is not None:
                progress(0, total)
            cols = build_derived(catalog, build, want, previous=None if rebuild else st)
            if progress is not None:
                progress(total, total)
            if cols is None:  # too few vectors to train it: exact for now
                want = Structure("exact", None, f"{n} vectors are too few to train faiss {want.factory!r}: exact "
                                                f"search until there are enough")
        else:
            cols = {}  # the current derived file stays; its tail is searched exactly
    factory = "Flat" if want.exact else want.factory
    with catalog.session() as s, s.begin():
        values: dict = {"reason": want.reason, "structure": want.factory if not want.exact else "exact"}
        if want.exact:
            values.update(derived_file=None, derived_sha256=None, derived_bytes=None, derived_upto=None,
                          derived_rows=None, derived_data_sha256=None)
        elif cols:
            values.update(cols)
        s.execute(update(StoreRow).where(StoreRow.fingerprint == fp).values(**values))
        params = None if want.exact else (want.params if cols else build.search_params) or want.params
        s.execute(update(BuildRow).where(BuildRow.fingerprint == fp)
                  .values(current_factory=factory, search_params=params, count=n, updated=utcnow()))
    build.current_factory, build.search_params = factory, params
    remove_stale_derived(catalog, fp)
    return Upkeep(factory=factory, reason=want.reason, compacted_shards=compacted,
                  derived_rows=int((cols or {}).get("derived_rows") or 0))


def live_count(catalog: Catalog, fingerprint: str) -> int:
    with catalog.session() as s:
        return int(sum(r - d for r, d in s.execute(select(ShardRow.rows, ShardRow.dead)
                                                    .where(ShardRow.fingerprint == fingerprint))))
