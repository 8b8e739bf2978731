"""From human same/different judgements to a dedup threshold: precision/recall curve, threshold at a target
precision, and a PNG plot (drawn with Pillow, no plotting library needed).

A pair counts as a predicted duplicate when its distance is ``<= threshold`` (``>=`` for metrics where higher means
more similar, such as PSNR). Judgements may be soft: ``same`` = 0.8 counts as 0.8 of a true pair and 0.2 of a false
one.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.common.errors import InvalidArgument
from lookalike.data.triplets import Pair
from lookalike.judge.eval import pair_distances

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PRCurve:
    """Precision and recall of "duplicate" predictions at every distinct threshold.

    Attributes:
        thresholds: (K,) candidate thresholds, from the most to the least strict.
        precision: (K,) precision at each threshold.
        recall: (K,) recall at each threshold.
        lower_is_better: True: a pair is predicted the same when its value <= threshold; False: >=.
    """

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    lower_is_better: bool = True


@dataclass(frozen=True)
class Calibration:
    """The threshold reaching a target precision on judged pairs.

    Attributes:
        metric: metric name.
        target_precision: the precision asked for.
        threshold: the loosest threshold whose precision reaches the target (None: no threshold does).
        precision: precision at ``threshold`` (or the best precision reached, when ``threshold`` is None).
        recall: recall at ``threshold`` (or at the best precision).
        count: number of judged pairs.
        positives: sum of the ``same`` judgements (pairs judged the same).
        lower_is_better: direction of the metric.
        curve: the full precision/recall curve.
    """

    metric: str
    target_precision: float
    threshold: float | None
    precision: float
    recall: float
    count: int
    positives: float
    lower_is_better: bool = True
    curve: PRCurve | None = field(default=None, repr=False)

    def to_dict(self, *, with_curve: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {k: getattr(self, k) for k in ("metric", "target_precision", "threshold", "precision",
                                                           "recall", "count", "positives", "lower_is_better")}
        if with_curve and self.curve is not None:
            d["curve"] = {"thresholds": self.curve.thresholds.tolist(), "precision": self.curve.precision.tolist(),
                          "recall": self.curve.recall.tolist()}
        return d


def precision_recall_curve(values: Any, same: Any, *, lower_is_better: bool = True) -> PRCurve:
    """Precision and recall of "same" predictions at each distinct metric value used as a threshold.

    Args:
        values: (N,) metric values per pair.
        same: (N,) fraction of people who judged each pair the same, in [0, 1].
        lower_is_better: True for distances (same when value <= threshold), False for similarities.

    Returns:
        A PRCurve (thresholds from strict to loose; recall is non-decreasing).

    Raises:
        ValueError: shapes differ, NaN, ``same`` outside [0, 1], or no pair judged the same.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    s = np.asarray(same, dtype=np.float64).reshape(-1)
    if v.shape != s.shape:
        raise InvalidArgument(f"values and same must have the same length, got {v.size} and {s.size}")
    if np.isnan(v).any() or np.isnan(s).any():
        raise InvalidArgument("values and same must not hold NaN")
    if ((s < 0) | (s > 1)).any():
        raise InvalidArgument("same must be in [0, 1]")
    if s.sum() <= 0:
        raise InvalidArgument("no pair was judged the same: precision/recall are undefined; add pairs with same = 1")
    key = v if lower_is_better else -v
    order = np.argsort(key, kind="stable")
    k, ss = key[order], s[order]
    tp = np.cumsum(ss)
    fp = np.cumsum(1.0 - ss)
    last = np.r_[np.flatnonzero(k[1:] != k[:-1]), k.size - 1]  # last index of each group of equal values
    thresholds = v[order][last]
    return PRCurve(thresholds=thresholds, precision=tp[last] / (tp[last] + fp[last]), recall=tp[last] / s.sum(),
                   lower_is_better=lower_is_better)


