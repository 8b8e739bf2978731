"""Config dataclasses: what a metric is made of, where its weights live, how its inputs are prepared."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


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
class PreprocessCfg:
    """PIL image → float tensor (3, size, size) in [0, 1]. Normalization (mean/std) happens inside the model."""

    size: int = 224
    interpolation: str = "bicubic"
    resize_mode: str = "squash"  # resize straight to size x size, aspect ratio not kept, no crop


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
class MetricCfg:
    """Everything that defines a registered metric. One per name; JSON files in ``metric/configs``."""

    name: str
    builder: str  # key of the builder registry ("perceptual", "efficientnet", "pixel", "lpips", ...)
    kind: str = "embedding"  # "embedding" (indexable) | "pairwise" (compares two images only)
    lower_is_better: bool = True
    description: str = ""
    backbones: tuple[str, ...] = ()
    patch: bool = False  # DreamSim patch model: distance on [CLS || mean(patch)] of per-token-normalized tokens
    adapter: str | None = None  # adapter folder name ("ensemble_lora"), relative to the weights root
    adapter_files: tuple[WeightFile, ...] = ()
    extra_files: tuple[WeightFile, ...] = ()
    preprocess: PreprocessCfg = field(default_factory=PreprocessCfg)
    options: dict[str, Any] = field(default_factory=dict)
    family: str = ""
    unit: str = "1 - cosine"

    def replace(self, **changes: Any) -> MetricCfg:
        return dataclasses.replace(self, **changes)


def _weight_file(d: dict[str, Any]) -> WeightFile:
    return WeightFile(**d)


def metric_cfg_from_dict(d: dict[str, Any]) -> MetricCfg:
    """Build a MetricCfg from a JSON-like dict (unknown keys raise TypeError with the key name)."""
    d = dict(d)
    if "preprocess" in d:
        d["preprocess"] = PreprocessCfg(**d["preprocess"])
    for key in ("adapter_files", "extra_files"):
        if key in d:
            d[key] = tuple(_weight_file(x) for x in d[key])
    if "backbones" in d:
        d["backbones"] = tuple(d["backbones"])
    return MetricCfg(**d)
