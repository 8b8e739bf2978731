"""The metric registry and core, driven by list_metrics(), on CPU with no network."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageEnhance

from lookalike.metric import WeightsNotFound, get_metric_cfg, list_metrics, load_metric
from lookalike.metric.lora import adapter_deltas, lora_scale, read_adapter

DREAMSIM_VARIANTS = [
    "dreamsim", "dreamsim_dino_vitb16", "dreamsim_clip_vitb32", "dreamsim_open_clip_vitb32",
    "dreamsim_dinov2_vitb14", "dreamsim_synclr_vitb16", "dreamsim_dino_vitb16_patch", "dreamsim_dinov2_vitb14_patch",
]
RAW = ["dino_vitb16", "dinov2_vitb14", "synclr_vitb16", "clip_vitb16", "clip_vitb32", "open_clip_vitb16",
       "open_clip_vitb32"]


def test_registry_has_every_released_variant_and_baseline() -> None:
    names = set(list_metrics())
    for n in DREAMSIM_VARIANTS + RAW + ["efficientnet_lite0", "psnr", "ssim", "l2", "lpips_alex", "lpips_vgg"]:
        assert n in names
    assert list_metrics("dreamsim*") == sorted(DREAMSIM_VARIANTS)
    assert "psnr" in list_metrics(kind="pairwise") and "psnr" not in list_metrics(kind="embedding")


@pytest.mark.parametrize("name", list_metrics(include_test=True))
def test_every_metric_loads_or_names_its_missing_weights(name: str, demo_dir: Path) -> None:
    cfg = get_metric_cfg(name)
    try:
        metric = load_metric(name, device="cpu")
    except WeightsNotFound as e:
        msg = str(e)
        assert e.hint and e.hint in msg  # the CLI prints message + hint; str() carries both for library users
        if any(wf.source for wf in e.missing):  # the ways out: download, a folder of one's own, an offline metric
            assert f"lookalike weights download {name}" in e.hint and "--weights DIR" in e.hint
        else:  # user-provided files (UniSim): say where to put them
            assert "weights folder" in e.hint and "lookalike weights download" not in msg
        assert "efficientnet_lite0, which needs no download" in e.hint and len(msg.splitlines()) <= 10
        for wf in e.missing:  # every file, and where it comes from (a hub repo's folder URL for its files)
            assert wf.path in msg
            if wf.source:
                assert wf.source in msg or (wf.source.endswith(wf.path) and wf.source.removesuffix(wf.path) in msg)
        return
    assert metric.name == name and metric.kind == cfg.kind
    assert isinstance(metric.lower_is_better, bool) and metric.fingerprint
    imgs = [Image.open(demo_dir / n) for n in ("ref_1.png", "img_a_1.png", "img_b_1.png")]
    x = torch.stack([metric.preprocess(im) for im in imgs])
    assert x.shape == (3, 3, metric.input_size, metric.input_size) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    d = metric.distance(x[[0, 0]], x[[1, 2]])
    assert d.shape == (2,) and torch.isfinite(d).all()
    same = metric.distance(x[:1], x[:1])
    # identical images are the most similar pair in the metric's own direction
    assert (same <= d).all() if metric.lower_is_better else (same >= d).all()
    if metric.kind == "embedding":
        e = metric.embed(x)
        assert e.shape == (3, metric.dim) and e.dtype == torch.float32
        assert torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
        assert torch.allclose(metric.distance_embeddings(e[[0, 0]], e[[1, 2]]), d, atol=1e-5)


def test_unknown_metric_suggests_close_names() -> None:
    with pytest.raises(KeyError, match="dreamsim"):
        load_metric("dreamsin")


def test_bad_inputs_give_clear_errors() -> None:
    m = load_metric("test_vit_tiny", device="cpu")
    with pytest.raises(ValueError, match=r"expects \(B, 3, 224, 224\)"):
        m.embed(torch.rand(2, 3, 256, 256))
    with pytest.raises(ValueError, match="expects"):
        m.embed(torch.rand(2, 1, 224, 224))
    with pytest.raises(ValueError, match="dtype"):
        m.embed(torch.zeros(1, 3, 224, 224, dtype=torch.uint8))
    with pytest.raises(TypeError, match="PIL"):
        m.preprocess(torch.rand(3, 10, 10))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same batch size"):
        m.distance(torch.rand(2, 3, 224, 224), torch.rand(3, 3, 224, 224))
    with pytest.raises(ValueError, match="dtype"):
        load_metric("test_vit_tiny", device="cpu", dtype="int8")
    with pytest.raises(TypeError, match="pairwise"):
        load_metric("psnr", device="cpu").embed(torch.rand(1, 3, 256, 256))


def test_wrong_checkpoint_is_rejected_with_the_file_named(tmp_path: Path) -> None:
    folder = tmp_path / "w"
    (folder / "checkpoints").mkdir(parents=True)
    bad = folder / "checkpoints" / "dino_vitbase16_pretrain.pth"
    torch.save({"something": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match="dino_vitbase16_pretrain.pth.*do not fit"):
        load_metric("dino_vitb16", weights=folder, device="cpu")
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="cannot read weight file"):
        load_metric("dino_vitb16", weights=folder, device="cpu")


def test_official_dino_adapter_fingerprints(official_dino_adapter: Path) -> None:
    """The released dino_vitb16 adapter: alpha/r from its JSON (scale 2.0), value sum -2.81606,
    per-block Frobenius norm of the scaled delta in [3.47, 4.20], 12 qkv layers of branch 0."""
    cfg, tensors = read_adapter(official_dino_adapter)
    assert len(tensors) == 24
    assert lora_scale(cfg, "extractor_list.0.model.blocks.0.attn.qkv") == pytest.approx(2.0)
    assert sum(float(t.double().sum()) for t in tensors.values()) == pytest.approx(-2.81606, abs=1e-4)
    deltas = adapter_deltas(official_dino_adapter)
    assert sorted(deltas) == [(0, i) for i in range(12)]
    norms = [float(d.norm()) for d in deltas.values()]
    assert all(3.47 - 0.01 <= n <= 4.20 + 0.01 for n in norms), norms
    assert all(d.shape == (2304, 768) for d in deltas.values())


def test_adapter_merge_changes_only_qkv(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from lookalike.metric.lora import merge_adapter

    base = load_metric("test_vit_tiny", device="cpu")
    before = {k: v.clone() for k, v in base.net.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for i in range(4):
        key = f"base_model.model.extractor_list.0.model.blocks.{i}.attn.qkv"
        tensors[f"{key}.lora_A.weight"] = torch.randn(4, 192, generator=g)
        tensors[f"{key}.lora_B.weight"] = torch.randn(576, 4, generator=g)
    (tmp_path / "adapter_config.json").write_text('{"r": 4, "lora_alpha": 8, "peft_type": "LORA", "bias": "none"}')
    save_file(tensors, str(tmp_path / "adapter_model.safetensors"))
    assert merge_adapter(base.net.extractor_list, tmp_path) == 4
    after = base.net.state_dict()
    changed = sorted(k for k in after if not torch.equal(after[k], before[k]))
    assert changed == [f"extractor_list.0.model.blocks.{i}.attn.qkv.weight" for i in range(4)]
    i = 2
    key = f"base_model.model.extractor_list.0.model.blocks.{i}.attn.qkv"
    expect = before[f"extractor_list.0.model.blocks.{i}.attn.qkv.weight"] + 2.0 * (
        tensors[f"{key}.lora_B.weight"] @ tensors[f"{key}.lora_A.weight"])
    assert torch.allclose(after[f"extractor_list.0.model.blocks.{i}.attn.qkv.weight"], expect, atol=1e-5)
    # a key for a branch the model does not have is an error, not a silent skip
    tensors["base_model.model.extractor_list.5.model.blocks.0.attn.qkv.lora_A.weight"] = torch.zeros(4, 192)
    tensors["base_model.model.extractor_list.5.model.blocks.0.attn.qkv.lora_B.weight"] = torch.zeros(576, 4)
    save_file(tensors, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="branch 5"):
        merge_adapter(base.net.extractor_list, tmp_path)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_reduced_precision_autocast_and_cast_weights(dtype: str, demo_dir: Path) -> None:
    """bf16/fp16 run on every branch type (DINO-style CLS and CLIP-style proj), with autocast (CPU) and with
    the weights themselves cast (the accelerator path), and stay close to fp32."""
    imgs = [Image.open(demo_dir / n) for n in ("ref_1.png", "img_a_1.png", "img_b_1.png")]
    ref = load_metric("test_vit_tiny", device="cpu")
    x = torch.stack([ref.preprocess(im) for im in imgs])
    e32 = ref.embed(x)
    low = load_metric("test_vit_tiny", device="cpu", dtype=dtype)
    assert low.autocast
    e_auto = low.embed(x)
    assert e_auto.dtype == torch.float32
    assert (e_auto * e32).sum(-1).min() >= 0.999
    cast = load_metric("test_vit_tiny", device="cpu", dtype=dtype)
    cast.net.to(cast.dtype)  # every tensor (incl. the CLIP projection) is a parameter or buffer
    cast.autocast = False
    assert all(t.dtype == cast.dtype for t in cast.net.state_dict().values())
    e_cast = cast.embed(x)
    assert (e_cast * e32).sum(-1).min() >= 0.999


def test_bf16_on_the_real_cnn(demo_dir: Path) -> None:
    names = ("ref_1.png", "img_a_1.png", "img_b_1.png", "icon_rgba.png", "teaser.jpg")
    m32 = load_metric("efficientnet_lite0", device="cpu")
    m16 = load_metric("efficientnet_lite0", device="cpu", dtype="bf16")
    x = torch.stack([m32.preprocess(Image.open(demo_dir / n)) for n in names])
    cos = (m32.embed(x) * m16.embed(x)).sum(-1)
    assert cos.min() >= 0.999, cos


def test_fingerprint_follows_the_weights(tmp_path: Path) -> None:
    a = load_metric("efficientnet_lite0", device="cpu")
    b = load_metric("efficientnet_lite0", device="cpu")
    assert a.fingerprint == b.fingerprint and a.fingerprint.startswith("efficientnet_lite0-")
    from lookalike.metric._cache import find_weight_file

    src = find_weight_file(a.cfg.extra_files[0])
    state = torch.load(src, map_location="cpu", weights_only=True)
    state["_fc.bias"] = state["_fc.bias"] + 1.0
    torch.save(state, tmp_path / "efficientnet-lite0-57934424.pth")
    c = load_metric("efficientnet_lite0", device="cpu", weights=tmp_path)
    assert c.fingerprint != a.fingerprint


def _edits(im: Image.Image) -> dict[str, Image.Image]:
    w, h = im.size
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=30)
    cw, ch = int(w * 0.85), int(h * 0.85)
    left, top = (w - cw) // 2, (h - ch) // 2
    return {
        "jpeg_q30": Image.open(io.BytesIO(buf.getvalue())).convert("RGB"),
        "resize_50": im.resize((w // 2, h // 2), Image.Resampling.BICUBIC),
        "crop_85": im.crop((left, top, left + cw, top + ch)),
        "bright_+10": ImageEnhance.Brightness(im).enhance(1.1),
        "bright_-10": ImageEnhance.Brightness(im).enhance(0.9),
    }


def test_efficientnet_finds_the_original_of_every_edited_copy(photos_dir: Path) -> None:
    """Real model, real photos: each edited copy's nearest original is its own (recall@1 = 1.0), and its nearest
    image overall belongs to the same photo."""
    m = load_metric("efficientnet_lite0", device="cpu")
    files = sorted(photos_dir.glob("*.jpg"))
    assert len(files) >= 20
    images, owner, is_orig = [], [], []
    for i, f in enumerate(files):
        im = Image.open(f).convert("RGB")
        for im2, orig in [(im, True)] + [(e, False) for e in _edits(im).values()]:
            images.append(im2)
            owner.append(i)
            is_orig.append(orig)
    emb = torch.cat([m.embed(torch.stack([m.preprocess(x) for x in images[j:j + 48]]))
                     for j in range(0, len(images), 48)])
    owner_t, orig_t = torch.tensor(owner), torch.tensor(is_orig)
    sim = emb @ emb.T
    sim.fill_diagonal_(-2.0)
    copies = torch.nonzero(~orig_t).squeeze(1)
    originals = torch.nonzero(orig_t).squeeze(1)
    nearest_original = originals[sim[copies][:, originals].argmax(dim=1)]
    recall_at_1 = (owner_t[nearest_original] == owner_t[copies]).float().mean().item()
    nearest_any = sim[copies].argmax(dim=1)
    same_photo = (owner_t[nearest_any] == owner_t[copies]).float().mean().item()
    print(f"efficientnet_lite0: {len(files)} photos x 5 edits: recall@1 (original) = {recall_at_1:.3f}, "
          f"nearest image from the same photo = {same_photo:.3f}")
    assert recall_at_1 == 1.0
    assert same_photo == 1.0


def test_enable_compile_is_opt_in_and_keeps_results() -> None:
    m = load_metric("test_vit_tiny", device="cpu")
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    e0 = m.embed(x)
    assert m.enable_compile(backend="eager") is m  # "eager" backend: exercises the wrapping without a C compiler
    assert torch.allclose(m.embed(x), e0, atol=1e-5)


def test_batch_size_fits_memory() -> None:
    from lookalike.metric._base import fit_batch_size, suggest_batch_size

    gb = 1 << 30
    assert fit_batch_size(20e6, 70 * gb) == 1024  # H100-class: capped
    assert fit_batch_size(20e6, 4 * gb) == 128  # 0.6 * 4 GiB / 20 MB = 128.8 -> the power of two below
    assert fit_batch_size(20e6, 10e6) == 1  # never below the floor
    assert fit_batch_size(0, gb, cap=256) == 256
    assert suggest_batch_size(load_metric("test_vit_tiny", device="cpu")) == 32


def test_device_follows_the_model_after_to() -> None:
    """``metric.device`` is read from the weights, so inputs follow ``metric.to(...)`` (here to "meta", which every
    machine has; the gpu test below does the same with CUDA)."""
    m = load_metric("test_vit_tiny", device="cpu")
    assert m.device.type == "cpu"
    m.to("meta")
    assert m.device.type == "meta"
    assert m.check_batch(torch.rand(1, 3, 224, 224)).device.type == "meta"  # not the load-time device
    psnr = load_metric("psnr", device="cpu")  # no tensors at all: the device is tracked through to()
    psnr.to("meta")
    assert psnr.device.type == "meta"


@pytest.mark.gpu
def test_device_follows_the_model_to_cuda(demo_dir: Path) -> None:
    m = load_metric("test_vit_tiny", device="cpu")
    x = torch.stack([m.preprocess(Image.open(demo_dir / n)) for n in ("ref_1.png", "img_a_1.png")])
    want = m.embed(x)
    m.to("cuda")
    assert m.device.type == "cuda"
    got = m.embed(x)  # a CPU batch goes to the model's device now
    assert got.device.type == "cuda" and torch.allclose(got.cpu(), want, atol=1e-4)
    assert m.distance(x, x.flip(0)).shape == (2,)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_reduced_precision_casts_weights_on_cuda(dtype: str) -> None:
    from lookalike.metric._base import suggest_batch_size

    m = load_metric("test_vit_tiny", device="cuda", dtype=dtype)
    ref = load_metric("test_vit_tiny", device="cuda")
    assert not m.autocast and next(m.net.parameters()).dtype == m.dtype != torch.float32
    x = torch.rand(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    e, e32 = m.embed(x), ref.embed(x)
    assert e.dtype == torch.float32 and float(torch.nn.functional.cosine_similarity(e, e32).min()) > 0.99
    size = suggest_batch_size(ref)
    assert size >= 8 and size & (size - 1) == 0  # a power of two fitted to the free GPU memory
