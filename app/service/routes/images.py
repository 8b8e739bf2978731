"""``GET /images/{id}`` and ``GET /images/{id}/thumbnail``: an indexed image, decoded safely and re-encoded."""

from __future__ import annotations

import io
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response

from lookalike.app.service.config import MAX_ID, THUMB_MAX, THUMB_MIN
from lookalike.app.service.errors import error_responses
from lookalike.app.service.files import open_served, row_of_id
from lookalike.app.service.schemas import TextInt
from lookalike.app.service.state import Service, get_service
from lookalike.app.views import encode_thumbnail

router = APIRouter()

IdParam = Annotated[TextInt, Path(ge=0, le=MAX_ID, description="catalog id of an indexed image (from /search)")]
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                      "image/png": {"schema": {"type": "string", "format": "binary"}}},
          "description": "the image"},
    **error_responses(403, 404, 422),
}
_HEADERS = {"X-Content-Type-Options": "nosniff"}


@router.get("/images/{image_id}", response_class=Response, responses=RESPONSES,
            summary="an indexed image at full size (decoded with the safe loader, re-encoded as PNG or JPEG)")
def image(image_id: IdParam, svc: Service = Depends(get_service)) -> Response:  # noqa: B008
    row = row_of_id(svc.holder.get(), image_id)
    img = open_served(row, follow_links=svc.cfg.follow_links)
    buf = io.BytesIO()
    if (row.format or "").upper() == "PNG":
        img.save(buf, format="PNG")
        media = "image/png"
    else:
        img.save(buf, format="JPEG", quality=92)
        media = "image/jpeg"
    return Response(buf.getvalue(), media_type=media, headers=_HEADERS)


@router.get("/images/{image_id}/thumbnail", response_class=Response,
            responses={**RESPONSES, 200: {"content": {"image/jpeg": {"schema": {"type": "string",
                                                                               "format": "binary"}}},
                                          "description": "a JPEG no larger than size on its long side"}},
            summary="a JPEG thumbnail of an indexed image")
def thumbnail(image_id: IdParam, size: Annotated[TextInt, Query(ge=THUMB_MIN, le=THUMB_MAX)] = 320,
              svc: Service = Depends(get_service)) -> Response:  # noqa: B008
    row = row_of_id(svc.holder.get(), image_id)
    img = open_served(row, follow_links=svc.cfg.follow_links)
    return Response(encode_thumbnail(img, size), media_type="image/jpeg", headers=_HEADERS)
