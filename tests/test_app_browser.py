"""End to end: ``lookalike app`` in a subprocess, driven by Debian's chromium through Playwright.

The index holds the 24 fixture photos plus an edited copy of one (a known duplicate), embedded with the real offline
model ``efficientnet_lite0``. Screenshots go to ``test-output/screenshots/`` (git-ignored); look at them.
Chromium comes from ``apt-get install chromium`` (``.ci/install-system.sh``), never from ``playwright install``.
"""

from __future__ import annotations

import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import ImageEnhance
from support import BROWSER_TIMEOUT_MS, DUP_EDITED, DUP_OF, PHOTOS, SCREENSHOTS, playwright_or_skip, run_app

from lookalike.data.images import open_image

QUERY_OF = "sunhays_beach_sun_bgtlposotyokcsdg.jpg"  # an edit of it (not indexed) is uploaded: its known nearest
TIMEOUT_MS = BROWSER_TIMEOUT_MS

pytestmark = pytest.mark.slow

sync_api = playwright_or_skip()


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - 127.0.0.1 only
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module")
def collection(photo_index: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The shared ``photo_index`` (read-only) and an uploadable edit of QUERY_OF that is not indexed."""
    base = tmp_path_factory.mktemp("app_e2e")
    q = open_image(PHOTOS / QUERY_OF)
    w, h = q.size
    query = base / "query_beach.jpg"  # outside the indexed folder: never in the catalog
    ImageEnhance.Contrast(q.crop((0, 0, w * 9 // 10, h * 9 // 10)).resize((w * 4 // 5, h * 4 // 5))).enhance(
        0.85).save(query, quality=80)
    return {**photo_index, "query": query, "base": base}


@pytest.fixture(scope="module")
def app_url(collection: dict[str, Path]) -> Iterator[str]:
    with run_app(collection["index"], collection["base"] / "app.log") as url:
        yield url


@pytest.fixture()
def page(browser: object, request: pytest.FixtureRequest) -> Iterator[object]:
    ctx = browser.new_context(viewport={"width": 1400, "height": 2000})  # type: ignore[attr-defined]
    p = ctx.new_page()
    p.set_default_timeout(TIMEOUT_MS)
    yield p
    ctx.close()


def _wait_images(page: object, selector: str) -> None:
    """Wait until every <img> under ``selector`` has loaded (before a screenshot)."""
    page.wait_for_function(  # type: ignore[attr-defined]
        """sel => { const imgs = [...document.querySelectorAll(sel + ' img')];
                    return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }""",
        arg=selector, timeout=TIMEOUT_MS)


def _shot(page: object, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(500)  # type: ignore[attr-defined]  # let the last delta paint
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def _no_traceback(page: object) -> None:
    body = page.inner_text("body")  # type: ignore[attr-defined]
    assert "Traceback" not in body and "File \"" not in body


def test_overview_describes_the_index(page: object, app_url: str) -> None:
    page.goto(app_url + "/overview")  # type: ignore[attr-defined]
    images = page.locator("[data-testid='stMetric']").first  # type: ignore[attr-defined]
    sync_api.expect(images).to_contain_text("25", timeout=TIMEOUT_MS)
    sync_api.expect(page.locator("[data-testid='stMain'] table").first).to_contain_text(  # type: ignore[attr-defined]
        "efficientnet_lite0", timeout=TIMEOUT_MS)
    _no_traceback(page)
    _shot(page, "overview")


def test_search_upload_finds_known_nearest_first(page: object, app_url: str, collection: dict[str, Path]) -> None:
    page.goto(app_url + "/search")  # type: ignore[attr-defined]
    page.locator("input[type=file]").first.set_input_files(str(collection["query"]))  # type: ignore[attr-defined]
    first = page.locator(".st-key-hit-1")  # type: ignore[attr-defined]
    sync_api.expect(first).to_contain_text(QUERY_OF, timeout=TIMEOUT_MS)
    distance = float(re.search(r"#1\s+([0-9.]+)", first.inner_text()).group(1))  # type: ignore[union-attr]
    assert 0.0 < distance < 0.2
    page.locator(".st-key-hit-12").wait_for()  # type: ignore[attr-defined]  # k = 12 results by default
    _wait_images(page, ".st-key-hit-1")
    _no_traceback(page)
    _shot(page, "search_upload")


@pytest.mark.parametrize("viewport", [{"width": 1440, "height": 900}, {"width": 1280, "height": 800}],
                         ids=["desktop", "laptop"])
def test_result_cards_line_up_at_desktop_and_laptop_widths(browser: object, app_url: str, viewport: dict) -> None:
    ctx = browser.new_context(viewport=viewport)  # type: ignore[attr-defined]
    page = ctx.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(app_url + "/search?q=" + DUP_OF)
        page.locator(".st-key-hit-12 img").wait_for()
        page.wait_for_function("""() => { const cards = [...document.querySelectorAll("[class*='st-key-hit-']")]
            .filter(e => /st-key-hit-[0-9]+( |$)/.test(e.className));
            return cards.length === 12 && cards.every(e => { const i = e.querySelector('img');
                                                            return i && i.complete && i.naturalWidth > 0; }); }""")
        cards = page.evaluate("""() => [...document.querySelectorAll("[class*='st-key-hit-']")]
            .filter(e => /st-key-hit-[0-9]+( |$)/.test(e.className))
            .map(e => { const r = e.getBoundingClientRect(); const img = e.querySelector('img').getBoundingClientRect();
                        return {top: Math.round(r.top), h: Math.round(r.height),
                                ratio: img.width / img.height,
                                name: e.querySelector('.ll-name').getBoundingClientRect().height}; })""")
        assert len(cards) == 12
        rows: dict[int, list[dict]] = {}
        for c in cards:
            rows.setdefault(c["top"], []).append(c)
        assert len(rows) == 3  # 4 columns by default
        for row in rows.values():
            assert max(c["h"] for c in row) - min(c["h"] for c in row) <= 1, row  # one height, portrait or not
        assert all(abs(c["ratio"] - 4 / 3) < 0.02 for c in cards), cards  # one thumbnail shape
        assert max(c["name"] for c in cards) < 30  # file names on one line (cut with an ellipsis, never wrapped)
        cut = page.evaluate("""() => [...document.querySelectorAll("[data-testid='stMain'] button")]
            .filter(b => b.offsetParent !== null && b.innerText.trim())
            .filter(b => [...b.querySelectorAll('p, span, div')].some(t => t.scrollWidth > t.clientWidth + 1))
            .map(b => b.innerText)""")
        assert cut == [], cut  # no button label is cut
        name = "desktop" if viewport["width"] == 1440 else "laptop"
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"search_cards_{name}.png"))
    finally:
        ctx.close()


def test_compare_shows_numeric_table(page: object, app_url: str, collection: dict[str, Path]) -> None:
    page.goto(app_url + "/compare")  # type: ignore[attr-defined]
    inputs = page.locator("input[type=file]")  # type: ignore[attr-defined]
    inputs.nth(0).wait_for(state="attached")
    inputs.nth(0).set_input_files(str(PHOTOS / DUP_OF))
    page.get_by_text(f"upload: {DUP_OF}").wait_for()  # type: ignore[attr-defined]  # A is in before B goes
    inputs.nth(1).set_input_files(str(collection["photos"] / DUP_EDITED))
    table = page.locator(".st-key-compare-table table")  # type: ignore[attr-defined]
    table.wait_for()
    header = [c.strip() for c in table.locator("thead th").all_inner_texts()]
    rows = {}
    for tr in table.locator("tbody tr").all():
        cells = [c.strip() for c in tr.locator("th, td").all_inner_texts()]
        row = dict(zip(header[-len(cells):] if len(header) >= len(cells) else header, cells[-len(header):],
                       strict=False))
        rows[row["metric"]] = row
    assert {"efficientnet_lite0", "psnr", "ssim", "l2"} <= set(rows)
    assert float(rows["efficientnet_lite0"]["value"]) < 0.2  # an edited copy: close
    assert float(rows["psnr"]["value"]) > 10.0 and -1.0 <= float(rows["ssim"]["value"]) <= 1.0
    assert rows["efficientnet_lite0"]["direction"] == "lower = more similar"
    assert rows["psnr"]["direction"] == "higher = more similar"
    sync_api.expect(page.get_by_text("metrics cannot run here")).to_have_count(1)  # type: ignore[attr-defined]
    sync_api.expect(page.get_by_text("efficientnet_lite0: dark = alike")).to_have_count(1)  # the offline map
    _wait_images(page, "[data-testid='stMain']")
    _no_traceback(page)
    _shot(page, "compare")


def test_duplicates_shows_known_group(page: object, app_url: str) -> None:
    page.goto(app_url + "/duplicates")  # type: ignore[attr-defined]
    group = page.locator(".st-key-group-0")  # type: ignore[attr-defined]
    for text in ("KEEP", DUP_OF, DUP_EDITED, "distance"):
        sync_api.expect(group).to_contain_text(text, timeout=TIMEOUT_MS)  # rendered progressively: wait
    assert page.locator(".st-key-group-1").count() == 0  # type: ignore[attr-defined]  # no false duplicates
    _wait_images(page, ".st-key-group-0")
    _no_traceback(page)
    _shot(page, "duplicates")
    for fmt in ("CSV", "JSON"):
        page.get_by_role("button", name=f"Download {fmt}").wait_for()  # type: ignore[attr-defined]


def test_files_outside_the_catalog_are_refused(page: object, app_url: str, collection: dict[str, Path]) -> None:
    outside = str(collection["query"])  # a real image on disk, not indexed
    for q in (outside, "/etc/passwd", "../../../../etc/passwd", "edits/../../outside.jpg"):
        page.goto(app_url + "/search?q=" + urllib.request.quote(q, safe=""))  # type: ignore[attr-defined]
        err = page.locator("[data-testid='stAlertContentError']").first  # type: ignore[attr-defined]
        err.wait_for()
        assert "not in the index catalog" in err.inner_text()
        assert page.locator("[class*='st-key-hit-']").count() == 0  # type: ignore[attr-defined]
        assert page.locator("[data-testid='stMain'] img").count() == 0  # type: ignore[attr-defined]
        _no_traceback(page)
    _shot(page, "refused_outside_catalog")
    secret = collection["query"].read_bytes()
    for path in ("/media/..%2f..%2f..%2fetc%2fpasswd", "/app/static/..%2f..%2f..%2fetc%2fpasswd",
                 "/app/static/../../etc/passwd", "/media/" + urllib.request.quote(outside, safe=""),
                 "/" + urllib.request.quote(outside), "/component/..%2f..%2fetc%2fpasswd"):
        status, body = _get(app_url + path)
        assert b"root:" not in body and secret not in body, path
        assert status in (200, 400, 403, 404), (path, status)  # 200 only for the app's own HTML shell
        if status == 200:
            assert b"<html" in body.lower(), path


def test_no_index_builds_a_typed_folder(page: object, collection: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    for name in (DUP_OF, QUERY_OF, "bsd68_101087.jpg"):
        shutil.copy(PHOTOS / name, folder / name)
    index_dir = tmp_path / "new_index"
    with run_app(index_dir, tmp_path / "app.log") as url:
        page.goto(url)  # type: ignore[attr-defined]
        main = page.locator("[data-testid='stMain']")  # type: ignore[attr-defined]
        sync_api.expect(main).to_contain_text("There is no index at", timeout=TIMEOUT_MS)
        sync_api.expect(main).to_contain_text(f"lookalike index FOLDER --index {index_dir}")
        page.get_by_label("Folder of images to index").fill(str(folder))  # type: ignore[attr-defined]
        page.get_by_role("button", name="Build the index").click()  # type: ignore[attr-defined]
        sync_api.expect(main).to_contain_text("Indexed 3 images", timeout=TIMEOUT_MS)
        assert (index_dir / "catalog.sqlite").is_file()
        _no_traceback(page)
        _shot(page, "no_index_built_from_folder")
