"""The Map page's data: an index's embeddings projected to 2-D (PCA always, UMAP when umap-learn is installed).

Past ``limit`` vectors a seeded random sample is drawn (the page says so), so a 100k-image index maps as fast as a
10k one: only the sampled vectors are read, PCA is fitted on at most ``PCA_FIT_MAX`` of them and applied to all the
sampled ones. No Streamlit here, so it is tested and benchmarked directly.
"""

from __future__ import annotations

import base64
import importlib.util
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from lookalike.app.views import framed_thumbnail, images_by_id
from lookalike.data.images import ImageDecodeError
from lookalike.indexer import ImageIndex

_logger = logging.getLogger(__name__)

#: Points drawn on the map at most (a seeded random sample beyond).
DEFAULT_LIMIT = 10_000
#: Vectors the PCA axes are fitted on at most (then every sampled vector is projected on them).
PCA_FIT_MAX = 2_000
#: One colour per folder on the Map: a qualitative palette (Okabe-Ito's eight, then four more) whose colours are at
#: least 26 CIELAB units apart from each other and 34 from ``OTHER_COLOUR`` (tests/test_app_look.py measures it).
FOLDER_PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000", "#F0E442",
                  "#8C564B", "#9467BD", "#7FD34E", "#E41A1C")
#: The colour of "other folders" (every folder past ``MAX_FOLDERS``).
OTHER_COLOUR = "#9E9E9E"
OTHER_FOLDERS = "other folders"
#: Folders with a colour of their own (the largest ones); the rest share "other folders".
MAX_FOLDERS = len(FOLDER_PALETTE)
#: The Map draws thumbnails at a spread-out subset of its points: at most one per cell of a grid this many cells
#: wide and high, so they never overlap, and they grow as the user zooms in (their size is in data units).
THUMB_GRID = 9
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
    proj.folders = [f if f in top else OTHER_FOLDERS for f in labels]
    proj.relpaths = [rows[int(i)].relpath for i in proj.ids]
    proj.paths = [rows[int(i)].path for i in proj.ids]
    return proj


def folder_colours(folders: Sequence[str]) -> dict[str, str]:
    """A colour for each folder label: ``FOLDER_PALETTE`` in sorted order, grey for "other folders"."""
    named = sorted(f for f in set(folders) if f != OTHER_FOLDERS)
    out = {f: FOLDER_PALETTE[n % len(FOLDER_PALETTE)] for n, f in enumerate(named)}
    if OTHER_FOLDERS in folders:
        out[OTHER_FOLDERS] = OTHER_COLOUR
    return out


def spread_sample(xy: np.ndarray, cells: int = THUMB_GRID) -> tuple[np.ndarray, float, float]:
    """Points spread over the map, at most one per cell of a ``cells`` x ``cells`` grid over the points' extent:
    in each occupied cell the point nearest its centre.

    Returns:
        The chosen point indices (in cell order), and a cell's width and height in data units.
    """
    xy = np.asarray(xy, np.float64)
    if len(xy) == 0:
        return np.zeros(0, np.int64), 1.0, 1.0
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    size = np.where(hi - lo > 0, (hi - lo) / cells, 1.0)
    cell = np.minimum(((xy - lo) / size).astype(np.int64), cells - 1)
    centre = lo + (cell + 0.5) * size
    off = (((xy - centre) / size) ** 2).sum(axis=1)
    key = cell[:, 0] * cells + cell[:, 1]
    order = np.lexsort((off, key))  # by cell, nearest the centre first
    first = np.ones(len(order), bool)
    first[1:] = key[order][1:] != key[order][:-1]
    return order[first].astype(np.int64), float(size[0]), float(size[1])


@dataclass
class MapThumbnails:
    """Thumbnails drawn at a spread-out subset of a Projection's points (``spread_sample``).

    Attributes:
        points: indices into the projection's points.
        images: one ``data:image/jpeg;base64,...`` URI per point, framed in its folder's colour.
        width: a thumbnail's width in data units (a grid cell's, less a margin); it grows on the screen as the user
            zooms in.
        height: its height in data units.
    """

    points: list[int]
    images: list[str]
    width: float
    height: float


def map_thumbnails(proj: Projection, *, cells: int = THUMB_GRID, size: int = 112) -> MapThumbnails:
    """Framed thumbnails of at most ``cells`` x ``cells`` of ``proj``'s points, spread over the map (files that cannot
    be read any more are left out). The paths come from the catalog (``project_index``)."""
    chosen, cw, ch = spread_sample(proj.xy, cells)
    colours = folder_colours(proj.folders)
    points, images = [], []
    for i in chosen.tolist():
        try:
            data = framed_thumbnail(proj.paths[i], size, colours[proj.folders[i]])
        except (ImageDecodeError, OSError) as e:
            _logger.info("no map thumbnail for %s: %s", proj.paths[i], e)
            continue
        points.append(i)
        images.append("data:image/jpeg;base64," + base64.b64encode(data).decode("ascii"))
    return MapThumbnails(points, images, 0.9 * cw, 0.9 * ch)
