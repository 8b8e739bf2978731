"""Embedding throughput: lookalike vs the reference dreamsim==0.2.1 on identical random weights, in one run.

Both load the same files written in the official formats (tests/support.py); same batch, same threads,
warm-up first, median of timed repeats. Prints a table with ours/reference ratios.

    python bench/embed.py                                 # dreamsim + dreamsim_dino_vitb16, fp32 + bf16, batch 8
    python bench/embed.py --models dreamsim --batch 16 --repeats 5 --threads 2
    python bench/embed.py --device cuda --batch 256       # on a GPU (CUDA-event timing)
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support import LOOKALIKE_TO_REFERENCE, load_reference, write_official_cache  # noqa: E402

from lookalike.metric import load_metric  # noqa: E402


def _time_once(fn, x: torch.Tensor, device: str) -> float:
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(x)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000
    t = time.perf_counter()
    fn(x)
    return time.perf_counter() - t


def _timeit_pair(fa, fb, x: torch.Tensor, repeats: int, device: str) -> tuple[float, float]:
    """Median seconds per call of two functions, interleaved (a, b, a, b, ...) after a warm-up of each, so that
    a change in machine load hits both alike."""
    fa(x)
    fb(x)
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(_time_once(fa, x, device))
        tb.append(_time_once(fb, x, device))
    return statistics.median(ta), statistics.median(tb)


def _gflop_per_image(metric) -> float:
    """Forward FLOPs of one image (matmuls, convolutions, attention), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, 3, metric.input_size, metric.input_size)
    counter = FlopCounterMode(display=False)
    with counter:
        metric.embed(x)
    return counter.get_total_flops() / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["dreamsim", "dreamsim_dino_vitb16"])
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cache", type=Path, help="reuse a folder of random official-format weights")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the device's peak dense TFLOP/s for the dtype (e.g. 989 for H100 bf16) to print MFU")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = None
    if args.cache is None:
        tmp = tempfile.TemporaryDirectory()
        args.cache = Path(tmp.name) / "models"
    types = sorted({t + ("_patch" if p else "") for t, p in (LOOKALIKE_TO_REFERENCE[m] for m in args.models)})
    write_official_cache(args.cache, types)
    x = torch.rand(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(args.device)  # no copy timed
    rows = []
    for name in args.models:
        ref, _ = load_reference(args.cache, name)
        ref = ref.to(args.device)
        ref_fp32 = None
        for dt in args.dtypes:
            ours = load_metric(name, weights=args.cache, device=args.device, dtype=dt)
            dtype = ours.dtype

            def ref_embed(inp: torch.Tensor, dtype: torch.dtype = dtype, ref=ref) -> torch.Tensor:
                amp = (torch.autocast(args.device, dtype=dtype) if dtype != torch.float32
                       else contextlib.nullcontext())
                with torch.inference_mode(), amp:
                    return ref.embed(inp.to(args.device))

            t_ours, t_ref = _timeit_pair(ours.embed, ref_embed, x, args.repeats, args.device)
            if dt == "fp32":
                ref_fp32 = t_ref
            with torch.inference_mode():
                cos = None
                if dt != "fp32":
                    e32 = load_metric(name, weights=args.cache, device=args.device).embed(x)
                    cos = float((e32 * ours.embed(x)).sum(-1).min())
            gflop = _gflop_per_image(ours)
            rows.append((name, dt, args.batch / t_ours, args.batch / t_ref, t_ref / t_ours,
                         (ref_fp32 / t_ours) if ref_fp32 else None, cos, gflop))
            del ours
        del ref
    print(f"\ndevice {args.device}, {args.threads} threads, batch {args.batch}, median of {args.repeats}; "
          "reference = dreamsim 0.2.1 (bf16 via autocast)")
    hdr = ("model", "dtype", "ours img/s", "ref img/s", "ours/ref", "ours/ref-fp32", "min cos vs fp32",
           "GFLOP/img", "TFLOP/s", "MFU")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for name, dt, o, r, ratio, ratio32, cos, gflop in rows:
        tflops = o * gflop / 1000
        mfu = f"{100 * tflops / args.peak_tflops:.1f} %" if args.peak_tflops else ""
        print(f"| {name} | {dt} | {o:.2f} | {r:.2f} | {ratio:.2f}x | "
              f"{'' if ratio32 is None else f'{ratio32:.2f}x'} | {'' if cos is None else f'{cos:.5f}'} | "
              f"{gflop:.1f} | {tflops:.3f} | {mfu} |")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
