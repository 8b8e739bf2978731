"""Reading a build's vectors: exact over memory-mapped shards, or through its derived FAISS file (``_derive``).

``ShardedVectors`` is what readers (search, dedup, info, the app, the service) hold: the build's committed shards,
memory-mapped with their tombstones applied, plus the derived file when the build has one. The derived file's ids
are row keys (``shard_id << 32 | row``); shards committed after it was built (its "tail") are searched exactly and
merged in. Nothing here writes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import faiss
import numpy as np

from lookalike.common.errors import IndexDamaged, InvalidArgument
from lookalike.indexer._catalog import BuildRow, Catalog, StoreRow
from lookalike.indexer._exact import RESIDENT_MAX_BYTES, ResidentExact, merge_topk, resident_bytes, scan_knn, scan_range
from lookalike.indexer._shards import OpenShard, open_shards, sha256_path
from lookalike.indexer._structure import needs_refine, refine_factor
from lookalike.indexer._util import mapped_file_bytes, quiet_stdout, unmap_pages

_logger = logging.getLogger(__name__)

#: Readers check sha256 of shards and the derived file when the build holds less than this (bytes); above, only
#: sizes and headers (``lookalike check`` always hashes everything).
VERIFY_MAX_BYTES = 64 << 20
#: A reader unmaps the file pages it has read once they pass this many bytes more than when it opened.
MAPPED_GROWTH_MAX = 2 << 30

_KEY_SHIFT = 32
_ROW_MASK = (1 << _KEY_SHIFT) - 1


def row_keys(shard_id: int, rows: np.ndarray) -> np.ndarray:
    """The derived file's ids of rows of a shard: ``shard_id << 32 | row``."""
    return (np.int64(shard_id) << np.int64(_KEY_SHIFT)) | rows.astype(np.int64)


