"""The registered ViT towers (design/dreamsim-spec.md §5): architecture, normalization, weights, feature tap."""

from __future__ import annotations

from lookalike.metric._pretrained import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    BackboneCfg,
    ViTCfg,
    WeightFile,
)
from lookalike.metric._registry import register_backbone

RELEASES = "https://github.com/ssundaram21/dreamsim/releases/download"
ZIPS = {
    "ensemble": f"{RELEASES}/v0.2.0-checkpoints/dreamsim_ensemble_checkpoint.zip",
    "dino_vitb16": f"{RELEASES}/v0.2.0-checkpoints/dreamsim_dino_vitb16_checkpoint.zip",
    "clip_vitb32": f"{RELEASES}/v0.2.0-checkpoints/dreamsim_clip_vitb32_checkpoint.zip",
    "open_clip_vitb32": f"{RELEASES}/v0.2.0-checkpoints/dreamsim_open_clip_vitb32_checkpoint.zip",
    "dinov2_vitb14": f"{RELEASES}/v0.2.1-checkpoints/dreamsim_dinov2_vitb14_checkpoint.zip",
    "synclr_vitb16": f"{RELEASES}/v0.2.1-checkpoints/dreamsim_synclr_vitb16_checkpoint.zip",
    "dino_vitb16_patch": f"{RELEASES}/v0.2.1-checkpoints/dreamsim_dino_vitb16_patch_checkpoint.zip",
    "dinov2_vitb14_patch": f"{RELEASES}/v0.2.1-checkpoints/dreamsim_dinov2_vitb14_patch_checkpoint.zip",
}

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
        weights=WeightFile(
            path="checkpoints/dino_vitbase16_pretrain.pth",
            url="https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
        ),
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
        weights=WeightFile(
            path="checkpoints/dinov2_vitb14_pretrain.pth",
            url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth",
        ),
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
        weights=WeightFile(path="synclr_vit_b_16.pth", archive_url=ZIPS["synclr_vitb16"]),
        weight_format="synclr",
        feature="cls",
        description="SynCLR ViT-B/16 (from the DreamSim release zip); pre-norm CLS",
    )
)
for _name, _vit, _zip, _desc in (
    ("clip_vitb16", _CLIP16, "ensemble", "OpenAI CLIP ViT-B/16"),
    ("clip_vitb32", _CLIP32, "clip_vitb32", "OpenAI CLIP ViT-B/32"),
    ("open_clip_vitb16", _OPEN_CLIP16, "ensemble", "OpenCLIP ViT-B/16 (LAION-400M)"),
    ("open_clip_vitb32", _OPEN_CLIP32, "open_clip_vitb32", "OpenCLIP ViT-B/32 (LAION-400M, exact GELU)"),
):
    register_backbone(
        BackboneCfg(
            name=_name,
            arch="vit",
            vit=_vit,
            mean=OPENAI_CLIP_MEAN,
            std=OPENAI_CLIP_STD,
            weights=WeightFile(path=f"{_name}_pretrain.pth.tar", archive_url=ZIPS[_zip]),
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
