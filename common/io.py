"""Small file helpers used by every room: file sha256, fsync of a folder, atomic writes, an advisory file lock.

An atomic write goes to a temporary name in the same folder, is fsynced, then moved over the target with
``os.replace`` and the folder is fsynced: a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:  # POSIX advisory locks; Windows has none (writes stay atomic, single-writer use is the caller's business)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

_logger = logging.getLogger(__name__)

CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str], *, chunk: int = CHUNK) -> str:
    """The hex sha256 of a file's bytes, read in ``chunk``-byte pieces.

    Raises:
        OSError: the file cannot be read.
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while b := fh.read(chunk):
            h.update(b)
    return h.hexdigest()


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """fsync a folder so that a rename inside it survives a power cut (best effort: a no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, ``os.replace``, fsync of the folder).

    Returns:
        ``path`` as a Path.

    Raises:
        OSError: the write failed; the previous file (if any) is intact and the temporary file is removed.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write_bytes` of ``text`` encoded with ``encoding``."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> Path:
    """:func:`atomic_write_text` of ``json.dumps(obj, indent=indent)``."""
    return atomic_write_text(path, json.dumps(obj, indent=indent))


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str], *, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive advisory lock (``flock``) on ``path`` (created if missing) for the ``with`` block.

    Args:
        path: the lock file.
        blocking: wait for the lock (True) or give up at once when another process holds it (False).

    Yields:
        True when the lock is held; False only when ``blocking`` is False and another process holds it. Where
        ``fcntl`` is missing (Windows) nothing is locked and True is yielded.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover - Windows
        yield True
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
