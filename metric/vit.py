"""Our own ViT tower, laid out like the DINO / DINOv2 / DreamSim-converted CLIP checkpoints.

Module names follow those files (``blocks.{i}.attn.qkv`` is the fused q,k,v Linear that LoRA targets), so the
official state dicts load with ``strict=True`` after the small renames in ``_readers.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lookalike.common.errors import InvalidArgument
from lookalike.metric._pretrained import ViTCfg


class QuickGELU(nn.Module):
    """OpenAI CLIP's activation: x * sigmoid(1.702 x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def create_act(name: str) -> nn.Module:
    acts = {"gelu": nn.GELU, "quick_gelu": QuickGELU}
    if name not in acts:
        raise InvalidArgument(f"unknown activation {name!r}; choose from {sorted(acts)}")
    return acts[name]()


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = create_act(act)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, cfg: ViTCfg):
        super().__init__()
        d = cfg.embed_dim
        self.norm1 = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.attn = Attention(d, cfg.num_heads)
        self.ls1 = LayerScale(d) if cfg.layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.mlp = Mlp(d, int(d * cfg.mlp_ratio), cfg.act)
        self.ls2 = LayerScale(d) if cfg.layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """ViT-B style tower. ``forward_tokens`` returns the last block's output (before the final norm)."""

    def __init__(self, cfg: ViTCfg):
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        grid = cfg.img_size // cfg.patch_size
        self.patch_embed = PatchEmbed(cfg.patch_size, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, d))
        self.norm_pre = nn.LayerNorm(d, eps=cfg.ln_eps) if cfg.norm_pre else nn.Identity()
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(d, eps=cfg.ln_eps)
        if cfg.proj_dim is not None:
            self.register_buffer("proj", torch.zeros(d, cfg.proj_dim))
        else:
            self.proj = None

    def interpolate_pos_embed(self, gh: int, gw: int, dtype: torch.dtype) -> torch.Tensor:
        """Position embeddings for a gh x gw patch grid.

        The stored grid is used as is when it matches; otherwise it is resampled bicubically with
        ``scale_factor = (g + 0.1) / sqrt(N)`` in float32, as DINO and DINOv2 do (DINOv2 at 224: 37 → 16).
        """
        n = self.pos_embed.shape[1] - 1
        if gh * gw == n and gh == gw:
            return self.pos_embed.to(dtype)
        pos = self.pos_embed.float()
        m = int(math.sqrt(n))
        patch = pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
        patch = F.interpolate(patch, scale_factor=((gh + 0.1) / m, (gw + 0.1) / m), mode="bicubic")
        if patch.shape[-2:] != (gh, gw):
            raise InvalidArgument(f"position grid resampled to {tuple(patch.shape[-2:])}, expected {(gh, gw)}")
        patch = patch.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
        return torch.cat([pos[:, :1], patch], dim=1).to(dtype)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalized image → (B, 1 + patches, dim), the last block's output (pre-norm)."""
        p = self.cfg.patch_size
        gh, gw = x.shape[-2] // p, x.shape[-1] // p
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = x + self.interpolate_pos_embed(gh, gw, x.dtype)
        x = self.norm_pre(x)
        for blk in self.blocks:
            x = blk(x)
        return x

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """CLIP head: ln_post on the CLS token, then ``@ proj``."""
        if self.proj is None:
            raise InvalidArgument("this tower has no projection (feature 'proj' needs proj_dim in its ViTCfg)")
        return self.norm(tokens[:, 0]) @ self.proj
