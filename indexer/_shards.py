"""Append-only vector shards (index schema 2): layout, catalog records, and the memory-mapped reader.

Layout of an index folder::

    catalog.sqlite                       images, vectors (image -> shard), shards, tombstones, stores, builds
    vectors/<fingerprint>/shard-00000001.npy       (rows, dim) float32 or float16, C order
    vectors/<fingerprint>/shard-00000001.ids.npy   (rows,) int64 image ids (= the ``faiss_id`` of their vector row)
    vectors/<fingerprint>/derived-000001.faiss     (optional) a search structure built from the shards (``_derive``)

Shards are written by the single writer (``_shard_writer``, under the writer session's lock), each on disk before
the catalog rows that name it commit. Readers (``open_shards``) take one consistent snapshot of the shard and
tombstone rows and memory-map the files: the vectors are never copied whole into RAM, and nothing here writes.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from lookalike.common.errors import IndexDamaged
from lookalike.common.io import sha256_file
from lookalike.indexer._catalog import Catalog, ShardRow, TombstoneRow

_logger = logging.getLogger(__name__)

SHARD_ROOT = "vectors"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def shard_folder(index_dir: str | os.PathLike[str], fingerprint: str) -> Path:
    """The folder that holds one metric fingerprint's shards (and its derived FAISS file)."""
    return Path(index_dir) / SHARD_ROOT / _SAFE.sub("_", fingerprint)


@dataclass(frozen=True)
class ShardFiles:
    """The two files of a shard and what the catalog records about them. Paths are relative to the index folder."""

    fingerprint: str
    seq: int
    file: str
    ids_file: str
    dim: int
    dtype: str
    sha256: str
    ids_sha256: str
    bytes: int


@dataclass(frozen=True, kw_only=True)
class Shard(ShardFiles):
    """A committed shard (a row of the ``shards`` table): its files, id, rows and tombstoned rows."""

    id: int
    rows: int
    dead: int

    @property
    def live(self) -> int:
        return self.rows - self.dead

    @classmethod
    def of(cls, r: ShardRow) -> Shard:
        return cls(**{f.name: getattr(r, f.name) for f in fields(cls)})


