"""Pairwise baselines behind the registry: PSNR, SSIM, pixel MSE and LPIPS v0.1 (AlexNet / VGG16 trunks).

These metrics compare two images; they have no ``embed`` and cannot be indexed (``kind == "pairwise"``). Every one
takes batches of ``metric.preprocess(img)`` outputs, (B, 3, S, S) floats in [0, 1], and returns (B,) float32 on the
CPU. Which way is "more similar" differs: read ``metric.lower_is_better`` (False for PSNR and SSIM).

LPIPS follows Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric" (CVPR 2018),
version 0.1: inputs scaled to [-1, 1] and shifted / scaled per channel, ReLU features tapped at five depths of an
ImageNet trunk, each tap unit-normalized over channels, squared differences weighted by a learned 1x1 convolution
(no bias), averaged over space and summed over taps.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lookalike.common.errors import ConfigError, InvalidArgument
from lookalike.data.transforms import PreprocessCfg
from lookalike.metric._base import Metric, compute_fingerprint
from lookalike.metric._builders import load_state_dict_strict
from lookalike.metric._hub import resolve_files
from lookalike.metric._pretrained import MetricCfg
from lookalike.metric._registry import register_builder, register_metric
from lookalike.metric.releases import release_file

_logger = logging.getLogger(__name__)

_RANGE_TOL = 1e-3  # inputs may overshoot [0, 1] by this much (rounding); more means a wrong input range
_NORM_EPS = 1e-10  # added to the channel norm before dividing, as in LPIPS
_TRUNK_IGNORED_PREFIXES = ("classifier.",)  # torchvision classifier head: in the file, not used by LPIPS
_LIN_KEY = re.compile(r"^lin(\d+)\.model\.\d+\.weight$")  # "lin0.model.1.weight" (index 1 follows a Dropout)


class PairwiseMetric(Metric):
    """A metric that compares two images directly: ``distance(a, b)`` only, no ``embed``.

    Subclasses implement ``compare(a, b)`` on validated batches already on ``self.device``.
    """

    def check_pair(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate two (B, 3, S, S) batches in [0, 1] of the same size and move them to the metric's device.

        Raises:
            TypeError: an input is not a tensor.
            ValueError: wrong shape or dtype, different batch sizes, or values outside [0, 1].
        """
        a = self.check_batch(a, "a")
        b = self.check_batch(b, "b")
        if a.shape[0] != b.shape[0]:
            raise InvalidArgument(f"a and b must have the same batch size, got {a.shape[0]} and {b.shape[0]}")
        for what, x in (("a", a), ("b", b)):
            if x.numel() == 0:
                continue
            lo, hi = (float(v) for v in torch.aminmax(x))
            if lo < -_RANGE_TOL or hi > 1.0 + _RANGE_TOL:
                raise InvalidArgument(
                    f"{what} has values in [{lo:.3g}, {hi:.3g}]; {self.name} expects [0, 1] "
                    f"(use metric.preprocess on each PIL image)"
                )
        return a, b

    def compare(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) and (B, 3, S, S) in [0, 1], on ``self.device`` → (B,) on ``self.device``."""
        raise NotImplementedError

    @torch.inference_mode()
    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Compare two batches of images row by row.

        Args:
            a: (B, 3, S, S) floats in [0, 1] (stacked ``metric.preprocess`` outputs); a single (3, S, S) image is
                treated as B = 1.
            b: the same shape as ``a``.

        Returns:
            (B,) float32 on the CPU, in ``metric.cfg.unit``. When ``metric.lower_is_better`` is True a higher value
            means more different; when it is False (PSNR, SSIM) a higher value means more similar.

        Raises:
            TypeError: an input is not a tensor.
            ValueError: wrong shape or dtype, different batch sizes, or values outside [0, 1].
        """
        a, b = self.check_pair(a, b)
        if a.shape[0] == 0:
            return torch.empty(0, dtype=torch.float32)
        return self.compare(a, b).float().cpu()


def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # Per image (reduce over C, H, W only); +inf where the images are identical (zero MSE).
    from torchmetrics.functional.image import peak_signal_noise_ratio  # imported on use: ~2 s at CLI start-up

    return peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=(1, 2, 3))


