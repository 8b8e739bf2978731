"""Building a build's derived search file from its shards (writers only; readers open it with ``_store``).

The derived file is never the only copy of anything: it is rebuilt from the shards when it is missing, damaged or
stale. Its FAISS ids are *row keys* (``shard_id << 32 | row``, see ``_store.row_keys``), so a shard row that is
later tombstoned is filtered out at search time and the file never needs an in-place removal. Inverted files are
written in faiss's ``OnDiskInvertedLists`` layout, streamed from the shards (``_write_lists``): the lists live
in a ``.ivfdata`` file that readers memory-map. Every file is written under a new generation name, fsynced, and only
then named in the catalog by the caller.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from pathlib import Path

import faiss
import numpy as np
from sqlalchemy import select

from lookalike.common.errors import IndexDamaged
from lookalike.common.io import fsync_dir
from lookalike.indexer import _structure as structure_rules
from lookalike.indexer._catalog import BuildRow, Catalog, StoreRow
from lookalike.indexer._shards import OpenShard, ShardSet, open_shards, sha256_path, shard_folder
from lookalike.indexer._store import data_file, load_derived, row_keys
from lookalike.indexer._structure import Structure, create_index

_logger = logging.getLogger(__name__)


def _sample(shards: ShardSet, n: int, seed: int = 0, run: int = 256) -> np.ndarray:
    """About ``n`` live vectors drawn at random over the shards (float32), in runs of ``run`` consecutive rows: a few
    hundred contiguous reads instead of one random read per row from files that may not be in the page cache."""
    total = shards.rows
    rng = np.random.default_rng(seed)
    slots = max(1, -(-total // run))
    pick = np.sort(rng.choice(slots, size=min(slots, -(-n // run)), replace=False)) * run
    out, base = [], 0
    for p in shards.parts:
        for s in pick[(pick >= base) & (pick < base + len(p.ids))] - base:
            xb = np.asarray(p.xb[s:s + run], np.float32)
            out.append(xb if p.live is None else xb[p.live[s:s + run]])
        base += len(p.ids)
    return np.concatenate(out)[:n] if out else np.zeros((0, shards.dim), np.float32)


def build_derived(catalog: Catalog, build: BuildRow, structure: Structure, *, previous: StoreRow | None = None,
                  block: int = 65536, seed: int = 0) -> dict | None:
    """Build (or extend) the derived FAISS file of a build from its shards; returns the new ``stores`` columns.

    Returns None when the structure is exact or there are too few vectors to train it. Inverted files reuse the
    previous file's trained quantizer and lists when it covers a prefix of the shards (only the tail is added); other
    types are rebuilt. The files are written under a new generation name, fsynced, and only then named in the
    catalog by the caller; older generations are removed by ``remove_stale_derived``.
    """
    if structure.exact:
        return None
    shards = open_shards(catalog, build.fingerprint, build.dim)
    n = shards.ntotal
    if n == 0:
        return None
    need = structure_rules.min_train_size(structure.factory)
    if n < need:
        _logger.warning("faiss %r wants %d training vectors; %d indexed so far: staying exact for now",
                        structure.factory, need, n)
        return None
    folder = shard_folder(catalog.index_dir, build.fingerprint)
    folder.mkdir(parents=True, exist_ok=True)
    gen = 1
    if previous is not None and previous.derived_file:
        m = re.search(r"derived-(\d+)", previous.derived_file)
        gen = int(m.group(1)) + 1 if m else 1
    name = f"derived-{gen:06d}"
    path = folder / f"{name}.faiss"
    upto = max(p.shard.id for p in shards.parts)
    is_ivf = "IVF" in structure.factory
    reuse = None
    if (is_ivf and previous is not None and previous.derived_file and previous.structure == structure.factory
            and previous.derived_upto):
        with contextlib.suppress(IndexDamaged):
            reuse = load_derived(catalog.index_dir, previous)
    if is_ivf:
        if reuse is not None:
            trained = faiss.clone_index(faiss.extract_index_ivf(reuse).quantizer)
            empty = create_index(build.dim, structure.factory)
            ivf = faiss.extract_index_ivf(empty)
            ivf.quantizer = trained
            ivf.own_fields = True
            trained.this.disown()
            if not empty.is_trained:  # SQ / PQ codes: retrain (cheap) from a sample
                empty.train(_sample(shards, max(need, 1), seed))
            ivf.is_trained = True
            src = reuse
            new_parts = [p for p in shards.parts if p.shard.id > int(previous.derived_upto or 0)]
        else:
            empty = create_index(build.dim, structure.factory)
            sample = _sample(shards, structure_rules.train_sample_size(structure.factory, n), seed)
            _logger.info("training faiss %s on %d of %d vectors", structure.factory, len(sample), n)
            empty.train(sample)
            src = None
            new_parts = shards.parts
        rows = _write_lists(empty, src, new_parts, path, block)
    else:
        index = create_index(build.dim, structure.factory)
        if not index.is_trained:
            index.train(_sample(shards, structure_rules.train_sample_size(structure.factory, n), seed))
        index = faiss.IndexIDMap2(index)
        rows = 0
        for p in shards.parts:
            for s in range(0, len(p.ids), block):
                xb = np.asarray(p.xb[s:s + block], np.float32)
                index.add_with_ids(xb, row_keys(p.shard.id, np.arange(s, s + len(xb))))
                rows += len(xb)
            p.release()
        _write_faiss(index, path)
    return {"structure": structure.factory, "derived_file": path.relative_to(catalog.index_dir).as_posix(),
            "derived_sha256": sha256_path(path), "derived_bytes": path.stat().st_size, "derived_upto": upto,
            "derived_data_sha256": sha256_path(data_file(path)) if data_file(path).is_file() else None,
            "derived_rows": rows}


def _write_faiss(index: faiss.Index, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        faiss.write_index(index, os.fspath(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise OSError(f"could not write the derived search file {path} ({e}); the index is unchanged") from e
    fsync_dir(path.parent)


def _assign(quantizer: faiss.Index, xb: np.ndarray) -> np.ndarray:
    """The list of each row: its nearest centroid (one BLAS product per block for a flat quantizer)."""
    _, a = quantizer.search(xb, 1)
    return a[:, 0]


def _write_lists(empty: faiss.Index, previous: faiss.Index | None, parts: list[OpenShard], path: Path,
                 block: int) -> int:
    """Write a new on-disk inverted file: the previous file's lists (copied list by list) plus the new shards' rows.

    Streamed in two passes over the shards, one block in memory at a time: pass 1 assigns every row to its list
    (so that each list's place in the data file is known), pass 2 encodes the rows and writes their codes and row
    keys straight to their place (``os.pwrite``; no memory map, no partial files, the codes written once). The data
    file has faiss's ``OnDiskInvertedLists`` layout (per list: codes, then ids; capacity = size), which the index
    file describes and readers memory-map.
    """
    data = data_file(path)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(empty))
    nlist, code_size = int(ivf.nlist), int(ivf.code_size)
    prev_inv = faiss.downcast_InvertedLists(faiss.extract_index_ivf(previous).invlists) if previous is not None \
        else None
    sizes = np.zeros(nlist, np.int64)
    if prev_inv is not None:
        sizes += np.fromiter((prev_inv.list_size(i) for i in range(nlist)), np.int64, nlist)
    assigned: list[np.ndarray] = []
    for p in parts:  # pass 1: assignment
        a = np.empty(len(p.ids), np.int32)
        for s in range(0, len(p.ids), block):
            a[s:s + block] = _assign(ivf.quantizer, np.asarray(p.xb[s:s + block], np.float32))
        p.release()  # resident memory bounded by a shard, not the index (the pages stay in the page cache)
        assigned.append(a)
        sizes += np.bincount(a, minlength=nlist)
    offsets = np.concatenate([[0], np.cumsum(sizes * (code_size + 8))]).astype(np.int64)
    cursor = np.zeros(nlist, np.int64)
    tmp_data = data.with_name(f".{data.name}.tmp-{os.getpid()}")
    tmp_index = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp_data, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, int(offsets[-1]))
            if prev_inv is not None:
                cursor += _copy_lists(prev_inv, fd, offsets, sizes, code_size)
            for p, a in zip(parts, assigned, strict=True):  # pass 2: codes and row keys to their lists
                for s in range(0, len(p.ids), block):
                    xb = np.ascontiguousarray(p.xb[s:s + block], np.float32)
                    lists = a[s:s + len(xb)].astype(np.int64)
                    codes = np.empty((len(xb), code_size), np.uint8)
                    ivf.encode_vectors(len(xb), faiss.swig_ptr(xb), faiss.swig_ptr(lists), faiss.swig_ptr(codes),
                                       False)
                    keys = row_keys(p.shard.id, np.arange(s, s + len(xb)))
                    order = np.argsort(lists, kind="stable")
                    lists, codes, keys = lists[order], codes[order], keys[order]
                    bounds = np.flatnonzero(np.diff(lists)) + 1
                    for lo, hi in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [len(lists)]]),
                                      strict=True):
                        n = int(lists[lo])
                        at = int(cursor[n])
                        os.pwrite(fd, codes[lo:hi].tobytes(), int(offsets[n]) + at * code_size)
                        os.pwrite(fd, keys[lo:hi].tobytes(), int(offsets[n] + sizes[n] * code_size) + at * 8)
                        cursor[n] += hi - lo
                p.release()
            os.fsync(fd)
        finally:
            os.close(fd)
        if not (cursor == sizes).all():
            raise RuntimeError("inverted lists written with a different size than assigned")  # an internal bug
        inv = faiss.OnDiskInvertedLists(nlist, code_size, os.fspath(data))
        sizes_u = np.ascontiguousarray(sizes, dtype=np.uint64)  # kept alive: swig_ptr holds no reference
        inv.set_all_lists_sizes(faiss.swig_ptr(sizes_u))
        if any(int(inv.list_size(i)) != int(sizes[i]) for i in range(nlist)):
            raise RuntimeError("the inverted lists' sizes were not recorded as written")  # an internal bug
        inv.totsize = int(offsets[-1])
        out = faiss.clone_index(empty)
        out_ivf = faiss.extract_index_ivf(out)
        out_ivf.replace_invlists(inv, True)
        inv.this.disown()
        out.ntotal = out_ivf.ntotal = int(sizes.sum())
        faiss.write_index(out, os.fspath(tmp_index))
        del out
        with open(tmp_index, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_data, data)
        os.replace(tmp_index, path)
    except (OSError, RuntimeError) as e:
        for f in (tmp_data, tmp_index):
            f.unlink(missing_ok=True)
        raise OSError(f"could not write the derived search file {path} ({e}); the index is unchanged") from e
    fsync_dir(path.parent)
    return int(sizes.sum())


def _copy_lists(prev: faiss.InvertedLists, fd: int, offsets: np.ndarray, sizes: np.ndarray, code_size: int
                ) -> np.ndarray:
    """Copy every list of the previous file to the start of its place in the new one; returns rows per list.
    On-disk lists are read with ``os.pread`` from their data file (not through its memory map)."""
    n = np.zeros(len(sizes), np.int64)
    src = os.open(prev.filename, os.O_RDONLY) if isinstance(prev, faiss.OnDiskInvertedLists) else None
    try:
        for i in range(len(sizes)):
            k = int(prev.list_size(i))
            if not k:
                continue
            if src is not None:
                one = prev.lists.at(i)
                codes = os.pread(src, k * code_size, int(one.offset))
                ids = os.pread(src, k * 8, int(one.offset) + int(one.capacity) * code_size)
            else:
                codes = faiss.rev_swig_ptr(prev.get_codes(i), k * code_size).tobytes()
                ids = faiss.rev_swig_ptr(prev.get_ids(i), k).view(np.int64).tobytes()
            os.pwrite(fd, codes, int(offsets[i]))
            os.pwrite(fd, ids, int(offsets[i] + sizes[i] * code_size))
            n[i] = k
    finally:
        if src is not None:
            os.close(src)
    return n


def remove_stale_derived(catalog: Catalog, fingerprint: str) -> None:
    """Delete derived files of a build that the catalog no longer names (writer only)."""
    folder = shard_folder(catalog.index_dir, fingerprint)
    if not folder.is_dir():
        return
    with catalog.session() as s:
        cur = s.scalar(select(StoreRow.derived_file).where(StoreRow.fingerprint == fingerprint))
    keep = set()
    if cur:
        keep = {Path(cur).name, data_file(Path(cur)).name}
    for p in folder.iterdir():
        if p.name.startswith("derived-") and p.name not in keep:
            with contextlib.suppress(OSError):
                p.unlink()
        elif p.name.startswith(".derived-build-") or (p.name.startswith(".derived-") and ".tmp-" in p.name):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
