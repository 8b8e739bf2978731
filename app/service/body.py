"""Request bodies: size limits before anything is read, the content type, JSON and multipart parsing, uploads.

``BodyLimit`` (ASGI middleware) refuses a body over its limit from the Content-Length header, or while it streams
in: multipart bodies may carry uploads (two files and the form), every other body is capped at ``MAX_JSON_BYTES``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar, get_origin

from fastapi import Request
from PIL import Image
from pydantic import BaseModel, ValidationError

from lookalike.app.service.config import MAX_JSON_BYTES, ServeConfig
from lookalike.app.service.errors import ApiError, error_response, quote, validation_error
from lookalike.app.views import decode_upload

M = TypeVar("M", bound=BaseModel)
#: Characters of an upload's file name kept (in results and messages).
MAX_FILENAME_CHARS = 200

_Scope = dict[str, Any]
_Receive = Callable[[], Awaitable[dict[str, Any]]]
_Send = Callable[[dict[str, Any]], Awaitable[None]]


class BodyTooLarge(ApiError):
    """A request body past its limit, found while it was read."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body exceeds {limit:,} bytes")


def _is_multipart(scope: _Scope) -> bool:
    for name, value in scope.get("headers") or ():
        if name == b"content-type":
            return value.split(b";")[0].strip().lower() == b"multipart/form-data"
    return False


class BodyLimit:
    """ASGI middleware: at most ``max_form`` bytes for multipart bodies, ``max_json`` for any other body."""

    def __init__(self, app: Callable[[_Scope, _Receive, _Send], Awaitable[None]], max_form: int,
                 max_json: int = MAX_JSON_BYTES):
        self.app = app
        self.max_form = max_form
        self.max_json = max_json

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_form if _is_multipart(scope) else self.max_json
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            if not length.isdigit() or len(length) > 18:
                await error_response(400, "bad Content-Length header")(scope, receive, send)
                return
            if int(length) > limit:
                what = "a multipart body" if limit == self.max_form else "a JSON body"
                await error_response(413, f"request body is {int(length):,} bytes; this service accepts at most "
                                          f"{limit:,} for {what}")(scope, receive, send)
                return
        seen = 0

        async def limited() -> dict[str, Any]:
            nonlocal seen
            msg = await receive()
            if msg.get("type") == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return msg

        await self.app(scope, limited, send)


def body_kind(request: Request) -> Literal["json", "form"]:
    """"json" or "form" from the Content-Type header; 415 for anything else."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        return "json"
    if ctype == "multipart/form-data":
        return "form"
    raise ApiError(415, f"unsupported content type {quote(ctype or 'none')}: send multipart/form-data (an upload) "
                        f"or application/json (an indexed id or path)")


async def parse_json(request: Request, model: type[M]) -> M:
    """The JSON body validated by ``model`` (an empty body is ``{}``); 422 with the details otherwise."""
    body = await request.body()
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as e:
        raise validation_error(list(e.errors())) from None


async def parse_form(request: Request, model: type[M], files: tuple[str, ...]
                     ) -> tuple[M, dict[str, tuple[bytes, str]]]:
    """A multipart body: its fields validated by ``model``, and ``{field: (bytes, file name)}`` of ``files``."""
    try:
        form = await request.form(max_files=len(files), max_fields=20)
    except ApiError:
        raise
    except Exception as e:  # noqa: BLE001 - any malformed multipart body
        raise ApiError(400, f"malformed multipart body: {quote(e, 200)}") from None
    blobs: dict[str, tuple[bytes, str]] = {}
    fields: dict[str, Any] = {}
    for key, value in form.multi_items():
        if not isinstance(value, str):
            if key not in files:
                raise ApiError(400, f"unexpected file field {quote(key)}; expected {', '.join(files)}")
            blobs[key] = (await value.read(), (value.filename or key)[:MAX_FILENAME_CHARS])
        elif _is_list(model, key):  # a list field: one form field per item
            fields.setdefault(key, []).append(value)
        elif key in fields:
            raise ApiError(422, f"{quote(key)}: given more than once", detail=[
                {"loc": ["body", key[:80]], "msg": "given more than once", "type": "duplicate_field"}])
        else:
            fields[key] = value
    for f in files:
        if f not in blobs:
            raise ApiError(400, f"missing file field {f!r} (multipart/form-data)")
        fields[f] = b""
    try:
        return model.model_validate(fields), blobs
    except ValidationError as e:
        raise validation_error(list(e.errors())) from None


def _is_list(model: type[BaseModel], key: str) -> bool:
    field = model.model_fields.get(key)
    return field is not None and get_origin(field.annotation) is list


def read_upload(cfg: ServeConfig, data: bytes, name: str) -> Image.Image:
    """Decode an uploaded image with the safe loader, within the size and pixel limits (413 / 400)."""
    if len(data) > cfg.max_upload_bytes:
        raise ApiError(413, f"{quote(name)} is {len(data):,} bytes; uploads are limited to {cfg.max_upload_bytes:,}")
    try:
        return decode_upload(data, name[:80], max_bytes=cfg.max_upload_bytes, max_pixels=cfg.max_pixels)
    except ValueError as e:
        raise ApiError(400, str(e)) from None
