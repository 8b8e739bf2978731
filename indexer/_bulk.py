"""Catalog rows in bulk, for the writers' hot paths (writers only, under the writer lock).

On SQLite, rows go through the DB-API ``executemany`` of tuples on the session's own connection (inside its
transaction), with image ids allocated in bulk (``next_image_id``: AUTOINCREMENT accepts explicit ids and keeps its
sequence above them), and nothing is read back. A fresh bulk import (no image row in the catalog when it starts)
also defers the unique index of image paths: inserting 10M random paths into a B-tree dirties leaf pages all over
it, commit after commit, while building it once after the load is one sort. ``drop_path_index`` removes it when
such an import starts, the import re-creates it before it ends, and every writer session re-creates it when it
finds it missing (an import killed in between), so a catalog never stays without it past the next writer.
Catalogs whose unique constraint is inline (written before it was a named index) keep it and the slower path.

Other databases (PostgreSQL) keep the unique constraint and take SQLAlchemy's Core path: callers ask
``is_sqlite`` first.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
from collections.abc import Iterable, Sequence

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from lookalike.indexer._catalog import UNIQUE_PATHS, Catalog

_logger = logging.getLogger(__name__)

#: Columns of an image row inserted in bulk (the others take their defaults: NULL).
IMAGE_COLUMNS = ("id", "root", "relpath", "path_raw", "size", "mtime_ns", "status", "error", "added")
_INSERT_IMAGES = f"INSERT INTO images ({', '.join(IMAGE_COLUMNS)}) VALUES ({', '.join('?' * len(IMAGE_COLUMNS))})"
_INSERT_VECTORS = "INSERT INTO vectors (image_id, fingerprint, faiss_id, shard_id) VALUES (?, ?, ?, ?)"
_CREATE_PATH_INDEX = f"CREATE UNIQUE INDEX IF NOT EXISTS {UNIQUE_PATHS} ON images (root, relpath)"


def is_sqlite(catalog: Catalog) -> bool:
    return catalog.engine.dialect.name == "sqlite"


def driver(s: Session) -> sqlite3.Connection:
    """The DB-API connection under a session (its statements join the session's transaction)."""
    return s.connection().connection.driver_connection  # type: ignore[return-value]


def sqlite_time(t: dt.datetime) -> str:
    """A datetime as SQLAlchemy stores DateTime columns in SQLite."""
    return t.strftime("%Y-%m-%d %H:%M:%S.%f")


def path_index_state(catalog: Catalog) -> str:
    """The unique index of image paths: "present" (a named index), "inline" (an older catalog's constraint, never
    dropped), "missing" (dropped by a bulk import that has not re-created it yet), or "other" (not SQLite)."""
    if not is_sqlite(catalog):
        return "other"
    with catalog.engine.connect() as c:
        rows = c.exec_driver_sql("PRAGMA index_list(images)").all()
    if any(r[1] == UNIQUE_PATHS for r in rows):
        return "present"
    if any(r[3] == "u" for r in rows):
        return "inline"
    return "missing"


def drop_path_index(catalog: Catalog) -> bool:
    """Drop the named unique index of image paths before a fresh bulk load; True when it was dropped."""
    if path_index_state(catalog) != "present":
        return False
    with catalog.engine.begin() as c:
        c.execute(text(f"DROP INDEX {UNIQUE_PATHS}"))
    _logger.info("unique path index dropped for a bulk import (re-created when it ends)")
    return True


def ensure_path_index(catalog: Catalog) -> bool:
    """Re-create the unique index of image paths when a bulk import left it out; True when it was built."""
    if path_index_state(catalog) != "missing":
        return False
    with catalog.engine.begin() as c:
        c.execute(text(_CREATE_PATH_INDEX))
    _logger.info("unique path index of the catalog built")
    return True


def next_image_id(s: Session) -> int:
    """The first id a bulk insert may use: above every id ever given (AUTOINCREMENT never reuses one)."""
    con = driver(s)
    top = con.execute("SELECT max(id) FROM images").fetchone()[0] or 0
    seq = con.execute("SELECT seq FROM sqlite_sequence WHERE name = 'images'").fetchone()
    return int(max(top, seq[0] if seq else 0)) + 1


def insert_images(s: Session, rows: Iterable[Sequence]) -> None:
    """Insert image rows given as tuples in ``IMAGE_COLUMNS`` order (ids included)."""
    driver(s).executemany(_INSERT_IMAGES, rows)


def insert_vectors(s: Session, image_ids: np.ndarray, fingerprint: str, shard_id: int) -> None:
    """Insert the vector rows of a shard's images (``faiss_id`` = image id)."""
    ids = image_ids.tolist()
    driver(s).executemany(_INSERT_VECTORS, ((i, fingerprint, i, shard_id) for i in ids))
