"""``lookalike info`` and ``lookalike compare``: what is installed, and two images under many metrics."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

from lookalike.app.cli import CliError

_INFO_EPILOG = """examples:
  lookalike info                      metrics, devices, which weights are present and where
  lookalike info --json               the same, as JSON
  lookalike info --index ./my-index   an index: counts, metrics, FAISS type, size, failed files
"""

_COMPARE_EPILOG = """examples:
  lookalike compare a.jpg b.jpg                            the default metric (dreamsim)
  lookalike compare a.jpg b.jpg --metric efficientnet_lite0 --metric psnr
  lookalike compare a.jpg b.jpg --all                      every metric that can run here
  lookalike compare a.jpg b.jpg --all --json
  lookalike compare a.jpg b.jpg -m efficientnet_lite0 --map where.png   where A differs, drawn over A (offline)
  lookalike compare a.jpg b.jpg -m lpips_vgg --map where.png
  lookalike compare a.jpg b.jpg -m diffsim --weights ~/models/stable-diffusion-v1-5

Each row says its direction: for distances lower = more similar; PSNR and SSIM are similarities
(higher = more similar), and so is DiffSim. With --all, metrics whose weights are not present are listed on one
line with the command that fetches them.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="metrics, devices and weights present; or describe an index",
                       epilog=_INFO_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", metavar="DIR", help="describe the index in DIR instead")
    p.add_argument("--db", metavar="URL", help="catalog URL when it is not the SQLite file in --index")
    p.add_argument("--weights", metavar="DIR", help="also look for weight files in DIR")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_info)

    p = sub.add_parser("compare", help="distance between two images under one or more metrics",
                       epilog=_COMPARE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", help="first image file")
    p.add_argument("b", help="second image file")
    p.add_argument("--metric", "-m", action="append", metavar="NAME", help="metric name (repeatable)")
    p.add_argument("--all", action="store_true", help="every registered metric (those without weights are listed)")
    p.add_argument("--device", help="cuda, mps or cpu (default: best available)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="precision (default fp32)")
    p.add_argument("--weights", metavar="DIR", help="folder searched first for weight files")
    p.add_argument("--map", metavar="PNG", help="write a heat map of where A differs from B, drawn over A (one "
                   "metric with a map: efficientnet_lite0 (offline), lpips_*, diffsim, DreamSim patch variants, "
                   "single-branch ViT backbones)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_compare)


def _devices() -> list[str]:
    import torch

    devs = ["cpu"]
    if torch.cuda.is_available():
        devs += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devs.append("mps")
    return devs


def _metric_dim(name: str) -> int | None:
    from lookalike.metric import get_metric_cfg, get_metric_dim

    return get_metric_dim(get_metric_cfg(name))


def collect_info(weights: str | None = None) -> dict[str, object]:
    """Library-side facts for ``lookalike info`` (no model is loaded)."""
    import torch

    from lookalike.metric import get_cache_dir, get_metric_cfg, list_metrics
    from lookalike.metric.weights import weights_paths

    metrics = []
    for name in list_metrics():
        cfg = get_metric_cfg(name)
        files = weights_paths(name, weights=weights)
        metrics.append({
            "name": name,
            "kind": cfg.kind,
            "dim": _metric_dim(name),
            "direction": "lower = more similar" if cfg.lower_is_better else "higher = more similar",
            "weights": "none needed" if not files else
            "present" if all(f["present"] for f in files) else "missing",
            "files": [{"path": f["path"], "present": f["present"], "location": f["location"]} for f in files],
            "description": cfg.description,
        })
    from lookalike.metric import describe_auto

    auto = [describe_auto("cpu")] + [describe_auto(f"cuda:{i}") for i in range(torch.cuda.device_count())]
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "devices": _devices(),
        "dtype_auto": auto,
        "cache_dir": str(get_cache_dir()),
        "metrics": metrics,
    }


def run_info(args: argparse.Namespace) -> int:
    if args.index:
        from lookalike.indexer import IndexDamaged, format_info, index_info

        info = index_info(Path(args.index), db_url=args.db)
        print(json.dumps(info, indent=2, default=str) if args.json else format_info(info))
        if info["damage"]:  # described as far as it could be read; the damage is the error (one line, exit 2)
            raise IndexDamaged(**{k: info["damage"][0][k] for k in ("path", "what")}, index_dir=args.index)
        return 0
    info = collect_info(args.weights)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"python {info['python']}, torch {info['torch']}")
    print(f"devices: {', '.join(info['devices'])}")  # type: ignore[arg-type]
    print(f"--dtype auto (index, search, app): {'; '.join(info['dtype_auto'])}")  # type: ignore[arg-type]
    print(f"weights cache: {info['cache_dir']}  (set $LOOKALIKE_HOME to move it)")
    print()
    rows = [(m["name"], m["kind"], str(m["dim"] or "-"), m["direction"], m["weights"])
            for m in info["metrics"]]  # type: ignore[union-attr]
    _print_table(("metric", "kind", "dim", "direction", "weights"), rows)
    missing = [m["name"] for m in info["metrics"] if m["weights"] == "missing"]  # type: ignore[union-attr]
    if missing:
        print(f"\nfetch missing weights with: lookalike weights download NAME   (e.g. {missing[0]})")
    return 0


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    for r in rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True)).rstrip())


