"""A dedup report as one self-contained HTML page: every thumbnail embedded as a data URI, inline CSS, no script
and no external URL, so it opens from a disk, an e-mail or an archive years later.

The page shows the settings (threshold and where it came from, tier boundaries, keep rule), the pairs per tier, the
groups with the keeper marked and each duplicate's tier and distance to it, the nearest matches of a
cross-collection run, the pairs hidden because a person labelled them different, and every label that concerns an
image of the report.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import logging
import os

from lookalike.data.images import open_image
from lookalike.indexer._dedup import DedupReport, DuplicateMember

_logger = logging.getLogger(__name__)

#: Groups drawn with thumbnails; later groups are listed as text (the page stays small enough to open).
MAX_THUMB_GROUPS = 500
THUMB_SIZE = 160

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left;font-size:.9em}
.group{border:1px solid #bbb;border-radius:6px;padding:.5em;margin:.6em 0}
.files{display:flex;flex-wrap:wrap;gap:.6em}
.file{width:180px;font-size:.8em;word-break:break-all}
.file img,.missing{width:160px;height:160px;object-fit:contain;background:#f3f3f3;display:block}
.missing{display:flex;align-items:center;justify-content:center;color:#a00}
.keep{outline:3px solid #2a7}.badge{display:inline-block;padding:0 .4em;border-radius:3px;color:#fff;font-size:.85em}
.exact{background:#b22}.near{background:#d80}.similar{background:#558}.KEEP{background:#2a7}
.same{background:#2a7}.different{background:#777}.warn{background:#fff3cd;padding:.4em;border:1px solid #e0c060}
"""


def _thumb(path: str, cache: dict[str, str | None]) -> str | None:
    """A JPEG data URI of ``path`` (None when the file cannot be read)."""
    if path not in cache:
        try:
            img = open_image(path)
            img.thumbnail((THUMB_SIZE, THUMB_SIZE))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=70)
            cache[path] = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        except (OSError, ValueError) as e:
            _logger.info("no thumbnail for %s: %s", path, e)
            cache[path] = None
    return cache[path]


def _badge(text: str, cls: str | None = None) -> str:
    return f'<span class="badge {html.escape(cls or text)}">{html.escape(text)}</span>' if text else ""


def _file(m: DuplicateMember, keeper: bool, label: str | None, thumbs: dict[str, str | None] | None) -> str:
    e = html.escape
    if thumbs is None:
        pic = ""
    else:
        uri = _thumb(m.path, thumbs)
        pic = (f'<img src="{uri}" alt="{e(m.relpath)}">' if uri else
               '<div class="missing">file not found</div>' if not os.path.exists(m.path) else
               '<div class="missing">unreadable</div>')
    role = _badge("KEEP") if keeper else f"{_badge(m.tier)} {m.distance:.4f}"
    lab = f" {_badge('labelled ' + label, label)}" if label else ""
    size = f"{m.width}x{m.height}, " if m.width else ""
    return (f'<div class="file{" keep" if keeper else ""}">{pic}{role}{lab}<br>{e(m.path)}<br>'
            f"{size}{m.size / 1e3:.0f} kB</div>")


def render_html(report: DedupReport, *, max_thumb_groups: int = MAX_THUMB_GROUPS) -> str:
    """The report as one HTML page (a string); thumbnails of the first ``max_thumb_groups`` groups are embedded."""
    e = html.escape
    tiers = report.tiers or {}
    counts = report.tier_counts()
    near = tiers.get("near")
    near_text = f"{near:.4f}" if near is not None else "no boundary"
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>lookalike dedup report</title>"
           f"<style>{_CSS}</style></head><body>",
           "<h1>Duplicates</h1>",
           f"<p>Index <code>{e(report.index_dir)}</code>, metric <b>{e(report.metric)}</b>, written "
           f"{dt.datetime.now().isoformat(timespec='seconds')}.</p>",
           "<table>",
           f"<tr><th>threshold</th><td>{report.threshold:.4f} (1 - cosine; {e(report.threshold_source)})</td></tr>",
           f"<tr><th>tiers</th><td>exact = same content; near &le; "
           f"{near_text}; similar up to the threshold "
           f"({e(str(tiers.get('source', '')))})</td></tr>",
           f"<tr><th>pairs</th><td>{len(report.pairs)}: " + ", ".join(f"{_badge(t)} {n}" for t, n in counts.items())
           + "</td></tr>",
           f"<tr><th>groups</th><td>{len(report.groups)} ({report.group}), {report.n_duplicates} duplicates, the "
           f"largest holds {report.largest_group} files</td></tr>",
           f"<tr><th>keep</th><td>{e(report.keep)}" + (f", files under {e(', '.join(report.prefer))} first"
                                                       if report.prefer else "")
           + "; ties: earliest modified, then indexed first</td></tr>",
           f"<tr><th>images</th><td>{report.images} indexed" + (f", {report.quarantined} in quarantine (left out)"
                                                                if report.quarantined else "") + "</td></tr>",
           "</table>"]
    for w in report.warnings:
        out.append(f'<p class="warn">{e(w)}</p>')
    if report.between is not None:
        a, b = report.between
        na, nb = report.images_between or (0, 0)
        out.append(f"<h2>Across collections: {len(report.matches)} of {na} images under <code>{e(a)}</code> have a "
                   f"match among the {nb} under <code>{e(b)}</code></h2>")
        out.append("<table><tr><th>image under A</th><th>nearest under B</th><th>distance</th><th>tier</th></tr>")
        for p in report.matches:
            out.append(f"<tr><td>{e(p.a)}</td><td>{e(p.b)}</td><td>{p.distance:.4f}</td><td>{_badge(p.tier)}</td></tr>")
        out.append("</table>")
    label_of = {frozenset((p.a, p.b)): p.label for p in report.pairs if p.label}
    out.append(f"<h2>Groups ({len(report.groups)})</h2>")
    if len(report.groups) > max_thumb_groups:
        out.append(f"<p>Thumbnails for the first {max_thumb_groups} groups; the others are listed as text.</p>")
    thumbs: dict[str, str | None] = {}
    for n, g in enumerate(report.groups):
        t = thumbs if n < max_thumb_groups else None
        files = [_file(g.keeper, True, None, t)]
        files += [_file(d, False, label_of.get(frozenset((g.keeper.path, d.path))), t) for d in g.duplicates]
        out.append(f'<div class="group" id="group-{n + 1}"><b>Group {n + 1}</b>: {1 + len(g.duplicates)} files'
                   f'<div class="files">{"".join(files)}</div></div>')
    if report.hidden:
        out.append(f"<h2>Hidden: {len(report.hidden)} pairs labelled different</h2><table>"
                   "<tr><th>a</th><th>b</th><th>distance</th><th>tier</th></tr>")
        for p in report.hidden:
            out.append(f"<tr><td>{e(p.a)}</td><td>{e(p.b)}</td><td>{p.distance:.4f}</td><td>{_badge(p.tier)}</td>"
                       "</tr>")
        out.append("</table>")
    if report.labels:
        out.append(f"<h2>Labels given ({len(report.labels)})</h2><table><tr><th>verdict</th><th>a</th><th>b</th>"
                   "<th>by</th><th>when</th></tr>")
        for lb in report.labels:
            verdict = "same" if lb.is_same else "different"
            out.append(f"<tr><td>{_badge(verdict)}</td><td>{e(lb.path_a)}</td><td>{e(lb.path_b)}</td>"
                       f"<td>{e(lb.source)}</td><td>{e(lb.updated)}</td></tr>")
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)
