"""docs/dedup.md, run as a user would: real photos with copies, edits and a held-out split written on disk, every
``lookalike`` command of the walkthrough run in a shell (in the doc's order), and what it prints or writes checked.

The photos are the repository's fixtures; the model is ``efficientnet_lite0`` (real ImageNet weights, offline).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageEnhance
from support import PHOTOS, error_lines

DOC = Path(__file__).resolve().parents[1] / "docs" / "dedup.md"
TRAIN = ["bsd68_101085", "bsd68_101087", "bsd68_102061", "bsd68_103070", "bsd68_105025", "bsd68_106024",
         "bsd68_108005", "bsd68_108070"]
TEST = ["sunhays_abbey_sun_asztnlqhlrvirneh", "sunhays_aqueduct_sun_ancegghzusmmvzjn",
        "sunhays_badlands_sun_bvwwfrhtvupdxldb", "sunhays_balcony_interior_sun_bammhtthmkjntkqh",
        "sunhays_barn_sun_btulbiaoilnxcseh"]
LEAKS = {"test/bsd68_102061_small.jpg": "train/bsd68_102061.jpg", "test/bsd68_103070_q30.jpg": "train/bsd68_103070.jpg",
         "test/bsd68_105025.jpg": "train/bsd68_105025.jpg"}
DETAIL = "test/bsd68_108070_detail.jpg"  # a close-up: the same photo, farther than the near boundary
PAN = ("train/bsd68_119082_left.jpg", "train/bsd68_119082_right.jpg")  # two views of one scene: different photos

pytestmark = pytest.mark.slow


def make_photos(root: Path) -> None:
    """The walkthrough's folder; every copy is modified after its original (a later mtime)."""
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    t0 = 1_700_000_000
    for name in TRAIN + TEST:
        dst = root / ("train" if name in TRAIN else "test") / f"{name}.jpg"
        shutil.copyfile(PHOTOS / f"{name}.jpg", dst)
        os.utime(dst, (t0, t0))
    im = Image.open(PHOTOS / "bsd68_102061.jpg").convert("RGB")
    im.resize((im.width // 2, im.height // 2), Image.Resampling.BICUBIC).save(root / "test/bsd68_102061_small.jpg",
                                                                              quality=90)
    Image.open(PHOTOS / "bsd68_103070.jpg").convert("RGB").save(root / "test/bsd68_103070_q30.jpg", quality=30)
    shutil.copyfile(root / "train/bsd68_105025.jpg", root / "test/bsd68_105025.jpg")  # an exact copy, made later
    ImageEnhance.Brightness(Image.open(PHOTOS / "bsd68_101085.jpg").convert("RGB")).enhance(1.2).save(
        root / "train/bsd68_101085_bright.jpg", quality=90)
    im = Image.open(PHOTOS / "bsd68_108070.jpg").convert("RGB")
    w, h = im.size
    im.crop((w // 4, h // 4, 3 * w // 4, 3 * h // 4)).save(root / DETAIL, quality=90)
    im = Image.open(PHOTOS / "bsd68_119082.jpg").convert("RGB")
    w, h = im.size
    im.crop((0, 0, w * 6 // 10, h)).save(root / PAN[0], quality=90)
    im.crop((w * 4 // 10, 0, w, h)).save(root / PAN[1], quality=90)
    for p in root.rglob("*.jpg"):
        if os.stat(p).st_mtime != t0:
            os.utime(p, (t0 + 100, t0 + 100))


def doc_commands() -> list[str]:
    """The ``lookalike`` lines of the doc's bash blocks, in order."""
    out, inside = [], False
    for line in DOC.read_text().splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```bash"
            continue
        if inside and line.startswith("lookalike "):
            out.append(line.split("  #")[0].strip())
    return out


def _rel(p: str, base: Path) -> str:
    return os.path.relpath(p, base / "photos")


def test_the_walkthrough(tmp_path: Path) -> None:  # noqa: PLR0915 - one user's session, step by step
    make_photos(tmp_path / "photos")
    (tmp_path / "decisions.csv").write_text(re.search(r"```\n(a,b,same\n.*?)```", DOC.read_text(), re.S).group(1))
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    base = tmp_path

    def rel_pairs(pairs: list[dict]) -> set[tuple[str, str]]:
        return {tuple(sorted((_rel(p["a"], base), _rel(p["b"], base)))) for p in pairs}  # type: ignore[misc]

    commands = doc_commands()
    assert commands[-1] == "lookalike app --index photos.idx"  # run by tests/test_app_dedup_browser.py
    assert len(commands) == len(STEPS) + 1

    def run(cmd: str) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
        assert "Traceback" not in r.stderr, r.stderr
        return r

    for cmd, check in zip(commands[:-1], STEPS, strict=True):
        text = run(cmd)  # what the user sees
        print(f"$ {cmd}\n{text.stdout}{text.stderr}".replace(str(base) + "/", ""))  # shown when a step fails
        data = None
        if cmd.startswith("lookalike dedup") and "--move-to" not in cmd and "--undo" not in cmd:
            data = json.loads(run(cmd.replace(" --out ", " --json --out ") if " --out " in cmd else
                                  f"{cmd} --json").stdout)
        check(cmd, data, text, base, rel_pairs)


def _index(cmd, d, text, base, rel_pairs) -> None:  # type: ignore[no-untyped-def]
    assert cmd == "lookalike index photos --index photos.idx --metric efficientnet_lite0"
    assert (base / "photos.idx" / "catalog.sqlite").is_file()


def _first_look(cmd, d, text, base, rel_pairs) -> None:  # type: ignore[no-untyped-def]
    assert cmd == "lookalike dedup --index photos.idx"
    assert d["threshold"] == pytest.approx(0.29) and d["threshold_source"] == "the near-copy boundary"
    assert d["tiers"]["source"].startswith("measured default of efficientnet_lite0")
    tiers = {tuple(sorted((_rel(p["a"], base), _rel(p["b"], base)))): p["tier"] for p in d["pairs"]}
    assert tiers == {("test/bsd68_105025.jpg", "train/bsd68_105025.jpg"): "exact",
                     ("test/bsd68_102061_small.jpg", "train/bsd68_102061.jpg"): "near",
                     ("test/bsd68_103070_q30.jpg", "train/bsd68_103070.jpg"): "near",
                     ("train/bsd68_101085.jpg", "train/bsd68_101085_bright.jpg"): "near"}
    keepers = {_rel(g["keeper"]["path"], base) for g in d["groups"]}
    assert "train/bsd68_105025.jpg" in keepers  # the exact copy ties on 'largest': the older original is kept
    assert d["largest_group"] == 2 and d["tier_counts"] == {"exact": 1, "near": 3, "similar": 0}
    assert "threshold 0.2900" in text.stdout and "exact 1, near 3" in text.stdout
    assert "exact    photos/test/bsd68_105025.jpg" in text.stdout.replace(str(base) + "/", "")


def _wider(cmd, d, text, base, rel_pairs) -> None:  # type: ignore[no-untyped-def]
    assert cmd == "lookalike dedup --index photos.idx --threshold 0.43"
    pan = tuple(sorted(PAN))
    tiers = {tuple(sorted((_rel(p["a"], base), _rel(p["b"], base)))): p["tier"] for p in d["pairs"]}
    assert tiers[pan] == "similar" and not d["hidden"]


def _label_different(cmd, d, text, base, rel_pairs) -> None:  # type: ignore[no-untyped-def]
    assert cmd.startswith("lookalike label --index photos.idx --different")
    assert "labels: 1 added" in text.stdout


def _wider_again(cmd, d, text, base, rel_pairs) -> None:  # type: ignore[no-untyped-def]
    pan = tuple(sorted(PAN))
    assert pan not in rel_pairs(d["pairs"]) and rel_pairs(d["hidden"]) == {pan}
    assert not any(pan[0] in {_rel(m["path"], base) for m in [g["keeper"], *g["duplicates"]]}
                   and pan[1] in {_rel(m["path"], base) for m in [g["keeper"], *g["duplicates"]]} for g in d["groups"])
    assert "1 pairs left out: labelled different" in text.stdout
    assert [lb["same"] for lb in d["labels"]] == [0.0]


def _label_same(cmd, d, text, base, rel_pairs) -> None:  # type: ignore[no-untyped-def]
    assert "--same" in cmd and "labels: 1 added" in text.stdout


def _between(cmd, d, text, base, rel_pairs) -> None:  # type: ignore[no-untyped-def]
    assert cmd == "lookalike dedup --index photos.idx --between photos/test photos/train"
    matches = {_rel(p["a"], base): _rel(p["b"], base) for p in d["matches"]}
    assert matches == {**LEAKS, DETAIL: "train/bsd68_108070.jpg"}
    assert d["images_between"] == [9, 11]
    assert {_rel(g["keeper"]["path"], base).split("/")[0] for g in d["groups"]} == {"train"}  # B is the reference
    assert all({_rel(p["a"], base)[:4], _rel(p["b"], base)[:4]} == {"test", "trai"} for p in d["pairs"])
    assert "4 of 9 images under photos/test have a match among the 11 under photos/train" in text.stdout.replace(
        str(base) + "/", "")


def _html(cmd, d, text, base, rel_pairs) -> None:  # type: ignore[no-untyped-def]
    page = (base / "leaks.html").read_text()
    assert page.count('src="data:image/jpeg;base64,') == 8  # 4 groups of 2, all embedded
    assert not re.search(r"""(src|href)=["'](?!data:)""", page) and "http://" not in page and "https://" not in page
    assert "<script" not in page
    assert page.count("badge KEEP") == 4 and "badge exact" in page and "badge near" in page
    assert "labelled same" in page and "Labels given (1)" in page  # the close-up's label (the pan is not here)
    assert "bsd68_108070_detail.jpg" in page.split("Labels given")[1]


def _move(cmd, d, text, base, rel_pairs) -> None:  # type: ignore[no-untyped-def]
    assert "moved 4 files; undo with: lookalike dedup --undo" in text.stderr
    left = sorted(p.name for p in (base / "photos" / "test").iterdir())
    assert left == sorted(f"{n}.jpg" for n in TEST)  # the copies went, the held-out photos stayed
    assert len(list((base / "photos" / "train").iterdir())) == 11  # the originals stayed
    assert len(list((base / "quarantine").rglob("*.jpg"))) == 4


def _move_again(cmd, d, text, base, rel_pairs) -> None:  # type: ignore[no-untyped-def]
    assert "0 of 5 images under" in text.stdout and "4 images in quarantine left out" in text.stdout
    assert len(list((base / "quarantine").glob("manifest-*.json"))) == 1  # no manifest for nothing
    assert "nothing to move" in text.stderr


def _undo(cmd, d, text, base, rel_pairs) -> None:  # type: ignore[no-untyped-def]
    assert text.stdout.strip() == "restored 4 files"
    assert len(list((base / "photos" / "test").iterdir())) == 9


def _prefer(cmd, d, text, base, rel_pairs) -> None:  # type: ignore[no-untyped-def]
    import pyarrow.parquet as pq

    assert cmd == "lookalike dedup --index photos.idx --prefer photos/test --out all.parquet"
    assert d["quarantined"] == 0 and len(d["matches"]) == 0
    keepers = {_rel(g["keeper"]["path"], base) for g in d["groups"]}
    assert "test/bsd68_105025.jpg" in keepers and "test/bsd68_102061_small.jpg" in keepers  # under photos/test
    table = pq.read_table(base / "all.parquet")
    assert table.column_names == ["group", "role", "path", "distance_to_keeper", "tier", "label", "width", "height",
                                  "bytes"]
    assert table.num_rows == sum(1 + len(g["duplicates"]) for g in d["groups"])
    assert set(table.column("tier").to_pylist()) >= {"exact", "near"}
    assert json.loads(table.schema.metadata[b"lookalike"])["threshold"] == pytest.approx(0.29)


def _from_csv(cmd, d, text, base, rel_pairs) -> None:  # type: ignore[no-untyped-def]
    assert cmd == "lookalike label --index photos.idx --from decisions.csv"
    assert "labels: 3 added" in text.stdout


def _list(cmd, d, text, base, rel_pairs) -> None:  # type: ignore[no-untyped-def]
    out = text.stdout
    lines = [ln for ln in out.splitlines() if ln.startswith(("same", "different"))]
    assert len(lines) == 5 and out.rstrip().endswith("5 labels")
    assert sum(ln.startswith("different") for ln in lines) == 2


def _calibrate(cmd, d, text, base, rel_pairs) -> None:  # type: ignore[no-untyped-def]
    out = text.stdout
    assert cmd == "lookalike calibrate --index photos.idx"
    m = re.search(r"threshold ([0-9.]+) \(efficientnet_lite0 distance <= threshold = duplicate\): precision "
                  r"1\.000, recall 0\.667 on 5 pairs \(3 judged the same\)", out)  # the close-up is farther than a pan
    assert m, out
    assert "stored as the dedup default and near-copy boundary of photos.idx" in out


def _after_calibration(cmd, d, text, base, rel_pairs) -> None:  # type: ignore[no-untyped-def]
    assert d["threshold_source"] == "stored with the index"
    assert d["tiers"]["source"].startswith("calibrated from 5 labels")
    assert d["tiers"]["near"] == pytest.approx(d["threshold"]) and d["threshold"] < 0.29
    pan = tuple(sorted(PAN))
    assert pan not in rel_pairs(d["pairs"])
    assert tuple(sorted((DETAIL, "train/bsd68_108070.jpg"))) in rel_pairs(d["pairs"])  # labelled same: always


STEPS = [_index, _first_look, _wider, _label_different, _wider_again, _label_same, _between, _html, _move,
         _move_again, _undo, _prefer, _from_csv, _list, _calibrate, _after_calibration]


def test_bad_input_gets_a_clear_error(tmp_path: Path) -> None:
    """A user's mistakes: one line of error and a hint, never a traceback; nothing written."""
    make_photos(tmp_path / "photos")
    from lookalike.indexer import build_index

    build_index(tmp_path / "photos" / "test", tmp_path / "idx", metric="efficientnet_lite0", progress=False,
                workers=0)
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    (tmp_path / "bad.csv").write_text("a,b,same\nphotos/test/bsd68_105025.jpg,photos/test/nope.jpg,1\n")
    (tmp_path / "bad_value.csv").write_text("a,b,same\nphotos/test/a.jpg,photos/test/b.jpg,maybe\n")
    cases = {
        "lookalike label --index idx --different photos/test/bsd68_105025.jpg photos/test/nope.jpg": "not in the index",
        "lookalike label --index idx --from bad.csv": "not in the index",
        "lookalike label --index idx --from bad_value.csv": "is not a number",
        "lookalike label --index nowhere --same a.jpg b.jpg": "no index",
        "lookalike dedup --index idx --between photos/test photos/test": "must not overlap",
        "lookalike dedup --index idx --between photos/test photos/train": "no indexed image under",
        "lookalike dedup --index idx --out report.txt": "must end in",
        "lookalike dedup --undo missing.json": "manifest not found",
        "lookalike calibrate --index idx": "no labelled pair",
    }
    for cmd, message in cases.items():
        r = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 2, (cmd, r.stderr)
        assert message in r.stderr and error_lines(r.stderr)[0].startswith("error: "), (cmd, r.stderr)
        assert "Traceback" not in r.stderr, cmd
    assert not (tmp_path / "report.txt").exists()
    listed = subprocess.run(["bash", "-c", "lookalike label --index idx --list"], cwd=tmp_path, env=env,
                            capture_output=True, text=True).stdout
    assert listed.strip() == "0 labels"


def test_labels_survive_renames_and_moves(tmp_path: Path) -> None:
    """A label is keyed by content: renaming or moving a labelled file, then re-indexing, keeps the verdict."""
    photos = tmp_path / "photos"
    (photos / "a").mkdir(parents=True)
    for name in TRAIN[:3]:
        shutil.copyfile(PHOTOS / f"{name}.jpg", photos / "a" / f"{name}.jpg")
    ImageEnhance.Brightness(Image.open(PHOTOS / f"{TRAIN[0]}.jpg").convert("RGB")).enhance(1.2).save(
        photos / "a" / "bright.jpg", quality=90)
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}

    def run(cmd: str) -> str:
        r = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, (cmd, r.stderr)
        return r.stdout

    run("lookalike index photos --index idx --metric efficientnet_lite0 --no-progress")
    assert len(json.loads(run("lookalike dedup --index idx --json"))["pairs"]) == 1
    run(f"lookalike label --index idx --different photos/a/{TRAIN[0]}.jpg photos/a/bright.jpg")
    (photos / "b").mkdir()
    os.rename(photos / "a" / "bright.jpg", photos / "b" / "renamed.jpg")  # moved and renamed
    out = run("lookalike index photos --index idx --metric efficientnet_lite0 --no-progress")
    assert "moved 1" in out  # relinked by content hash, not embedded again
    d = json.loads(run("lookalike dedup --index idx --json"))
    assert d["pairs"] == [] and len(d["hidden"]) == 1
    assert {Path(d["hidden"][0][k]).name for k in "ab"} == {f"{TRAIN[0]}.jpg", "renamed.jpg"}
    shutil.copyfile(photos / "b" / "renamed.jpg", photos / "b" / "another_copy.jpg")  # the same bytes again
    run("lookalike index photos --index idx --metric efficientnet_lite0 --no-progress")
    d = json.loads(run("lookalike dedup --index idx --json"))
    assert [p["tier"] for p in d["pairs"]] == ["exact"]  # the two copies; the label holds for both
    assert len(d["hidden"]) == 2
