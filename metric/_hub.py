"""Weight files: explicit folder > ``$LOOKALIKE_HOME`` cache > download from the official URL.

The resolution order is fixed, and this is the one place that implements it:

1. ``weights=``: an explicit folder; a file is looked up at ``<weights>/<path>``.
2. The user cache: ``$LOOKALIKE_HOME/<cache_subdir>/<path>`` (``$LOOKALIKE_HOME`` defaults to
   ``~/.cache/lookalike``; never the working directory).
3. A download from the file's official URL into that cache, unless downloads are off: ``LOOKALIKE_OFFLINE=1`` or
   ``HF_HUB_OFFLINE=1`` in the environment, or ``download=False``. ``download=True`` (what
   ``lookalike weights download`` uses) downloads even when those variables are set.

Files that ship inside a release zip (``WeightFile.archive_url``) come from one download of that zip per call:
every member needed is extracted, and the zip is deleted afterwards.

Downloads stream into ``<dst>.part``. A ``.part`` left by a cut connection is resumed with an HTTP ``Range``
request. Size and sha256 are checked where known, and the file lands with ``os.replace``, so a file at its final
name is always complete. Offline, or when the network fails, :class:`WeightsNotFound` lists the files, their URLs,
the folders searched and the command that fetches them.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from lookalike.common.errors import ChecksumError, WeightsNotFound
from lookalike.common.io import file_lock, fsync_dir, sha256_file
from lookalike.metric._pretrained import WeightFile

_logger = logging.getLogger(__name__)

OFFLINE_ENV_VARS = ("LOOKALIKE_OFFLINE", "HF_HUB_OFFLINE")
DEFAULT_TIMEOUT = 60.0
_CHUNK = 1 << 20
_TRUE = {"1", "true", "yes", "on"}
_USER_AGENT = "lookalike (+urllib)"

# What a failed transfer raises: refused / reset / timed out / HTTP status errors / truncated responses.
NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    urllib.error.URLError,
    ConnectionError,
    TimeoutError,
    http.client.HTTPException,
    ssl.SSLError,
)


def get_cache_dir() -> Path:
    """The user cache: ``$LOOKALIKE_HOME`` or ``~/.cache/lookalike`` (never the working directory)."""
    env = os.environ.get("LOOKALIKE_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lookalike"


def is_offline() -> bool:
    """True when ``LOOKALIKE_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to 1/true/yes/on."""
    return _offline_var() is not None


def _offline_var() -> str | None:
    for var in OFFLINE_ENV_VARS:
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return var
    return None


def _check_relative(path: str) -> PurePosixPath:
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise ValueError(f"weight file path {path!r} must be relative, without '..' (fix the metric config)")
    return p


def get_cache_path(wf: WeightFile) -> Path:
    """Where ``wf`` lives in the user cache: ``<cache>/<cache_subdir>/<path>`` (whether or not it exists)."""
    return get_cache_dir() / wf.cache_subdir / Path(*_check_relative(wf.path).parts)


def _explicit_root(weights: str | os.PathLike[str] | None, metric: str | None = None) -> Path | None:
    if weights is None:
        return None
    w = Path(weights).expanduser()
    if not w.is_dir():
        raise FileNotFoundError(f"weights folder {w} does not exist" + (f" (metric {metric!r})" if metric else ""))
    return w.resolve()


def find_weight_file(wf: WeightFile, weights: str | os.PathLike[str] | None = None) -> Path | None:
    """Look ``wf`` up without downloading: in ``weights`` (a folder) first, then in the user cache.

    Args:
        wf: the file to find.
        weights: an explicit folder searched before the cache, or None.

    Returns:
        The path of the file, or None when it is in neither place.

    Raises:
        FileNotFoundError: ``weights`` is given but is not a folder.
    """
    root = _explicit_root(weights)
    rel = Path(*_check_relative(wf.path).parts)
    cands = ([root / rel] if root is not None else []) + [get_cache_path(wf)]
    found = next((c for c in cands if c.is_file()), None)
    return found if found is not None else find_package_file(wf)


def find_package_file(wf: WeightFile) -> Path | None:
    """The file ``wf.package`` ("module:relative/path") names inside an installed package, if present."""
    if not wf.package:
        return None
    module, _, rel = wf.package.partition(":")
    try:
        from importlib import resources

        path = Path(str(resources.files(module).joinpath(rel)))
    except (ImportError, TypeError, ValueError):
        return None
    return path if path.is_file() else None


def _searched(root: Path | None, files: Sequence[WeightFile]) -> list[Path]:
    out = [root] if root is not None else []
    for wf in files:
        c = get_cache_dir() / wf.cache_subdir
        if c not in out:
            out.append(c)
    return out


def resolve_files(
    metric: str,
    files: Sequence[WeightFile],
    weights: str | os.PathLike[str] | None = None,
    *,
    download: bool | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Find every file of ``files``: explicit ``weights`` folder > user cache > download into the cache.

    Args:
        metric: the metric name (for messages).
        files: the files it needs (``required_files(cfg)``).
        weights: an explicit folder searched first, or None.
        download: None downloads what is missing unless ``LOOKALIKE_OFFLINE``/``HF_HUB_OFFLINE`` is set;
            False never downloads; True downloads even when those variables are set.
        progress: show a tqdm bar on stderr while downloading (only when stderr is a terminal).

    Returns:
        ``{wf.path: absolute Path}`` for every file, in the order of ``files``.

    Raises:
        WeightsNotFound: a file is missing and downloads are off, it has no URL, or the network failed.
        ChecksumError: a downloaded file has the wrong size or sha256.
        FileNotFoundError: ``weights`` is given but is not a folder.
    """
    root = _explicit_root(weights, metric)
    found: dict[str, Path] = {}
    missing: list[WeightFile] = []
    for wf in files:
        p = find_weight_file(wf, root)
        if p is None:
            missing.append(wf)
        else:
            found[wf.path] = p
    if not missing:
        return found
    searched = _searched(root, files)
    if download is False:
        raise WeightsNotFound(metric, missing, searched, reason="downloads disabled (download=False)")
    var = _offline_var()
    if download is None and var is not None:
        raise WeightsNotFound(metric, missing, searched, reason=f"offline: {var}={os.environ[var]} is set")
    fetched, failure = fetch_files([wf for wf in missing if wf.source], progress=progress)
    found.update(fetched)
    still = [wf for wf in missing if wf.path not in found]
    if still:
        reason = failure or ("no public URL" if not any(wf.source for wf in still) else "download failed")
        raise WeightsNotFound(metric, still, searched, reason=reason)
    return {wf.path: found[wf.path] for wf in files}


