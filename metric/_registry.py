"""The one registry: metric configs, backbones, builders (with their options dataclass) and state-dict readers.

How a metric gets registered: its family module (``ensemble``, ``cnn``, ``baselines``, ``unisim``, ``classical``,
``diffsim``) defines a builder
``fn(cfg, *, device, dtype, weights) -> Metric`` with ``@register_builder(name, options=OptionsDataclass)`` and calls
``register_metric(MetricCfg(...))`` beside it. The family modules are imported on first use of the registry
(``FAMILY_MODULES``); weight files come from ``lookalike.metric.releases``.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import importlib
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from lookalike.common.errors import ConfigError, UnknownName
from lookalike.metric._pretrained import BackboneCfg, MetricCfg

_logger = logging.getLogger(__name__)

#: Modules whose import registers backbones, builders, readers and metrics, in this order.
FAMILY_MODULES = (
    "lookalike.metric._readers",
    "lookalike.metric.backbones",
    "lookalike.metric.ensemble",
    "lookalike.metric.cnn",
    "lookalike.metric.baselines",
    "lookalike.metric.unisim",
    "lookalike.metric.classical",
    "lookalike.metric.diffsim",
)

_METRICS: dict[str, MetricCfg] = {}
_BACKBONES: dict[str, BackboneCfg] = {}
_BUILDERS: dict[str, Callable[..., Any]] = {}
_OPTIONS: dict[str, type | None] = {}
_READERS: dict[str, Callable[..., Any]] = {}
_loaded = False

F = TypeVar("F", bound=Callable[..., Any])


def _typed_options(cfg: MetricCfg) -> MetricCfg:
    """``cfg`` with ``options`` as an instance of its builder's options dataclass (a dict is converted)."""
    if cfg.builder not in _BUILDERS:
        _ensure_loaded()
    if cfg.builder not in _BUILDERS:
        raise UnknownName(f"metric {cfg.name!r}: unknown builder {cfg.builder!r}; registered: {sorted(_BUILDERS)}")
    cls = _OPTIONS[cfg.builder]
    opts = cfg.options
    if cls is None:
        if opts not in (None, {}):
            raise ConfigError(f"metric {cfg.name!r}: builder {cfg.builder!r} takes no options, got {opts!r}")
        return cfg.replace(options=None)
    if isinstance(opts, cls):
        return cfg
    if opts is None:
        opts = {}
    if not isinstance(opts, dict):
        raise ConfigError(f"metric {cfg.name!r}: options must be a {cls.__name__} (or a dict of its fields), "
                          f"got {type(opts).__name__}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(opts) - fields)
    if unknown:
        raise ConfigError(f"metric {cfg.name!r}: unknown option(s) {unknown} for builder {cfg.builder!r}; "
                          f"valid: {sorted(fields)}")
    try:
        typed = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in opts.items()})
    except TypeError as e:
        raise ConfigError(f"metric {cfg.name!r}: {e}") from None
    return cfg.replace(options=typed)


def with_options(cfg: MetricCfg, overrides: dict[str, Any]) -> MetricCfg:
    """``cfg`` with some of its builder's options replaced (``dataclasses.replace``), checked like a registration.

    Raises:
        ConfigError: an option the builder does not have, or a builder without options.
    """
    base: Any = cfg.options if cfg.options is not None else {}
    if dataclasses.is_dataclass(base) and not isinstance(base, type):
        current = dataclasses.asdict(base)
    else:
        current = dict(base)
    return _typed_options(cfg.replace(options={**current, **overrides}))


def register_metric(cfg: MetricCfg, *, overwrite: bool = False) -> MetricCfg:
    """Register a metric config under ``cfg.name``.

    ``cfg.options`` may be the builder's options dataclass, a dict of its fields, or None (its defaults).

    Returns:
        The registered config (options typed).

    Raises:
        KeyError: the name is taken (unless ``overwrite``), or the builder is unknown.
        ConfigError: an unknown option name, or options of the wrong type.
    """
    if cfg.name in _METRICS and not overwrite:
        raise KeyError(f"metric {cfg.name!r} is already registered")
    cfg = _typed_options(cfg)
    _METRICS[cfg.name] = cfg
    return cfg


def unregister_metric(name: str) -> None:
    """Remove a metric from the registry (a no-op for an unknown name)."""
    _METRICS.pop(name, None)


