"""2AFC scoring and JND mAP: hand-computed cases, a real CNN on edited real photos, and the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from lookalike.data.triplets import Pair, PairSet, Triplet, read_triplet_csv
from lookalike.judge.eval import (
    average_precision,
    bootstrap_ci,
    evaluate_2afc,
    evaluate_jnd,
    jnd_map,
    pair_distances,
    score_2afc,
)
from lookalike.metric import load_metric

# --- the scorer, by hand -------------------------------------------------------------------------------------------


def test_score_2afc_hard_votes_and_ties() -> None:
    # d0 < d1 picks left: scores 1 - p. d1 < d0 picks right: scores p. Equal: 0.5 whatever p.
    d0 = [0.1, 0.1, 0.5, 0.5, 0.3, 0.3]
    d1 = [0.2, 0.2, 0.4, 0.4, 0.3, 0.3]
    p = [0.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    assert score_2afc(d0, d1, p).tolist() == [1.0, 0.0, 1.0, 0.0, 0.5, 0.5]


def test_score_2afc_soft_p() -> None:
    # 4 of 5 people chose right (p = 0.8): siding with them earns 0.8, against them 0.2; a tie 0.5.
    s = score_2afc([0.9, 0.1, 0.4], [0.1, 0.9, 0.4], [0.8, 0.8, 0.8])
    assert s == pytest.approx([0.8, 0.2, 0.5])
    assert s.mean() == pytest.approx(1.5 / 3)


def test_score_2afc_similarity_direction() -> None:
    # PSNR-like: higher = more similar, so left (30 dB) beats right (20 dB); p = 0.25 -> 0.75.
    assert score_2afc([30.0], [20.0], [0.25], lower_is_better=False) == pytest.approx([0.75])
    # +inf (identical images) on both sides is a tie.
    assert score_2afc([np.inf], [np.inf], [1.0], lower_is_better=False) == pytest.approx([0.5])


def test_score_2afc_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="same length"):
        score_2afc([0.1, 0.2], [0.1], [0.5, 0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        score_2afc([0.1], [0.2], [1.5])
    with pytest.raises(ValueError, match="NaN"):
        score_2afc([np.nan], [0.2], [1.0])


def test_bootstrap_ci() -> None:
    assert bootstrap_ci([0.5] * 40) == pytest.approx((0.5, 0.5))
    rng = np.random.default_rng(1)
    s = (rng.random(400) < 0.8).astype(float)
    lo, hi = bootstrap_ci(s, seed=3)
    assert lo < s.mean() < hi
    # binomial standard error sqrt(.8 * .2 / 400) = 0.02: the 95% interval is about +-0.039
    assert 0.06 < hi - lo < 0.10
    assert bootstrap_ci(s, seed=3) == (lo, hi)  # reproducible


def test_jnd_map_by_hand() -> None:
    # perfectly ranked: both "same" pairs are the closest -> AP 1
    assert jnd_map([0.1, 0.2, 0.3, 0.4], [1, 1, 0, 0]) == pytest.approx(1.0)
    # worst ranking: precision 1/3 at recall 0.5 and 2/4 at recall 1; monotone envelope 0.5 everywhere -> 0.5
    assert jnd_map([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1]) == pytest.approx(0.5)
    # similarity direction flips the ranking
    assert jnd_map([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1], lower_is_better=False) == pytest.approx(1.0)
    # soft labels: same = [1, .5, 0]: precisions 1, 1.5/2, 1.5/3; recalls 1/1.5, 1, 1 -> AP = 2/3*1 + 1/3*.75
    assert jnd_map([0.1, 0.2, 0.3], [1.0, 0.5, 0.0]) == pytest.approx(2 / 3 + 0.25)
    with pytest.raises(ValueError, match="no pair was judged the same"):
        jnd_map([0.1, 0.2], [0, 0])


def test_average_precision_matches_lpips() -> None:
    lpips = pytest.importorskip("lpips", reason="lpips (test extra) not installed")
    rng = np.random.default_rng(0)
    for _ in range(5):
        rec = np.sort(rng.random(30))
        prec = rng.random(30)
        assert average_precision(rec, prec) == pytest.approx(float(lpips.voc_ap(rec, prec)), abs=1e-12)


# --- a real CNN on real photos -------------------------------------------------------------------------------------


def _edit(img: Image.Image) -> Image.Image:
    """A near-duplicate: 4% crop, slight brightening, smaller size."""
    w, h = img.size
    img = img.crop((int(0.02 * w), int(0.02 * h), int(0.98 * w), int(0.98 * h)))
    img = ImageEnhance.Brightness(img).enhance(1.08)
    return img.resize((int(img.width * 0.8), int(img.height * 0.8)), Image.Resampling.BILINEAR)


@pytest.fixture(scope="module")
def photo_triplets(photos_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A triplet CSV over real photos: the closer image is an edited copy of ref, the other a different photo.

    The side of the copy alternates, so a metric that always picks one side scores 0.5. Every photo is a reference
    once and the "farther" image of another triplet, so images repeat across triplets.
    """
    root = tmp_path_factory.mktemp("photo_triplets")
    photos = sorted(photos_dir.glob("*.jpg"))[:10]
    (root / "edited").mkdir()
    rows = []
    for i, ph in enumerate(photos):
        edited = root / "edited" / f"{ph.stem}.jpg"
        _edit(Image.open(ph).convert("RGB")).save(edited, quality=85)
        other = photos[(i + 3) % len(photos)]
        ref = str(ph)  # absolute paths are allowed
        if i % 2:
            rows.append([ref, str(other), f"edited/{edited.name}", 1])
        else:
            rows.append([ref, f"edited/{edited.name}", str(other), 0])
    path = root / "triplets.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ref", "left", "right", "p"])
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def cnn():  # type: ignore[no-untyped-def]
    return load_metric("efficientnet_lite0", device="cpu")


