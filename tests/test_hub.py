"""Weight resolution and downloads against a real HTTP server on 127.0.0.1 (no mocks, no outside network)."""

from __future__ import annotations

import argparse
import hashlib
import http.server
import io
import json
import random
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lookalike.app import cli_weights
from lookalike.common.errors import ChecksumError
from lookalike.metric import MetricCfg, WeightsNotFound, load_metric, register_metric
from lookalike.metric._cache import get_cache_path
from lookalike.metric._download import NETWORK_ERRORS, download_url
from lookalike.metric._hub import resolve_files
from lookalike.metric._pretrained import WeightFile
from lookalike.metric.weights import download_weights, verify_weights, weights_paths


def _bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FileServer:
    """Serves ``files`` (URL path → bytes) with Range support; records requests; can cut a reply short."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.sent: list[int] = []  # body bytes written per request
        self.cut_after: int | None = None  # one-shot: close the connection after this many body bytes
        self.ignore_range = False
        state = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence the test output
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                rng = self.headers.get("Range")
                state.requests.append((self.path, rng))
                data = state.files.get(self.path)
                if data is None:
                    state.sent.append(0)
                    self.send_error(404)
                    return
                start = 0
                if rng and not state.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        state.sent.append(0)
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if state.cut_after is not None:
                    body = body[: state.cut_after]
                    state.cut_after = None
                    self.close_connection = True
                self.wfile.write(body)
                self.wfile.flush()
                state.sent.append(len(body))

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server() -> Iterator[FileServer]:
    srv = FileServer()
    srv.thread.start()
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOKALIKE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LOOKALIKE_OFFLINE", "1")


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOOKALIKE_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------- download_url


def test_download_ok_with_sha256(server: FileServer, tmp_path: Path) -> None:
    data = _bytes(300_000, 0)
    server.files["/w.bin"] = data
    dst = tmp_path / "out" / "w.bin"
    got = download_url(server.url("/w.bin"), dst, sha256=_sha(data), size=len(data), progress=False)
    assert got == dst and dst.read_bytes() == data
    assert not (tmp_path / "out" / "w.bin.part").exists()
    assert server.requests == [("/w.bin", None)]


def test_resume_after_cut(server: FileServer, tmp_path: Path) -> None:
    data = _bytes(400_000, 1)
    server.files["/big.bin"] = data
    server.cut_after = 150_000
    dst = tmp_path / "big.bin"
    part = tmp_path / "big.bin.part"
    with pytest.raises(NETWORK_ERRORS):
        download_url(server.url("/big.bin"), dst, sha256=_sha(data), progress=False)
    assert not dst.exists()
    assert part.stat().st_size == 150_000  # what arrived is kept for the next try
    download_url(server.url("/big.bin"), dst, sha256=_sha(data), progress=False)
    assert dst.read_bytes() == data and not part.exists()
    assert server.requests == [("/big.bin", None), ("/big.bin", "bytes=150000-")]
    assert server.sent == [150_000, 250_000]  # no restart from zero


def test_sha256_mismatch_leaves_nothing(server: FileServer, tmp_path: Path) -> None:
    data = _bytes(50_000, 2)
    server.files["/w.bin"] = data
    dst = tmp_path / "w.bin"
    with pytest.raises(ChecksumError) as ei:
        download_url(server.url("/w.bin"), dst, sha256="0" * 64, progress=False)
    msg = str(ei.value)
    assert server.url("/w.bin") in msg and "0" * 64 in msg and _sha(data) in msg
    assert isinstance(ei.value, ValueError)
    assert not dst.exists() and not (tmp_path / "w.bin.part").exists()


def test_size_mismatch_rejected(server: FileServer, tmp_path: Path) -> None:
    server.files["/w.bin"] = _bytes(1000, 3)
    with pytest.raises(ChecksumError, match="size mismatch"):
        download_url(server.url("/w.bin"), tmp_path / "w.bin", size=999, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_server_ignoring_range_restarts(server: FileServer, tmp_path: Path) -> None:
    data = _bytes(120_000, 4)
    server.files["/w.bin"] = data
    server.ignore_range = True
    dst = tmp_path / "w.bin"
    (tmp_path / "w.bin.part").write_bytes(b"x" * 30_000)  # a stale partial the server will not continue
    download_url(server.url("/w.bin"), dst, sha256=_sha(data), progress=False)
    assert dst.read_bytes() == data
    assert server.requests == [("/w.bin", "bytes=30000-")] and server.sent == [len(data)]


def test_416_means_part_is_complete(server: FileServer, tmp_path: Path) -> None:
    data = _bytes(10_000, 5)
    server.files["/w.bin"] = data
    (tmp_path / "w.bin.part").write_bytes(data)
    download_url(server.url("/w.bin"), tmp_path / "w.bin", sha256=_sha(data), progress=False)
    assert (tmp_path / "w.bin").read_bytes() == data
    assert server.requests == [("/w.bin", "bytes=10000-")]


# ------------------------------------------------------------------------------------------------ resolve_files


def test_zip_members_one_download(server: FileServer, online: None) -> None:
    cfg_json, adapter, backbone = b'{"r": 16}', _bytes(20_000, 6), _bytes(30_000, 7)
    server.files["/rel/ckpt.zip"] = _zip({
        "demo_lora/adapter_config.json": cfg_json,
        "demo_lora/adapter_model.safetensors": adapter,
        "demo_backbone.pth": backbone,
        "unrelated.txt": b"not needed",
    })
    url = server.url("/rel/ckpt.zip")
    files = [
        WeightFile(path="demo_backbone.pth", archive_url=url, sha256=_sha(backbone), cache_subdir="t"),
        WeightFile(path="demo_lora/adapter_config.json", archive_url=url, cache_subdir="t"),
        WeightFile(path="lora/model.safetensors", archive_url=url, member="demo_lora/adapter_model.safetensors",
                   size=len(adapter), cache_subdir="t"),
    ]
    paths = resolve_files("demo", files)
    assert [p.read_bytes() for p in paths.values()] == [backbone, cfg_json, adapter]
    assert len(server.requests) == 1
    root = get_cache_path(files[0]).parent
    assert not (root / "unrelated.txt").exists()
    assert list((root / ".downloads").iterdir()) == []  # the zip is deleted
    assert not list(root.rglob("*.extracting"))


def test_zip_bad_member_checksum(server: FileServer) -> None:
    server.files["/c.zip"] = _zip({"a.bin": b"aaaa", "b.bin": b"bbbb"})
    url = server.url("/c.zip")
    files = [WeightFile(path="a.bin", archive_url=url, cache_subdir="t"),
             WeightFile(path="b.bin", archive_url=url, sha256="1" * 64, cache_subdir="t")]
    with pytest.raises(ChecksumError, match="member b.bin"):
        resolve_files("demo", files, download=True)
    root = get_cache_path(files[0]).parent
    assert not (root / "a.bin").exists() and not (root / "b.bin").exists()  # all or nothing
    assert list((root / ".downloads").iterdir()) == []


def test_zip_download_resumes_and_finds_members_under_a_folder(server: FileServer) -> None:
    payload = _bytes(200_000, 11)
    server.files["/r.zip"] = _zip({"models/w.bin": payload})  # zip with a leading folder
    server.cut_after = 60_000
    wf = WeightFile(path="w.bin", archive_url=server.url("/r.zip"), sha256=_sha(payload), cache_subdir="t")
    with pytest.raises(WeightsNotFound, match="download failed"):
        resolve_files("demo", [wf], download=True)
    assert resolve_files("demo", [wf], download=True)["w.bin"].read_bytes() == payload
    assert [r for _, r in server.requests] == [None, "bytes=60000-"]


def test_cache_hit_makes_no_request(server: FileServer, online: None) -> None:
    data = _bytes(5000, 8)
    server.files["/w.bin"] = data
    wf = WeightFile(path="sub/w.bin", url=server.url("/w.bin"), sha256=_sha(data), cache_subdir="t")
    first = resolve_files("demo", [wf])
    assert len(server.requests) == 1
    again = resolve_files("demo", [wf])
    assert again == first and len(server.requests) == 1


def test_explicit_folder_wins(server: FileServer, tmp_path: Path, online: None) -> None:
    wf = WeightFile(path="sub/w.bin", url=server.url("/w.bin"), cache_subdir="t")
    cached = get_cache_path(wf)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"cache")
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "sub" / "w.bin").write_bytes(b"explicit")
    assert resolve_files("demo", [wf], mine)["sub/w.bin"].read_bytes() == b"explicit"
    assert resolve_files("demo", [wf])["sub/w.bin"] == cached
    assert server.requests == []
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_files("demo", [wf], tmp_path / "nope")


@pytest.mark.parametrize("var", ["LOOKALIKE_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_raises_with_names_urls_and_command(server: FileServer, online: None,
                                                    monkeypatch: pytest.MonkeyPatch, var: str) -> None:
    monkeypatch.setenv(var, "1")
    direct = WeightFile(path="w.bin", url=server.url("/w.bin"), cache_subdir="t")
    zipped = WeightFile(path="lora/adapter_config.json", archive_url=server.url("/x.zip"), cache_subdir="t")
    with pytest.raises(WeightsNotFound) as ei:
        resolve_files("demo_metric", [direct, zipped])
    msg = str(ei.value)
    for s in ("w.bin", server.url("/w.bin"), "lora/adapter_config.json", server.url("/x.zip"),
              "lookalike weights download demo_metric", str(get_cache_path(direct).parent), var):
        assert s in msg
    assert isinstance(ei.value, FileNotFoundError) and ei.value.missing == [direct, zipped]
    assert server.requests == []
    with pytest.raises(WeightsNotFound, match="download=False"):
        resolve_files("demo_metric", [direct], download=False)


def test_connection_refused(online: None) -> None:
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    wf = WeightFile(path="w.bin", url=f"http://127.0.0.1:{port}/w.bin", cache_subdir="t")
    with pytest.raises(WeightsNotFound, match="download failed") as ei:
        resolve_files("demo", [wf])
    assert wf.url in str(ei.value) and "lookalike weights download demo" in str(ei.value)


def test_http_404_is_weights_not_found(server: FileServer) -> None:
    wf = WeightFile(path="w.bin", url=server.url("/missing.bin"), cache_subdir="t")
    with pytest.raises(WeightsNotFound, match="HTTP 404"):
        resolve_files("demo", [wf], download=True)


# ----------------------------------------------------------------------------------- registered metric and CLI


@pytest.fixture
def hub_metric(server: FileServer, registry) -> Iterator[tuple[str, dict[str, bytes]]]:
    direct, a, b = _bytes(7000, 9), _bytes(3000, 10), b'{"peft_type": "LORA"}'
    server.files["/direct.bin"] = direct
    server.files["/pack.zip"] = _zip({"pack/a.bin": a, "pack/b.json": b})
    name = "test_hub_metric"
    register_metric(MetricCfg(
        name=name, builder="perceptual", family="test", backbones=("test_vit_tiny",),
        extra_files=(
            WeightFile(path="direct.bin", url=server.url("/direct.bin"), sha256=_sha(direct), size=len(direct),
                       cache_subdir="t"),
            WeightFile(path="pack/a.bin", archive_url=server.url("/pack.zip"), sha256=_sha(a), cache_subdir="t"),
            WeightFile(path="pack/b.json", archive_url=server.url("/pack.zip"), cache_subdir="t"),
        ),
    ), overwrite=True)
    yield name, {"direct.bin": direct, "pack/a.bin": a, "pack/b.json": b}  # the registry fixture removes it


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lookalike")
    cli_weights.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_registered_sibling_members_come_along(server: FileServer, hub_metric: tuple[str, dict[str, bytes]]) -> None:
    name, data = hub_metric
    only_a = WeightFile(path="pack/a.bin", archive_url=server.url("/pack.zip"), cache_subdir="t")
    resolve_files("other", [only_a], download=True)
    b_path = get_cache_path(WeightFile(path="pack/b.json", cache_subdir="t"))
    assert b_path.read_bytes() == data["pack/b.json"]  # same zip, needed by a registered metric: kept


def test_load_metric_offline_names_the_command(hub_metric: tuple[str, dict[str, bytes]]) -> None:
    name, _ = hub_metric
    with pytest.raises(WeightsNotFound, match=f"lookalike weights download {name}"):
        load_metric(name, device="cpu")


def test_library_functions(server: FileServer, hub_metric: tuple[str, dict[str, bytes]]) -> None:
    name, data = hub_metric
    rows = weights_paths(name)
    assert [r["path"] for r in rows] == list(data) and not any(r["present"] for r in rows)
    assert rows[0]["source"] == server.url("/direct.bin") and rows[1]["source"] == server.url("/pack.zip")
    assert rows[1]["member"] == "pack/a.bin"
    assert [r["ok"] for r in verify_weights(name)] == [False] * 3
    paths = download_weights(name, progress=False)  # explicit: downloads although LOOKALIKE_OFFLINE=1
    assert {k: p.read_bytes() for k, p in paths.items()} == data
    assert len(server.requests) == 2  # one file + one zip
    status = verify_weights(name)
    assert [(r["sha256"], r["ok"]) for r in status] == [("ok", True), ("ok", True), ("unknown", True)]
    assert status[0]["size_status"] == "ok"
    assert all(r["found_in"] == "cache" for r in weights_paths(name))


def test_cli_path_download_verify(server: FileServer, hub_metric: tuple[str, dict[str, bytes]], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    name, data = hub_metric
    assert _cli(["weights", "path", name, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metric"] == name and [f["present"] for f in out["files"]] == [False] * 3

    assert _cli(["weights", "verify", name]) == 1
    assert "MISSING" in capsys.readouterr().out

    assert _cli(["weights", "download", name, "--json"]) == 0
    files = json.loads(capsys.readouterr().out)["files"]
    assert {k: Path(v).read_bytes() for k, v in files.items()} == data

    assert _cli(["weights", "verify", name, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True

    assert _cli(["weights", "download", name]) == 0  # all cached: no new request
    assert "3 weight file(s)" in capsys.readouterr().out and len(server.requests) == 2

    Path(files["direct.bin"]).write_bytes(b"corrupt")
    assert _cli(["weights", "verify", name]) == 1
    out = capsys.readouterr().out
    assert "BAD" in out and "mismatch" in out

    mine = tmp_path / "mine"
    (mine / "pack").mkdir(parents=True)
    (mine / "pack" / "a.bin").write_bytes(data["pack/a.bin"])
    assert _cli(["weights", "path", name, "--weights", str(mine)]) == 0
    assert "found in weights" in capsys.readouterr().out

    assert _cli(["weights"]) == 2
    assert _cli(["weights", "path", "test_vit_tiny"]) == 0
    assert "needs no weight files" in capsys.readouterr().out
