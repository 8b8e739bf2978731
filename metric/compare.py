"""Compare two images under many metrics at once: one row per metric, with its direction, or why it cannot run."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from PIL import Image

from lookalike.metric._base import Metric
from lookalike.metric._builders import required_files
from lookalike.metric._factory import load_metric
from lookalike.metric._hub import WeightsNotFound, find_weight_file
from lookalike.metric._registry import get_metric_cfg, list_metrics

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompareRow:
    """One metric's verdict on a pair of images.

    ``value`` is None when the metric could not run; ``reason`` then says why (e.g. missing weights and the
    command that fetches them).
    """

    metric: str
    value: float | None
    lower_is_better: bool
    unit: str
    kind: str
    description: str
    reason: str = ""

    @property
    def direction(self) -> str:
        return "lower = more similar" if self.lower_is_better else "higher = more similar"

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: non-finite values (PSNR of identical images is +inf) become strings."""
        d: dict[str, object] = asdict(self)
        d["direction"] = self.direction
        if self.value is not None and not math.isfinite(self.value):
            d["value"] = str(self.value)
        return d


def default_compare_metrics() -> list[str]:
    """Every registered metric except the random test models."""
    return [n for n in list_metrics() if get_metric_cfg(n).family != "test"]


def compare_images(
    img_a: Image.Image,
    img_b: Image.Image,
    metrics: Sequence[str] | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    weights: str | os.PathLike[str] | None = None,
    loader: Callable[[str], Metric] | None = None,
    download: bool = False,
) -> list[CompareRow]:
    """Distance between two images under each metric.

    Args:
        img_a: a PIL image.
        img_b: a PIL image (any size; each metric's preprocess resizes).
        metrics: names from ``list_metrics()``; default: all but test models.
        device: device for the models (default cuda > mps > cpu).
        dtype: "fp32" (default), "bf16", "fp16".
        weights: folder searched first for weight files.
        loader: optional ``name -> Metric`` (e.g. a cache); default ``load_metric``.
        download: allow weight downloads; by default a metric whose files are not on disk is reported as such
            instead of starting a (possibly GB-sized) download.

    Returns:
        One row per metric, in the order given: a distance (lower = more similar) or, for PSNR / SSIM, a
        similarity (higher = more similar). Metrics that cannot run get ``value=None`` and the reason.

    Raises:
        KeyError: an unknown metric name (with close matches), before any model loads.
    """
    names = list(metrics) if metrics else default_compare_metrics()
    cfgs = [get_metric_cfg(n) for n in names]
    load = loader or (lambda n: load_metric(n, device=device, dtype=dtype, weights=weights))
    rows = []
    for cfg in cfgs:
        try:
            if not download:
                missing = [wf for wf in required_files(cfg) if find_weight_file(wf, weights) is None]
                if missing:
                    raise WeightsNotFound(cfg.name, missing, [])
            metric = load(cfg.name)
        except WeightsNotFound as e:
            files = ", ".join(wf.path for wf in e.missing)
            rows.append(CompareRow(cfg.name, None, cfg.lower_is_better, cfg.unit, cfg.kind, cfg.description,
                                   reason=f"weights not present ({files}); fetch: lookalike weights download "
                                   f"{cfg.name}"))
            continue
        a = metric.preprocess(img_a).unsqueeze(0)
        b = metric.preprocess(img_b).unsqueeze(0)
        value = float(metric.distance(a, b)[0])
        rows.append(CompareRow(cfg.name, value, metric.lower_is_better, cfg.unit, cfg.kind, cfg.description))
        _logger.debug("%s: %s", cfg.name, value)
    return rows
