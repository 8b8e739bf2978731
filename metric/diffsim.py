"""DiffSim (Song, Liu, Shou: "DiffSim: Taming Diffusion Models for Evaluating Visual Similarity"): a pairwise metric.

A pretrained Stable Diffusion 1.5 UNet (diffusers) sees each image once, noised to one timestep; the query, key and
value of one self-attention layer are captured, and two images are similar when each one's queries, attending to
the *other* image's keys and values, give what they give on their own image ("aligned attention score"):

    score(A, B) = 1/2 [cos(vec SDPA(Q_A, K_B, V_B), vec SDPA(Q_A, K_A, V_A))
                       + cos(vec SDPA(Q_B, K_A, V_A), vec SDPA(Q_B, K_B, V_B))]

``vec`` flattens the whole captured batch (classifier-free guidance: unconditional + conditional rows, every head).
Higher means more similar; identical images under the same noise score 1.0.

The facts follow the reference code (showlab/DiffSim ``diffsim/diffsim.py``, ``diffsim/diffsim_pipeline.py``):
RGB resized to ``image_size`` square with Lanczos (aspect not kept) and scaled to [-1, 1]; VAE ``latent_dist``
sampled, times ``vae.config.scaling_factor``; ``scheduler.set_timesteps(1000)`` and ``t = timesteps[target_step]``;
``scheduler.add_noise``; one UNet forward with the batch (unconditional "" + conditional prompt); the tensors are
captured at the input of ``attn1`` of the last transformer block of the last attention module of ``up_blocks[1]``.

Noise. ``noise="reference"`` reproduces the reference protocol for one pair: a ``torch.Generator`` on the metric's
device seeded with ``seed`` draws, in order, the VAE sample of A, of B, the timestep noise of A, of B (so numbers can
be compared with the reference code on the same device). The default ``noise="per_image"`` seeds a CPU generator
from ``seed`` and the image's own pixels, so an image's captured tensors do not depend on what it is compared with:
they are computed once and cached (the re-ranker scores k candidates with k UNet passes, and a candidate seen before
costs none), and the same image always gets the same noise, whatever the device.

The UNet stops right after the tensors are captured (the layers after ``up_blocks[1]`` cannot change them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lookalike.common.errors import ConfigError
from lookalike.metric._base import Metric, compute_fingerprint
from lookalike.metric._diffsim_attention import DiffSimFeatures as DiffSimFeatures
from lookalike.metric._diffsim_attention import _Captured as _Captured
from lookalike.metric._diffsim_attention import aligned_scores as aligned_scores
from lookalike.metric._diffsim_attention import parse_block
from lookalike.metric._diffsim_attention import project_qkv as project_qkv
from lookalike.metric._diffsim_attention import target_attention as target_attention
from lookalike.metric._diffsim_attention import token_agreement as token_agreement
from lookalike.metric._diffsim_folder import load_components, resolve_sd_files
from lookalike.metric._pretrained import MetricCfg, PreprocessCfg
from lookalike.metric._registry import register_builder, register_metric
from lookalike.metric.releases import SD15_FILES, SD15_REPO, release_file
from lookalike.metric.rerank import FeaturePairwise

_logger = logging.getLogger(__name__)

#: Timestep presets of the paper's scripts (index into the 1000 scheduler timesteps).
TARGET_STEP_PRESETS = {"nights": 500, "cute": 600, "dreambench": 750, "ip": 750, "sref": 900, "instantstyle": 900,
                       "tid2013": 900}

NOISE_MODES = ("per_image", "reference")
_NUM_TIMESTEPS = 1000


@dataclass(frozen=True)
class DiffSimOptions:
    """Options of ``load_metric("diffsim", ...)`` (keyword arguments; a misspelt one is an error).

    Attributes:
        target_step: index into the 1000 scheduler timesteps (paper presets: NIGHTS 500, CUTE 600,
            DreamBench++ / IP 750, Sref / InstantStyle / TID2013 900; see ``TARGET_STEP_PRESETS``).
        prompt: the conditional text ("High quality image"; the paper's NIGHTS script uses "An image of a {prompt}").
        seed: the generator seed (2334 in the reference scripts).
        noise: "per_image" (default: noise from the seed and the image's pixels, features cacheable) or
            "reference" (one generator per pair, as the reference code draws it).
        image_size: square input side in pixels (512; a multiple of 64).
        guidance_scale: classifier-free guidance scale; > 1 puts the unconditional row in the batch (7.5).
        target_block: "up_blocks.N", "down_blocks.N" or "mid_block": where the captured layer is (the last
            transformer block of that block's last attention module).
        cache_images: how many images' captured tensors are kept (per_image noise only; 0 = none).
    """

    target_step: int = 500
    prompt: str = "High quality image"
    seed: int = 2334
    noise: str = "per_image"
    image_size: int = 512
    guidance_scale: float = 7.5
    target_block: str = "up_blocks.1"
    cache_images: int = 128

    def __post_init__(self) -> None:
        if not isinstance(self.target_step, int) or not 0 <= self.target_step < _NUM_TIMESTEPS:
            raise ConfigError(f"diffsim target_step must be an int in [0, {_NUM_TIMESTEPS}), got {self.target_step!r}",
                              hint=f"the paper's presets: {TARGET_STEP_PRESETS}")
        if self.noise not in NOISE_MODES:
            raise ConfigError(f"diffsim noise must be one of {NOISE_MODES}, got {self.noise!r}")
        if not isinstance(self.image_size, int) or self.image_size < 64 or self.image_size % 64:
            raise ConfigError(f"diffsim image_size must be a multiple of 64, >= 64; got {self.image_size!r}",
                              hint="512 is what Stable Diffusion 1.5 and the paper use")
        if not isinstance(self.prompt, str):
            raise ConfigError(f"diffsim prompt must be a string, got {type(self.prompt).__name__}")
        if not isinstance(self.seed, int):
            raise ConfigError(f"diffsim seed must be an int, got {self.seed!r}")
        if not isinstance(self.cache_images, int) or self.cache_images < 0:
            raise ConfigError(f"diffsim cache_images must be an int >= 0, got {self.cache_images!r}")
        parse_block(self.target_block)


class DiffSimMetric(FeaturePairwise, Metric):
    """DiffSim on a diffusers Stable Diffusion 1.5 pipeline; pairwise, higher = more similar (1.0 = same).

    Built by ``load_metric("diffsim", weights=SD15_FOLDER, **options)``; see :class:`DiffSimOptions`.
    """

    def __init__(self, cfg: MetricCfg, *, vae: nn.Module, unet: nn.Module, text_encoder: nn.Module, tokenizer: Any,
                 scheduler: Any, opts: DiffSimOptions, **kw: Any):
        super().__init__(cfg, **kw)
        self.opts = opts
        self.vae = vae
        self.unet = unet
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        scheduler.set_timesteps(_NUM_TIMESTEPS)
        self.timestep = scheduler.timesteps[opts.target_step]
        attn = target_attention(unet, opts.target_block)
        self._capture: list[torch.Tensor] | None = None
        self._hook = attn.register_forward_pre_hook(self._capture_hook, with_kwargs=True)
        self._prompt_embeds: torch.Tensor | None = None
        self._cache: OrderedDict[str, DiffSimFeatures] = OrderedDict()
        self._lock = threading.Lock()
        self.unet_passes = 0  # images sent through the UNet (for tests and benchmarks)

    @property
    def features_cacheable(self) -> bool:
        return self.opts.noise == "per_image"

    @property
    def model_dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    # -- capture -----------------------------------------------------------------------------------------------
    def _capture_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._capture is None:
            return
        hidden = args[0] if args else kwargs["hidden_states"]
        self._capture.extend(project_qkv(module, hidden))
        raise _Captured

    def _prompt(self) -> torch.Tensor:
        """(R, L, C): the text embeddings of the batch rows, unconditional ("") first when guidance is on."""
        if self._prompt_embeds is None:
            tok = self.tokenizer
            ids = tok(self.opts.prompt, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt")
            rows = [ids]
            if self.opts.guidance_scale > 1.0:
                rows.insert(0, tok([""], padding="max_length", max_length=ids.input_ids.shape[-1], truncation=True,
                                   return_tensors="pt"))
            use_mask = bool(getattr(self.text_encoder.config, "use_attention_mask", False))
            embeds = []
            with torch.inference_mode():
                for r in rows:
                    mask = r.attention_mask.to(self.device) if use_mask else None
                    embeds.append(self.text_encoder(r.input_ids.to(self.device), attention_mask=mask)[0])
            self._prompt_embeds = torch.cat(embeds).to(self.model_dtype)
        return self._prompt_embeds

    def _posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) in [0, 1] → the VAE posterior's (mean, std), each (B, 4, S/8, S/8)."""
        dist = self.vae.encode((x * 2.0 - 1.0).to(self.model_dtype)).latent_dist
        return dist.mean, dist.std

    def _unet_capture(self, noisy: torch.Tensor) -> list[DiffSimFeatures]:
        """Noisy latents (B, 4, h, w) → each image's captured (q, k, v, o) over the CFG rows."""
        embeds = self._prompt()
        rows = embeds.shape[0]
        b = noisy.shape[0]
        latent_in = self.scheduler.scale_model_input(torch.cat([noisy] * rows), self.timestep)
        text = embeds.repeat_interleave(b, dim=0)  # rows-major: [uncond x B, cond x B], as the reference batches
        self._capture = []
        try:
            self.unet(latent_in, self.timestep, encoder_hidden_states=text, return_dict=False)
        except _Captured:
            pass
        finally:
            captured, self._capture = self._capture, None
        if len(captured) != 3:
            raise RuntimeError(f"diffsim: the target attention layer {self.opts.target_block} did not run")
        self.unet_passes += b
        q, k, v = (t.view(rows, b, *t.shape[1:]).transpose(0, 1) for t in captured)  # (B, R, h, T, d)
        out = []
        for i in range(b):
            o = F.scaled_dot_product_attention(q[i], k[i], v[i])
            out.append(DiffSimFeatures(q[i].contiguous(), k[i].contiguous(), v[i].contiguous(), o))
        return out

    def _noisy(self, mean: torch.Tensor, std: torch.Tensor, gen_latent: Any, gen_noise: Any) -> torch.Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        eps = randn_tensor(mean.shape, generator=gen_latent, device=mean.device, dtype=mean.dtype)
        latents = (mean + std * eps) * self.vae.config.scaling_factor
        noise = randn_tensor(latents.shape, generator=gen_noise, device=latents.device, dtype=latents.dtype)
        return self.scheduler.add_noise(latents, noise, self.timestep.reshape(1))

    # -- per-image features (default noise) --------------------------------------------------------------------
    def _image_key(self, x: torch.Tensor) -> str:
        h = hashlib.blake2b(digest_size=16)
        h.update(repr((self.opts.seed, tuple(x.shape))).encode())
        h.update(x.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def _image_seed(self, key: str) -> int:
        return int(key[:15], 16)  # 60 bits of the image's key (which includes the seed)

    def pair_features(self, x: torch.Tensor) -> list[DiffSimFeatures]:
        """Captured tensors of each image of a preprocessed batch (per-image noise; cached by pixel content).

        Raises:
            ValueError: with ``noise="reference"``, where features depend on the pair (use ``distance``).
        """
        if not self.features_cacheable:
            raise ValueError("diffsim with noise='reference' draws noise per pair; per-image features need "
                             "noise='per_image'")
        x = self.check_batch(x)
        keys = [self._image_key(xi) for xi in x]
        with self._lock:
            first: dict[str, int] = {}
            for i, key in enumerate(keys):
                if key not in self._cache:
                    first.setdefault(key, i)  # an image twice in the batch goes through the UNet once
            todo = list(first.values())
            fresh: dict[str, DiffSimFeatures] = {}
            if todo:
                with torch.inference_mode(), self._precision():
                    xs = x[todo]
                    mean, std = self._posterior(xs)
                    gens_l = [torch.Generator("cpu").manual_seed(self._image_seed(keys[i])) for i in todo]
                    # one generator per image, drawn in the reference order: latent sample, then timestep noise
                    noisy = self._noisy(mean, std, gens_l, gens_l)
                    for i, f in zip(todo, self._unet_capture(noisy), strict=True):
                        fresh[keys[i]] = f
            out = [self._cache[k] if k in self._cache else fresh[k] for k in keys]
            if self.opts.cache_images:
                for k, f in fresh.items():
                    self._cache[k] = f
                for k in keys:
                    if k in self._cache:
                        self._cache.move_to_end(k)
                while len(self._cache) > self.opts.cache_images:
                    self._cache.popitem(last=False)
        return out

    def pair_scores(self, fa: DiffSimFeatures, fbs: Sequence[DiffSimFeatures]) -> torch.Tensor:
        return aligned_scores(fa, fbs).cpu()

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    # -- reference noise ---------------------------------------------------------------------------------------
    def reference_features(self, a: torch.Tensor, b: torch.Tensor) -> tuple[DiffSimFeatures, DiffSimFeatures]:
        """One pair's features with the reference protocol: one generator on the metric's device seeded with
        ``seed`` draws the VAE sample of A, of B, then the timestep noise of A, of B."""
        from diffusers.utils.torch_utils import randn_tensor

        with torch.inference_mode(), self._precision():
            mean, std = self._posterior(torch.stack([a, b]))
            g = torch.Generator(self.device).manual_seed(self.opts.seed)
            lat = []
            for i in range(2):
                eps = randn_tensor(mean[i:i + 1].shape, generator=g, device=mean.device, dtype=mean.dtype)
                lat.append((mean[i:i + 1] + std[i:i + 1] * eps) * self.vae.config.scaling_factor)
            noisy = [self.scheduler.add_noise(z, randn_tensor(z.shape, generator=g, device=z.device, dtype=z.dtype),
                                              self.timestep.reshape(1)) for z in lat]
            fa, fb = self._unet_capture(torch.cat(noisy))
        return fa, fb

    def _pairs(self, a: torch.Tensor, b: torch.Tensor) -> list[tuple[DiffSimFeatures, DiffSimFeatures]]:
        if self.features_cacheable:
            fa, fb = self.pair_features(a), self.pair_features(b)
            return list(zip(fa, fb, strict=True))
        return [self.reference_features(a[i], b[i]) for i in range(a.shape[0])]

    # -- the Metric API ----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """DiffSim score of each pair: (B,) float32 on the CPU, in [-1, 1], higher = more similar (1 = same).

        Args:
            a: (B, 3, S, S) in [0, 1] (stacked ``metric.preprocess`` outputs); b: the same shape.
        """
        a = self.check_batch(a, "a")
        b = self.check_batch(b, "b")
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"a and b must have the same batch size, got {a.shape[0]} and {b.shape[0]}")
        if a.shape[0] == 0:
            return torch.empty(0, dtype=torch.float32)
        return torch.cat([aligned_scores(fa, [fb]) for fa, fb in self._pairs(a, b)]).float().cpu()

    @torch.inference_mode()
    def distance_map(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Where A disagrees with B: 1 - per-token agreement of the aligned attention, (B, side, side) float32.

        Token t of A is 0 where A's query at t finds in B what it finds in A, up to 2 where it finds the opposite.
        """
        a = self.check_batch(a, "a")
        b = self.check_batch(b, "b")
        maps = []
        for fa, fb in self._pairs(a, b):
            agree = token_agreement(fa, fb)
            side = int(round(agree.numel() ** 0.5))
            maps.append((1.0 - agree).view(side, side))
        return torch.stack(maps).float().cpu()

    def extra_repr(self) -> str:
        return super().extra_repr() + f", opts={self.opts}"


@register_builder("diffsim", options=DiffSimOptions)
def build_diffsim(cfg: MetricCfg, *, device: torch.device, dtype: torch.dtype, weights: str | Path | None) -> Metric:
    """DiffSim from a diffusers SD 1.5 folder (``weights``, else ``$LOOKALIKE_HOME/diffsim/...``, else download).

    ``cfg.options`` is a :class:`DiffSimOptions` (``load_metric`` keyword options override it). Weights run in
    ``dtype`` on accelerators (fp16 / bf16); on the CPU they stay fp32 (reduced precision there is autocast).

    Raises:
        WeightsNotFound: files of the folder are missing (the message lists them and their URLs).
        ValueError: a bad option, or a folder that is not a Stable Diffusion pipeline.
    """
    opts: DiffSimOptions = cfg.options
    cfg = cfg.replace(preprocess=dataclasses.replace(cfg.preprocess, size=opts.image_size))
    paths = resolve_sd_files(cfg, weights)
    weight_dtype = dtype if device.type != "cpu" else torch.float32
    parts = load_components(paths, weight_dtype, device)
    # Every option that changes a value is part of the fingerprint (cache_images does not).
    tag = json.dumps({k: v for k, v in dataclasses.asdict(opts).items() if k != "cache_images"}, sort_keys=True)
    fingerprint = compute_fingerprint(cfg.replace(name=f"{cfg.name}:{tag}"), paths)
    fingerprint = f"{cfg.name}-{fingerprint.rsplit('-', 1)[-1]}"
    return DiffSimMetric(cfg, device=device, dtype=dtype, fingerprint=fingerprint, opts=opts, **parts)


register_metric(MetricCfg(
    name="diffsim",
    builder="diffsim",
    kind="pairwise",
    lower_is_better=False,
    family="diffusion",
    unit="DiffSim",
    description=("DiffSim (Song et al.): aligned self-attention score of a Stable Diffusion 1.5 UNet (up_blocks[1], "
                 "one noised timestep); in [-1, 1], higher = more similar, 1 for identical images; pairwise only "
                 "(re-ranks search results); weights: the diffusers folder of " + SD15_REPO),
    preprocess=PreprocessCfg(size=512, interpolation="lanczos"),
    options=DiffSimOptions(),
    extra_files=tuple(release_file(p) for p in SD15_FILES),
), overwrite=True)
