"""search: queries as files, PIL images and indexed paths; k; errors; readers that refresh."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from support import PHOTOS

from lookalike.data.images import open_image
from lookalike.indexer import build_index, open_index, search
from lookalike.indexer._search import search_vectors
from lookalike.metric import load_metric


@pytest.fixture(scope="module")
def tiny():
    return load_metric("test_vit_tiny", device="cpu")


@pytest.fixture(scope="module")
def small_index(tmp_path_factory: pytest.TempPathFactory, tiny):
    tmp = tmp_path_factory.mktemp("search")
    root = tmp / "photos"
    (root / "sub").mkdir(parents=True)
    photos = sorted(PHOTOS.glob("*.jpg"))[:10]
    for i, p in enumerate(photos):
        shutil.copy2(p, (root / "sub" if i % 2 else root) / p.name)
    build_index(root, tmp / "idx", metric=tiny, batch_size=4, workers=0, progress=False)
    return tmp, root, photos


def test_query_kinds_agree(small_index, tiny, cpu_bf16: bool) -> None:
    """An image query is embedded in the precision the index recorded (fp32 here), whatever the CPU runs natively,
    so a copy of an indexed photo finds it at distance ~0 on every machine."""
    tmp, root, photos = small_index
    idx = tmp / "idx"
    rel = f"sub/{photos[1].name}"
    by_path = search(idx, root / rel, k=5)
    by_rel = search(idx, rel, k=5)
    by_pil = search(idx, open_image(root / rel), k=5, device="cpu")
    outside = tmp / "outside.jpg"
    shutil.copy2(root / rel, outside)  # same pixels, not indexed: embedded on the fly
    by_file = search(idx, outside, k=5, device="cpu")
    for hits in (by_path, by_rel, by_pil, by_file):
        assert [h.relpath for h in hits] == [h.relpath for h in by_path]
        assert hits[0].relpath == rel and hits[0].distance < 1e-4
        assert all(a.distance <= b.distance for a, b in zip(hits, hits[1:], strict=False))
    assert by_path[0].path == str(root / rel) and by_path[0].root == str(root)
    assert len(search(idx, rel, k=100)) == 10
    assert len(search(idx, rel, k=1)) == 1


def test_query_errors(small_index) -> None:
    tmp, root, _ = small_index
    idx = tmp / "idx"
    with pytest.raises(FileNotFoundError, match="neither an image file nor a path in index"):
        search(idx, "no/such.jpg")
    with pytest.raises(ValueError, match="is a folder"):
        search(idx, root / "sub")
    bad = tmp / "bad.jpg"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not an image"):
        search(idx, bad, device="cpu")
    with pytest.raises(ValueError, match="k must be >= 1"):
        search(idx, root / "sub" / sorted((root / "sub").iterdir())[0].name, k=0)
    with open_index(idx) as ix:
        with pytest.raises(ValueError, match="query dim 12 != index dim 256"):
            search_vectors(ix, np.zeros((1, 12), np.float32), 3)
    with pytest.raises(FileNotFoundError, match="no index"):
        open_index(tmp)


def test_reader_refresh_sees_new_commits(small_index, tiny, tmp_path: Path) -> None:
    tmp, root, photos = small_index
    root2, idx2 = tmp_path / "photos", tmp_path / "idx"
    root2.mkdir()
    shutil.copy2(photos[0], root2 / photos[0].name)
    build_index(root2, idx2, metric=tiny, workers=0, progress=False)
    with open_index(idx2) as ix:
        assert len(search(ix, photos[0].name, k=10)) == 1
        shutil.copy2(photos[2], root2 / photos[2].name)
        build_index(root2, idx2, metric=tiny, workers=0, progress=False)
        assert ix.refresh()
        assert len(search(ix, photos[0].name, k=10)) == 2
        assert not ix.refresh()
