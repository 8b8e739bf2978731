"""A torch Dataset / DataLoader that decodes image files in worker processes; bad files travel as failures.

Fast decode (opt-in, not bit-exact with the DreamSim reference): large JPEGs are decoded at a reduced DCT scale
(PIL ``draft``), or, on a GPU, workers only read the JPEG bytes and ``decode_raw_batch`` decodes and resizes them on
the device (``torchvision.io.decode_jpeg`` + the metric's own resize, ``lookalike.data.transforms.resize_tensor``).
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from lookalike.common.errors import InvalidArgument
from lookalike.data.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from lookalike.data.transforms import PreprocessCfg, resize_tensor

_logger = logging.getLogger(__name__)

_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class DecodeFailure:
    """A file that could not be decoded or transformed."""

    key: Any
    path: str
    reason: str


@dataclass(frozen=True)
class DecodedInfo:
    """What decoding learnt about one file."""

    key: Any
    width: int
    height: int
    format: str


@dataclass(frozen=True)
class RawJpeg:
    """The undecoded bytes of a baseline RGB / greyscale JPEG, for decoding on a device (``decode_raw_batch``).

    Attributes:
        key: the item's key.
        path: the file.
        data: the file's bytes as a 1-D uint8 tensor.
        info: width / height (after EXIF orientation) and format, read from the header.
        orientation: the EXIF orientation tag (1: none; 2-8 as in TIFF / EXIF).
    """

    key: Any
    path: str
    data: torch.Tensor
    info: DecodedInfo
    orientation: int = 1


@dataclass
class ImageBatch:
    """One collated batch: the tensors of the files that decoded, and the failures.

    Attributes:
        keys: the keys of the decoded files, in the row order of ``pixels``.
        pixels: (B, ...) stacked transform outputs (None when no file of the batch decoded).
        infos: one DecodedInfo per row of ``pixels``.
        failures: files that could not be read, with the reason.
        raw: JPEGs still to decode on the device (only with ``ImageFileDataset(raw_jpeg=True)``); see
            ``decode_raw_batch``.
    """

    keys: list[Any] = field(default_factory=list)
    pixels: torch.Tensor | None = None
    infos: list[DecodedInfo] = field(default_factory=list)
    failures: list[DecodeFailure] = field(default_factory=list)
    raw: list[RawJpeg] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys) + len(self.failures) + len(self.raw)

    def pin_memory(self) -> ImageBatch:
        """Page-lock ``pixels`` (called by a DataLoader with ``pin_memory=True``) so the copy to CUDA can overlap."""
        if self.pixels is not None and torch.cuda.is_available():
            self.pixels = self.pixels.pin_memory()
        return self


def _decode_one(
    key: Any, path: str, transform: Callable[[Image.Image], torch.Tensor], max_pixels: int | None,
    draft_size: int | None,
) -> tuple[Any, torch.Tensor | None, DecodedInfo | DecodeFailure]:
    try:
        dec = decode_image(path, max_pixels=max_pixels, draft_size=draft_size)
        x = transform(dec.image)
    except ImageDecodeError as e:
        return key, None, DecodeFailure(key, path, e.reason)
    except Exception as e:  # a transform that chokes on one odd image must not stop a long run
        return key, None, DecodeFailure(key, path, f"transform failed: {type(e).__name__}: {e}")
    return key, x, DecodedInfo(key, dec.width, dec.height, dec.format)


def read_raw_jpeg(key: Any, path: str, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> RawJpeg | None:
    """The bytes and header facts of a plain RGB / greyscale JPEG, or None for anything else (other formats, CMYK,
    unreadable or over ``max_pixels``: the PIL path decodes those, or reports why it cannot)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                if img.format != "JPEG" or img.mode not in ("RGB", "L"):
                    return None
                w, h = img.size
                orientation = int(img.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # noqa: BLE001  any problem: let the PIL path find and report it
        return None
    if max_pixels is not None and w * h > max_pixels:
        return None
    if orientation not in range(1, 9):
        orientation = 1
    if orientation >= 5:
        w, h = h, w
    tensor = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return RawJpeg(key, path, tensor, DecodedInfo(key, w, h, "JPEG"), orientation)


class ImageFileDataset(Dataset):
    """(key, path) items → decoded, transformed tensors; unreadable files become DecodeFailure items.

    Args:
        items: (key, path) pairs; the key is returned untouched (a catalog id, an index...).
        transform: PIL RGB image → tensor (e.g. ``metric.preprocess``).
        max_pixels: decompression-bomb limit passed to ``decode_image``.
        draft_size: fast decode of large JPEGs at a reduced scale (``decode_image(draft_size=...)``; not
            bit-exact). None: full decode.
        raw_jpeg: plain JPEGs are not decoded here but returned as RawJpeg bytes (for ``decode_raw_batch`` on a
            GPU); other files go through PIL as usual.
    """

    def __init__(
        self,
        items: Sequence[tuple[Any, str]],
        transform: Callable[[Image.Image], torch.Tensor],
        *,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        draft_size: int | None = None,
        raw_jpeg: bool = False,
    ):
        self.items = list(items)
        self.transform = transform
        self.max_pixels = max_pixels
        self.draft_size = draft_size
        self.raw_jpeg = raw_jpeg

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Any, torch.Tensor | RawJpeg | None, DecodedInfo | DecodeFailure]:
        key, path = self.items[i]
        if self.raw_jpeg:
            raw = read_raw_jpeg(key, path, max_pixels=self.max_pixels)
            if raw is not None:
                return key, raw, raw.info
        return _decode_one(key, path, self.transform, self.max_pixels, self.draft_size)