def register_backbone(cfg: BackboneCfg, *, overwrite: bool = False) -> BackboneCfg:
    """Register a ViT tower under ``cfg.name`` (KeyError on a duplicate unless ``overwrite``)."""
    if cfg.name in _BACKBONES and not overwrite:
        raise KeyError(f"backbone {cfg.name!r} is already registered")
    _BACKBONES[cfg.name] = cfg
    return cfg


def register_builder(name: str, *, options: type | None = None) -> Callable[[F], F]:
    """Decorator: ``@register_builder("perceptual", options=PerceptualOptions)`` on
    ``fn(cfg, *, device, dtype, weights) -> Metric``; ``options`` is the dataclass of the builder's options (None:
    it takes none)."""
    if options is not None and not dataclasses.is_dataclass(options):
        raise TypeError(f"builder {name!r}: options must be a dataclass, got {options!r}")

    def deco(fn: F) -> F:
        _BUILDERS[name] = fn
        _OPTIONS[name] = options
        return fn

    return deco


def register_reader(name: str) -> Callable[[F], F]:
    """Decorator for state-dict readers: ``fn(path) -> state_dict`` in our ViT key names."""

    def deco(fn: F) -> F:
        _READERS[name] = fn
        return fn

    return deco


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in FAMILY_MODULES:
        importlib.import_module(mod)


def snapshot() -> tuple[dict[str, MetricCfg], dict[str, BackboneCfg]]:
    """Copies of the metric and backbone tables (``restore`` puts them back; for tests)."""
    _ensure_loaded()
    return dict(_METRICS), dict(_BACKBONES)


def restore(state: tuple[dict[str, MetricCfg], dict[str, BackboneCfg]]) -> None:
    """Put back the tables ``snapshot`` copied: metrics and backbones registered since are dropped."""
    metrics, backbones = state
    _METRICS.clear()
    _METRICS.update(metrics)
    _BACKBONES.clear()
    _BACKBONES.update(backbones)


def list_metrics(pattern: str = "*", *, kind: str | None = None, include_test: bool = False) -> list[str]:
    """Names of registered metrics matching a glob ``pattern``, optionally only one ``kind``.

    Args:
        pattern: a glob over names ("dreamsim*").
        kind: "embedding" or "pairwise" to keep only that kind.
        include_test: also list the test-only registrations (family "test", such as ``test_vit_tiny``), which are
            hidden from users but load by name like any other.

    Returns:
        Sorted names.
    """
    _ensure_loaded()
    names = [n for n in _METRICS if fnmatch.fnmatch(n, pattern) and (include_test or not _METRICS[n].test_only)]
    if kind is not None:
        names = [n for n in names if _METRICS[n].kind == kind]
    return sorted(names)


def is_metric(name: str) -> bool:
    _ensure_loaded()
    return name in _METRICS


def get_metric_cfg(name: str) -> MetricCfg:
    """The config registered under ``name``.

    Raises:
        UnknownName: unknown name; the message lists close matches.
    """
    _ensure_loaded()
    try:
        return _METRICS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_METRICS), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownName(f"unknown metric {name!r}.{hint}", hint="'lookalike info' lists the metrics") from None


def get_metric_dim(cfg: MetricCfg) -> int | None:
    """The embedding width of ``cfg`` without building it (None for pairwise metrics)."""
    if cfg.kind != "embedding":
        return None
    if cfg.backbones:
        dims = [get_backbone_cfg(b).feature_dim for b in cfg.backbones]
        return 2 * dims[0] if cfg.patch else sum(dims)
    return cfg.dim


def get_backbone_cfg(name: str) -> BackboneCfg:
    _ensure_loaded()
    try:
        return _BACKBONES[name]
    except KeyError:
        raise UnknownName(f"unknown backbone {name!r}; registered: {sorted(_BACKBONES)}") from None


def get_builder(name: str) -> Callable[..., Any]:
    _ensure_loaded()
    try:
        return _BUILDERS[name]
    except KeyError:
        raise UnknownName(f"unknown metric builder {name!r}; registered: {sorted(_BUILDERS)}") from None


def get_reader(name: str) -> Callable[..., Any]:
    _ensure_loaded()
    try:
        return _READERS[name]
    except KeyError:
        raise UnknownName(f"unknown weight format {name!r}; registered: {sorted(_READERS)}") from None
