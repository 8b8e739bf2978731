"""Re-ranking search results with a pairwise metric: re-score the index's top k against the query, re-order them.

The index finds candidates fast with its embedding metric; a pairwise metric (DiffSim, LPIPS, SSIM, ...) then scores
each candidate against the query and the list is re-ordered by that score, in the metric's own direction. The
scoring itself is :func:`lookalike.metric.rerank.score_candidates`; this module does the file I/O around it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Sequence

import torch
from PIL import Image

from lookalike.data.images import open_image
from lookalike.indexer._models import Hit
from lookalike.metric import Metric, load_metric
from lookalike.metric.rerank import score_candidates

_logger = logging.getLogger(__name__)

#: Candidates decoded and scored per call (bounds the memory of the decoded batch).
RERANK_BATCH = 16

# Loaded re-rankers, kept for the process: a second search with the same re-ranker reuses the model and its
# per-image cache. Keyed by (name, device, weights folder).
_LOADED: dict[tuple[str, str | None, str | None], Metric] = {}
_LOCK = threading.Lock()


def load_reranker(rerank: str | Metric, *, device: str | None = None,
                  weights: str | os.PathLike[str] | None = None) -> Metric:
    """The re-ranking metric: ``rerank`` itself when it is a Metric, else ``load_metric(rerank)`` (kept loaded).

    Raises:
        KeyError: unknown metric name.
        WeightsNotFound: its weight files are missing.
    """
    if isinstance(rerank, Metric):
        return rerank
    key = (rerank, device, None if weights is None else os.fspath(weights))
    with _LOCK:
        m = _LOADED.get(key)
        if m is None:
            m = load_metric(rerank, device=device, weights=weights)
            _LOADED[key] = m
    return m


def rerank_hits(metric: Metric, query: Image.Image, hits: Sequence[Hit], *, batch_size: int = RERANK_BATCH
                ) -> list[Hit]:
    """Score every hit against ``query`` with ``metric`` and sort them, most similar first.

    Args:
        metric: the re-ranker (any metric; pairwise ones are the point).
        query: the query image (RGB PIL).
        hits: the index's candidates.
        batch_size: candidates decoded and scored per call.

    Returns:
        The same hits with ``scored_by`` = the metric's name, ``score`` = its value and ``lower_is_better`` its
        direction, ordered by that score (ties keep the index order). Hits whose file cannot be read are left out
        with a warning.
    """
    xq = metric.preprocess(query.convert("RGB"))
    scored: list[tuple[float, int, Hit]] = []
    for start in range(0, len(hits), batch_size):
        chunk: list[Hit] = []
        tensors: list[torch.Tensor] = []
        for h in hits[start:start + batch_size]:
            try:
                tensors.append(metric.preprocess(open_image(h.path)))
            except (OSError, ValueError) as e:  # deleted / damaged since it was indexed
                _logger.warning("re-rank: skipping %s: %s", h.path, e)
                continue
            chunk.append(h)
        if not chunk:
            continue
        values = score_candidates(metric, xq, torch.stack(tensors))
        for h, v in zip(chunk, values.tolist(), strict=True):
            scored.append((float(v), len(scored), h))
    sign = 1.0 if metric.lower_is_better else -1.0
    scored.sort(key=lambda t: (sign * t[0], t[1]))
    return [dataclasses.replace(h, scored_by=metric.name, score=v, lower_is_better=metric.lower_is_better)
            for v, _, h in scored]
