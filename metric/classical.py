"""Classical full-reference metrics the field expects beside LPIPS: DISTS, L1 (mean absolute error) and MS-SSIM.

DISTS (Ding, Ma, Wang, Simoncelli: "Image Quality Assessment: Unifying Structure and Texture Similarity", TPAMI
2020): an ImageNet VGG16 trunk whose max-pools are replaced by L2 pooling (a 3 x 3 Hanning window, stride 2); at the
input and at five ReLU stages (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3) each channel's spatial mean and
(co)variance give a texture term ``(2 mx my + c) / (mx^2 + my^2 + c)`` and a structure term
``(2 cov + c) / (vx + vy + c)`` (c = 1e-6); learned non-negative weights alpha (texture) and beta (structure), one
per channel (3 + 64 + 128 + 256 + 512 + 512 = 1475 each) and normalized by their joint sum, mix them;
DISTS = 1 - the mix, lower = more similar, 0 for identical images. Weights: the torchvision VGG16 file (shared with
``lpips_vgg``) and the published alpha/beta file ``weights.pt`` of github.com/dingkeyan93/DISTS (the same file the
PyPI package ``DISTS-pytorch`` installs).

L1 and MS-SSIM are pixel measures next to ``l2`` and ``ssim`` (MS-SSIM from torchmetrics, like SSIM).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lookalike.metric._base import Metric, compute_fingerprint
from lookalike.metric._hub import resolve_files
from lookalike.metric._pretrained import IMAGENET_MEAN, IMAGENET_STD, MetricCfg, PreprocessCfg
from lookalike.metric._registry import register_builder, register_metric
from lookalike.metric.baselines import (
    _PIXEL_MEASURES,
    PairwiseMetric,
    PixelOptions,
    _check_direction,
    _empty_trunk,
    _fp32_only,
    read_torchvision_features,
)
from lookalike.metric.releases import release_file

_logger = logging.getLogger(__name__)

#: VGG16 ``features`` indices: the max-pools DISTS replaces with L2 pooling, and the last layer of each stage.
_VGG_POOLS = (4, 9, 16, 23)
_STAGE_ENDS = (3, 8, 15, 22, 29)
_DISTS_C = 1e-6
_L2POOL_EPS = 1e-12


class L2Pool(nn.Module):
    """sqrt(conv(x^2, w) + eps) with a normalized 3 x 3 Hanning window w, per channel, stride 2, padding 1."""

    def __init__(self, channels: int):
        super().__init__()
        a = torch.hann_window(5, periodic=False, dtype=torch.float64)[1:-1]  # [0.5, 1, 0.5]
        w = a[:, None] * a[None, :]
        w = (w / w.sum()).float()
        self.register_buffer("filter", w[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x.square(), self.filter, stride=2, padding=1, groups=x.shape[1])
        return (out + _L2POOL_EPS).sqrt()


class DistsNet(nn.Module):
    """The DISTS network: VGG16 ``features`` (up to relu5_3) with L2 pooling, and alpha / beta (1, 1475, 1, 1)."""

    def __init__(self, features: nn.Sequential):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(_STAGE_ENDS[-1] + 1):
            layer = features[i]
            if i in _VGG_POOLS:
                if not isinstance(layer, nn.MaxPool2d):
                    raise ValueError(f"VGG16 features[{i}] is {type(layer).__name__}, expected MaxPool2d")
                prev = features[i - 2]
                assert isinstance(prev, nn.Conv2d)
                layer = L2Pool(prev.out_channels)
            layers.append(layer)
        self.trunk = nn.Sequential(*layers)
        self.chns = [3, 64, 128, 256, 512, 512]
        self.alpha = nn.Parameter(torch.zeros(1, sum(self.chns), 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, sum(self.chns), 1, 1))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) in [0, 1] → [x, relu1_2, relu2_2, relu3_3, relu4_3, relu5_3]."""
        out = [x]
        h = (x - self.mean) / self.std
        for i, layer in enumerate(self.trunk):
            h = layer(h)
            if i in _STAGE_ENDS:
                out.append(h)
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pairs in [0, 1] → (B,) DISTS, lower = more similar."""
        w_sum = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / w_sum, self.chns, dim=1)
        betas = torch.split(self.beta / w_sum, self.chns, dim=1)
        texture = structure = torch.zeros(a.shape[0], 1, 1, 1, device=a.device)
        for fa, fb, al, be in zip(self.features(a), self.features(b), alphas, betas, strict=True):
            ma, mb = fa.mean((2, 3), keepdim=True), fb.mean((2, 3), keepdim=True)
            va = (fa - ma).square().mean((2, 3), keepdim=True)
            vb = (fb - mb).square().mean((2, 3), keepdim=True)
            cov = (fa * fb).mean((2, 3), keepdim=True) - ma * mb
            s1 = (2 * ma * mb + _DISTS_C) / (ma.square() + mb.square() + _DISTS_C)
            s2 = (2 * cov + _DISTS_C) / (va + vb + _DISTS_C)
            texture = texture + (al * s1).sum(1, keepdim=True)
            structure = structure + (be * s2).sum(1, keepdim=True)
        return (1.0 - (texture + structure)).flatten()


class DistsMetric(PairwiseMetric):
    """DISTS (Ding et al. 2020): structure + texture similarity on VGG16 features; lower = more similar."""

    def __init__(self, cfg: MetricCfg, net: DistsNet, **kw: object):
        super().__init__(cfg, **kw)  # type: ignore[arg-type]
        self.net = net

    def compare(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.net(a, b)


def read_dists_weights(path: Path) -> dict[str, torch.Tensor]:
    """The published DISTS file ({"alpha": (1, 1475, 1, 1), "beta": ...}) → the DistsNet keys."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict) or set(sd) != {"alpha", "beta"}:
        keys = sorted(sd) if isinstance(sd, dict) else type(sd).__name__
        raise ValueError(f"{path} is not a DISTS alpha/beta file (found {keys}); is it the right file?")
    return {k: v.float() for k, v in sd.items()}


