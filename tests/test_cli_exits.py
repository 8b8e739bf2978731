"""How the ``lookalike`` command ends where its surroundings fail it: a reader that closes the pipe, a missing extra.

Real processes: the CLI in a subprocess writing into a real pipe, and a real interpreter in which the ``serve``
extra's packages cannot be imported (an import hook refuses them, as if they were not installed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PHOTOS = Path(__file__).parent / "fixtures" / "photos"
CLI = [sys.executable, "-m", "lookalike.app.cli"]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lookalike.indexer import build_index

    base = tmp_path_factory.mktemp("pipes")
    (base / "photos").mkdir()
    for p in sorted(PHOTOS.glob("*.jpg"))[:3]:
        shutil.copy(p, base / "photos" / p.name)
    build_index(base / "photos", base / "index", metric="efficientnet_lite0", dtype="fp32", workers=0,
                progress=False)
    return base / "index"


@pytest.mark.parametrize("args", [["info"], ["--help"]])
def test_a_closed_pipe_ends_quietly(index_dir: Path, args: list[str]) -> None:
    """The reader closes the pipe before the command writes (as 'head -1' does when it has its line)."""
    argv = args + ([] if args == ["--help"] else ["--index", str(index_dir)])
    proc = subprocess.Popen(CLI + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # type: ignore[union-attr]
    err = proc.stderr.read().decode()  # type: ignore[union-attr]
    code = proc.wait(timeout=300)
    proc.stderr.close()  # type: ignore[union-attr]
    assert err == "", err
    # 128 + SIGPIPE, what a shell reports for a Unix tool stopped by a closed pipe (argparse's --help exits 0 first)
    assert code == 141 or (args == ["--help"] and code == 0), code


def test_info_into_head_in_a_shell(index_dir: Path) -> None:
    r = subprocess.run(["bash", "-c", f'{" ".join(CLI)} info --index "$0" | head -1; echo "status ${{PIPESTATUS[0]}}"',
                        str(index_dir)], capture_output=True, text=True, timeout=300)
    lines = r.stdout.splitlines()
    assert lines[0].startswith("index ") and lines[-1] in ("status 0", "status 141"), r.stdout
    assert r.stderr == "", r.stderr


_BLOCK = """
import sys

class NotInstalled:
    '''Refuse the serve extra's packages, as an interpreter without them would.'''

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("fastapi", "uvicorn", "starlette", "fastapi_offline"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
from lookalike.app.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_serve_without_the_extra_says_so_in_one_line(index_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LOOKALIKE_SERVE_TOKEN"}
    r = subprocess.run([sys.executable, "-c", _BLOCK, "serve", "--index", str(index_dir)], capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [
        "error: 'lookalike serve' needs the serve extra (uvicorn is not installed): pip install 'lookalike[serve]'"]
