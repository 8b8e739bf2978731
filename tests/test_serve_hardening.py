"""``lookalike serve`` against careless and hostile requests: the defects of issue 18, each on the real server.

The index follows every symbolic link (``follow_links=True``, as any index built before the link policy did): it
holds a link that leaves the photo folder, a link to /etc/passwd (a failed row), and, after indexing, an indexed
photo is replaced by a link to a file outside. The server must never read those, whatever the catalog says.
"""

from __future__ import annotations

import io
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote as urlquote

import pytest
from PIL import Image
from support import run_service as serve

from lookalike.data.images import open_image

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

PHOTOS = Path(__file__).parent / "fixtures" / "photos"
NAMES = ["bsd68_101085.jpg", "bsd68_102061.jpg", "bsd68_103070.jpg", "bsd68_105025.jpg", "bsd68_108070.jpg"]
SECRET = "sunhays_barn_sun_btulbiaoilnxcseh.jpg"  # copied outside the indexed folder
SWAPPED = NAMES[1]  # replaced by a link to the outside file after indexing
BIG_ID = 2**63  # one past SQLite's largest INTEGER
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="symbolic links need privileges on Windows")


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from lookalike.indexer import build_index

    base = tmp_path_factory.mktemp("hardening")
    photos, outside = base / "photos", base / "outside"
    photos.mkdir()
    outside.mkdir()
    for n in NAMES:
        shutil.copy(PHOTOS / n, photos / n)
    shutil.copy(PHOTOS / SECRET, outside / "secret.jpg")
    (photos / "broken.jpg").write_bytes(b"this is not an image")
    (photos / "alias.jpg").symlink_to(photos / NAMES[0])  # inside the folder: served
    (photos / "leak.jpg").symlink_to(outside / "secret.jpg")
    (photos / "passwd.jpg").symlink_to("/etc/passwd")
    build_index(photos, base / "index", metric="efficientnet_lite0", dtype="fp32", workers=0, progress=False,
                follow_links=True)
    (photos / SWAPPED).unlink()
    (photos / SWAPPED).symlink_to(outside / "secret.jpg")
    return {"base": base, "photos": photos, "index": base / "index", "secret": outside / "secret.jpg"}


@pytest.fixture(scope="module")
def ids(collection: dict[str, Path]) -> dict[str, int]:
    from lookalike.indexer import open_index

    with open_index(collection["index"]) as idx:
        return {p: idx.find_image(p).id for p in (*NAMES, "alias.jpg", "leak.jpg", "passwd.jpg", "broken.jpg")}


@pytest.fixture(scope="module")
def server(collection: dict[str, Path]) -> Iterator[str]:
    with serve(collection["index"], collection["base"] / "serve.log", "--max-upload-mb", "2") as url:
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=120) as c:
        yield c


