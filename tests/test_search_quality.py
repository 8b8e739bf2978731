"""Search and dedup quality on real photos with efficientnet_lite0 (real ImageNet weights, no download).

Edited copies of each photo (JPEG q30, 50 % resize, 85 % crop, +30 % brightness, EXIF rotation) are indexed with
their originals; each copy must find its original first, and dedup must recover the (original, copy) pairs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance
from support import PHOTOS, SHARED

from lookalike.indexer import build_index, find_duplicates, open_index, search

FIXTURE_PHOTOS = PHOTOS
SHARED_PHOTOS = SHARED / "data" / "photos"
THRESHOLD = 0.25  # 1 - cosine: the middle of the gap this test prints (true pairs <= 0.21, other photos >= 0.29)
EDITS = ("q30", "half", "crop85", "bright", "exifrot")


def _photos(n: int) -> list[Path]:
    """``n`` real photos: half BSD68, half Sun-Hays 80 from ../shared when present, else the 24 fixtures."""
    if (SHARED_PHOTOS / "bsd68").is_dir() and (SHARED_PHOTOS / "sun_hays80").is_dir():
        b = sorted((SHARED_PHOTOS / "bsd68").glob("*.png"))[: n // 2]
        s = sorted((SHARED_PHOTOS / "sun_hays80").glob("*.jpg"))[: n - len(b)]
        return b + s
    return sorted(FIXTURE_PHOTOS.glob("*.jpg"))[:n]


def _save(img: Image.Image, path: Path, quality: int = 95, **kw: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "JPEG", quality=quality, **kw)


def make_edited_collection(src: list[Path], root: Path) -> dict[str, str]:
    """Originals plus 5 edited copies each; returns {relative path of a copy: relative path of its original}."""
    truth: dict[str, str] = {}
    for i, p in enumerate(src):
        img = Image.open(p).convert("RGB")
        w, h = img.size
        orig = f"orig/{i:03d}_{p.stem}.jpg"
        _save(img, root / orig)
        copies = {
            "q30": img,
            "half": img.resize((w // 2, h // 2), Image.Resampling.BICUBIC),
            "crop85": img.crop((int(w * 0.075), int(h * 0.075), int(w * 0.925), int(h * 0.925))),
            "bright": ImageEnhance.Brightness(img).enhance(1.3),
        }
        for name, im in copies.items():
            rel = f"edits/{name}/{i:03d}.jpg"
            _save(im, root / rel, quality=30 if name == "q30" else 95)
            truth[rel] = orig
        exif = Image.Exif()
        exif[0x0112] = 8  # stored rotated 90 CW; viewers (and open_image) turn it back upright
        rel = f"edits/exifrot/{i:03d}.jpg"
        _save(img.transpose(Image.Transpose.ROTATE_270), root / rel, exif=exif.tobytes())
        truth[rel] = orig
    return truth


@pytest.fixture(scope="module")
def edited_index(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("quality")
    src = _photos(40)
    assert len(src) >= 24
    truth = make_edited_collection(src, tmp / "photos")
    summary = build_index(tmp / "photos", tmp / "idx", metric="efficientnet_lite0", device="cpu", batch_size=32,
                          workers=1, progress=False)
    assert summary.failed == 0 and summary.total_vectors == len(src) * (1 + len(EDITS))
    return tmp, truth, len(src)


def test_copies_find_their_original(edited_index) -> None:
    tmp, truth, n = edited_index
    hit1 = {e: 0 for e in EDITS}  # the nearest original is the copy's own
    same1 = 0  # the nearest other image is the original or another copy of it
    with open_index(tmp / "idx") as ix:
        for copy, orig in truth.items():
            hits = [h for h in search(ix, copy, k=len(EDITS) + 3) if h.relpath != copy]
            first_orig = next(h for h in hits if h.relpath.startswith("orig/"))
            hit1[copy.split("/")[1]] += first_orig.relpath == orig
            same1 += truth.get(hits[0].relpath, hits[0].relpath) == orig
    recall = sum(hit1.values()) / len(truth)
    print(f"\nrecall@1 of the original over {len(truth)} copies of {n} photos: {recall:.3f} ("
          + " ".join(f"{e} {v / n:.2f}" for e, v in hit1.items()) + f"); nearest image of the same photo: "
          f"{same1 / len(truth):.3f}")
    assert recall >= 0.95 and same1 / len(truth) >= 0.95


def test_dedup_recovers_pairs(edited_index) -> None:
    tmp, truth, n = edited_index
    report = find_duplicates(tmp / "idx", threshold=THRESHOLD)
    root = str(tmp / "photos")

    def rel(p: str) -> str:
        return os.path.relpath(p, root).replace(os.sep, "/")

    group_of = {c: o for c, o in truth.items()} | {o: o for o in truth.values()}
    found = {frozenset((rel(p.a), rel(p.b))) for p in report.pairs}
    true_pairs = {frozenset((c, o)) for c, o in truth.items()}
    recall = len(found & true_pairs) / len(true_pairs)
    same = [all(group_of[x] == group_of[next(iter(pair))] for x in pair) for pair in found]
    precision = float(np.mean(same)) if same else 0.0
    # distances of true pairs vs the closest pair of different photos, to show the margin
    with open_index(tmp / "idx") as ix:
        xb = ix.vectors.vectors(ix.vectors.ids())
        rows = ix.rows(ix.vectors.ids())
    ids = ix.vectors.ids().tolist()
    groups = np.array([hash(group_of[rows[i].relpath]) for i in ids])
    d = 1.0 - xb @ xb.T
    diff = groups[:, None] != groups[None, :]
    print(f"\ndedup at {THRESHOLD}: {len(report.pairs)} pairs, precision {precision:.3f}, recall {recall:.3f} "
          f"({len(true_pairs)} (original, copy) pairs); closest different photos at {d[diff].min():.3f}, "
          f"farthest true pair at {max(p for p in _true_dists(d, ids, rows, truth))}")
    assert precision >= 0.95 and recall >= 0.95
    star = find_duplicates(tmp / "idx", threshold=THRESHOLD, group="star", keep="largest")
    assert all(len(g.duplicates) <= len(EDITS) for g in star.groups)
    kept = [rel(g.keeper.path) for g in star.groups]
    assert not [k for k in kept if k.startswith(("edits/half/", "edits/crop85/"))]  # "largest" keeps a full-size file


def _true_dists(d: np.ndarray, ids: list[int], rows: dict, truth: dict[str, str]):
    pos = {rows[i].relpath: j for j, i in enumerate(ids)}
    for c, o in truth.items():
        yield round(float(d[pos[c], pos[o]]), 3)
