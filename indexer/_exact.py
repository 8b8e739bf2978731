"""Exact search over shards (readers): a resident copy scanned by faiss, or memory-mapped blocks scanned by numpy.

A build searched exactly (and the tail of shards a derived file does not cover yet) is scanned for every query.
Scanning the memory-mapped shards with numpy costs a float16 -> float32 cast of every element per query (numpy has
no SIMD path for it here: ~2 ns per element, 6x the product itself). ``ResidentExact`` instead copies the live rows
once, as they are stored, into a faiss index: ``IndexScalarQuantizer(QT_fp16)`` for float16 shards (decoded with
F16C inside the distance loop) or ``IndexFlatIP`` for float32 ones, and answers from it (~30x less CPU than the
numpy scan for 200k x 768 fp16). Its memory is the rows' own size, so it is used up to ``RESIDENT_MAX_BYTES``; a
larger exact scan (a build forced to "Flat") goes block by block through the memory map (``scan_knn`` /
``scan_range``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import faiss
import numpy as np

from lookalike.indexer._shards import OpenShard
from lookalike.indexer._util import faiss_threads

_logger = logging.getLogger(__name__)

#: Largest resident copy (bytes) a reader makes for exact search; larger exact scans read the memory map.
RESIDENT_MAX_BYTES = 2 << 30
#: Fewer queries than this are scanned by one OpenMP thread (see ``_util.faiss_threads``).
FEW_QUERIES = 16
#: Bytes of shard vectors copied out of the memory map per block of a numpy scan.
SCAN_BLOCK_BYTES = 64 << 20
#: Bytes of one (queries x block) score matrix.
SCORE_BLOCK_BYTES = 256 << 20


def resident_bytes(parts: list[OpenShard]) -> int:
    """Bytes a resident copy of the live rows of ``parts`` takes (float16 when every part is float16)."""
    half = all(p.xb.dtype == np.float16 for p in parts)
    n = sum(len(p.ids) if p.live is None else int(p.live.sum()) for p in parts)
    return n * (parts[0].xb.shape[1] if parts else 0) * (2 if half else 4)


class ResidentExact:
    """The live rows of some shards copied once into a faiss flat index; scores are inner products.

    Args:
        parts: open shards (their live rows are copied, in order).
        dim: the vectors' dimension.
    """

    def __init__(self, parts: list[OpenShard], dim: int):
        half = all(p.xb.dtype == np.float16 for p in parts)
        if half:
            self.index: faiss.Index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16,
                                                                 faiss.METRIC_INNER_PRODUCT)
        else:
            self.index = faiss.IndexFlatIP(dim)
        live = [p.live_ids() for p in parts]
        n = sum(len(x) for x in live)
        self.ids = np.concatenate(live).astype(np.int64, copy=False) if live else np.zeros(0, np.int64)
        row = dim * (2 if half else 4)
        self.index.codes.resize(n * row)
        if n:
            dst = faiss.rev_swig_ptr(self.index.codes.data(), n * row)
            pos = 0
            for p in parts:
                for s in range(0, len(p.ids), 1 << 16):
                    xb = np.asarray(p.xb[s:s + (1 << 16)])
                    if p.live is not None:
                        xb = xb[p.live[s:s + (1 << 16)]]
                    xb = np.ascontiguousarray(xb, np.float16 if half else np.float32)
                    dst[pos:pos + xb.nbytes] = xb.view(np.uint8).ravel()
                    pos += xb.nbytes
        self.index.ntotal = n
        _logger.debug("resident exact copy of %d rows (%.0f MB)", n, n * row / 2**20)

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, image ids) of the k best rows per query, best first; -inf / -1 past the end."""
        if not len(self.ids):
            return np.full((len(xq), k), -np.inf, np.float32), np.full((len(xq), k), -1, np.int64)
        with faiss_threads(1 if len(xq) < FEW_QUERIES else None):
            S, pos = self.index.search(xq, min(k, len(self.ids)))
        ids = np.where(pos >= 0, self.ids[np.maximum(pos, 0)], -1)
        S = np.where(pos >= 0, S, -np.inf).astype(np.float32)
        if S.shape[1] < k:
            pad = k - S.shape[1]
            S = np.pad(S, ((0, 0), (0, pad)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        return S, ids

    def range_search(self, xq: np.ndarray, thr: float) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(query, scores, image ids) of the rows scoring >= ``thr``, per query that has any."""
        if not len(self.ids):
            return
        with faiss_threads(1 if len(xq) < FEW_QUERIES else None):
            lims, S, pos = self.index.range_search(xq, float(thr))
        for q in range(len(xq)):
            a, b = int(lims[q]), int(lims[q + 1])
            if b > a:
                yield q, S[a:b].astype(np.float32), self.ids[pos[a:b]]


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


def scan_knn(p: OpenShard, xq: np.ndarray, k: int, S: np.ndarray, I: np.ndarray  # noqa: E741
             ) -> tuple[np.ndarray, np.ndarray]:
    """Merge the k best rows of one memory-mapped shard into (S, I) (scores, image ids)."""
    for s, xb, m in _blocks(p, len(xq)):
        sc = _scores(xq, xb)
        ids = np.broadcast_to(np.asarray(p.ids[s:s + len(xb)]), sc.shape)
        if m is not None:
            sc = np.where(m[None, :], sc, -np.inf)
        S, I = merge_topk(S, I, sc, ids, k)  # noqa: E741
    return S, I


def merge_topk(S: np.ndarray, I: np.ndarray, S2: np.ndarray, I2: np.ndarray, k: int  # noqa: E741
               ) -> tuple[np.ndarray, np.ndarray]:
    """The k best (highest score) of two candidate sets per query, equal scores in image-id order (an exact copy
    and its original always come in the order they were indexed, whichever scan found them); -inf scores carry
    id -1."""
    if S2.shape[1] > k:  # keep the block's own k best before concatenating
        part = np.argpartition(-S2, k - 1, axis=1)[:, :k]
        S2, I2 = np.take_along_axis(S2, part, 1), np.take_along_axis(I2, part, 1)
    Sa = np.concatenate([S, S2], axis=1)
    Ia = np.concatenate([I, I2], axis=1)
    order = np.lexsort((np.where(Ia < 0, np.iinfo(np.int64).max, Ia), -Sa), axis=1)[:, :k]
    Sa, Ia = np.take_along_axis(Sa, order, 1), np.take_along_axis(Ia, order, 1)
    Ia = np.where(np.isfinite(Sa), Ia, -1)
    return Sa, Ia


def scan_range(p: OpenShard, xq: np.ndarray, thr: float) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(query, scores, image ids) of the rows of one memory-mapped shard scoring >= ``thr``."""
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
