"""The one registry: metric configs, backbones, builders and state-dict readers, all keyed by name."""

from __future__ import annotations

import difflib
import fnmatch
import json
import logging
from collections.abc import Callable
from importlib import resources
from typing import Any, TypeVar

from lookalike.metric._pretrained import BackboneCfg, MetricCfg, metric_cfg_from_dict

_logger = logging.getLogger(__name__)

_METRICS: dict[str, MetricCfg] = {}
_BACKBONES: dict[str, BackboneCfg] = {}
_BUILDERS: dict[str, Callable[..., Any]] = {}
_READERS: dict[str, Callable[..., Any]] = {}
_configs_loaded = False

F = TypeVar("F", bound=Callable[..., Any])


def register_metric(cfg: MetricCfg, *, overwrite: bool = False) -> MetricCfg:
    """Register a metric config under ``cfg.name`` (raises KeyError on a duplicate unless ``overwrite``)."""
    if cfg.name in _METRICS and not overwrite:
        raise KeyError(f"metric {cfg.name!r} is already registered")
    _METRICS[cfg.name] = cfg
    return cfg


def register_backbone(cfg: BackboneCfg) -> BackboneCfg:
    if cfg.name in _BACKBONES:
        raise KeyError(f"backbone {cfg.name!r} is already registered")
    _BACKBONES[cfg.name] = cfg
    return cfg


def register_builder(name: str) -> Callable[[F], F]:
    """Decorator: ``@register_builder("perceptual")`` on ``fn(cfg, *, device, dtype, weights) -> Metric``."""

    def deco(fn: F) -> F:
        _BUILDERS[name] = fn
        return fn

    return deco


def register_reader(name: str) -> Callable[[F], F]:
    """Decorator for state-dict readers: ``fn(path) -> (state_dict, extras)`` in our ViT key names."""

    def deco(fn: F) -> F:
        _READERS[name] = fn
        return fn

    return deco


def _load_packaged_configs() -> None:
    global _configs_loaded
    if _configs_loaded:
        return
    _configs_loaded = True
    folder = resources.files("lookalike.metric") / "configs"
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if not entry.name.endswith(".json"):
            continue
        data = json.loads(entry.read_text(encoding="utf-8"))
        for item in data if isinstance(data, list) else [data]:
            try:
                register_metric(metric_cfg_from_dict(item), overwrite=True)
            except TypeError as e:
                raise ValueError(f"bad metric config in {entry.name}: {e}") from e


def _ensure_loaded() -> None:
    # Importing the builders module registers backbones, builders and readers.
    import lookalike.metric._builders  # noqa: F401

    _load_packaged_configs()


def list_metrics(pattern: str = "*", *, kind: str | None = None) -> list[str]:
    """Names of registered metrics matching a glob ``pattern``, optionally only one ``kind``."""
    _ensure_loaded()
    names = [n for n in _METRICS if fnmatch.fnmatch(n, pattern)]
    if kind is not None:
        names = [n for n in names if _METRICS[n].kind == kind]
    return sorted(names)


def is_metric(name: str) -> bool:
    _ensure_loaded()
    return name in _METRICS


def get_metric_cfg(name: str) -> MetricCfg:
    """The config registered under ``name``.

    Raises:
        KeyError: unknown name; the message lists close matches.
    """
    _ensure_loaded()
    try:
        return _METRICS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_METRICS), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(f"unknown metric {name!r}.{hint} Run 'lookalike info' for the list.") from None


def get_backbone_cfg(name: str) -> BackboneCfg:
    _ensure_loaded()
    try:
        return _BACKBONES[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; registered: {sorted(_BACKBONES)}") from None


def get_builder(name: str) -> Callable[..., Any]:
    _ensure_loaded()
    try:
        return _BUILDERS[name]
    except KeyError:
        raise KeyError(f"unknown metric builder {name!r}; registered: {sorted(_BUILDERS)}") from None


def get_reader(name: str) -> Callable[..., Any]:
    _ensure_loaded()
    try:
        return _READERS[name]
    except KeyError:
        raise KeyError(f"unknown weight format {name!r}; registered: {sorted(_READERS)}") from None
