"""Searching a build's shards: exact over memory-mapped shards, or through a derived FAISS file built from them.

The derived file is never the only copy of anything: it is rebuilt from the shards (``build_derived``) when it is
missing, damaged or stale. Its FAISS ids are *row keys* (``shard_id << 32 | row``), so a shard row that is later
tombstoned is filtered out at search time and the derived file never needs an in-place removal. Inverted files are
written with faiss's ``OnDiskInvertedLists`` (``faiss.contrib.ondisk.merge_ondisk``): the lists live in a
``.ivfdata`` file that readers memory-map. Shards committed after the derived file was built (its "tail") are
searched exactly and merged in.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from sqlalchemy import select

from lookalike.common.errors import InvalidArgument
from lookalike.common.io import fsync_dir
from lookalike.indexer._catalog import BuildRow, Catalog, IndexDamaged, StoreRow
from lookalike.indexer._shards import OpenShard, ShardSet, open_shards, sha256_path, shard_folder

_logger = logging.getLogger(__name__)

#: Exact search up to this many vectors when the user names no structure and gives no memory budget.
AUTO_EXACT_MAX = 200_000
#: Bytes of shard vectors copied out of the memory map per block of an exact scan.
SCAN_BLOCK_BYTES = 64 << 20
#: Bytes of one (queries x block) score matrix.
SCORE_BLOCK_BYTES = 256 << 20
#: Readers check sha256 of shards and the derived file when the build holds less than this (bytes); above, only
#: sizes and headers (``lookalike check`` always hashes everything).
VERIFY_MAX_BYTES = 64 << 20
#: Candidates fetched per result when re-ranking compressed (SQ / PQ) codes with the exact vectors of the shards.
REFINE_FACTOR = 4

_KEY_SHIFT = 32
_ROW_MASK = (1 << _KEY_SHIFT) - 1
_MEM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)


def parse_memory(text: str | int | None) -> int | None:
    """"4G", "512M", "1.5GiB", 10**9 → bytes (None stays None)."""
    if text is None or isinstance(text, int):
        return text
    m = _MEM.match(str(text))
    if not m:
        raise InvalidArgument(f"memory budget {text!r} not understood; write e.g. 4G, 512M or 2.5GB")
    mult = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    return int(float(m.group(1)) * mult)


def row_keys(shard_id: int, rows: np.ndarray) -> np.ndarray:
    return (np.int64(shard_id) << np.int64(_KEY_SHIFT)) | rows.astype(np.int64)


def libc_flush() -> None:
    """Flush C stdio buffers (what faiss printed) before file descriptor 1 is switched."""
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Silence faiss's C-level prints to stdout ("resizing ...") during on-disk list operations."""
    fd = 1  # faiss prints with C stdio to file descriptor 1, whatever Python's sys.stdout is
    with contextlib.suppress(AttributeError, ValueError, OSError):
        sys.stdout.flush()
    libc_flush()
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        libc_flush()
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


@dataclass(frozen=True)
class Structure:
    """The chosen search structure of a build: "exact" or a faiss factory string, its search parameters and why."""

    factory: str
    params: str | None
    reason: str

    @property
    def exact(self) -> bool:
        return self.factory == "exact"


def auto_nlist(n: int) -> int:
    """Inverted lists for ``n`` vectors: about 4 sqrt(n), a power of two in [1024, 65536]."""
    nlist = 2 ** round(math.log2(4 * math.sqrt(max(n, 1))))
    return int(min(max(nlist, 1024), 65536))


