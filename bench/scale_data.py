"""Synthetic embeddings for bench/scale.py, written the way ``clip-retrieval inference`` writes them.

Layout (what ``lookalike import`` reads as format "clip-retrieval")::

    img_emb/img_emb_0.npy          (rows, dim) float16 unit vectors, C order
    metadata/metadata_0.parquet    one column ``image_path`` ("000000042.jpg": the global row number), row-aligned
    truth.npz                      planted pairs (global rows a < b), query rows, exact top-k of each query

Vectors: a clustered mixture shaped like real image embeddings (components grouped into super-clusters, each
spreading in its own low-rank subspace, plus isotropic noise), so that inverted files and recall figures mean
something (i.i.d. Gaussian vectors defeat every ANN index). A share of the rows (``dup_share``, 2 %) is replaced by
a near copy of another row of the same generated block (1 - cosine ~0.005): the planted pairs that dedup must find.

Everything is streamed: one block of ``block`` rows is in memory at a time, the ``.npy`` files are written with a
header and then appended to (no memory map, so the generator's RSS stays one block whatever ``n`` is). The exact
top-k of the query rows is computed by a second pass over the written files in blocks (float32 upcast per block).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

COMPONENTS = 1000
RANK = 32
ISO = 0.5
DUP_NOISE = 0.1  # near copy = row + DUP_NOISE * N(0, 1/d), renormalised: 1 - cosine ~ DUP_NOISE**2 / 2


class Mixture:
    """A fixed clustered mixture in ``dim`` dimensions (``seed``); ``sample(m, rng)`` draws unit rows from it."""

    def __init__(self, dim: int, components: int = COMPONENTS, seed: int = 0, rank: int = RANK, iso: float = ISO):
        rng = np.random.default_rng(seed)
        self.dim, self.components, self.iso = dim, components, iso
        supers = rng.standard_normal((max(1, components // 20), dim)).astype(np.float32)
        supers /= np.linalg.norm(supers, axis=1, keepdims=True)
        c = supers[rng.integers(0, len(supers), components)]
        c = c + 0.8 * rng.standard_normal((components, dim)).astype(np.float32) / math.sqrt(dim)
        self.centres = c / np.linalg.norm(c, axis=1, keepdims=True)
        self.bases = rng.standard_normal((components, rank, dim)).astype(np.float32) / math.sqrt(dim * rank)

    def sample(self, m: int, rng: np.random.Generator) -> np.ndarray:
        k = np.sort(rng.integers(0, self.components, m))  # rows grouped by component (shuffled at the end)
        x = rng.standard_normal((m, self.dim), dtype=np.float32)
        x *= self.iso / math.sqrt(self.dim)
        x += self.centres[k]
        z = rng.standard_normal((m, self.bases.shape[1]), dtype=np.float32)
        bounds = np.searchsorted(k, np.arange(self.components + 1))
        for c in range(self.components):
            a, b = bounds[c], bounds[c + 1]
            if b > a:
                x[a:b] += 0.8 * (z[a:b] @ self.bases[c])
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x[rng.permutation(m)]


def _npy_header(f, rows: int, dim: int, dtype: np.dtype) -> None:  # type: ignore[no-untyped-def]
    np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                                             "shape": (rows, dim)})


def _write_paths(path: Path, start: int, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = pa.array([f"{i:09d}.jpg" for i in range(start, start + rows)], type=pa.string())
    pq.write_table(pa.table({"image_path": names}), path, row_group_size=65536)


def generate(folder: Path, n: int, dim: int, *, file_rows: int = 1_000_000, block: int = 50_000,
             dup_share: float = 0.02, queries: int = 200, seed: int = 3) -> dict:
    """Write ``n`` rows in clip-retrieval's layout under ``folder``; returns {"planted", "qrows", "bytes"}."""
    mix = Mixture(dim)
    rng = np.random.default_rng(seed)
    (folder / "img_emb").mkdir(parents=True, exist_ok=True)
    (folder / "metadata").mkdir(parents=True, exist_ok=True)
    planted: list[np.ndarray] = []
    nbytes = 0
    for file_no, start in enumerate(range(0, n, file_rows)):
        rows = min(file_rows, n - start)
        emb = folder / "img_emb" / f"img_emb_{file_no}.npy"
        with open(emb, "wb") as f:
            _npy_header(f, rows, dim, np.dtype(np.float16))
            for s in range(0, rows, block):
                m = min(block, rows - s)
                x = mix.sample(m, rng)
                n_dup = int(round(m * dup_share))
                if n_dup:
                    pick = rng.permutation(m)[:2 * n_dup]
                    src, dst = pick[:n_dup], pick[n_dup:]
                    y = x[src] + DUP_NOISE * rng.standard_normal((n_dup, dim)).astype(np.float32) / math.sqrt(dim)
                    x[dst] = y / np.linalg.norm(y, axis=1, keepdims=True)
                    g = start + s
                    planted.append(np.sort(np.stack([src + g, dst + g], axis=1), axis=1))
                f.write(x.astype(np.float16).tobytes())
        nbytes += emb.stat().st_size
        meta = folder / "metadata" / f"metadata_{file_no}.parquet"
        _write_paths(meta, start, rows)
        nbytes += meta.stat().st_size
    qrows = np.sort(np.random.default_rng(seed + 1).choice(n, min(queries, n), replace=False))
    pairs = np.concatenate(planted) if planted else np.zeros((0, 2), np.int64)
    return {"planted": pairs.astype(np.int64), "qrows": qrows.astype(np.int64), "bytes": nbytes}


