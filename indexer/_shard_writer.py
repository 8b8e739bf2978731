"""Writing shards (writers only, under the writer session's lock): one shard on disk, then its catalog rows.

Rules:

1. ``ShardWriter.write`` puts both files of a shard on disk atomically (temp file, fsync, ``os.replace``, fsync of
   the folder) and returns a ``PendingShard`` with their sha256 and row count. Nothing in the catalog yet.
2. ``ShardWriter.record`` (inside the caller's transaction, next to the image rows it commits) inserts the shard
   row and points each image's vector row at it. An image that already had a vector for this fingerprint gets
   its old row tombstoned in the same transaction, so an image id is live in at most one shard row.
3. ``tombstone`` (inside a transaction) removes images' vectors: their vector rows go, their shard rows become
   tombstones. A shard file is never modified; ``_upkeep.compact`` rewrites shards whose dead share passes a limit.

A shard file that is on disk but not in the catalog (a run killed between 1 and 2) is invisible to readers and is
deleted by the next writer session (``clean_orphans``). The writer session (``_writer``) drives all of this; other
writers (compaction, migration) use ``ShardWriter`` directly or ``append_shard`` (write + record + commit).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import BinaryIO

import numpy as np
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from lookalike.common.errors import IndexDamaged
from lookalike.common.io import fsync_dir
from lookalike.indexer._bulk import insert_vectors, is_sqlite
from lookalike.indexer._catalog import Catalog, ShardRow, StoreRow, TombstoneRow, VectorRow, utcnow
from lookalike.indexer._shards import Shard, ShardFiles, open_npy, shard_folder
from lookalike.indexer._structure import storage_dtype

_logger = logging.getLogger(__name__)

#: Shard files: ours (``shard-00000001.npy``) and those Ray workers write (``shard-r<run>-<worker>-<n>.npy``).
_SHARD_RE = re.compile(r"^shard-[0-9A-Za-z-]+\.(?:ids\.)?npy$")
#: Files a Ray run leaves in the folder while it runs (the token workers check they can write here).
_RUN_FILE = ".ray-"


@dataclass(frozen=True, kw_only=True)
class PendingShard(ShardFiles):
    """A shard written to disk by ``ShardWriter.write`` whose catalog row is not committed yet."""

    image_ids: np.ndarray

    @property
    def rows(self) -> int:
        return len(self.image_ids)


class _HashingWriter:
    """A binary file wrapper that hashes what is written through it."""

    def __init__(self, f: BinaryIO):
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def write(self, b: bytes | memoryview) -> int:
        self.h.update(b)
        self.n += len(memoryview(b).cast("B"))
        return self.f.write(b)

    def flush(self) -> None:
        self.f.flush()


def write_npy(path: Path, arr: np.ndarray, before_replace: Callable[[], None] | None = None) -> tuple[str, int]:
    """Write ``arr`` as ``.npy`` atomically; returns (sha256, bytes). Raises OSError (the temp file is removed)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            hw = _HashingWriter(f)
            np.lib.format.write_array(hw, np.ascontiguousarray(arr), allow_pickle=False)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise OSError(f"could not write the vector shard {path} ({e.strerror or e}); the index is unchanged") from e
    return hw.h.hexdigest(), hw.n


