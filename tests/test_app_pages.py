"""Page logic of the Streamlit app with ``AppTest`` (no browser, no server), plus its plain helpers and CLI.

The tests share the session's ``photo_index`` (24 real photos and an edited copy of one: a known duplicate,
indexed with the offline model ``efficientnet_lite0``; read-only). Every run checks that no exception reached the page.
"""

from __future__ import annotations

import argparse
import csv
import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageEnhance
from support import DUP_EDITED, PHOTOS, card_text, jpeg_bytes

from lookalike.app.settings import ENV_IMAGENET_R, ENV_INDEX, ENV_MAX_UPLOAD_MB, ENV_NIGHTS, load_settings
from lookalike.data.images import open_image

st_testing = pytest.importorskip("streamlit.testing.v1")
APP = Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"
NAMES = ["bsd68_101085.jpg", "bsd68_101087.jpg", "bsd68_102061.jpg", "sunhays_beach_sun_bgtlposotyokcsdg.jpg",
         "sunhays_barn_sun_btulbiaoilnxcseh.jpg", "sunhays_butte_sun_aidickeaxixvkuxv.jpg"]
EDITED = DUP_EDITED
TIMEOUT = 120


def _copy_photos(dst: Path, names: list[str] = NAMES) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for n in names:
        shutil.copy(PHOTOS / n, dst / n)
    return dst


@pytest.fixture(scope="module")
def collection(photo_index: dict[str, Path]) -> dict[str, Path]:
    """The shared ``photo_index`` (read-only): 24 photos + an edited copy of NAMES[0], and ``outside``."""
    return photo_index


@pytest.fixture(autouse=True)
def _fresh_caches() -> Iterator[None]:
    import streamlit as st

    st.cache_resource.clear()
    st.cache_data.clear()
    yield


def _app(monkeypatch: pytest.MonkeyPatch, index_dir: Path | None, page: str | None = None, **env: str):
    if index_dir is None:
        monkeypatch.delenv(ENV_INDEX, raising=False)
    else:
        monkeypatch.setenv(ENV_INDEX, str(index_dir))
    for var in (ENV_NIGHTS, ENV_IMAGENET_R, ENV_MAX_UPLOAD_MB):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    at = st_testing.AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    if page:
        at.switch_page(f"app_pages/{page}.py").run()
    _ok(at)
    return at


def _ok(at) -> None:  # noqa: ANN001
    assert not at.exception, [e.message for e in at.exception]


def _texts(elements) -> list[str]:  # noqa: ANN001
    return [e.value for e in elements]


def _hits(at) -> list[str]:  # noqa: ANN001
    """The Search result cards, in rank order: "**#1** &nbsp; `0.0000`\nphotos/edits/x.jpg" (``card_text``)."""
    return [card_text(m.value) for m in at.markdown if m.value.startswith("**#")]


# --- Overview ------------------------------------------------------------------------------------------------------


def test_no_index_explains_and_builds_from_a_typed_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    index_dir = tmp_path / "new_index"
    at = _app(monkeypatch, index_dir)
    assert any("no index" in t for t in _texts(at.info))
    assert any(f"lookalike index FOLDER --index {index_dir}" in c.value for c in at.code)
    at.text_input(key="build_folder").set_value(str(tmp_path / "nowhere"))
    at.button[0].click().run()
    _ok(at)
    assert any("is not a folder" in t for t in _texts(at.error))
    assert not (index_dir / "catalog.sqlite").exists()
    folder = _copy_photos(tmp_path / "mine", NAMES[:3])
    at.text_input(key="build_folder").set_value(str(folder))
    at.selectbox(key="build_metric").set_value("efficientnet_lite0")
    at.button[0].click().run()
    _ok(at)
    assert any("Indexed 3 images" in t for t in _texts(at.success)), _texts(at.error)
    assert (index_dir / "catalog.sqlite").is_file()
    at.run()
    _ok(at)
    assert [m.value for m in at.metric][:2] == ["3", "3"]