def iter_rows(folder: Path, block: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
    """(first global row, float32 block) over the written files, in order."""
    files = sorted((folder / "img_emb").glob("img_emb_*.npy"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    g = 0
    for p in files:
        a = np.load(p, mmap_mode="r")
        for s in range(0, len(a), block):
            yield g + s, np.asarray(a[s:s + block], np.float32)
        g += len(a)
        del a


def read_rows(folder: Path, rows: np.ndarray) -> np.ndarray:
    """float32 copies of the given global rows (sorted)."""
    out = np.zeros((len(rows), 0), np.float32)
    parts = []
    files = sorted((folder / "img_emb").glob("img_emb_*.npy"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    g = 0
    for p in files:
        a = np.load(p, mmap_mode="r")
        sel = rows[(rows >= g) & (rows < g + len(a))]
        if len(sel):
            parts.append(np.asarray(a[sel - g], np.float32))
        g += len(a)
        del a
    return np.concatenate(parts) if parts else out


def exact_topk(folder: Path, xq: np.ndarray, k: int = 10, block: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (inner product) global rows and scores of each query: a blocked product over the files."""
    best_s = np.full((len(xq), k), -np.inf, np.float32)
    best_i = np.full((len(xq), k), -1, np.int64)
    for g, xb in iter_rows(folder, block):
        sims = xq @ xb.T
        s = np.concatenate([best_s, sims], axis=1)
        i = np.concatenate([best_i, np.broadcast_to(np.arange(g, g + len(xb)), sims.shape)], axis=1)
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    order = np.argsort(-best_s, axis=1)
    return np.take_along_axis(best_i, order, 1), np.take_along_axis(best_s, order, 1)


def make(folder: Path, n: int, dim: int, *, queries: int = 200, k: int = 10) -> dict:
    """Generate (unless ``truth.npz`` is already there for this n / dim) and return the truth arrays."""
    truth = folder / "truth.npz"
    if truth.is_file():
        t = dict(np.load(truth))
        if int(t["n"]) == n and int(t["dim"]) == dim and len(t["qrows"]) >= min(queries, n):
            q = min(queries, n)
            return {**t, "qrows": t["qrows"][:q], "gt": t["gt"][:q], "gt_scores": t["gt_scores"][:q]}
    got = generate(folder, n, dim, queries=queries)
    xq = read_rows(folder, got["qrows"])
    gt_i, gt_s = exact_topk(folder, xq, k)
    t = {"n": np.int64(n), "dim": np.int64(dim), "planted": got["planted"], "qrows": got["qrows"], "gt": gt_i,
         "gt_scores": gt_s, "bytes": np.int64(got["bytes"])}
    np.savez(truth, **t)
    return t
