"""Embedding on a Ray cluster: the driver's work items → Ray Data (decode in CPU tasks, embed in an actor pool) →
results streamed back to the driver, which stays the single writer of the index.

The driver (``build_index(..., ray=...)``) scans, diffs and queues exactly as the local path does, then hands its
``(image id, path)`` work items to :func:`embed_on_ray`. The Ray Dataset has two stages:

* ``decode``: a ``map_batches`` *task* per block of work items (``num_cpus=1``), which reads each file with the
  same code as the local DataLoader workers and resizes it to the metric's input (``metric.preprocess``), so only
  (B, 3, S, S) pixels travel; they travel as uint8 when the transform's output is exactly ``uint8 / 255`` (every
  built-in metric), which is what the local path computes too, so the vectors are the same;
* ``embed``: ``map_batches`` with an actor class (:class:`_Embedder`): one model load per actor, ``num_gpus`` per
  actor when the cluster has GPUs, a fixed batch size.

Ray retries what fails: a decode task whose worker dies is re-run (``max_retries``) and an embedding actor that
dies is restarted with its in-flight batches re-submitted (Ray Data's actor pool defaults). The driver drops any
image id it has already received, so a retried batch is never written twice, and writes through the same
``writer.push`` / checkpoint code as the local path, so a SIGKILLed driver resumes like a local run.

Ray is an optional dependency (``pip install "lookalike[ray]"``); nothing here imports it at module import time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lookalike.common.errors import InvalidArgument, LookalikeError
from lookalike.indexer._catalog import STATUS_FAILED, STATUS_OK
from lookalike.indexer._ray_shards import (
    WORKER_SHARD_ROWS,
    ShardTarget,
    WorkerShard,
    close_target,
    open_target,
    read_rows,
    shards_of,
)
from lookalike.indexer._ray_worker import (
    WORKER_CRASH_DIR_ENV,
    WorkerCrash,
    _decode_block,
    _Embedder,
    metric_transform,
    transform_is_uint8,
)
from lookalike.indexer._shard_writer import clean_orphans

if TYPE_CHECKING:
    from lookalike.indexer._writer import BuildWriter
    from lookalike.metric import Metric

_logger = logging.getLogger(__name__)

#: The one-line answer when ``--ray`` is asked for and Ray is not installed.
RAY_MISSING = 'Ray is not installed; install it with: pip install "lookalike[ray]"  (or: pip install "ray[data]")'

#: Memory each decode task reserves (bytes).
DECODE_TASK_MEMORY = 256 << 20
#: Work items per decode task (one Ray block each); the embedding batches are cut from these blocks.
DEFAULT_BLOCK_ROWS = 256


class RayNotInstalled(LookalikeError, ImportError):
    """``ray=`` was asked for but the ``ray[data]`` package is missing (``pip install "lookalike[ray]"``)."""

    def __init__(self) -> None:
        super().__init__(RAY_MISSING)  # the message itself says how to get it: one line, whatever prints it
        self.name = "ray"


def import_ray() -> Any:
    """The ``ray`` module with ``ray.data`` loaded; RayNotInstalled (one line: how to get it) when missing."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        if (e.name or "").split(".")[0] not in ("ray", "pyarrow", "pandas"):
            raise
        raise RayNotInstalled() from None
    return ray


def parse_ray_address(ray: bool | str | None) -> str | None:
    """``ray=`` as given to ``build_index``: None / False (no Ray), True / "auto" / "" ("auto"), or an address."""
    if ray is None or ray is False:
        return None
    if ray is True:
        return "auto"
    text = str(ray).strip()
    return text or "auto"