def test_no_index_folder_given(monkeypatch: pytest.MonkeyPatch) -> None:
    at = _app(monkeypatch, None)
    assert any("lookalike app --index DIR" in t for t in _texts(at.info))
    at.switch_page("app_pages/search.py").run()
    _ok(at)
    assert any("lookalike app --index DIR" in t for t in _texts(at.info))


def test_overview_describes_the_index(monkeypatch: pytest.MonkeyPatch, collection: dict[str, Path]) -> None:
    at = _app(monkeypatch, collection["index"])
    assert [t.value for t in at.title] == ["Search"]  # an index with vectors opens on Search
    assert not at.metric
    at.switch_page("app_pages/overview.py").run()  # Overview is one click away
    _ok(at)
    assert [m.value for m in at.metric][:3] == ["25", "25", "0"]
    assert "efficientnet_lite0" in at.table[0].value["metric"].tolist()


# --- Search --------------------------------------------------------------------------------------------------------


def test_search_by_indexed_path_in_the_url(monkeypatch: pytest.MonkeyPatch, collection: dict[str, Path]) -> None:
    at = _app(monkeypatch, collection["index"], "search")
    assert any("Upload an image" in t for t in _texts(at.info))
    at.query_params["q"] = NAMES[0]
    at.run()
    _ok(at)
    hits = _hits(at)
    assert len(hits) == 12  # k = 12 by default, of 25
    assert hits[0].startswith("**#1** &nbsp; `0.0000`") and hits[0].endswith(NAMES[0])
    assert hits[1].endswith(EDITED)  # the edited copy is the nearest other image


def test_search_upload_and_click_a_result(monkeypatch: pytest.MonkeyPatch, collection: dict[str, Path]) -> None:
    at = _app(monkeypatch, collection["index"], "search")
    at.file_uploader(key="query_upload").upload("q.jpg", (collection["photos"] / NAMES[3]).read_bytes(),
                                                "image/jpeg").run()
    _ok(at)
    hits = _hits(at)
    assert hits[0].endswith(NAMES[3])
    third = hits[2].rsplit("\n", 1)[-1].split("/", 1)[1]  # shown as "photos/x.jpg": the root's name, then relpath
    at.button(key="hit-pick-3").click().run()
    _ok(at)
    assert at.query_params["q"] == [third] or at.query_params["q"] == third
    assert _hits(at)[0].endswith(third)  # the result became the query: it finds itself first


def test_search_refuses_paths_outside_the_catalog(monkeypatch: pytest.MonkeyPatch,
                                                  collection: dict[str, Path]) -> None:
    at = _app(monkeypatch, collection["index"], "search")
    for q in (str(collection["outside"]), "/etc/passwd", "../../../etc/passwd", "edits/../../outside.jpg"):
        at.query_params["q"] = q
        at.run()
        _ok(at)
        assert any("not in the index catalog" in t for t in _texts(at.error)), q
        assert not _hits(at)
        assert not at.get("image"), q  # nothing was drawn


def test_search_rejects_bad_uploads(monkeypatch: pytest.MonkeyPatch, collection: dict[str, Path]) -> None:
    at = _app(monkeypatch, collection["index"], "search", **{ENV_MAX_UPLOAD_MB: "1"})
    at.file_uploader(key="query_upload").upload("notes.jpg", b"this is not an image", "image/jpeg").run()
    _ok(at)
    assert any("cannot read 'notes.jpg' as an image" in t for t in _texts(at.error))
    assert not _hits(at)
    big = jpeg_bytes(Image.effect_noise((1400, 1400), 90).convert("RGB"))
    assert len(big) > 1024 * 1024
    at.file_uploader(key="query_upload").clear().upload("big.jpg", big, "image/jpeg").run()
    _ok(at)
    assert any("uploads are limited to" in t for t in _texts(at.error))
    assert not _hits(at)