def collate_images(
    samples: list[tuple[Any, torch.Tensor | RawJpeg | None, DecodedInfo | DecodeFailure]],
) -> ImageBatch:
    """Stack the decoded samples of a batch; keep failures and undecoded JPEG bytes aside."""
    batch = ImageBatch()
    tensors = []
    for key, x, info in samples:
        if x is None:
            batch.failures.append(info)  # type: ignore[arg-type]
        elif isinstance(x, RawJpeg):
            batch.raw.append(x)
        else:
            batch.keys.append(key)
            tensors.append(x)
            batch.infos.append(info)  # type: ignore[arg-type]
    if tensors:
        batch.pixels = torch.stack(tensors)
    return batch


def default_workers() -> int:
    """Decoding workers to use by default: the CPUs this process may use, minus one for the model, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(0, min(8, n - 1))


def create_loader(
    dataset: Dataset, *, batch_size: int = 32, workers: int = 0, prefetch: int = 2, pin_memory: bool = False
) -> DataLoader:
    """A DataLoader over ``dataset`` (in order) that yields ImageBatch objects.

    Memory stays bounded whatever the image sizes: each worker decodes one file at a time and at most
    ``workers * prefetch`` transformed batches wait in the queue.

    Args:
        dataset: usually an ImageFileDataset.
        batch_size: files per batch.
        workers: decoding processes (0: decode in this process).
        prefetch: batches each worker prepares ahead.
        pin_memory: page-lock the batches (use when the model runs on CUDA: the copy then overlaps; ignored when
            CUDA is not available).
    """
    if batch_size < 1:
        raise InvalidArgument(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise InvalidArgument(f"workers must be >= 0, got {workers}")
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs["prefetch_factor"] = prefetch
        # fork shares the (unpicklable) transform closure with the workers; elsewhere it must pickle.
        if "fork" in multiprocessing.get_all_start_methods():
            kwargs["multiprocessing_context"] = "fork"
    pin = bool(pin_memory) and torch.cuda.is_available()
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_images,
        persistent_workers=False, pin_memory=pin, **kwargs,
    )


_TRANSPOSES: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {  # EXIF orientation → fix, on (C, H, W)
    2: lambda x: x.flip(-1),
    3: lambda x: x.flip(-1).flip(-2),
    4: lambda x: x.flip(-2),
    5: lambda x: x.transpose(-1, -2),
    6: lambda x: torch.rot90(x, -1, dims=(-2, -1)),
    7: lambda x: torch.rot90(x, 1, dims=(-2, -1)).flip(-1),
    8: lambda x: torch.rot90(x, 1, dims=(-2, -1)),
}


def apply_orientation(x: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation tag to a (C, H, W) tensor, as ``PIL.ImageOps.exif_transpose`` does."""
    fix = _TRANSPOSES.get(int(orientation))
    return fix(x) if fix is not None else x


