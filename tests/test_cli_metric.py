"""The real ``lookalike`` console script: info, compare, errors as one line with a non-zero exit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

LOOKALIKE = shutil.which("lookalike") or str(Path(sys.executable).parent / "lookalike")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([LOOKALIKE, *args], capture_output=True, text=True, env=e, timeout=300)


def test_help_lists_subcommands_with_examples() -> None:
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("info", "compare", "weights"):
        assert cmd in r.stdout
    for cmd in ("info", "compare"):
        r = run(cmd, "--help")
        assert r.returncode == 0 and "examples:" in r.stdout


def test_info_json_reports_metrics_devices_and_weights() -> None:
    r = run("info", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert "cpu" in info["devices"]
    by_name = {m["name"]: m for m in info["metrics"]}
    assert by_name["efficientnet_lite0"]["weights"] == "present"
    assert by_name["dreamsim"]["weights"] == "missing" and by_name["dreamsim"]["dim"] == 1792
    assert by_name["psnr"]["direction"] == "higher = more similar"
    assert "test_vit_tiny" not in by_name  # a random toy model for tests is no metric for users
    r = run("info")
    assert r.returncode == 0 and "lookalike weights download" in r.stdout and "test_vit_tiny" not in r.stdout


def test_compare_table_and_json(demo_dir: Path) -> None:
    a, b, c = (str(demo_dir / n) for n in ("ref_1.png", "img_a_1.png", "img_b_1.png"))
    r = run("compare", a, b, "-m", "efficientnet_lite0", "-m", "psnr", "-m", "ssim", "-m", "l2")
    assert r.returncode == 0, r.stderr
    assert "lower = more similar" in r.stdout and "higher = more similar" in r.stdout
    r = run("compare", a, a, "-m", "efficientnet_lite0", "-m", "psnr", "--json")
    rows = {row["metric"]: row for row in json.loads(r.stdout)["rows"]}
    assert abs(rows["efficientnet_lite0"]["value"]) < 1e-5
    assert rows["psnr"]["value"] == "inf"
    r = run("compare", a, c, "--all", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["metric"]: row for row in json.loads(r.stdout)["rows"]}
    assert rows["dreamsim"]["value"] is None
    assert "lookalike weights download dreamsim" in rows["dreamsim"]["reason"]
    assert isinstance(rows["ssim"]["value"], float) and "test_vit_tiny" not in rows


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("compare", "{missing}", "{a}", "-m", "psnr"), "not found"),
        (("compare", "{a}", "{notimage}", "-m", "psnr"), "cannot read image"),
        (("compare", "{a}", "{a}", "-m", "dreamsm"), "Did you mean 'dreamsim'"),
        (("compare", "{a}", "{a}", "-m", "dreamsim"), "lookalike weights download dreamsim"),
        (("info", "--index", "{missing}"), "index"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: tuple[str, ...], message: str, demo_dir: Path,
                                          tmp_path: Path) -> None:
    notimage = tmp_path / "notes.png"
    notimage.write_text("this is not a PNG")
    fill = {"a": str(demo_dir / "ref_1.png"), "missing": str(tmp_path / "nope.png"), "notimage": str(notimage)}
    r = run(*(x.format(**fill) for x in args))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and message in r.stderr, r.stderr
    assert all(ln.startswith(("error: ", "hint: ", "  ", "searched: ")) for ln in lines), r.stderr  # no log noise