class ShardedVectors:
    """A build's live vectors for search: memory-mapped shards, plus the derived FAISS file when there is one.

    ``dim``, ``ntotal``, ``ids``, ``vectors``, ``iter_blocks``, ``search`` and ``range_search``, with image ids as
    ids and distances ``1 - cosine`` (lower = more similar).

    Args:
        catalog: the open catalog.
        build: the build row (metric fingerprint, dim).
        verify: check sha256 of every file (default: only when the build is smaller than ``VERIFY_MAX_BYTES``).
    """

    def __init__(self, catalog: Catalog, build: BuildRow, *, verify: bool | None = None):
        self.index_dir = Path(catalog.index_dir)
        self.fingerprint = build.fingerprint
        with catalog.session() as s:
            self.store = s.get(StoreRow, build.fingerprint)
        small = None
        if verify is None:
            shards = open_shards(catalog, build.fingerprint, build.dim)
            small = sum(p.shard.bytes for p in shards.parts) + (self.store.derived_bytes or 0 if self.store else 0)
            verify = small <= VERIFY_MAX_BYTES
            self.shards = open_shards(catalog, build.fingerprint, build.dim, verify=True) if verify else shards
        else:
            self.shards = open_shards(catalog, build.fingerprint, build.dim, verify=verify)
        self._dim = int(build.dim)
        self._by_shard = {p.shard.id: p for p in self.shards.parts}
        self.derived: faiss.Index | None = None
        self.upto = 0
        self.factory = self.store.structure if self.store else "exact"
        self.params = build.search_params
        st = self.store
        if st is not None and st.derived_file and st.structure != "exact":
            path = self.index_dir / st.derived_file
            self.derived = load_derived(self.index_dir, st, verify=bool(verify))
            self.upto = int(st.derived_upto or 0)
            if self.params:
                apply_params(self.derived, self.params)
            _logger.debug("derived %s from %s covers shards <= %d", st.structure, path.name, self.upto)
        self._sorted: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._resident: tuple[tuple[int, ...], ResidentExact | None] | None = None
        self._lists_map = _ondisk_mapping(self.derived)
        self._mapped_base = mapped_file_bytes()

    def release_pages(self) -> None:
        """Unmap the file pages this reader has read (the derived lists and the shards); they stay in the page
        cache, and the next query maps what it needs again."""
        self.shards.release_pages()
        if self._lists_map is not None:
            unmap_pages(*self._lists_map)

    def _bound_mapped(self) -> None:
        # each query maps the lists it probes and ~64 KiB of shard around every re-ranked row: a long-lived reader
        # would grow towards the size of the index files (pages the kernel may drop, but resident all the same)
        if mapped_file_bytes() - self._mapped_base > MAPPED_GROWTH_MAX:
            self.release_pages()

    # ---- properties ---------------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def ntotal(self) -> int:
        return self.shards.ntotal

    @property
    def is_flat(self) -> bool:
        """True when searches are exact scans of the shards."""
        return self.derived is None

    @property
    def is_ivf(self) -> bool:
        return self.derived is not None and isinstance(faiss.try_extract_index_ivf(self.derived), faiss.IndexIVF)

    @property
    def tail(self) -> list[OpenShard]:
        """Shards the derived file does not cover (all of them when there is none)."""
        return [p for p in self.shards.parts if p.shard.id > self.upto] if self.derived is not None else \
            self.shards.parts

    def __len__(self) -> int:
        return self.ntotal

    def ids(self) -> np.ndarray:
        """Live image ids in storage order."""
        return self.shards.ids()

    def _lookup(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._sorted is None:
            ids, part, row = [], [], []
            for n, p in enumerate(self.shards.parts):
                r = np.arange(len(p.ids), dtype=np.int64)
                if p.live is not None:
                    r = r[p.live]
                ids.append(np.asarray(p.ids)[r])
                part.append(np.full(len(r), n, np.int32))
                row.append(r)
            a = np.concatenate(ids) if ids else np.zeros(0, np.int64)
            order = np.argsort(a, kind="stable")
            self._sorted = (a[order], (np.concatenate(part) if part else np.zeros(0, np.int32))[order],
                            (np.concatenate(row) if row else np.zeros(0, np.int64))[order])
        return self._sorted

    def __contains__(self, i: int) -> bool:
        ids, _, _ = self._lookup()
        j = np.searchsorted(ids, int(i))
        return bool(j < len(ids) and ids[j] == int(i))

    def vectors(self, ids: Iterable[int]) -> np.ndarray:
        """float32 vectors (n, dim) of live image ids. Raises KeyError for ids without a live vector."""
        want = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids), dtype=np.int64)
        sid, part, row = self._lookup()
        j = np.searchsorted(sid, want)
        ok = (j < len(sid)) & (sid[np.minimum(j, max(len(sid) - 1, 0))] == want) if len(sid) else np.zeros(
            len(want), bool)
        if not ok.all():
            raise KeyError(f"ids not in the vector index: {want[~ok][:10].tolist()}")
        out = np.empty((len(want), self.dim), np.float32)
        parts, rows = part[j], row[j]
        for n in np.unique(parts):
            sel = parts == n
            r = rows[sel]
            order = np.argsort(r)
            got = np.asarray(self.shards.parts[int(n)].xb[r[order]], np.float32)
            dst = np.flatnonzero(sel)[order]
            out[dst] = got
        self._bound_mapped()
        return out

    def iter_blocks(self, block: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, float32 vectors) of live rows in blocks, storage order, bounded memory."""
        return self.shards.iter_live(block)

    def set_search_params(self, params: str | None) -> None:
        """Apply "nprobe=32" / "efSearch=128" to the derived structure (ignored for exact search)."""
        self.params = params
        if self.derived is not None and params:
            apply_params(self.derived, params)

    # ---- search -----------------------------------------------------------------------------------------------
    def _check(self, x: np.ndarray, what: str) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise InvalidArgument(f"{what} has shape {x.shape}; this index holds {self.dim}-d vectors")
        return x

    def _decode(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row keys → (image ids, live mask); -1 / unknown / tombstoned keys are not live."""
        ids = np.full(keys.shape, -1, np.int64)
        live = np.zeros(keys.shape, bool)
        valid = keys >= 0
        sid = np.where(valid, keys >> _KEY_SHIFT, -1)
        row = np.where(valid, keys & _ROW_MASK, 0)
        for s in np.unique(sid[valid]):
            p = self._by_shard.get(int(s))
            if p is None:  # a shard compacted away since the derived file was built
                continue
            m = sid == s
            r = row[m]
            ids[m] = np.asarray(p.ids)[r]
            live[m] = True if p.live is None else p.live[r]
        return ids, live

    def exact_tail(self) -> ResidentExact | None:
        """The resident copy of the rows searched exactly (the tail; every row of an exact build), made on first use;
        None when it would exceed ``RESIDENT_MAX_BYTES`` (then the memory map is scanned block by block)."""
        tail = self.tail
        key = tuple(p.shard.id for p in tail)
        if self._resident is None or self._resident[0] != key:
            fits = bool(tail) and resident_bytes(tail) <= RESIDENT_MAX_BYTES
            self._resident = (key, ResidentExact(tail, self.dim) if fits else None)
        return self._resident[1]

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k nearest live vectors: (D, I), D = 1 - cosine ascending, I = image ids (-1 padded)."""
        xq = self._check(xq, "xq")
        if k < 1:
            raise InvalidArgument(f"k must be >= 1, got {k}")
        S = np.full((len(xq), k), -np.inf, np.float32)
        I = np.full((len(xq), k), -1, np.int64)  # noqa: E741
        if self.derived is not None and self.derived.ntotal:
            refine = needs_refine(self.factory)
            kk = min(int(self.derived.ntotal), k * refine_factor(self.factory) + self._dead_covered(k))
            Sd, keys = self.derived.search(xq, kk)
            ids, live = self._decode(keys)
            if refine:
                Sd = self._exact_scores(xq, keys, live)
            Sd = np.where(live, Sd, -np.inf).astype(np.float32)
            ids = np.where(live, ids, -1)
            S, I = merge_topk(S, I, Sd, ids, k)  # noqa: E741
        resident = self.exact_tail()
        if resident is not None:
            S, I = merge_topk(S, I, *resident.search(xq, k), k)  # noqa: E741
        else:
            for p in self.tail:
                S, I = scan_knn(p, xq, k, S, I)  # noqa: E741
        D = np.where(I >= 0, 1.0 - S, np.inf).astype(np.float32)
        self._bound_mapped()
        return D, I

    def _dead_covered(self, k: int) -> int:
        dead = sum(len(p.ids) - int(p.live.sum()) for p in self.shards.parts
                   if p.live is not None and p.shard.id <= self.upto)
        return min(dead, 4 * k)

    def _exact_scores(self, xq: np.ndarray, keys: np.ndarray, live: np.ndarray) -> np.ndarray:
        """Exact inner products of each query with its candidate row keys (from the shards)."""
        out = np.full(keys.shape, -np.inf, np.float32)
        sid = np.where(live, keys >> _KEY_SHIFT, -1)
        for s in np.unique(sid[live]):
            p = self._by_shard[int(s)]
            qi, ci = np.nonzero(sid == s)
            rows = keys[qi, ci] & _ROW_MASK
            xb = np.asarray(p.xb[np.sort(rows)], np.float32)
            pos = np.searchsorted(np.sort(rows), rows)
            out[qi, ci] = np.einsum("ij,ij->i", xq[qi], xb[pos])
        return out

    def range_search(self, xq: np.ndarray, max_distance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All live vectors within ``max_distance`` (1 - cosine) of each query: (lims, D, I) as faiss returns."""
        xq = self._check(xq, "xq")
        thr = float(1.0 - max_distance - 1e-6)
        per_q: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(len(xq))]
        if self.derived is not None and self.derived.ntotal:
            lims, Sd, keys = self.derived.range_search(xq, thr)
            ids, live = self._decode(keys)
            if needs_refine(self.factory):
                qi = np.repeat(np.arange(len(xq)), np.diff(lims.astype(np.int64)))
                Sd = self._exact_scores(xq[qi], keys[:, None], live[:, None])[:, 0] if len(keys) else Sd
                live &= Sd >= thr
            for q in range(len(xq)):
                sl = slice(lims[q], lims[q + 1])
                m = live[sl]
                per_q[q].append((Sd[sl][m], ids[sl][m]))
        resident = self.exact_tail()
        for q, s, i in resident.range_search(xq, thr) if resident is not None else \
                (hit for p in self.tail for hit in scan_range(p, xq, thr)):
            per_q[q].append((s, i))
        lims_out = [0]
        Ds, Is = [], []
        for items in per_q:
            s = np.concatenate([a for a, _ in items]) if items else np.zeros(0, np.float32)
            i = np.concatenate([b for _, b in items]) if items else np.zeros(0, np.int64)
            Ds.append(1.0 - s)
            Is.append(i)
            lims_out.append(lims_out[-1] + len(i))
        D = np.concatenate(Ds).astype(np.float32) if Ds else np.zeros(0, np.float32)
        I = np.concatenate(Is).astype(np.int64) if Is else np.zeros(0, np.int64)  # noqa: E741
        self._bound_mapped()
        return np.asarray(lims_out, np.int64), D, I


