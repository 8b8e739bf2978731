"""Exactness against the reference ``dreamsim==0.2.1`` on random weights written in the official formats.

Both packages load the same files (tests/support.py); embeddings and distances must agree to 1e-5 in fp32
on the real fixture images and on random tensors, at batch sizes 1 and 3.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from lookalike.metric import load_metric

pytest.importorskip("dreamsim", reason="reference package dreamsim==0.2.1 (test extra) not installed")
pytest.importorskip("dinov2", reason="dinov2==0.0.1.dev2 (installed with --no-deps) is needed for the DINOv2 hubconf")

from support import LOOKALIKE_TO_REFERENCE, load_reference, write_official_cache  # noqa: E402

pytestmark = pytest.mark.parity
TOL = 1e-5
VARIANTS = list(LOOKALIKE_TO_REFERENCE)
FIXTURE_NAMES = ["ref_1.png", "img_a_1.png", "img_b_1.png", "icon_rgba.png", "teaser.jpg"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dreamsim_cache") / "models"
    types = sorted({t + ("_patch" if p else "") for t, p in LOOKALIKE_TO_REFERENCE.values()})
    return write_official_cache(root, types, seed=1234)


@pytest.fixture(scope="module")
def images(demo_dir: Path) -> list[Image.Image]:
    return [Image.open(demo_dir / n) for n in FIXTURE_NAMES]


def _ours_embed(metric, x: torch.Tensor) -> torch.Tensor:
    return metric.embed_tokens(x) if metric.net.patch else metric.embed(x)


@pytest.mark.parametrize("name", VARIANTS)
def test_embed_and_distance_match_reference(name: str, cache: Path, images: list[Image.Image]) -> None:
    ref, ref_pre = load_reference(cache, name)
    ours = load_metric(name, weights=cache, device="cpu")
    # Preprocessing is bit-identical (RGBA icon and the wide teaser included).
    x_ref = torch.cat([ref_pre(im) for im in images])
    x_ours = torch.stack([ours.preprocess(im) for im in images])
    assert torch.equal(x_ref, x_ours)

    torch.manual_seed(0)
    rand = torch.rand(3, 3, 224, 224)
    batches = {"fixtures[0:3]": x_ref[:3], "fixture[3]": x_ref[3:4], "fixture[4]": x_ref[4:5], "random": rand}
    with torch.no_grad():
        embeds = {}
        for label, x in batches.items():
            e_ref = ref.embed(x)
            e_ours = _ours_embed(ours, x)
            assert e_ours.shape == e_ref.shape, label
            assert (e_ours - e_ref).abs().max().item() <= TOL, f"{name} embed {label}"
            embeds[label] = e_ref
        # The reference forward (batch 1) against ours, image to image.
        d1_ref = ref(x_ref[:1], x_ref[2:3]).reshape(1)
        d1_ours = ours.distance(x_ref[:1], x_ref[2:3])
        assert d1_ours.shape == (1,)
        assert (d1_ours - d1_ref).abs().max().item() <= TOL, name
        # Batch 3, row by row: the reference's own distance formula on its embeddings (for patch models:
        # 1 - cosine of [CLS || mean patch]) against our embedding distance (unit 1536-d vectors).
        e = embeds["fixtures[0:3]"]
        if ours.net.patch:
            e = torch.cat([e[:, 0], e[:, 1:].mean(dim=1)], dim=-1)
        d_ref = 1 - torch.nn.functional.cosine_similarity(e[[0, 0, 1]], e[[1, 2, 2]], dim=-1)
        eo = ours.embed(x_ref[:3])
        assert eo.shape == (3, ours.dim)
        assert (ours.distance_embeddings(eo[[0, 0, 1]], eo[[1, 2, 2]]) - d_ref).abs().max().item() <= TOL


@pytest.mark.parametrize("name", ["dino_vitb16", "clip_vitb32"])
def test_raw_backbones_match_reference_without_lora(name: str, cache: Path, images: list[Image.Image]) -> None:
    """Raw baselines = the reference with pretrained=False (LoRA B starts at zero)."""
    import torch.hub
    from dreamsim import dreamsim

    old = torch.hub.get_dir()
    try:
        ref, pre = dreamsim(pretrained=False, device="cpu", cache_dir=str(cache), dreamsim_type=name)
    finally:
        torch.hub.set_dir(old)
    ours = load_metric(name, weights=cache, device="cpu")
    x = torch.cat([pre(im) for im in images[:3]])
    with torch.no_grad():
        assert (ours.embed(x) - ref.embed(x)).abs().max().item() <= TOL


def test_official_dino_adapter_on_reference_and_ours(cache: Path, official_dino_adapter: Path, tmp_path: Path,
                                                     images: list[Image.Image]) -> None:
    """The real released dino adapter, on random base weights, gives the same numbers in both packages."""
    import shutil

    root = tmp_path / "models"
    root.mkdir()
    (root / "checkpoints").mkdir()
    for rel in ("checkpoints/dino_vitbase16_pretrain.pth", "dino_vitb16_pretrain.pth"):
        (root / rel).symlink_to(cache / rel)
    shutil.copytree(cache / "facebookresearch_dino_main", root / "facebookresearch_dino_main")
    shutil.copytree(official_dino_adapter, root / "dino_vitb16_single_lora")
    ref, pre = load_reference(root, "dreamsim_dino_vitb16")
    ours = load_metric("dreamsim_dino_vitb16", weights=root, device="cpu")
    x = torch.cat([pre(im) for im in images[:3]])
    with torch.no_grad():
        assert (ours.embed(x) - ref.embed(x)).abs().max().item() <= TOL
        assert (ours.distance(x[:2], x[1:]) - ref(x[:2], x[1:])).abs().max().item() <= TOL


@pytest.mark.parametrize("name", ["dreamsim"])
def test_bf16_embeddings_stay_within_cosine_0999(name: str, cache: Path, images: list[Image.Image]) -> None:
    """bf16 (autocast on the CPU) against fp32 on the fixtures, on the full-size ensemble."""
    m32 = load_metric(name, weights=cache, device="cpu")
    m16 = load_metric(name, weights=cache, device="cpu", dtype="bf16")
    x = torch.stack([m32.preprocess(im) for im in images[:3]])
    cos = (m32.embed(x) * m16.embed(x)).sum(-1)
    assert cos.min().item() >= 0.999, cos
