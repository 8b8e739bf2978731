"""Duplicates: near-duplicate groups at a distance threshold, a page at a time, the keeper marked; CSV and JSON
reports."""

from __future__ import annotations

import streamlit as st

from lookalike.app import resources, widgets
from lookalike.app.views import index_stamp, load_settings, page_bounds, report_bytes
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


def pager_ui(total: int, page_size: int, *, key: str = "dup_page") -> int:
    """Page number input (1-based) with previous / next buttons; returns the page to show."""
    pages = max(1, -(-total // page_size))
    if st.session_state.get(key, 1) > pages:  # fewer groups than before (a new threshold): back to the last page
        st.session_state[key] = pages

    def step(delta: int) -> None:
        st.session_state[key] = min(pages, max(1, st.session_state.get(key, 1) + delta))

    c1, c2, c3, c4 = st.columns([1, 2, 1, 4], vertical_alignment="bottom")
    c1.button("Previous", key=f"{key}_prev", on_click=step, args=(-1,), disabled=st.session_state.get(key, 1) <= 1)
    page = c2.number_input(f"Page (of {pages:,})", min_value=1, max_value=pages, step=1, key=key)
    c3.button("Next", key=f"{key}_next", on_click=step, args=(1,), disabled=page >= pages)
    return int(page)


def main() -> None:
    settings = load_settings()
    st.title("Duplicates")
    metrics = widgets.indexed_metrics(settings)
    index = widgets.require_index_ui(settings, metrics[0] if metrics else None)
    opts = widgets.dedup_options_ui(metrics, index.info.dedup_threshold)
    if opts.metric and opts.metric != index.info.metric:
        index = widgets.require_index_ui(settings, opts.metric)
    key = (str(settings.index_dir), opts.metric, opts.threshold, opts.group, opts.keep,
           index_stamp(settings.index_dir), settings.db_url)
    try:
        report = resources.get_duplicates(*key)
    except (ValueError, FileNotFoundError) as e:
        widgets.error_ui(e, "cannot find duplicates")
        return
    st.markdown(f"**{len(report.groups):,} groups**, {report.n_duplicates:,} duplicates and {len(report.pairs):,} "
                f"pairs among {report.images:,} images at distance <= {report.threshold:.3f} ({report.metric}).")
    c1, c2, _ = st.columns([1, 1, 4])
    # The reports are written only when a button is pressed (callables), not on every page turn.
    c1.download_button("Download CSV", lambda: report_bytes(report, ".csv"), "duplicates.csv", "text/csv")
    c2.download_button("Download JSON", lambda: report_bytes(report, ".json"), "duplicates.json", "application/json")
    if not report.groups:
        st.info("No duplicates at this threshold; move the slider up to link less similar images.")
        return
    page = pager_ui(len(report.groups), opts.page_size)
    start, stop, _pages = page_bounds(len(report.groups), page, opts.page_size)
    st.caption(f"groups {start + 1:,} to {stop:,} of {len(report.groups):,}, largest first")
    pairs = resources.get_group_pairs(*key)
    for n in range(start, stop):
        group_ui(index, n, report.groups[n], pairs[n])

if __name__ == "__main__":
    main()
