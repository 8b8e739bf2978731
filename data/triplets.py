"""Human similarity judgements: 2AFC triplets and same/different pairs, from CSV files and BAPPS folders.

Conventions shared by every reader here and by ``lookalike.judge.eval``:

- A :class:`Triplet` is (ref, left, right, p) with ``p`` = the fraction of people who judged ``right`` closer to
  ``ref`` (1.0 = everyone chose ``right``; 0 or 1 for a single vote). This is the DreamSim / LPIPS convention
  (NIGHTS ``right_vote``, BAPPS ``judge``).
- A :class:`Pair` is (a, b, same) with ``same`` = the fraction of people who judged the two images the same.
- Paths are absolute strings. Readers check every value and every referenced file up front and name the file and
  the line (CSV; the header is line 1) or the item (folders) of anything wrong.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lookalike.common.errors import DatasetError

_logger = logging.getLogger(__name__)

TRIPLET_COLUMNS = ("ref", "left", "right", "p")
PAIR_COLUMNS = ("a", "b", "same")
ALL_SPLIT = "all"


@dataclass(frozen=True)
class Triplet:
    """One 2AFC judgement.

    Attributes:
        ref: the reference image (absolute path).
        left: the first candidate ("p0" in BAPPS, "left" in NIGHTS).
        right: the second candidate ("p1" in BAPPS, "right" in NIGHTS).
        p: fraction of people who judged ``right`` closer to ``ref``, in [0, 1].
        id: a row or item id, for reports.
    """

    ref: str
    left: str
    right: str
    p: float
    id: str = ""


@dataclass(frozen=True)
class Pair:
    """One same/different judgement.

    Attributes:
        a: first image (absolute path).
        b: second image.
        same: fraction of people who judged the two images the same, in [0, 1].
        id: a row or item id, for reports.
    """

    a: str
    b: str
    same: float
    id: str = ""


class _Judgements(Sequence):
    """Sequence behaviour shared by TripletSet and PairSet: they differ only in the field holding the items."""

    _items_field: str

    def _items(self) -> tuple:
        return getattr(self, self._items_field)

    def __len__(self) -> int:
        return len(self._items())

    def __getitem__(self, i):  # type: ignore[no-untyped-def, override]
        if isinstance(i, slice):
            return dataclasses.replace(self, **{self._items_field: self._items()[i]})
        return self._items()[i]

    def __iter__(self) -> Iterator:
        return iter(self._items())


@dataclass(frozen=True)
class TripletSet(_Judgements, Sequence[Triplet]):
    """An ordered collection of triplets from one source and split.

    Attributes:
        name: dataset kind ("nights", "bapps", "triplets").
        split: the split these triplets come from ("all" when the source has no splits).
        source: the file or folder read.
        triplets: the judgements.
    """

    _items_field = "triplets"

    name: str
    split: str
    source: str
    triplets: tuple[Triplet, ...] = field(repr=False)

    def images(self) -> list[str]:
        """Every distinct image path, in order of first appearance."""
        return _unique(p for t in self.triplets for p in (t.ref, t.left, t.right))


@dataclass(frozen=True)
class PairSet(_Judgements, Sequence[Pair]):
    """An ordered collection of same/different pairs (see :class:`TripletSet` for the attributes)."""

    _items_field = "pairs"

    name: str
    split: str
    source: str
    pairs: tuple[Pair, ...] = field(repr=False)

    def images(self) -> list[str]:
        """Every distinct image path, in order of first appearance."""
        return _unique(p for q in self.pairs for p in (q.a, q.b))


def _unique(paths: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(paths))


def parse_fraction(value: str, *, where: str, column: str) -> float:
    """A float in [0, 1] from a CSV cell; ``ValueError`` naming ``where`` (file and line) otherwise."""
    try:
        x = float(value.strip())
    except (ValueError, AttributeError):
        raise DatasetError(f"{where}: column {column!r} = {value!r} is not a number (expected a value in [0, 1])"
                           ) from None
    if not math.isfinite(x) or not 0.0 <= x <= 1.0:
        raise DatasetError(f"{where}: column {column!r} = {value!r} is outside [0, 1]")
    return x


def resolve_image(base: Path, value: str, *, where: str, column: str, check: bool = True) -> str:
    """``value`` (relative to ``base`` unless absolute) as an absolute path; it must be an existing file."""
    v = (value or "").strip()
    if not v:
        raise DatasetError(f"{where}: column {column!r} is empty (expected an image path relative to {base})")
    p = Path(v).expanduser()
    if not p.is_absolute():
        p = base / p
    if check and not p.is_file():
        raise FileNotFoundError(f"{where}: column {column!r}: image {v!r} not found (looked for {p})")
    return os.fspath(p)


def open_csv(path: str | os.PathLike[str], required: Sequence[str]) -> tuple[Path, list[str], Iterator[list[str]]]:
    """Open a UTF-8 CSV with a header; check the ``required`` columns are there.

    Returns:
        (resolved path, header, iterator over the remaining rows; the file is read whole and closed).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not UTF-8, empty, or a required column is missing or repeated (line 1 named).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"CSV file {p} not found")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{p}: not a UTF-8 text file ({e})") from None
    rows = csv.reader(text.splitlines())
    try:
        header = [h.strip() for h in next(rows)]
    except StopIteration:
        raise DatasetError(f"{p}: empty file; expected a header line with columns {','.join(required)}") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise DatasetError(f"{p}, line 1: missing column(s) {', '.join(missing)}; the header must name "
                           f"{','.join(required)} (found {','.join(header) or 'nothing'})")
    dupes = sorted({c for c in header if header.count(c) > 1 and c})
    if dupes:
        raise DatasetError(f"{p}, line 1: column(s) {', '.join(dupes)} appear more than once")
    return p.resolve(), header, rows


