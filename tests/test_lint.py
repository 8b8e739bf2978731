"""Lint and types are part of the test command: ``ruff check`` on the whole tree, ``mypy`` on the public API.

Both tools come with the ``test`` extra. The mypy settings live in pyproject.toml (heavy third-party packages are
not followed, so the check takes seconds).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: The public API: the rooms' ``__init__`` modules and the modules behind the names they export.
MYPY_FILES = [
    "common/__init__.py", "common/errors.py", "common/io.py",
    "data/__init__.py", "data/transforms.py",
    "metric/__init__.py", "metric/_factory.py", "metric/_registry.py", "metric/_pretrained.py", "metric/releases.py",
    "metric/_cache.py", "metric/_download.py", "metric/_archive.py", "metric/_hub.py", "metric/weights.py",
    "judge/__init__.py", "indexer/__init__.py",
]


def _run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which(tool) is None and subprocess.run([sys.executable, "-m", tool, "--version"],
                                                    capture_output=True).returncode != 0:
        pytest.fail(f"{tool} is not installed; it comes with the test extra: pip install -e '.[test]'")
    return subprocess.run([sys.executable, "-m", tool, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def test_ruff_check_passes() -> None:
    r = _run("ruff", "check", "--no-cache", ".")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_on_the_public_api() -> None:
    r = _run("mypy", "--no-incremental", "--no-error-summary", *MYPY_FILES)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_module_says_what_it_is_for() -> None:
    import ast

    missing = []
    for folder in ("common", "data", "metric", "judge", "indexer", "app", "tests", "bench"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if not ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))):
                missing.append(str(path.relative_to(REPO)))
    assert not missing, f"modules without a docstring on their first lines: {missing}"
