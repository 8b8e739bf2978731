"""Readers for the official on-disk weight formats, each returning a state dict in our ViT key names."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from lookalike.common.errors import WeightFileError
from lookalike.metric._registry import register_reader

_logger = logging.getLogger(__name__)


def load_torch_file(path: Path) -> object:
    """``torch.load`` on the CPU, tensors only (no pickled code), with an error that names the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises a zoo of types for bad files
        raise WeightFileError(f"cannot read weight file {path}: {type(e).__name__}: {e}") from e


def _expect_dict(obj: object, path: Path, key: str | None = None) -> dict[str, torch.Tensor]:
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            found = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
            raise WeightFileError(f"{path}: expected a dict with key {key!r}, found {found}")
        obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightFileError(f"{path}: expected a state dict of tensors")
    return dict(obj)


@register_reader("dino_hub")
def read_dino_hub(path: Path) -> dict[str, torch.Tensor]:
    """DINO hub checkpoint (``dino_vitbase16_pretrain.pth``): a plain backbone state dict."""
    return _expect_dict(load_torch_file(path), path)


@register_reader("dinov2_hub")
def read_dinov2_hub(path: Path) -> dict[str, torch.Tensor]:
    """DINOv2 hub checkpoint: a plain state dict; ``mask_token`` (training only) is dropped."""
    sd = _expect_dict(load_torch_file(path), path)
    sd.pop("mask_token", None)
    return sd


@register_reader("dreamsim_clip")
def read_dreamsim_clip(path: Path) -> dict[str, torch.Tensor]:
    """DreamSim's converted CLIP / OpenCLIP file: ``{'state_dict': {...DINO names, 'proj'}}``.

    ``pos_drop`` holds CLIP's ln_pre; it becomes our ``norm_pre``. ``proj`` (768 x 512) stays ``proj``.
    """
    sd = _expect_dict(load_torch_file(path), path, "state_dict")
    if "proj" not in sd:
        raise WeightFileError(f"{path}: converted CLIP file without 'proj'")
    return {("norm_pre." + k[len("pos_drop.") :] if k.startswith("pos_drop.") else k): v for k, v in sd.items()}


@register_reader("synclr")
def read_synclr(path: Path) -> dict[str, torch.Tensor]:
    """SynCLR release file: ``{'model': {'module.visual.<vit key>': tensor}}``."""
    sd = _expect_dict(load_torch_file(path), path, "model")
    prefix = "module.visual."
    bad = [k for k in sd if not k.startswith(prefix)]
    if bad:
        raise WeightFileError(f"{path}: SynCLR keys must start with {prefix!r}; found {bad[:3]}")
    return {k[len(prefix) :]: v for k, v in sd.items()}


_EFFNET_LITE_STAGES = (1, 2, 2, 3, 3, 4, 1)
_EFFNET_FIRST = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_EFFNET_OTHER = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                 "_project_conv": "conv_pwl", "_bn2": "bn3"}
_EFFNET_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


@register_reader("efficientnet_lite_flat")
def read_efficientnet_lite_flat(path: Path) -> dict[str, torch.Tensor]:
    """EfficientNet-Lite0 file with flat ``_blocks.N._bn1`` names → timm ``tf_efficientnet_lite0`` names.

    Flat block N maps to timm stage/index by the stage depths (1, 2, 2, 3, 3, 4, 1); the first block is a
    depthwise-separable block, the rest inverted residuals.
    """
    sd = _expect_dict(load_torch_file(path), path)
    where = [(s, j) for s, n in enumerate(_EFFNET_LITE_STAGES) for j in range(n)]
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        parts = key.split(".")
        try:
            if parts[0] == "_blocks":
                n = int(parts[1])
                names = _EFFNET_FIRST if n == 0 else _EFFNET_OTHER
                s, j = where[n]
                out[".".join(["blocks", str(s), str(j), names[parts[2]], *parts[3:]])] = value
            else:
                out[".".join([_EFFNET_TOP[parts[0]], *parts[1:]])] = value
        except (KeyError, IndexError, ValueError):
            raise WeightFileError(f"{path}: unexpected key {key!r} for an EfficientNet-Lite0 file") from None
    return out
