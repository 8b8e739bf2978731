"""Test support for ``lookalike serve``: the real server in its own process group on a free port.

The server runs with ``LOOKALIKE_CPU_BF16=0`` unless the caller says otherwise, so the numbers it returns (upload
embeddings) are fp32 on every CPU, like the fp32 indexes the tests build.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import free_port

#: Environment of a served process: fp32 on every CPU (see the module docstring).
PINNED = {"LOOKALIKE_CPU_BF16": "0"}


@contextlib.contextmanager
def serve(index_dir: Path, log_path: Path, *extra: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """``lookalike serve --index DIR --port FREE`` in its own process group; yields its URL, stops it at the end,
    and fails the test if the server printed a traceback."""
    port = free_port()
    log = open(log_path, "w+b")  # noqa: SIM115 - closed below
    base_env = {k: v for k, v in os.environ.items() if k != "LOOKALIKE_SERVE_TOKEN"}
    proc = subprocess.Popen([sys.executable, "-m", "lookalike.app.cli", "serve", "--index", str(index_dir),
                             "--port", str(port), *extra], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**base_env, **PINNED, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"lookalike serve exited with {proc.returncode}:\n{log.read().decode(errors='replace')}")
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            pytest.fail("lookalike serve did not answer /health within 180 s")
        log.seek(0)
        assert f"lookalike serve: {url}" in log.read().decode(errors="replace")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        log.seek(0)
        text = log.read().decode(errors="replace")
        log.close()
        assert "Traceback" not in text, text[-3000:]
