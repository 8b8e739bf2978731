"""lookalike.data.transforms: one PreprocessCfg drives the PIL (CPU) path and the tensor (GPU decode) resize."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lookalike.common.errors import ConfigError
from lookalike.data.transforms import PreprocessCfg, build_transform, resize_tensor, supports_tensor_resize
from lookalike.metric import get_metric_cfg, load_metric


def _photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """A smooth random image (low-pass noise), so resampling differences stay small and measurable."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)


@pytest.mark.parametrize("w, h", [(300, 200), (200, 300), (64, 64)])
def test_shorter_center_crop_matches_pil_by_hand(w: int, h: int) -> None:
    img = _photo(w, h)
    x = build_transform(PreprocessCfg(size=64, resize_mode="shorter_center_crop"))(img)
    short = min(w, h)
    nw, nh = (64, int(64 * h / short)) if w <= h else (int(64 * w / short), 64)
    r = img.resize((nw, nh), Image.Resampling.BICUBIC) if (nw, nh) != (w, h) else img
    left, top = (nw - 64) // 2, (nh - 64) // 2
    want = torch.from_numpy(np.asarray(r.crop((left, top, left + 64, top + 64))).copy()).permute(2, 0, 1) / 255.0
    assert x.shape == (3, 64, 64) and torch.equal(x, want.float())


def test_squash_keeps_the_whole_image() -> None:
    img = _photo(300, 100)
    squash = build_transform(PreprocessCfg(size=50))(img)
    crop = build_transform(PreprocessCfg(size=50, resize_mode="shorter_center_crop"))(img)
    assert squash.shape == crop.shape == (3, 50, 50)
    assert not torch.allclose(squash, crop, atol=1e-2)  # the crop drops the sides; the squash does not


@pytest.mark.parametrize("mode", ["squash", "shorter_center_crop"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_tensor_resize_follows_the_same_cfg(mode: str, interpolation: str) -> None:
    img = _photo(320, 200, seed=3)
    cfg = PreprocessCfg(size=96, resize_mode=mode, interpolation=interpolation)
    ref = build_transform(cfg)(img)
    got = resize_tensor(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1), cfg)
    assert got.shape == ref.shape == (3, 96, 96) and got.dtype == torch.float32
    assert float((got - ref).abs().mean()) < 2e-3
    other = PreprocessCfg(size=96, resize_mode="squash" if mode != "squash" else "shorter_center_crop")
    wrong = resize_tensor(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1), other)
    assert float((wrong - ref).abs().mean()) > 5 * float((got - ref).abs().mean())  # the mode matters


def test_bad_preprocess_cfg_is_an_error() -> None:
    with pytest.raises(ConfigError, match="resize_mode"):
        PreprocessCfg(resize_mode="shortest_center_crop")  # the old UniSim spelling
    with pytest.raises(ConfigError, match="interpolation"):
        PreprocessCfg(interpolation="area")
    with pytest.raises(ConfigError, match="mean and std"):
        PreprocessCfg(mean=(0.5, 0.5, 0.5))
    assert not supports_tensor_resize(PreprocessCfg(interpolation="lanczos"))
    with pytest.raises(ConfigError, match="lanczos"):
        resize_tensor(torch.zeros(3, 8, 8, dtype=torch.uint8), PreprocessCfg(size=4, interpolation="lanczos"))


def test_metrics_carry_their_preprocessing() -> None:
    uni = get_metric_cfg("unisim_vit_l_14").preprocess
    assert (uni.size, uni.resize_mode, uni.mean) == (336, "shorter_center_crop", (0.48145466, 0.4578275, 0.40821073))
    assert get_metric_cfg("dreamsim").preprocess == PreprocessCfg(size=224)  # squash, per-branch mean/std
    m = load_metric("efficientnet_lite0", device="cpu")
    assert m.cfg.preprocess.mean == (0.5, 0.5, 0.5)
    assert torch.allclose(m.mean.flatten(), torch.tensor([0.5, 0.5, 0.5]))  # the model normalizes with the cfg's
    img = _photo(400, 240)
    assert torch.equal(m.preprocess(img), build_transform(m.cfg.preprocess)(img))
