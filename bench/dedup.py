"""find_duplicates on large synthetic indexes: time, peak memory, and recall of planted near-duplicates.

    python bench/dedup.py                                    # 20k exact and 100k auto-IVF, 1792-d
    python bench/dedup.py --sizes 1000000 --nprobe 16        # the issue-9 reference size (1M x 1792)
    python bench/dedup.py --sizes 300000 --storage fp16 --max-memory 1G

An index folder (catalog + shards + derived FAISS file) is written straight from vectors through the shard writer
(``lookalike.indexer._shards``) and ``update_structure``: a low-rank Gaussian mixture (as in bench/search.py) in
which 2 % of the points get a near copy (distance ~0.01). Dedup runs in a fresh process (``find_duplicates``); on an
inverted file it compares lists with their neighbour lists (``_dedup_lists``). The reference, measured in the same
run, is what lookalike did before (schema 1): a faiss range search per vector over the same inverted file with the
same nprobe, timed on ``--ref-queries`` vectors and scaled to n (its peak memory was the whole FAISS file in RAM).
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

from lookalike.indexer._catalog import STATUS_OK, BuildRow, Catalog, ImageRow, StoreRow
from lookalike.indexer._shard_writer import ShardWriter
from lookalike.indexer._upkeep import update_structure
from lookalike.indexer._util import parse_memory

sys.path.insert(0, str(Path(__file__).parent))
from search import gmm  # noqa: E402

FP = "bench-0"

_RSS = """
import json, sys, threading, time
def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
base, peak, done = rss(), [0.0], threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
"""

_CHILD = _RSS + """
from lookalike.indexer import find_duplicates
base = rss()
t = time.perf_counter()
r = find_duplicates(sys.argv[1], threshold=float(sys.argv[2]), group="components", keep="largest",
                    nprobe=int(sys.argv[3]) or None)
took = time.perf_counter() - t
done.set()
pairs = [(p.a.rsplit("/", 1)[1][:-4], p.b.rsplit("/", 1)[1][:-4]) for p in r.pairs]
print(json.dumps({"seconds": took, "base_mb": base, "peak_mb": max(peak[0], rss()), "pairs": pairs,
                  "probe": r.probe}))
"""

_REF = _RSS + """
import faiss, numpy as np
from lookalike.indexer import open_index
ix = open_index(sys.argv[1])
vec = ix.vectors
faiss.extract_index_ivf(vec.derived).nprobe = int(sys.argv[3])
nq = int(sys.argv[4])
base = rss()
t = time.perf_counter()
seen = 0
for ids, xb in vec.iter_blocks(4096):
    xb = xb[:nq - seen]
    vec.derived.range_search(xb, float(1.0 - float(sys.argv[2]) - 1e-6))
    seen += len(xb)
    if seen >= nq:
        break
