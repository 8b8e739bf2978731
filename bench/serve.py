"""Speed of ``lookalike serve``: requests/s and p50/p95 latency of search by upload and by id, at 1 and 8 clients,
against the same searches through the Python API in the same run.

    python bench/serve.py                                  # fixture photos, efficientnet_lite0, 48 requests a row
    python bench/serve.py --photos ../shared/data/photos --requests 96
    python bench/serve.py --index my.idx                   # an existing index (its own metric)

Service: the real server (``python -m lookalike.app.cli serve``) in a subprocess on a free port; each client is a
thread with its own keep-alive ``httpx.Client``. Upload = a multipart POST of an edited JPEG of an indexed photo;
id = a JSON POST ``{"id": ...}``. API: in this process, ``decode_upload(bytes)`` + ``search(index, image)`` for an
upload (the service decodes the same bytes) and ``search(index, catalog path)`` for an id, on the same number of
threads. Overhead = service p50 - API p50 (HTTP, multipart parsing, JSON, the catalog look-ups for width/height).
CPU ms/req = CPU time of the server process (from /proc) or of this process (API rows) per request: on a machine
shared with other work, latency also counts the waits for a core at every thread hand-off, CPU time does not.
API and service batches alternate (``--rounds``), so a machine busy with other work slows both alike; the server
is idle while the API runs and vice versa.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image, ImageEnhance

from lookalike.app.views import decode_upload
from lookalike.data.image_folder import scan_images
from lookalike.data.images import open_image
from lookalike.indexer import build_index, open_index, search

FIXTURE_PHOTOS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "photos"


def edited_jpeg(path: str) -> bytes:
    img = open_image(path)
    w, h = img.size
    img = ImageEnhance.Brightness(img.crop((w // 12, h // 12, w - w // 10, h - h // 10))).enhance(1.15)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index_dir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lookalike.app.cli", "serve", "--index", str(index_dir),
                             "--port", str(port)], stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    raise SystemExit("server did not start within 180 s")


def process_cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system, all threads) used so far by process ``pid`` (default: this one)."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(call: Callable[[int, int], None], clients: int, requests: int,
             cpu: Callable[[], float] = process_cpu_s) -> dict:
    """``requests`` calls spread over ``clients`` threads; ``call(client, n)`` does request n. Latencies in ms."""
    lat: list[float] = []
    lock = threading.Lock()
    per = [requests // clients + (1 if c < requests % clients else 0) for c in range(clients)]
    start = threading.Barrier(clients + 1)

    def worker(c: int) -> None:
        start.wait()
        mine = []
        for n in range(per[c]):
            t0 = time.perf_counter()
            call(c, c * 1000 + n)
            mine.append((time.perf_counter() - t0) * 1e3)
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    c0 = cpu()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"n": len(lat), "wall": wall, "lat": lat, "cpu": cpu() - c0}


def merge(parts: list[dict]) -> dict[str, float]:
    """Pool the latencies and wall times of several ``run_load`` rounds: req/s, p50 and p95 in ms."""
    lat = np.concatenate([np.asarray(p["lat"]) for p in parts])
    wall = sum(p["wall"] for p in parts)
    cpu_ms = 1e3 * sum(p["cpu"] for p in parts) / len(lat)
    return {"rps": len(lat) / wall, "p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
            "cpu_ms": cpu_ms}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, help="an existing index (default: build one from --photos)")
    ap.add_argument("--photos", type=Path, default=FIXTURE_PHOTOS, help="folder to index when --index is not given")
    ap.add_argument("--metric", default="efficientnet_lite0", help="metric to index --photos with")
    ap.add_argument("--requests", type=int, default=48, help="requests per row")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--rounds", type=int, default=4, help="API and service batches alternate this many times")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of the server and of the API side (default 1: stable on a shared machine)")
    ap.add_argument("-k", type=int, default=10)
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the server inherits it
    torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        index_dir = args.index
        if index_dir is None:
            index_dir = work / "index"
            s = build_index(args.photos, index_dir, metric=args.metric, workers=0, progress=False)
            print(f"indexed {s.total_vectors} images of {args.photos} with {args.metric}")
        index = open_index(index_dir)
        rows = index.rows(index.vectors.ids()[:64].tolist())
        ids = sorted(rows)
        paths = [rows[i].path for i in ids]
        uploads = [edited_jpeg(p) for p in paths[:16]]
        _ = index.metric  # load the model before timing
        print(f"index {index_dir}: {index.vectors.ntotal} vectors, {index.build.metric}; k = {args.k}; "
              f"{args.requests} requests a row; {os.cpu_count()} CPUs; {args.threads} torch thread(s) each side")

        def api_upload(_c: int, n: int) -> None:
            img = decode_upload(uploads[n % len(uploads)], "q.jpg", max_bytes=1 << 26)
            search(index, img, k=args.k)

        def api_id(_c: int, n: int) -> None:
            i = ids[n % len(ids)]
            search(index, index.rows([i])[i].path, k=args.k)

        proc, url = start_server(index_dir, work / "serve.log")
        results: dict[tuple[str, str, int], dict[str, float]] = {}
        try:
            for clients in args.clients:
                sessions = [httpx.Client(base_url=url, timeout=300) for _ in range(clients)]

                def svc_upload(c: int, n: int, sessions: list[httpx.Client] = sessions) -> None:
                    r = sessions[c].post("/search", files={"image": ("q.jpg", uploads[n % len(uploads)],
                                                                     "image/jpeg")}, data={"k": str(args.k)})
                    r.raise_for_status()

                def svc_id(c: int, n: int, sessions: list[httpx.Client] = sessions) -> None:
                    r = sessions[c].post("/search", json={"id": ids[n % len(ids)], "k": args.k})
                    r.raise_for_status()

                for mode, api, svc in (("upload", api_upload, svc_upload), ("id", api_id, svc_id)):
                    api(0, 0)
                    svc(0, 0)
                    results[("api", mode, clients)] = {}
                    results[("service", mode, clients)] = {}
                    lat: dict[str, list[dict[str, float]]] = {"api": [], "service": []}
                    for _ in range(args.rounds):  # interleaved: a busy machine slows both sides alike
                        lat["api"].append(run_load(api, clients, args.requests // args.rounds))
                        lat["service"].append(run_load(svc, clients, args.requests // args.rounds,
                                                       cpu=lambda: process_cpu_s(proc.pid)))
                    for side, parts in lat.items():
                        results[(side, mode, clients)] = merge(parts)
                for s in sessions:
                    s.close()
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
            index.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print("| search by | clients | service req/s | service p50 ms | service p95 ms | API req/s | API p50 ms | "
          "API p95 ms | overhead p50 ms | service CPU ms/req | API CPU ms/req | CPU overhead ms/req |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode in ("upload", "id"):
        for clients in args.clients:
            s, a = results[("service", mode, clients)], results[("api", mode, clients)]
            print(f"| {mode} | {clients} | {s['rps']:.1f} | {s['p50']:.1f} | {s['p95']:.1f} | {a['rps']:.1f} | "
                  f"{a['p50']:.1f} | {a['p95']:.1f} | {s['p50'] - a['p50']:+.1f} | {s['cpu_ms']:.1f} | "
                  f"{a['cpu_ms']:.1f} | {s['cpu_ms'] - a['cpu_ms']:+.1f} |")
    n_files = len(scan_images(args.photos).files) if args.index is None else "-"
    print(f"\n(files under --photos: {n_files}; overhead = service p50 - API p50, goal < 20 ms at 1 client)")


if __name__ == "__main__":
    Image.init()
    main()