def sha256_path(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file (``lookalike.common.io.sha256_file`` with 4 MiB reads)."""
    return sha256_file(path, chunk=1 << 22)


def list_shards(s: Session, fingerprint: str) -> list[Shard]:
    """The committed shards of a build, oldest first."""
    return [Shard.of(r) for r in s.scalars(select(ShardRow).where(ShardRow.fingerprint == fingerprint)
                                           .order_by(ShardRow.seq))]


def tombstones_of(s: Session, fingerprint: str) -> dict[int, np.ndarray]:
    """Tombstoned image ids per shard id (sorted int64 arrays) of a build."""
    rows = s.execute(select(TombstoneRow.shard_id, TombstoneRow.faiss_id)
                     .join(ShardRow, ShardRow.id == TombstoneRow.shard_id)
                     .where(ShardRow.fingerprint == fingerprint)).all()
    out: dict[int, list[int]] = {}
    for sid, fid in rows:
        out.setdefault(int(sid), []).append(int(fid))
    return {k: np.sort(np.asarray(v, np.int64)) for k, v in out.items()}


def open_npy(index_dir: Path, rel: str, *, rows: int, dim: int | None, dtype: str) -> np.ndarray:
    """Memory-map one shard file and check its header against the catalog (a cheap check: no hashing)."""
    path = index_dir / rel
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise IndexDamaged(path, "the file is missing", index_dir) from None
    except (ValueError, OSError, EOFError) as e:
        raise IndexDamaged(path, f"not a readable .npy file ({str(e).splitlines()[0][:120]})", index_dir) from None
    want = (rows, dim) if dim is not None else (rows,)
    if dim is not None and arr.ndim == 2 and arr.shape[1] != dim:
        raise IndexDamaged(path, f"holds {arr.shape[1]}-d vectors but the catalog says this build is {dim}-d",
                           index_dir)
    if arr.shape != want or arr.dtype != np.dtype(dtype):
        raise IndexDamaged(path, f"holds {arr.dtype}{list(arr.shape)}, the catalog recorded {dtype}{list(want)}",
                           index_dir)
    return arr


@dataclass
class OpenShard:
    """One memory-mapped shard: its catalog row, ids, vectors and the mask of live rows (None: all live)."""

    shard: Shard
    ids: np.ndarray
    xb: np.ndarray
    live: np.ndarray | None

    def live_ids(self) -> np.ndarray:
        return self.ids if self.live is None else self.ids[self.live]

    def release(self) -> None:
        """Unmap the pages of this shard's vectors that this process has read (``MADV_DONTNEED`` on a read-only
        file mapping: the pages stay in the kernel's page cache, the next read maps them again at the cost of a
        minor fault). Long scans call it as they go, so their resident memory does not grow with the index."""
        mm = getattr(self.xb, "_mmap", None)
        if mm is not None and hasattr(mm, "madvise"):
            with contextlib.suppress(ValueError, OSError):
                mm.madvise(mmap.MADV_DONTNEED)


class ShardSet:
    """A consistent, read-only view of a build's committed shards, memory-mapped, tombstones applied.

    Args:
        index_dir: the index folder.
        shards: committed shards (``list_shards``).
        tombs: tombstoned ids per shard id (``tombstones_of``).
        dim: the build's dimension.
        verify: also check each file's sha256 against the catalog (reads every byte once).
    """

    def __init__(self, index_dir: str | os.PathLike[str], shards: list[Shard], tombs: dict[int, np.ndarray],
                 dim: int, *, verify: bool = False):
        self.index_dir = Path(index_dir)
        self.dim = int(dim)
        self.parts: list[OpenShard] = []
        for sh in shards:
            if verify:
                for rel, want in ((sh.file, sh.sha256), (sh.ids_file, sh.ids_sha256)):
                    p = self.index_dir / rel
                    if p.is_file() and sha256_path(p) != want:
                        raise IndexDamaged(p, "its sha256 differs from the one recorded when it was written",
                                           self.index_dir)
            xb = open_npy(self.index_dir, sh.file, rows=sh.rows, dim=self.dim, dtype=sh.dtype)
            ids = open_npy(self.index_dir, sh.ids_file, rows=sh.rows, dim=None, dtype="int64")
            dead = tombs.get(sh.id)
            live = None if dead is None or not len(dead) else ~np.isin(ids, dead)
            self.parts.append(OpenShard(sh, ids, xb, live))
        self.ntotal = sum(len(p.ids) if p.live is None else int(p.live.sum()) for p in self.parts)

    @property
    def rows(self) -> int:
        """Stored rows, live or tombstoned."""
        return sum(len(p.ids) for p in self.parts)

    def ids(self) -> np.ndarray:
        """Live image ids in storage order."""
        if not self.parts:
            return np.zeros(0, np.int64)
        return np.concatenate([p.live_ids() for p in self.parts]).astype(np.int64, copy=False)

    def release_pages(self) -> None:
        """``OpenShard.release`` for every shard."""
        for p in self.parts:
            p.release()

    def iter_live(self, block: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, float32 vectors) of the live rows in blocks of at most ``block`` rows, in storage order.

        Only one block is copied out of the memory-mapped files at a time, and each shard's pages are unmapped
        once it has been read.
        """
        for p in self.parts:
            for s in range(0, len(p.ids), block):
                ids = np.asarray(p.ids[s:s + block])
                xb = np.asarray(p.xb[s:s + block], dtype=np.float32)
                if p.live is not None:
                    m = p.live[s:s + block]
                    if not m.all():
                        ids, xb = ids[m], xb[m]
                if len(ids):
                    yield ids, xb
            p.release()


def open_shards(catalog: Catalog, fingerprint: str, dim: int, *, verify: bool = False,
                upto: int | None = None) -> ShardSet:
    """A ShardSet of a build's committed shards (one snapshot of shards + tombstones), optionally only those with
    id <= ``upto``."""
    with catalog.session() as s, s.begin():
        shards = list_shards(s, fingerprint)
        tombs = tombstones_of(s, fingerprint)
    if upto is not None:
        shards = [sh for sh in shards if sh.id <= upto]
    return ShardSet(catalog.index_dir, shards, tombs, dim, verify=verify)