took = time.perf_counter() - t
done.set()
print(json.dumps({"seconds": took, "queries": seen, "n": vec.ntotal}))
"""


def make_index(folder: Path, n: int, d: int, factory: str, storage: str, max_memory: int | None,
               nprobe: int) -> set[tuple[int, int]]:
    rng = np.random.default_rng(3)
    n_dup = n // 50
    base = n - n_dup
    src = np.sort(rng.choice(base, n_dup, replace=False))
    cat = Catalog(folder, create=True)
    with cat.session() as s, s.begin():
        s.add(BuildRow(fingerprint=FP, metric="bench", dim=d, factory=factory, current_factory="Flat",
                       search_params=None, count=0))
        s.add(StoreRow(fingerprint=FP, storage=storage, max_memory=max_memory, structure="exact"))
        for a in range(1, n + 1, 50_000):
            ids = range(a, min(n + 1, a + 50_000))
            s.execute(insert(ImageRow), [{"id": i, "root": "/bench", "relpath": f"{i}.jpg",
                                          "path_raw": f"/bench/{i}.jpg".encode(), "sha256": None, "size": 1000 + i,
                                          "mtime_ns": i, "width": 64, "height": 64, "format": "JPEG",
                                          "status": STATUS_OK} for i in ids])
    w = ShardWriter(cat, FP, d)
    orig = []
    for s0, x in gmm(base, d, 1000, seed=0, chunk=65536):
        sel = src[(src >= s0) & (src < s0 + len(x))] - s0
        orig.append(x[sel])
        p = w.write(np.arange(s0 + 1, s0 + 1 + len(x)), x)
        with cat.session() as s, s.begin():
            w.record(s, p)
    o = np.concatenate(orig)
    dup = o + 0.1 * rng.standard_normal(o.shape).astype(np.float32) / np.sqrt(d)
    dup /= np.linalg.norm(dup, axis=1, keepdims=True)
    dup_ids = np.arange(base + 1, n + 1)
    p = w.write(dup_ids, dup)
    with cat.session() as s, s.begin():
        w.record(s, p)
    build = next(b for b in cat.builds() if b.fingerprint == FP)
    update_structure(cat, build)
    if nprobe and build.search_params:
        with cat.session() as s, s.begin():
            s.get(BuildRow, FP).search_params = f"nprobe={nprobe}"
    cat.close()
    return {(int(a) + 1, int(b)) for a, b in zip(src, dup_ids, strict=True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="20000,100000")
    ap.add_argument("--dim", type=int, default=1792)
    ap.add_argument("--faiss", default="", help="factory for every size (default: exact up to 20k, else auto IVF)")
    ap.add_argument("--nprobe", type=int, default=16, help="search nprobe stored with the index (and the reference)")
    ap.add_argument("--dedup-nprobe", type=int, default=0, help="lists each list is compared with (default: nprobe)")
    ap.add_argument("--threshold", type=float, default=0.05)
    ap.add_argument("--storage", default="float32", choices=["float32", "float16"])
    ap.add_argument("--max-memory", default=None, help="memory budget of the index (e.g. 2G)")
    ap.add_argument("--ref-queries", type=int, default=20000, help="queries timed for the schema-1 reference (0: skip)")
    args = ap.parse_args()
    budget = parse_memory(args.max_memory)
    print(f"{'n':>9} {'structure':>16} {'build s':>8} {'dedup s':>8} {'pairs':>8} {'recall':>7} {'vec MB':>8} "
          f"{'RSS MB':>8} {'peak +MB':>9} {'compared':>9} {'ref s':>8} {'speed-up':>8}")
    for n in [int(s) for s in args.sizes.split(",")]:
        factory = args.faiss or ("Flat" if n <= 20_000 else "auto")
        with tempfile.TemporaryDirectory(prefix="lookalike-dedup-") as tmp:
            t = time.perf_counter()
            import lookalike.indexer._store as store
            from lookalike.indexer._structure import AUTO_EXACT_MAX

            store.AUTO_EXACT_MAX = 20_000 if factory == "auto" else AUTO_EXACT_MAX  # 100k: auto-IVF, as before
            planted = make_index(Path(tmp), n, args.dim, factory, args.storage, budget, args.nprobe)
            store.AUTO_EXACT_MAX = AUTO_EXACT_MAX
            build = time.perf_counter() - t
            with Catalog(tmp) as cat, cat.session() as s:
                structure = s.get(BuildRow, FP).current_factory
            run = subprocess.run([sys.executable, "-c", _CHILD, tmp, str(args.threshold), str(args.dedup_nprobe)],
                                 capture_output=True, text=True)
            if run.returncode:
                sys.exit(f"find_duplicates failed at n={n}:\n{run.stderr[-3000:]}")
            res = json.loads(run.stdout)
            found = {tuple(sorted((int(a), int(b)))) for a, b in res["pairs"]}
            recall = len(found & planted) / len(planted)
            vec_mb = n * args.dim * 4 / 2**20
            ref_s, speed = float("nan"), float("nan")
            if args.ref_queries and structure.startswith("IVF"):
                ref = json.loads(subprocess.run(
                    [sys.executable, "-c", _REF, tmp, str(args.threshold), str(args.nprobe), str(args.ref_queries)],
                    capture_output=True, text=True, check=True).stdout)
                ref_s = ref["seconds"] * n / ref["queries"]
                speed = ref_s / res["seconds"]
            print(f"{n:>9,} {structure:>16} {build:>8.1f} {res['seconds']:>8.1f} {len(found):>8,} {recall:>7.3f} "
                  f"{vec_mb:>8.0f} {res['base_mb']:>8.0f} {res['peak_mb'] - res['base_mb']:>9.0f} "
                  f"{res['probe'].get('share_of_exact', 1.0):>9.2e} {ref_s:>8.1f} {speed:>8.2f}", flush=True)
    print(f"dedup s: find_duplicates (threshold {args.threshold}) in a fresh process; vec MB: the raw float32 vectors; "
          "RSS MB: that process after its imports; peak +MB: its peak RSS during find_duplicates (index opening "
          "included) above that; compared: share of the n(n-1)/2 pairs whose similarity was computed; ref s: the "
          "schema-1 method (a faiss range search per vector on the same inverted file and nprobe), timed on "
          "--ref-queries vectors and scaled to n; speed-up: ref s / dedup s")


if __name__ == "__main__":
    main()
