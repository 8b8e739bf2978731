"""Tiers of a duplicate pair: ``exact`` (the same bytes), ``near`` (a near copy: resized, re-encoded, lightly
cropped or recoloured) and ``similar`` (within the dedup threshold, but farther than a near copy).

``exact`` is decided by the content hash (sha256) the catalog keeps for every indexed file; an image without a hash
(imported embeddings) falls back to identical vectors (distance below ``EXACT_DISTANCE``). ``near`` ends at a
per-metric distance, looked up in this order: the boundary stored in the catalog for the build (``set_tiers``, which
``lookalike calibrate --index`` calls), then the default measured for the metric (``MetricCfg.dedup_tiers``, from
``bench/dedup_tiers.py``; see docs/dedup.md), else none: without a boundary nothing is called ``near``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from sqlalchemy import DateTime, Float, String, Text, inspect
from sqlalchemy.orm import Mapped, mapped_column

from lookalike.common.errors import InvalidArgument, UnknownName
from lookalike.indexer._catalog import Base, BuildRow, Catalog, utcnow
from lookalike.indexer._writer import writer_lock

if TYPE_CHECKING:
    from lookalike.indexer._index import ImageIndex

_logger = logging.getLogger(__name__)

TIERS = ("exact", "near", "similar")
#: Vectors closer than this are identical (the exact tier of images without a content hash).
EXACT_DISTANCE = 1e-6


class TierRow(Base):
    """The tier boundaries of one build (metric fingerprint), set by a person or learned from their labels."""

    __tablename__ = "dedup_tiers"
    fingerprint: Mapped[str] = mapped_column(String(128), primary_key=True)
    near: Mapped[float] = mapped_column(Float)  # largest distance of a near copy
    similar: Mapped[float | None] = mapped_column(Float)  # a threshold that also shows similar photos (advice)
    source: Mapped[str] = mapped_column(Text)
    updated: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


@dataclass(frozen=True)
class TierBounds:
    """Where the tiers of one build's pairs end (distances, 1 - cosine; lower = more similar).

    Attributes:
        near: largest distance of a ``near`` pair; None when the metric has no measured or calibrated boundary.
        similar: a threshold that shows similar (not copied) photos too, where measured; advice only.
        source: where the numbers come from ("calibrated ...", "measured default of efficientnet_lite0 ...",
            or "none").
    """

    near: float | None
    similar: float | None = None
    source: str = "none"

    def tier(self, distance: float, same_content: bool | None) -> str:
        """``exact`` / ``near`` / ``similar`` of a pair at ``distance``; ``same_content`` None = a hash is missing."""
        if same_content or (same_content is None and distance <= EXACT_DISTANCE):
            return "exact"
        if self.near is not None and distance <= self.near:
            return "near"
        return "similar"

    def as_dict(self) -> dict:
        return asdict(self)


def metric_default(metric: str) -> TierBounds:
    """The measured default of a registered metric (``MetricCfg.dedup_tiers``), or no boundary."""
    from lookalike.metric import get_metric_cfg

    try:
        cfg = get_metric_cfg(metric)
    except (UnknownName, KeyError):
        return TierBounds(None, None, f"none: metric {metric!r} is not registered here")
    t = getattr(cfg, "dedup_tiers", None)
    if t is None:
        return TierBounds(None, None, f"none: no near-copy boundary measured for {metric}")
    return TierBounds(float(t.near), None if t.similar is None else float(t.similar),
                      f"measured default of {metric} ({t.measured})" if t.measured else f"measured default of {metric}")


def get_tiers(catalog: Catalog, build: BuildRow) -> TierBounds:
    """The tier boundaries of ``build``: stored in the catalog, else the metric's measured default (read only)."""
    if inspect(catalog.engine).has_table(TierRow.__tablename__):
        with catalog.session() as s:
            row = s.get(TierRow, build.fingerprint)
        if row is not None:
            return TierBounds(float(row.near), None if row.similar is None else float(row.similar), row.source)
    return metric_default(build.metric)


