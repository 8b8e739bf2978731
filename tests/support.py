"""Helpers shared by the test modules (tests never import each other; they import this module and conftest's
fixtures): fixture paths, small image and network helpers, and random weights in the official DreamSim on-disk
formats (design/dreamsim-spec.md §8, §10.3).

The weights' layout is a dreamsim cache folder: what the release zips extract to, plus torch.hub's ``checkpoints/`` and
hubconf folders for DINO / DINOv2 whose ``hubconf.py`` builds the upstream architectures (DreamSim's own copy of
DINO's ViT; the ``dinov2`` package for DINOv2) and loads the files written here. Both the reference package and
lookalike read the same files.
"""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file

FIXTURES = Path(__file__).parent / "fixtures"
DEMO = FIXTURES / "dreamsim-demo"
PHOTOS = FIXTURES / "photos"
SHARED = Path(__file__).resolve().parents[2] / "shared"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def jpeg_bytes(img: Image.Image, *, quality: int = 90, **kw: object) -> bytes:
    """``img`` encoded as a JPEG file in memory."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, **kw)
    return buf.getvalue()

VARIANT_ADAPTERS = {
    "ensemble": ("ensemble_lora", 3),
    "dino_vitb16": ("dino_vitb16_single_lora", 1),
    "clip_vitb32": ("clip_vitb32_single_lora", 1),
    "open_clip_vitb32": ("open_clip_vitb32_single_lora", 1),
    "dinov2_vitb14": ("dinov2_vitb14_single_lora", 1),
    "synclr_vitb16": ("synclr_vitb16_single_lora", 1),
    "dino_vitb16_patch": ("dino_vitb16_patch_lora", 1),
    "dinov2_vitb14_patch": ("dinov2_vitb14_patch_lora", 1),
}
# lookalike name -> reference (dreamsim_type, use_patch_model)
LOOKALIKE_TO_REFERENCE = {
    "dreamsim": ("ensemble", False),
    "dreamsim_dino_vitb16": ("dino_vitb16", False),
    "dreamsim_clip_vitb32": ("clip_vitb32", False),
    "dreamsim_open_clip_vitb32": ("open_clip_vitb32", False),
    "dreamsim_dinov2_vitb14": ("dinov2_vitb14", False),
    "dreamsim_synclr_vitb16": ("synclr_vitb16", False),
    "dreamsim_dino_vitb16_patch": ("dino_vitb16", True),
    "dreamsim_dinov2_vitb14_patch": ("dinov2_vitb14", True),
}

DINO_HUBCONF = '''
import os
import torch
from dreamsim.feature_extraction.vision_transformer import vit_base

dependencies = ["torch"]


def dino_vitb16(pretrained=True, **kwargs):
    model = vit_base(patch_size=16, num_classes=0, **kwargs)
    if pretrained:
        path = os.path.join(torch.hub.get_dir(), "checkpoints", "dino_vitbase16_pretrain.pth")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model
'''

DINOV2_HUBCONF = '''
import os
import torch
from dinov2.models.vision_transformer import vit_base

dependencies = ["torch"]


def dinov2_vitb14(pretrained=True, **kwargs):
    model = vit_base(patch_size=14, img_size=518, init_values=1.0, block_chunks=0, **kwargs)
    if pretrained:
        path = os.path.join(torch.hub.get_dir(), "checkpoints", "dinov2_vitb14_pretrain.pth")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model
'''


def _randomize(sd: dict[str, torch.Tensor], g: torch.Generator) -> dict[str, torch.Tensor]:
    """Random values with the right shapes: non-trivial LayerNorm affine, small biases, std-0.02 weights."""
    out = {}
    for k, v in sd.items():
        if k.endswith(".weight") and v.dim() == 1:  # LayerNorm scale
            t = 1.0 + 0.1 * torch.randn(v.shape, generator=g)
        elif k.endswith("gamma"):  # LayerScale
            t = 0.5 + 0.1 * torch.randn(v.shape, generator=g)
        elif k.endswith("bias"):
            t = 0.02 * torch.randn(v.shape, generator=g)
        elif k in ("cls_token", "pos_embed", "mask_token"):
            t = 0.2 * torch.randn(v.shape, generator=g)
        else:
            t = 0.02 * torch.randn(v.shape, generator=g)
        out[k] = t.to(v.dtype).contiguous()
    return out


def _dino_like_sd(patch_size: int, g: torch.Generator, *, ln_pre: bool) -> dict[str, torch.Tensor]:
    from dreamsim.feature_extraction.vision_transformer import vit_base

    vit = vit_base(patch_size=patch_size)
    if ln_pre:
        vit.pos_drop = torch.nn.LayerNorm(768)
    return _randomize(vit.state_dict(), g)


def _dinov2_sd(g: torch.Generator) -> dict[str, torch.Tensor]:
    from dinov2.models.vision_transformer import vit_base

    return _randomize(vit_base(patch_size=14, img_size=518, init_values=1.0, block_chunks=0).state_dict(), g)


def write_adapter(folder: Path, branches: int, g: torch.Generator, *, alpha: float, dropout: float) -> None:
    """A peft LoRA adapter (r 16) with non-zero A and B on every qkv of ``branches`` ViT-B towers."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for k in range(branches):
        for i in range(12):
            base = f"base_model.model.extractor_list.{k}.model.blocks.{i}.attn.qkv"
            tensors[f"{base}.lora_A.weight"] = 0.05 * torch.randn(16, 768, generator=g)
            tensors[f"{base}.lora_B.weight"] = 0.05 * torch.randn(2304, 16, generator=g)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = {
        "alpha_pattern": {},
        "auto_mapping": {"base_model_class": "PerceptualModel", "parent_library": "dreamsim.model"},
        "base_model_name_or_path": None, "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
        "init_lora_weights": True, "layer_replication": None, "layers_pattern": None, "layers_to_transform": None,
        "loftq_config": {}, "lora_alpha": alpha, "lora_dropout": dropout, "megatron_config": None,
        "megatron_core": "megatron.core", "modules_to_save": None, "peft_type": "LORA", "r": 16, "rank_pattern": {},
        "revision": None, "target_modules": ["qkv"], "task_type": None, "use_dora": False, "use_rslora": False,
    }
    (folder / "adapter_config.json").write_text(json.dumps(cfg, indent=2))


