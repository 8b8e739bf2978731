"""ImageNet-R (Hendrycks et al. 2021): renditions of 200 ImageNet classes, one folder per WordNet id.

The 200 WordNet ids and their names ship with the package (``lookalike/data/_info/imagenet_r_classes.tsv``, read
with ``importlib.resources``). Labels are the position of the WordNet id in that list (0..199), so they are the same
whichever folders a copy of the dataset holds.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from lookalike.common.errors import DatasetError
from lookalike.data.image_folder import list_images

_logger = logging.getLogger(__name__)

_CLASSES_FILE = "imagenet_r_classes.tsv"


@dataclass(frozen=True)
class ImageNetRClass:
    """One ImageNet-R class.

    Attributes:
        index: label, 0..199, in ImageNet class order.
        wnid: WordNet id ("n01443537").
        name: the first WordNet lemma ("goldfish").
        lemmas: every lemma, comma-separated as WordNet gives them.
    """

    index: int
    wnid: str
    name: str
    lemmas: str


@functools.lru_cache(maxsize=1)
def imagenet_r_classes() -> tuple[ImageNetRClass, ...]:
    """The 200 ImageNet-R classes shipped with the package, in label order."""
    text = (resources.files("lookalike.data") / "_info" / _CLASSES_FILE).read_text(encoding="utf-8")
    out: list[ImageNetRClass] = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        wnid, lemmas = line.split("\t", 1)
        out.append(ImageNetRClass(len(out), wnid, lemmas.split(",")[0].strip(), lemmas))
    if len(out) != 200:
        raise RuntimeError(f"packaged {_CLASSES_FILE} lists {len(out)} classes, expected 200 (broken install?)")
    return tuple(out)


@dataclass(frozen=True)
class ImageNetRItem:
    """One image: its path and class."""

    path: str
    label: int
    wnid: str
    name: str


@dataclass(frozen=True)
class ImageNetR(Sequence[ImageNetRItem]):
    """The images of an ImageNet-R folder, in (class, natural file name) order.

    Attributes:
        root: the folder read.
        items: the images.
    """

    root: str
    items: tuple[ImageNetRItem, ...] = field(repr=False)
    name: str = "imagenet_r"
    split: str = "all"

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):  # type: ignore[no-untyped-def, override]
        return self.items[i]

    def __iter__(self) -> Iterator[ImageNetRItem]:
        return iter(self.items)

    def images(self) -> list[str]:
        return [it.path for it in self.items]

    def classes_present(self) -> list[ImageNetRClass]:
        labels = {it.label for it in self.items}
        return [c for c in imagenet_r_classes() if c.index in labels]


def read_imagenet_r(root: str | os.PathLike[str], *, strict: bool = True) -> ImageNetR:
    """Read an ImageNet-R folder (``<root>/<wnid>/*.jpg``).

    Args:
        root: the folder holding one sub-folder per WordNet id (a subset of the 200 is fine).
        strict: raise on a sub-folder that is not an ImageNet-R WordNet id (False: skip it with a warning).

    Returns:
        An ImageNetR collection.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: an unknown class folder (strict), or no images at all.
    """
    r = Path(root).expanduser()
    if not r.is_dir():
        raise FileNotFoundError(f"ImageNet-R folder {r} not found")
    by_wnid = {c.wnid: c for c in imagenet_r_classes()}
    items: list[ImageNetRItem] = []
    for d in sorted(p for p in r.iterdir() if p.is_dir() and not p.name.startswith(".")):
        c = by_wnid.get(d.name)
        if c is None:
            msg = f"{d}: folder name {d.name!r} is not one of the 200 ImageNet-R WordNet ids (e.g. 'n01443537')"
            if strict:
                raise DatasetError(msg)
            _logger.warning("%s; skipped", msg)
            continue
        for path in list_images(d):
            items.append(ImageNetRItem(path, c.index, c.wnid, c.name))
    if not items:
        raise DatasetError(f"{r}: no images in WordNet-id folders (expected <root>/n01443537/*.jpg ...)")
    items.sort(key=lambda it: it.label)  # stable: file order within a class is kept
    _logger.info("ImageNet-R: %d images in %d classes from %s", len(items), len({i.label for i in items}), r)
    return ImageNetR(os.fspath(r.resolve()), tuple(items))
