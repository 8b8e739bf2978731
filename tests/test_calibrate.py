"""Threshold calibration: the precision/recall curve by hand, the threshold at a target precision, the plot, and the
CLI storing the threshold as an index's dedup default."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from lookalike.data.triplets import read_pairs_csv
from lookalike.judge.calibrate import (
    calibrate_threshold,
    plot_calibration,
    precision_recall_curve,
    threshold_at_precision,
)
from lookalike.metric import load_metric


def test_curve_by_hand() -> None:
    d = [0.1, 0.2, 0.2, 0.3, 0.5]
    same = [1, 1, 0, 1, 0]
    c = precision_recall_curve(d, same)
    # thresholds at each distinct value; ties (0.2, 0.2) enter together
    assert c.thresholds.tolist() == [0.1, 0.2, 0.3, 0.5]
    assert c.precision == pytest.approx([1.0, 2 / 3, 3 / 4, 3 / 5])
    assert c.recall == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0])
    assert threshold_at_precision(c, 0.75) == pytest.approx((0.3, 0.75, 1.0))
    assert threshold_at_precision(c, 0.7) == pytest.approx((0.3, 0.75, 1.0))  # loosest threshold reaching it
    assert threshold_at_precision(c, 0.8) == pytest.approx((0.1, 1.0, 1 / 3))
    # soft labels: a pair judged "same" by half the people counts half
    s = precision_recall_curve([0.1, 0.2], [0.5, 1.0])
    assert s.precision == pytest.approx([0.5, 0.75]) and s.recall == pytest.approx([0.5 / 1.5, 1.0])
    # similarity direction (PSNR): higher values enter first
    p = precision_recall_curve([40.0, 30.0, 20.0], [1, 0, 1], lower_is_better=False)
    assert p.thresholds.tolist() == [40.0, 30.0, 20.0] and p.precision == pytest.approx([1.0, 0.5, 2 / 3])


def test_unreachable_target_and_bad_input() -> None:
    c = precision_recall_curve([0.1, 0.2], [0, 1])
    thr, prec, rec = threshold_at_precision(c, 0.9)
    assert thr is None and prec == pytest.approx(0.5) and rec == 1.0
    with pytest.raises(ValueError, match="no pair was judged the same"):
        precision_recall_curve([0.1], [0])
    with pytest.raises(ValueError, match="target precision"):
        threshold_at_precision(c, 0.0)


@pytest.fixture(scope="module")
def pairs_csv(photos_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Judged pairs over real photos: a photo and its edited copy are 'same', two different photos are not."""
    root = tmp_path_factory.mktemp("pairs")
    photos = sorted(photos_dir.glob("*.jpg"))[:8]
    rows = []
    for i, ph in enumerate(photos):
        img = Image.open(ph).convert("RGB")
        edited = ImageEnhance.Contrast(img).enhance(1.1).resize((img.width // 2, img.height // 2))
        edited.save(root / f"{ph.stem}_copy.jpg", quality=80)
        img.save(root / ph.name)
        rows.append([ph.name, f"{ph.stem}_copy.jpg", 1])
        rows.append([ph.name, photos[(i + 1) % len(photos)].name, 0])
    path = root / "pairs.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["a", "b", "same"], *rows])
    return path


def test_calibrate_real_cnn_and_plot(pairs_csv: Path, tmp_path: Path) -> None:
    metric = load_metric("efficientnet_lite0", device="cpu")
    cal = calibrate_threshold(metric, read_pairs_csv(pairs_csv), target_precision=0.95)
    assert cal.count == 16 and cal.positives == 8
    assert cal.threshold is not None and cal.precision >= 0.95 and cal.recall >= 0.85
    png = plot_calibration(cal, tmp_path / "plots" / "pr.png")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (1000, 460)
        px = np.asarray(im.convert("RGB"))
    assert (px != 255).any(axis=-1).mean() > 0.01  # something was drawn
    assert ((px[..., 0] > 150) & (px[..., 1] < 100)).any()  # the red marker of the chosen threshold
    d = cal.to_dict(with_curve=True)
    assert d["threshold"] == cal.threshold and len(d["curve"]["thresholds"]) >= 2


def test_cli_calibrate_stores_index_default(pairs_csv: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from lookalike.app.cli import main
    from lookalike.indexer import build_index, open_index

    index = tmp_path / "idx"
    build_index(pairs_csv.parent, index, metric="test_vit_tiny", device="cpu", workers=0, progress=False)
    rc = main(["calibrate", "--pairs", str(pairs_csv), "--metric", "test_vit_tiny", "--device", "cpu",
               "--target-precision", "0.5", "--index", str(index), "--plot", str(tmp_path / "p.png"), "--json",
               "--no-progress"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["threshold"] is not None and out["fingerprint"]
    assert (tmp_path / "p.png").is_file()
    with open_index(index) as idx:
        assert idx.build.dedup_threshold == pytest.approx(out["threshold"])
    rc = main(["calibrate", "--pairs", str(pairs_csv), "--metric", "test_vit_tiny", "--uncentered", "--index",
               str(index)])
    assert rc == 2 and "drop --centered/--uncentered" in capsys.readouterr().err
