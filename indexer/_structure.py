"""The store's policies, each written once: which search structure a build gets (the exact limit, the memory
budget, the inverted-file size and its probes), how many vectors train it, and the storage dtypes of shards.

Pure functions of numbers and factory strings: the reader (``_store``), the derived-file builder (``_derive``), the
writer's upkeep (``_upkeep``) and the config (``_config``) all ask here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import faiss

from lookalike.common.errors import InvalidArgument

#: Exact search up to this many vectors when the user names no structure (and they fit the memory budget): the
#: size at which a resident exact scan stops being faster than an inverted file at a million vectors (measured by
#: bench/scale.py; see docs/scale.md).
AUTO_EXACT_MAX = 50_000
#: Vectors drawn from the shards to train a structure: at least what it needs, else up to this many.
TRAIN_SAMPLE_MAX = 100_000
#: Largest PQ code the auto choice makes (bytes per vector): more only slows the encoding of the lists.
PQ_MAX_BYTES = 96
#: Lists compared with each list by the list-by-list dedup scan, itself included (``dedup_nprobe``).
DEDUP_NPROBE = 2
#: Storage dtypes a build may use ("fp32" / "fp16" are accepted as aliases).
STORAGE_DTYPES = ("float32", "float16")
_STORAGE_ALIASES = {"fp32": "float32", "fp16": "float16", "float32": "float32", "float16": "float16"}


def storage_dtype(name: str | None) -> str:
    """Normalise a storage dtype name ("fp32", "float16"...) to "float32" or "float16" (None: float32)."""
    key = (name or "float32").strip().lower()
    if key not in _STORAGE_ALIASES:
        raise InvalidArgument(f"unknown vector storage {name!r}; choose fp32 (default) or fp16 (half the disk and RAM)")
    return _STORAGE_ALIASES[key]


@dataclass(frozen=True)
class Structure:
    """The chosen search structure of a build: "exact" or a faiss factory string, its search parameters and why."""

    factory: str
    params: str | None
    reason: str

    @property
    def exact(self) -> bool:
        return self.factory == "exact"


def auto_nlist(n: int) -> int:
    """Inverted lists for ``n`` vectors: about sqrt(n), a power of two in [256, 65536].

    Assigning n vectors costs n x nlist dot products (a CPU does ~70 GFLOP/s per core), so sqrt(n) keeps the
    build of 10M vectors at ~4,096 lists (minutes on two cores) where 4 sqrt(n) would take an hour; queries then
    scan nprobe lists of ~sqrt(n) codes each.
    """
    nlist = 2 ** round(math.log2(math.sqrt(max(n, 1))))
    return int(min(max(nlist, 256), 65536))


def choose_structure(n: int, dim: int, *, requested: str = "auto", max_memory: int | None = None,
                     itemsize: int = 4, exact_max: int | None = None) -> Structure:
    """Pick the structure for ``n`` vectors, the way autofaiss does: from the memory budget.

    "Flat" (or "exact") is an exact scan of the shards. "auto": exact up to ``exact_max`` vectors (default
    ``AUTO_EXACT_MAX``) when they also fit ``max_memory`` (readers hold them resident); beyond, an inverted file
    with about sqrt(n) lists whose codes fit the budget: 8-bit scalar codes (1 byte per dimension; also without a
    budget), else PQ (m bytes per vector, at most 96), re-ranked with the exact vectors of the shards. Float codes
    ("IVF...,Flat") would copy the shards at 4 bytes per dimension for the recall SQ8 + re-ranking already reaches;
    they are used only when asked for. A factory string is used as given.
    """
    req = (requested or "auto").strip()
    exact_max = AUTO_EXACT_MAX if exact_max is None else exact_max
    if req in ("Flat", "exact"):
        return Structure("exact", None, "exact search was requested")
    raw = n * dim * itemsize
    if req != "auto":
        params = f"nprobe={default_nprobe(_nlist_of(req))}" if "IVF" in req else None
        return Structure(req, params, f"faiss {req!r} was requested")
    if n <= exact_max:
        if max_memory is None:
            return Structure("exact", None, f"{n} vectors <= {exact_max}: exact search")
        if raw <= max_memory:
            return Structure("exact", None, f"{n} vectors <= {exact_max} and their {raw / 2**30:.2f} GiB fit the "
                                            f"memory budget {max_memory / 2**30:.2f} GiB: exact search")
    nlist = auto_nlist(n)
    params = f"nprobe={default_nprobe(nlist)}"
    budget = max_memory
    if budget is None or n * dim <= budget:
        why = "no memory budget given" if budget is None else \
            f"8-bit codes ({n * dim / 2**30:.2f} GiB) fit the budget {budget / 2**30:.2f} GiB"
        return Structure(f"IVF{nlist},SQ8", params, f"{n} vectors: inverted file of 8-bit codes ({why}), re-ranked "
                                                    f"from the shards; lists memory-mapped")
    m = max(1, min(budget // max(n, 1), PQ_MAX_BYTES))
    cands = [c for c in range(min(m, dim), 0, -1) if dim % c == 0]
    m = cands[0] if cands else 1
    return Structure(f"IVF{nlist},PQ{m}", params, f"8-bit codes exceed the budget {budget / 2**30:.2f} GiB: "
                                                  f"PQ{m} ({m} bytes per vector), re-ranked from the shards")


def default_nprobe(nlist: int) -> int:
    """Lists probed per query of an inverted file of ``nlist`` lists: nlist / 128, at least 16 (and at most nlist),
    which keeps recall@10 above 0.95 on clustered embeddings."""
    return max(1, min(nlist, max(16, nlist // 128)))


def dedup_nprobe(nlist: int) -> int:
    """Lists each inverted list is compared with (itself included) when dedup scans list by list: near copies sit
    in the same list or the next one (planted pairs at 1 - cosine ~0.005: recall 1.000 at 2 lists from 1M to 10M,
    see docs/scale.md), and the work grows with every list added."""
    return max(1, min(nlist, DEDUP_NPROBE))


def refine_factor(factory: str) -> int:
    """Candidates fetched per result when compressed codes are re-ranked with the exact vectors of the shards:
    4 for scalar codes (SQ8 keeps the order of near neighbours), 10 for PQ (coarser), 1 otherwise."""
    if not needs_refine(factory):
        return 1
    return 10 if re.search(r",\s*(OPQ\d+[^,]*,\s*)?PQ\d", factory) else 4


def _nlist_of(factory: str) -> int:
    m = re.search(r"IVF(\d+)", factory)
    return int(m.group(1)) if m else 1024


def min_train_size(factory: str) -> int:
    """Vectors needed to train ``factory`` well (39 per centroid, as faiss's k-means asks; 0 if untrained)."""
    need = 0
    for m in re.finditer(r"IVF(\d+)", factory):
        need = max(need, 39 * int(m.group(1)))
    for m in re.finditer(r"PQ(\d+)(?:x(\d+))?", factory):
        bits = int(m.group(2) or 8)
        need = max(need, 39 * (1 << bits))
    return need


def train_sample_size(factory: str, n: int) -> int:
    """Vectors to draw from ``n`` to train ``factory``: what it needs, else up to ``TRAIN_SAMPLE_MAX``."""
    return max(min_train_size(factory), min(n, TRAIN_SAMPLE_MAX), 1)


def needs_refine(factory: str) -> bool:
    """True for compressed inverted-file codes (SQ / PQ), whose candidates are re-scored with the exact vectors."""
    return "IVF" in factory and not factory.replace(" ", "").endswith(",Flat")


def create_index(dim: int, factory: str) -> faiss.Index:
    """An empty inner-product faiss index of ``factory``; InvalidArgument for a string faiss does not understand."""
    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise InvalidArgument(f"invalid faiss factory string {factory!r}: {str(e).strip().splitlines()[-1]}; "
                              f"examples: 'Flat', 'HNSW32', 'IVF4096,Flat', 'IVF4096,PQ64'") from None


def validate_factory(dim: int, factory: str) -> None:
    """Raise InvalidArgument when ``factory`` is not a faiss factory string (or "auto" / "Flat" / "exact")."""
    if factory.strip() in ("auto", "Flat", "exact"):
        return
    create_index(dim, factory.strip())
