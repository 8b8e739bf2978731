"""search: ranked (path, distance) neighbours of an image file, a PIL image or an indexed path."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from lookalike.common.errors import InvalidArgument
from lookalike.data.images import open_image
from lookalike.indexer._index import ImageIndex, open_index
from lookalike.indexer._models import Hit

if TYPE_CHECKING:
    from lookalike.metric import Metric

_logger = logging.getLogger(__name__)


def embed_images(metric: Metric, images: list[Image.Image]) -> np.ndarray:
    """Embed PIL images with ``metric`` → (n, dim) float32 unit vectors."""
    x = torch.stack([metric.preprocess(im) for im in images])
    with torch.inference_mode():
        return metric.embed(x).float().cpu().numpy()


def query_vector(index: ImageIndex, query: str | os.PathLike[str] | Image.Image) -> np.ndarray:
    """The query's vector: the stored one for an indexed file, else the metric's embedding of the image."""
    if isinstance(query, Image.Image):
        return embed_images(index.metric, [query.convert("RGB")])[0]
    p = os.fspath(query)
    if os.path.isfile(p):
        row = index.find_row(p)
        if row is not None and row.status == "ok" and row.size == os.stat(p).st_size:
            v = index.vector_of(row)
            if v is not None:
                return v
        return embed_images(index.metric, [open_image(p)])[0]
    if os.path.isdir(p):
        raise InvalidArgument(f"query {p!r} is a folder; give an image file or an indexed path")
    row = index.find_row(p)
    if row is None:
        raise FileNotFoundError(f"query {p!r} is neither an image file nor a path in index {index.index_dir}")
    v = index.vector_of(row)
    if v is None:
        raise InvalidArgument(f"{p!r} is catalogued but has no vector for {index.build.metric!r} "
                              f"(status {row.status}{': ' + row.error if row.error else ''})")
    return v


def search_vectors(index: ImageIndex, xq: np.ndarray, k: int) -> list[list[Hit]]:
    """k nearest indexed images of each query vector (rows of ``xq``), nearest first."""
    if k < 1:
        raise InvalidArgument(f"k must be >= 1, got {k}")
    xq = np.atleast_2d(np.asarray(xq, np.float32))
    if xq.shape[1] != index.vectors.dim:
        raise InvalidArgument(f"query dim {xq.shape[1]} != index dim {index.vectors.dim} (index built with "
                              f"{index.build.metric!r}); embed queries with the same metric")
    kk = k
    while True:
        D, I = index.vectors.search(xq, min(kk, max(1, index.vectors.ntotal)))  # noqa: E741
        rows = index.rows(I[I >= 0].tolist())
        out: list[list[Hit]] = []
        short = False
        for q in range(len(xq)):
            hits = []
            for d, i in zip(D[q], I[q], strict=True):
                if i < 0:
                    continue
                row = rows.get(int(i))
                if row is None:  # a vector a running writer has flushed but not committed yet
                    continue
                hits.append(Hit(path=row.path, distance=float(max(d, 0.0)), relpath=row.relpath, root=row.root,
                                image_id=row.id, scored_by=index.build.metric))
            if len(hits) < k and kk < index.vectors.ntotal:
                short = True
            out.append(hits[:k])
        if not short:
            return out
        kk *= 2


def query_image(index: ImageIndex, query: str | os.PathLike[str] | Image.Image) -> Image.Image:
    """The query's pixels (RGB): the PIL image itself, the image file, or the file of an indexed path."""
    if isinstance(query, Image.Image):
        return query.convert("RGB")
    p = os.fspath(query)
    if os.path.isfile(p):
        return open_image(p)
    row = index.find_row(p)
    if row is None:
        raise FileNotFoundError(f"query {p!r} is neither an image file nor a path in index {index.index_dir}")
    return open_image(row.path)


def _search_open(index: ImageIndex, query: str | os.PathLike[str] | Image.Image, k: int, rerank: str | Metric | None,
                 rerank_k: int, rerank_weights: str | os.PathLike[str] | None, device: str | None) -> list[Hit]:
    if rerank is None:
        return search_vectors(index, query_vector(index, query)[None], k)[0]
    from lookalike.indexer._rerank import load_reranker, rerank_hits

    if rerank_k < 1:
        raise InvalidArgument(f"rerank_k must be >= 1, got {rerank_k}")
    if k < 1:
        raise InvalidArgument(f"k must be >= 1, got {k}")
    reranker = load_reranker(rerank, device=device, weights=rerank_weights)  # fails fast, before any search work
    hits = search_vectors(index, query_vector(index, query)[None], max(k, rerank_k))[0]
    return rerank_hits(reranker, query_image(index, query), hits)[:k]


def search(
    index: str | os.PathLike[str] | ImageIndex,
    query: str | os.PathLike[str] | Image.Image,
    *,
    k: int = 10,
    metric: str | Metric | None = None,
    db_url: str | None = None,
    device: str | None = None,
    rerank: str | Metric | None = None,
    rerank_k: int = 50,
    rerank_weights: str | os.PathLike[str] | None = None,
    dtype: str | None = "auto",
) -> list[Hit]:
    """The ``k`` indexed images most similar to ``query``, optionally re-scored by a pairwise metric.

    Args:
        index: an index folder or an ImageIndex from ``open_index``.
        query: an image file, a PIL image, or the path of an indexed file (absolute or relative to its root).
        k: how many results.
        metric: which metric's vectors to search when the folder holds several (name or fingerprint).
        db_url: catalog URL when it is not the SQLite file in the folder.
        device: device for embedding an image query (and for the re-ranker).
        rerank: a metric name from ``lookalike.metric.list_rerankers()`` (e.g. "diffsim", "lpips_vgg", "ssim") or a
            loaded Metric: the index's top ``max(k, rerank_k)`` are re-scored with it, one query-candidate pair at a
            time, and re-ordered by its value (in its own direction). Candidate files that cannot be read any more
            are left out (logged).
        rerank_k: how many index results the re-ranker scores.
        rerank_weights: folder searched first for the re-ranker's weight files.
        dtype: precision for embedding an image query: "auto" (default: the one the index's vectors were computed
            in, where the device runs it natively; else fp32), "fp32", "bf16", "fp16". Used only when ``index`` is a
            folder.

    Returns:
        Hits, most similar first: by ``distance`` (1 - cosine, lower = more similar) without a re-ranker, else by the
        re-ranker's ``score`` (each Hit names it in ``scored_by``; ``distance`` keeps the index value). An indexed
        query finds itself first.

    Raises:
        FileNotFoundError: no index, or a query that is neither a file nor an indexed path.
        KeyError: an unknown re-ranker name.
        WeightsNotFound: the re-ranker's weight files are missing.
        ValueError: an unreadable query image, or an index of another metric / dimension.
    """
    if isinstance(index, (str, os.PathLike, Path)):
        with open_index(index, metric=metric, db_url=db_url, device=device, dtype=dtype) as idx:
            return _search_open(idx, query, k, rerank, rerank_k, rerank_weights, device)
    return _search_open(index, query, k, rerank, rerank_k, rerank_weights, device)