def _ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # Gaussian window 11, sigma 1.5, k1 0.01, k2 0.03 (torchmetrics defaults); clamp float rounding past +-1.
    from torchmetrics.functional.image import structural_similarity_index_measure

    out = structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")
    assert isinstance(out, torch.Tensor)
    return out.clamp(-1.0, 1.0)


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(a, b, reduction="none").mean(dim=(1, 2, 3))


# measure name (PixelOptions.measure) → (function, lower_is_better)
_PIXEL_MEASURES: dict[str, tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], bool]] = {
    "psnr": (_psnr, False),
    "ssim": (_ssim, False),
    "mse": (_mse, True),
}


@dataclass(frozen=True)
class PixelOptions:
    """Options of the "pixel" builder: ``measure`` is "psnr", "ssim" or "mse"."""

    measure: str


@dataclass(frozen=True)
class LpipsOptions:
    """Options of the "lpips" builder.

    Attributes:
        trunk: "alexnet" | "vgg16" (the torchvision constructor whose ``features`` is the trunk).
        taps: indices into the trunk's ``features`` whose outputs are compared, increasing.
        shift: per-channel shift applied to inputs mapped to [-1, 1].
        scale: per-channel scale applied after the shift.
    """

    trunk: str
    taps: tuple[int, ...]
    shift: tuple[float, float, float] = (-0.030, -0.088, -0.188)
    scale: tuple[float, float, float] = (0.458, 0.448, 0.450)


class PixelMetric(PairwiseMetric):
    """A full-reference pixel measure (PSNR in dB, SSIM, MSE) on [0, 1] RGB pixels, data range 1.

    PSNR: higher means more similar; identical images give +inf. SSIM: in [-1, 1], higher means more similar,
    1 for identical images. MSE: in [0, 1], lower means more similar, 0 for identical images.
    """

    def __init__(self, cfg: MetricCfg, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], **kw: object):
        super().__init__(cfg, **kw)  # type: ignore[arg-type]
        self._fn = fn

    def compare(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self._fn(a, b)


def _check_direction(cfg: MetricCfg, lower_is_better: bool) -> None:
    if cfg.kind != "pairwise":
        raise ConfigError(f"metric {cfg.name!r}: builder {cfg.builder!r} makes pairwise metrics, cfg says "
                          f"{cfg.kind!r}")
    if cfg.lower_is_better != lower_is_better:
        raise InvalidArgument(f"metric {cfg.name!r}: cfg says lower_is_better={cfg.lower_is_better}, but its measure "
                              f"has lower_is_better={lower_is_better}; fix the config")


def _fp32_only(cfg: MetricCfg, dtype: torch.dtype) -> torch.dtype:
    if dtype != torch.float32:
        _logger.info("metric %s computes in float32; requested dtype %s is not used", cfg.name, dtype)
    return torch.float32


@register_builder("pixel", options=PixelOptions)
def build_pixel(cfg: MetricCfg, *, device: torch.device, dtype: torch.dtype, weights: str | Path | None) -> Metric:
    """PSNR / SSIM / MSE chosen by ``cfg.options.measure``; no weight files (``weights`` is ignored)."""
    measure = cfg.options.measure
    if measure not in _PIXEL_MEASURES:
        raise ConfigError(f"metric {cfg.name!r}: options.measure is {measure!r}; choose from {sorted(_PIXEL_MEASURES)}")
    fn, lower_is_better = _PIXEL_MEASURES[measure]
    _check_direction(cfg, lower_is_better)
    fingerprint = compute_fingerprint(cfg, {})  # no weight files: name only
    return PixelMetric(cfg, fn, device=device, dtype=_fp32_only(cfg, dtype), fingerprint=fingerprint)


def _unit_channels(x: torch.Tensor) -> torch.Tensor:
    """Divide each spatial position's feature vector by its L2 norm over channels (+ a tiny eps)."""
    return x / (x.square().sum(dim=1, keepdim=True).sqrt() + _NORM_EPS)


class LpipsNet(nn.Module):
    """LPIPS v0.1 on a torchvision ``features`` trunk.

    Args:
        trunk: a torchvision ``features`` Sequential (AlexNet or VGG16), weights already loaded.
        taps: indices of the trunk layers (ReLUs) whose outputs are compared, in increasing order.
        shift: per-channel shift applied to inputs in [-1, 1].
        scale: per-channel scale applied after the shift.
    """

    def __init__(self, trunk: nn.Sequential, taps: Sequence[int], shift: Sequence[float], scale: Sequence[float]):
        super().__init__()
        taps = tuple(int(t) for t in taps)
        if not taps or list(taps) != sorted(set(taps)) or taps[0] < 0 or taps[-1] >= len(trunk):
            raise InvalidArgument(f"LPIPS taps {taps} must be increasing indices into a trunk of {len(trunk)} layers")
        self.taps = taps
        self.trunk = trunk[: taps[-1] + 1]  # layers after the last tap never contribute
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in self._tap_channels())
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32).view(1, 3, 1, 1))

    def _tap_channels(self) -> list[int]:
        channels, width = [], None
        layers = list(self.trunk)
        for i, layer in enumerate(layers):
            if isinstance(layer, nn.Conv2d):
                width = layer.out_channels
            if i in self.taps:
                if width is None:
                    raise InvalidArgument(f"LPIPS tap {i} comes before any convolution of the trunk")
                channels.append(width)
        return channels

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) in [0, 1] → unit-normalized tap features, one (B, C_k, H_k, W_k) per tap."""
        x = (x * 2.0 - 1.0 - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.trunk):
            x = layer(x)
            if i in self.taps:
                out.append(_unit_channels(x))
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) and (B, 3, H, W) in [0, 1] → (B,) LPIPS distance, >= 0, higher means more different."""
        total = torch.zeros(a.shape[0], 1, 1, 1, dtype=torch.float32, device=a.device)
        for lin, fa, fb in zip(self.lins, self.features(a), self.features(b), strict=True):
            total = total + lin((fa - fb).square()).mean(dim=(2, 3), keepdim=True)
        return total.flatten()


