"""Schemathesis, the service's real outside client: requests generated from ``lookalike serve``'s own OpenAPI.

A real server (started here on a free port, over an efficientnet_lite0 index of a few real photos, one of them with a
near-duplicate and one unreadable file) is driven by the ``schemathesis run`` command line, with and without a bearer
token. The checks: no 5xx (``not_a_server_error``), every status and content type documented, every body matching
its schema, and schema-violating requests refused. The run is bounded (``-n`` examples per operation, a fixed seed)
to about a minute; ``SCHEMATHESIS_EXAMPLES`` raises it for a deeper local run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import ImageEnhance
from support import run_service as serve

from lookalike.data.images import open_image

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("schemathesis", reason="schemathesis (test extra) not installed")

PHOTOS = Path(__file__).parent / "fixtures" / "photos"
NAMES = ["bsd68_101085.jpg", "bsd68_102061.jpg", "bsd68_103070.jpg", "sunhays_barn_sun_btulbiaoilnxcseh.jpg"]
TOKEN = "s3cret-token-for-schemathesis-0123456789"
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
          "negative_data_rejection")
EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "25"))
SEED = 20240518


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lookalike.indexer import build_index

    base = tmp_path_factory.mktemp("schemathesis")
    photos = base / "photos"
    (photos / "edits").mkdir(parents=True)
    for n in NAMES:
        shutil.copy(PHOTOS / n, photos / n)
    im = open_image(PHOTOS / NAMES[0])
    ImageEnhance.Brightness(im).enhance(1.1).save(photos / "edits" / "edited.jpg", quality=90)
    (photos / "broken.jpg").write_bytes(b"not an image")
    build_index(photos, base / "index", metric="efficientnet_lite0", dtype="fp32", workers=0, progress=False,
                dedup_threshold=0.1)
    return base / "index"


def _config(index_dir: Path, folder: Path) -> Path:
    """A schemathesis.toml that makes half the generated ids real ones, so the image routes are reached too; a
    request refused as too large (413, e.g. a label list past its cap, which also passes the JSON body cap) counts
    as a rejection of invalid data."""
    from lookalike.indexer import open_index

    with open_index(index_dir) as idx:
        ids = sorted(idx.rows(idx.vectors.ids().tolist()))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "schemathesis.toml"
    bind = '{ dictionary = "image-ids", probability = 0.5 }'
    path.write_text(f"[dictionaries]\nimage-ids = {{ values = {ids} }}\n\n[parameters]\n"
                    + "".join(f'"{key}" = {bind}\n' for key in ("path.image_id", "body.id", "body.a.id", "body.b.id"))
                    + '\n[checks.negative_data_rejection]\nexpected-statuses = ["400", "401", "403", "404", "409", '
                      '"413", "415", "422", "429"]\n')
    return path


def _schemathesis(url: str, config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", f"{url}/openapi.json",
         "--checks", CHECKS,
         "--max-examples", str(EXAMPLES), "--seed", str(SEED), "--generation-database", "none", "--no-color",
         "--wait-for-schema", "60", "--request-timeout", "60", "--report", "junit", "--report-dir",
         str(config.parent / "report"), *extra],
        capture_output=True, text=True, timeout=600, cwd=config.parent)


@pytest.fixture(scope="module")
def open_server(index_dir: Path) -> Iterator[str]:
    with serve(index_dir, index_dir.parent / "serve.log") as url:
        yield url


@pytest.fixture(scope="module")
def token_server(index_dir: Path) -> Iterator[str]:
    with serve(index_dir, index_dir.parent / "serve-token.log", env={"LOOKALIKE_SERVE_TOKEN": TOKEN}) as url:
        yield url


def test_schemathesis_without_a_token(open_server: str, index_dir: Path, tmp_path: Path) -> None:
    doc = httpx.get(f"{open_server}/openapi.json", timeout=60).json()
    assert "securitySchemes" not in doc.get("components", {})
    r = _schemathesis(open_server, _config(index_dir, tmp_path))
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    print(r.stdout[r.stdout.find("WARNINGS"):] if "WARNINGS" in r.stdout else r.stdout[-600:])


def test_schemathesis_with_a_token(token_server: str, index_dir: Path, tmp_path: Path) -> None:
    doc = httpx.get(f"{token_server}/openapi.json", timeout=60).json()
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert doc["paths"]["/search"]["post"]["security"] == [{"HTTPBearer": []}]
    assert "401" in doc["paths"]["/search"]["post"]["responses"] and "security" not in doc["paths"]["/health"]["get"]
    r = _schemathesis(token_server, _config(index_dir, tmp_path), "--header", f"Authorization: Bearer {TOKEN}")
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    print(r.stdout[r.stdout.find("WARNINGS"):] if "WARNINGS" in r.stdout else r.stdout[-600:])
    unauthorised = httpx.post(f"{token_server}/search", json={"id": 1}, timeout=60)
    assert unauthorised.status_code == 401 and unauthorised.json()["status"] == 401
