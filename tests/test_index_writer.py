"""The writer session and the readers: readers never write (no file changes, no lock, no writer code runs), every
writer refreshes the backup, index and import share their build options, and the writer-side fixes of issue 18
(the index's own metric, a folder that is not an index, a damaged catalog under dedup, info on a damaged index,
progress while scanning)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest
from support import copy_photos, error_lines

from lookalike.app.cli import main
from lookalike.indexer import (
    BuildConfig,
    ImportOptions,
    build_index,
    find_duplicates,
    import_embeddings,
    index_info,
    open_index,
    search,
)

TINY = "test_vit_tiny"
#: Modules (and functions) of the write path: a reader must not run any of them.
WRITER_MODULES = {"_writer", "_shard_writer", "_migrate", "_upkeep", "_derive", "_pipeline", "_import", "_readers",
                  "_diff", "_ray", "_import_rows", "_bulk"}
WRITER_FUNCTIONS = {("_dtypes", "declare_dtype"), ("_dtypes", "count_dtype"), ("_catalog", "set_version"),
                    ("_catalog", "backup"), ("_catalog", "set_dedup_threshold"), ("_check", "_repair"),
                    ("_check", "_reembed"), ("_check", "_restore_catalog")}


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ivf_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """6 photos in two folders, searched through a derived IVF file (so readers open every kind of file)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("lookalike.indexer._structure.min_train_size", lambda f: 2)
        base = tmp_path_factory.mktemp("writer")
        root, idx = base / "photos", base / "idx"
        copy_photos(root, 3)
        copy_photos(root / "sub", 3, start=3)
        build_index(root, idx, metric=TINY, device="cpu", batch_size=2, workers=0, checkpoint_every=0,
                    faiss="IVF2,Flat", progress=False)
    return root, idx


def test_readers_write_nothing_take_no_lock_and_run_no_writer_code(ivf_index, tmp_path: Path, capsys) -> None:
    root, clean = ivf_index
    idx = tmp_path / "idx"
    shutil.copytree(clean, idx)
    (idx / "writer.lock").unlink()  # left by the writer; a reader must not create it
    before = _snapshot(idx)
    assert any(n.endswith(".ivfdata") for n in before) and "catalog.sqlite.bak" in before
    query = sorted(root.glob("*.jpg"))[0]
    called: set[tuple[str, str]] = set()

    def profile(frame, event, arg):  # type: ignore[no-untyped-def]
        if event == "call":
            mod = frame.f_globals.get("__name__", "")
            if mod.startswith("lookalike.indexer."):
                called.add((mod.rsplit(".", 1)[1], frame.f_code.co_name))

    sys.setprofile(profile)
    try:
        with open_index(idx) as ix:
            hits = search(ix, query, k=3)
            ix.list_paths(2)
            ix.find_image(hits[1].path)
            ix.refresh()
            find_duplicates(ix, threshold=0.5)
        search(idx, hits[1].relpath, k=2)
        report = find_duplicates(idx, threshold=0.5, group="star")
        info = index_info(idx)
        for argv in (["search", str(query), "--index", str(idx), "-k", "2"], ["info", "--index", str(idx)],
                     ["dedup", "--index", str(idx), "--threshold", "0.5", "--json"],
                     ["check", "--index", str(idx)]):
            assert main(argv) == 0, capsys.readouterr().err
    finally:
        sys.setprofile(None)
    capsys.readouterr()
    assert hits[0].path == str(query) and report.images == 6 and info["metrics"][0]["vectors_in_file"] == 6
    assert ("_index", "check_catalog") in called and ("_store", "load_derived") in called  # the profile sees calls
    writer_calls = sorted(c for c in called if c[0] in WRITER_MODULES or c in WRITER_FUNCTIONS)
    assert not writer_calls, f"readers ran writer code: {writer_calls}"
    assert _snapshot(idx) == before  # no file created, removed, resized or touched
    assert not (idx / "writer.lock").exists()


