"""Shared pieces of the metric builders: the weight files a config needs, a strict state-dict load that names the
file, seeded random init for test towers, and moving a finished network to its device and dtype.

The builders themselves live beside their metrics (``ensemble``, ``cnn``, ``baselines``, ``unisim``), each registered
with ``register_builder(name, options=...)``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from lookalike.common.errors import WeightFileError
from lookalike.metric._pretrained import MetricCfg, WeightFile
from lookalike.metric._registry import get_backbone_cfg

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
        raise WeightFileError(f"weights in {source} do not fit this model: " + ", ".join(parts),
                              hint="is it the right file for this metric?")
    module.load_state_dict(sd, strict=True)


def seeded_init(module: nn.Module, seed: int) -> None:
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


def finish_module(net: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Inference mode (eval, no grad) on ``device``; weights cast to ``dtype`` off the CPU (autocast there)."""
    net.eval().requires_grad_(False)
    net.to(device)
    if dtype != torch.float32 and device.type != "cpu":
        net.to(dtype)  # every tensor is a parameter or buffer, so .to() reaches all of them
    return net
