"""Pairwise baselines (psnr, ssim, l2, lpips_alex, lpips_vgg): identity, direction, shapes, errors, LPIPS parity.

LPIPS parity builds the reference ``lpips`` package with a random trunk and its packaged linear layers, writes both
in the official on-disk formats, loads ours from those files and compares on real images. No network is used.
"""

from __future__ import annotations

import io
import re
import socket
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from lookalike.metric import Metric, WeightsNotFound, get_metric_cfg, is_metric, list_metrics, load_metric

REPO = Path(__file__).resolve().parents[1]
PIXEL = ["psnr", "ssim", "l2"]
LPIPS = ["lpips_alex", "lpips_vgg"]
UNITS = {"psnr": "dB", "ssim": "SSIM", "l2": "MSE", "lpips_alex": "LPIPS", "lpips_vgg": "LPIPS"}
LPIPS_FILES = {"lpips_alex": ("alexnet-owt-7be5be79.pth", "alex.pth"), "lpips_vgg": ("vgg16-397923af.pth", "vgg.pth")}
LPIPS_NET = {"lpips_alex": "alex", "lpips_vgg": "vgg"}
PARITY_ATOL = 1e-5


def _demo_images() -> Path:
    """The DreamSim demo images: tests/fixtures first, then the shared fixtures folder beside the checkout."""
    for cand in (REPO / "tests" / "fixtures" / "dreamsim-demo", REPO.parent / "shared" / "fixtures" / "dreamsim-demo"):
        if (cand / "ref_1.png").is_file():
            return cand
    pytest.skip("DreamSim demo images not found in tests/fixtures/dreamsim-demo or ../shared/fixtures/dreamsim-demo")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LOOKALIKE_OFFLINE", "1")
    monkeypatch.setenv("LOOKALIKE_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def ref() -> Image.Image:
    with Image.open(_demo_images() / "ref_1.png") as img:
        return img.convert("RGB")


def _blur(img: Image.Image, strong: bool) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(4.0 if strong else 1.0))


def _jpeg(img: Image.Image, strong: bool) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=5 if strong else 90)
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("RGB")


def _noise(img: Image.Image, strong: bool) -> Image.Image:
    rng = np.random.default_rng(0)
    arr = np.asarray(img, dtype=np.float32)
    arr = arr + rng.normal(0.0, 60.0 if strong else 6.0, size=arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8))


EDITS: dict[str, Callable[[Image.Image, bool], Image.Image]] = {"blur": _blur, "jpeg": _jpeg, "noise": _noise}


def _batch(metric: Metric, imgs: list[Image.Image]) -> torch.Tensor:
    return torch.stack([metric.preprocess(im) for im in imgs])


def _edit_pairs(metric: Metric, ref: Image.Image, edits: tuple[str, ...] = tuple(EDITS)) -> tuple[torch.Tensor, ...]:
    """a = ref repeated; b = ref, then (mild, strong) for each of ``edits``."""
    others = [ref] + [EDITS[e](ref, strong) for e in edits for strong in (False, True)]
    return _batch(metric, [ref] * len(others)), _batch(metric, others)


def _is_closer(metric: Metric, d_mild: float, d_strong: float) -> bool:
    return d_mild < d_strong if metric.lower_is_better else d_mild > d_strong


def _check_identity_and_ranking(metric: Metric, d: torch.Tensor, edits: tuple[str, ...] = tuple(EDITS)) -> None:
    identical, rest = float(d[0]), d[1:].view(-1, 2)
    if metric.name == "psnr":
        assert identical == float("inf")
    elif metric.name == "ssim":
        assert identical == pytest.approx(1.0, abs=1e-5)
    else:
        assert identical == 0.0
    for edit, (mild, strong) in zip(edits, rest.tolist(), strict=True):
        assert _is_closer(metric, mild, strong), f"{metric.name}: {edit} mild {mild} vs strong {strong}"
        assert _is_closer(metric, identical, mild), f"{metric.name}: identical {identical} vs {edit} mild {mild}"


# ---------------------------------------------------------------- registry and configs


