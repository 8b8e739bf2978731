"""``create_app``: the FastAPI application of ``lookalike serve``, assembled from the modules of this package."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline
from pydantic.json_schema import models_json_schema

from lookalike.app.service.auth import auth_dependencies
from lookalike.app.service.body import BodyLimit
from lookalike.app.service.config import FORM_OVERHEAD_BYTES, ServeConfig
from lookalike.app.service.errors import error_responses, install_error_handlers
from lookalike.app.service.routes import BODY_MODELS, OPEN_ROUTERS, ROUTERS
from lookalike.app.service.state import IndexHolder, Service

VERSION = "0.1"


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with the models of the hand-described request bodies in its components."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    _, defs = models_json_schema([(m, "validation") for m in BODY_MODELS],
                                 ref_template="#/components/schemas/{model}")
    schema.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
    app.openapi_schema = schema
    return schema


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
    svc = Service.open(cfg, holder)
    token_rule = ("Every endpoint except /health and these docs needs `Authorization: Bearer TOKEN`."
                  if cfg.token else "No token is configured: every endpoint is open (the service binds to loopback).")
    # /docs and /redoc load Swagger UI and ReDoc from this server (fastapi-offline's packaged assets), not a CDN
    app = FastAPIOffline(title="lookalike", version=VERSION, description=(
        f"Perceptual image search over one index ({svc.holder.metric.name}). Distances: lower = more similar. "
        f"{token_rule} Errors are JSON `{{\"error\", \"status\"}}`; the limits of one request are in `GET /info`."))
    app.state.service = svc
    app.state.holder = svc.holder
    install_error_handlers(app)
    auth = auth_dependencies(cfg.token)
    responses = error_responses(401) if cfg.token else None
    for router in OPEN_ROUTERS:
        app.include_router(router)
    for router in ROUTERS:
        app.include_router(router, dependencies=auth, responses=responses)
    app.add_middleware(BodyLimit, max_form=2 * cfg.max_upload_bytes + FORM_OVERHEAD_BYTES)
    app.openapi = lambda: build_openapi(app)  # type: ignore[method-assign]
    return app
