"""``lookalike serve``: a REST search service (FastAPI) over one index and the metric it was built with.

``create_app(ServeConfig(...))`` returns the FastAPI application; ``app/cli_serve.py`` runs it with uvicorn. One
model and one index per process, loaded once. Requests run in worker threads: searches only read (faiss CPU indexes
allow concurrent searches, the model only runs inference), and the open index is swapped for a freshly opened one
when a ``lookalike index`` run commits (``IndexHolder``), so readers always see the last committed state.

Security, all enforced here: a bearer token (constant-time compare) when one is configured; request bodies limited
in bytes before they are read and uploads limited in pixels before they are decoded, with the same safe loader as
indexing; a path or id from a request reaches the file system only when the catalog holds it (the same check as the
app); every error is JSON ``{"error": ..., "status": ...}`` with its status code, never a traceback.
"""

from __future__ import annotations

import hmac
import io
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from PIL import Image
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from lookalike.app.queries import RerankUnavailable, check_rerank, list_rerank_choices, run_query
from lookalike.app.views import (
    UPLOAD_MAX_PIXELS,
    NotInCatalog,
    catalog_row,
    decode_upload,
    encode_thumbnail,
    images_by_id,
    index_stamp,
)
from lookalike.common.errors import IndexLocked, LookalikeError
from lookalike.data.images import ImageDecodeError, open_image
from lookalike.indexer import (
    DedupReport,
    DuplicateMember,
    ImageIndex,
    ImageInfo,
    add_labels,
    find_duplicates,
    open_index,
)
from lookalike.metric import Metric, WeightsNotFound

_logger = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: Multipart framing and form fields on top of the uploaded files.
FORM_OVERHEAD_BYTES = 64 * 1024
MAX_K = 1000
MAX_PAGE_SIZE = 500
MAX_LABELS = 1000
BETWEEN_HELP = ("two absolute indexed folders, A then B (the parameter given twice): only pairs with one image under "
                "each, and the nearest match under B of each image under A")
THUMB_MIN, THUMB_MAX = 16, 1024


@dataclass(frozen=True)
class ServeConfig:
    """What ``lookalike serve`` was started with.

    Attributes:
        index_dir: the index folder.
        metric: which metric's vectors to serve when the folder holds several (name or fingerprint).
        db_url: catalog URL when it is not the SQLite file in the folder.
        device: device of the model that embeds uploads (default cuda > mps > cpu).
        token: bearer token every request except /health and the docs must carry; None: no token.
        max_upload_bytes: largest uploaded file.
        max_pixels: largest width x height of an upload, checked from its header before decoding.
        refresh_interval_s: how often (at most) a request checks whether an ``index`` run has committed.
    """

    index_dir: Path
    metric: str | None = None
    db_url: str | None = None
    device: str | None = None
    token: str | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = UPLOAD_MAX_PIXELS
    refresh_interval_s: float = 1.0


class ApiError(Exception):
    """An error answered as JSON with ``status`` (and the library's ``hint`` when it gave one)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, hint: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers
        self.hint = hint

    @classmethod
    def of(cls, status: int, e: BaseException) -> ApiError:
        """From a library exception: a LookalikeError's message and hint, else its text."""
        if isinstance(e, LookalikeError):
            return cls(status, e.message, hint=e.hint)
        if isinstance(e, ImageDecodeError):
            return cls(status, f"cannot read the image: {e.reason}")
        return cls(status, e.args[0] if isinstance(e, KeyError) and e.args else str(e))


class _BodyTooLarge(Exception):
    pass


class IndexHolder:
    """The open index of the service: the metric is loaded once; the index is re-opened after a writer commits.

    A request calls ``get()``; at most every ``refresh_interval_s`` it compares the folder's files (name, size,
    mtime) with those seen at the last opening and, when they differ, opens the index again with the same loaded
    metric and swaps it in. Requests in flight finish on the index they started with.
    """

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self._lock = threading.Lock()
        index = open_index(cfg.index_dir, metric=cfg.metric, db_url=cfg.db_url, device=cfg.device)
        self.metric: Metric = index.metric  # loaded here, once: a missing weight file fails at start
        self._index = index
        self._stamp = index_stamp(cfg.index_dir)
        self._checked = time.monotonic()
        self.generation = 0

    def get(self) -> ImageIndex:
        now = time.monotonic()
        if now - self._checked >= self.cfg.refresh_interval_s:
            with self._lock:
                if now - self._checked >= self.cfg.refresh_interval_s:
                    self._checked = now
                    stamp = index_stamp(self.cfg.index_dir)
                    if stamp != self._stamp:
                        self._reopen(stamp)
        return self._index

    def refresh_now(self) -> None:
        """Check the index folder on the next ``get()`` (after this process wrote to the catalog)."""
        self._checked = float("-inf")

    def _reopen(self, stamp: tuple) -> None:
        try:
            fresh = open_index(self.cfg.index_dir, metric=self.metric, db_url=self.cfg.db_url)
        except (ValueError, FileNotFoundError, OSError) as e:  # mid-write or damaged: keep serving the old one
            _logger.warning("index changed but could not be re-opened (still serving the previous state): %s", e)
            return
        self._index, self._stamp = fresh, stamp
        self.generation += 1
        _logger.info("index re-opened (generation %d): %d vectors", self.generation, fresh.vectors.ntotal)


