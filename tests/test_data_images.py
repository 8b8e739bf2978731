"""open_image / scan_images on a malformed-input corpus generated on disk, plus the DataLoader."""

from __future__ import annotations

import io
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import PHOTOS, jpeg_bytes

from lookalike.data.image_folder import display_path, natural_key, scan_images
from lookalike.data.images import ImageDecodeError, decode_image, open_image
from lookalike.data.loader import ImageFileDataset, create_loader


def _jpeg92(img, **kw):  # type: ignore[no-untyped-def]
    return jpeg_bytes(img, quality=92, **kw)


IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(w: int = 40000, h: int = 40000) -> bytes:
    """A tiny PNG whose header claims ``w`` x ``h`` pixels (the pixel data would never fit)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _png_chunk(b"IEND", b""))


def make_corpus(root: Path) -> dict[str, str]:
    """Write the malformed-input corpus under ``root``; returns {relative path: expectation}.

    Expectation: "ok" (must index), "fail" (must be recorded with a reason), "ok|fail" (depends on the OS/user),
    "skip" (must not be listed as a file at all).
    """
    root.mkdir(parents=True, exist_ok=True)
    photo = Image.open(sorted(PHOTOS.glob("*.jpg"))[0]).convert("RGB")
    photo2 = Image.open(sorted(PHOTOS.glob("*.jpg"))[5]).convert("RGB")
    photo3 = Image.open(sorted(PHOTOS.glob("*.jpg"))[15]).convert("RGB")
    exp: dict[str, str] = {}

    def put(rel: str, data: bytes, e: str) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        exp[rel] = e

    jpg = _jpeg92(photo)
    put("zero.jpg", b"", "fail")
    put("truncated.jpg", jpg[: len(jpg) // 3], "fail")
    put("random.jpg", np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(), "fail")
    buf = io.BytesIO()
    photo3.save(buf, "PNG")
    put("png_named.jpg", buf.getvalue(), "ok")
    put("cmyk.jpg", _jpeg92(photo.convert("CMYK")), "ok")
    g16 = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(g16).save(buf, "PNG")
    put("gray16.png", buf.getvalue(), "ok")
    pal = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    pal.info["transparency"] = 0
    buf = io.BytesIO()
    pal.save(buf, "PNG", transparency=0)
    put("palette_alpha.png", buf.getvalue(), "ok")
    put("gray.jpg", _jpeg92(photo.convert("L")), "ok")
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "blue", "green")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    put("anim.gif", buf.getvalue(), "ok")
    put("upright.jpg", _jpeg92(photo2), "ok")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    put("rotated_exif.jpg", _jpeg92(photo2.transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes()), "ok")
    put("bomb.png", bomb_png(), "fail")
    put("UPPER.JPEG", _jpeg92(photo.resize((200, 150))), "ok")
    put("folder.jpg/inside.png", buf.getvalue(), "ok")  # a directory named like an image: walked, not listed
    noperm = "noperm.jpg"
    put(noperm, jpg, "ok" if IS_ROOT else "fail")
    os.chmod(root / noperm, 0)
    (root / "loops").mkdir()
    os.symlink("..", root / "loops" / "up")  # folder loop
    os.symlink("self.jpg", root / "loops" / "self.jpg")  # file link pointing at itself
    if sys.platform != "darwin":  # macOS refuses non-UTF-8 names
        raw = os.fsencode(str(root)) + b"/caf\xe9.jpg"
        with open(raw, "wb") as f:
            f.write(_jpeg92(photo.resize((160, 120))))
        exp[os.fsdecode(b"caf\xe9.jpg")] = "ok"
    put("notes.txt", b"not an image", "skip")
    return exp


@pytest.fixture()
def corpus(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "corpus"
    exp = make_corpus(root)
    yield root, exp
    os.chmod(root / "noperm.jpg", 0o644)


def test_open_image_corpus(corpus: tuple[Path, dict[str, str]]) -> None:
    root, exp = corpus
    for rel, e in exp.items():
        if e == "skip":
            continue
        path = os.path.join(root, *rel.split("/"))
        if e == "ok":
            img = open_image(path)
            assert img.mode == "RGB" and img.width > 0, rel
        else:
            with pytest.raises(ImageDecodeError) as info:
                open_image(path)
            assert info.value.path == path and info.value.reason, rel
            assert isinstance(info.value, ValueError)


def test_decode_details(corpus: tuple[Path, dict[str, str]]) -> None:
    root, _ = corpus
    assert decode_image(root / "png_named.jpg").format == "PNG"
    g = np.asarray(open_image(root / "gray16.png"))
    assert g.min() == 0 and g.max() == 255 and 100 < g.mean() < 155  # rescaled, not clipped to white
    first = np.asarray(open_image(root / "anim.gif"))
    assert first[..., 0].mean() > 200 and first[..., 2].mean() < 50  # the first (red) frame
    up, rot = decode_image(root / "upright.jpg"), decode_image(root / "rotated_exif.jpg")
    assert (up.width, up.height) == (rot.width, rot.height)
    diff = np.abs(np.asarray(up.image, np.float32) - np.asarray(rot.image, np.float32)).mean()
    assert diff < 6.0  # same picture once the EXIF orientation is applied
    reasons = {
        "zero.jpg": "empty",
        "truncated.jpg": "truncated",
        "random.jpg": "not an image",
        "bomb.png": "decompression bomb",
    }
    for name, word in reasons.items():
        with pytest.raises(ImageDecodeError, match=word):
            open_image(root / name)
    with pytest.raises(ImageDecodeError, match="directory"):
        open_image(root / "folder.jpg")
    with pytest.raises(ImageDecodeError, match="not found"):
        open_image(root / "nope.jpg")
    with pytest.raises(ImageDecodeError, match="bomb"):  # with no limit of ours, PIL's own guard still applies
        open_image(root / "bomb.png", max_pixels=None)


def test_bomb_checked_before_decoding(tmp_path: Path) -> None:
    p = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(p)
    with pytest.raises(ImageDecodeError, match="60,000 pixels > limit 50,000"):
        open_image(p, max_pixels=50_000)
    assert open_image(p, max_pixels=60_000).size == (300, 200)


@pytest.mark.skipif(IS_ROOT, reason="root reads files whatever their permissions")
def test_permission_denied(corpus: tuple[Path, dict[str, str]]) -> None:
    with pytest.raises(ImageDecodeError, match="permission denied"):
        open_image(corpus[0] / "noperm.jpg")


def test_scan_corpus(corpus: tuple[Path, dict[str, str]]) -> None:
    root, exp = corpus
    res = scan_images(root)
    rels = [f.relpath for f in res.files]
    expected = sorted((r for r, e in exp.items() if e != "skip"), key=natural_key)
    assert sorted(rels, key=natural_key) == expected
    assert "folder.jpg" not in rels and "notes.txt" not in rels
    assert len(rels) == len(set(rels))  # the folder loop did not list anything twice
    reasons = " ".join(e.reason for e in res.errors)
    assert "loop" in reasons
    assert all(f.size >= 0 and f.mtime_ns > 0 for f in res.files)
    if sys.platform != "darwin":
        odd = [f for f in res.files if "caf" in f.relpath][0]
        assert os.fsencode(odd.relpath) == b"caf\xe9.jpg"
        assert display_path(odd.relpath) == "caf\\xe9.jpg"
        assert open_image(odd.path).size == (160, 120)


def test_scan_natural_order_and_extensions(tmp_path: Path) -> None:
    for n in (10, 2, 1):
        Image.new("RGB", (8, 8)).save(tmp_path / f"img{n}.PNG")
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "sub" / "a.jpg")
    assert [f.relpath for f in scan_images(tmp_path).files] == ["img1.PNG", "img2.PNG", "img10.PNG", "sub/a.jpg"]
    assert [f.relpath for f in scan_images(tmp_path, extensions=["jpg"]).files] == ["sub/a.jpg"]
    with pytest.raises(FileNotFoundError):
        scan_images(tmp_path / "missing")


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_keeps_failures_aside(corpus: tuple[Path, dict[str, str]], workers: int) -> None:
    root, exp = corpus
    files = scan_images(root).files
    items = [(i, f.path) for i, f in enumerate(files)]

    def tf(img: Image.Image):
        import torch

        return torch.from_numpy(np.asarray(img.resize((16, 16)), np.float32)).permute(2, 0, 1)

    keys, failed = [], []
    for batch in create_loader(ImageFileDataset(items, tf), batch_size=4, workers=workers):
        if batch.pixels is not None:
            assert batch.pixels.shape[1:] == (3, 16, 16) and len(batch.infos) == len(batch.keys)
        keys += batch.keys
        failed += [f.key for f in batch.failures]
    assert sorted(keys + failed) == list(range(len(items)))
    n_fail = sum(1 for f in files if exp[f.relpath] == "fail")
    assert len(failed) == n_fail
