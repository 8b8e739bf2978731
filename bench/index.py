"""End-to-end indexing speed against the model alone, fp32 and ``auto`` side by side, in one run.

For each dtype (default ``fp32,auto``) and worker setting, every round measures the model alone (``metric.embed``
on pre-decoded batches already on the device, after a warm-up: oneDNN builds its bf16 kernels on first use) and
a full ``build_index`` into a fresh folder (scan, hashing, decode, transfer, model, FAISS + catalog writes).
Each end-to-end run is bracketed by two model-only passes and compared with their mean; rounds interleave the
settings, so a change in machine load hits them alike; the table shows medians.

    python bench/index.py                                   # ../shared/data/imagenet-samples, efficientnet_lite0
    python bench/index.py --metric dreamsim --cache /tmp/ds-weights --limit 64   # random official-format weights
    python bench/index.py --workers 0,1 --threads 2 --rounds 3
    python bench/index.py --device cuda --fast-decode --min-images 2048 --batch-size 256   # GPU JPEG decode
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from lookalike.data.image_folder import scan_images
from lookalike.data.images import open_image
from lookalike.indexer import build_index
from lookalike.indexer._cores import plan_cores, torch_threads
from lookalike.metric import Metric, dtype_name, load_metric, suggest_batch_size

SHARED = next((p / "shared" / "data" for p in Path(__file__).resolve().parents if (p / "shared" / "data").is_dir()),
              Path("shared") / "data")  # the project's shared data folder, found from a checkout or a worktree
DEFAULT_FOLDER = SHARED / "imagenet-samples"


def _peak_rss_mb() -> tuple[float, float]:
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20  # ru_maxrss: KiB on Linux, bytes on macOS
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale
    return own, children


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def predecode(metric: Metric, paths: list[str], batch_size: int) -> list[torch.Tensor]:
    xs = torch.stack([metric.preprocess(open_image(p)) for p in paths])
    return [xs[i:i + batch_size].to(metric.device) for i in range(0, len(xs), batch_size)]


def model_only_images_per_s(metric: Metric, batches: list[torch.Tensor]) -> float:
    """Embedding alone: images/s of one pass of ``metric.embed`` over pre-decoded batches on the device."""
    n = sum(len(b) for b in batches)
    with torch.inference_mode():
        t = time.perf_counter()
        for b in batches:
            metric.embed(b)
        _sync(metric.device)
        return n / (time.perf_counter() - t)


def warm_up(metric: Metric, batch: torch.Tensor, passes: int = 2) -> float:
    """Run ``passes`` batches first (oneDNN / cuDNN pick and build kernels on first use); returns the seconds."""
    t = time.perf_counter()
    with torch.inference_mode():
        for _ in range(passes):
            metric.embed(batch)
        _sync(metric.device)
    return time.perf_counter() - t


def make_jpegs(files: list, dst: Path, n: int) -> None:
    """At least ``n`` distinct JPEG files in ``dst``: the sources re-encoded (JPEG quality and a 1-4 px crop vary per
    copy, so no two files are byte-identical)."""
    from PIL import Image

    dst.mkdir(parents=True, exist_ok=True)
    k = 0
    while k < n:
        for f in files:
            if k >= n:
                break
            with Image.open(f.path) as im:
                im = im.convert("RGB")
                c = 1 + k % 4
                im.crop((c, c, im.width - c, im.height - c)).save(dst / f"img{k:06d}.jpg", quality=80 + k % 15)
            k += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, default=DEFAULT_FOLDER)
    ap.add_argument("--metric", default="efficientnet_lite0")
    ap.add_argument("--cache", type=Path, default=None,
                    help="DreamSim models: write random weights in the official formats here (reused when present) "
                         "and load them (tests/official_formats.py, as bench/embed.py --cache)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtypes", default="fp32,auto", help="comma-separated dtypes to compare (default fp32,auto)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: suggest_batch_size (32 on the CPU)")
    ap.add_argument("--workers", default="auto",
                    help="comma-separated worker counts, or 'auto' (the indexer's own core plan; default)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the model (default: the plan's)")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds; medians are shown (default 1)")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N images (copied to a temp folder)")
    ap.add_argument("--min-images", type=int, default=0,
                    help="re-encode the images into at least N distinct JPEGs (e.g. 2048 for a GPU run)")
    ap.add_argument("--fast-decode", action="store_true",
                    help="index with fast_decode=True (PIL draft on the CPU, GPU JPEG decode on CUDA; not bit-exact)")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up batches per dtype before timing (default 2)")
    ap.add_argument("--model-images", type=int, default=256,
                    help="images pre-decoded for the model-only rate (default 256)")
    args = ap.parse_args()

    files = scan_images(args.folder).files
    if not files:
        sys.exit(f"no images under {args.folder}")
    tmp = Path(tempfile.mkdtemp(prefix="lookalike-bench-"))
    folder = args.folder
    if args.limit:
        files = files[: args.limit]
    if args.min_images:
        folder = tmp / "images"
        make_jpegs(files, folder, max(args.min_images, len(files)))
        files = scan_images(folder).files
    elif args.limit:
        folder = tmp / "images"
        folder.mkdir()
        for f in files:
            shutil.copy2(f.path, folder / f.relpath.replace("/", "_"))
    n = len(files)
    sizes = sorted(f.size for f in files)
    weights = None
    if args.cache is not None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from official_formats import LOOKALIKE_TO_REFERENCE, write_official_cache

        t, patch = LOOKALIKE_TO_REFERENCE[args.metric]
        if not args.cache.is_dir():
            write_official_cache(args.cache, [t + ("_patch" if patch else "")])
        weights = args.cache
    metrics = {dt: load_metric(args.metric, device=args.device, dtype=dt, weights=weights)
               for dt in args.dtypes.split(",")}
    first = next(iter(metrics.values()))
    batch_size = args.batch_size or suggest_batch_size(first)
    worker_opts: list[int | None] = ([None] if args.workers == "auto" else [int(x) for x in args.workers.split(",")])
    plans = {w: plan_cores(first.device, workers=w, threads=args.threads) for w in worker_opts}
    print(f"{n} images from {args.folder} (median {sizes[len(sizes) // 2] / 1e3:.0f} kB), metric {first.name} "
          f"({first.dim}-d) on {first.device}, batch {batch_size}, {os.cpu_count()} CPUs, "
          f"{'fast' if args.fast_decode else 'exact'} decode, "
          + ", ".join(f"{dt} -> {dtype_name(m.dtype)}" for dt, m in metrics.items()), flush=True)
    model_paths = [f.path for f in files[: min(n, max(args.model_images, batch_size))]]
    batches = predecode(first, model_paths, batch_size)
    for dt, m in metrics.items():
        with torch_threads(plans[worker_opts[0]].threads):
            print(f"warm-up {dt}: {warm_up(m, batches[0], args.warmup):.1f}s", flush=True)

    # each end-to-end run is bracketed by two model-only passes; its reference is their mean (machine load drifts)
    model_rates: dict[tuple[str, int | None], list[float]] = {(dt, w): [] for dt in metrics for w in worker_opts}
    runs: dict[tuple[str, int | None], list] = {(dt, w): [] for dt in metrics for w in worker_opts}
    for r in range(args.rounds):
        for dt, m in metrics.items():
            for w in worker_opts:
                with torch_threads(plans[w].threads):
                    before = model_only_images_per_s(m, batches)
                idx = tmp / f"idx-{dt}-{w}-{r}"
                t = time.perf_counter()
                s = build_index(folder, idx, metric=m, batch_size=batch_size, workers=w, threads=args.threads,
                                progress=False, fast_decode=args.fast_decode)
                wall = time.perf_counter() - t
                shutil.rmtree(idx, ignore_errors=True)
                with torch_threads(plans[w].threads):
                    after = model_only_images_per_s(m, batches)
                model_rates[(dt, w)].append((before + after) / 2)
                runs[(dt, w)].append((s, wall))
                print(f"round {r + 1}/{args.rounds} {dt} workers {s.workers}: model only {before:.1f} / {after:.1f} "
                      f"img/s, end to end {s.embedded / wall:.1f} img/s", flush=True)

    hdr = ("dtype", "runs as", "workers", "threads", "model only img/s", "end to end img/s", "e2e / model",
           "decode", "transfer", "model", "write", "scan+diff s", "peak RSS MB main / workers")
    print("\n| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    own, children = _peak_rss_mb()
    for key, res in runs.items():
        dt = key[0]
        mr = statistics.median(model_rates[key])
        rates = [s.embedded / wall for s, wall in res]
        rate = statistics.median(rates)
        ratio = statistics.median(e / m for e, m in zip(rates, model_rates[key], strict=True))
        s, _wall = res[rates.index(sorted(rates)[len(rates) // 2])]
        sec = s.seconds
        busy = sum(sec[k] for k in ("decode", "transfer", "model", "write")) or 1.0
        print(f"| {dt} | {s.dtype} | {s.workers} | {s.threads} | {mr:.1f} | {rate:.1f} | {ratio:.0%} | "
              f"{sec['decode'] / busy:.0%} | {sec['transfer'] / busy:.0%} | {sec['model'] / busy:.0%} | "
              f"{sec['write'] / busy:.0%} | {sec['scan'] + sec['diff']:.2f} | {own:.0f} / {children:.0f} |")
    print(f"\nmedians of {args.rounds} interleaved round(s). end to end = embedded / wall time of build_index (scan, "
          "hashing and writes included); e2e / model = median over rounds of that rate over the mean of the "
          "model-only passes just before and just after it (same threads). decode = time the main process waited "
          "for decoded batches (with workers, decoding overlaps the model; on CUDA with --fast-decode it includes "
          "the GPU JPEG decode); transfer = host -> device copy; shares are of decode + transfer + model + write.")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
