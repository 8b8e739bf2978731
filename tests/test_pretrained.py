"""Regression against the published DreamSim demo distances, with the official weights (skipped when absent).

Point ``LOOKALIKE_PRETRAINED_DIR`` at a folder with the official files (an extracted dreamsim cache folder works),
or have them in the user cache (``lookalike weights download dreamsim``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from lookalike.metric import WeightsNotFound, load_metric

pytestmark = pytest.mark.pretrained
_USER_HOME = os.environ.get("LOOKALIKE_HOME")  # read before the autouse fixture points it at a temp folder


def _load(monkeypatch: pytest.MonkeyPatch, name: str):
    explicit = os.environ.get("LOOKALIKE_PRETRAINED_DIR")
    if _USER_HOME:
        monkeypatch.setenv("LOOKALIKE_HOME", _USER_HOME)
    else:
        monkeypatch.delenv("LOOKALIKE_HOME")
    monkeypatch.setenv("LOOKALIKE_OFFLINE", "1")
    try:
        return load_metric(name, device="cpu", weights=explicit if explicit else None)
    except WeightsNotFound as e:
        pytest.skip(f"official weights not present: {str(e).splitlines()[0]}")


def test_demo_distances_match_the_published_values(monkeypatch: pytest.MonkeyPatch, demo_dir: Path) -> None:
    metric = _load(monkeypatch, "dreamsim")
    x = torch.stack([metric.preprocess(Image.open(demo_dir / n)) for n in ("ref_1.png", "img_a_1.png", "img_b_1.png")])
    d = metric.distance(x[[0, 0]], x[[1, 2]])
    assert round(float(d[0]), 4) == 0.4453
    assert round(float(d[1]), 4) == 0.2756
