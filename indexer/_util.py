"""Small helpers of the store: memory sizes as users write them, silencing faiss's C-level prints, and faiss's
OpenMP threads for one call."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator

from lookalike.common.errors import InvalidArgument

_MEM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)


def parse_memory(text: str | int | None) -> int | None:
    """"4G", "512M", "1.5GiB", 10**9 → bytes (None stays None)."""
    if text is None or isinstance(text, int):
        return text
    m = _MEM.match(str(text))
    if not m:
        raise InvalidArgument(f"memory budget {text!r} not understood; write e.g. 4G, 512M or 2.5GB")
    mult = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    return int(float(m.group(1)) * mult)


def libc_flush() -> None:
    """Flush C stdio buffers (what faiss printed) before file descriptor 1 is switched."""
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Silence faiss's C-level prints to stdout ("resizing ...") during on-disk list operations."""
    fd = 1  # faiss prints with C stdio to file descriptor 1, whatever Python's sys.stdout is
    with contextlib.suppress(AttributeError, ValueError, OSError):
        sys.stdout.flush()
    libc_flush()
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        libc_flush()
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def faiss_threads(n: int | None) -> Iterator[None]:
    """Run faiss with ``n`` OpenMP threads in this thread for the block (None: unchanged).

    A flat scan for one query split over threads waits at OpenMP barriers: on a busy machine that costs 3-8x its
    own time; one thread answers in a few milliseconds (``docs/scale.md``).
    """
    import faiss

    if n is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def mapped_file_bytes() -> int:
    """Resident bytes of this process backed by files (memory-mapped shards and lists), from ``/proc/self/statm``
    (its "shared" field); 0 where there is no such file."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[2]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def unmap_pages(address: int, length: int) -> None:
    """``madvise(MADV_DONTNEED)`` on a read-only file mapping made in C (faiss's on-disk lists): its pages leave this
    process's resident set and stay in the page cache. A no-op where libc or the call is not available."""
    import ctypes
    import mmap

    advice = getattr(mmap, "MADV_DONTNEED", None)
    if not address or length <= 0 or advice is None:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise(ctypes.c_void_p(address), ctypes.c_size_t(length), ctypes.c_int(advice))
    except (OSError, AttributeError):
        pass
