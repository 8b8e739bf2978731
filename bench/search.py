"""Search speed and recall on clustered vectors shaped like real embeddings.

    python bench/search.py                               # 100k x 1792-d: exact routes + IVF / HNSW / IVF-PQ
    python bench/search.py --sizes 1000000 --no-hnsw     # 1M (7.2 GB of vectors, one copy)

Data: a Gaussian mixture of ``--components`` unit centres (grouped 20 to a super-cluster), each point a centre plus
an offset in its component's own 32-d subspace plus isotropic noise, normalized (i.i.d. random vectors in 1792-d
defeat every ANN index and say nothing).
Rows:
  exact: ``ShardedVectors.search`` over memory-mapped shards written by the writer session (what lookalike runs for
  an exact build: blocked numpy matrix products) against a plain numpy brute force (one matrix product +
  argpartition) and faiss's Flat scan, on the same vectors, at 1 and 100 queries;
  approximate: recall@10 against exact search and time per query (batches of 100), for IVF (nprobe sweep),
  HNSW32 (efSearch sweep) and IVF-PQ with exact re-ranking (RFlat).
"""

from __future__ import annotations

import argparse
import functools
import math
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from lookalike.indexer import BuildConfig, choose_structure


def gmm(n: int, d: int, components: int, seed: int = 0, sample_seed: int = 0, chunk: int = 50_000,
        rank: int = 32, iso: float = 0.5):
    """Yield (first row, vectors) chunks of a normalized Gaussian mixture: components grouped 20 to a super-cluster,
    each spreading in its own ``rank``-d subspace (like real embeddings: nested clusters with a low intrinsic
    dimension), plus isotropic noise. ``seed`` fixes the mixture, ``sample_seed`` the points drawn from it."""
    rng = np.random.default_rng(seed)
    supers = rng.standard_normal((max(1, components // 20), d)).astype(np.float32)  # clusters of clusters
    supers /= np.linalg.norm(supers, axis=1, keepdims=True)
    centres = supers[rng.integers(0, len(supers), components)]
    centres = centres + 0.8 * rng.standard_normal((components, d)).astype(np.float32) / math.sqrt(d)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = rng.standard_normal((components, rank, d)).astype(np.float32) / math.sqrt(d * rank)
    rng = np.random.default_rng([seed, sample_seed])
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        k = rng.integers(0, components, m)
        x = centres[k] + iso * rng.standard_normal((m, d)).astype(np.float32) / math.sqrt(d)
        z = rng.standard_normal((m, rank)).astype(np.float32)
        order = np.argsort(k, kind="stable")
        bounds = np.searchsorted(k[order], np.arange(components + 1))
        for c in range(components):
            rows = order[bounds[c]:bounds[c + 1]]
            if len(rows):
                x[rows] += 0.8 * (z[rows] @ bases[c])
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        yield s, x


def timeit_many(fns: dict, reps: int) -> dict[str, float]:
    """Best-of-``reps`` seconds per function, calls interleaved (fair on a machine shared with other work)."""
    for fn in fns.values():
        fn()  # warm-up
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(reps):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def timeit(fn, reps: int) -> float:
    return timeit_many({"f": fn}, reps)["f"]


def numpy_knn(xb: np.ndarray, xq: np.ndarray, k: int) -> np.ndarray:
    s = xb @ xq.T
    part = np.argpartition(-s, k - 1, axis=0)[:k]
    order = np.take_along_axis(s, part, axis=0).argsort(axis=0)[::-1]
    return np.take_along_axis(part, order, axis=0).T


def recall_at(I: np.ndarray, gt: np.ndarray, k: int) -> float:  # noqa: E741
    return float(np.mean([len(set(I[q, :k]) & set(gt[q, :k])) / k for q in range(len(gt))]))


def shard_index(folder: Path, n: int, args: argparse.Namespace):  # -> ShardedVectors
    """Write ``n`` mixture vectors as an exact build through the writer session (image ids 1..n); open its shards."""
    from lookalike.indexer._catalog import STATUS_OK, Catalog, ImageRow
    from lookalike.indexer._store import ShardedVectors
    from lookalike.indexer._writer import open_writer

    with open_writer(folder, BuildConfig(faiss="Flat")) as session:
        with session.catalog.session() as s, s.begin():
            for a in range(1, n + 1, 50_000):
                s.connection().execute(ImageRow.__table__.insert(), [
                    {"id": i, "root": "/bench", "relpath": f"{i}.jpg", "path_raw": f"/bench/{i}.jpg".encode(),
                     "size": 1, "mtime_ns": 1, "status": STATUS_OK} for i in range(a, min(n + 1, a + 50_000))])
        bw = session.open_build("bench-search", "bench", args.dim)
        for s0, x in gmm(n, args.dim, args.components):
            bw.push(np.arange(s0 + 1, s0 + 1 + len(x)), x)
        bw.finish()
    cat = Catalog(folder)
    return ShardedVectors(cat, cat.builds()[0], verify=False)


def bench_size(n: int, args: argparse.Namespace, k: int = 10) -> None:
    with tempfile.TemporaryDirectory(prefix="lookalike-bench-search-") as tmp:
        _bench_size(n, args, Path(tmp) / "idx", k)


def _bench_size(n: int, args: argparse.Namespace, folder: Path, k: int) -> None:
    t = time.perf_counter()
    vec = shard_index(folder, n, args)
    xq = next(gmm(100, args.dim, args.components, sample_seed=1))[1]
    xb = np.concatenate([np.asarray(p.xb) for p in vec.shards.parts])  # rows in id order (ids 1..n)
    flat = faiss.IndexFlatIP(args.dim)
    flat.add(xb)
    print(f"\n== n = {n:,}  ({n * args.dim * 4 / 1e9:.1f} GB, generated in {time.perf_counter() - t:.0f}s)")
    print(f"{'exact':<34} {'nq':>4} {'ms/call':>9} {'ms/query':>9} {'vs numpy':>9}")
    exact_ms = {}
    for nq in (1, 100):
        q = xq[:nq]
        best = timeit_many({"np": functools.partial(numpy_knn, xb, q, k),
                            "faiss": functools.partial(flat.search, q, k),
                            "vi": functools.partial(vec.search, q, k)}, 7 if nq == 1 else 3)
        t_np, t_faiss, t_vi = best["np"], best["faiss"], best["vi"]
        exact_ms[nq] = t_vi * 1e3 / nq
        for name, tt in (("numpy brute force", t_np), ("faiss IndexFlatIP", t_faiss),
                         ("lookalike exact (shards)", t_vi)):
            print(f"{name:<34} {nq:>4} {tt * 1e3:>9.2f} {tt * 1e3 / nq:>9.3f} {tt / t_np:>8.2f}x")
    gt = vec.search(xq, 100)[1] - 1  # ids 1..n -> rows of xb
    del flat

    if args.exact_only:
        return
    auto = choose_structure(n, args.dim)
    auto_factory, auto_params = ("Flat", None) if auto.exact else (auto.factory, auto.params)
    nlist = args.nlist or max(256, 2 ** round(math.log2(4 * math.sqrt(n))))
    print(f"lookalike auto choice at this size: {auto_factory} {auto_params or ''}")
    print(f"{'approximate':<34} {'param':>12} {'recall@10':>10} {'ms/query':>9} {'speed-up':>9}")
    ntrain = min(n, max(40 * nlist, 50_000))
    train = xb[np.random.default_rng(2).choice(n, ntrain, replace=False)]

    t = time.perf_counter()
    ivf = faiss.index_factory(args.dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    ivf.cp.niter = 10
    ivf.train(train)
    for s in range(0, n, 100_000):
        ivf.add(xb[s:s + 100_000])
    print(f"  (IVF{nlist},Flat trained on {ntrain:,} and filled in {time.perf_counter() - t:.0f}s)")
    for nprobe in (8, 16, 32, 64, 128):
        ivf.nprobe = nprobe
        tt = timeit(functools.partial(ivf.search, xq, k), 3)
        _, I = ivf.search(xq, k)  # noqa: E741
        print(f"{f'IVF{nlist},Flat':<34} {f'nprobe={nprobe}':>12} {recall_at(I, gt, k):>10.3f} "
              f"{tt * 1e3 / 100:>9.3f} {exact_ms[100] / (tt * 1e3 / 100):>8.1f}x")
    del ivf

    if not args.no_pq:
        spec = f"IVF{nlist},{args.pq},RFlat"
        t = time.perf_counter()
        owner = faiss.index_factory(args.dim, spec, faiss.METRIC_INNER_PRODUCT)
        pq = faiss.downcast_index(owner)  # a non-owning view: keep ``owner`` alive while it is used
        faiss.extract_index_ivf(pq).cp.niter = 10
        pq.train(train)
        for s in range(0, n, 100_000):
            pq.add(xb[s:s + 100_000])
        print(f"  ({spec} built in {time.perf_counter() - t:.0f}s)")
        for nprobe, kf in ((16, 4), (32, 4), (32, 8), (64, 8)):
            faiss.extract_index_ivf(pq).nprobe = nprobe
            pq.k_factor = kf
            tt = timeit(functools.partial(pq.search, xq, k), 3)
            _, I = pq.search(xq, k)  # noqa: E741
            print(f"{spec:<34} {f'np={nprobe},kf={kf}':>12} {recall_at(I, gt, k):>10.3f} "
                  f"{tt * 1e3 / 100:>9.3f} {exact_ms[100] / (tt * 1e3 / 100):>8.1f}x")
        del pq, owner

    if not args.no_hnsw:
        t = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(args.dim, 32, faiss.METRIC_INNER_PRODUCT)
        for s in range(0, n, 100_000):
            hnsw.add(xb[s:s + 100_000])
        print(f"  (HNSW32 built in {time.perf_counter() - t:.0f}s)")
        for ef in (32, 64, 128, 256):
            hnsw.hnsw.efSearch = ef
            tt = timeit(functools.partial(hnsw.search, xq, k), 3)
            _, I = hnsw.search(xq, k)  # noqa: E741
            print(f"{'HNSW32':<34} {f'efSearch={ef}':>12} {recall_at(I, gt, k):>10.3f} "
                  f"{tt * 1e3 / 100:>9.3f} {exact_ms[100] / (tt * 1e3 / 100):>8.1f}x")
        del hnsw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000")
    ap.add_argument("--dim", type=int, default=1792)
    ap.add_argument("--components", type=int, default=1000)
    ap.add_argument("--nlist", type=int, default=0, help="IVF lists (default: lookalike's auto choice)")
    ap.add_argument("--no-hnsw", action="store_true")
    ap.add_argument("--no-pq", action="store_true")
    ap.add_argument("--pq", default="PQ128x4fs", help="PQ part of the IVF-PQ factory (default PQ128x4fs)")
    ap.add_argument("--exact-only", action="store_true", help="only the exact rows (e.g. at 1M on a small machine)")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, d={args.dim}, "
          f"{args.components}-component mixture")
    for n in [int(s) for s in args.sizes.split(",")]:
        bench_size(n, args)
    print("\ntimes: best of 3-7 interleaved runs; speed-up = lookalike exact ms/query at 100 queries / approximate "
          "ms/query (same batch of 100)")


if __name__ == "__main__":
    main()
