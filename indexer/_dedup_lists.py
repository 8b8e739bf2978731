"""Near-duplicate pairs on an inverted-file index, list by list, in bounded memory.

Every vector sits in the inverted list of its nearest centroid. Two near-duplicates (distance ~0.01) are almost
always in the same list or in lists whose centroids are close, so instead of one range search per vector (each
scanning ``nprobe`` lists one vector at a time), the lists are compared pairwise: each list with itself and with
the lists of its ``nprobe - 1`` nearest centroids, every unordered pair of lists once, as one matrix product of
their vectors (BLAS). Flat codes are read in place from the memory-mapped ``.ivfdata`` file (no copy), and the
mapping's pages are released as the scan moves on, so resident memory stays near one neighbourhood of lists.
8-bit scalar codes are decoded list by list (sequential reads of the lists file) and compared with a small margin;
the pairs they find are then checked with the exact vectors of the shards. Other codes (PQ) are compared with the
exact vectors of the shards, gathered by row key.
"""

from __future__ import annotations

import logging
import mmap
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass

import faiss
import numpy as np

from lookalike.indexer._structure import dedup_nprobe

_logger = logging.getLogger(__name__)

#: Release the pages of the memory-mapped lists after this many bytes were read through them.
RELEASE_BYTES = 128 << 20
#: Pairs found on 8-bit codes checked with the shards' vectors per batch: each row read maps ~64 KiB of shard around
#: it (the kernel's fault-around), and the reader unmaps them between batches once they pass its budget.
VERIFY_BATCH = 8192
#: Similarity margin of the scan on decoded 8-bit codes (their error on a dot product is ~1e-3): candidate pairs
#: within threshold + margin are checked with the exact vectors.
SQ_MARGIN = 0.01
#: Decoded lists kept for their partner lists.
DECODED_LISTS = 64


@dataclass
class ProbeReport:
    """What a dedup scan looked at.

    Attributes:
        method: "exact" (every pair of vectors) or "ivf-lists" (lists compared with their neighbour lists).
        vectors: live vectors scanned.
        lists: inverted lists (0 for exact).
        neighbour_lists: lists each list was compared with besides itself (``nprobe - 1``).
        list_pairs: unordered pairs of lists compared (self pairs included).
        comparisons: vector pairs whose similarity was computed.
        share_of_exact: comparisons / (n (n - 1) / 2), the work relative to an exact all-pairs scan.
    """

    method: str
    vectors: int
    lists: int = 0
    neighbour_lists: int = 0
    list_pairs: int = 0
    comparisons: int = 0
    share_of_exact: float = 1.0

    def as_dict(self) -> dict:
        return asdict(self)


class _Lists:
    """Zero-copy access to the ids and (Flat) codes of an on-disk inverted file, with page release."""

    def __init__(self, ivf: faiss.IndexIVF):
        self.ivf = ivf
        self.nlist = int(ivf.nlist)
        self.code_size = int(ivf.code_size)
        inv = faiss.downcast_InvertedLists(ivf.invlists)
        self.inv = inv
        self.mm: mmap.mmap | None = None
        self.read = 0
        if isinstance(inv, faiss.OnDiskInvertedLists) and inv.totsize:
            fd = os.open(inv.filename, os.O_RDONLY)
            try:
                self.mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            finally:
                os.close(fd)
            self.where = []
            for n in range(self.nlist):
                one = inv.lists.at(n)
                self.where.append((int(one.offset), int(one.size), int(one.capacity)))

    def size(self, n: int) -> int:
        return self.where[n][1] if self.mm is not None else int(self.inv.list_size(n))

    def keys(self, n: int) -> np.ndarray:
        if self.mm is not None:
            off, size, cap = self.where[n]
            return np.frombuffer(self.mm, np.int64, size, off + cap * self.code_size)
        size = int(self.inv.list_size(n))
        return faiss.rev_swig_ptr(self.inv.get_ids(n), size).astype(np.int64, copy=True) if size else np.zeros(
            0, np.int64)

    def codes(self, n: int) -> np.ndarray:
        """(size, code_size) uint8 view of list n's codes."""
        if self.mm is not None:
            off, size, _ = self.where[n]
            self.read += size * self.code_size
            return np.frombuffer(self.mm, np.uint8, size * self.code_size, off).reshape(size, self.code_size)
        size = int(self.inv.list_size(n))
        if not size:
            return np.zeros((0, self.code_size), np.uint8)
        return faiss.rev_swig_ptr(self.inv.get_codes(n), size * self.code_size).reshape(size, self.code_size).copy()

    def maybe_release(self) -> None:
        if self.mm is not None and self.read >= RELEASE_BYTES and hasattr(self.mm, "madvise"):
            self.mm.madvise(mmap.MADV_DONTNEED)
            self.read = 0

    def close(self) -> None:
        if self.mm is not None:
            try:
                self.mm.close()
            except BufferError:  # views still alive: the mapping goes with them
                pass
            self.mm = None


