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
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from lookalike.common.errors import WeightsNotFound
from lookalike.common.io import file_lock
from lookalike.metric._archive import fetch_archive
from lookalike.metric._cache import (
    explicit_root,
    find_weight_file,
    get_cache_dir,
    get_cache_path,
    offline_var,
    searched_folders,
)
from lookalike.metric._download import DEFAULT_TIMEOUT, NETWORK_ERRORS, describe_network_error, download_url
from lookalike.metric._pretrained import WeightFile

_logger = logging.getLogger(__name__)


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
    root = explicit_root(weights, metric)
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
    searched = searched_folders(root, files)
    offline = offline_metric()
    if download is False:
        raise WeightsNotFound(metric, missing, searched, reason="downloads disabled (download=False)",
                              offline_metric=offline)
    var = offline_var()
    if download is None and var is not None:
        raise WeightsNotFound(metric, missing, searched, reason=f"offline: {var}={os.environ[var]} is set",
                              offline_metric=offline)
    fetched, failure = fetch_files([wf for wf in missing if wf.source], progress=progress)
    found.update(fetched)
    still = [wf for wf in missing if wf.path not in found]
    if still:
        reason = failure or ("no public URL" if not any(wf.source for wf in still) else "download failed")
        raise WeightsNotFound(metric, still, searched, reason=reason, offline_metric=offline)
    return {wf.path: found[wf.path] for wf in files}


def offline_metric() -> str | None:
    """An embedding metric whose every weight file ships inside an installed package (``efficientnet_lite0``):
    the way out offered when another metric's files are missing; None when there is none."""
    from lookalike.metric._builders import required_files
    from lookalike.metric._registry import get_metric_cfg, list_metrics

    for name in list_metrics(kind="embedding"):
        files = required_files(get_metric_cfg(name))
        if files and all(wf.package for wf in files) and find_weight_file(files[0], None) is not None:
            return name
    return None


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
                    absent = fetch_archive(url, get_cache_dir() / subdir, todo, progress=progress, timeout=timeout,
                                           siblings=_registered_siblings)
                    if absent:
                        notes.append(f"{', '.join(absent)} not found in {url}")
            done.update({wf.path: get_cache_path(wf) for wf in wfs if get_cache_path(wf).is_file()})
    except NETWORK_ERRORS as e:
        _logger.info("download failed: %s", e)
        return done, f"download failed: {describe_network_error(e)}"
    return done, "; ".join(notes)


@contextlib.contextmanager
def _cache_lock(folder: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``folder/.lock``: one process at a time writes a cache folder."""
    with file_lock(folder / ".lock"):
        yield


def _registered_siblings(url: str, subdir: str, have: Sequence[WeightFile]) -> list[WeightFile]:
    """Other registered files from the same zip, so that a later metric does not download it again."""
    from lookalike.metric._builders import required_files
    from lookalike.metric._registry import get_metric_cfg, list_metrics

    seen = {wf.path for wf in have}
    out: list[WeightFile] = []
    for name in list_metrics(include_test=True):
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
