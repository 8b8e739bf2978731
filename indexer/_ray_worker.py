"""The Ray workers' side of ``build_index(..., ray=...)``: the decode task, the embedding actor, and the worker
crash hook the tests use (see ``_ray`` for the driver's side).

Everything here is shipped to Ray's worker processes (pickled by Ray Data): the decode task reads each file with
the local DataLoader's code and resizes it to the metric's input; the actor loads the metric once, embeds the
batches it is handed and, when it can reach the index folder, writes their shard (``_ray_shards``).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lookalike.common.errors import IndexMismatch
from lookalike.indexer._ray_shards import SHARD_COLUMNS, ShardTarget, WorkerShards

if TYPE_CHECKING:
    from lookalike.metric import Metric

_logger = logging.getLogger(__name__)

#: Test hook: kill a Ray *worker* (not the driver) once, at the n-th decode block or embedding batch it handles.
#: Spec "ray_decode:n", "ray_embed:n" (comma-separated), from ``crash_at`` or ``$LOOKALIKE_RAY_KILL``.
WORKER_CRASH_POINTS = ("ray_decode", "ray_embed", "ray_shard")
WORKER_CRASH_ENV = "LOOKALIKE_RAY_KILL"
#: Where the once-markers of the worker crash hook go (default: a temporary folder of the run); tests read them.
WORKER_CRASH_DIR_ENV = "LOOKALIKE_RAY_KILL_DIR"

_passes: dict[str, int] = {}  # per worker process: how often each worker crash point was passed

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
    """The embedding actor: loads the metric once, then embeds the batches Ray Data hands it, and writes their
    shard when it can reach the index folder (``_ray_shards``).

    Args:
        name: the registered metric name (loaded with ``load_metric`` on this actor's device: the GPU Ray gave it,
            else the CPU).
        dtype: the driver's precision.
        fingerprint: the driver's weight fingerprint; a worker that resolves other weight files refuses to embed.
        as_uint8: pixels arrive as uint8 (divide by 255 as the local transform does) or as float32.
        crash: the worker crash hook (tests).
        cpu_threads: torch threads of a CPU actor (0: leave Ray's setting, one thread per CPU it holds).
        micro: images per forward pass (a Ray batch is cut into these).
        target: where to write shards (None: vectors go back to the driver).
    """

    def __init__(self, name: str, dtype: torch.dtype, fingerprint: str, as_uint8: bool, crash: WorkerCrash,
                 cpu_threads: int = 0, micro: int = 32, target: ShardTarget | None = None):
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
        self.micro = max(1, micro)
        self.shards = WorkerShards(target)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.asarray(batch["ok"], dtype=bool)
        dim = int(self.metric.dim or 0)
        vecs = np.zeros((len(ok), dim), dtype=np.float32)
        rows = np.flatnonzero(ok)
        for s in range(0, max(len(rows), 1), self.micro):
            part = rows[s:s + self.micro]
            if len(part):
                x = torch.from_numpy(np.ascontiguousarray(batch["pixels"][part]))
                x = x.float().div_(255.0) if self.as_uint8 else x.float()
                with torch.inference_mode():
                    vecs[part] = self.metric.embed(x.to(self.metric.device)).float().cpu().numpy()
            self.crash("ray_embed")
        out = {k: batch[k] for k in ("id", "ok", "width", "height", "format", "error")}
        if not self.shards.usable:
            out["vector"] = vecs
            return out
        # Every result of an actor that writes shards has the same columns and types, whether it wrote one or not
        # (an empty batch, every image failed): Ray Data concatenates an actor's results into one block, and a
        # "vector" column present in some of them only becomes a tensor column with null rows the driver cannot read.
        for c in SHARD_COLUMNS:
            out[c] = np.zeros(len(ok), np.int64) if c == "shard_bytes" else np.full(len(ok), "", dtype=object)
        if len(rows):
            cols = self.shards.write(np.asarray(batch["id"], np.int64)[rows], vecs[rows])
            for c, v in cols.items():
                out[c][rows] = int(v[0]) if c == "shard_bytes" else v[0]
            self.crash("ray_shard")  # written, not returned: an orphan for the driver to delete
        return out