def _cells(p: Path, header: list[str], row: list[str], line: int) -> dict[str, str]:
    if len(row) != len(header):
        raise DatasetError(f"{p}, line {line}: {len(row)} fields but the header has {len(header)}")
    return dict(zip(header, row, strict=True))


def read_triplet_csv(path: str | os.PathLike[str], split: str | None = None, *,
                     check_files: bool = True) -> TripletSet:
    """Read a triplet CSV: header ``ref,left,right,p`` (extra columns are ignored, except ``split``).

    Paths are relative to the CSV's folder (absolute paths are kept). ``p`` is the fraction of people who judged
    ``right`` closer to ``ref`` (0 or 1 for a single vote). An optional ``split`` column assigns rows to splits.

    Args:
        path: the CSV file.
        split: keep only rows whose ``split`` column equals this (needs the column); None or "all": every row.
        check_files: check that every image exists.

    Returns:
        A TripletSet (ids are the CSV line numbers).

    Raises:
        FileNotFoundError: the CSV or an image is missing (the message names the line).
        ValueError: a missing column, a bad value, or an unknown split (the message names the line or the splits).
    """
    p, header, rows = open_csv(path, TRIPLET_COLUMNS)
    if split not in (None, ALL_SPLIT) and "split" not in header:
        raise DatasetError(f"{p}: split {split!r} requested but the CSV has no 'split' column")
    base = p.parent
    out: list[Triplet] = []
    seen_splits: set[str] = set()
    for line, row in enumerate(rows, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        where = f"{p}, line {line}"
        cells = _cells(p, header, row, line)
        if split not in (None, ALL_SPLIT):
            s = cells["split"].strip()
            seen_splits.add(s)
            if s != split:
                continue
        out.append(Triplet(
            ref=resolve_image(base, cells["ref"], where=where, column="ref", check=check_files),
            left=resolve_image(base, cells["left"], where=where, column="left", check=check_files),
            right=resolve_image(base, cells["right"], where=where, column="right", check=check_files),
            p=parse_fraction(cells["p"], where=where, column="p"),
            id=str(line),
        ))
    if split not in (None, ALL_SPLIT) and not out:
        raise DatasetError(f"{p}: no rows with split {split!r}; splits present: {sorted(seen_splits) or 'none'}")
    if not out:
        raise DatasetError(f"{p}: no triplets (only a header)")
    _logger.info("read %d triplets from %s", len(out), p)
    return TripletSet("triplets", split or ALL_SPLIT, os.fspath(p), tuple(out))


def triplet_csv_splits(path: str | os.PathLike[str]) -> list[str]:
    """The values of the ``split`` column of a triplet CSV, in order of appearance (["all"] without one)."""
    p, header, rows = open_csv(path, TRIPLET_COLUMNS)
    if "split" not in header:
        return [ALL_SPLIT]
    k = header.index("split")
    return _unique(r[k].strip() for r in rows if len(r) > k and r[k].strip())


def read_pairs_csv(path: str | os.PathLike[str], *, check_files: bool = True) -> PairSet:
    """Read a same/different pairs CSV: header ``a,b,same`` with ``same`` in [0, 1] (1 = judged the same).

    Paths are relative to the CSV's folder. Extra columns are ignored.

    Raises:
        FileNotFoundError: the CSV or an image is missing (the message names the line).
        ValueError: a missing column or a bad value (the message names the line).
    """
    p, header, rows = open_csv(path, PAIR_COLUMNS)
    base = p.parent
    out: list[Pair] = []
    for line, row in enumerate(rows, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        where = f"{p}, line {line}"
        cells = _cells(p, header, row, line)
        out.append(Pair(
            a=resolve_image(base, cells["a"], where=where, column="a", check=check_files),
            b=resolve_image(base, cells["b"], where=where, column="b", check=check_files),
            same=parse_fraction(cells["same"], where=where, column="same"),
            id=str(line),
        ))
    if not out:
        raise DatasetError(f"{p}: no pairs (only a header)")
    _logger.info("read %d pairs from %s", len(out), p)
    return PairSet("pairs", ALL_SPLIT, os.fspath(p), tuple(out))


# --- BAPPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric") ---------

_BAPPS_2AFC_DIRS = ("ref", "p0", "p1", "judge")
_BAPPS_JND_DIRS = ("p0", "p1", "same")


def _is_leaf(folder: Path, dirs: Sequence[str]) -> bool:
    return all((folder / d).is_dir() for d in dirs)


def bapps_splits(root: str | os.PathLike[str], kind: str = "2afc") -> list[str]:
    """The BAPPS subsets under ``root``: relative folder names holding ``ref/ p0/ p1/ judge/`` (2afc) or
    ``p0/ p1/ same/`` (jnd), e.g. ``["val/cnn", "val/traditional"]``; ``["all"]`` when ``root`` itself is one."""
    dirs = _BAPPS_2AFC_DIRS if kind == "2afc" else _BAPPS_JND_DIRS
    r = Path(root).expanduser()
    if not r.is_dir():
        raise FileNotFoundError(f"BAPPS folder {r} not found")
    if _is_leaf(r, dirs):
        return [ALL_SPLIT]
    found = sorted(d.relative_to(r).as_posix() for d in r.rglob("*") if d.is_dir() and _is_leaf(d, dirs))
    if not found:
        raise DatasetError(f"{r}: no BAPPS {kind} folders (a folder holding {'/, '.join(dirs)}/) found here or below")
    return found


def _read_judgement(path: Path, where: str) -> float:
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:
        raise DatasetError(f"{where}: cannot read {path} as a .npy array ({e})") from None
    arr = np.asarray(arr, dtype=np.float64).reshape(-1)
    if arr.size != 1:
        raise DatasetError(f"{where}: {path} holds {arr.size} values; expected one judgement in [0, 1]")
    x = float(arr[0])
    if not math.isfinite(x) or not 0.0 <= x <= 1.0:
        raise DatasetError(f"{where}: {path} holds {x}, outside [0, 1]")
    return x


def _bapps_items(folder: Path, image_dirs: Sequence[str], judge_dir: str) -> Iterator[tuple[str, list[str], float]]:
    judge = folder / judge_dir
    stems = sorted(f.stem for f in judge.iterdir() if f.suffix == ".npy")
    if not stems:
        raise DatasetError(f"{judge}: no .npy judgement files")
    listings = {d: {f.stem: f for f in (folder / d).iterdir() if f.is_file()} for d in image_dirs}
    for stem in stems:
        where = f"{folder}, item {stem!r}"
        paths = []
        for d in image_dirs:
            f = listings[d].get(stem)
            if f is None:
                raise FileNotFoundError(f"{where}: no image named {stem}.* in {folder / d}/ for {judge / stem}.npy")
            paths.append(os.fspath(f.resolve()))
        yield stem, paths, _read_judgement(judge / f"{stem}.npy", where)


def _bapps_folder(root: str | os.PathLike[str], split: str | None, kind: str) -> tuple[Path, str]:
    r = Path(root).expanduser()
    splits = bapps_splits(r, kind)
    if split in (None, ALL_SPLIT):
        if splits != [ALL_SPLIT] and len(splits) > 1:
            raise DatasetError(f"{r} holds several BAPPS subsets ({', '.join(splits)}); choose one with split=")
        s = splits[0]
    elif split in splits:
        s = split
    else:
        raise DatasetError(f"{r}: unknown BAPPS subset {split!r}; available: {', '.join(splits)}")
    return (r if s == ALL_SPLIT else r / s), s


def read_bapps_2afc(root: str | os.PathLike[str], split: str | None = None) -> TripletSet:
    """Read a BAPPS 2AFC folder: ``ref/``, ``p0/``, ``p1/`` images and ``judge/*.npy`` (fraction preferring p1).

    Args:
        root: a folder holding ``ref/ p0/ p1/ judge/``, or a parent of several (e.g. ``2afc/val``).
        split: the subset (relative folder, e.g. "cnn" or "val/cnn") when ``root`` holds several.

    Returns:
        A TripletSet with left = p0, right = p1, p = judge.

    Raises:
        FileNotFoundError: the folder, or an image for a judgement, is missing (named with its item).
        ValueError: a bad judgement file or an ambiguous / unknown subset.
    """
    folder, s = _bapps_folder(root, split, "2afc")
    out = [Triplet(ref=ps[0], left=ps[1], right=ps[2], p=j, id=stem)
           for stem, ps, j in _bapps_items(folder, ("ref", "p0", "p1"), "judge")]
    _logger.info("read %d BAPPS 2AFC triplets from %s", len(out), folder)
    return TripletSet("bapps", s, os.fspath(folder.resolve()), tuple(out))


def read_bapps_jnd(root: str | os.PathLike[str], split: str | None = None) -> PairSet:
    """Read a BAPPS JND folder: ``p0/``, ``p1/`` images and ``same/*.npy`` (fraction judging them the same).

    Args:
        root: a folder holding ``p0/ p1/ same/``, or a parent of several (e.g. ``jnd/val``).
        split: the subset when ``root`` holds several.

    Raises:
        FileNotFoundError: the folder, or an image for a judgement, is missing (named with its item).
        ValueError: a bad judgement file or an ambiguous / unknown subset.
    """
    folder, s = _bapps_folder(root, split, "jnd")
    out = [Pair(a=ps[0], b=ps[1], same=j, id=stem) for stem, ps, j in _bapps_items(folder, ("p0", "p1"), "same")]
    _logger.info("read %d BAPPS JND pairs from %s", len(out), folder)
    return PairSet("bapps_jnd", s, os.fspath(folder.resolve()), tuple(out))


def holdout_split(triplets: TripletSet, fraction: float = 0.1, *, seed: int = 0) -> tuple[TripletSet, TripletSet]:
    """Split triplets into (train, held-out) at random, grouping triplets that share a reference image so that
    no reference appears on both sides.

    Args:
        triplets: the triplets to split.
        fraction: share of reference images held out, in (0, 1).
        seed: random seed.

    Returns:
        (train, val) TripletSets with splits "train" and "val".
    """
    if not 0.0 < fraction < 1.0:
        raise DatasetError(f"the held-out fraction must be in (0, 1), got {fraction}")
    refs = list(dict.fromkeys(t.ref for t in triplets))
    if len(refs) < 2:
        raise DatasetError(f"{triplets.source}: need triplets with at least 2 different reference images to hold some "
                           f"out (found {len(refs)})")
    rng = np.random.default_rng(seed)
    n_val = min(len(refs) - 1, max(1, round(fraction * len(refs))))
    held = {refs[i] for i in rng.permutation(len(refs))[:n_val]}
    train = tuple(t for t in triplets if t.ref not in held)
    val = tuple(t for t in triplets if t.ref in held)
    return (TripletSet(triplets.name, "train", triplets.source, train),
            TripletSet(triplets.name, "val", triplets.source, val))
