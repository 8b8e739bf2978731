"""The precision of an index's vectors: recorded per build, shown by ``info``, and a warning when a run mixes them.

Choice: a build's identity is its metric fingerprint (the weights), not its dtype. bf16 and fp32 embeddings of the
same image under the same weights are close (DreamSim: cosine ~0.9999; efficientnet_lite0, which ``auto`` keeps in
fp32 for that reason: >= 0.998, largest distance change ~0.01; ``bench/precision.py`` measures recall@10 of a bf16
index against the fp32 one and the largest distance change), so vectors of both precisions can share one FAISS
file. Splitting builds by dtype would re-embed a whole collection
(and double the index) just because it is updated on another machine; refusing would block that update. Instead
every run records the dtype it embedded with, and a run that adds vectors of another precision than the build
already holds says so (a warning in the log and in the run summary), and ``info`` lists the mix.
"""

from __future__ import annotations

import logging

from sqlalchemy import inspect, select, update
from sqlalchemy.orm import Session

from lookalike.indexer._catalog import BuildDtypeRow, BuildRow, Catalog, utcnow

_logger = logging.getLogger(__name__)

UNRECORDED = "unrecorded"  # vectors written before lookalike recorded the dtype (builds of milestone 1: fp32)


def build_dtypes(catalog: Catalog, fingerprint: str) -> dict[str, int]:
    """{dtype: vectors embedded in it} of one build; empty for a catalog written before dtypes were recorded."""
    if not inspect(catalog.engine).has_table(BuildDtypeRow.__tablename__):
        return {}
    with catalog.session() as s:
        rows = s.execute(select(BuildDtypeRow.dtype, BuildDtypeRow.embedded)
                         .where(BuildDtypeRow.fingerprint == fingerprint).order_by(BuildDtypeRow.first)).all()
    return {d: int(n) for d, n in rows}


def declare_dtype(catalog: Catalog, build: BuildRow, dtype: str) -> str | None:
    """Record, before embedding, that ``dtype`` is about to add vectors to ``build``.

    Recording first keeps the record conservative: a run killed before it ends has still declared its precision.

    Returns:
        A warning text when the build already holds vectors of another precision, else None.
    """
    with catalog.session() as s, s.begin():
        have = dict(s.execute(select(BuildDtypeRow.dtype, BuildDtypeRow.embedded)
                              .where(BuildDtypeRow.fingerprint == build.fingerprint)).all())
        count = s.scalar(select(BuildRow.count).where(BuildRow.fingerprint == build.fingerprint)) or 0
        if not have and count:
            s.add(BuildDtypeRow(fingerprint=build.fingerprint, dtype=UNRECORDED, embedded=int(count)))
            have[UNRECORDED] = int(count)
        if dtype not in have:
            s.add(BuildDtypeRow(fingerprint=build.fingerprint, dtype=dtype, embedded=0))
    others = {d: n for d, n in have.items() if d != dtype and n}
    if not others:
        return None
    held = ", ".join(f"{n} {d}" for d, n in others.items())
    main = max(others, key=lambda d: others[d])
    keep = "fp32" if main == UNRECORDED else main  # milestone-1 indexes were fp32 unless told
    msg = (f"the index holds {held} vectors of {build.metric!r}; this run adds {dtype} vectors to the same build "
           f"(bf16 and fp32 embeddings of one photo differ by a distance of ~0.01 at most, so search and dedup "
           f"barely change; index with dtype {keep} to keep one precision)")
    _logger.warning(msg)
    return msg


def metric_dtype(metric: object) -> str:
    """The name of the dtype a loaded Metric computes in ("fp32", "bf16", "fp16")."""
    from lookalike.metric import dtype_name  # the metric is loaded already: no import cost

    return dtype_name(metric.dtype)  # type: ignore[attr-defined]


def count_dtype(session: Session, fingerprint: str, dtype: str, embedded: int) -> None:
    """Add ``embedded`` vectors to the count of ``dtype`` in a build, inside the checkpoint's transaction (so the
    count commits with the vector rows it counts)."""
    if embedded > 0:
        session.execute(update(BuildDtypeRow)
                        .where(BuildDtypeRow.fingerprint == fingerprint, BuildDtypeRow.dtype == dtype)
                        .values(embedded=BuildDtypeRow.embedded + embedded, updated=utcnow()))


def format_dtypes(dtypes: dict[str, int]) -> str:
    """``{"bf16": 300, "fp32": 12}`` → "bf16 (300) + fp32 (12), mixed"; one precision → "bf16"."""
    used = {d: n for d, n in dtypes.items() if n}
    if not used:
        return "-"
    if len(used) == 1:
        return next(iter(used))
    return " + ".join(f"{d} ({n})" for d, n in used.items()) + ", mixed"


def recorded_dtype(dtypes: dict[str, int]) -> str | None:
    """The precision most of a build's vectors were computed in ("unrecorded" counts as fp32); None when none are."""
    used: dict[str, int] = {}
    for d, n in dtypes.items():
        if n:
            key = "fp32" if d == UNRECORDED else d
            used[key] = used.get(key, 0) + n
    return max(used, key=lambda d: used[d]) if used else None


def runs_natively(dtype: str, device: object) -> bool:
    """True when ``device`` computes in ``dtype`` at full speed: fp32 anywhere, bf16 where ``has_native_bf16`` says
    so (CUDA >= 8.0, CPUs with AMX / AVX-512 BF16), fp16 on CUDA."""
    import torch

    from lookalike.metric import has_native_bf16

    dev = torch.device(device)  # type: ignore[arg-type]
    if dtype == "bf16":
        return has_native_bf16(dev)
    if dtype == "fp16":
        return dev.type == "cuda"
    return True


def dtype_for_build(recorded: str | None, requested: str | None, device: object, metric: str
                    ) -> tuple[str | None, str | None]:
    """The precision to embed new vectors of an existing build in, and a note for the run summary (or None).

    An explicit ``requested`` dtype is kept (a run that mixes precisions is then reported by ``declare_dtype``).
    ``"auto"`` keeps the precision the build recorded, so that an update or a repair adds vectors like the ones it
    holds and an image query is embedded like them; where ``device`` does not run that precision natively (bf16
    recorded, CPU without AMX / AVX-512 BF16), emulating it would be many times slower, so fp32 is used and the note
    says so. A build with nothing recorded gets ``"auto"`` (``resolve_dtype``).
    """
    if requested is None or str(requested).strip().lower() != "auto" or recorded is None:
        return requested, None
    if runs_natively(recorded, device):
        return recorded, None
    note = (f"the index's {metric} vectors are {recorded}, which {device} does not run natively (emulated {recorded} "
            f"is many times slower): new embeddings are computed in fp32 (distances differ by ~0.01 at most); to "
            f"keep one precision, use dtype {recorded} on this machine (slow) or a machine that runs it natively")
    return "fp32", note