def test_registered_as_pairwise() -> None:
    assert set(PIXEL + LPIPS) <= set(list_metrics(kind="pairwise"))
    for name in PIXEL + LPIPS:
        cfg = get_metric_cfg(name)
        assert cfg.kind == "pairwise"
        assert cfg.unit == UNITS[name]
        assert cfg.preprocess.size == 256 and cfg.preprocess.resize_mode == "squash"
        assert cfg.lower_is_better is (name not in ("psnr", "ssim"))
    psnr = load_metric("psnr", device="cpu")  # any two images compare: each is squashed to 256x256, nothing cropped
    wide, tall = Image.new("RGB", (300, 100), "red"), Image.new("RGB", (90, 400), "red")
    a, b = psnr.preprocess(wide).unsqueeze(0), psnr.preprocess(tall).unsqueeze(0)
    assert a.shape == b.shape == (1, 3, 256, 256) and torch.isinf(psnr.distance(a, b)).all()  # both all red
    for name in LPIPS:
        files = get_metric_cfg(name).extra_files
        assert tuple(wf.path for wf in files) == LPIPS_FILES[name]
        assert all(wf.cache_subdir == "lpips" and wf.url for wf in files)


# ---------------------------------------------------------------- pixel metrics


@pytest.mark.parametrize("name", PIXEL)
def test_pixel_identity_and_ranking(name: str, ref: Image.Image) -> None:
    metric = load_metric(name, device="cpu")
    assert metric.kind == "pairwise" and metric.dim is None
    d = metric.distance(*_edit_pairs(metric, ref))
    assert d.shape == (1 + 2 * len(EDITS),) and d.dtype == torch.float32 and d.device.type == "cpu"
    _check_identity_and_ranking(metric, d)
    if name == "ssim":
        assert bool(((d >= -1) & (d <= 1)).all())
    if name == "l2":
        assert bool(((d >= 0) & (d <= 1)).all())


@pytest.mark.parametrize("name", PIXEL)
@pytest.mark.parametrize("batch", [1, 3])
def test_pixel_shapes(name: str, batch: int, ref: Image.Image) -> None:
    metric = load_metric(name, device="cpu")
    a = _batch(metric, [ref] * batch)
    b = _batch(metric, [_blur(ref, strong=True)] * batch)
    d = metric.distance(a, b)
    assert d.shape == (batch,) and d.dtype == torch.float32
    assert torch.isfinite(d).all()
    assert metric.distance(a[0], b[0]).shape == (1,)  # a single (3, S, S) image is a batch of one


@pytest.mark.parametrize("name", PIXEL)
def test_pixel_errors(name: str, ref: Image.Image) -> None:
    metric = load_metric(name, device="cpu")
    a = _batch(metric, [ref] * 3)
    with pytest.raises(ValueError, match="same batch size"):
        metric.distance(a, a[:2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metric.distance(a * 255, a * 255)
    with pytest.raises(ValueError, match="256"):
        metric.distance(a[:, :, :224, :224], a[:, :, :224, :224])
    with pytest.raises(TypeError, match="pairwise"):
        metric.embed(a)


def test_any_two_images_compare(ref: Image.Image) -> None:
    """Different sizes and modes (RGBA, JPEG) compare after the 256x256 squash."""
    metric = load_metric("psnr", device="cpu")
    with Image.open(_demo_images() / "teaser.jpg") as teaser, Image.open(_demo_images() / "icon_rgba.png") as icon:
        b = _batch(metric, [teaser, icon])
    d = metric.distance(_batch(metric, [ref, ref]), b)
    assert d.shape == (2,) and torch.isfinite(d).all()


# ---------------------------------------------------------------- LPIPS without weights


@pytest.mark.parametrize("name", LPIPS)
def test_lpips_without_weights(name: str, tmp_path: Path) -> None:
    assert is_metric(name)
    for weights in (None, tmp_path):
        with pytest.raises(WeightsNotFound) as info:
            load_metric(name, device="cpu", weights=weights)
        msg = str(info.value)
        for fname in LPIPS_FILES[name]:
            assert fname in msg
        assert f"lookalike weights download {name}" in msg
        assert isinstance(info.value, FileNotFoundError)


# ---------------------------------------------------------------- LPIPS parity with the reference package


@pytest.fixture(scope="module")
def lpips_refs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], tuple[torch.nn.Module, Path]]]:
    """name → (reference lpips.LPIPS with a seeded random trunk, folder with both files in the official formats)."""
    lpips = pytest.importorskip("lpips", reason="reference package 'lpips' is not installed (pip install lpips)")
    import torchvision

    cache: dict[str, tuple[torch.nn.Module, Path]] = {}

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the lpips reference tried to use the network")

    def get(name: str) -> tuple[torch.nn.Module, Path]:
        if name in cache:
            return cache[name]
        net = LPIPS_NET[name]
        torch.manual_seed(0)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(socket.socket, "connect", no_network)
            mp.setattr(torch.hub, "load_state_dict_from_url", no_network)
            mp.setattr(torch.hub, "download_url_to_file", no_network)
            with warnings.catch_warnings():  # lpips passes torchvision's deprecated pretrained=False
                warnings.simplefilter("ignore", UserWarning)
                reference = lpips.LPIPS(net=net, pnet_rand=True, pretrained=True, verbose=False).eval()
        folder = tmp_path_factory.mktemp(name)
        trunk_file, lin_file = LPIPS_FILES[name]
        # trunk: lpips keeps torchvision's layer indices ("net.slice2.3.weight" is "features.3.weight")
        feats = {}
        for key, value in reference.net.state_dict().items():
            _, idx, param = key.split(".")
            feats[f"features.{idx}.{param}"] = value.clone()
        if name == "lpips_alex":  # the full torchvision file, classifier included (ignored by the loader)
            full = torchvision.models.alexnet(weights=None).state_dict()
            assert set(feats) <= set(full)
            full.update(feats)
            feats = full
        torch.save(feats, folder / trunk_file)
        # linear layers: exactly the keys of the official alex.pth / vgg.pth ("lin0.model.1.weight" ...)
        lin_key = re.compile(r"lin\d+\.model\.\d+\.weight")
        lins = {k: v.clone() for k, v in reference.state_dict().items() if lin_key.fullmatch(k)}
        assert len(lins) == 5
        torch.save(lins, folder / lin_file)
        cache[name] = (reference, folder)
        return cache[name]

    yield get


