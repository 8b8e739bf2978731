"""``lookalike dedup | label``: duplicates with tiers and a keeper per group, moves into quarantine and back, and a
person's verdicts on pairs (thin wrappers over ``lookalike.indexer``)."""

from __future__ import annotations

import argparse
import json
import sys

from lookalike.app.cli import CliError, Loading

_DEDUP_EPILOG = """examples:
  lookalike dedup --index idx                                   (the stored or measured threshold of the metric)
  lookalike dedup --index idx --threshold 0.3 --out report.html   (one page to review offline, thumbnails inside)
  lookalike dedup --index idx --group star --keep oldest --json
  lookalike dedup --index idx --between photos/test photos/train  (test images that leak from the training set)
  lookalike dedup --index idx --prefer ~/Pictures/originals --move-to ~/quarantine   (moves, never deletes)
  lookalike dedup --undo ~/quarantine/manifest-20260101-120000-000000.json
Every pair has a tier: exact (the same bytes), near (a near copy: resized, re-encoded, lightly cropped or recoloured)
or similar (within the threshold, farther than a near copy). Pairs labelled different ('lookalike label') are never
reported, pairs labelled same always are. Files are only touched with --move-to; moved files are left out of later
runs, and the manifest it writes lets --undo put everything back."""

_LABEL_EPILOG = """examples:
  lookalike label --index idx --different photos/a.jpg photos/b.jpg   (never report this pair again)
  lookalike label --index idx --same photos/a.jpg photos/a_small.jpg  (always group these two)
  lookalike label --index idx --from decisions.csv                    (header a,b,same; 1 = same, 0 = different)
  lookalike label --index idx --list
  lookalike calibrate --index idx                                    (thresholds learned from the labels)
Labels are keyed by the files' content (sha256), so they survive moves and renames and hold for every copy."""


def _add_catalog_flags(p: argparse.ArgumentParser, *, required_index: bool = True) -> None:
    p.add_argument("--index", required=required_index, metavar="DIR", help="index folder")
    p.add_argument("--db", default=None, metavar="URL",
                   help="SQLAlchemy URL of the catalog (default: catalog.sqlite in the index folder)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``dedup`` and ``label`` subcommands."""
    from lookalike.indexer import CHAIN_LIMIT, GROUP_MODES, KEEP_RULES, REPORT_WRITERS

    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser("dedup", help="find near-duplicate images in an index (tiers, keepers, quarantine)",
                              epilog=_DEDUP_EPILOG, formatter_class=fmt)
    _add_catalog_flags(p, required_index=False)
    p.add_argument("--threshold", type=float, default=None,
                   help="largest distance (1 - cosine) counted as a duplicate (default: the one stored with the "
                        "index, else the metric's near-copy boundary, measured or calibrated)")
    p.add_argument("--group", choices=GROUP_MODES, default="components",
                   help="components: linked chains; star: files within the threshold of a keeper (default "
                        "components)")
    p.add_argument("--keep", choices=KEEP_RULES, default="largest",
                   help="which file of a group to keep (default largest); ties: earliest modified, then indexed first")
    p.add_argument("--prefer", action="append", default=[], metavar="FOLDER",
                   help="keep the copy under FOLDER first (repeatable, in order of preference)")
    p.add_argument("--between", nargs=2, default=None, metavar=("FOLDER_A", "FOLDER_B"),
                   help="only pairs with one image under each folder, with the nearest match under B of each image "
                        "under A (files under B are kept first)")
    p.add_argument("--metric", default=None, help="which metric's vectors, when the index holds several")
    p.add_argument("--out", default=None, metavar="FILE",
                   help=f"write the report to FILE ({', '.join(REPORT_WRITERS)}; .html is one self-contained page)")
    p.add_argument("--move-to", default=None, metavar="QUARANTINE",
                   help="move the duplicates (not the keepers) there and write a manifest")
    p.add_argument("--undo", default=None, metavar="MANIFEST", help="put back the files a --move-to moved")
    p.add_argument("--ignore-labels", action="store_true", help="report pairs as the metric sees them, ignoring "
                   "the stored labels")
    p.add_argument("--chain-limit", type=int, default=CHAIN_LIMIT, metavar="N",
                   help=f"warn when a components group holds more than N files (default {CHAIN_LIMIT})")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--nprobe", type=int, default=None,
                   help="on an inverted-file index: lists each list is compared with, itself included (default 2: "
                        "near copies share a list or sit in the next one; higher is slower and finds farther pairs)")
    p.set_defaults(func=run_dedup)

    p = subparsers.add_parser("label", help="record that two images are the same picture, or different ones",
                              epilog=_LABEL_EPILOG, formatter_class=fmt)
    _add_catalog_flags(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--different", nargs=2, metavar=("A", "B"), help="A and B are different pictures")
    g.add_argument("--same", nargs=2, metavar=("A", "B"), help="A and B are the same picture (duplicates)")
    g.add_argument("--from", dest="from_csv", metavar="CSV",
                   help="verdicts from a CSV with the header a,b,same (paths relative to the CSV or an indexed root)")
    g.add_argument("--list", action="store_true", help="print the stored labels")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_label)


def _short(path: str) -> str:
    from lookalike.data.image_folder import display_path

    return display_path(path)


