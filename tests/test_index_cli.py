"""``lookalike index | search | dedup``: the real console entry point, in-process and once as a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import PHOTOS

from lookalike.app.cli import main


@pytest.fixture()
def tree(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "photos"
    root.mkdir()
    for p in sorted(PHOTOS.glob("*.jpg"))[:6]:
        shutil.copy2(p, root / p.name)
    shutil.copy2(root / sorted(os.listdir(root))[0], root / "dup_copy.jpg")
    return root, tmp_path / "idx"


def _run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_index_search_dedup_in_process(tree: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    root, idx = tree
    common = ("--metric", "test_vit_tiny", "--device", "cpu", "--workers", "0")
    rc, out, _ = _run(capsys, "index", str(root), "--index", str(idx), *common, "--json")
    assert rc == 0
    s = json.loads(out)
    assert (s["scanned"], s["new"], s["embedded"], s["failed"]) == (7, 7, 7, 0)
    rc, out, _ = _run(capsys, "index", str(root), "--index", str(idx), *common, "--no-progress",
                      "--dedup-threshold", "0.0001")
    assert rc == 0 and "unchanged 7" in out and "embedded 0" in out
    rc, out, err = _run(capsys, "dedup", "--index", str(idx), "--json")  # the stored threshold
    assert rc == 0 and json.loads(out)["threshold"] == 0.0001 and json.loads(out)["n_duplicates"] == 1
    assert err.startswith(f"loading index {idx} and its vectors...\n")  # said first; stdout stays pure JSON
    rc, out, err = _run(capsys, "check", "--index", str(idx))
    assert rc == 0 and err == f"checking index {idx} (the sha256 of every file)...\n" and "ok" in out

    first = sorted(os.listdir(root))[0]
    rc, out, _ = _run(capsys, "search", first, "--index", str(idx), "-k", "3", "--json")
    hits = json.loads(out)
    assert rc == 0 and len(hits) == 3 and {hits[0]["relpath"], hits[1]["relpath"]} == {first, "dup_copy.jpg"}
    rc, out, err = _run(capsys, "search", str(root / first), "--index", str(idx), "-k", "2")
    header, *rows = out.strip().splitlines()
    assert rc == 0 and header.split()[:3] == ["#", "distance", "path"] and len(rows) == 2 and "0.0000" in rows[0]
    assert rows[0].split()[0] == "1" and rows[0].split()[2] == str(root / first)
    assert err.startswith("loading index ") and "(test_vit_tiny, cpu, " in err  # what it loads, before it does

    rc, out, _ = _run(capsys, "dedup", "--index", str(idx), "--threshold", "0.0001", "--out",
                      str(tmp_path / "d.csv"), "--json")
    rep = json.loads(out)
    assert rc == 0 and rep["n_duplicates"] == 1 and (tmp_path / "d.csv").is_file()
    rc, out, err = _run(capsys, "dedup", "--index", str(idx), "--threshold", "0.0001", "--keep", "first",
                        "--move-to", str(tmp_path / "q"))
    assert rc == 0 and "1 duplicates" in out and "undo with" in err
    assert not (root / "dup_copy.jpg").exists() and (tmp_path / "q" / "photos" / "dup_copy.jpg").exists()
    manifest = next((tmp_path / "q").glob("manifest-*.json"))
    rc, out, _ = _run(capsys, "dedup", "--undo", str(manifest))
    assert rc == 0 and "restored 1" in out and (root / "dup_copy.jpg").exists()


def test_user_errors_exit_2(tree: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    root, idx = tree
    rc, _, err = _run(capsys, "search", "x.jpg", "--index", str(tmp_path / "missing"))
    assert rc == 2 and err.splitlines()[1].startswith("error: index folder not found"), err
    assert err.splitlines()[0] == f"loading index {tmp_path / 'missing'}..."  # said before the imports, ended
    rc, _, err = _run(capsys, "index", str(tmp_path / "nope"), "--index", str(idx), "--metric", "test_vit_tiny")
    assert rc == 2 and "folder to index not found" in err
    rc, _, err = _run(capsys, "dedup")
    assert rc == 2 and "--index" in err
    rc, out, err = _run(capsys, "index", str(root), "--index", str(idx))  # the default metric, dreamsim: no weights
    first, error, *rest = err.splitlines()
    assert rc == 2 and out == "" and first.startswith("loading dreamsim (cpu, ") and first.endswith(")...")
    assert error.startswith("error: weights for metric 'dreamsim' not found") and len(err.splitlines()) <= 10, err
    ways = err.split("hint: ", 1)[1]  # the ways out, one a line: download, a folder of one's own, an offline metric
    assert "lookalike weights download dreamsim" in ways and "--weights DIR" in ways, err
    assert "--metric efficientnet_lite0" in ways, err
    with pytest.raises(SystemExit):
        main(["index", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "lookalike index ~/Pictures" in out


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX paths")
def test_console_script_subprocess(tree: tuple[Path, Path]) -> None:
    root, idx = tree
    exe = shutil.which("lookalike", path=os.path.dirname(sys.executable)) or shutil.which("lookalike")
    cmd = [exe] if exe else [sys.executable, "-m", "lookalike.app.cli"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", LOOKALIKE_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([*cmd, "index", str(root), "--index", str(idx), "--metric", "test_vit_tiny", "--device", "cpu",
                        "--workers", "1", "--batch-size", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "scanned 7  new 7" in r.stdout
    r = subprocess.run([*cmd, "search", "dup_copy.jpg", "--index", str(idx), "-k", "2", "--json"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and json.loads(r.stdout)[1]["distance"] < 1e-4
