"""Re-ranking search results with a pairwise metric: the order equals direct pairwise scoring; CLI; errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lookalike.app.cli import main
from lookalike.data.images import open_image
from lookalike.indexer import build_index, search
from lookalike.metric import WeightsNotFound, list_rerankers, load_metric

PHOTOS = Path(__file__).parent / "fixtures" / "photos"


@pytest.fixture(scope="module")
def index_tree(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("rerank")
    root = tmp / "photos"
    root.mkdir()
    for p in sorted(PHOTOS.glob("*.jpg"))[:8]:
        shutil.copy2(p, root / p.name)
    build_index(root, tmp / "idx", metric="test_vit_tiny", device="cpu", batch_size=4, workers=0, progress=False)
    return tmp, root


def _direct(metric_name: str, query: Path, paths: list[str]) -> list[tuple[str, float]]:
    m = load_metric(metric_name, device="cpu")
    xq = m.preprocess(open_image(query))[None]
    scores = [(p, float(m.distance(xq, m.preprocess(open_image(p))[None])[0])) for p in paths]
    return sorted(scores, key=lambda t: t[1], reverse=not m.lower_is_better)


@pytest.mark.parametrize("name", ["ssim", "l2"])
def test_rerank_equals_direct_pairwise_scoring(index_tree, name: str) -> None:
    tmp, root = index_tree
    query = root / sorted(p.name for p in root.iterdir())[2]
    plain = search(tmp / "idx", query, k=8)
    assert all(h.scored_by == "test_vit_tiny" and h.score == h.distance for h in plain)
    hits = search(tmp / "idx", query, k=5, rerank=name, rerank_k=8, device="cpu")
    expected = _direct(name, query, [h.path for h in plain])[:5]
    assert [h.path for h in hits] == [p for p, _ in expected]
    assert [h.score for h in hits] == pytest.approx([v for _, v in expected], abs=1e-6)
    assert all(h.scored_by == name for h in hits)
    assert hits[0].path == str(query)  # the query itself is the most similar under any metric
    # distance keeps the index's own value
    by_path = {h.path: h.distance for h in plain}
    assert all(h.distance == pytest.approx(by_path[h.path]) for h in hits)
    m = load_metric(name, device="cpu")
    assert all(h.lower_is_better == m.lower_is_better for h in hits)


def test_rerank_k_bounds_the_candidates(index_tree) -> None:
    tmp, root = index_tree
    query = sorted(root.iterdir())[0]
    plain = search(tmp / "idx", query, k=8)
    hits = search(tmp / "idx", query, k=2, rerank="l2", rerank_k=3)
    assert len(hits) == 2
    assert {h.path for h in hits} <= {h.path for h in plain[:3]}
    # k larger than rerank_k: all k are scored
    assert len(search(tmp / "idx", query, k=6, rerank="l2", rerank_k=2)) == 6
    with pytest.raises(ValueError, match="rerank_k"):
        search(tmp / "idx", query, k=2, rerank="l2", rerank_k=0)


def test_rerank_with_a_loaded_metric_and_an_image_query(index_tree) -> None:
    tmp, root = index_tree
    query = sorted(root.iterdir())[3]
    m = load_metric("psnr", device="cpu")
    hits = search(tmp / "idx", open_image(query), k=3, rerank=m, rerank_k=8)
    assert hits[0].path == str(query) and hits[0].score == float("inf")  # identical images: PSNR +inf, first
    assert hits[1].score >= hits[2].score  # higher = more similar


def test_rerank_skips_unreadable_candidates(index_tree, tmp_path: Path, caplog) -> None:
    tmp, root = index_tree
    root2 = tmp_path / "photos"
    shutil.copytree(root, root2)
    build_index(root2, tmp_path / "idx", metric="test_vit_tiny", device="cpu", workers=0, progress=False)
    victim = sorted(root2.iterdir())[1]
    victim.write_bytes(b"not an image any more")
    hits = search(tmp_path / "idx", sorted(root2.iterdir())[0], k=8, rerank="l2", rerank_k=8)
    assert str(victim) not in {h.path for h in hits} and len(hits) == 7
    assert "skipping" in caplog.text


def test_rerank_errors(index_tree) -> None:
    tmp, root = index_tree
    query = sorted(root.iterdir())[0]
    with pytest.raises(KeyError, match="unknown metric"):
        search(tmp / "idx", query, k=2, rerank="no_such_metric")
    with pytest.raises(WeightsNotFound):
        search(tmp / "idx", query, k=2, rerank="lpips_vgg")


def test_list_rerankers_only_lists_what_can_run() -> None:
    names = list_rerankers()
    assert {"psnr", "ssim", "l2"} <= set(names)
    assert "lpips_vgg" not in names  # its weight files are not in the (empty) test cache
    assert all(load_metric(n, device="cpu").kind == "pairwise" for n in names if n in ("psnr", "ssim", "l2"))


def test_cli_search_rerank(index_tree, capsys) -> None:
    tmp, root = index_tree
    query = sorted(root.iterdir())[4]
    assert main(["search", str(query), "--index", str(tmp / "idx"), "-k", "3", "--rerank", "ssim", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["scored_by"] for r in rows] == ["ssim"] * 3 and rows[0]["path"] == str(query)
    assert rows[0]["lower_is_better"] is False
    assert main(["search", str(query), "--index", str(tmp / "idx"), "-k", "2", "--rerank", "ssim"]) == 0
    out = capsys.readouterr().out
    assert "re-ranked by ssim (higher = more similar)" in out
    assert main(["search", str(query), "--index", str(tmp / "idx"), "--rerank", "nope"]) != 0
    assert "unknown metric" in capsys.readouterr().err


def test_score_candidates_matches_distance() -> None:
    from lookalike.metric.rerank import score_candidates

    m = load_metric("l2", device="cpu")
    g = torch.Generator().manual_seed(0)
    q = torch.rand(3, 256, 256, generator=g)
    c = torch.rand(4, 3, 256, 256, generator=g)
    assert torch.allclose(score_candidates(m, q, c), m.distance(q[None].expand(4, -1, -1, -1), c))
    assert score_candidates(m, q, c[:0]).shape == (0,)


def test_json_of_an_infinite_score(index_tree, capsys) -> None:
    tmp, root = index_tree
    query = sorted(root.iterdir())[5]
    assert main(["search", str(query), "--index", str(tmp / "idx"), "-k", "2", "--rerank", "psnr", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert rows[0]["score"] == "inf" and rows[0]["path"] == str(query)
    assert isinstance(rows[1]["score"], float)
