"""Shared test set-up: CPU only, no network, fixture paths."""

from __future__ import annotations

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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` need CUDA: skipped (with the reason) where there is none."""
    gpu_items = [it for it in items if it.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (run 'python -m pytest -m gpu' on a GPU machine)")
    for it in gpu_items:
        it.add_marker(skip)

from support import DEMO, PHOTOS, SHARED  # noqa: E402

SHARED_FIXTURES = SHARED / "fixtures"


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
