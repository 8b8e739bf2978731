"""The routes of the service, one module per job (search, compare, images, duplicates, labels, info/health).

Each module holds an ``APIRouter`` named ``router`` whose routes take the service state through
``Depends(get_service)``. Adding an endpoint is one new module plus one line in ``ROUTERS``; a route whose request
body is described in ``openapi_extra`` lists its models in the module's ``BODY_MODELS`` so the factory puts them in
the OpenAPI components.
"""

from __future__ import annotations

from lookalike.app.service.routes import compare, duplicates, images, info, labels, search

#: Routers behind the token (when one is configured), in the order of the docs.
ROUTERS = (search.router, compare.router, duplicates.router, labels.router, images.router, info.router)
#: Routers that stay open: liveness.
OPEN_ROUTERS = (info.open_router,)
#: Models referenced from ``openapi_extra`` request bodies.
BODY_MODELS = (*search.BODY_MODELS, *compare.BODY_MODELS, *labels.BODY_MODELS)
