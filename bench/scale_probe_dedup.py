"""Probe (issue 16, phase 1): dedup by lists for every index size, exact-search indexes included.

    python bench/scale_probe_dedup.py --data DATA --nprobe 1,2,4,8
    python bench/scale_probe_dedup.py --data DATA --codes sq8          # lists of 8-bit codes, pairs verified exactly

Today an exact-search index (<= 200k vectors) is deduplicated by comparing every pair of blocks (n^2 / 2 dot
products), and an inverted file list by list. The prototype partitions any index the same way: spherical k-means
on a sample (``nlist`` = the store's auto rule, 4 sqrt(n) as a power of two), every vector assigned to its nearest
centroid (a blocked product), the rows put in list order, then each list compared with itself and its ``nprobe - 1``
nearest lists (each unordered pair of lists once, one matrix product per list). ``--codes fp16`` keeps the rows in
list order as fp16 (2 bytes / dim: exact); ``--codes sq8`` keeps 8-bit scalar-quantized codes (1 byte / dim),
finds candidate pairs with a margin and re-checks them with the fp16 rows. Printed per nprobe: seconds (partition,
scan), comparisons as a share of all pairs, anonymous RSS, planted-pair recall / precision against truth.npz.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import faiss
import numpy as np
import scale_data
from scale_probe_ivf import Rows, rss_anon_mb


def auto_nlist(n: int) -> int:
    return int(min(max(2 ** round(np.log2(4 * np.sqrt(max(n, 1)))), 1024), 65536))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--nlist", type=int, default=0)
    ap.add_argument("--nprobe", default="1,2,4,8")
    ap.add_argument("--threshold", type=float, default=0.02)
    ap.add_argument("--codes", default="fp16", choices=["fp16", "sq8"])
    ap.add_argument("--margin", type=float, default=0.01, help="sq8: extra distance for candidates")
    args = ap.parse_args()
    folder = Path(args.data)
    truth = dict(np.load(folder / "truth.npz"))
    planted = {tuple(p) for p in truth["planted"].tolist()}
    rows = Rows(folder)
    n, d = rows.n, rows.parts[0].shape[1]
    nlist = args.nlist or auto_nlist(n)
    rng = np.random.default_rng(0)
    t0, c0 = time.perf_counter(), time.process_time()
    xt = rows.get(np.sort(rng.choice(n, min(n, 20 * nlist), replace=False)))
    km = faiss.Kmeans(d, nlist, niter=10, spherical=True, max_points_per_centroid=10_000, seed=1)
    km.train(xt)
    q = faiss.IndexFlatIP(d)
    q.add(km.centroids)
    t_train = time.perf_counter() - t0
    assign = np.empty(n, np.int64)
    for g, xb in scale_data.iter_rows(folder):
        assign[g:g + len(xb)] = q.search(xb, 1)[1][:, 0]
    order = np.argsort(assign, kind="stable")
    bounds = np.searchsorted(assign[order], np.arange(nlist + 1))
    t_assign = time.perf_counter() - t0 - t_train
    # the rows in list order: fp16 (exact) or 8-bit codes
    t = time.perf_counter()
    sq = None
    if args.codes == "fp16":
        store = np.empty((n, d), np.float16)
    else:
        sq = faiss.ScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit)
        sq.train(xt)
        store = np.empty((n, sq.code_size), np.uint8)
    pos = np.empty(n, np.int64)
    pos[order] = np.arange(n)
    for g, xb in scale_data.iter_rows(folder):
        dst = pos[g:g + len(xb)]
        store[dst] = xb.astype(np.float16) if sq is None else sq.compute_codes(xb)
    t_store = time.perf_counter() - t
    c_prep = time.process_time() - c0
    print(f"n={n:,} nlist={nlist} codes={args.codes}: k-means {t_train:.1f}s, assignment {t_assign:.1f}s, rows in "
          f"list order {t_store:.1f}s ({store.nbytes / 2**20:.0f} MB); {c_prep:.1f} CPU s; anon RSS "
          f"{rss_anon_mb():.0f} MB")
    print(f"{'nprobe':>6} {'scan s':>7} {'total s':>8} {'scan CPU':>9} {'total CPU':>9} {'compared':>9} {'pairs':>8} "
          f"{'recall':>7} {'prec':>7}")
    thr = np.float32(1.0 - args.threshold - 1e-6)
    cand_thr = np.float32(thr - (args.margin if sq is not None else 0.0))

    def members(a: int) -> np.ndarray:
        blk = store[bounds[a]:bounds[a + 1]]
        return blk.astype(np.float32) if sq is None else sq.decode(blk)

    for nprobe in [int(x) for x in args.nprobe.split(",")]:
        t, c = time.perf_counter(), time.process_time()
        _, nbr = q.search(km.centroids, nprobe)
        partners: list[set[int]] = [{a} for a in range(nlist)]
        for a in range(nlist):
            for b in nbr[a].tolist():
                if b >= 0:
                    partners[min(a, b)].add(max(a, b))
        found: set[tuple[int, int]] = set()
        comparisons = 0
        for a in range(nlist):
            xa = members(a)
            if not len(xa):
                continue
            cols = sorted(partners[a])
            xc = np.concatenate([xa if b == a else members(b) for b in cols])
            rows_c = np.concatenate([order[bounds[b]:bounds[b + 1]] for b in cols])
            S = xa @ xc.T
            na = len(xa)
            hit = S >= cand_thr
            hit[:, :na] = np.triu(hit[:, :na], 1)
            ii, jj = np.nonzero(hit)
            comparisons += na * (na - 1) // 2 + na * (len(xc) - na)
            if len(ii):
                u, v = order[bounds[a] + ii], rows_c[jj]
                if sq is not None:  # verify candidates with the exact rows
                    ok = np.einsum("ij,ij->i", rows.get(u), rows.get(v)) >= thr
                    u, v = u[ok], v[ok]
                found.update((int(min(x, y)), int(max(x, y))) for x, y in zip(u, v, strict=True) if x != y)
        scan, scan_c = time.perf_counter() - t, time.process_time() - c
        rec = len(found & planted) / max(1, len(planted))
        prec = len(found & planted) / max(1, len(found))
        print(f"{nprobe:>6} {scan:>7.1f} {scan + t_train + t_assign + t_store:>8.1f} {scan_c:>9.1f} "
              f"{scan_c + c_prep:>9.1f} "
              f"{comparisons / (n * (n - 1) / 2):>9.2e} {len(found):>8,} {rec:>7.3f} {prec:>7.3f}  "
              f"(anon RSS {rss_anon_mb():.0f} MB)", flush=True)
    print("seconds: wall and CPU (all threads) of this process, on a shared 2-core machine: upper bounds")


if __name__ == "__main__":
    main()
