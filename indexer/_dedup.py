"""find_duplicates: range search in blocks → pairs → a person's labels → tiers → groups (components or stars) → a
keeper per group.

Pairs labelled "different" (``lookalike label``) are left out before grouping, so no group is joined through them;
pairs labelled "same" are always linked. Images moved into quarantine (``move_duplicates``) are left out until
``undo_moves`` puts them back. Files are never touched here.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import func, select

from lookalike.common.errors import InvalidArgument
from lookalike.data.image_folder import natural_key
from lookalike.indexer._catalog import ImageRow, VectorRow
from lookalike.indexer._dedup_lists import ProbeReport, exact_pairs, ivf_pairs
from lookalike.indexer._index import ImageIndex, open_index
from lookalike.indexer._labels import Label, ids_of_keys, image_key, pair_key, read_labels
from lookalike.indexer._quarantine import moved_ids
from lookalike.indexer._tiers import TierBounds, get_tiers

if TYPE_CHECKING:
    from lookalike.metric import Metric

_logger = logging.getLogger(__name__)

GROUP_MODES = ("components", "star")
KEEP_RULES = ("largest", "oldest", "newest", "first")
#: A components group larger than this is reported as chained (and ``star`` suggested).
CHAIN_LIMIT = 50


@dataclass(frozen=True)
class DuplicateMember:
    """One file of a duplicate group.

    Attributes:
        path: absolute path.
        distance: distance to the group's keeper (1 - cosine; 0 for the keeper itself).
        relpath: path relative to its indexed root.
        root: the indexed root.
        width / height / size / mtime_ns: from the catalog (what the keep rule looked at).
        id: catalog id of the image.
        tier: "exact", "near" or "similar" with respect to the keeper ("" for the keeper).
        sha256: content hash (None for imported embeddings without their file's hash).
    """

    path: str
    distance: float
    relpath: str
    root: str
    width: int | None = None
    height: int | None = None
    size: int = 0
    mtime_ns: int = 0
    id: int = 0
    tier: str = ""
    sha256: str | None = None


@dataclass(frozen=True)
class DuplicatePair:
    """Two indexed files; ``distance`` = 1 - cosine (lower = more similar).

    Attributes:
        tier: "exact" (same content), "near" (a near copy) or "similar".
        label: "same" or "different" when a person said so (``lookalike label``), else None.
    """

    a: str
    b: str
    distance: float
    tier: str = "similar"
    label: str | None = None


@dataclass
class DuplicateGroup:
    """Near-duplicates around one file to keep."""

    keeper: DuplicateMember
    duplicates: list[DuplicateMember] = field(default_factory=list)


@dataclass
class DedupReport:
    """What ``find_duplicates`` found.

    Attributes:
        threshold: pairs with distance <= threshold were linked; ``threshold_source`` says where it came from.
        tiers: the tier boundaries used (``TierBounds.as_dict()``).
        pairs: all linked pairs, closest first (labelled-same pairs included whatever their distance).
        groups: the groups, each with its keeper, largest group first.
        probe: what the scan compared (``ProbeReport.as_dict()``).
        between: the two folders (A, B) of a cross-collection run, or None.
        matches: cross-collection runs: the nearest image under B of each image under A that has one.
        images_between: cross-collection runs: indexed images under A and under B.
        prefer: folders whose files are kept first.
        hidden: pairs within the threshold that a person labelled different (not reported, not linked).
        labels: the stored labels that concern an image of this report.
        quarantined: images left out because ``move_duplicates`` moved them.
        largest_group: files in the largest group.
        warnings: what a person should know (chained groups, no tier boundary).
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
    threshold_source: str = "given"
    tiers: dict = field(default_factory=dict)
    between: list[str] | None = None
    matches: list[DuplicatePair] = field(default_factory=list)
    images_between: list[int] | None = None
    prefer: list[str] = field(default_factory=list)
    hidden: list[DuplicatePair] = field(default_factory=list)
    labels: list[Label] = field(default_factory=list)
    quarantined: int = 0
    largest_group: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def n_duplicates(self) -> int:
        return sum(len(g.duplicates) for g in self.groups)

    def tier_counts(self) -> dict[str, int]:
        """Reported pairs per tier."""
        out = {"exact": 0, "near": 0, "similar": 0}
        for p in self.pairs:
            out[p.tier] = out.get(p.tier, 0) + 1
        return out

    def as_dict(self) -> dict:
        d = asdict(self)
        d["n_duplicates"] = self.n_duplicates
        d["tier_counts"] = self.tier_counts()
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


def folder_prefix(folder: str | os.PathLike[str]) -> str:
    """An absolute folder as a path prefix without the trailing slash."""
    return os.path.abspath(os.fspath(folder)).rstrip("/") or "/"


def is_under(path: str, prefix: str) -> bool:
    return path.startswith(prefix + "/") if prefix != "/" else True


def _keep_key(rule: str, prefer: Sequence[str] = ()) -> Callable[[ImageRow], tuple]:
    """Sort key of a keep rule: the file to keep sorts first. Files under a ``prefer`` folder come first (in the
    order given); ties of any rule fall to the earliest modification time, then to the image indexed first."""

    def pref(r: ImageRow) -> int:
        return next((i for i, f in enumerate(prefer) if is_under(r.path, f)), len(prefer))

    rules: dict[str, Callable[[ImageRow], tuple]] = {
        "largest": lambda r: (-((r.width or 0) * (r.height or 0)), -r.size),
        "oldest": lambda r: (),
        "newest": lambda r: (-r.mtime_ns,),
        "first": lambda r: (natural_key(r.root), natural_key(r.relpath)),
    }
    if rule not in rules:
        raise InvalidArgument(f"unknown keep rule {rule!r}; choose from {', '.join(KEEP_RULES)}")
    by_rule = rules[rule]
    if prefer:
        return lambda r: (pref(r), *by_rule(r), r.mtime_ns, r.id)
    return lambda r: (*by_rule(r), r.mtime_ns, r.id)


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


def _resolve_threshold(index: ImageIndex, threshold: float | None, tiers: TierBounds) -> tuple[float, str]:
    if threshold is not None:
        source = "given"
    elif index.build.dedup_threshold is not None:
        threshold, source = float(index.build.dedup_threshold), "stored with the index"
    elif tiers.near is not None:
        threshold, source = tiers.near, "the near-copy boundary"
    else:
        raise InvalidArgument(
            f"no distance threshold given, and none is stored or measured for metric {index.build.metric!r}",
            hint="give one (1 - cosine, lower = more similar; look at the distances 'lookalike search' prints for a "
                 "copy), or label a few pairs with 'lookalike label' and run 'lookalike calibrate --index DIR'")
    if not 0.0 <= threshold <= 2.0:
        raise InvalidArgument(f"threshold {threshold} is outside [0, 2] (the distance is 1 - cosine)")
    return float(threshold), source


def _count_under(index: ImageIndex, prefix: str, skip: set[int]) -> int:
    lo, hi = os.fsencode(prefix + "/"), os.fsencode(prefix + "0")  # "0" follows "/": every path under the folder
    q = (select(func.count()).select_from(VectorRow).join(ImageRow, ImageRow.id == VectorRow.image_id)
         .where(VectorRow.fingerprint == index.fingerprint, ImageRow.path_raw >= lo, ImageRow.path_raw < hi))
    with index.catalog.session() as s:
        n = int(s.scalar(q) or 0)
        if skip:
            n -= sum(1 for r in index.rows(skip).values() if is_under(r.path, prefix))
    return n


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
    between: tuple[str | os.PathLike[str], str | os.PathLike[str]] | None = None,
    prefer: Sequence[str | os.PathLike[str]] = (),
    use_labels: bool = True,
    chain_limit: int = CHAIN_LIMIT,
) -> DedupReport:
    """Find near-duplicate images in an index, each pair with its tier, each group with the file to keep.

    Args:
        index: an index folder or an ImageIndex.
        threshold: largest distance (1 - cosine, in [0, 2]; lower = more similar) that counts as a duplicate;
            default: the one stored with the index build, else the metric's near-copy boundary (measured or
            calibrated).
        group: "components" (everything linked, even through chains) or "star" (each group is a keeper and the
            files within ``threshold`` of it: no chaining).
        keep: which file of a group to keep: "largest" (most pixels, then bytes), "oldest" / "newest" (mtime),
            "first" (natural path order). Ties fall to the earliest mtime, then to the image indexed first.
        metric: which metric's vectors to use when the folder holds several.
        db_url: catalog URL when it is not the SQLite file in the folder.
        block_size: vectors per block of an exact scan (bounds memory).
        nprobe: on an inverted-file index, how many lists (its own included) each list is compared with; default
            2 (near copies share a list or sit in the next one). Higher finds pairs that are farther apart and
            costs more; the report's ``probe`` says what was compared.
        progress: called as ``progress(done, total)`` (lists or blocks).
        between: two folders (A, B): only pairs with one image under each (test images leaking from a training
            set, new arrivals that repeat an archive); files under B are kept first unless ``prefer`` says
            otherwise, and the report lists the nearest match under B of each image under A.
        prefer: folders whose files are kept first, in this order (a reference copy), before the keep rule.
        use_labels: honour the stored labels (False: report every pair as the metric sees it).
        chain_limit: a components group larger than this is reported as chained in ``warnings``.

    Returns:
        A DedupReport. No file is touched and nothing is written.

    Raises:
        ValueError: bad threshold, group, keep rule or folders; no threshold given, stored or measured;
            ``IndexDamaged`` for a damaged catalog or vector file.
    """
    if group not in GROUP_MODES:
        raise InvalidArgument(f"unknown group mode {group!r}; choose from {', '.join(GROUP_MODES)}")
    prefer_dirs = [folder_prefix(f) for f in prefer]
    fa = fb = ""
    if between is not None:
        fa, fb = (folder_prefix(f) for f in between)
        if fa == fb or is_under(fa, fb) or is_under(fb, fa):
            raise InvalidArgument(f"the folders of a cross-collection run must not overlap: {fa} and {fb}",
                                  hint="give two separate folders, e.g. test/ and train/")
        prefer_dirs = prefer_dirs or [fb]
    key_fn = _keep_key(keep, prefer_dirs)
    if isinstance(index, (str, os.PathLike)):
        with open_index(index, metric=metric, db_url=db_url) as idx:
            return find_duplicates(idx, threshold=threshold, group=group, keep=keep, block_size=block_size,
                                   nprobe=nprobe, progress=progress, between=between, prefer=prefer_dirs,
                                   use_labels=use_labels, chain_limit=chain_limit)
    index.check_catalog()  # a report that may drive file moves is never built on a damaged catalog
    tiers = get_tiers(index.catalog, index.build)
    threshold, threshold_source = _resolve_threshold(index, threshold, tiers)
    skip = moved_ids(index.catalog)
    images_between = None
    if between is not None:
        images_between = [_count_under(index, fa, skip), _count_under(index, fb, skip)]
        for f, n in zip((fa, fb), images_between, strict=True):
            if n == 0:
                raise InvalidArgument(f"no indexed image under {f}", hint="give folders inside the indexed roots")
    pairs, probe = find_pairs(index, threshold, block_size=block_size, nprobe=nprobe, progress=progress)
    labels = read_labels(index.catalog) if use_labels else []
    verdict = {(lb.key_a, lb.key_b): lb.is_same for lb in labels}
    same_ids = ids_of_keys(index, {k for lb in labels if lb.is_same for k in (lb.key_a, lb.key_b)})
    labelled_same: set[tuple[int, int]] = set()
    for lb in labels:
        if lb.is_same:
            for u in same_ids.get(lb.key_a, ()):
                for v in same_ids.get(lb.key_b, ()):
                    labelled_same.add((u, v) if u < v else (v, u))
    for k in labelled_same - pairs.keys():
        if k[0] in index.vectors and k[1] in index.vectors:
            xa, xb = index.vectors.vectors(list(k))
            pairs[k] = float(max(1.0 - float(xa @ xb), 0.0))
    rows = index.rows({i for p in pairs for i in p})
    if skip:
        rows = {i: r for i, r in rows.items() if r.id not in skip}
    keys = {i: image_key(r.sha256, r.path) for i, r in rows.items()} if verdict else {}

    def side(i: int) -> int:  # 0: under A, 1: under B, -1: elsewhere
        p = rows[i].path
        return 0 if is_under(p, fa) else 1 if is_under(p, fb) else -1

    kept: dict[tuple[int, int], tuple[float, str, str | None]] = {}
    hidden: list[DuplicatePair] = []
    shown: set[int] = set()  # images of the kept and hidden pairs
    for (a, b), d in pairs.items():
        if a not in rows or b not in rows:
            continue
        if between is not None and {side(a), side(b)} != {0, 1}:
            continue
        ra, rb = rows[a], rows[b]
        same_content = None if not (ra.sha256 and rb.sha256) else ra.sha256 == rb.sha256
        tier = tiers.tier(d, same_content)
        label = None
        if verdict:
            v = verdict.get(pair_key(keys[a], keys[b]))
            if v is not None:
                label = "same" if v else "different"
            if v is False:
                hidden.append(DuplicatePair(ra.path, rb.path, d, tier, label))
                shown.update((a, b))
                continue
        kept[(a, b)] = (d, tier, label)
        shown.update((a, b))
    groups_ids = _group(kept, rows, group, key_fn)

    def member(i: int, d: float, tier: str) -> DuplicateMember:
        r = rows[i]
        return DuplicateMember(path=r.path, distance=d, relpath=r.relpath, root=r.root, width=r.width,
                               height=r.height, size=r.size, mtime_ns=r.mtime_ns, id=int(r.id), tier=tier,
                               sha256=r.sha256)

    groups = []
    for keeper, dups in groups_ids:
        vecs = index.vectors.vectors([keeper, *dups])
        dist = np.clip(1.0 - vecs[1:] @ vecs[0], 0.0, 2.0)
        kr = rows[keeper]
        members = []
        for i, d in zip(dups, dist.tolist(), strict=True):
            r = rows[i]
            same_content = None if not (kr.sha256 and r.sha256) else kr.sha256 == r.sha256
            members.append(member(i, d, tiers.tier(d, same_content)))
        groups.append(DuplicateGroup(member(keeper, 0.0, ""), members))
    groups.sort(key=lambda g: (-len(g.duplicates), natural_key(g.keeper.path)))
    pair_list = sorted((DuplicatePair(rows[a].path, rows[b].path, d, t, lb) for (a, b), (d, t, lb) in kept.items()),
                       key=lambda p: (p.distance, p.a, p.b))
    report = DedupReport(index_dir=str(index.index_dir), metric=index.build.metric, fingerprint=index.fingerprint,
                         threshold=threshold, group=group, keep=keep, images=index.vectors.ntotal, pairs=pair_list,
                         groups=groups, probe=probe.as_dict(), threshold_source=threshold_source,
                         tiers=tiers.as_dict(), prefer=prefer_dirs, hidden=sorted(hidden, key=lambda p: p.distance),
                         quarantined=len(skip), largest_group=1 + len(groups[0].duplicates) if groups else 0)
    if between is not None:
        report.between, report.images_between = [fa, fb], images_between
        report.matches = _nearest_matches(kept, rows, side)
    if labels:
        seen = {keys[i] for i in shown}
        report.labels = [lb for lb in labels if lb.key_a in seen or lb.key_b in seen]
    _warn(report, chain_limit)
    _logger.info("dedup at %.4f: %d pairs, %d groups, %d duplicates, %d hidden by labels", threshold, len(pair_list),
                 len(groups), report.n_duplicates, len(hidden))
    return report


