"""DreamSim-style perceptual metrics: one or more ViT branches → concat → centre → L2; distance = 1 - cosine."""

from __future__ import annotations

import logging

import torch
from torch import nn

from lookalike.metric._base import Metric, center_l2
from lookalike.metric._pretrained import BackboneCfg, MetricCfg
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
            raise ValueError("patch models need exactly one DINO-family branch with a 'cls' feature")
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
        self.center = bool(cfg.options.get("center", True))
        self.dim = 2 * net.extractor_list[0].dim if net.patch else net.dim

    def embed_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch models: (B, T, 768) tokens of the last block, each centred and L2-normalized (the reference's
        ``embed``)."""
        if not self.net.patch:
            raise TypeError(f"{self.name} is not a patch model; use embed()")
        x = self.check_batch(x)
        with torch.inference_mode(), self._precision():
            return center_l2(self.net(x), center=self.center)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 224, 224) in [0, 1] → (B, dim) float32 unit vectors; cosine = DreamSim similarity."""
        x = self.check_batch(x)
        with torch.inference_mode(), self._precision():
            return embedding_head(self.net(x), center=self.center, patch=self.net.patch)
