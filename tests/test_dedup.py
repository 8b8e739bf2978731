"""find_duplicates on hand-made vectors: grouping modes, keep rules, reports, quarantine moves and undo."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import update

from lookalike.common.errors import IndexMismatch, InvalidArgument
from lookalike.indexer import (
    BuildConfig,
    find_duplicates,
    move_duplicates,
    set_dedup_threshold,
    undo_moves,
    write_report,
)
from lookalike.indexer._catalog import STATUS_OK, Catalog, ImageRow
from lookalike.indexer._writer import open_writer

FP = "synthetic-0"


def _unit(deg: float, dim: int = 8) -> np.ndarray:
    v = np.zeros(dim, np.float32)
    v[0], v[1] = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return v


def make_vector_index(tmp: Path, items: dict[str, dict]) -> tuple[Path, Path]:
    """An index folder built straight from vectors: items = {relpath: {"vec", "w", "h", "mtime"}}."""
    root, idx = tmp / "files", tmp / "idx"
    dim = len(next(iter(items.values()))["vec"])
    ids, vecs = [], []
    with open_writer(idx, BuildConfig(faiss="Flat")) as session:
        bw = session.open_build(FP, "synthetic", dim)
        with session.catalog.session() as s, s.begin():
            for rel, it in items.items():
                p = root / rel
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(b"x" * it.get("size", 10))
                row = ImageRow(root=str(root), relpath=rel, path_raw=os.fsencode(str(p)), sha256=rel,
                               size=p.stat().st_size, mtime_ns=it.get("mtime", 0), width=it.get("w", 10),
                               height=it.get("h", 10), format="JPEG", status=STATUS_OK)
                s.add(row)
                s.flush()
                ids.append(row.id)
                vecs.append(it["vec"])
        bw.push(ids, np.stack(vecs))
        bw.finish()
    return root, idx


@pytest.fixture()
def chain(tmp_path: Path) -> tuple[Path, Path]:
    """a - b - c linked in a chain at threshold 0.05 (a and c 0.157 apart), d unrelated, e a twin of d."""
    step = math.degrees(math.acos(0.96))  # 1 - cos = 0.04
    return make_vector_index(tmp_path, {
        "a.jpg": {"vec": _unit(0), "w": 100, "h": 100, "mtime": 3},
        "b.jpg": {"vec": _unit(step), "w": 400, "h": 300, "mtime": 1},
        "sub/c.jpg": {"vec": _unit(2 * step), "w": 50, "h": 50, "mtime": 2},
        "d.jpg": {"vec": _unit(90), "w": 10, "h": 10, "mtime": 5},
        "e.jpg": {"vec": _unit(90.5), "w": 10, "h": 10, "mtime": 4, "size": 20},
    })


def _names(report) -> list[tuple[str, list[str]]]:
    return [(os.path.basename(g.keeper.path), sorted(os.path.basename(d.path) for d in g.duplicates))
            for g in report.groups]


def test_components_vs_star(chain: tuple[Path, Path]) -> None:
    _, idx = chain
    comp = find_duplicates(idx, threshold=0.05, keep="largest")
    assert sorted((os.path.basename(p.a), os.path.basename(p.b)) for p in comp.pairs) == [
        ("a.jpg", "b.jpg"), ("b.jpg", "c.jpg"), ("d.jpg", "e.jpg")]
    assert _names(comp) == [("b.jpg", ["a.jpg", "c.jpg"]), ("e.jpg", ["d.jpg"])]  # e: same pixels, more bytes
    assert comp.pairs[0].distance < 1e-3 and abs(comp.pairs[-1].distance - 0.04) < 1e-4
    star_first = find_duplicates(idx, threshold=0.05, group="star", keep="first")
    assert _names(star_first) == [("a.jpg", ["b.jpg"]), ("d.jpg", ["e.jpg"])]  # no chaining to c
    star_largest = find_duplicates(idx, threshold=0.05, group="star", keep="largest")
    assert _names(star_largest)[0] == ("b.jpg", ["a.jpg", "c.jpg"])
    comp_dup = comp.groups[0].duplicates
    assert {os.path.basename(d.path): round(d.distance, 3) for d in comp_dup} == {"a.jpg": 0.04, "c.jpg": 0.04}


def test_keep_rules_and_blocks(chain: tuple[Path, Path]) -> None:
    _, idx = chain
    assert _names(find_duplicates(idx, threshold=0.05, keep="oldest"))[0][0] == "b.jpg"
    assert _names(find_duplicates(idx, threshold=0.05, keep="newest"))[0][0] == "a.jpg"
    assert _names(find_duplicates(idx, threshold=0.05, keep="first"))[0][0] == "a.jpg"
    assert len(find_duplicates(idx, threshold=0.2).groups) == 2
    assert len(find_duplicates(idx, threshold=0.2).groups[0].duplicates) == 2
    small = find_duplicates(idx, threshold=0.05, block_size=1)
    assert _names(small) == _names(find_duplicates(idx, threshold=0.05))
    assert find_duplicates(idx, threshold=0.0001).groups[0].keeper.path.endswith("e.jpg")
    with pytest.raises(ValueError, match="unknown keep rule"):
        find_duplicates(idx, threshold=0.05, keep="prettiest")
    with pytest.raises(ValueError, match="unknown group mode"):
        find_duplicates(idx, threshold=0.05, group="cliques")
    with pytest.raises(ValueError, match="outside"):
        find_duplicates(idx, threshold=3.0)
    with pytest.raises(ValueError, match="no distance threshold given"):
        find_duplicates(idx)
    # an out-of-range stored threshold is a clear InvalidArgument (it was a TypeError), at both entry points
    with Catalog(idx) as cat:
        with pytest.raises(InvalidArgument, match=r"dedup threshold 3.0 is outside \[0, 2\]"):
            cat.set_dedup_threshold(FP, 3.0)
        with pytest.raises(IndexMismatch, match="no build 'nope'"):
            cat.set_dedup_threshold("nope", 0.1)
    with pytest.raises(InvalidArgument, match=r"dedup threshold 3.0 is outside \[0, 2\]"):
        set_dedup_threshold(idx, 3.0)
    assert set_dedup_threshold(idx, 0.05) == FP
    assert len(find_duplicates(idx).pairs) == 3  # the threshold stored with the build


def test_reports(chain: tuple[Path, Path], tmp_path: Path) -> None:
    _, idx = chain
    report = find_duplicates(idx, threshold=0.05)
    write_report(report, tmp_path / "out" / "dups.csv")
    rows = list(csv.DictReader(open(tmp_path / "out" / "dups.csv")))
    assert [r["role"] for r in rows] == ["keep", "duplicate", "duplicate", "keep", "duplicate"]
    assert rows[0]["path"].endswith("b.jpg") and rows[0]["width"] == "400"
    write_report(report, tmp_path / "dups.json")
    data = json.loads((tmp_path / "dups.json").read_text())
    assert data["threshold"] == 0.05 and len(data["pairs"]) == 3 and data["n_duplicates"] == 3
    assert data["groups"][0]["keeper"]["relpath"] == "b.jpg"
    with pytest.raises(ValueError, match=r"\.json, \.csv, \.parquet, \.html"):
        write_report(report, tmp_path / "dups.txt")


def test_move_and_undo(chain: tuple[Path, Path], tmp_path: Path) -> None:
    root, idx = chain
    before = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    report = find_duplicates(idx, threshold=0.05)
    q = tmp_path / "quarantine"
    moved = move_duplicates(report, q)
    assert moved.moved == 3 and moved.gone == 0
    manifest = Path(moved.manifest)
    left = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert left == ["b.jpg", "e.jpg"]  # keepers stay; nothing deleted
    moved = sorted(p.relative_to(q).as_posix() for p in q.rglob("*.jpg"))
    assert moved == ["files/a.jpg", "files/d.jpg", "files/sub/c.jpg"]
    assert len(json.loads(manifest.read_text())["moves"]) == 3
    (root / "a.jpg").write_bytes(b"a new file took the name")
    assert undo_moves(manifest) == 2  # a.jpg's place is taken again: left in quarantine
    assert (q / "files" / "a.jpg").exists()
    (root / "a.jpg").unlink()
    assert undo_moves(manifest) == 1
    after = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert after == before
    with pytest.raises(FileNotFoundError):
        undo_moves(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a lookalike dedup manifest"):
        undo_moves(tmp_path / "bad.json")


def test_ties_fall_to_earliest_mtime_then_first_indexed(tmp_path: Path) -> None:
    """Equal pixels and bytes: 'largest' keeps the older file, then the one indexed first; --prefer overrides."""
    _, idx = make_vector_index(tmp_path, {
        "new/copy.jpg": {"vec": _unit(0), "mtime": 5},  # indexed first, modified later
        "old/orig.jpg": {"vec": _unit(0.1), "mtime": 1},
        "z/twin_b.jpg": {"vec": _unit(90), "mtime": 7},  # same mtime: the one indexed first is kept
        "a/twin_a.jpg": {"vec": _unit(90.1), "mtime": 7},
    })
    for rule in ("largest", "oldest", "newest", "first"):
        report = find_duplicates(idx, threshold=0.01, keep=rule)
        keepers = sorted(os.path.relpath(g.keeper.path, tmp_path / "files") for g in report.groups)
        expect = {"largest": ["old/orig.jpg", "z/twin_b.jpg"], "oldest": ["old/orig.jpg", "z/twin_b.jpg"],
                  "newest": ["new/copy.jpg", "z/twin_b.jpg"], "first": ["a/twin_a.jpg", "new/copy.jpg"]}[rule]
        assert keepers == expect, rule
    preferred = find_duplicates(idx, threshold=0.01, prefer=[tmp_path / "files" / "new"])
    assert sorted(os.path.basename(g.keeper.path) for g in preferred.groups) == ["copy.jpg", "twin_b.jpg"]
    assert preferred.prefer == [str(tmp_path / "files" / "new")]


def test_labels_cut_and_join_groups(chain: tuple[Path, Path]) -> None:
    """'different' removes a link (no group is joined through it); 'same' links a pair beyond the threshold."""
    from sqlalchemy import inspect

    from lookalike.indexer import add_labels, list_labels

    root, idx = chain
    find_duplicates(idx, threshold=0.05)  # migrates the hand-made schema-1 folder first
    with Catalog(idx) as cat, cat.engine.begin() as conn:  # a catalog written before labels existed
        for table in ("dedup_labels", "dedup_tiers", "dedup_moved"):
            conn.exec_driver_sql(f"DROP TABLE {table}")
    before = find_duplicates(idx, threshold=0.05)
    with Catalog(idx) as cat:  # readers never create the tables
        assert not {"dedup_labels", "dedup_tiers", "dedup_moved"} & set(inspect(cat.engine).get_table_names())
    assert before.labels == [] and before.hidden == []
    summary = add_labels(idx, [(str(root / "b.jpg"), str(root / "sub/c.jpg"), 0.0),
                               ("a.jpg", "d.jpg", 1.0)], source="cli")  # a path relative to the indexed root
    assert (summary.added, summary.changed) == (2, 0)
    assert add_labels(idx, [(str(root / "sub/c.jpg"), str(root / "b.jpg"), 0.0)]
                      ).unchanged == 1
    report = find_duplicates(idx, threshold=0.05)
    names = {(os.path.basename(p.a), os.path.basename(p.b)): p for p in report.pairs}
    assert ("b.jpg", "c.jpg") not in names and ("b.jpg", "c.jpg") in {
        (os.path.basename(p.a), os.path.basename(p.b)) for p in report.hidden}
    assert names[("a.jpg", "d.jpg")].label == "same" and names[("a.jpg", "d.jpg")].distance > 0.9
    # c is now alone; a, b, d, e are one group (a-b linked, a-d labelled same, d-e linked)
    assert _names(report) == [("b.jpg", ["a.jpg", "d.jpg", "e.jpg"])]
    assert {os.path.basename(lb.path_a) for lb in report.labels} == {"a.jpg", "b.jpg"}
    assert len(list_labels(idx)) == 2
    ignored = find_duplicates(idx, threshold=0.05, use_labels=False)
    assert len(ignored.pairs) == 3 and not ignored.hidden
    with pytest.raises(ValueError, match="same file"):
        add_labels(idx, [("a.jpg", str(root / "a.jpg"), 0.0)])
    with pytest.raises(FileNotFoundError, match="not in the index"):
        add_labels(idx, [("a.jpg", "nope.jpg", 0.0)])
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        add_labels(idx, [("a.jpg", "b.jpg", 2.0)])


def test_label_is_a_short_writer_operation(chain: tuple[Path, Path]) -> None:
    from lookalike.common.errors import IndexLocked
    from lookalike.indexer import add_labels
    from lookalike.indexer._writer import writer_lock

    _, idx = chain
    find_duplicates(idx, threshold=0.05)  # migrates the hand-made schema-1 folder first
    with writer_lock(idx), pytest.raises(IndexLocked):
        add_labels(idx, [("a.jpg", "b.jpg", 0.0)])
    assert add_labels(idx, [("a.jpg", "b.jpg", 0.0)]).added == 1


def test_files_without_hash_are_labelled_by_path_and_tiered_by_vector(tmp_path: Path) -> None:
    """Imported embeddings may have no sha256: labels key them by path, identical vectors are 'exact'."""
    from lookalike.indexer import add_labels

    _, idx = make_vector_index(tmp_path, {"x.jpg": {"vec": _unit(0)}, "y.jpg": {"vec": _unit(0)},
                                          "z.jpg": {"vec": _unit(3)}})
    with Catalog(idx) as cat, cat.session() as s, s.begin():
        s.execute(update(ImageRow).values(sha256=None))
    report = find_duplicates(idx, threshold=0.01)
    tiers = {(os.path.basename(p.a), os.path.basename(p.b)): p.tier for p in report.pairs}
    assert tiers == {("x.jpg", "y.jpg"): "exact", ("x.jpg", "z.jpg"): "similar", ("y.jpg", "z.jpg"): "similar"}
    assert report.tiers["near"] is None and any("no near-copy boundary" in w for w in report.warnings)
    add_labels(idx, [("x.jpg", "z.jpg", 0.0)])
    with Catalog(idx) as cat, cat.session() as s:
        from lookalike.indexer._labels import LabelRow

        assert {r.key_a.split(":")[0] for r in s.query(LabelRow)} == {"path"}
    assert len(find_duplicates(idx, threshold=0.01).hidden) == 1


def test_chains_are_reported_with_the_largest_group(tmp_path: Path) -> None:
    step = math.degrees(math.acos(0.96))
    _, idx = make_vector_index(tmp_path, {f"{i:02d}.jpg": {"vec": _unit(i * step)} for i in range(8)})
    comp = find_duplicates(idx, threshold=0.05, chain_limit=5)
    assert comp.largest_group == 8 and len(comp.groups) == 1
    assert any("largest group holds 8" in w and "star" in w for w in comp.warnings)
    star = find_duplicates(idx, threshold=0.05, group="star", chain_limit=5)
    assert star.largest_group <= 3 and not any("largest group" in w for w in star.warnings)
    assert all(d.distance <= 0.05 + 1e-6 for g in star.groups for d in g.duplicates)
