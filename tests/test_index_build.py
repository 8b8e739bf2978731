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
from support import copy_photos

from lookalike.indexer import build_index, index_info, open_index, search
from lookalike.indexer._catalog import STATUS_OK, BuildRow, Catalog, ImageRow, SchemaVersion, ShardRow, VectorRow
from lookalike.indexer._shard_writer import ShardWriter
from lookalike.indexer._shards import open_shards, shard_folder
from lookalike.metric import load_metric


@pytest.fixture(scope="module")
def tiny():
    return load_metric("test_vit_tiny", device="cpu")


@pytest.fixture(scope="module")
def effnet():
    return load_metric("efficientnet_lite0", device="cpu")


def check_invariants(index_dir: Path, fingerprint: str, max_orphans: int = 0) -> dict[int, ImageRow]:
    """Every committed vector row points at a committed shard whose live rows hold its vector, and every live shard
    row has a committed vector row; every shard file matches its recorded sha256; at most ``max_orphans`` rows sit in
    shard files the catalog does not name (written, not committed: the next writer deletes them); ok rows all have
    vectors."""
    with Catalog(index_dir) as cat:
        with cat.session() as s:
            vec_rows = list(s.execute(select(VectorRow.image_id, VectorRow.faiss_id, VectorRow.shard_id)
                                      .where(VectorRow.fingerprint == fingerprint)))
            rows = {r.id: r for r in s.scalars(select(ImageRow))}
            dim = s.get(BuildRow, fingerprint).dim
            known = {Path(f).name for pair in s.execute(select(ShardRow.file, ShardRow.ids_file)) for f in pair}
        shards = open_shards(cat, fingerprint, dim, verify=True)
    live = shards.ids().tolist()
    assert len(live) == len(set(live)), "an image id is live in two shard rows"
    committed = {f for _, f, _ in vec_rows}
    assert committed == set(live), "committed rows and live shard rows differ"
    by_shard = {p.shard.id: set(p.live_ids().tolist()) for p in shards.parts}
    for _, fid, sid in vec_rows:
        assert fid in by_shard[sid], "a vector row points at a shard that does not hold it"
    folder = shard_folder(index_dir, fingerprint)
    orphans = [p for p in folder.glob("shard-*.ids.npy") if p.name not in known] if folder.is_dir() else []
    assert sum(len(np.load(p)) for p in orphans) <= max_orphans
    assert len({i for i, _, _ in vec_rows}) == len(vec_rows)
    for i, _, _ in vec_rows:
        assert rows[i].status == STATUS_OK
    ok_ids = {i for i, r in rows.items() if r.status == STATUS_OK}
    assert ok_ids == {i for i, _, _ in vec_rows}
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
    build_index(root, idx, metric=tiny, batch_size=2, workers=0, checkpoint_every=0, progress=False)
    with Catalog(idx) as cat:
        # a shard a killed run wrote but never committed, and the temp file of a kill mid-write
        ShardWriter(cat, tiny.fingerprint, tiny.dim).write([999], np.ones((1, tiny.dim), np.float32) / 16)
        (shard_folder(idx, tiny.fingerprint) / ".shard-00000099.npy.tmp-1").write_bytes(b"partial")
        # and committed rows whose shard row vanished: the last shard (one image) is forgotten by the catalog
        with cat.session() as s, s.begin():
            last = s.scalars(select(ShardRow).order_by(ShardRow.id.desc())).first()
            assert last.rows == 1
            s.delete(last)
    with open_index(idx) as ix:  # readers ignore both while they exist
        hits = search(ix, root / sorted(os.listdir(root))[0], k=10)
        assert all(h.image_id != 999 for h in hits) and len(hits) == 4
    s = build_index(root, idx, metric=tiny, batch_size=8, workers=0, progress=False)
    assert s.reconciled == 2 + 1 + 2 + 1 and s.embedded == 1  # orphan shard (2 files), temp file, old files, row
    check_invariants(idx, tiny.fingerprint)


def test_disk_full_keeps_previous_index(tmp_path: Path, tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    root, idx = tmp_path / "photos", tmp_path / "idx"
    copy_photos(root, 3)
    build_index(root, idx, metric=tiny, batch_size=8, workers=0, progress=False)
    folder = shard_folder(idx, tiny.fingerprint)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    copy_photos(root, 2, start=3)

    def full_disk(fp, array, **kw):
        fp.write(b"\0" * 100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("lookalike.indexer._shards.np.lib.format.write_array", full_disk)
    with pytest.raises(OSError, match="index is unchanged"):
        build_index(root, idx, metric=tiny, batch_size=8, workers=0, progress=False)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert not [p for p in idx.rglob("*") if ".tmp" in p.name]
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
    assert shard_folder(idx, tiny.fingerprint).is_dir() and shard_folder(idx, effnet.fingerprint).is_dir()
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
    monkeypatch.setattr("lookalike.indexer._structure.AUTO_EXACT_MAX", 4)
    monkeypatch.setattr("lookalike.indexer._structure.auto_nlist", lambda n: 2)
    monkeypatch.setattr("lookalike.indexer._structure.min_train_size", lambda f: 2)
    s = build_index(root, tmp_path / "auto", metric=tiny, batch_size=4, workers=0, progress=False)
    assert s.factory == "IVF2,SQ8"  # 8-bit codes, re-ranked with the shards' vectors
    with open_index(tmp_path / "auto") as ix:
        ivf = faiss.extract_index_ivf(ix.vectors.derived)
        assert ivf.nlist == 2 and isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists)
    copy_photos(root, 2, start=10)
    s = build_index(root, tmp_path / "auto", metric=tiny, batch_size=4, workers=0, progress=False)
    assert s.embedded == 2 and s.total_vectors == 9
    check_invariants(tmp_path / "auto", tiny.fingerprint)
    with open_index(tmp_path / "auto") as ix:
        assert ix.build.search_params == "nprobe=2"
        assert ix.vectors.derived.ntotal == 9  # the new shard was merged into the on-disk lists
        assert search(ix, files[2], k=1)[0].path == str(files[2])
