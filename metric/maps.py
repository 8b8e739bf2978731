"""Where two images differ: a metric's distance map for a pair of PIL images, and a heat map drawn over image A.

``pair_distance_map`` runs ``metric.distance_map`` (efficientnet_lite0's multi-stage feature distances, which need
no download; LPIPS's spatial map, per-patch token distances of single-branch ViTs, DiffSim's per-token
disagreement) on two PIL images; ``overlay_heatmap`` colours the map (dark = same, bright = different) and blends it
over A at A's own size. Library code: nothing here prints or writes, except
``save_heatmap``, which writes the PNG it is asked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from lookalike.common.errors import InvalidArgument
from lookalike.metric._base import Metric

# Anchor colours of a perceptually ordered dark-to-bright map (black, purple, red, orange, pale yellow).
_ANCHORS = np.array([[0, 0, 4], [81, 18, 124], [183, 55, 121], [252, 137, 97], [252, 253, 191]], dtype=np.float32)


@dataclass(frozen=True)
class DistanceMap:
    """A metric's map of where A differs from B.

    Attributes:
        metric: registry name.
        values: (h, w) float32 on the metric's grid (token grid or pixels), higher = more different.
        lo: the value drawn darkest (0, or the map's minimum when it is below 0).
        hi: the value drawn brightest (the map's maximum).
    """

    metric: str
    values: np.ndarray
    lo: float
    hi: float


def pair_distance_map(metric: Metric, img_a: Image.Image, img_b: Image.Image) -> DistanceMap:
    """``metric``'s distance map of two PIL images (converted to RGB, preprocessed as the metric wants).

    Raises:
        InvalidArgument: the metric has no distance map (``metric.has_distance_map`` is False).
    """
    if not metric.has_distance_map:
        raise InvalidArgument(f"metric {metric.name!r} cannot say where two images differ (no distance map); maps "
                              f"exist for efficientnet_lite0 (no download), LPIPS, DiffSim, DreamSim patch variants "
                              f"and single-branch ViT backbones")
    xa = metric.preprocess(img_a.convert("RGB"))[None]
    xb = metric.preprocess(img_b.convert("RGB"))[None]
    values = metric.distance_map(xa, xb)[0].float().numpy()
    lo = min(0.0, float(values.min()))
    return DistanceMap(metric=metric.name, values=values, lo=lo, hi=float(values.max()))


def colorize(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(h, w) floats → (h, w, 3) uint8 colours, ``lo`` darkest and ``hi`` brightest."""
    span = hi - lo
    t = np.zeros_like(values, dtype=np.float32) if span <= 0 else np.clip((values - lo) / span, 0.0, 1.0)
    pos = t * (len(_ANCHORS) - 1)
    i = np.minimum(pos.astype(np.int64), len(_ANCHORS) - 2)
    frac = (pos - i)[..., None]
    rgb = _ANCHORS[i] * (1.0 - frac) + _ANCHORS[i + 1] * frac
    return rgb.round().astype(np.uint8)


def overlay_heatmap(img_a: Image.Image, dmap: DistanceMap, *, alpha: float = 0.55) -> Image.Image:
    """The map coloured and blended over ``img_a`` at A's size (bilinear upsampling of the metric's grid)."""
    if not 0.0 <= alpha <= 1.0:
        raise InvalidArgument(f"alpha must be in [0, 1], got {alpha}")
    base = img_a.convert("RGB")
    heat = Image.fromarray(colorize(dmap.values, dmap.lo, dmap.hi)).resize(base.size, Image.Resampling.BILINEAR)
    return Image.blend(base, heat, alpha)


def save_heatmap(path: str | os.PathLike[str], img_a: Image.Image, dmap: DistanceMap, *, alpha: float = 0.55) -> None:
    """Write ``overlay_heatmap`` to ``path`` (format from the extension: .png, .jpg, ...).

    Raises:
        ValueError: an extension PIL cannot write.
        OSError: the file cannot be written.
    """
    out = overlay_heatmap(img_a, dmap, alpha=alpha)
    try:
        out.save(os.fspath(path))
    except (KeyError, ValueError):  # PIL: unknown extension (KeyError in old releases)
        raise InvalidArgument(f"cannot write an image to {os.fspath(path)!r}: unknown extension; "
                              "use .png or .jpg") from None
