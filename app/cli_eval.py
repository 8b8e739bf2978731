"""``lookalike eval 2afc | eval jnd | calibrate | train``: human-judgement evaluation, thresholds, fine-tuning."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lookalike.app.cli import CliError

_EVAL_2AFC_EPILOG = """examples:
  lookalike eval 2afc --dataset nights --root ~/data/nights --metric dreamsim --uncentered
  lookalike eval 2afc --dataset nights --root ~/data/nights --metric dreamsim_dino_vitb16 --split test --json
  lookalike eval 2afc --dataset bapps --root ~/data/2afc/val --metric lpips_alex
  lookalike eval 2afc --dataset triplets --root my_triplets.csv --metric efficientnet_lite0
2AFC per triplet: 1 - p if d(ref, left) < d(ref, right), p if the other way round, 0.5 on a tie, where p is the
fraction of people who judged 'right' closer. --uncentered reproduces the DreamSim paper / README numbers (its
evaluation did not mean-centre the embeddings); lookalike's default is centred, like dreamsim()."""

_EVAL_JND_EPILOG = """examples:
  lookalike eval jnd --dataset bapps_jnd --root ~/data/jnd/val --metric lpips_alex
  lookalike eval jnd --dataset pairs --root judged_pairs.csv --metric dreamsim
mAP as in LPIPS: pairs ranked from most to least similar, 'same' (fraction judging the pair the same) as label."""

_CALIBRATE_EPILOG = """examples:
  lookalike calibrate --pairs judged_pairs.csv --metric dreamsim
  lookalike calibrate --pairs judged_pairs.csv --metric dreamsim --target-precision 0.99 --plot pr.png
  lookalike calibrate --pairs judged_pairs.csv --metric dreamsim --index ~/pictures.idx
  lookalike calibrate --index ~/pictures.idx          (from the labels given with 'lookalike label' or the app)
The pairs CSV has the header a,b,same (paths relative to the CSV; same = 1 for duplicates, 0 for different, or the
fraction of people who said 'same'). With --index, the threshold becomes that index's dedup default and the end of
its 'near' tier, so 'lookalike dedup --index DIR' needs no --threshold. Without --pairs, the labelled pairs of the
index are measured with its own stored vectors (no model is loaded)."""

_TRAIN_EPILOG = """examples:
  lookalike train --dataset nights --root ~/data/nights --metric dreamsim_dino_vitb16 --out runs/dino
  lookalike train --dataset triplets --root my_triplets.csv --metric dreamsim --out runs/mine --epochs 3
  lookalike eval 2afc --dataset triplets --root my_triplets.csv --metric dreamsim --weights runs/mine
LoRA (r 16) on every qkv layer, hinge loss (margin 0.05), Adam(lr 3e-4, betas (0.5, 0.999)): the DreamSim recipe.
A triplet CSV with a 'split' column uses its train / val rows; without one, --val-fraction of it is held out.
Interrupted? Run the same command again: it resumes. OUT/<adapter>/ is in the official peft layout."""


