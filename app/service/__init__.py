"""``lookalike serve``: a REST search service (FastAPI) over one index and the metric it was built with.

``create_app(ServeConfig(...))`` returns the FastAPI application; ``app/cli_serve.py`` runs it with uvicorn. One
model and one index per process, loaded once. Requests run in worker threads: searches only read (faiss CPU indexes
allow concurrent searches, the model only runs inference), and the open index is swapped for a freshly opened one
when a ``lookalike index`` run commits (``IndexHolder``), so readers always see the last committed state.

One module per job, the way Datasette keeps one module per view:

- ``config``: ``ServeConfig`` and the limits of one request; ``state``: the open index, loaded metrics, reports;
- ``schemas``: request and response models (strict ids, unknown fields refused; they make ``/docs``);
- ``errors``: ``ApiError`` and the one exception -> JSON mapping; ``auth``: the bearer token;
- ``body``: body size limits (JSON and multipart apart), content type, parsing, uploads;
- ``files``: the gate between a request and the file system;
- ``routes/``: one ``APIRouter`` per job; ``factory``: ``create_app``.

Security, all enforced here: a bearer token (constant-time compare) when one is configured; request bodies limited
in bytes before they are read and uploads limited in pixels before they are decoded, with the same safe loader as
indexing; a path or id from a request reaches the file system only when the catalog holds it with status ok, and
only when its real location is inside its indexed folder; every error is JSON ``{"error": ..., "status": ...}``
with its status code, never a traceback, quoting at most a short prefix of the request.
"""

from lookalike.app.service.config import ServeConfig as ServeConfig
from lookalike.app.service.factory import create_app as create_app
from lookalike.app.service.state import IndexHolder as IndexHolder