def threshold_at_precision(curve: PRCurve, target_precision: float) -> tuple[float | None, float, float]:
    """The loosest threshold (highest recall) whose precision is at least ``target_precision``.

    Returns:
        (threshold, precision, recall); threshold None when no threshold reaches the target, with the best
        precision found and its recall.
    """
    if not 0.0 < target_precision <= 1.0:
        raise InvalidArgument(f"target precision must be in (0, 1], got {target_precision}")
    ok = np.flatnonzero(curve.precision >= target_precision - 1e-12)
    if ok.size == 0:
        j = int(np.argmax(curve.precision))
        return None, float(curve.precision[j]), float(curve.recall[j])
    j = int(ok[-1])
    return float(curve.thresholds[j]), float(curve.precision[j]), float(curve.recall[j])


def calibrate_threshold(metric: Any, pairs: Sequence[Pair], *, target_precision: float = 0.95,
                        center: bool | None = None, batch_size: int = 32, workers: int = 0,
                        progress: bool = False) -> Calibration:
    """Distances for judged pairs → precision/recall curve → the threshold reaching ``target_precision``.

    Args:
        metric: a loaded Metric.
        pairs: a PairSet (``a,b,same`` CSV) or BAPPS JND pairs.
        target_precision: the precision the threshold must reach, in (0, 1].
        center: mean-centring override for perceptual metrics (None: the metric's default, which ``lookalike
            index`` uses too: keep it when the threshold is meant for an index).
        batch_size: images per batch.
        workers: decoding processes.
        progress: progress bar on stderr.

    Returns:
        A Calibration (``threshold`` None when the target precision is out of reach).
    """
    if len(pairs) == 0:
        raise InvalidArgument("no pairs to calibrate on")
    d = pair_distances(metric, [(q.a, q.b) for q in pairs], center=center, batch_size=batch_size, workers=workers,
                       progress=progress)
    return calibrate_distances(metric.name, d, [q.same for q in pairs], target_precision=target_precision,
                               lower_is_better=metric.lower_is_better)


def calibrate_distances(metric: str, values: Any, same: Any, *, target_precision: float = 0.95,
                        lower_is_better: bool = True) -> Calibration:
    """Precision/recall curve of judged pairs whose metric values are known → the threshold reaching
    ``target_precision`` (e.g. the distances of an index's labelled pairs, ``lookalike.indexer.labelled_distances``).

    Args:
        metric: the metric name (for the report).
        values: (N,) metric value of each pair.
        same: (N,) verdicts in [0, 1] (1 = judged the same).
        target_precision: the precision the threshold must reach, in (0, 1].
        lower_is_better: True for distances.

    Returns:
        A Calibration (``threshold`` None when the target precision is out of reach).

    Raises:
        ValueError: no pair, no pair judged the same, or bad values.
    """
    d = np.asarray(values, dtype=np.float64).reshape(-1)
    if d.size == 0:
        raise InvalidArgument("no pairs to calibrate on")
    same_arr = np.asarray(same, dtype=np.float64).reshape(-1)
    curve = precision_recall_curve(d, same_arr, lower_is_better=lower_is_better)
    thr, prec, rec = threshold_at_precision(curve, target_precision)
    cal = Calibration(metric=metric, target_precision=target_precision, threshold=thr, precision=prec, recall=rec,
                      count=int(d.size), positives=float(same_arr.sum()), lower_is_better=lower_is_better,
                      curve=curve)
    if thr is None:
        _logger.warning("no threshold of %s reaches precision %.3f (best %.3f at recall %.3f)", metric,
                        target_precision, prec, rec)
    else:
        _logger.info("%s: threshold %.6g gives precision %.3f, recall %.3f", metric, thr, prec, rec)
    return cal


# --- the plot ------------------------------------------------------------------------------------------------------