class LpipsMetric(PairwiseMetric):
    """LPIPS v0.1 (Zhang et al. 2018): a learned perceptual distance, >= 0, lower means more similar."""

    def __init__(self, cfg: MetricCfg, net: LpipsNet, **kw: object):
        super().__init__(cfg, **kw)  # type: ignore[arg-type]
        self.net = net

    def compare(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.net(a, b)


# LpipsOptions.trunk → name of the torchvision constructor whose ``features`` is the LPIPS trunk
_TRUNKS = ("alexnet", "vgg16")


def _empty_trunk(name: str) -> nn.Sequential:
    """The ``features`` of a torchvision classifier, allocated but not initialized (weights are loaded next)."""
    if name not in _TRUNKS:
        raise InvalidArgument(f"unknown LPIPS trunk {name!r}; choose from {sorted(_TRUNKS)}")
    import torchvision

    with torch.device("meta"):  # skip the random init of the (large) classifier head
        model = getattr(torchvision.models, name)(weights=None)
    features = model.features
    assert isinstance(features, nn.Sequential)
    return features.to_empty(device="cpu")


def _load(path: Path) -> dict[str, torch.Tensor]:
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise InvalidArgument(f"{path} is not a flat state dict of tensors; is it the right file?")
    return sd


def read_torchvision_features(path: Path) -> dict[str, torch.Tensor]:
    """A torchvision classifier file (``features.*``, ``classifier.*``) → the ``features`` state dict.

    ``classifier.*`` keys are dropped (allow-listed); any other key is kept so a strict load reports it.
    """
    sd = _load(path)
    out = {k.removeprefix("features."): v for k, v in sd.items() if k.startswith("features.")}
    out.update({k: v for k, v in sd.items()
                if not k.startswith("features.") and not k.startswith(_TRUNK_IGNORED_PREFIXES)})
    return out


def read_lpips_lins(path: Path) -> dict[str, torch.Tensor]:
    """An LPIPS v0.1 linear-layer file (``lin0.model.1.weight`` ...) → ``ModuleList`` keys (``0.weight`` ...).

    Keys of another shape are kept unchanged so a strict load reports them.
    """
    out = {}
    for k, v in _load(path).items():
        m = _LIN_KEY.match(k)
        out[f"{m.group(1)}.weight" if m else k] = v
    return out


@register_builder("lpips", options=LpipsOptions)
def build_lpips(cfg: MetricCfg, *, device: torch.device, dtype: torch.dtype, weights: str | Path | None) -> Metric:
    """LPIPS v0.1 from two files, in ``cfg.extra_files`` order: the torchvision trunk, then the linear layers.

    ``cfg.options`` is an ``LpipsOptions``.

    Raises:
        WeightsNotFound: a file is neither in ``weights`` nor in ``$LOOKALIKE_HOME/lpips``.
        ValueError: a file that does not fit the model, or a malformed cfg.
    """
    _check_direction(cfg, lower_is_better=True)
    if len(cfg.extra_files) != 2:
        raise InvalidArgument(f"metric {cfg.name!r}: LPIPS needs 2 extra_files (trunk, linear layers), "
                              f"got {[wf.path for wf in cfg.extra_files]}")
    trunk_wf, lin_wf = cfg.extra_files
    paths = resolve_files(cfg.name, cfg.extra_files, weights)
    opts: LpipsOptions = cfg.options
    trunk = _empty_trunk(opts.trunk)
    load_state_dict_strict(trunk, read_torchvision_features(paths[trunk_wf.path]), paths[trunk_wf.path])
    net = LpipsNet(trunk, opts.taps, opts.shift, opts.scale)
    load_state_dict_strict(net.lins, read_lpips_lins(paths[lin_wf.path]), paths[lin_wf.path])
    net.eval().requires_grad_(False).to(device)
    fingerprint = compute_fingerprint(cfg, paths)
    _logger.debug("LPIPS %s: trunk %s, lins %s", cfg.name, paths[trunk_wf.path], paths[lin_wf.path])
    return LpipsMetric(cfg, net, device=device, dtype=_fp32_only(cfg, dtype), fingerprint=fingerprint)


# --- registrations -------------------------------------------------------------------------------------------------

_SQUASH_256 = PreprocessCfg(size=256)
_ANY_SIZE = "inputs squashed to 256x256 (PIL bicubic) so any two images compare"
for _name, _measure, _unit, _desc in (
    ("psnr", "psnr", "dB", "PSNR in dB on RGB pixels in [0, 1] (data range 1); higher = more similar, +inf for "
                           "identical images"),
    ("ssim", "ssim", "SSIM", "SSIM (Gaussian window 11, sigma 1.5) on RGB pixels in [0, 1]; in [-1, 1], higher = "
                             "more similar, 1 for identical images"),
    ("l2", "mse", "MSE", "mean squared error on RGB pixels in [0, 1]; in [0, 1], lower = more similar, 0 for "
                         "identical images"),
):
    register_metric(MetricCfg(name=_name, builder="pixel", kind="pairwise", family="baseline", unit=_unit,
                              lower_is_better=_PIXEL_MEASURES[_measure][1], preprocess=_SQUASH_256,
                              description=f"{_desc}; pairwise only; {_ANY_SIZE}",
                              options=PixelOptions(measure=_measure)))

for _name, _trunk, _taps, _trunk_file, _lin_file, _title in (
    ("lpips_alex", "alexnet", (1, 4, 7, 9, 11), "alexnet-owt-7be5be79.pth", "alex.pth", "AlexNet"),
    ("lpips_vgg", "vgg16", (3, 8, 15, 22, 29), "vgg16-397923af.pth", "vgg.pth", "VGG16"),
):
    register_metric(MetricCfg(
        name=_name, builder="lpips", kind="pairwise", family="baseline", unit="LPIPS", preprocess=_SQUASH_256,
        description=f"LPIPS v0.1 (Zhang et al. 2018) on an ImageNet {_title} trunk; >= 0, lower = more similar, 0 for "
                    f"identical images; pairwise only; {_ANY_SIZE}",
        options=LpipsOptions(trunk=_trunk, taps=_taps),
        extra_files=(release_file(_trunk_file), release_file(_lin_file)),
    ))
