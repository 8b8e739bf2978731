"""The catalog: SQLAlchemy 2.0 tables for images, their vectors per metric fingerprint, and index builds."""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from lookalike.common.errors import (
    IndexDamaged,
    IndexMismatch,
    IndexNeedsUpgrade,
    IndexNotFound,
    InvalidArgument,
    MissingDependency,
)

_logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: vectors in append-only shard files (shards, tombstones, stores); 1: one FAISS file per metric
CATALOG_FILE = "catalog.sqlite"
BACKUP_FILE = "catalog.sqlite.bak"  # refreshed when every writer session ends (SQLite catalogs)

STATUS_PENDING = "pending"  # catalogued, not decoded yet
STATUS_OK = "ok"  # decoded at least once
STATUS_FAILED = "failed"  # unreadable; ``error`` says why


def check_dedup_threshold(threshold: float) -> float:
    """``threshold`` as a float when it is a distance (1 - cosine) in [0, 2]; InvalidArgument otherwise."""
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise InvalidArgument(f"dedup threshold {threshold!r} is not a number") from None
    if not 0.0 <= t <= 2.0:
        raise InvalidArgument(f"dedup threshold {threshold} is outside [0, 2] (the distance is 1 - cosine)")
    return t


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class SchemaVersion(Base):
    """One row: the catalog schema version this folder was written with."""

    __tablename__ = "schema_version"
    version: Mapped[int] = mapped_column(Integer, primary_key=True)


#: The unique index of image paths, (root, relpath). Catalogs written before it was named (an inline UNIQUE
#: constraint) keep theirs; in newer SQLite catalogs it is a named index that a fresh bulk import drops and
#: re-creates after its rows (``_bulk``), and that every writer session re-creates when a killed import left it out.
UNIQUE_PATHS = "uq_images_root_relpath"


class ImageRow(Base):
    """One image file under an indexed root."""

    __tablename__ = "images"
    __table_args__ = (
        Index(UNIQUE_PATHS, "root", "relpath", unique=True),
        Index("ix_images_sha256", "sha256"),
        {"sqlite_autoincrement": True},  # ids (which are also FAISS ids) are never reused
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    root: Mapped[str] = mapped_column(Text)  # absolute root folder, printable text
    relpath: Mapped[str] = mapped_column(Text)  # POSIX path under root, printable text (\xNN for odd bytes)
    path_raw: Mapped[bytes] = mapped_column(LargeBinary)  # os.fsencode(absolute path): what open() needs
    sha256: Mapped[str | None] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    format: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=STATUS_PENDING)
    error: Mapped[str | None] = mapped_column(Text)
    added: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    @property
    def path(self) -> str:
        """The absolute path as a ``str`` that ``open`` accepts."""
        return os.fsdecode(self.path_raw)


class VectorRow(Base):
    """Which FAISS id holds the vector of an image under one metric fingerprint."""

    __tablename__ = "vectors"
    __table_args__ = (UniqueConstraint("fingerprint", "faiss_id", name="uq_vectors_fp_faiss_id"),)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(128), primary_key=True)
    faiss_id: Mapped[int] = mapped_column(BigInteger)
    shard_id: Mapped[int | None] = mapped_column(BigInteger, default=None)  # schema 2: the shard holding the vector


class BuildRow(Base):
    """One vector index in the folder: a metric (by weight fingerprint), its FAISS type and size."""

    __tablename__ = "builds"
    fingerprint: Mapped[str] = mapped_column(String(128), primary_key=True)
    metric: Mapped[str] = mapped_column(String(128))
    dim: Mapped[int] = mapped_column(Integer)
    factory: Mapped[str] = mapped_column(String(256))  # requested: "auto", "Flat", "IVF4096,PQ64", "HNSW32"...
    current_factory: Mapped[str] = mapped_column(String(256))  # what the FAISS file holds now
    search_params: Mapped[str | None] = mapped_column(String(256))  # e.g. "nprobe=32"
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    dedup_threshold: Mapped[float | None] = mapped_column(Float)


class ShardRow(Base):
    """One append-only shard file of vectors (schema 2), recorded when its rows commit.

    ``file`` holds a (rows, dim) ``.npy`` array, ``ids_file`` the (rows,) int64 image ids of its rows; both paths
    are relative to the index folder. ``dead`` counts tombstoned rows (removed or re-embedded images).
    """

    __tablename__ = "shards"
    __table_args__ = (UniqueConstraint("fingerprint", "seq", name="uq_shards_fp_seq"), {"sqlite_autoincrement": True})
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    fingerprint: Mapped[str] = mapped_column(String(128), index=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    file: Mapped[str] = mapped_column(Text)
    ids_file: Mapped[str] = mapped_column(Text)
    rows: Mapped[int] = mapped_column(BigInteger)
    dead: Mapped[int] = mapped_column(BigInteger, default=0)
    dim: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(16))  # "float32" or "float16"
    sha256: Mapped[str] = mapped_column(String(64))
    ids_sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class TombstoneRow(Base):
    """A shard row that is no longer live: its image was removed or re-embedded into a newer shard."""

    __tablename__ = "tombstones"
    shard_id: Mapped[int] = mapped_column(ForeignKey("shards.id", ondelete="CASCADE"), primary_key=True)
    faiss_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)


