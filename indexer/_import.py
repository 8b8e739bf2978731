"""``lookalike import``: embeddings computed elsewhere land in an index as shards, like any others.

Three layouts are read (``format="auto"`` tells them apart):

* ``npy``: one ``.npy`` file or a folder of them (natural name order), (rows, dim) float arrays, plus the image
  paths, one per line: ``<stem>.paths.txt`` (or ``<stem>.txt``) beside each shard, or one paths file for all of
  them in order (``paths=``, default ``paths.txt`` in the folder);
* ``parquet``: one ``.parquet`` file or a folder of them, with a path column and a vector column (a list of
  floats per row); the names default to the first of ``path`` / ``image_path`` / ``filepath`` and of ``vector`` /
  ``embedding`` / ``emb``;
* ``clip-retrieval``: the layout ``clip-retrieval inference`` writes: ``img_emb/img_emb_N.npy`` row-aligned with
  ``metadata/metadata_N.parquet`` (column ``image_path``).

Every row is checked before it lands: the dimension (the metric's, or the index's, or the first file's), finite
values, unit norm (within ``1e-3``; rows are normalised on the way in with ``normalize=True``), and whether the
image file exists (missing files are kept, with status "missing": their vectors are searchable, they cannot be
shown or re-embedded). Rows that cannot be used (NaN / inf, a zero vector) are catalogued as failed with the
reason, like an unreadable image. Each chunk of rows becomes one shard, written and committed with its image rows
under the same rules as ``build_index`` (shard files on disk before the catalog rows that point at them commit), so
an import killed at any moment loses at most the chunk in flight; re-running it skips the rows already imported.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import func, select, update

from lookalike.common.errors import IndexMismatch, InvalidArgument
from lookalike.data.image_folder import display_path, natural_key
from lookalike.indexer._catalog import (
    STATUS_FAILED,
    STATUS_OK,
    BuildRow,
    Catalog,
    ImageRow,
    StoreRow,
    VectorRow,
    utcnow,
)
from lookalike.indexer._migrate import migrate_if_needed
from lookalike.indexer._shards import ShardWriter, clean_orphans, writer_lock
from lookalike.indexer._store import parse_memory
from lookalike.indexer._upkeep import update_structure

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

_logger = logging.getLogger(__name__)

#: Catalog status of an imported vector whose image file was not found at import time.
STATUS_MISSING = "missing"

FORMATS = ("auto", "npy", "parquet", "clip-retrieval")
PATH_COLUMNS = ("path", "image_path", "filepath", "file", "filename")
VECTOR_COLUMNS = ("vector", "embedding", "emb", "embeddings")
#: Largest |norm - 1| accepted as a unit vector when ``normalize`` is False.
NORM_TOLERANCE = 1e-3
DEFAULT_CHUNK_ROWS = 65_536
_IN_CHUNK = 500  # parameters per IN (...) query
_IMAGES = ImageRow.__table__
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,100}$")


@dataclass
class Chunk:
    """Rows read from one input file: where they come from, their paths and vectors."""

    source: str
    offset: int
    paths: list[str]
    xb: np.ndarray


@dataclass
class ImportSummary:
    """What one ``import_embeddings`` run did.

    Attributes:
        files: input files read.
        rows: rows read.
        imported: vectors that landed in this run.
        skipped: rows whose image already had a vector of this build (a re-run resumes).
        duplicates: rows repeating a path seen earlier in the same chunk (the first one is kept).
        missing: imported rows whose image file does not exist (status "missing").
        rejected: rows that could not be used (not finite, zero vector): catalogued as failed with the reason.
        normalized: rows that were not unit vectors and were normalised (``normalize=True``).
        shards: shards written.
        total_vectors: live vectors of this build after the run.
        structure: the search structure derived from the shards ("exact" or a FAISS factory string).
        seconds: read (input files), check (row checks), write (shards + catalog), derive (search structure), total.
    """

    index_dir: str
    metric: str
    fingerprint: str
    dim: int = 0
    format: str = ""
    files: int = 0
    rows: int = 0
    imported: int = 0
    skipped: int = 0
    duplicates: int = 0
    missing: int = 0
    rejected: int = 0
    normalized: int = 0
    shards: int = 0
    total_vectors: int = 0
    structure: str = ""
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("read", "check", "write", "derive", "total"), 0.0))

    def as_dict(self) -> dict:
        return asdict(self)

    def format_text(self) -> str:
        """A short human summary (what the CLI prints)."""
        s = self.seconds
        rate = self.imported / s["total"] if s["total"] > 0 else 0.0
        return (f"import into {self.index_dir}  metric {self.metric} ({self.fingerprint}, {self.dim}-d, "
                f"{self.format})\n"
                f"files {self.files}  rows {self.rows}  imported {self.imported}  skipped {self.skipped}  duplicates "
                f"{self.duplicates}  missing files {self.missing}  rejected {self.rejected}  normalized "
                f"{self.normalized}\n"
                f"shards {self.shards}  vectors {self.total_vectors}  search structure {self.structure}  in "
                f"{s['total']:.1f}s ({rate:,.0f} vectors/s; read {s['read']:.1f}s  check {s['check']:.1f}s  write "
                f"{s['write']:.1f}s  derive {s['derive']:.1f}s)")


# --------------------------------------------------------------------------------------------------- readers


def detect_format(source: Path) -> str:
    """The layout of ``source``: "clip-retrieval", "parquet" or "npy"; ValueError when it is none of them."""
    if source.is_dir():
        if (source / "img_emb").is_dir() and (source / "metadata").is_dir():
            return "clip-retrieval"
        if any(source.glob("*.parquet")):
            return "parquet"
        if any(source.glob("*.npy")):
            return "npy"
        raise InvalidArgument(f"{source}: no embeddings found (expected *.npy + paths, *.parquet, or the "
                              f"clip-retrieval layout img_emb/ + metadata/)")
    if source.suffix == ".parquet":
        return "parquet"
    if source.suffix == ".npy":
        return "npy"
    raise InvalidArgument(f"{source}: not an embeddings file (.npy or .parquet) or folder")


def _sorted_files(folder: Path, pattern: str) -> list[Path]:
    return sorted(folder.glob(pattern), key=lambda p: natural_key(p.name))


def _load_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InvalidArgument(f"{path}: not a readable .npy array ({str(e).splitlines()[0][:120]})") from None
    if arr.ndim != 2:
        raise InvalidArgument(f"{path}: holds an array of shape {arr.shape}; expected (rows, dim) embeddings")
    if not np.issubdtype(arr.dtype, np.floating):
        raise InvalidArgument(f"{path}: holds {arr.dtype} values; expected float embeddings")
    return arr


class _Lines:
    """Lines of a paths file, handed out n at a time."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.f = open(path, encoding="utf-8", errors="surrogateescape", newline="")  # noqa: SIM115
        except OSError as e:
            raise InvalidArgument(f"cannot read the paths file {path}: {e.strerror or e}") from None
        self.line = 0

    def take(self, n: int) -> list[str]:
        out = []
        for _ in range(n):
            s = self.f.readline()
            if not s:
                raise InvalidArgument(f"{self.path}: has {self.line} paths but the embeddings have more rows; one path "
                                 f"per row is needed")
            self.line += 1
            out.append(s.rstrip("\r\n"))
        return out

    def finish(self) -> None:
        rest = sum(1 for s in self.f if s.strip())
        self.f.close()
        if rest:
            raise InvalidArgument(f"{self.path}: has {self.line + rest} paths but the embeddings have {self.line} rows")


