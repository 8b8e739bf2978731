"""Public read models of an index: what the app and the CLI may see of the catalog and of a search, as plain frozen
dataclasses.

The SQLAlchemy rows (``lookalike.indexer._catalog``) stay private: they are converted here, so a schema change
never reaches a caller.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ImageInfo:
    """One catalogued image file.

    Attributes:
        id: catalog id (also its FAISS id).
        path: absolute path, as ``open`` accepts it.
        relpath: POSIX path relative to ``root`` (printable).
        root: the indexed root folder.
        status: "pending", "ok" or "failed".
        error: why it failed (None unless failed).
        width: pixel width once decoded (None before).
        height: pixel height once decoded (None before).
        format: the decoder's format name ("JPEG", "PNG", ...).
        size: file size in bytes.
        mtime_ns: modification time of the file when it was catalogued (ns).
        sha256: content hash (None when the file could not be read).
    """

    id: int
    path: str
    relpath: str
    root: str
    status: str
    error: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    size: int = 0
    mtime_ns: int = 0
    sha256: str | None = None

    @classmethod
    def from_row(cls, row: Any) -> ImageInfo:
        return cls(id=int(row.id), path=os.fsdecode(row.path_raw), relpath=row.relpath, root=row.root,
                   status=row.status, error=row.error, width=row.width, height=row.height, format=row.format,
                   size=int(row.size or 0), mtime_ns=int(row.mtime_ns or 0), sha256=row.sha256)


@dataclass(frozen=True)
class BuildInfo:
    """One metric's vectors in an index folder.

    Attributes:
        fingerprint: the metric's weight fingerprint (vectors of different fingerprints never mix).
        metric: the metric name.
        dim: vector width.
        factory: the FAISS type asked for ("auto", "Flat", "IVF4096,PQ64", ...).
        current_factory: the FAISS type the file holds now (Flat until a trained type has enough vectors).
        count: vectors indexed.
        dedup_threshold: the stored default dedup distance, or None.
    """

    fingerprint: str
    metric: str
    dim: int
    factory: str
    current_factory: str
    count: int
    dedup_threshold: float | None = None

    @classmethod
    def from_row(cls, row: Any) -> BuildInfo:
        return cls(fingerprint=row.fingerprint, metric=row.metric, dim=int(row.dim), factory=row.factory,
                   current_factory=row.current_factory, count=int(row.count or 0),
                   dedup_threshold=None if row.dedup_threshold is None else float(row.dedup_threshold))


@dataclass(frozen=True)
class Hit:
    """One search result.

    Attributes:
        path: absolute path of the indexed file.
        distance: 1 - cosine of the index metric's embeddings, in [0, 2]; lower means more similar.
        relpath: path relative to its indexed root (POSIX).
        root: the indexed root folder.
        image_id: catalog id.
        scored_by: the metric that ordered the results: the index metric, or the re-ranker after
            ``search(..., rerank=NAME)``; "" when unknown.
        score: the value under ``scored_by`` (equal to ``distance`` without a re-ranker), in that metric's unit.
        lower_is_better: the direction of ``score`` (False for similarities such as DiffSim, SSIM, PSNR).
    """

    path: str
    distance: float
    relpath: str = ""
    root: str = ""
    image_id: int = -1
    scored_by: str = ""
    score: float | None = None
    lower_is_better: bool = True

    def __post_init__(self) -> None:
        if self.score is None:
            object.__setattr__(self, "score", self.distance)

    def as_dict(self) -> dict:
        """JSON-ready (a non-finite score, e.g. PSNR +inf for an identical image, becomes a string such as "inf")."""
        d = asdict(self)
        if d["score"] is not None and not math.isfinite(d["score"]):
            d["score"] = str(d["score"])
        return d
