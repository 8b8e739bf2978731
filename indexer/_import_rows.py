"""How one chunk of imported rows lands in the catalog (``lookalike import``'s hot path; writers only).

Per chunk: the paths are split into (catalog root, relpath) keys (one regular-expression check for the usual
chunk of normalised relative paths under ``root``, the general rule path by path otherwise), the keys already
catalogued are found, the new image rows are inserted and the usable vectors go to the build writer.

Known keys: when the catalog held image rows before the run (a resumed or repeated import), every key is looked up
through the unique path index. A fresh import looks up only the keys this run inserted itself, which ``Seen``
remembers as (64-bit hash, image id) pairs in a few sorted runs (16 bytes per row): a hash match is confirmed by
the row's id, so the lookup never needs the path index, which a fresh import on SQLite builds only at its end
(``_bulk``). On SQLite the rows go in as tuples with ids allocated in bulk; elsewhere through SQLAlchemy Core.
"""

from __future__ import annotations

import itertools
import os
import posixpath
import re
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from lookalike.common.errors import IndexMismatch, InvalidArgument
from lookalike.data.image_folder import display_path
from lookalike.indexer._bulk import insert_images, is_sqlite, next_image_id, sqlite_time
from lookalike.indexer._catalog import STATUS_FAILED, STATUS_OK, Catalog, ImageRow, VectorRow, utcnow
from lookalike.indexer._config import ImportOptions
from lookalike.indexer._readers import Chunk
from lookalike.indexer._summary import ImportSummary
from lookalike.indexer._writer import BuildWriter

#: Catalog status of an imported vector whose image file was not found at import time.
STATUS_MISSING = "missing"
#: Largest |norm - 1| accepted as a unit vector when ``normalize`` is False.
NORM_TOLERANCE = 1e-3
_IN_CHUNK = 500  # parameters per IN (...) query
_NORM_BLOCK = 8192  # rows per float32 block of the norm check (stays in cache)
_IMAGES = ImageRow.__table__
#: A chunk's paths joined by newlines contain none of these when every one is a normalised relative POSIX path.
_NOT_PLAIN = re.compile(r"(?m)^$|^/|//|/$|(?:^|/)\.{1,2}(?:/|$)")


@dataclass
class CheckedRows:
    """One chunk after the row checks: unit vectors of the usable rows (the input itself when nothing had to change,
    else float32), and the reasons of the others."""

    xb: np.ndarray
    usable: np.ndarray  # bool per row
    reasons: dict[int, str]
    normalized: int


def check_rows(xb: np.ndarray, dim: int, *, normalize: bool, where: str, offset: int = 0) -> CheckedRows:
    """Check a chunk's vectors: dimension, finite, unit norm (or normalise them).

    Norms are computed in float32 blocks; rows that are already unit vectors are passed on as they came (no copy).

    Raises:
        ValueError: the dimension differs, or (``normalize=False``) a finite row is not a unit vector.
    """
    if xb.ndim != 2 or xb.shape[1] != dim:
        raise IndexMismatch(f"{where}: {xb.shape[1] if xb.ndim == 2 else xb.shape}-d vectors, but the index holds "
                            f"{dim}-d vectors for this metric", hint="import them with the metric that made them")
    n = len(xb)
    norms = np.empty(n, np.float32)
    half = faiss.ScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16) if xb.dtype == np.float16 else None
    for s in range(0, n, _NORM_BLOCK):
        b = half.decode(np.ascontiguousarray(xb[s:s + _NORM_BLOCK]).view(np.uint8)) if half is not None else \
            np.asarray(xb[s:s + _NORM_BLOCK], np.float32)  # faiss decodes fp16 with F16C, numpy element by element
        norms[s:s + len(b)] = np.sqrt(np.einsum("ij,ij->i", b, b))
    finite = np.isfinite(norms)
    if not finite.all():  # a huge finite value can overflow the square: look at the rows themselves
        bad = np.flatnonzero(~finite)
        finite[bad] = np.isfinite(np.asarray(xb[bad], np.float64)).all(axis=1)
        norms[bad] = np.where(finite[bad], np.linalg.norm(np.asarray(xb[bad], np.float64), axis=1), 0.0)
    zero = finite & (norms == 0)
    usable = finite & ~zero
    off = usable & (np.abs(norms - 1.0) > NORM_TOLERANCE)
    if off.any() and not normalize:
        r = int(np.flatnonzero(off)[0])
        raise InvalidArgument(f"{where}: row {offset + r} has norm {norms[r]:.4g}, not a unit vector "
                              f"({int(off.sum())} such rows in this chunk); pass normalize=True (--normalize) to "
                              f"normalise them on the way in")
    x = xb
    if off.any() or not finite.all():
        x = np.array(xb, dtype=np.float32)
        x[~finite] = 0.0
        x[off] /= norms[off, None]
    reasons = {int(r): "imported vector is not finite (NaN or inf)" for r in np.flatnonzero(~finite)}
    reasons.update({int(r): "imported vector is all zeros" for r in np.flatnonzero(zero)})
    return CheckedRows(x, usable, reasons, int(off.sum()))