class _ReportCache:
    """The last few dedup reports, by (threshold, group, keep, index stamp); each computed once."""

    def __init__(self, size: int = 4):
        self._size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple, DedupReport] = OrderedDict()

    def get(self, key: tuple, compute: Callable[[], DedupReport]) -> DedupReport:
        with self._lock:  # one computation at a time: concurrent page requests wait for the same report
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            report = compute()
            self._items[key] = report
            while len(self._items) > self._size:
                self._items.popitem(last=False)
            return report


# --- request and response models (they make /docs) ---------------------------------------------------------------


class SearchJson(BaseModel):
    """Search by an indexed image: give ``id`` (from a search result) or ``path`` (absolute or relative to its
    indexed folder)."""

    id: int | None = Field(None, description="catalog id of an indexed image")
    path: str | None = Field(None, description="path of an indexed image (absolute, or relative to its root)")
    k: int = Field(10, ge=1, le=MAX_K, description="how many results")
    metric: str | None = Field(None, description="must be the served metric (default: it)")
    rerank: str | None = Field(None, description="pairwise metric to re-rank the candidates with (see /info)")
    rerank_k: int = Field(50, ge=1, le=MAX_K, description="candidates the re-ranker looks at")
    folder: str | None = Field(None, description="keep results inside this indexed folder (absolute path)")


class SearchForm(BaseModel):
    """Search by an uploaded image (multipart/form-data)."""

    image: bytes = Field(..., json_schema_extra={"format": "binary"}, description="the image file")
    k: int = Field(10, ge=1, le=MAX_K)
    metric: str | None = None
    rerank: str | None = None
    rerank_k: int = Field(50, ge=1, le=MAX_K)
    folder: str | None = None


class CompareJsonSide(BaseModel):
    id: int | None = None
    path: str | None = None


class CompareJson(BaseModel):
    """Compare two indexed images."""

    a: CompareJsonSide
    b: CompareJsonSide
    metrics: list[str] | None = Field(None, description="metric names; default the served metric; ['all'] for all")


class CompareForm(BaseModel):
    """Compare two uploaded images (multipart/form-data); ``metrics`` repeated or comma-separated."""

    a: bytes = Field(..., json_schema_extra={"format": "binary"})
    b: bytes = Field(..., json_schema_extra={"format": "binary"})
    metrics: str | None = None


class HitOut(BaseModel):
    id: int
    path: str
    relpath: str
    root: str
    distance: float = Field(description="lower = more similar (1 - cosine unless re-ranked)")
    width: int | None
    height: int | None


class SearchOut(BaseModel):
    metric: str
    fingerprint: str
    query: dict[str, Any]
    k: int
    rerank: str | None
    folder: str | None
    hits: list[HitOut]
    took_ms: float


class MemberOut(BaseModel):
    id: int | None
    path: str
    relpath: str
    distance: float
    width: int | None
    height: int | None
    size: int
    tier: str = Field("", description="exact, near or similar with respect to the keeper ('' for the keeper)")


class PairOut(BaseModel):
    a: str
    b: str
    distance: float
    tier: str = Field(description="exact (same content), near (a near copy) or similar")
    label: str | None = Field(None, description="'same' or 'different' when a person said so")


class LabelPairIn(BaseModel):
    """A verdict on two indexed images (each by id or path), as ``lookalike label`` records it."""

    a: CompareJsonSide
    b: CompareJsonSide
    same: bool = Field(description="true: the same picture (always grouped); false: different (never reported)")


class LabelsIn(BaseModel):
    labels: list[LabelPairIn] = Field(min_length=1, max_length=MAX_LABELS)


