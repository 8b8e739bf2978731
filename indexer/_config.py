"""The options of a build, typed: one dataclass for what every writer shares, one per source for the rest.

``BuildConfig`` holds the options the writer session uses whatever feeds it (``lookalike index``, ``import``, the Ray
path, ``check --repair``): the search structure, vector storage, memory budget, compaction, checkpoints, the stored
dedup threshold and the catalog URL. ``lookalike index`` and ``lookalike import`` take these under the same flag
names. Each source has its own small options object: ``EmbedOptions`` (scan + embed: device, precision, batches,
decoding, Ray) and ``ImportOptions`` (the embeddings readers and how rows land). All are frozen and validated when
made; overrides are ``dataclasses.replace``. A misspelt option is a TypeError, never a silent default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from lookalike.common.errors import InvalidArgument
from lookalike.data.images import DEFAULT_MAX_PIXELS
from lookalike.indexer._catalog import check_dedup_threshold
from lookalike.indexer._structure import storage_dtype
from lookalike.indexer._util import parse_memory

#: Default share of tombstoned rows at which a shard is rewritten.
DEFAULT_COMPACT_AT = 0.25
#: The metric ``lookalike index`` uses for a new index when none is named.
DEFAULT_METRIC = "dreamsim"
#: Embedding layouts ``import`` reads ("auto" tells them apart).
FORMATS = ("auto", "npy", "parquet", "clip-retrieval")
#: Rows read per chunk of an embeddings file.
DEFAULT_CHUNK_ROWS = 65_536


@dataclass(frozen=True)
class BuildConfig:
    """Build options shared by every writer.

    Attributes:
        faiss: the search structure derived from the shards of a new build: "auto" / None (chosen from
            ``max_memory`` by ``_structure.choose_structure``: exact up to 50k vectors that fit it; beyond, an
            inverted file of about sqrt(n) memory-mapped lists of 8-bit codes, or PQ codes under a budget, re-ranked
            from the shards), "Flat" (an exact scan of the memory-mapped shards) or a
            FAISS factory string ("HNSW32", "IVF4096,Flat", "IVF4096,SQ8", "IVF4096,PQ64"). Trained types are
            trained on a sample once enough vectors are indexed (exact search until then). An existing build keeps
            its own; naming another is an error.
        storage: vector storage of a new build: "fp32" / "float32" (default) or "fp16" / "float16" (half the disk
            and page cache; distances change by ~1e-3, see the README); stored as "float32" / "float16". Naming
            another than an existing build's is an error.
        max_memory: memory budget of the search structure in bytes, or text such as "4G" / "512M" (stored as bytes
            with the build and used to choose the structure, see ``faiss``; ``index_info`` reports the choice and
            why).
        compact_at: rewrite a shard once this share of its rows is tombstoned (removed or re-embedded images), in
            (0, 1].
        dedup_threshold: store this distance (1 - cosine, in [0, 2]) as the build's default ``find_duplicates``
            threshold.
        checkpoint_every: items between checkpoints (one shard file + one catalog commit each); 0 = every batch
            handed to the writer; None = the source's default (images: every 65,536 or 30 s, whichever comes
            first; imported rows: one shard per chunk read).
        db_url: SQLAlchemy URL of the catalog (default: ``catalog.sqlite`` in the index folder).
    """

    faiss: str | None = None
    storage: str | None = None
    max_memory: int | str | None = None
    compact_at: float = DEFAULT_COMPACT_AT
    dedup_threshold: float | None = None
    checkpoint_every: int | None = None
    db_url: str | None = None

    def __post_init__(self) -> None:
        if self.faiss is not None:
            object.__setattr__(self, "faiss", self.faiss.strip() or None)
        if self.storage is not None:
            object.__setattr__(self, "storage", storage_dtype(self.storage))
        object.__setattr__(self, "max_memory", parse_memory(self.max_memory))
        if not 0.0 < self.compact_at <= 1.0:
            raise InvalidArgument(f"compact_at must be in (0, 1], got {self.compact_at}")
        if self.dedup_threshold is not None:
            object.__setattr__(self, "dedup_threshold", check_dedup_threshold(self.dedup_threshold))
        if self.checkpoint_every is not None and self.checkpoint_every < 0:
            raise InvalidArgument(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")

    @property
    def budget(self) -> int | None:
        """``max_memory`` in bytes."""
        return self.max_memory if isinstance(self.max_memory, int) else None


@dataclass(frozen=True)
class EmbedOptions:
    """How ``build_index`` (and a repair's re-embedding) decodes and embeds images; see ``build_index``."""

    device: str | None = None
    dtype: str | None = "auto"
    batch_size: int | None = None
    workers: int | None = None
    threads: int | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    fast_decode: bool = False
    ray: bool | str | None = None
    crash_at: str | None = None
    follow_links: bool = False

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise InvalidArgument(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class ImportOptions:
    """How ``import_embeddings`` reads embeddings and lands their rows; see ``import_embeddings``."""

    format: str = "auto"
    paths: str | os.PathLike[str] | None = None
    path_column: str | None = None
    vector_column: str | None = None
    root: str | os.PathLike[str] | None = None
    normalize: bool = False
    check_files: bool = True
    chunk_rows: int = DEFAULT_CHUNK_ROWS

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise InvalidArgument(f"unknown embeddings format {self.format!r}; choose from {', '.join(FORMATS)}")
        if self.chunk_rows < 1:
            raise InvalidArgument(f"chunk_rows must be >= 1, got {self.chunk_rows}")
