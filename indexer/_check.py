"""check_index: find damaged files in an index folder and, if asked, repair what can be repaired.

What can be rebuilt, and how:

* the SQLite catalog: restored from ``catalog.sqlite.bak`` (written at the end of every ``build_index`` run); the
  damaged file is kept beside it; work committed after that backup is found again by the next ``lookalike index``;
* the derived search file (``derived-*.faiss`` / ``.ivfdata``): rebuilt from the shards, no re-embedding;
* a lost or damaged shard: its rows are dropped and its images embedded again (the metric must load here);
* anything else (a catalog without a usable backup, images whose files are gone) is reported as not saved.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sqlalchemy import delete, func, select
from sqlalchemy.exc import DatabaseError

from lookalike.indexer._catalog import (
    BACKUP_FILE,
    CATALOG_FILE,
    Catalog,
    ImageRow,
    IndexDamaged,
    ShardRow,
    StoreRow,
    TombstoneRow,
    VectorRow,
)
from lookalike.indexer._shards import _open_npy, list_shards, sha256_path, writer_lock

_logger = logging.getLogger(__name__)


@dataclass
class CheckReport:
    """What ``check_index`` found and did.

    Attributes:
        problems: one line per damaged file or inconsistency found.
        repaired: one line per repair made.
        not_saved: what could not be repaired (and what to do about it).
        reembedded: images embedded again to replace lost shards.
    """

    index_dir: str
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    not_saved: list[str] = field(default_factory=list)
    reembedded: int = 0

    @property
    def ok(self) -> bool:
        """True when nothing is (still) wrong."""
        return not self.problems or (bool(self.repaired) and not self.not_saved)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        return d

    def format(self) -> str:
        lines = [f"index {self.index_dir}: " + ("ok" if not self.problems else f"{len(self.problems)} problem(s)")]
        lines += [f"  damaged: {p}" for p in self.problems]
        lines += [f"  repaired: {r}" for r in self.repaired]
        lines += [f"  not saved: {n}" for n in self.not_saved]
        if self.problems and not self.repaired and not self.not_saved:
            lines.append(f"  repair with: lookalike check --index {self.index_dir} --repair")
        return "\n".join(lines)


def _restore_catalog(index_dir: Path, report: CheckReport) -> bool:
    db, bak = index_dir / CATALOG_FILE, index_dir / BACKUP_FILE
    if not bak.is_file():
        report.not_saved.append(f"{db}: no backup ({BACKUP_FILE}) to restore; move the folder away and re-index "
                                f"with 'lookalike index FOLDER --index {index_dir}'")
        return False
    try:
        Catalog(index_dir, db_url=f"sqlite:///{bak}").close()
    except (IndexDamaged, ValueError, FileNotFoundError) as e:
        report.not_saved.append(f"{db}: the backup {bak.name} is unreadable too ({e})")
        return False
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    if db.exists():
        os.replace(db, db.with_name(f"{CATALOG_FILE}.damaged-{stamp}"))
    for side in ("-wal", "-shm"):
        p = db.with_name(CATALOG_FILE + side)
        if p.exists():
            os.replace(p, db.with_name(f"{CATALOG_FILE}{side}.damaged-{stamp}"))
    tmp = db.with_name(f".{CATALOG_FILE}.restore")
    shutil.copy2(bak, tmp)
    os.replace(tmp, db)
    when = dt.datetime.fromtimestamp(bak.stat().st_mtime).isoformat(timespec="seconds")
    report.repaired.append(f"{db}: restored from {bak.name} ({when}; the damaged file is kept as "
                           f"{CATALOG_FILE}.damaged-{stamp}); 'lookalike index' picks up any later change")
    return True


def _scan(cat: Catalog, report: CheckReport) -> tuple[dict[str, list[ShardRow]], set[str], dict[str, int]]:
    """Damaged shards per fingerprint, builds whose derived file is damaged, dangling vector rows per build."""
    bad_shards: dict[str, list] = {}
    bad_derived: set[str] = set()
    dangling: dict[str, int] = {}
    if cat.db_file is not None:
        from sqlalchemy import text

        try:
            with cat.engine.connect() as conn:
                res = [r[0] for r in conn.execute(text("PRAGMA quick_check"))]
        except DatabaseError as e:
            res = [str(getattr(e, "orig", e))]
        if res != ["ok"]:
            raise IndexDamaged(cat.db_file, f"the SQLite catalog fails its integrity check ({res[0][:120]})",
                               cat.index_dir)
    for b in cat.builds():
        with cat.session() as s:
            shards = list_shards(s, b.fingerprint)
            st = s.get(StoreRow, b.fingerprint)
            known = select(ShardRow.id).where(ShardRow.fingerprint == b.fingerprint)
            n_dangling = int(s.scalar(select(func.count()).select_from(VectorRow).where(
                VectorRow.fingerprint == b.fingerprint,
                VectorRow.shard_id.is_(None) | VectorRow.shard_id.not_in(known))) or 0)
        if n_dangling:
            dangling[b.fingerprint] = n_dangling
            report.problems.append(f"{n_dangling} {b.metric} vector rows point at no shard")
        for sh in shards:
            problem = None
            for rel, want, dim, dtype in ((sh.file, sh.sha256, sh.dim, sh.dtype), (sh.ids_file, sh.ids_sha256, None,
                                                                                 "int64")):
                try:
                    _open_npy(cat.index_dir, rel, rows=sh.rows, dim=dim, dtype=dtype)
                    if sha256_path(cat.index_dir / rel) != want:
                        raise IndexDamaged(cat.index_dir / rel, "its sha256 differs from the one recorded when it was "
                                                                "written", cat.index_dir)
                except IndexDamaged as e:
                    problem = e
                    break
            if problem is not None:
                bad_shards.setdefault(b.fingerprint, []).append(sh)
                report.problems.append(f"{problem.path}: {str(problem).split(': ', 2)[-1].split('; run')[0]}")
        if st is not None and st.derived_file:
            from lookalike.indexer._store import load_derived

            try:
                load_derived(cat.index_dir, st, verify=True)
            except IndexDamaged as e:
                bad_derived.add(b.fingerprint)
                report.problems.append(f"{e.path}: {str(e).split(': ', 2)[-1].split('; run')[0]}")
    return bad_shards, bad_derived, dangling


def check_index(index_dir: str | os.PathLike[str], *, repair: bool = False, db_url: str | None = None,
                device: str | None = None, progress: bool = False) -> CheckReport:
    """Check every file of an index folder against the catalog (sha256, sizes, headers); optionally repair.

    Args:
        index_dir: the index folder.
        repair: restore / rebuild / re-embed what can be (see the module docstring); takes the writer lock.
        db_url: catalog URL when it is not the SQLite file in the folder.
        device: device for re-embedding the images of lost shards.
        progress: show a progress bar while re-embedding.

    Returns:
        A CheckReport (``ok`` is True when nothing is wrong, or everything found was repaired).

    Raises:
        FileNotFoundError: no index folder there.
    """
    d = Path(index_dir)
    if db_url is None and not d.is_dir():
        raise FileNotFoundError(f"index folder not found: {d}")
    report = CheckReport(index_dir=str(d))
    try:
        cat = Catalog(d, db_url=db_url, create=False)
    except (IndexDamaged, FileNotFoundError) as e:
        if db_url is not None or not (isinstance(e, IndexDamaged) or (d / BACKUP_FILE).is_file()):
            raise
        report.problems.append(f"{d / CATALOG_FILE}: " + (str(e).split(": ", 2)[-1].split("; run")[0]
                                                          if isinstance(e, IndexDamaged) else "missing"))
        if not repair:
            return report
        with writer_lock(d):
            if not _restore_catalog(d, report):
                return report
        cat = Catalog(d, create=False)
    try:
        from lookalike.indexer._migrate import migrate_if_needed

        migrate_if_needed(cat, lock=True)
        bad_shards, bad_derived, dangling = _scan(cat, report)
    except (IndexDamaged, DatabaseError) as e:
        cat.close()
        if db_url is not None:
            raise
        reason = str(e).split(": ", 2)[-1].split("; run")[0] if isinstance(e, IndexDamaged) else str(
            getattr(e, "orig", e)).splitlines()[0]
        report.problems.append(f"{d / CATALOG_FILE}: {reason}")
        if not repair:
            return report
        with writer_lock(d):
            if not _restore_catalog(d, report):
                return report
        cat = Catalog(d, create=False)
        bad_shards, bad_derived, dangling = _scan(cat, report)
    with cat:
        if not repair or not (bad_shards or bad_derived or dangling or report.repaired):
            return report
        reembed: dict[str, str] = {}
        with writer_lock(d):
            for fp, shards in bad_shards.items():
                ids = [sh.id for sh in shards]
                with cat.session() as s, s.begin():
                    lost = int(s.scalar(select(func.count()).select_from(VectorRow).where(
                        VectorRow.shard_id.in_(ids))) or 0)
                    s.execute(delete(VectorRow).where(VectorRow.shard_id.in_(ids)))
                    s.execute(delete(TombstoneRow).where(TombstoneRow.shard_id.in_(ids)))
                    s.execute(delete(ShardRow).where(ShardRow.id.in_(ids)))
                for sh in shards:
                    for rel in (sh.file, sh.ids_file):
                        (d / rel).unlink(missing_ok=True)
                report.repaired.append(f"dropped {len(shards)} damaged shard(s) of {fp}; {lost} images to embed "
                                       f"again")
                reembed[fp] = "shard"
            for fp, n in dangling.items():
                with cat.session() as s, s.begin():
                    known = select(ShardRow.id).where(ShardRow.fingerprint == fp)
                    s.execute(delete(VectorRow).where(VectorRow.fingerprint == fp,
                                                      VectorRow.shard_id.is_(None) | VectorRow.shard_id.not_in(known)))
                report.repaired.append(f"dropped {n} vector rows of {fp} without a shard; their images are embedded "
                                       f"again")
                reembed[fp] = "rows"
            from lookalike.indexer._pipeline import reconcile
            from lookalike.indexer._upkeep import update_structure

            for b in cat.builds():
                reconcile(cat, b.fingerprint)
                if b.fingerprint in bad_derived or b.fingerprint in bad_shards or report.repaired:
                    with cat.session() as s, s.begin():  # forget the damaged derived file before rebuilding it
                        st = s.get(StoreRow, b.fingerprint)
                        if st is not None and b.fingerprint in bad_derived:
                            st.derived_file = None
                    up = update_structure(cat, b, force=True)
                    if b.fingerprint in bad_derived:
                        report.repaired.append(f"rebuilt the {b.metric} search structure ({up.factory}) from the "
                                               f"shards, without re-embedding")
            cat.backup()
        builds = {b.fingerprint: b for b in cat.builds()}
        with cat.session() as s:
            roots = [r for (r,) in s.execute(select(ImageRow.root).distinct())]
    for fp in reembed:
        b = builds[fp]
        _reembed(d, b, roots, report, db_url=db_url, device=device, progress=progress)
    return report


def _reembed(d: Path, build, roots: list[str], report: CheckReport, *, db_url: str | None,  # build: BuildRow
             device: str | None, progress: bool) -> None:
    from lookalike.indexer._pipeline import build_index

    live = [r for r in roots if os.path.isdir(r)]
    gone = [r for r in roots if r not in live]
    for r in gone:
        report.not_saved.append(f"images under {r}: the folder is gone, their vectors cannot be recomputed")
    if not live:
        return
    try:
        from lookalike.metric import load_metric

        m = load_metric(build.metric, device=device)
        if m.fingerprint != build.fingerprint:
            raise ValueError(f"the weights found give fingerprint {m.fingerprint}, the index holds "
                             f"{build.fingerprint}")
    except (FileNotFoundError, ValueError, KeyError, OSError) as e:
        report.not_saved.append(f"{build.metric} vectors of the lost shards: the metric cannot be loaded here "
                                f"({str(e).splitlines()[0]}); run 'lookalike index {' '.join(live)} --index {d} "
                                f"--metric {build.metric}' where it can")
        return
    s = build_index(live, d, metric=m, db_url=db_url, progress=progress)
    report.reembedded += s.embedded
    report.repaired.append(f"embedded {s.embedded} images of {build.metric} again")
