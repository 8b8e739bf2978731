"""The REST service's dedup review: tiers in ``GET /duplicates``, verdicts at ``POST /labels`` (the labels
``lookalike label`` writes), and ``GET /duplicates?between=A&between=B`` for leaks across folders.

``lookalike serve`` runs in a subprocess over real photos (a held-out split with a leaked copy and an exact copy, a
brightened copy inside the training folder) indexed with ``efficientnet_lite0``; requests go through httpx.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import PHOTOS, run_service, split_collection

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The held-out split of ``support.split_collection``, with an exact copy of a training photo under test/."""
    return split_collection(tmp_path_factory.mktemp("serve_dedup"), exact_copy=True)


@pytest.fixture(scope="module")
def client(collection: dict[str, Path]) -> Iterator[httpx.Client]:
    with run_service(collection["index"], collection["base"] / "serve.log") as url, \
            httpx.Client(base_url=url, timeout=60) as c:
        yield c


def _members(body: dict) -> dict[str, str]:
    """relpath -> tier of every duplicate shown."""
    return {d["relpath"]: d["tier"] for g in body["groups"] for d in g["duplicates"]}


def test_tiers_labels_and_leaks(client: httpx.Client, collection: dict[str, Path]) -> None:
    body = client.get("/duplicates").json()
    assert body["threshold"] == pytest.approx(0.29) and body["threshold_source"] == "the near-copy boundary"
    assert _members(body) == {"test/bsd68_105025.jpg": "exact", "test/bsd68_102061_small.jpg": "near",
                              "train/bsd68_101085_bright.jpg": "near"}
    assert body["tier_counts"] == {"exact": 1, "near": 2, "similar": 0} and body["hidden_total"] == 0
    assert body["tiers"]["near"] == pytest.approx(0.29)
    assert {g["keeper"]["relpath"] for g in body["groups"]} >= {"train/bsd68_105025.jpg"}  # the original, not a copy

    r = client.post("/labels", json={"labels": [
        {"a": {"path": "train/bsd68_101085.jpg"}, "b": {"path": "train/bsd68_101085_bright.jpg"}, "same": False}]})
    assert r.status_code == 200 and r.json() == {"added": 1, "changed": 0, "unchanged": 0}, r.text
    after = client.get("/duplicates").json()  # right after: the service re-reads the catalog it wrote
    assert "train/bsd68_101085_bright.jpg" not in _members(after) and after["hidden_total"] == 1

    ids = {d["relpath"]: d["id"] for g in after["groups"] for d in (g["keeper"], *g["duplicates"])}
    r = client.post("/labels", json={"labels": [
        {"a": {"id": ids["train/bsd68_102061.jpg"]}, "b": {"id": ids["test/bsd68_102061_small.jpg"]}, "same": True},
        {"a": {"path": "train/bsd68_101085.jpg"}, "b": {"path": "train/bsd68_101085_bright.jpg"}, "same": False}]})
    assert r.json() == {"added": 1, "changed": 0, "unchanged": 1}

    from lookalike.indexer import list_labels

    assert sorted((lb.same, lb.source) for lb in list_labels(collection["index"])) == [(0.0, "service"),
                                                                                        (1.0, "service")]
    photos = collection["photos"]
    leaks = client.get("/duplicates", params=[("between", str(photos / "test")), ("between", str(photos / "train"))])
    assert leaks.status_code == 200, leaks.text
    lb = leaks.json()
    assert lb["between"] == [str(photos / "test"), str(photos / "train")]
    assert {(Path(m["a"]).name, Path(m["b"]).name, m["tier"], m["label"]) for m in lb["matches"]} == {
        ("bsd68_105025.jpg", "bsd68_105025.jpg", "exact", None),
        ("bsd68_102061_small.jpg", "bsd68_102061.jpg", "near", "same")}
    assert {g["keeper"]["relpath"].split("/")[0] for g in lb["groups"]} == {"train"}


def test_bad_label_and_between_requests(client: httpx.Client, collection: dict[str, Path]) -> None:
    outside = collection["base"] / "outside.jpg"
    shutil.copyfile(PHOTOS / "bsd68_108005.jpg", outside)
    photos = collection["photos"]
    cases = [
        (client.post("/labels", json={"labels": []}), 422, "labels"),
        (client.post("/labels", content=b"not json", headers={"content-type": "application/json"}), 422, ""),
        (client.post("/labels", json={"labels": [{"a": {"path": str(outside)}, "b": {"id": 1}, "same": True}]}),
         403, "not in the index catalog"),
        (client.post("/labels", json={"labels": [{"a": {"id": 99999}, "b": {"id": 1}, "same": True}]}), 404,
         "no indexed image"),
        (client.post("/labels", json={"labels": [{"a": {"id": 1}, "b": {"id": 1}, "same": False}]}), 400,
         "same file"),
        (client.post("/labels", json={"labels": [{"a": {}, "b": {"id": 1}, "same": False}]}), 422, "exactly one"),
        (client.get("/duplicates", params={"between": str(photos / "test")}), 422, "between"),
        (client.get("/duplicates", params=[("between", "test"), ("between", "train")]), 422, "absolute"),
        (client.get("/duplicates", params=[("between", str(photos)), ("between", str(photos / "train"))]), 400,
         "must not overlap"),
        (client.get("/duplicates", params=[("between", "/etc"), ("between", str(photos / "train"))]), 400,
         "no indexed image under /etc"),
    ]
    for r, status, text in cases:
        assert r.status_code == status, (r.request.url, r.text)
        body = r.json()
        assert body["status"] == status and text in body["error"], body
        assert "Traceback" not in r.text
