"""Builders: MetricCfg + resolved weight files → a ready Metric. One per family, chosen by ``cfg.builder``."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

import lookalike.metric._readers  # noqa: F401  (registers the state-dict readers)
import lookalike.metric.backbones  # noqa: F401  (registers the backbones)
import lookalike.metric.baselines  # noqa: F401  (registers the pixel and LPIPS builders)
import lookalike.metric.unisim  # noqa: F401  (registers the open_clip builder for UniSim)
from lookalike.metric._base import Metric, center_l2, compute_fingerprint
from lookalike.metric._hub import resolve_files
from lookalike.metric._pretrained import MetricCfg, WeightFile
from lookalike.metric._registry import get_backbone_cfg, get_reader, register_builder
from lookalike.metric.ensemble import PerceptualMetric, PerceptualNet
from lookalike.metric.lora import ADAPTER_CONFIG, merge_adapter

_logger = logging.getLogger(__name__)


def required_files(cfg: MetricCfg) -> list[WeightFile]:
    """Every weight file ``cfg`` needs, in a stable order (used by resolution, download and ``info``)."""
    files: list[WeightFile] = []
    for name in cfg.backbones:
        wf = get_backbone_cfg(name).weights
        if wf is not None:
            files.append(wf)
    files.extend(cfg.adapter_files)
    files.extend(cfg.extra_files)
    unique: dict[str, WeightFile] = {}
    for wf in files:
        unique.setdefault(wf.path, wf)  # a file shared by two branches is listed once
    return list(unique.values())


def load_state_dict_strict(module: nn.Module, sd: dict[str, torch.Tensor], source: Path | str) -> None:
    """``load_state_dict(strict=True)`` with an error that names the file, the missing and unexpected keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    bad_shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in set(own) & set(sd) if sd[k].shape != own[k].shape]
    if missing or unexpected or bad_shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {unexpected[:3]})")
        if bad_shapes:
            parts.append(f"wrong shapes ({'; '.join(sorted(bad_shapes)[:3])})")
        raise ValueError(f"weights in {source} do not fit this model: " + ", ".join(parts) +
                         ". Is it the right file for this metric?")
    module.load_state_dict(sd, strict=True)


def _seeded_init(module: nn.Module, seed: int) -> None:
    """Deterministic random weights for test backbones (std 0.02 normal for linear/conv/tokens)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            if name.endswith(("norm1.weight", "norm2.weight", "norm.weight", "norm_pre.weight", "gamma")):
                p.fill_(1.0)
            elif name.endswith("bias") and "norm" in name:
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        for name, b in module.named_buffers():
            if name.endswith("proj"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.05)


def _finish(net: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    net.eval().requires_grad_(False)
    net.to(device)
    if dtype != torch.float32 and device.type != "cpu":
        net.to(dtype)  # every tensor is a parameter or buffer, so .to() reaches all of them
    return net


def build_perceptual_net(cfg: MetricCfg, weights: str | Path | None = None, *, with_adapter: bool = True
                         ) -> tuple[PerceptualNet, dict[str, Path]]:
    """The fp32 CPU ``PerceptualNet`` of a perceptual metric with its base weights loaded.

    Args:
        cfg: a config with ``builder == "perceptual"``.
        weights: optional folder searched first for the weight files.
        with_adapter: merge the config's LoRA adapter into the qkv weights (False: the raw backbones, e.g. as the
            starting point of LoRA training).

    Returns:
        (net in train mode with gradients enabled, {relative path: resolved file}).
    """
    bcfgs = [get_backbone_cfg(n) for n in cfg.backbones]
    files = required_files(cfg) if with_adapter else [b.weights for b in bcfgs if b.weights is not None]
    paths = resolve_files(cfg.name, files, weights) if files else {}
    net = PerceptualNet(bcfgs, patch=cfg.patch)
    for k, (ext, b) in enumerate(zip(net.extractor_list, bcfgs, strict=True)):
        if b.weights is None:
            _seeded_init(ext.model, int(cfg.options.get("seed", 0)) + k)
        else:
            path = paths[b.weights.path]
            load_state_dict_strict(ext.model, get_reader(b.weight_format)(path), path)
    if with_adapter and cfg.adapter:
        merge_adapter(net.extractor_list, paths[f"{cfg.adapter}/{ADAPTER_CONFIG}"].parent)
    return net, paths


@register_builder("perceptual")
def build_perceptual(cfg: MetricCfg, *, device: torch.device, dtype: torch.dtype,
                     weights: str | Path | None) -> Metric:
    net, paths = build_perceptual_net(cfg, weights)
    fingerprint = compute_fingerprint(cfg, paths) if paths else f"{cfg.name}-seed{cfg.options.get('seed', 0)}"
    _finish(net, device, dtype)
    return PerceptualMetric(cfg, net, device=device, dtype=dtype, fingerprint=fingerprint)


class TimmEmbeddingMetric(Metric):
    """A timm CNN's pooled pre-logits feature, centred and L2-normalized; distance = 1 - cosine.

    Runs channels_last (NHWC): oneDNN and cuDNN convolutions are faster in that layout (efficientnet_lite0 on a
    2-core CPU: ~1.7x in fp32); results agree with NCHW to ~1e-6.
    """

    def __init__(self, cfg: MetricCfg, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...],
                 **kw: object):
        super().__init__(cfg, **kw)  # type: ignore[arg-type]
        self.model = model.to(memory_format=torch.channels_last)
        self.register_buffer("mean", torch.tensor(mean, device=kw["device"]).view(1, 3, 1, 1))  # type: ignore[arg-type]
        self.register_buffer("std", torch.tensor(std, device=kw["device"]).view(1, 3, 1, 1))  # type: ignore[arg-type]
        self.dim = int(model.num_features)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.check_batch(x)
        with torch.inference_mode(), self._precision():
            x = ((x - self.mean) / self.std).to(next(self.model.parameters()).dtype)
            x = x.contiguous(memory_format=torch.channels_last)
            feats = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
            return center_l2(feats)


@register_builder("timm_efficientnet")
def build_timm_efficientnet(cfg: MetricCfg, *, device: torch.device, dtype: torch.dtype,
                            weights: str | Path | None) -> Metric:
    import timm

    wf = cfg.extra_files[0]
    path = resolve_files(cfg.name, [wf], weights)[wf.path]
    model = timm.create_model(cfg.options["timm_name"], pretrained=False, num_classes=1000)
    sd = get_reader(cfg.options["weight_format"])(path)
    load_state_dict_strict(model, sd, path)
    _finish(model, device, dtype)
    fingerprint = compute_fingerprint(cfg, {wf.path: path for wf in cfg.extra_files[:1]})
    return TimmEmbeddingMetric(cfg, model, tuple(cfg.options["mean"]), tuple(cfg.options["std"]),
                               device=device, dtype=dtype, fingerprint=fingerprint)
