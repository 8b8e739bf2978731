"""load_metric: the one entry point from a registered name to a ready Metric."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from lookalike.metric._base import Metric, get_device
from lookalike.metric._precision import resolve_dtype
from lookalike.metric._registry import get_builder, get_metric_cfg, with_options

_logger = logging.getLogger(__name__)


def load_metric(
    name: str,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    weights: str | os.PathLike[str] | None = None,
    **options: Any,
) -> Metric:
    """Build a registered metric, ready for inference (``eval()``, no grad, LoRA merged into the weights).

    Args:
        name: a name from ``list_metrics()`` (e.g. "dreamsim", "dreamsim_dino_vitb16", "efficientnet_lite0", "psnr").
        device: "cuda", "mps", "cpu" or a torch.device; default cuda > mps > cpu.
        dtype: "fp32" (default), "bf16", "fp16" or "auto" (bf16 where the device runs it natively: CUDA compute
            capability >= 8, CPUs with AMX-BF16 / AVX-512 BF16; fp32 elsewhere, and for metrics whose config sets
            ``auto_bf16=False``; see ``resolve_dtype``). Reduced
            precision casts the weights on accelerators and uses autocast on the CPU; embeddings are always returned
            as float32.
        weights: a folder holding the metric's weight files (e.g. an existing dreamsim cache folder, or an adapter
            folder written by ``lookalike train``). Files not found there are looked up in ``$LOOKALIKE_HOME``
            (default ``~/.cache/lookalike``).
        **options: overrides of the builder's options for this load (e.g. ``center=False`` for the perceptual
            metrics); a name the builder does not have is an error.

    Returns:
        A Metric. ``distance(a, b)`` is higher for more different images when ``lower_is_better`` is True.

    Raises:
        KeyError: unknown name (the message suggests close matches).
        WeightsNotFound: weight files missing; the message lists them, their URLs and the download command.
        ValueError: a weight file that does not fit the model, or a bad device / dtype.
        ConfigError: an option the metric's builder does not have.
    """
    cfg = get_metric_cfg(name)
    if options:
        cfg = with_options(cfg, options)
    dev, dt = resolve_placement(name, device=device, dtype=dtype)
    metric = get_builder(cfg.builder)(cfg, device=dev, dtype=dt, weights=weights)
    _logger.info("loaded metric %s on %s (%s), fingerprint %s", name, dev, dt, metric.fingerprint)
    return metric


def resolve_placement(
    name: str, *, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
) -> tuple[torch.device, torch.dtype]:
    """The device and precision ``load_metric(name, device=device, dtype=dtype)`` would use, without loading it.

    Args:
        name: a registered metric name.
        device: as for ``load_metric`` (default cuda > mps > cpu).
        dtype: as for ``load_metric`` ("auto" honours the metric's ``auto_bf16``).

    Returns:
        ``(device, dtype)``.

    Raises:
        KeyError: unknown name.
        ValueError: a bad device or dtype.
    """
    cfg = get_metric_cfg(name)
    dev = get_device(device)
    auto = isinstance(dtype, str) and dtype.strip().lower() == "auto"
    return dev, resolve_dtype("fp32" if auto and not cfg.auto_bf16 else dtype, dev)
