"""Scale: import -> search -> dedup of synthetic 768-d embeddings in clip-retrieval's layout, size after size.

    python bench/scale.py --sizes 100000,200000                      # minutes on 2 cores
    python bench/scale.py --sizes 1000000,10000000 --workdir /tmp/scale --keep-data
    python bench/scale.py --sizes 200000 --storage fp16 --json out.jsonl

Data (``bench/scale_data.py``): a clustered mixture of unit vectors with 2 % planted near copies (1 - cosine
~0.005), written streaming as fp16 ``img_emb/img_emb_N.npy`` + ``metadata/metadata_N.parquet`` (``image_path``),
the layout ``clip-retrieval inference`` writes; 10M x 768 is 15 GB on disk and never in RAM. The exact top-10 of
``--queries`` dataset rows is computed by a blocked product over the files before anything is timed.

Each step runs in a fresh Python process and uses public names only (``lookalike.indexer.import_embeddings``,
``open_index``, ``search``, ``find_duplicates``):

* import: ``import_embeddings(..., check_files=False)``; its summary splits the time into import and the derived
  search structure (``seconds["derive"]``);
* search: ``open_index``, one cold query, then each query row by its indexed path (``search(ix, path, k=10)``),
  one at a time; recall@10 against the exact top-10;
* dedup: ``find_duplicates(threshold=--threshold)``; planted-pair recall and precision (a found pair that is not
  planted counts against precision); with ``--star``, again with tier boundaries stored (``set_tiers``) and
  ``group="star"``, and its time against the first run's.

Memory: a thread in each step's process samples ``/proc/self/status`` every 20 ms (RSS, and its anonymous and
file-backed parts); "peak" is the highest RSS above the process's RSS after its imports, per phase (import and
derive are told apart by the summary's timings), and VmHWM (the kernel's high-water mark) is checked against it.
File-backed pages are memory-mapped files the process touched (shards, input, inverted lists): the kernel can drop
them, anonymous pages it cannot; both are shown. CPU seconds (user + system) of each step are printed beside wall
seconds: other jobs on a shared machine stretch the wall time more than the CPU time. Every timing is an upper
bound on a busy machine; compare ratios measured in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import scale_data  # noqa: E402

# ------------------------------------------------------------------------------------------ child processes


class Sampler:
    """Samples this process's RSS (total, anonymous, file-backed; MB) every ``every`` seconds in a thread."""

    FIELDS = ("VmRSS", "RssAnon", "RssFile", "VmHWM")

    def __init__(self, every: float = 0.02):
        import threading

        self.t0 = time.perf_counter()
        self.samples: list[tuple[float, float, float, float]] = []
        self.base = self.read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    @staticmethod
    def read() -> dict[str, float]:
        out = {}
        with open("/proc/self/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in Sampler.FIELDS:
                    out[key] = int(line.split()[1]) / 1024
        return out

    def _run(self, every: float) -> None:
        while not self._stop.is_set():
            r = self.read()
            self.samples.append((time.perf_counter() - self.t0, r["VmRSS"], r["RssAnon"], r["RssFile"]))
            time.sleep(every)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        r = self.read()
        self.samples.append((time.perf_counter() - self.t0, r["VmRSS"], r["RssAnon"], r["RssFile"]))
        return {"base_mb": self.base["VmRSS"], "base_anon_mb": self.base["RssAnon"], "hwm_mb": r["VmHWM"]}

    def peak(self, start: float = 0.0, end: float = float("inf")) -> dict[str, float]:
        """Highest RSS / anon / file (MB above the base) between two times (seconds since start)."""
        s = [x for x in self.samples if start <= x[0] <= end] or self.samples[-1:]
        return {"rss_mb": max(x[1] for x in s) - self.base["VmRSS"],
                "anon_mb": max(x[2] for x in s) - self.base["RssAnon"],
                "file_mb": max(x[3] for x in s) - self.base["RssFile"]}


def _cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child_import(data: str, idx: str, storage: str, max_memory: str, faiss: str) -> dict:
    from lookalike.indexer import import_embeddings

    sm = Sampler()
    c0, t0 = _cpu(), time.perf_counter()
    s = import_embeddings(data, idx, metric="synthetic", root=data, check_files=False, storage=storage or None,
                          max_memory=max_memory or None, faiss=faiss or None)
    took, cpu = time.perf_counter() - t0, _cpu() - c0
    end = sm.stop()
    derive = float(s.seconds["derive"])
    t_split = (t0 - sm.t0) + took - derive
    return {"seconds": took, "cpu_s": cpu, "import_s": took - derive, "derive_s": derive, "imported": s.imported,
            "structure": s.structure, "parts": {k: round(float(v), 2) for k, v in s.seconds.items()},
            "peak_import": sm.peak(0.0, t_split), "peak_derive": sm.peak(t_split), **end}


def child_search(idx: str, qrows: list[int], k: int) -> dict:
    from lookalike.indexer import open_index, search

    sm = Sampler()
    c0, t = _cpu(), time.perf_counter()
    ix = open_index(idx)
    open_s = time.perf_counter() - t
    t = time.perf_counter()
    search(ix, f"{qrows[0]:09d}.jpg", k=k)
    cold_s = time.perf_counter() - t
    lat, lat_cpu, find, found = [], [], [], []
    for r in qrows:
        rel = f"{r:09d}.jpg"
        t = time.perf_counter()
        ix.find_image(rel)
        t1, c1 = time.perf_counter(), time.process_time()
        hits = search(ix, rel, k=k)
        t2, c2 = time.perf_counter(), time.process_time()
        find.append(t1 - t)
        lat.append(t2 - t1)
        lat_cpu.append(c2 - c1)
        found.append([int(h.relpath[:-4]) for h in hits])
    cpu = _cpu() - c0
    ix.close()
    end = sm.stop()
    return {"open_s": open_s, "cold_s": cold_s, "lat": lat, "lat_cpu": lat_cpu, "find": find, "found": found,
            "cpu_s": cpu,
            "peak": sm.peak(), **end}


def child_dedup(idx: str, threshold: float, group: str = "components") -> dict:
    from lookalike.indexer import find_duplicates

    sm = Sampler()
    c0, t = _cpu(), time.perf_counter()
    r = find_duplicates(idx, threshold=threshold, group=group, keep="first")
    took, cpu = time.perf_counter() - t, _cpu() - c0
    end = sm.stop()
    pairs = [(int(Path(p.a).name[:-4]), int(Path(p.b).name[:-4])) for p in r.pairs]
    return {"seconds": took, "cpu_s": cpu, "pairs": pairs, "probe": dict(r.probe), "peak": sm.peak(),
            "tiers": r.tier_counts(), "groups": len(r.groups), **end}


def child_tiers(idx: str, near: float) -> dict:
    from lookalike.indexer import set_tiers

    set_tiers(idx, near, source="bench/scale.py")
    return {}


def _child_main(argv: list[str]) -> None:
    stage, payload = argv[0], json.loads(argv[1])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    fn = {"import": child_import, "search": child_search, "dedup": child_dedup, "tiers": child_tiers}[stage]
    print("RESULT " + json.dumps(fn(**payload)), flush=True)


def run_child(stage: str, **payload: object) -> dict:
    out = subprocess.run([sys.executable, __file__, "_child", stage, json.dumps(payload)], capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise SystemExit(f"bench step {stage} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    line = next(x for x in reversed(out.stdout.splitlines()) if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


# ------------------------------------------------------------------------------------------------- driver


def disk_mb(folder: Path) -> float:
    """Allocated size of a folder (st_blocks), MB."""
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file()) / 2**20


def run_size(n: int, args: argparse.Namespace, work: Path) -> dict:
    tag = f"n{n}-d{args.dim}"
    data, idx = work / f"data-{tag}", work / f"idx-{tag}-{args.storage or 'fp32'}"
    t = time.perf_counter()
    truth = scale_data.make(data, n, args.dim, queries=args.queries)
    gen_s = time.perf_counter() - t
    res: dict = {"n": n, "dim": args.dim, "storage": args.storage or "fp32", "max_memory": args.max_memory,
                 "faiss": args.faiss, "generate_s": round(gen_s, 1), "data_mb": round(int(truth["bytes"]) / 2**20)}
    done = idx / "import.json"
    if args.reuse_index and done.is_file():  # an import measured before (e.g. under bench/scale_profile.py)
        res["import"] = json.loads(done.read_text())
    else:
        shutil.rmtree(idx, ignore_errors=True)
        res["import"] = run_child("import", data=str(data), idx=str(idx), storage=args.storage,
                                  max_memory=args.max_memory, faiss=args.faiss)
        done.write_text(json.dumps(res["import"]))
    res["disk_mb"] = round(disk_mb(idx))
    if not args.skip_search:
        s = run_child("search", idx=str(idx), qrows=truth["qrows"].tolist(), k=10)
        gt = truth["gt"]
        s["recall"] = float(np.mean([len(set(f) & set(g.tolist())) / 10 for f, g in zip(s["found"], gt,
                                                                                         strict=True)]))
        lat = np.asarray(s.pop("lat")) * 1e3
        find = np.asarray(s.pop("find")) * 1e3
        lat_cpu = np.asarray(s.pop("lat_cpu")) * 1e3
        s.pop("found")
        s.update(p50_ms=float(np.percentile(lat, 50)), p95_ms=float(np.percentile(lat, 95)),
                 find_p50_ms=float(np.percentile(find, 50)), cpu_p50_ms=float(np.percentile(lat_cpu, 50)))
        res["search"] = s
    if not args.skip_dedup:
        d = run_child("dedup", idx=str(idx), threshold=args.threshold)
        found = {tuple(sorted(p)) for p in d.pop("pairs")}
        planted = {tuple(p) for p in truth["planted"].tolist()}
        d.update(found=len(found), planted=len(planted), recall=len(found & planted) / max(1, len(planted)),
                 precision=len(found & planted) / max(1, len(found)))
        res["dedup"] = d
        if args.star:  # issue 17's work on this path: tier boundaries stored, star groups, against components
            run_child("tiers", idx=str(idx), near=args.threshold / 2)
            st = run_child("dedup", idx=str(idx), threshold=args.threshold, group="star")
            found_s = {tuple(sorted(p)) for p in st.pop("pairs")}
            st.update(found=len(found_s), recall=len(found_s & planted) / max(1, len(planted)),
                      precision=len(found_s & planted) / max(1, len(found_s)),
                      vs_components=st["seconds"] / max(d["seconds"], 1e-9),
                      cpu_vs_components=st["cpu_s"] / max(d["cpu_s"], 1e-9))
            res["dedup_star"] = st
    if not args.keep_index:
        shutil.rmtree(idx, ignore_errors=True)
    if not args.keep_data:
        shutil.rmtree(data, ignore_errors=True)
    return res


def print_row(r: dict) -> None:
    im, s, d = r["import"], r.get("search", {}), r.get("dedup", {})
    nan = float("nan")
    peak_i = max(im["peak_import"]["rss_mb"], 0)
    peak_d = max(im["peak_derive"]["rss_mb"], 0)
    print(f"{r['n']:>10,} {r['storage']:>5} {im['import_s']:>8.1f} {im['imported'] / max(im['import_s'], 1e-9):>9,.0f} "
          f"{peak_i:>7.0f} {im['derive_s']:>7.1f} {peak_d:>7.0f} {im['structure'][:16]:>16} {r['disk_mb']:>8,} "
          f"{s.get('p50_ms', nan):>7.1f} {s.get('p95_ms', nan):>7.1f} {s.get('recall', nan):>6.3f} "
          f"{s.get('peak', {}).get('rss_mb', nan):>7.0f} {d.get('seconds', nan):>8.1f} "
          f"{d.get('peak', {}).get('rss_mb', nan):>7.0f} {d.get('recall', nan):>6.3f} {d.get('precision', nan):>6.3f}",
          flush=True)
    detail = {"import": {k: im[k] for k in ("cpu_s", "parts", "peak_import", "peak_derive", "hwm_mb", "base_mb")},
              "search": {k: s[k] for k in ("open_s", "cold_s", "find_p50_ms", "cpu_p50_ms", "cpu_s", "peak", "hwm_mb")
                         if k in s},
              "dedup": {k: d[k] for k in ("cpu_s", "peak", "hwm_mb", "found", "planted", "probe") if k in d},
              "dedup_star": {k: r["dedup_star"][k] for k in ("seconds", "cpu_s", "vs_components", "cpu_vs_components",
                                                             "recall", "precision", "tiers", "peak")
                             } if "dedup_star" in r else None,
              "generate_s": r["generate_s"], "data_mb": r["data_mb"]}
    print(f"{'':>10} {json.dumps(detail, default=lambda x: round(x, 2) if isinstance(x, float) else x)}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000", help="comma-separated vector counts (default 100000)")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--storage", default="", choices=["", "fp32", "fp16"], help="shard storage (default: fp32)")
    ap.add_argument("--max-memory", default="", help="memory budget of the search structure (e.g. 4G)")
    ap.add_argument("--faiss", default="", help="faiss factory string of the build (default: auto)")
    ap.add_argument("--threshold", type=float, default=0.02, help="dedup distance threshold (default 0.02)")
    ap.add_argument("--queries", type=int, default=200, help="query rows (default 200)")
    ap.add_argument("--workdir", default=None, help="where data and indexes go (default: a temporary folder)")
    ap.add_argument("--keep-data", action="store_true", help="keep the generated embeddings (reused next run)")
    ap.add_argument("--keep-index", action="store_true")
    ap.add_argument("--reuse-index", action="store_true", help="keep an index whose import.json is there (its "
                    "import figures are reported again)")
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--skip-dedup", action="store_true")
    ap.add_argument("--star", action="store_true", help="also run dedup with tier boundaries stored and star "
                    "groups, and compare its time with the components run")
    ap.add_argument("--json", default=None, help="append each size's full result as a JSON line to this file")
    args = ap.parse_args()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="lookalike-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{'n':>10} {'store':>5} {'import s':>8} {'vec/s':>9} {'peak MB':>7} {'derive':>7} {'peak MB':>7} "
          f"{'structure':>16} {'disk MB':>8} {'p50 ms':>7} {'p95 ms':>7} {'rec@10':>6} {'peak MB':>7} {'dedup s':>8} "
          f"{'peak MB':>7} {'recall':>6} {'prec':>6}", flush=True)
    try:
        for n in [int(s) for s in args.sizes.split(",")]:
            r = run_size(n, args, work)
            print_row(r)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(r) + "\n")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print("import s / vec/s: import_embeddings without the derived structure; derive: the derived structure's build; "
          "peak MB: the step's highest RSS above its RSS after imports (sampled every 20 ms; anon / file parts in the "
          "detail line); search: one query at a time by indexed path, k=10; every timing is an upper bound on a "
          "shared machine")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        _child_main(sys.argv[2:])
    else:
        main()