@register_builder("dists")
def build_dists(cfg: MetricCfg, *, device: torch.device, dtype: torch.dtype, weights: str | Path | None) -> Metric:
    """DISTS from ``cfg.extra_files``: the torchvision VGG16 file, then the alpha/beta file.

    Raises:
        WeightsNotFound: a file is neither in ``weights`` nor in the cache (and could not be downloaded).
        ValueError: a file that does not fit.
    """
    from lookalike.metric._builders import load_state_dict_strict

    _check_direction(cfg, lower_is_better=True)
    trunk_wf, ab_wf = cfg.extra_files
    paths = resolve_files(cfg.name, cfg.extra_files, weights)
    features = _empty_trunk("vgg16")
    load_state_dict_strict(features, read_torchvision_features(paths[trunk_wf.path]), paths[trunk_wf.path])
    net = DistsNet(features)
    ab = read_dists_weights(paths[ab_wf.path])
    load_state_dict_strict(net, {**{k: v for k, v in net.state_dict().items() if k not in ab}, **ab},
                           paths[ab_wf.path])
    net.eval().requires_grad_(False).to(device)
    return DistsMetric(cfg, net, device=device, dtype=_fp32_only(cfg, dtype),
                       fingerprint=compute_fingerprint(cfg, paths))


def _l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().mean(dim=(1, 2, 3))


def _ms_ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # torchmetrics defaults: Gaussian window 11, sigma 1.5, the 5 scale weights of Wang et al. 2003, relu-normalized
    # contrast terms (no NaN for negative correlations); needs a side > 160 px (inputs are 256 x 256).
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    out = multiscale_structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")
    assert isinstance(out, torch.Tensor)
    return out.clamp(-1.0, 1.0)


_PIXEL_MEASURES.setdefault("mae", (_l1, True))
_PIXEL_MEASURES.setdefault("ms_ssim", (_ms_ssim, False))

_SQUASH = "inputs squashed to 256x256 (PIL bicubic) so any two images compare"

register_metric(MetricCfg(
    name="l1", builder="pixel", kind="pairwise", lower_is_better=True, family="baseline", unit="MAE",
    description=f"mean absolute error on RGB pixels in [0, 1]; in [0, 1], lower = more similar, 0 for identical "
                f"images; pairwise only; {_SQUASH}",
    preprocess=PreprocessCfg(size=256), options=PixelOptions(measure="mae")), overwrite=True)
register_metric(MetricCfg(
    name="ms_ssim", builder="pixel", kind="pairwise", lower_is_better=False, family="baseline", unit="MS-SSIM",
    description=f"multi-scale SSIM (5 scales, Gaussian window 11, sigma 1.5; torchmetrics) on RGB pixels in [0, 1]; "
                f"higher = more similar, 1 for identical images; pairwise only; {_SQUASH}",
    preprocess=PreprocessCfg(size=256), options=PixelOptions(measure="ms_ssim")), overwrite=True)
register_metric(MetricCfg(
    name="dists", builder="dists", kind="pairwise", lower_is_better=True, family="baseline", unit="DISTS",
    description=f"DISTS (Ding et al. 2020): structure and texture similarity of VGG16 features with learned "
                f"weights; >= 0, lower = more similar, 0 for identical images; pairwise only; {_SQUASH}",
    preprocess=PreprocessCfg(size=256),
    extra_files=(release_file("vgg16-397923af.pth"), release_file("weights.pt"))), overwrite=True)