def _jpeg(path: Path) -> bytes:
    buf = io.BytesIO()
    open_image(path).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _error(r: httpx.Response, status: int, text: str = "") -> dict:
    assert r.status_code == status, (status, r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["status"] == status and text.lower() in body["error"].lower(), body
    if status == 422:
        assert isinstance(body["detail"], list) and all({"loc", "msg", "type"} <= set(d) for d in body["detail"])
    assert "Traceback" not in r.text
    return body


# --- files outside the indexed folder ----------------------------------------------------------------------------


def test_files_outside_the_indexed_folder_are_never_served(client: httpx.Client, ids: dict[str, int],
                                                           collection: dict[str, Path]) -> None:
    secret = collection["secret"].read_bytes()
    for name in ("leak.jpg", SWAPPED):  # indexed through a link that leaves the folder / swapped after indexing
        i = ids[name]
        for url in (f"/images/{i}", f"/images/{i}/thumbnail"):
            r = client.get(url)
            _error(r, 403, "outside its indexed folder")
            assert secret not in r.content
        _error(client.post("/search", json={"id": i, "k": 2}), 403, "outside")
        _error(client.post("/search", json={"path": name, "k": 2}), 403, "outside")
        _error(client.post("/compare", json={"a": {"id": i}, "b": {"id": ids[NAMES[2]]}}), 403, "outside")
    inside = client.get(f"/images/{ids['alias.jpg']}")  # a link that stays inside the folder
    assert inside.status_code == 200
    assert Image.open(io.BytesIO(inside.content)).size == open_image(PHOTOS / NAMES[0]).size


def test_a_catalogued_file_that_failed_is_never_opened(client: httpx.Client, ids: dict[str, int]) -> None:
    for name in ("passwd.jpg", "broken.jpg"):  # catalogued with status "failed"
        body = _error(client.post("/search", json={"path": name}), 403, "not a readable image")
        assert "root:" not in str(body)
        _error(client.post("/compare", json={"a": {"path": name}, "b": {"path": NAMES[0]}}), 403, "refused")
        _error(client.get(f"/images/{ids[name]}"), 404, "no indexed image")


def test_follow_links_serves_what_was_indexed_through_links(collection: dict[str, Path],
                                                            ids: dict[str, int]) -> None:
    with serve(collection["index"], collection["base"] / "follow.log", "--follow-links") as url:
        r = httpx.get(f"{url}/images/{ids['leak.jpg']}", timeout=60)
        assert r.status_code == 200
        assert Image.open(io.BytesIO(r.content)).size == open_image(collection["secret"]).size
        _error(httpx.post(f"{url}/search", json={"path": "passwd.jpg"}, timeout=60), 403, "not a readable image")


# --- ids and fields ----------------------------------------------------------------------------------------------


def test_large_and_malformed_ids_are_client_errors(client: httpx.Client, ids: dict[str, int]) -> None:
    for url in (f"/images/{BIG_ID}", f"/images/{BIG_ID}/thumbnail", f"/images/{10**30}"):
        _error(client.get(url), 422)
    _error(client.get(f"/images/{BIG_ID - 1}"), 404, "no indexed image")
    _error(client.post("/search", json={"id": BIG_ID}), 422)
    _error(client.post("/compare", json={"a": {"id": BIG_ID}, "b": {"id": ids[NAMES[0]]}}), 422)
    for raw in ("1_" + str(ids[NAMES[0]]), "\u0661", "+1", "%201", "1.0", "0x1"):  # never read as another id
        _error(client.get(f"/images/{raw}"), 422, "digits")


@pytest.mark.parametrize("body", [
    {"id": False}, {"id": True}, {"id": 1.0}, {"id": "1"}, {"path": NAMES[0], "k": True},
    {"path": NAMES[0], "k": "5"}, {"path": NAMES[0], "kk": 5}, {"path": NAMES[0], "rerank_k": 5.0},
    {"path": NAMES[0], "metric": None, "extra": {"nested": 1}},
])
def test_json_fields_are_strict_and_unknown_ones_refused(client: httpx.Client, body: dict) -> None:
    _error(client.post("/search", json=body), 422)


def test_form_fields_are_strict_and_unknown_ones_refused(client: httpx.Client) -> None:
    image = {"image": ("q.jpg", _jpeg(PHOTOS / NAMES[0]), "image/jpeg")}
    for data in ({"k": "1_0"}, {"k": "\u0665"}, {"k": "true"}, {"k": " 5"}, {"k": "5", "kk": "5"},
                 {"folder": "relative/folder"}):
        _error(client.post("/search", files=image, data=data), 422)
    _error(client.post("/compare", json={"a": {"id": 1, "x": 1}, "b": {"id": 1}}), 422)
    ok = client.post("/search", files=image, data={"k": "3"})
    assert ok.status_code == 200 and len(ok.json()["hits"]) == 3


# --- the contract --------------------------------------------------------------------------------------------------


def _refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def test_the_openapi_describes_the_service(client: httpx.Client) -> None:
    doc = client.get("/openapi.json").json()
    for ref in set(_refs(doc)):
        assert ref.startswith("#/"), ref
        node = doc
        for part in ref[2:].split("/"):
            assert part in node, f"unresolvable {ref}"
            node = node[part]
    assert "securitySchemes" not in doc.get("components", {})  # no token configured: no security advertised
    expected = {("post", "/search"): {"200", "400", "403", "404", "413", "415", "422"},
                ("post", "/compare"): {"200", "400", "403", "404", "413", "415", "422"},
                ("get", "/images/{image_id}"): {"200", "403", "404", "422"},
                ("get", "/duplicates"): {"200", "400", "422", "429"}}
    for (method, path), statuses in expected.items():
        op = doc["paths"][path][method]
        assert "security" not in op
        assert statuses <= set(op["responses"]), (path, set(op["responses"]))
        assert op["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/ValidationErrorOut")
    issue = doc["components"]["schemas"]["ValidationIssue"]
    assert set(issue["required"]) == {"loc", "msg", "type"}
    row = doc["components"]["schemas"]["CompareRowOut"]["properties"]
    assert {"type": "string"} not in row["value"].get("anyOf", [])


def test_psnr_of_identical_images_is_null_with_the_reason(client: httpx.Client, ids: dict[str, int]) -> None:
    photo = _jpeg(PHOTOS / NAMES[0])
    r = client.post("/compare", files={"a": ("a.jpg", photo, "image/jpeg"), "b": ("b.jpg", photo, "image/jpeg")},
                    data={"metrics": "psnr,efficientnet_lite0"})
    assert r.status_code == 200, r.text
    rows = {row["metric"]: row for row in r.json()["rows"]}
    assert rows["psnr"]["value"] is None and rows["psnr"]["non_finite"] == "inf" and rows["psnr"]["status"] == "ok"
    assert isinstance(rows["efficientnet_lite0"]["value"], float) and rows["efficientnet_lite0"]["non_finite"] is None
    by_id = client.post("/compare", json={"a": {"id": ids[NAMES[0]]}, "b": {"id": ids["alias.jpg"]},
                                          "metrics": ["psnr"]}).json()["rows"][0]
    assert by_id["value"] is None and by_id["non_finite"] == "inf"


# --- cost and size of one request ---------------------------------------------------------------------------------


def test_the_work_of_one_request_is_capped(client: httpx.Client) -> None:
    limits = client.get("/info").json()["limits"]
    assert limits["max_k"] == 1000 and limits["max_rerank_k"] == 100 and limits["max_duplicates_threshold"] == 0.5
    _error(client.post("/search", json={"path": NAMES[0], "rerank": "psnr", "rerank_k": 1000}), 422, "rerank_k")
    _error(client.post("/search", json={"path": NAMES[0], "rerank": "psnr", "k": 101}), 422, "re-ranker")
    _error(client.post("/search", json={"path": NAMES[0], "k": 1001}), 422, "k")
    ok = client.post("/search", json={"path": NAMES[0], "rerank": "psnr", "k": 3, "rerank_k": 100})
    assert ok.status_code == 200 and ok.json()["rerank"] == "psnr" and len(ok.json()["hits"]) == 3
    for t in (2.0, 0.51):
        _error(client.get("/duplicates", params={"threshold": t}), 422, "threshold")
    assert client.get("/duplicates", params={"threshold": 0.5}).status_code == 200
    many = client.post("/compare", json={"a": {"path": NAMES[0]}, "b": {"path": NAMES[2]},
                                         "metrics": [f"m{i}" for i in range(40)]})
    _error(many, 422, "metrics")


def test_errors_quote_only_a_short_prefix(client: httpx.Client) -> None:
    long_path = "x" * 3000 + "/the-tail-of-it.jpg"
    r = client.post("/search", json={"path": long_path})
    _error(r, 403, "refused")
    assert len(r.content) < 1000 and "the-tail-of-it" not in r.text
    for body in ({"path": "y" * 5000}, {"folder": "/" + "f" * 5000}, {"z" * 20000: 1},
                 {"path": NAMES[0], "metric": "m" * 5000}):
        r = client.post("/search", json=body)
        _error(r, 422)
        assert len(r.content) < 2000, len(r.content)
    r = client.post("/search", json={"path": NAMES[0], "metric": "m" * 150 + "-tail"})
    _error(r, 400, "not served")
    assert "-tail" not in r.text
    name = "n" * 3000 + ".jpg"
    r = client.post("/search", files={"image": (name, _jpeg(PHOTOS / NAMES[0]), "image/jpeg")}, data={"k": "1"})
    assert r.status_code == 200 and len(r.json()["query"]["upload"]) <= 200


def test_json_bodies_are_capped_apart_from_uploads(client: httpx.Client) -> None:
    limit = client.get("/info").json()["limits"]["max_json_bytes"]
    big = {"path": NAMES[0], "folder": "/" + "a" * (2 * limit)}
    _error(client.post("/search", json=big), 413, "JSON")

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused while it streams in
        yield b'{"path": "' + b"b" * limit
        yield b"b" * limit + b'"}'

    _error(client.post("/search", content=chunks(), headers={"Content-Type": "application/json"}), 413, "exceeds")
    upload = Image.effect_noise((700, 700), 60).convert("RGB")
    buf = io.BytesIO()
    upload.save(buf, format="PNG")
    assert 10 * limit < len(buf.getvalue()) < 2 * 1024 * 1024  # far above the JSON cap, within --max-upload-mb 2
    r = client.post("/search", files={"image": ("noise.png", buf.getvalue(), "image/png")}, data={"k": "2"})
    assert r.status_code == 200, r.text


# --- docs ------------------------------------------------------------------------------------------------------------


def test_docs_load_nothing_from_other_hosts(client: httpx.Client, server: str) -> None:
    import re

    html = client.get("/docs").text
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and all(a.startswith("/") for a in assets), assets
    for a in assets:
        r = client.get(a)
        assert r.status_code == 200 and len(r.content) > 1000, a
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not installed (run .ci/install-system.sh): the page was checked without a browser")
    sync_api = pytest.importorskip("playwright.sync_api")

    elsewhere: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()

            def only_this_server(route: object) -> None:
                url = route.request.url  # type: ignore[attr-defined]
                if url.startswith(server):
                    route.continue_()  # type: ignore[attr-defined]
                else:
                    elsewhere.append(url)
                    route.abort()  # type: ignore[attr-defined]

            page.route("**/*", only_this_server)
            page.goto(f"{server}/docs")
            page.wait_for_selector(".opblock-summary-path", timeout=60_000)
            shown = page.locator(".opblock-summary-path").all_inner_texts()
        finally:
            browser.close()
    assert {"/search", "/compare", "/duplicates", "/images/{image_id}"} <= {s.strip() for s in shown}, shown
    assert not elsewhere, elsewhere


# --- one duplicates report at a time --------------------------------------------------------------------------------


def test_a_second_report_is_refused_while_one_is_computed() -> None:
    from lookalike.app.service.errors import ApiError
    from lookalike.app.service.state import ReportCache

    cache = ReportCache()
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []
    results: dict[str, object] = {}

    def slow(name: str) -> object:
        calls.append(name)
        started.set()
        release.wait(30)
        return name

    def ask(who: str, key: str) -> None:
        try:
            results[who] = cache.get((key,), lambda: slow(key))  # type: ignore[arg-type, return-value]
        except ApiError as e:
            results[who] = e

    first = threading.Thread(target=ask, args=("first", "a"))
    first.start()
    assert started.wait(30)
    same = threading.Thread(target=ask, args=("same", "a"))
    same.start()
    ask("other", "b")  # another report while "a" is computed: refused at once
    release.set()
    first.join(30)
    same.join(30)
    assert isinstance(results["other"], ApiError) and results["other"].status == 429
    assert results["first"] == results["same"] == "a" and calls == ["a"]
    assert cache.get(("b",), lambda: "b") == "b"  # type: ignore[arg-type, comparison-overlap]


def test_url_quoting_of_the_id_is_not_a_way_around(client: httpx.Client, ids: dict[str, int]) -> None:
    for raw in (urlquote(f"{ids['leak.jpg']}"), f"{ids['leak.jpg']}%2F..%2F{ids[NAMES[0]]}"):
        r = client.get(f"/images/{raw}")
        assert r.status_code in (403, 404, 422) and r.headers["content-type"].startswith("application/json")
