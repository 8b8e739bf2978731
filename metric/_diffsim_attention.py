"""DiffSim's attention maths: where the tensors are captured, and the aligned attention score of two images.

``project_qkv`` recomputes, from a diffusers self-attention module's input, the query, key and value it computes;
``aligned_scores`` and ``token_agreement`` compare two images' captured tensors (see ``lookalike.metric.diffsim``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lookalike.common.errors import ConfigError


def parse_block(spec: str) -> tuple[str, int | None]:
    if spec == "mid_block":
        return spec, None
    kind, _, num = spec.partition(".")
    if kind not in ("up_blocks", "down_blocks") or not num.isdigit():
        raise ConfigError(f"diffsim target_block must be 'up_blocks.N', 'down_blocks.N' or 'mid_block', got {spec!r}")
    return kind, int(num)


def target_attention(unet: nn.Module, spec: str) -> nn.Module:
    """The self-attention (``attn1``) of the last transformer block of the last attention module of ``spec``."""
    kind, num = parse_block(spec)
    try:
        block = unet.mid_block if num is None else getattr(unet, kind)[num]
        return block.attentions[-1].transformer_blocks[-1].attn1
    except (AttributeError, IndexError, TypeError):
        raise ConfigError(f"diffsim target_block {spec!r}: this UNet has no attention module there") from None


class _Captured(Exception):
    """Raised by the capture hook to stop the UNet once the tensors are taken."""


@dataclass
class DiffSimFeatures:
    """One image's captured attention tensors, each (R, heads, tokens, head_dim); R = rows of the CFG batch.

    ``o`` is SDPA(q, k, v), the image attending to itself (kept: every score needs it).
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.q, self.k, self.v, self.o))


def _cosine_flat(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cosine of the flattened rows of a batch: (n, ...) and (n, ...) → (n,) float32."""
    x = x.flatten(1).float()
    y = y.flatten(1).float()
    return F.cosine_similarity(x, y, dim=1, eps=1e-8)


def aligned_scores(fa: DiffSimFeatures, fbs: Sequence[DiffSimFeatures]) -> torch.Tensor:
    """The aligned attention score of image A against each image B: (n,) float32, in [-1, 1], higher = closer."""
    if not fbs:
        return torch.empty(0, dtype=torch.float32)
    n = len(fbs)
    kb = torch.stack([f.k for f in fbs])  # (n, R, h, T, d)
    vb = torch.stack([f.v for f in fbs])
    qb = torch.stack([f.q for f in fbs])
    ob = torch.stack([f.o for f in fbs])
    shape = (n * kb.shape[1], *kb.shape[2:])
    qa = fa.q.unsqueeze(0).expand_as(qb).reshape(shape)
    a_on_b = F.scaled_dot_product_attention(qa, kb.reshape(shape), vb.reshape(shape)).view_as(kb)
    b_on_a = F.scaled_dot_product_attention(
        qb.reshape(shape), fa.k.unsqueeze(0).expand_as(kb).reshape(shape),
        fa.v.unsqueeze(0).expand_as(vb).reshape(shape)).view_as(kb)
    s_ab = _cosine_flat(a_on_b, fa.o.unsqueeze(0).expand_as(ob))
    s_ba = _cosine_flat(b_on_a, ob)
    return (s_ab + s_ba) / 2


def token_agreement(fa: DiffSimFeatures, fb: DiffSimFeatures) -> torch.Tensor:
    """Per token of A: cosine over (rows, heads, head_dim) of SDPA(Q_A, K_B, V_B) and SDPA(Q_A, K_A, V_A) → (T,)."""
    a_on_b = F.scaled_dot_product_attention(fa.q, fb.k, fb.v).float()  # (R, h, T, d)
    own = fa.o.float()
    t = a_on_b.shape[2]
    x = a_on_b.permute(2, 0, 1, 3).reshape(t, -1)
    y = own.permute(2, 0, 1, 3).reshape(t, -1)
    return F.cosine_similarity(x, y, dim=1, eps=1e-8)


def project_qkv(attn: nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The query, key and value a diffusers self-attention computes from its input, split into heads.

    Follows the module's own steps (spatial / group norm when it has them, ``to_q``/``to_k``/``to_v``, q/k norms).

    Returns:
        (q, k, v), each (batch, heads, tokens, head_dim).
    """
    h = hidden
    if getattr(attn, "spatial_norm", None) is not None:
        raise ValueError("diffsim: attention layers with a spatial norm are not supported")
    if h.ndim == 4:
        bsz, c, hh, ww = h.shape
        h = h.view(bsz, c, hh * ww).transpose(1, 2)
    if getattr(attn, "group_norm", None) is not None:
        h = attn.group_norm(h.transpose(1, 2)).transpose(1, 2)
    bsz = h.shape[0]
    q, k, v = attn.to_q(h), attn.to_k(h), attn.to_v(h)
    heads = attn.heads
    d = k.shape[-1] // heads
    q, k, v = (t.view(bsz, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    if getattr(attn, "norm_q", None) is not None:
        q = attn.norm_q(q)
    if getattr(attn, "norm_k", None) is not None:
        k = attn.norm_k(k)
    return q, k, v
