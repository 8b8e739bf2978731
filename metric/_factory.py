"""load_metric: the one entry point from a registered name to a ready Metric."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from lookalike.metric._base import Metric, get_device, get_dtype
from lookalike.metric._registry import get_builder, get_metric_cfg

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
        dtype: "fp32" (default), "bf16" or "fp16". Reduced precision casts the weights on accelerators and uses
            autocast on the CPU; embeddings are always returned as float32.
        weights: a folder holding the metric's weight files (e.g. an existing dreamsim cache folder, or an adapter
            folder written by ``lookalike train``). Files not found there are looked up in ``$LOOKALIKE_HOME``
            (default ``~/.cache/lookalike``).
        **options: metric options, for the metrics that take any (e.g. ``load_metric("diffsim", target_step=900,
            prompt="An image of a dog")``); each metric validates its own, and a metric that takes none refuses them.

    Returns:
        A Metric. ``distance(a, b)`` is higher for more different images when ``lower_is_better`` is True.

    Raises:
        KeyError: unknown name (the message suggests close matches).
        WeightsNotFound: weight files missing; the message lists them, their URLs and the download command.
        ValueError: a weight file that does not fit the model, or a bad device / dtype.
    """
    cfg = get_metric_cfg(name)
    dev = get_device(device)
    dt = get_dtype(dtype)
    builder = get_builder(cfg.builder)
    if options:
        option_type = getattr(builder, "option_type", None)
        if option_type is None:
            raise ValueError(f"metric {name!r} takes no options, got {sorted(options)}")
        metric = builder(cfg, device=dev, dtype=dt, weights=weights, **options)
    else:
        metric = builder(cfg, device=dev, dtype=dt, weights=weights)
    _logger.info("loaded metric %s on %s (%s), fingerprint %s", name, dev, dt, metric.fingerprint)
    return metric
