"""Building a build's derived search file from its shards (writers only; readers open it with ``_store``).

The derived file is never the only copy of anything: it is rebuilt from the shards when it is missing, damaged or
stale. Its FAISS ids are *row keys* (``shard_id << 32 | row``, see ``_store.row_keys``), so a shard row that is
later tombstoned is filtered out at search time and the file never needs an in-place removal. Inverted files are
written with faiss's ``OnDiskInvertedLists`` (the ``faiss.contrib.ondisk`` recipe): the lists live in a
``.ivfdata`` file that readers memory-map. Every file is written under a new generation name, fsynced, and only
then named in the catalog by the caller.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
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
from lookalike.indexer._util import quiet_stdout

_logger = logging.getLogger(__name__)


def _sample(shards: ShardSet, n: int, seed: int = 0) -> np.ndarray:
    """``n`` live vectors drawn at random over the shards (float32)."""
    total = shards.ntotal
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(total, size=min(n, total), replace=False))
    out, base = [], 0
    for p in shards.parts:
        rows = np.arange(len(p.ids)) if p.live is None else np.flatnonzero(p.live)
        sel = pick[(pick >= base) & (pick < base + len(rows))] - base
        if len(sel):
            out.append(np.asarray(p.xb[rows[sel]], np.float32))
        base += len(rows)
    return np.concatenate(out) if out else np.zeros((0, shards.dim), np.float32)


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
        rows = _write_ondisk(empty, src, new_parts, path, block)
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


def _write_ondisk(empty: faiss.Index, previous: faiss.Index | None, parts: list[OpenShard], path: Path,
                  block: int) -> int:
    """Merge the previous file's lists (memory-mapped) and the new shards' rows into a new on-disk inverted file.

    The new rows are added block by block to small in-memory inverted files written to a temporary folder and
    memory-mapped back (the ``faiss.contrib.ondisk`` recipe), so memory holds one block at a time.
    """
    data = data_file(path)
    ivf_empty = faiss.extract_index_ivf(empty)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".derived-build-") as tmpdir:
        keep: list[faiss.Index] = []
        lists = faiss.InvertedListsPtrVector()
        if previous is not None:
            lists.push_back(faiss.extract_index_ivf(previous).invlists)
        rows = 0
        for p in parts:
            for s in range(0, len(p.ids), block):
                xb = np.asarray(p.xb[s:s + block], np.float32)
                ix = faiss.clone_index(empty)
                ix.add_with_ids(xb, row_keys(p.shard.id, np.arange(s, s + len(xb))))
                fname = os.path.join(tmpdir, f"part-{rows:012d}.faiss")
                faiss.write_index(ix, fname)
                del ix
                back = faiss.read_index(fname, faiss.IO_FLAG_MMAP)
                keep.append(back)
                lists.push_back(faiss.extract_index_ivf(back).invlists)
                rows += len(xb)
        tmp_data = os.path.join(tmpdir, data.name)
        ondisk = faiss.OnDiskInvertedLists(ivf_empty.nlist, ivf_empty.code_size, tmp_data)
        with quiet_stdout():
            ntotal = ondisk.merge_from_multiple(lists.data(), lists.size(), False)
        out = faiss.clone_index(empty)
        out_ivf = faiss.extract_index_ivf(out)
        out_ivf.replace_invlists(ondisk, True)
        ondisk.this.disown()
        out.ntotal = out_ivf.ntotal = ntotal
        tmp_index = os.path.join(tmpdir, path.name)
        faiss.write_index(out, tmp_index)
        del out, keep
        for f in (tmp_data, tmp_index):
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp_data, data)
        os.replace(tmp_index, path)
    fsync_dir(path.parent)
    return int(ntotal)


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