def test_efficientnet_on_edited_photos_scores_near_one(photo_triplets: Path, cnn) -> None:  # type: ignore[no-untyped-def]
    triplets = read_triplet_csv(photo_triplets)
    metric = cnn
    calls: list[int] = []
    embed = metric.embed

    def counting_embed(x):  # type: ignore[no-untyped-def]
        calls.append(x.shape[0])
        return embed(x)

    metric.embed = counting_embed  # type: ignore[method-assign]
    cache: dict = {}
    try:
        res = evaluate_2afc(metric, triplets, batch_size=8, cache=cache)
    finally:
        del metric.embed
    print(f"efficientnet_lite0 2AFC on {len(triplets)} edited-photo triplets: {res.score:.3f} "
          f"[{res.ci_low:.3f}, {res.ci_high:.3f}]")
    assert res.count == 10
    assert res.score >= 0.95
    assert res.ci_low <= res.score <= res.ci_high
    # 10 photos + 10 edited copies: each embedded exactly once although photos repeat across triplets
    assert sum(calls) == len(triplets.images()) == 20
    # flipping every vote turns the score around
    flipped = [Triplet(t.ref, t.left, t.right, 1.0 - t.p, t.id) for t in triplets]
    assert evaluate_2afc(metric, flipped, cache=cache).score == pytest.approx(1.0 - res.score)


def test_shared_cache_embeds_once_across_calls(photo_triplets: Path) -> None:
    triplets = read_triplet_csv(photo_triplets)
    metric = load_metric("test_vit_tiny", device="cpu")
    cache: dict = {}
    a = evaluate_2afc(metric, triplets[:5], cache=cache)
    n = len(cache)
    b = evaluate_2afc(metric, triplets, cache=cache)
    assert n < len(cache) == 20
    assert a.count == 5 and b.count == 10


def test_centering_flag(photo_triplets: Path, cnn) -> None:  # type: ignore[no-untyped-def]
    triplets = read_triplet_csv(photo_triplets)
    metric = load_metric("test_vit_tiny", device="cpu")
    assert metric.center is True
    seen: list[bool] = []  # metric.center as another session sharing this model would see it, at every embed
    embed = metric.embed

    def watching_embed(x, **kw):  # type: ignore[no-untyped-def]
        seen.append(metric.center)
        return embed(x, **kw)

    metric.embed = watching_embed  # type: ignore[method-assign]
    r_unc = evaluate_2afc(metric, triplets, center=False)
    assert r_unc.centered is False and seen and set(seen) == {True}  # never toggled, not even for a moment
    r_cen = evaluate_2afc(metric, triplets)
    assert r_cen.centered is True
    d_unc = pair_distances(metric, [(t.ref, t.left) for t in triplets], center=False)
    d_cen = pair_distances(metric, [(t.ref, t.left) for t in triplets])
    assert not np.allclose(d_unc, d_cen)  # the argument really changes the embeddings
    with pytest.raises(ValueError, match="no centring option"):
        evaluate_2afc(cnn, triplets, center=False)


def test_pairwise_metric_and_jnd(photo_triplets: Path, cnn) -> None:  # type: ignore[no-untyped-def]
    triplets = read_triplet_csv(photo_triplets)
    psnr = load_metric("psnr", device="cpu")
    res = evaluate_2afc(psnr, triplets)
    assert res.score >= 0.9  # an edited copy has a far higher PSNR than another photo
    pairs = PairSet("pairs", "all", "", tuple(
        [Pair(t.ref, t.left if t.p == 0 else t.right, 1.0, f"{t.id}s") for t in triplets]
        + [Pair(t.ref, t.right if t.p == 0 else t.left, 0.0, f"{t.id}d") for t in triplets]))
    jnd = evaluate_jnd(cnn, pairs)
    assert jnd.map >= 0.95 and jnd.count == 20


