"""LoRA fine-tuning: a learnable triplet task lifts held-out 2AFC; saved adapters load with ``load_metric`` and with
the reference ``dreamsim`` package; an interrupted run resumes to the same result."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lookalike.data.triplets import read_triplet_csv
from lookalike.judge.eval import evaluate_2afc
from lookalike.judge.train import TrainConfig, TrainingInterrupted, register_trained, train_metric
from lookalike.metric import load_metric, register_metric
from lookalike.metric._pretrained import IMAGENET_MEAN, IMAGENET_STD, BackboneCfg, MetricCfg, PreprocessCfg, ViTCfg
from lookalike.metric._registry import is_metric, list_metrics, register_backbone
from lookalike.metric.lora import read_adapter

MICRO = "test_vit_micro"


def _register_micro() -> None:
    """A random single-branch ViT (2 blocks, 96-d) on 64x64 inputs: 16 tokens, fast enough to train on a CPU."""
    list_metrics()  # load the packaged registry first
    if is_metric(MICRO):
        return
    register_backbone(BackboneCfg(
        name=MICRO, arch="vit", vit=ViTCfg(patch_size=16, img_size=64, embed_dim=96, depth=2, num_heads=3),
        mean=IMAGENET_MEAN, std=IMAGENET_STD, weights=None, weight_format="none", feature="cls"))
    register_metric(MetricCfg(name=MICRO, builder="perceptual", family="test", backbones=(MICRO,),
                              preprocess=PreprocessCfg(size=64), options={"seed": 0}))


_register_micro()


def _write_task(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """The triplet task: every image is mid-grey with high-contrast stripes (random orientation and phase: a
    nuisance that dominates an untrained network's features) and a faint colour tint, warm or cool (±0.03 on red
    and blue). The "closer" image shares the reference's tint; the stripes of all three are independent. An untuned
    random network is near chance; a linear read-out of the tint, which LoRA on the value projections can learn,
    solves it. The side of the correct image is random; p is 0 or 1 (one vote)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:64, 0:64]

    def image(name: str, warm: bool) -> str:
        grid = yy if rng.integers(2) else xx
        stripes = np.sin(2 * np.pi * (grid / 8.0 + rng.uniform()))
        tint = np.array([0.03, 0.0, -0.03]) * (1 if warm else -1)
        arr = 0.5 + tint + 0.35 * stripes[..., None] + rng.normal(0, 0.03, (64, 64, 3))
        Image.fromarray((np.clip(arr, 0, 1) * 255).round().astype(np.uint8)).save(root / name)
        return name

    rows = []
    for split, n in counts.items():
        for k in range(n):
            warm = bool(rng.integers(2))
            ref = image(f"{split}{k}_ref.png", warm)
            good = image(f"{split}{k}_same.png", warm)
            bad = image(f"{split}{k}_other.png", not warm)
            rows.append([ref, bad, good, 1, split] if rng.integers(2) else [ref, good, bad, 0, split])
    path = root / "triplets.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["ref", "left", "right", "p", "split"], *rows])
    return path


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_task(tmp_path_factory.mktemp("tint_task"), {"train": 160, "val": 60, "test": 200})


def test_training_lifts_heldout_2afc(task: Path, tmp_path: Path) -> None:
    train, val, test = (read_triplet_csv(task, split=s) for s in ("train", "val", "test"))
    out = tmp_path / "run"
    res = train_metric(MICRO, train, val, out, device="cpu",
                       config=TrainConfig(epochs=4, lr=2e-3, batch_size=16, checkpoint_every=0))
    before = evaluate_2afc(load_metric(MICRO, device="cpu"), test, center=False)
    name = register_trained(out)
    tuned = load_metric(name, weights=out, device="cpu")
    after = evaluate_2afc(tuned, test, center=False)
    print(f"\nheld-out 2AFC on {len(test)} triplets (tint task, {MICRO}): before {before.score:.3f} "
          f"[{before.ci_low:.3f}, {before.ci_high:.3f}] -> after {after.score:.3f} [{after.ci_low:.3f}, "
          f"{after.ci_high:.3f}]; val per epoch {[round(h['val_2afc'], 3) for h in res.history]}")
    assert 0.35 <= before.score <= 0.65  # near chance
    assert after.score - before.score >= 0.2
    # the loaded (merged) metric reproduces the validation score the trainer measured with peft
    assert abs(evaluate_2afc(tuned, val, center=False).score - res.best_val) <= 1 / len(val)
    assert res.history[res.best_epoch]["val_2afc"] == res.best_val == max(h["val_2afc"] for h in res.history)

    # files: the official peft layout, config.json, no checkpoint left behind
    cfg, tensors = read_adapter(out / f"{MICRO}_lora")
    assert cfg["r"] == 16 and cfg["lora_alpha"] == 32.0 and cfg["target_modules"] == ["qkv"]
    assert sorted(tensors) == sorted(f"base_model.model.extractor_list.0.model.blocks.{i}.attn.qkv.lora_{ab}.weight"
                                     for i in range(2) for ab in "AB")
    assert tensors["base_model.model.extractor_list.0.model.blocks.0.attn.qkv.lora_B.weight"].abs().sum() > 0
    meta = json.loads((out / "config.json").read_text())
    assert meta["metric"] == MICRO and meta["finished"] and meta["preprocess"]["size"] == 64
    assert meta["train"]["margin"] == 0.05 and meta["train"]["betas"] == [0.5, 0.999] and meta["center"] is False
    assert not (out / "checkpoint").exists()
    with pytest.raises(ValueError, match="already holds a finished run"):
        train_metric(MICRO, train, val, out, device="cpu", config=TrainConfig(epochs=1))