class ShardWriter:
    """The single writer of one fingerprint's shards (hold the folder's writer lock while using it).

    Args:
        catalog: the open catalog (``catalog.index_dir`` is the index folder).
        fingerprint: the metric weight fingerprint (the build) the vectors belong to.
        dim: vector dimension (every shard is checked against it).
        storage: "float32" (default) or "float16"; default: the build's stored choice, else float32.
        crash: test hook called at "during_flush" (temp files written) and "after_flush" (renamed, not committed).
    """

    def __init__(self, catalog: Catalog, fingerprint: str, dim: int, *, storage: str | None = None,
                 crash: Callable[[str], None] | None = None):
        self.catalog, self.fingerprint, self.dim = catalog, fingerprint, int(dim)
        self.crash = crash or (lambda _name: None)
        with catalog.session() as s:
            top = s.scalar(select(func.max(ShardRow.seq)).where(ShardRow.fingerprint == fingerprint))
            stored = s.scalar(select(StoreRow.storage).where(StoreRow.fingerprint == fingerprint))
        self.dtype = storage_dtype(storage or stored)
        self.next_seq = int(top or 0) + 1
        self.folder = shard_folder(catalog.index_dir, fingerprint)

    def write(self, image_ids: Iterable[int] | np.ndarray, vectors: np.ndarray) -> PendingShard:
        """Write one shard (vectors + ids) atomically; nothing is recorded in the catalog yet.

        Raises:
            ValueError: shapes disagree, duplicate ids, non-finite vectors.
            OSError: the disk write failed (no file is left behind; the catalog is untouched).
        """
        ids = np.asarray(image_ids if isinstance(image_ids, np.ndarray) else list(image_ids), dtype=np.int64)
        xb = np.asarray(vectors)
        if xb.ndim != 2 or xb.shape[1] != self.dim:
            raise ValueError(f"shard vectors have shape {xb.shape}; this build holds {self.dim}-d vectors")
        if len(ids) != len(xb):
            raise ValueError(f"{len(xb)} vectors but {len(ids)} image ids")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("duplicate image ids in one shard")
        if not np.isfinite(xb).all():
            raise ValueError("shard vectors contain NaN or infinite values")
        self.folder.mkdir(parents=True, exist_ok=True)
        seq = self.next_seq
        self.next_seq += 1
        name = f"shard-{seq:08d}"
        vec_path, ids_path = self.folder / f"{name}.npy", self.folder / f"{name}.ids.npy"
        ids_sha, ids_bytes = write_npy(ids_path, ids)
        try:
            sha, nbytes = write_npy(vec_path, xb.astype(self.dtype, copy=False),
                                     before_replace=lambda: self.crash("during_flush"))
        except OSError:
            with contextlib.suppress(FileNotFoundError):
                ids_path.unlink()
            raise
        fsync_dir(self.folder)
        self.crash("after_flush")
        rel = self.folder.relative_to(self.catalog.index_dir).as_posix()
        return PendingShard(fingerprint=self.fingerprint, seq=seq, file=f"{rel}/{name}.npy",
                            ids_file=f"{rel}/{name}.ids.npy", image_ids=ids, dim=self.dim, dtype=self.dtype,
                            sha256=sha, ids_sha256=ids_sha, bytes=nbytes + ids_bytes)

    def adopt(self, file: str, ids_file: str, image_ids: np.ndarray, *, sha256: str, ids_sha256: str,
              nbytes: int) -> PendingShard:
        """A shard another process wrote under this build's folder (a Ray worker, with ``write_npy``'s rules),
        checked here (both files present, their sizes and headers as announced) and given the next sequence
        number; recorded like one of ours. Raises IndexDamaged when the files do not match."""
        ids = np.asarray(image_ids, dtype=np.int64)
        d = self.catalog.index_dir
        for rel, rows_dim, dtype in ((file, (len(ids), self.dim), self.dtype), (ids_file, (len(ids),), "int64")):
            if not rel.startswith(self.folder.relative_to(d).as_posix() + "/") or ".." in rel.split("/"):
                raise IndexDamaged(d / rel, "a worker shard outside this build's folder", d)
            arr = open_npy(d, rel, rows=rows_dim[0], dim=rows_dim[1] if len(rows_dim) > 1 else None, dtype=dtype)
            del arr
        size = (d / file).stat().st_size + (d / ids_file).stat().st_size
        if size != nbytes:
            raise IndexDamaged(d / file, f"{size} bytes on disk, the worker announced {nbytes}", d)
        self.crash("after_flush")  # on disk, not committed: the same point as a shard of ours
        seq = self.next_seq
        self.next_seq += 1
        return PendingShard(fingerprint=self.fingerprint, seq=seq, file=file, ids_file=ids_file, image_ids=ids,
                            dim=self.dim, dtype=self.dtype, sha256=sha256, ids_sha256=ids_sha256, bytes=nbytes)

    def record(self, s: Session, p: PendingShard, *, new: bool = False) -> int:
        """Inside the caller's transaction: insert the shard row and point the images' vector rows at it.

        Images that already had a vector of this fingerprint get their old shard row tombstoned; ``new=True`` says
        that none had one (the caller knows: images created or found without a vector in the same run), which
        skips that look-up. Returns the new shard id.
        """
        row = ShardRow(**{f.name: getattr(p, f.name) for f in fields(ShardFiles)}, rows=p.rows, dead=0,
                       created=utcnow())
        s.add(row)
        s.flush()
        shard_id = int(row.id)
        ids = p.image_ids.tolist()
        if not new:
            tombstone(s, ids, fingerprint=p.fingerprint)
        if is_sqlite(self.catalog):
            insert_vectors(s, p.image_ids, p.fingerprint, shard_id)
            return shard_id
        for start in range(0, len(ids), 5000):
            # Core executemany: several times faster than the ORM bulk insert on the writer's hot path
            s.connection().execute(VectorRow.__table__.insert(),
                                   [{"image_id": i, "fingerprint": p.fingerprint, "faiss_id": i, "shard_id": shard_id}
                                    for i in ids[start:start + 5000]])
        return shard_id

    def append(self, image_ids: Iterable[int] | np.ndarray, vectors: np.ndarray,
               extra: Callable[[Session], None] | None = None) -> Shard:
        """``write`` + ``record`` + commit; ``extra(session)`` adds the caller's rows to the same transaction."""
        p = self.write(image_ids, vectors)
        with self.catalog.session() as s, s.begin():
            if extra is not None:
                extra(s)
            shard_id = self.record(s, p)
            row = s.get(ShardRow, shard_id)
            assert row is not None
            return Shard.of(row)


