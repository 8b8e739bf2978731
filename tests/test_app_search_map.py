"""The app's landing page, folder-narrowed search, full-size results, the Map page and paginated duplicates
(``AppTest``, no browser), plus the plain helpers behind them (projection, query narrowing, paging).

The tests share the session's ``pairs_index``: six real photos and an edited copy of each in ``edits/`` (six known
duplicate groups), embedded with the real offline model ``efficientnet_lite0`` (read-only).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from support import PAIR_NAMES, PHOTOS, card_text, edited_copy

from lookalike.app.settings import ENV_IMAGENET_R, ENV_INDEX, ENV_MAX_UPLOAD_MB, ENV_NIGHTS
from lookalike.data.images import open_image

st_testing = pytest.importorskip("streamlit.testing.v1")
APP = Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"
NAMES = PAIR_NAMES
TIMEOUT = 120


def edited(name: str):  # noqa: ANN201 - a PIL image
    return edited_copy(open_image(PHOTOS / name))


@pytest.fixture(scope="module")
def collection(pairs_index: dict[str, Path]) -> dict[str, Path]:
    """The shared ``pairs_index`` (read-only): six photos and an edited copy of each under ``edits/``."""
    return pairs_index


@pytest.fixture(autouse=True)
def _fresh_caches() -> Iterator[None]:
    import streamlit as st

    st.cache_resource.clear()
    st.cache_data.clear()
    yield


def _app(monkeypatch: pytest.MonkeyPatch, index_dir: Path, page: str | None = None):  # noqa: ANN202
    monkeypatch.setenv(ENV_INDEX, str(index_dir))
    for var in (ENV_NIGHTS, ENV_IMAGENET_R, ENV_MAX_UPLOAD_MB):
        monkeypatch.delenv(var, raising=False)
    at = st_testing.AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    if page:
        at.switch_page(f"app_pages/{page}.py").run()
    _ok(at)
    return at


def _ok(at) -> None:  # noqa: ANN001
    assert not at.exception, [e.message for e in at.exception]


def _hits(at) -> list[str]:  # noqa: ANN001
    """The Search result cards, in rank order: "**#1** &nbsp; `0.0000`\nphotos/edits/x.jpg" (``card_text``)."""
    return [card_text(m.value) for m in at.markdown if m.value.startswith("**#")]


# --- landing --------------------------------------------------------------------------------------------------------


def test_opens_on_search_with_vectors_and_on_overview_without(monkeypatch: pytest.MonkeyPatch,
                                                              collection: dict[str, Path], tmp_path: Path) -> None:
    from lookalike.indexer import build_index

    at = _app(monkeypatch, collection["index"])
    assert [t.value for t in at.title] == ["Search"]
    (tmp_path / "empty").mkdir()
    build_index(tmp_path / "empty", tmp_path / "index", metric="efficientnet_lite0", workers=0, progress=False)
    at = _app(monkeypatch, tmp_path / "index")
    assert [t.value for t in at.title] == ["lookalike"]  # Overview: nothing to search yet
    assert any("holds no vectors yet" in i.value for i in at.info)
    at = _app(monkeypatch, tmp_path / "not_built")
    assert [t.value for t in at.title] == ["lookalike"] and any("no index at" in i.value for i in at.info)


# --- search ---------------------------------------------------------------------------------------------------------


def test_search_in_one_folder_and_open_a_result_full_size(monkeypatch: pytest.MonkeyPatch,
                                                          collection: dict[str, Path]) -> None:
    at = _app(monkeypatch, collection["index"], "search")
    folders = at.selectbox(key="search_folder").options
    assert str(collection["photos"]) in folders and str(collection["photos"] / "edits") in folders
    at.query_params["q"] = NAMES[0]
    at.run()
    _ok(at)
    everywhere = _hits(at)
    assert len(everywhere) == 12 and everywhere[0].endswith(NAMES[0]) and everywhere[1].endswith("edits/" + NAMES[0])
    at.selectbox(key="search_folder").set_value(str(collection["photos"] / "edits")).run()
    _ok(at)
    inside = _hits(at)
    assert len(inside) == 6 and all("edits/" in h for h in inside)
    assert inside[0].endswith("edits/" + NAMES[0])
    assert any("in " + str(collection["photos"] / "edits") in s.value for s in at.subheader)
    assert len(at.get("image")) == 6 + 1
    at.button(key="hit-open-1").click().run()
    _ok(at)
    w, h = edited(NAMES[0]).size
    shown = [m.value for m in at.markdown if "distance" in m.value and "pixels" in m.value]
    assert shown, [m.value for m in at.markdown]
    assert str(collection["photos"] / "edits" / NAMES[0]) in shown[0] and f"{w} x {h} pixels" in shown[0]
    assert len(at.get("image")) == 6 + 1 + 1  # six thumbnails, the query's preview, and the full-size image


def test_rerank_choice_only_when_the_library_can_rerank(monkeypatch: pytest.MonkeyPatch,
                                                        collection: dict[str, Path]) -> None:
    from lookalike.app.queries import list_rerank_choices

    at = _app(monkeypatch, collection["index"], "search")
    keys = {s.key for s in at.selectbox}
    if not list_rerank_choices():
        assert "search_rerank" not in keys
        return
    choice = list_rerank_choices()[0]
    at.selectbox(key="search_rerank").set_value(choice)
    at.query_params["q"] = NAMES[0]
    at.run()
    _ok(at)
    assert _hits(at) and any(f"re-ranked by {choice}" in s.value for s in at.subheader)


# --- map ------------------------------------------------------------------------------------------------------------


def test_map_page_draws_every_image_coloured_by_folder(monkeypatch: pytest.MonkeyPatch,
                                                       collection: dict[str, Path]) -> None:
    import json

    at = _app(monkeypatch, collection["index"], "map")
    assert [t.value for t in at.title] == ["Map"]
    assert any("All 12 images" in c.value for c in at.caption)
    charts = at.get("plotly_chart")
    assert len(charts) == 1
    spec = json.loads(charts[0].proto.spec)
    names = sorted(t["name"] for t in spec["data"])
    assert names == ["photos (6)", "photos/edits (6)"]
    assert all(t["type"] == "scattergl" for t in spec["data"])
    ids = [c[0] for t in spec["data"] for c in t["customdata"]]
    assert len(set(ids)) == 12


def test_projection_samples_past_the_limit_and_reads_only_the_sample() -> None:
    from lookalike.app.projection import project_vectors

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((2, 64)).astype(np.float32) * 5
    n = 100_000
    labels = rng.integers(0, 2, n)
    xb = centres[labels] + rng.standard_normal((n, 64)).astype(np.float32)
    ids = np.arange(1000, 1000 + n, dtype=np.int64)
    asked: list[int] = []

    def get(chosen: np.ndarray) -> np.ndarray:
        asked.append(len(chosen))
        return xb[chosen - 1000]

    proj = project_vectors(ids, get, limit=5000)
    assert proj.sampled and proj.total == n and len(proj.ids) == 5000 and asked == [5000]
    assert len(np.unique(proj.ids)) == 5000 and set(proj.ids.tolist()) <= set(ids.tolist())
    again = project_vectors(ids, get, limit=5000)
    assert np.array_equal(again.ids, proj.ids) and np.allclose(again.xy, proj.xy)  # seeded: the same map each time
    # the two clusters separate on the first principal axis
    lab = labels[proj.ids - 1000]
    m0, m1 = proj.xy[lab == 0, 0].mean(), proj.xy[lab == 1, 0].mean()
    spread = proj.xy[:, 0].std()
    assert abs(m0 - m1) > 1.5 * spread
    small = project_vectors(ids[:50], get, limit=5000)
    assert not small.sampled and len(small.ids) == 50
    with pytest.raises(ValueError, match="unknown projection"):
        project_vectors(ids, get, method="tsne")


# --- duplicates -----------------------------------------------------------------------------------------------------


def test_duplicates_are_paginated(monkeypatch: pytest.MonkeyPatch, collection: dict[str, Path]) -> None:
    at = _app(monkeypatch, collection["index"], "duplicates")
    at.slider(key="dup_threshold").set_value(0.1)
    at.select_slider(key="dup_page_size").set_value(5).run()
    _ok(at)
    assert any("**6 groups**" in m.value for m in at.markdown)
    groups = [m.value for m in at.markdown if m.value.startswith("**Group ")]
    assert groups == [f"**Group {i}**: 2 files" for i in range(1, 6)]
    assert at.number_input(key="dup_page").value == 1
    at.button(key="dup_page_next").click().run()
    _ok(at)
    assert [m.value for m in at.markdown if m.value.startswith("**Group ")] == ["**Group 6**: 2 files"]
    assert any("groups 6 to 6 of 6" in c.value for c in at.caption)
    at.button(key="dup_page_prev").click().run()
    _ok(at)
    assert len([m for m in at.markdown if m.value.startswith("**Group ")]) == 5


def test_page_bounds_and_group_pairs(collection: dict[str, Path]) -> None:
    from lookalike.app.dedup_views import pairs_by_group
    from lookalike.app.views import page_bounds
    from lookalike.indexer import find_duplicates

    assert page_bounds(100_000, 1, 20) == (0, 20, 5000)
    assert page_bounds(100_000, 5000, 20) == (99_980, 100_000, 5000)
    assert page_bounds(100_000, 9999, 20) == (99_980, 100_000, 5000)  # clamped
    assert page_bounds(0, 1, 20) == (0, 0, 1)
    report = find_duplicates(collection["index"], threshold=0.1)
    pairs = pairs_by_group(report)
    assert len(pairs) == len(report.groups) == 6
    for g, ps in zip(report.groups, pairs, strict=True):
        assert [(p.a_rel, p.b_rel) for p in ps] in ([(g.keeper.relpath, g.duplicates[0].relpath)],
                                              [(g.duplicates[0].relpath, g.keeper.relpath)])


def test_run_query_keeps_to_a_folder(collection: dict[str, Path]) -> None:
    from lookalike.app.queries import RerankUnavailable, folder_choices, in_folder, list_rerank_choices, run_query
    from lookalike.indexer import Hit, open_index

    with open_index(collection["index"]) as index:
        res = run_query(index, str(collection["photos"] / NAMES[2]), k=3, folder=str(collection["photos"] / "edits"))
        assert [h.relpath for h in res.hits][0] == "edits/" + NAMES[2] and len(res.hits) == 3
        assert res.searched >= 3
        if not list_rerank_choices():
            with pytest.raises(RerankUnavailable, match="not available"):
                run_query(index, str(collection["photos"] / NAMES[2]), k=3, rerank="diffsim")
    hit = Hit(path="/data/photos-old/a.jpg", distance=0.0)
    assert not in_folder(hit, "/data/photos") and in_folder(hit, "/data/photos-old") and in_folder(hit, None)
    assert folder_choices(["/r"], [("/r", "a.jpg"), ("/r", "x/b.jpg"), ("/r", "x/y/c.jpg")]) == ["/r", "/r/x"]