def test_search_missing_weights_shows_the_download_command(monkeypatch: pytest.MonkeyPatch,
                                                           collection: dict[str, Path]) -> None:
    import lookalike.indexer._index as index_mod
    import lookalike.metric as metric_mod
    from lookalike.metric import WeightsNotFound, get_metric_cfg, required_files

    def no_weights(name: str, **_: object) -> None:
        raise WeightsNotFound(name, required_files(get_metric_cfg("dreamsim")), [Path("/cache")], "offline")

    monkeypatch.setattr(metric_mod, "load_metric", no_weights)  # ImageIndex.metric loads the model through it
    assert not hasattr(index_mod, "load_metric")  # (imported on use from lookalike.metric, so that patch suffices)
    at = _app(monkeypatch, collection["index"], "search")
    at.file_uploader(key="query_upload").upload("q.jpg", (collection["photos"] / NAMES[3]).read_bytes(),
                                                "image/jpeg").run()
    _ok(at)
    assert any("weights of metric **efficientnet_lite0** are not on this machine" in t for t in _texts(at.error))
    assert any("lookalike weights download efficientnet_lite0" in c.value for c in at.code)
    at.query_params["q"] = NAMES[1]  # an indexed query uses its stored vector: no weights needed
    at.run()
    _ok(at)
    assert _hits(at)[0].endswith(NAMES[1])


def test_empty_index_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from lookalike.indexer import build_index

    (tmp_path / "empty").mkdir()
    build_index(tmp_path / "empty", tmp_path / "index", metric="efficientnet_lite0", workers=0, progress=False)
    for page in ("search", "duplicates"):
        at = _app(monkeypatch, tmp_path / "index", page)
        assert any("is empty" in t for t in _texts(at.info)), page
        assert any("lookalike index FOLDER" in c.value for c in at.code)


# --- Compare -------------------------------------------------------------------------------------------------------


def test_compare_two_indexed_images(monkeypatch: pytest.MonkeyPatch, collection: dict[str, Path]) -> None:
    at = _app(monkeypatch, collection["index"], "compare")
    assert any("Choose two images" in t for t in _texts(at.info))
    for side, path in (("cmp_a", NAMES[0]), ("cmp_b", EDITED)):
        at.radio(key=f"{side}_source").set_value("Pick an indexed image").run()
        at.selectbox(key=f"{side}_path").set_value(path).run()
        _ok(at)
    table = at.table[0].value.set_index("metric")
    assert {"efficientnet_lite0", "psnr", "ssim", "l2"} <= set(table.index)
    assert float(table.loc["efficientnet_lite0", "value"]) < 0.2
    assert table.loc["psnr", "direction"] == "higher = more similar"
    assert table.loc["efficientnet_lite0", "direction"] == "lower = more similar"
    skipped = at.table[1].value.set_index("metric")
    assert "lookalike weights download dreamsim" in skipped.loc["dreamsim", "reason"]
    assert any("one metric only" in t for t in _texts(at.info))  # side by side needs a second indexed metric


def test_compare_uploads_and_a_refused_path(monkeypatch: pytest.MonkeyPatch, collection: dict[str, Path]) -> None:
    at = _app(monkeypatch, collection["index"], "compare")
    at.file_uploader(key="cmp_a_upload").upload("a.jpg", (PHOTOS / NAMES[1]).read_bytes(), "image/jpeg").run()
    at.session_state["cmp_b_source"] = "Pick an indexed image"
    at.session_state["cmp_b_path"] = str(collection["outside"])  # as if typed (the select box accepts new paths)
    at.run()
    _ok(at)
    assert any("not in the index catalog" in t for t in _texts(at.error))
    assert not at.table
    assert len(at.get("image")) == 1  # only the upload's preview
    at.selectbox(key="cmp_b_path").set_value(NAMES[1]).run()
    _ok(at)
    table = at.table[0].value.set_index("metric")
    assert float(table.loc["efficientnet_lite0", "value"]) < 1e-3  # the same photo, uploaded and indexed


