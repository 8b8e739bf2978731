"""Config dataclasses: what a metric is made of, where its weights live, how its inputs are prepared.

A metric is one ``MetricCfg``, registered in Python beside its builder (``register_metric``). Its ``options`` are an
instance of the builder's own options dataclass (``register_builder(name, options=...)``), so a misspelt option is
an error, not a silent default. Weight files come from the one table in ``lookalike.metric.releases``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from lookalike.common.errors import ConfigError
from lookalike.data.transforms import PreprocessCfg

__all__ = ["BackboneCfg", "MetricCfg", "PreprocessCfg", "ViTCfg", "WeightFile", "metric_cfg_from_dict"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: The family of test-only registrations (random toy models): hidden from listings, still loadable by name.
TEST_FAMILY = "test"


@dataclass(frozen=True)
class WeightFile:
    """One file a metric needs.

    ``path`` is relative: to an explicit ``weights=`` folder, or to ``$LOOKALIKE_HOME/<cache_subdir>``.
    The file comes either straight from ``url`` or, when ``archive_url`` is set, as member ``member``
    (default: ``path``) of the zip at ``archive_url``. ``package`` ("module:relative/path") names a file shipped
    inside an installed Python package, looked up after the explicit folder and the cache.
    """

    path: str
    url: str | None = None
    archive_url: str | None = None
    member: str | None = None
    sha256: str | None = None
    size: int | None = None
    cache_subdir: str = "dreamsim"
    package: str | None = None

    @property
    def source(self) -> str | None:
        return self.archive_url or self.url


@dataclass(frozen=True)
class ViTCfg:
    """A ViT-Base-like tower and how to read its feature."""

    patch_size: int = 16
    img_size: int = 224
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    act: str = "gelu"  # "gelu" | "quick_gelu"
    ln_eps: float = 1e-6
    norm_pre: bool = False  # CLIP's ln_pre (stored as ``pos_drop`` in DreamSim files)
    layer_scale: bool = False  # DINOv2 LayerScale (ls1/ls2)
    proj_dim: int | None = None  # CLIP projection width (feature "proj")


@dataclass(frozen=True)
class BackboneCfg:
    """A registered backbone: architecture, input normalization, weight file and its on-disk format."""

    name: str
    arch: str  # key of the architecture registry ("vit")
    vit: ViTCfg
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights: WeightFile | None
    weight_format: str  # key of the state-dict reader registry
    feature: str  # "cls" (pre-norm CLS of the last block) | "proj" (ln_post CLS @ proj)
    description: str = ""

    @property
    def feature_dim(self) -> int:
        if self.feature == "proj":
            assert self.vit.proj_dim is not None
            return self.vit.proj_dim
        return self.vit.embed_dim


@dataclass(frozen=True)
class DedupTiersCfg:
    """Distances (1 - cosine) that separate a metric's near copies from similar photos, measured on real photo edits.

    Attributes:
        near: largest distance of a near copy (resized, re-encoded, lightly cropped or recoloured).
        similar: a larger distance that also links other views of the same scene, short of unrelated photos.
        measured: how the numbers were measured (the command), shown with every dedup report.
    """

    near: float
    similar: float | None = None
    measured: str = ""


@dataclass(frozen=True)
class MetricCfg:
    """Everything that defines a registered metric; one per name.

    Attributes:
        name: the registry name.
        builder: key of the builder registry ("perceptual", "timm_efficientnet", "pixel", "lpips", "open_clip").
        kind: "embedding" (indexable) | "pairwise" (compares two images only).
        lower_is_better: True when a lower distance means more similar.
        description: one line for ``lookalike info``.
        backbones: registered ViT towers (perceptual metrics), concatenated in this order.
        patch: DreamSim patch model: distance on [CLS || mean(patch)] of per-token-normalized tokens.
        adapter: LoRA adapter folder name ("ensemble_lora"), relative to the weights root.
        adapter_files: the adapter's files.
        extra_files: other weight files the builder reads, in the order it expects.
        preprocess: image → input tensor (size, interpolation, resize mode, mean/std).
        options: the builder's options dataclass (None: its defaults; a dict is converted and checked on
            registration).
        dim: embedding width when it does not follow from ``backbones`` (None for pairwise metrics).
        family: grouping for listings ("dreamsim", "backbone", "cnn", "baseline", ...); the family ``"test"`` marks
            a test-only registration (random weights), which ``list_metrics()`` leaves out unless asked.
        unit: what the distance is measured in.
        auto_bf16: whether ``dtype="auto"`` may run this metric in bf16 where the hardware has it (False for a
            metric whose bf16 embeddings measurably change search results: ``bench/precision.py``).
        dedup_tiers: where its near copies end (``bench/dedup_tiers.py``); None: not measured.
    """

    name: str
    builder: str
    kind: str = "embedding"
    lower_is_better: bool = True
    description: str = ""
    backbones: tuple[str, ...] = ()
    patch: bool = False
    adapter: str | None = None
    adapter_files: tuple[WeightFile, ...] = ()
    extra_files: tuple[WeightFile, ...] = ()
    preprocess: PreprocessCfg = field(default_factory=PreprocessCfg)
    options: Any = None
    dim: int | None = None
    family: str = ""
    unit: str = "1 - cosine"
    auto_bf16: bool = True
    dedup_tiers: DedupTiersCfg | None = None

    def replace(self, **changes: Any) -> MetricCfg:
        return dataclasses.replace(self, **changes)

    @property
    def test_only(self) -> bool:
        """A test-only registration (family ``"test"``): loadable by name, never listed for users."""
        return self.family == TEST_FAMILY


def _build(cls: type, d: Any, what: str) -> Any:
    if isinstance(d, cls):
        return d
    if not isinstance(d, dict):
        raise ConfigError(f"{what} must be a mapping, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"{what}: unknown key(s) {unknown}; valid keys: {sorted(names)}")
    try:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
    except TypeError as e:
        raise ConfigError(f"{what}: {e}") from None


def metric_cfg_from_dict(d: dict[str, Any]) -> MetricCfg:
    """A MetricCfg from a JSON-like dict (a user's metric file); unknown keys raise ConfigError naming them.

    ``options`` stays a dict here; ``register_metric`` turns it into the builder's options dataclass.
    """
    d = dict(d)
    if "preprocess" in d:
        d["preprocess"] = _build(PreprocessCfg, d["preprocess"], "preprocess")
    for key in ("adapter_files", "extra_files"):
        if key in d:
            d[key] = tuple(_build(WeightFile, x, key) for x in d[key])
    if "backbones" in d:
        d["backbones"] = tuple(d["backbones"])
    if d.get("dedup_tiers") is not None:
        d["dedup_tiers"] = _build(DedupTiersCfg, d["dedup_tiers"], "dedup_tiers")
    options = d.pop("options", None)
    cfg = _build(MetricCfg, d, f"metric {d.get('name', '?')!r}")
    return cfg.replace(options=options) if options is not None else cfg
