"""``POST /compare``: two images (uploads, or indexed ids / paths) under one or more metrics."""

from __future__ import annotations

import math

from fastapi import APIRouter, Depends, Request
from PIL import Image
from starlette.concurrency import run_in_threadpool

from lookalike.app.service.body import body_kind, parse_form, parse_json, read_upload
from lookalike.app.service.config import MAX_COMPARE_METRICS
from lookalike.app.service.errors import ApiError, error_responses, library_call
from lookalike.app.service.files import open_served, row_of_id, row_of_path
from lookalike.app.service.schemas import CompareForm, CompareJson, CompareJsonSide, CompareOut, CompareRowOut
from lookalike.app.service.state import Service, get_service
from lookalike.judge.compare import MetricValue, compare_all, list_compare_metrics, missing_weights_reason

router = APIRouter()

BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"$ref": "#/components/schemas/CompareForm"}},
    "application/json": {"schema": {"$ref": "#/components/schemas/CompareJson"}},
}}}
BODY_MODELS = (CompareForm, CompareJson, CompareJsonSide)


def row_out(r: MetricValue) -> CompareRowOut:
    """A compare row; a value that no JSON number holds (+inf, nan) is null with ``non_finite`` saying which."""
    finite = r.value is None or math.isfinite(r.value)
    return CompareRowOut(metric=r.metric, value=r.value if finite else None,
                         non_finite=None if finite else str(r.value),  # type: ignore[arg-type]
                         unit=r.unit, direction=r.direction, kind=r.kind, family=r.family, status=r.status,
                         reason=r.reason)


def metric_names(svc: Service, asked: list[str] | None) -> list[str]:
    """The metrics to run: the served one by default, every one for ["all"]; at most MAX_COMPARE_METRICS that can
    load (unknown names are a 400 from the library, metrics without weights only give a row)."""
    names = list(dict.fromkeys(asked or [svc.holder.metric.name]))
    if names == ["all"]:
        names = list_compare_metrics()
    runnable = [n for n in names if library_call(lambda n=n: missing_weights_reason(n)) is None]
    if len(runnable) > MAX_COMPARE_METRICS:
        raise ApiError(400, f"{len(runnable)} of the metrics asked for would run; one request runs at most "
                            f"{MAX_COMPARE_METRICS}: name them (runnable: {', '.join(runnable)})")
    return names


def compare(svc: Service, img_a: Image.Image, img_b: Image.Image, name_a: str, name_b: str,
            metrics: list[str] | None) -> CompareOut:
    names = metric_names(svc, metrics)
    rows = library_call(lambda: compare_all(img_a, img_b, metrics=names, load=svc.metrics.get, download=False))
    return CompareOut(a=name_a, b=name_b, rows=[row_out(r) for r in rows])


@router.post("/compare", response_model=CompareOut, openapi_extra=BODY,
             responses=error_responses(400, 403, 404, 413, 415, 422),
             summary="two images under one or more metrics: the rows of 'lookalike compare --json'")
async def compare_endpoint(request: Request, svc: Service = Depends(get_service)) -> CompareOut:  # noqa: B008
    kind = body_kind(request)
    index = svc.holder.get()
    if kind == "form":
        form, blobs = await parse_form(request, CompareForm, ("a", "b"))
        metrics = [m.strip() for field in form.metrics for m in field.split(",") if m.strip()] or None
        (da, na), (db, nb) = blobs["a"], blobs["b"]
        img_a = await run_in_threadpool(read_upload, svc.cfg, da, na)
        img_b = await run_in_threadpool(read_upload, svc.cfg, db, nb)
        return await run_in_threadpool(compare, svc, img_a, img_b, na, nb, metrics)
    req = await parse_json(request, CompareJson)
    rows = []
    for side in (req.a, req.b):
        if (side.id is None) == (side.path is None):
            raise ApiError(422, "each of 'a' and 'b' needs exactly one of 'id' and 'path'")
        rows.append(row_of_id(index, side.id) if side.id is not None else row_of_path(index, side.path or ""))
    imgs = [await run_in_threadpool(lambda r=r: open_served(r, follow_links=svc.cfg.follow_links)) for r in rows]
    return await run_in_threadpool(compare, svc, imgs[0], imgs[1], rows[0].relpath, rows[1].relpath, req.metrics)
