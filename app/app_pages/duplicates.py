"""Duplicates: near-duplicate groups at a distance threshold, a page at a time, the keeper marked and each pair's tier
(exact / near / similar); "Same" and "Not duplicates" on every pair record a person's verdict (the labels that
``lookalike label`` writes); optionally across two folders; CSV, JSON and Parquet reports."""

from __future__ import annotations

import streamlit as st

from lookalike.app import resources, widgets
from lookalike.app.dedup_views import DOWNLOADS, GroupPair, summary_markdown
from lookalike.app.settings import AppSettings
from lookalike.app.views import index_stamp, load_settings, page_bounds
from lookalike.common.errors import LookalikeError
from lookalike.indexer import DedupReport, DuplicateGroup, ImageIndex, add_labels, get_tier_bounds

#: Pairs with label buttons shown per group (the report has them all).
PAIRS_SHOWN = 10
_FLASH = "dup_flash"
_HISTORY = "dup_download_history"
#: Reports whose download files outlive the run that showed them (see ``downloads_ui``).
STALE_REPORTS = 3


def label_pair(settings: AppSettings, a: str, b: str, same: bool) -> None:
    """Button callback: store the verdict on (a, b) in the index catalog; the message shows on the next run."""
    verdict = "the same picture" if same else "not duplicates"
    try:
        add_labels(str(settings.index_dir), [(a, b, 1.0 if same else 0.0)], db_url=settings.db_url,
                   source="app")
    except (LookalikeError, OSError) as e:
        st.session_state[_FLASH] = ("error", f"The label was not saved: {e}")
        return
    st.session_state[_FLASH] = ("success", f"Saved: {a.rsplit('/', 1)[-1]} and {b.rsplit('/', 1)[-1]} are "
                                           f"{verdict}.")


def pair_ui(settings: AppSettings, n: int, i: int, p: GroupPair) -> None:
    """One pair: names, tier, distance, its label if any, and the two verdict buttons."""
    c1, c2, c3 = st.columns([6, 1, 1.4], vertical_alignment="center")
    label = f" · labelled **{p.label}**" if p.label else ""
    c1.markdown(f"`{p.tier}` {p.distance:.4f} · {p.a_rel} ↔ {p.b_rel}{label}")
    c2.button("Same", key=f"dup-same-{n}-{i}", on_click=label_pair, args=(settings, p.a, p.b, True),
              disabled=p.label == "same", help="always group these two")
    c3.button("Not duplicates", key=f"dup-diff-{n}-{i}", on_click=label_pair, args=(settings, p.a, p.b, False),
              help="never report this pair again")


def stale_downloads_ui() -> None:
    """Hidden buttons holding the report files of the last few runs, drawn first thing in every run.

    Streamlit forgets a run's media files when the next run starts and deletes a download file once two runs have
    ended without referencing it, so quick threshold changes (each stopping the run before) deleted the file of the
    button still on screen, and a click on it downloaded nothing. Referencing them before any slow work keeps them.
    """
    history: list[tuple[str, bytes]] = st.session_state.setdefault(_HISTORY, [])
    mimes = {suffix: (name, mime) for name, suffix, mime in DOWNLOADS}
    with st.container(key="stale-downloads"):  # hidden (widgets.APP_CSS)
        for i, (suffix, data) in enumerate(history):
            name, mime = mimes[suffix]
            st.download_button(f"Download {name}", data, f"duplicates{suffix}", mime, on_click="ignore",
                               key=f"dup-stale-{i}")


def downloads_ui(key: tuple) -> None:
    """The report as CSV / JSON / Parquet: bytes written once per report (cached), not callables (a stopped rerun
    dropped a deferred callable: ``MediaFileStorageError``); the files are kept for the next runs by
    ``stale_downloads_ui``, so a click on a button a rerun is about to replace fetches the report it showed."""
    current = [(suffix, resources.get_report_bytes(*key, suffix)) for _, suffix, _ in DOWNLOADS]
    history: list[tuple[str, bytes]] = st.session_state.setdefault(_HISTORY, [])
    history.extend(item for item in current if item not in history)
    del history[:-STALE_REPORTS * len(DOWNLOADS)]
    cols = st.columns([1] * len(DOWNLOADS) + [3])
    for col, (name, suffix, mime) in zip(cols, DOWNLOADS, strict=False):
        col.download_button(f"Download {name}", dict(current)[suffix], f"duplicates{suffix}", mime,
                            on_click="ignore", key=f"dup-download-{suffix[1:]}")


