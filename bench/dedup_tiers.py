"""Where near copies end and different photos begin: distances of real photo edits under an embedding metric.

    python bench/dedup_tiers.py                                   # efficientnet_lite0 on ../shared/data
    python bench/dedup_tiers.py --photos 40 --others 0            # a quicker look
    python bench/dedup_tiers.py --pdq                 # + what a dihedral PDQ hash sees (pip install pdqhash)

Every photo of ``../shared/data/photos`` (68 BSD68 + 80 Sun-Hays, or ``--photos N`` of them) is written as an
original and as edited copies made here with Pillow: resized (50 %, 25 %), re-encoded (JPEG q30, q10), lightly
cropped (90 % and 80 % centre, 90 % off-centre), recoloured (brightness x1.3 / x0.75, contrast x1.3, saturation x0.5,
greyscale) and one combination (50 % + q50). Different-but-similar photos are made too: two overlapping views of the
same scene (left and right 60 % of the width: a pan) and a 50 % zoom on the centre; the nearest *other* photo of
each original among all originals and ``--others`` ImageNet samples is the different-photo reference. Flips and
90-degree rotations are measured apart: a dihedral hash would catch them, and the question is whether the
embedding does.

Everything goes through ``build_index`` (the vectors the index stores, in its precision), and the distance is the
index's 1 - cosine. The table prints the quantiles per kind and the boundary this suggests for the ``near`` tier:
the middle of the gap between the 99th percentile of the light edits and the 1st percentile of the nearest
different photos (or, with no gap, the value that misclassifies the fewest of both).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from lookalike.indexer import build_index, open_index

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

EDITS = {  # near copies: the same photo after an everyday edit
    "resize50": lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.BICUBIC),
    "resize25": lambda im: im.resize((im.width // 4, im.height // 4), Image.Resampling.BICUBIC),
    "jpeg_q30": lambda im: im,
    "jpeg_q10": lambda im: im,
    "crop90": lambda im: _crop(im, 0.05, 0.05, 0.95, 0.95),
    "crop80": lambda im: _crop(im, 0.10, 0.10, 0.90, 0.90),
    "crop90_corner": lambda im: _crop(im, 0.0, 0.0, 0.90, 0.90),
    "bright130": lambda im: ImageEnhance.Brightness(im).enhance(1.3),
    "dark75": lambda im: ImageEnhance.Brightness(im).enhance(0.75),
    "contrast130": lambda im: ImageEnhance.Contrast(im).enhance(1.3),
    "saturation50": lambda im: ImageEnhance.Color(im).enhance(0.5),
    "grey": lambda im: ImageOps.grayscale(im).convert("RGB"),
    "resize50_q50": lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.BICUBIC),
}
QUALITY = {"jpeg_q30": 30, "jpeg_q10": 10, "resize50_q50": 50}
SIMILAR = {  # different-but-similar: another view of the same scene
    "pan_left_right": None,  # left 60 % vs right 60 % (written as two files, compared with each other)
    "zoom50": lambda im: _crop(im, 0.25, 0.25, 0.75, 0.75),
}
DIHEDRAL = {  # what a dihedral hash catches by construction
    "flip": lambda im: ImageOps.mirror(im),
    "rot90": lambda im: im.transpose(Image.Transpose.ROTATE_90),
}


def _crop(im: Image.Image, x0: float, y0: float, x1: float, y1: float) -> Image.Image:
    w, h = im.size
    return im.crop((int(w * x0), int(h * y0), int(w * x1), int(h * y1)))


def _photos(n: int) -> list[Path]:
    b = sorted((SHARED / "photos" / "bsd68").glob("*.png"))
    s = sorted((SHARED / "photos" / "sun_hays80").glob("*.jpg"))
    if not b and not s:
        raise SystemExit(f"no photos under {SHARED / 'photos'}")
    both = b + s
    if n and n < len(both):  # half of each
        both = b[: n // 2] + s[: n - n // 2]
    return both


def write_collection(src: list[Path], others: list[Path], root: Path) -> list[tuple[str, str, str]]:
    """Originals, edits, similar views and other photos under ``root``; returns (kind, a, b) pairs to measure."""
    pairs: list[tuple[str, str, str]] = []

    def save(im: Image.Image, rel: str, quality: int = 95) -> str:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        im.save(p, "JPEG", quality=quality)
        return rel

    for i, p in enumerate(src):
        im = Image.open(p).convert("RGB")
        orig = save(im, f"orig/{i:03d}.jpg")
        for kind, fn in {**EDITS, **DIHEDRAL}.items():
            pairs.append((kind, orig, save(fn(im), f"{kind}/{i:03d}.jpg", QUALITY.get(kind, 95))))
        left = save(_crop(im, 0.0, 0.0, 0.6, 1.0), f"pan/{i:03d}_left.jpg")
        right = save(_crop(im, 0.4, 0.0, 1.0, 1.0), f"pan/{i:03d}_right.jpg")
        pairs.append(("pan_left_right", left, right))
        zoom = SIMILAR["zoom50"]
        assert zoom is not None
        pairs.append(("zoom50", orig, save(zoom(im), f"zoom50/{i:03d}.jpg")))
    for j, p in enumerate(others):
        save(Image.open(p).convert("RGB"), f"other/{j:03d}.jpg")
    return pairs


def measure(root: Path, idx: Path, pairs: list[tuple[str, str, str]], n_src: int,
            metric: str) -> dict[str, np.ndarray]:
    t = time.perf_counter()
    build_index(root, idx, metric=metric, device="cpu", progress=False)
    print(f"indexed in {time.perf_counter() - t:.0f} s")
    with open_index(idx) as ix:
        ids, xb = [], []
        for i, x in ix.vectors.iter_blocks(4096):
            ids.append(i)
            xb.append(np.asarray(x, np.float32))
        all_ids = np.concatenate(ids)
        X = np.concatenate(xb)
        rows = ix.rows(all_ids.tolist())
        row_of = {rows[int(i)].relpath: k for k, i in enumerate(all_ids)}
    out: dict[str, list[float]] = defaultdict(list)
    for kind, a, b in pairs:
        out[kind].append(float(1.0 - X[row_of[a]] @ X[row_of[b]]))
    # nearest different photo of each original among originals + other photos
    pool = [k for rel, k in row_of.items() if rel.startswith(("orig/", "other/"))]
    P = X[pool]
    for i in range(n_src):
        k = row_of[f"orig/{i:03d}.jpg"]
        d = 1.0 - P @ X[k]
        d[pool.index(k)] = np.inf
        out["nearest_other_photo"].append(float(d.min()))
    return {k: np.asarray(v) for k, v in out.items()}


def suggest(near: np.ndarray, other: np.ndarray) -> tuple[float, str]:
    hi, lo = float(np.quantile(near, 0.99)), float(np.quantile(other, 0.01))
    if hi < lo:
        return (hi + lo) / 2, f"gap {hi:.3f} .. {lo:.3f} (99th pct of edits .. 1st pct of other photos)"
    cands = np.unique(np.concatenate([near, other]))
    errs = [(np.sum(near > c) + np.sum(other <= c), c) for c in cands]
    e, c = min(errs)
    return float(c), f"no gap: {int(e)} of {near.size + other.size} misclassified at best"


def pdq_distances(root: Path, pairs: list[tuple[str, str, str]]) -> dict[str, tuple[np.ndarray, float]]:
    """Smallest Hamming distance (of 256 bits) between the PDQ hash of ``a`` and the 8 dihedral hashes of ``b``."""
    import pdqhash

    cache: dict[str, list[np.ndarray]] = {}
    t = time.perf_counter()

    def hashes(rel: str) -> list[np.ndarray]:
        if rel not in cache:
            arr = np.asarray(Image.open(root / rel).convert("RGB"))
            cache[rel] = list(pdqhash.compute_dihedral(arr)[0])
        return cache[rel]

    out: dict[str, list[int]] = defaultdict(list)
    for kind, a, b in pairs:
        ha = hashes(a)[0]
        out[kind].append(min(int(np.count_nonzero(ha != hb)) for hb in hashes(b)))
    per_image = (time.perf_counter() - t) / max(1, len(cache))
    return {k: (np.asarray(v), per_image) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--metric", default="efficientnet_lite0")
    ap.add_argument("--photos", type=int, default=0, help="originals to edit (default: all 148)")
    ap.add_argument("--others", type=int, default=334, help="ImageNet samples as different photos (default all)")
    ap.add_argument("--pdq", action="store_true", help="also measure a dihedral PDQ hash (needs pdqhash)")
    ap.add_argument("--json", default=None, metavar="FILE", help="write the distances there")
    args = ap.parse_args()
    src = _photos(args.photos)
    others = sorted((SHARED / "imagenet-samples").glob("*.JPEG"))[: args.others]
    with tempfile.TemporaryDirectory(prefix="lookalike-tiers-") as tmp:
        root, idx = Path(tmp) / "photos", Path(tmp) / "idx"
        pairs = write_collection(src, others, root)
        d = measure(root, idx, pairs, len(src), args.metric)
        pdq = pdq_distances(root, pairs) if args.pdq else {}
    near = np.concatenate([d[k] for k in EDITS])
    views = np.concatenate([d[k] for k in SIMILAR])
    other = d["nearest_other_photo"]
    bound, why = suggest(near, np.concatenate([views, other]))
    similar, why_similar = suggest(views, other)
    print(f"\n{args.metric}: 1 - cosine between an original and its edit ({len(src)} photos, "
          f"{len(others)} ImageNet samples as other photos)")
    head = f"{'kind':<22} {'n':>4} {'min':>6} {'p50':>6} {'p90':>6} {'p99':>6} {'max':>6} {'<= near':>8} {'<= sim':>7}"
    print(head + ("  PDQ bits p50/max  <= 31" if pdq else ""))
    groups = [("near copies", list(EDITS)), ("different views of a scene", list(SIMILAR)),
              ("dihedral", list(DIHEDRAL)), ("different photos", ["nearest_other_photo"])]
    for title, kinds in groups:
        print(f"-- {title}")
        for k in kinds:
            v = d[k]
            q = np.quantile(v, [0.5, 0.9, 0.99])
            line = (f"{k:<22} {v.size:>4} {v.min():>6.3f} {q[0]:>6.3f} {q[1]:>6.3f} {q[2]:>6.3f} {v.max():>6.3f} "
                    f"{np.mean(v <= bound):>8.1%} {np.mean(v <= similar):>7.1%}")
            if k in pdq:
                h = pdq[k][0]
                line += f"  {int(np.median(h)):>8d}/{int(h.max()):<4d} {np.mean(h <= 31):>8.1%}"
            print(line)
    print(f"\nsuggested near boundary: {bound:.3f} ({why}; copies vs views and other photos)")
    print(f"suggested similar threshold: {similar:.3f} ({why_similar}; views vs other photos)")
    if pdq:
        print(f"PDQ: {next(iter(pdq.values()))[1] * 1e3:.1f} ms per image for the 8 dihedral hashes (this machine, "
              "shared); <= 31 bits is PDQ's usual match threshold")
    if args.json:
        Path(args.json).write_text(json.dumps({k: v.tolist() for k, v in d.items()}, indent=0))


if __name__ == "__main__":
    main()
