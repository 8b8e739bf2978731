"""Kill ``lookalike index`` with SIGKILL at named points, re-run, and check nothing is lost or corrupted; search
from another process while an index run writes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select
from support import PHOTOS

from lookalike.indexer import open_index, search
from lookalike.indexer._catalog import Catalog, VectorRow

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")

BATCH = 2


def _cli(root: Path, idx: Path, *, crash_at: str | None = None, workers: int = 0, extra: tuple[str, ...] = ()):
    env = dict(os.environ, HF_HUB_OFFLINE="1", LOOKALIKE_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    env.pop("LOOKALIKE_CRASH_AT", None)
    if crash_at:
        env["LOOKALIKE_CRASH_AT"] = crash_at
    cmd = [sys.executable, "-m", "lookalike.app.cli", "index", str(root), "--index", str(idx), "--metric",
           "test_vit_tiny", "--device", "cpu", "--batch-size", str(BATCH), "--workers", str(workers),
           "--checkpoint-every", "0", "--json", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _committed(idx: Path) -> int:
    if not (idx / "catalog.sqlite").exists():
        return 0
    with Catalog(idx) as cat, cat.session() as s:
        return int(s.scalar(select(func.count()).select_from(VectorRow)))


def test_sigkill_at_every_stage_then_resume(tmp_path: Path) -> None:
    from test_index_build import check_invariants

    root, idx = tmp_path / "photos", tmp_path / "idx"
    root.mkdir()
    photos = sorted(PHOTOS.glob("*.jpg"))[:16]
    for p in photos:
        shutil.copy2(p, root / p.name)
    n = len(photos)
    fingerprint = "test_vit_tiny-seed0"
    # (crash point, pass, workers, batches this run commits before dying)
    plan = [
        ("scan", 1, 0, 0),
        ("decode", 2, 1, 1),
        ("during_flush", 2, 0, 1),
        ("after_flush", 1, 0, 0),
        ("during_commit", 2, 0, 1),
    ]
    for point, k, workers, commits in plan:
        before = _committed(idx)
        r = _cli(root, idx, crash_at=f"{point}:{k}", workers=workers)
        assert r.returncode == -signal.SIGKILL, (point, r.returncode, r.stderr[-2000:])
        after = _committed(idx)
        # everything up to the batch in flight was kept: at most one batch is redone per kill
        assert after == before + commits * BATCH, (point, before, after)
        if after:
            check_invariants(idx, fingerprint, max_orphans=BATCH)
            with open_index(idx) as ix:  # readers see the committed state only (orphans of a kill are ignored)
                hits = search(ix, root / photos[0].name, k=n)
                assert len(hits) == after and all(os.path.exists(h.path) for h in hits)
                if point == "after_flush":
                    assert ix.vectors.ntotal == after + BATCH
    before = _committed(idx)
    assert before == BATCH * sum(c for *_, c in plan)
    r = _cli(root, idx)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout)
    assert summary["total_vectors"] == n
    assert summary["embedded"] == n - before  # nothing committed was embedded twice
    rows = check_invariants(idx, fingerprint)
    assert len(rows) == n
    assert search(idx, root / photos[3].name, k=1)[0].relpath == photos[3].name
    assert not [p for p in idx.iterdir() if ".tmp-" in p.name]  # temp files of killed flushes were cleaned up


def test_search_while_indexing(tmp_path: Path) -> None:
    root, idx = tmp_path / "photos", tmp_path / "idx"
    root.mkdir()
    photos = sorted(PHOTOS.glob("*.jpg"))
    for rep in range(2):
        for p in photos:
            shutil.copy2(p, root / f"{rep}_{p.name}")
    query = root / f"0_{photos[0].name}"
    env = dict(os.environ, HF_HUB_OFFLINE="1", LOOKALIKE_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    env.pop("LOOKALIKE_CRASH_AT", None)
    cmd = [sys.executable, "-m", "lookalike.app.cli", "index", str(root), "--index", str(idx), "--metric",
           "test_vit_tiny", "--device", "cpu", "--batch-size", "2", "--workers", "0", "--checkpoint-every", "0",
           "--no-progress"]
    writer = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[int] = []
    errors: list[str] = []
    deadline = time.monotonic() + 240
    try:
        while writer.poll() is None and time.monotonic() < deadline:
            try:
                with open_index(idx) as ix:
                    hits = search(ix, query, k=200)
                    n_committed = _committed(idx)
            except (FileNotFoundError, ValueError) as e:  # before the first commit: no index / no vectors yet
                if seen:
                    errors.append(repr(e))
                time.sleep(0.05)
                continue
            assert all(os.path.exists(h.path) for h in hits)
            assert len(hits) <= n_committed
            seen.append(len(hits))
            time.sleep(0.1)  # leave the (shared) CPU to the writer
    finally:
        out, err = writer.communicate(timeout=240)
    assert writer.returncode == 0, err[-2000:]
    assert not errors, errors
    assert len(seen) >= 3, seen  # we did read while the writer was running
    assert seen == sorted(seen)  # readers see a growing, committed state
    assert len(search(idx, query, k=200)) == 2 * len(photos)