# --- CLI -------------------------------------------------------------------------------------------------------------


def test_cli_eval_2afc_json(photo_triplets: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lookalike.app.cli import main

    rc = main(["eval", "2afc", "--dataset", "triplets", "--root", str(photo_triplets), "--metric",
               "efficientnet_lite0", "--device", "cpu", "--no-progress", "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    (r,) = json.loads(out)
    assert r["split"] == "all" and r["count"] == 10 and r["score"] >= 0.95
    assert r["ci_low"] <= r["score"] <= r["ci_high"]


def test_cli_eval_reports_bad_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lookalike.app.cli import main

    bad = tmp_path / "t.csv"
    bad.write_text("ref,left,right,p\na.jpg,b.jpg,c.jpg,0.5\n")
    rc = main(["eval", "2afc", "--dataset", "triplets", "--root", str(bad), "--metric", "test_vit_tiny"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "line 2" in err and "a.jpg" in err


# --- UniSim (open_clip towers from a user-provided checkpoint) -------------------------------------------------------


def test_unisim_absent_checkpoint_is_a_typed_error() -> None:
    from lookalike.metric import WeightsNotFound, get_metric_cfg

    for name in ("unisim_vit_b_32", "unisim_vit_l_14"):
        assert get_metric_cfg(name).kind == "embedding"
        with pytest.raises(WeightsNotFound, match=rf"{name}\.pt"):
            load_metric(name, device="cpu")


def test_unisim_checkpoint_matches_hugging_face(tmp_path: Path, demo_dir: Path, registry) -> None:
    """A tiny UniSim-format checkpoint (HF CLIPModel, peft LoRA on the vision tower, 'module.'-prefixed state dict)
    loads into the open_clip tower and gives the Hugging Face model's embeddings; preprocessing equals
    CLIPImageProcessor's."""
    open_clip = pytest.importorskip("open_clip")
    transformers = pytest.importorskip("transformers")
    import torch
    from peft import LoraConfig, get_peft_model

    from lookalike.metric import register_metric
    from lookalike.metric._pretrained import MetricCfg, PreprocessCfg, WeightFile

    (tmp_path / "tiny-clip-test.json").write_text(json.dumps({
        "embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 1000, "width": 64, "heads": 2, "layers": 1}}))
    open_clip.add_model_config(tmp_path / "tiny-clip-test.json")
    torch.manual_seed(0)
    hf = transformers.CLIPModel(transformers.CLIPConfig(
        text_config={"hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 2, "num_hidden_layers": 1,
                     "vocab_size": 1000},
        vision_config={"hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 2, "num_hidden_layers": 2,
                       "image_size": 64, "patch_size": 32, "hidden_act": "gelu"},
        projection_dim=32)).eval()
    vision = get_peft_model(hf.vision_model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, bias="none",
                                                        target_modules=["k_proj", "v_proj", "q_proj", "out_proj",
                                                                        "fc1", "fc2"]))
    with torch.no_grad():
        for n, p in vision.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    sd = {f"vision_model.{k}": v for k, v in vision.state_dict().items()}
    sd.update({f"text_model.{k}": v for k, v in hf.text_model.state_dict().items()})
    sd["visual_projection.weight"] = hf.visual_projection.weight
    sd["text_projection.weight"] = hf.text_projection.weight
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "tiny_unisim.pt")
    register_metric(MetricCfg(name="test_unisim_tiny", builder="open_clip",
                              preprocess=PreprocessCfg(size=64, resize_mode="shorter_center_crop"),
                              options={"open_clip_model": "tiny-clip-test", "center": False, "lora_r": 16,
                                       "lora_alpha": 32},
                              extra_files=(WeightFile(path="tiny_unisim.pt", cache_subdir="unisim"),)), overwrite=True)
    metric = load_metric("test_unisim_tiny", weights=tmp_path, device="cpu")
    images = [Image.open(demo_dir / n) for n in ("teaser.jpg", "img_a_1.png", "icon_rgba.png")]
    x = torch.stack([metric.preprocess(im) for im in images])
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    proc = transformers.CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    pv = proc([im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
    diff = (pv - (x - mean) / std).abs()
    # HF's resize rounds a few pixels differently: at most one grey level on under 1% of the values
    assert diff.max().item() <= 1.01 / 255 / 0.26 and (diff > 1e-4).float().mean().item() < 0.01
    with torch.no_grad():
        want = torch.nn.functional.normalize(hf.visual_projection(vision(pixel_values=pv)["pooler_output"]), dim=-1)
    got = metric.embed(pv * std + mean)  # the same pixels: checks the weight conversion and the LoRA merge
    assert got.shape == (3, 32)
    assert (got - want).abs().max().item() < 1e-5
