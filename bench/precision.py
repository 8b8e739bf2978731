"""How much an index changes when it is built in bf16 instead of fp32: recall@10 and the largest distance change.

Embeds the same real photos twice with the same metric (fp32, then bf16 or ``auto``) and compares:

* recall@k: for each photo as a query, the share of its k nearest neighbours in the fp32 index (itself excluded)
  that the bf16 index also returns among its k nearest;
* the largest change of a query-neighbour distance (1 - cosine), over all pairs of photos;
* the smallest cosine between a photo's fp32 and bf16 embedding.

    python bench/precision.py                                     # efficientnet_lite0 on ../shared/data photos
    python bench/precision.py --metric dreamsim --limit 200 --dtype auto

On a CPU without AMX / AVX-512 BF16 oneDNN emulates bf16 (same rounding, many times slower): use ``--limit``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lookalike.data.image_folder import scan_images
from lookalike.data.images import open_image
from lookalike.metric import dtype_name, load_metric

SHARED = next((p / "shared" / "data" for p in Path(__file__).resolve().parents if (p / "shared" / "data").is_dir()),
              Path("shared") / "data")  # the project's shared data folder, found from a checkout or a worktree
DEFAULT_FOLDERS = [SHARED / "photos", SHARED / "imagenet-samples"]


def embed_all(metric, paths: list[str], batch: int) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for i in range(0, len(paths), batch):
            x = torch.stack([metric.preprocess(open_image(p)) for p in paths[i:i + batch]])
            out.append(metric.embed(x).float().cpu().numpy())
    return np.concatenate(out)


def _nchw_embed(metric):
    """``metric.embed`` of a timm CNN metric with its input kept NCHW (the same maths as TimmEmbeddingMetric)."""
    from lookalike.metric._base import center_l2

    def embed(x: torch.Tensor) -> torch.Tensor:
        x = metric.check_batch(x)
        with torch.inference_mode(), metric._precision():
            x = (x - metric.mean) / metric.std
            return center_l2(metric.model.forward_head(metric.model.forward_features(x), pre_logits=True))

    return embed


def compare(e32: np.ndarray, e16: np.ndarray, k: int) -> dict[str, float]:
    """recall@k of the e16 neighbours against the e32 ones (self excluded), max |distance change|, min cosine."""
    d32 = 1.0 - e32 @ e32.T
    d16 = 1.0 - e16 @ e16.T
    n = len(e32)
    np.fill_diagonal(d32, np.inf)
    np.fill_diagonal(d16, np.inf)
    k = min(k, n - 1)
    nn32 = np.argsort(d32, axis=1)[:, :k]
    nn16 = np.argsort(d16, axis=1)[:, :k]
    hits = sum(len(set(a) & set(b)) for a, b in zip(nn32.tolist(), nn16.tolist(), strict=True))
    off = ~np.eye(n, dtype=bool)
    return {
        "recall": hits / (n * k),
        "max_dd": float(np.abs(d32 - d16)[off].max()),
        "mean_dd": float(np.abs(d32 - d16)[off].mean()),
        "min_cos": float((e32 * e16).sum(1).min()),
        "k": k,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folders", nargs="+", type=Path, default=DEFAULT_FOLDERS)
    ap.add_argument("--metric", default="efficientnet_lite0")
    ap.add_argument("--weights", default=None, help="folder of weight files (e.g. bench/embed.py --cache)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default="bf16", help="the reduced precision to compare with fp32 (bf16, fp16, auto)")
    ap.add_argument("--limit", type=int, default=0, help="use the first N photos only")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--nchw", action="store_true",
                    help="run the reduced-precision CNN in NCHW, not channels_last (on a CPU that emulates bf16, "
                         "oneDNN's channels_last bf16 kernels are ~10x slower still; the numbers barely change)")
    args = ap.parse_args()

    paths = [f.path for folder in args.folders for f in scan_images(folder).files]
    if args.limit:
        paths = paths[: args.limit]
    if len(paths) < 2:
        sys.exit(f"need at least 2 photos under {args.folders}")
    m32 = load_metric(args.metric, device=args.device, dtype="fp32", weights=args.weights)
    m16 = load_metric(args.metric, device=args.device, dtype=args.dtype, weights=args.weights)
    if args.nchw and hasattr(m16, "model"):
        m16.model.to(memory_format=torch.contiguous_format)
        m16.embed = _nchw_embed(m16)  # type: ignore[method-assign]
    print(f"{len(paths)} photos, metric {m32.name} on {m32.device}, fp32 vs {dtype_name(m16.dtype)} "
          f"(--dtype {args.dtype})", flush=True)
    t = time.perf_counter()
    e32 = embed_all(m32, paths, args.batch)
    t32 = time.perf_counter() - t
    t = time.perf_counter()
    e16 = embed_all(m16, paths, args.batch)
    t16 = time.perf_counter() - t
    r = compare(e32, e16, args.k)
    print(f"| metric | photos | dtype | recall@{r['k']} vs fp32 | max distance change | mean distance change | "
          f"min cosine vs fp32 | fp32 s | {dtype_name(m16.dtype)} s |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {m32.name} | {len(paths)} | {dtype_name(m16.dtype)} | {r['recall']:.4f} | {r['max_dd']:.2e} | "
          f"{r['mean_dd']:.2e} | {r['min_cos']:.6f} | {t32:.1f} | {t16:.1f} |")


if __name__ == "__main__":
    main()
