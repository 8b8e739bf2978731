"""Probe (issue 16, phase 1): the Ray driver's commit path, today and as a prototype, on the same rows.

    python bench/scale_probe_commit.py --n 200000 --dim 768 --batch 32

``today``: ``bench/ray_index.py``'s ``commit_rate`` (Ray result batches -> ``_to_batch`` -> the run's ``_Writer``:
per-row dicts, a checkpoint every 65,536 rows = one shard + catalog commit through SQLAlchemy), timed by part.
``prototype``: the same batches, kept as numpy columns (no per-row dicts); a checkpoint writes the shard (sha256
while writing, fsync) and commits with the DB-API: ``executemany`` of tuples for the image updates (status, width,
height, format) and the vector rows, the shard row, no tombstone look-up for ids that had no vector (the driver
knows which ids it queued as new). Parts are timed the same way; the shard files and rows are checked to agree.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

CHECKPOINT = 65_536


def fill_catalog(folder: Path, n: int, dim: int) -> None:
    from lookalike.indexer._catalog import STATUS_PENDING, BuildRow, Catalog, StoreRow

    cat = Catalog(folder, create=True)
    with cat.session() as s, s.begin():
        s.add(BuildRow(fingerprint="bench-commit", metric="bench", dim=dim, factory="auto", current_factory="Flat",
                       search_params=None, count=0))
        s.add(StoreRow(fingerprint="bench-commit", storage="float32", structure="exact"))
    cat.close()
    con = sqlite3.connect(folder / "catalog.sqlite")
    con.executemany("INSERT INTO images (id, root, relpath, path_raw, size, mtime_ns, status, added) VALUES "
                    "(?,?,?,?,?,?,?,?)", [(i, "/bench", f"{i}.jpg", f"/bench/{i}.jpg".encode(), 1, 1, STATUS_PENDING,
                                           "2025-01-01 00:00:00") for i in range(1, n + 1)])
    con.commit()
    con.close()


def write_shard(path: Path, arr: np.ndarray) -> tuple[str, int]:
    h = hashlib.sha256()
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        class W:
            def write(self, b: bytes) -> int:
                h.update(b)
                return f.write(b)

        np.lib.format.write_array(W(), np.ascontiguousarray(arr), allow_pickle=False)  # type: ignore[arg-type]
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return h.hexdigest(), path.stat().st_size


def prototype(n: int, dim: int, batch: int, xb: np.ndarray) -> tuple[float, dict[str, float]]:
    parts = dict.fromkeys(("convert", "shard write + sha256", "catalog", "cpu"), 0.0)
    with tempfile.TemporaryDirectory(prefix="lookalike-commit-proto-") as tmp:
        folder = Path(tmp)
        fill_catalog(folder, n, dim)
        shard_dir = folder / "vectors" / "bench-commit"
        shard_dir.mkdir(parents=True)
        con = sqlite3.connect(folder / "catalog.sqlite", isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        buf_ids: list[np.ndarray] = []
        buf_x: list[np.ndarray] = []
        buf_meta: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        seq = [0]

        def checkpoint() -> None:
            t = time.perf_counter()
            ids = np.concatenate(buf_ids)
            x = np.concatenate(buf_x)
            seq[0] += 1
            name = f"shard-{seq[0]:08d}"
            sha_i, b_i = write_shard(shard_dir / f"{name}.ids.npy", ids)
            sha_x, b_x = write_shard(shard_dir / f"{name}.npy", x)
            t2 = time.perf_counter()
            parts["shard write + sha256"] += t2 - t
            w = np.concatenate([m[0] for m in buf_meta]).tolist()
            h = np.concatenate([m[1] for m in buf_meta]).tolist()
            fmt = np.concatenate([m[2] for m in buf_meta]).tolist()
            idl = ids.tolist()
            con.execute("BEGIN")
            con.executemany("UPDATE images SET status='ok', error=NULL, width=?, height=?, format=? WHERE id=?",
                            zip(w, h, fmt, idl, strict=True))
            cur = con.execute("INSERT INTO shards (fingerprint, seq, file, ids_file, rows, dead, dim, dtype, sha256, "
                              "ids_sha256, bytes, created) VALUES (?,?,?,?,?,0,?,?,?,?,?,?)",
                              ("bench-commit", seq[0], f"{name}.npy", f"{name}.ids.npy", len(idl), dim, "float32",
                               sha_x, sha_i, b_i + b_x, "2025-01-01 00:00:00"))
            sid = cur.lastrowid
            con.executemany("INSERT INTO vectors (image_id, fingerprint, faiss_id, shard_id) VALUES (?,?,?,?)",
                            ((i, "bench-commit", i, sid) for i in idl))
            con.execute("UPDATE builds SET count = count + ? WHERE fingerprint = ?", (len(idl), "bench-commit"))
            con.execute("COMMIT")
            parts["catalog"] += time.perf_counter() - t2
            buf_ids.clear()
            buf_x.clear()
            buf_meta.clear()

        t0, c0 = time.perf_counter(), time.process_time()
        pending = 0
        for a in range(1, n + 1, batch):
            ids = np.arange(a, min(n + 1, a + batch), dtype=np.int64)
            k = len(ids)
            out = {"id": ids, "ok": np.ones(k, bool), "width": np.full(k, 640), "height": np.full(k, 480),
                   "format": np.array(["JPEG"] * k, dtype=object), "error": np.array([""] * k, dtype=object),
                   "vector": xb[:k]}
            t = time.perf_counter()
            ok = np.asarray(out["ok"], bool)
            buf_ids.append(np.asarray(out["id"], np.int64)[ok])
            buf_x.append(np.asarray(out["vector"], np.float32)[ok])
            buf_meta.append((np.asarray(out["width"])[ok], np.asarray(out["height"])[ok],
                             np.asarray(out["format"])[ok]))
            pending += int(ok.sum())
            parts["convert"] += time.perf_counter() - t
            if pending >= CHECKPOINT:
                checkpoint()
                pending = 0
        if buf_ids:
            checkpoint()
        total = time.perf_counter() - t0
        parts["cpu"] = time.process_time() - c0
        got = con.execute("SELECT count(*) FROM vectors").fetchone()[0]
        assert got == n, (got, n)
        con.close()
    parts["total"] = total
    return n / total, parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--batch", type=int, default=32, help="rows per Ray result batch")
    ap.add_argument("--skip-today", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((args.batch, args.dim)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    print(f"{args.n:,} x {args.dim}-d results in batches of {args.batch}, a checkpoint every {CHECKPOINT:,} rows")
    if not args.skip_today:
        from ray_index import commit_rate

        rate, parts = commit_rate(args.n, args.dim, args.batch)
        print(f"today      {rate:>10,.0f} vectors/s  total {parts['total']:.1f}s: rows (_to_batch) "
              f"{parts['to_rows']:.1f}s, writes (shard + catalog) {parts['write']:.1f}s, rest (push) "
              f"{parts['total'] - parts['to_rows'] - parts['write']:.1f}s")
    rate, parts = prototype(args.n, args.dim, args.batch, xb)
    print(f"prototype  {rate:>10,.0f} vectors/s  total {parts['total']:.1f}s: convert {parts['convert']:.1f}s, shard "
          f"write + sha256 {parts['shard write + sha256']:.1f}s, catalog {parts['catalog']:.1f}s; "
          f"CPU {parts['cpu']:.1f}s = {args.n / parts['cpu']:,.0f} vectors per CPU second")
    print("shared 2-core machine: upper bounds on time")


if __name__ == "__main__":
    main()
