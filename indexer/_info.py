"""index_info: what an index folder holds (counts, metrics, FAISS types, size on disk, failed files)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from sqlalchemy import func, select

from lookalike.indexer._catalog import STATUS_FAILED, Catalog, ImageRow, VectorRow
from lookalike.indexer._dtypes import build_dtypes, format_dtypes
from lookalike.indexer._index import load_vectors
from lookalike.indexer._vectors import vectors_file

_logger = logging.getLogger(__name__)


def index_info(index_dir: str | os.PathLike[str], *, db_url: str | None = None, max_failed: int = 1000) -> dict:
    """Describe an index folder.

    Args:
        index_dir: the index folder.
        db_url: catalog URL when it is not the SQLite file in the folder.
        max_failed: list at most this many failed files.

    Returns:
        A JSON-ready dict: ``images`` (total / ok / pending / failed), ``roots``, ``metrics`` (one entry per
        vector file: metric, fingerprint, dim, faiss type, vectors, bytes, ``dtypes``: {precision: vectors embedded
        in it}), ``bytes_on_disk``, ``failed``
        (path + reason).

    Raises:
        FileNotFoundError: no index there.
    """
    d = Path(index_dir)
    if db_url is None and not d.is_dir():
        raise FileNotFoundError(f"index folder not found: {d}")
    with Catalog(d, db_url=db_url, create=False) as cat, cat.session() as s:
        counts = dict(s.execute(select(ImageRow.status, func.count()).group_by(ImageRow.status)).all())
        roots = dict(s.execute(select(ImageRow.root, func.count()).group_by(ImageRow.root)).all())
        failed = [{"path": os.fsdecode(raw), "reason": err} for raw, err in s.execute(
            select(ImageRow.path_raw, ImageRow.error).where(ImageRow.status == STATUS_FAILED)
            .order_by(ImageRow.id).limit(max_failed))]
        per_fp = dict(s.execute(select(VectorRow.fingerprint, func.count()).group_by(VectorRow.fingerprint))
                      .all())
        metrics = []
        for b in cat.builds():
            f = vectors_file(d, b.fingerprint)
            vi = load_vectors(d, b)
            metrics.append({
                "metric": b.metric, "fingerprint": b.fingerprint, "dim": b.dim, "faiss": b.current_factory,
                "faiss_requested": b.factory, "faiss_class": type(vi._inner).__name__,
                "search_params": b.search_params, "vectors": per_fp.get(b.fingerprint, 0),
                "vectors_in_file": vi.ntotal, "file": f.name, "bytes": f.stat().st_size if f.is_file() else 0,
                "created": b.created.isoformat(timespec="seconds"), "updated": b.updated.isoformat(timespec="seconds"),
                "dedup_threshold": b.dedup_threshold,
                "dtypes": build_dtypes(cat, b.fingerprint),
            })
    size = sum(p.stat().st_size for p in d.iterdir() if p.is_file())
    return {
        "index_dir": str(d), "catalog": cat.db_url,
        "images": {"total": sum(counts.values()), "ok": counts.get("ok", 0), "pending": counts.get("pending", 0),
                   "failed": counts.get(STATUS_FAILED, 0)},
        "roots": roots, "metrics": metrics, "bytes_on_disk": size, "failed": failed,
    }


def format_info(info: dict) -> str:
    """index_info's dict as a few lines of text."""
    im = info["images"]
    lines = [f"index {info['index_dir']}  ({info['bytes_on_disk'] / 1e6:.1f} MB on disk)",
             f"images {im['total']}  ok {im['ok']}  pending {im['pending']}  failed {im['failed']}"]
    for root, n in info["roots"].items():
        lines.append(f"  root {root}: {n} files")
    for m in info["metrics"]:
        lines.append(f"metric {m['metric']} ({m['fingerprint']}, {m['dim']}-d): {m['vectors']} vectors, faiss "
                     f"{m['faiss']}{' ' + m['search_params'] if m['search_params'] else ''}, "
                     f"dtype {format_dtypes(m.get('dtypes', {}))}, {m['bytes'] / 1e6:.1f} MB")
    for f in info["failed"]:
        lines.append(f"  failed: {f['path']}: {f['reason']}")
    return "\n".join(lines)
