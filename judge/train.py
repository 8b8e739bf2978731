"""LoRA fine-tuning of a perceptual metric on 2AFC triplets, as DreamSim trains on NIGHTS (design/dreamsim-spec.md
§12): LoRA on every fused ``qkv`` layer, hinge loss on d0 - d1 with a margin, Adam.

Recipe (the reference defaults): margin 0.05; Adam lr 3e-4, betas (0.5, 0.999), no weight decay, no scheduler;
seed 1234; r 16; alpha 32 / dropout 0.2 for single-branch models, alpha 1.0 / dropout 0.3 for ensembles (the
released ensemble adapter's values); batch 32 and 8 epochs for single-branch models, 16 and 6 for ensembles;
uncentred cosine distances (``center=False``), as the reference trains.

The output folder::

    OUT/config.json                 what was trained: base metric, preprocessing, LoRA and training settings,
                                    per-epoch validation 2AFC, the best epoch
    OUT/<adapter>/                  the best adapter, in the official peft layout (adapter_config.json +
                                    adapter_model.safetensors); <adapter> is the metric's adapter folder name
                                    (e.g. dino_vitb16_single_lora) or "<metric>_lora"
    OUT/epoch_<n>/                  the adapter after each epoch (keep_epochs=True)
    OUT/checkpoint/state.pt         LoRA weights + optimizer + position, for resuming (deleted at the end)

``load_metric(name, weights=OUT)`` then loads the tuned metric when ``name`` has that adapter folder (the DreamSim
variants), and the reference ``dreamsim`` package loads ``OUT/<adapter>`` as it loads its own. For other metrics,
``register_trained(OUT)`` registers the tuned variant under a new name.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from lookalike.common.errors import InvalidArgument
from lookalike.common.io import atomic_write_json
from lookalike.data.images import open_image
from lookalike.data.transforms import build_transform
from lookalike.data.triplets import Triplet
from lookalike.judge.eval import embed_paths, score_2afc
from lookalike.metric import MetricCfg, WeightFile, get_device, get_metric_cfg, is_metric, register_metric
from lookalike.metric.ensemble import embedding_head
from lookalike.metric.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS

_logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.pt"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one fine-tuning run (None: the recipe default for the metric; see the module docstring).

    Attributes:
        epochs: passes over the training triplets.
        lr: Adam learning rate.
        betas: Adam betas.
        weight_decay: Adam weight decay.
        batch_size: triplets per step.
        lora_r: LoRA rank.
        lora_alpha: LoRA alpha (scaling alpha / r).
        lora_dropout: dropout on the LoRA input while training.
        margin: hinge margin on d0 - d1.
        center: mean-centre the embeddings in the training distance (the reference does not).
        seed: random seed (data order, LoRA init, dropout).
        workers: image decoding processes.
        checkpoint_every: steps between resumable checkpoints (0: only at the end of each epoch).
        keep_epochs: keep the adapter of every epoch in ``epoch_<n>/``.
    """

    epochs: int | None = None
    lr: float = 3e-4
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 0.0
    batch_size: int | None = None
    lora_r: int = 16
    lora_alpha: float | None = None
    lora_dropout: float | None = None
    margin: float = 0.05
    center: bool = False
    seed: int = 1234
    workers: int = 0
    checkpoint_every: int = 200
    keep_epochs: bool = False

    def resolved(self, cfg: MetricCfg) -> TrainConfig:
        """The config with every None replaced by the recipe default for ``cfg`` (ensemble or single branch)."""
        ensemble = len(cfg.backbones) > 1
        return TrainConfig(**{
            **asdict(self),
            "epochs": self.epochs if self.epochs is not None else (6 if ensemble else 8),
            "batch_size": self.batch_size if self.batch_size is not None else (16 if ensemble else 32),
            "lora_alpha": self.lora_alpha if self.lora_alpha is not None else (1.0 if ensemble else 32.0),
            "lora_dropout": self.lora_dropout if self.lora_dropout is not None else (0.3 if ensemble else 0.2),
            "betas": tuple(self.betas),
        })

    def check(self) -> None:
        for name in ("epochs", "batch_size", "lora_r"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise InvalidArgument(f"{name} must be >= 1, got {v}")
        if not self.lr > 0:
            raise InvalidArgument(f"lr must be > 0, got {self.lr}")
        if self.margin < 0:
            raise InvalidArgument(f"margin must be >= 0, got {self.margin}")
        if self.lora_dropout is not None and not 0 <= self.lora_dropout < 1:
            raise InvalidArgument(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            raise InvalidArgument(f"lora_alpha must be > 0, got {self.lora_alpha}")


@dataclass
class TrainResult:
    """What a run produced.

    Attributes:
        out: the output folder.
        adapter_dir: the best adapter (official peft layout).
        metric: the base metric name.
        best_epoch: the epoch of the best validation 2AFC (0: the untuned model was best).
        best_val: that validation 2AFC.
        history: one dict per evaluation: epoch, val_2afc, train_loss, steps, seconds.
    """

    out: Path
    adapter_dir: Path
    metric: str
    best_epoch: int
    best_val: float
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def val_before(self) -> float:
        return float(self.history[0]["val_2afc"])


class TrainingInterrupted(RuntimeError):
    """Raised by the ``crash_at`` test hook (after the checkpoint at that step was written)."""


def adapter_folder_name(cfg: MetricCfg) -> str:
    """The adapter folder a tuned ``cfg`` is saved under: its own (``dino_vitb16_single_lora``) or ``<name>_lora``."""
    return cfg.adapter or f"{cfg.name}_lora"


def official_adapter_config(r: int, alpha: float, dropout: float) -> dict[str, Any]:
    """``adapter_config.json`` with the field set of the released DreamSim adapters (peft 0.11.1), which every
    peft >= 0.10 reads (newer versions add defaults for fields they have and older ones do not)."""
    return {
        "alpha_pattern": {},
        "auto_mapping": {"base_model_class": "PerceptualModel", "parent_library": "dreamsim.model"},
        "base_model_name_or_path": None, "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
        "init_lora_weights": True, "layer_replication": None, "layers_pattern": None, "layers_to_transform": None,
        "loftq_config": {}, "lora_alpha": alpha, "lora_dropout": dropout, "megatron_config": None,
        "megatron_core": "megatron.core", "modules_to_save": None, "peft_type": "LORA", "r": r, "rank_pattern": {},
        "revision": None, "target_modules": ["qkv"], "task_type": None, "use_dora": False, "use_rslora": False,
    }


# --- data ----------------------------------------------------------------------------------------------------------


class _TripletImages(Dataset):
    """Triplet i → (ref, left, right) tensors and p."""

    def __init__(self, triplets: Sequence[Triplet], transform: Callable[[Image.Image], torch.Tensor]):
        self.triplets = list(triplets)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        t = self.triplets[i]
        return (self.transform(open_image(t.ref)), self.transform(open_image(t.left)),
                self.transform(open_image(t.right)), float(t.p))


def _batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The shuffled batches of one epoch (a pure function of seed and epoch, so a resumed run sees the same ones)."""
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


# --- model ---------------------------------------------------------------------------------------------------------


def _embed(net: nn.Module, x: torch.Tensor, *, center: bool, patch: bool) -> torch.Tensor:
    """The metric's embedding with gradients (the inference head, outside inference mode)."""
    return embedding_head(net(x), center=center, patch=patch)


def hinge_loss(d0: torch.Tensor, d1: torch.Tensor, p: torch.Tensor, margin: float) -> torch.Tensor:
    """DreamSim's loss: mean over the batch of max(0, margin - (d0 - d1) * y), y = 2 * round(p) - 1."""
    y = 2.0 * torch.round(p) - 1.0
    return torch.clamp(margin - (d0 - d1) * y, min=0.0).mean()


def _lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}


def _atomic_dir(final: Path, write: Callable[[Path], None]) -> None:
    """Write a folder under a temporary name, then swap it in (a reader never sees half a folder)."""
    tmp = final.with_name(final.name + ".tmp")
    old = final.with_name(final.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def save_adapter(model: nn.Module, folder: Path, tc: TrainConfig) -> Path:
    """Save the LoRA weights of a peft-wrapped PerceptualNet in the official layout (keys
    ``base_model.model.extractor_list.K.model.blocks.I.attn.qkv.lora_A|B.weight``, float32 safetensors)."""
    from safetensors.torch import save_file

    tensors = {k: v.float() for k, v in _lora_state(model).items()}
    cfg = official_adapter_config(tc.lora_r, float(tc.lora_alpha), float(tc.lora_dropout))  # type: ignore[arg-type]

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(cfg, indent=2), encoding="utf-8")

    _atomic_dir(folder, write)
    return folder


@torch.no_grad()
def _val_2afc(model: nn.Module, triplets: Sequence[Triplet], transform: Callable[[Image.Image], torch.Tensor],
              device: torch.device, tc: TrainConfig, patch: bool, progress: bool) -> float:
    was_training = model.training
    model.eval()
    try:
        paths = list(dict.fromkeys(p for t in triplets for p in (t.ref, t.left, t.right)))
        emb = embed_paths(lambda x: _embed(model, x.to(device), center=tc.center, patch=patch), transform, paths,
                          batch_size=tc.batch_size or 32, workers=tc.workers, progress=progress, desc="validate")
        row = {p: i for i, p in enumerate(paths)}
        e = torch.from_numpy(emb)
        ref = e[[row[t.ref] for t in triplets]]
        d0 = 1.0 - (ref * e[[row[t.left] for t in triplets]]).sum(-1)
        d1 = 1.0 - (ref * e[[row[t.right] for t in triplets]]).sum(-1)
        return float(score_2afc(d0, d1, [t.p for t in triplets]).mean())
    finally:
        model.train(was_training)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def train_metric(
    metric: str,
    train: Sequence[Triplet],
    val: Sequence[Triplet],
    out: str | os.PathLike[str],
    *,
    config: TrainConfig | None = None,
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    resume: bool = True,
    progress: bool = False,
    crash_at: int | None = None,
) -> TrainResult:
    """Fine-tune a perceptual metric with LoRA on 2AFC triplets.

    Args:
        metric: a registered perceptual (ViT) metric, e.g. "dreamsim_dino_vitb16", "dreamsim", "dino_vitb16". Training
            starts from its backbones without any released adapter.
        train: training triplets (``p`` = fraction judging ``right`` closer; the target is ``round(p)``).
        val: validation triplets, scored (2AFC) before training and after every epoch; the best epoch is kept.
        out: output folder (see the module docstring). An unfinished run there is resumed when ``resume``.
        config: training settings (default: the reference recipe).
        weights: folder searched first for the backbone weight files (as in ``load_metric``).
        device: "cuda", "mps" or "cpu" (default: best available).
        resume: continue an interrupted run found in ``out`` (False: refuse to overwrite it).
        progress: progress bars on stderr.
        crash_at: test hook: stop with TrainingInterrupted right after the checkpoint at this global step.

    Returns:
        A TrainResult; ``history[0]`` is the untuned model.

    Raises:
        ValueError: not a perceptual metric, empty data, bad settings, or a different run already in ``out``.
        WeightsNotFound: the backbone weights are missing.
    """
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    from lookalike.metric.ensemble import build_perceptual_net

    cfg = get_metric_cfg(metric)
    if cfg.builder != "perceptual":
        raise InvalidArgument(f"metric {metric!r} cannot be fine-tuned: LoRA training needs a ViT (perceptual) metric "
                              f"(this one is built by {cfg.builder!r})",
                              hint="use e.g. dreamsim_dino_vitb16, dreamsim or dino_vitb16")
    if len(train) == 0:
        raise InvalidArgument("no training triplets")
    if len(val) == 0:
        raise InvalidArgument("no validation triplets (the best epoch is chosen on them)")
    (config or TrainConfig()).check()
    tc = (config or TrainConfig()).resolved(cfg)
    out_dir = Path(out).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    adapter = adapter_folder_name(cfg)
    state_path = out_dir / CHECKPOINT_DIR / STATE_FILE
    settings = {k: v for k, v in asdict(tc).items() if k not in ("workers", "checkpoint_every", "keep_epochs")}
    run_key = json.loads(json.dumps({"metric": cfg.name, "train": len(train), "val": len(val), **settings}))
    state: dict[str, Any] | None = None
    if state_path.is_file():
        if not resume:
            raise InvalidArgument(f"{out_dir} holds an unfinished run; resume it (resume=True, the default) or choose "
                                  f"another folder")
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        if state.get("run_key") != run_key:
            raise InvalidArgument(f"{out_dir} holds an unfinished run with other settings ({state.get('run_key')}); "
                                  f"use another folder or delete {state_path.parent}")
    elif (out_dir / CONFIG_FILE).is_file() and (out_dir / adapter).is_dir():
        raise InvalidArgument(f"{out_dir} already holds a finished run ({CONFIG_FILE}, {adapter}/)",
                              hint="choose another output folder")

    _seed_all(tc.seed)
    dev = get_device(device)
    net, _ = build_perceptual_net(cfg, weights, with_adapter=False)
    lcfg = LoraConfig(r=tc.lora_r, lora_alpha=tc.lora_alpha, lora_dropout=tc.lora_dropout, bias="none",
                      target_modules=["qkv"])
    model = get_peft_model(net, lcfg)
    model.to(dev)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    transform = build_transform(cfg.preprocess)
    loader_ds = _TripletImages(train, transform)

    history: list[dict[str, Any]] = []
    epoch, step_in_epoch, global_step = 1, 0, 0
    best_epoch, best_val = 0, -math.inf
    running: list[float] = []
    if state is not None:
        set_peft_model_state_dict(model, state["lora"])
        opt.load_state_dict(state["optimizer"])
        epoch, step_in_epoch, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        history, best_epoch, best_val = state["history"], state["best_epoch"], state["best_val"]
        running = state.get("running", [])
        torch.set_rng_state(state["torch_rng"])
        _logger.info("resuming %s at epoch %d, step %d", out_dir, epoch, step_in_epoch)

    def write_config(final: bool) -> None:
        atomic_write_json(out_dir / CONFIG_FILE, {
            "format": FORMAT_VERSION, "kind": "lookalike-lora", "metric": cfg.name, "adapter": adapter,
            "backbones": list(cfg.backbones), "patch": cfg.patch, "center": tc.center,
            "preprocess": asdict(cfg.preprocess), "lora": {"r": tc.lora_r, "alpha": tc.lora_alpha,
                                                           "dropout": tc.lora_dropout, "target_modules": ["qkv"]},
            "train": {**settings, "betas": list(tc.betas), "train_triplets": len(train), "val_triplets": len(val)},
            "best_epoch": best_epoch, "best_val_2afc": best_val if math.isfinite(best_val) else None,
            "history": history, "finished": final,
        })

    def checkpoint() -> None:
        def write(tmp: Path) -> None:
            torch.save({"run_key": run_key, "lora": _lora_state(model), "optimizer": opt.state_dict(), "epoch": epoch,
                        "step_in_epoch": step_in_epoch, "global_step": global_step, "history": history,
                        "best_epoch": best_epoch, "best_val": best_val, "running": running,
                        "torch_rng": torch.get_rng_state()}, tmp / STATE_FILE)

        _atomic_dir(out_dir / CHECKPOINT_DIR, write)

    if not history:  # the untuned model
        t0 = time.time()
        v = _val_2afc(model, val, transform, dev, tc, cfg.patch, progress)
        history.append({"epoch": 0, "val_2afc": v, "train_loss": None, "steps": 0, "seconds": time.time() - t0})
        best_epoch, best_val = 0, v
        save_adapter(model, out_dir / adapter, tc)
        _logger.info("untuned %s: val 2AFC %.4f", cfg.name, v)
        write_config(False)
        checkpoint()

    try:
        while epoch <= tc.epochs:  # type: ignore[operator]
            t0 = time.time()
            batches = _batches(len(train), tc.batch_size, tc.seed, epoch)  # type: ignore[arg-type]
            bar = tqdm(total=len(batches), initial=step_in_epoch, desc=f"epoch {epoch}/{tc.epochs}", unit="step",
                       disable=not progress, leave=False)
            loader = DataLoader(torch.utils.data.Subset(loader_ds, [i for b in batches[step_in_epoch:] for i in b]),
                                batch_size=tc.batch_size, shuffle=False, num_workers=tc.workers,
                                generator=torch.Generator().manual_seed(tc.seed + epoch))  # keeps the global RNG
            try:
                for ref, left, right, p in loader:
                    x = torch.cat([ref, left, right]).to(dev)
                    e = _embed(model, x, center=tc.center, patch=cfg.patch)
                    er, e0, e1 = e.chunk(3)
                    d0 = 1.0 - (er * e0).sum(-1)
                    d1 = 1.0 - (er * e1).sum(-1)
                    loss = hinge_loss(d0, d1, p.to(dev, torch.float32), tc.margin)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    running.append(loss.item())
                    step_in_epoch += 1
                    global_step += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{np.mean(running[-50:]):.4f}")
                    if tc.checkpoint_every and global_step % tc.checkpoint_every == 0 or global_step == crash_at:
                        checkpoint()
                    if global_step == crash_at:
                        raise TrainingInterrupted(f"crash_at={crash_at} (test hook)")
            finally:
                bar.close()
            v = _val_2afc(model, val, transform, dev, tc, cfg.patch, progress)
            history.append({"epoch": epoch, "val_2afc": v, "train_loss": float(np.mean(running)) if running else None,
                            "steps": step_in_epoch, "seconds": time.time() - t0})
            _logger.info("epoch %d: train loss %.4f, val 2AFC %.4f", epoch, history[-1]["train_loss"] or 0.0, v)
            if tc.keep_epochs:
                save_adapter(model, out_dir / f"epoch_{epoch}", tc)
            if v >= best_val:  # a tie goes to the later (more trained) epoch
                best_epoch, best_val = epoch, v
                save_adapter(model, out_dir / adapter, tc)
            epoch, step_in_epoch, running = epoch + 1, 0, []
            write_config(False)
            checkpoint()
    except KeyboardInterrupt:
        checkpoint()
        _logger.warning("interrupted; run the same command again to resume from %s", out_dir / CHECKPOINT_DIR)
        raise
    write_config(True)
    shutil.rmtree(out_dir / CHECKPOINT_DIR, ignore_errors=True)
    _logger.info("best epoch %d (val 2AFC %.4f); adapter in %s", best_epoch, best_val, out_dir / adapter)
    return TrainResult(out=out_dir, adapter_dir=out_dir / adapter, metric=cfg.name, best_epoch=best_epoch,
                       best_val=best_val, history=history)


def read_train_config(out: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``config.json`` of a training output folder.

    Raises:
        FileNotFoundError: no config.json there. ValueError: not a lookalike LoRA folder.
    """
    path = Path(out).expanduser() / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a 'lookalike train' output folder")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("kind") != "lookalike-lora" or "metric" not in data or "adapter" not in data:
        raise InvalidArgument(f"{path} is not a lookalike LoRA config (kind {data.get('kind')!r})")
    return data


def register_trained(out: str | os.PathLike[str], name: str | None = None) -> str:
    """Register the tuned metric of a training output folder, so ``load_metric(name, weights=out)`` loads it.

    Args:
        out: the folder ``train_metric`` wrote.
        name: the new metric name (default ``"<base metric>+<folder name>"``).

    Returns:
        The registered name.
    """
    data = read_train_config(out)
    base = get_metric_cfg(data["metric"])
    adapter = data["adapter"]
    new = name or f"{base.name}+{Path(out).expanduser().resolve().name}"
    if is_metric(new) and get_metric_cfg(new).adapter != adapter:
        raise InvalidArgument(f"metric name {new!r} is taken; choose another name")
    files = tuple(WeightFile(path=f"{adapter}/{f}", cache_subdir="trained") for f in (ADAPTER_CONFIG, ADAPTER_WEIGHTS))
    cfg = base.replace(name=new, adapter=adapter, adapter_files=files, family="trained",
                       description=f"{base.name} + LoRA fine-tuned by lookalike train ({Path(out).name})")
    register_metric(cfg, overwrite=True)
    return new
