"""Open any image file safely: EXIF orientation, RGB, first frame, a decompression-bomb limit, one typed error."""

from __future__ import annotations

import errno
import logging
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lookalike.common.errors import LookalikeError

_logger = logging.getLogger(__name__)

#: Default pixel limit (width x height) checked from the header, before any pixel is decoded. Twice PIL's own
#: warning level: a 13k x 13k photo passes, a 40k x 40k "bomb" header does not.
DEFAULT_MAX_PIXELS = 178_956_970

#: Lower-case file suffixes that folder scans treat as images. Extend with ``register_extension``.
IMAGE_EXTENSIONS: set[str] = {
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
    ".pbm", ".pnm", ".tga", ".ico", ".jp2", ".j2k",
}
_HEIF_EXTENSIONS = {".heic", ".heif", ".avif"}

_plugins_lock = threading.Lock()
_plugins_done = False


class ImageDecodeError(LookalikeError, ValueError):
    """A file that cannot be read as an image.

    Attributes:
        path: the file.
        reason: a short human-readable cause ("empty file", "truncated or corrupt: ...", "permission denied", ...).
    """

    def __init__(self, path: str | os.PathLike[str], reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path!r}: {reason}")  # no hint: the file itself is the problem

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # picklable across DataLoader workers
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class DecodedImage:
    """An RGB image plus what the file said about itself.

    Attributes:
        image: the RGB PIL image (EXIF orientation applied, first frame, alpha dropped).
        format: the container format PIL detected ("JPEG", "PNG", ...), whatever the file suffix.
        width: the file's full width after EXIF orientation (also when ``draft_size`` decoded it smaller).
        height: the file's full height after EXIF orientation.
    """

    image: Image.Image
    format: str
    width: int
    height: int


def register_extension(*suffixes: str) -> None:
    """Add file suffixes (with or without the dot, any case) to the set that folder scans treat as images."""
    for s in suffixes:
        s = s.lower()
        IMAGE_EXTENSIONS.add(s if s.startswith(".") else "." + s)


def is_image_name(name: str) -> bool:
    """True when ``name``'s suffix (case-insensitive) is a registered image extension."""
    _register_plugins()
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _register_plugins() -> None:
    """Register optional decoders once (HEIC / HEIF / AVIF through pillow-heif, when it is installed)."""
    global _plugins_done
    if _plugins_done:
        return
    with _plugins_lock:
        if _plugins_done:
            return
        try:
            import pillow_heif  # type: ignore[import-not-found]
        except ImportError:
            pass
        else:
            pillow_heif.register_heif_opener()
            IMAGE_EXTENSIONS.update(_HEIF_EXTENSIONS)
            _logger.debug("pillow-heif registered: HEIC/HEIF files are readable")
        _plugins_done = True


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to RGB; 16-bit and float greyscale are rescaled instead of clipped."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        scale = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr8 = np.clip(np.rint(arr * (255.0 / scale)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L").convert("RGB")
    # convert("RGB") drops alpha (and palette transparency) exactly as the DreamSim reference does.
    return img.convert("RGB")


def decode_image(
    path: str | os.PathLike[str], *, max_pixels: int | None = DEFAULT_MAX_PIXELS, draft_size: int | None = None
) -> DecodedImage:
    """Read an image file into RGB, with its format and size.

    Args:
        path: the file.
        max_pixels: largest width x height accepted, checked from the header before decoding (None: no limit).
        draft_size: fast decode (not bit-exact): a JPEG at least twice this size on both sides is decoded at a
            reduced DCT scale (1/2, 1/4 or 1/8, PIL ``Image.draft``), keeping both sides >= ``draft_size``. Other
            formats are unaffected. None (default): full decode, identical to the DreamSim reference.

    Returns:
        A DecodedImage (RGB, EXIF orientation applied, first frame of an animation).

    Raises:
        ImageDecodeError: the file is missing, empty, a directory, unreadable, not an image, truncated, or too large.
    """
    _register_plugins()
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise ImageDecodeError(p, "file not found") from None
    except PermissionError:
        raise ImageDecodeError(p, "permission denied") from None
    except OSError as e:
        raise ImageDecodeError(p, f"cannot stat: {e.strerror or e}") from None
    if os.path.isdir(p):
        raise ImageDecodeError(p, "is a directory")
    if st.st_size == 0:
        raise ImageDecodeError(p, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning, palette-transparency notes: we check ourselves
            with Image.open(p) as img:
                fmt = img.format or "unknown"
                w, h = img.size
                if max_pixels is not None and w * h > max_pixels:
                    raise ImageDecodeError(
                        p, f"decompression bomb: {w}x{h} = {w * h:,} pixels > limit {max_pixels:,} (max_pixels)"
                    )
                if getattr(img, "n_frames", 1) > 1:
                    img.seek(0)
                if draft_size is not None and fmt in ("JPEG", "MPO"):
                    img.draft(img.mode, (draft_size, draft_size))  # picks the largest scale keeping both sides >=
                img.load()
                decoded_size = img.size
                img = ImageOps.exif_transpose(img) or img
                rgb = _to_rgb(img)
                if decoded_size == (w, h) or draft_size is None:
                    w, h = rgb.size
                elif img.size != decoded_size:  # drafted, and orientation 5-8 swapped the axes
                    w, h = h, w
    except ImageDecodeError:
        raise
    except PermissionError:
        raise ImageDecodeError(p, "permission denied") from None
    except IsADirectoryError:
        raise ImageDecodeError(p, "is a directory") from None
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(p, f"decompression bomb: {e}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(p, "not an image (format not recognized)") from None
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM):
            raise ImageDecodeError(p, "permission denied") from None
        raise ImageDecodeError(p, f"truncated or corrupt: {e}") from None
    except (SyntaxError, ValueError, TypeError, EOFError, IndexError, KeyError, MemoryError) as e:
        raise ImageDecodeError(p, f"corrupt {type(e).__name__}: {e}") from None
    return DecodedImage(image=rgb, format=fmt, width=w, height=h)


def open_image(
    path: str | os.PathLike[str] | Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, draft_size: int | None = None
) -> Image.Image:
    """Open an image file as RGB (EXIF orientation applied, first frame, alpha dropped like ``convert("RGB")``).

    Args:
        path: the file.
        max_pixels: largest width x height accepted, checked from the header before decoding (None: no limit).
        draft_size: fast, not bit-exact decode of large JPEGs at a reduced scale (see ``decode_image``).

    Returns:
        An RGB PIL image, fully loaded (the file is closed).

    Raises:
        ImageDecodeError: (a ValueError) for any unreadable file, naming the path and the reason.
    """
    return decode_image(path, max_pixels=max_pixels, draft_size=draft_size).image
