"""Distance maps: LPIPS spatial parity with the reference package, per-patch ViT maps, heat maps, compare --map."""

from __future__ import annotations

import re
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image, ImageEnhance, ImageFilter

from lookalike.app.cli import main
from lookalike.common.errors import InvalidArgument
from lookalike.data.images import open_image
from lookalike.metric import MetricCfg, load_metric, register_metric
from lookalike.metric.maps import colorize, overlay_heatmap, pair_distance_map, save_heatmap

PHOTOS = Path(__file__).parent / "fixtures" / "photos"



@pytest.fixture(scope="module", autouse=True)
def patch_model():  # type: ignore[no-untyped-def]
    """A random single-branch patch model, registered for this module only (the registry is put back after)."""
    from lookalike.metric import _registry

    state = _registry.snapshot()
    register_metric(MetricCfg(name="test_vit_tiny_patch", builder="perceptual", backbones=("test_vit_tiny",),
                              patch=True, family="test", description="random single-branch patch model; for tests",
                              options={"seed": 0}))
    try:
        yield
    finally:
        _registry.restore(state)


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [open_image(p) for p in sorted(PHOTOS.glob("*.jpg"))[:2]]


@pytest.fixture(scope="module")
def lpips_alex(tmp_path_factory: pytest.TempPathFactory):
    """(reference lpips.LPIPS(spatial=True) on a random AlexNet, a folder with both files in the official formats)."""
    lpips = pytest.importorskip("lpips", reason="reference package 'lpips' is not installed")

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the lpips reference tried to use the network")

    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", no_network)
        mp.setattr(torch.hub, "load_state_dict_from_url", no_network)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ref = lpips.LPIPS(net="alex", pnet_rand=True, pretrained=True, spatial=True, verbose=False).eval()
    folder = tmp_path_factory.mktemp("lpips")
    full = torchvision.models.alexnet(weights=None).state_dict()
    for key, value in ref.net.state_dict().items():
        _, idx, param = key.split(".")
        full[f"features.{idx}.{param}"] = value.clone()
    torch.save(full, folder / "alexnet-owt-7be5be79.pth")
    lin_key = re.compile(r"lin\d+\.model\.\d+\.weight")
    torch.save({k: v.clone() for k, v in ref.state_dict().items() if lin_key.fullmatch(k)}, folder / "alex.pth")
    return ref, folder


def test_lpips_map_matches_the_reference_spatial_output(lpips_alex, photos) -> None:
    ref, folder = lpips_alex
    m = load_metric("lpips_alex", weights=folder, device="cpu")
    assert m.has_distance_map
    xa, xb = (m.preprocess(p)[None] for p in photos)
    ours = m.distance_map(xa, xb)
    with torch.no_grad():
        want = ref(xa * 2 - 1, xb * 2 - 1)  # the reference takes [-1, 1]
    assert ours.shape == (1, 256, 256) and want.shape == (1, 1, 256, 256)
    assert torch.allclose(ours, want[:, 0], atol=1e-5)
    assert float(m.distance_map(xa, xa).abs().max()) == 0.0
    # the map's mean is close to the distance (bilinear upsampling keeps the mean only approximately)
    assert float(ours.mean()) == pytest.approx(float(m.distance(xa, xb)[0]), rel=0.05)


def test_patch_token_map(photos) -> None:
    m = load_metric("test_vit_tiny_patch", device="cpu")
    xa, xb = (m.preprocess(p)[None] for p in photos)
    d = m.distance_map(xa, xb)
    assert d.shape == (1, 14, 14) and float(d.min()) >= -1e-6 and float(d.max()) <= 2 + 1e-6
    assert float(m.distance_map(xa, xa).abs().max()) < 1e-5
    # a change confined to one patch moves the map most at that patch
    xc = xa.clone()
    xc[..., 32:48, 160:176] = 1.0 - xc[..., 32:48, 160:176]
    dc = m.distance_map(xa, xc)[0]
    assert divmod(int(dc.argmax()), 14) == (2, 10)
    # tokens are per-token centred + L2-normalized: the map's per-token cosines use the patch model's tokens
    tok_a, tok_c = m.embed_tokens(xa)[0, 1:], m.embed_tokens(xc)[0, 1:]
    assert torch.allclose(dc.flatten(), 1 - (tok_a * tok_c).sum(-1), atol=1e-5)


def _edited(img: Image.Image) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """``img`` with its upper-right region blurred and brightened (an edit a person would make), and that box."""
    w, h = img.size
    box = (int(w * 0.55), int(h * 0.10), int(w * 0.90), int(h * 0.45))
    out = img.copy()
    region = ImageEnhance.Brightness(img.crop(box).filter(ImageFilter.GaussianBlur(5))).enhance(1.3)
    out.paste(region, box)
    return out, box