def apply_params(index: faiss.Index, params: str) -> None:
    """Apply "nprobe=32" / "efSearch=128" (comma separated) to a faiss index."""
    for part in params.split(","):
        key, _, val = part.partition("=")
        key, val = key.strip(), val.strip()
        try:
            if key == "nprobe":
                faiss.extract_index_ivf(index).nprobe = int(val)
            elif key == "efSearch":
                inner = index.index if isinstance(index, faiss.IndexIDMap) else index
                faiss.downcast_index(inner).hnsw.efSearch = int(val)
            else:
                raise InvalidArgument(f"unknown search parameter {key!r}; use nprobe=N or efSearch=N")
        except (AttributeError, RuntimeError) as e:
            _logger.debug("search parameter %s not applied: %s", part, e)


def _ondisk_mapping(index: faiss.Index | None) -> tuple[int, int] | None:
    """(address, bytes) of the memory-mapped lists of an on-disk inverted file, else None."""
    ivf = faiss.try_extract_index_ivf(index) if index is not None else None
    if ivf is None:
        return None
    inv = faiss.downcast_InvertedLists(ivf.invlists)
    if isinstance(inv, faiss.OnDiskInvertedLists) and inv.totsize and inv.ptr is not None:
        return int(inv.ptr), int(inv.totsize)
    return None


