"""Moving duplicates into a quarantine folder and back, with the catalog following the files.

``move_duplicates`` moves (never deletes) the non-keepers of a report, writes a manifest first and marks each moved
image in the catalog (table ``dedup_moved``), so the next ``find_duplicates`` leaves it out without a re-index.
``undo_moves`` puts the files back and removes the marks. Both are short writes under the index's writer lock,
taken before any file moves. A re-index that finds a moved file gone drops its row, and the mark goes with it
(``ON DELETE CASCADE``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import DateTime, ForeignKey, Text, delete, inspect, select
from sqlalchemy.orm import Mapped, mapped_column

from lookalike.common.errors import IndexNotFound, InvalidArgument
from lookalike.common.io import atomic_write_json
from lookalike.indexer._catalog import Base, Catalog, utcnow
from lookalike.indexer._writer import writer_lock

if TYPE_CHECKING:
    from lookalike.indexer._dedup import DedupReport

_logger = logging.getLogger(__name__)


class MovedRow(Base):
    """An image that ``move_duplicates`` moved into quarantine: left out of dedup until ``undo_moves``."""

    __tablename__ = "dedup_moved"
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    src: Mapped[str] = mapped_column(Text)
    dst: Mapped[str] = mapped_column(Text)
    manifest: Mapped[str] = mapped_column(Text)
    moved: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


@dataclass
class MoveSummary:
    """What ``move_duplicates`` did.

    Attributes:
        moved: files moved into quarantine.
        gone: duplicates whose file was already gone (not moved, not in the manifest).
        manifest: the manifest written, or None when there was nothing to move.
        quarantine: the quarantine folder.
    """

    moved: int = 0
    gone: int = 0
    manifest: str | None = None
    quarantine: str = ""
    files: list[dict] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("files")
        return d


def moved_ids(catalog: Catalog) -> set[int]:
    """Catalog ids of the images in quarantine (read only; empty when no move was ever recorded)."""
    if not inspect(catalog.engine).has_table(MovedRow.__tablename__):
        return set()
    with catalog.session() as s:
        return {int(i) for i in s.scalars(select(MovedRow.image_id))}


def _destination(q: Path, root: str, path: str, taken: set[str]) -> Path:
    root_tag = os.path.basename(root.rstrip("/")) or "root"
    prefix = root.rstrip("/") + "/"
    rel = path[len(prefix):] if path.startswith(prefix) else os.path.basename(path)
    dst = q / root_tag / Path(*rel.split("/"))
    base, n = dst, 1
    while os.fspath(dst) in taken or dst.exists():
        dst = base.with_name(f"{base.stem}.{n}{base.suffix}")
        n += 1
    taken.add(os.fspath(dst))
    return dst


def move_duplicates(report: DedupReport, quarantine: str | os.PathLike[str], *,
                    db_url: str | None = None) -> MoveSummary:
    """Move every non-keeper file of ``report`` into ``quarantine`` (keeping its relative path under a folder per
    root); never deletes. The manifest is written before anything moves, so ``undo_moves`` can always put files
    back; the moved images are marked in the index's catalog, so ``find_duplicates`` no longer reports them.

    Args:
        report: a ``find_duplicates`` report of the index.
        quarantine: the folder to move the files to (created).
        db_url: catalog URL when it is not the SQLite file in the report's index folder.

    Returns:
        A MoveSummary; with nothing left to move (every duplicate already gone) no manifest is written.

    Raises:
        IndexLocked: an indexing run holds the writer lock (nothing was moved).
    """
    q = Path(quarantine).absolute()
    summary = MoveSummary(quarantine=os.fspath(q))
    todo = []
    for g in report.groups:
        for d in g.duplicates:
            if os.path.lexists(d.path):
                todo.append((g, d))
            else:
                _logger.warning("not moved (gone): %s", d.path)
                summary.gone += 1
    if not todo:
        _logger.info("nothing to move: %d duplicates, all gone already", summary.gone)
        return summary
    index_dir = Path(report.index_dir)
    with Catalog(index_dir, db_url=db_url, create=False) as cat, writer_lock(index_dir):
        q.mkdir(parents=True, exist_ok=True)
        taken: set[str] = set()
        moves = [{"src": d.path, "dst": os.fspath(_destination(q, d.root, d.path, taken)), "keeper": g.keeper.path,
                  "distance": d.distance, "tier": d.tier, "image_id": d.id} for g, d in todo]
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        manifest = q / f"manifest-{stamp}.json"
        atomic_write_json(manifest, {"created": stamp, "index_dir": os.fspath(index_dir.absolute()),
                                     "threshold": report.threshold, "moves": moves}, indent=1)
        MovedRow.__table__.create(cat.engine, checkfirst=True)  # type: ignore[attr-defined]
        done = []
        try:
            for mv in moves:
                if not os.path.lexists(mv["src"]):  # gone since the check above
                    summary.gone += 1
                    continue
                os.makedirs(os.path.dirname(mv["dst"]), exist_ok=True)
                shutil.move(mv["src"], mv["dst"])
                done.append(mv)
        finally:  # marks for what did move, even when a move failed half-way
            with cat.sessions.begin() as s:
                for mv in done:
                    if mv["image_id"]:
                        s.merge(MovedRow(image_id=mv["image_id"], src=mv["src"], dst=mv["dst"],
                                         manifest=os.fspath(manifest), moved=utcnow()))
    summary.moved, summary.manifest, summary.files = len(done), os.fspath(manifest), done
    _logger.info("moved %d duplicates to %s (manifest %s)", summary.moved, q, manifest)
    return summary


def undo_moves(manifest: str | os.PathLike[str], *, index_dir: str | os.PathLike[str] | None = None,
               db_url: str | None = None) -> int:
    """Put back the files a ``move_duplicates`` manifest moved and unmark them in the catalog; returns how many
    were restored.

    Files whose original path is taken again are left in quarantine (with a warning).

    Args:
        manifest: the manifest file.
        index_dir: the index folder (default: the one the manifest names).
        db_url: catalog URL when it is not the SQLite file in the folder.

    Raises:
        FileNotFoundError: no such manifest.
        ValueError: not a lookalike manifest.
        IndexLocked: an indexing run holds the writer lock.
    """
    p = Path(manifest)
    if not p.is_file():
        raise FileNotFoundError(f"manifest not found: {p}")
    try:
        data = json.loads(p.read_text())
        moves = data["moves"]
        if not isinstance(moves, list) or not all(isinstance(m, dict) and "src" in m and "dst" in m for m in moves):
            raise TypeError("bad 'moves'")
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"{p} is not a lookalike dedup manifest ({e})") from None
    folder = index_dir if index_dir is not None else data.get("index_dir")
    restored: list[dict] = []
    with contextlib.ExitStack() as stack:
        cat = None
        if folder:
            try:
                cat = stack.enter_context(Catalog(folder, db_url=db_url, create=False))
            except IndexNotFound:
                _logger.warning("the index %s of this manifest is gone: files are restored, no catalog to update",
                                folder)
        if cat is not None:
            stack.enter_context(writer_lock(folder))
        for mv in reversed(moves):
            src, dst = mv["src"], mv["dst"]
            if not os.path.lexists(dst):
                continue
            if os.path.lexists(src):
                _logger.warning("not restored (original path taken again): %s", src)
                continue
            os.makedirs(os.path.dirname(src), exist_ok=True)
            shutil.move(dst, src)
            restored.append(mv)
        ids = [int(mv["image_id"]) for mv in restored if mv.get("image_id")]
        if cat is not None and ids and inspect(cat.engine).has_table(MovedRow.__tablename__):
            with cat.sessions.begin() as s:
                s.execute(delete(MovedRow).where(MovedRow.image_id.in_(ids)))
    _logger.info("restored %d of %d files from %s", len(restored), len(moves), p)
    return len(restored)
