"""A torch Dataset / DataLoader that decodes image files in worker processes; bad files travel as failures."""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from lookalike.data.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image

_logger = logging.getLogger(__name__)


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


@dataclass
class ImageBatch:
    """One collated batch: the tensors of the files that decoded, and the failures.

    Attributes:
        keys: the keys of the decoded files, in the row order of ``pixels``.
        pixels: (B, ...) stacked transform outputs (None when no file of the batch decoded).
        infos: one DecodedInfo per row of ``pixels``.
        failures: files that could not be read, with the reason.
    """

    keys: list[Any] = field(default_factory=list)
    pixels: torch.Tensor | None = None
    infos: list[DecodedInfo] = field(default_factory=list)
    failures: list[DecodeFailure] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys) + len(self.failures)


class ImageFileDataset(Dataset):
    """(key, path) items → decoded, transformed tensors; unreadable files become DecodeFailure items.

    Args:
        items: (key, path) pairs; the key is returned untouched (a catalog id, an index...).
        transform: PIL RGB image → tensor (e.g. ``metric.preprocess``).
        max_pixels: decompression-bomb limit passed to ``decode_image``.
    """

    def __init__(
        self,
        items: Sequence[tuple[Any, str]],
        transform: Callable[[Image.Image], torch.Tensor],
        *,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        self.items = list(items)
        self.transform = transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Any, torch.Tensor | None, DecodedInfo | DecodeFailure]:
        key, path = self.items[i]
        try:
            dec = decode_image(path, max_pixels=self.max_pixels)
            x = self.transform(dec.image)
        except ImageDecodeError as e:
            return key, None, DecodeFailure(key, path, e.reason)
        except Exception as e:  # a transform that chokes on one odd image must not stop a long run
            return key, None, DecodeFailure(key, path, f"transform failed: {type(e).__name__}: {e}")
        return key, x, DecodedInfo(key, dec.width, dec.height, dec.format)


def collate_images(samples: list[tuple[Any, torch.Tensor | None, DecodedInfo | DecodeFailure]]) -> ImageBatch:
    """Stack the decoded samples of a batch; keep failures aside."""
    batch = ImageBatch()
    tensors = []
    for key, x, info in samples:
        if x is None:
            batch.failures.append(info)  # type: ignore[arg-type]
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


def create_loader(dataset: Dataset, *, batch_size: int = 32, workers: int = 0, prefetch: int = 2) -> DataLoader:
    """A DataLoader over ``dataset`` (in order) that yields ImageBatch objects.

    Memory stays bounded whatever the image sizes: each worker decodes one file at a time and at most
    ``workers * prefetch`` transformed batches wait in the queue.

    Args:
        dataset: usually an ImageFileDataset.
        batch_size: files per batch.
        workers: decoding processes (0: decode in this process).
        prefetch: batches each worker prepares ahead.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs["prefetch_factor"] = prefetch
        # fork shares the (unpicklable) transform closure with the workers; elsewhere it must pickle.
        if "fork" in multiprocessing.get_all_start_methods():
            kwargs["multiprocessing_context"] = "fork"
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_images,
        persistent_workers=False, **kwargs,
    )
