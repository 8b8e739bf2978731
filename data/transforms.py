"""Preprocessing: one ``PreprocessCfg`` per metric, read by the CPU path (PIL → tensor, ``build_transform``) and by
the GPU decode path (``resize_tensor`` on decoded JPEG pixels), so the two never disagree on the recipe.

Two resize modes: ``"squash"`` (straight to size x size, aspect ratio not kept: DreamSim, the CNN, the pixel
metrics) and ``"shorter_center_crop"`` (shorter side to size, then the centre size x size crop: CLIP's
``CLIPImageProcessor``, UniSim). Both give float32 (3, size, size) in [0, 1]; ``mean``/``std`` describe the
normalization the model applies to that input (None: per branch inside the model, as in the DreamSim ensemble).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from lookalike.common.errors import ConfigError

RESIZE_MODES = ("squash", "shorter_center_crop")
_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
    "nearest": Image.Resampling.NEAREST,
}
#: Interpolations the tensor (GPU) resize reproduces closely (PIL's antialiased kernels).
TENSOR_INTERPOLATIONS = ("bicubic", "bilinear")


@dataclass(frozen=True)
class PreprocessCfg:
    """How a metric turns an image into its input.

    Attributes:
        size: output side S (the model sees (3, S, S)).
        interpolation: "bicubic" | "bilinear" | "lanczos" | "nearest" (PIL's antialiased filters).
        resize_mode: "squash" (to S x S, no crop) | "shorter_center_crop" (shorter side to S, centre crop).
        mean: per-channel mean the model subtracts from its [0, 1] input (None: per branch, inside the model).
        std: per-channel std the model divides by (None: per branch, inside the model).
    """

    size: int = 224
    interpolation: str = "bicubic"
    resize_mode: str = "squash"
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.interpolation not in _RESAMPLE:
            raise ConfigError(f"unknown interpolation {self.interpolation!r}; choose from {sorted(_RESAMPLE)}")
        if self.resize_mode not in RESIZE_MODES:
            raise ConfigError(f"unknown resize_mode {self.resize_mode!r}; choose from {list(RESIZE_MODES)}")
        if self.size < 1:
            raise ConfigError(f"preprocess size must be >= 1, got {self.size}")
        if (self.mean is None) != (self.std is None):
            raise ConfigError("give both mean and std, or neither")


def _resized_shape(w: int, h: int, cfg: PreprocessCfg) -> tuple[int, int]:
    """(width, height) after the resize step (before any crop)."""
    s = cfg.size
    if cfg.resize_mode == "squash":
        return s, s
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(s * long / short)
    return (s, new_long) if w <= h else (new_long, s)


def build_transform(cfg: PreprocessCfg) -> Callable[[Image.Image], torch.Tensor]:
    """A function PIL image → float32 tensor (3, size, size) in [0, 1], as ``cfg`` describes.

    The image is converted with ``convert("RGB")`` (alpha dropped, as the reference does) and resized with PIL
    (which antialiases on downscale), exactly like torchvision's ``Resize`` + ``ToTensor`` on PIL images; the
    "shorter_center_crop" mode then crops the centre as ``CLIPImageProcessor`` does.
    """
    resample = _RESAMPLE[cfg.interpolation]
    size = cfg.size

    def transform(img: Image.Image) -> torch.Tensor:
        if not isinstance(img, Image.Image):
            raise TypeError(f"preprocess expects a PIL.Image.Image, got {type(img).__name__}")
        img = img.convert("RGB")
        w, h = img.size
        new = _resized_shape(w, h, cfg)
        if img.size != new:
            img = img.resize(new, resample=resample)
        if new != (size, size):
            top, left = (new[1] - size) // 2, (new[0] - size) // 2
            img = img.crop((left, top, left + size, top + size))
        arr = np.asarray(img, dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)

    return transform


def supports_tensor_resize(cfg: PreprocessCfg) -> bool:
    """True when ``resize_tensor`` reproduces ``cfg`` (closely, not bit-exactly): bicubic or bilinear."""
    return cfg.interpolation in TENSOR_INTERPOLATIONS


def resize_tensor(img: torch.Tensor, cfg: PreprocessCfg) -> torch.Tensor:
    """(3, H, W) uint8 on any device → (3, size, size) float32 in [0, 1] there, as ``cfg`` describes.

    Antialiased ``interpolate`` (PIL's kernels), width first, then height, rounding to 8 bits after each pass as PIL
    does: within a few 1e-5 mean absolute difference of ``build_transform`` on the same pixels.

    Raises:
        ConfigError: an interpolation the tensor path does not reproduce (see ``supports_tensor_resize``).
    """
    if not supports_tensor_resize(cfg):
        raise ConfigError(f"interpolation {cfg.interpolation!r} has no tensor resize; "
                          f"choose from {list(TENSOR_INTERPOLATIONS)}")
    mode = cfg.interpolation
    x = img.unsqueeze(0).float()
    h, w = x.shape[-2:]
    new_w, new_h = _resized_shape(int(w), int(h), cfg)
    if w != new_w:
        x = torch.nn.functional.interpolate(x, size=(h, new_w), mode=mode, align_corners=False, antialias=True)
        x = x.clamp_(0.0, 255.0).round_()
    if h != new_h:
        x = torch.nn.functional.interpolate(x, size=(new_h, new_w), mode=mode, align_corners=False,
                                            antialias=True)
        x = x.clamp_(0.0, 255.0).round_()
    s = cfg.size
    if (new_w, new_h) != (s, s):
        top, left = (new_h - s) // 2, (new_w - s) // 2
        x = x[..., top:top + s, left:left + s]
    return x.squeeze(0).div_(255.0)
