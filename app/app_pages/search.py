"""Search: upload an image or pick an indexed one, see its nearest indexed images (in one folder, re-ranked if
asked); a result opens full size or becomes the next query."""

from __future__ import annotations

import streamlit as st

from lookalike.app import resources, widgets
from lookalike.app.queries import list_rerank_choices, run_query
from lookalike.app.views import index_stamp, load_settings
from lookalike.common.errors import LookalikeError


def use_as_query(path: str) -> None:
    """Button callback: make an indexed result the query (and put it in the URL as ``?q=``)."""
    st.session_state["query_source"] = widgets.SOURCE_INDEXED
    st.session_state["query_path"] = path
    st.query_params["q"] = path


def adopt_query_param() -> None:
    """A new ``?q=PATH`` in the URL selects that indexed image (it is checked against the catalog later)."""
    q = st.query_params.get("q")
    if q and q != st.session_state.get("_q_seen"):
        st.session_state["_q_seen"] = q
        st.session_state["query_source"] = widgets.SOURCE_INDEXED
        st.session_state["query_path"] = q


def main() -> None:
    settings = load_settings()
    st.title("Search")
    metrics = widgets.indexed_metrics(settings)
    metric = st.session_state.get("search_metric") if len(metrics) > 1 else (metrics[0] if metrics else None)
    folders = []
    if metrics:
        try:
            folders = resources.get_folder_choices(str(settings.index_dir), metric, index_stamp(settings.index_dir),
                                                   settings.db_url)
        except (ValueError, FileNotFoundError):
            folders = []
    opts = widgets.search_options_ui(metrics, folders, list_rerank_choices())
    index = widgets.require_index_ui(settings, opts.metric)
    adopt_query_param()
    col_preview, col_query = st.columns([1, 3], vertical_alignment="top")
    with col_query:
        picked = widgets.image_source_ui(settings, index, key="query", label="Query")
    if not picked.ready:
        st.info("Upload an image, or pick an indexed one, to see the most similar indexed images.")
        return
    with col_preview:
        widgets.picked_preview_ui(index, picked)
    try:
        res = run_query(index, picked.image if picked.image is not None else picked.path, k=opts.k,
                        folder=opts.folder, rerank=opts.rerank)
    except (LookalikeError, ValueError, FileNotFoundError, KeyError) as e:
        widgets.error_ui(e, "search failed")
        return
    where = f" in {res.folder}" if res.folder else ""
    way = "higher" if res.hits and not res.hits[0].lower_is_better else "lower"
    how = f", re-ranked by {res.rerank} ({way} = more similar)" if res.rerank else ""
    st.subheader(f"{len(res.hits)} nearest{where} under {index.info.metric}{how}")
    st.caption("distance: 1 - cosine of the embeddings, lower = more similar"
               + (f"; the {res.rerank} score comes first on each card" if res.rerank else ""))
    if res.folder and not res.hits:
        st.info(f"No indexed image in {res.folder}.")
    widgets.hit_grid_ui(index, res.hits, columns=opts.columns, key="hit", on_pick=use_as_query)


if __name__ == "__main__":
    main()