def fetch_files(
    files: Sequence[WeightFile], *, progress: bool = True, timeout: float = DEFAULT_TIMEOUT
) -> tuple[dict[str, Path], str]:
    """Download ``files`` into the user cache (one download per zip); skip those already cached.

    Stops at the first network failure; the files fetched so far stay in the cache.

    Args:
        files: files with a ``url`` or an ``archive_url``.
        progress: show tqdm bars on stderr (only when stderr is a terminal).
        timeout: socket timeout in seconds.

    Returns:
        ``({wf.path: Path} of the files now in the cache, reason of the failure or "")``.

    Raises:
        ChecksumError: a file has the wrong size or sha256.
    """
    done: dict[str, Path] = {}
    notes: list[str] = []
    direct = [wf for wf in files if not wf.archive_url and wf.url]
    archives: dict[tuple[str, str], list[WeightFile]] = {}
    for wf in files:
        if wf.archive_url:
            archives.setdefault((wf.archive_url, wf.cache_subdir), []).append(wf)
    try:
        for wf in direct:
            dst = get_cache_path(wf)
            with _cache_lock(get_cache_dir() / wf.cache_subdir):
                if not dst.is_file():  # another process may have fetched it while we waited
                    assert wf.url is not None
                    download_url(wf.url, dst, sha256=wf.sha256, size=wf.size, progress=progress, timeout=timeout)
            done[wf.path] = dst
        for (url, subdir), wfs in archives.items():
            with _cache_lock(get_cache_dir() / subdir):
                todo = [wf for wf in wfs if not get_cache_path(wf).is_file()]
                if todo:
                    absent = _fetch_archive(url, get_cache_dir() / subdir, todo, progress=progress, timeout=timeout)
                    if absent:
                        notes.append(f"{', '.join(absent)} not found in {url}")
            done.update({wf.path: get_cache_path(wf) for wf in wfs if get_cache_path(wf).is_file()})
    except NETWORK_ERRORS as e:
        _logger.info("download failed: %s", e)
        return done, f"download failed: {_describe(e)}"
    return done, "; ".join(notes)


def _describe(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason} for {e.url}"
    if isinstance(e, urllib.error.URLError):
        return f"{e.reason}"
    return f"{type(e).__name__}: {e}"


