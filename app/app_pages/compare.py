"""Compare metrics: two images under every registered metric that can run here; neighbours under several metrics."""

from __future__ import annotations

import streamlit as st
from PIL import Image

from lookalike.app import resources, widgets
from lookalike.app.views import AppSettings, index_state, load_settings, neighbour_overlap
from lookalike.indexer import search
from lookalike.judge.compare import STATUS_OK, compare_all, list_compare_metrics, missing_weights_reason
from lookalike.metric.maps import overlay_heatmap, pair_distance_map


def neighbours_ui(settings: AppSettings, metrics: list[str], picked: widgets.PickedImage) -> None:
    """The top-k of image A under two or three indexed metrics, side by side, with their overlap."""
    st.subheader("Neighbours of image A under several metrics")
    if len(metrics) < 2:
        st.info("The index holds vectors of one metric only; index the same folder with another `--metric` to "
                "compare neighbours side by side.")
        return
    chosen = st.multiselect("Metrics", metrics, default=metrics[:3], max_selections=3, key="nb_metrics")
    k = st.slider("Neighbours (k)", 1, 30, 8, key="nb_k")
    if not picked.ready or len(chosen) < 2:
        st.info("Choose image A and at least two metrics.")
        return
    columns = {}
    for name in chosen:
        try:
            idx = resources.get_fresh_index(settings.index_dir, name, settings.db_url)
            columns[name] = search(idx, picked.image if picked.image is not None else picked.path, k=k)
        except (ValueError, FileNotFoundError) as e:
            widgets.error_ui(e, name)
    if len(columns) < 2:
        return
    for col, (name, hits) in zip(st.columns(len(columns)), columns.items(), strict=True):
        with col:
            st.markdown(f"**{name}**")
            st.table([{"#": r, "path": h.relpath or h.path, "distance": round(h.distance, 4)}
                      for r, h in enumerate(hits, start=1)])
    st.table(neighbour_overlap(columns))


def distance_map_ui(metrics: list[str], img_a: Image.Image, img_b: Image.Image) -> None:
    """Where A differs from B under one metric: its distance map as a heat map over image A."""
    name = st.selectbox("Where A differs from B", metrics, key="cmp_map_metric",
                        help="metrics that can say where: efficientnet_lite0 (no download), LPIPS, DiffSim, "
                        "DreamSim patch variants, single-branch ViTs")
    try:
        dmap = pair_distance_map(resources.get_metric(name), img_a, img_b)
    except (TypeError, ValueError, RuntimeError) as e:
        widgets.error_ui(e, f"map of {name}")
        return
    st.image(overlay_heatmap(img_a, dmap), width="stretch",
             caption=f"{name}: dark = alike, bright = different ({dmap.lo:.3g} to {dmap.hi:.3g}, "
                     f"{dmap.values.shape[0]}x{dmap.values.shape[1]} grid)")


def main() -> None:
    settings = load_settings()
    st.title("Compare metrics")
    st.caption("Two images under every registered metric (DiffSim and DISTS included when their weights are present); "
               "each row says which direction means more similar, and metrics that can say where show a heat map.")
    metrics = widgets.indexed_metrics(settings)
    index = resources.get_fresh_index(settings.index_dir, metrics[0], settings.db_url) if metrics else None
    if index_state(settings.index_dir, settings.db_url) != "ok":
        st.info("No index yet: compare two uploaded images (build an index to pick indexed ones).")
    col_a, col_b = st.columns(2)
    with col_a:
        a = widgets.image_source_ui(settings, index, key="cmp_a", label="Image A")
        widgets.picked_preview_ui(index, a, width=280)
    with col_b:
        b = widgets.image_source_ui(settings, index, key="cmp_b", label="Image B")
        widgets.picked_preview_ui(index, b, width=280)
    names = list_compare_metrics()
    runnable = [n for n in names if missing_weights_reason(n) is None]
    chosen = st.multiselect("Metrics", names, default=runnable, key="cmp_metrics",
                            help="metrics whose weights are missing are listed below with the download command")
    if a.ready and b.ready:
        try:
            img_a, img_b = widgets.load_picked(index, a), widgets.load_picked(index, b)
        except ValueError as e:
            widgets.error_ui(e)
            return
        with st.spinner("Measuring..."):
            wanted = [n for n in names if n in chosen or n not in runnable]
            rows = compare_all(img_a, img_b, metrics=wanted, load=resources.get_metric)
        ok = [r for r in rows if r.status == STATUS_OK and r.metric in chosen]
        mappable = [r.metric for r in ok if resources.get_metric(r.metric).has_distance_map]
        col_table, col_map = st.columns([3, 2]) if mappable else (st.container(), None)
        with col_table, st.container(key="compare-table"):
            st.table([{"metric": r.metric, "value": round(r.value, 4), "unit": r.unit, "direction": r.direction,
                       "kind": r.kind} for r in ok])
        if col_map is not None:
            with col_map:
                distance_map_ui(mappable, img_a, img_b)
        skipped = [r for r in rows if r.status != STATUS_OK]
        if skipped:
            with st.expander(f"{len(skipped)} metrics cannot run here", expanded=not ok):
                st.table([{"metric": r.metric, "reason": r.reason} for r in skipped])
    else:
        st.info("Choose two images to compare.")
    if metrics:
        neighbours_ui(settings, metrics, a)


if __name__ == "__main__":
    main()
