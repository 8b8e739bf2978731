"""UniSim encoders (Ghazanfari et al. 2024, "Towards Unified Benchmark and Models for Multi-Modal Perceptual
Metrics", github.com/SaraGhazanfari/UniSim) as embedding metrics.

The released encoder checkpoints (``UniSim_ViT_b_32``: LAION-2B CLIP ViT-B/32; ``UniSim_ViT_l_14``: OpenAI CLIP
ViT-L/14 at 336 px) are PyTorch files holding the whole fine-tuned model: a Hugging Face ``CLIPModel`` whose vision
tower is wrapped by peft LoRA (r 16, alpha 32 on q/k/v/out projections and both MLP layers). They are shared through
Google Drive, with no direct download URL, so the user downloads them and passes the folder (``weights=DIR``) or puts
them in ``$LOOKALIKE_HOME/unisim/``; absent, loading fails with :class:`WeightsNotFound`.

The image tower is rebuilt with open_clip (``open_clip.create_model(name, pretrained=None)``): the checkpoint's
vision weights are renamed to open_clip's and the LoRA deltas merged (W + alpha/r * B @ A). A plain open_clip state
dict (``visual.*`` keys, or the visual tower's own keys) is accepted too. The embedding is the L2-normalized image
projection (UniSim compares images with plain cosine, no centring); distance = 1 - cosine.

Preprocessing follows the checkpoint's ``CLIPImageProcessor``: bicubic resize of the shorter side to the input size,
centre crop (``PreprocessCfg(resize_mode="shorter_center_crop")``), OpenAI CLIP mean/std (applied inside the model).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lookalike.common.errors import MissingDependency, WeightFileError
from lookalike.data.transforms import PreprocessCfg
from lookalike.metric._base import Metric, center_l2, compute_fingerprint
from lookalike.metric._builders import finish_module, load_state_dict_strict
from lookalike.metric._hub import resolve_files
from lookalike.metric._pretrained import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, MetricCfg
from lookalike.metric._registry import register_builder, register_metric
from lookalike.metric.releases import release_file

_logger = logging.getLogger(__name__)

_HF_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
_HF_TO_OPEN_CLIP_LAYER = {
    "layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj", "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def _unwrap(obj: Any, source: Path | str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise WeightFileError(f"{source}: not a state dict (got {type(obj).__name__})")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()
            if isinstance(v, torch.Tensor)}


def merge_peft_linear(sd: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """Fold peft LoRA wrappers into plain weights: ``X.base_layer.weight`` + ``scale * lora_B @ lora_A`` → ``X.weight``
    (``X.base_layer.bias`` → ``X.bias``); drops the ``base_model.model.`` prefix peft adds."""
    out: dict[str, torch.Tensor] = {}
    lora: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        k = k.replace("base_model.model.", "")
        m = re.match(r"^(.*)\.lora_([AB])(?:\.[^.]+)?\.weight$", k)
        if m:
            lora.setdefault(m[1], {})[m[2]] = v
            continue
        if ".lora_" in k:  # lora_dropout / embedding variants hold no tensors we need
            continue
        out[k.replace(".base_layer.", ".")] = v
    for module, ab in lora.items():
        if set(ab) != {"A", "B"}:
            raise WeightFileError(f"LoRA weights of {module} are incomplete (have lora_{''.join(sorted(ab))})")
        key = f"{module}.weight"
        if key not in out:
            raise WeightFileError(f"LoRA weights for {module} but no base weight {key}")
        delta = scale * (ab["B"].double() @ ab["A"].double())
        out[key] = (out[key].double() + delta).to(out[key].dtype)
    return out


def hf_clip_vision_to_open_clip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face CLIP vision tower (``vision_model.*`` + ``visual_projection.weight``, LoRA already
    merged) to the keys of open_clip's ``VisionTransformer`` (``model.visual``)."""
    vis = {k[len("vision_model."):]: v for k, v in sd.items() if k.startswith("vision_model.")}
    if "visual_projection.weight" not in sd or not vis:
        raise WeightFileError("not a Hugging Face CLIP checkpoint: 'vision_model.*' or 'visual_projection.weight' "
                              "missing")
    out = {
        "class_embedding": vis.pop("embeddings.class_embedding"),
        "conv1.weight": vis.pop("embeddings.patch_embedding.weight"),
        "positional_embedding": vis.pop("embeddings.position_embedding.weight"),
        "ln_pre.weight": vis.pop("pre_layrnorm.weight"), "ln_pre.bias": vis.pop("pre_layrnorm.bias"),
        "ln_post.weight": vis.pop("post_layernorm.weight"), "ln_post.bias": vis.pop("post_layernorm.bias"),
        "proj": sd["visual_projection.weight"].t().contiguous(),
    }
    vis.pop("embeddings.position_ids", None)
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in vis.items():
        m = _HF_LAYER.match(k)
        if m is None:
            raise WeightFileError(f"unexpected key in the CLIP vision tower: vision_model.{k}")
        layers.setdefault(int(m[1]), {})[m[2]] = v
    for i, p in sorted(layers.items()):
        pre = f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[pre + f"attn.in_proj_{kind}"] = torch.cat([p.pop(f"self_attn.{x}_proj.{kind}") for x in "qkv"])
            for hf, oc in _HF_TO_OPEN_CLIP_LAYER.items():
                out[pre + f"{oc}.{kind}"] = p.pop(f"{hf}.{kind}")
        if p:
            raise WeightFileError(f"unexpected keys in CLIP vision layer {i}: {sorted(p)}")
    return out


