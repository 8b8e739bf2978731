"""What ``lookalike serve`` was started with, and what one request may ask for (the documented limits)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lookalike.app.views import UPLOAD_MAX_PIXELS

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: Multipart framing and form fields on top of the uploaded files.
FORM_OVERHEAD_BYTES = 64 * 1024
#: Largest JSON (or any non-multipart) request body.
MAX_JSON_BYTES = 64 * 1024
#: Largest ``k`` of a search.
MAX_K = 1000
#: Largest ``rerank_k``; with a re-ranker, ``k`` is limited to it too (a pairwise metric scores every candidate).
MAX_RERANK_K = 100
#: Neighbours looked at, at most, to fill ``k`` results inside a ``folder``.
MAX_FOLDER_CANDIDATES = 10_000
#: Largest ``threshold`` of ``GET /duplicates`` (1 - cosine): the pairs found grow with it, up to n^2.
MAX_DUPLICATES_THRESHOLD = 0.5
MAX_PAGE_SIZE = 500
#: Metrics with weights present that one ``POST /compare`` may run.
MAX_COMPARE_METRICS = 8
#: Verdicts one POST /labels may carry.
MAX_LABELS = 1000
#: Longest path, folder or metric name accepted in a request.
MAX_PATH_CHARS = 4096
MAX_NAME_CHARS = 200
#: Largest catalog id (SQLite INTEGER).
MAX_ID = 2**63 - 1
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
        follow_links: also serve indexed files whose real location (symbolic links resolved) is outside their
            indexed folder (for indexes built with ``follow_links``); by default such files are refused.
    """

    index_dir: Path
    metric: str | None = None
    db_url: str | None = None
    device: str | None = None
    token: str | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = UPLOAD_MAX_PIXELS
    refresh_interval_s: float = 1.0
    follow_links: bool = False

    def limits(self) -> dict[str, int | float]:
        """The limits of one request, as ``GET /info`` reports them."""
        return {"max_upload_bytes": self.max_upload_bytes, "max_pixels": self.max_pixels,
                "max_json_bytes": MAX_JSON_BYTES, "max_k": MAX_K, "max_rerank_k": MAX_RERANK_K,
                "max_folder_candidates": MAX_FOLDER_CANDIDATES, "max_duplicates_threshold": MAX_DUPLICATES_THRESHOLD,
                "max_page_size": MAX_PAGE_SIZE, "max_compare_metrics": MAX_COMPARE_METRICS,
                "max_labels": MAX_LABELS}
