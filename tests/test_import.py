"""lookalike import: npy + paths, Parquet and clip-retrieval layouts; row checks; shards; search and dedup on them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from sqlalchemy import select

from lookalike.indexer import find_duplicates, import_embeddings, search
from lookalike.indexer._catalog import Catalog, ImageRow
from lookalike.indexer._shards import open_shards
from lookalike.metric import load_metric

PHOTOS = Path(__file__).parent / "fixtures" / "photos"


@pytest.fixture(scope="module")
def tiny():
    return load_metric("test_vit_tiny", device="cpu")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("photos")
    for p in sorted(PHOTOS.glob("*.jpg"))[:8]:
        shutil.copy2(p, dst / p.name)
    return dst


@pytest.fixture(scope="module")
def embedded(tiny, photos: Path) -> tuple[list[str], np.ndarray]:
    """The photos' relative paths and their test_vit_tiny vectors, computed "elsewhere" (outside lookalike index)."""
    names = sorted(p.name for p in photos.iterdir())
    x = torch.stack([tiny.preprocess(Image.open(photos / n).convert("RGB")) for n in names])
    with torch.inference_mode():
        return names, tiny.embed(x).numpy()


def catalog(idx: Path) -> dict[str, ImageRow]:
    with Catalog(idx) as cat, cat.session() as s:
        return {r.relpath: r for r in s.scalars(select(ImageRow))}


def stored_vectors(idx: Path, fingerprint: str, dim: int) -> dict[int, np.ndarray]:
    with Catalog(idx) as cat:
        ss = open_shards(cat, fingerprint, dim)
        return {int(i): v for ids, xb in ss.iter_live() for i, v in zip(ids, xb, strict=True)}


def test_npy_shards_with_paths_land_as_shards_and_are_searchable(tmp_path: Path, tiny, photos: Path,
                                                                 embedded) -> None:
    names, xb = embedded
    src = tmp_path / "emb"
    src.mkdir()
    np.save(src / "part_0.npy", xb[:5])
    np.save(src / "part_1.npy", xb[5:].astype(np.float16))  # other float dtypes are accepted
    (src / "paths.txt").write_text("\n".join(names[:7] + ["gone.jpg"]) + "\n")  # the last image does not exist
    idx = tmp_path / "idx"
    s = import_embeddings(src, idx, metric="test_vit_tiny", root=photos, chunk_rows=3)
    assert (s.format, s.files, s.rows, s.imported, s.missing, s.rejected) == ("npy", 2, 8, 8, 1, 0)
    assert s.fingerprint == tiny.fingerprint and s.dim == tiny.dim
    assert s.shards == 2 + 1  # chunks of at most 3 rows within each file (5 + 3 rows)
    rows = catalog(idx)
    assert {r.status for n, r in rows.items() if n != "gone.jpg"} == {"ok"}
    assert rows["gone.jpg"].status == "missing" and rows["gone.jpg"].size == 0
    assert rows[names[0]].size == (photos / names[0]).stat().st_size
    vecs = stored_vectors(idx, s.fingerprint, s.dim)
    assert len(vecs) == 8
    assert np.abs(vecs[rows[names[0]].id] - xb[0]).max() <= 1e-6
    assert np.abs(vecs[rows[names[6]].id] - xb[6]).max() < 2e-3  # from float16
    # search by an image (embedded with the same metric) finds its imported vector first
    hits = search(idx, photos / names[2], k=3, metric=tiny)
    assert Path(hits[0].path).name == names[2] and hits[0].distance < 1e-5
    # a re-run resumes: nothing new to land
    s2 = import_embeddings(src, idx, metric="test_vit_tiny", root=photos, chunk_rows=3)
    assert (s2.imported, s2.skipped, s2.total_vectors) == (0, 8, 8)


def test_parquet_rows_are_checked(tmp_path: Path, photos: Path, embedded) -> None:
    names, xb = embedded
    rows = [list(map(float, v)) for v in xb[:4]]
    rows.append([float("nan")] * xb.shape[1])  # not finite
    rows.append([0.0] * xb.shape[1])  # zero vector
    rows.append(list(map(float, 3.0 * xb[4])))  # not unit norm
    rows.append(None)  # a null vector
    paths = [str(photos / n) for n in names[:7]] + [str(photos / "null.jpg")]
    f = tmp_path / "emb.parquet"
    pq.write_table(pa.table({"image_path": paths, "embedding": pa.array(rows, pa.list_(pa.float32()))}), f)
    idx = tmp_path / "idx"
    with pytest.raises(ValueError, match=r"emb\.parquet: row 6 has norm 3.*normalize=True"):
        import_embeddings(f, idx, metric="an-outside-model")
    s = import_embeddings(f, idx, metric="an-outside-model", normalize=True)
    assert s.fingerprint == "an-outside-model-import" and s.dim == xb.shape[1]
    assert (s.rows, s.imported, s.rejected, s.normalized, s.skipped) == (8, 5, 3, 1, 0)  # one chunk: none landed
    cat = catalog(idx)
    assert cat[names[6]].error is None and cat[names[6]].status == "ok"
    assert "not finite" in cat[names[4]].error and "all zeros" in cat[names[5]].error
    assert cat["null.jpg"].status == "failed"
    vecs = stored_vectors(idx, s.fingerprint, s.dim)
    assert np.abs(vecs[cat[names[6]].id] - xb[4]).max() < 1e-5  # 3 x xb[4], normalised on the way in
    # other dimension: refused, naming the file
    g = tmp_path / "wide.parquet"
    pq.write_table(pa.table({"path": ["a.jpg"], "vector": [[1.0, 0.0]]}), g)
    with pytest.raises(ValueError, match=r"wide\.parquet: 2-d vectors, but the index holds"):
        import_embeddings(g, idx, metric="an-outside-model")


