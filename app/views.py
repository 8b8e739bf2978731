"""Plain helpers behind the Streamlit pages: settings, the catalog gate for images, uploads, thumbnails, reports.

Nothing here imports Streamlit, so it is tested directly. The one rule this module enforces for the whole app:
an image file is read only when its path is in the index catalog (``catalog_row``), or listed by a dataset reader
for a folder given on the command line, and every file is decoded with ``lookalike.data.images.open_image`` (the
safe loader) and re-encoded, never sent as raw bytes.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from PIL import Image

from lookalike.app.settings import AppSettings as AppSettings
from lookalike.app.settings import load_settings as load_settings
from lookalike.common.errors import InvalidArgument
from lookalike.data.images import ImageDecodeError, open_image
from lookalike.indexer import DedupReport, Hit, ImageIndex, ImageInfo, index_exists, write_report

_logger = logging.getLogger(__name__)

#: Uploaded images are also refused above this many pixels (checked from the header, before decoding).
UPLOAD_MAX_PIXELS = 50_000_000
UPLOAD_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"]
THUMB_SIZE = 320
#: Every thumbnail of a grid (search results, map selections, duplicate groups) is letterboxed into a box of this
#: shape (width, height), so a portrait photo makes no taller card than a landscape one.
CARD_ASPECT = (4, 3)
#: The letterbox colour: Streamlit's light secondary background.
CARD_BACKGROUND = (240, 242, 246)


def index_state(index_dir: Path | None, db_url: str | None = None) -> str:
    """"none" (no folder given), "missing" (no catalog there yet) or "ok"."""
    if index_dir is None:
        return "none"
    return "ok" if index_exists(index_dir, db_url=db_url) else "missing"


def index_stamp(index_dir: Path | str) -> tuple[tuple[str, int, int], ...]:
    """(name, size, mtime_ns) of every file in the index folder: a cache key that changes when the index does."""
    out = []
    try:
        with os.scandir(index_dir) as it:
            for e in it:
                if e.is_file():
                    st = e.stat()
                    out.append((e.name, st.st_size, st.st_mtime_ns))
    except FileNotFoundError:
        return ()
    return tuple(sorted(out))


def build_command(index_dir: Path | str, folder: str = "FOLDER", metric: str = "efficientnet_lite0") -> str:
    """The CLI command that builds this index (shown when there is none)."""
    return f"lookalike index {folder} --index {index_dir} --metric {metric}"


class NotInCatalog(InvalidArgument):
    """A path that the index catalog does not hold; the app never reads such a file."""

    def __init__(self, path: str, reason: str = "it is not in the index catalog"):
        self.path = path
        super().__init__(f"refused to open {path!r}: {reason}", hint="only indexed images can be shown")


def catalog_row(index: ImageIndex, path: str) -> ImageInfo:
    """The catalogued image at ``path`` (absolute, or relative to an indexed root).

    Raises:
        NotInCatalog: the path is not catalogued (or is ambiguous), so it must not be read.
    """
    p = (path or "").strip()
    if not p or "\x00" in p:
        raise NotInCatalog(p, "empty or malformed path")
    try:
        row = index.find_image(p)
    except ValueError as e:
        raise NotInCatalog(p, str(e)) from None
    if row is None:
        raise NotInCatalog(p)
    return row


def encode_thumbnail(img: Image.Image, size: int = THUMB_SIZE, *, aspect: tuple[int, int] | None = None) -> bytes:
    """A JPEG (quality 85) no larger than ``size`` on its long side.

    With ``aspect`` (width, height) the image is scaled (up or down) to fit, whole, in a box ``size`` wide and
    ``size * height / width`` high and centred on ``CARD_BACKGROUND``: every thumbnail then has the same shape.
    """
    im = img.convert("RGB")
    if aspect is None:
        im.thumbnail((size, size))
    else:
        box = (size, max(1, round(size * aspect[1] / aspect[0])))
        scale = min(box[0] / im.width, box[1] / im.height)  # fit the box, small images included
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS)
        framed = Image.new("RGB", box, CARD_BACKGROUND)
        framed.paste(im, ((box[0] - im.width) // 2, (box[1] - im.height) // 2))
        im = framed
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def thumbnail_of_file(path: str, size: int = THUMB_SIZE, *, aspect: tuple[int, int] | None = None) -> bytes:
    """Decode ``path`` with the safe loader and return a JPEG thumbnail (``encode_thumbnail``).

    Callers must have checked the path against the catalog (``catalog_row``) or a dataset reader first.

    Raises:
        ImageDecodeError: unreadable file.
    """
    return encode_thumbnail(open_image(path), size, aspect=aspect)


def framed_thumbnail(path: str, size: int, colour: str, *, border: int = 4) -> bytes:
    """A JPEG thumbnail of ``path`` (safe loader; no larger than ``size``) inside a ``border``-pixel frame of
    ``colour`` ("#RRGGBB"): the Map's thumbnails, framed in their folder's colour.

    Callers must have checked the path against the catalog first.

    Raises:
        ImageDecodeError: unreadable file.
    """
    im = open_image(path).convert("RGB")
    im.thumbnail((size - 2 * border, size - 2 * border))
    framed = Image.new("RGB", (im.width + 2 * border, im.height + 2 * border), colour)
    framed.paste(im, (border, border))
    buf = io.BytesIO()
    framed.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def format_bytes(n: float) -> str:
    """A size for people: "820 KB", "1.2 GB", "0 B" (powers of 1000; one decimal below 10 of a unit)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 999.5 or unit == "TB":
            break
        n /= 1000
    if unit == "B":
        return f"{int(n)} B"
    return f"{n:.1f} {unit}" if abs(n) < 9.95 else f"{n:.0f} {unit}"


