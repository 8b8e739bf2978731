"""The symbolic-link policy of the folder scan: links inside the root are followed, links that leave it are skipped
(and reported) unless asked for; ``build_index(follow_links=...)`` and ``lookalike index --follow-links`` pass it on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lookalike.data.image_folder import scan_images

PHOTOS = Path(__file__).parent / "fixtures" / "photos"
A, B, C = "bsd68_101085.jpg", "bsd68_102061.jpg", "bsd68_103070.jpg"

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="symbolic links need privileges on Windows")


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """root/ with real photos, links inside it, and links that lead out of it; outside/ beside it."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    (outside / "deep").mkdir(parents=True)
    shutil.copy(PHOTOS / A, root / A)
    shutil.copy(PHOTOS / B, root / "sub" / B)
    shutil.copy(PHOTOS / C, outside / "deep" / C)
    (root / "link_in.jpg").symlink_to(root / "sub" / B)  # photos kept behind links inside the collection
    (root / "relative_in.jpg").symlink_to(Path("sub") / B)
    (root / "out.jpg").symlink_to(outside / "deep" / C)  # leaves the root
    (root / "up.jpg").symlink_to(Path("..") / "outside" / "deep" / C)
    (root / "outdir").symlink_to(outside)  # a folder link that leaves the root
    (root / "sub" / "escape").symlink_to(Path("..") / "..")  # the parent of the root
    return root


def _rel(result) -> set[str]:
    return {f.relpath for f in result.files}


def test_links_inside_the_root_are_followed_and_links_out_are_skipped(tree: Path) -> None:
    result = scan_images(tree)
    assert _rel(result) == {A, f"sub/{B}", "link_in.jpg", "relative_in.jpg"}
    assert {Path(s.path).name for s in result.skipped} == {"out.jpg", "up.jpg", "outdir", "escape"}
    assert not result.errors


def test_outside_links_are_followed_when_asked(tree: Path) -> None:
    result = scan_images(tree, outside_links=True)
    assert {"out.jpg", "up.jpg", f"outdir/deep/{C}"} <= _rel(result)
    assert not result.skipped


def test_a_root_reached_through_a_link_is_its_own_inside(tree: Path, tmp_path: Path) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(tree)
    assert _rel(scan_images(alias)) == {A, f"sub/{B}", "link_in.jpg", "relative_in.jpg"}


def test_no_links_at_all(tree: Path) -> None:
    assert _rel(scan_images(tree, follow_symlinks=False)) == {A, f"sub/{B}"}


def test_build_index_and_the_cli_pass_the_policy_on(tree: Path, tmp_path: Path) -> None:
    from lookalike.indexer import ImageIndex, build_index

    plain = build_index(tree, tmp_path / "plain", metric="efficientnet_lite0", dtype="fp32", workers=0,
                        progress=False)
    assert plain.total_vectors == 4
    env = {**os.environ, "LOOKALIKE_CPU_BF16": "0"}
    r = subprocess.run([sys.executable, "-m", "lookalike.app.cli", "index", str(tree), "--index",
                        str(tmp_path / "linked"), "--metric", "efficientnet_lite0", "--workers", "0", "--no-progress",
                        "--follow-links"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    with ImageIndex(tmp_path / "linked") as idx:
        assert set(idx.list_paths()) >= {"out.jpg", "up.jpg", f"outdir/deep/{C}"}