def ivf_pairs(vectors, threshold: float, *, nprobe: int | None = None,  # vectors: ShardedVectors
              progress: Callable[[int, int], None] | None = None) -> tuple[dict[tuple[int, int], float], ProbeReport]:
    """All pairs of live vectors within ``threshold`` (1 - cosine) that share a list or neighbouring lists.

    Args:
        vectors: a ShardedVectors whose derived structure is an inverted file.
        threshold: largest distance linked.
        nprobe: lists each list's vectors are compared with, itself included (default: the build's nprobe).
        progress: called as ``progress(lists_done, nlist)``.

    Returns:
        ({(id_a, id_b): distance} with id_a < id_b, ProbeReport).
    """
    ivf = faiss.downcast_index(faiss.extract_index_ivf(vectors.derived))
    nlist = int(ivf.nlist)
    if nprobe is None:
        nprobe = dedup_nprobe(nlist)
    nprobe = max(1, min(int(nprobe), nlist))
    flat_codes = isinstance(ivf, faiss.IndexIVFFlat) and ivf.code_size == 4 * vectors.dim
    # 8-bit scalar codes are decoded in place (approximate), the pairs they find checked with the shards' vectors
    sq = ivf.sq if isinstance(ivf, faiss.IndexIVFScalarQuantizer) else None
    centroids = ivf.quantizer.reconstruct_n(0, nlist)
    _, nbr = ivf.quantizer.search(centroids, nprobe)
    partners: list[set[int]] = [set() for _ in range(nlist)]
    for a in range(nlist):
        partners[a].add(a)
        for b in nbr[a].tolist():
            if b >= 0:
                partners[min(a, b)].add(max(a, b))
    lists = _Lists(ivf)
    # row keys -> (image ids, live) once per list (16 bytes per vector)
    ids_of: list[np.ndarray] = []
    for n in range(nlist):
        keys = lists.keys(n)
        ids, live = vectors._decode(np.asarray(keys))
        ids_of.append(np.where(live, ids, -1))
    # rows of shards the derived file does not cover yet: assigned to their nearest list, compared like the rest
    extra_ids: dict[int, list[np.ndarray]] = {}
    extra_x: dict[int, list[np.ndarray]] = {}
    for p in vectors.tail:
        for s in range(0, len(p.ids), 65536):
            xb = np.asarray(p.xb[s:s + 65536], np.float32)
            ids = np.asarray(p.ids[s:s + 65536])
            if p.live is not None:
                m = p.live[s:s + 65536]
                xb, ids = xb[m], ids[m]
            if not len(ids):
                continue
            _, a = ivf.quantizer.search(xb, 1)
            for n in np.unique(a[:, 0]):
                sel = a[:, 0] == n
                extra_ids.setdefault(int(n), []).append(ids[sel])
                extra_x.setdefault(int(n), []).append(xb[sel])

    decoded: dict[int, np.ndarray] = {}  # the last lists decoded (a list is used again by its partners)

    def members(n: int) -> tuple[np.ndarray, np.ndarray]:
        ids = ids_of[n]
        if flat_codes:
            x = lists.codes(n).view(np.float32)
        elif sq is not None:
            if n not in decoded:
                if len(decoded) >= DECODED_LISTS:
                    decoded.pop(next(iter(decoded)))
                x = sq.decode(np.ascontiguousarray(lists.codes(n))) if len(ids) else np.zeros((0, vectors.dim),
                                                                                                np.float32)
                decoded[n] = x + centroids[n] if ivf.by_residual else x
            x = decoded[n]
        else:
            keys = np.asarray(lists.keys(n))
            x = _gather(vectors, keys, ids >= 0)
        if n in extra_ids:
            ids = np.concatenate([ids, *extra_ids[n]])
            x = np.concatenate([np.asarray(x, np.float32), *extra_x[n]])
        return ids, x

    thr = np.float32(1.0 - threshold - 1e-6)
    scan_thr = thr - np.float32(SQ_MARGIN) if sq is not None else thr
    pairs: dict[tuple[int, int], float] = {}
    comparisons = 0
    n_pairs = 0
    for a in range(nlist):
        ids_a, xa = members(a)
        if len(ids_a):
            # one matrix product per list: its vectors against those of every partner list (itself first)
            cols_ids, cols_x = [], []
            for b in sorted(partners[a]):
                ids_b, xb = (ids_a, xa) if b == a else members(b)
                if len(ids_b):
                    cols_ids.append(ids_b)
                    cols_x.append(xb)
                    n_pairs += 1
            ids_c = np.concatenate(cols_ids)
            S = xa @ (np.concatenate(cols_x) if len(cols_x) > 1 else cols_x[0]).T
            na = len(ids_a)
            comparisons += na * (na - 1) // 2 + na * (len(ids_c) - na)
            hit = S >= scan_thr
            hit[:, :na] = np.triu(hit[:, :na], 1)  # the list against itself: each pair once
            for i, j in zip(*np.nonzero(hit), strict=True):
                u, v = int(ids_a[i]), int(ids_c[j])
                if u < 0 or v < 0 or u == v:
                    continue
                key = (u, v) if u < v else (v, u)
                d = float(max(1.0 - S[i, j], 0.0))
                if key not in pairs or d < pairs[key]:
                    pairs[key] = d
        lists.maybe_release()
        if progress is not None and (a % 64 == 0 or a == nlist - 1):
            progress(a + 1, nlist)
    lists.close()
    if sq is not None:
        pairs = _verify(vectors, pairs, thr)
    n = vectors.ntotal
    report = ProbeReport(method="ivf-lists", vectors=n, lists=nlist, neighbour_lists=nprobe - 1, list_pairs=n_pairs,
                         comparisons=comparisons, share_of_exact=comparisons / max(1, n * (n - 1) // 2))
    _logger.info("dedup over %d lists (each with %d neighbour lists): %d list pairs, %.3g%% of exact comparisons",
                 nlist, nprobe - 1, n_pairs, 100 * report.share_of_exact)
    return pairs, report


def _verify(vectors, pairs: dict[tuple[int, int], float], thr: np.float32  # vectors: ShardedVectors
            ) -> dict[tuple[int, int], float]:
    """Keep the pairs found on decoded codes whose exact vectors (from the shards) are within the threshold, with
    their exact distance."""
    if not pairs:
        return pairs
    keys = np.asarray(list(pairs), np.int64)
    uniq, inv = np.unique(keys, return_inverse=True)
    inv = inv.reshape(keys.shape)
    out: dict[tuple[int, int], float] = {}
    for s in range(0, len(keys), VERIFY_BATCH):
        ia, ib = inv[s:s + VERIFY_BATCH, 0], inv[s:s + VERIFY_BATCH, 1]
        need = np.unique(np.concatenate([ia, ib]))
        x = vectors.vectors(uniq[need])
        pos = np.searchsorted(need, ia), np.searchsorted(need, ib)
        sims = np.einsum("ij,ij->i", x[pos[0]], x[pos[1]])
        for (u, v), sim in zip(keys[s:s + VERIFY_BATCH].tolist(), sims.tolist(), strict=True):
            if sim >= thr:
                out[(u, v)] = max(1.0 - sim, 0.0)
    return out


def _gather(vectors, keys: np.ndarray, live: np.ndarray) -> np.ndarray:  # vectors: ShardedVectors
    """Exact float32 vectors of row keys from the shards (zeros where not live)."""
    out = np.zeros((len(keys), vectors.dim), np.float32)
    sid = np.where(live, keys >> 32, -1)
    for s in np.unique(sid[live]):
        p = vectors._by_shard[int(s)]
        sel = np.flatnonzero(sid == s)
        rows = keys[sel] & 0xFFFFFFFF
        order = np.argsort(rows)
        out[sel[order]] = np.asarray(p.xb[rows[order]], np.float32)
    vectors._bound_mapped()  # the reader's own budget on mapped shard pages, as for ShardedVectors.vectors
    return out


def exact_pairs(vectors, threshold: float, *, block: int = 4096,  # vectors: ShardedVectors
                progress: Callable[[int, int], None] | None = None) -> tuple[dict[tuple[int, int], float], ProbeReport]:
    """All pairs of live vectors within ``threshold``: every pair of blocks once (upper triangle), as matrix
    products; memory holds two blocks and the pairs found."""
    thr = np.float32(1.0 - threshold - 1e-6)
    pairs: dict[tuple[int, int], float] = {}
    n, done = vectors.ntotal, 0
    for bi, (ids_a, xa) in enumerate(vectors.iter_blocks(block)):
        done += len(ids_a)
        for bj, (ids_b, xb) in enumerate(vectors.iter_blocks(block)):
            if bj < bi:
                continue
            S = xa @ xb.T
            hit = np.nonzero(np.triu(S >= thr, 1) if bj == bi else S >= thr)
            for i, j in zip(*hit, strict=True):
                u, v = int(ids_a[i]), int(ids_b[j])
                if u == v:
                    continue
                key = (u, v) if u < v else (v, u)
                d = float(max(1.0 - S[i, j], 0.0))
                if key not in pairs or d < pairs[key]:
                    pairs[key] = d
        if progress is not None:
            progress(done, n)
    return pairs, ProbeReport(method="exact", vectors=n, comparisons=n * (n - 1) // 2, share_of_exact=1.0)
