"""Duplicates: near-duplicate groups at a distance threshold, the keeper marked; CSV and JSON reports."""

from __future__ import annotations

import streamlit as st

from lookalike.app import resources, widgets
from lookalike.app.views import index_stamp, load_settings, report_bytes
from lookalike.indexer import DuplicateGroup, ImageIndex


def group_ui(index: ImageIndex, n: int, group: DuplicateGroup, pairs: list[tuple[str, str, float]]) -> None:
    """One group as a row of thumbnails: the keeper first, then each duplicate with its distance to the keeper."""
    members = [group.keeper, *group.duplicates]
    with st.container(border=True, key=f"group-{n}"):
        st.markdown(f"**Group {n + 1}**: {len(members)} files")
        cols = st.columns(min(max(len(members), 4), 6))
        for i, (col, m) in enumerate(zip(cols, members, strict=False)):
            with col:
                widgets.catalog_image_ui(index, m.path, size=240)
                role = "**KEEP**" if i == 0 else f"distance `{m.distance:.4f}`"
                st.markdown(f"{role}  \n{m.relpath}  \n{m.width}x{m.height}, {m.size / 1e3:.0f} kB")
        if len(members) > len(cols):
            st.caption(f"... and {len(members) - len(cols)} more (see the report)")
        if pairs:
            st.caption("pair distances: " + "; ".join(f"{a} - {b}: {d:.4f}" for a, b, d in pairs[:10]))


def main() -> None:
    settings = load_settings()
    st.title("Duplicates")
    metrics = widgets.indexed_metrics(settings)
    index = widgets.require_index_ui(settings, metrics[0] if metrics else None)
    opts = widgets.dedup_options_ui(metrics, index.info.dedup_threshold)
    if opts.metric and opts.metric != index.info.metric:
        index = widgets.require_index_ui(settings, opts.metric)
    try:
        report = resources.get_duplicates(str(settings.index_dir), opts.metric, opts.threshold, opts.group,
                                          opts.keep, index_stamp(settings.index_dir), settings.db_url)
    except (ValueError, FileNotFoundError) as e:
        widgets.error_ui(e, "cannot find duplicates")
        return
    st.markdown(f"**{len(report.groups)} groups**, {report.n_duplicates} duplicates and {len(report.pairs)} pairs "
                f"among {report.images} images at distance <= {report.threshold:.3f} ({report.metric}).")
    c1, c2, _ = st.columns([1, 1, 4])
    c1.download_button("Download CSV", report_bytes(report, ".csv"), "duplicates.csv", "text/csv")
    c2.download_button("Download JSON", report_bytes(report, ".json"), "duplicates.json", "application/json")
    if not report.groups:
        st.info("No duplicates at this threshold; move the slider up to link less similar images.")
        return
    shown = report.groups[:opts.max_groups]
    group_of = {m.path: n for n, g in enumerate(shown) for m in (g.keeper, *g.duplicates)}
    relpath = {m.path: m.relpath for g in shown for m in (g.keeper, *g.duplicates)}
    pairs: list[list[tuple[str, str, float]]] = [[] for _ in shown]
    for p in report.pairs:  # closest first
        if p.a in group_of and group_of[p.a] == group_of.get(p.b):
            pairs[group_of[p.a]].append((relpath[p.a], relpath[p.b], p.distance))
    for n, g in enumerate(shown):
        group_ui(index, n, g, pairs[n])
    if len(report.groups) > opts.max_groups:
        st.caption(f"{len(report.groups) - opts.max_groups} more groups in the reports.")


if __name__ == "__main__":
    main()
