"""What a writer run reports: ``IndexSummary`` (scan + embed), ``ImportSummary`` (embeddings files), and the
progress router both use."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from tqdm.auto import tqdm

#: A progress callback: ``progress(stage, done, total)``; stages "load" (the metric), "scan" (files found), "diff",
#: "embed" (images embedded or failed), "derive" (rows of the search structure), "import" (rows read).
ProgressFn = Callable[[str, int, int], None]


@dataclass
class IndexSummary:
    """What one ``build_index`` run did.

    Attributes:
        scanned: image files found under the roots.
        new / changed / moved / removed / unchanged: the diff against the catalog (moved = same content at a new
            path: relinked, not re-embedded).
        failed: files that could not be read in this run (see ``failures``).
        scan_errors: folders or links the scan could not follow.
        embedded: vectors computed and committed in this run.
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


class Progress:
    """Routes progress to a callback, or to tqdm bars (``progress=True``), or nowhere."""

    def __init__(self, progress: bool | ProgressFn, name: str, *, stage: str = "embed", unit: str = "img"):
        self.fn = progress if callable(progress) else None
        self.show = progress is True
        self.name, self.bar_stage, self.unit = name, stage, unit
        self.bar: tqdm | None = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.fn is not None:
            self.fn(stage, done, total)
        if self.show and stage == self.bar_stage:
            if self.bar is None:
                self.bar = tqdm(total=total or None, unit=self.unit, desc=self.name, dynamic_ncols=True)
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
