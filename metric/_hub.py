"""Weight files: resolved explicit folder > $LOOKALIKE_HOME cache > official URL (download)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from lookalike.metric._pretrained import WeightFile

_logger = logging.getLogger(__name__)


class WeightsNotFound(FileNotFoundError):
    """Weight files a metric needs are not on disk and could not be downloaded."""

    def __init__(self, metric: str, missing: Sequence[WeightFile], searched: Sequence[Path], reason: str = ""):
        self.metric = metric
        self.missing = list(missing)
        self.searched = [Path(p) for p in searched]
        lines = [f"weights for metric {metric!r} not found" + (f" ({reason})" if reason else "") + ":"]
        for wf in self.missing:
            src = wf.source or "no public URL"
            via = f" (inside {wf.archive_url})" if wf.archive_url else ""
            lines.append(f"  - {wf.path}: {src if not wf.archive_url else ''}{via}".replace(":  (", ": ("))
        lines.append("searched: " + ", ".join(str(p) for p in self.searched))
        lines.append(f"fetch them with: lookalike weights download {metric}")
        super().__init__("\n".join(lines))


def get_cache_dir() -> Path:
    """The user cache: ``$LOOKALIKE_HOME`` or ``~/.cache/lookalike`` (never the working directory)."""
    env = os.environ.get("LOOKALIKE_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lookalike"


def resolve_files(
    metric: str, files: Sequence[WeightFile], weights: str | os.PathLike[str] | None = None
) -> dict[str, Path]:
    """Find every file of ``files``: in ``weights`` (a folder) first, then in the user cache.

    Returns:
        ``{wf.path: absolute Path}`` for every file.

    Raises:
        WeightsNotFound: a file is in neither place.
    """
    roots: list[Path] = []
    if weights is not None:
        w = Path(weights).expanduser()
        if not w.is_dir():
            raise FileNotFoundError(f"weights folder {w} does not exist (metric {metric!r})")
        roots.append(w.resolve())
    found: dict[str, Path] = {}
    missing: list[WeightFile] = []
    searched: list[Path] = list(roots)
    for wf in files:
        cands = [r / wf.path for r in roots] + [get_cache_dir() / wf.cache_subdir / wf.path]
        for c in cands:
            if c.is_file():
                found[wf.path] = c
                break
        else:
            missing.append(wf)
        cache_root = get_cache_dir() / wf.cache_subdir
        if cache_root not in searched:
            searched.append(cache_root)
    if missing:
        raise WeightsNotFound(metric, missing, searched)
    return found