def _read_npy(source: Path, paths_file: Path | None, chunk_rows: int) -> Iterator[Chunk]:
    files = [source] if source.is_file() else _sorted_files(source, "*.npy")
    folder = source.parent if source.is_file() else source
    shared: _Lines | None = None
    for f in files:
        own = next((c for c in (f.with_suffix(".paths.txt"), f.with_suffix(".txt")) if c.is_file()), None)
        if paths_file is None and own is not None:
            lines = _Lines(own)
        else:
            if shared is None:
                pf = paths_file or folder / "paths.txt"
                if not pf.is_file():
                    raise InvalidArgument(f"{f}: no image paths found; put one path per row in "
                                     f"{f.with_suffix('.paths.txt')} or {folder / 'paths.txt'}, or pass paths=FILE "
                                     f"(--paths)")
                shared = _Lines(pf)
            lines = shared
        arr = _load_npy(f)
        for s in range(0, len(arr), chunk_rows):
            n = min(chunk_rows, len(arr) - s)
            yield Chunk(str(f), s, lines.take(n), np.asarray(arr[s:s + n]))
        if lines is not shared:
            lines.finish()
    if shared is not None:
        shared.finish()


def _pick_column(names: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, where: Path) -> str:
    if wanted:
        if wanted not in names:
            raise InvalidArgument(f"{where}: no column {wanted!r}; it has {names}")
        return wanted
    for c in candidates:
        if c in names:
            return c
    raise InvalidArgument(f"{where}: no {what} column (looked for {', '.join(candidates)}; it has {names}); "
                     f"name it with --{what}-column")


