"""The gate between a request and the file system: only good catalog rows, only inside their indexed folder.

A path or id from a request names a catalog row (``row_of_path``, ``row_of_id``); only rows of status "ok" are
served. When the file is opened (``open_served``), its real location (symbolic links resolved, at that moment) must
lie inside the row's indexed root, unless the service was started with ``follow_links``. On Linux the check is made
on the file descriptor actually opened, so a link swapped in between the check and the read is refused too.
"""

from __future__ import annotations

import os
import stat

from PIL import Image

from lookalike.app.service.errors import ApiError, quote
from lookalike.app.views import images_by_id
from lookalike.common.errors import InvalidArgument
from lookalike.data.images import ImageDecodeError, open_image
from lookalike.indexer import ImageIndex, ImageInfo

STATUS_OK = "ok"
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def row_of_id(index: ImageIndex, image_id: int) -> ImageInfo:
    """The good catalog row with a vector of this id; 404 otherwise."""
    row = images_by_id(index, [image_id]).get(image_id)
    if row is None or row.status != STATUS_OK:
        raise ApiError(404, f"no indexed image with id {image_id}")
    return row


def row_of_path(index: ImageIndex, path: str) -> ImageInfo:
    """The good catalog row at ``path`` (absolute, or relative to an indexed root); 403 for anything else."""
    p = path.strip()
    if not p or "\x00" in p:
        raise ApiError(403, f"refused to open {quote(p)}: empty or malformed path")
    try:
        row = index.find_image(p)
    except InvalidArgument:
        raise ApiError(403, f"refused to open {quote(p)}: it is indexed under several roots",
                       hint="give the full path") from None
    if row is None:
        raise ApiError(403, f"refused to open {quote(p)}: it is not in the index catalog",
                       hint="only indexed images can be searched, compared or shown")
    if row.status != STATUS_OK:
        raise ApiError(403, f"refused to open {quote(p)}: it is catalogued but is not a readable image "
                            f"(status {row.status})")
    return row


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def served_path(row: ImageInfo, *, follow_links: bool) -> str:
    """The real location of an indexed file, refused (403) when it lies outside the row's indexed root."""
    real = os.path.realpath(row.path)
    if not follow_links and not _inside(real, os.path.realpath(row.root)):
        raise ApiError(403, f"refused to open indexed image {row.id} ({quote(row.relpath)}): its real location is "
                            f"outside its indexed folder (a symbolic link)",
                       hint="files behind links that leave the indexed folder are served only by a service "
                            "started with --follow-links")
    return real


def open_served(row: ImageInfo, *, follow_links: bool) -> Image.Image:
    """Decode an indexed file through the gate (403 outside its folder, 404 when it cannot be read any more)."""
    real = served_path(row, follow_links=follow_links)
    gone = f"indexed image {row.id} ({quote(row.relpath)}) cannot be read any more"
    try:
        fd = os.open(real, _OPEN_FLAGS)
    except OSError as e:
        raise ApiError(404, f"{gone}: {e.strerror or e}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ApiError(404, f"{gone}: not a regular file")
        source = f"/proc/self/fd/{fd}"
        if os.path.exists(source):  # Linux: read what was opened and checked, whatever the path says by now
            opened = os.readlink(source)
            if not follow_links and opened != real:
                raise ApiError(403, f"refused to open indexed image {row.id} ({quote(row.relpath)}): the file "
                                    f"changed while it was opened")
        else:
            source = real
        try:
            return open_image(source)
        except ImageDecodeError as e:
            raise ApiError(404, f"{gone}: {e.reason}") from None
    finally:
        os.close(fd)
