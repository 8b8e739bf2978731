"""The diffusers Stable Diffusion folder DiffSim loads: what it must hold, where it is found, how it is loaded.

A folder is judged by what the pipeline needs, not by the file list of one release: each part (scheduler, text
encoder, tokenizer, UNet, VAE) needs one of a few sets of files, so a folder saved by current diffusers /
transformers (``tokenizer/tokenizer.json``, no ``special_tokens_map.json``) loads as well as the SD 1.5 download
(``vocab.json`` + ``merges.txt``). An explicit ``weights`` folder, then the user cache, are used as they are when
they hold every part; otherwise the release files are resolved (and downloaded) one by one as for any metric.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lookalike.common.errors import WeightFileError
from lookalike.metric._cache import explicit_root, get_cache_dir
from lookalike.metric._hub import resolve_files
from lookalike.metric._pretrained import MetricCfg
from lookalike.metric.releases import SD15_CACHE

SCHEDULERS = ("PNDMScheduler", "DDIMScheduler", "DDPMScheduler", "EulerDiscreteScheduler",
              "LMSDiscreteScheduler", "DPMSolverMultistepScheduler")

_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
                      "diffusion_pytorch_model.bin")
_TRANSFORMERS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")

#: Each part of the folder and the sets of files that make it loadable (the first set present is used).
SD_PARTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "pipeline": (("model_index.json",),),
    "scheduler": (("scheduler/scheduler_config.json",),),
    "text_encoder": tuple(("text_encoder/config.json", f"text_encoder/{w}") for w in _TRANSFORMERS_WEIGHTS),
    "tokenizer": (("tokenizer/tokenizer_config.json", "tokenizer/tokenizer.json"),
                  ("tokenizer/tokenizer_config.json", "tokenizer/vocab.json", "tokenizer/merges.txt")),
    "unet": tuple(("unet/config.json", f"unet/{w}") for w in _DIFFUSERS_WEIGHTS),
    "vae": tuple(("vae/config.json", f"vae/{w}") for w in _DIFFUSERS_WEIGHTS),
}


def folder_files(folder: Path) -> dict[str, Path] | None:
    """The files of ``folder`` the pipeline loads (one set per part), or None when a part has none of its sets."""
    found: dict[str, Path] = {}
    for choices in SD_PARTS.values():
        for files in choices:
            if all((folder / f).is_file() for f in files):
                found.update({f: folder / f for f in files})
                break
        else:
            return None
    return found


def resolve_sd_files(cfg: MetricCfg, weights: str | Path | None) -> dict[str, Path]:
    """The files of the Stable Diffusion folder to load: those of ``weights`` or of the cache when it holds every
    part, else the release files found (or downloaded) by ``resolve_files``.

    Raises:
        WeightsNotFound: release files are missing and cannot be downloaded (the message lists them).
        FileNotFoundError: ``weights`` is not a folder.
    """
    root = explicit_root(weights, cfg.name)
    for folder in ([root] if root is not None else []) + [get_cache_dir() / SD15_CACHE]:
        files = folder_files(folder)
        if files is not None:
            return files
    return resolve_files(cfg.name, cfg.extra_files, weights)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightFileError(f"{path} is not a readable JSON file ({e})",
                              hint="is the Stable Diffusion folder complete? 'lookalike weights verify diffsim'") from e
    if not isinstance(data, dict):
        raise WeightFileError(f"{path} does not hold a JSON object; is it a diffusers config?")
    return data


def load_components(paths: dict[str, Path], dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
    """The scheduler, UNet, VAE, text encoder and tokenizer of a diffusers SD folder (modules in eval mode).

    Args:
        paths: the folder's files (``resolve_sd_files``); each part loads from the folder of its config.

    Raises:
        ImportError: diffusers or transformers is not installed.
        WeightFileError: (a ValueError) a config or weight file that does not load.
    """
    try:
        import diffusers
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError as e:
        raise ImportError(f"diffsim needs diffusers and transformers ({e}); install them with: "
                          f"pip install 'lookalike[diffsim]'") from e

    sched_path = paths["scheduler/scheduler_config.json"]
    index_path = paths["model_index.json"]
    part = {name: paths[f"{name}/config.json"].parent for name in ("unet", "vae", "text_encoder")}
    part["tokenizer"] = paths["tokenizer/tokenizer_config.json"].parent
    sched_cfg = _read_json(sched_path)
    cls_name = sched_cfg.get("_class_name")
    if cls_name not in SCHEDULERS:
        raise WeightFileError(f"{sched_path}: scheduler {cls_name!r} is not one of {SCHEDULERS}")
    index = _read_json(index_path)
    if "unet" not in index or "vae" not in index:
        raise WeightFileError(f"{index_path} does not describe a Stable Diffusion pipeline (no unet / vae)")
    kw: dict[str, Any] = {"local_files_only": True}
    try:
        scheduler = getattr(diffusers, cls_name).from_config(sched_cfg)
        unet = diffusers.UNet2DConditionModel.from_pretrained(part["unet"], torch_dtype=dtype, **kw)
        vae = diffusers.AutoencoderKL.from_pretrained(part["vae"], torch_dtype=dtype, **kw)
        text_encoder = CLIPTextModel.from_pretrained(part["text_encoder"], torch_dtype=dtype, **kw)
        tokenizer = CLIPTokenizer.from_pretrained(part["tokenizer"], **kw)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise WeightFileError(f"the Stable Diffusion folder {index_path.parent} could not be loaded: "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                              hint="re-fetch damaged files with 'lookalike weights download diffsim'") from e
    for m in (unet, vae, text_encoder):
        m.eval().requires_grad_(False).to(device)
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler}
