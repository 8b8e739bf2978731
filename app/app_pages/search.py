"""Search: upload an image or pick an indexed one, see its nearest indexed images; a result can be the next query."""

from __future__ import annotations

import streamlit as st

from lookalike.app import widgets
from lookalike.app.views import load_settings
from lookalike.indexer import search


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
    index = widgets.require_index_ui(settings, opts.metric)
    adopt_query_param()
    picked = widgets.image_source_ui(settings, index, key="query", label="Query")
    if not picked.ready:
        st.info("Upload an image, or pick an indexed one, to see the most similar indexed images.")
        return
    widgets.picked_preview_ui(index, picked)
    try:
        hits = search(index, picked.image if picked.image is not None else picked.path, k=opts.k)
    except (ValueError, FileNotFoundError) as e:
        widgets.error_ui(e, "search failed")
        return
    st.subheader(f"{len(hits)} nearest under {index.info.metric} (1 - cosine, lower = more similar)")
    widgets.hit_grid_ui(index, hits, columns=opts.columns, key="hit", on_pick=use_as_query)


if __name__ == "__main__":
    main()
