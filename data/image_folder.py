"""Find image files under folders: recursive, symlink-loop safe, natural order, relative POSIX ids.

Symbolic links: a link (to a file or a folder) is followed when its target, all links resolved, lies inside the
root being scanned, so photos kept behind links inside the collection are found. A link that leads out of the root
is skipped and reported (``ScanResult.skipped``) unless ``outside_links=True`` (``lookalike index --follow-links``):
an index then never holds, and a reader never serves, a file from outside the folders it was given by accident.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lookalike.data.images import is_image_name

_logger = logging.getLogger(__name__)

_DIGITS = re.compile(r"(\d+)")


def natural_key(s: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders "img2" before "img10" (case-insensitive for the text parts)."""
    return tuple((0, int(t)) if t.isdigit() else (1, t.lower()) for t in _DIGITS.split(s) if t)


def display_path(s: str) -> str:
    """A path string safe to print or store as text: undecodable bytes become ``\\xNN`` escapes."""
    return os.fsencode(s).decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class ImageFile:
    """One image file found by a scan.

    Attributes:
        root: the absolute root folder it was found under.
        relpath: its path relative to ``root``, POSIX separators (may hold surrogate escapes for non-UTF-8 bytes).
        size: bytes.
        mtime_ns: modification time in nanoseconds.
    """

    root: str
    relpath: str
    size: int
    mtime_ns: int

    @property
    def path(self) -> str:
        """The absolute path (a ``str`` that ``open`` accepts, surrogate escapes included)."""
        return os.path.join(self.root, *self.relpath.split("/"))


@dataclass(frozen=True)
class ScanError:
    """A file or folder the scan could not read; recorded, not raised."""

    path: str
    reason: str


@dataclass
class ScanResult:
    """What a scan found: image files in natural order, the errors met on the way, and the symbolic links skipped
    because they lead out of their root."""

    files: list[ImageFile] = field(default_factory=list)
    errors: list[ScanError] = field(default_factory=list)
    skipped: list[ScanError] = field(default_factory=list)


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def _walk(root: str, result: ScanResult, *, follow_symlinks: bool, outside_links: bool,
          is_image: Callable[[str], bool], progress: Callable[[int], None] | None = None) -> None:
    real_root = os.path.realpath(root)
    seen_dirs: set[tuple[int, int]] = set()
    try:
        st = os.stat(root)
        seen_dirs.add((st.st_dev, st.st_ino))
    except OSError as e:
        result.errors.append(ScanError(root, f"cannot read root folder: {e.strerror or e}"))
        return
    stack: list[tuple[str, str]] = [(root, "")]
    while stack:
        folder, rel = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as e:
            result.errors.append(ScanError(folder, f"cannot list folder: {e.strerror or e}"))
            continue
        for entry in entries:
            name = entry.name
            rel_child = f"{rel}/{name}" if rel else name
            try:
                is_link = entry.is_symlink()
                if is_link and not follow_symlinks:
                    continue
                try:
                    st = entry.stat(follow_symlinks=True)
                except FileNotFoundError:
                    if is_link:
                        result.errors.append(ScanError(entry.path, "broken symbolic link"))
                        continue
                    raise
                except OSError as e:
                    if e.errno == errno.ELOOP:  # a symlink pointing at itself
                        result.errors.append(ScanError(entry.path, "symbolic link loop"))
                        continue
                    raise
                if is_link and not outside_links and not _inside(os.path.realpath(entry.path), real_root):
                    result.skipped.append(ScanError(entry.path, "symbolic link to a place outside the folder"))
                    continue
                if stat.S_ISDIR(st.st_mode):
                    key = (st.st_dev, st.st_ino)
                    if key in seen_dirs:
                        if is_link:
                            result.errors.append(ScanError(entry.path, "symbolic link loop (folder already visited)"))
                        continue
                    seen_dirs.add(key)
                    stack.append((entry.path, rel_child))
                elif stat.S_ISREG(st.st_mode) and is_image(name):
                    result.files.append(ImageFile(root, rel_child, st.st_size, st.st_mtime_ns))
            except OSError as e:
                result.errors.append(ScanError(entry.path, f"cannot stat: {e.strerror or e}"))
        if progress is not None:
            progress(len(result.files))


def scan_images(
    roots: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    follow_symlinks: bool = True,
    outside_links: bool = False,
    extensions: Iterable[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> ScanResult:
    """Walk folders recursively and list their image files.

    Files are recognised by suffix (case-insensitive; see ``IMAGE_EXTENSIONS`` / ``register_extension``), folders
    named like images are walked, not listed. Each folder is visited once, so symbolic-link loops end. Errors
    (unreadable folders, broken links, loops) are recorded in ``ScanResult.errors`` and the walk goes on.

    Args:
        roots: one folder or several (a single image file is accepted as its own root's only entry).
        follow_symlinks: follow symbolic links to files and folders (False: skip every link).
        outside_links: also follow links whose target (all links resolved) lies outside the root being scanned;
            by default they are skipped and listed in ``ScanResult.skipped``.
        extensions: suffixes to accept instead of the registry (e.g. [".jpg", ".png"]).
        progress: called with the number of image files found so far, after each folder.

    Returns:
        A ScanResult; files sorted by (root, natural order of the relative path).

    Raises:
        FileNotFoundError: a root that does not exist.
    """
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    if extensions is not None:
        exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}

        def is_image(name: str) -> bool:
            return os.path.splitext(name)[1].lower() in exts
    else:
        is_image = is_image_name
    result = ScanResult()
    for r in roots:
        root = os.path.abspath(os.fspath(r))
        if not os.path.exists(root):
            raise FileNotFoundError(f"folder to scan not found: {display_path(root)}")
        if os.path.isfile(root):
            st = os.stat(root)
            result.files.append(ImageFile(os.path.dirname(root), os.path.basename(root), st.st_size, st.st_mtime_ns))
            continue
        _walk(root, result, follow_symlinks=follow_symlinks, outside_links=outside_links, is_image=is_image,
              progress=progress)
    result.files.sort(key=lambda f: (f.root, natural_key(f.relpath)))
    for err in result.errors:
        _logger.warning("scan: %s: %s", display_path(err.path), err.reason)
    if result.skipped:
        _logger.warning("scan: skipped %d symbolic link(s) that lead outside the folder, e.g. %s (follow them with "
                        "outside_links / follow_links)", len(result.skipped), display_path(result.skipped[0].path))
    return result


def list_images(root: str | os.PathLike[str] | Path, **kwargs: object) -> list[str]:
    """Absolute paths of the image files under ``root`` in natural order (see ``scan_images``)."""
    return [f.path for f in scan_images(root, **kwargs).files]  # type: ignore[arg-type]
