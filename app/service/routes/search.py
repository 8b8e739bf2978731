"""``POST /search``: the nearest indexed images of an upload (multipart) or of an indexed image (JSON id or path)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from PIL import Image
from starlette.concurrency import run_in_threadpool

from lookalike.app.queries import RerankUnavailable, check_rerank, run_query
from lookalike.app.service.body import body_kind, parse_form, parse_json, read_upload
from lookalike.app.service.config import MAX_FOLDER_CANDIDATES, MAX_RERANK_K
from lookalike.app.service.errors import ApiError, error_responses, library_call, quote
from lookalike.app.service.files import row_of_id, row_of_path, served_path
from lookalike.app.service.schemas import HitOut, QueryOut, SearchForm, SearchJson, SearchOut
from lookalike.app.service.state import Service, get_service
from lookalike.app.views import images_by_id
from lookalike.indexer import ImageIndex

router = APIRouter()

BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"$ref": "#/components/schemas/SearchForm"}},
    "application/json": {"schema": {"$ref": "#/components/schemas/SearchJson"}},
}}}
#: Models that only the request bodies above use (the factory adds them to the OpenAPI components).
BODY_MODELS = (SearchForm, SearchJson)


def check_request(svc: Service, metric: str | None, rerank: str | None, k: int) -> None:
    """400 for a metric that is not the served one or an unknown re-ranker; 422 for a k past the re-rank limit."""
    served = svc.holder.metric
    if metric and metric not in (served.name, served.fingerprint):
        raise ApiError(400, f"this service searches vectors of {served.name!r}; metric {quote(metric)} is not "
                            f"served here (start another 'lookalike serve --metric NAME')")
    try:
        check_rerank(rerank)
    except RerankUnavailable as e:
        raise ApiError(400, str(e)) from None  # the name is at most MAX_NAME_CHARS long
    if rerank and k > MAX_RERANK_K:
        raise ApiError(422, f"k: with a re-ranker, k is at most {MAX_RERANK_K} (got {k})")


def hits_out(index: ImageIndex, hits: list) -> list[HitOut]:
    rows = images_by_id(index, [h.image_id for h in hits])
    out = []
    for h in hits:
        r = rows.get(h.image_id)
        out.append(HitOut(id=h.image_id, path=h.path, relpath=h.relpath, root=h.root, distance=h.distance,
                          width=r.width if r else None, height=r.height if r else None))
    return out


def search(index: ImageIndex, query: Image.Image | str, described: QueryOut, req: SearchJson | SearchForm
           ) -> SearchOut:
    """One search through ``run_query`` within the limits, as a ``SearchOut``."""
    t0 = time.perf_counter()
    cap = MAX_RERANK_K if req.rerank else MAX_FOLDER_CANDIDATES
    res = library_call(lambda: run_query(index, query, k=req.k, folder=req.folder, rerank=req.rerank,
                                         rerank_k=req.rerank_k, max_candidates=cap))
    return SearchOut(metric=index.info.metric, fingerprint=index.fingerprint, query=described, k=req.k,
                     rerank=res.rerank, folder=res.folder, hits=hits_out(index, res.hits),
                     took_ms=round((time.perf_counter() - t0) * 1e3, 3))


@router.post("/search", response_model=SearchOut, openapi_extra=BODY,
             responses=error_responses(400, 403, 404, 413, 415, 422),
             summary="nearest indexed images of an upload (multipart) or of an indexed image (JSON id or path)")
async def search_endpoint(request: Request, svc: Service = Depends(get_service)) -> SearchOut:  # noqa: B008
    kind = body_kind(request)
    index = svc.holder.get()
    if kind == "form":
        form, blobs = await parse_form(request, SearchForm, ("image",))
        check_request(svc, form.metric, form.rerank, form.k)
        data, name = blobs["image"]

        def decode_and_search() -> SearchOut:
            img = read_upload(svc.cfg, data, name)
            return search(index, img, QueryOut(upload=name, bytes=len(data)), form)

        return await run_in_threadpool(decode_and_search)  # one worker-thread hop per request
    req = await parse_json(request, SearchJson)
    check_request(svc, req.metric, req.rerank, req.k)
    if (req.id is None) == (req.path is None):
        raise ApiError(422, "give exactly one of 'id' and 'path' (or upload an image as multipart/form-data)")
    row = row_of_id(index, req.id) if req.id is not None else row_of_path(index, req.path or "")
    served_path(row, follow_links=svc.cfg.follow_links)
    return await run_in_threadpool(search, index, row.path, QueryOut(id=row.id, path=row.path), req)