def write_official_cache(root: Path, variants: list[str], seed: int = 0) -> Path:
    """Write every file the given reference variants need into ``root`` (a dreamsim cache folder)."""
    g = torch.Generator().manual_seed(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "checkpoints").mkdir(exist_ok=True)
    need = set()
    for v in variants:
        need.update({
            "ensemble": {"dino", "clip16", "open_clip16"}, "dino_vitb16": {"dino"}, "dino_vitb16_patch": {"dino"},
            "clip_vitb32": {"clip32"}, "open_clip_vitb32": {"open_clip32"}, "dinov2_vitb14": {"dinov2"},
            "dinov2_vitb14_patch": {"dinov2"}, "synclr_vitb16": {"synclr"},
        }[v])
    if "dino" in need and not (root / "checkpoints" / "dino_vitbase16_pretrain.pth").exists():
        torch.save(_dino_like_sd(16, g, ln_pre=False), root / "checkpoints" / "dino_vitbase16_pretrain.pth")
        head = {"module.head.mlp.0.weight": (2048, 768), "module.head.mlp.0.bias": (2048,),
                "module.head.mlp.2.weight": (2048, 2048), "module.head.mlp.2.bias": (2048,),
                "module.head.mlp.4.weight": (256, 2048), "module.head.mlp.4.bias": (256,),
                "module.head.last_layer.weight": (2048, 256)}
        torch.save({"student": {k: 0.02 * torch.randn(s, generator=g) for k, s in head.items()}},
                   root / "dino_vitb16_pretrain.pth")
        hub = root / "facebookresearch_dino_main"
        hub.mkdir(exist_ok=True)
        (hub / "hubconf.py").write_text(DINO_HUBCONF)
    if "dinov2" in need and not (root / "checkpoints" / "dinov2_vitb14_pretrain.pth").exists():
        torch.save(_dinov2_sd(g), root / "checkpoints" / "dinov2_vitb14_pretrain.pth")
        (root / "dinov2_vitb14_pretrain.pth").write_bytes(b"placeholder: the reference only checks it exists")
        hub = root / "facebookresearch_dinov2_main"
        hub.mkdir(exist_ok=True)
        (hub / "hubconf.py").write_text(DINOV2_HUBCONF)
    for key, fname, patch in (("clip16", "clip_vitb16", 16), ("clip32", "clip_vitb32", 32),
                              ("open_clip16", "open_clip_vitb16", 16), ("open_clip32", "open_clip_vitb32", 32)):
        if key in need and not (root / f"{fname}_pretrain.pth.tar").exists():
            sd = _dino_like_sd(patch, g, ln_pre=True)
            sd["proj"] = 0.05 * torch.randn(768, 512, generator=g)
            torch.save({"state_dict": sd}, root / f"{fname}_pretrain.pth.tar")
    if "synclr" in need and not (root / "synclr_vit_b_16.pth").exists():
        sd = _dino_like_sd(16, g, ln_pre=False)
        torch.save({"model": {"module.visual." + k: v for k, v in sd.items()}}, root / "synclr_vit_b_16.pth")
    for v in variants:
        folder, branches = VARIANT_ADAPTERS[v]
        if not (root / folder).exists():
            alpha, dropout = (1.0, 0.3) if v == "ensemble" else (32.0, 0.2)
            write_adapter(root / folder, branches, g, alpha=alpha, dropout=dropout)
    return root


def load_reference(root: Path, name: str):
    """The reference model and preprocess for a lookalike name, loaded from ``root`` on the CPU."""
    import torch.hub
    from dreamsim import dreamsim

    dtype, patch = LOOKALIKE_TO_REFERENCE[name]
    old = torch.hub.get_dir()
    try:
        model, preprocess = dreamsim(pretrained=True, device="cpu", cache_dir=str(root), dreamsim_type=dtype,
                                     use_patch_model=patch)
    finally:
        torch.hub.set_dir(old)
    return model, preprocess