def test_clip_retrieval_layout_and_dedup(tmp_path: Path, photos: Path, embedded) -> None:
    names, xb = embedded
    out = tmp_path / "clip_out"
    (out / "img_emb").mkdir(parents=True)
    (out / "metadata").mkdir()
    # 8 photos + a planted near-duplicate of photo 0 (its vector nudged) and an exact copy of photo 3
    dup = xb[0] + 1e-3 * np.random.default_rng(0).normal(size=xb.shape[1]).astype(np.float32)
    vecs = np.concatenate([xb, (dup / np.linalg.norm(dup))[None], xb[3:4]])
    paths = [str(photos / n) for n in names] + [str(photos / "near_dup.jpg"), str(photos / "copy.jpg")]
    for part, sl in enumerate((slice(0, 6), slice(6, 10))):
        np.save(out / "img_emb" / f"img_emb_{part}.npy", vecs[sl])
        pq.write_table(pa.table({"image_path": paths[sl], "caption": ["x"] * len(paths[sl])}),
                       out / "metadata" / f"metadata_{part}.parquet")
    idx = tmp_path / "idx"
    s = import_embeddings(out, idx, metric="clip-l14-outside")
    assert (s.format, s.files, s.imported, s.missing) == ("clip-retrieval", 2, 10, 2)
    report = find_duplicates(idx, threshold=0.01)
    pairs = {frozenset(Path(p).name for p in (pr.a, pr.b)) for pr in report.pairs}
    assert frozenset({names[0], "near_dup.jpg"}) in pairs and frozenset({names[3], "copy.jpg"}) in pairs
    # misaligned embeddings and metadata: one clear error naming both files
    np.save(out / "img_emb" / "img_emb_1.npy", vecs[6:9])
    with pytest.raises(ValueError, match=r"img_emb_1\.npy has 3 rows but .*metadata_1\.parquet has 4"):
        import_embeddings(out, tmp_path / "idx2", metric="clip-l14-outside")


def test_cli_import(tmp_path: Path, photos: Path, embedded, capsys: pytest.CaptureFixture[str]) -> None:
    from lookalike.app.cli import main

    names, xb = embedded
    np.save(tmp_path / "v.npy", xb)
    (tmp_path / "v.paths.txt").write_text("\n".join(names) + "\n")
    idx = tmp_path / "idx"
    assert main(["import", str(tmp_path / "v.npy"), "--index", str(idx), "--metric", "test_vit_tiny", "--root",
                 str(photos), "--no-progress"]) == 0
    assert "imported 8" in capsys.readouterr().out
    (tmp_path / "short.paths.txt").write_text("a.jpg\n")
    np.save(tmp_path / "short.npy", xb[:2])
    assert main(["import", str(tmp_path / "short.npy"), "--index", str(idx), "--metric", "test_vit_tiny",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "short.paths.txt: has 1 paths but the embeddings have more rows" in err
    assert main(["import", str(tmp_path / "nothing"), "--index", str(idx), "--metric", "x"]) == 2
    assert "embeddings not found" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
@pytest.mark.parametrize("point", ["after_flush:2", "during_commit:2", "after_commit:2"])
def test_killed_import_resumes_without_loss_or_double(tmp_path: Path, tiny, photos: Path, embedded,
                                                      point: str) -> None:
    """SIGKILL an import between a shard file and its commit (or after it): the re-run lands every row once, and
    the killed run's shard file without a commit is gone."""
    from test_index_build import check_invariants

    names, xb = embedded
    np.save(tmp_path / "v.npy", xb)
    (tmp_path / "v.paths.txt").write_text("\n".join(names) + "\n")
    idx = tmp_path / "idx"
    cmd = [sys.executable, "-m", "lookalike.app.cli", "import", str(tmp_path / "v.npy"), "--index", str(idx),
           "--metric", "test_vit_tiny", "--root", str(photos), "--chunk-rows", "3", "--no-progress", "--json"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", LOOKALIKE_OFFLINE="1", CUDA_VISIBLE_DEVICES="",
               LOOKALIKE_CRASH_AT=point)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    landed = 6 if point == "after_commit:2" else 3  # chunks of 3 rows: the second one was in flight
    assert len(stored_vectors(idx, tiny.fingerprint, tiny.dim)) == landed
    env.pop("LOOKALIKE_CRASH_AT")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(r.stdout)
    assert (s["imported"], s["skipped"], s["total_vectors"]) == (8 - landed, landed, 8)
    vecs = stored_vectors(idx, tiny.fingerprint, tiny.dim)
    rows = catalog(idx)
    assert all(np.abs(vecs[rows[n].id] - xb[i]).max() <= 1e-6 for i, n in enumerate(names))
    check_invariants(idx, tiny.fingerprint)