def test_interrupted_run_resumes_to_the_same_adapter(task: Path, tmp_path: Path) -> None:
    train, val = read_triplet_csv(task, split="train")[:32], read_triplet_csv(task, split="val")[:12]
    tc = TrainConfig(epochs=2, lr=2e-3, batch_size=8, checkpoint_every=0)
    ref = train_metric(MICRO, train, val, tmp_path / "straight", device="cpu", config=tc)
    out = tmp_path / "interrupted"
    with pytest.raises(TrainingInterrupted):
        train_metric(MICRO, train, val, out, device="cpu", config=tc, crash_at=5)  # epoch 2, its first step
    assert (out / "checkpoint" / "state.pt").is_file()
    with pytest.raises(ValueError, match="other settings"):
        train_metric(MICRO, train, val, out, device="cpu", config=TrainConfig(epochs=3, lr=2e-3, batch_size=8))
    res = train_metric(MICRO, train, val, out, device="cpu", config=tc)
    assert [h["val_2afc"] for h in res.history] == [h["val_2afc"] for h in ref.history]
    _, a = read_adapter(ref.adapter_dir)
    _, b = read_adapter(res.adapter_dir)
    assert all(torch.allclose(a[k], b[k], atol=1e-7) for k in a)


def test_train_rejects_non_vit_metric(task: Path, tmp_path: Path) -> None:
    ts = read_triplet_csv(task, split="val")
    with pytest.raises(ValueError, match="cannot be fine-tuned"):
        train_metric("efficientnet_lite0", ts, ts, tmp_path / "x", device="cpu")


def test_cli_train_json(task: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lookalike.app.cli import main

    small = _write_task(tmp_path / "small", {"train": 12, "val": 6})
    rc = main(["train", "--dataset", "triplets", "--root", str(small), "--metric", MICRO, "--out",
               str(tmp_path / "cli_run"), "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--no-progress",
               "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["train_triplets"] == 12 and out["val_triplets"] == 6
    assert [h["epoch"] for h in out["history"]] == [0, 1]
    assert (tmp_path / "cli_run" / f"{MICRO}_lora" / "adapter_model.safetensors").is_file()


@pytest.mark.parity
def test_reference_package_loads_our_adapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             demo_dir: Path) -> None:
    """Train a DreamSim DINO adapter (one big step on one triplet, random official-format weights), then load it with
    ``load_metric(..., weights=OUT)`` and with ``dreamsim==0.2.1``: same embeddings and distances."""
    pytest.importorskip("dreamsim", reason="reference package dreamsim==0.2.1 (test extra) not installed")
    from support import load_reference, write_official_cache

    home = tmp_path / "home"
    monkeypatch.setenv("LOOKALIKE_HOME", str(home))
    cache = write_official_cache(home / "dreamsim", ["dino_vitb16"], seed=7)
    shutil.rmtree(cache / "dino_vitb16_single_lora")  # only our adapter exists from here on
    photos = sorted(demo_dir.glob("*.png"))
    rows = [[p.name for p in photos[:3]] + [1], [p.name for p in photos[1:4]] + [0]]
    csv_path = tmp_path / "t.csv"
    for p in photos:
        shutil.copy(p, tmp_path / p.name)
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerows([["ref", "left", "right", "p"], *rows])
    ts = read_triplet_csv(csv_path)
    out = tmp_path / "run"
    train_metric("dreamsim_dino_vitb16", ts[:1], ts[1:], out, device="cpu",
                 config=TrainConfig(epochs=1, batch_size=1, lr=1e-2, margin=1.0, keep_epochs=True))
    # the epoch-1 adapter (the best one may be the untuned one on a single validation triplet)
    adapter = tmp_path / "tuned" / "dino_vitb16_single_lora"
    shutil.copytree(out / "epoch_1", adapter)
    assert read_adapter(adapter)[0]["lora_alpha"] == 32.0

    ours = load_metric("dreamsim_dino_vitb16", weights=adapter.parent, device="cpu")
    root = tmp_path / "ref_cache"
    (root / "checkpoints").mkdir(parents=True)
    for rel in ("checkpoints/dino_vitbase16_pretrain.pth", "dino_vitb16_pretrain.pth"):
        (root / rel).symlink_to(cache / rel)
    shutil.copytree(cache / "facebookresearch_dino_main", root / "facebookresearch_dino_main")
    shutil.copytree(adapter, root / "dino_vitb16_single_lora")
    ref, pre = load_reference(root, "dreamsim_dino_vitb16")
    x = torch.cat([pre(Image.open(p)) for p in photos[:3]])
    with torch.no_grad():
        e_ours, e_ref = ours.embed(x), ref.embed(x)
        assert (e_ours - e_ref).abs().max().item() <= 1e-5
        assert (ours.distance(x[:2], x[1:]) - ref(x[:2], x[1:])).abs().max().item() <= 1e-5
    # the adapter is not a no-op: one lr-1e-2 Adam step moved every lora_B away from its zero init
    _, tensors = read_adapter(adapter)
    assert len(tensors) == 24
    assert min(v.abs().max().item() for k, v in tensors.items() if "lora_B" in k) > 1e-3
