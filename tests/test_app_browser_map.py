"""End to end in Debian's chromium (Playwright): the app lands on Search, the Map selects points and turns one into
a query, and the duplicate list turns pages.

The index holds six real photos and an edited copy of each in ``edits/`` (six known duplicate groups), embedded with
the real offline model ``efficientnet_lite0``. Screenshots go to ``test-output/screenshots/`` (git-ignored).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import BROWSER_TIMEOUT_MS, browser_page, playwright_or_skip, run_app, screenshot

TIMEOUT_MS = BROWSER_TIMEOUT_MS

pytestmark = pytest.mark.slow

sync_api = playwright_or_skip()


@pytest.fixture(scope="module")
def app_url(pairs_index: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app on the shared ``pairs_index`` (read-only): six photos and an edited copy of each."""
    with run_app(pairs_index["index"], tmp_path_factory.mktemp("app_map_e2e") / "app.log") as url:
        yield url


@pytest.fixture()
def page(browser: object) -> Iterator[object]:
    with browser_page(browser, 1400, 1800) as p:
        yield p


_shot = screenshot


def _no_traceback(page: object) -> None:
    body = page.inner_text("body")  # type: ignore[attr-defined]
    assert "Traceback" not in body and "File \"" not in body


def test_root_url_lands_on_search_and_overview_is_one_click_away(page: object, app_url: str) -> None:
    page.goto(app_url)  # type: ignore[attr-defined]
    main = page.locator("[data-testid='stMain']")  # type: ignore[attr-defined]
    sync_api.expect(main.locator("h1").first).to_have_text("Search", timeout=TIMEOUT_MS)
    sync_api.expect(main).to_contain_text("Upload an image, or pick an indexed one")
    assert page.url.rstrip("/").endswith("/search")  # type: ignore[attr-defined]
    _shot(page, "landing_search")
    page.locator("[data-testid='stSidebarNav']").get_by_text("Overview").click()  # type: ignore[attr-defined]
    sync_api.expect(page.locator("[data-testid='stMetric']").first).to_contain_text(  # type: ignore[attr-defined]
        "12", timeout=TIMEOUT_MS)
    _no_traceback(page)


def test_map_selection_shows_thumbnails_and_a_point_becomes_the_query(page: object, app_url: str) -> None:
    page.goto(app_url + "/map")  # type: ignore[attr-defined]
    main = page.locator("[data-testid='stMain']")  # type: ignore[attr-defined]
    sync_api.expect(main).to_contain_text("All 12 images", timeout=TIMEOUT_MS)
    plot = page.locator(".js-plotly-plot").first  # type: ignore[attr-defined]
    plot.wait_for()
    sync_api.expect(plot.locator(".legendtext")).to_have_count(2)
    legend = sorted(plot.locator(".legendtext").all_text_contents())
    assert legend == ["photos (6)", "photos/edits (6)"]
    page.wait_for_function(  # type: ignore[attr-defined]
        "() => document.querySelector('.js-plotly-plot canvas') !== null", timeout=TIMEOUT_MS)
    thumbs = plot.locator(".layer-above image")
    thumbs.first.wait_for()
    assert 1 <= thumbs.count() <= 12  # thumbnails at points spread over the map, in data units: zoom enlarges them
    swatches = plot.locator(".legendpoints path").evaluate_all("els => els.map(e => e.style.fill)")
    assert len(set(swatches)) == 2, swatches  # one colour per folder
    _shot(page, "map")
    box = plot.locator(".nsewdrag").first.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + 2, box["y"] + 2)  # type: ignore[attr-defined]
    page.mouse.down()  # type: ignore[attr-defined]
    page.mouse.move(box["x"] + box["width"] - 2, box["y"] + box["height"] - 2, steps=12)  # type: ignore[attr-defined]
    page.mouse.up()  # type: ignore[attr-defined]
    sync_api.expect(main).to_contain_text("12 selected", timeout=TIMEOUT_MS)
    first = page.locator(".st-key-map-sel-0")  # type: ignore[attr-defined]
    first.locator("img").wait_for()
    relpath = first.locator("[data-testid='stCaptionContainer']").inner_text().strip()
    assert relpath.endswith(".jpg")
    assert page.locator("[class*='st-key-map-sel-']").count() == 12  # type: ignore[attr-defined]
    _shot(page, "map_selection")
    first.get_by_role("button", name="Similar").click()
    hit = page.locator(".st-key-hit-1")  # type: ignore[attr-defined]
    sync_api.expect(hit).to_contain_text(relpath, timeout=TIMEOUT_MS)  # the point found itself first
    assert "/search" in page.url and "q=" in page.url  # type: ignore[attr-defined]
    _no_traceback(page)


def test_duplicate_groups_turn_pages(page: object, app_url: str) -> None:
    page.goto(app_url + "/duplicates")  # type: ignore[attr-defined]
    main = page.locator("[data-testid='stMain']")  # type: ignore[attr-defined]
    sync_api.expect(main).to_contain_text("6 groups", timeout=TIMEOUT_MS)
    page.locator(".st-key-group-5").wait_for()  # type: ignore[attr-defined]  # 20 a page by default: all six
    slider = page.locator(".st-key-dup_page_size input[type=range]")  # type: ignore[attr-defined]
    slider.focus()
    for _ in range(2):  # 20 -> 10 -> 5 groups a page
        slider.press("ArrowLeft")
    sync_api.expect(main).to_contain_text("groups 1 to 5 of 6", timeout=TIMEOUT_MS)
    sync_api.expect(page.locator(".st-key-group-5")).to_have_count(0)  # type: ignore[attr-defined]
    for n in range(5):
        sync_api.expect(page.locator(f".st-key-group-{n}")).to_contain_text("KEEP")  # type: ignore[attr-defined]
    _shot(page, "duplicates_page_1")
    page.get_by_role("button", name="Next").click()  # type: ignore[attr-defined]
    sync_api.expect(main).to_contain_text("groups 6 to 6 of 6", timeout=TIMEOUT_MS)
    group = page.locator(".st-key-group-5")  # type: ignore[attr-defined]
    sync_api.expect(group).to_contain_text("edits/")
    sync_api.expect(page.locator(".st-key-group-0")).to_have_count(0)  # type: ignore[attr-defined]
    _shot(page, "duplicates_page_2")
    _no_traceback(page)
