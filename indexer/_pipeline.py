"""build_index: scan → diff against the catalog → decode (DataLoader workers) → embed → FAISS flush → commit.

Crash safety rests on one ordering rule and one reconciliation:

* the FAISS file is replaced atomically (temp file, fsync, ``os.replace``) *before* the catalog rows that point to
  its new vectors commit, so a committed vector row always has its vector on disk;
* FAISS ids are catalog image ids, never reused; on start, vectors without a committed row are dropped and rows
  whose vector is missing are queued again. A kill therefore loses at most the work since the last checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from sqlalchemy import delete, exists, insert, select, update
from tqdm.auto import tqdm

from lookalike.common.errors import IndexLocked, IndexMismatch, InvalidArgument
from lookalike.common.io import file_lock, sha256_file
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
    VectorRow,
    utcnow,
)
from lookalike.indexer._cores import plan_cores, torch_threads
from lookalike.indexer._crash import CrashHook
from lookalike.indexer._dtypes import count_dtype, declare_dtype, metric_dtype
from lookalike.indexer._index import is_metric
from lookalike.indexer._vectors import AUTO_FLAT_MAX, VectorIndex, choose_factory, min_train_size, vectors_file

if TYPE_CHECKING:
    from lookalike.metric import Metric

_logger = logging.getLogger(__name__)

LOCK_FILE = "writer.lock"


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


@contextlib.contextmanager
def writer_lock(index_dir: Path) -> Iterator[None]:
    """One writer per index folder (an advisory lock on ``writer.lock``; readers never take it).

    Raises:
        IndexLocked: another process is writing this index.
    """
    with file_lock(index_dir / LOCK_FILE, blocking=False) as held:
        if not held:
            raise IndexLocked(f"another process is writing the index {index_dir}",
                              hint="wait for the other 'lookalike index' run to finish")
        yield


def _open_build(catalog: Catalog, index_dir: Path, metric: Metric, faiss_factory: str | None) -> BuildRow:
    fp = metric.fingerprint
    with catalog.session() as s, s.begin():
        b = s.get(BuildRow, fp)
        if b is None:
            for other in s.scalars(select(BuildRow).where(BuildRow.metric == metric.name)):
                _logger.info("index already holds %s vectors of other weights (%s); adding a separate vector file",
                             metric.name, other.fingerprint)
            target = (faiss_factory or "auto").strip()
            current = "Flat"
            if target not in ("auto", "Flat"):
                probe = VectorIndex.create(metric.dim, target)  # validates the factory string
                if probe.is_trained:
                    current = target
            b = BuildRow(fingerprint=fp, metric=metric.name, dim=metric.dim, factory=target, current_factory=current,
                         search_params=None, count=0)
            s.add(b)
        else:
            if b.dim != metric.dim:
                raise IndexMismatch(
                    f"index {index_dir} holds {b.dim}-d vectors for {b.metric!r} but the metric gives {metric.dim}-d "
                    f"vectors", hint="use another index folder")
            if faiss_factory and faiss_factory.strip() != b.factory:
                raise IndexMismatch(
                    f"index {index_dir} stores {b.metric!r} vectors as faiss {b.factory!r}, not {faiss_factory!r}",
                    hint="leave out the FAISS type to keep the index's own, or use a new index folder")
    return b


def _load_for_write(index_dir: Path, catalog: Catalog, build: BuildRow) -> VectorIndex:
    path = vectors_file(index_dir, build.fingerprint)
    for tmp in index_dir.glob(f".{path.name}.tmp-*"):  # left by a run killed mid-flush (we hold the writer lock)
        with contextlib.suppress(OSError):
            tmp.unlink()
    if path.is_file():
        vi = VectorIndex.load(path, build.current_factory)
        if vi.dim != build.dim:
            raise InvalidArgument(
                f"vector file {path} holds {vi.dim}-d vectors but metric {build.metric!r} is {build.dim}-d; "
                f"delete {path.name} and re-run to re-embed"
            )
        with contextlib.suppress(ValueError, AttributeError, RuntimeError):
            vi.set_search_params(build.search_params)
        return vi
    factory = build.current_factory
    vi = VectorIndex.create(build.dim, factory)
    if not vi.is_trained:  # the trained file is gone: stage in Flat again
        vi = VectorIndex.create(build.dim, "Flat")
        with catalog.session() as s, s.begin():
            s.execute(update(BuildRow).where(BuildRow.fingerprint == build.fingerprint)
                      .values(current_factory="Flat", search_params=None))
        build.current_factory, build.search_params = "Flat", None
    return vi


def reconcile(catalog: Catalog, vi: VectorIndex, fingerprint: str) -> int:
    """Make the FAISS file and the catalog agree: drop vectors without a committed row, and delete vector rows whose
    vector is missing (their images are queued again). Returns how many vectors/rows were fixed."""
    with catalog.session() as s, s.begin():
        rows = dict(s.execute(select(VectorRow.faiss_id, VectorRow.image_id)
                              .where(VectorRow.fingerprint == fingerprint)).all())
        faiss_ids = set(vi.ids().tolist())
        row_ids = set(rows)
        orphans = faiss_ids - row_ids
        missing = row_ids - faiss_ids
        if missing:
            missing_list = sorted(missing)
            for start in range(0, len(missing_list), 500):
                s.execute(delete(VectorRow).where(VectorRow.fingerprint == fingerprint,
                                                  VectorRow.faiss_id.in_(missing_list[start:start + 500])))
    if orphans:
        vi.remove(sorted(orphans))
    if orphans or missing:
        _logger.warning("reconciled index: dropped %d vectors without a catalog row, re-queued %d images without "
                        "a vector", len(orphans), len(missing))
    return len(orphans) + len(missing)


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
        for start in range(0, len(changed), 500):
            s.execute(delete(VectorRow).where(VectorRow.image_id.in_(changed[start:start + 500])))
        if gone:  # first, so that a moved file's new path never collides with a removed row's
            ids = sorted(gone)
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                s.execute(delete(VectorRow).where(VectorRow.image_id.in_(chunk)))
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
    """Buffers embedded vectors and decode results; a checkpoint flushes FAISS, then commits the catalog."""

    def __init__(self, catalog: Catalog, vi: VectorIndex, path: Path, fingerprint: str, crash: CrashHook,
                 summary: IndexSummary, checkpoint_every: int | None):
        self.catalog, self.vi, self.path, self.fp, self.crash = catalog, vi, path, fingerprint, crash
        self.summary = summary
        self.every = checkpoint_every
        self.ids: list[int] = []
        self.vecs: list[np.ndarray] = []
        self.ok: list[dict] = []
        self.failed: list[dict] = []
        self.last_end = time.perf_counter()
        self.last_cost = 0.0

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
        if len(self.ids) >= 50_000:
            return True
        # adaptive: keep the time spent rewriting the FAISS file under ~10 % of the run
        return time.perf_counter() - self.last_end >= 10.0 * self.last_cost

    def checkpoint(self) -> None:
        t0 = time.perf_counter()
        if self.ids:
            self.vi.add(np.concatenate(self.vecs), self.ids)
        if self.vi.dirty:
            self.vi.save(self.path, before_replace=lambda: self.crash("during_flush"))
            self.crash("after_flush")
        with self.catalog.session() as s, s.begin():
            if self.ok:
                s.execute(update(ImageRow), self.ok)
            if self.failed:
                s.execute(update(ImageRow), self.failed)
            if self.ids:
                s.execute(insert(VectorRow),
                          [{"image_id": i, "fingerprint": self.fp, "faiss_id": i} for i in self.ids])
            s.execute(update(BuildRow).where(BuildRow.fingerprint == self.fp)
                      .values(count=self.vi.ntotal, updated=utcnow()))
            count_dtype(s, self.fp, self.summary.dtype, len(self.ids))
            s.flush()
            self.crash("during_commit")
        self.crash("after_commit")
        self.summary.embedded += len(self.ids)
        self.summary.checkpoints += 1
        self.ids, self.vecs, self.ok, self.failed = [], [], [], []
        self.last_end = time.perf_counter()
        self.last_cost = self.last_end - t0
        self.summary.seconds["write"] += self.last_cost


def _maybe_convert(catalog: Catalog, vi: VectorIndex, path: Path, build: BuildRow, seed: int = 0) -> VectorIndex:
    """Turn the staging Flat index into the requested (or auto-chosen) trained FAISS type once it has enough data."""
    n = vi.ntotal
    if not vi.is_flat or n == 0:
        return vi
    if build.factory == "auto":
        if n <= AUTO_FLAT_MAX:
            return vi
        target, params = choose_factory(n)
    elif build.factory == "Flat":
        return vi
    else:
        target, params = build.factory, build.search_params
        if params is None:
            m = choose_factory(max(n, AUTO_FLAT_MAX + 1))[1] if "IVF" in target else None
            params = m
        need = min_train_size(target)
        if n < need:
            _logger.warning("faiss %r wants %d training vectors; %d indexed so far: staying exact (Flat) for now",
                            target, need, n)
            return vi
    need = max(min_train_size(target), 1)
    rng = np.random.default_rng(seed)
    ids = vi.ids()
    sample_ids = ids if n <= max(need, 100_000) else rng.choice(ids, size=max(need, 100_000), replace=False)
    _logger.info("training faiss %s on %d of %d vectors", target, len(sample_ids), n)
    new = VectorIndex.create(vi.dim, target)
    new.train(vi.vectors(np.sort(sample_ids)))
    for bid, xb in vi.iter_blocks(65536):
        new.add(xb, bid.tolist())
    if params:
        with contextlib.suppress(ValueError, AttributeError, RuntimeError):
            new.set_search_params(params)
    new.save(path)
    with catalog.session() as s, s.begin():
        s.execute(update(BuildRow).where(BuildRow.fingerprint == build.fingerprint)
                  .values(current_factory=target, search_params=params, updated=utcnow()))
    build.current_factory, build.search_params = target, params
    return new


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
    progress: bool = True,
    checkpoint_every: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    dedup_threshold: float | None = None,
    fast_decode: bool = False,
    crash_at: str | None = None,
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
        faiss: FAISS factory string ("Flat", "HNSW32", "IVF4096,Flat", "IVF4096,PQ64,RFlat"); default "auto": exact
            Flat up to 200k vectors, an inverted file beyond. Trained types are trained on a sample once enough
            vectors are indexed (exact search until then).
        db_url: SQLAlchemy URL for the catalog (default: ``catalog.sqlite`` in ``index_dir``).
        progress: show a tqdm progress bar.
        checkpoint_every: images between checkpoints (FAISS flush + catalog commit); 0 = every batch; default
            adaptive (every batch while flushing is cheap, keeping the flush time near 10 % of the run).
        max_pixels: decompression-bomb limit per image.
        dedup_threshold: store a default distance threshold for ``find_duplicates`` with this metric's vectors.
        fast_decode: faster, not bit-exact decoding: large JPEGs decoded at a reduced scale (PIL ``draft`` to at
            least twice the metric's input size), or on CUDA decoded and resized on the GPU (``decode_jpeg`` +
            antialiased bicubic). Embeddings then differ slightly from the exact path (cosine ~0.998 measured on
            efficientnet_lite0), beyond the 1e-5 parity tolerance; vectors stay comparable for search and dedup.
        crash_at: test hook (see ``lookalike.indexer._crash``); also read from ``$LOOKALIKE_CRASH_AT``.

    Returns:
        An IndexSummary.

    Raises:
        FileNotFoundError: a root folder does not exist.
        ValueError: a pairwise-only metric, an index built with another dimension or FAISS type, another writer.
        OSError: the FAISS file could not be written (disk full...); the previous index stays intact.
    """
    t_start = time.perf_counter()
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
    if dedup_threshold is not None and not 0.0 <= dedup_threshold <= 2.0:
        raise InvalidArgument(f"dedup_threshold {dedup_threshold} is outside [0, 2] (the distance is 1 - cosine)")
    index_path = Path(index_dir)
    # The model loads before the folder is created: a missing weight file leaves nothing behind.
    if is_metric(metric):
        m = metric
    else:
        from lookalike.metric import load_metric

        m = load_metric(metric, device=device, dtype=dtype)
    if m.kind != "embedding" or not m.dim:
        raise InvalidArgument(f"metric {m.name!r} is pairwise (it compares two images) and cannot be indexed; "
                              f"choose an embedding metric such as 'dreamsim' or 'efficientnet_lite0'")
    if batch_size is None:
        from lookalike.metric import suggest_batch_size

        batch_size = suggest_batch_size(m)  # CPU: 32; CUDA: the largest power of two that fits
    index_path.mkdir(parents=True, exist_ok=True)
    plan = plan_cores(m.device, workers=workers, threads=threads)
    with writer_lock(index_path), torch_threads(plan.threads):
        catalog = Catalog(index_path, db_url=db_url, create=True)
        try:
            return _run(catalog, index_path, abs_roots, m, batch_size=batch_size,
                        workers=plan.workers, prefetch=plan.prefetch, faiss_factory=faiss,
                        dedup_threshold=dedup_threshold, fast_decode=fast_decode,
                        progress=progress, checkpoint_every=checkpoint_every, max_pixels=max_pixels, crash=crash,
                        t_start=t_start)
        finally:
            catalog.close()


