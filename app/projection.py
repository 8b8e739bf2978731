"""The Map page's data: an index's embeddings projected to 2-D (PCA always, UMAP when umap-learn is installed).

Past ``limit`` vectors a seeded random sample is drawn (the page says so), so a 100k-image index maps as fast as a
10k one: only the sampled vectors are read, PCA is fitted on at most ``PCA_FIT_MAX`` of them and applied to all the
sampled ones. No Streamlit here, so it is tested and benchmarked directly.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from lookalike.app.views import images_by_id
from lookalike.indexer import ImageIndex

_logger = logging.getLogger(__name__)

#: Points drawn on the map at most (a seeded random sample beyond).
DEFAULT_LIMIT = 10_000
#: Vectors the PCA axes are fitted on at most (then every sampled vector is projected on them).
PCA_FIT_MAX = 2_000
#: Folders with a colour of their own; the rest share "other folders".
MAX_FOLDERS = 20
METHODS = ("PCA", "UMAP")


def list_methods() -> list[str]:
    """The projections available here: PCA, plus UMAP when the ``umap-learn`` package is installed."""
    return ["PCA", "UMAP"] if importlib.util.find_spec("umap") is not None else ["PCA"]


@dataclass
class Projection:
    """2-D positions of (a sample of) an index's images.

    Attributes:
        method: "PCA" or "UMAP".
        ids: the FAISS ids (= catalog ids) drawn, one per point.
        xy: (n, 2) float32 positions.
        total: vectors in the index.
        sampled: True when ``ids`` is a random sample of the index (``total`` > limit).
        folders: the folder label of each point ("root/first-folder"; "other folders" past ``MAX_FOLDERS``).
        relpaths: each point's path relative to its root.
        paths: each point's absolute path (from the catalog).
        explained: PCA only: the share of variance on each axis.
    """

    method: str
    ids: np.ndarray
    xy: np.ndarray
    total: int
    sampled: bool
    folders: list[str] = field(default_factory=list)
    relpaths: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    explained: tuple[float, float] | None = None


def sample_ids(ids: np.ndarray, limit: int, seed: int = 0) -> tuple[np.ndarray, bool]:
    """All ``ids`` (sorted) when there are at most ``limit``, else a seeded random sample of ``limit`` of them."""
    ids = np.asarray(ids, np.int64)
    if len(ids) <= limit:
        return np.sort(ids), False
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(ids, size=limit, replace=False)), True


def pca_2d(x: np.ndarray, *, fit_max: int = PCA_FIT_MAX, seed: int = 0) -> tuple[np.ndarray, tuple[float, float]]:
    """Project rows of ``x`` on their first two principal axes (fitted on at most ``fit_max`` rows).

    The axes come from a randomized SVD (a 10-column range finder with four power iterations, Halko et al. 2011):
    matrix products only, so fitting costs milliseconds where a full SVD of 2,000 x 1,792 takes seconds.

    Returns:
        (n, 2) positions and the share of the fitted rows' variance that each axis holds.
    """
    x = np.asarray(x, np.float32)
    if len(x) == 0:
        return np.zeros((0, 2), np.float32), (0.0, 0.0)
    rng = np.random.default_rng(seed)
    fit = x if len(x) <= fit_max else x[rng.choice(len(x), fit_max, replace=False)]
    mean = fit.mean(axis=0)
    xc = (fit - mean).astype(np.float64)
    rank = min(10, *xc.shape)
    q, _ = np.linalg.qr(xc @ rng.standard_normal((xc.shape[1], rank)))
    for _ in range(4):
        q, _ = np.linalg.qr(xc.T @ q)
        q, _ = np.linalg.qr(xc @ q)
    _, s, vt = np.linalg.svd(q.T @ xc, full_matrices=False)
    axes = np.zeros((2, x.shape[1]), np.float64)
    axes[:min(2, len(vt))] = vt[:2]
    total = float((xc ** 2).sum())
    share = [float(v ** 2 / total) if total > 0 else 0.0 for v in s[:2]] + [0.0, 0.0]
    for j in range(2):  # a deterministic sign: the largest loading is positive
        if axes[j, np.argmax(np.abs(axes[j]))] < 0:
            axes[j] = -axes[j]
    return ((x - mean) @ axes.T.astype(np.float32)).astype(np.float32), (share[0], share[1])


def umap_2d(x: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """UMAP positions of the rows of ``x`` (cosine metric).

    Raises:
        ImportError: umap-learn is not installed (``pip install 'lookalike[map]'``).
    """
    try:
        import umap  # type: ignore[import-not-found]
    except ImportError as e:
        raise ImportError("UMAP needs the umap-learn package: pip install 'lookalike[map]'") from e
    n_neighbors = max(2, min(15, len(x) - 1))
    reducer = umap.UMAP(n_components=2, n_neighbors=n_neighbors, metric="cosine", random_state=seed)
    return np.asarray(reducer.fit_transform(np.asarray(x, np.float32)), np.float32)


def project_vectors(ids: np.ndarray, get_vectors: Callable[[np.ndarray], np.ndarray], *, method: str = "PCA",
                    limit: int = DEFAULT_LIMIT, seed: int = 0) -> Projection:
    """Project the vectors of ``ids`` (a sample of ``limit`` of them past the limit) to 2-D.

    Args:
        ids: every id of the collection.
        get_vectors: ids -> (n, dim) vectors (only the sampled ids are asked for).
        method: "PCA" or "UMAP".
        limit: most points drawn.
        seed: seed of the sample (and of UMAP).

    Raises:
        ValueError: an unknown method or a limit below 1.
        ImportError: UMAP without umap-learn.
    """
    if method not in METHODS:
        raise ValueError(f"unknown projection {method!r}; choose from {', '.join(METHODS)}")
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    total = len(ids)
    chosen, sampled = sample_ids(ids, limit, seed)
    x = get_vectors(chosen) if len(chosen) else np.zeros((0, 1), np.float32)
    if method == "PCA" or len(chosen) < 4:
        xy, explained = pca_2d(x, seed=seed)
        return Projection("PCA" if method == "PCA" else method, chosen, xy, total, sampled, explained=explained)
    return Projection(method, chosen, umap_2d(x, seed=seed), total, sampled)


def folder_of(root: str, relpath: str) -> str:
    """The folder label of a file: its root's name, plus the first folder under the root if it is in one."""
    name = root.rstrip("/").rsplit("/", 1)[-1] or root
    return f"{name}/{relpath.split('/', 1)[0]}" if "/" in relpath else name


def project_index(index: ImageIndex, *, method: str = "PCA", limit: int = DEFAULT_LIMIT, seed: int = 0) -> Projection:
    """``project_vectors`` over an open index, with each point's folder and paths from the catalog.

    Points whose catalog row is not committed yet (a running ``index``) are left out.
    """
    proj = project_vectors(index.vectors.ids(), index.vectors.vectors, method=method, limit=limit, seed=seed)
    rows = images_by_id(index, proj.ids.tolist())
    keep = np.array([int(i) in rows for i in proj.ids], bool)
    proj.ids, proj.xy = proj.ids[keep], proj.xy[keep]
    labels = [folder_of(rows[int(i)].root, rows[int(i)].relpath) for i in proj.ids]
    counts: dict[str, int] = {}
    for f in labels:
        counts[f] = counts.get(f, 0) + 1
    top = set(sorted(counts, key=lambda f: (-counts[f], f))[:MAX_FOLDERS])
    proj.folders = [f if f in top else "other folders" for f in labels]
    proj.relpaths = [rows[int(i)].relpath for i in proj.ids]
    proj.paths = [rows[int(i)].path for i in proj.ids]
    return proj
