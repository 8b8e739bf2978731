"""find_duplicates: range search in blocks → pairs → groups (components or stars) → a keeper per group.

Files are never touched unless ``move_duplicates`` is called, and then they are moved (never deleted) into a
quarantine folder with a manifest that ``undo_moves`` reverses.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import os
import shutil
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lookalike.common.errors import InvalidArgument
from lookalike.common.io import atomic_write_json
from lookalike.data.image_folder import natural_key
from lookalike.indexer._catalog import ImageRow
from lookalike.indexer._dedup_lists import ProbeReport, exact_pairs, ivf_pairs
from lookalike.indexer._index import ImageIndex, open_index

if TYPE_CHECKING:
    from lookalike.metric import Metric

_logger = logging.getLogger(__name__)

GROUP_MODES = ("components", "star")
KEEP_RULES = ("largest", "oldest", "newest", "first")


@dataclass(frozen=True)
class DuplicateMember:
    """One file of a duplicate group.

    Attributes:
        path: absolute path.
        distance: distance to the group's keeper (1 - cosine; 0 for the keeper itself).
        relpath: path relative to its indexed root.
        root: the indexed root.
        width / height / size / mtime_ns: from the catalog (what the keep rule looked at).
    """

    path: str
    distance: float
    relpath: str
    root: str
    width: int | None = None
    height: int | None = None
    size: int = 0
    mtime_ns: int = 0


@dataclass(frozen=True)
class DuplicatePair:
    """Two indexed files within the threshold; ``distance`` = 1 - cosine (lower = more similar)."""

    a: str
    b: str
    distance: float


@dataclass
class DuplicateGroup:
    """Near-duplicates around one file to keep."""

    keeper: DuplicateMember
    duplicates: list[DuplicateMember] = field(default_factory=list)


@dataclass
class DedupReport:
    """What ``find_duplicates`` found.

    Attributes:
        threshold: pairs with distance <= threshold were linked.
        pairs: all linked pairs, closest first.
        groups: the groups, each with its keeper, largest group first.
        probe: what the scan compared (``ProbeReport.as_dict()``): exact all-pairs, or inverted lists with their
            neighbour lists and the share of the exact comparisons that made.
    """

    index_dir: str
    metric: str
    fingerprint: str
    threshold: float
    group: str
    keep: str
    images: int
    pairs: list[DuplicatePair] = field(default_factory=list)
    groups: list[DuplicateGroup] = field(default_factory=list)
    probe: dict = field(default_factory=dict)

    @property
    def n_duplicates(self) -> int:
        return sum(len(g.duplicates) for g in self.groups)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["n_duplicates"] = self.n_duplicates
        return d


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        p = self.parent.setdefault(x, x)
        while p != self.parent[p]:
            self.parent[p] = self.parent[self.parent[p]]
            p = self.parent[p]
        self.parent[x] = p
        return p

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _keep_key(rule: str) -> Callable[[ImageRow], tuple]:
    def first(r: ImageRow) -> tuple:
        return (natural_key(r.root), natural_key(r.relpath))

    if rule == "largest":
        return lambda r: (-((r.width or 0) * (r.height or 0)), -r.size, *first(r))
    if rule == "oldest":
        return lambda r: (r.mtime_ns, *first(r))
    if rule == "newest":
        return lambda r: (-r.mtime_ns, *first(r))
    if rule == "first":
        return first
    raise InvalidArgument(f"unknown keep rule {rule!r}; choose from {', '.join(KEEP_RULES)}")


def find_pairs(index: ImageIndex, threshold: float, *, block_size: int = 4096, nprobe: int | None = None,
               progress: Callable[[int, int], None] | None = None) -> tuple[dict[tuple[int, int], float], ProbeReport]:
    """All pairs of committed vectors within ``threshold`` (1 - cosine), and what was probed to find them.

    An index searched through an inverted file is scanned list by list (``_dedup_lists.ivf_pairs``); an exact
    index compares every pair of blocks once. Memory holds a few blocks or lists and the pairs found, never an
    N x N matrix; vectors stay in their memory-mapped files.
    """
    vec = index.vectors
    if vec.is_ivf:
        return ivf_pairs(vec, threshold, nprobe=nprobe, progress=progress)
    if vec.derived is not None:  # HNSW and other graph types: a range search per block of queries
        pairs: dict[tuple[int, int], float] = {}
        for ids, xb in vec.iter_blocks(block_size):
            lims, D, I = vec.range_search(xb, threshold)  # noqa: E741
            for q, a in enumerate(ids.tolist()):
                for j in range(lims[q], lims[q + 1]):
                    b = int(I[j])
                    if b == a:
                        continue
                    key = (a, b) if a < b else (b, a)
                    d = float(max(D[j], 0.0))
                    if key not in pairs or d < pairs[key]:
                        pairs[key] = d
        return pairs, ProbeReport(method=f"range search ({vec.factory})", vectors=vec.ntotal)
    return exact_pairs(vec, threshold, block=block_size, progress=progress)


def find_duplicates(
    index: str | os.PathLike[str] | ImageIndex,
    *,
    threshold: float | None = None,
    group: str = "components",
    keep: str = "largest",
    metric: str | Metric | None = None,
    db_url: str | None = None,
    block_size: int = 4096,
    nprobe: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DedupReport:
    """Find near-duplicate images in an index.

    Args:
        index: an index folder or an ImageIndex.
        threshold: largest distance (1 - cosine, in [0, 2]; lower = more similar) that counts as a duplicate;
            default: the threshold stored with the index build, if any.
        group: "components" (everything linked, even through chains) or "star" (each group is a keeper and the
            files within ``threshold`` of it: no chaining).
        keep: which file of a group to keep: "largest" (most pixels, then bytes), "oldest" / "newest" (mtime),
            "first" (natural path order).
        metric: which metric's vectors to use when the folder holds several.
        db_url: catalog URL when it is not the SQLite file in the folder.
        block_size: vectors per block of an exact scan (bounds memory).
        nprobe: on an inverted-file index, how many lists (its own included) each list is compared with; default
            the index's search nprobe. Lower is faster; the report's ``probe`` says what was compared.
        progress: called as ``progress(done, total)`` (lists or blocks).

    Returns:
        A DedupReport. No file is touched.

    Raises:
        ValueError: bad threshold, group or keep rule; no threshold given or stored; ``IndexDamaged`` for a damaged
            catalog or vector file.
    """
    if group not in GROUP_MODES:
        raise InvalidArgument(f"unknown group mode {group!r}; choose from {', '.join(GROUP_MODES)}")
    key_fn = _keep_key(keep)
    if isinstance(index, (str, os.PathLike)):
        with open_index(index, metric=metric, db_url=db_url) as idx:
            return find_duplicates(idx, threshold=threshold, group=group, keep=keep, block_size=block_size,
                                   nprobe=nprobe, progress=progress)
    if threshold is None:
        threshold = index.build.dedup_threshold
        if threshold is None:
            raise InvalidArgument("no distance threshold given, and the index stores none for this metric",
                                  hint="give one, e.g. 0.05 (1 - cosine, lower = more similar), or store one with "
                                       "'lookalike calibrate'")
    if not 0.0 <= threshold <= 2.0:
        raise InvalidArgument(f"threshold {threshold} is outside [0, 2] (the distance is 1 - cosine)")
    index.check_catalog()  # a report that may drive file moves is never built on a damaged catalog
    pairs, probe = find_pairs(index, threshold, block_size=block_size, nprobe=nprobe, progress=progress)
    rows = index.rows({i for p in pairs for i in p})
    pairs = {k: d for k, d in pairs.items() if k[0] in rows and k[1] in rows}
    groups_ids: list[tuple[int, list[int]]] = []
    if group == "components":
        uf = _UnionFind()
        for a, b in pairs:
            uf.union(a, b)
        comps: dict[int, list[int]] = defaultdict(list)
        for i in rows:
            comps[uf.find(i)].append(i)
        for members in comps.values():
            members.sort(key=lambda i: key_fn(rows[i]))
            groups_ids.append((members[0], members[1:]))
    else:
        adj: dict[int, list[int]] = defaultdict(list)
        for a, b in pairs:
            adj[a].append(b)
            adj[b].append(a)
        assigned: set[int] = set()
        for c in sorted(adj, key=lambda i: key_fn(rows[i])):
            if c in assigned:
                continue
            members = sorted((n for n in adj[c] if n not in assigned), key=lambda i: key_fn(rows[i]))
            if members:
                assigned.add(c)
                assigned.update(members)
                groups_ids.append((c, members))

    def member(i: int, d: float) -> DuplicateMember:
        r = rows[i]
        return DuplicateMember(path=r.path, distance=d, relpath=r.relpath, root=r.root, width=r.width,
                               height=r.height, size=r.size, mtime_ns=r.mtime_ns)

    groups = []
    for keeper, dups in groups_ids:
        vecs = index.vectors.vectors([keeper, *dups])
        dist = np.clip(1.0 - vecs[1:] @ vecs[0], 0.0, 2.0)
        members = [member(i, float(d)) for i, d in zip(dups, dist, strict=True)]
        groups.append(DuplicateGroup(member(keeper, 0.0), members))
    groups.sort(key=lambda g: (-len(g.duplicates), natural_key(g.keeper.path)))
    pair_list = sorted((DuplicatePair(rows[a].path, rows[b].path, d) for (a, b), d in pairs.items()),
                       key=lambda p: (p.distance, p.a, p.b))
    report = DedupReport(index_dir=str(index.index_dir), metric=index.build.metric, fingerprint=index.fingerprint,
                         threshold=float(threshold), group=group, keep=keep, images=index.vectors.ntotal,
                         pairs=pair_list, groups=groups, probe=probe.as_dict())
    _logger.info("dedup at %.4f: %d pairs, %d groups, %d duplicates", threshold, len(pair_list), len(groups),
                 report.n_duplicates)
    return report


def write_report(report: DedupReport, path: str | os.PathLike[str]) -> Path:
    """Write a report as JSON (everything) or CSV (one row per file of each group), chosen by the suffix.

    Raises:
        ValueError: a suffix other than .json or .csv.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise InvalidArgument(f"report file must end in .csv or .json, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".json":
        path.write_text(json.dumps(report.as_dict(), indent=1))
        return path
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["group", "role", "path", "distance_to_keeper", "width", "height", "bytes"])
        for n, g in enumerate(report.groups):
            for role, m in [("keep", g.keeper)] + [("duplicate", d) for d in g.duplicates]:
                w.writerow([n, role, m.path, f"{m.distance:.6f}", m.width, m.height, m.size])
    return path


