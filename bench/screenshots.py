"""Screenshots of the app for the README: Search, Map, Compare with a distance map, Duplicates.

    python bench/screenshots.py                  # docs/img/*.png at 1440 x 900, laptop ones in test-output/
    python bench/screenshots.py --out /tmp/shots

It builds a demo collection from the test fixture photos (two folders of photos, and edited and resized copies of
some of them: the duplicates), indexes it with ``efficientnet_lite0`` (offline), starts ``lookalike app`` on a free
port and drives Debian's chromium through Playwright at desktop (1440 x 900, written to ``--out``) and laptop
(1280 x 800, written to ``--laptop-out``, to look at) sizes. Each PNG is reduced to a 256-colour palette so it
stays well under 1 MB. ``tests/test_app_look.py`` checks the pictures in ``docs/img`` against the app's pages.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageEnhance, ImageFilter

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from support import CHROMIUM, CHROMIUM_ARGS, PHOTOS, edited_copy, run_app  # noqa: E402

from lookalike.data.images import open_image  # noqa: E402

#: The query of the Search shot, the pair of the Compare shot (A and an edit of it made here), the viewports.
QUERY = "bsd68/bsd68_101087.jpg"  # it has an edited copy: the second result
COMPARE_OF = "bsd68_101085.jpg"
DESKTOP = {"width": 1440, "height": 900}
LAPTOP = {"width": 1280, "height": 800}
PAGES = ("search", "map", "compare", "duplicates")
TIMEOUT_MS = 120_000


def build_collection(base: Path) -> dict[str, Path]:
    """Two folders of real photos, edited copies of three and smaller copies of three more (six duplicate groups),
    indexed with efficientnet_lite0; and a locally edited copy of COMPARE_OF (not indexed) for Compare."""
    from lookalike.indexer import build_index

    photos = base / "photos"
    for sub in ("bsd68", "sun-hays", "edited", "resized"):
        (photos / sub).mkdir(parents=True)
    files = sorted(p for p in PHOTOS.glob("*.jpg"))
    for p in files:
        shutil.copy(p, photos / ("bsd68" if p.name.startswith("bsd68") else "sun-hays") / p.name)
    for p in files[1:4]:
        edited_copy(open_image(p)).save(photos / "edited" / p.name, quality=88)
    for p in files[14:17]:
        im = open_image(p)
        im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS).save(photos / "resized" / p.name,
                                                                                   quality=85)
    a = open_image(PHOTOS / COMPARE_OF)
    w, h = a.size
    box = (int(w * 0.55), int(h * 0.10), int(w * 0.90), int(h * 0.45))
    b = a.copy()
    b.paste(ImageEnhance.Brightness(a.crop(box).filter(ImageFilter.GaussianBlur(5))).enhance(1.3), box)
    b.save(base / "edited_upload.jpg", quality=92)
    index_dir = base / "index"
    # 0.25: the threshold that separated copies from other photos for this metric (docs/indexing.md)
    build_index(photos, index_dir, metric="efficientnet_lite0", dtype="fp32", workers=0, progress=False,
                dedup_threshold=0.25)
    return {"base": base, "photos": photos, "index": index_dir, "upload": base / "edited_upload.jpg"}


def _wait_images(page: object, selector: str, at_least: int = 1) -> None:
    page.wait_for_function(  # type: ignore[attr-defined]
        """([sel, n]) => { const imgs = [...document.querySelectorAll(sel + ' img, ' + sel + ' image')];
                           return imgs.length >= n && imgs.every(i => (i.complete === undefined || i.complete)
                                                                      && (i.naturalWidth === undefined
                                                                          || i.naturalWidth > 0)); }""",
        arg=[selector, at_least], timeout=TIMEOUT_MS)


def shoot(page: object, url: str, name: str, collection: dict[str, Path]) -> None:
    """Open one page of the app and bring it to the state the README shows."""
    if name == "search":
        page.goto(f"{url}/search?q={QUERY}")  # type: ignore[attr-defined]
        page.locator(".st-key-hit-8").wait_for(timeout=TIMEOUT_MS)  # type: ignore[attr-defined]
        _wait_images(page, "[data-testid='stMain']", 9)
    elif name == "map":
        page.goto(f"{url}/map")  # type: ignore[attr-defined]
        page.locator(".js-plotly-plot .layer-above image").first.wait_for(timeout=TIMEOUT_MS)  # type: ignore
        page.wait_for_timeout(1500)  # type: ignore[attr-defined]  # the WebGL points
    elif name == "compare":
        page.goto(f"{url}/compare")  # type: ignore[attr-defined]
        inputs = page.locator("input[type=file]")  # type: ignore[attr-defined]
        inputs.nth(0).wait_for(state="attached", timeout=TIMEOUT_MS)
        inputs.nth(0).set_input_files(str(PHOTOS / COMPARE_OF))
        page.get_by_text(f"upload: {COMPARE_OF}").wait_for(timeout=TIMEOUT_MS)  # type: ignore[attr-defined]
        inputs.nth(1).set_input_files(str(collection["upload"]))
        page.get_by_text("dark = alike").wait_for(timeout=TIMEOUT_MS)  # type: ignore[attr-defined]
        _wait_images(page, "[data-testid='stMain']", 3)
        page.locator("[data-testid='stMain'] [data-testid='stImage']").first.evaluate(  # type: ignore[attr-defined]
            "el => el.scrollIntoView({block: 'start'})")  # from the previews down: table and map
    elif name == "duplicates":
        page.goto(f"{url}/duplicates")  # type: ignore[attr-defined]
        page.locator(".st-key-group-1").wait_for(timeout=TIMEOUT_MS)  # type: ignore[attr-defined]
        _wait_images(page, ".st-key-group-0", 2)
    else:
        raise ValueError(f"unknown page {name!r}; choose from {PAGES}")
    page.wait_for_timeout(800)  # type: ignore[attr-defined]  # the last delta paints


def save_small(png: bytes, path: Path, width: int | None = None) -> int:
    """Write a screenshot as a 256-colour PNG (optionally scaled to ``width``); returns its size in bytes."""
    import io

    im = Image.open(io.BytesIO(png)).convert("RGB")
    if width and im.width > width:
        im = im.resize((width, round(im.height * width / im.width)), Image.Resampling.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    return path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img", help="desktop screenshots (default docs/img)")
    ap.add_argument("--laptop-out", type=Path, default=REPO / "test-output" / "screenshots" / "laptop",
                    help="laptop-width screenshots, to look at")
    ap.add_argument("--pages", nargs="+", default=list(PAGES), choices=PAGES)
    ap.add_argument("--width", type=int, default=1200, help="width the README pictures are scaled to (px)")
    args = ap.parse_args(argv)
    if not CHROMIUM.is_file():
        print(f"{CHROMIUM} is missing: apt-get install chromium (.ci/install-system.sh)", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="lookalike-shots-") as tmp:
        t0 = time.perf_counter()
        collection = build_collection(Path(tmp))
        print(f"demo collection indexed in {time.perf_counter() - t0:.1f} s")
        with run_app(collection["index"], Path(tmp) / "app.log") as url, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
            for viewport, out, width in ((DESKTOP, args.out, args.width), (LAPTOP, args.laptop_out, None)):
                ctx = browser.new_context(viewport=viewport)
                page = ctx.new_page()
                for name in args.pages:
                    shoot(page, url, name, collection)
                    size = save_small(page.screenshot(), out / f"{name}.png", width)
                    print(f"{out / (name + '.png')}: {viewport['width']}x{viewport['height']}, {size / 1e3:.0f} KB")
                ctx.close()
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