class StoreRow(Base):
    """How one build's vectors are stored and searched (schema 2): storage dtype, memory budget, derived FAISS."""

    __tablename__ = "stores"
    fingerprint: Mapped[str] = mapped_column(String(128), primary_key=True)
    storage: Mapped[str] = mapped_column(String(16), default="float32")
    max_memory: Mapped[int | None] = mapped_column(BigInteger)  # bytes; None: no budget given
    structure: Mapped[str] = mapped_column(String(256), default="exact")  # "exact" or a faiss factory string
    reason: Mapped[str | None] = mapped_column(Text)  # why that structure was chosen
    derived_file: Mapped[str | None] = mapped_column(Text)  # relative path of the derived FAISS file
    derived_sha256: Mapped[str | None] = mapped_column(String(64))
    derived_bytes: Mapped[int | None] = mapped_column(BigInteger)
    derived_data_sha256: Mapped[str | None] = mapped_column(String(64))  # its .ivfdata (on-disk inverted lists)
    derived_upto: Mapped[int | None] = mapped_column(BigInteger)  # the last shard id the derived file covers
    derived_rows: Mapped[int | None] = mapped_column(BigInteger)


class BuildDtypeRow(Base):
    """Which precisions computed the vectors of a build, and how many each (counted at every checkpoint).

    A table of its own (not a column of ``builds``), so catalogs written before it gain it with ``create_all``.
    """

    __tablename__ = "build_dtypes"
    fingerprint: Mapped[str] = mapped_column(String(128), primary_key=True)
    dtype: Mapped[str] = mapped_column(String(16), primary_key=True)  # "fp32", "bf16", "fp16" or "unrecorded"
    embedded: Mapped[int] = mapped_column(BigInteger, default=0)
    first: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


def _sqlite_reader_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    """Per-connection settings that write nothing (a reader's connection)."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_writer_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    """A writer's connection: WAL journal (readers see the last commit while a run writes; stored in the file)."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()
    _sqlite_reader_pragmas(dbapi_conn, _record)


