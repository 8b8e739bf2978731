"""Streamlit cache wrappers around the library factories (indexes, metrics) and pure results (thumbnails, reports).

``st.cache_resource`` objects are shared by every session: an ``ImageIndex`` only searches (faiss CPU indexes allow
concurrent searches) and metrics only run inference. Cached results take a ``stamp`` of the index folder's files
(``views.index_stamp``) as an argument, so they are recomputed when the index changes on disk.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

from lookalike.app.dedup_views import GroupPair, pairs_by_group, report_file_bytes
from lookalike.app.loaders import MetricCache
from lookalike.app.projection import MapThumbnails, Projection, map_thumbnails, project_index
from lookalike.app.queries import folder_choices
from lookalike.app.views import images_by_id, thumbnail_of_file, triplet_rows
from lookalike.indexer import DedupReport, ImageIndex, find_duplicates, index_info, open_index
from lookalike.metric import Metric

if TYPE_CHECKING:  # the dataset readers are imported lazily: the other pages work without them
    from lookalike.data.imagenet_r import ImageNetR
    from lookalike.data.triplets import TripletSet

_logger = logging.getLogger(__name__)


@st.cache_resource(show_spinner="Opening the index...", max_entries=8)
def get_index(index_dir: str, metric: str | None, db_url: str | None = None) -> ImageIndex:
    """The index of ``metric`` in ``index_dir`` (None when it holds one metric), opened once per process."""
    return open_index(index_dir, metric=metric, db_url=db_url)


def get_fresh_index(index_dir: Path, metric: str | None, db_url: str | None = None) -> ImageIndex:
    """``get_index``, reloaded from disk when a writer replaced its vectors since it was opened."""
    idx = get_index(str(index_dir), metric, db_url)
    idx.refresh()
    return idx


#: Loaded metrics of this process (the same cache class as the REST service's; see ``lookalike.app.loaders``).
_METRICS = MetricCache(max_entries=32)


def get_metric(name: str) -> Metric:
    """A loaded metric, once per process (raises WeightsNotFound with the download command)."""
    if name in _METRICS:
        return _METRICS.get(name)
    with st.spinner("Loading the metric..."):
        return _METRICS.get(name)


@st.cache_data(show_spinner=False, max_entries=16)
def get_index_info(index_dir: str, stamp: tuple, db_url: str | None = None) -> dict:
    """``index_info`` of the folder at this ``stamp``."""
    return index_info(index_dir, db_url=db_url)


@st.cache_resource(show_spinner="Finding duplicates...", max_entries=8)
def get_duplicates(index_dir: str, metric: str | None, threshold: float, group: str, keep: str,
                   stamp: tuple, db_url: str | None = None, between: tuple[str, str] | None = None) -> DedupReport:
    """``find_duplicates`` at these settings (recomputed when the index changes: new vectors, labels, moves).

    A shared resource, not ``cache_data``: a report of 100k groups is not copied (pickled) on every rerun, so
    turning a page costs the page. Callers only read it.
    """
    return find_duplicates(index_dir, threshold=threshold, group=group, keep=keep, metric=metric, db_url=db_url,
                           between=between)


@st.cache_resource(show_spinner=False, max_entries=8)
def get_group_pairs(index_dir: str, metric: str | None, threshold: float, group: str, keep: str,
                    stamp: tuple, db_url: str | None = None, between: tuple[str, str] | None = None
                    ) -> list[list[GroupPair]]:
    """The pairs inside each group of ``get_duplicates`` (closest first, with tier and label), computed once."""
    return pairs_by_group(get_duplicates(index_dir, metric, threshold, group, keep, stamp, db_url, between))


@st.cache_resource(show_spinner="Writing the report...", max_entries=8)
def get_report_bytes(index_dir: str, metric: str | None, threshold: float, group: str, keep: str,
                     stamp: tuple, db_url: str | None, between: tuple[str, str] | None, suffix: str) -> bytes:
    """The report of ``get_duplicates`` as a file's bytes (``suffix`` .csv, .json or .parquet), written once.

    Download buttons get these bytes, not a callable: a deferred callable is dropped when a rerun (a new threshold)
    stops, so a click during that rerun downloaded nothing (``MediaFileStorageError: Deferred file ... not found``).
    """
    return report_file_bytes(get_duplicates(index_dir, metric, threshold, group, keep, stamp, db_url, between),
                             suffix)


@st.cache_data(show_spinner="Projecting the embeddings...", max_entries=8)
def get_projection(index_dir: str, metric: str | None, method: str, limit: int, stamp: tuple,
                   db_url: str | None = None) -> Projection:
    """``project_index`` of the index at this ``stamp``."""
    return project_index(get_fresh_index(Path(index_dir), metric, db_url), method=method, limit=limit)


@st.cache_data(show_spinner="Drawing thumbnails...", max_entries=8)
def get_map_thumbnails(index_dir: str, metric: str | None, method: str, limit: int, stamp: tuple,
                       db_url: str | None = None) -> MapThumbnails:
    """``map_thumbnails`` of ``get_projection`` at the same settings (a bounded number of files is read, whatever
    the size of the index)."""
    return map_thumbnails(get_projection(index_dir, metric, method, limit, stamp, db_url))


@st.cache_data(show_spinner=False, max_entries=8)
def get_folder_choices(index_dir: str, metric: str | None, stamp: tuple, db_url: str | None = None) -> list[str]:
    """Folders a search can be narrowed to (indexed roots and the folders directly inside them)."""
    index = get_fresh_index(Path(index_dir), metric, db_url)
    rows = images_by_id(index, index.vectors.ids().tolist())
    return folder_choices({r.root for r in rows.values()}, ((r.root, r.relpath) for r in rows.values()))


@st.cache_data(show_spinner=False, max_entries=4096)
def get_thumbnail(path: str, size: int, mtime_ns: int, aspect: tuple[int, int] | None = None) -> bytes:
    """JPEG thumbnail of a file the caller has already checked (catalog or dataset reader); see views
    (``aspect``: letterboxed to that shape)."""
    return thumbnail_of_file(path, size, aspect=aspect)


def clear_index_caches() -> None:
    """Forget opened indexes (after the app built or changed one)."""
    get_index.clear()
    get_index_info.clear()


@st.cache_data(show_spinner="Reading NIGHTS...", max_entries=8)
def get_nights(root: str, split: str) -> TripletSet:
    """One split of the NIGHTS folder given on the command line."""
    from lookalike.data.nights import read_nights

    return read_nights(root, split)


@st.cache_data(show_spinner="Scoring triplets...", max_entries=32)
def get_nights_votes(root: str, split: str, metric: str, n: int) -> list[dict]:
    """The first ``n`` triplets of a NIGHTS split with ``metric``'s vote next to the people's."""
    from lookalike.judge.eval import score_2afc, triplet_distances

    m = get_metric(metric)
    triplets = get_nights(root, split)[:n]
    d_left, d_right = triplet_distances(m, triplets)
    scores = score_2afc(d_left, d_right, [t.p for t in triplets], lower_is_better=m.lower_is_better)
    return triplet_rows(triplets, d_left, d_right, scores, lower_is_better=m.lower_is_better)


@st.cache_data(show_spinner="Reading ImageNet-R...", max_entries=4)
def get_imagenet_r(root: str) -> ImageNetR:
    """The ImageNet-R folder given on the command line (unknown sub-folders skipped)."""
    from lookalike.data.imagenet_r import read_imagenet_r

    return read_imagenet_r(root, strict=False)