@contextlib.contextmanager
def _cache_lock(folder: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``folder/.lock``: one process at a time writes a cache folder."""
    with file_lock(folder / ".lock"):
        yield


# ---------------------------------------------------------------------------------------------------------------
# Single-URL download: resumable, verified, atomic.


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


# ---------------------------------------------------------------------------------------------------------------
# Release zips: one download, extract what is needed, delete the zip.


def _archive_download_path(root: Path, url: str) -> Path:
    base = PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name or "archive.zip"
    tag = hashlib.sha256(url.encode()).hexdigest()[:10]  # a changed URL never resumes a stale .part
    return root / ".downloads" / f"{tag}-{base}"


def _find_member(names: Sequence[str], member: str) -> str | None:
    """Exact member name, else the single member ending in ``/member`` (zips with a leading folder)."""
    if member in names:
        return member
    hits = [n for n in names if n.endswith("/" + member)]
    return hits[0] if len(hits) == 1 else None


def _registered_siblings(url: str, subdir: str, have: Sequence[WeightFile]) -> list[WeightFile]:
    """Other registered files from the same zip, so that a later metric does not download it again."""
    from lookalike.metric._builders import required_files
    from lookalike.metric._registry import get_metric_cfg, list_metrics

    seen = {wf.path for wf in have}
    out: list[WeightFile] = []
    for name in list_metrics():
        try:
            files = required_files(get_metric_cfg(name))
        except (KeyError, ValueError) as e:  # a user-registered metric with a bad backbone is not our concern here
            _logger.debug("skipping metric %r while looking for files in %s: %s", name, url, e)
            continue
        for wf in files:
            if wf.archive_url == url and wf.cache_subdir == subdir and wf.path not in seen:
                seen.add(wf.path)
                if not get_cache_path(wf).is_file():
                    out.append(wf)
    return out


def _fetch_archive(url: str, root: Path, wfs: Sequence[WeightFile], *, progress: bool,
                   timeout: float) -> list[str]:
    """Download the zip at ``url`` once, extract ``wfs`` (and registered siblings), delete it; return absent members."""
    zip_path = _archive_download_path(root, url)
    if not zip_path.is_file():  # a whole zip from an earlier run that stopped while extracting is reused
        download_url(url, zip_path, progress=progress, timeout=timeout)
    try:
        extras = _registered_siblings(url, root.name, wfs)
        return _extract(url, zip_path, list(wfs), extras)
    except zipfile.BadZipFile as e:
        raise ChecksumError(url, "a valid zip archive", f"{e}", what="archive") from None
    finally:
        zip_path.unlink(missing_ok=True)
        _logger.debug("deleted %s", zip_path)


def _extract(url: str, zip_path: Path, wfs: list[WeightFile], extras: list[WeightFile]) -> list[str]:
    """Stream the members of ``wfs`` (required) and ``extras`` (best effort) into the cache, verified, atomically.

    Every member goes to a temporary name first; all are renamed into place once all are verified.
    Returns the members of ``wfs`` that the zip lacks.
    """
    tmps: list[tuple[Path, Path]] = []
    absent: list[str] = []
    try:
        with zipfile.ZipFile(zip_path) as zf:
            names = zf.namelist()
            for wf in [*wfs, *extras]:
                required = wf in wfs
                member = _find_member(names, wf.member or wf.path)
                if member is None:
                    if required:
                        _logger.warning("%s has no member %r", url, wf.member or wf.path)
                        absent.append(wf.member or wf.path)
                    continue
                dst = get_cache_path(wf)
                dst.parent.mkdir(parents=True, exist_ok=True)
                tmp = dst.with_name(dst.name + ".extracting")
                h = hashlib.sha256()
                n = 0
                with zf.open(member) as src, open(tmp, "wb") as out:
                    for chunk in iter(lambda: src.read(_CHUNK), b""):  # noqa: B023 (src is this iteration's)
                        out.write(chunk)
                        h.update(chunk)
                        n += len(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                where = f"{url} (member {member})"
                err = None
                if wf.size is not None and n != wf.size:
                    err = ChecksumError(where, f"{wf.size} bytes", f"{n} bytes", what="size")
                elif wf.sha256 and h.hexdigest() != wf.sha256.lower():
                    err = ChecksumError(where, wf.sha256.lower(), h.hexdigest())
                if err is not None:
                    tmp.unlink(missing_ok=True)
                    if required:
                        raise err
                    _logger.warning("skipping %s: %s", wf.path, err)
                    continue
                tmps.append((tmp, dst))
        for tmp, dst in tmps:
            os.replace(tmp, dst)
            fsync_dir(dst.parent)
            _logger.info("extracted %s", dst)
    finally:
        for tmp, _ in tmps:
            tmp.unlink(missing_ok=True)
    return absent
