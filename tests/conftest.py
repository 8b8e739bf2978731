"""Shared test set-up: CPU only, no network, fixture paths, and the shared real-photo indexes.

Shared fixtures (use them instead of building your own; each is built once per session, on first use):

- ``photo_index``: the 24 fixture photos plus an edited copy of ``support.DUP_OF`` in ``photos/edits/`` (25 images,
  one known duplicate group), indexed with the real offline model ``efficientnet_lite0`` in fp32. A dict with
  ``base``, ``photos``, ``index`` and ``outside`` (a real photo that is not indexed). **Read-only**: search it,
  dedup it, open it in the app or the service, but never index into it, move its files or repair it (copy it with
  ``shutil.copytree`` first). The session checks at the end that nothing changed it.
- ``pairs_index``: six photos (``support.PAIR_NAMES``) and an edited copy of each under the same name in
  ``photos/edits/`` (12 images, six duplicate groups, two folders), indexed the same way. Same keys, same rule.
- ``browser``: Debian's chromium through Playwright (one per module), skipped where chromium is not installed
  (an error on CI, which must run ``.ci/install-system.sh``).
- ``registry``: puts the metric registry back after a test that registers metrics.
- ``demo_dir``, ``photos_dir``, ``official_dino_adapter``: fixture paths.

Helpers that are not fixtures live in ``tests/support.py``: ``run_app`` / ``run_service`` (``lookalike app`` /
``serve`` on a free port, stopped afterwards), ``free_port``, ``edited_copy``, ``jpeg_bytes``, ``CHROMIUM_ARGS``.

Markers: ``slow`` (browser, servers, clusters, training: ``python -m pytest -m "not slow"`` is the quick run while
working), ``gpu``, ``parity``, ``pretrained`` (see pyproject.toml).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LOOKALIKE_OFFLINE", "1")


def pytest_configure(config: pytest.Config) -> None:
    # CPU only, unless the run selects the GPU tests (``python -m pytest -m gpu``): then CUDA stays visible.
    if "gpu" not in (config.getoption("markexpr", "") or ""):
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


#: Tests (node id prefixes) that take more than a few seconds on 2 cores, marked ``slow`` here in one list so that
#: modules other engineers own need no edit; a new slow test can carry ``@pytest.mark.slow`` itself instead.
#: Measured with ``python -m pytest --durations=0`` (docs/development.md).
SLOW_TESTS = (
    "tests/test_parity.py",  # the reference dreamsim package on random ViT-B weights, eight variants
    "tests/test_index_ray.py",  # a Ray cluster, killed workers and drivers
    "tests/test_index_crash.py",  # SIGKILL at every stage of a build, then resume
    "tests/test_index_postgres.py",  # a PostgreSQL server
    "tests/test_train.py",  # LoRA training runs
    "tests/test_diffsim.py",  # a Stable Diffusion-shaped pipeline
    "tests/test_serve.py",  # the REST service in a subprocess
    "tests/test_search_quality.py",  # 40 real photos with five edits each, embedded
    "tests/test_baselines.py::test_lpips_vgg_parity",
    "tests/test_baselines.py::test_lpips_alex_parity",
    "tests/test_classical.py::test_dists_matches_the_reference_package",
    "tests/test_cli_metric.py::test_compare_table_and_json",
    "tests/test_index_cli.py::test_console_script_subprocess",
    "tests/test_metric.py::test_efficientnet_finds_the_original_of_every_edited_copy",
    "tests/test_fast_decode.py::test_build_index_fast_decode",
    "tests/test_fast_decode.py::test_device_jpeg_decode_close_to_exact_pil",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``SLOW_TESTS`` get the ``slow`` marker; tests marked ``gpu`` need CUDA: skipped (with the reason) where there
    is none."""
    for it in items:
        if it.nodeid.startswith(SLOW_TESTS):
            it.add_marker(pytest.mark.slow)
    gpu_items = [it for it in items if it.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (run 'python -m pytest -m gpu' on a GPU machine)")
    for it in gpu_items:
        it.add_marker(skip)

from support import CHROMIUM, CHROMIUM_ARGS, DEMO, PHOTOS, SHARED, pairs_collection, photo_collection  # noqa: E402

SHARED_FIXTURES = SHARED / "fixtures"
#: Files of an index that opening it for reading may legitimately create or touch (SQLite's WAL side files).
_VOLATILE_SUFFIXES = ("-wal", "-shm", ".lock")


def _digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (but SQLite's WAL side files and lock files)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith(_VOLATILE_SUFFIXES)}


def _shared_index(collection: dict[str, Path], expected: int) -> Iterator[dict[str, Path]]:
    """Index ``collection['photos']`` with efficientnet_lite0 (fp32), yield it, and check at the end of the session
    that no test wrote to it: the index and the photos are shared read-only."""
    from lookalike.indexer import build_index

    index_dir = collection["base"] / "index"
    summary = build_index(collection["photos"], index_dir, metric="efficientnet_lite0", dtype="fp32", workers=0,
                          progress=False)
    assert summary.total_vectors == expected and summary.failed == 0
    before = {"index": _digest(index_dir), "photos": _digest(collection["photos"])}
    yield {**collection, "index": index_dir}
    after = {"index": _digest(index_dir), "photos": _digest(collection["photos"])}
    changed = sorted(f"{k}/{f}" for k in before for f in set(before[k]) | set(after[k])
                     if before[k].get(f) != after[k].get(f))
    assert not changed, f"a test wrote to a shared read-only index (copy it first): {changed}"


@pytest.fixture(scope="session")
def photo_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """24 real photos + an edited copy of one, indexed with efficientnet_lite0; read-only (see the module doc)."""
    yield from _shared_index(photo_collection(tmp_path_factory.mktemp("photo_index")), 25)


@pytest.fixture(scope="session")
def pairs_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Six real photos and an edited copy of each, indexed with efficientnet_lite0; read-only (module doc)."""
    yield from _shared_index(pairs_collection(tmp_path_factory.mktemp("pairs_index")), 12)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's chromium, headless, through Playwright's sync API (never a browser Playwright downloads)."""
    if not CHROMIUM.is_file():
        if os.environ.get("CI"):
            raise RuntimeError(f"{CHROMIUM} is missing; CI must run .ci/install-system.sh first")
        pytest.skip(f"{CHROMIUM} not installed (run .ci/install-system.sh)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets an empty $LOOKALIKE_HOME unless it sets its own."""
    monkeypatch.setenv("LOOKALIKE_HOME", str(tmp_path_factory.mktemp("lookalike_home")))


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    return DEMO


@pytest.fixture(scope="session")
def photos_dir() -> Path:
    return PHOTOS


@pytest.fixture(scope="session")
def official_dino_adapter() -> Path:
    """The official dino_vitb16 single-branch adapter (from ../shared/fixtures; 2.3 MB, not copied into the repo)."""
    path = SHARED_FIXTURES / "dreamsim-adapters" / "dino_vitb16_single_lora"
    if not (path / "adapter_model.safetensors").is_file():
        pytest.skip(f"official adapter fixture not found at {path}")
    return path


@pytest.fixture
def registry():  # type: ignore[no-untyped-def]
    """Use in tests that register metrics or backbones: the registry is put back as it was afterwards."""
    from lookalike.metric import _registry

    state = _registry.snapshot()
    try:
        yield
    finally:
        _registry.restore(state)


@pytest.fixture(params=["0", "1"], ids=["cpu-fp32", "cpu-bf16"])
def cpu_bf16(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[bool]:
    """Run a precision-sensitive test as on a CPU without native bf16 (``dtype="auto"`` = fp32) and as on one with
    it (auto = bf16), whatever this machine is: ``$LOOKALIKE_CPU_BF16`` overrides the detection (read at each call;
    the cached CPU flags are cleared too). Child processes inherit the setting."""
    from lookalike.metric import _precision

    monkeypatch.setenv(_precision.ENV_CPU_BF16, request.param)
    _precision.cpu_flags.cache_clear()
    yield request.param == "1"
    _precision.cpu_flags.cache_clear()