@contextlib.contextmanager
def ray_session(address: str) -> Iterator[Any]:
    """Connect to Ray for one run; yields the ``ray`` module.

    * Ray already initialised in this process (a notebook, a test): used as is, left running.
    * "auto": the cluster this machine belongs to (``$RAY_ADDRESS`` or a local ``ray start``) if there is one,
      else a local cluster started for this run (all CPUs and GPUs here) and shut down at the end.
    * anything else: ``ray.init(address=...)`` ("HOST:6379", "ray://HOST:10001"); disconnected at the end.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address == "auto":
        try:
            ray.init(address="auto", **kwargs)
            _logger.info("connected to the running Ray cluster")
        except ConnectionError:
            _logger.info("no running Ray cluster found: starting a local one for this run")
            ray.init(**kwargs)
    else:
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as e:
            raise InvalidArgument(f"cannot connect to the Ray cluster at {address!r}: {e}",
                                  hint="start it with 'ray start --head', or use ray='auto'") from None
    try:
        yield ray
    finally:
        ray.shutdown()


@dataclass
class RayBatch:
    """One batch of results streamed back to the driver (decode failures included; duplicates already dropped)."""

    ids: list[int] = field(default_factory=list)
    vectors: np.ndarray | None = None
    ok: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)
    duplicates: int = 0
    shards: list[tuple[WorkerShard, list[dict]]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids) + len(self.failed) + sum(len(w.ids) for w, _ in self.shards)


def _cluster_gpus(ray: Any) -> float:
    return float(ray.cluster_resources().get("GPU", 0))


def _node_cpus(ray: Any) -> float:
    """CPUs of the largest node of the cluster."""
    return max((float(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")), default=1.0)


def _probe_batch_size(ray: Any, name: str, dtype: torch.dtype) -> int:
    """``suggest_batch_size`` measured on a GPU of the cluster (one remote task holding one GPU)."""

    def probe() -> int:
        from lookalike.metric import load_metric, suggest_batch_size

        return int(suggest_batch_size(load_metric(name, dtype=dtype)))

    return int(ray.get(ray.remote(num_gpus=1)(probe).remote()))


def embed_on_ray(
    items: Sequence[tuple[int, str]],
    m: Metric,
    ray: Any,
    *,
    batch_size: int | None,
    actors: int | None = None,
    max_pixels: int | None,
    draft_size: int | None = None,
    block_rows: int | None = None,
    crash_spec: str | None = None,
    target: ShardTarget | None = None,
    shard_rows: int | None = None,
) -> Iterator[RayBatch]:
    """Decode and embed ``items`` on the connected Ray cluster; yields results as they arrive, in no fixed order.

    Every id comes back exactly once (a batch retried by Ray after a worker died is dropped when its ids were
    already seen), as a vector (``ok`` rows) or a decode failure (``failed`` rows, with the reason).

    Args:
        items: (catalog image id, path) work items, from the driver's queue.
        m: the driver's metric: its name, precision, fingerprint and preprocessing are used; its model is not
            shipped (each actor loads its own).
        ray: the ``ray`` module, connected (see ``ray_session``).
        batch_size: images per embedding batch; None: fitted to a GPU of the cluster (``suggest_batch_size``), or
            32 on a CPU-only cluster.
        actors: embedding actors; default one per GPU of the cluster, or 1 on a CPU-only cluster.
        max_pixels: decompression-bomb limit for decoding.
        draft_size: reduced-scale JPEG decode (``fast_decode``); None: exact decode.
        block_rows: work items per decode task (default: the batch size, within 16..256, so that the first batches
            reach the actors early).
        crash_spec: worker crash points (tests; see ``WorkerCrash``).
        target: where the actors write the shards of their results (``_ray_shards``); None: vectors come back.
        shard_rows: rows per actor-written shard (one Ray batch each; default ``WORKER_SHARD_ROWS``, at least
            ``batch_size``).

    Yields:
        RayBatch objects.
    """
    import pyarrow as pa

    if not items:
        return
    gpus = _cluster_gpus(ray)
    if batch_size is None:
        batch_size = _probe_batch_size(ray, m.name, m.dtype) if gpus >= 1 else 32
    if batch_size < 1:
        raise InvalidArgument(f"batch_size must be >= 1, got {batch_size}")
    n_actors = actors or (max(1, int(gpus)) if gpus >= 1 else 1)
    cpu_threads = 0 if gpus >= 1 else max(1, int(_node_cpus(ray)) // max(1, n_actors))
    transform = metric_transform(m)
    size = m.input_size
    as_uint8 = transform_is_uint8(transform, size)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    with tempfile.TemporaryDirectory(prefix="lookalike-ray-") as tmp:
        crash = WorkerCrash(crash_spec, (os.environ.get(WORKER_CRASH_DIR_ENV) or tmp) if crash_spec else None)
        block_rows = block_rows or min(DEFAULT_BLOCK_ROWS, max(16, batch_size))
        block_rows = max(1, min(block_rows, -(-len(items) // 2)))
        ids = np.fromiter((i for i, _ in items), dtype=np.int64, count=len(items))
        paths = [p for _, p in items]
        tables = [pa.table({"id": ids[s:s + block_rows], "path": paths[s:s + block_rows]})
                  for s in range(0, len(items), block_rows)]
        ds = ray.data.from_arrow(tables)
        # Each decode task reserves memory for its block (the decoded files at full size, one at a time, plus the
        # resized pixels). The request also keeps the decode tasks apart from the actors on a CPU-only cluster:
        # Ray Data fuses stages with equal resource requests, and would then decode serially inside the actor.
        # Failed tasks are retried by Ray Data's defaults (max_retries=-1 for system failures).
        ds = ds.map_batches(
            _decode_block, batch_size=None, batch_format="numpy", num_cpus=1, memory=DECODE_TASK_MEMORY,
            fn_kwargs={"transform": transform, "size": size, "as_uint8": as_uint8, "max_pixels": max_pixels,
                       "draft_size": draft_size, "crash": crash})
        actor_args: dict[str, Any] = {"num_gpus": 1} if gpus >= 1 else {"num_cpus": 1}
        # with a shard target, one Ray batch is one shard the actor writes (cut into forward passes of batch_size)
        per_call = (shard_rows or max(batch_size, WORKER_SHARD_ROWS)) if target is not None else batch_size
        ds = ds.map_batches(
            _Embedder, batch_size=per_call, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=n_actors),
            fn_constructor_kwargs={"name": m.name, "dtype": m.dtype, "fingerprint": m.fingerprint,
                                   "as_uint8": as_uint8, "crash": crash, "cpu_threads": cpu_threads,
                                   "micro": batch_size, "target": target},
            **actor_args)
        _logger.info("Ray: %d work items in %d decode blocks, %d embedding actor(s) (%s), batch %d, pixels as %s",
                     len(items), len(tables), n_actors, "GPU" if gpus >= 1 else "CPU", batch_size,
                     "uint8" if as_uint8 else "float32")
        wanted = set(ids.tolist())
        seen: set[int] = set()
        for out in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
            yield _to_batch(out, wanted, seen, Path(target.index_dir) if target is not None else None)
        missing = wanted - seen
        if missing:  # Ray finished without an error yet lost rows: never silently
            raise RuntimeError(f"Ray run returned {len(seen)} of {len(wanted)} images; {len(missing)} missing "
                               f"(first ids {sorted(missing)[:5]}); re-run to embed them")


def _to_batch(out: dict[str, np.ndarray], wanted: set[int], seen: set[int], index_dir: Path | None = None
              ) -> RayBatch:
    """One result batch (numpy columns) → catalog updates; ids already received (a retried batch) are dropped.

    Rows whose actor wrote their shard come as ``shards`` (the shard and its rows' updates) when every row of the
    shard is new; when only some are, those rows' vectors are read from the file and handed over as vectors.
    """
    b = RayBatch()
    ids = np.asarray(out["id"]).tolist()
    ok = np.asarray(out["ok"]).tolist()
    width = np.asarray(out["width"]).tolist()
    height = np.asarray(out["height"]).tolist()
    fmt, err = list(out["format"]), list(out["error"])
    fresh = np.zeros(len(ids), bool)
    for j, i in enumerate(ids):
        if i in seen or i not in wanted:
            b.duplicates += 1
            continue
        seen.add(i)
        fresh[j] = True
        if not ok[j]:
            reason = str(err[j])
            b.failed.append({"id": i, "status": STATUS_FAILED, "error": reason})
            b.failures.append((i, reason))

    def row(j: int) -> dict:
        return {"id": ids[j], "status": STATUS_OK, "error": None, "width": width[j], "height": height[j],
                "format": str(fmt[j])}

    ok_pos = np.flatnonzero(np.asarray(out["ok"], bool))
    if "shard_file" in out and index_dir is not None:
        extra: list[np.ndarray] = []
        for ws, pos in shards_of(out, ok_pos):
            new = fresh[pos]
            if new.all():
                b.shards.append((ws, [row(j) for j in pos.tolist()]))
            elif new.any():  # a retried batch of which some rows arrived before: write the others ourselves
                extra.append(read_rows(index_dir, ws, np.flatnonzero(new)))
                for j in pos[new].tolist():
                    b.ids.append(ids[j])
                    b.ok.append(row(j))
        if extra:
            b.vectors = np.concatenate(extra)
    else:
        keep_rows = [j for j in ok_pos.tolist() if fresh[j]]
        for j in keep_rows:
            b.ids.append(ids[j])
            b.ok.append(row(j))
        if keep_rows:
            vec = np.asarray(out["vector"], dtype=np.float32)
            b.vectors = vec if len(keep_rows) == len(vec) else np.ascontiguousarray(vec[keep_rows])
    if b.duplicates:
        _logger.info("dropped %d rows already received (a batch retried by Ray)", b.duplicates)
    return b


def run_on_ray(
    queue: Sequence[tuple[int, str]],
    m: Metric,
    writer: BuildWriter,
    summary: Any,
    *,
    address: str,
    batch_size: int | None,
    max_pixels: int | None,
    draft_size: int | None,
    report: Callable[[str, int, int], None],
    crash: Callable[[str], None],
    worker_crash: str | None,
) -> None:
    """The driver's side of a ``build_index(..., ray=...)`` run: stream Ray's results into the index's writer.

    The writer is the writer session's build writer, the local path's own (``push`` buffers, checkpoints commit a
    shard; ``push_shard`` commits a shard an actor wrote, see ``_ray_shards``), so the crash-safety rules and the
    driver crash points ("decode" / "embed" fire once per received batch, "after_flush" once per worker shard
    received) are the same; ``report`` is the run's progress ("embed", done, total). The seconds the driver waits
    for results are counted as ``model`` time (decode + embed run remotely).
    """
    from lookalike.data.image_folder import display_path

    paths = dict(queue)
    done = 0
    index_dir = writer.session.index_dir
    target = open_target(index_dir, writer.shards.folder, writer.shards.dtype, writer.dim)
    try:
        with ray_session(address) as ray:
            it = embed_on_ray(queue, m, ray, batch_size=batch_size, max_pixels=max_pixels, draft_size=draft_size,
                              crash_spec=worker_crash, target=target,
                              shard_rows=writer.every if writer.every else None)
            while True:
                t = time.perf_counter()
                b = next(it, None)
                summary.seconds["model"] += time.perf_counter() - t
                if b is None:
                    break
                if not len(b):
                    continue
                crash("decode")
                crash("embed")
                for i, reason in b.failures:
                    summary.failed += 1
                    summary.failures.append((display_path(paths[i]), reason))
                t = time.perf_counter()
                for ws, rows in b.shards:
                    writer.push_shard(writer.shards.adopt(ws.file, ws.ids_file, ws.ids, sha256=ws.sha256,
                                                          ids_sha256=ws.ids_sha256, nbytes=ws.nbytes), rows)
                writer.stats.seconds += time.perf_counter() - t
                writer.push(b.ids, b.vectors, b.ok, b.failed)
                done += len(b)
                report("embed", done, len(queue))
        if writer.pending():
            writer.checkpoint()
    finally:
        close_target(target)
    clean_orphans(writer.catalog, writer.fingerprint)  # shards of batches Ray retried, never committed