def run_dedup(args: argparse.Namespace) -> int:
    if args.index and not args.undo:
        Loading(f"index {args.index} and its vectors").done()
    from lookalike.indexer import find_duplicates, move_duplicates, undo_moves, write_report

    if args.undo:
        n = undo_moves(args.undo, index_dir=args.index, db_url=args.db)
        print(json.dumps({"restored": n}) if args.json else f"restored {n} files")
        return 0
    if not args.index:
        raise CliError("dedup needs --index DIR (or --undo MANIFEST)")
    if args.chain_limit < 1:
        raise CliError(f"--chain-limit must be >= 1, got {args.chain_limit}")
    report = find_duplicates(args.index, threshold=args.threshold, group=args.group, keep=args.keep,
                             metric=args.metric, db_url=args.db, nprobe=args.nprobe, prefer=args.prefer,
                             between=tuple(args.between) if args.between else None,
                             use_labels=not args.ignore_labels, chain_limit=args.chain_limit)
    if args.out:
        write_report(report, args.out)
    moved = move_duplicates(report, args.move_to, db_url=args.db) if args.move_to else None
    if args.json:
        d = report.as_dict()
        d["move"] = moved.as_dict() if moved else None
        d["manifest"] = moved.manifest if moved else None
        print(json.dumps(d, indent=1))
        return 0
    print_report(report, shown=50, out=args.out)
    for w in report.warnings:
        print(f"note: {w}", file=sys.stderr)
    if moved is not None:
        if moved.manifest is None:
            why = (f"the {moved.gone} duplicates are gone from their folders already" if moved.gone else
                   "no duplicates left (moved files are left out until --undo)")
            print(f"nothing to move: {why}; no manifest written", file=sys.stderr)
        else:
            gone = f" ({moved.gone} already gone)" if moved.gone else ""
            print(f"moved {moved.moved} files{gone}; undo with: lookalike dedup --undo {moved.manifest}",
                  file=sys.stderr)
    return 0


def print_report(report, *, shown: int, out: str | None) -> None:  # report: DedupReport
    """The text form of a report: settings, counts per tier, matches across collections, the first groups."""
    tiers = report.tiers
    counts = ", ".join(f"{t} {n}" for t, n in report.tier_counts().items())
    near = f"near <= {tiers['near']:.4f}" if tiers.get("near") is not None else "no near boundary"
    print(f"threshold {report.threshold:.4f} ({report.threshold_source}); tiers: {near} ({tiers.get('source')})")
    print(f"{len(report.pairs)} pairs ({counts}) among {report.images} images: {len(report.groups)} groups, "
          f"{report.n_duplicates} duplicates; the largest group holds {report.largest_group} files")
    if report.hidden:
        print(f"{len(report.hidden)} pairs left out: labelled different")
    if report.quarantined:
        print(f"{report.quarantined} images in quarantine left out (undo the move to bring them back)")
    pr = report.probe
    if pr.get("method") == "ivf-lists":
        print(f"probed: {pr['lists']} inverted lists, each against {pr['neighbour_lists']} neighbour lists "
              f"({pr['share_of_exact']:.3%} of the exact pair comparisons)")
    if report.between is not None:
        a, b = report.between
        na, nb = report.images_between
        print(f"{len(report.matches)} of {na} images under {_short(a)} have a match among the {nb} under {_short(b)}:")
        for p in report.matches[:shown]:
            print(f"   {p.distance:.4f}  {p.tier:<7}  {_short(p.a)}  ->  {_short(p.b)}")
    label_of = {frozenset((p.a, p.b)): p.label for p in report.pairs if p.label}
    for g in report.groups[:shown]:
        print(f"keep {_short(g.keeper.path)}")
        for d in g.duplicates:
            lab = label_of.get(frozenset((g.keeper.path, d.path)))
            print(f"   {d.distance:.4f}  {d.tier:<7}  {_short(d.path)}" + (f"  [labelled {lab}]" if lab else ""))
    if len(report.groups) > shown:
        print(f"... {len(report.groups) - shown} more groups" + ("" if out else " (use --out FILE for all)"))
    if out:
        print(f"report written to {out}")


def run_label(args: argparse.Namespace) -> int:
    from lookalike.indexer import add_labels, list_labels, read_decisions_csv

    if args.list:
        labels = list_labels(args.index, db_url=args.db)
        if args.json:
            print(json.dumps([lb.as_dict() for lb in labels], indent=1))
            return 0
        for lb in labels:
            print(f"{'same' if lb.is_same else 'different':<9}  {_short(lb.path_a)}  {_short(lb.path_b)}  "
                  f"({lb.source}, {lb.updated})")
        print(f"{len(labels)} labels")
        return 0
    if args.from_csv:
        pairs, source = read_decisions_csv(args.from_csv), "csv"
    else:
        a, b = args.same or args.different
        pairs, source = [(a, b, 1.0 if args.same else 0.0)], "cli"
    summary = add_labels(args.index, pairs, db_url=args.db, source=source)
    if args.json:
        print(json.dumps(summary.as_dict(), indent=1))
        return 0
    print(f"labels: {summary.added} added, {summary.changed} changed, {summary.unchanged} unchanged")
    for p in summary.unindexed or ():
        print(f"note: {_short(p)} is not in the index; its label applies once it is indexed", file=sys.stderr)
    return 0