def get_tier_bounds(index: ImageIndex) -> TierBounds:
    """The tier boundaries an open index's dedup uses: stored in its catalog, else the metric's measured default."""
    return get_tiers(index.catalog, index.build)


def set_tiers(index_dir: str | os.PathLike[str], near: float, *, similar: float | None = None,
              threshold: float | None = None, metric: str | None = None, db_url: str | None = None,
              source: str = "set by hand") -> str:
    """Store the tier boundaries of one metric's vectors in an index (a short write under the writer lock).

    Args:
        index_dir: the index folder.
        near: largest distance (1 - cosine, in [0, 2]) of a near copy.
        similar: optionally, a larger distance that also shows similar photos (advice shown to users).
        threshold: optionally, also store this as the index's default dedup threshold for the metric.
        metric: metric name or fingerprint; None when the folder holds one metric.
        db_url: catalog URL when it is not the SQLite file in the folder.
        source: how the numbers were found (shown with every report).

    Returns:
        The fingerprint of the build.

    Raises:
        ValueError: a distance out of range, or ``similar`` below ``near``.
        IndexLocked: an indexing run holds the writer lock.
    """
    from lookalike.indexer._index import select_build

    for name, v in (("near", near), ("similar", similar), ("threshold", threshold)):
        if v is not None and not 0.0 <= v <= 2.0:
            raise InvalidArgument(f"tier boundary {name} = {v} is outside [0, 2] (the distance is 1 - cosine)")
    if similar is not None and similar < near:
        raise InvalidArgument(f"the similar boundary {similar} is below the near one {near}")
    with Catalog(index_dir, db_url=db_url, create=False) as cat, writer_lock(index_dir):
        build = select_build(cat.builds(), metric, index_dir)
        TierRow.__table__.create(cat.engine, checkfirst=True)  # type: ignore[attr-defined]
        with cat.sessions.begin() as s:
            row = s.get(TierRow, build.fingerprint)
            if row is None:
                s.add(TierRow(fingerprint=build.fingerprint, near=near, similar=similar, source=source,
                              updated=utcnow()))
            else:
                row.near, row.similar, row.source, row.updated = near, similar, source, utcnow()
        if threshold is not None:
            cat.set_dedup_threshold(build.fingerprint, threshold)
        _logger.info("tiers of %s in %s: near <= %.4g (%s)", build.metric, index_dir, near, source)
        return build.fingerprint


@dataclass(frozen=True)
class LabelledDistances:
    """The stored labels of an index as (distance, verdict) pairs for one metric's vectors.

    Attributes:
        metric / fingerprint: the build whose vectors gave the distances.
        distances: 1 - cosine of each labelled pair whose two images are indexed (the closest copies).
        same: the verdicts (1 = same picture, 0 = different), aligned with ``distances``.
        left_out: labels with an image that is not indexed for this metric.
    """

    metric: str
    fingerprint: str
    distances: list[float]
    same: list[float]
    left_out: int


def labelled_distances(index_dir: str | os.PathLike[str], *, metric: str | None = None,
                       db_url: str | None = None) -> LabelledDistances:
    """Distances, under the index's own vectors, of the pairs a person labelled (read only; no model is loaded).

    Raises:
        FileNotFoundError: no index there.
        ValueError: no labels, or none of them on two indexed images.
    """
    from lookalike.indexer._index import open_index
    from lookalike.indexer._labels import labelled_distances as from_index

    with open_index(index_dir, metric=metric, db_url=db_url) as ix:
        dist, same, left_out = from_index(ix)
        out = LabelledDistances(ix.build.metric, ix.fingerprint, dist, same, left_out)
    if not dist:
        raise InvalidArgument(f"the index {index_dir} holds no labelled pair of indexed images"
                              + (f" ({left_out} labels name images it does not index)" if left_out else ""),
                              hint="label pairs first: lookalike label --index DIR --same A B / --different A B")
    return out