def test_every_writer_refreshes_the_backup(ivf_index, tmp_path: Path) -> None:
    root, clean = ivf_index
    idx = tmp_path / "idx"
    shutil.copytree(clean, idx)

    def backed_up_builds() -> set[str]:
        con = sqlite3.connect(f"file:{idx / 'catalog.sqlite.bak'}?mode=ro", uri=True)
        try:
            return {r[0] for r in con.execute("SELECT fingerprint FROM builds")}
        finally:
            con.close()

    assert backed_up_builds() == {"test_vit_tiny-seed0"}
    src = tmp_path / "emb.npy"
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((4, 8)).astype(np.float32)
    np.save(src, xb / np.linalg.norm(xb, axis=1, keepdims=True))
    (tmp_path / "emb.paths.txt").write_text("\n".join(f"x{i}.jpg" for i in range(4)) + "\n")
    s = import_embeddings(src, idx, metric="outside-model", root=root)
    assert s.imported == 4
    assert backed_up_builds() == {"test_vit_tiny-seed0", "outside-model-import"}  # was stale before


def test_index_without_metric_uses_the_index_own(tmp_path: Path, capsys) -> None:
    root, idx = tmp_path / "photos", tmp_path / "idx"
    copy_photos(root, 2)
    args = ["index", str(root), "--index", str(idx), "--device", "cpu", "--workers", "0", "--json"]
    assert main([*args, "--metric", "efficientnet_lite0"]) == 0
    capsys.readouterr()
    copy_photos(root, 1, start=2)
    assert main(args) == 0  # no --metric: efficientnet_lite0, not the default dreamsim (no weights here)
    out = json.loads(capsys.readouterr().out)
    assert out["metric"] == "efficientnet_lite0" and out["embedded"] == 1 and out["total_vectors"] == 3
    assert main([*args, "--metric", TINY]) == 0
    capsys.readouterr()
    assert main(args) == 2  # two metrics: say which
    err = capsys.readouterr().err
    assert "holds vectors of several metrics (efficientnet_lite0, test_vit_tiny)" in err and "hint:" in err, err


