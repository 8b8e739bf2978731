"""find_duplicates on large synthetic indexes: time, peak memory, and recall of planted near-duplicates.

    python bench/dedup.py                                    # 20k Flat and 100k auto-IVF, 1792-d
    python bench/dedup.py --sizes 1000000 --faiss IVF4096,Flat --nprobe 16

An index folder (catalog + FAISS file) is written straight from vectors: a low-rank Gaussian mixture (as in
bench/search.py) in which 2 % of the points get a near copy (distance ~0.01). Exact (Flat) dedup costs
n^2 d flops, so large collections rely on the IVF index that "auto" picks beyond 200k vectors.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import insert

from lookalike.indexer import VectorIndex, choose_factory
from lookalike.indexer._catalog import STATUS_OK, BuildRow, Catalog, ImageRow, VectorRow
from lookalike.indexer._vectors import vectors_file

sys.path.insert(0, str(Path(__file__).parent))
from search import gmm  # noqa: E402

FP = "bench-0"


_CHILD = """
import json, sys, threading, time
from lookalike.indexer import find_duplicates

def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

base, peak, done = rss(), [0.0], threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
t = time.perf_counter()
r = find_duplicates(sys.argv[1], threshold=float(sys.argv[2]), group="components", keep="largest")
took = time.perf_counter() - t
done.set()
pairs = [(p.a.rsplit("/", 1)[1][:-4], p.b.rsplit("/", 1)[1][:-4]) for p in r.pairs]
print(json.dumps({"seconds": took, "base_mb": base, "peak_mb": max(peak[0], rss()), "pairs": pairs}))
"""


def make_index(folder: Path, n: int, d: int, factory: str, nprobe: int) -> set[tuple[int, int]]:
    rng = np.random.default_rng(3)
    n_dup = n // 50
    base = n - n_dup
    src = np.sort(rng.choice(base, n_dup, replace=False))
    vi = VectorIndex.create(d, "Flat" if factory == "Flat" else factory)
    planted = set()
    keep_train = []
    for s, x in gmm(base, d, 1000, seed=0):
        if not vi.is_trained:
            keep_train.append(x)
            if sum(len(t) for t in keep_train) >= min(base, 100_000):
                vi.train(np.concatenate(keep_train))
                for t0, t in zip(range(0, 10**12, 50_000), keep_train, strict=False):
                    vi.add(t, range(t0 + 1, t0 + 1 + len(t)))
                keep_train = []
            continue
        vi.add(x, range(s + 1, s + 1 + len(x)))
    if keep_train:
        vi.train(np.concatenate(keep_train))
        for t0, t in zip(range(0, 10**12, 50_000), keep_train, strict=False):
            vi.add(t, range(t0 + 1, t0 + 1 + len(t)))
    orig = vi.vectors((src + 1).tolist())
    dup = orig + 0.1 * rng.standard_normal(orig.shape).astype(np.float32) / np.sqrt(d)
    dup /= np.linalg.norm(dup, axis=1, keepdims=True)
    dup_ids = np.arange(base + 1, n + 1)
    vi.add(dup, dup_ids.tolist())
    planted = {(int(a) + 1, int(b)) for a, b in zip(src, dup_ids, strict=True)}
    params = f"nprobe={nprobe}" if "IVF" in factory else None
    vi.set_search_params(params)
    vi.save(vectors_file(folder, FP))
    with Catalog(folder, create=True) as cat, cat.session() as s, s.begin():
        s.add(BuildRow(fingerprint=FP, metric="bench", dim=d, factory=factory, current_factory=factory,
                       search_params=params, count=n))
        for a in range(1, n + 1, 50_000):
            ids = range(a, min(n + 1, a + 50_000))
            s.execute(insert(ImageRow), [{"id": i, "root": "/bench", "relpath": f"{i}.jpg",
                                          "path_raw": f"/bench/{i}.jpg".encode(), "sha256": None, "size": 1000 + i,
                                          "mtime_ns": i, "width": 64, "height": 64, "format": "JPEG",
                                          "status": STATUS_OK} for i in ids])
            s.execute(insert(VectorRow), [{"image_id": i, "fingerprint": FP, "faiss_id": i} for i in ids])
    return planted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="20000,100000")
    ap.add_argument("--dim", type=int, default=1792)
    ap.add_argument("--faiss", default="", help="factory for every size (default: Flat up to 20k, else auto IVF)")
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--threshold", type=float, default=0.05)
    args = ap.parse_args()
    print(f"{'n':>9} {'faiss':>16} {'build s':>8} {'dedup s':>8} {'pairs':>8} {'recall':>7} {'vec MB':>8} "
          f"{'RSS MB':>9} {'peak +MB':>9}")
    for n in [int(s) for s in args.sizes.split(",")]:
        factory = args.faiss or ("Flat" if n <= 20_000 else choose_factory(max(n, 200_001))[0])
        with tempfile.TemporaryDirectory(prefix="lookalike-dedup-") as tmp:
            t = time.perf_counter()
            planted = make_index(Path(tmp), n, args.dim, factory, args.nprobe)
            build = time.perf_counter() - t
            out = subprocess.run([sys.executable, "-c", _CHILD, tmp, str(args.threshold)], capture_output=True,
                                 text=True, check=True).stdout
            res = json.loads(out)
            found = {tuple(sorted((int(a), int(b)))) for a, b in res["pairs"]}
            recall = len(found & planted) / len(planted)
            vec_mb = n * args.dim * 4 / 2**20
            print(f"{n:>9,} {factory:>16} {build:>8.1f} {res['seconds']:>8.1f} {len(found):>8,} {recall:>7.3f} "
                  f"{vec_mb:>8.0f} {res['base_mb']:>9.0f} {res['peak_mb'] - res['base_mb']:>9.0f}")
    print(f"dedup s: find_duplicates (threshold {args.threshold}) in a fresh process; vec MB: the raw float32 vectors; "
          "RSS MB: that process after its imports; peak +MB: its peak RSS during find_duplicates (index loading "
          "included) above that")


if __name__ == "__main__":
    main()
