"""DiffSim on a tiny random SD-1.5-shaped pipeline written by the test: capture, score, noise protocols, re-ranking."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from sd_tiny import write_tiny_sd

from lookalike.data.images import open_image
from lookalike.indexer import build_index, search
from lookalike.metric import WeightsNotFound, load_metric
from lookalike.metric.diffsim import project_qkv, target_attention

pytest.importorskip("diffusers", reason="diffusers (test / diffsim extra) not installed")
pytest.importorskip("transformers", reason="transformers (test / diffsim extra) not installed")

PHOTOS = Path(__file__).parent / "fixtures" / "photos"
SIZE = 128  # latents 16 x 16; up_blocks[1] sees 4 x 4 tokens


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_sd(tmp_path_factory.mktemp("sd15") / "stable-diffusion-v1-5")


@pytest.fixture(scope="module")
def diffsim(sd_dir: Path):
    return load_metric("diffsim", weights=sd_dir, device="cpu", image_size=SIZE)


@pytest.fixture(scope="module")
def images(diffsim) -> torch.Tensor:
    return torch.stack([diffsim.preprocess(open_image(p)) for p in sorted(PHOTOS.glob("*.jpg"))[:4]])


def test_captured_tensors_are_the_attention_modules_own(diffsim, images) -> None:
    attn = target_attention(diffsim.unet, "up_blocks.1")
    assert attn is diffsim.unet.up_blocks[1].attentions[-1].transformer_blocks[-1].attn1
    seen: list[torch.Tensor] = []
    handle = attn.register_forward_pre_hook(lambda mod, args, kw: seen.append(args[0].clone()), with_kwargs=True,
                                            prepend=True)
    try:
        diffsim.clear_cache()
        f = diffsim.pair_features(images[:1])[0]
    finally:
        handle.remove()
    (hidden,) = seen  # the layer's input for the CFG batch: [unconditional, conditional]
    assert hidden.shape[0] == 2 and f.q.shape[0] == 2
    q = attn.to_q(hidden).view(2, -1, attn.heads, f.q.shape[-1]).transpose(1, 2)
    k = attn.to_k(hidden).view(2, -1, attn.heads, f.q.shape[-1]).transpose(1, 2)
    v = attn.to_v(hidden).view(2, -1, attn.heads, f.q.shape[-1]).transpose(1, 2)
    assert torch.equal(f.q, q) and torch.equal(f.k, k) and torch.equal(f.v, v)
    # ... and they reproduce the module's own output (run here in full, with the capture hook idle)
    with torch.inference_mode():
        own = attn(hidden)
    merged = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, -1, attn.heads * q.shape[-1])
    assert torch.allclose(attn.to_out[0](merged), own, atol=1e-5)
    assert torch.allclose(f.o, F.scaled_dot_product_attention(q, k, v), atol=1e-6)
    assert [t.shape for t in project_qkv(attn, hidden)] == [q.shape] * 3


def test_symmetric_and_one_for_identical_images(diffsim, images) -> None:
    a, b = images[[0, 1, 2]], images[[1, 2, 0]]
    ab, ba = diffsim.distance(a, b), diffsim.distance(b, a)
    assert torch.equal(ab, ba)
    same = diffsim.distance(images, images)
    assert same == pytest.approx([1.0] * len(images), abs=1e-5)
    assert (ab < 1.0 - 1e-4).all() and (ab > -1.0).all()
    assert diffsim.lower_is_better is False and diffsim.kind == "pairwise"
    # per-image noise is a property of the image: the same score in any batch, any order
    assert diffsim.distance(images[:1], images[1:2])[0] == pytest.approx(float(ab[0]), abs=1e-6)


def test_reference_noise_protocol_matches_the_diffusers_pipeline(sd_dir: Path, images) -> None:
    """noise="reference": one generator draws VAE sample A, B, then the timestep noise of A, B (reference order)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils.torch_utils import randn_tensor

    m = load_metric("diffsim", weights=sd_dir, device="cpu", image_size=SIZE, noise="reference", seed=7,
                    target_step=600, prompt="An image of a dog")
    got = float(m.distance(images[:1], images[1:2])[0])
    pipe = StableDiffusionPipeline.from_pretrained(sd_dir, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False, local_files_only=True)
    attn = pipe.unet.up_blocks[1].attentions[-1].transformer_blocks[-1].attn1
    store: dict[str, torch.Tensor] = {}

    def hook(mod, args, kw):
        h = args[0]
        store.update(q=mod.to_q(h), k=mod.to_k(h), v=mod.to_v(h))

    attn.register_forward_pre_hook(hook, with_kwargs=True)
    with torch.inference_mode():
        cond, uncond = pipe.encode_prompt("An image of a dog", "cpu", 1, True)
        text = torch.cat([uncond, cond])
        pipe.scheduler.set_timesteps(1000)
        t = pipe.scheduler.timesteps[600]
        g = torch.Generator("cpu").manual_seed(7)
        lat = [pipe.vae.encode(x[None] * 2 - 1).latent_dist.sample(g) * pipe.vae.config.scaling_factor
               for x in images[:2]]
        qkv = []
        for z in lat:
            noisy = pipe.scheduler.add_noise(z, randn_tensor(z.shape, generator=g), t.reshape(1))
            pipe.unet(torch.cat([noisy] * 2), t, encoder_hidden_states=text)
            qkv.append([store[n].view(2, -1, attn.heads, store[n].shape[-1] // attn.heads).transpose(1, 2)
                        for n in "qkv"])
    (qa, ka, va), (qb, kb, vb) = qkv
    sdpa = F.scaled_dot_product_attention
    want = (F.cosine_similarity(sdpa(qa, kb, vb).reshape(1, -1), sdpa(qa, ka, va).reshape(1, -1))
            + F.cosine_similarity(sdpa(qb, ka, va).reshape(1, -1), sdpa(qb, kb, vb).reshape(1, -1))) / 2
    assert got == pytest.approx(float(want), abs=1e-5)
    # reference noise differs per image of the pair, so an image against itself is not exactly 1
    assert float(m.distance(images[:1], images[:1])[0]) < 1.0 - 1e-4
    with pytest.raises(ValueError, match="per_image"):
        m.pair_features(images[:1])


def test_reranker_equals_direct_pairwise_scoring(diffsim, tmp_path: Path) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    for p in sorted(PHOTOS.glob("*.jpg"))[:6]:
        shutil.copy2(p, root / p.name)
    build_index(root, tmp_path / "idx", metric="test_vit_tiny", device="cpu", workers=0, progress=False)
    query = sorted(root.iterdir())[2]
    cands = search(tmp_path / "idx", query, k=6)
    diffsim.clear_cache()
    before = diffsim.unet_passes
    hits = search(tmp_path / "idx", query, k=6, rerank=diffsim, rerank_k=6)
    assert diffsim.unet_passes - before == 6  # the query is one of the 6 candidates: one pass per image
    xq = diffsim.preprocess(open_image(query))[None]
    direct = [(float(diffsim.distance(xq, diffsim.preprocess(open_image(h.path))[None])[0]), h.path) for h in cands]
    direct.sort(key=lambda t: -t[0])
    assert [h.path for h in hits] == [p for _, p in direct]
    assert [h.score for h in hits] == pytest.approx([v for v, _ in direct], abs=1e-6)
    assert hits[0].path == str(query) and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert all(h.scored_by == "diffsim" and h.lower_is_better is False for h in hits)
    before = diffsim.unet_passes
    search(tmp_path / "idx", query, k=3, rerank=diffsim, rerank_k=6)
    assert diffsim.unet_passes == before  # every image's tensors are cached


def test_distance_map(diffsim, images) -> None:
    maps = diffsim.distance_map(images[:2], images[[0, 2]])
    assert maps.shape == (2, SIZE // 32, SIZE // 32)
    assert maps[0].abs().max() < 1e-5  # identical images agree everywhere
    assert maps[1].mean() > 1e-4


def test_options_are_validated(sd_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['target_stp'\].*valid"):
        load_metric("diffsim", weights=sd_dir, device="cpu", target_stp=5)
    with pytest.raises(ValueError, match="target_step"):
        load_metric("diffsim", weights=sd_dir, device="cpu", target_step=1000)
    with pytest.raises(ValueError, match="noise"):
        load_metric("diffsim", weights=sd_dir, device="cpu", noise="shared")
    with pytest.raises(ValueError, match="image_size"):
        load_metric("diffsim", weights=sd_dir, device="cpu", image_size=100)
    with pytest.raises(ValueError, match="unknown option"):
        load_metric("ssim", device="cpu", target_step=3)


def test_fingerprint_follows_the_options(sd_dir: Path, diffsim) -> None:
    other = load_metric("diffsim", weights=sd_dir, device="cpu", image_size=SIZE, target_step=900)
    same = load_metric("diffsim", weights=sd_dir, device="cpu", image_size=SIZE, cache_images=0)
    assert other.fingerprint != diffsim.fingerprint and same.fingerprint == diffsim.fingerprint


def test_missing_weights_name_the_hugging_face_files(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFound) as e:
        load_metric("diffsim", weights=tmp_path, device="cpu")
    msg = str(e.value)
    # the repo's files, named under the folder URL they come from (one line for the repo, not one per file)
    assert "https://huggingface.co/sd-legacy/stable-diffusion-v1-5/resolve/main/" in msg
    assert "unet/diffusion_pytorch_model.safetensors" in msg
    assert "lookalike weights download diffsim" in msg


def test_not_a_pipeline_folder_is_a_clear_error(sd_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "sd"
    shutil.copytree(sd_dir, bad)
    (bad / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="could not be loaded"):
        load_metric("diffsim", weights=bad, device="cpu", image_size=SIZE)


def test_eval_2afc_and_compare_cli(sd_dir: Path, tmp_path: Path, capsys) -> None:
    import json

    from lookalike.app.cli import main

    photos = [str(p) for p in sorted(PHOTOS.glob("*.jpg"))[:4]]
    csv = tmp_path / "triplets.csv"
    csv.write_text("ref,left,right,p\n" + f"{photos[0]},{photos[0]},{photos[1]},0.0\n"
                   + f"{photos[2]},{photos[3]},{photos[2]},1.0\n")
    assert main(["eval", "2afc", "--dataset", "triplets", "--root", str(csv), "--metric", "diffsim",
                 "--weights", str(sd_dir), "--device", "cpu", "--json", "--bootstrap", "10"]) == 0
    out = json.loads(capsys.readouterr().out)
    text = json.dumps(out)
    assert "diffsim" in text
    # each triplet has the reference itself on the side people chose: DiffSim (1.0 for identical) agrees
    scores = [v for v in _find(out, "score")]
    assert scores and all(s == pytest.approx(1.0) for s in scores)
    assert main(["compare", photos[0], photos[1], "-m", "diffsim", "--weights", str(sd_dir), "--device", "cpu",
                 "--map", str(tmp_path / "m.png")]) == 0
    text = capsys.readouterr().out
    assert "higher = more similar" in text and (tmp_path / "m.png").is_file()


def _find(obj, key: str):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key and isinstance(v, (int, float)):
                yield v
            else:
                yield from _find(v, key)
    elif isinstance(obj, list):
        for v in obj:
            yield from _find(v, key)


def test_reduced_precision_on_the_cpu_is_autocast(sd_dir: Path, images) -> None:
    m = load_metric("diffsim", weights=sd_dir, device="cpu", dtype="bf16", image_size=SIZE)
    assert m.model_dtype == torch.float32 and m.autocast  # weights stay fp32 on the CPU
    d = m.distance(images[:2], images[[0, 2]])
    assert d[0] == pytest.approx(1.0, abs=1e-3) and d.dtype == torch.float32


@pytest.mark.parametrize("layout", ["no special_tokens_map.json", "saved by the installed diffusers"])
def test_a_folder_is_judged_by_what_the_pipeline_needs(sd_dir: Path, tmp_path: Path, images, layout: str) -> None:
    from sd_tiny import resave_with_diffusers

    folder = tmp_path / "sd"
    if layout == "no special_tokens_map.json":
        shutil.copytree(sd_dir, folder)
        (folder / "tokenizer" / "special_tokens_map.json").unlink()
    else:
        resave_with_diffusers(sd_dir, folder)
        assert not (folder / "tokenizer" / "special_tokens_map.json").exists()
    # fp32 on both sides: the numbers are compared (--dtype auto would be bf16 autocast on some CPUs only)
    m = load_metric("diffsim", weights=folder, device="cpu", dtype="fp32", image_size=SIZE)
    ref = load_metric("diffsim", weights=sd_dir, device="cpu", dtype="fp32", image_size=SIZE)
    torch.testing.assert_close(m.distance(images[:2], images[2:]), ref.distance(images[:2], images[2:]),
                               atol=1e-6, rtol=0)


def test_a_folder_without_a_tokenizer_names_what_is_missing(sd_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "sd"
    shutil.copytree(sd_dir, folder)
    shutil.rmtree(folder / "tokenizer")
    with pytest.raises(WeightsNotFound) as e:
        load_metric("diffsim", weights=folder, device="cpu", image_size=SIZE)
    assert "tokenizer/vocab.json" in str(e.value) and "unet/" not in str(e.value)
