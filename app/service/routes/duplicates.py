"""``GET /duplicates``: near-duplicate groups at a threshold (with tiers; across two folders with ``between``), a page
at a time, from a cached report."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query

from lookalike.app.service.config import MAX_DUPLICATES_THRESHOLD, MAX_PAGE_SIZE
from lookalike.app.service.errors import ApiError, error_responses, library_call
from lookalike.app.service.schemas import DuplicatesOut, Folder, GroupOut, MemberOut, PairOut, TextInt
from lookalike.app.service.state import Service, get_service
from lookalike.indexer import DuplicateMember, ImageIndex, find_duplicates

router = APIRouter()


def member_out(index: ImageIndex, m: DuplicateMember) -> MemberOut:
    row = index.find_image(m.path)
    return MemberOut(id=row.id if row is not None else None, path=m.path, relpath=m.relpath,
                     distance=m.distance, width=m.width, height=m.height, size=m.size, tier=m.tier)


@router.get("/duplicates", response_model=DuplicatesOut, responses=error_responses(400, 422, 429),
            summary="near-duplicate groups at a threshold, a page at a time (largest groups first)")
def duplicates(
    threshold: Annotated[float | None, Query(
        ge=0.0, le=MAX_DUPLICATES_THRESHOLD,
        description=f"1 - cosine, at most {MAX_DUPLICATES_THRESHOLD}; default: the one stored with the index")] = None,
    group: Literal["components", "star"] = "components",
    keep: Literal["largest", "oldest", "newest", "first"] = "largest",
    page: Annotated[TextInt, Query(ge=1, le=10**9)] = 1,
    page_size: Annotated[TextInt, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
    between: Annotated[list[Folder] | None, Query(
        min_length=2, max_length=2,
        description="two absolute indexed folders, A then B (the parameter given twice): only pairs with one image "
                    "under each, and the nearest match under B of each image under A")] = None,
    svc: Service = Depends(get_service),  # noqa: B008
) -> DuplicatesOut:
    if between is not None and len(between) != 2:
        raise ApiError(422, f"between needs two folders (A, then B), got {len(between)}")
    pair = (between[0], between[1]) if between else None
    index = svc.holder.get()
    key = (threshold, group, keep, svc.holder.generation, index.fingerprint, pair)
    report = library_call(lambda: svc.reports.get(key, lambda: find_duplicates(
        index, threshold=threshold, group=group, keep=keep, between=pair)))
    total = len(report.groups)
    pages = max(1, -(-total // page_size))
    shown = report.groups[(page - 1) * page_size: page * page_size]
    return DuplicatesOut(
        metric=report.metric, threshold=report.threshold, group=report.group, keep=report.keep,
        images=report.images, groups_total=total, duplicates_total=report.n_duplicates,
        pairs_total=len(report.pairs), page=page, page_size=page_size, pages=pages,
        groups=[GroupOut(keeper=member_out(index, g.keeper),
                         duplicates=[member_out(index, d) for d in g.duplicates]) for g in shown],
        threshold_source=report.threshold_source, tiers=report.tiers, tier_counts=report.tier_counts(),
        hidden_total=len(report.hidden), between=report.between,
        matches=[PairOut(a=p.a, b=p.b, distance=p.distance, tier=p.tier, label=p.label) for p in report.matches])