def load_derived(index_dir: Path, st: StoreRow, *, verify: bool = False) -> faiss.Index:
    """Open a build's derived FAISS file (inverted lists memory-mapped); IndexDamaged when it cannot be used."""
    path = index_dir / st.derived_file  # type: ignore[operator]
    if not path.is_file():
        raise IndexDamaged(path, "the derived search file is missing", index_dir)
    if st.derived_data_sha256 and not data_file(path).is_file():
        raise IndexDamaged(data_file(path), "the inverted-list data file is missing", index_dir)
    if st.derived_bytes is not None and path.stat().st_size != st.derived_bytes:
        raise IndexDamaged(path, f"{path.stat().st_size} bytes, the catalog recorded {st.derived_bytes}", index_dir)
    if verify:
        if st.derived_sha256 and sha256_path(path) != st.derived_sha256:
            raise IndexDamaged(path, "its sha256 differs from the one recorded when it was written", index_dir)
        data = data_file(path)
        if st.derived_data_sha256 and data.is_file() and sha256_path(data) != st.derived_data_sha256:
            raise IndexDamaged(data, "its sha256 differs from the one recorded when it was written", index_dir)
    try:
        with quiet_stdout():
            index = faiss.read_index(os.fspath(path), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError as e:
        raise IndexDamaged(path, f"faiss cannot read it ({str(e).strip().splitlines()[-1][:120]})",
                           index_dir) from None
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        inv = faiss.downcast_InvertedLists(ivf.invlists)
        if isinstance(inv, faiss.OnDiskInvertedLists):
            data = Path(inv.filename)
            want = data_file(path)
            if not data.is_file():
                raise IndexDamaged(want, "the inverted-list data file is missing", index_dir)
            if data.stat().st_size < inv.totsize:
                raise IndexDamaged(data, f"truncated ({data.stat().st_size} of {inv.totsize} bytes)", index_dir)
    return index


def data_file(derived: Path) -> Path:
    """The ``.ivfdata`` file of an on-disk inverted file."""
    return derived.with_suffix(".ivfdata")
