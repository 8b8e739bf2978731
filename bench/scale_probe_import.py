"""Probe (issue 16, phase 1): what an import's catalog rows and shard files cost, and what the candidate fixes give.

    python bench/scale_probe_import.py --rows 1000000              # ~ a few minutes
    python bench/scale_probe_import.py --rows 1000000 --shuffled   # paths in random order (real collections)

Each variant writes ``--rows`` image rows (+ their vector rows) in chunks of 65,536 into a fresh catalog created by
today's schema (``lookalike.indexer._catalog.Catalog``), one transaction per chunk, and prints rows/s over the whole
run and over its last chunk (the rate the run was slowing down to: the B-trees grow), per CPU second of this
process (SQLite works in it; a busy machine stretches wall time). Variants:

* ``today``: SQLAlchemy Core executemany of dicts (what ``_land`` does), then the ids read back by ``id > max``;
* ``sqlite3 tuples``: the DB-API ``executemany`` with tuples, ids read back the same way;
* ``+ bulk ids``: ids allocated in bulk (max id + range) and inserted explicitly, nothing read back;
* ``+ no UNIQUE during load``: the same into a copy of the table without the inline UNIQUE(root, relpath), the
  index created after the load (what a fresh import could do);
* ``+ cache 256 MB``: the same with ``PRAGMA cache_size`` raised (SQLite's default is 2 MB);
* ``+ chunk sorted by path``: the same, each chunk's rows inserted in path order (B-tree locality);
* vector rows alone (image id, fingerprint, faiss id, shard id) with today's two indexes.

Then the per-chunk costs outside SQL: the row checks (``check_rows``), the path split loop, the blake2b key hashes
of ``_Seen`` (and its sorted-array union as the run grows), sha256 and write + fsync of a 65,536 x 768 shard.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np

CHUNK = 65_536
FP = "synthetic-import"


def names(n: int, shuffled: bool) -> list[str]:
    if not shuffled:
        return [f"{i:09d}.jpg" for i in range(n)]
    # real collections: paths in no particular order (hash-named files, URLs)
    return [hashlib.blake2b(str(i).encode(), digest_size=12).hexdigest() + ".jpg" for i in range(n)]


def fresh(folder: Path) -> Path:
    from lookalike.indexer._catalog import Catalog

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    Catalog(folder, create=True).close()
    return folder / "catalog.sqlite"


def connect(db: Path, cache_mb: int = 0) -> sqlite3.Connection:
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    if cache_mb:
        con.execute(f"PRAGMA cache_size=-{cache_mb * 1024}")
    return con


def run_today(db: Path, rels: list[str], root: str) -> list[float]:
    from sqlalchemy import create_engine, func, select

    from lookalike.indexer._catalog import ImageRow, utcnow

    eng = create_engine(f"sqlite:///{db}")
    table = ImageRow.__table__
    rates = []
    with eng.connect() as conn:
        for s in range(0, len(rels), CHUNK):
            t = time.process_time()
            with conn.begin():
                max_before = int(conn.scalar(select(func.max(ImageRow.id))) or 0)
                now = utcnow()
                rows = [{"root": root, "relpath": r, "path_raw": os.fsencode(f"{root}/{r}"), "sha256": None,
                         "added": now, "status": "missing", "error": "image file not found at import", "size": 0,
                         "mtime_ns": 0} for r in rels[s:s + CHUNK]]
                for a in range(0, len(rows), 5000):
                    conn.execute(table.insert(), rows[a:a + 5000])
                got = {(r, rel): int(i) for i, r, rel in conn.execute(
                    select(ImageRow.id, ImageRow.root, ImageRow.relpath).where(ImageRow.id > max_before))}
                assert len(got) == len(rows)
            rates.append(len(rows) / (time.process_time() - t))
    eng.dispose()
    return rates


def run_sqlite(db: Path, rels: list[str], root: str, *, bulk_ids: bool, cache_mb: int = 0,
               table: str = "images", sort_chunk: bool = False) -> list[float]:
    con = connect(db, cache_mb)
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None).isoformat(sep=" ")
    rates = []
    sql_auto = (f"INSERT INTO {table} (root, relpath, path_raw, sha256, size, mtime_ns, status, error, added) "
                "VALUES (?,?,?,?,?,?,?,?,?)")
    sql_ids = (f"INSERT INTO {table} (id, root, relpath, path_raw, sha256, size, mtime_ns, status, error, added) "
               "VALUES (?,?,?,?,?,?,?,?,?,?)")
    for s in range(0, len(rels), CHUNK):
        t = time.process_time()
        chunk = sorted(rels[s:s + CHUNK]) if sort_chunk else rels[s:s + CHUNK]
        con.execute("BEGIN")
        top = con.execute(f"SELECT max(id) FROM {table}").fetchone()[0] or 0
        if bulk_ids:
            con.executemany(sql_ids, [(top + 1 + j, root, r, os.fsencode(f"{root}/{r}"), None, 0, 0, "missing",
                                       "image file not found at import", now) for j, r in enumerate(chunk)])
        else:
            con.executemany(sql_auto, [(root, r, os.fsencode(f"{root}/{r}"), None, 0, 0, "missing",
                                        "image file not found at import", now) for r in chunk])
            got = dict(con.execute(f"SELECT relpath, id FROM {table} WHERE id > ?", (top,)).fetchall())
            assert len(got) == len(chunk)
        con.execute("COMMIT")
        rates.append(len(chunk) / (time.process_time() - t))
    con.close()
    return rates


def run_deferred_unique(db: Path, rels: list[str], root: str, cache_mb: int) -> tuple[list[float], float]:
    con = connect(db, cache_mb)
    ddl = con.execute("SELECT sql FROM sqlite_master WHERE name='images'").fetchone()[0]
    ddl = ddl.replace("CREATE TABLE images", "CREATE TABLE images2")
    ddl = ddl.replace(", \n\tCONSTRAINT uq_images_root_relpath UNIQUE (root, relpath)", "")
    assert "UNIQUE" not in ddl, ddl
    con.execute(ddl)
    con.close()
    rates = run_sqlite(db, rels, root, bulk_ids=True, cache_mb=cache_mb, table="images2")
    con = connect(db, cache_mb)
    t = time.process_time()
    con.execute("CREATE UNIQUE INDEX uq2 ON images2 (root, relpath)")
    idx_s = time.process_time() - t
    con.close()
    return rates, idx_s


def run_vectors(db: Path, n: int, cache_mb: int = 0) -> list[float]:
    con = connect(db, cache_mb)
    rates = []
    for s in range(0, n, CHUNK):
        t = time.process_time()
        ids = range(s + 1, min(n, s + CHUNK) + 1)
        con.execute("BEGIN")
        con.executemany("INSERT INTO vectors (image_id, fingerprint, faiss_id, shard_id) VALUES (?,?,?,?)",
                        [(i, FP, i, 1 + s // CHUNK) for i in ids])
        con.execute("COMMIT")
        rates.append(len(ids) / (time.process_time() - t))
    con.close()
    return rates


def summary(name: str, rates: list[float], extra: str = "") -> None:
    total = len(rates) * CHUNK / sum(CHUNK / r for r in rates)
    print(f"{name:<44} {total:>12,.0f} {rates[0]:>12,.0f} {rates[-1]:>12,.0f} {extra}", flush=True)


def per_chunk_costs(dim: int, work: Path) -> None:
    from lookalike.indexer._import_rows import _hash, _text, check_rows
    from lookalike.indexer._import_rows import split_path as _split_path

    rng = np.random.default_rng(0)
    x = rng.standard_normal((CHUNK, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x16 = x.astype(np.float16)
    root = str(work)
    rels = names(CHUNK, False)
    out = {}
    t = time.process_time()
    check_rows(x16, dim, normalize=False, where="probe")
    out["check_rows (fp16 in)"] = time.process_time() - t
    t = time.process_time()
    keys = {}
    for j, p in enumerate(rels):
        r, rel, _ = _split_path(p, root, root)
        keys[(_text(r), _text(rel))] = j
    out["path split + keys loop"] = time.process_time() - t
    t = time.process_time()
    h = _hash(list(keys))
    out["_Seen blake2b of the keys"] = time.process_time() - t
    big = np.sort(rng.integers(-2**62, 2**62, 10_000_000))
    t = time.process_time()
    np.union1d(big, h)
    out["_Seen union1d at 10M seen keys"] = time.process_time() - t
    for name, arr in (("fp16", x16), ("fp32", x)):
        b = arr.tobytes()
        t = time.process_time()
        hashlib.sha256(b).hexdigest()
        out[f"sha256 of a {name} shard ({len(b) >> 20} MB)"] = time.process_time() - t
        p = work / f"probe-{name}.npy"
        t = time.process_time()
        with open(p, "wb") as f:
            np.lib.format.write_array(f, arr)
            f.flush()
            os.fsync(f.fileno())
        out[f"write + fsync of a {name} shard"] = time.process_time() - t
        p.unlink()
    t = time.process_time()
    x16.astype(np.float32)
    out["fp16 -> fp32 cast of the chunk"] = time.process_time() - t
    print(f"\nper chunk of {CHUNK:,} x {dim} (CPU seconds; vectors/s if that were all):")
    for k, v in out.items():
        print(f"  {k:<40} {v:8.3f} s  {CHUNK / v:>12,.0f} /s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--shuffled", action="store_true", help="paths in random order")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--skip", default="",
                    help="comma-separated variants to skip (today,tuples,bulk,cache,sorted,deferred,vectors)")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lookalike-probe-import-"))
    work.mkdir(parents=True, exist_ok=True)
    skip = set(args.skip.split(","))
    root = str(work / "images-root-of-a-typical-length")
    rels = names(args.rows, args.shuffled)
    print(f"{args.rows:,} rows in chunks of {CHUNK:,}, paths {'shuffled' if args.shuffled else 'in order'}")
    print(f"{'variant (image rows)':<44} {'rows/s':>12} {'1st chunk':>12} {'last chunk':>12}")
    try:
        if "today" not in skip:
            summary("today: SQLAlchemy Core dicts + read-back", run_today(fresh(work / "a"), rels, root))
        if "tuples" not in skip:
            summary("sqlite3 executemany tuples + read-back", run_sqlite(fresh(work / "b"), rels, root,
                                                                          bulk_ids=False))
        if "bulk" not in skip:
            summary("  + bulk ids (no read-back)", run_sqlite(fresh(work / "c"), rels, root, bulk_ids=True))
        if "cache" not in skip:
            summary("  + bulk ids + cache_size 256 MB", run_sqlite(fresh(work / "d"), rels, root, bulk_ids=True,
                                                                   cache_mb=256))
        if "sorted" not in skip:
            summary("  + bulk ids + cache 256 MB + chunk sorted by path", run_sqlite(
                fresh(work / "h"), rels, root, bulk_ids=True, cache_mb=256, sort_chunk=True))
        if "deferred" not in skip:
            rates, idx_s = run_deferred_unique(fresh(work / "e"), rels, root, 256)
            summary("  + bulk ids + UNIQUE built after the load", rates,
                    f"(+ {idx_s:.1f}s CREATE UNIQUE INDEX = {args.rows / (sum(CHUNK / r for r in rates) + idx_s):,.0f}"
                    f" rows/s overall)")
        if "vectors" not in skip:
            summary("vector rows (sqlite3 tuples, today's indexes)", run_vectors(fresh(work / "f"), args.rows))
            summary("vector rows + cache_size 256 MB", run_vectors(fresh(work / "g"), args.rows, 256))
        per_chunk_costs(args.dim, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("rates per CPU second of this process (SQLite runs in it; fsync waits are not counted); per-chunk costs in "
          "CPU seconds; a shared 2-core machine: rates are lower bounds")


if __name__ == "__main__":
    main()
