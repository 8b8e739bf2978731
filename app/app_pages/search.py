"""Search: upload an image or pick an indexed one, see its nearest indexed images; a result can be the next query."""

from __future__ import annotations

import streamlit as st

from lookalike.app import resources, widgets
from lookalike.app.views import load_settings
from lookalike.indexer import search
from lookalike.metric import WeightsNotFound, list_rerankers

NO_RERANK = "(none)"


def rerank_ui() -> tuple[str | None, int]:
    """Sidebar: an optional pairwise re-ranker (only those whose weights are present) and how many it scores."""
    with st.sidebar:
        name = st.selectbox("Re-rank with", [NO_RERANK, *list_rerankers()], key="search_rerank",
                            help="re-score the index's top candidates with a pairwise metric (DiffSim, LPIPS, DISTS, "
                                 "SSIM...) and re-order them by it")
        k = st.slider("Candidates re-ranked", 5, 200, 50, key="search_rerank_k") if name != NO_RERANK else 50
    return (None if name == NO_RERANK else name), k


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
    opts = widgets.search_options_ui(widgets.indexed_metrics(settings))
    rerank, rerank_k = rerank_ui()
    index = widgets.require_index_ui(settings, opts.metric)
    adopt_query_param()
    picked = widgets.image_source_ui(settings, index, key="query", label="Query")
    if not picked.ready:
        st.info("Upload an image, or pick an indexed one, to see the most similar indexed images.")
        return
    widgets.picked_preview_ui(index, picked)
    try:
        reranker = resources.get_metric(rerank) if rerank else None
        with st.spinner(f"Re-ranking with {rerank}..." if rerank else "Searching..."):
            hits = search(index, picked.image if picked.image is not None else picked.path, k=opts.k,
                          rerank=reranker, rerank_k=rerank_k)
    except (ValueError, FileNotFoundError, KeyError, WeightsNotFound) as e:
        widgets.error_ui(e, "search failed")
        return
    if rerank:
        way = "higher" if hits and not hits[0].lower_is_better else "lower"
        st.subheader(f"{len(hits)} nearest under {index.info.metric}, re-ranked by {rerank} "
                     f"({way} = more similar)")
    else:
        st.subheader(f"{len(hits)} nearest under {index.info.metric} (1 - cosine, lower = more similar)")
    widgets.hit_grid_ui(index, hits, columns=opts.columns, key="hit", on_pick=use_as_query)


if __name__ == "__main__":
    main()
