"""The bearer token: compared in constant time; added to the routes (and the OpenAPI) only when one is configured."""

from __future__ import annotations

import hmac

from fastapi import Depends, Request
from fastapi.params import Depends as DependsParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from lookalike.app.service.errors import ApiError

BEARER = HTTPBearer(auto_error=False, description="the token given to 'lookalike serve' (LOOKALIKE_SERVE_TOKEN)")


def require_token(request: Request,
                  creds: HTTPAuthorizationCredentials | None = Depends(BEARER)) -> None:  # noqa: B008
    """401 unless the request carries ``Authorization: Bearer <the service's token>``."""
    token = request.app.state.service.cfg.token
    if token is None:
        return
    given = creds.credentials if creds is not None else ""
    if not given or not hmac.compare_digest(given.encode(), token.encode()):
        raise ApiError(401, "missing or wrong bearer token (send 'Authorization: Bearer TOKEN')",
                       {"WWW-Authenticate": "Bearer"})


def auth_dependencies(token: str | None) -> list[DependsParam]:
    """The dependencies of the routes behind the token: none without one (and no security in the OpenAPI)."""
    return [] if token is None else [Depends(require_token)]
