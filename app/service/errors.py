"""Every error of the service is one JSON shape, ``ErrorOut``: one exception -> response mapping, kept here.

Routes raise ``ApiError`` (or let a library error through ``library_call``); FastAPI's own validation errors,
Starlette's HTTP errors (404 for an unknown route, 405) and anything unexpected are turned into the same shape by the
handlers that ``install_error_handlers`` adds. Messages quote at most a short prefix of what the client sent
(``quote``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lookalike.app.service.schemas import ErrorOut, ValidationErrorOut
from lookalike.common.errors import LookalikeError
from lookalike.data.images import ImageDecodeError
from lookalike.metric import WeightsNotFound

_logger = logging.getLogger(__name__)

#: Characters of a client's value quoted in an error message.
QUOTE_CHARS = 80

T = TypeVar("T")

#: What each status means here (the descriptions of the OpenAPI responses).
STATUS_TEXT = {
    400: "bad request: an unreadable upload, a metric or re-ranker not served here, a malformed body",
    401: "missing or wrong bearer token",
    403: "refused: the path is not an indexed image, or its real location is outside the indexed folders",
    404: "no such indexed image, or its file cannot be read any more",
    409: "conflict: another process is writing the index (an index run); retry when it is done",
    413: "request body too large",
    415: "unsupported content type",
    422: "a field is missing, of the wrong type, out of range or unknown",
    429: "busy: another duplicates report is being computed; retry after the Retry-After seconds",
}


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """``repr`` of at most ``limit`` characters of ``value``, saying how long it was when cut."""
    s = value if isinstance(value, str) else str(value)
    if len(s) <= limit:
        return repr(s)
    return f"{s[:limit]!r}... ({len(s):,} characters)"


class ApiError(Exception):
    """An error answered as ``ErrorOut`` with ``status`` (and the library's ``hint`` when it gave one)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, hint: str | None = None,
                 detail: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers
        self.hint = hint
        self.detail = detail

    @classmethod
    def of(cls, status: int, e: BaseException) -> ApiError:
        """From a library exception: a LookalikeError's message and hint, else its text (first line)."""
        if isinstance(e, LookalikeError):
            return cls(status, _first_lines(e.message), hint=e.hint)
        if isinstance(e, ImageDecodeError):
            return cls(status, f"cannot read the image: {e.reason}")
        text = e.args[0] if isinstance(e, KeyError) and e.args else e
        return cls(status, _first_lines(str(text)))


def _first_lines(text: str, limit: int = 2000) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def library_call(fn: Callable[[], T]) -> T:
    """``fn()``, with the library's errors for bad input or missing weights as 400 and missing files as 404."""
    try:
        return fn()
    except ApiError:
        raise
    except (WeightsNotFound, ValueError, KeyError) as e:  # bad input, or weights missing on the server
        raise ApiError.of(400, e) from None
    except FileNotFoundError as e:
        raise ApiError.of(404, e) from None


def error_response(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, "status": status, **extra}, status_code=status, headers=headers)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entries of these error statuses (422 with the validation details)."""
    out: dict[int | str, dict[str, Any]] = {}
    for s in statuses:
        model = ValidationErrorOut if s == 422 else ErrorOut
        out[s] = {"model": model, "description": STATUS_TEXT[s]}
    return out


def describe_validation(errors: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """A one-line summary of pydantic errors and their ``detail`` list (locations cut short, inputs never quoted)."""
    detail = []
    for e in errors[:20]:
        loc = [x if isinstance(x, int) else str(x)[:QUOTE_CHARS] for x in e.get("loc", ())]
        msg = str(e.get("msg", "invalid"))[:500]
        pattern = (e.get("ctx") or {}).get("pattern")
        if e.get("type") == "string_pattern_mismatch" and pattern in ("^/", r"^[A-Za-z]:[\\/]"):
            msg = "must be an absolute path (an indexed folder or a folder inside one)"
        detail.append({"loc": loc, "msg": msg, "type": str(e.get("type", "invalid"))})
    parts = []
    for d in detail[:5]:
        loc = d["loc"][1:] if len(d["loc"]) > 1 and d["loc"][0] in ("body", "query", "path", "header") else d["loc"]
        where = ".".join(str(x) for x in loc)
        parts.append(f"{where or 'request'}: {d['msg']}")
    return "; ".join(parts) or "invalid request", detail


def validation_error(errors: list[dict[str, Any]]) -> ApiError:
    """A 422 ``ApiError`` carrying pydantic's errors (the handler adds them as ``detail``)."""
    message, detail = describe_validation(errors)
    return ApiError(422, message, detail=detail)


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception a request can raise to an ``ErrorOut`` JSON response."""

    async def api_error(_request: Request, e: Exception) -> JSONResponse:
        assert isinstance(e, ApiError)
        extra: dict[str, Any] = {"hint": e.hint} if e.hint else {}
        if e.status == 422:
            extra["detail"] = e.detail or []
        return error_response(e.status, e.message, e.headers, **extra)

    async def invalid(_request: Request, e: Exception) -> JSONResponse:
        assert isinstance(e, RequestValidationError)
        message, detail = describe_validation(list(e.errors()))
        return error_response(422, message, detail=detail)

    async def http_error(_request: Request, e: Exception) -> JSONResponse:
        assert isinstance(e, StarletteHTTPException)
        return error_response(e.status_code, str(e.detail), getattr(e, "headers", None))

    async def unexpected(_request: Request, e: Exception) -> JSONResponse:
        _logger.error("unexpected error", exc_info=e)
        return error_response(500, f"internal error ({type(e).__name__}); see the server log")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
