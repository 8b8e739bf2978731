"""A registered metric's weight files: download, verify, locate. The library behind ``lookalike weights``.

Files are looked up in the fixed order of :mod:`lookalike.metric._hub`: an explicit ``weights`` folder, then the
user cache (``$LOOKALIKE_HOME``, default ``~/.cache/lookalike``). Downloads always go to the cache.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from lookalike.common.io import sha256_file
from lookalike.metric._cache import find_package_file, find_weight_file, get_cache_path
from lookalike.metric._hub import resolve_files
from lookalike.metric._pretrained import WeightFile

_logger = logging.getLogger(__name__)

__all__ = ["download_weights", "verify_weights", "weights_paths"]


def _required(name: str) -> list[WeightFile]:
    # Imported here: the registry imports every metric family, which pulls in torch.
    from lookalike.metric._builders import required_files
    from lookalike.metric._registry import get_metric_cfg

    return required_files(get_metric_cfg(name))


def _root(weights: str | os.PathLike[str] | None) -> Path | None:
    if weights is None:
        return None
    w = Path(weights).expanduser()
    if not w.is_dir():
        raise FileNotFoundError(f"weights folder {w} does not exist")
    return w.resolve()


def download_weights(
    name: str, *, weights: str | os.PathLike[str] | None = None, progress: bool = True
) -> dict[str, Path]:
    """Fetch every weight file of metric ``name`` that is not on disk yet (into the user cache).

    Downloads even when ``LOOKALIKE_OFFLINE``/``HF_HUB_OFFLINE`` is set: calling this is an explicit request.
    Files already in ``weights`` or in the cache are not fetched again (use :func:`verify_weights` to check them).

    Args:
        name: a registered metric name (``list_metrics()``).
        weights: a folder searched before the cache, or None. Nothing is written there.
        progress: tqdm bars on stderr (only when stderr is a terminal).

    Returns:
        ``{relative path: absolute Path}`` for every file the metric needs (empty when it needs none).

    Raises:
        KeyError: unknown metric name.
        WeightsNotFound: a file has no public URL, or the network failed (a partial download is kept and resumed
            next time).
        ChecksumError: a downloaded file has the wrong size or sha256 (it is deleted).
    """
    files = _required(name)
    if not files:
        _logger.info("metric %r needs no weight files", name)
        return {}
    return resolve_files(name, files, weights, download=True, progress=progress)


def verify_weights(name: str, *, weights: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Check the weight files of metric ``name`` on disk (nothing is downloaded); hashes every file found.

    Args:
        name: a registered metric name.
        weights: a folder searched before the cache, or None.

    Returns:
        One dict per file, in ``required_files`` order, with keys ``path`` (relative), ``location`` (absolute
        path or None), ``present``, ``size`` (bytes on disk or None), ``expected_size``, ``size_status`` and
        ``sha256`` (each ``"ok"``, ``"unknown"`` (nothing to compare with), ``"mismatch"`` or ``"missing"``),
        ``actual_sha256``, ``expected_sha256`` and ``ok`` (present and no mismatch).

    Raises:
        KeyError: unknown metric name.
        FileNotFoundError: ``weights`` is given but is not a folder.
    """
    root = _root(weights)
    rows: list[dict[str, Any]] = []
    for wf in _required(name):
        p = find_weight_file(wf, root)
        row: dict[str, Any] = {
            "path": wf.path,
            "location": str(p) if p is not None else None,
            "present": p is not None,
            "size": None,
            "expected_size": wf.size,
            "size_status": "missing",
            "sha256": "missing",
            "actual_sha256": None,
            "expected_sha256": wf.sha256.lower() if wf.sha256 else None,
            "ok": False,
        }
        if p is not None:
            size = p.stat().st_size
            digest = sha256_file(p)
            row["size"] = size
            row["actual_sha256"] = digest
            row["size_status"] = "unknown" if wf.size is None else ("ok" if size == wf.size else "mismatch")
            exp = row["expected_sha256"]
            row["sha256"] = "unknown" if exp is None else ("ok" if digest == exp else "mismatch")
            row["ok"] = "mismatch" not in (row["size_status"], row["sha256"])
        rows.append(row)
    return rows


def weights_paths(name: str, *, weights: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Where each weight file of metric ``name`` is, or would be downloaded to, and where it comes from.

    Args:
        name: a registered metric name.
        weights: a folder searched before the cache, or None.

    Returns:
        One dict per file with keys ``path`` (relative), ``location`` (the file found, else its cache path),
        ``present``, ``found_in`` (``"weights"``, ``"cache"``, ``"package"`` or None), ``cache_path``,
        ``url`` (the file's own URL),
        ``archive_url`` and ``member`` (when it ships inside a zip), ``source`` (the URL to fetch: the zip's or the
        file's; None when there is no public URL), ``sha256`` and ``size`` (None when unknown).

    Raises:
        KeyError: unknown metric name.
        FileNotFoundError: ``weights`` is given but is not a folder.
    """
    root = _root(weights)
    rows: list[dict[str, Any]] = []
    for wf in _required(name):
        cache = get_cache_path(wf)
        p = find_weight_file(wf, root)
        found_in = None if p is None else ("cache" if p == cache else "package" if p == find_package_file(wf)
                                           else "weights")
        rows.append({
            "path": wf.path,
            "location": str(p if p is not None else cache),
            "present": p is not None,
            "found_in": found_in,
            "cache_path": str(cache),
            "url": wf.url,
            "archive_url": wf.archive_url,
            "member": (wf.member or wf.path) if wf.archive_url else None,
            "source": wf.source,
            "sha256": wf.sha256,
            "size": wf.size,
        })
    return rows
