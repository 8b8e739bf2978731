"""Test support: write a tiny random Stable-Diffusion-1.5-shaped pipeline in the diffusers folder layout.

The folder has every file DiffSim reads from a real SD 1.5 download (``model_index.json``, ``scheduler/``,
``text_encoder/``, ``tokenizer/``, ``unet/``, ``vae/``), written by the real diffusers / transformers savers with
tiny channel counts and seeded random weights, so the whole loading and scoring path runs offline in seconds.
The tokenizer is a real CLIP BPE tokenizer over a small byte-level vocabulary and merges list written here.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# SD 1.5's own scheduler config (sd-legacy/stable-diffusion-v1-5: scheduler/scheduler_config.json).
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}

MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.6.0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def _bytes_to_unicode() -> list[str]:
    """GPT-2 / CLIP byte-level alphabet: one printable character per byte value."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tokenizer(folder: Path) -> None:
    """A CLIP BPE tokenizer in SD 1.5's file layout (vocab.json, merges.txt, tokenizer_config.json,
    special_tokens_map.json) over the byte alphabet and a handful of merges."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = _bytes_to_unicode()
    merges = [("h", "i"), ("g", "h"), ("q", "u"), ("a", "l"), ("i", "t"), ("g", "e</w>"), ("t", "y</w>")]
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        **special, "add_prefix_space": False, "do_lower_case": True, "errors": "replace", "model_max_length": 77,
        "tokenizer_class": "CLIPTokenizer"}), encoding="utf-8")


def resave_with_diffusers(src: Path, dst: Path) -> Path:
    """Load the pipeline at ``src`` with the installed diffusers / transformers and save it to ``dst`` as they do
    today (the tokenizer as ``tokenizer.json`` + ``tokenizer_config.json``: no ``vocab.json``, ``merges.txt`` or
    ``special_tokens_map.json``)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(src, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False, local_files_only=True)
    pipe.save_pretrained(dst)
    return Path(dst)


def write_tiny_sd(folder: Path, *, seed: int = 0) -> Path:
    """Write the tiny pipeline into ``folder`` (created) and return it."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=8,
    )
    unet.save_pretrained(folder / "unet")
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.18215,
    )
    vae.save_pretrained(folder / "vae")
    text = CLIPTextModel(CLIPTextConfig(vocab_size=600, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
                                        bos_token_id=520, eos_token_id=521, pad_token_id=521))
    text.save_pretrained(folder / "text_encoder")
    write_tokenizer(folder / "tokenizer")
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER, indent=2))
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))
    return folder
