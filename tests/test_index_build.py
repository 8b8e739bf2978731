"""build_index: incremental updates, malformed inputs, reconciliation, FAISS types, user-facing errors."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select, update
from support import PHOTOS

from lookalike.indexer import VectorIndex, build_index, index_info, open_index, search
from lookalike.indexer._catalog import STATUS_OK, BuildRow, Catalog, ImageRow, SchemaVersion, VectorRow
from lookalike.indexer._vectors import vectors_file
from lookalike.metric import load_metric


@pytest.fixture(scope="module")
def tiny():
    return load_metric("test_vit_tiny", device="cpu")


@pytest.fixture(scope="module")
def effnet():
    return load_metric("efficientnet_lite0", device="cpu")


def copy_photos(dst: Path, n: int, start: int = 0) -> list[Path]:
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for p in sorted(PHOTOS.glob("*.jpg"))[start:start + n]:
        shutil.copy2(p, dst / p.name)
        out.append(dst / p.name)
    return out


def check_invariants(index_dir: Path, fingerprint: str, max_orphans: int = 0) -> dict[int, ImageRow]:
    """Every committed vector row has exactly one FAISS vector and vice versa (up to ``max_orphans`` flushed but
    uncommitted vectors, which the next writer drops); ok rows all have vectors."""
    vi = VectorIndex.load(vectors_file(index_dir, fingerprint))
    faiss_ids = vi.ids().tolist()
    assert len(faiss_ids) == len(set(faiss_ids)), "a FAISS id appears twice"
    with Catalog(index_dir) as cat, cat.session() as s:
        vec_rows = list(s.execute(select(VectorRow.image_id, VectorRow.faiss_id)
                                  .where(VectorRow.fingerprint == fingerprint)))
        rows = {r.id: r for r in s.scalars(select(ImageRow))}
    committed = {f for _, f in vec_rows}
    assert committed <= set(faiss_ids), "a committed row has no vector"
    assert len(set(faiss_ids) - committed) <= max_orphans
    assert len({i for i, _ in vec_rows}) == len(vec_rows)
    for i, _ in vec_rows:
        assert rows[i].status == STATUS_OK
    ok_ids = {i for i, r in rows.items() if r.status == STATUS_OK}
    assert ok_ids == {i for i, _ in vec_rows}
    return rows


def test_incremental_updates(tmp_path: Path, tiny) -> None:
    root, idx = tmp_path / "photos", tmp_path / "idx"
    files = copy_photos(root, 6)
    s1 = build_index(root, idx, metric=tiny, batch_size=4, workers=0, progress=False)
    assert (s1.scanned, s1.new, s1.embedded, s1.failed, s1.total_vectors) == (6, 6, 6, 0, 6)
    check_invariants(idx, tiny.fingerprint)

    s2 = build_index(root, idx, metric=tiny, batch_size=4, workers=0, progress=False)
    assert (s2.unchanged, s2.embedded, s2.new, s2.removed) == (6, 0, 0, 0)

    # change one file's content, move one, delete one, add a byte-identical copy of another
    Image.open(files[0]).convert("RGB").rotate(180).save(files[0], quality=90)
    (root / "sub").mkdir()
    os.replace(files[1], root / "sub" / files[1].name)
    files[2].unlink()
    shutil.copy2(files[3], root / "copy_of_3.jpg")
    s3 = build_index(root, idx, metric=tiny, batch_size=4, workers=0, progress=False)
    assert (s3.changed, s3.moved, s3.removed, s3.new, s3.embedded) == (1, 1, 1, 1, 2)
    assert s3.total_vectors == 6
    rows = check_invariants(idx, tiny.fingerprint)
    assert sorted(r.relpath for r in rows.values()) == sorted(
        ["copy_of_3.jpg", files[0].name, f"sub/{files[1].name}", files[3].name, files[4].name, files[5].name])

    hits = search(idx, root / "sub" / files[1].name, k=2)
    assert hits[0].relpath == f"sub/{files[1].name}" and hits[0].distance < 1e-5
    hits = search(idx, files[3], k=2)
    assert {h.relpath for h in hits} == {files[3].name, "copy_of_3.jpg"}
    assert max(h.distance for h in hits) < 1e-5


def test_malformed_corpus_is_recorded(tmp_path: Path, effnet) -> None:
    from test_data_images import make_corpus

    root, idx = tmp_path / "corpus", tmp_path / "idx"
    exp = make_corpus(root)
    try:
        s = build_index(root, idx, metric=effnet, batch_size=4, workers=2, progress=False)
    finally:
        os.chmod(root / "noperm.jpg", 0o644)
    listed = {r: e for r, e in exp.items() if e != "skip"}
    n_fail = sum(e == "fail" for e in listed.values())
    assert s.scanned == len(listed)
    assert s.failed == n_fail
    assert s.embedded == len(listed) - n_fail
    assert s.scan_errors >= 1  # the link loops
    check_invariants(idx, effnet.fingerprint)
    info = index_info(idx)
    reasons = {os.path.basename(f["path"]): f["reason"] for f in info["failed"]}
    assert set(reasons) == {os.path.basename(r) for r, e in listed.items() if e == "fail"}
    assert "empty" in reasons["zero.jpg"] and "bomb" in reasons["bomb.png"]
    assert "truncated" in reasons["truncated.jpg"] and "not an image" in reasons["random.jpg"]
    assert info["images"]["failed"] == n_fail
    # the EXIF-rotated copy finds its upright twin as nearest neighbour
    hits = search(idx, root / "rotated_exif.jpg", k=3)
    assert [h.relpath for h in hits[:2]] in (["rotated_exif.jpg", "upright.jpg"], ["upright.jpg", "rotated_exif.jpg"])
    assert hits[1].distance < 0.05 < hits[2].distance
    # a second run retries the failures, embeds nothing new
    s2 = build_index(root, idx, metric=effnet, batch_size=4, workers=0, progress=False)
    assert s2.embedded == 0 and s2.failed == n_fail
    os.chmod(root / "noperm.jpg", 0o644)


def test_reconcile_after_damage(tmp_path: Path, tiny) -> None:
    root, idx = tmp_path / "photos", tmp_path / "idx"
    copy_photos(root, 5)
    build_index(root, idx, metric=tiny, batch_size=8, workers=0, progress=False)
    path = vectors_file(idx, tiny.fingerprint)
    vi = VectorIndex.load(path)
    vi.add(np.ones((1, tiny.dim), np.float32) / np.sqrt(tiny.dim), [999])  # a vector nobody committed
    vi.save(path)
    with Catalog(idx) as cat, cat.session() as s, s.begin():
        victim = s.scalars(select(VectorRow.faiss_id)).first()
    vi.remove([victim])  # and a committed row whose vector vanished
    vi.save(path)
    with open_index(idx) as ix:  # readers ignore both while they exist
        assert all(h.image_id != 999 for h in search(ix, root / sorted(os.listdir(root))[0], k=10))
    s = build_index(root, idx, metric=tiny, batch_size=8, workers=0, progress=False)
    assert s.reconciled == 2 and s.embedded == 1
    check_invariants(idx, tiny.fingerprint)


def test_disk_full_keeps_previous_index(tmp_path: Path, tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    root, idx = tmp_path / "photos", tmp_path / "idx"
    copy_photos(root, 3)
    build_index(root, idx, metric=tiny, batch_size=8, workers=0, progress=False)
    path = vectors_file(idx, tiny.fingerprint)
    before = path.read_bytes()
    copy_photos(root, 2, start=3)

    def full_disk(index, fname):
        with open(fname, "wb") as f:
            f.write(b"\0" * 100)
        raise RuntimeError("Error: 'ret == (size_t)(n)' failed: write error: No space left on device")

    monkeypatch.setattr("lookalike.indexer._vectors.faiss.write_index", full_disk)
    with pytest.raises(OSError, match="previous file is intact"):
        build_index(root, idx, metric=tiny, batch_size=8, workers=0, progress=False)
    assert path.read_bytes() == before
    assert not [p for p in idx.iterdir() if ".tmp" in p.name]
    check_invariants(idx, tiny.fingerprint)
    monkeypatch.undo()
    s = build_index(root, idx, metric=tiny, batch_size=8, workers=0, progress=False)
    assert s.embedded == 2 and s.total_vectors == 5
    check_invariants(idx, tiny.fingerprint)


def test_several_metrics_and_errors(tmp_path: Path, tiny, effnet) -> None:
    root, idx = tmp_path / "photos", tmp_path / "idx"
    copy_photos(root, 4)
    with pytest.raises(FileNotFoundError, match="index folder not found"):
        search(tmp_path / "nothing", root / sorted(os.listdir(root))[0])
    with pytest.raises(FileNotFoundError, match="not found"):
        build_index(tmp_path / "missing", idx, metric=tiny, progress=False)
    build_index(root, idx, metric=tiny, batch_size=8, workers=0, progress=False)
    s = build_index(root, idx, metric=effnet, batch_size=8, workers=0, progress=False)
    assert s.embedded == 4
    assert vectors_file(idx, tiny.fingerprint).is_file() and vectors_file(idx, effnet.fingerprint).is_file()
    q = root / sorted(os.listdir(root))[1]
    with pytest.raises(ValueError, match="several metrics"):
        search(idx, q)
    with pytest.raises(ValueError, match="no vectors for metric 'psnr'"):
        search(idx, q, metric="psnr")
    assert search(idx, q, metric="efficientnet_lite0", k=1)[0].path == str(q)
    assert search(idx, q, metric="test_vit_tiny", k=1)[0].path == str(q)
    info = index_info(idx)
    assert {m["metric"] for m in info["metrics"]} == {"test_vit_tiny", "efficientnet_lite0"}
    assert all(m["vectors"] == 4 for m in info["metrics"])
    with pytest.raises(ValueError, match="faiss 'auto', not 'HNSW32'"):
        build_index(root, idx, metric=tiny, faiss="HNSW32", progress=False)
    with pytest.raises(ValueError, match="invalid faiss factory"):
        build_index(root, tmp_path / "idx2", metric=tiny, faiss="NOPE17", progress=False)
    with pytest.raises(ValueError, match="pairwise"):
        build_index(root, tmp_path / "idx3", metric="psnr", progress=False)

    # a catalog that disagrees with the metric's dimension
    with Catalog(idx) as cat, cat.session() as s, s.begin():
        s.execute(update(BuildRow).where(BuildRow.fingerprint == tiny.fingerprint).values(dim=512))
    with pytest.raises(ValueError, match="512-d vectors for 'test_vit_tiny'"):
        build_index(root, idx, metric=tiny, progress=False)
    with pytest.raises(ValueError, match="holds 256-d vectors"):
        search(idx, q, metric="test_vit_tiny")
    # a catalog written by a newer lookalike
    with Catalog(idx) as cat, cat.session() as s, s.begin():
        s.execute(update(SchemaVersion).values(version=99))
    with pytest.raises(ValueError, match="schema version 99, newer"):
        search(idx, q)


def test_faiss_types_in_the_pipeline(tmp_path: Path, tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "photos"
    files = copy_photos(root, 8)
    s = build_index(root, tmp_path / "hnsw", metric=tiny, faiss="HNSW16", batch_size=4, workers=0, progress=False)
    assert s.factory == "HNSW16" and s.total_vectors == 8
    files[0].unlink()  # HNSW cannot remove ids: the index is rebuilt without it
    s = build_index(root, tmp_path / "hnsw", metric=tiny, batch_size=4, workers=0, progress=False)
    assert s.removed == 1 and s.total_vectors == 7
    check_invariants(tmp_path / "hnsw", tiny.fingerprint)
    assert search(tmp_path / "hnsw", files[1], k=1)[0].path == str(files[1])

    s = build_index(root, tmp_path / "ivf", metric=tiny, faiss="IVF64,Flat", workers=0, progress=False)
    assert s.factory == "Flat"  # too few vectors to train 64 lists: stays exact

    # "auto" switches to a trained IVF once the collection is large (threshold lowered for the test)
    monkeypatch.setattr("lookalike.indexer._pipeline.AUTO_FLAT_MAX", 4)
    monkeypatch.setattr("lookalike.indexer._pipeline.choose_factory", lambda n: ("IVF2,Flat", "nprobe=2"))
    monkeypatch.setattr("lookalike.indexer._pipeline.min_train_size", lambda f: 2)
    s = build_index(root, tmp_path / "auto", metric=tiny, batch_size=4, workers=0, progress=False)
    assert s.factory == "IVF2,Flat"
    ivf = faiss.extract_index_ivf(VectorIndex.load(vectors_file(tmp_path / "auto", tiny.fingerprint)).index)
    assert ivf.nlist == 2
    copy_photos(root, 2, start=10)
    s = build_index(root, tmp_path / "auto", metric=tiny, batch_size=4, workers=0, progress=False)
    assert s.embedded == 2 and s.total_vectors == 9
    check_invariants(tmp_path / "auto", tiny.fingerprint)
    with open_index(tmp_path / "auto") as ix:
        assert ix.build.search_params == "nprobe=2"
        assert search(ix, files[2], k=1)[0].path == str(files[2])


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF8,Flat", "IVF8,PQ8x4,RFlat"])
def test_vector_index_roundtrip(tmp_path: Path, factory: str) -> None:
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((400, 32)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    vi = VectorIndex.create(32, factory)
    vi.train(xb)
    vi.add(xb, range(1000, 1400))
    vi.set_search_params("nprobe=8" if "IVF" in factory else ("efSearch=64" if "HNSW" in factory else None))
    D, I = vi.search(xb[:5], 3)  # noqa: E741
    assert I[:, 0].tolist() == list(range(1000, 1005)) and np.all(D[:, 0] < 0.05)
    vi.add(-xb[:2], [1000, 1001])  # replace
    assert vi.ntotal == 400
    vi.remove([1002, 5])
    assert vi.ntotal == 399 and 1002 not in vi
    vi.save(tmp_path / "v.faiss")
    vj = VectorIndex.load(tmp_path / "v.faiss")
    assert sorted(vj.ids().tolist()) == sorted(vi.ids().tolist())
    vj.set_search_params("nprobe=8" if "IVF" in factory else None)
    assert vj.search(-xb[:1], 1)[1][0, 0] == 1000
    with pytest.raises(ValueError, match="holds 32-d vectors"):
        vj.search(np.zeros((1, 16), np.float32), 1)


def test_flat_numpy_route_matches_faiss(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    xb = rng.standard_normal((3000, 64)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    vi = VectorIndex.create(64)
    vi.add(xb, np.arange(3000) * 7)
    xq = xb[:20] + 0.1 * rng.standard_normal((20, 64)).astype(np.float32)
    D_np, I_np = vi.search(xq, 10)  # numpy route
    D_f, I_f = vi.index.search(xq, 10)  # faiss's own scan  # noqa: E741
    assert np.array_equal(I_np, I_f)
    np.testing.assert_allclose(D_np, 1.0 - D_f, atol=1e-5)
    monkeypatch.setattr("lookalike.indexer._vectors.NUMPY_BLOCK_BYTES", 3000 * 4 * 3)  # 3 queries per block
    D_b, I_b = vi.search(xq, 10)
    assert np.array_equal(I_b, I_np) and np.allclose(D_b, D_np, atol=1e-6)  # float32 blocks round differently
    D_big, I_big = vi.search(xq[:1], 5000)
    assert (I_big[0] >= 0).sum() == 3000 and np.isinf(D_big[0, -1])


def test_gpu_code_paths_with_a_cpu_stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """The faiss-gpu branches (k-NN on the GPU, range search as GPU k-NN + CPU fallback), run on a CPU clone."""
    import lookalike.indexer._vectors as vectors_mod

    monkeypatch.setattr(vectors_mod, "gpu_count", lambda: 1)
    monkeypatch.setattr(vectors_mod.faiss, "StandardGpuResources", lambda: object(), raising=False)
    monkeypatch.setattr(vectors_mod.faiss, "index_cpu_to_gpu", lambda res, dev, index: faiss.clone_index(index),
                        raising=False)
    rng = np.random.default_rng(2)
    xb = rng.standard_normal((300, 16)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    vi = VectorIndex.create(16)
    vi.add(xb, np.arange(300) + 50)
    assert vi._gpu_flat() is not None
    D, I = vi.search(xb[:40], 5)  # noqa: E741
    D_np, I_np = vi._numpy_knn(xb[:40], 5)
    assert np.array_equal(I, I_np) and np.allclose(D, 1.0 - D_np, atol=1e-5)
    for thr in (0.3, 1.0):  # 1.0: most rows have > 64 neighbours -> CPU fallback
        lims, d, i = vi.range_search(xb[:30], thr)
        lims_c, d_c, i_c = vi.index.range_search(xb[:30], float(1.0 - thr - 1e-6))
        for q in range(30):
            assert set(i[lims[q]:lims[q + 1]].tolist()) == set(i_c[lims_c[q]:lims_c[q + 1]].tolist())
    vi.remove([50])
    assert vi._gpu is None and vi.search(xb[:20], 1)[1][0, 0] != 50
