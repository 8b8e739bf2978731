"""What the app looks like, in the parts a test can measure without a browser: readable sizes, thumbnails of one
shape, file names that are escaped and never wrap, Map colours that people can tell apart, thumbnails spread over
the Map, and the README's screenshots (``bench/screenshots.py`` makes them). The browser checks of the same things
at desktop and laptop widths are in ``test_app_browser.py`` and ``test_app_browser_map.py``."""

from __future__ import annotations

import io
import itertools
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import PHOTOS

from lookalike.app.projection import (
    FOLDER_PALETTE,
    MAX_FOLDERS,
    OTHER_COLOUR,
    OTHER_FOLDERS,
    folder_colours,
    spread_sample,
)
from lookalike.app.settings import ENV_INDEX
from lookalike.app.views import CARD_ASPECT, encode_thumbnail, format_bytes, split_folder

REPO = Path(__file__).resolve().parents[1]
st_testing = pytest.importorskip("streamlit.testing.v1")


def _lab(colour: str) -> np.ndarray:
    """CIELAB (D65) of an sRGB "#RRGGBB" colour."""
    rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)]) / 255.0
    lin = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ lin
    f = np.cbrt(np.maximum(xyz / np.array([0.95047, 1.0, 1.08883]), 0.008856))
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_sizes_read_like_a_person_writes_them() -> None:
    assert [format_bytes(n) for n in (0, 999, 820_000, 1_234_567, 1_200_000_000, 12_345_678_901, 9_960)] == [
        "0 B", "999 B", "820 KB", "1.2 MB", "1.2 GB", "12 GB", "10 KB"]
    assert format_bytes(3.5e15) == "3500 TB"


def test_map_colours_are_told_apart() -> None:
    labs = [_lab(c) for c in FOLDER_PALETTE]
    closest = min(float(np.linalg.norm(a - b)) for a, b in itertools.combinations(labs, 2))
    assert closest > 25  # CIE76: about 2.3 is a just-noticeable difference; 25 is plainly another colour
    assert min(float(np.linalg.norm(a - _lab(OTHER_COLOUR))) for a in labs) > 30  # and none looks like "other" grey
    assert MAX_FOLDERS == len(FOLDER_PALETTE)  # no colour is used twice
    folders = [f"photos/f{i}" for i in range(MAX_FOLDERS)] + [OTHER_FOLDERS]
    colours = folder_colours(folders)
    assert len(set(colours.values())) == len(folders) and colours[OTHER_FOLDERS] == OTHER_COLOUR


def test_thumbnails_are_spread_one_per_cell() -> None:
    rng = np.random.default_rng(0)
    xy = np.concatenate([rng.normal(0, 0.05, (5000, 2)), rng.uniform(-1, 1, (500, 2))])
    chosen, w, h = spread_sample(xy, cells=9)
    assert 0 < len(chosen) <= 81 and len(set(chosen.tolist())) == len(chosen)
    cells = {(int((xy[i, 0] - xy[:, 0].min()) // w), int((xy[i, 1] - xy[:, 1].min()) // h)) for i in chosen}
    assert len(cells) == len(chosen)  # never two in one cell: thumbnails of 0.9 cell never overlap
    assert spread_sample(np.zeros((0, 2)))[0].size == 0
    one, _, _ = spread_sample(np.ones((3, 2)))
    assert len(one) == 1


def test_card_thumbnails_have_one_shape() -> None:
    shapes = set()
    for p in sorted(PHOTOS.glob("*.jpg"))[:6]:  # portrait and landscape photos
        img = Image.open(p)
        for im in (img, img.resize((img.width // 4, img.height // 4))):  # small images are scaled up to fit
            thumb = Image.open(io.BytesIO(encode_thumbnail(im, 320, aspect=CARD_ASPECT)))
            shapes.add(thumb.size)
            band = np.asarray(thumb.convert("L"), np.float32)
            assert band.std() > 10  # the photo fills the box: not a small picture on a flat background
    assert shapes == {(320, 240)}


def test_file_labels_escape_and_split() -> None:
    from lookalike.app.widgets import file_label_html

    assert split_folder("/home/me/photos", "holiday/2024/cliff.jpg") == ("photos/holiday/2024/", "cliff.jpg")
    assert split_folder("/home/me/photos/", "small_cliff.jpg") == ("photos/", "small_cliff.jpg")
    label = file_label_html("photos/<b>/", "a&b.jpg", '/x/"q".jpg')
    assert "<b>/" not in label and "&lt;b&gt;/" in label and "a&amp;b.jpg" in label and '&quot;q&quot;' in label


def test_overview_shows_readable_sizes(monkeypatch: pytest.MonkeyPatch, photo_index: dict[str, Path]) -> None:
    import streamlit as st

    st.cache_data.clear()
    st.cache_resource.clear()
    monkeypatch.setenv(ENV_INDEX, str(photo_index["index"]))
    at = st_testing.AppTest.from_file(str(REPO / "app" / "streamlit_app.py"), default_timeout=120).run()
    at.switch_page("app_pages/overview.py").run()
    assert not at.exception, [e.message for e in at.exception]
    on_disk = [m.value for m in at.metric][3]
    assert re.fullmatch(r"\d+(\.\d)? (KB|MB|GB)", on_disk), on_disk
    sizes = at.table[0].value["size"].tolist()
    assert all(re.fullmatch(r"\d+(\.\d)? (B|KB|MB|GB)", s) for s in sizes), sizes


def test_map_draws_framed_thumbnails(monkeypatch: pytest.MonkeyPatch, pairs_index: dict[str, Path]) -> None:
    import json

    import streamlit as st

    st.cache_data.clear()
    st.cache_resource.clear()
    monkeypatch.setenv(ENV_INDEX, str(pairs_index["index"]))
    at = st_testing.AppTest.from_file(str(REPO / "app" / "streamlit_app.py"), default_timeout=120).run()
    at.switch_page("app_pages/map.py").run()
    assert not at.exception, [e.message for e in at.exception]
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    images = spec["layout"]["images"]
    assert 1 <= len(images) <= 12 and all(i["source"].startswith("data:image/jpeg;base64,") for i in images)
    assert {i["xref"] for i in images} == {"x"}  # sized in data units: they grow as the user zooms in
    colours = {t["name"]: t["marker"]["color"] for t in spec["data"]}
    assert colours == {"photos (6)": FOLDER_PALETTE[0], "photos/edits (6)": FOLDER_PALETTE[1]}
    at.toggle(key="map_thumbs").set_value(False).run()
    assert not json.loads(at.get("plotly_chart")[0].proto.spec)["layout"].get("images")


def test_readme_screenshots_are_small_and_shown() -> None:
    readme = (REPO / "README.md").read_text()
    for name in ("search", "map", "compare", "duplicates"):
        png = REPO / "docs" / "img" / f"{name}.png"
        assert png.is_file(), f"{png} is missing: python bench/screenshots.py"
        assert png.stat().st_size < 400_000, (png, png.stat().st_size)
        with Image.open(png) as im:
            assert im.format == "PNG" and im.width == 1200 and 600 < im.height < 900
        assert f"(docs/img/{name}.png)" in readme