def _run(catalog: Catalog, index_dir: Path, roots: list[str], m: Metric, *, batch_size: int, workers: int,
         prefetch: int, faiss_factory: str | None, dedup_threshold: float | None, fast_decode: bool, progress: bool,
         checkpoint_every: int | None, max_pixels: int | None, crash: CrashHook, t_start: float) -> IndexSummary:
    build = _open_build(catalog, index_dir, m, faiss_factory)
    if dedup_threshold is not None:
        catalog.set_dedup_threshold(build.fingerprint, dedup_threshold)
    summary = IndexSummary(index_dir=str(index_dir), metric=m.name, fingerprint=m.fingerprint)
    path = vectors_file(index_dir, build.fingerprint)
    vi = _load_for_write(index_dir, catalog, build)
    summary.reconciled = reconcile(catalog, vi, build.fingerprint)

    t = time.perf_counter()
    scan = scan_images(roots)
    summary.scanned, summary.scan_errors = len(scan.files), len(scan.errors)
    summary.seconds["scan"] = time.perf_counter() - t

    t = time.perf_counter()
    stale = _diff(catalog, roots, scan.files, summary)
    vi.remove(stale)  # flushed with the next checkpoint; until then they are orphans that readers ignore
    queue = _queue(catalog, roots, build.fingerprint)
    summary.seconds["diff"] = time.perf_counter() - t
    crash("scan")
    _logger.info("scan: %d files (%d new, %d changed, %d moved, %d removed); %d to embed", summary.scanned,
                 summary.new, summary.changed, summary.moved, summary.removed, len(queue))

    writer = _Writer(catalog, vi, path, build.fingerprint, crash, summary, checkpoint_every)
    on_cuda = m.device.type == "cuda"
    draft_size = 2 * m.input_size if fast_decode else None
    device_decode = _device_decode(m, fast_decode)
    summary.decoder = "device" if device_decode else "draft" if fast_decode else "exact"
    summary.dtype = metric_dtype(m)
    if queue:
        note = declare_dtype(catalog, build, summary.dtype)
        if note:
            summary.warnings.append(note)
        dataset = ImageFileDataset(queue, m.preprocess, max_pixels=max_pixels, draft_size=draft_size,
                                   raw_jpeg=device_decode)
        summary.workers = min(workers, max(0, len(queue) // batch_size))
        summary.threads = torch.get_num_threads()
        loader = create_loader(dataset, batch_size=batch_size, workers=summary.workers, prefetch=prefetch,
                               pin_memory=on_cuda)
        bar = tqdm(total=len(queue), unit="img", desc=f"index {m.name}", disable=not progress, dynamic_ncols=True)
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
                bar.update(len(batch))
        finally:
            bar.close()
            del it
    if writer.pending() or vi.dirty:
        writer.checkpoint()
    t = time.perf_counter()
    vi = _maybe_convert(catalog, vi, path, build)
    summary.seconds["write"] += time.perf_counter() - t
    summary.factory = build.current_factory
    summary.total_vectors = vi.ntotal
    summary.seconds["total"] = time.perf_counter() - t_start
    _logger.info("indexed: %s", summary.format().replace("\n", " | "))
    return summary
