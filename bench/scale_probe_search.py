"""Probe (issue 16, phase 1): where an exact search's time goes today, and what the candidate exact scans cost.

    python bench/scale_probe_search.py --index IDX --data DATA          # an index + data left by bench/scale.py

Part 1 times today's ``search(ix, path)`` step by step on the same queries (private names, on purpose: this is a
profile of today's code): ``find_row`` (the catalog look-up of the query path), ``vector_of`` (its stored vector),
``ShardedVectors.search`` (the scan), ``rows`` (the catalog rows of the hits).
Part 2 runs candidate exact scans over the same shards, one query at a time, calls interleaved (best of --reps):
numpy over the memory-mapped shards as today (fp16 upcast per 64 MB block), the upcast alone, fp16 upcast in small
blocks, a resident float32 copy (numpy, ``faiss.knn``, ``IndexFlatIP``), a resident ``IndexScalarQuantizer``
(QT_fp16) and torch's fp16 -> fp32 conversion. Every row is checked against the exact top-10.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import faiss
import numpy as np


def best_of(fns: dict, reps: int) -> tuple[dict[str, float], dict[str, float]]:
    """Best wall and best CPU (process time: all threads) seconds of each function, calls interleaved."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    cpu = dict.fromkeys(fns, float("inf"))
    for _ in range(reps):
        for name, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
            cpu[name] = min(cpu[name], time.process_time() - c)
    return best, cpu


