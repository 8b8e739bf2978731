"""Dataset readers: NIGHTS, BAPPS 2AFC / JND, triplet and pairs CSVs, ImageNet-R; errors name the file and row."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike.data.datasets import create_dataset, list_datasets, list_splits
from lookalike.data.imagenet_r import imagenet_r_classes, read_imagenet_r
from lookalike.data.nights import read_nights
from lookalike.data.triplets import (
    bapps_splits,
    holdout_split,
    read_bapps_2afc,
    read_bapps_jnd,
    read_pairs_csv,
    read_triplet_csv,
    triplet_csv_splits,
)


def _png(path: Path, value: int = 128) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value, value, value)).save(path)
    return str(path)


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


# --- NIGHTS ----------------------------------------------------------------------------------------------------------

NIGHTS_HEADER = ["id", "left_vote", "right_vote", "votes", "ref_path", "left_path", "right_path", "split",
                 "is_imagenet", "prompt"]


@pytest.fixture()
def nights(tmp_path: Path) -> Path:
    rows = []
    spec = [  # (split, votes, is_imagenet, right_vote)
        ("train", 6, True, 1.0), ("train", 5, False, 0.0), ("train", 7, False, 0.2),
        ("val", 6, True, 0.0), ("val", 10, False, 1.0),
        ("test", 6, True, 1.0), ("test", 8, False, 0.0), ("test", 9, False, 0.75), ("test", 3, True, 1.0),
    ]
    for i, (split, votes, inet, rv) in enumerate(spec):
        ref = f"ref/000/{i:03d}.png"
        left, right = f"distort/000/{i:03d}_0.png", f"distort/000/{i:03d}_1.png"
        for rel in (ref, left, right):
            _png(tmp_path / rel)
        rows.append([i, 1 - rv, rv, votes, ref, left, right, split, inet, "An image of a crab"])
    _write_csv(tmp_path / "data.csv", NIGHTS_HEADER, rows)
    return tmp_path


def test_nights_splits_and_votes_filter(nights: Path) -> None:
    assert [t.id for t in read_nights(nights, "train")] == ["0", "2"]  # votes 5 dropped
    assert len(read_nights(nights, "train", min_votes=0)) == 3
    assert len(read_nights(nights, "val")) == 2
    test = read_nights(nights, "test")
    assert [t.id for t in test] == ["5", "6", "7"]  # votes 3 dropped
    assert [t.id for t in read_nights(nights, "test_imagenet")] == ["5"]
    assert [t.id for t in read_nights(nights, "test_no_imagenet")] == ["6", "7"]
    t = test[2]
    assert t.p == 0.75 and Path(t.ref) == nights / "ref/000/007.png" and Path(t.right).name == "007_1.png"
    assert test.name == "nights" and test.split == "test"
    assert create_dataset("nights", nights, "val").split == "val"
    assert list_splits("nights", nights) == ["val", "test", "test_imagenet", "test_no_imagenet"]


def test_nights_errors_name_file_and_line(nights: Path) -> None:
    with pytest.raises(ValueError, match="unknown NIGHTS split 'dev'"):
        read_nights(nights, "dev")
    csv_path = nights / "data.csv"
    lines = csv_path.read_text().splitlines()
    lines[3] = lines[3].replace(",7,", ",seven,")
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"data\.csv, line 4: column 'votes' = 'seven'"):
        read_nights(nights, "train")
    _write_csv(csv_path, [c for c in NIGHTS_HEADER if c != "right_vote"], [])
    with pytest.raises(ValueError, match=r"data\.csv, line 1: missing column\(s\) right_vote"):
        read_nights(nights, "test")
    with pytest.raises(FileNotFoundError, match="data.csv is missing"):
        read_nights(nights / "ref", "test")


def test_nights_missing_image_named(nights: Path) -> None:
    (nights / "distort/000/006_1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"line 8: column 'right_path': image 'distort/000/006_1.png'"):
        read_nights(nights, "test")
    assert len(read_nights(nights, "test", check_files=False)) == 3


# --- triplet and pairs CSVs ------------------------------------------------------------------------------------------


@pytest.fixture()
def triplet_csv(tmp_path: Path) -> Path:
    for n in "abcdef":
        _png(tmp_path / "img" / f"{n}.png")
    rows = [["img/a.png", "img/b.png", "img/c.png", 1, "train"], ["img/b.png", "img/c.png", "img/a.png", 0, "train"],
            ["img/d.png", "img/e.png", "img/f.png", 0.6, "val"]]
    return _write_csv(tmp_path / "t.csv", ["ref", "left", "right", "p", "split"], rows)


def test_triplet_csv(triplet_csv: Path) -> None:
    ts = read_triplet_csv(triplet_csv)
    assert len(ts) == 3 and ts.split == "all"
    assert ts[0].ref == str(triplet_csv.parent / "img/a.png") and ts[2].p == 0.6
    assert ts[0].id == "2"  # the CSV line
    assert len(ts.images()) == 6
    assert triplet_csv_splits(triplet_csv) == ["train", "val"]
    assert len(read_triplet_csv(triplet_csv, split="train")) == 2
    with pytest.raises(ValueError, match=r"no rows with split 'test'; splits present: \['train', 'val'\]"):
        read_triplet_csv(triplet_csv, split="test")
    train, val = holdout_split(ts, 0.34, seed=0)
    assert len(train) + len(val) == 3 and not {t.ref for t in train} & {t.ref for t in val}
    assert "triplets" in list_datasets("triplets") and "pairs" in list_datasets("pairs")


@pytest.mark.parametrize(("row", "message"), [
    (["img/a.png", "img/b.png", "img/c.png", "1.5"], r"line 3: column 'p' = '1.5' is outside \[0, 1\]"),
    (["img/a.png", "img/b.png", "img/c.png", "yes"], r"line 3: column 'p' = 'yes' is not a number"),
    (["img/a.png", "", "img/c.png", "1"], r"line 3: column 'left' is empty"),
    (["img/a.png", "img/b.png", "1"], r"line 3: 3 fields but the header has 4"),
])
def test_triplet_csv_bad_values(tmp_path: Path, row: list[str], message: str) -> None:
    for n in "abc":
        _png(tmp_path / "img" / f"{n}.png")
    path = _write_csv(tmp_path / "bad.csv", ["ref", "left", "right", "p"],
                      [["img/a.png", "img/b.png", "img/c.png", 0], row])
    with pytest.raises(ValueError, match=message) as e:
        read_triplet_csv(path)
    assert str(path) in str(e.value)


def test_triplet_csv_missing_file_and_columns(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    path = _write_csv(tmp_path / "t.csv", ["ref", "left", "right", "p"], [["a.png", "a.png", "nope.png", 1]])
    with pytest.raises(FileNotFoundError, match=r"t\.csv, line 2: column 'right': image 'nope.png' not found"):
        read_triplet_csv(path)
    path = _write_csv(tmp_path / "u.csv", ["ref", "left", "p"], [["a.png", "a.png", 1]])
    with pytest.raises(ValueError, match=r"u\.csv, line 1: missing column\(s\) right"):
        read_triplet_csv(path)
    with pytest.raises(FileNotFoundError, match="CSV file"):
        read_triplet_csv(tmp_path / "absent.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="empty file"):
        read_triplet_csv(tmp_path / "empty.csv")


def test_pairs_csv(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png", 10)
    path = _write_csv(tmp_path / "pairs.csv", ["a", "b", "same", "note"], [["a.png", "b.png", 1, "x"],
                                                                           ["a.png", "a.png", 0.5, ""]])
    ps = read_pairs_csv(path)
    assert [q.same for q in ps] == [1.0, 0.5] and ps[0].b == str(tmp_path / "b.png")
    assert len(create_dataset("pairs", path)) == 2
    bad = _write_csv(tmp_path / "bad.csv", ["a", "b", "same"], [["a.png", "b.png", 1], ["a.png", "b.png", -1]])
    with pytest.raises(ValueError, match=r"bad\.csv, line 3: column 'same' = '-1' is outside"):
        read_pairs_csv(bad)


# --- BAPPS -----------------------------------------------------------------------------------------------------------


@pytest.fixture()
def bapps(tmp_path: Path) -> Path:
    root = tmp_path / "2afc" / "val"
    for subset, judges in (("cnn", [0.0, 1.0, 0.4]), ("traditional", [0.9])):
        for i, j in enumerate(judges):
            for d, v in (("ref", 100), ("p0", 120), ("p1", 200)):
                _png(root / subset / d / f"{i:06d}.png", v)
            (root / subset / "judge").mkdir(parents=True, exist_ok=True)
            np.save(root / subset / "judge" / f"{i:06d}.npy", np.array([j], dtype=np.float32))
    jnd = tmp_path / "jnd" / "val" / "cnn"
    for i, s in enumerate([1.0, 0.0, 0.25]):
        for d in ("p0", "p1"):
            _png(jnd / d / f"{i:06d}.png", 50 * i)
        (jnd / "same").mkdir(exist_ok=True)
        np.save(jnd / "same" / f"{i:06d}.npy", np.array([s]))
    return tmp_path


def test_bapps_2afc_and_jnd(bapps: Path) -> None:
    root = bapps / "2afc" / "val"
    assert bapps_splits(root) == ["cnn", "traditional"]
    ts = read_bapps_2afc(root, "cnn")
    assert [t.p for t in ts] == pytest.approx([0.0, 1.0, 0.4])
    assert Path(ts[1].left).parent.name == "p0" and Path(ts[1].right).parent.name == "p1" and ts[1].id == "000001"
    assert len(read_bapps_2afc(root / "traditional")) == 1  # a leaf folder directly
    with pytest.raises(ValueError, match="holds several BAPPS subsets"):
        read_bapps_2afc(root)
    with pytest.raises(ValueError, match="unknown BAPPS subset 'gan'"):
        read_bapps_2afc(root, "gan")
    assert list_splits("bapps", bapps / "2afc") == ["val/cnn", "val/traditional"]
    assert len(create_dataset("bapps", bapps / "2afc", "val/traditional")) == 1
    pairs = read_bapps_jnd(bapps / "jnd" / "val")
    assert [q.same for q in pairs] == [1.0, 0.0, 0.25] and pairs.split == "cnn"


def test_bapps_errors_name_the_item(bapps: Path) -> None:
    leaf = bapps / "2afc" / "val" / "cnn"
    (leaf / "p1" / "000002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"cnn, item '000002': no image named 000002\.\* in .*p1"):
        read_bapps_2afc(leaf)
    np.save(bapps / "2afc" / "val" / "traditional" / "judge" / "000000.npy", np.array([1.7]))
    with pytest.raises(ValueError, match=r"item '000000': .*000000\.npy holds 1\.7, outside \[0, 1\]"):
        read_bapps_2afc(bapps / "2afc" / "val", "traditional")
    (bapps / "jnd" / "val" / "cnn" / "same" / "000001.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match=r"item '000001': cannot read .*000001\.npy"):
        read_bapps_jnd(bapps / "jnd" / "val" / "cnn")
    with pytest.raises(ValueError, match="no BAPPS 2afc folders"):
        bapps_splits(bapps / "jnd")


# --- ImageNet-R ------------------------------------------------------------------------------------------------------


def test_imagenet_r(tmp_path: Path) -> None:
    classes = imagenet_r_classes()
    assert len(classes) == 200 and len({c.wnid for c in classes}) == 200
    assert classes[0].wnid == "n01443537" and classes[0].name == "goldfish"
    assert classes[-1].wnid == "n12267677" and classes[-1].name == "acorn"
    _png(tmp_path / "n01443537" / "art_1.jpg")
    _png(tmp_path / "n01443537" / "art_10.jpg")
    _png(tmp_path / "n01443537" / "art_2.jpg")
    _png(tmp_path / "n12267677" / "sketch_0.png")
    ds = read_imagenet_r(tmp_path)
    assert [Path(i.path).name for i in ds] == ["art_1.jpg", "art_2.jpg", "art_10.jpg", "sketch_0.png"]
    assert [i.label for i in ds] == [0, 0, 0, 199] and ds[3].name == "acorn"
    assert [c.wnid for c in ds.classes_present()] == ["n01443537", "n12267677"]
    (tmp_path / "n99999999").mkdir()
    with pytest.raises(ValueError, match="'n99999999' is not one of the 200 ImageNet-R WordNet ids"):
        read_imagenet_r(tmp_path)
    assert len(read_imagenet_r(tmp_path, strict=False)) == 4
    assert len(create_dataset("imagenet_r", tmp_path, strict=False)) == 4