def decode_jpegs(
    datas: Sequence[torch.Tensor], preprocess: PreprocessCfg | int, device: str | torch.device,
    orientations: Sequence[int] | None = None,
) -> list[torch.Tensor | None]:
    """Decode JPEG bytes on ``device`` and resize each to (3, S, S) float32 in [0, 1] there, as ``preprocess`` says.

    ``torchvision.io.decode_jpeg`` (nvJPEG on CUDA, libjpeg on the CPU), EXIF orientation, then
    ``lookalike.data.transforms.resize_tensor``: the metric's own resize (squash, or shorter side + centre crop),
    antialiased, in two passes rounded to 8 bits like PIL's. Close to, but not bit-exact with, PIL decode + PIL
    resize (nvJPEG's IDCT and chroma upsampling can differ from libjpeg's by a level or two).

    Args:
        datas: 1-D uint8 CPU tensors holding whole JPEG files.
        preprocess: the metric's PreprocessCfg (an int S means a bicubic squash to S x S).
        device: where to decode and resize ("cuda", "cuda:1"; "cpu" runs the same code on the CPU).
        orientations: EXIF orientation per file (default: none).

    Returns:
        One (3, S, S) tensor on ``device`` per input, or None for a file the decoder rejected.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    pre = PreprocessCfg(size=preprocess) if isinstance(preprocess, int) else preprocess
    if not datas:
        return []
    dev = torch.device(device)
    orients = list(orientations) if orientations is not None else [1] * len(datas)
    imgs: list[torch.Tensor | None]
    with warnings.catch_warnings():
        # torchvision >= 0.29 flags its image codecs as deprecated (moving to torchcodec); they still work
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*TorchVision.*")
        try:
            imgs = list(decode_jpeg(list(datas), mode=ImageReadMode.RGB, device=dev))
        except (RuntimeError, ValueError, TypeError) as e:  # one bad file fails the whole batch: retry one by one
            _logger.debug("batched JPEG decode on %s failed (%s); decoding one by one", dev, e)
            imgs = []
            for d in datas:
                try:
                    imgs.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=dev))
                except (RuntimeError, ValueError, TypeError):
                    imgs.append(None)
    out: list[torch.Tensor | None] = []
    for img, o in zip(imgs, orients, strict=True):
        if img is None:
            out.append(None)
            continue
        out.append(resize_tensor(apply_orientation(img, o), pre))
    return out


def decode_raw_batch(
    batch: ImageBatch, preprocess: PreprocessCfg | int, device: str | torch.device,
    transform: Callable[[Image.Image], torch.Tensor], *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS, draft_size: int | None = None,
) -> ImageBatch:
    """Decode a batch's RawJpeg items on ``device`` (``decode_jpegs``) and merge them with the rows decoded by PIL.

    A JPEG the device decoder rejects is decoded with PIL here instead (``transform``, ``max_pixels``,
    ``draft_size`` as for the dataset), and recorded as a failure only if PIL cannot read it either.

    Returns:
        A batch without ``raw`` items, its ``pixels`` on ``device`` (the PIL rows copied there).
    """
    if not batch.raw:
        return batch
    dev = torch.device(device)
    decoded = decode_jpegs([r.data for r in batch.raw], preprocess, dev, [r.orientation for r in batch.raw])
    out = ImageBatch(keys=list(batch.keys), infos=list(batch.infos), failures=list(batch.failures))
    rows = [batch.pixels.to(dev, non_blocking=True)] if batch.pixels is not None else []
    for r, x in zip(batch.raw, decoded, strict=True):
        info: DecodedInfo | DecodeFailure = r.info
        if x is None:
            _logger.debug("device JPEG decode failed for %s; decoding with PIL", r.path)
            _, x, info = _decode_one(r.key, r.path, transform, max_pixels, draft_size)
            if x is None:
                out.failures.append(info)  # type: ignore[arg-type]
                continue
            x = x.to(dev)
        out.keys.append(r.key)
        out.infos.append(info)  # type: ignore[arg-type]
        rows.append(x.unsqueeze(0))
    if rows:
        out.pixels = torch.cat(rows)
    return out
