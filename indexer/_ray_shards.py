"""Shards written by Ray's embedding actors, committed by the driver (the single writer of the catalog).

One driver writing every shard itself takes in what its disk and one thread allow (~7-11k vectors/s measured
here; at 3,000 img/s per GPU, a handful of GPUs). So when the actors can reach the index folder (the same machine,
or a shared file system), each actor writes the shards of its own results, with the driver's rules: a temp file,
fsync, rename, fsync of the folder (``_shard_writer.write_npy``), under a name of its own
(``shard-r<run>-<pid>-<n>.npy`` + ``.ids.npy``); it sends back only the rows' catalog updates and the shard's
description (files, sha256, bytes). The driver checks the files (present, sizes and headers as announced:
``ShardWriter.adopt``) and commits the shard row, the vector rows and the image rows in one transaction per
checkpoint, exactly as for a shard of its own. Nothing else changes:

* a shard written but not committed (an actor killed after writing it, a batch Ray retried, a driver killed before
  its commit) is named by no committed row: readers ignore it and the next writer session deletes it
  (``clean_orphans``), as this run's driver also does when Ray is done;
* a batch retried by Ray whose rows already arrived is dropped by the driver (its file becomes an orphan); when only
  some of its rows are new, the driver reads those rows' vectors from the file and writes them itself;
* whether the actors can write is tested, not assumed: the driver leaves a token file with a random secret in the
  folder (``.ray-<run>``); an actor that cannot read that secret at the path it was given (another machine without
  the shared disk) sends its vectors back to the driver, which writes them as before.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_logger = logging.getLogger(__name__)

#: Rows per shard an embedding actor writes (one Ray batch; GPU batches are cut from it). Not below the store's
#: small-shard size, so that the shards of a Ray run are never merged again by compaction.
WORKER_SHARD_ROWS = 4096
#: Names of the columns an actor returns with a shard it wrote (one value per row, the same for every row).
SHARD_COLUMNS = ("shard_file", "shard_ids_file", "shard_sha256", "shard_ids_sha256", "shard_bytes")


@dataclass(frozen=True)
class ShardTarget:
    """Where the actors may write shards: the index folder, the build's shard folder (absolute, and relative to the
    index folder), the run's token file and secret, the storage dtype and dimension."""

    index_dir: str
    folder: str
    rel: str
    token: str
    secret: str
    run: str
    storage: str
    dim: int


def open_target(index_dir: Path, folder: Path, storage: str, dim: int) -> ShardTarget:
    """Leave the run's token in the shard folder (written atomically) and describe the target."""
    folder.mkdir(parents=True, exist_ok=True)
    run = secrets.token_hex(4)
    secret = secrets.token_hex(16)
    token = folder / f".ray-{run}"
    tmp = folder / f".ray-{run}.tmp-{os.getpid()}"
    tmp.write_text(secret)
    os.replace(tmp, token)
    return ShardTarget(str(index_dir), str(folder), folder.relative_to(index_dir).as_posix(), token.name, secret, run,
                       storage, dim)


def close_target(target: ShardTarget) -> None:
    (Path(target.folder) / target.token).unlink(missing_ok=True)


class WorkerShards:
    """An actor's side: write one shard per batch of results, when the target folder is reachable from here."""

    def __init__(self, target: ShardTarget | None):
        self.target = target
        self.seq = 0
        self.usable = False
        if target is not None:
            try:
                self.usable = (Path(target.folder) / target.token).read_text() == target.secret
            except OSError:
                self.usable = False
            if not self.usable:
                _logger.warning("Ray worker on %s cannot reach the index folder %s: its vectors go to the driver",
                                os.uname().nodename, target.folder)

    def write(self, ids: np.ndarray, xb: np.ndarray) -> dict[str, np.ndarray]:
        """Write (ids, xb) as one shard; returns the shard's description as per-row columns."""
        from lookalike.common.io import fsync_dir
        from lookalike.indexer._shard_writer import write_npy

        t = self.target
        assert t is not None and self.usable
        self.seq += 1
        name = f"shard-r{t.run}-{os.getpid()}-{self.seq:06d}"
        folder = Path(t.folder)
        ids_sha, ids_bytes = write_npy(folder / f"{name}.ids.npy", np.asarray(ids, np.int64))
        sha, nbytes = write_npy(folder / f"{name}.npy", np.asarray(xb).astype(t.storage, copy=False))
        fsync_dir(folder)
        n = len(ids)
        values = (f"{t.rel}/{name}.npy", f"{t.rel}/{name}.ids.npy", sha, ids_sha, nbytes + ids_bytes)
        return {c: np.full(n, v, dtype=object) for c, v in zip(SHARD_COLUMNS, values, strict=True)}


@dataclass
class WorkerShard:
    """A shard an actor wrote, as the driver received it: its files and the image ids of its rows, in file order."""

    file: str
    ids_file: str
    sha256: str
    ids_sha256: str
    nbytes: int
    ids: np.ndarray


def shards_of(out: dict[str, np.ndarray], rows: np.ndarray) -> list[tuple[WorkerShard, np.ndarray]]:
    """The worker shards named in a result batch, each with the batch positions of its rows (``rows``: positions
    of the ok rows, in the order the actor wrote them)."""
    if "shard_file" not in out or not len(rows):
        return []
    files = np.asarray(out["shard_file"], dtype=object)[rows]
    got = []
    for f in dict.fromkeys(files.tolist()):
        pos = rows[files == f]
        j = int(pos[0])
        got.append((WorkerShard(str(f), str(out["shard_ids_file"][j]), str(out["shard_sha256"][j]),
                                str(out["shard_ids_sha256"][j]), int(out["shard_bytes"][j]),
                                np.asarray(out["id"], np.int64)[pos]), pos))
    return got


def read_rows(index_dir: Path, shard: WorkerShard, keep: np.ndarray) -> np.ndarray:
    """float32 vectors of some rows of a worker shard (a batch retried by Ray whose other rows arrived before)."""
    arr = np.load(index_dir / shard.file, mmap_mode="r", allow_pickle=False)
    return np.asarray(arr[keep], np.float32)