def split_path(p: str, root: str | None, base: str) -> tuple[str, str, str]:
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


def _text(s: str) -> str:
    return s if s.isascii() else display_path(s)


def _plain(paths: list[str]) -> bool:
    """True when every path is a non-empty, normalised, relative POSIX path in ASCII (then relpath = path)."""
    joined = "\n".join(paths)
    return (os.sep == "/" and joined.isascii() and joined.count("\n") == len(paths) - 1
            and _NOT_PLAIN.search(joined) is None)


def _hash(keys: list[tuple[str, str]]) -> np.ndarray:
    """Python's own 64-bit hash of each key (salted per process, which is all a run needs: ``Seen`` lives as long
    as the run, and a collision only costs a look-up)."""
    return np.fromiter(map(hash, keys), dtype=np.int64, count=len(keys))


class Seen:
    """(key hash, image id) of the rows this run inserted, as sorted runs merged when they grow (16 bytes a row);
    a hash match is only a candidate, confirmed against the catalog row of its id.

    Args:
        prior_rows: the catalog held image rows before the run (then every key is looked up in the catalog).
    """

    def __init__(self, prior_rows: bool):
        self.prior_rows = prior_rows
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, hashes: np.ndarray, ids: np.ndarray) -> None:
        if not len(hashes):
            return
        order = np.argsort(hashes, kind="stable")
        self.runs.append((hashes[order], ids[order]))
        while len(self.runs) > 1 and len(self.runs[-2][0]) <= 2 * len(self.runs[-1][0]):
            (h1, i1), (h2, i2) = self.runs[-2], self.runs[-1]
            h, i = np.concatenate([h1, h2]), np.concatenate([i1, i2])
            order = np.argsort(h, kind="stable")  # two sorted runs: a merge
            self.runs[-2:] = [(h[order], i[order])]

    def candidates(self, hashes: np.ndarray) -> np.ndarray:
        """The id of a row this run inserted with the same hash (-1: none) for each hash."""
        out = np.full(len(hashes), -1, np.int64)
        for h, ids in self.runs:
            j = np.minimum(np.searchsorted(h, hashes), len(h) - 1)
            hit = h[j] == hashes
            out[hit] = ids[j[hit]]
        return out


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


