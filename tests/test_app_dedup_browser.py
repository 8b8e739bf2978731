"""The Duplicates page in Chromium (Playwright): tiers on every pair, the "Same" / "Not duplicates" buttons writing
the labels ``lookalike label`` writes, the cross-folder view, and the report downloads during a rerun.

``lookalike app --index DIR`` runs in a subprocess over real photos (a held-out split with a leaked copy, a
brightened copy) indexed with ``efficientnet_lite0``. Chromium is Debian's (``executable_path``), never
``playwright install``. Screenshots go to ``test-output/screenshots/``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageEnhance
from support import PHOTOS, free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-output" / "screenshots"
TIMEOUT_MS = 60_000
TRAIN = ["bsd68_101085", "bsd68_101087", "bsd68_102061", "bsd68_103070", "bsd68_105025"]
TEST = ["sunhays_abbey_sun_asztnlqhlrvirneh", "sunhays_barn_sun_btulbiaoilnxcseh"]

pytestmark = pytest.mark.slow

if not CHROMIUM.is_file():
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing; CI must run .ci/install-system.sh first")
    pytest.skip(f"{CHROMIUM} not installed (run .ci/install-system.sh)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from lookalike.indexer import build_index

    base = tmp_path_factory.mktemp("dedup_app")
    photos = base / "photos"
    (photos / "train").mkdir(parents=True)
    (photos / "test").mkdir()
    for name in TRAIN:
        shutil.copyfile(PHOTOS / f"{name}.jpg", photos / "train" / f"{name}.jpg")
    for name in TEST:
        shutil.copyfile(PHOTOS / f"{name}.jpg", photos / "test" / f"{name}.jpg")
    ImageEnhance.Brightness(Image.open(PHOTOS / "bsd68_101085.jpg").convert("RGB")).enhance(1.2).save(
        photos / "train" / "bsd68_101085_bright.jpg", quality=90)
    im = Image.open(PHOTOS / "bsd68_102061.jpg").convert("RGB")
    im.resize((im.width // 2, im.height // 2)).save(photos / "test" / "bsd68_102061_small.jpg", quality=90)
    index = base / "index"
    build_index(photos, index, metric="efficientnet_lite0", workers=0, progress=False)
    return {"base": base, "photos": photos, "index": index}


@contextlib.contextmanager
def _run_app(index_dir: Path, log_path: Path) -> Iterator[str]:
    port = free_port()
    log = open(log_path, "w+b")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "lookalike.app.cli", "app", "--index", str(index_dir),
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"lookalike app exited with {proc.returncode}:\n{log.read().decode(errors='replace')}")
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=5) as r:  # noqa: S310 - 127.0.0.1
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail("lookalike app did not answer /_stcore/health within 90 s")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def app(collection: dict[str, Path]) -> Iterator[dict]:
    log = collection["base"] / "app.log"
    with _run_app(collection["index"], log) as url:
        yield {"url": url, "log": log}


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture()
def page(browser: object) -> Iterator[object]:
    ctx = browser.new_context(viewport={"width": 1400, "height": 2000}, accept_downloads=True)  # type: ignore[attr-defined]
    p = ctx.new_page()
    p.set_default_timeout(TIMEOUT_MS)
    yield p
    ctx.close()


def _shot(page: object, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(500)  # type: ignore[attr-defined]
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


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
