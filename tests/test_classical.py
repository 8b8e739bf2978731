"""DISTS (parity with the PyPI package DISTS-pytorch on a random trunk), L1 and MS-SSIM."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lookalike.data.images import open_image
from lookalike.metric import WeightsNotFound, load_metric

PHOTOS = Path(__file__).parent / "fixtures" / "photos"


@pytest.fixture(scope="module")
def dists_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random VGG16 in torchvision's file format and random alpha/beta in the published DISTS format."""
    import torchvision

    folder = tmp_path_factory.mktemp("dists")
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16(weights=None)
    torch.save(vgg.state_dict(), folder / "vgg16-397923af.pth")
    g = torch.Generator().manual_seed(1)
    torch.save({"alpha": 0.1 + 0.01 * torch.randn(1, 1475, 1, 1, generator=g),
                "beta": 0.1 + 0.01 * torch.randn(1, 1475, 1, 1, generator=g)}, folder / "weights.pt")
    return folder


@pytest.fixture(scope="module")
def photos() -> list:
    return [open_image(p) for p in sorted(PHOTOS.glob("*.jpg"))[:4]]


def test_dists_matches_the_reference_package(dists_files: Path, photos, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    dists_pt = pytest.importorskip("DISTS_pytorch", reason="DISTS-pytorch (test extra) not installed")
    # The reference builds torchvision's pretrained VGG16: serve it our random file from torch hub's cache.
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth").symlink_to(dists_files / "vgg16-397923af.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    ref = dists_pt.DISTS(load_weights=False)
    ab = torch.load(dists_files / "weights.pt", weights_only=True)
    ref.alpha.data, ref.beta.data = ab["alpha"], ab["beta"]
    ref.eval()
    m = load_metric("dists", weights=dists_files, device="cpu")
    # one pair through the whole metric at its 256 x 256 input ...
    xa, xb = m.preprocess(photos[0])[None], m.preprocess(photos[1])[None]
    with torch.no_grad():
        assert float(m.distance(xa, xb)[0]) == pytest.approx(float(ref(xa, xb)), abs=1e-5)
        # ... and a batch of pairs at 96 x 96 through the network (VGG16 on 2 cores is slow at full size)
        small = torch.nn.functional.interpolate(torch.stack([m.preprocess(p) for p in photos]), size=96,
                                                mode="area")
        ours, want = m.net(small, small.roll(1, 0)), ref(small, small.roll(1, 0))
    assert torch.allclose(ours, want, atol=1e-5), (ours, want)
    assert m.net(small, small).abs().max() < 1e-5
    assert m.lower_is_better and m.kind == "pairwise"


def test_dists_missing_weights_name_both_files(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFound) as e:
        load_metric("dists", weights=tmp_path, device="cpu")
    assert "vgg16-397923af.pth" in str(e.value) and "dingkeyan93/DISTS" in str(e.value)


def test_dists_wrong_file_is_a_clear_error(dists_files: Path, tmp_path: Path) -> None:
    (tmp_path / "vgg16-397923af.pth").symlink_to(dists_files / "vgg16-397923af.pth")
    torch.save({"alpha": torch.zeros(3)}, tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="not a DISTS alpha/beta file"):
        load_metric("dists", weights=tmp_path, device="cpu")


def test_l1_and_ms_ssim(photos) -> None:
    l1, ms = load_metric("l1", device="cpu"), load_metric("ms_ssim", device="cpu")
    xa = torch.stack([l1.preprocess(p) for p in photos[:2]])
    xb = xa.flip(0)
    assert torch.allclose(l1.distance(xa, xb), (xa - xb).abs().mean(dim=(1, 2, 3)))
    assert l1.distance(xa, xa).abs().max() == 0 and l1.lower_is_better
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as msssim

    want = torch.stack([msssim(xa[i:i + 1], xb[i:i + 1], data_range=1.0) for i in range(len(xa))])
    assert torch.allclose(ms.distance(xa, xb), want, atol=1e-5)
    assert ms.distance(xa, xa) == pytest.approx([1.0] * len(xa), abs=1e-5)
    assert not ms.lower_is_better
