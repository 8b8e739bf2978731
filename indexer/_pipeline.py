"""build_index: scan → diff against the catalog → decode (DataLoader workers) → embed → shard write → commit.

Crash safety rests on one ordering rule and one reconciliation:

* each checkpoint writes one new append-only shard atomically (temp file, fsync, ``os.replace``; see ``_shards``)
  *before* the catalog rows that point to it commit, so a committed vector row always has its vector on disk, and
  a checkpoint costs one shard however large the index is;
* image ids are never reused; on start, shard files without a committed row are deleted and rows whose shard is
  gone are queued again. A kill therefore loses at most the work since the last checkpoint.

At the end of a run the derived search structure (``_store``: exact, or a FAISS file built from the shards) is
brought up to date, and shards whose tombstoned share passed ``compact_at`` are rewritten.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from sqlalchemy import bindparam, delete, exists, func, insert, select, update
from tqdm.auto import tqdm

from lookalike.common.errors import IndexMismatch, InvalidArgument
from lookalike.common.io import sha256_file
from lookalike.data.image_folder import ImageFile, display_path, scan_images
from lookalike.data.images import DEFAULT_MAX_PIXELS
from lookalike.data.loader import ImageFileDataset, create_loader, decode_raw_batch
from lookalike.data.transforms import supports_tensor_resize
from lookalike.indexer._catalog import (
    STATUS_FAILED,
    STATUS_OK,
    STATUS_PENDING,
    BuildRow,
    Catalog,
    ImageRow,
    ShardRow,
    StoreRow,
    VectorRow,
    utcnow,
)
from lookalike.indexer._cores import plan_cores, torch_threads
from lookalike.indexer._crash import CrashHook
from lookalike.indexer._dtypes import count_dtype, declare_dtype, metric_dtype
from lookalike.indexer._index import is_metric, load_vectors
from lookalike.indexer._migrate import migrate_if_needed
from lookalike.indexer._ray import import_ray, parse_ray_address, run_on_ray, split_crash_spec
from lookalike.indexer._shards import LOCK_FILE as LOCK_FILE
from lookalike.indexer._shards import ShardWriter, clean_orphans, storage_dtype, tombstone
from lookalike.indexer._shards import writer_lock as writer_lock
from lookalike.indexer._store import parse_memory, validate_factory
from lookalike.indexer._upkeep import DEFAULT_COMPACT_AT, update_structure

#: A progress callback: ``progress(stage, done, total)``; stages "scan", "diff", "embed", "derive".
ProgressFn = Callable[[str, int, int], None]

if TYPE_CHECKING:
    from lookalike.metric import Metric

_logger = logging.getLogger(__name__)



@dataclass
class IndexSummary:
    """What one ``build_index`` run did.

    Attributes:
        scanned: image files found under the roots.
        new / changed / moved / removed / unchanged: the diff against the catalog (moved = same content at a new
            path: relinked, not re-embedded).
        failed: files that could not be read in this run (see ``failures``).
        scan_errors: folders or links the scan could not follow.
        embedded: vectors computed in this run.
        reconciled: vectors dropped or rows re-queued when the run opened the index (work lost by a crash).
        total_vectors: vectors of this metric in the index after the run.
        seconds: wall time per stage: scan, diff, decode (waiting for workers, plus device JPEG decode), transfer
            (host → device copy of the pixels), model (the forward pass), write (FAISS flush + catalog), total.
        decoder: "exact" (PIL, bit-exact with the reference), "draft" (``fast_decode``: PIL at a reduced JPEG
            scale) or "device" (``fast_decode`` on CUDA: JPEGs decoded and resized on the GPU).
        dtype: the precision the model ran in ("fp32", "bf16", "fp16"; ``dtype="auto"`` resolved).
        threads / workers: torch threads of the model and decoding processes used.
        warnings: what the user should know (e.g. vectors of another precision added to the same build).
    """

    index_dir: str
    metric: str
    fingerprint: str
    factory: str = "Flat"
    scanned: int = 0
    new: int = 0
    changed: int = 0
    moved: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: int = 0
    scan_errors: int = 0
    embedded: int = 0
    reconciled: int = 0
    total_vectors: int = 0
    checkpoints: int = 0
    decoder: str = "exact"
    dtype: str = "fp32"
    threads: int = 0
    workers: int = 0
    warnings: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("scan", "diff", "decode", "transfer", "model", "write", "total"), 0.0))
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        """Embedded images per second over the decode + transfer + model + write stages."""
        t = sum(self.seconds[k] for k in ("decode", "transfer", "model", "write"))
        return self.embedded / t if t > 0 else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["images_per_s"] = round(self.images_per_s, 2)
        d["failures"] = [{"path": p, "reason": r} for p, r in self.failures]
        return d

    def format(self) -> str:
        """A short human summary (what the CLI prints)."""
        s = self.seconds
        lines = [
            f"index {self.index_dir}  metric {self.metric} ({self.fingerprint}, faiss {self.factory}, {self.dtype})",
            f"scanned {self.scanned}  new {self.new}  changed {self.changed}  moved {self.moved}  "
            f"removed {self.removed}  unchanged {self.unchanged}  failed {self.failed}"
            + (f"  scan errors {self.scan_errors}" if self.scan_errors else ""),
            f"embedded {self.embedded} in {s['total']:.1f}s ({self.images_per_s:.1f} img/s; decode {s['decode']:.1f}s"
            f" ({self.decoder})  transfer {s['transfer']:.1f}s  model {s['model']:.1f}s  write {s['write']:.1f}s)"
            f"  vectors {self.total_vectors}",
        ]
        lines.extend(f"warning: {w}" for w in self.warnings)
        if self.reconciled:
            lines.append(f"recovered from an interrupted run: {self.reconciled} vectors/rows reconciled")
        for p, r in self.failures[:20]:
            lines.append(f"  failed: {p}: {r}")
        if len(self.failures) > 20:
            lines.append(f"  ... {len(self.failures) - 20} more (see 'lookalike info --index {self.index_dir}')")
        return "\n".join(lines)


def _open_build(catalog: Catalog, index_dir: Path, metric: Metric, faiss_factory: str | None,
                storage: str | None = None, max_memory: int | None = None) -> BuildRow:
    fp = metric.fingerprint
    with catalog.session() as s, s.begin():
        b = s.get(BuildRow, fp)
        if b is None:
            for other in s.scalars(select(BuildRow).where(BuildRow.metric == metric.name)):
                _logger.info("index already holds %s vectors of other weights (%s); adding a separate vector file",
                             metric.name, other.fingerprint)
            target = (faiss_factory or "auto").strip()
            validate_factory(metric.dim, target)
            b = BuildRow(fingerprint=fp, metric=metric.name, dim=metric.dim, factory=target, current_factory="Flat",
                         search_params=None, count=0)
            s.add(b)
            s.add(StoreRow(fingerprint=fp, storage=storage_dtype(storage), max_memory=max_memory, structure="exact"))
        else:
            if b.dim != metric.dim:
                raise IndexMismatch(
                    f"index {index_dir} holds {b.dim}-d vectors for {b.metric!r} but the metric gives {metric.dim}-d "
                    f"vectors", hint="use another index folder")
            if faiss_factory and faiss_factory.strip() != b.factory:
                raise IndexMismatch(
                    f"index {index_dir} stores {b.metric!r} vectors as faiss {b.factory!r}, not {faiss_factory!r}",
                    hint="leave out the FAISS type to keep the index's own, or use a new index folder")
            st = s.get(StoreRow, fp)
            if st is None:
                st = StoreRow(fingerprint=fp, storage=storage_dtype(storage), max_memory=max_memory,
                              structure="exact")
                s.add(st)
            elif storage is not None and storage_dtype(storage) != st.storage:
                raise IndexMismatch(
                    f"index {index_dir} stores {b.metric!r} vectors as {st.storage}, not {storage_dtype(storage)}",
                    hint="leave out the storage type to keep the index's own, or use a new index folder")
            if max_memory is not None:
                st.max_memory = max_memory
    return b


def reconcile(catalog: Catalog, fingerprint: str) -> int:
    """Make the shards and the catalog agree after a crash: delete shard files no committed row names, and drop
    vector rows whose shard row is missing (their images are queued again). Returns how many files/rows were fixed.
    """
    n = clean_orphans(catalog, fingerprint)
    with catalog.session() as s, s.begin():
        known = select(ShardRow.id).where(ShardRow.fingerprint == fingerprint)
        res = s.execute(delete(VectorRow).where(VectorRow.fingerprint == fingerprint,
                                                (VectorRow.shard_id.is_(None)) | (VectorRow.shard_id.not_in(known))))
        missing = int(res.rowcount or 0)
    if n or missing:
        _logger.warning("reconciled index: removed %d uncommitted shard files, re-queued %d images without a "
                        "vector", n, missing)
    return n + missing


def _core_update_by_id(s, rows: list[dict]) -> None:  # type: ignore[no-untyped-def]
    """UPDATE images by id, one Core executemany per set of columns (several times faster than the ORM bulk update
    on the driver's hot path: every checkpoint updates each embedded image's row)."""
    t = ImageRow.__table__
    by_keys: dict[tuple[str, ...], list[dict]] = defaultdict(list)
    for r in rows:
        by_keys[tuple(sorted(k for k in r if k != "id"))].append(r)
    for keys, batch in by_keys.items():
        stmt = t.update().where(t.c.id == bindparam("b_id")).values({k: bindparam(f"b_{k}") for k in keys})
        s.connection().execute(stmt, [{f"b_{k}": v for k, v in r.items()} for r in batch])


def _bulk_update(s, updates: list[dict]) -> None:  # type: ignore[no-untyped-def]
    """ORM bulk UPDATE by primary key, one executemany per set of columns."""
    by_keys: dict[tuple[str, ...], list[dict]] = defaultdict(list)
    for u in updates:
        by_keys[tuple(sorted(u))].append(u)
    for batch in by_keys.values():
        s.execute(update(ImageRow), batch)


def _diff(
    catalog: Catalog, roots: list[str], files: list[ImageFile], summary: IndexSummary
) -> list[int]:
    """Bring the catalog rows under ``roots`` in line with the scan; returns ids whose old vectors must go.

    Works on plain column tuples (not ORM objects), so a million-file catalog costs a few hundred MB at most.
    """
    stale_ids: list[int] = []
    roots_text = [display_path(r) for r in roots]
    cols = (ImageRow.id, ImageRow.root, ImageRow.relpath, ImageRow.sha256, ImageRow.size, ImageRow.mtime_ns,
            ImageRow.status)
    with catalog.session() as s, s.begin():
        rows = s.execute(select(*cols).where(ImageRow.root.in_(roots_text))).all()
        by_key = {(r.root, r.relpath): r for r in rows}
        seen: set[int] = set()
        new_files: list[ImageFile] = []
        updates: list[dict] = []
        for f in files:
            row = by_key.get((display_path(f.root), display_path(f.relpath)))
            if row is None:
                new_files.append(f)
                continue
            seen.add(row.id)
            if row.size == f.size and row.mtime_ns == f.mtime_ns and row.status != STATUS_FAILED:
                summary.unchanged += 1
                continue
            try:
                sha = sha256_file(f.path)
            except OSError as e:
                updates.append({"id": row.id, "status": STATUS_FAILED, "error": _os_reason(e)})
                summary.unchanged += 1
                continue
            if sha == row.sha256:
                u = {"id": row.id, "size": f.size, "mtime_ns": f.mtime_ns}
                if row.status == STATUS_FAILED:  # retry: permissions may have been fixed
                    u.update(status=STATUS_PENDING, error=None)
                updates.append(u)
                summary.unchanged += 1
                continue
            summary.changed += 1
            updates.append({"id": row.id, "sha256": sha, "size": f.size, "mtime_ns": f.mtime_ns,
                            "status": STATUS_PENDING, "error": None, "width": None, "height": None, "format": None})
            stale_ids.append(row.id)
        gone = {r.id: r for r in rows if r.id not in seen}
        gone_by_sha: dict[str, list] = defaultdict(list)
        for r in gone.values():
            if r.sha256:
                gone_by_sha[r.sha256].append(r)
        inserts: list[dict] = []
        for f in new_files:
            try:
                sha: str | None = sha256_file(f.path)
                err = None
            except OSError as e:
                sha, err = None, _os_reason(e)
            cands = gone_by_sha.get(sha or "")
            if cands:
                row = cands.pop()
                del gone[row.id]
                updates.append({"id": row.id, "root": display_path(f.root), "relpath": display_path(f.relpath),
                                "path_raw": os.fsencode(f.path), "size": f.size, "mtime_ns": f.mtime_ns})
                summary.moved += 1
                continue
            summary.new += 1
            inserts.append({"root": display_path(f.root), "relpath": display_path(f.relpath),
                            "path_raw": os.fsencode(f.path), "sha256": sha, "size": f.size, "mtime_ns": f.mtime_ns,
                            "status": STATUS_FAILED if err else STATUS_PENDING, "error": err, "added": utcnow()})
            if err:
                summary.failed += 1
                summary.failures.append((display_path(f.path), err))
        changed = [u["id"] for u in updates if "sha256" in u]
        tombstone(s, changed)  # their old vectors become tombstones (every metric); they are embedded again
        if gone:  # first, so that a moved file's new path never collides with a removed row's
            ids = sorted(gone)
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                tombstone(s, chunk)
                s.execute(delete(ImageRow).where(ImageRow.id.in_(chunk)))
            stale_ids.extend(ids)
            summary.removed += len(ids)
        _bulk_update(s, updates)
        for start in range(0, len(inserts), 5000):
            s.execute(insert(ImageRow), inserts[start:start + 5000])
    return stale_ids


def _os_reason(e: OSError) -> str:
    if isinstance(e, PermissionError):
        return "permission denied"
    return f"cannot read: {e.strerror or e}"


def _queue(catalog: Catalog, roots: list[str], fingerprint: str) -> list[tuple[int, str]]:
    has_vec = exists().where(VectorRow.image_id == ImageRow.id, VectorRow.fingerprint == fingerprint)
    with catalog.session() as s:
        q = (select(ImageRow.id, ImageRow.path_raw)
             .where(ImageRow.root.in_([display_path(r) for r in roots]), ImageRow.status != STATUS_FAILED, ~has_vec)
             .order_by(ImageRow.id))
        return [(int(i), os.fsdecode(raw)) for i, raw in s.execute(q)]


class _Writer:
    """Buffers embedded vectors and decode results; a checkpoint writes one shard, then commits the catalog."""

    #: Default checkpoint triggers (``checkpoint_every=None``): this many rows, or this many seconds since the last.
    MAX_ROWS = 65536
    MAX_SECONDS = 30.0

    def __init__(self, catalog: Catalog, shards: ShardWriter, fingerprint: str, crash: CrashHook,
                 summary: IndexSummary, checkpoint_every: int | None):
        self.catalog, self.shards, self.fp, self.crash = catalog, shards, fingerprint, crash
        self.summary = summary
        self.every = checkpoint_every
        self.ids: list[int] = []
        self.vecs: list[np.ndarray] = []
        self.ok: list[dict] = []
        self.failed: list[dict] = []
        self.last_end = time.perf_counter()

    def pending(self) -> int:
        return len(self.ids) + len(self.failed)

    def push(self, ids: list[int], vecs: np.ndarray | None, ok: list[dict], failed: list[dict]) -> None:
        if vecs is not None and len(ids):
            self.ids.extend(ids)
            self.vecs.append(vecs)
        self.ok.extend(ok)
        self.failed.extend(failed)
        if self._due():
            self.checkpoint()

    def _due(self) -> bool:
        if not self.pending():
            return False
        if self.every is not None:
            return self.every <= 0 or len(self.ids) + len(self.failed) >= self.every
        # a checkpoint costs one shard whatever the index size: bound the work a kill can lose, and keep shards
        # large enough that a big index is not thousands of tiny files
        return len(self.ids) >= self.MAX_ROWS or time.perf_counter() - self.last_end >= self.MAX_SECONDS

    def checkpoint(self) -> None:
        t0 = time.perf_counter()
        pending = self.shards.write(self.ids, np.concatenate(self.vecs)) if self.ids else None
        with self.catalog.session() as s, s.begin():
            if self.ok:
                _core_update_by_id(s, self.ok)
            if self.failed:
                _core_update_by_id(s, self.failed)
            if pending is not None:
                self.shards.record(s, pending)
            s.execute(update(BuildRow).where(BuildRow.fingerprint == self.fp)
                      .values(count=BuildRow.count + len(self.ids), updated=utcnow()))
            count_dtype(s, self.fp, self.summary.dtype, len(self.ids))
            s.flush()
            self.crash("during_commit")
        self.crash("after_commit")
        self.summary.embedded += len(self.ids)
        self.summary.checkpoints += 1
        self.ids, self.vecs, self.ok, self.failed = [], [], [], []
        self.last_end = time.perf_counter()
        self.summary.seconds["write"] += self.last_end - t0


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that stage timings are the stage's own."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_decode(m: Metric, fast_decode: bool) -> bool:
    """Decode JPEGs on the GPU: with ``fast_decode`` on a CUDA metric whose preprocessing the tensor resize
    reproduces (``supports_tensor_resize``) and a torchvision that can decode JPEGs."""
    if not fast_decode or m.device.type != "cuda":
        return False
    return supports_tensor_resize(m.cfg.preprocess) and _has_decode_jpeg()


def _has_decode_jpeg() -> bool:
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError:
        _logger.info("torchvision is not installed: JPEGs are decoded on the CPU (PIL draft)")
        return False
    return True


def build_index(
    roots: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    index_dir: str | os.PathLike[str],
    *,
    metric: str | Metric = "dreamsim",
    device: str | None = None,
    dtype: str | None = "auto",
    batch_size: int | None = None,
    workers: int | None = None,
    threads: int | None = None,
    faiss: str | None = None,
    db_url: str | None = None,
    progress: bool | ProgressFn = True,
    checkpoint_every: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    dedup_threshold: float | None = None,
    fast_decode: bool = False,
    storage: str | None = None,
    max_memory: str | int | None = None,
    compact_at: float = DEFAULT_COMPACT_AT,
    ray: bool | str | None = None,
    crash_at: str | None = None,
    follow_links: bool = False,
) -> IndexSummary:
    """Index image folders, or bring an existing index up to date.

    New and changed files are embedded, removed files dropped, moved files (same content hash) relinked without
    re-embedding; re-running on an unchanged tree embeds nothing. Unreadable files are recorded with a reason and
    the run goes on. Safe to kill at any moment: the next run resumes and loses at most one checkpoint of work.

    Args:
        roots: one folder or several.
        index_dir: the index folder (created if missing). Several metrics can share it.
        metric: a metric name from ``list_metrics()`` (kind "embedding") or a loaded Metric.
        device: "cuda", "mps", "cpu" (default: cuda > mps > cpu).
        dtype: "auto" (default: bf16 where the device runs it natively, else fp32; see
            ``lookalike.metric.resolve_dtype``), "fp32", "bf16", "fp16". The dtype is recorded with the build; a
            run that adds vectors of another precision to an existing build says so in ``IndexSummary.warnings``.
        batch_size: images per embedding batch (default: ``suggest_batch_size`` — 32 on the CPU, fitted to free
            memory on a GPU).
        workers: decoding processes (0 decodes in this process). Default: on a GPU, CPUs - 1 (at most 8); on the
            CPU, a quarter of the cores (at least 1), the rest left to the model (``lookalike.indexer._cores``).
        threads: torch threads of the model during the run (default: on the CPU, the cores not given to decoding;
            all of them up to 3 cores); restored afterwards.
        faiss: the search structure derived from the shards: "Flat" (exact scan of the memory-mapped shards) or a
            FAISS factory string ("HNSW32", "IVF4096,Flat", "IVF4096,SQ8", "IVF4096,PQ64"); default "auto": chosen
            from ``max_memory`` (exact while the vectors fit it; without a budget, exact up to 200k vectors), an
            inverted file with memory-mapped on-disk lists beyond. Trained types are trained on a sample once enough
            vectors are indexed (exact search until then).
        db_url: SQLAlchemy URL for the catalog (default: ``catalog.sqlite`` in ``index_dir``).
        progress: True shows a tqdm bar; a callable is called as ``progress(stage, done, total)`` with stage "scan"
            (files found), "diff", "embed" (images embedded or failed), "derive" (search structure rows); False:
            nothing.
        checkpoint_every: images between checkpoints (one shard written + catalog commit); 0 = every batch;
            default every 65,536 images or 30 s, whichever comes first.
        max_pixels: decompression-bomb limit per image.
        dedup_threshold: store a default distance threshold for ``find_duplicates`` with this metric's vectors.
        storage: vector storage dtype of a new build: "fp32" (default) or "fp16" (half the disk and page cache;
            distances change by ~1e-3, see the README).
        max_memory: memory budget for the search structure ("4G", "512M" or bytes), stored with the build and used
            to choose it (see ``faiss``); ``index_info`` reports the choice and why.
        compact_at: rewrite a shard once this share of its rows is tombstoned (removed or re-embedded images).
        fast_decode: faster, not bit-exact decoding: large JPEGs decoded at a reduced scale (PIL ``draft`` to at
            least twice the metric's input size), or on CUDA decoded and resized on the GPU (``decode_jpeg`` +
            antialiased bicubic). Embeddings then differ slightly from the exact path (cosine ~0.998 measured on
            efficientnet_lite0), beyond the 1e-5 parity tolerance; vectors stay comparable for search and dedup.
        ray: decode and embed on a Ray cluster (``pip install "lookalike[ray]"``): "auto" / True (the running
            cluster, else a local one for this run) or an address ("HOST:6379", "ray://HOST:10001"). This process
            stays the single writer; vectors equal the local path's. See ``lookalike.indexer._ray``.
        crash_at: test hook (see ``lookalike.indexer._crash``); also read from ``$LOOKALIKE_CRASH_AT``.
        follow_links: also index files behind symbolic links that lead outside their root (by default such links
            are skipped and logged; links inside the root are followed; see ``lookalike.data.image_folder``).

    Returns:
        An IndexSummary.

    Raises:
        FileNotFoundError: a root folder does not exist.
        ValueError: a pairwise-only metric, an index built with another dimension, FAISS type or storage, another
            writer; ``IndexDamaged`` (a ValueError) for a damaged index file (repair with ``check_index``).
        OSError: a shard could not be written (disk full...); the previous index stays intact.
    """
    t_start = time.perf_counter()
    ray_address = parse_ray_address(ray)
    worker_crash = None
    if ray_address is not None:
        import_ray()  # before any work: without Ray, say how to get it
        crash_at, worker_crash = split_crash_spec(crash_at)
    crash = CrashHook(crash_at)
    root_list = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
    if not root_list:
        raise InvalidArgument("no folder to index; give at least one root")
    abs_roots = []
    for r in root_list:
        a = os.path.abspath(os.fspath(r))
        if not os.path.exists(a):
            raise FileNotFoundError(f"folder to index not found: {display_path(a)}")
        if not os.path.isdir(a):
            raise InvalidArgument(f"index roots must be folders, got a file: {display_path(a)}")
        abs_roots.append(a)
    if batch_size is not None and batch_size < 1:
        raise InvalidArgument(f"batch_size must be >= 1, got {batch_size}")
    if storage is not None:
        storage_dtype(storage)
    budget = parse_memory(max_memory)
    if not 0.0 < compact_at <= 1.0:
        raise InvalidArgument(f"compact_at must be in (0, 1], got {compact_at}")
    if dedup_threshold is not None and not 0.0 <= dedup_threshold <= 2.0:
        raise InvalidArgument(f"dedup_threshold {dedup_threshold} is outside [0, 2] (the distance is 1 - cosine)")
    index_path = Path(index_dir)
    # The model loads before the folder is created: a missing weight file leaves nothing behind.
    if is_metric(metric):
        m = metric
    else:
        from lookalike.metric import load_metric

        # With Ray the driver only needs the metric's facts (dim, fingerprint, preprocessing): the actors embed.
        m = load_metric(metric, device="cpu" if ray_address is not None else device, dtype=dtype)
    if m.kind != "embedding" or not m.dim:
        raise InvalidArgument(f"metric {m.name!r} is pairwise (it compares two images) and cannot be indexed; "
                         f"choose an embedding metric such as 'dreamsim' or 'efficientnet_lite0'")
    if batch_size is None and ray_address is None:  # with Ray: fitted on a worker's GPU (see _ray)
        from lookalike.metric import suggest_batch_size

        batch_size = suggest_batch_size(m)  # CPU: 32; CUDA: the largest power of two that fits
    index_path.mkdir(parents=True, exist_ok=True)
    plan = plan_cores(m.device, workers=workers, threads=threads)
    with writer_lock(index_path), torch_threads(plan.threads):
        catalog = Catalog(index_path, db_url=db_url, create=True)
        try:
            migrate_if_needed(catalog)
            return _run(catalog, index_path, abs_roots, m, batch_size=batch_size,
                        workers=plan.workers, prefetch=plan.prefetch, faiss_factory=faiss,
                        dedup_threshold=dedup_threshold, fast_decode=fast_decode, storage=storage, max_memory=budget,
                        compact_at=compact_at, progress=progress, checkpoint_every=checkpoint_every,
                        max_pixels=max_pixels, crash=crash, t_start=t_start, ray_address=ray_address,
                        worker_crash=worker_crash, follow_links=follow_links)
        finally:
            catalog.close()


class _Progress:
    """Routes progress to a callback, or to tqdm bars (``progress=True``), or nowhere."""

    def __init__(self, progress: bool | ProgressFn, name: str):
        self.fn = progress if callable(progress) else None
        self.show = progress is True
        self.name = name
        self.bar: tqdm | None = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.fn is not None:
            self.fn(stage, done, total)
        if self.show and stage == "embed":
            if self.bar is None:
                self.bar = tqdm(total=total, unit="img", desc=f"index {self.name}", dynamic_ncols=True)
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _run(catalog: Catalog, index_dir: Path, roots: list[str], m: Metric, *, batch_size: int | None, workers: int,
         prefetch: int,
         faiss_factory: str | None, dedup_threshold: float | None, fast_decode: bool, storage: str | None,
         max_memory: int | None, compact_at: float, progress: bool | ProgressFn, checkpoint_every: int | None,
         max_pixels: int | None, crash: CrashHook, t_start: float, ray_address: str | None = None,
         worker_crash: str | None = None, follow_links: bool = False) -> IndexSummary:
    build = _open_build(catalog, index_dir, m, faiss_factory, storage, max_memory)
    if dedup_threshold is not None:
        catalog.set_dedup_threshold(build.fingerprint, dedup_threshold)
    summary = IndexSummary(index_dir=str(index_dir), metric=m.name, fingerprint=m.fingerprint)
    summary.reconciled = reconcile(catalog, build.fingerprint)
    load_vectors(catalog, build)  # a damaged shard or search file stops the run here, naming the file
    report = _Progress(progress, m.name)

    t = time.perf_counter()
    report("scan", 0, 0)
    scan = scan_images(roots, outside_links=follow_links)
    summary.scanned, summary.scan_errors = len(scan.files), len(scan.errors)
    summary.seconds["scan"] = time.perf_counter() - t
    report("scan", summary.scanned, summary.scanned)

    t = time.perf_counter()
    report("diff", 0, summary.scanned)
    _diff(catalog, roots, scan.files, summary)  # removed / changed images' vectors are tombstoned in its commit
    queue = _queue(catalog, roots, build.fingerprint)
    summary.seconds["diff"] = time.perf_counter() - t
    report("diff", summary.scanned, summary.scanned)
    crash("scan")
    _logger.info("scan: %d files (%d new, %d changed, %d moved, %d removed); %d to embed", summary.scanned,
                 summary.new, summary.changed, summary.moved, summary.removed, len(queue))

    writer = _Writer(catalog, ShardWriter(catalog, build.fingerprint, build.dim, crash=crash), build.fingerprint,
                     crash, summary, checkpoint_every)
    on_cuda = m.device.type == "cuda"
    draft_size = 2 * m.input_size if fast_decode else None
    device_decode = _device_decode(m, fast_decode)
    summary.decoder = "device" if device_decode else "draft" if fast_decode else "exact"
    summary.dtype = metric_dtype(m)
    if queue:
        note = declare_dtype(catalog, build, summary.dtype)
        if note:
            summary.warnings.append(note)
    done = 0
    report("embed", 0, len(queue))
    if queue and ray_address is not None:  # decode + embed on Ray; this process stays the single writer
        summary.decoder = "ray, " + ("draft" if fast_decode else "exact")
        try:
            run_on_ray(queue, m, writer, summary, address=ray_address, batch_size=batch_size, max_pixels=max_pixels,
                       draft_size=draft_size, report=report, crash=crash, worker_crash=worker_crash)
        finally:
            report.close()
    elif queue:
        assert batch_size is not None
        dataset = ImageFileDataset(queue, m.preprocess, max_pixels=max_pixels, draft_size=draft_size,
                                   raw_jpeg=device_decode)
        summary.workers = min(workers, max(0, len(queue) // batch_size))
        summary.threads = torch.get_num_threads()
        loader = create_loader(dataset, batch_size=batch_size, workers=summary.workers, prefetch=prefetch,
                               pin_memory=on_cuda)
        it = iter(loader)
        try:
            while True:
                t = time.perf_counter()
                batch = next(it, None)
                if batch is not None and batch.raw:
                    batch = decode_raw_batch(batch, m.cfg.preprocess, m.device, m.preprocess, max_pixels=max_pixels,
                                             draft_size=draft_size)
                    _sync(m.device)
                summary.seconds["decode"] += time.perf_counter() - t
                if batch is None:
                    break
                crash("decode")
                vecs = None
                if batch.pixels is not None:
                    t = time.perf_counter()
                    x = batch.pixels.to(m.device, non_blocking=True)
                    _sync(m.device)
                    t1 = time.perf_counter()
                    summary.seconds["transfer"] += t1 - t
                    with torch.inference_mode():
                        vecs = m.embed(x).float().cpu().numpy()
                    summary.seconds["model"] += time.perf_counter() - t1
                    crash("embed")
                ok = [{"id": i.key, "status": STATUS_OK, "error": None, "width": i.width, "height": i.height,
                       "format": i.format[:16]} for i in batch.infos]
                failed = [{"id": f.key, "status": STATUS_FAILED, "error": f.reason} for f in batch.failures]
                for f in batch.failures:
                    summary.failed += 1
                    summary.failures.append((display_path(f.path), f.reason))
                writer.push(batch.keys, vecs, ok, failed)
                done += len(batch)
                report("embed", done, len(queue))
        finally:
            report.close()
            del it
    if writer.pending():
        writer.checkpoint()
    t = time.perf_counter()
    upkeep = update_structure(catalog, build, compact_at=compact_at,
                              progress=lambda d, n: report("derive", d, n))
    catalog.backup()  # the copy 'lookalike check --repair' restores if the catalog is ever damaged
    summary.seconds["write"] += time.perf_counter() - t
    summary.factory = upkeep.factory
    with catalog.session() as s:
        summary.total_vectors = int(s.scalar(select(func.count()).select_from(VectorRow)
                                             .where(VectorRow.fingerprint == build.fingerprint)) or 0)
    summary.seconds["total"] = time.perf_counter() - t_start
    _logger.info("indexed: %s", summary.format().replace("\n", " | "))
    return summary
