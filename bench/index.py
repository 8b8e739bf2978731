"""End-to-end indexing speed: images/s, peak RSS, where the time goes (decode / transfer / model / write), and
end-to-end images/s against embedding alone (the model on pre-decoded tensors).

    python bench/index.py                                   # ../shared/data/imagenet-samples, efficientnet_lite0
    python bench/index.py --folder ~/Pictures --metric dreamsim --workers 4 --batch-size 64
    python bench/index.py --fast-decode                     # PIL draft (CPU) / GPU JPEG decode (CUDA); not bit-exact

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

import torch

from lookalike.data.image_folder import scan_images
from lookalike.data.images import open_image
from lookalike.indexer import build_index
from lookalike.metric import Metric, load_metric

DEFAULT_FOLDER = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-samples"


def _peak_rss_mb() -> tuple[float, float]:
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20  # ru_maxrss: KiB on Linux, bytes on macOS
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale
    return own, children


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_only_images_per_s(metric: Metric, paths: list[str], batch_size: int, repeats: int = 3) -> float:
    """Embedding alone: images/s of ``metric.embed`` on pre-decoded batches already on the device (median of
    ``repeats`` passes after a warm-up batch)."""
    xs = torch.stack([metric.preprocess(open_image(p)) for p in paths])
    batches = [xs[i:i + batch_size].to(metric.device) for i in range(0, len(xs), batch_size)]
    with torch.inference_mode():
        metric.embed(batches[0])
        _sync(metric.device)
        rates = []
        for _ in range(repeats):
            t = time.perf_counter()
            for b in batches:
                metric.embed(b)
            _sync(metric.device)
            rates.append(len(xs) / (time.perf_counter() - t))
    return sorted(rates)[len(rates) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, default=DEFAULT_FOLDER)
    ap.add_argument("--metric", default="efficientnet_lite0")
    ap.add_argument("--device", default=None)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", default="0,1", help="comma-separated worker counts to compare")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N images (copied to a temp folder)")
    ap.add_argument("--fast-decode", action="store_true",
                    help="index with fast_decode=True (PIL draft on the CPU, GPU JPEG decode on CUDA; not bit-exact)")
    ap.add_argument("--model-images", type=int, default=256,
                    help="images pre-decoded for the model-only rate (default 256)")
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
          f"({metric.dim}-d) on {metric.device}, batch {args.batch_size}, {os.cpu_count()} CPUs, "
          f"{'fast' if args.fast_decode else 'exact'} decode")
    model_paths = [f.path for f in files[: min(n, max(args.model_images, args.batch_size))]]
    model_rate = model_only_images_per_s(metric, model_paths, args.batch_size)
    print(f"model only (embed on {len(model_paths)} pre-decoded images): {model_rate:.1f} img/s")
    print(f"{'workers':>7} {'decoder':>7} {'img/s':>7} {'vs model':>8} {'total s':>8} {'decode':>7} {'transfer':>8} "
          f"{'model':>7} {'write':>7} {'scan+diff':>9} {'peak RSS MB (main / workers)':>29}")
    for w in [int(x) for x in args.workers.split(",")]:
        idx = tmp / f"idx-{w}"
        t = time.perf_counter()
        s = build_index(folder, idx, metric=metric, batch_size=args.batch_size, workers=w, progress=False,
                        fast_decode=args.fast_decode)
        wall = time.perf_counter() - t
        sec = s.seconds
        busy = sec["decode"] + sec["transfer"] + sec["model"] + sec["write"]
        own, children = _peak_rss_mb()
        rate = s.embedded / wall
        print(f"{w:>7} {s.decoder:>7} {rate:>7.1f} {rate / model_rate:>8.0%} {wall:>8.1f} {sec['decode'] / busy:>7.0%} "
              f"{sec['transfer'] / busy:>8.0%} {sec['model'] / busy:>7.0%} {sec['write'] / busy:>7.0%} "
              f"{sec['scan'] + sec['diff']:>9.2f} {own:>14.0f} / {children:<14.0f}")
    t = time.perf_counter()
    s = build_index(folder, tmp / f"idx-{w}", metric=metric, batch_size=args.batch_size, workers=w, progress=False,
                    fast_decode=args.fast_decode)
    print(f"re-run on the unchanged tree: embedded {s.embedded}, {time.perf_counter() - t:.2f}s")
    print("img/s = embedded / wall time of build_index (scan, hashing and writes included); vs model = that rate over "
          "the model-only rate")
    print("decode = time the main process waited for decoded batches (with workers, decoding overlaps the model; on "
          "CUDA with --fast-decode it includes the GPU JPEG decode); transfer = host -> device copy; shares are of "
          "decode + transfer + model + write")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
