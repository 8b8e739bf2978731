"""What each metric says about a pair of images: every registered metric at once, unavailable ones explained.

The library function behind ``lookalike compare`` and the app's "Compare metrics" view (2AFC scoring lives in
``lookalike.judge.eval``). Nothing here prints or caches, and by default nothing downloads: a metric whose weight
files are not on disk is reported with the command that fetches them. The caller may pass a caching ``load`` function.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from PIL import Image

from lookalike.common.errors import WeightsNotFound
from lookalike.metric import Metric, get_metric_cfg, list_metrics, load_metric
from lookalike.metric.weights import weights_paths

_logger = logging.getLogger(__name__)

STATUS_OK = "ok"
STATUS_UNAVAILABLE = "unavailable"
STATUS_ERROR = "error"


def describe_direction(lower_is_better: bool) -> str:
    """"lower = more similar" or "higher = more similar"."""
    return "lower = more similar" if lower_is_better else "higher = more similar"


@dataclass(frozen=True)
class MetricValue:
    """One metric's verdict on a pair of images.

    Attributes:
        metric: registry name.
        value: the distance or score in ``unit`` (None when the metric could not run).
        unit: what the value measures ("1 - cosine", "dB", "SSIM", ...).
        lower_is_better: True when a lower value means more similar.
        kind: "embedding" or "pairwise".
        family: "dreamsim", "backbone", "cnn", "baseline", ...
        status: "ok", "unavailable" (weights not present) or "error" (it failed on these images).
        reason: why it could not run, with the command that fixes it when there is one.
    """

    metric: str
    value: float | None
    unit: str
    lower_is_better: bool
    kind: str
    family: str
    status: str = STATUS_OK
    reason: str = ""

    @property
    def direction(self) -> str:
        return describe_direction(self.lower_is_better)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready (a non-finite value, e.g. the PSNR of identical images, becomes a string such as "inf")."""
        value: object = self.value
        if self.value is not None and not math.isfinite(self.value):
            value = str(self.value)
        return {"metric": self.metric, "value": value, "unit": self.unit, "direction": self.direction,
                "kind": self.kind, "family": self.family, "status": self.status, "reason": self.reason}


def missing_weights_reason(name: str, weights: str | os.PathLike[str] | None = None) -> str | None:
    """Why metric ``name`` cannot be loaded from disk right now (None when every weight file is present).

    Only looks for files: nothing is loaded, hashed or downloaded.

    Raises:
        KeyError: unknown metric name.
    """
    missing = [row["path"] for row in weights_paths(name, weights=weights) if not row["present"]]
    if not missing:
        return None
    return (f"weights not present ({', '.join(missing)}); fetch them with: lookalike weights download {name}")


def list_compare_metrics(*, include_hidden: bool = False) -> list[str]:
    """Registered metric names for comparisons, without the test-only registrations unless ``include_hidden``."""
    return list_metrics(include_test=include_hidden)


def pair_distance(metric: Metric, img_a: Image.Image, img_b: Image.Image) -> float:
    """``metric``'s value for one pair of PIL images (in ``metric.cfg.unit``; see ``metric.lower_is_better``)."""
    xa = metric.preprocess(img_a.convert("RGB"))[None]
    xb = metric.preprocess(img_b.convert("RGB"))[None]
    with torch.inference_mode():
        return float(metric.distance(xa, xb)[0])


def _value_row(name: str, value: float | None, status: str = STATUS_OK, reason: str = "") -> MetricValue:
    cfg = get_metric_cfg(name)
    return MetricValue(metric=name, value=value, unit=cfg.unit, lower_is_better=cfg.lower_is_better, kind=cfg.kind,
                       family=cfg.family, status=status, reason=reason)


def compare_all(
    img_a: Image.Image,
    img_b: Image.Image,
    *,
    metrics: Iterable[str] | None = None,
    load: Callable[[str], Metric] | None = None,
    weights: str | os.PathLike[str] | None = None,
    download: bool = False,
) -> list[MetricValue]:
    """Measure one pair of images with many metrics; metrics that cannot run are reported, not raised.

    Args:
        img_a: first image (PIL; converted to RGB).
        img_b: second image.
        metrics: registry names; default every registered metric except test-only ones.
        load: ``name -> Metric`` (pass a caching loader to reuse models across calls); default ``load_metric``
            with ``weights``.
        weights: folder searched first for weight files.
        download: allow weight downloads (possibly GB-sized); by default missing files are reported instead.

    Returns:
        One MetricValue per metric, in the order given (sorted names by default). ``status`` says whether it ran;
        ``value`` is a distance when ``lower_is_better`` is True (1 - cosine in [0, 2] for embedding metrics,
        higher means more different) and a similarity otherwise (PSNR in dB, SSIM in [-1, 1]).

    Raises:
        KeyError: an unknown metric name.
    """
    names = list(metrics) if metrics is not None else list_compare_metrics()
    for name in names:
        get_metric_cfg(name)  # unknown names raise KeyError before any work
    if load is None:
        def load(name: str) -> Metric:
            return load_metric(name, weights=weights)
    out: list[MetricValue] = []
    for name in names:
        reason = None if download else missing_weights_reason(name, weights)
        if reason is not None:
            out.append(_value_row(name, None, STATUS_UNAVAILABLE, reason))
            continue
        try:
            value = pair_distance(load(name), img_a, img_b)
        except WeightsNotFound as e:
            out.append(_value_row(name, None, STATUS_UNAVAILABLE, f"weights not present; fetch them with: "
                                                                  f"lookalike weights download {e.metric}"))
            continue
        except (ValueError, TypeError, RuntimeError, OSError, ImportError) as e:
            _logger.warning("metric %s failed on this pair: %s", name, e)
            out.append(_value_row(name, None, STATUS_ERROR, f"{type(e).__name__}: {e}"))
            continue
        out.append(_value_row(name, value))
    return out
