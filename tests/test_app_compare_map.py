"""The app's Compare page draws a metric's distance map beside the table (efficientnet_lite0's, offline, and LPIPS's
from files the test writes), and the Search page re-ranks; both on the shared read-only ``photo_index``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torchvision
from support import card_text

from lookalike.app.settings import ENV_INDEX
from lookalike.app.widgets import NO_RERANK

st_testing = pytest.importorskip("streamlit.testing.v1")
APP = Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"
PHOTOS = Path(__file__).parent / "fixtures" / "photos"


def _write_random_lpips_alex(folder: Path) -> None:
    """Random AlexNet (torchvision file format) + random LPIPS linear layers (official alex.pth keys)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), folder / "alexnet-owt-7be5be79.pth")
    widths = (64, 192, 384, 256, 256)
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(widths)}, folder / "alex.pth")


def test_compare_shows_a_heat_map_beside_the_table(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   photo_index: dict[str, Path]) -> None:
    import streamlit as st

    home = tmp_path / "home"
    monkeypatch.setenv("LOOKALIKE_HOME", str(home))
    _write_random_lpips_alex(home / "lpips")
    names = [p.name for p in sorted(PHOTOS.glob("*.jpg"))[:3]]
    st.cache_resource.clear()
    monkeypatch.setenv(ENV_INDEX, str(photo_index["index"]))
    at = st_testing.AppTest.from_file(str(APP), default_timeout=180).run()
    at.switch_page("app_pages/compare.py").run()
    at.multiselect(key="cmp_metrics").set_value(["efficientnet_lite0", "lpips_alex", "ssim"]).run()
    for side, name in (("cmp_a", names[0]), ("cmp_b", names[1])):
        at.radio(key=f"{side}_source").set_value("Pick an indexed image").run()
        at.selectbox(key=f"{side}_path").set_value(name).run()
    assert not at.exception, [e.message for e in at.exception]
    table = at.table[0].value.set_index("metric")
    assert {"efficientnet_lite0", "lpips_alex", "ssim"} <= set(table.index)
    choice = at.selectbox(key="cmp_map_metric")
    assert choice.options == ["efficientnet_lite0", "lpips_alex"]  # the chosen metrics that can say where
    captions = [str(img.proto) for img in at.get("image")]
    assert re.search(r'caption: "efficientnet_lite0: dark = alike, bright = different \(0 to [0-9.]+, 28x28 grid\)"',
                     captions[2])  # the offline map comes first: no download needed to see one
    choice.set_value("lpips_alex").run()
    captions = [str(img.proto) for img in at.get("image")]
    assert len(captions) == 3  # A, B and the map
    assert re.search(r'caption: "lpips_alex: dark = alike, bright = different \(0 to [0-9.]+, 256x256 grid\)"',
                     captions[2])
    st.cache_resource.clear()


def test_search_page_rerank(monkeypatch: pytest.MonkeyPatch, photo_index: dict[str, Path]) -> None:
    import streamlit as st

    from lookalike.indexer import search

    names = [p.name for p in sorted(PHOTOS.glob("*.jpg"))[:5]]
    photos = photo_index["photos"]
    st.cache_resource.clear()
    monkeypatch.setenv(ENV_INDEX, str(photo_index["index"]))
    at = st_testing.AppTest.from_file(str(APP), default_timeout=180).run()
    at.switch_page("app_pages/search.py").run()
    assert {NO_RERANK, "ssim", "psnr", "l1"} <= set(at.selectbox(key="search_rerank").options)
    assert "diffsim" not in at.selectbox(key="search_rerank").options  # no SD 1.5 folder here
    at.selectbox(key="search_rerank").set_value("ssim").run()
    at.query_params["q"] = names[1]
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("re-ranked by ssim (higher = more similar)" in h.value for h in at.subheader)
    hits = [card_text(m.value) for m in at.markdown if m.value.startswith("**#")]
    want = search(photo_index["index"], photos / names[1], k=len(hits), rerank="ssim", rerank_k=50)
    assert [h.split("\n")[-1] for h in hits] == [f"photos/{h.relpath}" for h in want]  # root name + relpath
    assert " ssim " in hits[0] and hits[0].endswith(names[1])
    st.cache_resource.clear()