def topk_rows(scores: np.ndarray, k: int) -> np.ndarray:
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", required=True)
    ap.add_argument("--data", required=True, help="the generated data folder (truth.npz)")
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-resident", action="store_true", help="skip the resident copies (large n)")
    args = ap.parse_args()
    from lookalike.indexer import open_index, search

    truth = dict(np.load(Path(args.data) / "truth.npz"))
    qrows = truth["qrows"][:args.queries]
    ix = open_index(args.index)
    vec = ix.vectors
    parts = vec.shards.parts
    n, d = vec.ntotal, vec.dim
    dtype = parts[0].xb.dtype
    print(f"n={n:,} d={d} storage={dtype} shards={len(parts)} structure={vec.factory} faiss threads "
          f"{faiss.omp_get_max_threads()}")

    # ---- part 1: today's search, step by step
    steps: dict[str, list[tuple[float, float]]] = {k: [] for k in ("find_row", "vector_of", "scan", "rows", "hits",
                                                                     "search()")}

    def now() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    for r in qrows:
        rel = f"{int(r):09d}.jpg"
        t0 = now()
        row = ix.find_row(rel)
        t1 = now()
        q = ix.vector_of(row)
        t2 = now()
        D, I = vec.search(q[None], 10)  # noqa: E741
        t3 = now()
        rows = ix.rows(I[I >= 0].tolist())
        t4 = now()
        [(rows[int(i)].path, float(x)) for x, i in zip(D[0], I[0], strict=True) if int(i) in rows]
        t5 = now()
        search(ix, rel, k=10)
        t6 = now()
        for key, a, b in (("find_row", t0, t1), ("vector_of", t1, t2), ("scan", t2, t3), ("rows", t3, t4),
                          ("hits", t4, t5), ("search()", t5, t6)):
            steps[key].append(((b[0] - a[0]) * 1e3, (b[1] - a[1]) * 1e3))
    print("today's search(ix, path), median ms per query over", len(qrows), "queries (wall / CPU of all threads):")
    for key, v in steps.items():
        print(f"  {key:<10} {np.median([w for w, _ in v]):9.2f} {np.median([c for _, c in v]):9.2f}")

    # ---- part 2: candidate exact scans (1 query), same vectors
    xq = np.stack([ix.vector_of(ix.find_row(f"{int(r):09d}.jpg")) for r in qrows[:8]]).astype(np.float32)
    ids_all = np.concatenate([np.asarray(p.ids) for p in parts])
    q1 = xq[:1]

    def today() -> np.ndarray:
        return vec.search(q1, 10)[1][0]

    def upcast_only(rows: int = 43690) -> None:
        for p in parts:
            for s in range(0, len(p.ids), rows):
                np.asarray(p.xb[s:s + rows], np.float32)

    def mmap_blocks(rows: int):  # noqa: ANN202
        def run() -> np.ndarray:
            best_s, best_i = [], []
            for p in parts:
                for s in range(0, len(p.ids), rows):
                    blk = p.xb[s:s + rows]
                    sc = (np.asarray(blk, np.float32) if blk.dtype != np.float32 else blk) @ q1[0]
                    top = np.argpartition(-sc, 9)[:10]
                    best_s.append(sc[top])
                    best_i.append(np.asarray(p.ids[s:s + rows])[top])
            s_all, i_all = np.concatenate(best_s), np.concatenate(best_i)
            return i_all[topk_rows(s_all, 10)]
        return run

    fns = {"today ShardedVectors.search": today, "fp16->fp32 upcast only (43690-row blocks)": upcast_only,
           "mmap, blocks of 4096 rows": mmap_blocks(4096), "mmap, blocks of 16384 rows": mmap_blocks(16384),
           "mmap, blocks of 65536 rows": mmap_blocks(65536)}
    if dtype == np.float32:
        def faiss_knn_mmap() -> np.ndarray:
            got_d, got_i = [], []
            for p in parts:
                D, I = faiss.knn(q1, np.asarray(p.xb), 10, metric=faiss.METRIC_INNER_PRODUCT)  # noqa: E741
                got_d.append(D[0])
                got_i.append(np.asarray(p.ids)[I[0]])
            s_all, i_all = np.concatenate(got_d), np.concatenate(got_i)
            return i_all[topk_rows(s_all, 10)]
        fns["faiss.knn over the mmap'd fp32 shards"] = faiss_knn_mmap
    try:
        import torch

        torch.set_num_threads(faiss.omp_get_max_threads())

        def torch_blocks(rows: int = 16384) -> np.ndarray:
            qt = torch.from_numpy(q1[0])
            best_s, best_i = [], []
            for p in parts:
                for s in range(0, len(p.ids), rows):
                    xb = torch.from_numpy(np.asarray(p.xb[s:s + rows]))
                    sc = (xb.float() @ qt).numpy()
                    top = np.argpartition(-sc, 9)[:10]
                    best_s.append(sc[top])
                    best_i.append(np.asarray(p.ids[s:s + rows])[top])
            s_all, i_all = np.concatenate(best_s), np.concatenate(best_i)
            return i_all[topk_rows(s_all, 10)]
        fns["torch .float() + mv, 16384-row blocks"] = torch_blocks
    except ImportError:
        pass
    if not args.no_resident:
        t = time.perf_counter()
        x32 = np.concatenate([np.asarray(p.xb, np.float32) for p in parts])
        print(f"resident fp32 copy: {x32.nbytes / 2**20:.0f} MB in {time.perf_counter() - t:.1f}s")
        flat = faiss.IndexFlatIP(d)
        flat.add(x32)
        t = time.perf_counter()
        sq = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        for p in parts:
            for s in range(0, len(p.ids), 65536):
                sq.add(np.asarray(p.xb[s:s + 65536], np.float32))
        print(f"resident IndexScalarQuantizer(QT_fp16): {sq.sa_code_size() * n / 2**20:.0f} MB, filled in "
              f"{time.perf_counter() - t:.1f}s")
        fns["resident fp32, numpy gemv"] = lambda: ids_all[topk_rows(x32 @ q1[0], 10)]
        fns["resident fp32, faiss.knn"] = lambda: ids_all[faiss.knn(q1, x32, 10,
                                                                    metric=faiss.METRIC_INNER_PRODUCT)[1][0]]
        fns["resident IndexFlatIP.search"] = lambda: ids_all[flat.search(q1, 10)[1][0]]
        fns["resident IndexScalarQuantizer fp16"] = lambda: ids_all[sq.search(q1, 10)[1][0]]
    ref = today()
    best, cpu = best_of(fns, args.reps)
    base_cpu = cpu["today ShardedVectors.search"]
    print(f"{'exact scan, 1 query':<48} {'wall ms':>9} {'CPU ms':>9} {'vs today':>9} {'top-10 = today':>14}")
    for name, fn in fns.items():
        got = fn()
        same = "-" if got is None else f"{len(set(np.asarray(got).tolist()) & set(ref.tolist())) / 10:.1f}"
        print(f"{name:<48} {best[name] * 1e3:>9.2f} {cpu[name] * 1e3:>9.2f} {base_cpu / max(cpu[name], 1e-9):>8.1f}x"
              f" {same:>14}")
    ix.close()
    print("best of", args.reps, "interleaved runs on a shared 2-core machine (upper bounds); 'vs today' is the CPU-time"
          " ratio (less disturbed by other jobs than wall time)")


if __name__ == "__main__":
    main()
