"""``lookalike serve`` end to end: the real server in a subprocess on a free port, spoken to over HTTP with httpx.

The index holds the fixture photos (plus an edited copy of one: a known duplicate), embedded with the real offline
model ``efficientnet_lite0``. Uploads are edited versions of indexed photos that are not themselves indexed. The
index is fp32 and the server runs with ``LOOKALIKE_CPU_BF16=0`` (``support.run_service``), and so does the CLI compared
with it: the numbers are the same on every CPU.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image, ImageEnhance, ImageFilter
from support import DUP_OF, PHOTOS, PINNED, run_service

from lookalike.data.images import open_image

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

TOKEN = "s3cret-token-for-the-tests-0123456789"


def _edit(img: Image.Image) -> Image.Image:
    """A crop, resize, brightness change and blur: the kind of edit a "find similar" must see through."""
    w, h = img.size
    out = img.crop((w // 12, h // 12, w - w // 10, h - h // 10)).resize((w * 3 // 4, h * 3 // 4))
    return ImageEnhance.Brightness(out).enhance(1.2).filter(ImageFilter.GaussianBlur(1.0))


def _jpeg(img: Image.Image, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def collection(photo_index: dict[str, Path]) -> dict[str, Path]:
    """The shared ``photo_index`` (read-only): 24 photos + an edited copy of DUP_OF, and ``outside`` (not indexed)."""
    return photo_index


serve = run_service  # ``lookalike serve`` on a free port, fp32 on every CPU; a traceback in its log fails the test


@pytest.fixture(scope="module")
def server(collection: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(collection["index"], tmp_path_factory.mktemp("serve") / "serve.log", "--max-upload-mb", "2") as url:
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=60) as c:
        yield c


def _ids_by_relpath(client: httpx.Client) -> dict[str, int]:
    """relpath -> id of every indexed image (a search by upload with k = all)."""
    r = client.post("/search", files={"image": ("q.jpg", _jpeg(open_image(PHOTOS / DUP_OF)), "image/jpeg")},
                    data={"k": "100"})
    assert r.status_code == 200, r.text
    return {h["relpath"]: h["id"] for h in r.json()["hits"]}


def _no_traceback(r: httpx.Response) -> None:
    assert "Traceback" not in r.text and 'File "' not in r.text


# --- search ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sunhays_beach_sun_bgtlposotyokcsdg.jpg", "bsd68_108070.jpg",
                                  "sunhays_barn_sun_btulbiaoilnxcseh.jpg"])
def test_upload_of_an_edited_photo_finds_its_original_first(client: httpx.Client, name: str) -> None:
    original = open_image(PHOTOS / name)
    r = client.post("/search", files={"image": ("edited.jpg", _jpeg(_edit(original)), "image/jpeg")},
                    data={"k": "5"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["metric"] == "efficientnet_lite0" and body["k"] == 5 and len(body["hits"]) == 5
    first = body["hits"][0]
    assert first["relpath"] == name
    assert (first["width"], first["height"]) == original.size
    distances = [h["distance"] for h in body["hits"]]
    assert distances == sorted(distances) and distances[0] < distances[1]
    assert isinstance(first["id"], int) and Path(first["path"]).name == name


def test_search_by_id_and_by_path_finds_the_image_itself_first(client: httpx.Client,
                                                               collection: dict[str, Path]) -> None:
    ids = _ids_by_relpath(client)
    assert len(ids) == 25
    i = ids["bsd68_102061.jpg"]
    by_id = client.post("/search", json={"id": i, "k": 3})
    assert by_id.status_code == 200, by_id.text
    hits = by_id.json()["hits"]
    assert hits[0]["id"] == i and hits[0]["distance"] < 1e-4
    for path in ("bsd68_102061.jpg", str(collection["photos"] / "bsd68_102061.jpg")):
        by_path = client.post("/search", json={"path": path, "k": 3})
        assert by_path.status_code == 200, by_path.text
        assert [h["id"] for h in by_path.json()["hits"]] == [h["id"] for h in hits]
    # the duplicate's nearest is its edited copy
    dup = client.post("/search", json={"path": DUP_OF, "k": 2}).json()["hits"]
    assert dup[1]["relpath"] == "edits/bsd68_101085_edited.jpg"


def test_search_narrowed_to_a_folder(client: httpx.Client, collection: dict[str, Path]) -> None:
    folder = str(collection["photos"] / "edits")
    r = client.post("/search", json={"path": "bsd68_102061.jpg", "k": 5, "folder": folder})
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert [h["relpath"] for h in hits] == ["edits/bsd68_101085_edited.jpg"]  # the only file in there


def test_bad_requests_are_json_errors_with_the_right_status(client: httpx.Client) -> None:
    cases = [
        (client.post("/search", json={"k": 3}), 422, "exactly one of 'id' and 'path'"),
        (client.post("/search", json={"id": 1, "k": 0}), 422, "k"),
        (client.post("/search", json={"id": 10**9}), 404, "no indexed image with id"),
        (client.post("/search", json={"id": 1, "metric": "dreamsim"}), 400, "not served here"),
        (client.post("/search", content=b"id=1", headers={"Content-Type": "text/plain"}), 415, "multipart"),
        (client.post("/search", content=b"{not json", headers={"Content-Type": "application/json"}), 422, "json"),
        (client.get("/duplicates", params={"threshold": 5}), 422, "threshold"),
        (client.get("/nowhere"), 404, "Not Found"),
        (client.delete("/search"), 405, "Method Not Allowed"),
    ]
    for r, status, text in cases:
        assert r.status_code == status, (status, r.text)
        body = r.json()
        assert body["status"] == status and text.lower() in body["error"].lower(), body
        _no_traceback(r)


def test_rerank_is_refused_cleanly_or_applied(client: httpx.Client) -> None:
    info = client.get("/info").json()
    r = client.post("/search", json={"path": DUP_OF, "k": 3, "rerank": "no_such_reranker"})
    assert r.status_code == 400 and "no_such_reranker" in r.json()["error"]
    if not info["rerankers"]:  # this library has no pairwise re-ranking yet
        assert "not available" in r.json()["error"]
        return
    name = info["rerankers"][0]
    r = client.post("/search", json={"path": DUP_OF, "k": 3, "rerank": name, "rerank_k": 10})
    assert r.status_code == 200, r.text
    assert r.json()["rerank"] == name and len(r.json()["hits"]) == 3


# --- uploads: corrupt, too large, too many pixels ----------------------------------------------------------------


def _png_header_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (a decompression-bomb probe)."""
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def test_corrupt_and_oversized_uploads_are_refused_with_the_reason(client: httpx.Client) -> None:
    good = _jpeg(open_image(PHOTOS / DUP_OF))
    cases = [
        (good[: len(good) // 3], 400, "truncated"),
        (b"this is not an image at all", 400, "not an image"),
        (b"", 400, "empty"),
        (_png_header_claiming(20_000, 20_000), 400, "decompression bomb"),
        (os.urandom(3 * 1024 * 1024), 413, "bytes"),  # the server was started with --max-upload-mb 2
    ]
    for data, status, reason in cases:
        r = client.post("/search", files={"image": ("upload.jpg", data, "image/jpeg")})
        assert r.status_code == status, (reason, r.status_code, r.text)
        assert reason in r.json()["error"], r.json()
        _no_traceback(r)
    r = client.post("/search", files={"other": ("x.jpg", good, "image/jpeg")})
    assert r.status_code == 400 and "other" in r.json()["error"]


# --- files: only what the catalog holds --------------------------------------------------------------------------


def test_traversal_and_outside_catalog_paths_are_refused(client: httpx.Client, collection: dict[str, Path]) -> None:
    secret = collection["outside"].read_bytes()
    for path in (str(collection["outside"]), "/etc/passwd", "../../../../etc/passwd", "edits/../../outside.jpg",
                 str(collection["photos"] / ".." / "outside.jpg"), "bsd68_102061.jpg\x00.png", " "):
        r = client.post("/search", json={"path": path, "k": 1})
        assert r.status_code == 403, (path, r.text)
        assert "refused" in r.json()["error"]
        r = client.post("/compare", json={"a": {"path": path}, "b": {"path": DUP_OF}})
        assert r.status_code == 403, (path, r.text)
    for raw in ("/images/..%2f..%2f..%2fetc%2fpasswd", "/images/%2fetc%2fpasswd", "/images/-1",
                "/images/99999999", "/images/1.5/thumbnail", "/images/..%2Foutside.jpg/thumbnail",
                "/images/../../../../etc/passwd"):
        r = client.get(raw)
        assert r.status_code in (403, 404, 422), (raw, r.status_code)  # 422: not an id at all
        assert b"root:" not in r.content and secret not in r.content
        assert r.headers["content-type"].startswith("application/json")


def test_images_and_thumbnails_of_indexed_files(client: httpx.Client) -> None:
    ids = _ids_by_relpath(client)
    i = ids["bsd68_102061.jpg"]
    full = client.get(f"/images/{i}")
    assert full.status_code == 200 and full.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(full.content)).size == open_image(PHOTOS / "bsd68_102061.jpg").size
    thumb = client.get(f"/images/{i}/thumbnail", params={"size": 64})
    assert thumb.status_code == 200 and max(Image.open(io.BytesIO(thumb.content)).size) == 64
    assert client.get(f"/images/{i}/thumbnail", params={"size": 5000}).status_code == 422


# --- compare, duplicates, info, docs -----------------------------------------------------------------------------


def test_compare_gives_the_rows_of_the_cli(client: httpx.Client, collection: dict[str, Path]) -> None:
    a = (PHOTOS / DUP_OF).read_bytes()
    b = (collection["photos"] / "edits" / "bsd68_101085_edited.jpg").read_bytes()
    r = client.post("/compare", files={"a": ("a.jpg", a, "image/jpeg"), "b": ("b.jpg", b, "image/jpeg")},
                    data={"metrics": "efficientnet_lite0,psnr"})
    assert r.status_code == 200, r.text
    rows = {row["metric"]: row for row in r.json()["rows"]}
    assert set(rows) == {"efficientnet_lite0", "psnr"}
    assert rows["efficientnet_lite0"]["status"] == "ok" and rows["efficientnet_lite0"]["value"] < 0.2
    assert rows["psnr"]["direction"] == "higher = more similar" and rows["psnr"]["value"] > 10
    cli = subprocess.run([sys.executable, "-m", "lookalike.app.cli", "compare", str(PHOTOS / DUP_OF),
                          str(collection["photos"] / "edits" / "bsd68_101085_edited.jpg"), "--metric",
                          "efficientnet_lite0", "--metric", "psnr", "--json"], capture_output=True, text=True,
                         check=True, env={**os.environ, **PINNED})
    import json

    cli_rows = {row["metric"]: row for row in json.loads(cli.stdout)["rows"]}
    assert set(cli_rows["psnr"]) | {"non_finite"} == set(rows["psnr"]) and rows["psnr"]["non_finite"] is None
    assert abs(cli_rows["psnr"]["value"] - rows["psnr"]["value"]) < 1e-6
    assert abs(cli_rows["efficientnet_lite0"]["value"] - rows["efficientnet_lite0"]["value"]) < 1e-4
    by_path = client.post("/compare", json={"a": {"path": DUP_OF}, "b": {"path": "edits/bsd68_101085_edited.jpg"}})
    assert by_path.status_code == 200, by_path.text
    assert abs(by_path.json()["rows"][0]["value"] - rows["efficientnet_lite0"]["value"]) < 1e-4
    missing = client.post("/compare", json={"a": {"path": DUP_OF}, "b": {"path": DUP_OF}, "metrics": ["nope"]})
    assert missing.status_code == 400 and "nope" in missing.json()["error"]


def test_duplicates_are_paginated(client: httpx.Client) -> None:
    r = client.get("/duplicates", params={"threshold": 0.1, "page_size": 1})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["groups_total"] == 1 and body["pages"] == 1 and body["images"] == 25
    g = body["groups"][0]
    assert {g["keeper"]["relpath"], g["duplicates"][0]["relpath"]} == {DUP_OF, "edits/bsd68_101085_edited.jpg"}
    assert g["duplicates"][0]["distance"] < 0.1 and isinstance(g["keeper"]["id"], int)
    wide = client.get("/duplicates", params={"threshold": 0.5, "page_size": 1, "group": "star"}).json()
    assert wide["groups_total"] > 1 and wide["pages"] == wide["groups_total"]
    pages = [client.get("/duplicates", params={"threshold": 0.5, "page_size": 1, "group": "star", "page": p})
             .json()["groups"] for p in range(1, wide["pages"] + 1)]
    assert sum(len(p) for p in pages) == wide["groups_total"]
    keepers = [g["keeper"]["path"] for p in pages for g in p]
    assert len(set(keepers)) == len(keepers)  # pages do not overlap
    beyond = client.get("/duplicates", params={"threshold": 0.5, "page_size": 1, "group": "star",
                                               "page": wide["pages"] + 1}).json()
    assert beyond["groups"] == []


def test_info_health_and_docs(client: httpx.Client) -> None:
    info = client.get("/info").json()
    assert info["metric"] == "efficientnet_lite0" and info["vectors"] == 25 and info["token_required"] is False
    assert info["limits"]["max_upload_bytes"] == 2 * 1024 * 1024
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/docs").status_code == 200 and "swagger" in client.get("/docs").text.lower()
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/search", "/compare", "/duplicates", "/images/{image_id}", "/images/{image_id}/thumbnail", "/info",
              "/health"):
        assert p in paths
    content = paths["/search"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(content)


# --- concurrency and a live index ---------------------------------------------------------------------------------


def test_eight_concurrent_clients_get_correct_answers(server: str) -> None:
    names = ["sunhays_beach_sun_bgtlposotyokcsdg.jpg", "bsd68_108070.jpg", "sunhays_barn_sun_btulbiaoilnxcseh.jpg",
             "bsd68_12084.jpg", "sunhays_butte_sun_aidickeaxixvkuxv.jpg", "bsd68_119082.jpg",
             "sunhays_abbey_sun_asztnlqhlrvirneh.jpg", "bsd68_105025.jpg"]
    uploads = {n: _jpeg(_edit(open_image(PHOTOS / n))) for n in names}

    def one_client(n: str) -> list[str]:
        got = []
        with httpx.Client(base_url=server, timeout=120) as c:
            for rep in range(3):
                if rep % 2 == 0:
                    r = c.post("/search", files={"image": ("q.jpg", uploads[n], "image/jpeg")}, data={"k": "3"})
                else:
                    r = c.post("/search", json={"path": n, "k": 3})
                assert r.status_code == 200, r.text
                got.append(r.json()["hits"][0]["relpath"])
        return got

    with ThreadPoolExecutor(8) as pool:
        results = dict(zip(names, pool.map(one_client, names), strict=True))
    for n, got in results.items():
        assert got == [n, n, n], (n, got)


def test_the_index_is_reopened_when_an_index_run_commits(collection: dict[str, Path], tmp_path: Path) -> None:
    from lookalike.indexer import build_index

    folder = tmp_path / "live"
    folder.mkdir()
    for n in ("bsd68_101087.jpg", "bsd68_102061.jpg"):
        shutil.copy(PHOTOS / n, folder / n)
    index_dir = tmp_path / "index"
    build_index(folder, index_dir, metric="efficientnet_lite0", dtype="fp32", workers=0, progress=False)
    new = "sunhays_beach_sun_bgtlposotyokcsdg.jpg"
    query = _jpeg(_edit(open_image(PHOTOS / new)))
    with serve(index_dir, tmp_path / "serve.log") as url, httpx.Client(base_url=url, timeout=60) as c:
        before = c.post("/search", files={"image": ("q.jpg", query, "image/jpeg")}, data={"k": "5"}).json()
        assert len(before["hits"]) == 2 and before["hits"][0]["relpath"] != new
        shutil.copy(PHOTOS / new, folder / new)
        build_index(folder, index_dir, metric="efficientnet_lite0", dtype="fp32", workers=0, progress=False)
        deadline = time.monotonic() + 30
        while True:
            after = c.post("/search", files={"image": ("q.jpg", query, "image/jpeg")}, data={"k": "5"}).json()
            if len(after["hits"]) == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert after["hits"][0]["relpath"] == new
        assert c.get("/info").json()["vectors"] == 3


# --- token and binding ---------------------------------------------------------------------------------------------


def test_token_is_required_when_given(collection: dict[str, Path], tmp_path: Path) -> None:
    with serve(collection["index"], tmp_path / "serve.log", env={"LOOKALIKE_SERVE_TOKEN": TOKEN}) as url:
        for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token-123"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}x"}):
            for method, path, kw in (("GET", "/info", {}), ("POST", "/search", {"json": {"id": 1}}),
                                     ("GET", "/images/1", {}), ("GET", "/images/1/thumbnail", {}),
                                     ("GET", "/duplicates", {"params": {"threshold": 0.1}}),
                                     ("POST", "/compare", {"json": {"a": {"id": 1}, "b": {"id": 1}}})):
                r = httpx.request(method, url + path, headers=headers, timeout=30, **kw)
                assert r.status_code == 401, (headers, path, r.status_code)
                assert r.headers.get("www-authenticate") == "Bearer" and "token" in r.json()["error"]
        assert httpx.get(url + "/health").status_code == 200  # liveness and docs stay open
        ok = httpx.get(url + "/info", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert ok.status_code == 200 and ok.json()["token_required"] is True


def test_binding_beyond_loopback_needs_a_token(collection: dict[str, Path]) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LOOKALIKE_SERVE_TOKEN"}
    for args, message in (
        (["--host", "0.0.0.0"], "refusing to bind 0.0.0.0 without a token"),
        (["--host", "192.168.1.10"], "refusing to bind 192.168.1.10 without a token"),
        (["--token", "short"], "use at least 16"),
        (["--port", "0"], "--port must be in 1..65535"),
    ):
        r = subprocess.run([sys.executable, "-m", "lookalike.app.cli", "serve", "--index", str(collection["index"]),
                            *args], capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "lookalike.app.cli", "serve", "--index",
                        str(collection["base"] / "nothing")], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2 and "index folder not found" in r.stderr and "Traceback" not in r.stderr
