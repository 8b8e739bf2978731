"""Scale: synthetic clustered vectors with planted near-duplicates fed through ``lookalike import``; build, search
and dedup measured, each in a fresh process (peak RSS = that process's VmHWM above its RSS after imports).

    python bench/scale.py --sizes 100000 --dim 768                 # a few minutes on 2 cores
    python bench/scale.py --sizes 1000000,5000000,10000000 --dim 768
    python bench/scale.py --sizes 1000000 --dim 1792 --max-memory 4G

Data: the low-rank Gaussian mixture of bench/search.py (1000 components), 2 % of the points replaced by a near
copy of another point (distance ~0.005), written as .npy shards + paths.txt (the ``npy`` import layout).
Ground truth: exact top-10 of 200 queries (dataset points plus noise) by a blocked matrix product over the
memory-mapped shards, computed before the timed stages.

Columns: build s / peak MB (import + the derived search structure), disk MB (the index folder), search p50 / p95 ms
(one query at a time, k=10) and recall@10 against exact search, dedup s / peak MB (find_duplicates at
--threshold), planted-pair recall and precision (a found pair counts as right when it is a planted pair).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from search import gmm  # noqa: E402

METRIC = "synthetic"
CHUNK = 250_000  # rows per generated .npy file

_PRELUDE = """
import json, sys, time
import numpy as np
def rss_mb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024
"""

_BUILD = _PRELUDE + """
from lookalike.indexer import import_embeddings
data, idx, max_memory = sys.argv[1], sys.argv[2], sys.argv[3] or None
base = rss_mb("VmRSS")
t = time.perf_counter()
s = import_embeddings(data, idx, metric="synthetic", root=data, check_files=False, max_memory=max_memory)
took = time.perf_counter() - t
t_import = took - s.seconds["derive"]
print(json.dumps({"seconds": took, "import_s": t_import, "derive_s": s.seconds["derive"], "base_mb": base,
                  "peak_mb": rss_mb("VmHWM"), "imported": s.imported, "structure": s.structure,
                  "import_rate": s.imported / max(t_import, 1e-9)}))
"""

_SEARCH = _PRELUDE + """
from lookalike.indexer import open_index
from lookalike.indexer._search import search_vectors
idx, xq_file = sys.argv[1], sys.argv[2]
xq = np.load(xq_file)
base = rss_mb("VmRSS")
t = time.perf_counter()
ix = open_index(idx)
open_s = time.perf_counter() - t
search_vectors(ix, xq[:1], 10)  # warm-up
lat, found = [], []
for q in range(len(xq)):
    t = time.perf_counter()
    hits = search_vectors(ix, xq[q:q + 1], 10)[0]
    lat.append(time.perf_counter() - t)
    found.append([int(h.path.rsplit("/", 1)[1][:-4]) for h in hits])
print(json.dumps({"open_s": open_s, "lat": lat, "found": found, "base_mb": base, "peak_mb": rss_mb("VmHWM")}))
"""

_DEDUP = _PRELUDE + """
from lookalike.indexer import find_duplicates
idx, thr = sys.argv[1], float(sys.argv[2])
base = rss_mb("VmRSS")
t = time.perf_counter()
r = find_duplicates(idx, threshold=thr, group="components", keep="first")
took = time.perf_counter() - t
pairs = [(int(p.a.rsplit("/", 1)[1][:-4]), int(p.b.rsplit("/", 1)[1][:-4])) for p in r.pairs]
print(json.dumps({"seconds": took, "pairs": pairs, "base_mb": base, "peak_mb": rss_mb("VmHWM"),
                  "probe": str(getattr(r, "probe", "") or "")}))
