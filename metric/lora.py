"""LoRA adapters in peft's on-disk layout: read, merge into the fused qkv weights, save."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lookalike.common.errors import WeightFileError

_logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_KEY = re.compile(
    r"^base_model\.model\.(?P<module>extractor_list\.(?P<k>\d+)\.model\.blocks\.(?P<i>\d+)\.attn\.qkv)"
    r"\.lora_(?P<ab>[AB])(?:\.default)?\.weight$"
)


def read_adapter(folder: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read ``adapter_config.json`` and the adapter tensors (safetensors, or a legacy ``adapter_model.bin``).

    Raises:
        FileNotFoundError: the folder or one of its files is missing.
        ValueError: the config is not a LoRA config this code can merge.
    """
    folder = Path(folder)
    cfg_path = folder / ADAPTER_CONFIG
    if not cfg_path.is_file():
        raise FileNotFoundError(f"adapter config {cfg_path} not found")
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    if cfg.get("peft_type", "LORA") != "LORA":
        raise WeightFileError(f"{cfg_path}: peft_type {cfg.get('peft_type')!r} is not LORA")
    if cfg.get("bias", "none") != "none":
        raise WeightFileError(f"{cfg_path}: bias={cfg.get('bias')!r} adapters are not supported "
                              f"(released ones use 'none')")
    if cfg.get("use_dora"):
        raise WeightFileError(f"{cfg_path}: DoRA adapters are not supported")
    for key in ("r", "lora_alpha"):
        if key not in cfg:
            raise WeightFileError(f"{cfg_path}: missing {key!r}")
    st = folder / ADAPTER_WEIGHTS
    if st.is_file():
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(st))
        except Exception as e:
            raise WeightFileError(f"cannot read adapter weights {st}: {e}") from e
    elif (folder / "adapter_model.bin").is_file():
        tensors = torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"adapter weights {st} not found")
    return cfg, tensors


def lora_scale(cfg: dict[str, Any], module: str) -> float:
    """alpha / r for ``module`` (honouring ``rank_pattern`` / ``alpha_pattern`` and ``use_rslora``)."""
    r = cfg["r"]
    alpha = cfg["lora_alpha"]
    for pattern, value in (cfg.get("rank_pattern") or {}).items():
        if re.fullmatch(rf"(.*\.)?{pattern}", module):
            r = value
    for pattern, value in (cfg.get("alpha_pattern") or {}).items():
        if re.fullmatch(rf"(.*\.)?{pattern}", module):
            alpha = value
    return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r


def adapter_deltas(folder: str | Path, *, branches: int | None = None) -> dict[tuple[int, int], torch.Tensor]:
    """The merged weight deltas ``scale * B @ A`` of an adapter, keyed by (branch k, block i), in float32."""
    folder = Path(folder)
    cfg, tensors = read_adapter(folder)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    where: dict[str, tuple[int, int]] = {}
    for key, value in tensors.items():
        m = _KEY.match(key)
        if m is None:
            raise WeightFileError(
                f"{folder / ADAPTER_WEIGHTS}: unexpected key {key!r}; expected "
                "'base_model.model.extractor_list.K.model.blocks.I.attn.qkv.lora_A|B.weight'"
            )
        pairs.setdefault(m["module"], {})[m["ab"]] = value
        where[m["module"]] = (int(m["k"]), int(m["i"]))
    deltas: dict[tuple[int, int], torch.Tensor] = {}
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise WeightFileError(f"{folder}: {module} has lora_{''.join(ab)} only")
        a, b = ab["A"].double(), ab["B"].double()
        if a.shape[0] != b.shape[1]:
            raise WeightFileError(f"{folder}: {module} lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} "
                                  f"do not chain")
        k, i = where[module]
        if branches is not None and k >= branches:
            raise WeightFileError(f"{folder}: adapter targets branch {k} but the model has {branches} branch(es)")
        deltas[(k, i)] = (lora_scale(cfg, module) * (b @ a)).float()
    if not deltas:
        raise WeightFileError(f"{folder}: adapter holds no LoRA tensors")
    return deltas


@torch.no_grad()
def merge_adapter(extractors: nn.ModuleList, folder: str | Path) -> int:
    """Add an adapter's deltas into the qkv weights of ``extractors[k].model.blocks[i].attn.qkv``.

    Returns:
        the number of qkv layers changed.
    """
    deltas = adapter_deltas(folder, branches=len(extractors))
    for (k, i), delta in deltas.items():
        blocks = extractors[k].model.blocks
        if i >= len(blocks):
            raise WeightFileError(f"{folder}: adapter targets block {i} but branch {k} has {len(blocks)} blocks")
        w = blocks[i].attn.qkv.weight
        if w.shape != delta.shape:
            raise WeightFileError(
                f"{folder}: delta for branch {k} block {i} is {tuple(delta.shape)}, qkv is {tuple(w.shape)}"
            )
        w.add_(delta.to(w.dtype))
    _logger.debug("merged %d LoRA deltas from %s", len(deltas), folder)
    return len(deltas)
