"""Dedup decisions that stick: a person's "same" / "different" verdict on a pair of images, kept in the catalog.

A label is keyed by the content of the two files (``sha256:<hex>`` of each), not by their paths, so it survives
moves and renames and applies to every copy of the same bytes. Images without a content hash in the catalog
(embeddings imported without their files) are keyed by their absolute path (``path:<path>``) instead: their labels
hold until the file is moved or renamed.

The ``dedup_labels`` table is added to an existing catalog by the first writer of a label (``add_labels``: a short
write under the index's writer lock); readers treat a missing table as "no labels" and never create it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import DateTime, Float, String, Text, inspect, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, Session, mapped_column

from lookalike.common.errors import InvalidArgument
from lookalike.common.io import sha256_file
from lookalike.indexer._catalog import Base, Catalog, ImageRow, VectorRow, utcnow
from lookalike.indexer._writer import writer_lock

if TYPE_CHECKING:
    from lookalike.indexer._index import ImageIndex

_logger = logging.getLogger(__name__)

#: Where a label came from.
LABEL_SOURCES = ("cli", "csv", "app", "service", "python")


class LabelRow(Base):
    """One verdict on a pair of images, keyed by content (``key_a < key_b``)."""

    __tablename__ = "dedup_labels"
    key_a: Mapped[str] = mapped_column(String(600), primary_key=True)  # "sha256:<hex>" or "path:<absolute path>"
    key_b: Mapped[str] = mapped_column(String(600), primary_key=True)
    same: Mapped[float] = mapped_column(Float)  # 1 = the same picture (duplicates), 0 = different; fractions allowed
    path_a: Mapped[str] = mapped_column(Text)  # the paths when labelled (for people; the keys decide)
    path_b: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16))
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


@dataclass(frozen=True)
class Label:
    """A stored verdict on a pair of images.

    Attributes:
        key_a / key_b: content keys (``sha256:<hex>``, or ``path:<path>`` for images without a hash), ``key_a`` <
            ``key_b``.
        same: 1.0 = the same picture, 0.0 = different pictures (a fraction when several people judged).
        path_a / path_b: the files' paths when the label was given.
        source: "cli", "csv", "app", "service" or "python".
        updated: when the verdict was last set (UTC).
    """

    key_a: str
    key_b: str
    same: float
    path_a: str
    path_b: str
    source: str
    updated: str

    @property
    def is_same(self) -> bool:
        return self.same >= 0.5

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class LabelSummary:
    """What ``add_labels`` stored: ``added`` new pairs, ``changed`` verdicts replaced, ``unchanged`` ones."""

    added: int = 0
    changed: int = 0
    unchanged: int = 0
    unindexed: list[str] | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def image_key(sha256: str | None, path: str) -> str:
    """The content key of an image: ``sha256:<hex>``, or ``path:<absolute path>`` when there is no hash."""
    return f"sha256:{sha256}" if sha256 else f"path:{path}"


def pair_key(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def has_labels_table(engine: Engine) -> bool:
    return inspect(engine).has_table(LabelRow.__tablename__)


def read_labels(catalog: Catalog) -> list[Label]:
    """Every stored label, most recent first; empty when the catalog has no labels table (never writes)."""
    if not has_labels_table(catalog.engine):
        return []
    with catalog.session() as s:
        return [_row_label(r) for r in s.scalars(select(LabelRow).order_by(LabelRow.updated.desc(), LabelRow.key_a,
                                                                            LabelRow.key_b))]


def _row_label(r: LabelRow) -> Label:
    return Label(key_a=r.key_a, key_b=r.key_b, same=float(r.same), path_a=r.path_a, path_b=r.path_b,
                 source=r.source, updated=r.updated.isoformat(timespec="seconds") if r.updated else "")


def list_labels(index_dir: str | os.PathLike[str], *, db_url: str | None = None) -> list[Label]:
    """Every stored label of an index folder, most recent first (read only).

    Raises:
        FileNotFoundError: no index there.
    """
    with Catalog(index_dir, db_url=db_url, create=False) as cat:
        return read_labels(cat)


def _find_image(s: Session, path: str) -> ImageRow | None:
    """The catalog row of ``path``: an absolute path, else a path relative to an indexed root (unique)."""
    row = s.scalar(select(ImageRow).where(ImageRow.path_raw == os.fsencode(os.path.abspath(path))))
    if row is None and not os.path.isabs(path):
        rows = list(s.scalars(select(ImageRow).where(ImageRow.relpath == path.replace(os.sep, "/")).limit(2)))
        if len(rows) > 1:
            raise InvalidArgument(f"{path!r} is indexed under several roots", hint="give the full path")
        row = rows[0] if rows else None
    return row


def resolve_keys(catalog: Catalog, paths: Iterable[str]) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """{path: (content key, absolute path)} for each path, and the paths found on disk but not in the catalog.

    A catalogued image gives its stored hash (or its path when it has none); a file that is not catalogued but
    exists is hashed now (its label applies once it is indexed).

    Raises:
        FileNotFoundError: a path is neither in the catalog nor an existing file.
    """
    out: dict[str, tuple[str, str]] = {}
    unindexed: list[str] = []
    missing: list[str] = []
    with catalog.session() as s:
        for p in dict.fromkeys(paths):
            row = _find_image(s, p)
            if row is not None:
                out[p] = (image_key(row.sha256, row.path), row.path)
                continue
            full = os.path.abspath(p)
            if os.path.isfile(full):
                out[p] = (image_key(sha256_file(full), full), full)
                unindexed.append(full)
            else:
                missing.append(p)
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise FileNotFoundError(f"not in the index {catalog.index_dir} and not a file: {shown}")
    return out, unindexed


def add_labels(
    index_dir: str | os.PathLike[str],
    pairs: Iterable[tuple[str, str, float]],
    *,
    db_url: str | None = None,
    source: str = "python",
) -> LabelSummary:
    """Record verdicts on pairs of images: ``same`` 1 = duplicates, 0 = different pictures (fractions allowed).

    A new verdict on a pair replaces the old one. This is a short write: it takes the index's writer lock (failing
    at once when an indexing run holds it, so nothing waits behind a long run), creates the labels table when the
    catalog has none yet and commits every pair in one transaction.

    Args:
        index_dir: the index folder.
        pairs: (path a, path b, same); a path is absolute, relative to the working directory, or relative to an
            indexed root.
        db_url: catalog URL when it is not the SQLite file in the folder.
        source: who gave the verdicts (one of ``LABEL_SOURCES``).

    Returns:
        A LabelSummary (files hashed because they are not indexed are listed in ``unindexed``).

    Raises:
        FileNotFoundError: no index there, or a path that is neither indexed nor a file.
        ValueError: ``same`` outside [0, 1], a pair of one file with itself or of two identical files, or an unknown
            source.
        IndexLocked: an indexing run holds the writer lock.
    """
    if source not in LABEL_SOURCES:
        raise InvalidArgument(f"unknown label source {source!r}; choose from {', '.join(LABEL_SOURCES)}")
    todo = [(os.fspath(a), os.fspath(b), float(v)) for a, b, v in pairs]
    if not todo:
        raise InvalidArgument("no pairs to label")
    for a, b, v in todo:
        if not 0.0 <= v <= 1.0:
            raise InvalidArgument(f"label of ({a}, {b}) is {v}; 'same' must be in [0, 1] (1 = same, 0 = different)")
    index_dir = Path(index_dir)
    summary = LabelSummary()
    with Catalog(index_dir, db_url=db_url, create=False) as cat, writer_lock(index_dir):
        keys, summary.unindexed = resolve_keys(cat, [p for a, b, _ in todo for p in (a, b)])
        LabelRow.__table__.create(cat.engine, checkfirst=True)  # type: ignore[attr-defined]
        now = utcnow()
        with cat.sessions.begin() as s:
            for a, b, v in todo:
                (ka, pa), (kb, pb) = keys[a], keys[b]
                if ka == kb:
                    what = "is the same file" if pa == pb else "has the same content (an exact copy)"
                    raise InvalidArgument(f"{a} and {b}: the pair {what}; a label needs two different pictures")
                if kb < ka:
                    (ka, pa), (kb, pb) = (kb, pb), (ka, pa)
                row = s.get(LabelRow, (ka, kb))
                if row is None:
                    s.add(LabelRow(key_a=ka, key_b=kb, same=v, path_a=pa, path_b=pb, source=source, created=now,
                                   updated=now))
                    summary.added += 1
                elif float(row.same) != v:
                    row.same, row.path_a, row.path_b, row.source, row.updated = v, pa, pb, source, now
                    summary.changed += 1
                else:
                    summary.unchanged += 1
    _logger.info("labels in %s: %d added, %d changed, %d unchanged", index_dir, summary.added, summary.changed,
                 summary.unchanged)
    return summary


def ids_of_keys(index: ImageIndex, keys: set[str]) -> dict[str, list[int]]:
    """{content key: FAISS ids of the index's images with that key} (read only)."""
    shas = sorted(k[len("sha256:"):] for k in keys if k.startswith("sha256:"))
    paths = sorted(os.fsencode(k[len("path:"):]) for k in keys if k.startswith("path:"))
    out: dict[str, list[int]] = defaultdict(list)
    base = (select(VectorRow.faiss_id, ImageRow.sha256, ImageRow.path_raw)
            .join(ImageRow, ImageRow.id == VectorRow.image_id).where(VectorRow.fingerprint == index.fingerprint))
    with index.catalog.session() as s:
        for col, values in ((ImageRow.sha256, shas), (ImageRow.path_raw, paths)):
            for start in range(0, len(values), 500):
                for fid, sha, raw in s.execute(base.where(col.in_(values[start:start + 500]))):
                    out[image_key(sha, os.fsdecode(raw))].append(int(fid))
    return out


def labelled_distances(index: ImageIndex) -> tuple[list[float], list[float], int]:
    """Distances of the labelled pairs whose two images are in ``index``: (distances, same verdicts, labels left out
    because an image is not indexed for this metric). Where a content key has several copies, the closest pair of
    copies counts (read only)."""
    labels = read_labels(index.catalog)
    ids = ids_of_keys(index, {k for lb in labels for k in (lb.key_a, lb.key_b)})
    dist, same, missing = [], [], 0
    for lb in labels:
        ia = [i for i in ids.get(lb.key_a, ()) if i in index.vectors]
        ib = [i for i in ids.get(lb.key_b, ()) if i in index.vectors]
        if not ia or not ib:
            missing += 1
            continue
        xa, xb = index.vectors.vectors(ia), index.vectors.vectors(ib)
        dist.append(float(max(1.0 - float((xa @ xb.T).max()), 0.0)))
        same.append(lb.same)
    return dist, same, missing


def read_decisions_csv(path: str | os.PathLike[str]) -> list[tuple[str, str, float]]:
    """Pairs from a decisions CSV with the header ``a,b,same`` (paths relative to the CSV's folder or to an indexed
    root; ``same`` 1 = duplicates, 0 = different, or a fraction in [0, 1]).

    Raises:
        FileNotFoundError: no such CSV.
        ValueError: a missing column or a bad value (the message names the line).
    """
    from lookalike.data.triplets import read_pairs_csv

    base = Path(path).expanduser().parent
    out = []
    for q in read_pairs_csv(path, check_files=False):
        a, b = (v if os.path.exists(v) else os.path.relpath(v, base) for v in (q.a, q.b))
        out.append((a, b, float(q.same)))
    return out