class Catalog:
    """An open catalog: an engine, a session factory and the schema check.

    Args:
        index_dir: the index folder (holds ``catalog.sqlite`` unless ``db_url`` is given).
        db_url: any SQLAlchemy URL (e.g. ``postgresql://...``); default a SQLite file in ``index_dir``.
        create: a writer's catalog (hold the writer lock): create the tables when missing, add the tables and
            columns of later schema versions, switch SQLite to its WAL journal. Readers pass False and change
            nothing: a catalog of an older schema raises ``IndexNeedsUpgrade`` (a writer migrates it, see
            ``_migrate``).
        any_version: a reader that only looks (``check_index``, a writer peeking before it takes the lock): open an
            older schema too (``version`` says which).
    """

    def __init__(self, index_dir: str | os.PathLike[str], *, db_url: str | None = None, create: bool = False,
                 any_version: bool = False):
        self.index_dir = Path(index_dir)
        self.writer = create
        self.any_version = any_version
        if db_url is None:
            db_file = self.index_dir / CATALOG_FILE
            if not create and not db_file.is_file() and (self.index_dir / BACKUP_FILE).is_file():
                raise IndexDamaged(db_file, "the file is missing (a backup copy is there)", self.index_dir)
            if not create and not db_file.is_file():
                raise IndexNotFound(f"no index at {self.index_dir} (missing {CATALOG_FILE})",
                                    hint=f"build one with: lookalike index FOLDER --index {self.index_dir}")
            if create:
                self.index_dir.mkdir(parents=True, exist_ok=True)
            db_url = f"sqlite:///{db_file}"
            self.db_file: Path | None = db_file
        else:
            self.db_file = None
        self.db_url = db_url
        self.version = SCHEMA_VERSION
        try:
            self.engine: Engine = create_engine(db_url, future=True)
        except ImportError as e:  # the URL's database driver is not installed
            missing = getattr(e, "name", None) or str(e)
            hint = "pip install 'psycopg[binary]'" if "psycopg" in missing else f"pip install {missing}"
            raise MissingDependency(f"the catalog {db_url.split('@')[-1]} needs the package {missing}",
                                    hint=hint) from None
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_writer_pragmas if create else _sqlite_reader_pragmas)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False, future=True)
        try:
            self._check_schema(create)
        except DatabaseError as e:
            self.engine.dispose()
            if self.db_file is None:
                raise
            reason = str(getattr(e, "orig", e)).strip().splitlines()[0]
            raise IndexDamaged(self.db_file, f"the SQLite catalog cannot be read ({reason})", self.index_dir) from None
        except BaseException:
            self.engine.dispose()
            raise

    def _check_schema(self, create: bool) -> None:
        has_version = inspect(self.engine).has_table(SchemaVersion.__tablename__)
        if not has_version:
            if not create:
                raise IndexNotFound(f"no lookalike catalog at {self.db_url} (no schema_version table)")
            Base.metadata.create_all(self.engine)
            with self.sessions.begin() as s:
                s.add(SchemaVersion(version=SCHEMA_VERSION))
            _logger.info("created catalog %s (schema %d)", self.db_url, SCHEMA_VERSION)
            return
        with self.sessions() as s:
            version = s.scalar(select(SchemaVersion.version).order_by(SchemaVersion.version.desc()).limit(1))
        if version is None:
            raise IndexDamaged(self.db_file or self.db_url, "its schema_version table is empty: not a lookalike "
                               "catalog")
        if version > SCHEMA_VERSION:
            raise IndexMismatch(
                f"index catalog {self.db_url} has schema version {version}, newer than this lookalike supports "
                f"({SCHEMA_VERSION})", hint="upgrade lookalike: pip install -U lookalike")
        self.version = int(version)
        if not create:
            if version < SCHEMA_VERSION and not self.any_version:
                raise IndexNeedsUpgrade(self.index_dir, f"has index schema {version} (one FAISS file per metric); "
                                        f"this lookalike reads schema {SCHEMA_VERSION} (vector shards)")
            return
        Base.metadata.create_all(self.engine)  # tables added by later versions (shards, tombstones, stores...)
        if version < 2 and "shard_id" not in {c["name"] for c in inspect(self.engine).get_columns("vectors")}:
            with self.engine.begin() as conn:
                conn.execute(text("ALTER TABLE vectors ADD COLUMN shard_id BIGINT"))

    def set_version(self, version: int) -> None:
        """Record that the folder now follows schema ``version`` (after a migration)."""
        with self.sessions.begin() as s:
            s.execute(delete(SchemaVersion))
            s.add(SchemaVersion(version=version))
        self.version = version

    def backup(self) -> Path | None:
        """Copy a SQLite catalog to ``catalog.sqlite.bak`` (SQLite's online backup, then fsync and rename), the
        copy ``check_index(repair=True)`` restores when the catalog is damaged. None for other databases."""
        if self.db_file is None:
            return None
        import sqlite3

        dst = self.db_file.with_name(BACKUP_FILE)
        tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
        try:
            src = sqlite3.connect(self.db_file)
            try:
                out = sqlite3.connect(tmp)
                try:
                    src.backup(out)
                finally:
                    out.close()
            finally:
                src.close()
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, dst)
        except (OSError, sqlite3.Error) as e:
            tmp.unlink(missing_ok=True)
            _logger.warning("could not back up the catalog to %s: %s", dst, e)
            return None
        return dst

    def session(self) -> Session:
        return self.sessions()

    def quick_check(self) -> str | None:
        """SQLite's ``PRAGMA quick_check`` (reads every page, writes nothing): None when the file is sound (or the
        catalog is not SQLite), else the first problem it reports."""
        if self.db_file is None:
            return None
        try:
            with self.engine.connect() as conn:
                res = [r[0] for r in conn.execute(text("PRAGMA quick_check"))]
        except DatabaseError as e:
            res = [str(getattr(e, "orig", e)).strip().splitlines()[0]]
        if res == ["ok"]:
            return None
        lines = [x.strip() for x in str(res[0]).splitlines() if x.strip() and not x.strip().startswith("***")]
        return "; ".join(lines)[:120] or "unknown problem"

    def damaged(self) -> IndexDamaged | None:
        """An IndexDamaged naming the catalog file when ``quick_check`` finds a problem, else None."""
        problem = self.quick_check()
        if problem is None:
            return None
        assert self.db_file is not None
        return IndexDamaged(self.db_file, f"the SQLite catalog fails its integrity check ({problem})", self.index_dir)

    def builds(self) -> list[BuildRow]:
        with self.sessions() as s:
            return list(s.scalars(select(BuildRow).order_by(BuildRow.created)))

    def set_dedup_threshold(self, fingerprint: str, threshold: float) -> None:
        """Store ``threshold`` as the default ``find_duplicates`` distance of one build (metric fingerprint).

        Raises:
            InvalidArgument: ``threshold`` is outside [0, 2].
            IndexMismatch: no build of that fingerprint.
        """
        check_dedup_threshold(threshold)
        with self.sessions.begin() as s:
            row = s.get(BuildRow, fingerprint)
            if row is None:
                raise IndexMismatch(f"no build {fingerprint!r} in index catalog {self.db_url}")
            row.dedup_threshold = float(threshold)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