def _confirmed(s: Session, keys: list[tuple[str, str]], ids: list[int], fingerprint: str
               ) -> dict[tuple[str, str], tuple[int, bool]]:
    """Like ``_existing`` for keys whose candidate image id is known (by primary key, no path index needed)."""
    want = dict(zip(ids, keys, strict=True))
    out: dict[tuple[str, str], tuple[int, bool]] = {}
    for start in range(0, len(ids), _IN_CHUNK):
        q = (select(ImageRow.id, ImageRow.root, ImageRow.relpath, VectorRow.faiss_id)
             .outerjoin(VectorRow, (VectorRow.image_id == ImageRow.id) & (VectorRow.fingerprint == fingerprint))
             .where(ImageRow.id.in_(ids[start:start + _IN_CHUNK])))
        for i, r, rel, fid in s.execute(q):
            if want.get(int(i)) == (r, rel):
                out[(r, rel)] = (int(i), fid is not None)
    missed = [k for k in keys if k not in out]
    if missed:  # a hash collision (about one in 10^12 pairs): look the key up by its path
        out.update(_existing(s, missed, fingerprint))
    return out


def _stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _keys(chunk: Chunk, root: str | None, base: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(catalog key, absolute path) of each row."""
    if root is not None and chunk.paths and _plain(chunk.paths):
        r = _text(root)
        prefix = root if root.endswith("/") else root + "/"
        return [(r, p) for p in chunk.paths], [prefix + p for p in chunk.paths]
    keys, abs_paths = [], []
    for j, p in enumerate(chunk.paths):
        r, rel, a = split_path(p or f"<row {chunk.offset + j}>", root, base)
        keys.append((_text(r), _text(rel)))
        abs_paths.append(a)
    return keys, abs_paths


def land(catalog: Catalog, bw: BuildWriter, chunk: Chunk, summary: ImportSummary, *, options: ImportOptions,
         root: str | None, base: str, seen: Seen) -> None:
    """Check one chunk, commit its image rows, and hand its usable vectors to the build writer."""
    t = time.perf_counter()
    checked = check_rows(chunk.xb, bw.dim, normalize=options.normalize, where=chunk.source, offset=chunk.offset)
    summary.normalized += checked.normalized
    for j, p in enumerate(chunk.paths):
        if not p:
            checked.reasons.setdefault(j, "no image path")
            checked.usable[j] = False
    keys, abs_paths = _keys(chunk, root, base)
    keyed = dict(zip(keys, range(len(keys)), strict=True))  # the last row of a path repeated within the chunk
    if len(keyed) < len(keys):
        keyed = {}
        for j, key in enumerate(keys):
            if keyed.setdefault(key, j) != j:
                summary.duplicates += 1
    ukeys = list(keyed)
    rows_j = np.fromiter(keyed.values(), np.int64, len(keyed))
    hashes = _hash(ukeys) if not seen.prior_rows else np.zeros(0, np.int64)
    summary.seconds["check"] += time.perf_counter() - t
    t = time.perf_counter()
    vec_ids: list[int] = []
    vec_j: list[int] = []
    with catalog.session() as s, s.begin():
        if seen.prior_rows:
            known = _existing(s, ukeys, bw.fingerprint)
        else:
            cand = seen.candidates(hashes)
            hit = np.flatnonzero(cand >= 0)
            known = _confirmed(s, [ukeys[i] for i in hit], cand[hit].tolist(), bw.fingerprint) if len(hit) else {}
        new = np.ones(len(ukeys), bool)
        status_updates: list[dict] = []
        for n, key in enumerate(ukeys) if known else ():
            got = known.get(key)
            if got is None:
                continue
            new[n] = False
            j = int(rows_j[n])
            if got[1] or bw.is_pending(got[0]):
                summary.skipped += 1
                continue
            status, error, size, mtime = _status(checked, j, abs_paths[j] if options.check_files else None, summary)
            status_updates.append({"id": got[0], "status": status, "error": error, "size": size, "mtime_ns": mtime})
            if checked.usable[j]:
                vec_ids.append(got[0])
                vec_j.append(j)
        if status_updates:
            s.execute(update(ImageRow), status_updates)
        new_n = np.flatnonzero(new)
        js = rows_j[new_n]
        if len(js):
            cols = _new_columns(checked, js, abs_paths, options.check_files, summary)
            new_ids = _insert(s, catalog, [ukeys[n] for n in new_n.tolist()], [abs_paths[j] for j in js.tolist()],
                              cols, utcnow())
            if not seen.prior_rows:
                seen.add(hashes[new_n], new_ids)
            ok = checked.usable[js]
            vec_ids.extend(new_ids[ok].tolist())
            vec_j.extend(js[ok].tolist())
    summary.seconds["write"] += time.perf_counter() - t
    if vec_ids:
        sel = np.asarray(vec_j, np.int64)
        xb = checked.xb if len(sel) == len(checked.xb) and (sel == np.arange(len(sel))).all() else checked.xb[sel]
        bw.push(np.asarray(vec_ids, dtype=np.int64), xb, new=True)  # none of these images has a vector yet


def _status(checked: CheckedRows, j: int, path: str | None, summary: ImportSummary) -> tuple[str, str | None, int, int]:
    """(status, error, size, mtime_ns) of one row; ``path`` None: the file is not looked at."""
    st = _stat(path) if path is not None else None
    if not checked.usable[j]:
        summary.rejected += 1
        return STATUS_FAILED, checked.reasons.get(j, "unusable vector"), st[0] if st else 0, st[1] if st else 0
    if st is None:
        summary.missing += 1
        return STATUS_MISSING, "image file not found at import", 0, 0
    return STATUS_OK, None, st[0], st[1]


def _new_columns(checked: CheckedRows, js: np.ndarray, abs_paths: list[str], check_files: bool,
                 summary: ImportSummary) -> tuple[list, list, list, list]:
    """(size, mtime_ns, status, error) columns of new rows ``js``; without files to look at, built in bulk."""
    if check_files or not checked.usable[js].all():
        got = [_status(checked, j, abs_paths[j] if check_files else None, summary) for j in js.tolist()]
        return [g[2] for g in got], [g[3] for g in got], [g[0] for g in got], [g[1] for g in got]
    k = len(js)
    summary.missing += k
    return [0] * k, [0] * k, [STATUS_MISSING] * k, ["image file not found at import"] * k


def _insert(s: Session, catalog: Catalog, keys: list[tuple[str, str]], abs_paths: list[str],
            cols: tuple[list, list, list, list], now: object) -> np.ndarray:
    """Insert new image rows (keys, absolute paths, size / mtime_ns / status / error columns); their ids in order."""
    sizes, mtimes, statuses, errors = cols
    raws = [a.encode("utf-8", "surrogateescape") for a in abs_paths]  # os.fsencode on POSIX
    if is_sqlite(catalog):
        first = next_image_id(s)
        k = len(keys)
        insert_images(s, zip(range(first, first + k), (r for r, _ in keys), (rel for _, rel in keys), raws, sizes,
                             mtimes, statuses, errors, itertools.repeat(sqlite_time(now), k), strict=True))  # type: ignore[arg-type]
        return np.arange(first, first + k, dtype=np.int64)
    max_before = int(s.scalar(select(func.max(ImageRow.id))) or 0)
    rows = [{"root": r, "relpath": rel, "path_raw": raw, "sha256": None, "size": size, "mtime_ns": mtime,
             "status": status, "error": error, "added": now}
            for (r, rel), raw, size, mtime, status, error in zip(keys, raws, sizes, mtimes, statuses, errors,
                                                                strict=True)]
    for start in range(0, len(rows), 5000):  # Core executemany (not ORM, no per-row RETURNING), then one look-up
        s.connection().execute(_IMAGES.insert(), rows[start:start + 5000])
    got = {(r, rel): int(i) for i, r, rel in s.execute(
        select(ImageRow.id, ImageRow.root, ImageRow.relpath).where(ImageRow.id > max_before))}
    return np.asarray([got[k] for k in keys], np.int64)
