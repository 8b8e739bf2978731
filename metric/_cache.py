"""Where weight files are: an explicit ``weights=`` folder, the user cache ``$LOOKALIKE_HOME`` (default
``~/.cache/lookalike``, never the working directory), or a file shipped inside an installed package. Looks only;
never downloads (``lookalike.metric._hub.resolve_files`` does, in the fixed order written down there).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from lookalike.common.errors import ConfigError
from lookalike.metric._pretrained import WeightFile

_logger = logging.getLogger(__name__)

OFFLINE_ENV_VARS = ("LOOKALIKE_OFFLINE", "HF_HUB_OFFLINE")
_TRUE = {"1", "true", "yes", "on"}


def get_cache_dir() -> Path:
    """The user cache: ``$LOOKALIKE_HOME`` or ``~/.cache/lookalike`` (never the working directory)."""
    env = os.environ.get("LOOKALIKE_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lookalike"


def is_offline() -> bool:
    """True when ``LOOKALIKE_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to 1/true/yes/on."""
    return offline_var() is not None


def offline_var() -> str | None:
    for var in OFFLINE_ENV_VARS:
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return var
    return None


def _check_relative(path: str) -> PurePosixPath:
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise ConfigError(f"weight file path {path!r} must be relative, without '..' (fix the metric config)")
    return p


def get_cache_path(wf: WeightFile) -> Path:
    """Where ``wf`` lives in the user cache: ``<cache>/<cache_subdir>/<path>`` (whether or not it exists)."""
    return get_cache_dir() / wf.cache_subdir / Path(*_check_relative(wf.path).parts)


def explicit_root(weights: str | os.PathLike[str] | None, metric: str | None = None) -> Path | None:
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
    root = explicit_root(weights)
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


def searched_folders(root: Path | None, files: Sequence[WeightFile]) -> list[Path]:
    out = [root] if root is not None else []
    for wf in files:
        c = get_cache_dir() / wf.cache_subdir
        if c not in out:
            out.append(c)
    return out
