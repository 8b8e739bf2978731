"""DiffSim re-ranking cost: the early stop after the captured layer, and the per-image feature cache.

    python bench/rerank.py                                   # tiny random SD-shaped pipeline, 512 px, k = 16
    python bench/rerank.py --shape sd15 --image-size 256 -k 4   # a random UNet/VAE/CLIP of SD 1.5's real shape

Random weights (no download): timings depend on the shapes only. Rows:
  capture, early stop: one image through VAE + UNet up to ``up_blocks[1]``'s last self-attention (what DiffSim runs);
  full UNet forward: the same image through the whole UNet (what the reference runs), as a ratio to the early stop;
  re-rank k, cold cache: one query against k candidates (k + 1 UNet passes);
  re-rank k, warm cache: a new query against the same k candidates (1 UNet pass);
  k direct pairs, reference noise: k pairs scored one by one with ``noise="reference"`` (2 passes per pair).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

from lookalike.metric import load_metric
from lookalike.metric.diffsim import DiffSimMetric, _Captured
from lookalike.metric.rerank import score_candidates

SD15_UNET = {"block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2, "cross_attention_dim": 768,
             "attention_head_dim": 8, "norm_num_groups": 32}


def _write_pipeline(folder: Path, shape: str) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from sd_tiny import write_tiny_sd

    if shape == "tiny":
        return write_tiny_sd(folder)
    # SD 1.5's real shapes: write the tiny folder, then overwrite unet / vae / text encoder with full-size ones
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    write_tiny_sd(folder)
    UNet2DConditionModel(sample_size=64, **SD15_UNET).save_pretrained(folder / "unet")
    AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                  block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                  sample_size=512).save_pretrained(folder / "vae")
    CLIPTextModel(CLIPTextConfig(vocab_size=600, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                 num_attention_heads=12, max_position_embeddings=77, bos_token_id=520,
                                 eos_token_id=521, pad_token_id=521)).save_pretrained(folder / "text_encoder")
    return folder


def _timed(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["tiny", "sd15"], default="tiny")
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("-k", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = _write_pipeline(Path(tmp) / "sd", args.shape)
        kw = {"device": args.device, "dtype": args.dtype, "image_size": args.image_size}
        m = load_metric("diffsim", weights=folder, **kw)
        # the same components with the reference noise protocol (no second copy of the weights in memory)
        ref = DiffSimMetric(m.cfg, vae=m.vae, unet=m.unet, text_encoder=m.text_encoder, tokenizer=m.tokenizer,
                            scheduler=m.scheduler, opts=dataclasses.replace(m.opts, noise="reference"),
                            device=m.device, dtype=m.dtype, fingerprint=m.fingerprint)
        s = args.image_size
        imgs = torch.rand(args.k + 2, 3, s, s, generator=torch.Generator().manual_seed(0))
        rows: list[tuple[str, float, str]] = []

        def early() -> None:
            m.clear_cache()
            m.pair_features(imgs[:1])

        t_early = _timed(early, args.repeat)
        rows.append(("capture, early stop (1 image)", t_early, "1.00x"))

        def full() -> None:
            # the same work without the early stop: the capture hook stays idle, the UNet runs to the end
            with torch.inference_mode(), m._precision():
                mean, std = m._posterior(imgs[:1].to(m.device))
                g = torch.Generator("cpu").manual_seed(0)
                noisy = m._noisy(mean, std, [g], [g])
                embeds = m._prompt()
                x = torch.cat([noisy] * embeds.shape[0])
                m.unet(x, m.timestep, encoder_hidden_states=embeds, return_dict=False)

        t_full = _timed(full, args.repeat)
        rows.append(("full UNet forward (1 image)", t_full, f"{t_full / t_early:.2f}x"))

        def cold() -> None:
            m.clear_cache()
            score_candidates(m, imgs[0], imgs[2:])

        t_cold = _timed(cold, args.repeat)
        rows.append((f"re-rank {args.k}, cold cache", t_cold, f"{t_cold / t_early:.2f}x"))
        m.clear_cache()
        score_candidates(m, imgs[0], imgs[2:])
        t_warm = _timed(lambda: (m._cache.pop(m._image_key(imgs[1]), None), score_candidates(m, imgs[1], imgs[2:])),
                        args.repeat)
        rows.append((f"re-rank {args.k}, warm cache (new query)", t_warm, f"{t_warm / t_early:.2f}x"))
        t_ref = _timed(lambda: [ref.distance(imgs[:1], imgs[i:i + 1]) for i in range(2, args.k + 2)], 1)
        rows.append((f"{args.k} direct pairs, reference noise", t_ref, f"{t_ref / t_early:.2f}x"))
    assert _Captured  # the early stop is DiffSim's own exception (imported to keep the bench honest if it moves)
    print(f"DiffSim on a random {args.shape} pipeline, {s} px, {args.device} {args.dtype or 'fp32'}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'what':44s} {'seconds':>9s} {'vs early stop':>14s}")
    for what, sec, ratio in rows:
        print(f"{what:44s} {sec:9.3f} {ratio:>14s}")


if __name__ == "__main__":
    main()
