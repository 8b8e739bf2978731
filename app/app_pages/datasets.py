"""Datasets: NIGHTS triplets (people's vote vs a metric's) and ImageNet-R neighbours across renditions.

Images here come from the dataset folders given on the command line (``lookalike app --nights DIR --imagenet-r
DIR``), as listed by their readers; nothing typed in the page names a file to read.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from lookalike.app import resources, widgets
from lookalike.app.views import AppSettings, NotInCatalog, catalog_row, load_settings, reader_available, rendition_of
from lookalike.indexer import search
from lookalike.judge.compare import list_compare_metrics, missing_weights_reason


def nights_ui(settings: AppSettings) -> None:
    if not reader_available("lookalike.data.nights"):
        st.info("The NIGHTS reader (lookalike.data.nights) is not available in this installation.")
        return
    if settings.nights_root is None:
        st.info("Start the app with `--nights DIR` (the folder holding NIGHTS' data.csv) to browse its triplets.")
        return
    runnable = [n for n in list_compare_metrics() if missing_weights_reason(n) is None]
    c1, c2, c3 = st.columns(3)
    metric = c1.selectbox("Metric", runnable, key="nights_metric")
    split = c2.selectbox("Split", ["test", "val", "train", "test_imagenet", "test_no_imagenet"], key="nights_split")
    n = c3.slider("Triplets scored", 10, 500, 50, 10, key="nights_n")
    only_disagree = st.checkbox("Only triplets where the metric disagrees with people", key="nights_disagree")
    try:
        triplets = resources.get_nights(str(settings.nights_root), split)
        rows = resources.get_nights_votes(str(settings.nights_root), split, metric, n)
    except (ValueError, FileNotFoundError) as e:
        widgets.error_ui(e, "NIGHTS")
        return
    scored = [r for r in rows if "error" not in r]
    if scored:
        st.markdown(f"2AFC score of **{metric}** on these {len(scored)} triplets: "
                    f"**{sum(r['score'] for r in scored) / len(scored):.3f}** (1 = always agrees with people)")
    shown = [r for r in rows if not only_disagree or r.get("agrees") is False]
    st.dataframe(shown, hide_index=True, key="nights_table")
    if not shown:
        return
    pick = st.selectbox("Show triplet", [r["#"] for r in shown], format_func=lambda i: f"#{i} ({triplets[i].id})",
                        key="nights_pick")
    t, row = triplets[pick], next(r for r in shown if r["#"] == pick)
    cols = st.columns(3)
    captions = [f"reference ({t.id})",
                f"left: people {1 - t.p:.2f}, d = {row.get('d(ref, left)', '-')}",
                f"right: people {t.p:.2f}, d = {row.get('d(ref, right)', '-')}"]
    for col, path, cap in zip(cols, (t.ref, t.left, t.right), captions, strict=True):
        with col:
            widgets.dataset_image_ui(path, settings.nights_root, cap)


def imagenet_r_ui(settings: AppSettings) -> None:
    if not reader_available("lookalike.data.imagenet_r"):
        st.info("The ImageNet-R reader (lookalike.data.imagenet_r) is not available in this installation.")
        return
    if settings.imagenet_r_root is None:
        st.info("Start the app with `--imagenet-r DIR` (one folder per WordNet id) to browse its classes.")
        return
    try:
        data = resources.get_imagenet_r(str(settings.imagenet_r_root))
    except (ValueError, FileNotFoundError) as e:
        widgets.error_ui(e, "ImageNet-R")
        return
    by_path = {it.path: it for it in data}
    classes = data.classes_present()
    c = st.selectbox("Class", classes, format_func=lambda c: f"{c.name} ({c.wnid})", key="inr_class")
    files = [it.path for it in data if it.label == c.index]
    path = st.selectbox("Image", files, format_func=lambda p: Path(p).name, key="inr_image")
    widgets.dataset_image_ui(path, settings.imagenet_r_root, f"{c.name}: {Path(path).name}")
    metrics = widgets.indexed_metrics(settings)
    if not metrics:
        st.info("Index this folder to see neighbours: `lookalike index "
                f"{settings.imagenet_r_root} --index {settings.index_dir}`.")
        return
    index = resources.get_fresh_index(settings.index_dir, widgets.metric_choice_ui(metrics, key="inr_metric"),
                                      settings.db_url)
    try:
        catalog_row(index, path)
        hits = search(index, path, k=st.slider("Neighbours (k)", 1, 30, 12, key="inr_k"))
    except (NotInCatalog, ValueError, FileNotFoundError) as e:
        widgets.error_ui(e)
        st.info(f"Index the ImageNet-R folder first: `lookalike index {settings.imagenet_r_root} "
                f"--index {settings.index_dir}`.")
        return
    same = sum(1 for h in hits if h.path in by_path and by_path[h.path].label == c.index)
    st.markdown(f"**{same} / {len(hits)}** neighbours are {c.name}; renditions: "
                + ", ".join(sorted({rendition_of(h.path) for h in hits if rendition_of(h.path)})))
    widgets.hit_grid_ui(index, hits, columns=6, key="inr-hit")


def main() -> None:
    settings = load_settings()
    st.title("Datasets")
    tab_nights, tab_inr = st.tabs(["NIGHTS triplets", "ImageNet-R neighbours"])
    with tab_nights:
        nights_ui(settings)
    with tab_inr:
        imagenet_r_ui(settings)


if __name__ == "__main__":
    main()