# --- Duplicates ----------------------------------------------------------------------------------------------------


def test_duplicates_group_keeper_and_reports(monkeypatch: pytest.MonkeyPatch, collection: dict[str, Path]) -> None:
    at = _app(monkeypatch, collection["index"], "duplicates")
    text = "\n".join(m.value for m in at.markdown)
    assert "**1 groups**" in text
    assert f"**KEEP**  \n{NAMES[0]}" in text and EDITED in text
    downloads = at.get("download_button")
    assert len(downloads) == 3  # CSV, JSON, Parquet
    at.slider(key="dup_threshold").set_value(0.0).run()
    _ok(at)
    assert any("No duplicates at this threshold" in t for t in _texts(at.info))


def test_report_bytes_round_trip(collection: dict[str, Path]) -> None:
    import json

    from lookalike.app.views import report_bytes
    from lookalike.indexer import find_duplicates

    report = find_duplicates(collection["index"], threshold=0.1)
    rows = list(csv.DictReader(io.StringIO(report_bytes(report, ".csv").decode())))
    assert {r["role"] for r in rows} == {"keep", "duplicate"}
    assert json.loads(report_bytes(report, ".json"))["n_duplicates"] == 1


# --- Datasets ------------------------------------------------------------------------------------------------------


def test_datasets_without_folders(monkeypatch: pytest.MonkeyPatch, collection: dict[str, Path]) -> None:
    at = _app(monkeypatch, collection["index"], "datasets")
    info = " ".join(_texts(at.info))
    assert "--nights DIR" in info and "--imagenet-r DIR" in info


