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
import signal
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from lookalike.common.errors import IndexMismatch, InvalidArgument, LookalikeError
from lookalike.indexer._catalog import STATUS_FAILED, STATUS_OK

if TYPE_CHECKING:
    from lookalike.metric import Metric

_logger = logging.getLogger(__name__)

#: The one-line answer when ``--ray`` is asked for and Ray is not installed.
RAY_MISSING = 'Ray is not installed; install it with: pip install "lookalike[ray]"  (or: pip install "ray[data]")'

#: Test hook: kill a Ray *worker* (not the driver) once, at the n-th decode block or embedding batch it handles.
#: Spec "ray_decode:n", "ray_embed:n" (comma-separated), from ``crash_at`` or ``$LOOKALIKE_RAY_KILL``.
WORKER_CRASH_POINTS = ("ray_decode", "ray_embed")
WORKER_CRASH_ENV = "LOOKALIKE_RAY_KILL"
#: Where the once-markers of the worker crash hook go (default: a temporary folder of the run); tests read them.
WORKER_CRASH_DIR_ENV = "LOOKALIKE_RAY_KILL_DIR"

_passes: dict[str, int] = {}  # per worker process: how often each worker crash point was passed

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


class WorkerCrash:
    """Kill a Ray worker process (SIGKILL) at the n-th decode block / embedding batch it handles, once per run.

    Passes are counted per worker process (a module global: Ray reuses worker processes across tasks). "Once"
    holds across Ray's retries: the first worker to get there creates a marker file (``O_EXCL``) in ``marker_dir``
    before it dies; the retried work finds the marker and goes on. Never set outside tests.
    """

    def __init__(self, spec: str | None, marker_dir: str | None):
        self.targets: dict[str, int] = {}
        for part in (spec or "").split(","):
            name, _, n = part.strip().partition(":")
            if name in WORKER_CRASH_POINTS:
                self.targets[name] = int(n or 1)
        self.marker_dir = marker_dir

    def __call__(self, name: str) -> None:
        if name not in self.targets or self.marker_dir is None:
            return
        _passes[name] = _passes.get(name, 0) + 1
        if _passes[name] < self.targets[name]:
            return
        try:
            fd = os.open(os.path.join(self.marker_dir, f"{name}.killed"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        _logger.warning("worker crash hook: SIGKILL of Ray worker %d at %s", os.getpid(), name)
        os.kill(os.getpid(), signal.SIGKILL)


def split_crash_spec(spec: str | None) -> tuple[str | None, str | None]:
    """Split a ``crash_at`` spec into (driver points, Ray worker points)."""
    driver, worker = [], []
    for part in (spec or "").split(","):
        part = part.strip()
        if part:
            (worker if part.partition(":")[0] in WORKER_CRASH_POINTS else driver).append(part)
    return (",".join(driver) or None), (",".join(worker) or os.environ.get(WORKER_CRASH_ENV) or None)


def metric_transform(m: Metric) -> Callable[[Any], torch.Tensor]:
    """The metric's PIL → tensor transform without the model (built from its PreprocessCfg, the one description
    that CPU and GPU decoding share), to ship to the decode tasks."""
    pre = getattr(getattr(m, "cfg", None), "preprocess", None)
    if pre is not None:
        from lookalike.data.transforms import build_transform

        return build_transform(pre)
    return m.preprocess  # a Metric without a cfg: ship its own method (and model) as is


def transform_is_uint8(transform: Callable[[Any], torch.Tensor], size: int) -> bool:
    """True when ``transform`` outputs exactly ``uint8 / 255`` (then pixels travel as uint8, 4x smaller, and the
    embedding actor recovers the very same floats)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (size + 7, size + 3, 3), dtype=np.uint8))
    x = transform(img)
    if x.dtype != torch.float32:
        return False
    u8 = torch.round(x * 255.0).clamp_(0, 255).to(torch.uint8)
    return bool(torch.equal(u8.float().div_(255.0), x))


def _decode_block(batch: dict[str, np.ndarray], *, transform: Callable[[Any], torch.Tensor], size: int,
                  as_uint8: bool, max_pixels: int | None, draft_size: int | None, crash: WorkerCrash
                  ) -> dict[str, np.ndarray]:
    """One Ray Data decode task: work items (id, path) → fixed-size pixels + what decoding learnt (or why not)."""
    from lookalike.data.loader import DecodeFailure, ImageFileDataset

    ids = np.asarray(batch["id"], dtype=np.int64)
    paths = [str(p) for p in batch["path"]]
    crash("ray_decode")
    dataset = ImageFileDataset(list(zip(ids.tolist(), paths, strict=True)), transform, max_pixels=max_pixels,
                               draft_size=draft_size)
    n = len(ids)
    pixels = np.zeros((n, 3, size, size), dtype=np.uint8 if as_uint8 else np.float32)
    ok = np.zeros(n, dtype=bool)
    width = np.zeros(n, dtype=np.int64)
    height = np.zeros(n, dtype=np.int64)
    fmt: list[str] = [""] * n
    error: list[str] = [""] * n
    for j in range(n):
        _, x, info = dataset[j]
        if x is None or isinstance(info, DecodeFailure):
            error[j] = info.reason  # type: ignore[union-attr]
            continue
        if tuple(x.shape) != (3, size, size):
            error[j] = f"transform gave shape {tuple(x.shape)}, expected (3, {size}, {size})"
            continue
        if as_uint8:
            pixels[j] = torch.round(x * 255.0).clamp_(0, 255).to(torch.uint8).numpy()
        else:
            pixels[j] = x.numpy()
        ok[j] = True
        width[j], height[j], fmt[j] = info.width, info.height, info.format[:16]
    return {"id": ids, "pixels": pixels, "ok": ok, "width": width, "height": height,
            "format": np.array(fmt, dtype=object), "error": np.array(error, dtype=object)}


class _Embedder:
    """The embedding actor: loads the metric once, then embeds the batches Ray Data hands it.

    Args:
        name: the registered metric name (loaded with ``load_metric`` on this actor's device: the GPU Ray gave it,
            else the CPU).
        dtype: the driver's precision.
        fingerprint: the driver's weight fingerprint; a worker that resolves other weight files refuses to embed.
        as_uint8: pixels arrive as uint8 (divide by 255 as the local transform does) or as float32.
        crash: the worker crash hook (tests).
        cpu_threads: torch threads of a CPU actor (0: leave Ray's setting, one thread per CPU it holds).
    """

    def __init__(self, name: str, dtype: torch.dtype, fingerprint: str, as_uint8: bool, crash: WorkerCrash,
                 cpu_threads: int = 0):
        from lookalike.metric import load_metric

        if cpu_threads > 0 and not torch.cuda.is_available():
            # Ray sets OMP_NUM_THREADS to the actor's 1 CPU; a CPU actor alone on its node may use the node's cores,
            # as the local path's model does (decode tasks are a small share of the work).
            torch.set_num_threads(max(1, min(cpu_threads, os.cpu_count() or 1)))
        self.metric = load_metric(name, dtype=dtype)
        if self.metric.fingerprint != fingerprint:
            raise IndexMismatch(
                f"Ray worker on {os.uname().nodename} resolved other weights for {name!r} (fingerprint "
                f"{self.metric.fingerprint}, driver {fingerprint})",
                hint="give every node the same weight files ($LOOKALIKE_HOME)")
        self.as_uint8 = as_uint8
        self.crash = crash

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.asarray(batch["ok"], dtype=bool)
        dim = int(self.metric.dim or 0)
        vecs = np.zeros((len(ok), dim), dtype=np.float32)
        if ok.any():
            x = torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok]))
            x = x.float().div_(255.0) if self.as_uint8 else x.float()
            with torch.inference_mode():
                vecs[ok] = self.metric.embed(x.to(self.metric.device)).float().cpu().numpy()
        self.crash("ray_embed")
        out = {k: batch[k] for k in ("id", "ok", "width", "height", "format", "error")}
        out["vector"] = vecs
        return out


@dataclass
class RayBatch:
    """One batch of results streamed back to the driver (decode failures included; duplicates already dropped)."""

    ids: list[int] = field(default_factory=list)
    vectors: np.ndarray | None = None
    ok: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)
    duplicates: int = 0

    def __len__(self) -> int:
        return len(self.ids) + len(self.failed)


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
        ds = ds.map_batches(
            _Embedder, batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=n_actors),
            fn_constructor_kwargs={"name": m.name, "dtype": m.dtype, "fingerprint": m.fingerprint,
                                   "as_uint8": as_uint8, "crash": crash, "cpu_threads": cpu_threads},
            **actor_args)
        _logger.info("Ray: %d work items in %d decode blocks, %d embedding actor(s) (%s), batch %d, pixels as %s",
                     len(items), len(tables), n_actors, "GPU" if gpus >= 1 else "CPU", batch_size,
                     "uint8" if as_uint8 else "float32")
        wanted = set(ids.tolist())
        seen: set[int] = set()
        for out in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
            yield _to_batch(out, wanted, seen)
        missing = wanted - seen
        if missing:  # Ray finished without an error yet lost rows: never silently
            raise RuntimeError(f"Ray run returned {len(seen)} of {len(wanted)} images; {len(missing)} missing "
                               f"(first ids {sorted(missing)[:5]}); re-run to embed them")


def _to_batch(out: dict[str, np.ndarray], wanted: set[int], seen: set[int]) -> RayBatch:
    """One result batch (numpy columns) → catalog updates; ids already received (a retried batch) are dropped."""
    b = RayBatch()
    ids = np.asarray(out["id"]).tolist()
    ok = np.asarray(out["ok"]).tolist()
    width = np.asarray(out["width"]).tolist()
    height = np.asarray(out["height"]).tolist()
    fmt, err = list(out["format"]), list(out["error"])
    keep_rows = []
    for j, i in enumerate(ids):
        if i in seen or i not in wanted:
            b.duplicates += 1
            continue
        seen.add(i)
        if ok[j]:
            keep_rows.append(j)
            b.ids.append(i)
            b.ok.append({"id": i, "status": STATUS_OK, "error": None, "width": width[j], "height": height[j],
                         "format": str(fmt[j])})
        else:
            reason = str(err[j])
            b.failed.append({"id": i, "status": STATUS_FAILED, "error": reason})
            b.failures.append((i, reason))
    if keep_rows:
        vec = np.asarray(out["vector"], dtype=np.float32)
        b.vectors = vec if len(keep_rows) == len(vec) else np.ascontiguousarray(vec[keep_rows])
    if b.duplicates:
        _logger.info("dropped %d rows already received (a batch retried by Ray)", b.duplicates)
    return b


class _Writer(Protocol):
    def push(self, ids: list[int], xb: np.ndarray | None, rows: Sequence[dict] = (),
             failed: Sequence[dict] = ()) -> None: ...


def run_on_ray(
    queue: Sequence[tuple[int, str]],
    m: Metric,
    writer: _Writer,
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
    shard), so the crash-safety rules
    and the driver crash points ("decode" / "embed" fire once per received batch) are the same; ``report`` is the
    run's progress ("embed", done, total). The seconds the driver waits for results are counted as ``model`` time
    (decode + embed run remotely).
    """
    from lookalike.data.image_folder import display_path

    paths = dict(queue)
    done = 0
    with ray_session(address) as ray:
        it = embed_on_ray(queue, m, ray, batch_size=batch_size, max_pixels=max_pixels, draft_size=draft_size,
                          crash_spec=worker_crash)
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
            writer.push(b.ids, b.vectors, b.ok, b.failed)
            done += len(b)
            report("embed", done, len(queue))
