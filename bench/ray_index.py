"""Ray path vs local path on the same images: wall time, images/s, the driver's commit rate, vector parity.

    python bench/ray_index.py                                  # 160 ImageNet samples, efficientnet_lite0
    python bench/ray_index.py --images ~/Pictures --n 2000 --metric dreamsim --batch-size 64

Both runs index the same copied folder into fresh index folders with the same metric and batch size. The Ray run
uses a local cluster started before the timed run (its start-up is printed apart: a cluster is started once and
serves many runs); the actor's model load is inside the timed run, as the local run's DataLoader start-up is.
"commit vec/s" is the driver's commit rate: vectors embedded / seconds the driver spent writing (shards + catalog),
i.e. how many vectors per second one driver can take in; divided by 3,000 img/s it says how many GPUs at that rate
one driver keeps up with.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from lookalike.data.image_folder import list_images
from lookalike.indexer import build_index, open_index

DEFAULT_IMAGES = next((p / "shared" / "data" / "imagenet-samples" for p in Path(__file__).resolve().parents
                       if (p / "shared" / "data" / "imagenet-samples").is_dir()), Path("imagenet-samples"))


def vectors(idx: Path) -> dict[str, np.ndarray]:
    out = {}
    with open_index(idx) as ix:
        for p in ix.list_paths():
            row = ix.find_row(p)
            v = ix.vector_of(row) if row is not None else None
            if v is not None:
                out[Path(p).name] = np.asarray(v, np.float32)
    return out


def commit_rate(n: int, dim: int, batch: int, *, workers: bool = False) -> tuple[float, dict[str, float]]:
    """The driver alone: ``n`` results as Ray hands them over (numpy columns), turned into catalog rows
    (``_to_batch``) and pushed through the writer session, as ``run_on_ray`` does. Returns vectors/s and the
    seconds per part.

    ``workers=False``: results of ``batch`` rows carry their vectors and the driver writes every shard (shards +
    catalog commits). ``workers=True``: the actors' way when they reach the index folder (``_ray_shards``): each
    result is one shard of ``WORKER_SHARD_ROWS`` rows an actor already wrote (written here before the clock starts,
    their time reported apart: on a cluster the actors write in parallel), and the driver checks the files
    (``adopt``) and commits the records only."""
    from lookalike.indexer import BuildConfig
    from lookalike.indexer._catalog import STATUS_PENDING, ImageRow
    from lookalike.indexer._ray import _to_batch
    from lookalike.indexer._ray_shards import WORKER_SHARD_ROWS, WorkerShards, close_target, open_target
    from lookalike.indexer._writer import open_writer

    rng = np.random.default_rng(0)
    step = WORKER_SHARD_ROWS if workers else batch
    xb = rng.standard_normal((step, dim)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    with tempfile.TemporaryDirectory(prefix="lookalike-commit-") as tmp, \
            open_writer(Path(tmp) / "idx", BuildConfig()) as session:
        with session.catalog.session() as s, s.begin():
            for a in range(1, n + 1, 50_000):
                s.connection().execute(ImageRow.__table__.insert(), [
                    {"id": i, "root": "/bench", "relpath": f"{i}.jpg", "path_raw": f"/bench/{i}.jpg".encode(),
                     "size": 1, "mtime_ns": 1, "status": STATUS_PENDING} for i in range(a, min(n + 1, a + 50_000))])
        writer = session.open_build("bench-commit", "bench", dim)
        index_dir = Path(tmp) / "idx"
        outs, t_workers = [], 0.0
        target = open_target(index_dir, writer.shards.folder, writer.shards.dtype, writer.dim) if workers else None
        actor = WorkerShards(target) if workers else None
        for a in range(1, n + 1, step):
            ids = np.arange(a, min(n + 1, a + step), dtype=np.int64)
            k = len(ids)
            out = {"id": ids, "ok": np.ones(k, bool), "width": np.full(k, 640), "height": np.full(k, 480),
                   "format": np.array(["JPEG"] * k, dtype=object), "error": np.array([""] * k, dtype=object)}
            if actor is not None:
                t = time.perf_counter()
                out.update(actor.write(ids, xb[:k]))
                t_workers += time.perf_counter() - t
            else:
                out["vector"] = xb[:k]
            outs.append(out)
        wanted, seen = set(range(1, n + 1)), set()
        t_conv = 0.0
        t0 = time.perf_counter()
        for out in outs:
            t = time.perf_counter()
            b = _to_batch(out, wanted, seen, index_dir if workers else None)
            t_conv += time.perf_counter() - t
            for ws, rows in b.shards:
                writer.push_shard(writer.shards.adopt(ws.file, ws.ids_file, ws.ids, sha256=ws.sha256,
                                                      ids_sha256=ws.ids_sha256, nbytes=ws.nbytes), rows)
            writer.push(b.ids, b.vectors, b.ok, b.failed)
        if writer.pending():
            writer.checkpoint()
        total = time.perf_counter() - t0
        if target is not None:
            close_target(target)
    return n / total, {"total": total, "to_rows": t_conv, "write": writer.stats.seconds,
                       "checkpoints": writer.stats.checkpoints, "workers": t_workers, "batch": step}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=str(DEFAULT_IMAGES), help="a folder of images (default: shared ImageNet "
                    "samples)")
    ap.add_argument("--n", type=int, default=160, help="images to index (default 160)")
    ap.add_argument("--metric", default="efficientnet_lite0")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=1, help="runs of each path (the best is reported)")
    ap.add_argument("--commit-n", type=int, default=100_000, help="vectors of the driver-only commit-rate run "
                    "(0: skip it)")
    ap.add_argument("--commit-dim", type=int, default=1792, help="their dimension (default 1792, DreamSim)")
    ap.add_argument("--commit-only", action="store_true", help="only the driver commit-rate runs")
    args = ap.parse_args()
    if args.commit_n:
        for workers in (False, True):
            rate, parts = commit_rate(args.commit_n, args.commit_dim, args.batch_size, workers=workers)
            who = ("actors write the shards (written beforehand in {:.1f}s), the driver commits records".format(
                parts["workers"]) if workers else "the driver writes every shard")
            print(f"driver commit rate, {who}: {rate:,.0f} vectors/s ({args.commit_n:,} x {args.commit_dim}-d in "
                  f"results of {parts['batch']}: {parts['total']:.1f}s, of which rows {parts['to_rows']:.1f}s, "
                  f"{parts['checkpoints']} checkpoints) = {rate / 3000:.1f} GPUs at 3,000 img/s")
        if args.commit_only:
            return
    import ray

    files = list_images(args.images)[:args.n]
    if not files:
        raise SystemExit(f"no images under {args.images}")
    with tempfile.TemporaryDirectory(prefix="lookalike-raybench-") as tmp:
        src = Path(tmp) / "images"
        src.mkdir()
        for f in files:
            shutil.copy2(f, src / Path(f).name)
        t = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        start_s = time.perf_counter() - t
        rows = []
        try:
            for label, kw in (("local", {}), ("ray", {"ray": "auto"})):
                best = None
                for r in range(args.repeat):
                    idx = Path(tmp) / f"{label}-{r}"
                    t = time.perf_counter()
                    s = build_index(src, idx, metric=args.metric, batch_size=args.batch_size, progress=False, **kw)
                    wall = time.perf_counter() - t
                    if best is None or wall < best[0]:
                        best = (wall, s, idx)
                rows.append((label, *best))
        finally:
            ray.shutdown()
        va, vb = vectors(rows[0][3]), vectors(rows[1][3])
        diff = max(float(np.abs(va[k] - vb[k]).max()) for k in va) if va.keys() == vb.keys() and va else float("nan")
        print(f"{args.n} images, metric {args.metric}, batch {args.batch_size}, {os.cpu_count()} CPUs; Ray cluster "
              f"start-up {start_s:.1f}s (not in the runs)")
        print(f"{'path':>6} {'wall s':>7} {'img/s':>7} {'write s':>8} {'commit vec/s':>13} {'GPUs @3k':>9} "
              f"{'vs local':>9}")
        for label, wall, s, _ in rows:
            commit = s.embedded / s.seconds["write"] if s.seconds["write"] > 0 else float("inf")
            print(f"{label:>6} {wall:>7.1f} {s.embedded / wall:>7.1f} {s.seconds['write']:>8.2f} {commit:>13,.0f} "
                  f"{commit / 3000:>9.1f} {wall / rows[0][1]:>8.2f}x")
        print(f"max |vector difference| ray vs local: {diff:.2e} over {len(va)} images (same catalog paths: "
              f"{va.keys() == vb.keys()}); measured on a shared, busy 2-core machine")


if __name__ == "__main__":
    main()