def test_nights_triplets_with_metric_votes(monkeypatch: pytest.MonkeyPatch, collection: dict[str, Path],
                                          tmp_path: Path) -> None:
    root = tmp_path / "nights"
    _copy_photos(root / "ref", NAMES[:2])
    _copy_photos(root / "distort", NAMES[2:4])
    shutil.copy(collection["photos"] / EDITED, root / "distort" / "edited.jpg")
    with open(root / "data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "right_vote", "votes", "ref_path", "left_path", "right_path", "split", "is_imagenet"])
        # people chose the edited copy (right): the metric agrees; then people chose right wrongly: it disagrees
        w.writerow(["0", "1.0", "7", f"ref/{NAMES[0]}", f"distort/{NAMES[2]}", "distort/edited.jpg", "test", "True"])
        w.writerow(["1", "0.0", "7", f"ref/{NAMES[0]}", "distort/edited.jpg", f"distort/{NAMES[3]}", "test", "False"])
        w.writerow(["2", "1.0", "7", f"ref/{NAMES[0]}", "distort/edited.jpg", f"distort/{NAMES[3]}", "test", "False"])
    at = _app(monkeypatch, collection["index"], "datasets", **{ENV_NIGHTS: str(root)})
    assert at.selectbox(key="nights_metric").value == "efficientnet_lite0"
    rows = at.dataframe[0].value
    assert rows["agrees"].tolist() == [True, True, False]
    assert any("2AFC score of **efficientnet_lite0**" in m.value and "0.667" in m.value for m in at.markdown)
    at.checkbox(key="nights_disagree").check().run()
    _ok(at)
    assert at.dataframe[0].value["id"].tolist() == ["2"]
    assert len(at.get("image")) >= 1  # the triplet's images, from the NIGHTS folder


def test_imagenet_r_neighbours(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from lookalike.indexer import build_index

    root = tmp_path / "imagenet-r"
    (root / "n01443537").mkdir(parents=True)  # goldfish
    (root / "n01484850").mkdir()  # great white shark
    im = open_image(PHOTOS / NAMES[3])
    im.save(root / "n01443537" / "art_0.jpg")
    ImageEnhance.Contrast(im).enhance(0.8).save(root / "n01443537" / "cartoon_1.jpg")
    shutil.copy(PHOTOS / NAMES[4], root / "n01484850" / "photo_0.jpg")
    build_index(root, tmp_path / "index", metric="efficientnet_lite0", workers=0, progress=False)
    at = _app(monkeypatch, tmp_path / "index", "datasets", **{ENV_IMAGENET_R: str(root)})
    assert any("**2 / 3** neighbours are goldfish" in m.value and "cartoon" in m.value for m in at.markdown)


# --- helpers and CLI -----------------------------------------------------------------------------------------------


def test_decode_upload_limits() -> None:
    from lookalike.app.views import decode_upload

    img = decode_upload(jpeg_bytes(Image.new("RGB", (40, 30), "red")), "red.jpg", max_bytes=10_000)
    assert img.size == (40, 30) and img.mode == "RGB"
    with pytest.raises(ValueError, match="empty"):
        decode_upload(b"", "e.jpg", max_bytes=10)
    with pytest.raises(ValueError, match="limited to"):
        decode_upload(b"x" * 11, "big.jpg", max_bytes=10)
    with pytest.raises(ValueError, match="decompression bomb"):
        decode_upload(jpeg_bytes(Image.new("RGB", (300, 300))), "bomb.jpg", max_bytes=10**6, max_pixels=1000)


def test_settings_from_environment(tmp_path: Path) -> None:
    s = load_settings({ENV_INDEX: str(tmp_path), ENV_MAX_UPLOAD_MB: "3"})
    assert s.index_dir == tmp_path and s.nights_root is None and s.max_upload_bytes == 3 * 1024 * 1024
    assert load_settings({ENV_MAX_UPLOAD_MB: "lots"}).max_upload_bytes == 20 * 1024 * 1024
    assert load_settings({}).index_dir is None


def test_neighbour_overlap() -> None:
    from lookalike.app.views import neighbour_overlap
    from lookalike.indexer import Hit

    a = [Hit("/x/1.jpg", 0.0), Hit("/x/2.jpg", 0.1)]
    b = [Hit("/x/2.jpg", 0.0), Hit("/x/3.jpg", 0.2)]
    assert neighbour_overlap({"m1": a, "m2": b}) == [
        {"metric A": "m1", "metric B": "m2", "shared": 1, "of k": 2, "overlap": 0.5}]


def test_cli_app_binds_localhost_and_hides_tracebacks(tmp_path: Path) -> None:
    from lookalike.app.cli import build_parser
    from lookalike.app.cli_app import APP_SCRIPT, streamlit_command

    args = build_parser().parse_args(["app", "--index", str(tmp_path / "idx")])
    assert (args.host, args.port) == ("127.0.0.1", 8501)
    cmd, env = streamlit_command(args)
    assert cmd[cmd.index("run") + 1] == str(APP_SCRIPT) and APP_SCRIPT.is_file()
    opts = dict(zip(cmd[5::2], cmd[6::2], strict=True))
    assert opts["--server.address"] == "127.0.0.1" and opts["--server.headless"] == "true"
    assert opts["--client.showErrorDetails"] == "none" and opts["--server.maxUploadSize"] == "20"
    assert env[ENV_INDEX] == str(tmp_path / "idx")
    with pytest.raises(ValueError, match="--port"):
        streamlit_command(argparse.Namespace(**{**vars(args), "port": 70000}))


def test_compare_all_and_triplet_votes() -> None:
    from lookalike.judge.compare import STATUS_OK, STATUS_UNAVAILABLE, compare_all

    a = open_image(PHOTOS / NAMES[0])
    b = ImageEnhance.Brightness(a).enhance(1.1)
    rows = {r.metric: r for r in compare_all(a, b)}
    assert "test_vit_tiny" not in rows
    assert rows["psnr"].status == STATUS_OK and rows["psnr"].direction == "higher = more similar"
    assert rows["dreamsim"].status == STATUS_UNAVAILABLE and "lookalike weights download dreamsim" in \
        rows["dreamsim"].reason
    with pytest.raises(KeyError):
        compare_all(a, b, metrics=["no_such_metric"])


def test_triplet_rows_direction_and_agreement() -> None:
    from lookalike.app.views import triplet_rows
    from lookalike.data.triplets import Triplet

    ts = [Triplet("r", "l", "x", 0.9, "a"), Triplet("r", "l", "x", 0.9, "b"), Triplet("r", "l", "x", 0.5, "c")]
    rows = triplet_rows(ts, [0.2, 0.1, 0.1], [0.1, 0.2, 0.2], [0.9, 0.1, 0.5])
    assert [r["metric: right"] for r in rows] == [True, False, False]
    assert [r["agrees"] for r in rows] == [True, False, True]  # people split 50/50: never a disagreement
    psnr = triplet_rows(ts[:1], [30.0], [20.0], [0.1], lower_is_better=False)  # higher = more similar
    assert not psnr[0]["metric: right"] and not psnr[0]["agrees"]


def test_neighbours_under_two_indexed_metrics(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from lookalike.indexer import build_index

    photos = _copy_photos(tmp_path / "photos")
    for metric in ("efficientnet_lite0", "test_vit_tiny"):
        build_index(photos, tmp_path / "index", metric=metric, workers=0, progress=False)
    at = _app(monkeypatch, tmp_path / "index", "compare")
    at.radio(key="cmp_a_source").set_value("Pick an indexed image").run()
    at.selectbox(key="cmp_a_path").set_value(NAMES[2]).run()
    _ok(at)
    assert at.multiselect(key="nb_metrics").value == ["efficientnet_lite0", "test_vit_tiny"]
    at.slider(key="nb_k").set_value(3).run()  # k below the 6 indexed images, so the overlap says something
    _ok(at)
    columns, overlap = at.table[0].value, at.table[-1].value
    assert columns["path"].iloc[0] == NAMES[2]  # an indexed query finds itself first under each metric
    assert overlap.iloc[0]["metric A"] == "efficientnet_lite0" and overlap.iloc[0]["metric B"] == "test_vit_tiny"
    from lookalike.indexer import search

    tops = [{h.relpath for h in search(tmp_path / "index", NAMES[2], k=3, metric=m)}
            for m in ("efficientnet_lite0", "test_vit_tiny")]
    assert overlap.iloc[0]["of k"] == 3 and overlap.iloc[0]["shared"] == len(tops[0] & tops[1])
    at.switch_page("app_pages/search.py").run()
    at.selectbox(key="search_metric").set_value("test_vit_tiny")
    at.query_params["q"] = NAMES[2]
    at.run()
    _ok(at)
    assert any("under test_vit_tiny" in h.value for h in at.subheader)
    assert _hits(at)[0].endswith(NAMES[2])


def test_app_respects_a_catalog_outside_the_folder(tmp_path: Path) -> None:
    """``lookalike app --db URL``: the catalog is found through the URL, never by a hard-coded file name."""
    import argparse

    from lookalike.app.cli_app import streamlit_command
    from lookalike.app.settings import ENV_DB
    from lookalike.app.views import index_state
    from lookalike.indexer import build_index, index_exists

    photos = _copy_photos(tmp_path / "photos", NAMES[:2])
    url = f"sqlite:///{tmp_path / 'elsewhere.sqlite'}"
    build_index(photos, tmp_path / "index", metric="efficientnet_lite0", workers=0, progress=False, db_url=url)
    assert not index_exists(tmp_path / "index") and index_exists(tmp_path / "index", db_url=url)
    assert index_state(tmp_path / "index") == "missing" and index_state(tmp_path / "index", url) == "ok"
    args = argparse.Namespace(index=str(tmp_path / "index"), db=url, port=8501, host="127.0.0.1", nights=None,
                              imagenet_r=None, max_upload_mb=20)
    _, env = streamlit_command(args)
    assert env[ENV_DB] == url and load_settings(env).db_url == url