def _parity(name: str, ref: Image.Image, lpips_refs: Callable[[str], tuple[torch.nn.Module, Path]],
            edits: tuple[str, ...] = tuple(EDITS)) -> None:
    reference, folder = lpips_refs(name)
    metric = load_metric(name, device="cpu", weights=folder)
    assert metric.fingerprint.startswith(f"{name}-")
    a, b = _edit_pairs(metric, ref, edits)
    ours = metric.distance(a, b)
    with torch.no_grad():
        theirs = reference(a, b, normalize=True).flatten()
    assert ours.shape == (a.shape[0],) and ours.dtype == torch.float32
    assert float(theirs[1:].min()) > 0
    assert float((ours - theirs).abs().max()) <= PARITY_ATOL
    _check_identity_and_ranking(metric, ours, edits)
    assert metric.distance(a[:1], b[-1:]).shape == (1,)
    with pytest.raises(ValueError, match="same batch size"):
        metric.distance(a, b[:2])


@pytest.mark.parity
def test_lpips_alex_parity(ref: Image.Image, lpips_refs: Callable[[str], tuple[torch.nn.Module, Path]]) -> None:
    _parity("lpips_alex", ref, lpips_refs)


@pytest.mark.parity
@pytest.mark.slow
def test_lpips_vgg_parity(ref: Image.Image, lpips_refs: Callable[[str], tuple[torch.nn.Module, Path]]) -> None:
    _parity("lpips_vgg", ref, lpips_refs, edits=("blur",))  # VGG16 at 256 px is slow on the CPU


def test_lpips_rejects_wrong_file(tmp_path: Path, lpips_refs: Callable[[str], tuple[torch.nn.Module, Path]]) -> None:
    """A linear-layer file of the wrong net fails the strict load with a ValueError naming the file."""
    _, alex_folder = lpips_refs("lpips_alex")
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "alexnet-owt-7be5be79.pth").symlink_to(alex_folder / "alexnet-owt-7be5be79.pth")
    torch.save({f"lin{k}.model.1.weight": torch.zeros(1, c, 1, 1) for k, c in enumerate([64, 128, 256, 512, 512])},
               folder / "alex.pth")
    with pytest.raises(ValueError, match=r"alex\.pth.*wrong shapes"):
        load_metric("lpips_alex", device="cpu", weights=folder)


@pytest.mark.gpu
def test_cuda_matches_cpu(ref: Image.Image, lpips_refs: Callable[[str], tuple[torch.nn.Module, Path]]) -> None:
    _, folder = lpips_refs("lpips_alex")
    for name in PIXEL + ["lpips_alex"]:
        cpu = load_metric(name, device="cpu", weights=folder)
        gpu = load_metric(name, device="cuda", weights=folder)
        a, b = _edit_pairs(cpu, ref)
        d_cpu, d_gpu = cpu.distance(a, b), gpu.distance(a, b)
        assert d_gpu.device.type == "cpu" and d_gpu.dtype == torch.float32
        torch.testing.assert_close(d_gpu, d_cpu, rtol=1e-3, atol=1e-4)


def test_reduced_dtype_computes_in_fp32(ref: Image.Image) -> None:
    metric = load_metric("l2", device="cpu", dtype="bf16")
    assert metric.dtype == torch.float32
    a = _batch(metric, [ref])
    assert metric.distance(a, a).dtype == torch.float32
