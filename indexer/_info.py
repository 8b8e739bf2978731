"""index_info: what an index folder holds (counts, metrics, FAISS types, size on disk, failed files, damage).

A reader: it writes nothing, takes no lock, and describes a damaged folder as far as it can be read.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import DatabaseError

from lookalike.common.errors import IndexDamaged
from lookalike.indexer._catalog import CATALOG_FILE, STATUS_FAILED, Catalog, ImageRow, ShardRow, StoreRow, VectorRow
from lookalike.indexer._dtypes import build_dtypes, format_dtypes
from lookalike.indexer._index import load_vectors
from lookalike.indexer._store import data_file

_logger = logging.getLogger(__name__)


def index_info(index_dir: str | os.PathLike[str], *, db_url: str | None = None, max_failed: int = 1000) -> dict:
    """Describe an index folder (read only): as much as can be read, and what is damaged.

    Args:
        index_dir: the index folder.
        db_url: catalog URL when it is not the SQLite file in the folder.
        max_failed: list at most this many failed files.

    Returns:
        A JSON-ready dict: ``images`` (total / ok / pending / failed), ``roots``, ``metrics`` (one entry per build:
        metric, fingerprint, dim, the search structure in use (``faiss``; "Flat" = exact scan of the shards) and
        why it was chosen (``structure_reason``), ``storage`` dtype, ``max_memory``, vectors, shards, tombstones,
        bytes, ``dtypes``: {precision: vectors embedded in it}), ``bytes_on_disk``, ``failed`` (path + reason), and
        ``damage``: one entry per damaged file found ({"path", "what", "message"}; the message names the repair
        command). A damaged catalog leaves only the folder's size and the damage; a damaged vector file leaves its
        build's entry with ``vectors_in_file`` None.

    Raises:
        FileNotFoundError: no index there.
        IndexNeedsUpgrade: a folder written by an older lookalike (upgraded by any writer command).
    """
    d = Path(index_dir)
    if db_url is None and not d.is_dir():
        raise FileNotFoundError(f"index folder not found: {d}")
    info: dict = {"index_dir": str(d), "catalog": db_url or f"sqlite:///{d / CATALOG_FILE}", "images": None,
                  "roots": {}, "metrics": [], "bytes_on_disk": _folder_bytes(d), "failed": [], "damage": []}
    try:
        cat = Catalog(d, db_url=db_url)
    except IndexDamaged as e:
        info["damage"].append(_damage(e))
        return info
    with cat:
        damaged = cat.damaged()  # reads every page: damage the queries below do not touch is named too
        if damaged is not None:
            info["damage"].append(_damage(damaged))
        try:
            _describe(cat, info, max_failed)
        except DatabaseError as e:  # a catalog damaged past its first pages, found mid-query
            if cat.db_file is None:
                raise
            if damaged is None:
                reason = str(getattr(e, "orig", e)).strip().splitlines()[0]
                info["damage"].append(_damage(IndexDamaged(cat.db_file, f"the SQLite catalog cannot be read "
                                                                        f"({reason})", d)))
    return info


def _damage(e: IndexDamaged) -> dict:
    return {"path": e.path, "what": e.what, "message": str(e)}


def _folder_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file()) if d.is_dir() else 0


def _describe(cat: Catalog, info: dict, max_failed: int) -> None:
    d = cat.index_dir
    with cat.session() as s:
        counts = dict(s.execute(select(ImageRow.status, func.count()).group_by(ImageRow.status)).all())
        info["roots"] = dict(s.execute(select(ImageRow.root, func.count()).group_by(ImageRow.root)).all())
        info["failed"] = [{"path": os.fsdecode(raw), "reason": err} for raw, err in s.execute(
            select(ImageRow.path_raw, ImageRow.error).where(ImageRow.status == STATUS_FAILED)
            .order_by(ImageRow.id).limit(max_failed))]
        per_fp = dict(s.execute(select(VectorRow.fingerprint, func.count()).group_by(VectorRow.fingerprint)).all())
        stores = {r.fingerprint: r for r in s.scalars(select(StoreRow))}
        shard_stats = {fp: (n, rows, dead, nbytes) for fp, n, rows, dead, nbytes in s.execute(
            select(ShardRow.fingerprint, func.count(), func.sum(ShardRow.rows), func.sum(ShardRow.dead),
                   func.sum(ShardRow.bytes)).group_by(ShardRow.fingerprint))}
    info["images"] = {"total": sum(counts.values()), "ok": counts.get("ok", 0), "pending": counts.get("pending", 0),
                      "failed": counts.get(STATUS_FAILED, 0)}
    for b in cat.builds():
        try:
            in_file: int | None = load_vectors(cat, b).ntotal
        except IndexDamaged as e:
            info["damage"].append(_damage(e))
            in_file = None
        st = stores.get(b.fingerprint)
        n_sh, rows, dead, nbytes = shard_stats.get(b.fingerprint, (0, 0, 0, 0))
        derived = (st.derived_bytes or 0) if st else 0
        if st is not None and st.derived_file:
            df = data_file(d / st.derived_file)
            derived += df.stat().st_size if df.is_file() else 0
        info["metrics"].append({
            "metric": b.metric, "fingerprint": b.fingerprint, "dim": b.dim, "faiss": b.current_factory,
            "faiss_requested": b.factory, "structure_reason": st.reason if st else None,
            "storage": st.storage if st else "float32", "max_memory": st.max_memory if st else None,
            "search_params": b.search_params, "vectors": per_fp.get(b.fingerprint, 0),
            "vectors_in_file": in_file, "shards": int(n_sh or 0), "rows": int(rows or 0),
            "tombstones": int(dead or 0), "derived_file": st.derived_file if st else None,
            "derived_covers": st.derived_rows if st else None,
            "bytes": int(nbytes or 0) + int(derived), "shard_bytes": int(nbytes or 0),
            "derived_bytes": int(derived),
            "created": b.created.isoformat(timespec="seconds"), "updated": b.updated.isoformat(timespec="seconds"),
            "dedup_threshold": b.dedup_threshold,
            "dtypes": build_dtypes(cat, b.fingerprint),
        })


def format_info(info: dict) -> str:
    """index_info's dict as a few lines of text."""
    im = info["images"]
    lines = [f"index {info['index_dir']}  ({info['bytes_on_disk'] / 1e6:.1f} MB on disk)"]
    if im is not None:
        lines.append(f"images {im['total']}  ok {im['ok']}  pending {im['pending']}  failed {im['failed']}")
    for root, n in info["roots"].items():
        lines.append(f"  root {root}: {n} files")
    for m in info["metrics"]:
        structure = "exact (Flat over memory-mapped shards)" if m["faiss"] == "Flat" else f"faiss {m['faiss']}"
        budget = f", budget {m['max_memory'] / 2**30:.2f} GiB" if m.get("max_memory") else ""
        lines.append(f"metric {m['metric']} ({m['fingerprint']}, {m['dim']}-d): {m['vectors']} vectors in "
                     f"{m['shards']} shards ({m['storage']}, {m['tombstones']} tombstones), {structure}"
                     f"{' ' + m['search_params'] if m['search_params'] else ''}{budget}, "
                     f"dtype {format_dtypes(m.get('dtypes', {}))}, "
                     f"{m['bytes'] / 1e6:.1f} MB")
        if m.get("structure_reason"):
            lines.append(f"  structure: {m['structure_reason']}")
    for f in info["failed"]:
        lines.append(f"  failed: {f['path']}: {f['reason']}")
    for dmg in info.get("damage", []):
        lines.append(f"damaged: {dmg['path']}: {dmg['what']}")
    if info.get("damage"):
        lines.append(f"repair with: lookalike check --index {info['index_dir']} --repair")
    return "\n".join(lines)
