"""Re-ranking with a pairwise metric: which metrics can re-score search results here, and how one scores a batch.

A pairwise metric (LPIPS, SSIM, DiffSim, ...) cannot be indexed, but it can re-score the top k results of an
embedding index: one query against k candidates. :func:`score_candidates` is that one-against-many call. Metrics
whose per-image work can be kept (DiffSim's captured attention tensors) implement :class:`FeaturePairwise`, so an
image already seen costs nothing the second time; every other metric is called as ``distance(query, candidates)``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch

from lookalike.metric._base import Metric

_logger = logging.getLogger(__name__)

class FeaturePairwise:
    """Mixin for a pairwise metric whose per-image work can be computed once and kept.

    ``pair_features(x)`` maps a preprocessed batch to one opaque feature object per image (the metric may cache
    them); ``pair_scores(fa, fbs)`` gives the metric's value of image ``fa`` against each of ``fbs`` in the same
    unit and direction as ``distance``. ``features_cacheable`` is False when a metric's per-image work depends on
    the pair after all (DiffSim with reference noise); such a metric is scored with ``distance``.
    """

    @property
    def features_cacheable(self) -> bool:
        return True

    def pair_features(self, x: torch.Tensor) -> list[Any]:
        raise NotImplementedError

    def pair_scores(self, fa: Any, fbs: Sequence[Any]) -> torch.Tensor:
        raise NotImplementedError


def list_rerankers(*, weights: str | os.PathLike[str] | None = None, include_hidden: bool = False) -> list[str]:
    """Names of the pairwise metrics that can re-rank search results here (their weight files are on disk).

    Only looks for files: nothing is loaded or downloaded.

    Args:
        weights: a folder searched before the user cache.
        include_hidden: also list test-only metrics.

    Returns:
        Sorted registry names (pixel metrics need no files and are always listed).
    """
    from lookalike.metric._registry import list_metrics
    from lookalike.metric.weights import weights_paths

    out = []
    for name in list_metrics(kind="pairwise", include_test=include_hidden):
        if all(row["present"] for row in weights_paths(name, weights=weights)):
            out.append(name)
    return out


@torch.inference_mode()
def score_candidates(metric: Metric, query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """``metric``'s value of one query image against each candidate image.

    Args:
        metric: any metric (pairwise or embedding).
        query: (3, S, S) or (1, 3, S, S), ``metric.preprocess`` output.
        candidates: (n, 3, S, S) ``metric.preprocess`` outputs.

    Returns:
        (n,) float32 on the CPU in ``metric.cfg.unit``; read ``metric.lower_is_better`` for the direction.
    """
    q = query if query.dim() == 4 else query.unsqueeze(0)
    if q.shape[0] != 1:
        raise ValueError(f"query must be one image, got a batch of {q.shape[0]}")
    n = candidates.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.float32)
    if isinstance(metric, FeaturePairwise) and metric.features_cacheable:
        fq = metric.pair_features(q)[0]
        return metric.pair_scores(fq, metric.pair_features(candidates)).float().cpu()
    return metric.distance(q.expand(n, -1, -1, -1), candidates).float().cpu()
