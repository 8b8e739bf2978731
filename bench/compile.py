"""Does ``torch.compile`` pay on this machine? Compile time, eager vs compiled images/s, and the break-even point.

    python bench/compile.py                                  # efficientnet_lite0, dtype auto, batch 32
    python bench/compile.py --metric dreamsim_dino_vitb16 --cache /tmp/w --dtype bf16 --batch 8

Eager and compiled passes are interleaved after a warm-up (oneDNN builds its bf16 kernels on first use); medians.
The verdict extrapolates to a ``--collection``-image run (default 10,000): compiling pays when
``compile s < collection x (1/eager - 1/compiled)``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from lookalike.metric import dtype_name, load_metric


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--metric", default="efficientnet_lite0")
    ap.add_argument("--cache", type=Path, default=None, help="random official-format weights (bench/embed.py)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--collection", type=int, default=10_000)
    args = ap.parse_args()
    if args.cache is not None and not args.cache.is_dir():
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from official_formats import LOOKALIKE_TO_REFERENCE, write_official_cache

        t, patch = LOOKALIKE_TO_REFERENCE[args.metric]
        write_official_cache(args.cache, [t + ("_patch" if patch else "")])
    eager = load_metric(args.metric, device=args.device, dtype=args.dtype, weights=args.cache)
    comp = load_metric(args.metric, device=args.device, dtype=args.dtype, weights=args.cache)
    x = torch.rand(args.batch, 3, eager.input_size, eager.input_size, generator=torch.Generator().manual_seed(0))
    x = x.to(eager.device)
    with torch.inference_mode():
        for _ in range(2):
            eager.embed(x)
        comp.enable_compile()
        t = time.perf_counter()
        comp.embed(x)  # compiles
        compile_s = time.perf_counter() - t
        comp.embed(x)
        te, tc = [], []
        for _ in range(args.repeats):
            for m, out in ((eager, te), (comp, tc)):
                t = time.perf_counter()
                m.embed(x)
                out.append(time.perf_counter() - t)
        cos = float((eager.embed(x) * comp.embed(x)).sum(-1).min())
    re, rc = args.batch / statistics.median(te), args.batch / statistics.median(tc)
    gain = args.collection * (1 / re - 1 / rc)
    print(f"| metric | dtype | batch | eager img/s | compiled img/s | compile s | "
          f"saved on {args.collection:,} images s | pays | min cos |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {eager.name} | {dtype_name(eager.dtype)} | {args.batch} | {re:.2f} | {rc:.2f} | {compile_s:.0f} | "
          f"{gain:.0f} | {'yes' if gain > compile_s else 'no'} | {cos:.6f} |")


if __name__ == "__main__":
    main()
