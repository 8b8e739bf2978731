"""One URL to one file: resumable (HTTP ``Range``), size- and sha256-checked, written atomically.

Bytes stream into ``<dst>.part``; a ``.part`` left by a cut connection is resumed. The finished file is verified,
fsynced and moved to its final name with ``os.replace``, so a file at its final name is always complete.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from lookalike.common.errors import ChecksumError
from lookalike.common.io import fsync_dir, sha256_file

_logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0
_CHUNK = 1 << 20
_USER_AGENT = "lookalike (+urllib)"

# What a failed transfer raises: refused / reset / timed out / HTTP status errors / truncated responses.
NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    urllib.error.URLError,
    ConnectionError,
    TimeoutError,
    http.client.HTTPException,
    ssl.SSLError,
)


def describe_network_error(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason} for {e.url}"
    if isinstance(e, urllib.error.URLError):
        return f"{e.reason}"
    return f"{type(e).__name__}: {e}"


def _part_path(dst: Path) -> Path:
    return dst.with_name(dst.name + ".part")


_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``"bytes 100-199/1000"`` → (100, 1000); ``"bytes */1000"`` → (None, 1000); unparsable → (None, None)."""
    m = _CONTENT_RANGE.match(value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(3)) if m.group(3) != "*" else None
    return start, total


def _show_progress(progress: bool) -> bool:
    return bool(progress) and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


def download_url(
    url: str,
    dst: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    size: int | None = None,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Download ``url`` to ``dst`` through ``dst.part``, resuming a partial ``.part`` from an earlier try.

    The ``.part`` is resumed with ``Range: bytes=N-``: a 206 reply is appended, a 200 (the server ignored the
    range) restarts from byte 0, and a 416 means the ``.part`` is already whole. A connection cut mid-way leaves
    the ``.part`` for the next call. The finished file is checked against ``size`` and ``sha256`` (when given),
    fsynced and moved to ``dst`` with ``os.replace``, so ``dst`` never exists half-written. Not safe to call
    concurrently for the same ``dst`` (the cache functions hold a lock around it).

    Args:
        url: http(s) (or file) URL.
        dst: final path; its folder is created.
        sha256: expected hex digest, or None to skip the check.
        size: expected size in bytes, or None.
        progress: tqdm bar on stderr; shown only when stderr is a terminal.
        timeout: socket timeout in seconds.

    Returns:
        ``dst`` as a Path.

    Raises:
        ChecksumError: wrong size or sha256 (the ``.part`` is deleted).
        urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException: the transfer failed;
            the bytes received so far stay in the ``.part``.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    part = _part_path(dst)
    offset = part.stat().st_size if part.is_file() else 0
    if size is not None and offset > size:
        _logger.warning("%s is larger than the expected %d bytes; starting over", part, size)
        part.unlink()
        offset = 0
    if size is not None and offset == size and offset > 0:
        _logger.info("%s already holds all %d bytes; verifying", part, size)
    else:
        _transfer(url, part, offset, size=size, progress=progress, timeout=timeout, name=dst.name)
    actual_size = part.stat().st_size
    if size is not None and actual_size != size:
        part.unlink(missing_ok=True)
        raise ChecksumError(url, f"{size} bytes", f"{actual_size} bytes", what="size")
    if sha256:
        digest = sha256_file(part)
        if digest != sha256.lower():
            part.unlink(missing_ok=True)
            raise ChecksumError(url, sha256.lower(), digest)
    os.replace(part, dst)
    fsync_dir(dst.parent)
    _logger.info("downloaded %s -> %s (%d bytes)", url, dst, actual_size)
    return dst


def _transfer(url: str, part: Path, offset: int, *, size: int | None, progress: bool, timeout: float,
              name: str) -> None:
    """One HTTP request: append to (206) or rewrite (200) ``part``. Raises on a short or failed transfer."""
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    req = urllib.request.Request(url, headers=headers)
    _logger.info("downloading %s%s", url, f" (resuming at byte {offset})" if offset else "")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            _, total = _parse_content_range(e.headers.get("Content-Range") if e.headers else None)
            e.close()
            if total is not None and total != offset:
                _logger.warning("%s has %d bytes but the server has %d; starting over", part, offset, total)
                part.unlink(missing_ok=True)
                _transfer(url, part, 0, size=size, progress=progress, timeout=timeout, name=name)
            else:
                _logger.info("server answered 416 to the range request: %s is complete", part)
            return
        raise
    with resp:
        status = getattr(resp, "status", None) or 200  # file:// replies carry no status
        length = resp.headers.get("Content-Length")
        if status == 206 and offset:
            start, total = _parse_content_range(resp.headers.get("Content-Range"))
            if start != offset:
                _logger.warning("server answered a range at %s instead of %d; starting over", start, offset)
                part.unlink(missing_ok=True)
                resp.close()
                _transfer(url, part, 0, size=size, progress=progress, timeout=timeout, name=name)
                return
            if total is None and length is not None:
                total = offset + int(length)
            mode = "ab"
        else:
            if offset:
                _logger.info("server ignored the range request (HTTP %s); restarting from byte 0", status)
            offset = 0
            total = int(length) if length is not None else None
            mode = "wb"
        if size is not None and total is not None and total != size:
            part.unlink(missing_ok=True)
            raise ChecksumError(url, f"{size} bytes", f"{total} bytes (server)", what="size")
        written = 0
        with open(part, mode) as fh, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                          unit_divisor=1024, desc=name, file=sys.stderr,
                                          disable=not _show_progress(progress), leave=False) as bar:
            while True:
                chunk = resp.read(_CHUNK)
                if not chunk:
                    break
                fh.write(chunk)
                written += len(chunk)
                bar.update(len(chunk))
            fh.flush()
            os.fsync(fh.fileno())
    if total is not None and offset + written != total:
        raise ConnectionError(
            f"download of {url} stopped at byte {offset + written} of {total}; "
            f"{part} is kept and the next try resumes it"
        )
