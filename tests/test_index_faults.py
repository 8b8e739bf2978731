"""Storage faults: damage each kind of index file (truncate, zero a block, delete), check that every command says
so in one line naming the file, and that ``lookalike check --repair`` brings back the same search results."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from lookalike.app.cli import main
from lookalike.indexer import build_index, check_index, open_index, search
from lookalike.indexer._catalog import Catalog, StoreRow

PHOTOS = Path(__file__).parent / "fixtures" / "photos"
FP = "test_vit_tiny-seed0"


@pytest.fixture(scope="module")
def ivf_small():
    """Let a 2-list inverted file train on a handful of vectors (for the whole module: repairs rebuild it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("lookalike.indexer._structure.min_train_size", lambda f: 2)
        yield


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, ivf_small) -> tuple[Path, Path, dict]:
    base = tmp_path_factory.mktemp("faults")
    root, idx = base / "photos", base / "idx"
    root.mkdir()
    for p in sorted(PHOTOS.glob("*.jpg"))[:6]:
        shutil.copy2(p, root / p.name)
    build_index(root, idx, metric="test_vit_tiny", device="cpu", batch_size=2, workers=0, checkpoint_every=0,
                faiss="IVF2,Flat", progress=False)
    with Catalog(idx) as cat, cat.session() as s:
        st = s.get(StoreRow, FP)
        assert st.derived_file and st.structure == "IVF2,Flat"
    return root, idx, _results(root, idx)


def _results(root: Path, idx: Path) -> dict:
    out = {}
    with open_index(idx) as ix:
        for q in sorted(os.listdir(root))[:2]:
            out[q] = [(h.relpath, round(h.distance, 5)) for h in search(ix, root / q, k=6)]
    return out


def _target(idx: Path, kind: str) -> Path:
    folder = idx / "vectors" / FP
    return {
        "shard": folder / "shard-00000002.npy",
        "shard ids": folder / "shard-00000002.ids.npy",
        "search file": next(folder.glob("derived-*.faiss")),
        "inverted lists": next(folder.glob("derived-*.ivfdata")),
        "catalog": idx / "catalog.sqlite",
    }[kind]


def _damage(path: Path, how: str) -> None:
    if how == "delete":
        path.unlink()
        return
    size = path.stat().st_size
    if how == "truncate":
        with open(path, "r+b") as f:
            f.truncate(size // 2)
        return
    # zero a block: past the header where there is one (the catalog: its first page, where SQLite keeps its header)
    start = 0 if path.name == "catalog.sqlite" else min(size // 2, max(0, size - 64))
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(b"\0" * min(64, size - start))


def _one_line_error(capsys, argv: list[str], name: str) -> str:
    rc = main(argv)
    err = "\n".join(ln for ln in capsys.readouterr().err.strip().splitlines()  # status lines are no errors
                    if not (ln.startswith(("loading ", "checking ")) and ln.endswith("...")))
    assert rc != 0, (argv, err)
    lines = err.splitlines()  # one error line, and at most one hint line after it
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("hint: ")), err
    assert name in err, (name, err)
    return err


KINDS = ["shard", "shard ids", "search file", "inverted lists", "catalog"]


@pytest.mark.parametrize("how", ["truncate", "zero", "delete"])
@pytest.mark.parametrize("kind", KINDS)
def test_damage_is_named_and_repaired(tmp_path: Path, pristine, capsys, kind: str, how: str) -> None:
    root, clean, before = pristine
    idx = tmp_path / "idx"
    shutil.copytree(clean, idx)
    target = _target(idx, kind)
    _damage(target, how)
    query = str(root / sorted(os.listdir(root))[0])
    name = target.name
    for argv in (["search", query, "--index", str(idx)], ["info", "--index", str(idx)],
                 ["dedup", "--index", str(idx), "--threshold", "0.01"]):
        _one_line_error(capsys, argv, name)
    if kind in ("shard", "search file"):  # the writer stops too, before touching anything
        _one_line_error(capsys, ["index", str(root), "--index", str(idx), "--metric", "test_vit_tiny", "--device",
                                 "cpu", "--workers", "0", "--no-progress"], name)

    rc = main(["check", "--index", str(idx)])
    out = capsys.readouterr().out
    assert rc == 1 and name in out and "--repair" in out, out
    report = check_index(idx, repair=True, device="cpu")
    assert report.ok and report.repaired and not report.not_saved, report.format()
    if kind in ("search file", "inverted lists"):
        assert report.reembedded == 0  # rebuilt from the shards
    if kind in ("shard", "shard ids"):
        assert report.reembedded == 2  # the lost shard's two images, embedded again
    assert _results(root, idx) == before
    assert check_index(idx).problems == []


def test_unrepairable_is_reported(tmp_path: Path, pristine, capsys) -> None:
    root, clean, _ = pristine
    idx = tmp_path / "idx"
    shutil.copytree(clean, idx)
    (idx / "catalog.sqlite.bak").unlink()
    _damage(idx / "catalog.sqlite", "truncate")
    report = check_index(idx, repair=True)
    assert not report.ok and "no backup" in report.not_saved[0]
    # a lost shard whose images are gone cannot be embedded again: said so, the rest is saved
    idx2 = tmp_path / "idx2"
    shutil.copytree(clean, idx2)
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    try:
        shutil.rmtree(root)
        _damage(_target(idx2, "shard"), "delete")
        report = check_index(idx2, repair=True)
        assert report.not_saved and "folder is gone" in report.not_saved[0]
        with open_index(idx2) as ix:
            assert ix.vectors.ntotal == 4
            assert np.isfinite(ix.vectors.search(ix.vectors.vectors(ix.vectors.ids()[:1]), 4)[0]).all()
    finally:
        shutil.copytree(moved, root, dirs_exist_ok=True)


def test_repair_keeps_the_precision_the_build_recorded(tmp_path: Path, cpu_bf16: bool, capsys) -> None:
    """A lost shard is embedded again in the build's precision (bf16 where auto gave bf16): the repaired index is
    not mixed and its distances do not move, on either kind of CPU. The CLI shows progress while it re-embeds."""
    from lookalike.indexer import index_info

    root, idx = tmp_path / "photos", tmp_path / "idx"
    root.mkdir()
    for p in sorted(PHOTOS.glob("*.jpg"))[:6]:
        shutil.copy2(p, root / p.name)
    s = build_index(root, idx, metric="test_vit_tiny", device="cpu", batch_size=2, workers=0, checkpoint_every=0,
                    progress=False)
    made = "bf16" if cpu_bf16 else "fp32"
    assert s.dtype == made
    before = _results(root, idx)
    _damage(idx / "vectors" / FP / "shard-00000002.npy", "delete")
    assert main(["check", "--index", str(idx), "--repair", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert f"embedded 2 images of test_vit_tiny again ({made})" in captured.out, captured.out
    assert "loading the metric" in captured.err and "embed" in captured.err and "2/2" in captured.err, captured.err
    assert _results(root, idx) == before
    assert index_info(idx)["metrics"][0]["dtypes"] == {made: 8}  # 6, then the 2 lost ones again: one precision
