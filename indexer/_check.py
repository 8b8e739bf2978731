"""check_index: find damaged files in an index folder and, if asked, repair what can be repaired.

Checking only reads (no lock, nothing written). Repairing is a writer: it takes the folder's writer lock, restores
the catalog if it must, then works through the writer session (``_writer``), which also upgrades a schema-1 folder.
What can be rebuilt, and how:

* the SQLite catalog: restored from ``catalog.sqlite.bak`` (refreshed by every writer session); the damaged file is
  kept beside it; work committed after that backup is found again by the next ``lookalike index``;
* the derived search file (``derived-*.faiss`` / ``.ivfdata``): rebuilt from the shards, no re-embedding;
* a lost or damaged shard: its rows are dropped and its images embedded again (the metric must load here), in the
  precision the build recorded (``_dtypes.dtype_for_build``: where this machine does not run it natively, fp32, and
  the report says so);
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

from lookalike.common.errors import IndexDamaged
from lookalike.indexer._catalog import (
    BACKUP_FILE,
    CATALOG_FILE,
    SCHEMA_VERSION,
    BuildRow,
    Catalog,
    ImageRow,
    ShardRow,
    StoreRow,
    TombstoneRow,
    VectorRow,
)
from lookalike.indexer._config import BuildConfig, EmbedOptions
from lookalike.indexer._shards import list_shards, open_npy, sha256_path
from lookalike.indexer._store import load_derived
from lookalike.indexer._summary import Progress, ProgressFn
from lookalike.indexer._upkeep import update_structure
from lookalike.indexer._writer import WriterSession, open_writer, reconcile, writer_lock

_logger = logging.getLogger(__name__)


@dataclass
class CheckReport:
    """What ``check_index`` found and did.

    Attributes:
        problems: one line per damaged file or inconsistency found.
        repaired: one line per repair made.
        not_saved: what could not be repaired (and what to do about it).
        warnings: what the user should know about a repair (e.g. a precision other than the build's).
        reembedded: images embedded again to replace lost shards.
    """

    index_dir: str
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    not_saved: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
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
        lines += [f"  warning: {w}" for w in self.warnings]
        if self.problems and not self.repaired and not self.not_saved:
            lines.append(f"  repair with: lookalike check --index {self.index_dir} --repair")
        return "\n".join(lines)


@dataclass
class _Found:
    """What the scan found to repair."""

    bad_shards: dict[str, list] = field(default_factory=dict)  # fingerprint -> damaged Shard records
    bad_derived: set[str] = field(default_factory=set)  # fingerprints whose derived file is damaged
    dangling: dict[str, int] = field(default_factory=dict)  # fingerprint -> vector rows pointing at no shard
    upgrade: bool = False  # a schema-1 folder

    def __bool__(self) -> bool:
        return bool(self.bad_shards or self.bad_derived or self.dangling or self.upgrade)


def _restore_catalog(index_dir: Path, report: CheckReport) -> bool:
    db, bak = index_dir / CATALOG_FILE, index_dir / BACKUP_FILE
    if not bak.is_file():
        report.not_saved.append(f"{db}: no backup ({BACKUP_FILE}) to restore; move the folder away and re-index "
                                f"with 'lookalike index FOLDER --index {index_dir}'")
        return False
    try:
        Catalog(index_dir, db_url=f"sqlite:///{bak}", any_version=True).close()
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


def _scan(cat: Catalog, report: CheckReport) -> _Found:
    """Damaged shards per fingerprint, builds whose derived file is damaged, dangling vector rows per build."""
    found = _Found()
    bad_shards, bad_derived, dangling = found.bad_shards, found.bad_derived, found.dangling
    damaged = cat.damaged()
    if damaged is not None:
        raise damaged
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
                    open_npy(cat.index_dir, rel, rows=sh.rows, dim=dim, dtype=dtype)
                    if sha256_path(cat.index_dir / rel) != want:
                        raise IndexDamaged(cat.index_dir / rel, "its sha256 differs from the one recorded when it was "
                                                                "written", cat.index_dir)
                except IndexDamaged as e:
                    problem = e
                    break
            if problem is not None:
                bad_shards.setdefault(b.fingerprint, []).append(sh)
                report.problems.append(f"{problem.path}: {problem.what}")
        if st is not None and st.derived_file:
            try:
                load_derived(cat.index_dir, st, verify=True)
            except IndexDamaged as e:
                bad_derived.add(b.fingerprint)
                report.problems.append(f"{e.path}: {e.what}")
    return found


def check_index(index_dir: str | os.PathLike[str], *, repair: bool = False, db_url: str | None = None,
                device: str | None = None, dtype: str | None = "auto",
                progress: bool | ProgressFn = False) -> CheckReport:
    """Check every file of an index folder against the catalog (sha256, sizes, headers); optionally repair.

    Args:
        index_dir: the index folder.
        repair: restore / rebuild / re-embed what can be (see the module docstring); takes the writer lock.
        db_url: catalog URL when it is not the SQLite file in the folder.
        device: device for re-embedding the images of lost shards.
        dtype: precision of that re-embedding: "auto" (default: the one the build recorded, where the device runs
            it natively; else fp32, said in ``warnings``), "fp32", "bf16" or "fp16".
        progress: True shows progress bars while re-embedding; a callable gets ``progress(stage, done, total)`` as
            ``build_index`` calls it.

    Returns:
        A CheckReport (``ok`` is True when nothing is wrong, or everything found was repaired).

    Raises:
        FileNotFoundError: no index folder there.
    """
    d = Path(index_dir)
    if db_url is None and not d.is_dir():
        raise FileNotFoundError(f"index folder not found: {d}")
    report = CheckReport(index_dir=str(d))
    if not repair:
        _inspect(d, db_url, report, restore=False)
        return report
    with writer_lock(d):
        found = _inspect(d, db_url, report, restore=True)
        if found is None or not (found or report.repaired):
            return report
        options = EmbedOptions(device=device, dtype=dtype)
        with open_writer(d, BuildConfig(db_url=db_url), lock=False) as session:  # upgrades a schema-1 folder
            if found.upgrade:
                report.repaired.append(f"upgraded the folder to index schema {SCHEMA_VERSION} (vector shards)")
                found = _scan(session.catalog, report)
            for fp in _repair(session, found, report):
                _reembed(session, fp, report, options, progress)
    return report


def _inspect(d: Path, db_url: str | None, report: CheckReport, *, restore: bool) -> _Found | None:
    """Scan the folder (read only); with ``restore`` (the writer lock held) a damaged catalog is restored from its
    backup first. None when the catalog is damaged and cannot be restored."""
    try:
        cat = Catalog(d, db_url=db_url, any_version=True)
    except (IndexDamaged, FileNotFoundError) as e:
        if db_url is not None or not (isinstance(e, IndexDamaged) or (d / BACKUP_FILE).is_file()):
            raise
        report.problems.append(f"{d / CATALOG_FILE}: " + (e.what if isinstance(e, IndexDamaged) else "missing"))
        if not restore or not _restore_catalog(d, report):
            return None
        cat = Catalog(d, any_version=True)
    with cat:
        if cat.version < SCHEMA_VERSION:
            report.problems.append(f"{cat.db_file or cat.db_url}: index schema {cat.version}, written by an older "
                                   f"lookalike: the repair upgrades it once to schema {SCHEMA_VERSION}")
            return _Found(upgrade=True)
        try:
            return _scan(cat, report)
        except (IndexDamaged, DatabaseError) as e:
            if db_url is not None:
                raise
            reason = e.what if isinstance(e, IndexDamaged) else str(getattr(e, "orig", e)).splitlines()[0]
            report.problems.append(f"{d / CATALOG_FILE}: {reason}")
    if not restore or not _restore_catalog(d, report):
        return None
    with Catalog(d, any_version=True) as cat:
        return _scan(cat, report)


def _repair(session: WriterSession, found: _Found, report: CheckReport) -> list[str]:
    """Drop damaged shards and dangling rows, reconcile, rebuild derived files; returns builds to re-embed."""
    cat, d = session.catalog, session.index_dir
    reembed: list[str] = []
    for fp, shards in found.bad_shards.items():
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
        report.repaired.append(f"dropped {len(shards)} damaged shard(s) of {fp}; {lost} images to embed again")
        reembed.append(fp)
    for fp, n in found.dangling.items():
        with cat.session() as s, s.begin():
            known = select(ShardRow.id).where(ShardRow.fingerprint == fp)
            s.execute(delete(VectorRow).where(VectorRow.fingerprint == fp,
                                              VectorRow.shard_id.is_(None) | VectorRow.shard_id.not_in(known)))
        report.repaired.append(f"dropped {n} vector rows of {fp} without a shard; their images are embedded again")
        if fp not in reembed:
            reembed.append(fp)
    for b in cat.builds():
        reconcile(cat, b.fingerprint)
        if b.fingerprint in found.bad_derived or b.fingerprint in found.bad_shards or report.repaired:
            with cat.session() as s, s.begin():  # forget the damaged derived file before rebuilding it
                st = s.get(StoreRow, b.fingerprint)
                if st is not None and b.fingerprint in found.bad_derived:
                    st.derived_file = None
            up = update_structure(cat, b, force=True)
            if b.fingerprint in found.bad_derived:
                report.repaired.append(f"rebuilt the {b.metric} search structure ({up.factory}) from the shards, "
                                       f"without re-embedding")
    return reembed


def _reembed(session: WriterSession, fingerprint: str, report: CheckReport, options: EmbedOptions,
             progress: bool | ProgressFn) -> None:
    """Embed again, through the session, the images of a build that lost their vectors."""
    from lookalike.indexer._pipeline import index_roots, load_index_metric

    with session.catalog.session() as s:
        build = s.get(BuildRow, fingerprint)
        roots = [r for (r,) in s.execute(select(ImageRow.root).distinct())]
    assert build is not None
    live = [r for r in roots if os.path.isdir(r)]
    for r in roots:
        if r not in live:
            report.not_saved.append(f"images under {r}: the folder is gone, their vectors cannot be recomputed")
    if not live:
        return
    bars = Progress(progress, f"re-embed {build.metric}")
    try:
        m, note = load_index_metric(session.index_dir, build.metric, options, db_url=session.config.db_url,
                                    report=bars, fingerprint=fingerprint)
        if m.fingerprint != build.fingerprint:
            raise ValueError(f"the weights found give fingerprint {m.fingerprint}, the index holds "
                             f"{build.fingerprint}")
    except (FileNotFoundError, ValueError, KeyError, OSError) as e:
        report.not_saved.append(f"{build.metric} vectors of the lost shards: the metric cannot be loaded here "
                                f"({str(e).splitlines()[0]}); run 'lookalike index {' '.join(live)} --index "
                                f"{session.index_dir} --metric {build.metric}' where it can")
        return
    if note:
        report.warnings.append(note)
    summary = index_roots(session, live, m, options, report=bars)
    report.warnings.extend(summary.warnings)
    report.reembedded += summary.embedded
    report.repaired.append(f"embedded {summary.embedded} images of {build.metric} again ({summary.dtype})")