def _vectors_of(col: Any, where: str) -> np.ndarray:
    """A list / fixed-size-list Arrow column → (rows, dim) float array (rows with a null become NaN)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(col)
    if pa.types.is_fixed_size_list(col.type):
        dim = col.type.list_size
    elif pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        lens = pc.list_value_length(col).fill_null(-1).to_numpy(zero_copy_only=False)
        good = lens[lens >= 0]
        if len(good) and (good != good[0]).any():
            bad = int(np.flatnonzero((lens >= 0) & (lens != good[0]))[0])
            raise InvalidArgument(f"{where}: row {bad} has a {int(lens[bad])}-d vector, row 0 a {int(good[0])}-d one")
        dim = int(good[0]) if len(good) else 0
        if (lens < 0).any():  # nulls: fill them with NaN rows so that the row check rejects them
            fill = pa.array([[float("nan")] * dim], type=col.type)
            col = pc.if_else(pc.is_null(col), pc.take(fill, pa.array(np.zeros(n, np.int64))), col)
            col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    else:
        raise InvalidArgument(f"{where}: the vector column is {col.type}; expected a list of floats per row")
    values = col.flatten().to_numpy(zero_copy_only=False)
    if not np.issubdtype(values.dtype, np.floating) and not np.issubdtype(values.dtype, np.integer):
        raise InvalidArgument(f"{where}: the vector column holds {col.type.value_type}; expected floats")
    return np.asarray(values, dtype=np.float32).reshape(n, dim)


def _read_parquet(source: Path, path_col: str | None, vec_col: str | None, chunk_rows: int) -> Iterator[Chunk]:
    import pyarrow.parquet as pq

    files = [source] if source.is_file() else _sorted_files(source, "*.parquet")
    for f in files:
        try:
            pf = pq.ParquetFile(f)
        except Exception as e:  # noqa: BLE001  pyarrow raises several types for a damaged file
            raise InvalidArgument(f"{f}: not a readable Parquet file ({str(e).splitlines()[0][:120]})") from None
        names = pf.schema_arrow.names
        pc_name = _pick_column(names, path_col, PATH_COLUMNS, "path", f)
        vc_name = _pick_column(names, vec_col, VECTOR_COLUMNS, "vector", f)
        offset = 0
        for batch in pf.iter_batches(batch_size=chunk_rows, columns=[pc_name, vc_name]):
            paths = batch.column(0).to_pylist()
            xb = _vectors_of(batch.column(1), f"{f}")
            yield Chunk(str(f), offset, ["" if p is None else str(p) for p in paths], xb)
            offset += batch.num_rows


def _read_clip_retrieval(source: Path, chunk_rows: int) -> Iterator[Chunk]:
    import pyarrow.parquet as pq

    emb = {int(m.group(1)): p for p in (source / "img_emb").glob("img_emb_*.npy")
           if (m := re.fullmatch(r"img_emb_(\d+)\.npy", p.name))}
    meta = {int(m.group(1)): p for p in (source / "metadata").glob("metadata_*.parquet")
            if (m := re.fullmatch(r"metadata_(\d+)\.parquet", p.name))}
    if not emb:
        raise InvalidArgument(f"{source / 'img_emb'}: no img_emb_N.npy files")
    for n in sorted(emb):
        if n not in meta:
            raise InvalidArgument(f"{emb[n]} has no row-aligned {source / 'metadata' / f'metadata_{n}.parquet'}")
        arr = _load_npy(emb[n])
        pf = pq.ParquetFile(meta[n])
        if pf.metadata.num_rows != len(arr):
            raise InvalidArgument(f"{emb[n]} has {len(arr)} rows but {meta[n]} has {pf.metadata.num_rows}; they "
                                  f"must be row-aligned")
        if "image_path" not in pf.schema_arrow.names:
            raise InvalidArgument(f"{meta[n]}: no 'image_path' column (it has {pf.schema_arrow.names})")
        s = 0
        for batch in pf.iter_batches(batch_size=chunk_rows, columns=["image_path"]):
            k = batch.num_rows
            paths = ["" if p is None else str(p) for p in batch.column(0).to_pylist()]
            yield Chunk(str(emb[n]), s, paths, np.asarray(arr[s:s + k]))
            s += k
    extra = sorted(set(meta) - set(emb))
    if extra:
        _logger.warning("clip-retrieval metadata without embeddings ignored: %s", [str(meta[n]) for n in extra])


def read_embeddings(source: str | os.PathLike[str], *, format: str = "auto",
                    paths: str | os.PathLike[str] | None = None, path_column: str | None = None,
                    vector_column: str | None = None,
                    chunk_rows: int = DEFAULT_CHUNK_ROWS) -> tuple[str, Iterator[Chunk]]:
    """Open embeddings in one of the supported layouts; returns (format, chunks), read lazily.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: an unknown or inconsistent layout (the message names the file).
    """
    src = Path(source)
    if not src.exists():
        raise FileNotFoundError(f"embeddings not found: {display_path(str(src))}")
    if format not in FORMATS:
        raise InvalidArgument(f"unknown embeddings format {format!r}; choose from {', '.join(FORMATS)}")
    if chunk_rows < 1:
        raise InvalidArgument(f"chunk_rows must be >= 1, got {chunk_rows}")
    fmt = detect_format(src) if format == "auto" else format
    if fmt == "npy":
        return fmt, _read_npy(src, Path(paths) if paths else None, chunk_rows)
    if fmt == "parquet":
        return fmt, _read_parquet(src, path_column, vector_column, chunk_rows)
    if not src.is_dir():
        raise InvalidArgument(f"{src}: the clip-retrieval layout is a folder with img_emb/ and metadata/")
    return fmt, _read_clip_retrieval(src, chunk_rows)


# --------------------------------------------------------------------------------------------------- checks


@dataclass
class CheckedRows:
    """One chunk after the row checks: unit float32 vectors of the usable rows, the reasons of the others."""

    xb: np.ndarray
    usable: np.ndarray  # bool per row
    reasons: dict[int, str]
    normalized: int


def check_rows(xb: np.ndarray, dim: int, *, normalize: bool, where: str, offset: int = 0) -> CheckedRows:
    """Check a chunk's vectors: dimension, finite, unit norm (or normalise them).

    Raises:
        ValueError: the dimension differs, or (``normalize=False``) a finite row is not a unit vector.
    """
    if xb.ndim != 2 or xb.shape[1] != dim:
        raise IndexMismatch(f"{where}: {xb.shape[1] if xb.ndim == 2 else xb.shape}-d vectors, but the index holds "
                            f"{dim}-d vectors for this metric", hint="import them with the metric that made them")
    x = np.array(xb, dtype=np.float32, copy=True)
    finite = np.isfinite(x).all(axis=1)
    norms = np.zeros(len(x), dtype=np.float32)
    norms[finite] = np.linalg.norm(x[finite], axis=1)
    zero = finite & (norms == 0)
    usable = finite & ~zero
    off = usable & (np.abs(norms - 1.0) > NORM_TOLERANCE)
    if off.any() and not normalize:
        r = int(np.flatnonzero(off)[0])
        raise InvalidArgument(f"{where}: row {offset + r} has norm {norms[r]:.4g}, not a unit vector "
                              f"({int(off.sum())} such rows in this chunk); pass normalize=True (--normalize) to "
                              f"normalise them on the way in")
    x[usable] /= norms[usable, None]
    reasons = {int(r): "imported vector is not finite (NaN or inf)" for r in np.flatnonzero(~finite)}
    reasons.update({int(r): "imported vector is all zeros" for r in np.flatnonzero(zero)})
    return CheckedRows(x, usable, reasons, int(off.sum()))


# --------------------------------------------------------------------------------------------------- landing


def _split_path(p: str, root: str | None, base: str) -> tuple[str, str, str]:
    """(catalog root, relpath, absolute path) of an imported path."""
    if root is not None and not os.path.isabs(p):
        rel = posixpath.normpath(p.replace(os.sep, "/"))
        if not rel.startswith("../") and rel not in ("..", "."):
            return root, rel, os.path.join(root, rel)
    a = os.path.normpath(p if os.path.isabs(p) else os.path.join(root or base, p))
    if root is not None:
        rel = os.path.relpath(a, root)
        if not rel.startswith(".." + os.sep) and rel != "..":
            return root, Path(rel).as_posix(), a
    return os.path.dirname(a), os.path.basename(a), a


def _existing(s: Session, keys: list[tuple[str, str]], fingerprint: str) -> dict[tuple[str, str], tuple[int, bool]]:
    """(root, relpath) → (image id, has a vector of ``fingerprint``) for the keys already catalogued."""
    by_root: dict[str, list[str]] = {}
    for r, rel in keys:
        by_root.setdefault(r, []).append(rel)
    out: dict[tuple[str, str], tuple[int, bool]] = {}
    for r, rels in by_root.items():
        for start in range(0, len(rels), _IN_CHUNK):
            q = (select(ImageRow.id, ImageRow.relpath, VectorRow.faiss_id)
                 .outerjoin(VectorRow, (VectorRow.image_id == ImageRow.id) & (VectorRow.fingerprint == fingerprint))
                 .where(ImageRow.root == r, ImageRow.relpath.in_(rels[start:start + _IN_CHUNK])))
            for i, rel, fid in s.execute(q):
                out[(r, rel)] = (int(i), fid is not None)
    return out


def _stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _resolve_metric(metric: Any) -> tuple[str, str | None, int | None]:
    """(name, fingerprint or None, dim or None) of the metric the embeddings come from.

    A registered embedding metric whose weights are here gives its real fingerprint (queries by image then work);
    any other name (a model lookalike does not know, or weights not present) gets ``"<name>-import"``.
    """
    from lookalike.indexer._index import is_metric

    if is_metric(metric):
        return metric.name, metric.fingerprint, int(metric.dim)
    name = str(metric).strip()
    if not _NAME_RE.match(name):
        raise InvalidArgument(f"metric name {name!r} is not usable; use letters, digits and . _ - : +")
    from lookalike.metric import is_metric as is_registered
    from lookalike.metric import load_metric

    if is_registered(name):
        try:
            m = load_metric(name, device="cpu")
        except FileNotFoundError as e:  # WeightsNotFound: the vectors are still usable, queries by image are not
            _logger.warning("weights of %s not found (%s): vectors are imported under %s-import; searching them by "
                            "a new image needs the weights", name, str(e).splitlines()[0], name)
            return name, None, None
        if m.kind != "embedding" or not m.dim:
            raise InvalidArgument(f"metric {name!r} is pairwise: it has no embeddings to import")
        return m.name, m.fingerprint, int(m.dim)
    return name, None, None


def import_embeddings(
    source: str | os.PathLike[str],
    index_dir: str | os.PathLike[str],
    *,
    metric: Any,
    format: str = "auto",
    paths: str | os.PathLike[str] | None = None,
    path_column: str | None = None,
    vector_column: str | None = None,
    root: str | os.PathLike[str] | None = None,
    normalize: bool = False,
    check_files: bool = True,
    storage: str | None = None,
    max_memory: str | int | None = None,
    faiss: str | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    db_url: str | None = None,
    progress: bool = False,
) -> ImportSummary:
    """Import embeddings computed elsewhere into an index folder, as shards of one metric's vectors.

    Args:
        source: a ``.npy`` / ``.parquet`` file, a folder of them, or a clip-retrieval output folder.
        index_dir: the index folder (created if missing).
        metric: the metric that made the embeddings: a registered name (its weights, when present, give the real
            fingerprint, so queries by image work), a loaded Metric, or any other name for an outside model.
        format: "auto", "npy", "parquet" or "clip-retrieval" (see the module docstring).
        paths: the paths file of ``npy`` embeddings (default: ``<stem>.paths.txt`` per shard, else ``paths.txt``).
        path_column: the path column of Parquet embeddings (default: path, image_path, filepath...).
        vector_column: the vector column of Parquet embeddings (default: vector, embedding, emb...).
        root: the folder the images live under: relative paths are taken from it and the images are catalogued
            under it (so that ``build_index(root, ...)`` later recognises them). Default: relative paths are taken
            from the current directory and each image is catalogued under its own folder.
        normalize: normalise rows that are not unit vectors (default: such rows are an error).
        check_files: stat each image file (missing ones get status "missing"); False records them all as missing
            without touching the disk (for synthetic benchmarks).
        storage: "fp32" (default) or "fp16" for a new build.
        max_memory: memory budget of the search structure ("4G", bytes), as ``build_index(max_memory=...)``.
        faiss: FAISS factory string of a new build (default "auto": chosen from the size and the budget).
        chunk_rows: rows per shard (and per read).
        db_url: SQLAlchemy URL of the catalog (default: ``catalog.sqlite`` in ``index_dir``).
        progress: show a tqdm bar.

    Returns:
        An ImportSummary.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: an unknown layout, a file that does not fit (other dimension, misaligned paths, a non-unit row
            without ``normalize``), or another writer on the folder; rows landed before the error stay.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    budget = parse_memory(max_memory)
    name, fingerprint, dim = _resolve_metric(metric)
    fmt, chunks = read_embeddings(source, format=format, paths=paths, path_column=path_column,
                                  vector_column=vector_column, chunk_rows=chunk_rows)
    index_path = Path(index_dir)
    root_abs = os.path.abspath(os.fspath(root)) if root is not None else None
    if root_abs is not None and not os.path.isdir(root_abs):
        raise FileNotFoundError(f"image root not found: {display_path(root_abs)}")
    base = os.getcwd()
    index_path.mkdir(parents=True, exist_ok=True)
    fp = fingerprint or f"{name}-import"
    summary = ImportSummary(index_dir=str(index_path), metric=name, fingerprint=fp, format=fmt)
    bar = tqdm(unit="vec", desc=f"import {name}", disable=not progress, dynamic_ncols=True)
    with writer_lock(index_path):
        catalog = Catalog(index_path, db_url=db_url, create=True)
        try:
            migrate_if_needed(catalog)
            with catalog.session() as s:
                build = s.get(BuildRow, fp)
            if build is not None:
                if dim is not None and build.dim != dim:
                    raise IndexMismatch(f"index {index_path} holds {build.dim}-d vectors for {fp} but {name!r} "
                                        f"gives {dim}-d vectors", hint="use another index folder")
                dim = build.dim
            clean_orphans(catalog, fp)
            with catalog.session() as s:
                seen = _Seen(prior_rows=s.scalar(select(ImageRow.id).limit(1)) is not None)
            writer: ShardWriter | None = None
            files: set[str] = set()
            t = time.perf_counter()
            for chunk in chunks:
                summary.seconds["read"] += time.perf_counter() - t
                files.add(chunk.source)
                summary.rows += len(chunk.paths)
                if dim is None:
                    dim = int(chunk.xb.shape[1]) if chunk.xb.ndim == 2 else 0
                if build is None:
                    build = _create_build(catalog, fp, name, dim, storage, budget, faiss)
                if writer is None:
                    writer = ShardWriter(catalog, fp, dim, storage=storage)
                _land(catalog, writer, chunk, dim, fp, summary, root=root_abs, base=base, normalize=normalize,
                      check_files=check_files, seen=seen)
                bar.update(len(chunk.paths))
                t = time.perf_counter()
            summary.files = len(files)
            summary.dim = int(dim or 0)
            if build is not None:
                t = time.perf_counter()
                with catalog.session() as s, s.begin():
                    n = s.scalar(select(func.count()).where(VectorRow.fingerprint == fp)) or 0
                    s.execute(update(BuildRow).where(BuildRow.fingerprint == fp).values(count=n, updated=utcnow()))
                    if budget is not None:
                        s.execute(update(StoreRow).where(StoreRow.fingerprint == fp).values(max_memory=budget))
                with catalog.session() as s:
                    build = s.get(BuildRow, fp)
                assert build is not None
                upkeep = update_structure(catalog, build)  # the derived search structure, from the shards
                summary.structure = upkeep.factory
                summary.seconds["derive"] = time.perf_counter() - t
                summary.total_vectors = int(n)
        finally:
            bar.close()
            catalog.close()
    summary.seconds["total"] = time.perf_counter() - t0
    _logger.info("imported: %s", summary.format_text().replace("\n", " | "))
    return summary


