"""DreamSim-style perceptual metrics: one or more ViT branches → concat → centre → L2; distance = 1 - cosine.

Holds the "perceptual" builder and the registrations of every metric it builds: the DreamSim ensemble and its
single-branch and patch variants, the raw backbones without LoRA, and the tiny random ``test_vit_tiny``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lookalike.common.errors import InvalidArgument
from lookalike.metric._base import Metric, center_l2, compute_fingerprint
from lookalike.metric._builders import finish_module, load_state_dict_strict, required_files, seeded_init
from lookalike.metric._hub import resolve_files
from lookalike.metric._pretrained import BackboneCfg, MetricCfg
from lookalike.metric._registry import get_backbone_cfg, get_reader, register_builder, register_metric
from lookalike.metric.lora import ADAPTER_CONFIG, merge_adapter
from lookalike.metric.releases import adapter_files
from lookalike.metric.vit import VisionTransformer

_logger = logging.getLogger(__name__)


class Extractor(nn.Module):
    """One branch: normalize with the backbone's mean/std, run the tower, read its feature.

    The attribute path ``extractor_list.{k}.model.blocks.{i}.attn.qkv`` matches the reference, so the official
    peft adapters apply to this module tree unchanged.
    """

    def __init__(self, cfg: BackboneCfg):
        super().__init__()
        self.backbone = cfg.name
        self.feature = cfg.feature
        self.model = VisionTransformer(cfg.vit)
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1))

    @property
    def dim(self) -> int:
        return self.model.proj.shape[1] if self.feature == "proj" else self.model.cfg.embed_dim

    def forward(self, x: torch.Tensor, *, tokens: bool = False) -> torch.Tensor:
        x = ((x - self.mean) / self.std).to(self.model.patch_embed.proj.weight.dtype)
        t = self.model.forward_tokens(x)
        if self.feature == "proj":
            return self.model.project(t)
        return t if tokens else t[:, 0]


class PerceptualNet(nn.Module):
    """The raw (unnormalized) features of all branches, concatenated in config order."""

    def __init__(self, backbones: list[BackboneCfg], *, patch: bool = False):
        super().__init__()
        if patch and (len(backbones) != 1 or backbones[0].feature != "cls"):
            raise InvalidArgument("patch models need exactly one DINO-family branch with a 'cls' feature")
        self.patch = patch
        self.extractor_list = nn.ModuleList([Extractor(b) for b in backbones])

    @property
    def dim(self) -> int:
        return sum(e.dim for e in self.extractor_list)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.patch:
            return self.extractor_list[0](x, tokens=True)  # (B, T, 768)
        return torch.cat([e(x).float() for e in self.extractor_list], dim=-1)


def embedding_head(feats: torch.Tensor, *, center: bool, patch: bool) -> torch.Tensor:
    """Raw branch features → the metric's unit embedding; shared by inference (``PerceptualMetric.embed``) and
    LoRA training (``lookalike.judge.train``), so the two never drift apart.

    Args:
        feats: ``PerceptualNet`` output: (B, D) concatenated features, or (B, T, 768) tokens for patch models.
        center: subtract each embedding's mean over its entries before L2 (DreamSim's default).
        patch: ``feats`` are tokens: each token is (centred and) L2-normalized, then [CLS || mean(patch)] is
            L2-normalized.

    Returns:
        (B, dim) float32 unit vectors.
    """
    if patch:
        tok = center_l2(feats, center=center)
        return center_l2(torch.cat([tok[:, 0], tok[:, 1:].mean(dim=1)], dim=-1), center=False)
    return center_l2(feats, center=center)


class PerceptualMetric(Metric):
    """DreamSim and its single-branch / raw-backbone relatives.

    ``embed`` gives the reference's embedding (centred over its own entries, then L2-normalized). For patch models
    ``embed_tokens`` gives the reference's per-token output (B, T, 768) and ``embed`` the L2-normalized
    [CLS || mean(patch)] vector (1536-d) whose cosine is the reference distance.
    """

    def __init__(self, cfg: MetricCfg, net: PerceptualNet, **kw: object):
        super().__init__(cfg, **kw)  # type: ignore[arg-type]
        self.net = net
        self.center = (cfg.options or PerceptualOptions()).center
        self.dim = 2 * net.extractor_list[0].dim if net.patch else net.dim

    def embed_tokens(self, x: torch.Tensor, *, center: bool | None = None) -> torch.Tensor:
        """Patch models: (B, T, 768) tokens of the last block, each (centred and) L2-normalized (the reference's
        ``embed``); ``center`` None uses ``self.center``."""
        if not self.net.patch:
            raise TypeError(f"{self.name} is not a patch model; use embed()")
        x = self.check_batch(x)
        with torch.inference_mode(), self._precision():
            return center_l2(self.net(x), center=self.center if center is None else center)

    def embed(self, x: torch.Tensor, *, center: bool | None = None) -> torch.Tensor:
        """(B, 3, 224, 224) in [0, 1] → (B, dim) float32 unit vectors; cosine = DreamSim similarity.

        ``center`` overrides the metric's mean-centring for this call only (None: ``self.center``); the model itself
        is never changed, so one loaded metric can serve callers that want either.
        """
        x = self.check_batch(x)
        with torch.inference_mode(), self._precision():
            return embedding_head(self.net(x), center=self.center if center is None else center,
                                  patch=self.net.patch)


@dataclass(frozen=True)
class PerceptualOptions:
    """Options of the "perceptual" builder.

    Attributes:
        center: mean-centre each embedding before L2 (DreamSim's default; the paper's 2AFC numbers use False).
        seed: seed of the random init of towers without a weight file (test models).
    """

    center: bool = True
    seed: int = 0


def build_perceptual_net(cfg: MetricCfg, weights: str | Path | None = None, *, with_adapter: bool = True
                         ) -> tuple[PerceptualNet, dict[str, Path]]:
    """The fp32 CPU ``PerceptualNet`` of a perceptual metric with its base weights loaded.

    Args:
        cfg: a config with ``builder == "perceptual"``.
        weights: optional folder searched first for the weight files.
        with_adapter: merge the config's LoRA adapter into the qkv weights (False: the raw backbones, e.g. as the
            starting point of LoRA training).

    Returns:
        (net in train mode with gradients enabled, {relative path: resolved file}).
    """
    opts: PerceptualOptions = cfg.options or PerceptualOptions()
    bcfgs = [get_backbone_cfg(n) for n in cfg.backbones]
    files = required_files(cfg) if with_adapter else [b.weights for b in bcfgs if b.weights is not None]
    paths = resolve_files(cfg.name, files, weights) if files else {}
    net = PerceptualNet(bcfgs, patch=cfg.patch)
    for k, (ext, b) in enumerate(zip(net.extractor_list, bcfgs, strict=True)):
        if b.weights is None:
            seeded_init(ext.model, opts.seed + k)
        else:
            path = paths[b.weights.path]
            load_state_dict_strict(ext.model, get_reader(b.weight_format)(path), path)
    if with_adapter and cfg.adapter:
        merge_adapter(net.extractor_list, paths[f"{cfg.adapter}/{ADAPTER_CONFIG}"].parent)
    return net, paths


@register_builder("perceptual", options=PerceptualOptions)
def build_perceptual(cfg: MetricCfg, *, device: torch.device, dtype: torch.dtype,
                     weights: str | Path | None) -> Metric:
    """DreamSim and its relatives: registered ViT towers (+ a LoRA adapter), concat → centre → L2."""
    net, paths = build_perceptual_net(cfg, weights)
    opts: PerceptualOptions = cfg.options or PerceptualOptions()
    fingerprint = compute_fingerprint(cfg, paths) if paths else f"{cfg.name}-seed{opts.seed}"
    finish_module(net, device, dtype)
    return PerceptualMetric(cfg, net, device=device, dtype=dtype, fingerprint=fingerprint)


# --- registrations -------------------------------------------------------------------------------------------------

def _dreamsim(name: str, variant: str, backbones: tuple[str, ...], description: str, *, patch: bool = False) -> None:
    files = adapter_files(variant)
    register_metric(MetricCfg(name=name, builder="perceptual", family="dreamsim", description=description,
                              backbones=backbones, patch=patch, adapter=files[0].path.split("/")[0],
                              adapter_files=files))


_dreamsim("dreamsim", "ensemble", ("dino_vitb16", "clip_vitb16", "open_clip_vitb16"),
          "DreamSim ensemble (DINO + CLIP + OpenCLIP ViT-B/16, LoRA on NIGHTS), 1792-d; the default")
_dreamsim("dreamsim_dino_vitb16", "dino_vitb16", ("dino_vitb16",),
          "DreamSim single branch: DINO ViT-B/16 + LoRA, 768-d")
_dreamsim("dreamsim_clip_vitb32", "clip_vitb32", ("clip_vitb32",),
          "DreamSim single branch: CLIP ViT-B/32 + LoRA, 512-d")
_dreamsim("dreamsim_open_clip_vitb32", "open_clip_vitb32", ("open_clip_vitb32",),
          "DreamSim single branch: OpenCLIP ViT-B/32 + LoRA, 512-d")
_dreamsim("dreamsim_dinov2_vitb14", "dinov2_vitb14", ("dinov2_vitb14",),
          "DreamSim single branch: DINOv2 ViT-B/14 + LoRA, 768-d")
_dreamsim("dreamsim_synclr_vitb16", "synclr_vitb16", ("synclr_vitb16",),
          "DreamSim single branch: SynCLR ViT-B/16 + LoRA, 768-d")
_dreamsim("dreamsim_dino_vitb16_patch", "dino_vitb16_patch", ("dino_vitb16",),
          "DreamSim patch model: DINO ViT-B/16, [CLS || mean patch] 1536-d", patch=True)
_dreamsim("dreamsim_dinov2_vitb14_patch", "dinov2_vitb14_patch", ("dinov2_vitb14",),
          "DreamSim patch model: DINOv2 ViT-B/14, [CLS || mean patch] 1536-d", patch=True)

for _name, _desc in (
    ("dino_vitb16", "DINO ViT-B/16 without LoRA (pre-norm CLS), 768-d"),
    ("dinov2_vitb14", "DINOv2 ViT-B/14 without LoRA (pre-norm CLS), 768-d"),
    ("synclr_vitb16", "SynCLR ViT-B/16 without LoRA (pre-norm CLS), 768-d"),
    ("clip_vitb16", "OpenAI CLIP ViT-B/16 image embedding, 512-d"),
    ("clip_vitb32", "OpenAI CLIP ViT-B/32 image embedding, 512-d"),
    ("open_clip_vitb16", "OpenCLIP ViT-B/16 (LAION-400M) image embedding, 512-d"),
    ("open_clip_vitb32", "OpenCLIP ViT-B/32 (LAION-400M) image embedding, 512-d"),
):
    register_metric(MetricCfg(name=_name, builder="perceptual", family="backbone", backbones=(_name,),
                              description=f"{_desc}; centred + L2, 1 - cosine"))

register_metric(MetricCfg(name="test_vit_tiny", builder="perceptual", family="test",
                          backbones=("test_vit_tiny", "test_clip_tiny"), options=PerceptualOptions(seed=0),
                          description="random tiny 2-branch ViT ensemble (seeded, no files); for tests and plumbing"))
