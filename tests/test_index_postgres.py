"""The catalog on a real PostgreSQL server (started by the test from Debian's postgresql binaries)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import free_port as _free_port

from lookalike.indexer import build_index, find_duplicates, index_info, search


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdb:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries missing: the README's install command runs .ci/install-system.sh")
        pytest.skip("PostgreSQL binaries not installed (bash .ci/install-system.sh)")
    pytest.importorskip("psycopg", reason="psycopg (test extra) not installed")
    bindir = Path(initdb[-1]).parent
    workdir = Path(tempfile.mkdtemp(prefix="lookalike-pg-"))
    data = workdir / "data"
    prefix: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: use its own account
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user")
        shutil.chown(workdir, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
                   check=True, capture_output=True)
    opts = f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(workdir / "log"), "-w",
                    "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)


def test_index_search_dedup_and_update_on_postgres(pg_url: str, photos_dir: Path, tmp_path: Path) -> None:
    pics = tmp_path / "pics"
    pics.mkdir()
    for f in sorted(photos_dir.glob("*.jpg"))[:6]:
        shutil.copy(f, pics / f.name)
    shutil.copy(pics / sorted(os.listdir(pics))[0], pics / "same_bytes_copy.jpg")
    idx = tmp_path / "idx"
    s = build_index([pics], idx, metric="test_vit_tiny", device="cpu", workers=0, db_url=pg_url, progress=False)
    assert (s.new, s.embedded, s.failed) == (7, 7, 0)
    assert not list(idx.glob("*.sqlite*")), "the catalog must live in PostgreSQL, not in the index folder"
    query = pics / "bsd68_101085.jpg"
    hits = search(idx, query, k=3, db_url=pg_url)
    assert Path(hits[0].path) == query and hits[0].distance == pytest.approx(0.0, abs=1e-5)
    report = find_duplicates(idx, threshold=1e-4, db_url=pg_url)
    assert len(report.groups) == 1 and len(report.groups[0].duplicates) == 1
    (pics / "same_bytes_copy.jpg").unlink()
    s2 = build_index([pics], idx, metric="test_vit_tiny", device="cpu", workers=0, db_url=pg_url, progress=False)
    assert (s2.removed, s2.embedded, s2.total_vectors) == (1, 0, 6)
    info = index_info(idx, db_url=pg_url)
    assert info["images"]["ok"] == 6
