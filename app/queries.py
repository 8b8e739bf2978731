"""Search requests shared by the web app and the REST service: one indexed folder only, optional re-ranking.

Both faces call ``run_query``; it calls the library's ``lookalike.indexer.search`` (with ``rerank=`` when the library
offers pairwise re-ranking, see ``list_rerank_choices``) and keeps the hits inside the chosen folder. No Streamlit and
no FastAPI here, so it is tested directly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

from PIL import Image

from lookalike.indexer import Hit, ImageIndex, search
from lookalike.metric import list_rerankers

_logger = logging.getLogger(__name__)

#: Candidates a pairwise re-ranker looks at when the caller names none (the library's default too).
DEFAULT_RERANK_K = 50


class RerankUnavailable(ValueError):
    """A re-ranker was asked for, but this installation (or this name) offers none."""


def list_rerank_choices() -> list[str]:
    """Pairwise metrics search results can be re-ranked with here (``lookalike.metric.list_rerankers()``)."""
    try:
        return sorted(list_rerankers())
    except (ValueError, KeyError, OSError) as e:  # a broken registration: no choice rather than a crash
        _logger.warning("list_rerankers() failed: %s", e)
        return []


def check_rerank(name: str | None) -> str | None:
    """``name`` if it is a usable re-ranker (None stays None).

    Raises:
        RerankUnavailable: the library cannot re-rank, or ``name`` is not one of its re-rankers.
    """
    if not name:
        return None
    choices = list_rerank_choices()
    if not choices:
        raise RerankUnavailable(f"re-ranking with {name!r} is not available: this lookalike installation has no "
                                f"pairwise re-rankers (lookalike.metric.list_rerankers)")
    if name not in choices:
        raise RerankUnavailable(f"unknown re-ranker {name!r}; choose from {', '.join(choices)}")
    return name


def normalise_folder(folder: str | None) -> str | None:
    """An absolute folder prefix without a trailing slash (None or "" means the whole index)."""
    if not folder:
        return None
    f = folder.replace(os.sep, "/").rstrip("/")
    return f or "/"


def in_folder(hit: Hit, folder: str | None) -> bool:
    """True when ``hit`` lies under ``folder`` (an absolute path: an indexed root or a folder inside one)."""
    if folder is None:
        return True
    path = hit.path.replace(os.sep, "/")
    return path.startswith(folder.rstrip("/") + "/")


@dataclass(frozen=True)
class QueryResult:
    """What ``run_query`` found.

    Attributes:
        hits: nearest first (re-ranked when ``rerank`` is set).
        rerank: the re-ranker used, or None.
        folder: the folder the hits were kept to, or None.
        searched: how many neighbours were fetched to fill ``k`` hits inside ``folder``.
    """

    hits: list[Hit]
    rerank: str | None = None
    folder: str | None = None
    searched: int = 0


def run_query(index: ImageIndex, query: str | Image.Image, *, k: int = 10, folder: str | None = None,
              rerank: str | None = None, rerank_k: int = DEFAULT_RERANK_K,
              max_candidates: int | None = None) -> QueryResult:
    """The ``k`` nearest indexed images of ``query``, kept to ``folder``, re-ranked by a pairwise metric if asked.

    Narrowing to a folder fetches more neighbours (4k, then doubling) until ``k`` of them lie in the folder or the
    whole index has been ranked, so a small folder in a large index costs a few searches.

    Args:
        index: an open index.
        query: a PIL image, or the catalog path of an indexed image (the caller has checked it against the catalog).
        k: how many hits (>= 1).
        folder: an absolute folder (an indexed root or a folder inside one); None for the whole index.
        rerank: a name from ``list_rerank_choices()``, or None.
        rerank_k: candidates the re-ranker looks at (>= k).
        max_candidates: at most this many neighbours are fetched to fill a folder, and re-ranked (None: no limit;
            the REST service sets one so that a request's cost is bounded).

    Returns:
        A QueryResult; distances are the library's (1 - cosine, or the re-ranker's distance; lower = more similar).

    Raises:
        RerankUnavailable: ``rerank`` names no usable re-ranker.
        ValueError: bad ``k``, an unreadable query image, an index of another metric.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rerank = check_rerank(rerank)
    folder = normalise_folder(folder)
    total = max(1, index.vectors.ntotal)
    cap = total if max_candidates is None else max(k, min(total, max_candidates))
    kk = k if folder is None else min(cap, 4 * k)
    while True:
        kw: dict[str, object] = {}
        if rerank is not None:
            kw = {"rerank": rerank, "rerank_k": min(max(rerank_k, kk), cap)}
        hits = search(index, query, k=kk, **kw)  # type: ignore[arg-type]
        kept = [h for h in hits if in_folder(h, folder)]
        if len(kept) >= k or kk >= cap or folder is None:
            return QueryResult(hits=kept[:k], rerank=rerank, folder=folder, searched=kk)
        kk = min(cap, kk * 2)


def folder_choices(roots: Iterable[str], relpaths: Iterable[tuple[str, str]], *, limit: int = 500) -> list[str]:
    """Folders a search can be narrowed to: each indexed root and the folders directly inside it.

    Args:
        roots: the indexed roots (absolute).
        relpaths: (root, relative POSIX path) of indexed files.
        limit: at most this many folders (roots first).

    Returns:
        Absolute folder paths, roots first, then their sub-folders in sorted order.
    """
    roots = sorted({r.rstrip("/") for r in roots})
    subs: set[str] = set()
    for root, rel in relpaths:
        if "/" in rel:
            subs.add(root.rstrip("/") + "/" + rel.split("/", 1)[0])
    return (roots + sorted(subs - set(roots)))[:limit]
