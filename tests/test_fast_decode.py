"""--fast-decode: PIL draft for large JPEGs, the GPU JPEG path (run on the CPU as its stand-in), pinned batches, and
the decode / transfer / model / write breakdown."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from sqlalchemy import select
from support import PHOTOS

import lookalike.indexer._pipeline as pipeline
from lookalike.app.cli import main
from lookalike.data.images import decode_image, open_image
from lookalike.data.loader import (
    ImageBatch,
    ImageFileDataset,
    RawJpeg,
    apply_orientation,
    create_loader,
    decode_jpegs,
    decode_raw_batch,
    read_raw_jpeg,
)
from lookalike.data.transforms import supports_tensor_resize
from lookalike.indexer import build_index, open_index
from lookalike.indexer._catalog import ImageRow
from lookalike.metric import load_metric

JPEGS = sorted(PHOTOS.glob("*.jpg"))


@pytest.fixture(scope="module")
def effnet():
    return load_metric("efficientnet_lite0", device="cpu")


def _save_jpeg(img: Image.Image, path: Path, orientation: int = 1) -> Path:
    kw = {}
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
    img.save(path, "JPEG", quality=92, **kw)
    return path


def big_jpeg(path: Path, size: tuple[int, int] = (3600, 2400), orientation: int = 1, which: int = 3) -> Path:
    """A large JPEG made by upscaling a fixture photo (so it has real photo content)."""
    photo = Image.open(JPEGS[which]).convert("RGB").resize(size, Image.Resampling.BICUBIC)
    return _save_jpeg(photo, path, orientation)


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def test_draft_decodes_large_jpegs_at_a_reduced_scale(tmp_path: Path, effnet) -> None:
    p = big_jpeg(tmp_path / "big.jpg")
    s = effnet.input_size
    exact = decode_image(p)
    fast = decode_image(p, draft_size=2 * s)
    assert exact.image.size == (3600, 2400)
    assert (fast.width, fast.height, fast.format) == (3600, 2400, "JPEG")  # the file's size, not the decoded one
    assert fast.image.size == (900, 600)  # 1/4 DCT scale: the largest keeping both sides >= 2 * 224
    assert min(fast.image.size) >= 2 * s
    with Image.open(p) as ref:  # exact mode is untouched: PIL's full decode
        assert np.array_equal(np.asarray(exact.image), np.asarray(ref.convert("RGB")))
    assert open_image(p, draft_size=2 * s).size == (900, 600)
    xe, xf = effnet.preprocess(exact.image), effnet.preprocess(fast.image)
    assert not torch.equal(xe, xf)
    e = effnet.embed(torch.stack([xe, xf]))
    assert float(_cos(e[0], e[1])) >= 0.99


def test_draft_leaves_small_jpegs_and_other_formats_alone(tmp_path: Path) -> None:
    small = JPEGS[0]
    a, b = decode_image(small), decode_image(small, draft_size=448)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    png = tmp_path / "big.png"
    Image.open(JPEGS[1]).convert("RGB").resize((2000, 1800)).save(png)
    dec = decode_image(png, draft_size=448)
    assert dec.image.size == (2000, 1800) and dec.format == "PNG"


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_draft_reports_the_oriented_full_size(tmp_path: Path, orientation: int) -> None:
    p = big_jpeg(tmp_path / "o.jpg", (2400, 1800), orientation)
    exact, fast = decode_image(p), decode_image(p, draft_size=448)
    assert (fast.width, fast.height) == (exact.width, exact.height) == exact.image.size
    assert (fast.image.width > fast.image.height) == (exact.width > exact.height)
    assert fast.image.size == (exact.width // 4, exact.height // 4)  # min(2400 // 448, 1800 // 448) = 4


def test_dataset_draft_and_exact_modes(tmp_path: Path, effnet) -> None:
    p = big_jpeg(tmp_path / "big.jpg", (2000, 1700))
    items = [(0, str(p)), (1, str(JPEGS[0]))]
    exact = ImageFileDataset(items, effnet.preprocess)
    fast = ImageFileDataset(items, effnet.preprocess, draft_size=2 * effnet.input_size)
    _, x_exact, info = exact[0]
    _, x_fast, info_fast = fast[0]
    assert (info.width, info.height) == (info_fast.width, info_fast.height) == (2000, 1700)
    assert not torch.equal(x_exact, x_fast)
    assert torch.equal(exact[1][1], fast[1][1])  # small JPEG: identical
    assert torch.equal(x_exact, effnet.preprocess(open_image(p)))


def test_orientation_on_tensors_matches_pil() -> None:
    a = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    for o in range(1, 9):
        im = Image.fromarray(a)
        exif = im.getexif()
        exif[0x0112] = o
        im.info["exif"] = exif.tobytes()
        ref = np.asarray(ImageOps.exif_transpose(im))
        got = apply_orientation(torch.from_numpy(a).permute(2, 0, 1), o).permute(1, 2, 0).numpy()
        assert ref.shape == got.shape and np.array_equal(ref, got), o


def test_device_jpeg_decode_close_to_exact_pil(effnet) -> None:
    """The GPU path (decode_jpeg + antialiased bicubic interpolate) run with device="cpu"."""
    raws = [read_raw_jpeg(i, str(p)) for i, p in enumerate(JPEGS)]
    assert all(isinstance(r, RawJpeg) for r in raws)
    xs = decode_jpegs([r.data for r in raws], effnet.input_size, "cpu", [r.orientation for r in raws])
    x = torch.stack(xs)
    assert x.shape == (len(JPEGS), 3, 224, 224) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    ref = torch.stack([effnet.preprocess(open_image(p)) for p in JPEGS])
    assert float((x - ref).abs().mean()) < 1e-3  # same libjpeg pixels, PIL-like two-pass 8-bit resize
    cos = _cos(effnet.embed(x), effnet.embed(ref))
    assert float(cos.min()) >= 0.99


def test_device_decode_orientation_and_fallbacks(tmp_path: Path, effnet) -> None:
    rot = big_jpeg(tmp_path / "rot6.jpg", (900, 600), orientation=6)
    png = tmp_path / "p.png"
    Image.open(JPEGS[2]).save(png)
    cmyk = tmp_path / "cmyk.jpg"
    Image.open(JPEGS[4]).convert("CMYK").save(cmyk, "JPEG")
    good = Image.open(JPEGS[5]).convert("RGB")
    buf = io.BytesIO()
    good.save(buf, "JPEG", quality=90)
    data = bytearray(buf.getvalue())
    data[len(data) // 2:] = bytes(len(data) - len(data) // 2)  # header intact, entropy-coded data zeroed
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(bytes(data))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert read_raw_jpeg(0, str(png)) is None and read_raw_jpeg(0, str(cmyk)) is None
    assert read_raw_jpeg(0, str(empty)) is None
    r = read_raw_jpeg(0, str(rot))
    assert r is not None and r.orientation == 6 and (r.info.width, r.info.height) == (600, 900)
    assert read_raw_jpeg(0, str(rot), max_pixels=1000) is None  # over the limit: the PIL path reports it

    items = [(0, str(rot)), (1, str(png)), (2, str(cmyk)), (3, str(broken)), (4, str(empty)), (5, str(JPEGS[0]))]
    ds = ImageFileDataset(items, effnet.preprocess, raw_jpeg=True)
    batch = next(iter(create_loader(ds, batch_size=len(items))))
    assert {r.key for r in batch.raw} >= {0, 5} and {1, 2} <= set(batch.keys)
    assert [f.key for f in batch.failures] == [4]
    out = decode_raw_batch(batch, effnet.input_size, "cpu", effnet.preprocess)
    assert not out.raw and out.pixels is not None and out.pixels.shape[0] == len(out.keys) == len(out.infos)
    assert sorted(out.keys + [f.key for f in out.failures]) == list(range(6))
    assert {0, 1, 2, 5} <= set(out.keys)
    ref = {k: effnet.preprocess(open_image(p)) for k, p in items if k in (0, 1, 2, 5)}
    e = effnet.embed(out.pixels)
    e_ref = effnet.embed(torch.stack([ref.get(k, ref[0]) for k in out.keys]))
    for row, k in enumerate(out.keys):
        if k in ref:
            assert float(_cos(e[row], e_ref[row])) >= 0.99, k
    assert torch.equal(out.pixels[out.keys.index(1)], ref[1])  # PNG: the exact PIL path
    info0 = out.infos[out.keys.index(0)]
    assert (info0.width, info0.height, info0.format) == (600, 900, "JPEG")


def test_decode_jpegs_falls_back_one_by_one() -> None:
    good = JPEGS[0].read_bytes()
    datas = [torch.frombuffer(bytearray(good), dtype=torch.uint8),
             torch.frombuffer(bytearray(b"\xff\xd8\xff\xe0not a jpeg at all"), dtype=torch.uint8)]
    out = decode_jpegs(datas, 64, "cpu")
    assert out[0] is not None and out[0].shape == (3, 64, 64) and out[1] is None
    assert decode_jpegs([], 64, "cpu") == []


def test_pinned_batches() -> None:
    batch = ImageBatch(keys=[0], pixels=torch.rand(1, 3, 8, 8))
    assert batch.pin_memory() is batch  # a no-op without CUDA, page-locked with it
    assert batch.pixels.is_pinned() == torch.cuda.is_available()
    ds = ImageFileDataset([(0, str(JPEGS[0]))], lambda im: torch.zeros(3, 4, 4))
    assert create_loader(ds, pin_memory=True).pin_memory == torch.cuda.is_available()
    assert create_loader(ds).pin_memory is False


def _tree(root: Path) -> Path:
    root.mkdir()
    for p in JPEGS[:5]:
        shutil.copy2(p, root / p.name)
    big_jpeg(root / "big.jpg", (2400, 1700))
    big_jpeg(root / "big_rot.jpg", (1800, 1600), orientation=8, which=7)
    Image.open(JPEGS[6]).save(root / "photo.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    return root


def _rows(idx: Path) -> dict[str, tuple[np.ndarray | None, int | None, int | None]]:
    """file name → (stored vector, width, height)."""
    with open_index(idx) as ix, ix.catalog.session() as s:
        rows = list(s.scalars(select(ImageRow)))
        return {Path(r.relpath).name: (ix.vector_of(r), r.width, r.height) for r in rows}


@pytest.mark.parametrize("mode", ["draft", "device"])
def test_build_index_fast_decode(tmp_path: Path, effnet, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    root = _tree(tmp_path / "photos")
    exact = build_index(root, tmp_path / "exact", metric=effnet, workers=0, batch_size=4, progress=False)
    assert exact.decoder == "exact"
    if mode == "device":  # the CUDA branch of the pipeline, with the CPU standing in for the GPU
        monkeypatch.setattr(pipeline, "_device_decode", lambda m, fast: fast)
    fast = build_index(root, tmp_path / "fast", metric=effnet, workers=0, batch_size=4, progress=False,
                       fast_decode=True)
    assert fast.decoder == mode
    assert fast.embedded == exact.embedded == 8 and fast.failed == exact.failed == 1
    t = fast.seconds
    assert all(t[k] > 0.0 for k in ("scan", "decode", "model", "write")) and t["transfer"] >= 0.0
    assert sum(t[k] for k in ("scan", "diff", "decode", "transfer", "model", "write")) <= t["total"] + 1e-6
    assert set(fast.as_dict()["seconds"]) == set(t) and "transfer" in fast.format()
    re_, rf = _rows(tmp_path / "exact"), _rows(tmp_path / "fast")
    assert set(re_) == set(rf)
    ve = {k: v[0] for k, v in re_.items() if v[0] is not None}
    vf = {k: v[0] for k, v in rf.items() if v[0] is not None}
    assert set(ve) == set(vf) and len(ve) == 8
    for name in ve:
        c = float(np.dot(ve[name], vf[name]) / (np.linalg.norm(ve[name]) * np.linalg.norm(vf[name])))
        assert c >= 0.99, name
    assert not np.allclose(ve["big.jpg"], vf["big.jpg"], atol=1e-5)  # fast decode is not bit-exact
    assert np.allclose(ve["photo.png"], vf["photo.png"], atol=1e-5)  # PNGs always take the exact path
    assert rf["big.jpg"][1:] == re_["big.jpg"][1:] == (2400, 1700)
    assert rf["big_rot.jpg"][1:] == re_["big_rot.jpg"][1:] == (1600, 1800)


def test_device_decode_only_on_cuda_with_fast_decode(effnet) -> None:
    assert pipeline._device_decode(effnet, True) is False  # a CPU metric: PIL draft instead
    assert pipeline._device_decode(effnet, False) is False
    assert supports_tensor_resize(effnet.cfg.preprocess) is True  # bicubic: the GPU resize reproduces it


def test_cli_fast_decode_flag(tmp_path: Path, capsys) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    for p in JPEGS[:3]:
        shutil.copy2(p, root / p.name)
    rc = main(["index", str(root), "--index", str(tmp_path / "idx"), "--metric", "test_vit_tiny", "--device", "cpu",
               "--workers", "0", "--fast-decode", "--json"])
    s = json.loads(capsys.readouterr().out)
    assert rc == 0 and s["decoder"] == "draft" and s["embedded"] == 3
    assert set(s["seconds"]) >= {"decode", "transfer", "model", "write"}
    with pytest.raises(SystemExit):
        main(["index", "--help"])
    assert "NOT bit-exact" in capsys.readouterr().out


@pytest.mark.gpu
def test_real_device_decode_on_cuda(tmp_path: Path) -> None:
    """The real GPU path: nvJPEG decode + tensor resize on CUDA, close to PIL, and build_index choosing it."""
    gpu = load_metric("efficientnet_lite0", device="cuda")
    raws = [read_raw_jpeg(i, str(p)) for i, p in enumerate(JPEGS)]
    xs = decode_jpegs([r.data for r in raws], gpu.cfg.preprocess, "cuda", [r.orientation for r in raws])
    x = torch.stack(xs)
    assert x.device.type == "cuda" and x.shape == (len(JPEGS), 3, 224, 224)
    ref = torch.stack([gpu.preprocess(open_image(p)) for p in JPEGS]).cuda()
    assert float((x - ref).abs().mean()) < 5e-3  # nvJPEG's IDCT differs from libjpeg's by a level or two
    root = _tree(tmp_path / "photos")
    s = build_index(root, tmp_path / "idx", metric=gpu, workers=0, batch_size=4, progress=False, fast_decode=True)
    assert s.decoder == "device" and s.embedded == 8 and s.failed == 1