def _inside_outside(values: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int]) -> tuple[float, float]:
    """Mean of the map inside the edited box (on the map's grid; A is squashed to the metric's square input)."""
    gh, gw = values.shape
    w, h = size
    x0, y0 = int(np.ceil(box[0] / w * gw)), int(np.ceil(box[1] / h * gh))  # grid cells wholly inside the edit
    x1, y1 = int(box[2] / w * gw), int(box[3] / h * gh)
    inside = np.zeros(values.shape, bool)
    inside[y0:y1, x0:x1] = True
    ring = np.zeros(values.shape, bool)  # cells next to the edit see it through their receptive field: left out
    ring[max(y0 - 3, 0):y1 + 3, max(x0 - 3, 0):x1 + 3] = True
    return float(values[inside].mean()), float(values[~ring].mean())


def test_efficientnet_map_lights_up_the_edited_region_offline(photos) -> None:
    m = load_metric("efficientnet_lite0", device="cpu", dtype="fp32")  # packaged weights: no download
    assert m.has_distance_map
    for a in photos:
        b, box = _edited(a)
        dmap = pair_distance_map(m, a, b)
        assert dmap.values.shape == (28, 28) and dmap.values.min() >= 0.0 and dmap.values.max() <= 2.0
        inside, outside = _inside_outside(dmap.values, box, a.size)
        assert inside > 4 * outside, (inside, outside)
        same = pair_distance_map(m, a, a)
        assert float(np.abs(same.values).max()) < 1e-5


def test_ensembles_and_pixel_metrics_have_no_map(photos) -> None:
    for name in ("test_vit_tiny", "ssim"):
        m = load_metric(name, device="cpu")
        assert not m.has_distance_map
        with pytest.raises(InvalidArgument, match="distance map|token grids"):
            pair_distance_map(m, *photos)


def test_heatmap_overlay(photos) -> None:
    m = load_metric("test_vit_tiny_patch", device="cpu")
    dmap = pair_distance_map(m, *photos)
    out = overlay_heatmap(photos[0], dmap)
    assert out.size == photos[0].size and out.mode == "RGB"
    c = colorize(np.array([[0.0, 1.0]]), 0.0, 1.0)
    assert c[0, 0].sum() < c[0, 1].sum()  # dark = same, bright = different
    assert colorize(np.zeros((2, 2)), 0.0, 0.0).shape == (2, 2, 3)


def test_cli_compare_map(photos, tmp_path: Path, capsys) -> None:
    a, b = sorted(PHOTOS.glob("*.jpg"))[:2]
    out = tmp_path / "where.png"
    assert main(["compare", str(a), str(b), "-m", "test_vit_tiny_patch", "--map", str(out), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "written to" in text and out.is_file()
    img = Image.open(out)
    assert img.size == open_image(a).size
    assert main(["compare", str(a), str(b), "-m", "ssim", "--map", str(out)]) == 2
    assert "cannot say where" in capsys.readouterr().err
    assert main(["compare", str(a), str(b), "-m", "ssim", "-m", "l1", "--map", str(out)]) == 2
    assert "exactly one" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown extension"):
        save_heatmap(tmp_path / "x.notanext", photos[0], pair_distance_map(load_metric("test_vit_tiny_patch"),
                                                                            *photos))


def test_cli_compare_map_offline_efficientnet(photos, tmp_path: Path, capsys) -> None:
    a_path = sorted(PHOTOS.glob("*.jpg"))[0]
    a = open_image(a_path)
    b, box = _edited(a)
    b.save(tmp_path / "edited.jpg", quality=95)
    out = tmp_path / "where.png"
    assert main(["compare", str(a_path), str(tmp_path / "edited.jpg"), "-m", "efficientnet_lite0", "--map", str(out),
                 "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "map of efficientnet_lite0 (28x28" in text and out.is_file()
    heat = np.asarray(Image.open(out).convert("RGB"), np.float32)
    base = np.asarray(a, np.float32)
    assert heat.shape == base.shape
    # the overlay lifts the edited box towards the bright end of the colour map more than the rest of A
    lift = (heat - 0.45 * base).sum(axis=-1)
    inside, outside = _inside_outside(lift[::8, ::8], box, a.size)
    assert inside > outside + 60, (inside, outside)


def test_cli_compare_all_lists_missing_weights_on_one_line(capsys) -> None:
    a, b = sorted(PHOTOS.glob("*.jpg"))[:2]
    assert main(["compare", str(a), str(b), "--all", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    missing = [line for line in out if line.startswith("not run, weights not present")]
    assert len(missing) == 1
    for name in ("dreamsim", "lpips_vgg", "dists", "diffsim"):
        assert name in missing[0]
        assert not any(line.startswith(name + " ") for line in out)
    rows = {line.split()[0] for line in out[1:] if line and not line.startswith("not run")}
    assert {"psnr", "ssim", "l1", "l2", "ms_ssim", "efficientnet_lite0"} <= rows
