"""build_index(..., ray=...) on a real local Ray cluster: same vectors as the local path, worker kills retried by
Ray with every image embedded once, a SIGKILLed driver resumed, and a one-line answer when Ray is missing."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from lookalike.indexer import build_index, open_index
from lookalike.indexer._catalog import Catalog, ImageRow, ShardRow

ray = pytest.importorskip("ray")
from test_index_build import check_invariants  # noqa: E402

PHOTOS = Path(__file__).parent / "fixtures" / "photos"
METRIC = "test_vit_tiny"
FP = "test_vit_tiny-seed0"


@pytest.fixture(scope="module")
def ray_cluster():
    """A real local Ray cluster for this module (2 CPUs, no dashboard), shut down at the end."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def make_folder(dst: Path, n: int, *, broken: bool = True) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(PHOTOS.glob("*.jpg"))[:n]:
        shutil.copy2(p, dst / p.name)
    if broken:
        (dst / "truncated.jpg").write_bytes((PHOTOS / "bsd68_101085.jpg").read_bytes()[:600])
        (dst / "empty.png").write_bytes(b"")
    return dst


def catalog_rows(idx: Path) -> dict[str, tuple]:
    with Catalog(idx) as cat, cat.session() as s:
        return {r.relpath: (r.sha256, r.size, r.status, r.error, r.width, r.height, r.format)
                for r in s.scalars(select(ImageRow))}


def vectors_by_path(idx: Path) -> dict[str, np.ndarray]:
    out = {}
    with open_index(idx) as ix:
        for relpath in catalog_rows(idx):
            row = ix.find_row(relpath)
            v = ix.vector_of(row) if row is not None else None
            if v is not None:
                out[relpath] = np.asarray(v, dtype=np.float32)
    return out


def assert_same_index(a: Path, b: Path) -> None:
    rows_a, rows_b = catalog_rows(a), catalog_rows(b)
    assert rows_a == rows_b
    va, vb = vectors_by_path(a), vectors_by_path(b)
    assert sorted(va) == sorted(vb) and len(va) > 0
    diff = max(float(np.abs(va[k] - vb[k]).max()) for k in va)
    assert diff <= 1e-6, f"max |vector difference| {diff}"


def shard_files(idx: Path) -> list[str]:
    with Catalog(idx) as cat, cat.session() as s:
        return [Path(f).name for f in s.scalars(select(ShardRow.file).order_by(ShardRow.seq))]


