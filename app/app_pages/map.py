"""Map: the collection's embeddings in 2-D (PCA, or UMAP when installed), coloured by folder; select points to see
them, and make one the query of a search."""

from __future__ import annotations

import streamlit as st

from lookalike.app import resources, widgets
from lookalike.app.projection import (
    DEFAULT_LIMIT,
    OTHER_FOLDERS,
    MapThumbnails,
    Projection,
    folder_colours,
    list_methods,
)
from lookalike.app.views import images_by_id, index_stamp, load_settings

#: Thumbnails shown for a selection at most.
MAX_SELECTED = 24


def map_figure(proj: Projection, thumbs: MapThumbnails | None = None):  # -> plotly Figure
    """One WebGL scatter trace per folder (each point carries its id and path for selection and hover), in colours
    of a qualitative palette; ``thumbs`` are drawn at their points, framed in their folder's colour."""
    import plotly.graph_objects as go

    colours = folder_colours(proj.folders)
    fig = go.Figure()
    by_folder: dict[str, list[int]] = {}
    for i, f in enumerate(proj.folders):
        by_folder.setdefault(f, []).append(i)
    for folder in sorted(by_folder, key=lambda f: (f == OTHER_FOLDERS, f)):
        idx = by_folder[folder]
        fig.add_trace(go.Scattergl(
            x=proj.xy[idx, 0], y=proj.xy[idx, 1], mode="markers", name=f"{folder} ({len(idx)})",
            marker={"size": 8 if len(proj.ids) < 5000 else 5, "opacity": 0.9, "color": colours[folder],
                    "line": {"width": 0.5, "color": "white"}},
            customdata=[[int(proj.ids[i]), proj.relpaths[i]] for i in idx],
            hovertemplate="%{customdata[1]}<extra>%{fullData.name}</extra>",
        ))
    for i, src in zip(thumbs.points, thumbs.images, strict=True) if thumbs is not None else ():
        fig.add_layout_image(source=src, x=float(proj.xy[i, 0]), y=float(proj.xy[i, 1]), xref="x", yref="y",
                             sizex=thumbs.width, sizey=thumbs.height, xanchor="center", yanchor="middle",
                             sizing="contain", layer="above")
    axis = proj.method if proj.explained is None else None
    xt = f"PC 1 ({proj.explained[0]:.0%} of variance)" if proj.explained else f"{axis} 1"
    yt = f"PC 2 ({proj.explained[1]:.0%} of variance)" if proj.explained else f"{axis} 2"
    fig.update_layout(height=640, margin={"l": 10, "r": 10, "t": 30, "b": 10}, dragmode="select",
                      legend={"title": {"text": "folder"}}, xaxis_title=xt, yaxis_title=yt, plot_bgcolor="white",
                      xaxis={"showgrid": True, "gridcolor": "#eeeeee", "zeroline": False},
                      yaxis={"showgrid": True, "gridcolor": "#eeeeee", "zeroline": False})
    return fig


def selected_ids(event: object) -> list[int]:
    """FAISS ids of the points selected on the chart (box, lasso or click), in selection order."""
    points = []
    try:
        points = event.selection.points  # type: ignore[attr-defined]
    except AttributeError:
        try:
            points = event["selection"]["points"]  # type: ignore[index]
        except (KeyError, TypeError):
            return []
    out = []
    for p in points or []:
        data = p.get("customdata") if isinstance(p, dict) else None
        if data:
            out.append(int(data[0]))
    return list(dict.fromkeys(out))


def main() -> None:
    settings = load_settings()
    st.title("Map")
    metrics = widgets.indexed_metrics(settings)
    with st.sidebar:
        metric = widgets.metric_choice_ui(metrics, key="map_metric")
        methods = list_methods()
        method = st.radio("Projection", methods, key="map_method", horizontal=True,
                          help="UMAP needs the umap-learn package (pip install 'lookalike[map]')")
        if len(methods) == 1:
            st.caption("UMAP: pip install 'lookalike[map]' (umap-learn) to enable it.")
        limit = st.select_slider("Points at most", [1000, 2000, 5000, 10_000, 20_000], value=DEFAULT_LIMIT,
                                 key="map_limit", help="larger collections are drawn as a random sample")
        show_thumbs = st.toggle("Thumbnails", value=True, key="map_thumbs",
                                help="draw images at points spread over the map; zoom in to see them larger")
    index = widgets.require_index_ui(settings, metric)
    try:
        proj = resources.get_projection(str(settings.index_dir), metric, method, limit,
                                        index_stamp(settings.index_dir), settings.db_url)
    except (ValueError, ImportError, KeyError) as e:
        widgets.error_ui(e, "cannot draw the map")
        return
    if proj.sampled:
        st.info(f"{proj.total:,} images: showing a random sample of {len(proj.ids):,} (seeded, the same each time). "
                f"Raise *Points at most* in the sidebar to draw more.", icon=":material/scatter_plot:")
    else:
        st.caption(f"All {len(proj.ids):,} images, {method} of the {index.info.metric} embeddings, coloured by "
                   f"folder. Hover a point for its file; zoom in (scroll) to see the thumbnails larger; drag a box "
                   f"or lasso (or click) to select.")
    thumbs = None
    if show_thumbs:
        thumbs = resources.get_map_thumbnails(str(settings.index_dir), metric, method, limit,
                                              index_stamp(settings.index_dir), settings.db_url)
    event = st.plotly_chart(map_figure(proj, thumbs), key="map_chart", on_select="rerun",
                            selection_mode=("points", "box", "lasso"), config={"displaylogo": False})
    chosen = selected_ids(event)
    if not chosen:
        st.caption("Select points on the map to see their images.")
        return
    st.subheader(f"{len(chosen)} selected" + (f" (first {MAX_SELECTED} shown)" if len(chosen) > MAX_SELECTED else ""))
    rows = images_by_id(index, chosen[:MAX_SELECTED])
    cols = st.columns(6)
    for n, i in enumerate(chosen[:MAX_SELECTED]):
        row = rows.get(i)
        if row is None:
            continue
        with cols[n % 6], st.container(border=True, key=f"map-sel-{n}"):
            widgets.catalog_image_ui(index, row.path, size=200)
            st.caption(row.relpath)
            if st.button("Similar", key=f"map-query-{n}", icon=":material/search:", width="stretch",
                         help="search with this image"):
                st.session_state["query_source"] = widgets.SOURCE_INDEXED
                st.session_state["query_path"] = row.relpath
                st.switch_page("app_pages/search.py", query_params={"q": row.relpath})


if __name__ == "__main__":
    main()
