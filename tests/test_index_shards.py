"""Index schema 2: append-only shards, tombstones, compaction, the derived search structure, fp16 storage, the
memory-budget choice, list-by-list dedup, the progress callback and the one-time migration of schema-1 folders."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import faiss
import numpy as np
import pytest
from sqlalchemy import insert, select
from support import error_lines

from lookalike.app.cli import main
from lookalike.common.errors import IndexNeedsUpgrade
from lookalike.indexer import (
    build_index,
    check_index,
    choose_structure,
    find_duplicates,
    index_info,
    open_index,
    search,
)
from lookalike.indexer._catalog import STATUS_OK, BuildRow, Catalog, ImageRow, ShardRow, StoreRow
from lookalike.indexer._migrate import legacy_file
from lookalike.indexer._shard_writer import ShardWriter, tombstone
from lookalike.indexer._store import ShardedVectors
from lookalike.indexer._structure import dedup_nprobe, refine_factor
from lookalike.indexer._upkeep import update_structure
from lookalike.metric import load_metric

PHOTOS = Path(__file__).parent / "fixtures" / "photos"
FP = "synthetic-0"


@pytest.fixture(scope="module")
def tiny():
    return load_metric("test_vit_tiny", device="cpu")


def _photos(dst: Path, n: int) -> list[Path]:
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for p in sorted(PHOTOS.glob("*.jpg"))[:n]:
        shutil.copy2(p, dst / p.name)
        out.append(dst / p.name)
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _synthetic(idx: Path, n: int, dim: int, factory: str = "auto", seed: int = 0) -> tuple[Catalog, np.ndarray]:
    """A catalog with n images and one build, vectors not written yet."""
    idx.mkdir(parents=True, exist_ok=True)
    cat = Catalog(idx, create=True)
    with cat.session() as s, s.begin():
        s.add(BuildRow(fingerprint=FP, metric="synthetic", dim=dim, factory=factory, current_factory="Flat", count=0))
        s.add(StoreRow(fingerprint=FP, storage="float32", structure="exact"))
        s.execute(insert(ImageRow), [{"id": i, "root": "/syn", "relpath": f"{i}.jpg", "path_raw": f"/syn/{i}".encode(),
                                      "size": 1, "mtime_ns": i, "status": STATUS_OK} for i in range(1, n + 1)])
    rng = np.random.default_rng(seed)
    return cat, _unit(rng.standard_normal((n, dim)))


def _brute(xb: np.ndarray, ids: np.ndarray, xq: np.ndarray, k: int) -> np.ndarray:
    return ids[np.argsort(-(xq @ xb.T), axis=1, kind="stable")[:, :k]]


def test_shards_tombstones_and_derived_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cat, x = _synthetic(tmp_path / "idx", 3000, 32, factory="IVF8,Flat")
    w = ShardWriter(cat, FP, 32)
    for s in range(0, 2000, 500):
        p = w.write(np.arange(s + 1, s + 501), x[s:s + 500])
        with cat.session() as ss, ss.begin():
            w.record(ss, p)
    build = cat.builds()[0]
    up = update_structure(cat, build)
    assert up.factory == "IVF8,Flat"
    # a tail shard after the derived file, one re-embedded image (its old row is tombstoned) and removals
    p = w.write(np.arange(2001, 3001), x[2000:3000])
    with cat.session() as ss, ss.begin():
        w.record(ss, p)
    new7 = _unit(np.ones((1, 32)))
    p = w.write([7], new7)
    with cat.session() as ss, ss.begin():
        w.record(ss, p)
        tombstone(ss, [3, 2500])
    truth = x.copy()
    truth[6] = new7[0]
    live = np.array([i for i in range(1, 3001) if i not in (3, 2500)])
    vec = ShardedVectors(cat, cat.builds()[0])
    assert vec.ntotal == len(live) and vec.derived is not None and len(vec.tail) == 2
    vec.set_search_params("nprobe=8")  # every list: exact, so results equal brute force
    xq = np.concatenate([x[[2, 2499, 10]], new7])
    D, I = vec.search(xq, 5)  # noqa: E741
    assert np.array_equal(I, _brute(truth[live - 1], live, xq, 5))
    assert 3 not in I and 2500 not in I and I[3, 0] == 7 and D[3, 0] < 1e-5
    np.testing.assert_allclose(vec.vectors([7, 2999]), truth[[6, 2998]])
    lims, Dr, Ir = vec.range_search(xq[:2], 0.9)
    for q in range(2):
        want = set(live[(truth[live - 1] @ xq[q]) >= 0.1].tolist())
        assert set(Ir[lims[q]:lims[q + 1]].tolist()) == want
    # the exact path (no derived file) gives the same answers
    monkeypatch.setattr(vec, "derived", None)
    assert np.array_equal(vec.search(xq, 5)[1], I)
    cat.close()


def test_compaction_and_fp16_and_budget(tmp_path: Path, tiny) -> None:
    root = tmp_path / "photos"
    files = _photos(root, 8)
    s32 = build_index(root, tmp_path / "i32", metric=tiny, batch_size=2, workers=0, checkpoint_every=0,
                      progress=False)
    s16 = build_index(root, tmp_path / "i16", metric=tiny, batch_size=2, workers=0, checkpoint_every=0,
                      storage="fp16", max_memory="1G", progress=False)
    assert s32.total_vectors == s16.total_vectors == 8
    h32, h16 = search(tmp_path / "i32", files[0], k=8), search(tmp_path / "i16", files[0], k=8)
    assert [h.relpath for h in h32[:3]] == [h.relpath for h in h16[:3]]
    assert max(abs(a.distance - b.distance) for a, b in zip(h32, h16, strict=True)) < 2e-3
    info = index_info(tmp_path / "i16")["metrics"][0]
    assert info["storage"] == "float16" and info["max_memory"] == 1 << 30 and "fit the memory budget" in info[
        "structure_reason"]
    assert info["shard_bytes"] < 0.6 * index_info(tmp_path / "i32")["metrics"][0]["shard_bytes"]
    with pytest.raises(ValueError, match="stores 'test_vit_tiny' vectors as float16"):
        build_index(root, tmp_path / "i16", metric=tiny, storage="fp32", progress=False)

    # remove 3 of 8: shards whose dead share reaches compact_at are rewritten, tombstones go with them
    for f in files[:3]:
        f.unlink()
    s = build_index(root, tmp_path / "i32", metric=tiny, workers=0, compact_at=0.5, progress=False)
    assert s.removed == 3 and s.total_vectors == 5
    info = index_info(tmp_path / "i32")["metrics"][0]
    assert info["tombstones"] == 0 and info["rows"] == 5
    from test_index_build import check_invariants

    check_invariants(tmp_path / "i32", tiny.fingerprint)
    assert search(tmp_path / "i32", files[4], k=1)[0].path == str(files[4])
    assert len({p.name for p in (tmp_path / "i32" / "vectors" / tiny.fingerprint).glob("shard-*.npy")}) == 2 * len(
        list((tmp_path / "i32" / "vectors" / tiny.fingerprint).glob("shard-*.ids.npy")))


def test_choose_structure_from_the_budget() -> None:
    assert choose_structure(50_000, 768).exact
    assert choose_structure(100_000, 768).factory == "IVF256,SQ8"  # about sqrt(n) lists, 8-bit codes re-ranked
    assert choose_structure(1_000_000, 768).factory == "IVF1024,SQ8"
    assert choose_structure(10**7, 768).factory == "IVF4096,SQ8"
    assert choose_structure(50_000, 768, max_memory=1 << 30).exact  # 147 MiB fit
    assert not choose_structure(50_000, 768, max_memory=1 << 20).exact
    assert choose_structure(10**7, 768, max_memory=8 << 30).factory.endswith(",SQ8")  # 7.2 GiB of codes fit
    assert choose_structure(100_000, 768, max_memory=1 << 20).factory == "IVF256,PQ8"  # 1 MiB: 8 bytes each
    pq = choose_structure(10**7, 768, max_memory=4 << 30)
    assert pq.factory == "IVF4096,PQ96" and "PQ96" in pq.reason  # PQ at most 96 bytes
    assert choose_structure(10**7, 768, max_memory=1 << 30).factory == "IVF4096,PQ96"
    assert choose_structure(10, 8, requested="HNSW32").factory == "HNSW32"
    assert (refine_factor("IVF4096,SQ8"), refine_factor("IVF4096,PQ96"), refine_factor("IVF4096,Flat")) == (4, 10, 1)
    assert dedup_nprobe(4096) == 2 and dedup_nprobe(1) == 1


def test_dedup_list_by_list_equals_exact(tmp_path: Path) -> None:
    cat, x = _synthetic(tmp_path / "idx", 4000, 48, factory="IVF16,Flat", seed=1)
    rng = np.random.default_rng(2)
    src = rng.choice(3000, 60, replace=False)
    x[3000:3060] = _unit(x[src] + 0.02 * rng.standard_normal((60, 48)))  # planted near-copies
    w = ShardWriter(cat, FP, 48)
    for s in range(0, 3500, 700):
        p = w.write(np.arange(s + 1, s + 701), x[s:s + 700])
        with cat.session() as ss, ss.begin():
            w.record(ss, p)
    update_structure(cat, cat.builds()[0])
    p = w.write(np.arange(3501, 4001), x[3500:4000])  # a tail the derived file does not cover
    with cat.session() as ss, ss.begin():
        w.record(ss, p)
    cat.close()
    full = find_duplicates(tmp_path / "idx", threshold=0.05, nprobe=16)  # every list pair: exhaustive
    assert full.probe["method"] == "ivf-lists" and full.probe["lists"] == 16
    with open_index(tmp_path / "idx") as ix:
        exact = ix.vectors
        S = x @ x.T
        want = {(a + 1, b + 1) for a, b in zip(*np.nonzero(np.triu(S >= 0.95 - 1e-6, 1)), strict=True)}
        assert exact.ntotal == 4000
    got = {tuple(sorted((int(p.a.rsplit("/", 1)[1]), int(p.b.rsplit("/", 1)[1])))) for p in full.pairs}
    assert got == want and len(want) >= 60
    fast = find_duplicates(tmp_path / "idx", threshold=0.05, nprobe=2)
    assert fast.probe["neighbour_lists"] == 1 and fast.probe["share_of_exact"] < full.probe["share_of_exact"]
    got2 = {tuple(sorted((int(p.a.rsplit("/", 1)[1]), int(p.b.rsplit("/", 1)[1])))) for p in fast.pairs}
    assert got2 <= want and len(got2) >= 0.9 * len(want)


def test_progress_callback(tmp_path: Path, tiny) -> None:
    root = tmp_path / "photos"
    _photos(root, 5)
    calls: list[tuple[str, int, int]] = []
    build_index(root, tmp_path / "idx", metric=tiny, batch_size=2, workers=0,
                progress=lambda stage, done, total: calls.append((stage, done, total)))
    stages = [c[0] for c in calls]
    assert stages.index("scan") < stages.index("diff") < stages.index("embed")
    embed = [(d, t) for s, d, t in calls if s == "embed"]
    assert embed[0] == (0, 5) and embed[-1] == (5, 5) and [d for d, _ in embed] == sorted(d for d, _ in embed)
    assert ("scan", 5, 5) in calls


def write_v1_faiss(path: Path, xb: np.ndarray, ids: np.ndarray, factory: str) -> None:
    """A FAISS file as lookalike 0.1 (schema 1) wrote it: inverted files with their ids natively, any other type
    inside an ``IndexIDMap2``."""
    inner = faiss.index_factory(xb.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    inner.train(xb)
    index = inner if faiss.try_extract_index_ivf(inner) is inner else faiss.IndexIDMap2(inner)
    if isinstance(faiss.downcast_index(inner), faiss.IndexIVF):
        index = faiss.downcast_index(inner)
    index.add_with_ids(xb, ids)
    faiss.write_index(index, str(path))


def _downgrade_to_v1(idx: Path, fingerprint: str, factory: str) -> np.ndarray:
    """Rewrite a schema-2 folder as lookalike 0.1 (schema 1) wrote it: one FAISS file, no shard tables. Returns the
    vectors, in image id order."""
    with open_index(idx) as ix:
        ids = np.sort(ix.vectors.ids())
        xb = ix.vectors.vectors(ids)
    write_v1_faiss(legacy_file(idx, fingerprint), xb, ids, factory)
    shutil.rmtree(idx / "vectors")
    con = sqlite3.connect(idx / "catalog.sqlite")
    for t in ("tombstones", "shards", "stores"):
        con.execute(f"DROP TABLE {t}")
    con.execute("ALTER TABLE vectors DROP COLUMN shard_id")
    con.execute("UPDATE schema_version SET version = 1")
    con.execute("UPDATE builds SET current_factory = ?", (factory,))
    con.commit()
    con.close()
    return xb


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF2,Flat"])
def test_v1_folder_is_refused_by_readers_and_migrated_once_by_a_writer(tmp_path: Path, tiny, factory: str,
                                                                       capsys) -> None:
    root, idx = tmp_path / "photos", tmp_path / "idx"
    files = _photos(root, 6)
    build_index(root, idx, metric=tiny, workers=0, faiss=None if factory != "HNSW16" else factory, progress=False)
    before = [(h.relpath, round(h.distance, 5)) for h in search(idx, files[1], k=6)]
    xb = _downgrade_to_v1(idx, tiny.fingerprint, factory)
    assert legacy_file(idx, tiny.fingerprint).is_file()
    # readers never write: each says so in one line with the command that upgrades the folder, and changes nothing
    (idx / "writer.lock").unlink()  # left by the writer that built it; no reader may create it again
    snap = _snapshot(idx)
    with pytest.raises(IndexNeedsUpgrade, match=f"lookalike check --index {idx} --repair"):
        search(idx, files[1], k=6)
    for argv in (["search", str(files[1]), "--index", str(idx)], ["dedup", "--index", str(idx), "--threshold", "0.1"],
                 ["info", "--index", str(idx)]):
        assert main(argv) == 2
        err = error_lines(capsys.readouterr().err)
        assert len(err) == 1 and err[0].startswith("error: ") and "upgrade it once" in err[0], err
    assert _snapshot(idx) == snap and not (idx / "writer.lock").exists()
    # 'check' (without --repair) only reads, and names the repair; '--repair' migrates through the writer session
    assert "schema 1" in check_index(idx).format() and _snapshot(idx) == snap
    report = check_index(idx, repair=True)
    assert report.ok and "upgraded the folder to index schema 2" in report.repaired[0], report.format()
    after = [(h.relpath, round(h.distance, 5)) for h in search(idx, files[1], k=6)]
    assert after == before
    assert not legacy_file(idx, tiny.fingerprint).exists()
    with Catalog(idx) as cat, cat.session() as s:
        assert cat.version == 2
        assert sum(s.scalars(select(ShardRow.rows))) == 6
        assert s.get(BuildRow, tiny.fingerprint).current_factory == ("HNSW16" if factory == "HNSW16" else "Flat")
    with open_index(idx) as ix:  # the vectors came through unchanged (an IVF file's are reconstructed exactly)
        np.testing.assert_allclose(ix.vectors.vectors(np.sort(ix.vectors.ids())), xb, atol=1e-6)
    s2 = build_index(root, idx, metric=tiny, workers=0, progress=False)
    assert s2.embedded == 0 and s2.total_vectors == 6
    os.remove(files[0])
    assert build_index(root, idx, metric=tiny, workers=0, progress=False).total_vectors == 5


def test_v1_folder_is_migrated_by_any_writer(tmp_path: Path, tiny) -> None:
    root, idx = tmp_path / "photos", tmp_path / "idx"
    files = _photos(root, 5)
    build_index(root, idx, metric=tiny, workers=0, progress=False)
    _downgrade_to_v1(idx, tiny.fingerprint, "IVF2,PQ4x2,RFlat")  # a refined type inside an IndexIDMap2
    copy = _photos(tmp_path / "more", 6)[-1]
    shutil.copy2(copy, root / "new.jpg")
    s = build_index(root, idx, progress=False)  # the index's own metric; migrates once, then embeds the new file
    assert s.metric == tiny.name and s.embedded == 1 and s.total_vectors == 6
    assert not legacy_file(idx, tiny.fingerprint).exists()
    assert search(idx, files[2], k=1)[0].relpath == files[2].name


def test_readers_unmap_what_they_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader's file-backed resident memory is bounded: past its budget it unmaps the derived lists and shards it
    has read, and the answers do not change (the pages come back from the page cache)."""
    import lookalike.indexer._store as store
    from lookalike.indexer._util import mapped_file_bytes

    cat, x = _synthetic(tmp_path / "idx", 20_000, 256, factory="IVF16,SQ8")
    w = ShardWriter(cat, FP, 256)
    for s in range(0, 20_000, 5000):
        p = w.write(np.arange(s + 1, s + 5001), x[s:s + 5000])
        with cat.session() as ss, ss.begin():
            w.record(ss, p)
    update_structure(cat, cat.builds()[0])
    vec = ShardedVectors(cat, cat.builds()[0])
    vec.set_search_params("nprobe=16")
    assert vec._lists_map is not None  # the lists are memory-mapped by faiss
    xq = x[:64]
    D0, I0 = vec.search(xq, 10)
    for p in vec.shards.parts:  # every shard page resident (20k x 256 float32: 20 MB)
        np.asarray(p.xb).sum()
    touched = mapped_file_bytes()
    vec.release_pages()
    released = mapped_file_bytes()
    assert touched - released > 15 << 20
    for p in vec.shards.parts:
        np.asarray(p.xb).sum()
    assert mapped_file_bytes() - released > 15 << 20  # they come back when read again
    monkeypatch.setattr(store, "MAPPED_GROWTH_MAX", 0)  # every query releases
    D1, I1 = vec.search(xq, 10)
    assert np.array_equal(I0, I1) and np.allclose(D0, D1)
    lims, _, ids = vec.range_search(xq[:4], 0.05)
    assert all(i in ids[lims[q]:lims[q + 1]] for q, i in enumerate(range(1, 5)))
