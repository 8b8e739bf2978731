"""find_duplicates on large synthetic indexes: time, peak memory, and recall of planted near-duplicates.

    python bench/dedup.py                                    # 20k exact and 100k auto-IVF, 1792-d
    python bench/dedup.py --sizes 1000000 --nprobe 16        # the issue-9 reference size (1M x 1792)
    python bench/dedup.py --sizes 300000 --storage fp16 --max-memory 1G
    python bench/dedup.py --sizes 200000 --dim 768 --ref-commit main --ref-queries 0   # tiers/labels/star overhead

An index folder (catalog + shards + derived FAISS file) is written straight from vectors through the shard writer
(``lookalike.indexer._shards``) and ``update_structure``: a low-rank Gaussian mixture (as in bench/search.py) in
which 2 % of the points get a near copy (distance ~0.01). Dedup runs in a fresh process (``find_duplicates``); on an
inverted file it compares lists with their neighbour lists (``_dedup_lists``). The reference, measured in the same
run, is what lookalike did before (schema 1): a faiss range search per vector over the same inverted file with the
same nprobe, timed on ``--ref-queries`` vectors and scaled to n (its peak memory was the whole FAISS file in RAM).

``--ref-commit REV`` also times ``find_duplicates`` of an older commit (extracted with ``git archive`` and imported
in its own process) on the same index, interleaved with this tree's ``components`` and ``star`` runs, with tier
boundaries and ``--labels`` labels stored in the index (the work this tree adds per pair): the second table gives the
best of ``--repeat`` runs of each and their ratio to the old code, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
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
import lookalike.indexer
import lookalike.indexer._dedup as dedup
from lookalike.indexer import find_duplicates
scan = [0.0, 0.0]
_find_pairs = dedup.find_pairs
def timed_find_pairs(*a, **kw):  # the list-by-list scan, timed apart from what follows it
    t0, c0 = time.perf_counter(), time.process_time()
    out = _find_pairs(*a, **kw)
    scan[0] += time.perf_counter() - t0
    scan[1] += time.process_time() - c0
    return out
dedup.find_pairs = timed_find_pairs
base = rss()
t, c = time.perf_counter(), time.process_time()
r = find_duplicates(sys.argv[1], threshold=float(sys.argv[2]), group=sys.argv[4] if len(sys.argv) > 4 else
                    "components", keep="largest", nprobe=int(sys.argv[3]) or None)
took, cpu = time.perf_counter() - t, time.process_time() - c
done.set()
pairs = [(p.a.rsplit("/", 1)[1][:-4], p.b.rsplit("/", 1)[1][:-4]) for p in r.pairs]
print(json.dumps({"seconds": took, "cpu": cpu, "scan_s": scan[0], "scan_cpu": scan[1], "base_mb": base,
                  "peak_mb": max(peak[0], rss()), "pairs": pairs, "probe": r.probe, "groups": len(r.groups),
                  "tiers": sorted({p.tier for p in r.pairs}) if hasattr(r.pairs[0], "tier") else [],
                  "code": lookalike.indexer.__file__}))
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


def extract_commit(rev: str, dest: Path) -> Path:
    """``git archive REV`` of this repository under ``dest``, laid out as an importable ``lookalike`` namespace;
    returns the folder to put on PYTHONPATH."""
    repo = Path(__file__).resolve().parents[1]
    src, pkg = dest / "src", dest / "pkg" / "lookalike"
    src.mkdir(parents=True)
    pkg.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(repo), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    for room in ("common", "data", "metric", "judge", "indexer", "app"):
        if (src / room).is_dir():
            (pkg / room).symlink_to(src / room)
    return pkg.parent


def store_review_data(folder: Path, planted: set[tuple[int, int]], n_labels: int) -> None:
    """Tier boundaries and ``n_labels`` labels (half on planted pairs: same; half on random pairs: different)."""
    from lookalike.indexer import add_labels, set_tiers

    set_tiers(folder, 0.02, similar=0.05, source="bench")
    rng = np.random.default_rng(5)
    some = sorted(planted)[: n_labels // 2]
    pairs = [(f"/bench/{a}.jpg", f"/bench/{b}.jpg", 1.0) for a, b in some]
    pairs += [(f"/bench/{a}.jpg", f"/bench/{a + 1}.jpg", 0.0) for a in rng.integers(1, 1000, n_labels - len(pairs))]
    add_labels(folder, pairs, source="python")


def compare_with(ref_path: Path, folder: Path, planted: set[tuple[int, int]], args: argparse.Namespace) -> None:
    """Old code (components) against this tree (components, star), interleaved; the best of --repeat each.

    CPU seconds (``process_time``: every thread of the process) are reported next to the wall clock: on a machine
    shared with other jobs they move much less. "scan" is the list-by-list pair search (``find_pairs``, the same
    code in both), "after" everything else (opening, labels, tiers, grouping, the report): where this tree adds work.
    """
    store_review_data(folder, planted, args.labels)
    names = ("old components", "new components", "new star")
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for _ in range(args.repeat):
        for name in names:
            env = dict(os.environ)
            if name.startswith("old"):
                env["PYTHONPATH"] = str(ref_path) + os.pathsep + env.get("PYTHONPATH", "")
            run = subprocess.run([sys.executable, "-c", _CHILD, str(folder), str(args.threshold),
                                  str(args.dedup_nprobe), name.split()[1]], capture_output=True, text=True, env=env)
            if run.returncode:
                sys.exit(f"{name} failed:\n{run.stderr[-3000:]}")
            runs[name].append(json.loads(run.stdout))

    def best(name: str, key: str) -> float:
        return min(r[key] for r in runs[name])

    def after(r: dict) -> float:
        return r["cpu"] - r["scan_cpu"]

    ref_wall, ref_cpu = best("old components", "seconds"), best("old components", "cpu")
    ref_after = min(after(r) for r in runs["old components"])
    print(f"\n{'code':<16} {'wall s':>8} {'cpu s':>8} {'scan cpu':>9} {'after cpu':>9} {'pairs':>7} {'groups':>7} "
          f"{'tiers':>6} {'wall/old':>8} {'cpu/old':>8} {'after/old':>9}")
    for name in names:
        last = runs[name][-1]
        a = min(after(r) for r in runs[name])
        print(f"{name:<16} {best(name, 'seconds'):>8.2f} {best(name, 'cpu'):>8.2f} {best(name, 'scan_cpu'):>9.2f} "
              f"{a:>9.2f} {len(last['pairs']):>7,} {last['groups']:>7,} {','.join(last['tiers']) or '-':>6} "
              f"{best(name, 'seconds') / ref_wall:>8.3f} {best(name, 'cpu') / ref_cpu:>8.3f} {a / ref_after:>9.3f}")
    print(f"best of {args.repeat} interleaved runs each; old = {args.ref_commit}, new = this tree; the index stores "
          f"tier boundaries and {args.labels} labels (the old code ignores them); machine shared: wall times are "
          "upper bounds, the CPU ratios of one run are what counts")


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
    ap.add_argument("--ref-commit", default=None, metavar="REV",
                    help="also time find_duplicates of this commit (e.g. main) against this tree's, same index")
    ap.add_argument("--labels", type=int, default=100, help="labels stored for the --ref-commit comparison")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each code for the --ref-commit comparison")
    args = ap.parse_args()
    ref_tmp = tempfile.TemporaryDirectory(prefix="lookalike-ref-") if args.ref_commit else None
    ref_path = extract_commit(args.ref_commit, Path(ref_tmp.name)) if ref_tmp else None
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
            if ref_path is not None:
                compare_with(ref_path, Path(tmp), planted, args)
    print(f"dedup s: find_duplicates (threshold {args.threshold}) in a fresh process; vec MB: the raw float32 vectors; "
          "RSS MB: that process after its imports; peak +MB: its peak RSS during find_duplicates (index opening "
          "included) above that; compared: share of the n(n-1)/2 pairs whose similarity was computed; ref s: the "
          "schema-1 method (a faiss range search per vector on the same inverted file and nprobe), timed on "
          "--ref-queries vectors and scaled to n; speed-up: ref s / dedup s")


if __name__ == "__main__":
    main()