def _create_build(catalog: Catalog, fp: str, name: str, dim: int, storage: str | None, max_memory: int | None,
                  factory: str | None) -> BuildRow:
    from lookalike.indexer._catalog import StoreRow
    from lookalike.indexer._shards import storage_dtype
    from lookalike.indexer._store import validate_factory

    if dim < 1:
        raise InvalidArgument("the embeddings have no columns")
    target = (factory or "auto").strip()
    validate_factory(dim, target)
    with catalog.session() as s, s.begin():
        b = BuildRow(fingerprint=fp, metric=name, dim=dim, factory=target, current_factory="Flat",
                     search_params=None, count=0)
        s.add(b)
        s.add(StoreRow(fingerprint=fp, storage=storage_dtype(storage), max_memory=max_memory, structure="exact"))
    return b


def _text(s: str) -> str:
    return s if s.isascii() else display_path(s)


class _Seen:
    """Hashes of the (root, relpath) keys this run inserted (8 bytes each), to skip look-ups of paths that cannot be
    catalogued yet; a hash collision only costs a look-up."""

    def __init__(self, prior_rows: bool):
        self.prior_rows = prior_rows
        self.parts: list[np.ndarray] = []
        self.sorted = np.zeros(0, np.int64)

    @staticmethod
    def _hash(keys: list[tuple[str, str]]) -> np.ndarray:
        return np.fromiter((int.from_bytes(hashlib.blake2b(f"{r}\0{rel}".encode("utf-8", "surrogateescape"),
                                                           digest_size=8).digest(), "little", signed=True)
                            for r, rel in keys), dtype=np.int64, count=len(keys))

    def add(self, keys: list[tuple[str, str]]) -> None:
        if keys:
            self.sorted = np.union1d(self.sorted, self._hash(keys))

    def maybe(self, key: tuple[str, str]) -> bool:
        if not len(self.sorted):
            return False
        h = self._hash([key])[0]
        i = int(np.searchsorted(self.sorted, h))
        return i < len(self.sorted) and int(self.sorted[i]) == int(h)