"""


def generate(folder: Path, n: int, d: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Write ``n`` vectors as npy shards + paths.txt; returns (planted pairs (row a, row b), 200 queries)."""
    rng = np.random.default_rng(seed)
    n_dup = n // 50
    base = n - n_dup
    src = np.sort(rng.choice(base, n_dup, replace=False))
    originals = np.zeros((n_dup, d), np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    part, buf, rows = 0, [], 0
    got = 0

    def flush(arrays: list[np.ndarray]) -> None:
        nonlocal part
        np.save(folder / f"part_{part:05d}.npy", np.concatenate(arrays))
        part += 1

    for s, x in gmm(base, d, 1000, seed=0):
        sel = (src >= s) & (src < s + len(x))
        originals[got:got + int(sel.sum())] = x[src[sel] - s]
        got += int(sel.sum())
        buf.append(x)
        rows += len(x)
        if rows >= CHUNK:
            flush(buf)
            buf, rows = [], 0
    dup = originals + 0.1 * rng.standard_normal(originals.shape).astype(np.float32) / np.sqrt(d)
    dup /= np.linalg.norm(dup, axis=1, keepdims=True)
    buf.append(dup)
    flush(buf)
    with open(folder / "paths.txt", "w") as f:
        for i in range(n):
            f.write(f"{i:09d}.jpg\n")
    planted = np.stack([src, np.arange(base, n)], axis=1)
    qrows = rng.choice(n, 200, replace=False)
    xq = np.concatenate([_rows(folder, qrows)])
    xq = xq + 0.3 * rng.standard_normal(xq.shape).astype(np.float32) / np.sqrt(d)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    return planted, xq.astype(np.float32)


def _parts(folder: Path) -> list[np.ndarray]:
    return [np.load(p, mmap_mode="r") for p in sorted(folder.glob("part_*.npy"))]


def _rows(folder: Path, rows: np.ndarray) -> np.ndarray:
    out, start = {}, 0
    for a in _parts(folder):
        for r in rows[(rows >= start) & (rows < start + len(a))]:
            out[int(r)] = np.asarray(a[r - start])
        start += len(a)
    return np.stack([out[int(r)] for r in rows])


def exact_top10(folder: Path, xq: np.ndarray, k: int = 10, block: int = 65536) -> np.ndarray:
    """Exact k nearest rows (inner product) of each query by a blocked product over the shards."""
    best_d = np.full((len(xq), k), -np.inf, np.float32)
    best_i = np.full((len(xq), k), -1, np.int64)
    start = 0
    for a in _parts(folder):
        for s in range(0, len(a), block):
            xb = np.asarray(a[s:s + block], np.float32)
            sims = xq @ xb.T
            d = np.concatenate([best_d, sims], axis=1)
            i = np.concatenate([best_i, np.broadcast_to(np.arange(start + s, start + s + len(xb)), sims.shape)],
                               axis=1)
            top = np.argpartition(-d, k - 1, axis=1)[:, :k]
            best_d, best_i = np.take_along_axis(d, top, 1), np.take_along_axis(i, top, 1)
        start += len(a)
    return best_i


def child(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"bench stage failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def du_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000", help="comma-separated vector counts (default 100000)")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--threshold", type=float, default=0.02, help="dedup distance threshold (default 0.02)")
    ap.add_argument("--max-memory", default="", help="memory budget passed to the search structure (e.g. 4G)")
    ap.add_argument("--workdir", default=None, help="where data and indexes go (default: a temporary folder)")
    ap.add_argument("--skip-dedup", action="store_true")
    args = ap.parse_args()
    print(f"{'n':>10} {'dim':>5} {'build s':>8} {'import/s':>9} {'peak MB':>8} {'disk MB':>8} {'p50 ms':>7} "
          f"{'p95 ms':>7} {'rec@10':>7} {'dedup s':>8} {'peak MB':>8} {'pairs':>8} {'recall':>7} {'prec':>7}")
    for n in [int(s) for s in args.sizes.split(",")]:
        tmp = Path(args.workdir or tempfile.mkdtemp(prefix="lookalike-scale-")) / f"n{n}-d{args.dim}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            data, idx = tmp / "data", tmp / "idx"
            t = time.perf_counter()
            planted, xq = generate(data, n, args.dim)
            gen_s = time.perf_counter() - t
            gt = exact_top10(data, xq)
            np.save(tmp / "xq.npy", xq)
            b = child(_BUILD, str(data), str(idx), args.max_memory)
            disk = du_mb(idx)
            s = child(_SEARCH, str(idx), str(tmp / "xq.npy"))
            lat = np.asarray(s["lat"]) * 1000
            found = s["found"]
            rec = float(np.mean([len(set(f) & set(g.tolist())) / 10 for f, g in zip(found, gt, strict=True)]))
            if args.skip_dedup:
                dd = {"seconds": float("nan"), "peak_mb": float("nan"), "base_mb": 0.0, "pairs": []}
            else:
                dd = child(_DEDUP, str(idx), str(args.threshold))
            pairs = {tuple(sorted(p)) for p in dd["pairs"]}
            truth = {tuple(sorted(map(int, p))) for p in planted}
            recall = len(pairs & truth) / max(1, len(truth))
            prec = len(pairs & truth) / max(1, len(pairs))
            print(f"{n:>10,} {args.dim:>5} {b['seconds']:>8.1f} {b['import_rate']:>9,.0f} "
                  f"{b['peak_mb'] - b['base_mb']:>8.0f} {disk:>8.0f} {np.percentile(lat, 50):>7.1f} "
                  f"{np.percentile(lat, 95):>7.1f} {rec:>7.3f} {dd['seconds']:>8.1f} "
                  f"{dd['peak_mb'] - dd['base_mb']:>8.0f} {len(pairs):>8,} {recall:>7.3f} {prec:>7.3f}", flush=True)
            extra = {"generate_s": round(gen_s, 1), "import_s": round(b["import_s"], 1),
                     "derive_s": round(b["derive_s"], 1), "structure": b["structure"],
                     "open_s": round(s["open_s"], 2), "search_peak_mb": round(s["peak_mb"] - s["base_mb"]),
                     "dedup_probe": dd.get("probe", "")}
            print(f"{'':>10} {json.dumps(extra)}", flush=True)
        finally:
            if not args.workdir:
                shutil.rmtree(tmp.parent, ignore_errors=True)
    print("build s: import (+ derived structure) in a fresh process; peak MB: that process's VmHWM above its RSS after "
          "imports; search: one query at a time after a warm-up; measured on a shared 2-core machine (upper bounds)")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    main()
