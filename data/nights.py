"""NIGHTS (Fu et al. 2023, the DreamSim dataset): 2AFC triplets from ``data.csv``, read by column name.

Layout: ``<root>/data.csv`` plus the ``ref/`` and ``distort/`` image folders it points to. Columns used (by name):
``id``, ``right_vote`` (the fraction of the votes that chose the right image: the DreamSim target ``p``), ``votes``,
``ref_path``, ``left_path``, ``right_path``, ``split``, ``is_imagenet``. Other columns are ignored.

As in DreamSim, only triplets with ``votes >= 6`` are kept (a parameter here). Splits: ``train``, ``val``,
``test``, and the two parts of the test split ``test_imagenet`` / ``test_no_imagenet``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lookalike.common.errors import DatasetError
from lookalike.data.triplets import Triplet, TripletSet, open_csv, parse_fraction, resolve_image

_logger = logging.getLogger(__name__)

NIGHTS_CSV = "data.csv"
NIGHTS_COLUMNS = ("id", "right_vote", "votes", "ref_path", "left_path", "right_path", "split", "is_imagenet")
NIGHTS_SPLITS = ("train", "val", "test", "test_imagenet", "test_no_imagenet")
#: The splits ``lookalike eval 2afc --dataset nights`` reports by default (the DreamSim README's val / test).
NIGHTS_EVAL_SPLITS = ("val", "test", "test_imagenet", "test_no_imagenet")
DEFAULT_MIN_VOTES = 6
_TRUE = {"true", "1", "yes", "t"}
_FALSE = {"false", "0", "no", "f"}


def _csv_path(root: str | os.PathLike[str]) -> Path:
    r = Path(root).expanduser()
    if r.is_file():
        return r
    if not r.is_dir():
        raise FileNotFoundError(f"NIGHTS folder {r} not found")
    csv_path = r / NIGHTS_CSV
    if not csv_path.is_file():
        raise FileNotFoundError(f"{r} is not a NIGHTS folder: {NIGHTS_CSV} is missing (download NIGHTS from "
                                "https://data.csail.mit.edu/nights/ and pass the folder holding data.csv)")
    return csv_path


def _parse_bool(value: str, where: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise DatasetError(f"{where}: column 'is_imagenet' = {value!r} is not a boolean (True/False)")


def read_nights(root: str | os.PathLike[str], split: str = "test", *, min_votes: int = DEFAULT_MIN_VOTES,
                check_files: bool = True) -> TripletSet:
    """Read one split of NIGHTS.

    Args:
        root: the NIGHTS folder (holding ``data.csv``), or the CSV file itself; image paths are relative to the
            CSV's folder.
        split: "train", "val", "test", "test_imagenet" or "test_no_imagenet".
        min_votes: keep triplets with at least this many votes (DreamSim: 6).
        check_files: check that every image of the split exists.

    Returns:
        A TripletSet; ``p`` = ``right_vote`` (1.0 = the votes chose the right image), ids from the ``id`` column.

    Raises:
        FileNotFoundError: no ``data.csv``, or a missing image (named with its line).
        ValueError: unknown split, a missing column, or a bad value (named with its line).
    """
    if split not in NIGHTS_SPLITS:
        raise DatasetError(f"unknown NIGHTS split {split!r}; choose from {', '.join(NIGHTS_SPLITS)}")
    if min_votes < 0:
        raise DatasetError(f"min_votes must be >= 0, got {min_votes}")
    p, header, rows = open_csv(_csv_path(root), NIGHTS_COLUMNS)
    base = p.parent
    csv_split = "test" if split.startswith("test") else split
    want_imagenet = {"test_imagenet": True, "test_no_imagenet": False}.get(split)
    out: list[Triplet] = []
    for line, row in enumerate(rows, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        where = f"{p}, line {line}"
        if len(row) != len(header):
            raise DatasetError(f"{where}: {len(row)} fields but the header has {len(header)}")
        cells = dict(zip(header, row, strict=True))
        try:
            votes = int(float(cells["votes"]))
        except ValueError:
            raise DatasetError(f"{where}: column 'votes' = {cells['votes']!r} is not a number") from None
        s = cells["split"].strip()
        if s not in ("train", "val", "test"):
            raise DatasetError(f"{where}: column 'split' = {s!r}; expected train, val or test")
        if votes < min_votes or s != csv_split:
            continue
        if want_imagenet is not None and _parse_bool(cells["is_imagenet"], where) != want_imagenet:
            continue
        out.append(Triplet(
            ref=resolve_image(base, cells["ref_path"], where=where, column="ref_path", check=check_files),
            left=resolve_image(base, cells["left_path"], where=where, column="left_path", check=check_files),
            right=resolve_image(base, cells["right_path"], where=where, column="right_path", check=check_files),
            p=parse_fraction(cells["right_vote"], where=where, column="right_vote"),
            id=cells["id"].strip() or str(line),
        ))
    if not out:
        raise DatasetError(f"{p}: no triplets in split {split!r} with votes >= {min_votes}")
    _logger.info("NIGHTS %s: %d triplets (votes >= %d) from %s", split, len(out), min_votes, p)
    return TripletSet("nights", split, os.fspath(p), tuple(out))