def move_duplicates(report: DedupReport, quarantine: str | os.PathLike[str]) -> Path:
    """Move every non-keeper file of ``report`` into ``quarantine`` (keeping its relative path under a folder per
    root); never deletes. Writes the manifest first, so ``undo_moves`` can always put files back.

    Returns:
        The manifest path (``quarantine/manifest-YYYYmmdd-HHMMSS.json``).
    """
    q = Path(quarantine).absolute()
    q.mkdir(parents=True, exist_ok=True)
    moves = []
    taken: set[str] = set()
    for g in report.groups:
        for d in g.duplicates:
            root_tag = os.path.basename(d.root.rstrip("/")) or "root"
            prefix = d.root.rstrip("/") + "/"
            rel = d.path[len(prefix):] if d.path.startswith(prefix) else os.path.basename(d.path)
            dst = q / root_tag / Path(*rel.split("/"))
            base, n = dst, 1
            while os.fspath(dst) in taken or dst.exists():
                dst = base.with_name(f"{base.stem}.{n}{base.suffix}")
                n += 1
            taken.add(os.fspath(dst))
            moves.append({"src": d.path, "dst": os.fspath(dst), "keeper": g.keeper.path, "distance": d.distance})
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    manifest = q / f"manifest-{stamp}.json"
    atomic_write_json(manifest, {"created": stamp, "index_dir": report.index_dir, "threshold": report.threshold,
                                 "moves": moves}, indent=1)
    moved = 0
    for mv in moves:
        src, dst = mv["src"], mv["dst"]
        if not os.path.lexists(src):
            _logger.warning("not moved (gone): %s", src)
            continue
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.move(src, dst)
        moved += 1
    _logger.info("moved %d duplicates to %s (manifest %s)", moved, q, manifest)
    return manifest


def undo_moves(manifest: str | os.PathLike[str]) -> int:
    """Put back the files a ``move_duplicates`` manifest moved; returns how many were restored.

    Files whose original path is taken again are left in quarantine (with a warning).

    Raises:
        FileNotFoundError: no such manifest.
        ValueError: not a lookalike manifest.
    """
    p = Path(manifest)
    if not p.is_file():
        raise FileNotFoundError(f"manifest not found: {p}")
    try:
        data = json.loads(p.read_text())
        moves = data["moves"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise InvalidArgument(f"{p} is not a lookalike dedup manifest ({e})") from None
    restored = 0
    for mv in reversed(moves):
        src, dst = mv["src"], mv["dst"]
        if not os.path.lexists(dst):
            continue
        if os.path.lexists(src):
            _logger.warning("not restored (original path taken again): %s", src)
            continue
        os.makedirs(os.path.dirname(src), exist_ok=True)
        shutil.move(dst, src)
        restored += 1
    _logger.info("restored %d of %d files from %s", restored, len(moves), p)
    return restored
