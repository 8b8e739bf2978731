"""Profile one step of bench/scale.py with py-spy and say where its samples went.

    python bench/scale_profile.py import --data DATA --index IDX [--storage fp16] [--rate 50]
    python bench/scale_profile.py search --data DATA --index IDX --queries 30
    python bench/scale_profile.py summarize PROFILE.raw

The step runs exactly as bench/scale.py runs it (its ``_child`` entry), under ``py-spy record --format raw``
(``pip install py-spy``). The summary gives each sample to the first rule (from the top of the list) whose function
name appears in its stack, so nested parts are counted once, in the most specific bucket (samples of background
threads, such as the RSS sampler, are left out); and lists the deepest
lookalike (indexer) frames (function and line) with their share, to see which statement the time is in.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

# (bucket, function names): the first bucket whose name is in a sample's stack takes the sample
RULES: list[tuple[str, tuple[str, ...]]] = [
    ("derive: k-means training", ("train",)),
    ("derive: assignment to lists", ("_assign",)),
    ("derive: codes written to the lists file", ("_write_lists",)),
    ("derive: sample / sha256 / other", ("build_derived", "update_structure")),
    ("shard files: write + sha256 + fsync", ("_write_npy", "fsync_dir")),
    ("vector rows: tombstone look-ups", ("tombstone",)),
    ("vector rows: insert", ("record",)),
    ("image rows: look-up of known paths", ("_existing",)),
    ("image rows: Seen hashes", ("candidates", "_hash", "_confirmed")),
    ("row checks (check_rows)", ("check_rows",)),
    ("path split / keys", ("split_path", "_keys", "_text")),
    ("image rows: insert (land)", ("land", "_insert")),
    ("reading input (npy / parquet)", ("_read_clip_retrieval", "read_embeddings", "_read_npy")),
    ("search: catalog path look-up", ("find_row",)),
    ("search: stored query vector", ("vector_of", "query_vector")),
    ("search: exact scan blocks (upcast)", ("_blocks",)),
    ("search: top-k merge", ("merge_topk",)),
    ("search: scores", ("_scores", "scan_knn", "ResidentExact")),
    ("search: derived index", ("search",)),
    ("search: catalog rows of hits", ("rows",)),
    ("dedup: pairs", ("exact_pairs", "ivf_pairs", "find_pairs")),
    ("opening the index", ("open_index", "ImageIndex", "load_vectors")),
    ("imports / start-up", ("<module>", "_find_and_load")),
]
_FRAME = re.compile(r"^(.*) \((.*):(\d+)\)$")


def summarize(raw: Path, top: int = 25) -> None:
    buckets: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        if "Thread._bootstrap" in stack:  # background threads (the RSS sampler, tqdm's monitor): not the step's work
            continue
        frames = []
        for f in stack.split(";"):
            m = _FRAME.match(f.strip())
            frames.append((m.group(1), m.group(2), int(m.group(3))) if m else (f.strip(), "", 0))
        total += n
        names = {fn.rsplit(".", 1)[-1] for fn, _, _ in frames}  # "ShardWriter.record" -> "record"
        bucket = next((b for b, fns in RULES if names & set(fns)), "other")
        buckets[bucket] += n
        deep = next(((fn, file, ln) for fn, file, ln in reversed(frames)
                     if file.startswith("indexer/") or "/indexer/" in file), None)
        if deep is not None:
            leaves[f"{deep[0]} ({Path(deep[1]).name}:{deep[2]})"] += n
    print(f"{total} samples")
    for b, n in buckets.most_common():
        print(f"  {100 * n / total:5.1f}%  {b}")
    print("deepest lookalike frame:")
    for k, n in leaves.most_common(top):
        print(f"  {100 * n / total:5.1f}%  {k}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["import", "search", "dedup", "summarize"])
    ap.add_argument("raw", nargs="?", help="summarize: the raw profile")
    ap.add_argument("--data")
    ap.add_argument("--index")
    ap.add_argument("--storage", default="")
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--threshold", type=float, default=0.02)
    ap.add_argument("--rate", type=int, default=50, help="samples per second")
    ap.add_argument("--out", default=None, help="raw profile file (default: STEP.raw beside the index)")
    args = ap.parse_args()
    if args.step == "summarize":
        summarize(Path(args.raw))
        return
    import numpy as np

    scale = str(Path(__file__).with_name("scale.py"))
    if args.step == "import":
        payload = {"data": args.data, "idx": args.index, "storage": args.storage, "max_memory": "", "faiss": ""}
    elif args.step == "search":
        qrows = np.load(Path(args.data) / "truth.npz")["qrows"][:args.queries].tolist()
        payload = {"idx": args.index, "qrows": qrows, "k": 10}
    else:
        payload = {"idx": args.index, "threshold": args.threshold}
    out = Path(args.out or f"{args.index.rstrip('/')}-{args.step}.raw")
    cmd = ["py-spy", "record", "-r", str(args.rate), "-f", "raw", "-o", str(out), "--", sys.executable, scale,
           "_child", args.step, json.dumps(payload)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(run.stderr[-3000:])
    line = next((x for x in reversed(run.stdout.splitlines()) if x.startswith("RESULT ")), "RESULT {}")
    res = json.loads(line[7:])
    res.pop("found", None)
    res.pop("pairs", None)
    for key in ("lat", "lat_cpu", "find"):
        if key in res:
            res[key] = float(np.median(res[key]) * 1e3)
    if args.step == "import":  # bench/scale.py --reuse-index reports this import
        (Path(args.index) / "import.json").write_text(json.dumps(res))
    print(json.dumps(res, default=str)[:1500])
    summarize(out)


if __name__ == "__main__":
    main()