class LabelsOut(BaseModel):
    added: int
    changed: int
    unchanged: int


class GroupOut(BaseModel):
    keeper: MemberOut
    duplicates: list[MemberOut]


class DuplicatesOut(BaseModel):
    metric: str
    threshold: float
    group: str
    keep: str
    images: int
    groups_total: int
    duplicates_total: int
    pairs_total: int
    page: int
    page_size: int
    pages: int
    groups: list[GroupOut]
    threshold_source: str = ""
    tiers: dict[str, Any] = Field(default_factory=dict, description="the near boundary and where it comes from")
    tier_counts: dict[str, int] = Field(default_factory=dict, description="reported pairs per tier")
    hidden_total: int = Field(0, description="pairs left out because a person labelled them different")
    between: list[str] | None = None
    matches: list[PairOut] = Field(default_factory=list,
                                   description="with between: the nearest image under B of each image under A")


def _error_body(status: int, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": message, "status": status, **extra}


def _json_error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse(_error_body(status, message, **extra), status_code=status, headers=headers)


def _describe_validation(errors: list[dict[str, Any]]) -> str:
    parts = []
    for e in errors[:5]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path"))
        parts.append(f"{where or 'request'}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


class _BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` (by Content-Length up front, else while reading)."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                await _json_error(400, "bad Content-Length header")(scope, receive, send)
                return
            if n > self.max_bytes:
                await _json_error(413, f"request body is {n:,} bytes; this service accepts at most "
                                       f"{self.max_bytes:,}")(scope, receive, send)
                return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            msg = await receive()
            if msg.get("type") == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge(f"request body exceeds {self.max_bytes:,} bytes")
            return msg

        await self.app(scope, limited, send)


def create_app(cfg: ServeConfig, holder: IndexHolder | None = None) -> FastAPI:
    """The FastAPI application of ``lookalike serve`` (opens the index and loads its metric unless given ``holder``).

    Args:
        cfg: the service settings.
        holder: an already opened index holder (tests and benchmarks).

    Returns:
        The application; run it with uvicorn (``lookalike serve`` does).

    Raises:
        FileNotFoundError: no index at ``cfg.index_dir``, or the metric's weights are missing (WeightsNotFound).
        ValueError: no vectors in the index, or several metrics and none chosen.
    """
    holder = holder or IndexHolder(cfg)
    reports = _ReportCache()
    compare_metrics: dict[str, Metric] = {holder.metric.name: holder.metric}
    compare_lock = threading.Lock()
    bearer = HTTPBearer(auto_error=False, description="the token given to 'lookalike serve --token'")

    app = FastAPI(
        title="lookalike",
        version="0.1",
        description=(f"Perceptual image search over the index `{cfg.index_dir}` ({holder.metric.name}). "
                     "Distances: lower = more similar. Every endpoint except /health and these docs needs "
                     "`Authorization: Bearer TOKEN` when the service was started with --token."),
    )

    def require_token(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        if cfg.token is None:
            return
        given = creds.credentials if creds is not None else ""
        if not given or not hmac.compare_digest(given.encode(), cfg.token.encode()):
            raise ApiError(401, "missing or wrong bearer token (send 'Authorization: Bearer TOKEN')",
                           {"WWW-Authenticate": "Bearer"})

    auth = [Depends(require_token)]

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, e: ApiError) -> JSONResponse:
        extra = {"hint": e.hint} if e.hint else {}
        return _json_error(e.status, e.message, e.headers, **extra)

    @app.exception_handler(_BodyTooLarge)
    async def _too_large(_request: Request, e: _BodyTooLarge) -> JSONResponse:
        return _json_error(413, str(e))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, e: RequestValidationError) -> JSONResponse:
        errors = list(e.errors())
        return _json_error(422, _describe_validation(errors),
                           detail=[{"loc": list(x.get("loc", ())), "msg": x.get("msg")} for x in errors])

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, e: StarletteHTTPException) -> JSONResponse:
        return _json_error(e.status_code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, e: Exception) -> JSONResponse:
        _logger.exception("unexpected error")
        return _json_error(500, f"internal error ({type(e).__name__}); see the server log")

    # --- helpers -------------------------------------------------------------------------------------------------

    def check_metric(name: str | None) -> None:
        served = holder.metric
        if name and name not in (served.name, served.fingerprint):
            raise ApiError(400, f"this service searches vectors of {served.name!r}; metric {name!r} is not served "
                                f"here (start another 'lookalike serve --metric {name}')")

    def row_of_id(index: ImageIndex, image_id: int | str) -> ImageInfo:
        try:
            i = int(image_id)
        except (TypeError, ValueError):
            raise ApiError(404, f"no indexed image with id {str(image_id)[:80]!r}; ids are integers from "
                                f"/search results") from None
        row = images_by_id(index, [i]).get(i) if i >= 0 else None
        if row is None:
            raise ApiError(404, f"no indexed image with id {i}")
        return row

    def row_of_path(index: ImageIndex, path: str) -> ImageInfo:
        try:
            return catalog_row(index, path)
        except NotInCatalog as e:
            raise ApiError(403, str(e)) from None

    def read_upload(data: bytes, name: str) -> Image.Image:
        if len(data) > cfg.max_upload_bytes:
            raise ApiError(413, f"{name!r} is {len(data):,} bytes; uploads are limited to {cfg.max_upload_bytes:,}")
        try:
            return decode_upload(data, name, max_bytes=cfg.max_upload_bytes, max_pixels=cfg.max_pixels)
        except ValueError as e:
            raise ApiError(400, str(e)) from None

    def library_call(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except ApiError:
            raise
        except (RerankUnavailable, WeightsNotFound, ValueError, KeyError) as e:  # bad input, or missing weights
            raise ApiError.of(400, e) from None
        except FileNotFoundError as e:
            raise ApiError.of(404, e) from None

    async def parse_form(request: Request, model: type[BaseModel], files: tuple[str, ...]) -> tuple[BaseModel, dict]:
        try:
            form = await request.form(max_files=len(files), max_fields=20)
        except _BodyTooLarge:
            raise
        except Exception as e:  # noqa: BLE001 - malformed multipart body
            raise ApiError(400, f"malformed multipart body: {e}") from None
        blobs: dict[str, tuple[bytes, str]] = {}
        fields: dict[str, Any] = {}
        for key, value in form.multi_items():
            if hasattr(value, "read"):
                if key not in files:
                    raise ApiError(400, f"unexpected file field {key!r}; expected {', '.join(files)}")
                blobs[key] = (await value.read(), value.filename or key)
            elif key == "metrics" and "metrics" in fields:
                fields["metrics"] += "," + str(value)
            else:
                fields[key] = value
        for f in files:
            if f not in blobs:
                raise ApiError(400, f"missing file field {f!r} (multipart/form-data)")
            fields[f] = b""
        try:
            parsed = model.model_validate(fields)
        except ValidationError as e:
            raise ApiError(422, _describe_validation(list(e.errors()))) from None
        return parsed, blobs

    async def parse_json(request: Request, model: type[BaseModel]) -> Any:
        try:
            body = await request.body()
            return model.model_validate_json(body or b"{}")
        except _BodyTooLarge:
            raise
        except ValidationError as e:
            raise ApiError(422, _describe_validation(list(e.errors()))) from None

    def body_kind(request: Request) -> Literal["json", "form"]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/json":
            return "json"
        if ctype == "multipart/form-data":
            return "form"
        raise ApiError(415, f"unsupported content type {ctype or 'none'!r}: send multipart/form-data (an upload) "
                            f"or application/json (an indexed id or path)")

    def hits_out(index: ImageIndex, hits: list) -> list[HitOut]:
        rows = images_by_id(index, [h.image_id for h in hits])
        out = []
        for h in hits:
            r = rows.get(h.image_id)
            out.append(HitOut(id=h.image_id, path=h.path, relpath=h.relpath, root=h.root, distance=h.distance,
                              width=r.width if r else None, height=r.height if r else None))
        return out

    def do_search(query: Image.Image | str, described: dict, k: int, rerank: str | None, rerank_k: int,
                  folder: str | None, index: ImageIndex) -> SearchOut:
        t0 = time.perf_counter()
        res = library_call(lambda: run_query(index, query, k=k, folder=folder, rerank=rerank, rerank_k=rerank_k))
        return SearchOut(metric=index.info.metric, fingerprint=index.fingerprint, query=described, k=k,
                         rerank=res.rerank, folder=res.folder, hits=hits_out(index, res.hits),
                         took_ms=round((time.perf_counter() - t0) * 1e3, 3))

    # --- endpoints -----------------------------------------------------------------------------------------------

    @app.get("/health", summary="liveness (no token needed)")
    def health() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/info", dependencies=auth, summary="what this service serves")
    def info() -> dict[str, Any]:
        index = holder.get()
        from lookalike.indexer import index_info

        facts = library_call(lambda: index_info(cfg.index_dir, db_url=cfg.db_url, max_failed=0))
        return {
            "index_dir": str(cfg.index_dir), "metric": index.info.metric, "fingerprint": index.fingerprint,
            "dim": index.info.dim, "vectors": index.vectors.ntotal, "images": facts["images"],
            "roots": facts["roots"], "dedup_threshold": index.info.dedup_threshold,
            "rerankers": list_rerank_choices(), "generation": holder.generation,
            "limits": {"max_upload_bytes": cfg.max_upload_bytes, "max_pixels": cfg.max_pixels, "max_k": MAX_K},
            "token_required": cfg.token is not None,
        }

    search_body = {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": SearchForm.model_json_schema()},
        "application/json": {"schema": SearchJson.model_json_schema()},
    }}}

    @app.post("/search", dependencies=auth, response_model=SearchOut, openapi_extra=search_body,
              summary="nearest indexed images of an upload (multipart) or of an indexed image (JSON id or path)")
    async def search_endpoint(request: Request) -> SearchOut:
        kind = body_kind(request)
        index = holder.get()
        if kind == "form":
            form, blobs = await parse_form(request, SearchForm, ("image",))
            check_metric(form.metric)
            check_rerank_or_400(form.rerank)
            data, name = blobs["image"]

            def decode_and_search() -> SearchOut:
                return do_search(read_upload(data, name), {"upload": name, "bytes": len(data)}, form.k, form.rerank,
                                 form.rerank_k, form.folder, index)

            return await run_in_threadpool(decode_and_search)  # one worker-thread hop per request
        req = await parse_json(request, SearchJson)
        check_metric(req.metric)
        check_rerank_or_400(req.rerank)
        if (req.id is None) == (req.path is None):
            raise ApiError(422, "give exactly one of 'id' and 'path' (or upload an image as multipart/form-data)")
        row = row_of_id(index, req.id) if req.id is not None else row_of_path(index, req.path or "")
        return await run_in_threadpool(do_search, row.path, {"id": row.id, "path": row.path}, req.k, req.rerank,
                                       req.rerank_k, req.folder, index)

    def check_rerank_or_400(name: str | None) -> None:
        try:
            check_rerank(name)
        except RerankUnavailable as e:
            raise ApiError(400, str(e)) from None

    compare_body = {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": CompareForm.model_json_schema()},
        "application/json": {"schema": CompareJson.model_json_schema()},
    }}}

    def load_compare_metric(name: str) -> Metric:
        with compare_lock:
            if name not in compare_metrics:
                from lookalike.metric import load_metric

                if len(compare_metrics) >= 8:  # keep the served one, drop the oldest other
                    oldest = next(n for n in compare_metrics if n != holder.metric.name)
                    del compare_metrics[oldest]
                compare_metrics[name] = load_metric(name, device=cfg.device)
            return compare_metrics[name]

    def do_compare(img_a: Image.Image, img_b: Image.Image, name_a: str, name_b: str,
                   metrics: list[str] | None) -> dict[str, Any]:
        from lookalike.judge.compare import compare_all, list_compare_metrics

        names = metrics or [holder.metric.name]
        if names == ["all"]:
            names = list_compare_metrics()
        rows = library_call(lambda: compare_all(img_a, img_b, metrics=names, load=load_compare_metric,
                                                download=False))
        return {"a": name_a, "b": name_b, "rows": [r.as_dict() for r in rows]}

    @app.post("/compare", dependencies=auth, openapi_extra=compare_body,
              summary="two images under one or more metrics: the rows of 'lookalike compare --json'")
    async def compare_endpoint(request: Request) -> dict[str, Any]:
        kind = body_kind(request)
        index = holder.get()
        if kind == "form":
            form, blobs = await parse_form(request, CompareForm, ("a", "b"))
            metrics = [m.strip() for m in (form.metrics or "").split(",") if m.strip()] or None
            (da, na), (db, nb) = blobs["a"], blobs["b"]
            img_a = await run_in_threadpool(read_upload, da, na)
            img_b = await run_in_threadpool(read_upload, db, nb)
            return await run_in_threadpool(do_compare, img_a, img_b, na, nb, metrics)
        req = await parse_json(request, CompareJson)
        imgs, names = [], []
        for side in (req.a, req.b):
            if (side.id is None) == (side.path is None):
                raise ApiError(422, "each of 'a' and 'b' needs exactly one of 'id' and 'path'")
            row = row_of_id(index, side.id) if side.id is not None else row_of_path(index, side.path or "")
            imgs.append(await run_in_threadpool(lambda p=row.path: library_call(lambda: open_image(p))))
            names.append(row.relpath)
        return await run_in_threadpool(do_compare, imgs[0], imgs[1], names[0], names[1], req.metrics)

    def member_out(index: ImageIndex, m: DuplicateMember) -> MemberOut:
        row = index.find_image(m.path)
        return MemberOut(id=row.id if row is not None else None, path=m.path, relpath=m.relpath,
                         distance=m.distance, width=m.width, height=m.height, size=m.size, tier=m.tier)

    @app.get("/duplicates", dependencies=auth, response_model=DuplicatesOut,
             summary="near-duplicate groups at a threshold, a page at a time (largest groups first)")
    def duplicates(
        threshold: float | None = Query(None, ge=0.0, le=2.0, description="1 - cosine; default: the stored one"),
        group: Literal["components", "star"] = "components",
        keep: Literal["largest", "oldest", "newest", "first"] = "largest",
        page: int = Query(1, ge=1),
        page_size: int = Query(50, ge=1, le=MAX_PAGE_SIZE),
        between: list[str] | None = Query(None, description=BETWEEN_HELP),  # noqa: B008 - a FastAPI declaration
    ) -> DuplicatesOut:
        if between is not None and len(between) != 2:
            raise ApiError(422, f"between needs two folders (A, then B), got {len(between)}")
        if between is not None and not all(f.startswith("/") for f in between):
            raise ApiError(422, "between needs absolute folders (the indexed roots are listed by /info)")
        index = holder.get()
        pair = (between[0], between[1]) if between else None
        key = (threshold, group, keep, holder.generation, index.fingerprint, pair)
        report = library_call(lambda: reports.get(key, lambda: find_duplicates(
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

    @app.post("/labels", dependencies=auth, response_model=LabelsOut,
              summary="record verdicts on pairs of indexed images (what 'lookalike label' records)")
    async def labels_endpoint(request: Request) -> LabelsOut:
        req = await parse_json(request, LabelsIn)
        index = holder.get()
        pairs = []
        for p in req.labels:
            sides = []
            for side in (p.a, p.b):
                if (side.id is None) == (side.path is None):
                    raise ApiError(422, "each of 'a' and 'b' needs exactly one of 'id' and 'path'")
                sides.append(row_of_id(index, side.id) if side.id is not None else row_of_path(index, side.path or ""))
            pairs.append((sides[0].path, sides[1].path, 1.0 if p.same else 0.0))

        def write() -> LabelsOut:
            try:
                s = add_labels(cfg.index_dir, pairs, db_url=cfg.db_url, source="service")
            except IndexLocked as e:
                raise ApiError.of(409, e) from None
            holder.refresh_now()
            return LabelsOut(added=s.added, changed=s.changed, unchanged=s.unchanged)

        return await run_in_threadpool(lambda: library_call(write))

    image_responses: dict[int | str, dict[str, Any]] = {200: {"content": {"image/jpeg": {}, "image/png": {}}}}

    @app.get("/images/{image_id}", dependencies=auth, response_class=Response, responses=image_responses,
             summary="an indexed image at full size (decoded with the safe loader, re-encoded)")
    def image(image_id: str) -> Response:
        index = holder.get()
        row = row_of_id(index, image_id)
        img = library_call(lambda: open_image(row.path))
        buf = io.BytesIO()
        if (row.format or "").upper() == "PNG":
            img.save(buf, format="PNG")
            media = "image/png"
        else:
            img.save(buf, format="JPEG", quality=92)
            media = "image/jpeg"
        return Response(buf.getvalue(), media_type=media, headers={"X-Content-Type-Options": "nosniff"})

    @app.get("/images/{image_id}/thumbnail", dependencies=auth, response_class=Response, responses=image_responses,
             summary="a JPEG thumbnail of an indexed image")
    def thumbnail(image_id: str, size: int = Query(320, ge=THUMB_MIN, le=THUMB_MAX)) -> Response:
        index = holder.get()
        row = row_of_id(index, image_id)
        img = library_call(lambda: open_image(row.path))
        return Response(encode_thumbnail(img, size), media_type="image/jpeg",
                        headers={"X-Content-Type-Options": "nosniff"})

    app.add_middleware(_BodyLimit, max_bytes=2 * cfg.max_upload_bytes + FORM_OVERHEAD_BYTES)
    app.state.holder = holder
    return app
