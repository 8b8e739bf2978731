"""Plain helpers behind the Duplicates page (no Streamlit here, so they are tested directly): the pairs of each group
with their tier and label, the summary line, and the report bytes offered for download."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from lookalike.indexer import DedupReport, write_report

#: Report formats the page offers for download: (button label, suffix, MIME type).
DOWNLOADS = (("CSV", ".csv", "text/csv"), ("JSON", ".json", "application/json"),
             ("Parquet", ".parquet", "application/vnd.apache.parquet"))


@dataclass(frozen=True)
class GroupPair:
    """One linked pair inside a group (absolute paths, for labelling), closest first."""

    a: str
    b: str
    a_rel: str
    b_rel: str
    distance: float
    tier: str
    label: str | None


def pairs_by_group(report: DedupReport) -> list[list[GroupPair]]:
    """For each group of ``report`` (same order), its linked pairs, closest first; one pass over the pairs."""
    group_of: dict[str, int] = {}
    relpath: dict[str, str] = {}
    for n, g in enumerate(report.groups):
        for m in (g.keeper, *g.duplicates):
            group_of[m.path] = n
            relpath[m.path] = m.relpath
    out: list[list[GroupPair]] = [[] for _ in report.groups]
    for p in report.pairs:
        g = group_of.get(p.a)
        if g is not None and g == group_of.get(p.b):
            out[g].append(GroupPair(p.a, p.b, relpath[p.a], relpath[p.b], p.distance, p.tier, p.label))
    return out


def summary_markdown(report: DedupReport) -> str:
    """One paragraph: groups, duplicates, pairs per tier, the threshold and where it came from."""
    tiers = ", ".join(f"{n:,} {t}" for t, n in report.tier_counts().items())
    near = report.tiers.get("near")
    bound = f"near copies up to {near:.3f}" if near is not None else "no near-copy boundary for this metric"
    text = (f"**{len(report.groups):,} groups**, {report.n_duplicates:,} duplicates and {len(report.pairs):,} pairs "
            f"({tiers}) among {report.images:,} images at distance <= {report.threshold:.3f} ({report.metric}; "
            f"{bound}). The largest group holds {report.largest_group:,} files.")
    if report.hidden:
        text += f" {len(report.hidden):,} pairs labelled *different* are left out."
    if report.quarantined:
        text += f" {report.quarantined:,} images in quarantine are left out."
    return text


def report_file_bytes(report: DedupReport, suffix: str) -> bytes:
    """A report as the bytes of a file of that suffix, written by ``write_report``."""
    with tempfile.TemporaryDirectory(prefix="lookalike-report-") as tmp:
        return write_report(report, Path(tmp) / f"duplicates{suffix}").read_bytes()
