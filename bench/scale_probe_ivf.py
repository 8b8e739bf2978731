"""Probe (issue 16, phase 1): inverted-file choices for 768-d vectors on a small machine, built from the data files.

    python bench/scale_probe_ivf.py --data DATA --nlist 4096 --codes Flat,SQ8,PQ96
    python bench/scale_probe_ivf.py --data DATA --nlist 16384 --hnsw --two-level --codes SQ8

DATA is a folder written by ``bench/scale_data.py`` (fp16 clip-retrieval layout + truth.npz). The coarse quantizer
is trained once (spherical k-means on ``--train`` sampled rows, ``--niter`` iterations; ``--two-level``: faiss's
two-level clustering, sqrt(nlist) coarse clusters then the rest inside each), every vector is assigned once (flat
quantizer, or an HNSW32 graph over the centroids with ``--hnsw``), and each code type is filled from those
assignments (``faiss.contrib.ivf_tools.add_preassigned``), so the table compares codes on identical lists.
Search: one query at a time (the query rows of truth.npz, or with ``--fresh`` new points of the same mixture, whose
exact top-10 is computed first), ``nprobe`` swept; for compressed codes the top
``--refine`` x 10 candidates are re-scored exactly with their fp16 rows read from the memory-mapped data (as the
store's shards would be) and the time of that gather is included. recall@10 is against the exact top-10.
Also printed: k-means time, assignment rate (vectors/s), fill time, code size, the process's anonymous RSS with
the index resident, and the agreement of HNSW assignments with exact ones.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import faiss
import numpy as np
import scale_data


def rss_anon_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("RssAnon:")) / 1024


class Rows:
    """fp16 rows of the data files by global row number (memory-mapped)."""

    def __init__(self, folder: Path):
        files = sorted((folder / "img_emb").glob("img_emb_*.npy"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
        self.parts = [np.load(p, mmap_mode="r") for p in files]
        self.starts = np.cumsum([0] + [len(a) for a in self.parts])
        self.n = int(self.starts[-1])

    def get(self, rows: np.ndarray) -> np.ndarray:
        order = np.argsort(rows)
        srt = rows[order]
        out = np.empty((len(rows), self.parts[0].shape[1]), np.float32)
        f = np.searchsorted(self.starts, srt, side="right") - 1
        for k in np.unique(f):
            sel = f == k
            out[order[sel]] = self.parts[k][srt[sel] - self.starts[k]]
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--nlist", type=int, default=4096)
    ap.add_argument("--train", type=int, default=0, help="training rows (default 39 x nlist)")
    ap.add_argument("--niter", type=int, default=10)
    ap.add_argument("--two-level", action="store_true")
    ap.add_argument("--hnsw", action="store_true", help="HNSW32 quantizer over the centroids")
    ap.add_argument("--ef", type=int, default=64, help="efSearch of the HNSW quantizer")
    ap.add_argument("--codes", default="Flat,SQ8,PQ96")
    ap.add_argument("--nprobe", default="8,16,32,64")
    ap.add_argument("--refine", type=int, default=4)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--fresh", action="store_true", help="queries drawn anew from the mixture (default: data rows)")
    args = ap.parse_args()
    folder = Path(args.data)
    truth = dict(np.load(folder / "truth.npz"))
    rows = Rows(folder)
    n, d = rows.n, rows.parts[0].shape[1]
    if args.fresh:  # new points of the same mixture (not in the data): harder than the data's own rows
        xq = scale_data.Mixture(d).sample(args.queries, np.random.default_rng(99))
        t = time.perf_counter()
        gt = scale_data.exact_topk(folder, xq, 10)[0]
        print(f"exact top-10 of {args.queries} fresh queries: {time.perf_counter() - t:.1f}s")
    else:
        gt = truth["gt"][:args.queries]
        xq = rows.get(truth["qrows"][:args.queries])
    print(f"n={n:,} d={d} nlist={args.nlist} quantizer={'HNSW32' if args.hnsw else 'flat'} "
          f"threads={faiss.omp_get_max_threads()} anon RSS {rss_anon_mb():.0f} MB")

    cache = folder / f"ivf-probe-{args.nlist}{'-2l' if args.two_level else ''}-{args.niter}.npz"
    ntrain = min(n, args.train or 39 * args.nlist)
    rng = np.random.default_rng(0)
    xt = rows.get(np.sort(rng.choice(n, ntrain, replace=False)))
    t = time.perf_counter()
    if cache.is_file():  # centroids (and assignments) of an earlier run of this probe with the same settings
        cent = np.load(cache)["cent"]
    elif args.two_level:
        from faiss.contrib.clustering import two_level_clustering

        nc1 = int(round(np.sqrt(args.nlist)))
        cent, _ = two_level_clustering(xt, nc1, args.nlist, clustering_niter=args.niter, spherical=True)
    else:
        km = faiss.Kmeans(d, args.nlist, niter=args.niter, spherical=True, max_points_per_centroid=10_000,
                          seed=1)
        km.train(xt)
        cent = km.centroids
    cent = np.ascontiguousarray(cent, dtype=np.float32)
    train_s = time.perf_counter() - t
    print(f"k-means: {ntrain:,} rows x {args.nlist} centroids, {args.niter} iterations: {train_s:.1f}s")
    flat_q = faiss.IndexFlatIP(d)
    flat_q.add(cent)
    quant: faiss.Index = flat_q
    if args.hnsw:
        t = time.perf_counter()
        quant = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        quant.hnsw.efConstruction = 40
        quant.add(cent)
        quant.hnsw.efSearch = args.ef
        print(f"HNSW32 over the centroids: {time.perf_counter() - t:.1f}s")
    t = time.perf_counter()
    assign = np.empty(n, np.int64)
    if cache.is_file() and "assign" in np.load(cache) and not args.hnsw:
        assign = np.load(cache)["assign"]
    else:
        for g, xb in scale_data.iter_rows(folder):
            assign[g:g + len(xb)] = quant.search(xb, 1)[1][:, 0]
        if not args.hnsw:
            np.savez(cache, cent=cent, assign=assign)
    assign_s = time.perf_counter() - t
    print(f"assignment of {n:,} vectors: {assign_s:.1f}s ({n / assign_s:,.0f} vectors/s)")
    if args.hnsw:
        sample = np.sort(rng.choice(n, 20_000, replace=False))
        exact = flat_q.search(rows.get(sample), 1)[1][:, 0]
        print(f"HNSW assignment = exact nearest centroid for {np.mean(exact == assign[sample]):.3f} of a sample")
    sizes = np.bincount(assign, minlength=args.nlist)
    print(f"list sizes: mean {sizes.mean():.0f}, max {sizes.max()}, empty {(sizes == 0).sum()}")
    print(f"{'codes':<10} {'fill s':>7} {'code MB':>8} {'anon MB':>8} {'nprobe':>6} {'refine':>6} {'p50 ms':>7} "
          f"{'p95 ms':>7} {'CPU p50':>7} {'rec@10':>7}")
    for code in args.codes.split(","):
        if code == "Flat":
            index = faiss.IndexIVFFlat(quant, d, args.nlist, faiss.METRIC_INNER_PRODUCT)
        elif code.startswith("SQ"):
            qt = {"SQ8": faiss.ScalarQuantizer.QT_8bit, "SQ4": faiss.ScalarQuantizer.QT_4bit,
                  "SQfp16": faiss.ScalarQuantizer.QT_fp16}[code]
            index = faiss.IndexIVFScalarQuantizer(quant, d, args.nlist, qt, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFPQ(quant, d, args.nlist, int(code[2:]), 8, faiss.METRIC_INNER_PRODUCT)
        index.own_fields = False
        t = time.perf_counter()
        index.train(xt[:65536] if code.startswith("PQ") else xt)
        from faiss.contrib.ivf_tools import add_preassigned

        for g, xb in scale_data.iter_rows(folder):
            ids = np.arange(g, g + len(xb))  # a name of its own: add_preassigned keeps only a raw pointer to it
            add_preassigned(index, xb, assign[g:g + len(xb)], ids=ids)
        fill_s = time.perf_counter() - t
        code_mb = index.ntotal * index.code_size / 2**20
        anon = rss_anon_mb()
        refine = 1 if code in ("Flat", "SQfp16") else args.refine
        for nprobe in [int(x) for x in args.nprobe.split(",")]:
            index.nprobe = nprobe
            lat, lat_cpu, found = [], [], []
            for q in range(len(xq)):
                t, c = time.perf_counter(), time.process_time()
                _, I = index.search(xq[q:q + 1], 10 * refine)  # noqa: E741
                cand = I[0][I[0] >= 0]
                if refine > 1:
                    sc = rows.get(cand) @ xq[q]
                    cand = cand[np.argsort(-sc)[:10]]
                lat.append(time.perf_counter() - t)
                lat_cpu.append(time.process_time() - c)
                found.append(cand[:10])
            rec = float(np.mean([len(set(f.tolist()) & set(g.tolist())) / 10 for f, g in zip(found, gt,
                                                                                              strict=True)]))
            lat_ms = np.asarray(lat) * 1e3
            print(f"{code:<10} {fill_s:>7.1f} {code_mb:>8.0f} {anon:>8.0f} {nprobe:>6} {refine:>6} "
                  f"{np.percentile(lat_ms, 50):>7.2f} {np.percentile(lat_ms, 95):>7.2f} "
                  f"{np.percentile(lat_cpu, 50) * 1e3:>7.2f} {rec:>7.3f}", flush=True)
        del index
    print("one query at a time; compressed codes re-scored from the fp16 rows (gather included); shared 2-core "
          "machine: upper bounds")


if __name__ == "__main__":
    main()
