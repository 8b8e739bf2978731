"""The Duplicates page in Chromium (Playwright): tiers on every pair, the "Same" / "Not duplicates" buttons writing
the labels ``lookalike label`` writes, the cross-folder view, and the report downloads during a rerun.

``lookalike app --index DIR`` runs in a subprocess over real photos (a held-out split with a leaked copy, a
brightened copy) indexed with ``efficientnet_lite0``. Chromium is Debian's (``executable_path``), never
``playwright install``. Screenshots go to ``test-output/screenshots/``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import (
    BROWSER_TIMEOUT_MS,
    browser_page,
    playwright_or_skip,
    run_app,
    screenshot,
    split_collection,
)

TIMEOUT_MS = BROWSER_TIMEOUT_MS

pytestmark = pytest.mark.slow

sync_api = playwright_or_skip()


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The held-out split of ``support.split_collection`` (a brightened copy, a leaked half-size copy)."""
    return split_collection(tmp_path_factory.mktemp("dedup_app"))


@pytest.fixture(scope="module")
def app(collection: dict[str, Path]) -> Iterator[dict]:
    log = collection["base"] / "app.log"
    with run_app(collection["index"], log) as url:
        yield {"url": url, "log": log}


@pytest.fixture()
def page(browser: object) -> Iterator[object]:
    with browser_page(browser, 1400, 2000, accept_downloads=True) as p:
        yield p


_shot = screenshot


def _group_with(page: object, name: str) -> object:
    return page.locator("[class*='st-key-group-']").filter(has_text=name)  # type: ignore[attr-defined]


def test_tiers_and_downloads_during_a_rerun(page: object, app: dict) -> None:
    """A threshold change reruns the page; a click on Download CSV meanwhile still downloads the report (it logged
    ``MediaFileStorageError: Deferred file ... not found`` and downloaded nothing when the data was a callable)."""
    page.goto(app["url"] + "/duplicates")  # type: ignore[attr-defined]
    group = _group_with(page, "bsd68_101085_bright.jpg")
    for text in ("KEEP", "near", "bsd68_101085.jpg"):
        sync_api.expect(group).to_contain_text(text, timeout=TIMEOUT_MS)
    main = page.locator("[data-testid='stMain']")  # type: ignore[attr-defined]
    sync_api.expect(main).to_contain_text("pairs (0 exact, 2 near, 0 similar)")
    _shot(page, "duplicates_tiers")
    for _ in range(3):
        slider = page.get_by_role("slider").first  # type: ignore[attr-defined]
        slider.focus()
        for _ in range(3):  # three quick changes: each stops the run before it
            page.keyboard.press("ArrowRight")  # type: ignore[attr-defined]
        with page.expect_download(timeout=30_000) as dl:  # type: ignore[attr-defined]
            page.get_by_role("button", name="Download CSV").click()  # type: ignore[attr-defined]
        rows = list(csv.DictReader(io.StringIO(Path(dl.value.path()).read_text())))
        assert {r["tier"] for r in rows if r["role"] == "duplicate"} >= {"near"}
        page.wait_for_timeout(1000)  # type: ignore[attr-defined]
    with page.expect_download() as dl:  # type: ignore[attr-defined]
        page.get_by_role("button", name="Download Parquet").click()  # type: ignore[attr-defined]
    assert Path(dl.value.path()).read_bytes()[:4] == b"PAR1"
    assert "MediaFileStorageError" not in app["log"].read_text(errors="replace")


def test_label_buttons_write_labels(page: object, app: dict, collection: dict[str, Path]) -> None:
    from lookalike.indexer import list_labels

    page.goto(app["url"] + "/duplicates")  # type: ignore[attr-defined]
    bright = _group_with(page, "bsd68_101085_bright.jpg")
    bright.get_by_role("button", name="Not duplicates").click()
    sync_api.expect(page.get_by_text("Saved: ")).to_contain_text("not duplicates")  # type: ignore[attr-defined]
    sync_api.expect(_group_with(page, "bsd68_101085_bright.jpg")).to_have_count(0)  # never reported again
    sync_api.expect(page.get_by_text("pairs labelled different are left out")).to_have_count(1)  # type: ignore
    leak = _group_with(page, "bsd68_102061_small.jpg")
    leak.get_by_role("button", name="Same").click()
    sync_api.expect(_group_with(page, "bsd68_102061_small.jpg")).to_contain_text("labelled same")
    sync_api.expect(_group_with(page, "bsd68_102061_small.jpg").get_by_role("button", name="Same")).to_be_disabled()
    _shot(page, "duplicates_labelled")
    labels = {(Path(lb.path_a).name, Path(lb.path_b).name): (lb.same, lb.source)
              for lb in list_labels(collection["index"])}
    pairs = {tuple(sorted(k)): v for k, v in labels.items()}
    assert pairs == {("bsd68_101085.jpg", "bsd68_101085_bright.jpg"): (0.0, "app"),
                     ("bsd68_102061.jpg", "bsd68_102061_small.jpg"): (1.0, "app")}
    body = page.inner_text("body")  # type: ignore[attr-defined]
    assert "Traceback" not in body


def test_across_two_folders(page: object, app: dict) -> None:
    page.goto(app["url"] + "/duplicates")  # type: ignore[attr-defined]
    page.get_by_text("Across two folders").click()  # type: ignore[attr-defined]
    head = page.get_by_text("images under A have a match")  # type: ignore[attr-defined]
    sync_api.expect(head).to_contain_text("1 of 3 images under A have a match among the 6 under B")
    table = page.locator("[data-testid='stDataFrame']")  # type: ignore[attr-defined]
    table.wait_for()
    _shot(page, "duplicates_between")
    assert "Traceback" not in page.inner_text("body")  # type: ignore[attr-defined]