def choose_structure(n: int, dim: int, *, requested: str = "auto", max_memory: int | None = None,
                     itemsize: int = 4, exact_max: int | None = None) -> Structure:
    """Pick the structure for ``n`` vectors, the way autofaiss does: from the memory budget.

    "Flat" (or "exact") is an exact scan of the shards. "auto": exact up to ``exact_max`` vectors (default
    ``AUTO_EXACT_MAX``, 200k) when they also fit ``max_memory``; beyond, an inverted file with about 4 sqrt(n) lists
    whose codes fit the budget: Flat codes (4 bytes/dim), else SQ8 (1 byte/dim), else PQ (m bytes per vector),
    re-ranked with the exact vectors of the shards. A factory string is used as given.
    """
    req = (requested or "auto").strip()
    exact_max = AUTO_EXACT_MAX if exact_max is None else exact_max
    if req in ("Flat", "exact"):
        return Structure("exact", None, "exact search was requested")
    raw = n * dim * itemsize
    if req != "auto":
        params = f"nprobe={_nprobe(req)}" if "IVF" in req else None
        return Structure(req, params, f"faiss {req!r} was requested")
    if n <= exact_max:
        if max_memory is None:
            return Structure("exact", None, f"{n} vectors <= {exact_max}: exact search")
        if raw <= max_memory:
            return Structure("exact", None, f"{n} vectors <= {exact_max} and their {raw / 2**30:.2f} GiB fit the "
                                            f"memory budget {max_memory / 2**30:.2f} GiB: exact search")
    nlist = auto_nlist(n)
    params = f"nprobe={min(nlist, max(16, nlist // 128))}"
    budget = max_memory
    if budget is None or n * dim * 4 <= budget:
        why = "no memory budget given" if budget is None else f"Flat codes ({n * dim * 4 / 2**30:.2f} GiB) fit"
        return Structure(f"IVF{nlist},Flat", params, f"{n} vectors: inverted file, {why}; lists memory-mapped")
    if n * dim <= budget:
        return Structure(f"IVF{nlist},SQ8", params, f"float codes ({n * dim * 4 / 2**30:.2f} GiB) exceed the budget "
                                                    f"{budget / 2**30:.2f} GiB: 8-bit codes, re-ranked from the shards")
    m = max(1, budget // max(n, 1))
    cands = [c for c in range(min(m, dim), 0, -1) if dim % c == 0]
    m = cands[0] if cands else 1
    return Structure(f"IVF{nlist},PQ{m}", params, f"8-bit codes exceed the budget {budget / 2**30:.2f} GiB: "
                                                  f"PQ{m} ({m} bytes per vector), re-ranked from the shards")


def _nprobe(factory: str) -> int:
    m = re.search(r"IVF(\d+)", factory)
    nlist = int(m.group(1)) if m else 1024
    return max(1, min(nlist, max(16, nlist // 128)))


def min_train_size(factory: str) -> int:
    """Vectors needed to train ``factory`` well (39 per centroid, as faiss's k-means asks; 0 if untrained)."""
    need = 0
    for m in re.finditer(r"IVF(\d+)", factory):
        need = max(need, 39 * int(m.group(1)))
    for m in re.finditer(r"PQ(\d+)(?:x(\d+))?", factory):
        bits = int(m.group(2) or 8)
        need = max(need, 39 * (1 << bits))
    return need


def _needs_refine(factory: str) -> bool:
    return "IVF" in factory and not factory.replace(" ", "").endswith(",Flat")


# ---- reading ------------------------------------------------------------------------------------------------
class ShardedVectors:
    """A build's live vectors for search: memory-mapped shards, plus the derived FAISS file when there is one.

    The read interface of the older ``VectorIndex`` (``dim``, ``ntotal``, ``ids``, ``vectors``, ``iter_blocks``,
    ``search``, ``range_search``) with image ids as ids and distances ``1 - cosine`` (lower = more similar).

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

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k nearest live vectors: (D, I), D = 1 - cosine ascending, I = image ids (-1 padded)."""
        xq = self._check(xq, "xq")
        if k < 1:
            raise InvalidArgument(f"k must be >= 1, got {k}")
        S = np.full((len(xq), k), -np.inf, np.float32)
        I = np.full((len(xq), k), -1, np.int64)  # noqa: E741
        if self.derived is not None and self.derived.ntotal:
            refine = _needs_refine(self.factory)
            kk = min(int(self.derived.ntotal), k * (REFINE_FACTOR if refine else 1) + self._dead_covered(k))
            Sd, keys = self.derived.search(xq, kk)
            ids, live = self._decode(keys)
            if refine:
                Sd = self._exact_scores(xq, keys, live)
            Sd = np.where(live, Sd, -np.inf).astype(np.float32)
            ids = np.where(live, ids, -1)
            S, I = _merge_topk(S, I, Sd, ids, k)  # noqa: E741
        for p in self.tail:
            S, I = _scan_knn(p, xq, k, S, I)  # noqa: E741
        D = np.where(I >= 0, 1.0 - S, np.inf).astype(np.float32)
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
            if _needs_refine(self.factory):
                qi = np.repeat(np.arange(len(xq)), np.diff(lims))
                Sd = self._exact_scores(xq[qi], keys[:, None], live[:, None])[:, 0] if len(keys) else Sd
                live &= Sd >= thr
            for q in range(len(xq)):
                sl = slice(lims[q], lims[q + 1])
                m = live[sl]
                per_q[q].append((Sd[sl][m], ids[sl][m]))
        for p in self.tail:
            for q, s, i in _scan_range(p, xq, thr):
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
        return np.asarray(lims_out, np.int64), D, I


def _rows_per_block(dim: int, itemsize: int, nq: int) -> int:
    return max(1, min(SCAN_BLOCK_BYTES // (dim * itemsize), SCORE_BLOCK_BYTES // (4 * max(nq, 1))))


def _blocks(p: OpenShard, nq: int) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    step = _rows_per_block(p.xb.shape[1], p.xb.dtype.itemsize, nq)
    for s in range(0, len(p.ids), step):
        m = p.live[s:s + step] if p.live is not None else None
        if m is not None and not m.any():
            continue
        yield s, np.asarray(p.xb[s:s + step], np.float32), m


def _scores(xq: np.ndarray, xb: np.ndarray) -> np.ndarray:
    # a few queries go through BLAS's matrix-vector path (xb @ q.T), faster than the transposed product for them
    return np.ascontiguousarray((xb @ xq.T).T) if len(xq) <= 16 else xq @ xb.T


def _scan_knn(p: OpenShard, xq: np.ndarray, k: int, S: np.ndarray, I: np.ndarray  # noqa: E741
              ) -> tuple[np.ndarray, np.ndarray]:
    for s, xb, m in _blocks(p, len(xq)):
        sc = _scores(xq, xb)
        ids = np.broadcast_to(np.asarray(p.ids[s:s + len(xb)]), sc.shape)
        if m is not None:
            sc = np.where(m[None, :], sc, -np.inf)
        S, I = _merge_topk(S, I, sc, ids, k)  # noqa: E741
    return S, I


def _merge_topk(S: np.ndarray, I: np.ndarray, S2: np.ndarray, I2: np.ndarray, k: int  # noqa: E741
                ) -> tuple[np.ndarray, np.ndarray]:
    """The k best (highest score) of two candidate sets per query; -inf scores carry id -1."""
    if S2.shape[1] > k:  # keep the block's own k best before concatenating
        part = np.argpartition(-S2, k - 1, axis=1)[:, :k]
        S2, I2 = np.take_along_axis(S2, part, 1), np.take_along_axis(I2, part, 1)
    Sa = np.concatenate([S, S2], axis=1)
    Ia = np.concatenate([I, I2], axis=1)
    order = np.argsort(-Sa, axis=1, kind="stable")[:, :k]
    Sa, Ia = np.take_along_axis(Sa, order, 1), np.take_along_axis(Ia, order, 1)
    Ia = np.where(np.isfinite(Sa), Ia, -1)
    return Sa, Ia


def _scan_range(p: OpenShard, xq: np.ndarray, thr: float) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    for s, xb, m in _blocks(p, len(xq)):
        sc = _scores(xq, xb)
        hit = sc >= thr
        if m is not None:
            hit &= m[None, :]
        qi, ci = np.nonzero(hit)
        if not len(qi):
            continue
        ids = np.asarray(p.ids[s:s + len(xb)])
        for q in np.unique(qi):
            sel = qi == q
            yield int(q), sc[q, ci[sel]], ids[ci[sel]]


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


# ---- writing ------------------------------------------------------------------------------------------------
def _sample(shards: ShardSet, n: int, seed: int = 0) -> np.ndarray:
    """``n`` live vectors drawn at random over the shards (float32)."""
    total = shards.ntotal
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(total, size=min(n, total), replace=False))
    out, base = [], 0
    for p in shards.parts:
        rows = np.arange(len(p.ids)) if p.live is None else np.flatnonzero(p.live)
        sel = pick[(pick >= base) & (pick < base + len(rows))] - base
        if len(sel):
            out.append(np.asarray(p.xb[rows[sel]], np.float32))
        base += len(rows)
    return np.concatenate(out) if out else np.zeros((0, shards.dim), np.float32)


def _create(dim: int, factory: str) -> faiss.Index:
    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise InvalidArgument(f"invalid faiss factory string {factory!r}: {str(e).strip().splitlines()[-1]}; "
                         f"examples: 'Flat', 'HNSW32', 'IVF4096,Flat', 'IVF4096,PQ64'") from None


def validate_factory(dim: int, factory: str) -> None:
    """Raise ValueError when ``factory`` is not a faiss factory string (or "auto" / "Flat")."""
    if factory.strip() in ("auto", "Flat", "exact"):
        return
    _create(dim, factory.strip())


def build_derived(catalog: Catalog, build: BuildRow, structure: Structure, *, previous: StoreRow | None = None,
                  block: int = 65536, seed: int = 0) -> dict | None:
    """Build (or extend) the derived FAISS file of a build from its shards; returns the new ``stores`` columns.

    Returns None when the structure is exact or there are too few vectors to train it. Inverted files reuse the
    previous file's trained quantizer and lists when it covers a prefix of the shards (only the tail is added); other
    types are rebuilt. The files are written under a new generation name, fsynced, and only then named in the
    catalog by the caller; older generations are removed by ``remove_stale_derived``.
    """
    if structure.exact:
        return None
    shards = open_shards(catalog, build.fingerprint, build.dim)
    n = shards.ntotal
    if n == 0:
        return None
    need = min_train_size(structure.factory)
    if n < need:
        _logger.warning("faiss %r wants %d training vectors; %d indexed so far: staying exact for now",
                        structure.factory, need, n)
        return None
    folder = shard_folder(catalog.index_dir, build.fingerprint)
    folder.mkdir(parents=True, exist_ok=True)
    gen = 1
    if previous is not None and previous.derived_file:
        m = re.search(r"derived-(\d+)", previous.derived_file)
        gen = int(m.group(1)) + 1 if m else 1
    name = f"derived-{gen:06d}"
    path = folder / f"{name}.faiss"
    upto = max(p.shard.id for p in shards.parts)
    is_ivf = "IVF" in structure.factory
    reuse = None
    if (is_ivf and previous is not None and previous.derived_file and previous.structure == structure.factory
            and previous.derived_upto):
        with contextlib.suppress(IndexDamaged):
            reuse = load_derived(catalog.index_dir, previous)
    if is_ivf:
        if reuse is not None:
            trained = faiss.clone_index(faiss.extract_index_ivf(reuse).quantizer)
            empty = _create(build.dim, structure.factory)
            ivf = faiss.extract_index_ivf(empty)
            ivf.quantizer = trained
            ivf.own_fields = True
            trained.this.disown()
            if not empty.is_trained:  # SQ / PQ codes: retrain (cheap) from a sample
                empty.train(_sample(shards, max(need, 1), seed))
            ivf.is_trained = True
            src = reuse
            new_parts = [p for p in shards.parts if p.shard.id > int(previous.derived_upto or 0)]
        else:
            empty = _create(build.dim, structure.factory)
            sample = _sample(shards, max(need, min(n, 100_000)), seed)
            _logger.info("training faiss %s on %d of %d vectors", structure.factory, len(sample), n)
            empty.train(sample)
            src = None
            new_parts = shards.parts
        rows = _write_ondisk(empty, src, new_parts, path, block)
    else:
        index = _create(build.dim, structure.factory)
        if not index.is_trained:
            index.train(_sample(shards, max(need, min(n, 100_000)), seed))
        index = faiss.IndexIDMap2(index)
        rows = 0
        for p in shards.parts:
            for s in range(0, len(p.ids), block):
                xb = np.asarray(p.xb[s:s + block], np.float32)
                index.add_with_ids(xb, row_keys(p.shard.id, np.arange(s, s + len(xb))))
                rows += len(xb)
        _write_faiss(index, path)
    return {"structure": structure.factory, "derived_file": path.relative_to(catalog.index_dir).as_posix(),
            "derived_sha256": sha256_path(path), "derived_bytes": path.stat().st_size, "derived_upto": upto,
            "derived_data_sha256": sha256_path(data_file(path)) if data_file(path).is_file() else None,
            "derived_rows": rows}


def _write_faiss(index: faiss.Index, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        faiss.write_index(index, os.fspath(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise OSError(f"could not write the derived search file {path} ({e}); the index is unchanged") from e
    fsync_dir(path.parent)


def _write_ondisk(empty: faiss.Index, previous: faiss.Index | None, parts: list[OpenShard], path: Path,
                  block: int) -> int:
    """Merge the previous file's lists (memory-mapped) and the new shards' rows into a new on-disk inverted file.

    The new rows are added block by block to small in-memory inverted files written to a temporary folder and
    memory-mapped back (the ``faiss.contrib.ondisk`` recipe), so memory holds one block at a time.
    """
    data = data_file(path)
    ivf_empty = faiss.extract_index_ivf(empty)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".derived-build-") as tmpdir:
        keep: list[faiss.Index] = []
        lists = faiss.InvertedListsPtrVector()
        if previous is not None:
            lists.push_back(faiss.extract_index_ivf(previous).invlists)
        rows = 0
        for p in parts:
            for s in range(0, len(p.ids), block):
                xb = np.asarray(p.xb[s:s + block], np.float32)
                ix = faiss.clone_index(empty)
                ix.add_with_ids(xb, row_keys(p.shard.id, np.arange(s, s + len(xb))))
                fname = os.path.join(tmpdir, f"part-{rows:012d}.faiss")
                faiss.write_index(ix, fname)
                del ix
                back = faiss.read_index(fname, faiss.IO_FLAG_MMAP)
                keep.append(back)
                lists.push_back(faiss.extract_index_ivf(back).invlists)
                rows += len(xb)
        tmp_data = os.path.join(tmpdir, data.name)
        ondisk = faiss.OnDiskInvertedLists(ivf_empty.nlist, ivf_empty.code_size, tmp_data)
        with quiet_stdout():
            ntotal = ondisk.merge_from_multiple(lists.data(), lists.size(), False)
        out = faiss.clone_index(empty)
        out_ivf = faiss.extract_index_ivf(out)
        out_ivf.replace_invlists(ondisk, True)
        ondisk.this.disown()
        out.ntotal = out_ivf.ntotal = ntotal
        tmp_index = os.path.join(tmpdir, path.name)
        faiss.write_index(out, tmp_index)
        del out, keep
        for f in (tmp_data, tmp_index):
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp_data, data)
        os.replace(tmp_index, path)
    fsync_dir(path.parent)
    return int(ntotal)


def remove_stale_derived(catalog: Catalog, fingerprint: str) -> None:
    """Delete derived files of a build that the catalog no longer names (writer only)."""
    folder = shard_folder(catalog.index_dir, fingerprint)
    if not folder.is_dir():
        return
    with catalog.session() as s:
        cur = s.scalar(select(StoreRow.derived_file).where(StoreRow.fingerprint == fingerprint))
    keep = set()
    if cur:
        keep = {Path(cur).name, data_file(Path(cur)).name}
    for p in folder.iterdir():
        if p.name.startswith("derived-") and p.name not in keep:
            with contextlib.suppress(OSError):
                p.unlink()
        elif p.name.startswith(".derived-build-") or (p.name.startswith(".derived-") and ".tmp-" in p.name):
            import shutil

            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
