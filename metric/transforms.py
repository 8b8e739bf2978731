"""PIL image → tensor, as configured by a PreprocessCfg (DreamSim: PIL bicubic to 224x224, no crop)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from lookalike.metric._pretrained import PreprocessCfg

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
    "nearest": Image.Resampling.NEAREST,
}


def build_transform(cfg: PreprocessCfg) -> Callable[[Image.Image], torch.Tensor]:
    """A function PIL image → float32 tensor (3, size, size) in [0, 1].

    The image is converted with ``convert("RGB")`` (alpha dropped, as the reference does) and resized with PIL
    (which antialiases on downscale), exactly like torchvision's ``Resize((s, s), BICUBIC)`` + ``ToTensor``.
    """
    if cfg.interpolation not in _RESAMPLE:
        raise ValueError(f"unknown interpolation {cfg.interpolation!r}; choose from {sorted(_RESAMPLE)}")
    if cfg.resize_mode != "squash":
        raise ValueError(f"unknown resize_mode {cfg.resize_mode!r}; only 'squash' is implemented")
    resample = _RESAMPLE[cfg.interpolation]
    size = cfg.size

    def transform(img: Image.Image) -> torch.Tensor:
        if not isinstance(img, Image.Image):
            raise TypeError(f"preprocess expects a PIL.Image.Image, got {type(img).__name__}")
        img = img.convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), resample=resample)
        arr = np.asarray(img, dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)

    return transform
