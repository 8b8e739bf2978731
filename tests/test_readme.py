"""The README as a newcomer reads it: its five-minute tour runs as written, offline, on real photos in a fresh home
folder (``~/Pictures``), and every command and link in it is accounted for (``.ci/run`` runs the install and test
blocks)."""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image, ImageEnhance, ImageFilter
from support import PHOTOS, edited_copy, free_port

from lookalike.data.images import open_image

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def _block_after(marker: str) -> list[str]:
    """The command lines of the fenced block after ``marker`` in the README (comments and blank lines dropped)."""
    text = README.read_text()
    assert marker in text, f"{marker} is missing from the README"
    block = text.split(marker, 1)[1].split("```", 2)[1]
    lines = [re.sub(r"\s+#\s.*$", "", ln).rstrip() for ln in block.splitlines()[1:]]
    return [ln for ln in lines if ln and not ln.lstrip().startswith("#")]


def _home(tmp_path: Path) -> Path:
    """A home folder whose ~/Pictures holds real photos in two folders, the tour's beach.jpg, an edited copy of it
    (one region blurred and brightened: where `compare --map` should light up) and an edited copy of another photo
    (a near-duplicate for `dedup`)."""
    home = tmp_path / "home"
    pictures = home / "Pictures"
    for sub in ("holiday", "garden"):
        (pictures / sub).mkdir(parents=True)
    names = sorted(p.name for p in PHOTOS.glob("*.jpg") if "beach" not in p.name)  # beach.jpg is the tour's own
    for n, name in enumerate(names):
        shutil.copy(PHOTOS / name, pictures / ("holiday" if n % 2 else "garden") / name)
    beach = open_image(PHOTOS / "sunhays_beach_sun_bgtlposotyokcsdg.jpg")
    beach.save(pictures / "beach.jpg", quality=92)
    w, h = beach.size
    box = (w // 2, h // 10, w * 9 // 10, h // 2)
    edited = beach.copy()
    edited.paste(ImageEnhance.Brightness(beach.crop(box).filter(ImageFilter.GaussianBlur(5))).enhance(1.3), box)
    edited.save(pictures / "beach-edited.jpg", quality=92)
    edited_copy(open_image(PHOTOS / names[0])).save(pictures / "holiday" / "copy_of_first.jpg", quality=90)
    return home


def _env(home: Path) -> dict[str, str]:
    bindir = str(Path(sys.executable).parent)  # the console script `lookalike` of this environment
    return {**os.environ, "HOME": str(home), "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
            "HF_HUB_OFFLINE": "1", "LOOKALIKE_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
            "LOOKALIKE_HOME": str(home / ".cache" / "lookalike")}  # an empty cache: nothing downloaded before


@pytest.mark.slow
def test_the_tour_runs_as_written_offline(tmp_path: Path) -> None:
    lines = _block_after("<!-- tour -->")
    assert lines[0].startswith("PHOTOS=~/Pictures ") and lines[-1].startswith("lookalike app ")
    home = _home(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    env = _env(home)
    script = "set -euo pipefail\n" + "\n".join(f"echo '>>> {i}'\n{ln}" for i, ln in enumerate(lines[:-1]))
    r = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert "Traceback" not in r.stderr
    parts = re.split(r"^>>> (\d+)$", r.stdout, flags=re.M)  # ['', '0', out0, '1', out1, ...]
    out = {int(k): v for k, v in zip(parts[1::2], parts[2::2], strict=True)}
    info, index, search, dedup, compare = (out[i] for i in range(1, 6))
    assert "efficientnet_lite0" in info and "present" in info and "test_vit_tiny" not in info
    assert "scanned 26  new 26" in index and "failed 0" in index
    assert "loading efficientnet_lite0 (cpu, fp32)..." in r.stderr  # said before the long silence
    header, *rows = search.strip().splitlines()
    assert header.split()[:3] == ["#", "distance", "path"] and len(rows) == 5
    assert rows[0].split()[1:] == ["0.0000", str(home / "Pictures" / "beach.jpg")]  # finds itself first
    assert str(home / "Pictures" / "beach-edited.jpg") in rows[1]  # then its edited copy
    m = re.search(r"(\d+) groups, (\d+) duplicates", dedup)
    assert m and int(m.group(1)) >= 2, dedup  # the edited beach, and the copy of the first photo
    with open(work / "duplicates.csv", newline="") as f:
        paths = {row["path"] for row in csv.DictReader(f)}
    assert str(home / "Pictures" / "holiday" / "copy_of_first.jpg") in paths
    assert "efficientnet_lite0" in compare and "lower = more similar" in compare and "written to where.png" in compare
    heat = Image.open(work / "where.png")
    assert heat.size == Image.open(home / "Pictures" / "beach.jpg").size
    assert not (home / ".cache" / "lookalike").exists() or not any((home / ".cache" / "lookalike").rglob("*.pth"))

    port = free_port()  # the last line starts the app: run it as written, on a free port, then stop it
    app = subprocess.Popen(["bash", "-c", f"exec {lines[-1]} --port {port}"], cwd=work, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5) as resp:
                    if resp.read().strip() == b"ok":
                        break
            except OSError:
                pass
            assert app.poll() is None and time.monotonic() < deadline, "the app did not start"
            time.sleep(0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
            assert resp.status == 200 and b"<html" in resp.read().lower()
    finally:
        os.killpg(app.pid, signal.SIGTERM)
        try:
            app.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(app.pid, signal.SIGKILL)
            app.wait()


def test_every_command_in_the_readme_is_run() -> None:
    """The tour's lines run in the test above; the install and test blocks in .ci/run; anything else is an error."""
    text = README.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    ci_lines = _block_after("<!-- ci:install -->") + _block_after("<!-- ci:test -->")
    run = set(_block_after("<!-- tour -->")) | set(ci_lines) | {p.strip() for ln in ci_lines for p in ln.split("&&")}
    not_run = {"pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu"}  # unreachable here
    for block in blocks:
        for ln in block.splitlines():
            cmd = re.sub(r"\s+#\s.*$", "", ln).rstrip()
            if cmd and not cmd.startswith("#"):
                assert cmd in run or cmd in not_run, f"a README command no test runs: {cmd}"
    ci = (REPO / ".ci" / "run").read_text()
    assert "<!-- ci:install -->" in ci and "<!-- ci:test -->" in ci
    inline = set(re.findall(r"`(lookalike [a-z]+)[^`]*`", text))
    assert inline <= {f"lookalike {ln.split()[1]}" for ln in run if ln.startswith("lookalike ")}, inline


def test_readme_links_and_docs_exist() -> None:
    text = README.read_text()
    first_screen = text.split("## Going further", 1)[0]
    for needed in ("## Install", "pip install .", "download.pytorch.org/whl/cpu", "GB", "<!-- tour -->"):
        assert needed in first_screen
    links = re.findall(r"\]\(((?:docs/)[^)#]+)", text)
    assert len(links) >= 10
    for link in links:
        assert (REPO / link).is_file(), link
    for doc in (REPO / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([a-z_]+\.md)", doc.read_text()):
            assert (REPO / "docs" / target).is_file(), (doc.name, target)