def _group(kept: dict[tuple[int, int], tuple], rows: dict[int, ImageRow], group: str,
           key_fn: Callable[[ImageRow], tuple]) -> list[tuple[int, list[int]]]:
    """(keeper, duplicates) per group: connected components, or stars around keepers taken in keep order."""
    out: list[tuple[int, list[int]]] = []
    if group == "components":
        uf = _UnionFind()
        for a, b in kept:
            uf.union(a, b)
        comps: dict[int, list[int]] = defaultdict(list)
        for i in uf.parent:
            comps[uf.find(i)].append(i)
        for members in comps.values():
            members.sort(key=lambda i: key_fn(rows[i]))
            out.append((members[0], members[1:]))
        return out
    adj: dict[int, list[int]] = defaultdict(list)
    for a, b in kept:
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
            out.append((c, members))
    return out


def _nearest_matches(kept: dict[tuple[int, int], tuple], rows: dict[int, ImageRow],
                     side: Callable[[int], int]) -> list[DuplicatePair]:
    """The nearest image under B of each image under A (cross pairs only), closest first."""
    best: dict[int, tuple[float, int, tuple]] = {}
    for (a, b), v in kept.items():
        ia, ib = (a, b) if side(a) == 0 else (b, a)
        if ia not in best or v[0] < best[ia][0]:
            best[ia] = (v[0], ib, v)
    out = [DuplicatePair(rows[ia].path, rows[ib].path, d, v[1], v[2]) for ia, (d, ib, v) in best.items()]
    return sorted(out, key=lambda p: (p.distance, p.a))


def _warn(report: DedupReport, chain_limit: int) -> None:
    if report.group == "components" and report.largest_group > chain_limit:
        chained = sum(1 for g in report.groups for d in g.duplicates if d.distance > report.threshold)
        report.warnings.append(
            f"the largest group holds {report.largest_group} images (more than {chain_limit}): components link "
            f"chains of similar images ({chained} files are farther than the threshold from their keeper); "
            "group 'star' keeps every file within the threshold of its keeper")
    if report.tiers.get("near") is None and report.pairs:
        report.warnings.append(f"no near-copy boundary for metric {report.metric}: pairs that are not exact copies "
                               "are all 'similar'; label a few pairs and calibrate the index to tell near copies")