@pytest.mark.parametrize("command", ["index", "import"])
def test_a_folder_that_is_not_an_index_is_refused(tmp_path: Path, capsys, command: str) -> None:
    photos = tmp_path / "photos"
    copy_photos(photos, 3)
    (photos / "notes.txt").write_text("mine")
    before = _snapshot(photos)
    emb = tmp_path / "emb.npy"
    np.save(emb, np.eye(3, 8, dtype=np.float32))
    (tmp_path / "emb.paths.txt").write_text("a.jpg\nb.jpg\nc.jpg\n")
    argv = (["index", str(photos), "--index", str(photos), "--metric", TINY, "--device", "cpu", "--no-progress"]
            if command == "index" else ["import", str(emb), "--index", str(photos), "--metric", "m", "--no-progress"])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: {photos} is not empty and is not a lookalike index (it holds " in err, err
    assert "nothing was written" in err and len(error_lines(err)) == 2  # error + hint
    assert _snapshot(photos) == before and sorted(os.listdir(photos)) == sorted(before)
    empty = tmp_path / "empty"  # an existing empty folder is fine
    empty.mkdir()
    argv[argv.index(str(photos), 2 if command == "index" else 0)] = str(empty)
    if command == "index":
        argv[1] = str(photos)
    assert main(argv) == 0, capsys.readouterr().err
    assert (empty / "catalog.sqlite").is_file()


def test_dedup_and_info_name_any_damaged_catalog_page(ivf_index, tmp_path: Path, capsys) -> None:
    """4 KiB of zeros anywhere in the catalog: wherever SQLite's own check sees damage, dedup (whose report may
    drive --move-to) fails with the one-line damaged-catalog message, and info describes what it can and names it."""
    _, clean = ivf_index
    pages = (clean / "catalog.sqlite").stat().st_size // 4096
    damaged_pages = 0
    for page in range(1, pages):
        idx = tmp_path / f"idx{page}"
        shutil.copytree(clean, idx)
        with open(idx / "catalog.sqlite", "r+b") as f:
            f.seek(page * 4096)
            f.write(b"\0" * 4096)
        with sqlite3.connect(idx / "catalog.sqlite") as con:
            try:
                sound = [r[0] for r in con.execute("PRAGMA quick_check")] == ["ok"]
            except sqlite3.DatabaseError:
                sound = False
        rc = main(["dedup", "--index", str(idx), "--threshold", "0.5"])
        err = "\n".join(error_lines(capsys.readouterr().err))
        if sound:  # a free page: nothing lost
            assert rc == 0, (page, err)
        else:
            damaged_pages += 1
            assert rc == 2 and len(err.splitlines()) == 1, (page, err)
            assert err.startswith(f"error: damaged index file {idx}/catalog.sqlite: ") and "--repair" in err, err
            assert main(["info", "--index", str(idx)]) == 2
            out, err = capsys.readouterr()
            assert out.startswith(f"index {idx}") and f"damaged: {idx}/catalog.sqlite" in out, (page, out)
            assert len(error_lines(err)) == 1 and "catalog.sqlite" in err
        shutil.rmtree(idx)
    assert damaged_pages >= pages // 2


def test_info_describes_a_damaged_index(ivf_index, tmp_path: Path, capsys) -> None:
    _, clean = ivf_index
    idx = tmp_path / "idx"
    shutil.copytree(clean, idx)
    shard = idx / "vectors" / "test_vit_tiny-seed0" / "shard-00000002.npy"
    with open(shard, "r+b") as f:
        f.truncate(100)
    assert main(["info", "--index", str(idx)]) == 2
    out, err = capsys.readouterr()
    assert "images 6  ok 6" in out and "metric test_vit_tiny" in out and f"damaged: {shard}:" in out, out
    assert err.startswith(f"error: damaged index file {shard}: ") and len(err.strip().splitlines()) == 1, err
    info = index_info(idx)
    assert info["images"]["total"] == 6 and info["metrics"][0]["vectors_in_file"] is None
    assert info["damage"][0]["path"] == str(shard)


def test_scan_progress_counts_files_as_it_goes(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    for i in range(3):
        copy_photos(root / f"f{i}", 2, start=2 * i)
    calls: list[tuple[str, int, int]] = []
    build_index(root, tmp_path / "idx", metric=TINY, device="cpu", workers=0,
                progress=lambda stage, done, total: calls.append((stage, done, total)))
    scan = [(d, t) for s, d, t in calls if s == "scan"]
    assert scan[0] == (0, 0) and scan[-1] == (6, 6)
    assert any(0 < d < 6 and t == 0 for d, t in scan), scan  # counted while walking, not only at the end
    assert calls[0] == ("load", 0, 0)


def test_index_and_import_take_the_same_build_options(tmp_path: Path, capsys) -> None:
    from lookalike.app.cli import build_parser
    from lookalike.app.cli_index import build_config

    common = ["--faiss", "Flat", "--storage", "fp16", "--max-memory", "1G", "--compact-at", "0.5",
              "--dedup-threshold", "0.1", "--checkpoint-every", "7", "--db", "sqlite:///x"]
    p = build_parser()
    a = p.parse_args(["index", "root", "--index", "i", *common])
    b = p.parse_args(["import", "e.npy", "--index", "i", "--metric", "m", *common])
    assert build_config(a) == build_config(b) == BuildConfig(faiss="Flat", storage="float16", max_memory=1 << 30,
                                                             compact_at=0.5, dedup_threshold=0.1,
                                                             checkpoint_every=7, db_url="sqlite:///x")
    with pytest.raises(ValueError, match=r"compact_at must be in \(0, 1\]"):
        BuildConfig(compact_at=0)
    with pytest.raises(ValueError, match=r"dedup threshold 3.0 is outside"):
        BuildConfig(dedup_threshold=3.0)
    with pytest.raises(TypeError):
        ImportOptions(normalise=True)  # type: ignore[call-arg]  a misspelt option is an error
    # import --fp16: a hidden, deprecated alias that says so
    emb, idx = tmp_path / "emb.npy", tmp_path / "idx"
    np.save(emb, np.eye(3, 8, dtype=np.float32))
    (tmp_path / "emb.paths.txt").write_text("a.jpg\nb.jpg\nc.jpg\n")
    assert main(["import", str(emb), "--index", str(idx), "--metric", "m", "--fp16", "--compact-at", "0.3",
                 "--dedup-threshold", "0.2", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "--fp16 is deprecated; use --storage fp16" in err
    m = index_info(idx)["metrics"][0]
    assert m["storage"] == "float16" and m["dedup_threshold"] == pytest.approx(0.2)
    with pytest.raises(SystemExit):
        main(["import", "--help"])
    assert "--fp16" not in capsys.readouterr().out