def _add_common(p: argparse.ArgumentParser, *, metric_required: bool = True) -> None:
    p.add_argument("--metric", required=metric_required,
                   help="metric name (see 'lookalike info')" + ("" if metric_required else
                        "; with --pairs; without, the index's metric"))
    p.add_argument("--weights", default=None, metavar="DIR",
                   help="folder searched first for weight files (e.g. a 'lookalike train' output folder)")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    p.add_argument("--workers", type=int, default=0, help="image decoding processes (default 0)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--centered", dest="center", action="store_const", const=True, default=None,
                   help="mean-centre embeddings before the cosine (lookalike's default for DreamSim metrics)")
    g.add_argument("--uncentered", dest="center", action="store_const", const=False,
                   help="no mean-centring: how the DreamSim paper numbers were computed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print results as JSON")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval``, ``calibrate`` and ``train`` subcommands."""
    fmt = argparse.RawDescriptionHelpFormatter
    ev = subparsers.add_parser("eval", help="agreement of a metric with human judgements (2AFC, JND)",
                               description="Score a metric against human judgements.")
    evsub = ev.add_subparsers(dest="eval_command", metavar="KIND")
    ev.set_defaults(func=lambda args: (ev.print_help(), 2)[1])

    p = evsub.add_parser("2afc", help="2AFC score per split with a bootstrap 95%% interval", epilog=_EVAL_2AFC_EPILOG,
                         formatter_class=fmt)
    p.add_argument("--dataset", required=True, choices=["nights", "bapps", "triplets"], help="dataset kind")
    p.add_argument("--root", required=True, help="dataset folder (nights, bapps) or CSV file (triplets)")
    p.add_argument("--split", action="append", default=None,
                   help="split to score (repeatable; default: nights val, test, test_imagenet, test_no_imagenet; "
                        "every BAPPS subset; every split of the CSV)")
    p.add_argument("--min-votes", type=int, default=6, help="NIGHTS: keep triplets with at least this many votes")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the interval (default 1000)")
    _add_common(p)
    p.set_defaults(func=run_eval_2afc)

    p = evsub.add_parser("jnd", help="JND mAP (LPIPS) on BAPPS JND folders or a pairs CSV", epilog=_EVAL_JND_EPILOG,
                         formatter_class=fmt)
    p.add_argument("--dataset", required=True, choices=["bapps_jnd", "pairs"], help="dataset kind")
    p.add_argument("--root", required=True, help="BAPPS JND folder or pairs CSV (a,b,same)")
    p.add_argument("--split", action="append", default=None, help="BAPPS subset (repeatable; default: all)")
    _add_common(p)
    p.set_defaults(func=run_eval_jnd)

    p = subparsers.add_parser("calibrate", help="dedup threshold from human same/different judgements",
                              epilog=_CALIBRATE_EPILOG, formatter_class=fmt)
    p.add_argument("--pairs", default=None, metavar="CSV",
                   help="judged pairs: header a,b,same (default with --index: the index's stored labels)")
    p.add_argument("--target-precision", type=float, default=0.95, help="precision to reach (default 0.95)")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="where to save the precision/recall plot (default: <pairs>.calibration.png)")
    p.add_argument("--index", default=None, metavar="DIR",
                   help="store the threshold as this index's dedup default and near-copy boundary")
    p.add_argument("--db", default=None, metavar="URL", help="catalog URL when it is not the SQLite file in --index")
    _add_common(p, metric_required=False)
    p.set_defaults(func=run_calibrate)

    p = subparsers.add_parser("train", help="LoRA fine-tuning of a metric on 2AFC triplets (DreamSim recipe)",
                              epilog=_TRAIN_EPILOG, formatter_class=fmt)
    p.add_argument("--dataset", required=True, choices=["nights", "triplets"], help="dataset kind")
    p.add_argument("--root", required=True, help="NIGHTS folder or triplet CSV")
    p.add_argument("--metric", required=True, help="ViT metric to tune: dreamsim_dino_vitb16, dreamsim, dino_vitb16...")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (adapter, config.json, checkpoints)")
    p.add_argument("--epochs", type=int, default=None, help="default 8 (single branch) / 6 (ensemble)")
    p.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate (default 3e-4)")
    p.add_argument("--batch-size", type=int, default=None, help="triplets per step (default 32 / 16 for ensembles)")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank (default 16)")
    p.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default 32 / 1.0 for ensembles)")
    p.add_argument("--lora-dropout", type=float, default=None, help="LoRA dropout (default 0.2 / 0.3 for ensembles)")
    p.add_argument("--margin", type=float, default=0.05, help="hinge margin (default 0.05)")
    p.add_argument("--centered", action="store_true", help="train on mean-centred embeddings (reference: not)")
    p.add_argument("--seed", type=int, default=1234, help="random seed (default 1234)")
    p.add_argument("--min-votes", type=int, default=6, help="NIGHTS: keep triplets with at least this many votes")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="triplet CSV without a split column: fraction held out for validation (default 0.1)")
    p.add_argument("--weights", default=None, metavar="DIR", help="folder searched first for the backbone weights")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    p.add_argument("--workers", type=int, default=0, help="image decoding processes (default 0)")
    p.add_argument("--checkpoint-every", type=int, default=200, help="steps between resumable checkpoints")
    p.add_argument("--keep-epochs", action="store_true", help="keep every epoch's adapter in OUT/epoch_N/")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue an unfinished run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_train)


def _load(args: argparse.Namespace) -> Any:
    from lookalike.metric import load_metric

    if args.batch_size is not None and args.batch_size < 1:
        raise CliError(f"--batch-size must be >= 1, got {args.batch_size}")
    return load_metric(args.metric, device=args.device, weights=args.weights)


def run_eval_2afc(args: argparse.Namespace) -> int:
    from lookalike.data.datasets import create_dataset, list_splits
    from lookalike.judge.eval import evaluate_2afc, format_2afc

    splits = args.split or list_splits(args.dataset, args.root)
    kwargs = {"min_votes": args.min_votes} if args.dataset == "nights" else {}
    datasets = [create_dataset(args.dataset, args.root, None if s == "all" else s, **kwargs) for s in splits]
    metric = _load(args)
    cache: dict[str, Any] = {}
    results = [evaluate_2afc(metric, ds, center=args.center, batch_size=args.batch_size, workers=args.workers,
                             progress=not args.no_progress, n_boot=args.bootstrap, cache=cache) for ds in datasets]
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=1))
        return 0
    centred = {None: "", True: ", centred", False: ", uncentred"}[results[0].centered]
    print(f"{metric.name} on {args.dataset} ({args.root}{centred})")
    print(format_2afc(results))
    return 0


def run_eval_jnd(args: argparse.Namespace) -> int:
    from lookalike.data.datasets import create_dataset, list_splits
    from lookalike.judge.eval import evaluate_jnd

    splits = args.split or list_splits(args.dataset, args.root)
    datasets = [create_dataset(args.dataset, args.root, None if s == "all" else s) for s in splits]
    metric = _load(args)
    cache: dict[str, Any] = {}
    results = [evaluate_jnd(metric, ds, center=args.center, batch_size=args.batch_size, workers=args.workers,
                            progress=not args.no_progress, cache=cache) for ds in datasets]
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=1))
        return 0
    print(f"{metric.name} on {args.dataset} ({args.root})")
    print(f"{'split':<20} {'mAP':>7} {'n':>7}")
    for r in results:
        print(f"{r.split:<20} {r.map:7.4f} {r.count:7d}")
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    from lookalike.judge.calibrate import calibrate_distances, calibrate_threshold, plot_calibration

    if args.pairs is None:
        if not args.index:
            raise CliError("calibrate needs --pairs CSV, or --index DIR to learn from the labels stored there")
        if args.center is not None:
            raise CliError("--centered/--uncentered apply to --pairs; the index's own vectors are used here")
        from lookalike.indexer import labelled_distances

        ld = labelled_distances(args.index, metric=args.metric, db_url=args.db)
        cal = calibrate_distances(ld.metric, ld.distances, ld.same, target_precision=args.target_precision)
        plot = Path(args.plot) if args.plot else Path(args.index) / "labels.calibration.png"
        left_out = ld.left_out
        metric_name = ld.metric
    else:
        if not args.metric:
            raise CliError("calibrate --pairs needs --metric")
        from lookalike.data.triplets import read_pairs_csv

        pairs = read_pairs_csv(args.pairs)
        metric = _load(args)
        if args.index and args.center is not None:
            raise CliError("--index stores a threshold for the index's own vectors; drop --centered/--uncentered")
        if args.index and not metric.lower_is_better:
            raise CliError(f"metric {metric.name!r} is a similarity (higher = more alike); an index threshold is a "
                           "distance: calibrate an embedding metric")
        cal = calibrate_threshold(metric, pairs, target_precision=args.target_precision, center=args.center,
                                  batch_size=args.batch_size, workers=args.workers, progress=not args.no_progress)
        plot = Path(args.plot) if args.plot else Path(args.pairs).with_suffix(".calibration.png")
        left_out = 0
        metric_name = metric.name
    plot_calibration(cal, plot)
    stored = None
    if args.index and cal.threshold is not None:
        from lookalike.indexer import set_tiers

        source = (f"calibrated from {cal.count} {'pairs of ' + args.pairs if args.pairs else 'labels'} at precision "
                  f"{cal.precision:.3f}, recall {cal.recall:.3f}")
        stored = set_tiers(args.index, cal.threshold, threshold=cal.threshold, metric=args.metric or None,
                           db_url=args.db, source=source)
    if args.json:
        print(json.dumps({**cal.to_dict(), "plot": str(plot), "index": args.index if stored else None,
                          "fingerprint": stored, "left_out": left_out}, indent=1))
    else:
        op = "<=" if cal.lower_is_better else ">="
        if cal.threshold is None:
            print(f"no threshold reaches precision {args.target_precision:g}: the best is {cal.precision:.3f} "
                  f"(recall {cal.recall:.3f}) on {cal.count} pairs")
        else:
            print(f"threshold {cal.threshold:.6g} ({metric_name} distance {op} threshold = duplicate): "
                  f"precision {cal.precision:.3f}, recall {cal.recall:.3f} on {cal.count} pairs "
                  f"({cal.positives:g} judged the same)")
        if left_out:
            print(f"{left_out} labels left out: an image of the pair is not indexed for {metric_name}")
        print(f"plot: {plot}")
        if stored:
            print(f"stored as the dedup default and near-copy boundary of {args.index} ({stored}); "
                  f"'lookalike dedup --index {args.index}' now needs no --threshold")
    if cal.threshold is None:
        if args.index:
            print("error: nothing stored in the index", file=sys.stderr)
        return 1
    return 0


def run_train(args: argparse.Namespace) -> int:
    from lookalike.data.datasets import create_dataset
    from lookalike.data.triplets import holdout_split, triplet_csv_splits
    from lookalike.judge.train import TrainConfig, train_metric

    if args.dataset == "nights":
        train = create_dataset("nights", args.root, "train", min_votes=args.min_votes)
        val = create_dataset("nights", args.root, "val", min_votes=args.min_votes)
    else:
        splits = triplet_csv_splits(args.root)
        if "train" in splits and "val" in splits:
            train = create_dataset("triplets", args.root, "train")
            val = create_dataset("triplets", args.root, "val")
        else:
            train, val = holdout_split(create_dataset("triplets", args.root), args.val_fraction, seed=args.seed)
    tc = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, lora_r=args.lora_r,
                     lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, margin=args.margin,
                     center=args.centered, seed=args.seed, workers=args.workers,
                     checkpoint_every=args.checkpoint_every, keep_epochs=args.keep_epochs)
    res = train_metric(args.metric, train, val, args.out, config=tc, weights=args.weights, device=args.device,
                       resume=not args.no_resume, progress=not args.no_progress)
    summary = {"metric": res.metric, "out": str(res.out), "adapter": str(res.adapter_dir),
               "train_triplets": len(train), "val_triplets": len(val), "val_2afc_before": res.val_before,
               "best_epoch": res.best_epoch, "best_val_2afc": res.best_val, "history": res.history}
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(f"{res.metric}: {len(train)} training / {len(val)} validation triplets")
    for h in res.history:
        loss = "" if h["train_loss"] is None else f"  train loss {h['train_loss']:.4f}"
        print(f"epoch {h['epoch']:3d}  val 2AFC {h['val_2afc']:.4f}{loss}")
    print(f"best: epoch {res.best_epoch}, val 2AFC {res.best_val:.4f} (untuned {res.val_before:.4f})")
    print(f"adapter: {res.adapter_dir} (official peft layout); use it with --metric {res.metric} --weights {res.out}"
          if res.adapter_dir.name != f"{res.metric}_lora" else
          f"adapter: {res.adapter_dir} (official peft layout); in Python: register_trained('{res.out}')")
    return 0