def append_shard(catalog: Catalog, fingerprint: str, image_ids: Iterable[int] | np.ndarray, vectors: np.ndarray, *,
                 storage: str | None = None, extra: Callable[[Session], None] | None = None) -> Shard:
    """Write one shard atomically and commit it (plus ``extra``'s rows) in one transaction. Hold the writer lock.

    Args:
        catalog: the open catalog of the index folder.
        fingerprint: the build the vectors belong to (its ``builds`` row must exist).
        image_ids: the catalog image id of each row (unique).
        vectors: (rows, dim) unit vectors.
        storage: "float32" / "float16" (default: the build's stored choice).
        extra: called with the open session before the shard row is recorded (the caller's own rows).

    Returns:
        The committed Shard.
    """
    vectors = np.asarray(vectors)
    return ShardWriter(catalog, fingerprint, vectors.shape[1] if vectors.ndim == 2 else -1,
                       storage=storage).append(image_ids, vectors, extra)


def tombstone(s: Session, image_ids: Iterable[int], *, fingerprint: str | None = None) -> int:
    """Inside a transaction: drop the vector rows of ``image_ids`` (of one fingerprint, or of all) and tombstone
    the shard rows that held them. Returns how many vector rows went."""
    ids = sorted({int(i) for i in image_ids})
    n = 0
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        q = select(VectorRow.faiss_id, VectorRow.shard_id).where(VectorRow.image_id.in_(chunk))
        dq = delete(VectorRow).where(VectorRow.image_id.in_(chunk))
        if fingerprint is not None:
            q = q.where(VectorRow.fingerprint == fingerprint)
            dq = dq.where(VectorRow.fingerprint == fingerprint)
        old = s.execute(q).all()
        if not old:
            continue
        dead: dict[int, int] = {}
        tombs = []
        for fid, sid in old:
            if sid is not None:
                tombs.append({"shard_id": int(sid), "faiss_id": int(fid)})
                dead[int(sid)] = dead.get(int(sid), 0) + 1
        if tombs:
            s.execute(insert(TombstoneRow), tombs)
            for sid, k in dead.items():
                s.execute(update(ShardRow).where(ShardRow.id == sid).values(dead=ShardRow.dead + k))
        s.execute(dq)
        n += len(old)
    return n


def clean_orphans(catalog: Catalog, fingerprint: str) -> int:
    """Delete shard files (and temp files) of a build that no committed shard row names: left by a run killed
    between writing a shard and committing it. Writer only (hold the writer lock). Returns files removed."""
    folder = shard_folder(catalog.index_dir, fingerprint)
    if not folder.is_dir():
        return 0
    with catalog.session() as s:
        known = {Path(f).name for pair in s.execute(select(ShardRow.file, ShardRow.ids_file)
                                                    .where(ShardRow.fingerprint == fingerprint)) for f in pair}
    n = 0
    for p in folder.iterdir():
        if ".tmp-" in p.name or p.name.startswith(_RUN_FILE) or (_SHARD_RE.match(p.name) and p.name not in known):
            with contextlib.suppress(OSError):
                p.unlink()
                n += 1
    if n:
        _logger.info("removed %d uncommitted shard files from %s", n, folder)
    return n