def split_folder(root: str, relpath: str) -> tuple[str, str]:
    """(folder, file name) of an indexed file as a person reads it: the root's own name plus the folders under it,
    with a trailing slash ("photos/edits/"), and the file name."""
    name = root.rstrip("/").rsplit("/", 1)[-1] or root
    head, _, base = relpath.rpartition("/")
    return (f"{name}/{head}/" if head else f"{name}/"), base


def decode_upload(data: bytes, name: str, *, max_bytes: int, max_pixels: int = UPLOAD_MAX_PIXELS) -> Image.Image:
    """Decode uploaded bytes with the same safe loader as indexing (via a private temporary file).

    Raises:
        ValueError: too large, empty, or not a readable image (the message is fit to show to the user).
    """
    if len(data) == 0:
        raise ValueError(f"{name!r} is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ValueError(f"{name!r} is {len(data) / 1e6:.1f} MB; uploads are limited to {max_bytes / 1e6:.0f} MB")
    with tempfile.TemporaryDirectory(prefix="lookalike-upload-") as tmp:
        p = Path(tmp) / "upload"
        p.write_bytes(data)
        try:
            img = open_image(p, max_pixels=max_pixels)
        except ImageDecodeError as e:
            raise ValueError(f"cannot read {name!r} as an image: {e.reason}") from None
    return img


def neighbour_overlap(columns: Mapping[str, Sequence[Hit]]) -> list[dict]:
    """For every pair of metrics, how many of their neighbours are shared (by path)."""
    names = list(columns)
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            sa = {h.path for h in columns[a]}
            sb = {h.path for h in columns[b]}
            k = max(len(sa), len(sb), 1)
            rows.append({"metric A": a, "metric B": b, "shared": len(sa & sb), "of k": k,
                         "overlap": round(len(sa & sb) / k, 3)})
    return rows


def report_bytes(report: DedupReport, suffix: str) -> bytes:
    """A dedup report as CSV or JSON bytes (``suffix`` ".csv" or ".json"), written by ``write_report``."""
    with tempfile.TemporaryDirectory(prefix="lookalike-report-") as tmp:
        return write_report(report, Path(tmp) / f"duplicates{suffix}").read_bytes()


def reader_available(module: str) -> bool:
    """True when a dataset reader module (e.g. "lookalike.data.nights") is installed."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def rendition_of(path: str) -> str:
    """The ImageNet-R rendition of a file from its name ("art_12.jpg" -> "art"); "" when it has no prefix."""
    stem = Path(path).stem
    return stem.rsplit("_", 1)[0] if "_" in stem else ""


def is_under(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """True when ``path`` (symbolic links resolved) lies inside ``root``."""
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
    except (ValueError, OSError):
        return False
    return True


def triplet_rows(triplets: Sequence, d_left: Sequence[float], d_right: Sequence[float], scores: Sequence[float], *,
                 lower_is_better: bool = True) -> list[dict]:
    """One table row per 2AFC triplet: the people's vote, the metric's distances and vote, agreement, score.

    ``agrees`` is False only when the metric picks the image that the majority of people did not (a tie on
    either side counts as agreement).
    """
    rows = []
    for i, (t, dl, dr, sc) in enumerate(zip(triplets, d_left, d_right, scores, strict=True)):
        metric_right = bool(dr < dl) if lower_is_better else bool(dr > dl)
        tie = dl == dr or t.p == 0.5
        rows.append({"#": i, "id": t.id, "people: right": round(float(t.p), 3), "d(ref, left)": round(float(dl), 4),
                     "d(ref, right)": round(float(dr), 4), "metric: right": metric_right,
                     "agrees": tie or metric_right == (t.p > 0.5), "score": round(float(sc), 3)})
    return rows


def has_vectors(info: dict) -> bool:
    """True when ``index_info``'s dict holds at least one vector to search (the app then opens on Search)."""
    return any(m.get("vectors") for m in info.get("metrics", ()))


def page_bounds(total: int, page: int, page_size: int) -> tuple[int, int, int]:
    """(start, stop, pages) of 1-based ``page`` of ``page_size`` items among ``total`` (page clamped to range)."""
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    pages = max(1, -(-total // page_size))
    page = min(max(1, page), pages)
    start = (page - 1) * page_size
    return start, min(total, start + page_size), pages


#: A result opened "full size" is shown at its own resolution up to this many pixels on its long side.
FULL_SIZE_MAX_SIDE = 4096


def full_size_image(path: str, max_side: int = FULL_SIZE_MAX_SIDE) -> tuple[Image.Image, bool]:
    """A catalogued file (the caller has checked it) decoded with the safe loader, at most ``max_side`` on its long
    side; the flag says whether it was reduced.

    Raises:
        ImageDecodeError: unreadable file.
    """
    img = open_image(path)
    if max(img.size) <= max_side:
        return img, False
    img.thumbnail((max_side, max_side))
    return img, True


def images_by_id(index: ImageIndex, ids: Iterable[int]) -> dict[int, ImageInfo]:
    """The catalogued images (public read models) of FAISS ids = catalog ids that have a committed vector."""
    return {i: ImageInfo.from_row(r) for i, r in index.rows(ids).items()}
