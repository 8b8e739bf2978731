"""Request and response models of the service: they validate what comes in and make the OpenAPI (``/docs``).

Request models refuse unknown fields (a misspelt field is an error, not a silent default). JSON bodies are strict:
an id or ``k`` is a JSON integer (``false``, ``1.0`` and ``"5"`` are refused). Multipart fields and path or query
parameters arrive as text: a number there is ASCII digits only (``1_0``, ``+1``, `` 1`` and other scripts' digits are
refused). Values that no JSON number can hold (the PSNR of identical images is +infinity) are ``null`` with the
reason in ``non_finite``.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from lookalike.app.service.config import (
    MAX_COMPARE_METRICS,
    MAX_ID,
    MAX_K,
    MAX_LABELS,
    MAX_NAME_CHARS,
    MAX_PATH_CHARS,
    MAX_RERANK_K,
)

_DIGITS = re.compile(r"[0-9]{1,19}")


def _ascii_int(value: object) -> object:
    """A whole number written with ASCII digits only (for values that arrive as text)."""
    if isinstance(value, bool):
        raise ValueError("must be a whole number, not a boolean")
    if isinstance(value, str):
        if not _DIGITS.fullmatch(value):
            raise ValueError("must be a whole number written with the digits 0-9 only")
        return int(value)
    return value


#: An integer that may arrive as text (multipart fields, path and query parameters): ASCII digits only.
TextInt = Annotated[int, BeforeValidator(_ascii_int)]
ImageId = Annotated[int, Field(ge=0, le=MAX_ID, description="catalog id of an indexed image (from /search results)")]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]
PathText = Annotated[str, Field(min_length=1, max_length=MAX_PATH_CHARS)]
_ABSOLUTE = r"^/" if os.name != "nt" else r"^[A-Za-z]:[\\/]"


def _absolute(value: str) -> str:
    if not os.path.isabs(value):
        raise ValueError("must be an absolute path (an indexed folder or a folder inside one)")
    return value


Folder = Annotated[str, Field(max_length=MAX_PATH_CHARS, pattern=_ABSOLUTE), AfterValidator(_absolute)]
# A multipart form cannot send null: its optional fields are plain strings that may be left out.
FormName = Annotated[Name | None, WithJsonSchema({"type": "string", "minLength": 1, "maxLength": MAX_NAME_CHARS})]
FormFolder = Annotated[Folder | None, WithJsonSchema({"type": "string", "maxLength": MAX_PATH_CHARS,
                                                      "pattern": _ABSOLUTE})]

_JSON = ConfigDict(extra="forbid", strict=True)
_FORM = ConfigDict(extra="forbid")


# --- requests ----------------------------------------------------------------------------------------------------


class SearchJson(BaseModel):
    """Search by an indexed image: give ``id`` (from a search result) or ``path`` (absolute or relative to its
    indexed folder), not both."""

    model_config = _JSON

    id: ImageId | None = None
    path: PathText | None = Field(None, description="path of an indexed image (absolute, or relative to its root)")
    k: int = Field(10, ge=1, le=MAX_K, description=f"how many results (at most {MAX_K}; {MAX_RERANK_K} with rerank)")
    metric: Name | None = Field(None, description="must be the served metric (default: it)")
    rerank: Name | None = Field(None, description="pairwise metric to re-rank the candidates with (see /info)")
    rerank_k: int = Field(50, ge=1, le=MAX_RERANK_K, description="candidates the re-ranker scores")
    folder: Folder | None = Field(None, description="keep results inside this indexed folder (absolute path)")


class SearchForm(BaseModel):
    """Search by an uploaded image (multipart/form-data)."""

    model_config = _FORM

    image: bytes = Field(..., json_schema_extra={"format": "binary"}, description="the image file")
    k: TextInt = Field(10, ge=1, le=MAX_K)
    metric: FormName = None
    rerank: FormName = None
    rerank_k: TextInt = Field(50, ge=1, le=MAX_RERANK_K)
    folder: FormFolder = None


class CompareJsonSide(BaseModel):
    """One indexed image: ``id`` or ``path``, not both."""

    model_config = _JSON

    id: ImageId | None = None
    path: PathText | None = None


class CompareJson(BaseModel):
    """Compare two indexed images."""

    model_config = _JSON

    a: CompareJsonSide
    b: CompareJsonSide
    metrics: list[Name] | None = Field(
        None, min_length=1, max_length=4 * MAX_COMPARE_METRICS,
        description=f"metric names; default the served metric; ['all'] for every metric (at most "
                    f"{MAX_COMPARE_METRICS} with weights present per request)")


class LabelPairIn(BaseModel):
    """A verdict on two indexed images (each by id or path), as ``lookalike label`` records it."""

    model_config = _JSON

    a: CompareJsonSide
    b: CompareJsonSide
    same: bool = Field(description="true: the same picture (always grouped); false: different (never reported)")


class LabelsIn(BaseModel):
    """Verdicts to record; each is keyed by the images' content, so it survives moves and renames."""

    model_config = _JSON

    labels: list[LabelPairIn] = Field(min_length=1, max_length=MAX_LABELS)


