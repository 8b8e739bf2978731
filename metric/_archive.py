"""Release zips: one download per zip, the members needed extracted (verified, atomically), the zip deleted."""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.parse
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

from lookalike.common.errors import ChecksumError
from lookalike.common.io import fsync_dir
from lookalike.metric._cache import get_cache_path
from lookalike.metric._download import download_url
from lookalike.metric._pretrained import WeightFile

_logger = logging.getLogger(__name__)

_CHUNK = 1 << 20

#: ``(url, cache_subdir, files already asked for) -> other files from the same zip`` (extracted best effort).
SiblingsFn = Callable[[str, str, Sequence[WeightFile]], list[WeightFile]]


def archive_download_path(root: Path, url: str) -> Path:
    base = PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name or "archive.zip"
    tag = hashlib.sha256(url.encode()).hexdigest()[:10]  # a changed URL never resumes a stale .part
    return root / ".downloads" / f"{tag}-{base}"


def _find_member(names: Sequence[str], member: str) -> str | None:
    """Exact member name, else the single member ending in ``/member`` (zips with a leading folder)."""
    if member in names:
        return member
    hits = [n for n in names if n.endswith("/" + member)]
    return hits[0] if len(hits) == 1 else None


def fetch_archive(url: str, root: Path, wfs: Sequence[WeightFile], *, progress: bool, timeout: float,
                  siblings: SiblingsFn | None = None) -> list[str]:
    """Download the zip at ``url`` once, extract ``wfs`` (and registered siblings), delete it; return absent members."""
    zip_path = archive_download_path(root, url)
    if not zip_path.is_file():  # a whole zip from an earlier run that stopped while extracting is reused
        download_url(url, zip_path, progress=progress, timeout=timeout)
    try:
        extras = siblings(url, root.name, wfs) if siblings is not None else []
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
