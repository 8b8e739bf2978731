"""``POST /labels``: a person's verdicts on pairs of indexed images, the same labels ``lookalike label`` writes."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from lookalike.app.service.body import parse_json
from lookalike.app.service.errors import ApiError, error_responses, library_call
from lookalike.app.service.files import row_of_id, row_of_path
from lookalike.app.service.schemas import CompareJsonSide, LabelPairIn, LabelsIn, LabelsOut
from lookalike.app.service.state import Service, get_service
from lookalike.common.errors import IndexLocked
from lookalike.indexer import ImageIndex, add_labels

router = APIRouter()

BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/LabelsIn"}},
}}}
BODY_MODELS = (LabelsIn, LabelPairIn)


def _path_of(index: ImageIndex, side: CompareJsonSide) -> str:
    if (side.id is None) == (side.path is None):
        raise ApiError(422, "each of 'a' and 'b' needs exactly one of 'id' and 'path'")
    row = row_of_id(index, side.id) if side.id is not None else row_of_path(index, side.path or "")
    return row.path


@router.post("/labels", response_model=LabelsOut, openapi_extra=BODY, responses=error_responses(400, 403, 404, 409,
                                                                                               413, 415, 422),
             summary="record verdicts on pairs of indexed images ('same' pairs are always grouped by /duplicates, "
                     "'different' pairs never reported)")
async def labels_endpoint(request: Request, svc: Service = Depends(get_service)) -> LabelsOut:  # noqa: B008
    req = await parse_json(request, LabelsIn)
    index = svc.holder.get()
    pairs = [(_path_of(index, p.a), _path_of(index, p.b), 1.0 if p.same else 0.0) for p in req.labels]

    def write() -> LabelsOut:
        try:
            s = add_labels(svc.cfg.index_dir, pairs, db_url=svc.cfg.db_url, source="service")
        except IndexLocked as e:
            raise ApiError.of(409, e) from None
        svc.holder.refresh_now()
        return LabelsOut(added=s.added, changed=s.changed, unchanged=s.unchanged)

    return await run_in_threadpool(lambda: library_call(write))