def run_compare(args: argparse.Namespace) -> int:
    from lookalike.data.images import open_image
    from lookalike.judge.compare import STATUS_OK, STATUS_UNAVAILABLE, compare_all, list_compare_metrics
    from lookalike.metric import load_metric

    if args.all and args.metric:
        raise CliError("give either --all or --metric NAME, not both")
    names = list_compare_metrics() if args.all else (args.metric or ["dreamsim"])
    if args.map and len(names) != 1:
        raise CliError(f"--map draws one metric's map; give exactly one --metric NAME (got {len(names)} metrics)")
    img_a, img_b = open_image(Path(args.a)), open_image(Path(args.b))
    loaded: dict[str, object] = {}

    def load(name: str):
        if name not in loaded:
            loaded[name] = load_metric(name, device=args.device, dtype=args.dtype, weights=args.weights)
        return loaded[name]

    if len(names) == 1 and not args.all:
        load(names[0])  # one named metric: a missing weight file is the error, with its ways out
    # Named metrics may download their weights (with a progress bar); --all only uses what is on disk.
    rows = compare_all(img_a, img_b, metrics=names, load=load, weights=args.weights, download=not args.all)
    if args.json:
        print(json.dumps({"a": args.a, "b": args.b, "rows": [r.as_dict() for r in rows]}, indent=2))
    else:
        shown = [r for r in rows if not (args.all and r.status == STATUS_UNAVAILABLE)]
        table = [(r.metric, "-" if r.value is None else f"{r.value:.4f}", r.unit, r.direction, r.reason)
                 for r in shown]
        if table:
            _print_table(("metric", "value", "unit", "direction", "note"), table)
        missing = [r.metric for r in rows if args.all and r.status == STATUS_UNAVAILABLE]
        if missing:
            print(f"not run, weights not present ({len(missing)}): {', '.join(missing)}; fetch with: "
                  f"lookalike weights download NAME")
    if args.map and rows and rows[0].status == STATUS_OK:
        from lookalike.metric.maps import pair_distance_map, save_heatmap

        dmap = pair_distance_map(load(names[0]), img_a, img_b)  # type: ignore[arg-type]
        save_heatmap(args.map, img_a, dmap)
        if not args.json:
            print(f"map of {names[0]} ({dmap.values.shape[0]}x{dmap.values.shape[1]}, {dmap.lo:.3g} dark to "
                  f"{dmap.hi:.3g} bright) over {args.a} written to {args.map}")
    if not any(r.status == STATUS_OK for r in rows):
        why = "; ".join(f"{r.metric}: {r.reason}" for r in rows[:3])
        print(f"error: no metric could run here ({why})", file=sys.stderr)
        return 2
    return 0