class CompareForm(BaseModel):
    """Compare two uploaded images (multipart/form-data); ``metrics`` repeated or comma-separated."""

    model_config = _FORM

    a: bytes = Field(..., json_schema_extra={"format": "binary"})
    b: bytes = Field(..., json_schema_extra={"format": "binary"})
    metrics: list[Name] = Field(default_factory=list, max_length=4 * MAX_COMPARE_METRICS,
                                description="metric names, one field each or comma-separated (see CompareJson)")


# --- responses ---------------------------------------------------------------------------------------------------


class HitOut(BaseModel):
    id: int
    path: str
    relpath: str
    root: str
    distance: float = Field(description="1 - cosine under the served metric, lower = more similar; with a "
                                        "re-ranker the order is the re-ranker's")
    width: int | None
    height: int | None


class QueryOut(BaseModel):
    """What was searched for: an upload (its name and size) or an indexed image (its id and path)."""

    upload: str | None = None
    bytes: int | None = None
    id: int | None = None
    path: str | None = None


class SearchOut(BaseModel):
    metric: str
    fingerprint: str
    query: QueryOut
    k: int
    rerank: str | None
    folder: str | None
    hits: list[HitOut]
    took_ms: float


class CompareRowOut(BaseModel):
    """One metric's value for the pair (the row of ``lookalike compare --json``)."""

    metric: str
    value: float | None = Field(description="the distance or similarity in ``unit``; null when the metric did not "
                                            "run (see status) or the value is not a finite number (see non_finite)")
    non_finite: Literal["inf", "-inf", "nan"] | None = Field(
        None, description="set when the value is not finite: the PSNR of identical images is 'inf'")
    unit: str
    direction: str
    kind: str
    family: str
    status: str = Field(description="'ok', 'unavailable' (weights not present) or 'error'")
    reason: str


class CompareOut(BaseModel):
    a: str
    b: str
    rows: list[CompareRowOut]


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
    label: Literal["same", "different"] | None = Field(None, description="what a person said of the pair, if anything")


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
    threshold_source: str = Field("", description="where the threshold comes from (request, stored, tier default)")
    tiers: dict[str, Any] = Field(default_factory=dict, description="the near boundary and where it comes from")
    tier_counts: dict[str, int] = Field(default_factory=dict, description="reported pairs per tier")
    hidden_total: int = Field(0, description="pairs left out because a person labelled them different")
    between: list[str] | None = Field(None, description="the two folders (A, B) when the request gave them")
    matches: list[PairOut] = Field(default_factory=list,
                                   description="with between: the nearest image under B of each image under A")


class LabelsOut(BaseModel):
    added: int
    changed: int
    unchanged: int


class InfoOut(BaseModel):
    index_dir: str
    metric: str
    fingerprint: str
    dim: int
    vectors: int
    images: dict[str, int] = Field(description="catalogued files by status")
    roots: dict[str, int] = Field(description="indexed folders and their file counts")
    dedup_threshold: float | None
    rerankers: list[str]
    generation: int = Field(description="how many times the index was re-opened after an index run committed")
    limits: dict[str, int | float] = Field(description="what one request may ask for")
    token_required: bool


class HealthOut(BaseModel):
    status: Literal["ok"]


class ErrorOut(BaseModel):
    """Every error: what went wrong, the status again, and how to fix it when the library says."""

    error: str
    status: int
    hint: str | None = None


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorOut(ErrorOut):
    """A 422: the fields that were wrong."""

    detail: list[ValidationIssue]