def group_ui(settings: AppSettings, index: ImageIndex, n: int, group: DuplicateGroup, pairs: list[GroupPair]) -> None:
    """One group as a row of thumbnails (the keeper first, each duplicate with its tier and distance to the keeper),
    then its pairs with the verdict buttons."""
    members = [group.keeper, *group.duplicates]
    with st.container(border=True, key=f"group-{n}"):
        st.markdown(f"**Group {n + 1}**: {len(members)} files")
        cols = st.columns(min(max(len(members), 4), 6))
        for i, (col, m) in enumerate(zip(cols, members, strict=False)):
            with col:
                widgets.catalog_image_ui(index, m.path, size=240)
                role = "**KEEP**" if i == 0 else f"`{m.tier}` distance `{m.distance:.4f}`"
                st.markdown(f"{role}  \n{m.relpath}  \n{m.width}x{m.height}, {m.size / 1e3:.0f} kB")
        if len(members) > len(cols):
            st.caption(f"... and {len(members) - len(cols)} more (see the report)")
        for i, p in enumerate(pairs[:PAIRS_SHOWN]):
            pair_ui(settings, n, i, p)
        if len(pairs) > PAIRS_SHOWN:
            st.caption(f"... and {len(pairs) - PAIRS_SHOWN} more pairs (see the report)")


def between_ui(settings: AppSettings, metric: str | None) -> tuple[str, str] | None:
    """Sidebar: optionally only pairs across two folders (A checked against B, the reference)."""
    with st.sidebar:
        if not st.toggle("Across two folders", key="dup_between_on",
                         help="only pairs with one image in each folder: test images that leak from a training set, "
                              "new arrivals that repeat an archive"):
            return None
        folders = resources.get_folder_choices(str(settings.index_dir), metric, index_stamp(settings.index_dir),
                                               settings.db_url)
        if len(folders) < 2:
            st.info("The index has a single folder.")
            return None
        a = st.selectbox("Folder A (checked)", folders, index=min(1, len(folders) - 1), key="dup_between_a")
        b = st.selectbox("Folder B (reference, kept)", folders, index=min(2, len(folders) - 1), key="dup_between_b")
    return (a, b)


def matches_ui(report: DedupReport) -> None:
    """Across two folders: the nearest image under B of each image under A that has one."""
    a, b = report.between or ("", "")
    na, nb = report.images_between or (0, 0)
    st.subheader(f"{len(report.matches):,} of {na:,} images under A have a match among the {nb:,} under B")
    st.caption(f"A = {a}, B = {b}")
    if report.matches:
        st.dataframe([{"image under A": p.a, "nearest under B": p.b, "distance": round(p.distance, 4),
                       "tier": p.tier} for p in report.matches], hide_index=True, key="dup_matches")


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
    stale_downloads_ui()
    settings = load_settings()
    st.title("Duplicates")
    metrics = widgets.indexed_metrics(settings)
    index = widgets.require_index_ui(settings, metrics[0] if metrics else None)
    default = index.info.dedup_threshold or get_tier_bounds(index).near
    opts = widgets.dedup_options_ui(metrics, default)
    if opts.metric and opts.metric != index.info.metric:
        index = widgets.require_index_ui(settings, opts.metric)
    between = between_ui(settings, opts.metric)
    key = (str(settings.index_dir), opts.metric, opts.threshold, opts.group, opts.keep,
           index_stamp(settings.index_dir), settings.db_url, between)
    try:
        report = resources.get_duplicates(*key)
    except (ValueError, FileNotFoundError) as e:
        widgets.error_ui(e, "cannot find duplicates")
        return
    flash = st.session_state.pop(_FLASH, None)
    if flash:
        (st.success if flash[0] == "success" else st.error)(flash[1])
    st.markdown(summary_markdown(report))
    for w in report.warnings:
        st.warning(w)
    downloads_ui(key)
    if report.between is not None:
        matches_ui(report)
    if not report.groups:
        st.info("No duplicates at this threshold; move the slider up to link less similar images.")
        return
    page = pager_ui(len(report.groups), opts.page_size)
    start, stop, _pages = page_bounds(len(report.groups), page, opts.page_size)
    st.caption(f"groups {start + 1:,} to {stop:,} of {len(report.groups):,}, largest first")
    pairs = resources.get_group_pairs(*key)
    for n in range(start, stop):
        group_ui(settings, index, n, report.groups[n], pairs[n])


if __name__ == "__main__":
    main()