def test_ray_equals_local_and_resumes_incrementally(tmp_path: Path, ray_cluster,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_folder(tmp_path / "photos", 6)
    local = build_index(src, tmp_path / "local", metric=METRIC, device="cpu", batch_size=4, workers=0,
                        progress=False)
    s = build_index(src, tmp_path / "ray", metric=METRIC, batch_size=4, ray="auto", progress=False)
    assert (s.embedded, s.failed, s.total_vectors) == (local.embedded, local.failed, local.total_vectors) == (6, 2, 6)
    assert s.decoder.startswith("ray")
    assert {r for _, r in s.failures} == {r for _, r in local.failures}
    assert_same_index(tmp_path / "local", tmp_path / "ray")
    # the embedding actor wrote the shard (the driver only committed its record), and left nothing else behind
    files = shard_files(tmp_path / "ray")
    assert len(files) == 1 and files[0].startswith("shard-r")
    check_invariants(tmp_path / "ray", FP)
    assert not list((tmp_path / "ray" / "vectors").rglob(".ray-*"))
    # incremental: a new file is the only work of the next Ray run, and the indexes still agree; this time the
    # actors are told a folder they cannot reach (another machine without the shared disk): their vectors come back
    # to the driver, which writes the shard itself
    import lookalike.indexer._ray as ray_driver
    from lookalike.indexer._ray_shards import open_target

    def unreachable(index_dir, folder, storage, dim):  # type: ignore[no-untyped-def]
        t = open_target(index_dir, folder, storage, dim)
        return dataclasses.replace(t, folder=str(tmp_path / "elsewhere"))

    monkeypatch.setattr(ray_driver, "open_target", unreachable)
    shutil.copy2(sorted(PHOTOS.glob("*.jpg"))[12], src / "new.jpg")
    s2 = build_index(src, tmp_path / "ray", metric=METRIC, batch_size=4, ray=True, progress=False)
    build_index(src, tmp_path / "local", metric=METRIC, device="cpu", batch_size=4, workers=0, progress=False)
    assert (s2.new, s2.embedded) == (1, 1)
    assert_same_index(tmp_path / "local", tmp_path / "ray")
    assert shard_files(tmp_path / "ray")[-1].startswith("shard-0")  # written by the driver
    check_invariants(tmp_path / "ray", FP)


def test_killed_workers_are_retried_and_every_image_embedded_once(tmp_path: Path, ray_cluster,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_folder(tmp_path / "photos", 8, broken=False)
    markers = tmp_path / "kills"
    markers.mkdir()
    monkeypatch.setenv("LOOKALIKE_RAY_KILL_DIR", str(markers))
    s = build_index(src, tmp_path / "ray", metric=METRIC, batch_size=2, ray="auto", progress=False,
                    crash_at="ray_decode:1,ray_embed:2,ray_shard:1")
    # every hook fired: a decode task's worker and an embedding actor were SIGKILLed mid-run, in other processes, and
    # an actor was killed after writing its shard, before handing it over (the retried batch wrote another one)
    killed = {p.name: int(p.read_text()) for p in markers.iterdir()}
    assert set(killed) == {"ray_decode.killed", "ray_embed.killed", "ray_shard.killed"}
    assert os.getpid() not in killed.values()
    assert (s.embedded, s.failed, s.total_vectors) == (8, 0, 8)
    build_index(src, tmp_path / "local", metric=METRIC, device="cpu", batch_size=2, workers=0, progress=False)
    assert_same_index(tmp_path / "local", tmp_path / "ray")
    with open_index(tmp_path / "ray") as ix:
        ids = ix.vectors.ids().tolist()
    assert len(ids) == len(set(ids)) == 8
    check_invariants(tmp_path / "ray", FP)  # the killed actor's shard, never committed, was deleted by the driver


def test_sigkilled_driver_resumes(tmp_path: Path, ray_cluster) -> None:
    src = make_folder(tmp_path / "photos", 8)
    idx = tmp_path / "ray"
    code = textwrap.dedent(f"""
        from lookalike.indexer import build_index
        build_index({str(src)!r}, {str(idx)!r}, metric={METRIC!r}, batch_size=2, ray="auto", progress=False,
                    checkpoint_every=2, crash_at="after_flush:2")
    """)
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    rows = catalog_rows(idx)
    assert 0 < sum(r[2] == "ok" for r in rows.values()) < 8  # the kill left a part done
    # the driver died holding a worker shard it had not committed (and the actors had written others): orphans
    assert len(list(idx.glob("vectors/*/shard-r*.ids.npy"))) > len([f for f in shard_files(idx) if "-r" in f])
    s = build_index(src, idx, metric=METRIC, batch_size=2, ray="auto", progress=False)
    assert s.reconciled >= 1 and s.total_vectors == 8
    build_index(src, tmp_path / "local", metric=METRIC, device="cpu", batch_size=2, workers=0, progress=False)
    assert_same_index(tmp_path / "local", idx)
    check_invariants(idx, FP)  # the next writer deleted every orphan


def test_cli_ray_flag_and_missing_ray(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from lookalike.app.cli import main

    src = make_folder(tmp_path / "photos", 2, broken=False)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    monkeypatch.setitem(sys.modules, "ray.data", None)
    rc = main(["index", str(src), "--index", str(tmp_path / "idx"), "--metric", METRIC, "--ray", "--no-progress"])
    first, *rest = capsys.readouterr().err.strip().splitlines()
    err = "\n".join(rest)
    assert rc == 2 and first.startswith(f"loading {METRIC} (")  # what it loads, said first
    assert len(err.splitlines()) == 1 and 'pip install "lookalike[ray]"' in err, err
    assert not (tmp_path / "idx").exists()  # nothing was created
