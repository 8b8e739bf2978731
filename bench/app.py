"""What the app's Map and Duplicates pages cost per rerun as a collection grows (10 to 100k), on synthetic data.

    python bench/app.py
    python bench/app.py --sizes 10 1000 100000 --dim 1280

Map: ``project_vectors`` (sample past the limit, PCA fitted on at most 2,000 rows) on clustered unit vectors, with
``--limit`` points at most, against the same with no limit (every vector read and projected; the browser would then
also have to draw every point); then the thumbnails: ``spread_sample`` over the drawn points (at most 81 of them, one
per grid cell, whatever n) and, once, ``map_thumbnails`` reading that many real photos (the test fixtures, cycled),
which the page caches per index state.
Duplicates: the work one page turn does now (slice a page of groups out of the shared report) against what the page
did before it was paginated (copy the cached report back out of ``st.cache_data`` with pickle, write the CSV and
JSON reports for the download buttons, walk every pair, then draw at most 50 groups), for reports of n groups of
two files. Thumbnails are left out of both (they cost the same per drawn group).
"""

from __future__ import annotations

import argparse
import pickle
import time
from pathlib import Path

import numpy as np

from lookalike.app.dedup_views import pairs_by_group
from lookalike.app.projection import THUMB_GRID, Projection, map_thumbnails, project_vectors, spread_sample
from lookalike.app.views import page_bounds, report_bytes
from lookalike.indexer import DedupReport, DuplicateGroup, DuplicateMember, DuplicatePair


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, dim)).astype(np.float32)
    x = centres[rng.integers(0, 50, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def synthetic_report(groups: int) -> DedupReport:
    gs, pairs = [], []
    for g in range(groups):
        a, b = f"/photos/{g // 1000:03d}/img_{g}.jpg", f"/photos/{g // 1000:03d}/img_{g}_copy.jpg"
        keeper = DuplicateMember(a, 0.0, a[8:], "/photos", 640, 480, 100_000, 0)
        dup = DuplicateMember(b, 0.01, b[8:], "/photos", 600, 450, 90_000, 0)
        gs.append(DuplicateGroup(keeper, [dup]))
        pairs.append(DuplicatePair(a, b, 0.01))
    return DedupReport("/idx", "efficientnet_lite0", "fp", 0.05, "components", "largest", 2 * groups, pairs, gs)


def best(fn, reps: int = 3) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 1000, 10_000, 100_000])
    ap.add_argument("--dim", type=int, default=1280, help="embedding size (efficientnet_lite0: 1280)")
    ap.add_argument("--limit", type=int, default=10_000, help="Map: points drawn at most")
    ap.add_argument("--page-size", type=int, default=20)
    args = ap.parse_args()

    print("| images | Map: sampled + PCA ms | points drawn | thumbnail points ms | thumbnails | "
          "Map without the limit ms | points then |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    proj = None
    for n in args.sizes:
        xb = clustered(n, args.dim)
        ids = np.arange(n, dtype=np.int64)
        proj = project_vectors(ids, lambda c, xb=xb: xb[c], limit=args.limit)
        t_new = best(lambda xb=xb, ids=ids: project_vectors(ids, lambda c: xb[c], limit=args.limit))
        chosen, _, _ = spread_sample(proj.xy)
        t_spread = best(lambda proj=proj: spread_sample(proj.xy))
        t_all = best(lambda xb=xb, ids=ids, n=n: project_vectors(ids, lambda c: xb[c], limit=max(n, 1)), reps=1)
        print(f"| {n:,} | {t_new:.0f} | {len(proj.ids):,} | {t_spread:.1f} | {len(chosen)} | {t_all:.0f} | {n:,} |")
    if proj is not None:
        photos = sorted(str(p) for p in (Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "photos")
                        .glob("*.jpg"))
        real = Projection(proj.method, proj.ids, proj.xy, proj.total, proj.sampled,
                          folders=[f"f{i % 5}" for i in range(len(proj.ids))],
                          relpaths=[""] * len(proj.ids), paths=[photos[i % len(photos)] for i in range(len(proj.ids))])
        t0 = time.perf_counter()
        thumbs = map_thumbnails(real)
        spent = time.perf_counter() - t0
        kb = sum(len(u) for u in thumbs.images) / 1e3
        print(f"\nMap thumbnails, once per index state (cached): {len(thumbs.images)} of {THUMB_GRID}x{THUMB_GRID} "
              f"cells, {spent * 1e3:.0f} ms to read and frame them, {kb:.0f} KB of data URIs in the figure")

    print()
    print("| groups | page turn now ms | page before (pickle + reports + pairs) ms | once per report: group pairs ms |")
    print("|---:|---:|---:|---:|")
    for n in args.sizes:
        report = synthetic_report(n)
        blob = pickle.dumps(report)

        def now(report: DedupReport = report) -> list:
            start, stop, _ = page_bounds(len(report.groups), 2, args.page_size)
            return report.groups[start:stop]

        def before(blob: bytes = blob) -> list:
            rep = pickle.loads(blob)  # st.cache_data hands out a copy on every rerun
            report_bytes(rep, ".csv")
            report_bytes(rep, ".json")
            shown = rep.groups[:50]
            group_of = {m.path: i for i, g in enumerate(shown) for m in (g.keeper, *g.duplicates)}
            return [p for p in rep.pairs if p.a in group_of and group_of[p.a] == group_of.get(p.b)]

        t_pairs = best(lambda report=report: pairs_by_group(report), reps=1)
        print(f"| {n:,} | {best(now):.3f} | {best(before, reps=1):.0f} | {t_pairs:.0f} |")


if __name__ == "__main__":
    main()
