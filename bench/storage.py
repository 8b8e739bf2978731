"""Vector storage and search structures of index schema 2: fp32 vs fp16 shards, exact vs memory-mapped IVF.

    python bench/storage.py                          # 120k x 768 clustered vectors, 200 queries
    python bench/storage.py --n 300000 --dim 1792 --queries 100

For each variant an index folder is written through the shard writer, then searched in a fresh ``open_index`` the
way ``lookalike search`` does (shards memory-mapped; the IVF lists memory-mapped from their ``.ivfdata``). Reported:
disk size, recall@10 and distance error against exact fp32 search (the reference, measured in the same run),
and search latency per query (p50 / p95).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import insert

from lookalike.indexer import open_index
from lookalike.indexer._catalog import STATUS_OK, BuildRow, Catalog, ImageRow, StoreRow
from lookalike.indexer._shard_writer import ShardWriter
from lookalike.indexer._upkeep import update_structure

sys.path.insert(0, str(Path(__file__).parent))
from search import gmm  # noqa: E402

FP = "bench-0"


def make(folder: Path, chunks: list[np.ndarray], storage: str, factory: str, nprobe: int) -> float:
    t = time.perf_counter()
    n = sum(len(c) for c in chunks)
    d = chunks[0].shape[1]
    cat = Catalog(folder, create=True)
    with cat.session() as s, s.begin():
        s.add(BuildRow(fingerprint=FP, metric="bench", dim=d, factory=factory, current_factory="Flat", count=0))
        s.add(StoreRow(fingerprint=FP, storage=storage, structure="exact"))
        for a in range(1, n + 1, 50_000):
            s.execute(insert(ImageRow), [{"id": i, "root": "/b", "relpath": f"{i}.jpg", "path_raw": f"/b/{i}".encode(),
                                          "size": 1, "mtime_ns": i, "status": STATUS_OK}
                                         for i in range(a, min(n + 1, a + 50_000))])
    w = ShardWriter(cat, FP, d)
    s0 = 0
    for x in chunks:
        p = w.write(np.arange(s0 + 1, s0 + 1 + len(x)), x)
        with cat.session() as s, s.begin():
            w.record(s, p)
        s0 += len(x)
    update_structure(cat, cat.builds()[0])
    if "IVF" in factory:
        with cat.session() as s, s.begin():
            s.get(BuildRow, FP).search_params = f"nprobe={nprobe}"
    cat.close()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=120_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--nprobe", type=int, default=16)
    args = ap.parse_args()
    chunks = [x for _, x in gmm(args.n, args.dim, 1000, seed=0, chunk=65536)]
    xq = next(iter(gmm(args.queries, args.dim, 1000, seed=0, sample_seed=9)))[1]
    variants = [("float32", "Flat"), ("float16", "Flat"), ("float32", f"IVF{args.nlist},Flat"),
                ("float16", f"IVF{args.nlist},Flat")]
    print(f"{'storage':>8} {'structure':>16} {'build s':>8} {'disk MB':>8} {'recall@10':>9} {'max |dD|':>9} "
          f"{'mean |dD|':>9} {'p50 ms':>7} {'p95 ms':>7}")
    ref_I = ref_D = None
    with tempfile.TemporaryDirectory(prefix="lookalike-storage-") as tmp:
        for storage, factory in variants:
            folder = Path(tmp) / f"{storage}-{factory.replace(',', '_')}"
            build = make(folder, chunks, storage, factory, args.nprobe)
            disk = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
            with open_index(folder) as ix:
                lat = []
                Ds, Is = [], []
                for q in xq:
                    t = time.perf_counter()
                    D, I = ix.vectors.search(q[None], 10)  # noqa: E741
                    lat.append(time.perf_counter() - t)
                    Ds.append(D[0])
                    Is.append(I[0])
            D, I = np.array(Ds), np.array(Is)  # noqa: E741
            if ref_I is None:
                ref_I, ref_D = I, D
            recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I, ref_I, strict=True)])
            same = I == ref_I
            dd = np.abs(D - ref_D)[same] if same.any() else np.array([np.nan])
            p50, p95 = np.percentile(np.array(lat) * 1e3, [50, 95])
            print(f"{storage:>8} {factory:>16} {build:>8.1f} {disk:>8.0f} {recall:>9.3f} {dd.max():>9.1e} "
                  f"{dd.mean():>9.1e} {p50:>7.1f} {p95:>7.1f}", flush=True)
    print("reference: exact fp32 search of the same shards (first row); recall@10 and |dD| (distance differences on "
          "the neighbours both found) against it; latency of one query at a time, index already open")


if __name__ == "__main__":
    main()
