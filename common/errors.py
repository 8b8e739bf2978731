"""One error hierarchy for the whole library: ``LookalikeError`` and its subclasses, each with a ``hint``.

Every subclass also derives from the builtin it stands for (``WeightsNotFound`` is a ``FileNotFoundError``,
``IndexMismatch`` a ``ValueError``, ``UnknownName`` a ``KeyError``), so callers can catch either. The message says
what is wrong and where; ``hint`` says how to fix it (often the ``lookalike`` command that does). Messages never
spell command-line flags (the hint of ``WeightsNotFound`` names ``--weights DIR`` beside ``weights=DIR``); the CLI
prints the message and the hint, and treats anything that is not a ``LookalikeError`` or an ``OSError`` as a bug.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol


class LookalikeError(Exception):
    """Base of every error the library raises on purpose (bad input, damaged or missing files, busy index).

    Attributes:
        message: what went wrong, naming the value and where it came from.
        hint: how to fix it, or None.
    """

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nhint: {self.hint}"


class InvalidArgument(LookalikeError, ValueError):
    """An argument or option value is out of range or of the wrong kind."""


class UnknownName(LookalikeError, KeyError):
    """A name (metric, backbone, dataset, builder, option) is not registered."""


class ConfigError(LookalikeError, ValueError):
    """A metric configuration, or a file that describes one, is malformed."""


class WeightFileError(LookalikeError, ValueError):
    """A weight file exists but does not fit the model (wrong keys or shapes, unreadable format)."""


class ChecksumError(LookalikeError, ValueError):
    """A downloaded or extracted file does not have the expected size or sha256 (it has been deleted)."""

    def __init__(self, url: str, expected: object, actual: object, *, what: str = "sha256"):
        self.url = url
        self.expected = expected
        self.actual = actual
        self.what = what
        super().__init__(
            f"{what} mismatch for {url}: expected {expected}, got {actual}; the file was deleted",
            hint="run the download again; if it keeps failing, the URL or the checksum in the metric config is wrong",
        )


class _MissingFile(Protocol):
    @property
    def path(self) -> str: ...

    @property
    def url(self) -> str | None: ...

    @property
    def archive_url(self) -> str | None: ...


class WeightsNotFound(LookalikeError, FileNotFoundError):
    """Weight files a metric needs are not on disk and could not be downloaded.

    The message lists the files (grouped by where they come from) and the folders searched; the hint lists the ways
    out, a few lines a person can act on: the download command, a folder that already holds the files (the one
    hint that names a flag, ``--weights DIR``, beside its Python spelling ``weights=DIR``), and a metric that needs
    no download when the raiser names one (``offline_metric``).

    Attributes:
        metric: the metric name.
        missing: the files not found (``WeightFile`` objects).
        searched: the folders looked in.
        reason: why nothing was downloaded ("offline: ...", "download failed: ...").
        offline_metric: a metric that works with no download, offered as a way out (or None).
    """

    def __init__(self, metric: str, missing: Sequence[_MissingFile], searched: Sequence[str | Path],
                 reason: str = "", *, offline_metric: str | None = None):
        self.metric = metric
        self.missing = list(missing)
        self.searched = [Path(p) for p in searched]
        self.reason = reason
        self.offline_metric = offline_metric
        lines = [f"weights for metric {metric!r} not found" + (f" ({reason})" if reason else "") + ":"]
        by_source: dict[str, list[_MissingFile]] = {}
        for wf in self.missing:  # one line per zip, per folder URL (a hub repo's files) or per file URL
            if wf.archive_url:
                src = f"inside {wf.archive_url}"
            elif wf.url and wf.url.endswith("/" + wf.path):
                src = f"from {wf.url.removesuffix(wf.path)}"
            else:
                src = f"from {wf.url}" if wf.url else "no public URL"
            by_source.setdefault(src, []).append(wf)
        for src, group in by_source.items():
            if len(group) == 1 and group[0].url and not group[0].archive_url:
                src = f"from {group[0].url}"
            lines.append(f"  - {', '.join(wf.path for wf in group)} ({src})")
        lines.append("searched: " + (", ".join(str(p) for p in self.searched) or "(nothing)"))
        if any(wf.archive_url or wf.url for wf in self.missing):
            folder = "or use a folder that already holds them: --weights DIR (weights=DIR in Python)"
            if any(getattr(wf, "cache_subdir", None) == "dreamsim" for wf in self.missing):
                folder += "; an existing dreamsim cache folder works as is"
            ways = [f"download them (needs the network): lookalike weights download {metric}", folder]
        else:
            ways = ["put the files in a weights folder: one of those searched, or --weights DIR (weights=DIR in "
                    "Python)"]
        if offline_metric and offline_metric != metric:
            ways.append(f"or use {offline_metric}, which needs no download: --metric {offline_metric}")
        hint = ways[0] if len(ways) == 1 else "ways out:\n" + "\n".join(f"  - {w}" for w in ways)
        super().__init__("\n".join(lines), hint=hint)


class IndexNotFound(LookalikeError, FileNotFoundError):
    """There is no index at the given folder (or catalog URL)."""


class IndexLocked(LookalikeError, ValueError):
    """Another process is writing the index."""


class IndexMismatch(LookalikeError, ValueError):
    """The index and the request disagree: dimension, metric, weights fingerprint or FAISS type."""


class IndexDamaged(LookalikeError, ValueError):
    """A file of an index folder is unreadable or does not match the catalog.

    The message is one line that names the file and, when the folder is known, ends with the repair command (no
    separate hint, so that every command reports a damaged file in one line).

    Attributes:
        path: the damaged file.
        what: what is wrong with it (without the file name or the repair command).
        index_dir: the index folder, or None.
    """

    def __init__(self, path: str | os.PathLike[str], what: str, index_dir: str | os.PathLike[str] | None = None):
        self.path = os.fspath(path)
        self.what = what
        self.index_dir = os.fspath(index_dir) if index_dir is not None else None
        fix = f"; run 'lookalike check --index {self.index_dir} --repair'" if self.index_dir is not None else ""
        super().__init__(f"damaged index file {self.path}: {what}{fix}")


class IndexNeedsUpgrade(IndexMismatch):
    """The index folder was written by an older lookalike and must be upgraded once by a writer; readers never
    write, so they stop with this error (one line naming the command that upgrades the folder)."""

    def __init__(self, index_dir: str | os.PathLike[str], found: str):
        self.index_dir = os.fspath(index_dir)
        super().__init__(f"index {self.index_dir} {found}; upgrade it once with any writer command ('lookalike index' "
                         f"or 'lookalike import' into it) or with: lookalike check --index {self.index_dir} --repair")


class MissingDependency(LookalikeError, ImportError):
    """An optional Python package that this feature needs is not installed (the hint names the pip command)."""


class DatasetError(LookalikeError, ValueError):
    """A dataset folder or file is missing parts or has malformed rows."""
