"""``GET /health`` (liveness, never behind the token) and ``GET /info`` (what this service serves, its limits)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from lookalike.app.queries import list_rerank_choices
from lookalike.app.service.errors import error_responses, library_call
from lookalike.app.service.schemas import HealthOut, InfoOut
from lookalike.app.service.state import Service, get_service
from lookalike.indexer import index_info

#: Routes outside the token (the factory includes this router without the auth dependency).
open_router = APIRouter()
router = APIRouter()


@open_router.get("/health", response_model=HealthOut, summary="liveness (no token needed)")
def health() -> HealthOut:
    return HealthOut(status="ok")


@router.get("/info", response_model=InfoOut, responses=error_responses(400),
            summary="what this service serves, and what one request may ask for")
def info(svc: Service = Depends(get_service)) -> InfoOut:  # noqa: B008
    index = svc.holder.get()
    cfg = svc.cfg
    facts = library_call(lambda: index_info(cfg.index_dir, db_url=cfg.db_url, max_failed=0))
    return InfoOut(
        index_dir=str(cfg.index_dir), metric=index.info.metric, fingerprint=index.fingerprint, dim=index.info.dim,
        vectors=index.vectors.ntotal, images=facts["images"], roots=facts["roots"],
        dedup_threshold=index.info.dedup_threshold, rerankers=list_rerank_choices(), generation=svc.holder.generation,
        limits=cfg.limits(), token_required=cfg.token is not None)
