"""End-to-end indexing speed: images/s, peak RSS, and the share of time spent decoding vs embedding vs writing.

    python bench/index.py                                   # ../shared/data/imagenet-samples, efficientnet_lite0
    python bench/index.py --folder ~/Pictures --metric dreamsim --workers 4 --batch-size 64

Prints one table row per worker count; each run indexes into a fresh temporary folder.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from lookalike.data.image_folder import scan_images
from lookalike.indexer import build_index
from lookalike.metric import load_metric

DEFAULT_FOLDER = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-samples"


def _peak_rss_mb() -> tuple[float, float]:
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20  # ru_maxrss: KiB on Linux, bytes on macOS
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale
    return own, children


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, default=DEFAULT_FOLDER)
    ap.add_argument("--metric", default="efficientnet_lite0")
    ap.add_argument("--device", default=None)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", default="0,1", help="comma-separated worker counts to compare")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N images (copied to a temp folder)")
    args = ap.parse_args()

    files = scan_images(args.folder).files
    if not files:
        sys.exit(f"no images under {args.folder}")
    tmp = Path(tempfile.mkdtemp(prefix="lookalike-bench-"))
    folder = args.folder
    if args.limit:
        folder = tmp / "images"
        folder.mkdir()
        for f in files[: args.limit]:
            shutil.copy2(f.path, folder / f.relpath.replace("/", "_"))
    n = min(len(files), args.limit or len(files))
    sizes = sorted(f.size for f in files[:n])
    metric = load_metric(args.metric, device=args.device)
    print(f"{n} images from {args.folder} (median {sizes[len(sizes) // 2] / 1e3:.0f} kB), metric {metric.name} "
          f"({metric.dim}-d) on {metric.device}, batch {args.batch_size}, {os.cpu_count()} CPUs")
    print(f"{'workers':>7} {'img/s':>7} {'total s':>8} {'decode':>7} {'embed':>7} {'write':>7} {'scan+diff':>9} "
          f"{'peak RSS MB (main / workers)':>29}")
    for w in [int(x) for x in args.workers.split(",")]:
        idx = tmp / f"idx-{w}"
        t = time.perf_counter()
        s = build_index(folder, idx, metric=metric, batch_size=args.batch_size, workers=w, progress=False)
        wall = time.perf_counter() - t
        sec = s.seconds
        busy = sec["decode"] + sec["embed"] + sec["write"]
        own, children = _peak_rss_mb()
        print(f"{w:>7} {s.embedded / wall:>7.1f} {wall:>8.1f} {sec['decode'] / busy:>7.0%} {sec['embed'] / busy:>7.0%} "
              f"{sec['write'] / busy:>7.0%} {sec['scan'] + sec['diff']:>9.2f} {own:>14.0f} / {children:<14.0f}")
    t = time.perf_counter()
    s = build_index(folder, tmp / f"idx-{w}", metric=metric, batch_size=args.batch_size, workers=w, progress=False)
    print(f"re-run on the unchanged tree: embedded {s.embedded}, {time.perf_counter() - t:.2f}s")
    print("decode = time the main process waited for decoded batches (with workers, decoding overlaps embedding)")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