def _land(catalog: Catalog, writer: ShardWriter, chunk: Chunk, dim: int, fp: str, summary: ImportSummary, *,
          root: str | None, base: str, normalize: bool, check_files: bool, seen: _Seen) -> None:
    """Check one chunk and commit it: image rows + one shard, in one transaction (shard files first)."""
    t = time.perf_counter()
    checked = check_rows(chunk.xb, dim, normalize=normalize, where=chunk.source, offset=chunk.offset)
    summary.normalized += checked.normalized
    keyed: dict[tuple[str, str], int] = {}
    key_of: dict[int, tuple[str, str]] = {}
    abs_paths: list[str] = []
    for j, p in enumerate(chunk.paths):
        if not p:
            checked.reasons.setdefault(j, "no image path")
            checked.usable[j] = False
        r, rel, a = _split_path(p or f"<row {chunk.offset + j}>", root, base)
        abs_paths.append(a)
        key = (_text(r), _text(rel))  # as the catalog stores them
        if key in keyed:
            summary.duplicates += 1
            continue
        keyed[key] = j
        key_of[j] = key
    summary.seconds["check"] += time.perf_counter() - t
    t = time.perf_counter()
    with catalog.session() as s, s.begin():
        # Only paths that may be catalogued already are looked up: all of them when the catalog held rows before
        # this run (a resumed or repeated import), else those whose hash an earlier chunk of this run inserted.
        maybe = list(keyed) if seen.prior_rows else [k for k in keyed if seen.maybe(k)]
        known = _existing(s, maybe, fp) if maybe else {}
        max_before = int(s.scalar(select(func.max(ImageRow.id))) or 0)
        now = utcnow()
        new_rows: list[dict] = []
        new_rows_j: list[int] = []
        vec_ids: list[int] = []
        vec_j: list[int] = []
        status_updates: list[dict] = []
        for key, j in keyed.items():
            hit = known.get(key)
            if hit is not None and hit[1]:
                summary.skipped += 1
                continue
            st = _stat(abs_paths[j]) if check_files else None
            if checked.usable[j]:
                status, error = (STATUS_OK, None) if st else (STATUS_MISSING, "image file not found at import")
            else:
                status, error = STATUS_FAILED, checked.reasons.get(j, "unusable vector")
            if st is None and checked.usable[j]:
                summary.missing += 1
            if not checked.usable[j]:
                summary.rejected += 1
            values = {"status": status, "error": error, "size": st[0] if st else 0, "mtime_ns": st[1] if st else 0}
            if hit is not None:
                status_updates.append({"id": hit[0], **values})
                if checked.usable[j]:
                    vec_ids.append(hit[0])
                    vec_j.append(j)
                continue
            new_rows.append({"root": key[0], "relpath": key[1],
                             "path_raw": os.fsencode(abs_paths[j]), "sha256": None, "added": now, **values})
            new_rows_j.append(j)
        if status_updates:
            s.execute(update(ImageRow), status_updates)
        if new_rows:
            # Core executemany (not ORM, no per-row RETURNING): then one indexed look-up per 500 paths for the ids
            for start in range(0, len(new_rows), 5000):
                s.connection().execute(_IMAGES.insert(), new_rows[start:start + 5000])
            got = {(r, rel): int(i) for i, r, rel in s.execute(
                select(ImageRow.id, ImageRow.root, ImageRow.relpath).where(ImageRow.id > max_before))}
            seen.add([key_of[j] for j in new_rows_j])
            for j in new_rows_j:
                if checked.usable[j]:
                    vec_ids.append(got[key_of[j]])
                    vec_j.append(j)
        if vec_ids:
            pending = writer.write(np.asarray(vec_ids, dtype=np.int64), checked.xb[np.asarray(vec_j)])
            writer.record(s, pending)
            summary.shards += 1
            summary.imported += len(vec_ids)
    summary.seconds["write"] += time.perf_counter() - t
