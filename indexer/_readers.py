"""The embeddings readers of ``lookalike import``: three layouts, each streamed in chunks of rows.

* ``npy``: one ``.npy`` file or a folder of them (natural name order), (rows, dim) float arrays, plus the image
  paths, one per line: ``<stem>.paths.txt`` (or ``<stem>.txt``) beside each shard, or one paths file for all of
  them in order (``paths``, default ``paths.txt`` in the folder);
* ``parquet``: one ``.parquet`` file or a folder of them, with a path column and a vector column (a list of
  floats per row); the names default to the first of ``path`` / ``image_path`` / ``filepath`` and of ``vector`` /
  ``embedding`` / ``emb``;
* ``clip-retrieval``: the layout ``clip-retrieval inference`` writes: ``img_emb/img_emb_N.npy`` row-aligned with
  ``metadata/metadata_N.parquet`` (column ``image_path``).

``read_embeddings`` tells them apart (``format="auto"``) and yields ``Chunk`` objects: arrays are read a chunk of
rows at a time (``_Npy``) and Parquet files batch by batch, so memory holds one chunk whatever the input size.
Nothing here touches an index.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.common.errors import InvalidArgument
from lookalike.data.image_folder import display_path, natural_key
from lookalike.indexer._config import ImportOptions

_logger = logging.getLogger(__name__)

PATH_COLUMNS = ("path", "image_path", "filepath", "file", "filename")
VECTOR_COLUMNS = ("vector", "embedding", "emb", "embeddings")


@dataclass
class Chunk:
    """Rows read from one input file: where they come from, their paths and vectors."""

    source: str
    offset: int
    paths: list[str]
    xb: np.ndarray


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


class _Npy:
    """A (rows, dim) ``.npy`` file read in row ranges into memory of its own (``read``): one chunk resident at a
    time, and the pages read are dropped from the page cache (the input is read once), so neither the process's
    RSS nor the cache fills up with the input however large it is. Fortran-ordered files are memory-mapped."""

    def __init__(self, path: Path):
        self.path = path
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise InvalidArgument(f"{path}: not a readable .npy array ({str(e).splitlines()[0][:120]})") from None
        if arr.ndim != 2:
            raise InvalidArgument(f"{path}: holds an array of shape {arr.shape}; expected (rows, dim) embeddings")
        if not np.issubdtype(arr.dtype, np.floating):
            raise InvalidArgument(f"{path}: holds {arr.dtype} values; expected float embeddings")
        self.shape, self.dtype = arr.shape, arr.dtype
        self.mmap = arr if arr.flags.f_contiguous and not arr.flags.c_contiguous else None
        self.offset = int(arr.offset) if self.mmap is None else 0
        del arr

    def __len__(self) -> int:
        return int(self.shape[0])

    def read(self, start: int, n: int) -> np.ndarray:
        if self.mmap is not None:
            return np.array(self.mmap[start:start + n])
        row = self.shape[1] * self.dtype.itemsize
        out = np.empty((n, self.shape[1]), self.dtype)
        with open(self.path, "rb", buffering=0) as f:
            pos = self.offset + start * row
            f.seek(pos)
            got = f.readinto(memoryview(out).cast("B"))
            if got != n * row:
                raise InvalidArgument(f"{self.path}: truncated ({got} of {n * row} bytes at row {start})")
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(f.fileno(), pos, n * row, os.POSIX_FADV_DONTNEED)
        return out


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
        arr = _Npy(f)
        for s in range(0, len(arr), chunk_rows):
            n = min(chunk_rows, len(arr) - s)
            yield Chunk(str(f), s, lines.take(n), arr.read(s, n))
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
        arr = _Npy(emb[n])
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
            yield Chunk(str(emb[n]), s, paths, arr.read(s, k))
            s += k
    extra = sorted(set(meta) - set(emb))
    if extra:
        _logger.warning("clip-retrieval metadata without embeddings ignored: %s", [str(meta[n]) for n in extra])


def read_embeddings(source: str | os.PathLike[str],
                    options: ImportOptions | None = None) -> tuple[str, Iterator[Chunk]]:
    """Open embeddings in one of the supported layouts; returns (format, chunks of ``options.chunk_rows`` rows),
    read lazily: one chunk in memory at a time (``.npy`` files are memory-mapped, Parquet read batch by batch).

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: an unknown or inconsistent layout (the message names the file).
    """
    opts = options or ImportOptions()
    src = Path(source)
    if not src.exists():
        raise FileNotFoundError(f"embeddings not found: {display_path(str(src))}")
    fmt = detect_format(src) if opts.format == "auto" else opts.format
    if fmt == "npy":
        return fmt, _read_npy(src, Path(opts.paths) if opts.paths else None, opts.chunk_rows)
    if fmt == "parquet":
        return fmt, _read_parquet(src, opts.path_column, opts.vector_column, opts.chunk_rows)
    if not src.is_dir():
        raise InvalidArgument(f"{src}: the clip-retrieval layout is a folder with img_emb/ and metadata/")
    return fmt, _read_clip_retrieval(src, opts.chunk_rows)
