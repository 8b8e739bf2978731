"""Probe (issue 16, phase 1): assigning vectors to many inverted lists, flat scan vs an HNSW graph over the centroids.

    python bench/scale_probe_quantizer.py --data DATA --nlist 16384,65536

For 10M vectors the coarse assignment decides the derived build's time: a flat quantizer costs n x nlist dot
products. Centroids here are ``nlist`` sampled data rows (the throughput does not depend on how they were trained);
``--flat`` rows are assigned by a flat inner-product scan, ``--hnsw`` rows through HNSW32 (efSearch 64 and 128),
and the share of HNSW assignments equal to the flat (exact) one is printed. Rates are per CPU second (all threads)
and per wall second, on a shared machine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import faiss
import numpy as np
from scale_probe_ivf import Rows


def timed(fn):  # noqa: ANN001, ANN201
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--nlist", default="16384,65536")
    ap.add_argument("--flat", type=int, default=5000, help="vectors assigned by the flat scan")
    ap.add_argument("--hnsw", type=int, default=50000, help="vectors assigned through HNSW")
    args = ap.parse_args()
    rows = Rows(Path(args.data))
    rng = np.random.default_rng(0)
    d = rows.parts[0].shape[1]
    xa = rows.get(np.sort(rng.choice(rows.n, args.hnsw, replace=False)))
    print(f"{'nlist':>6} {'method':>14} {'build s':>8} {'vec/CPU s':>10} {'vec/s':>9} {'= flat':>7}  "
          f"(10M: CPU hours)")
    for nlist in [int(x) for x in args.nlist.split(",")]:
        cent = rows.get(np.sort(rng.choice(rows.n, nlist, replace=False)))
        flat = faiss.IndexFlatIP(d)
        flat.add(cent)
        (_, ref), w, c = timed(lambda: flat.search(xa[:args.flat], 1))  # noqa: B023
        print(f"{nlist:>6} {'flat':>14} {0:>8.1f} {args.flat / c:>10,.0f} {args.flat / w:>9,.0f} {1:>7.3f}  "
              f"({1e7 / (args.flat / c) / 3600:.2f})", flush=True)
        hnsw = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 40
        _, bw, _ = timed(lambda: hnsw.add(cent))  # noqa: B023
        for ef in (64, 128):
            hnsw.hnsw.efSearch = ef
            (_, got), w, c = timed(lambda: hnsw.search(xa, 1))  # noqa: B023
            same = float(np.mean(got[:args.flat, 0] == ref[:, 0]))
            print(f"{nlist:>6} {f'HNSW32 ef{ef}':>14} {bw:>8.1f} {args.hnsw / c:>10,.0f} {args.hnsw / w:>9,.0f} "
                  f"{same:>7.3f}  ({1e7 / (args.hnsw / c) / 3600:.2f})", flush=True)
    print("vec/CPU s: vectors per CPU second of all threads; a shared 2-core machine (upper bounds on time)")


if __name__ == "__main__":
    main()