def plot_calibration(cal: Calibration, path: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """Save a PNG: the precision/recall curve (left) and precision and recall against the threshold (right), with
    the chosen threshold marked.

    Args:
        cal: a Calibration with its curve.
        path: the PNG file to write (folders are created).
        title: headline (default: metric, target, threshold).

    Returns:
        The path written.
    """
    from PIL import Image, ImageDraw, ImageFont

    if cal.curve is None:
        raise InvalidArgument("the calibration has no curve to plot")
    c = cal.curve
    w, h, pad = 1000, 460, 60
    img = Image.new("RGB", (w, h), "white")
    dr = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    head = title or (f"{cal.metric}: target precision {cal.target_precision:.3g} -> "
                     + (f"threshold {cal.threshold:.4g} (precision {cal.precision:.3f}, recall {cal.recall:.3f})"
                        if cal.threshold is not None else f"unreachable (best precision {cal.precision:.3f})")
                     + f"; {cal.count} pairs")
    dr.text((pad, 10), head, fill="black", font=font)
    panel_w = (w - 3 * pad) // 2
    boxes = [(pad, 50, pad + panel_w, h - pad), (2 * pad + panel_w, 50, 2 * pad + 2 * panel_w, h - pad)]
    t = c.thresholds
    t_lo, t_hi = float(t.min()), float(t.max())
    if not math.isfinite(t_lo) or not math.isfinite(t_hi) or t_hi <= t_lo:
        finite = t[np.isfinite(t)]
        t_lo, t_hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if t_hi <= t_lo:
            t_hi = t_lo + 1.0

    def axes(box: tuple[int, int, int, int], xlabel: str, x0: float, x1: float) -> None:
        left, top, right, bottom = box
        dr.rectangle(box, outline="black")
        for j in range(6):
            fy = j / 5
            y = bottom - fy * (bottom - top)
            dr.line([(left - 4, y), (left, y)], fill="black")
            dr.text((left - 34, y - 6), f"{fy:.1f}", fill="black", font=font)
            x = left + fy * (right - left)
            dr.line([(x, bottom), (x, bottom + 4)], fill="black")
            dr.text((x - 14, bottom + 6), f"{x0 + fy * (x1 - x0):.3g}", fill="black", font=font)
        dr.text(((left + right) // 2 - 30, bottom + 22), xlabel, fill="black", font=font)

    def to_px(box: tuple[int, int, int, int], fx: float, fy: float) -> tuple[float, float]:
        left, top, right, bottom = box
        fx = min(max(fx, 0.0), 1.0)
        fy = min(max(fy, 0.0), 1.0)
        return left + fx * (right - left), bottom - fy * (bottom - top)

    # left: precision vs recall
    b0 = boxes[0]
    axes(b0, "recall", 0.0, 1.0)
    dr.text((b0[0], b0[1] - 16), "precision vs recall", fill="black", font=font)
    pts = [to_px(b0, r, p) for r, p in zip(c.recall, c.precision, strict=True)]
    if len(pts) > 1:
        dr.line(pts, fill=(31, 119, 180), width=2)
    ty = to_px(b0, 0.0, cal.target_precision)[1]
    dr.line([(b0[0], ty), (b0[2], ty)], fill=(200, 200, 200), width=1)
    # right: precision and recall vs threshold
    b1 = boxes[1]
    axes(b1, "threshold" + (" (distance)" if c.lower_is_better else " (similarity)"), t_lo, t_hi)
    dr.text((b1[0], b1[1] - 16), "precision (blue), recall (orange) vs threshold", fill="black", font=font)

    def tx(v: float) -> float:
        return (v - t_lo) / (t_hi - t_lo) if math.isfinite(v) else (1.0 if v > 0 else 0.0)

    for series, colour in ((c.precision, (31, 119, 180)), (c.recall, (255, 127, 14))):
        pts = [to_px(b1, tx(float(v)), float(s)) for v, s in zip(t, series, strict=True)]
        if len(pts) > 1:
            dr.line(pts, fill=colour, width=2)
    if cal.threshold is not None:
        x, y = to_px(b0, cal.recall, cal.precision)
        dr.ellipse([x - 5, y - 5, x + 5, y + 5], outline=(214, 39, 40), width=2)
        x = to_px(b1, tx(cal.threshold), 0.0)[0]
        dr.line([(x, b1[1]), (x, b1[3])], fill=(214, 39, 40), width=1)
    out = Path(path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, format="PNG")
    _logger.info("calibration plot written to %s", out)
    return out
