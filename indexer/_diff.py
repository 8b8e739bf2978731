"""The scan source's catalog work: bring the catalog rows under the indexed roots in line with a folder scan, and
list the images that still need a vector of a build.

The diff sorts the scanned files into new / changed / moved (same content hash at a new path: relinked, not
re-embedded) / removed / unchanged, in one transaction; the vectors of removed and changed images become tombstones
in that same commit.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Protocol

from sqlalchemy import delete, exists, insert, select, update

from lookalike.common.io import sha256_file
from lookalike.data.image_folder import ImageFile, display_path
from lookalike.indexer._catalog import STATUS_FAILED, STATUS_PENDING, Catalog, ImageRow, VectorRow, utcnow
from lookalike.indexer._shard_writer import tombstone


class DiffCounts(Protocol):
    """What the diff counts into (``IndexSummary``)."""

    new: int
    changed: int
    moved: int
    removed: int
    unchanged: int
    failed: int
    failures: list[tuple[str, str]]


def _bulk_update(s, updates: list[dict]) -> None:  # type: ignore[no-untyped-def]
    """ORM bulk UPDATE by primary key, one executemany per set of columns."""
    by_keys: dict[tuple[str, ...], list[dict]] = defaultdict(list)
    for u in updates:
        by_keys[tuple(sorted(u))].append(u)
    for batch in by_keys.values():
        s.execute(update(ImageRow), batch)


def diff_scan(catalog: Catalog, roots: list[str], files: list[ImageFile], summary: DiffCounts) -> list[int]:
    """Bring the catalog rows under ``roots`` in line with the scan; returns ids whose old vectors must go.

    Works on plain column tuples (not ORM objects), so a million-file catalog costs a few hundred MB at most.
    """
    stale_ids: list[int] = []
    roots_text = [display_path(r) for r in roots]
    cols = (ImageRow.id, ImageRow.root, ImageRow.relpath, ImageRow.sha256, ImageRow.size, ImageRow.mtime_ns,
            ImageRow.status)
    with catalog.session() as s, s.begin():
        rows = s.execute(select(*cols).where(ImageRow.root.in_(roots_text))).all()
        by_key = {(r.root, r.relpath): r for r in rows}
        seen: set[int] = set()
        new_files: list[ImageFile] = []
        updates: list[dict] = []
        for f in files:
            row = by_key.get((display_path(f.root), display_path(f.relpath)))
            if row is None:
                new_files.append(f)
                continue
            seen.add(row.id)
            if row.size == f.size and row.mtime_ns == f.mtime_ns and row.status != STATUS_FAILED:
                summary.unchanged += 1
                continue
            try:
                sha = sha256_file(f.path)
            except OSError as e:
                updates.append({"id": row.id, "status": STATUS_FAILED, "error": _os_reason(e)})
                summary.unchanged += 1
                continue
            if sha == row.sha256:
                u = {"id": row.id, "size": f.size, "mtime_ns": f.mtime_ns}
                if row.status == STATUS_FAILED:  # retry: permissions may have been fixed
                    u.update(status=STATUS_PENDING, error=None)
                updates.append(u)
                summary.unchanged += 1
                continue
            summary.changed += 1
            updates.append({"id": row.id, "sha256": sha, "size": f.size, "mtime_ns": f.mtime_ns,
                            "status": STATUS_PENDING, "error": None, "width": None, "height": None, "format": None})
            stale_ids.append(row.id)
        gone = {r.id: r for r in rows if r.id not in seen}
        gone_by_sha: dict[str, list] = defaultdict(list)
        for r in gone.values():
            if r.sha256:
                gone_by_sha[r.sha256].append(r)
        inserts: list[dict] = []
        for f in new_files:
            try:
                sha: str | None = sha256_file(f.path)
                err = None
            except OSError as e:
                sha, err = None, _os_reason(e)
            cands = gone_by_sha.get(sha or "")
            if cands:
                row = cands.pop()
                del gone[row.id]
                updates.append({"id": row.id, "root": display_path(f.root), "relpath": display_path(f.relpath),
                                "path_raw": os.fsencode(f.path), "size": f.size, "mtime_ns": f.mtime_ns})
                summary.moved += 1
                continue
            summary.new += 1
            inserts.append({"root": display_path(f.root), "relpath": display_path(f.relpath),
                            "path_raw": os.fsencode(f.path), "sha256": sha, "size": f.size, "mtime_ns": f.mtime_ns,
                            "status": STATUS_FAILED if err else STATUS_PENDING, "error": err, "added": utcnow()})
            if err:
                summary.failed += 1
                summary.failures.append((display_path(f.path), err))
        changed = [u["id"] for u in updates if "sha256" in u]
        tombstone(s, changed)  # their old vectors become tombstones (every metric); they are embedded again
        if gone:  # first, so that a moved file's new path never collides with a removed row's
            ids = sorted(gone)
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                tombstone(s, chunk)
                s.execute(delete(ImageRow).where(ImageRow.id.in_(chunk)))
            stale_ids.extend(ids)
            summary.removed += len(ids)
        _bulk_update(s, updates)
        for start in range(0, len(inserts), 5000):
            s.execute(insert(ImageRow), inserts[start:start + 5000])
    return stale_ids


def _os_reason(e: OSError) -> str:
    if isinstance(e, PermissionError):
        return "permission denied"
    return f"cannot read: {e.strerror or e}"


def queue_of(catalog: Catalog, roots: list[str], fingerprint: str) -> list[tuple[int, str]]:
    has_vec = exists().where(VectorRow.image_id == ImageRow.id, VectorRow.fingerprint == fingerprint)
    with catalog.session() as s:
        q = (select(ImageRow.id, ImageRow.path_raw)
             .where(ImageRow.root.in_([display_path(r) for r in roots]), ImageRow.status != STATUS_FAILED, ~has_vec)
             .order_by(ImageRow.id))
        return [(int(i), os.fsdecode(raw)) for i, raw in s.execute(q)]