def read_visual_state_dict(path: Path, *, lora_scale: float) -> dict[str, torch.Tensor]:
    """The open_clip ``visual`` state dict from a UniSim (HF CLIP + peft LoRA) or open_clip checkpoint file."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightFileError(f"cannot read {path} as a PyTorch checkpoint: {e}") from None
    sd = _unwrap(obj, path)
    if any(k.startswith("vision_model.") for k in sd):
        sd = merge_peft_linear({k: v for k, v in sd.items() if k.startswith(("vision_model.", "visual_projection."))},
                               lora_scale)
        return hf_clip_vision_to_open_clip(sd)
    if any(k.startswith("visual.") for k in sd):
        return {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    if "conv1.weight" in sd and "proj" in sd:
        return sd
    raise WeightFileError(f"{path}: neither a UniSim checkpoint (Hugging Face CLIP 'vision_model.*' keys) nor an "
                          f"open_clip state dict ('visual.*' keys); first keys: {sorted(sd)[:5]}")


@dataclass(frozen=True)
class OpenClipOptions:
    """Options of the "open_clip" builder.

    Attributes:
        open_clip_model: the open_clip architecture (``open_clip.create_model(name, pretrained=None)``).
        quick_gelu: force QuickGELU (OpenAI CLIP towers).
        center: mean-centre the embedding before L2 (UniSim compares with plain cosine: False).
        lora_r: LoRA rank of the checkpoint's adapters (merged at load).
        lora_alpha: LoRA alpha (scale alpha / r).
    """

    open_clip_model: str
    quick_gelu: bool = False
    center: bool = False
    lora_r: int = 16
    lora_alpha: float = 32.0


class OpenClipImageMetric(Metric):
    """An open_clip image tower: L2-normalized projection (optionally centred first); distance = 1 - cosine."""

    def __init__(self, cfg: MetricCfg, visual: nn.Module, **kw: Any):
        super().__init__(cfg, **kw)
        self.visual = visual
        self.center = cfg.options.center
        mean = cfg.preprocess.mean or OPENAI_CLIP_MEAN  # CLIP's normalization unless the cfg says otherwise
        std = cfg.preprocess.std or OPENAI_CLIP_STD
        self.register_buffer("mean", torch.tensor(mean, device=kw["device"]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, device=kw["device"]).view(1, 3, 1, 1))
        self.dim = int(visual.output_dim)

    def embed(self, x: torch.Tensor, *, center: bool | None = None) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] → (B, dim) float32 unit vectors; ``center`` overrides ``self.center`` for this
        call only."""
        x = self.check_batch(x)
        with torch.inference_mode(), self._precision():
            x = ((x - self.mean) / self.std).to(next(self.visual.parameters()).dtype)
            return center_l2(self.visual(x), center=self.center if center is None else center)


@register_builder("open_clip", options=OpenClipOptions)
def build_open_clip(cfg: MetricCfg, *, device: torch.device, dtype: torch.dtype,
                    weights: str | Path | None) -> Metric:
    """open_clip architecture ``cfg.options.open_clip_model`` + the user's checkpoint (``cfg.extra_files[0]``)."""
    paths = resolve_files(cfg.name, list(cfg.extra_files[:1]), weights)
    path = paths[cfg.extra_files[0].path]
    try:
        import open_clip
    except ImportError:
        raise MissingDependency(f"metric {cfg.name!r} needs the package open_clip",
                                hint="pip install open_clip_torch") from None
    opts: OpenClipOptions = cfg.options
    model = open_clip.create_model(opts.open_clip_model, pretrained=None, force_quick_gelu=opts.quick_gelu)
    visual = model.visual
    del model
    sd = read_visual_state_dict(path, lora_scale=float(opts.lora_alpha) / float(opts.lora_r))
    load_state_dict_strict(visual, sd, path)
    finish_module(visual, device, dtype)
    return OpenClipImageMetric(cfg, visual, device=device, dtype=dtype,
                               fingerprint=compute_fingerprint(cfg, {cfg.extra_files[0].path: path}))


# --- registrations -------------------------------------------------------------------------------------------------

_GET_IT = ("The checkpoint is not downloadable by URL: get {ckpt} from the links in github.com/SaraGhazanfari/UniSim "
           "and save it as {file} in $LOOKALIKE_HOME/unisim/ or a folder passed as weights=DIR")
for _name, _desc, _model, _quick, _size, _dim, _ckpt in (
    ("unisim_vit_b_32", "UniSim ViT-B/32 (LAION-2B CLIP fine-tuned for multi-task perceptual similarity; Ghazanfari "
                        "et al. 2024), 512-d, plain cosine.", "ViT-B-32", False, 224, 512, "UniSim_ViT_b_32"),
    ("unisim_vit_l_14", "UniSim ViT-L/14 at 336 px (OpenAI CLIP fine-tuned for multi-task perceptual similarity; "
                        "Ghazanfari et al. 2024), 768-d, plain cosine.", "ViT-L-14-336", True, 336, 768,
     "UniSim_ViT_l_14"),
):
    register_metric(MetricCfg(
        name=_name, builder="open_clip", family="unisim", dim=_dim,
        description=f"{_desc} " + _GET_IT.format(ckpt=_ckpt, file=f"{_name}.pt"),
        preprocess=PreprocessCfg(size=_size, resize_mode="shorter_center_crop", mean=OPENAI_CLIP_MEAN,
                                 std=OPENAI_CLIP_STD),
        options=OpenClipOptions(open_clip_model=_model, quick_gelu=_quick, center=False, lora_r=16, lora_alpha=32.0),
        extra_files=(release_file(f"{_name}.pt"),),
    ))
