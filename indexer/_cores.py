"""How an indexing run shares the CPU cores between the decoding workers and the model.

On a GPU the model needs one core to feed it and every other core can decode. On the CPU the model and the decoders
compete for the same cores, and over-subscribing them hurts twice: oneDNN's threads wait for each other at every
layer, so one preempted thread stalls the others. The plan therefore gives the decoders about a quarter of the cores
(one process at least where there are two or more; decoding a photo and resizing it to 224 px costs a few
milliseconds, a fraction of any model's time per image) and the model the rest, and it restores the torch thread
count when the run ends. ``bench/index.py`` measures the outcome against the model alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from lookalike.common.errors import InvalidArgument

_logger = logging.getLogger(__name__)

MAX_WORKERS = 8


@dataclass(frozen=True)
class CorePlan:
    """Decoding processes, torch threads of the model, and batches each decoder prepares ahead.

    Attributes:
        workers: DataLoader worker processes (0: decode in the main process).
        threads: torch intra-op threads for the model in the main process.
        prefetch: batches each worker keeps ready.
    """

    workers: int
    threads: int
    prefetch: int = 2


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def plan_cores(device: torch.device, *, workers: int | None = None, threads: int | None = None,
               cpus: int | None = None) -> CorePlan:
    """Choose workers / threads / prefetch for an indexing run on ``device``; explicit values are kept.

    Args:
        device: where the model runs.
        workers: decoding processes, or None to choose.
        threads: torch threads for the model, or None to choose.
        cpus: cores to plan for (default: ``available_cpus()``).

    Returns:
        A CorePlan. CUDA / MPS: workers = cpus - 1 (at most 8), the model keeps torch's thread count, prefetch 4.
        CPU: workers = cpus // 4 (at least 1 from 2 cores up, at most 8), threads = the remaining cores (all of
        them on 2-3 cores, where a single decoder is mostly idle and taking a core from the model would halve it),
        prefetch 2.
    """
    n = available_cpus() if cpus is None else max(1, cpus)
    if workers is not None and workers < 0:
        raise InvalidArgument(f"workers must be >= 0, got {workers}")
    if threads is not None and threads < 1:
        raise InvalidArgument(f"threads must be >= 1, got {threads}")
    if device.type != "cpu":
        w = min(MAX_WORKERS, n - 1) if workers is None else workers
        return CorePlan(workers=max(0, w), threads=threads or torch.get_num_threads(), prefetch=4)
    w = (0 if n < 2 else min(MAX_WORKERS, max(1, n // 4))) if workers is None else workers
    t = threads if threads is not None else (n if n <= 3 else max(1, n - w))
    return CorePlan(workers=w, threads=t, prefetch=2)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``, then restore the previous count."""
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
        _logger.debug("torch threads %d -> %d for this run", before, n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
