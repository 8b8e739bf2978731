"""``create_dataset(name, root, split)``: one entry point over the dataset readers, with lazy imports.

Names: ``nights``, ``bapps`` (BAPPS 2AFC folders), ``bapps_jnd``, ``triplets`` (a ``ref,left,right,p`` CSV),
``pairs`` (an ``a,b,same`` CSV) and ``imagenet_r``.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from typing import Any

from lookalike.common.errors import DatasetError, UnknownName

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset reader: ``module.reader(root, split)`` and ``module.splits(root)`` (the splits to report)."""

    name: str
    module: str
    reader: str
    splits: str | None  # "module:function" listing the splits of a given root; None: one split only
    kind: str  # "triplets", "pairs" or "images"
    description: str


_DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Register a dataset reader under ``spec.name`` (KeyError on a duplicate)."""
    if spec.name in _DATASETS:
        raise UnknownName(f"dataset {spec.name!r} is already registered")
    _DATASETS[spec.name] = spec
    return spec


_HERE = "lookalike.data.datasets"
_TRIPLETS = "lookalike.data.triplets"

for _spec in (
    DatasetSpec("nights", "lookalike.data.nights", "read_nights", _HERE + ":_nights_splits", "triplets",
                "NIGHTS 2AFC triplets (folder with data.csv; votes >= 6)"),
    DatasetSpec("bapps", _TRIPLETS, "read_bapps_2afc", _HERE + ":_bapps_2afc_splits", "triplets",
                "BAPPS 2AFC folders (ref/ p0/ p1/ judge/)"),
    DatasetSpec("bapps_jnd", _TRIPLETS, "read_bapps_jnd", _HERE + ":_bapps_jnd_splits", "pairs",
                "BAPPS JND folders (p0/ p1/ same/)"),
    DatasetSpec("triplets", _TRIPLETS, "read_triplet_csv", _TRIPLETS + ":triplet_csv_splits", "triplets",
                "triplet CSV ref,left,right,p (p = fraction judging right closer)"),
    DatasetSpec("pairs", _HERE, "_read_pairs", None, "pairs",
                "pairs CSV a,b,same (same in [0, 1])"),
    DatasetSpec("imagenet_r", _HERE, "_read_imagenet_r", None, "images",
                "ImageNet-R, one folder per WordNet id"),
):
    register_dataset(_spec)


def list_datasets(kind: str | None = None) -> list[str]:
    """Registered dataset names, optionally only one ``kind`` ("triplets", "pairs", "images")."""
    return sorted(n for n, s in _DATASETS.items() if kind is None or s.kind == kind)


def get_dataset_spec(name: str) -> DatasetSpec:
    """The spec registered under ``name`` (KeyError listing the names otherwise)."""
    try:
        return _DATASETS[name]
    except KeyError:
        raise UnknownName(f"unknown dataset {name!r}; choose from {', '.join(sorted(_DATASETS))}") from None


def _function(module: str, attr: str) -> Any:
    return getattr(importlib.import_module(module), attr)


def create_dataset(name: str, root: str | os.PathLike[str], split: str | None = None, **kwargs: Any) -> Any:
    """Read a dataset.

    Args:
        name: a name from ``list_datasets()``.
        root: its folder (or CSV file for "triplets" / "pairs").
        split: the split (None: the reader's default: NIGHTS "test", the only BAPPS subset, every CSV row).
        **kwargs: reader options (e.g. ``min_votes`` for NIGHTS).

    Returns:
        A TripletSet, PairSet or ImageNetR.

    Raises:
        KeyError: unknown name. FileNotFoundError / ValueError: from the reader, naming the file and row.
    """
    spec = get_dataset_spec(name)
    fn = _function(spec.module, spec.reader)
    if split is None:
        return fn(root, **kwargs)
    return fn(root, split, **kwargs)


def list_splits(name: str, root: str | os.PathLike[str]) -> list[str]:
    """The splits of dataset ``name`` at ``root`` that an evaluation reports by default."""
    spec = get_dataset_spec(name)
    if spec.splits is None:
        return ["all"]
    module, attr = spec.splits.split(":")
    return list(_function(module, attr)(root))


def _nights_splits(root: str | os.PathLike[str]) -> list[str]:
    from lookalike.data.nights import NIGHTS_EVAL_SPLITS

    return list(NIGHTS_EVAL_SPLITS)


def _bapps_2afc_splits(root: str | os.PathLike[str]) -> list[str]:
    from lookalike.data.triplets import bapps_splits

    return bapps_splits(root, "2afc")


def _bapps_jnd_splits(root: str | os.PathLike[str]) -> list[str]:
    from lookalike.data.triplets import bapps_splits

    return bapps_splits(root, "jnd")


def _read_pairs(root: str | os.PathLike[str], split: str | None = None, **kwargs: Any) -> Any:
    from lookalike.data.triplets import read_pairs_csv

    if split not in (None, "all"):
        raise DatasetError(f"a pairs CSV has no splits (got split={split!r})")
    return read_pairs_csv(root, **kwargs)


def _read_imagenet_r(root: str | os.PathLike[str], split: str | None = None, **kwargs: Any) -> Any:
    from lookalike.data.imagenet_r import read_imagenet_r

    if split not in (None, "all"):
        raise DatasetError(f"ImageNet-R has no splits (got split={split!r})")
    return read_imagenet_r(root, **kwargs)
