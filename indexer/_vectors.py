"""VectorIndex: FAISS over unit vectors (inner product) with int64 ids, saved atomically, dim-checked.

Flat, HNSW and other types sit in an ``IndexIDMap2``; inverted files (IVF...) keep ids natively, since faiss's
``IndexIDMap`` cannot remove ids from them.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import faiss
import numpy as np

from lookalike.common.errors import InvalidArgument
from lookalike.common.io import fsync_dir

_logger = logging.getLogger(__name__)

#: Below this many vectors an exact Flat scan is fast enough and no training is needed ("auto").
AUTO_FLAT_MAX = 200_000
#: Exact (Flat) searches run as numpy matrix products over blocks of queries whose score matrix stays under this
#: size: measured faster than faiss's Flat scan here at 1 and at 100 queries (bench/search.py).
NUMPY_BLOCK_BYTES = 256 << 20

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def gpu_count() -> int:
    """GPUs faiss can use: 0 with faiss-cpu or without a visible GPU."""
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except (AttributeError, RuntimeError):
        return 0


def vectors_file(index_dir: str | os.PathLike[str], fingerprint: str) -> Path:
    """Where the FAISS file of one metric fingerprint lives in an index folder."""
    return Path(index_dir) / f"vectors-{_SAFE.sub('_', fingerprint)}.faiss"


def choose_factory(n: int) -> tuple[str, str | None]:
    """The FAISS factory string and search parameters used for ``n`` vectors when the user names none.

    Exact ("Flat") up to ``AUTO_FLAT_MAX`` vectors; beyond, an inverted file with about 4 sqrt(n) lists, searched
    with nprobe = nlist / 128 (at least 16), which keeps recall@10 above 0.95 on clustered embeddings.
    """
    if n <= AUTO_FLAT_MAX:
        return "Flat", None
    nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
    nlist = int(min(max(nlist, 1024), 65536))
    return f"IVF{nlist},Flat", f"nprobe={max(16, nlist // 128)}"


def min_train_size(factory: str) -> int:
    """Vectors needed to train ``factory`` well (39 per centroid, as faiss's k-means asks; 0 if untrained)."""
    need = 0
    for m in re.finditer(r"IVF(\d+)", factory):
        need = max(need, 39 * int(m.group(1)))
    for m in re.finditer(r"PQ(\d+)(?:x(\d+))?", factory):
        bits = int(m.group(2) or 8)
        need = max(need, 39 * (1 << bits))
    return need


class VectorIndex:
    """Unit vectors with int64 ids, searched by inner product; distances reported as ``1 - cosine``.

    Args:
        index: a FAISS ``IndexIDMap2`` or ``IndexIVF``.
        factory: the factory string it was made from.
    """

    def __init__(self, index: faiss.Index, factory: str):
        self._owner = index  # downcast_index returns a non-owning proxy: keep the owning one alive
        if not isinstance(index, (faiss.IndexIDMap2, faiss.IndexIVF)):
            index = faiss.downcast_index(index)
        if isinstance(index, faiss.IndexIDMap2):
            self._inner = faiss.downcast_index(index.index)
        elif isinstance(index, faiss.IndexIVF):  # inverted files keep arbitrary ids natively (and remove them)
            self._inner = index
        else:
            raise TypeError(f"expected a faiss IndexIDMap2 or IndexIVF, got {type(index).__name__}")
        self.index = index
        self.factory = factory
        self.dirty = False
        self._keep: faiss.Index | None = None
        self._direct_map = False
        self._id_cache: np.ndarray | None = None
        self._lock = threading.Lock()  # lazy state (direct map, GPU copy) built once under concurrent readers
        self._gpu: faiss.Index | None = None
        self._gpu_res: object | None = None
        self._ids: set[int] = set(self.ids().tolist())

    # ---- construction ---------------------------------------------------------------------------------------
    @classmethod
    def create(cls, dim: int, factory: str = "Flat") -> VectorIndex:
        """An empty index of ``dim``-d vectors; ``factory`` as in ``faiss.index_factory`` ("Flat", "HNSW32"...)."""
        if dim < 1:
            raise InvalidArgument(f"dim must be >= 1, got {dim}")
        spec = factory.strip()
        if spec.upper().startswith("IDMAP"):
            spec = spec.split(",", 1)[1] if "," in spec else "Flat"
        try:
            inner = faiss.IndexFlatIP(dim) if spec == "Flat" else faiss.index_factory(dim, spec,
                                                                                       faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            raise InvalidArgument(f"invalid faiss factory string {factory!r}: {str(e).strip().splitlines()[-1]}; "
                                  f"examples: 'Flat', 'HNSW32', 'IVF4096,Flat', 'IVF4096,PQ64,RFlat'") from None
        raw = inner
        inner = faiss.downcast_index(raw)
        vi = cls(inner if isinstance(inner, faiss.IndexIVF) else faiss.IndexIDMap2(inner), spec)
        vi._keep = raw  # the owning proxy of the inner index: the wrappers do not own it
        return vi

    @classmethod
    def load(cls, path: str | os.PathLike[str], factory: str = "Flat") -> VectorIndex:
        """Read a FAISS file written by ``save``."""
        idx = faiss.read_index(os.fspath(path))
        return cls(idx, factory)

    # ---- properties -----------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    @property
    def is_flat(self) -> bool:
        return isinstance(self._inner, faiss.IndexFlat)

    @property
    def is_ivf(self) -> bool:
        return isinstance(self.index, faiss.IndexIVF)

    def ids(self) -> np.ndarray:
        """All ids, int64, in storage order (do not modify the returned array)."""
        if not self.is_ivf:
            if self._id_cache is None or len(self._id_cache) != self.ntotal:
                self._id_cache = faiss.vector_to_array(self.index.id_map).astype(np.int64, copy=False)
            return self._id_cache
        inv = self.index.invlists
        parts = [np.zeros(0, np.int64)]
        for lst in range(self.index.nlist):
            n = inv.list_size(lst)
            if n:
                parts.append(faiss.rev_swig_ptr(inv.get_ids(lst), n).astype(np.int64, copy=True))
        return np.concatenate(parts)

    def __contains__(self, i: int) -> bool:
        return int(i) in self._ids

    def __len__(self) -> int:
        return self.ntotal

    def set_search_params(self, params: str | None) -> None:
        """Apply "nprobe=32" / "efSearch=128" style parameters (comma separated)."""
        if not params:
            return
        for part in params.split(","):
            key, _, val = part.partition("=")
            key, val = key.strip(), val.strip()
            if key == "nprobe":
                faiss.extract_index_ivf(self.index).nprobe = int(val)
            elif key == "efSearch":
                faiss.downcast_index(self._inner).hnsw.efSearch = int(val)
            else:
                raise InvalidArgument(f"unknown search parameter {key!r}; use nprobe=N or efSearch=N")

    # ---- updates --------------------------------------------------------------------------------------------
    def _check(self, x: np.ndarray, what: str) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise InvalidArgument(f"{what} has shape {x.shape}; this index holds {self.dim}-d vectors")
        return x

    def train(self, xs: np.ndarray) -> None:
        """Train the quantizers on a sample (a no-op for Flat)."""
        if not self.index.is_trained:
            self.index.train(self._check(xs, "training sample"))

    def add(self, xb: np.ndarray, ids: Iterable[int]) -> None:
        """Add (or replace) vectors under ``ids``."""
        xb = self._check(xb, "xb")
        ids_arr = np.asarray(list(ids), dtype=np.int64)
        if len(ids_arr) != len(xb):
            raise InvalidArgument(f"{len(xb)} vectors but {len(ids_arr)} ids")
        if len(set(ids_arr.tolist())) != len(ids_arr):
            raise InvalidArgument("duplicate ids in one add")
        if not self.index.is_trained:
            raise InvalidArgument(f"faiss index {self.factory!r} is not trained; train it on a sample first")
        existing = [i for i in ids_arr.tolist() if i in self._ids]
        if existing:
            self.remove(existing)
        self.index.add_with_ids(xb, ids_arr)
        self._id_cache = self._gpu = None
        self._ids.update(ids_arr.tolist())
        self.dirty = True

    def remove(self, ids: Iterable[int]) -> int:
        """Remove vectors by id (ids not present are ignored); returns how many were removed."""
        ids_arr = np.asarray([i for i in ids if int(i) in self._ids], dtype=np.int64)
        if not len(ids_arr):
            return 0
        if self.is_ivf or self.is_flat:
            n = int(self.index.remove_ids(faiss.IDSelectorBatch(ids_arr)))
        else:  # HNSW, refine wrappers...: no (safe) removal in faiss, rebuild without them
            n = self._rebuild_without(ids_arr)
        self._ids.difference_update(ids_arr.tolist())
        self._id_cache = self._gpu = None
        self.dirty = True
        return n

    def _rebuild_without(self, ids_arr: np.ndarray) -> int:
        keep_ids = np.setdiff1d(self.ids(), ids_arr)
        xb = self.vectors(keep_ids) if len(keep_ids) else np.zeros((0, self.dim), np.float32)
        _logger.info("faiss %s cannot remove ids: rebuilding it with %d vectors", self.factory, len(keep_ids))
        inner = faiss.clone_index(self._inner)  # keeps any training
        inner.reset()
        new = VectorIndex(faiss.IndexIDMap2(inner), self.factory)
        new._keep = inner
        if len(keep_ids):
            new.index.add_with_ids(xb, keep_ids)
        n = self.ntotal - new.ntotal
        self.index, self._inner, self._keep, self._owner = new.index, new._inner, new._keep, new._owner
        self._direct_map = False
        return n

    # ---- reads ----------------------------------------------------------------------------------------------
    def _flat_xb(self) -> np.ndarray:
        n, d = self.ntotal, self.dim
        if n == 0:
            return np.zeros((0, d), np.float32)
        return faiss.rev_swig_ptr(self._inner.get_xb(), n * d).reshape(n, d)

    def vectors(self, ids: Iterable[int]) -> np.ndarray:
        """The stored vectors of ``ids`` (n, dim) float32 (approximate for compressed indexes)."""
        ids_arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64)
        missing = [i for i in ids_arr.tolist() if i not in self._ids]
        if missing:
            raise KeyError(f"ids not in the vector index: {missing[:10]}")
        if self.is_flat:
            all_ids = self.ids()
            order = np.argsort(all_ids, kind="stable")
            pos = order[np.searchsorted(all_ids, ids_arr, sorter=order)]
            return np.array(self._flat_xb()[pos])
        if self.is_ivf and not self._direct_map:
            with self._lock:
                if not self._direct_map:
                    self.index.set_direct_map_type(faiss.DirectMap.Hashtable)
                    self._direct_map = True
        out = np.empty((len(ids_arr), self.dim), np.float32)
        for j, i in enumerate(ids_arr.tolist()):
            out[j] = self.index.reconstruct(i)
        return out

    def iter_blocks(self, block: int = 4096) -> Iterable[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) in blocks of ``block``, in storage order, bounded memory."""
        all_ids = self.ids()
        for s in range(0, len(all_ids), block):
            ids = all_ids[s:s + block]
            if self.is_flat:
                yield ids, np.array(self._flat_xb()[s:s + block])
            else:
                yield ids, self.vectors(ids)

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k nearest neighbours: (D, I), D = 1 - cosine (ascending: lower is more similar), I = ids (-1 padded).

        Exact (Flat) indexes search with numpy matrix products, or on the GPU for batches of more than 16 queries
        when faiss-gpu and a GPU are present; other types use faiss's own search.
        """
        xq = self._check(xq, "xq")
        if k < 1:
            raise InvalidArgument(f"k must be >= 1, got {k}")
        n = self.ntotal
        if n == 0:
            return np.full((len(xq), k), np.inf, np.float32), np.full((len(xq), k), -1, np.int64)
        gpu = self._gpu_flat() if len(xq) > 16 else None
        if gpu is not None:
            D, pos = gpu.search(xq, k)
            I = np.where(pos >= 0, self.ids()[np.maximum(pos, 0)], -1)  # noqa: E741
        elif self.is_flat:
            D, I = self._numpy_knn(xq, k)  # noqa: E741
        else:
            D, I = self.index.search(xq, k)  # noqa: E741
        dist = np.where(I >= 0, 1.0 - D, np.inf).astype(np.float32)
        return dist, I

    def _gpu_flat(self) -> faiss.Index | None:
        """A GPU copy of a Flat index (rebuilt after changes), or None without faiss-gpu and a GPU."""
        if not self.is_flat or self.ntotal == 0 or gpu_count() == 0:
            return None
        with self._lock:
            if self._gpu is None:
                if self._gpu_res is None:
                    self._gpu_res = faiss.StandardGpuResources()
                self._gpu = faiss.index_cpu_to_gpu(self._gpu_res, 0, self._inner)
                _logger.info("searching %d vectors on the GPU", self.ntotal)
            return self._gpu

    def _numpy_knn(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact k-NN by one matrix product per block of queries (score blocks capped at NUMPY_BLOCK_BYTES)."""
        xb, id_map = self._flat_xb(), self.ids()
        n = len(xb)
        kk = min(k, n)
        D = np.full((len(xq), k), -np.inf, np.float32)
        I = np.full((len(xq), k), -1, np.int64)  # noqa: E741
        step = max(1, NUMPY_BLOCK_BYTES // (4 * n))
        for s in range(0, len(xq), step):
            q = xq[s:s + step]
            # (b, n), each query's scores contiguous for the partition; a few queries go through BLAS's
            # matrix-vector path (xb @ q.T), which is faster than the transposed product for them
            scores = np.ascontiguousarray((xb @ q.T).T) if len(q) <= 16 else q @ xb.T
            part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk] if kk < n else np.broadcast_to(
                np.arange(n)[None, :], scores.shape)
            top = np.take_along_axis(scores, part, axis=1)
            order = np.argsort(-top, axis=1, kind="stable")
            D[s:s + step, :kk] = np.take_along_axis(top, order, axis=1)
            I[s:s + step, :kk] = id_map[np.take_along_axis(part, order, axis=1)]
        return D, I

    def range_search(self, xq: np.ndarray, max_distance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All neighbours within ``max_distance`` (1 - cosine): (lims, D, I) as faiss returns them."""
        xq = self._check(xq, "xq")
        gpu = self._gpu_flat()
        if gpu is not None:  # faiss has no GPU range search: k-NN there, CPU range search where k was too small
            return self._gpu_range(gpu, xq, max_distance)
        lims, D, I = self.index.range_search(xq, float(1.0 - max_distance - 1e-6))  # noqa: E741
        return lims, (1.0 - D).astype(np.float32), I

    def _gpu_range(self, gpu: faiss.Index, xq: np.ndarray, max_distance: float, k0: int = 64):
        kk = min(k0, self.ntotal)
        S, pos = gpu.search(xq, kk)
        ids = self.ids()
        lims, Ds, Is = [0], [], []
        for q in range(len(xq)):
            if kk < self.ntotal and 1.0 - S[q, -1] <= max_distance:  # maybe more beyond k0: ask the CPU
                _, d, i = self.index.range_search(xq[q:q + 1], float(1.0 - max_distance - 1e-6))
                Ds.append(1.0 - d)
                Is.append(i)
            else:
                keep = (pos[q] >= 0) & (1.0 - S[q] <= max_distance)
                Ds.append(1.0 - S[q, keep])
                Is.append(ids[pos[q, keep]])
            lims.append(lims[-1] + len(Is[-1]))
        D = np.concatenate(Ds).astype(np.float32) if Ds else np.zeros(0, np.float32)
        I = np.concatenate(Is).astype(np.int64) if Is else np.zeros(0, np.int64)  # noqa: E741
        return np.asarray(lims, np.int64), D, I

    # ---- persistence ----------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], *, before_replace: Callable[[], None] | None = None) -> None:
        """Write atomically: a temporary file, fsync, then ``os.replace`` (readers see the old or the new file).

        Raises:
            OSError: the write failed (disk full...); the previous file is left intact.
        """
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            faiss.write_index(self.index, os.fspath(tmp))
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            if before_replace is not None:
                before_replace()
            os.replace(tmp, path)
        except (OSError, RuntimeError) as e:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
            raise OSError(f"could not write the vector index {path} ({e}); the previous file is intact") from e
        fsync_dir(path.parent)
        self.dirty = False
