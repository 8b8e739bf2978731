"""The registered ViT towers (design/dreamsim-spec.md §5): architecture, normalization, weights, feature tap.

The metrics built from them are registered beside their builder in ``lookalike.metric.ensemble``; the weight files
come from the table in ``lookalike.metric.releases``.
"""

from __future__ import annotations

from lookalike.metric._pretrained import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    BackboneCfg,
    ViTCfg,
)
from lookalike.metric._registry import register_backbone
from lookalike.metric.releases import release_file

_DINO = ViTCfg(patch_size=16, act="gelu", ln_eps=1e-6)
_CLIP16 = ViTCfg(patch_size=16, act="quick_gelu", ln_eps=1e-5, norm_pre=True, proj_dim=512)
_CLIP32 = ViTCfg(patch_size=32, act="quick_gelu", ln_eps=1e-5, norm_pre=True, proj_dim=512)
_OPEN_CLIP16 = ViTCfg(patch_size=16, act="gelu", ln_eps=1e-5, norm_pre=True, proj_dim=512)
_OPEN_CLIP32 = ViTCfg(patch_size=32, act="gelu", ln_eps=1e-5, norm_pre=True, proj_dim=512)
_DINOV2 = ViTCfg(patch_size=14, img_size=518, act="gelu", ln_eps=1e-6, layer_scale=True)

register_backbone(
    BackboneCfg(
        name="dino_vitb16",
        arch="vit",
        vit=_DINO,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        weights=release_file("checkpoints/dino_vitbase16_pretrain.pth"),
        weight_format="dino_hub",
        feature="cls",
        description="DINO ViT-B/16 (Caron et al. 2021); CLS of the last block before the final norm",
    )
)
register_backbone(
    BackboneCfg(
        name="dinov2_vitb14",
        arch="vit",
        vit=_DINOV2,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        weights=release_file("checkpoints/dinov2_vitb14_pretrain.pth"),
        weight_format="dinov2_hub",
        feature="cls",
        description="DINOv2 ViT-B/14 at 224 (37x37 positions resampled to 16x16); pre-norm CLS",
    )
)
register_backbone(
    BackboneCfg(
        name="synclr_vitb16",
        arch="vit",
        vit=_DINO,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        weights=release_file("synclr_vit_b_16.pth"),
        weight_format="synclr",
        feature="cls",
        description="SynCLR ViT-B/16 (from the DreamSim release zip); pre-norm CLS",
    )
)
for _name, _vit, _desc in (
    ("clip_vitb16", _CLIP16, "OpenAI CLIP ViT-B/16"),
    ("clip_vitb32", _CLIP32, "OpenAI CLIP ViT-B/32"),
    ("open_clip_vitb16", _OPEN_CLIP16, "OpenCLIP ViT-B/16 (LAION-400M)"),
    ("open_clip_vitb32", _OPEN_CLIP32, "OpenCLIP ViT-B/32 (LAION-400M, exact GELU)"),
):
    register_backbone(
        BackboneCfg(
            name=_name,
            arch="vit",
            vit=_vit,
            mean=OPENAI_CLIP_MEAN,
            std=OPENAI_CLIP_STD,
            weights=release_file(f"{_name}_pretrain.pth.tar"),
            weight_format="dreamsim_clip",
            feature="proj",
            description=f"{_desc} image tower as converted by DreamSim; ln_post CLS @ proj (512-d)",
        )
    )

# Tiny random-init towers for tests and plumbing (no weight file; deterministic seeded init).
register_backbone(
    BackboneCfg(
        name="test_vit_tiny",
        arch="vit",
        vit=ViTCfg(patch_size=16, embed_dim=192, depth=4, num_heads=3, act="gelu", ln_eps=1e-6),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        weights=None,
        weight_format="none",
        feature="cls",
        description="random ViT-Ti (4 blocks), DINO-style CLS feature; for tests",
    )
)
register_backbone(
    BackboneCfg(
        name="test_clip_tiny",
        arch="vit",
        vit=ViTCfg(patch_size=32, embed_dim=192, depth=4, num_heads=3, act="quick_gelu", ln_eps=1e-5,
                   norm_pre=True, proj_dim=64),
        mean=OPENAI_CLIP_MEAN,
        std=OPENAI_CLIP_STD,
        weights=None,
        weight_format="none",
        feature="proj",
        description="random CLIP-style ViT-Ti/32 (4 blocks) with a 64-d projection; for tests",
    )
)
