"""Dedup reports on disk, one writer per file suffix: JSON (everything), CSV and Parquet (one row per file of each
group, for large runs) and HTML (one self-contained page a person reviews offline, ``_report_html``)."""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from lookalike.common.errors import InvalidArgument
from lookalike.common.io import atomic_write_bytes, atomic_write_text
from lookalike.indexer._dedup import DedupReport

_logger = logging.getLogger(__name__)

#: Columns of the CSV and Parquet reports: one row per file of each group, the keeper first.
COLUMNS = ("group", "role", "path", "distance_to_keeper", "tier", "label", "width", "height", "bytes")


def member_rows(report: DedupReport) -> Iterator[dict]:
    """One dict per file of each group (keeper first), with the tier and any label of its pair with the keeper."""
    label_of = {(p.a, p.b): p.label for p in report.pairs if p.label}
    for n, g in enumerate(report.groups):
        yield {"group": n, "role": "keep", "path": g.keeper.path, "distance_to_keeper": 0.0, "tier": "",
               "label": "", "width": g.keeper.width, "height": g.keeper.height, "bytes": g.keeper.size}
        for d in g.duplicates:
            label = label_of.get((g.keeper.path, d.path)) or label_of.get((d.path, g.keeper.path)) or ""
            yield {"group": n, "role": "duplicate", "path": d.path, "distance_to_keeper": float(d.distance),
                   "tier": d.tier, "label": label, "width": d.width, "height": d.height, "bytes": d.size}


def _write_json(report: DedupReport, path: Path) -> None:
    atomic_write_text(path, json.dumps(report.as_dict(), indent=1))


def _write_csv(report: DedupReport, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            for r in member_rows(report):
                r["distance_to_keeper"] = f"{r['distance_to_keeper']:.6f}"
                w.writerow([r[c] for c in COLUMNS])
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_parquet(report: DedupReport, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("group", pa.int64()), ("role", pa.string()), ("path", pa.string()),
                        ("distance_to_keeper", pa.float32()), ("tier", pa.string()), ("label", pa.string()),
                        ("width", pa.int32()), ("height", pa.int32()), ("bytes", pa.int64())])
    meta = {"lookalike": json.dumps({k: v for k, v in report.as_dict().items() if k not in ("pairs", "groups")})}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with pq.ParquetWriter(tmp, schema.with_metadata(meta)) as w:
            batch: list[dict] = []
            for r in member_rows(report):
                batch.append(r)
                if len(batch) >= 65536:
                    w.write_table(pa.Table.from_pylist(batch, schema=schema))
                    batch = []
            if batch or not report.groups:
                w.write_table(pa.Table.from_pylist(batch, schema=schema))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_html(report: DedupReport, path: Path) -> None:
    from lookalike.indexer._report_html import render_html

    atomic_write_bytes(path, render_html(report).encode("utf-8"))


#: Report writers by file suffix.
REPORT_WRITERS: dict[str, Callable[[DedupReport, Path], None]] = {
    ".json": _write_json, ".csv": _write_csv, ".parquet": _write_parquet, ".html": _write_html,
}


def write_report(report: DedupReport, path: str | os.PathLike[str]) -> Path:
    """Write a report, in the format its suffix names: .json (everything), .csv or .parquet (one row per file of each
    group: group, role, path, distance to the keeper, tier, label, size) or .html (one self-contained page with
    thumbnails, for review without a server). The file is replaced atomically.

    Raises:
        ValueError: another suffix.
    """
    path = Path(path)
    writer = REPORT_WRITERS.get(path.suffix.lower())
    if writer is None:
        raise InvalidArgument(f"report file must end in {', '.join(REPORT_WRITERS)}, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    writer(report, path)
    _logger.info("dedup report written to %s", path)
    return path
