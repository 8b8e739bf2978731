"""Agreement with human judgements: 2AFC scores (DreamSim / LPIPS formula) and JND mAP (LPIPS).

2AFC: for a triplet (ref, left, right, p) with ``p`` = the fraction of people who judged ``right`` closer,
d0 = d(ref, left), d1 = d(ref, right), the triplet scores ``1 - p`` if d0 < d1, ``p`` if d1 < d0 and 0.5 on a tie;
the 2AFC score is the mean (``evaluation/score.py`` in DreamSim, ``score_2afc_dataset`` in LPIPS). For metrics where
higher means more similar (PSNR, SSIM) the comparison is flipped.

Embedding metrics embed every distinct image once, however many triplets use it (and across splits, through a
shared ``cache``). Pairwise metrics compare each needed pair once.

The DreamSim README accuracies were computed **without** mean-centring (``evaluation/eval_percep.py`` builds the
model with ``normalize_embeds=False``): pass ``center=False`` (``--uncentered``) to reproduce them. lookalike's
DreamSim metrics centre by default, like ``dreamsim()``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from lookalike.common.errors import InvalidArgument
from lookalike.data.images import ImageDecodeError, open_image
from lookalike.data.loader import ImageFileDataset, create_loader
from lookalike.data.triplets import Pair, Triplet

_logger = logging.getLogger(__name__)

EmbedFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TwoAFCResult:
    """The 2AFC score of one metric on one split.

    Attributes:
        metric: metric name.
        dataset: dataset kind ("nights", "bapps", "triplets").
        split: split name.
        score: mean per-triplet agreement with the humans, in [0, 1] (1 = always sides with the majority and the
            majority is unanimous).
        count: number of triplets.
        ci_low: lower end of the bootstrap confidence interval.
        ci_high: upper end.
        level: the interval's confidence level (0.95).
        centered: whether embeddings were mean-centred (None: the metric has no such option).
    """

    metric: str
    dataset: str
    split: str
    score: float
    count: int
    ci_low: float
    ci_high: float
    level: float = 0.95
    centered: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class JNDResult:
    """The JND mAP of one metric on one split (LPIPS ``score_jnd_dataset``).

    Attributes:
        metric: metric name.
        dataset: dataset kind.
        split: split name.
        map: average precision of "same" judgements ranked by increasing distance, in [0, 1].
        count: number of pairs.
        centered: see TwoAFCResult.
    """

    metric: str
    dataset: str
    split: str
    map: float
    count: int
    centered: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- pure scoring --------------------------------------------------------------------------------------------------


def _as_1d(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float64).reshape(-1)
    if np.isnan(a).any():
        raise InvalidArgument(f"{name} holds NaN at position(s) {np.flatnonzero(np.isnan(a))[:5].tolist()}")
    return a


def score_2afc(d_left: Any, d_right: Any, p: Any, *, lower_is_better: bool = True) -> np.ndarray:
    """Per-triplet 2AFC agreement.

    Args:
        d_left: distances d(ref, left), shape (N,).
        d_right: distances d(ref, right), shape (N,).
        p: fraction of people who judged ``right`` closer, in [0, 1], shape (N,).
        lower_is_better: True when a lower value means more similar (distances); False for similarities
            (PSNR, SSIM).

    Returns:
        (N,) float64: ``1 - p`` where the metric picks left, ``p`` where it picks right, 0.5 on a tie.

    Raises:
        ValueError: shapes differ, NaN values, or ``p`` outside [0, 1].
    """
    d0, d1, pp = _as_1d(d_left, "d_left"), _as_1d(d_right, "d_right"), _as_1d(p, "p")
    if not d0.shape == d1.shape == pp.shape:
        raise InvalidArgument(f"d_left, d_right and p must have the same length, got {d0.size}, {d1.size}, {pp.size}")
    if ((pp < 0) | (pp > 1)).any():
        raise InvalidArgument("p must be in [0, 1] (the fraction of people who judged 'right' closer)")
    if not lower_is_better:
        d0, d1 = -d0, -d1
    return np.where(d0 < d1, 1.0 - pp, np.where(d1 < d0, pp, 0.5))


def bootstrap_ci(scores: Any, *, level: float = 0.95, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``scores`` (resampling items with replacement).

    Args:
        scores: per-item scores, shape (N,).
        level: confidence level in (0, 1).
        n_boot: number of resamples.
        seed: random seed (the interval is reproducible).

    Returns:
        (low, high); (nan, nan) for an empty input.
    """
    s = _as_1d(scores, "scores")
    if not 0.0 < level < 1.0:
        raise InvalidArgument(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise InvalidArgument(f"n_boot must be >= 1, got {n_boot}")
    if s.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // s.size)  # bounded memory for large N
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, s.size, size=(stop - start, s.size))
        means[start:stop] = s[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under a precision/recall curve with precision made monotone (PASCAL VOC, as LPIPS ``voc_ap``)."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def jnd_map(distances: Any, same: Any, *, lower_is_better: bool = True) -> float:
    """JND mAP (LPIPS ``score_jnd_dataset``): rank pairs from most to least similar, treat ``same`` (the fraction
    of people who judged the pair the same) as a soft positive label, and take the average precision.

    Args:
        distances: (N,) metric values per pair.
        same: (N,) in [0, 1].
        lower_is_better: False for similarities (PSNR, SSIM): pairs are then ranked by decreasing value.

    Returns:
        mAP in [0, 1].

    Raises:
        ValueError: shapes differ, NaN values, ``same`` outside [0, 1], or no positive judgement at all.
    """
    d, s = _as_1d(distances, "distances"), _as_1d(same, "same")
    if d.shape != s.shape:
        raise InvalidArgument(f"distances and same must have the same length, got {d.size} and {s.size}")
    if ((s < 0) | (s > 1)).any():
        raise InvalidArgument("same must be in [0, 1]")
    if s.sum() <= 0:
        raise InvalidArgument("no pair was judged the same: average precision is undefined")
    order = np.argsort(d if lower_is_better else -d, kind="stable")
    s_sorted = s[order]
    tp = np.cumsum(s_sorted)
    fp = np.cumsum(1.0 - s_sorted)
    fn = s.sum() - tp
    precision = tp / (tp + fp)
    recall = tp / (tp + fn)
    return average_precision(recall, precision)


# --- distances from images -----------------------------------------------------------------------------------------


def embed_paths(embed: EmbedFn, transform: Callable[[Image.Image], torch.Tensor], paths: Sequence[str], *,
                batch_size: int = 32, workers: int = 0, progress: bool = False, desc: str = "embed") -> np.ndarray:
    """Embed image files in order.

    Args:
        embed: (B, 3, S, S) in [0, 1] → (B, D) tensor.
        transform: PIL image → (3, S, S) tensor (a metric's ``preprocess``).
        paths: image files.
        batch_size: images per batch.
        workers: decoding processes (0: decode here).
        progress: show a progress bar on stderr.
        desc: progress bar label.

    Returns:
        (N, D) float32 array, row i for ``paths[i]``.

    Raises:
        ImageDecodeError: an unreadable image (named).
    """
    if not paths:
        return np.zeros((0, 0), dtype=np.float32)
    loader = create_loader(ImageFileDataset(list(enumerate(paths)), transform), batch_size=batch_size,
                           workers=workers)
    out: np.ndarray | None = None
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for batch in loader:
            if batch.failures:
                f = batch.failures[0]
                raise ImageDecodeError(f.path, f.reason)
            assert batch.pixels is not None
            e = embed(batch.pixels).detach().float().cpu().numpy()
            if out is None:
                out = np.empty((len(paths), e.shape[1]), dtype=np.float32)
            out[batch.keys] = e
            bar.update(len(batch))
    assert out is not None
    return out


class _PairImages(Dataset):
    """(i, tensor a, tensor b) for pairwise metrics; decoding errors become ImageDecodeError."""

    def __init__(self, pairs: Sequence[tuple[str, str]], transform: Callable[[Image.Image], torch.Tensor]):
        self.pairs = list(pairs)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        a, b = self.pairs[i]
        return i, self.transform(open_image(a)), self.transform(open_image(b))


def resolve_center(metric: Any, center: bool | None) -> bool | None:
    """The mean-centring in effect for ``metric`` when ``center`` is asked for (None: the metric's own default).

    Nothing is changed on ``metric``: models shared between callers (the app's sessions) keep their settings;
    ``center`` travels as an argument to ``metric.embed``.

    Raises:
        InvalidArgument: ``center`` is given but the metric has no centring option.
    """
    has = hasattr(metric, "center")
    if center is None:
        return bool(metric.center) if has else None
    if not has:
        raise InvalidArgument(f"metric {metric.name!r} has no centring option",
                              hint="mean-centring applies to the DreamSim-style and UniSim metrics only")
    return bool(center)


def pair_distances(metric: Any, pairs: Sequence[tuple[str, str]], *, center: bool | None = None, batch_size: int = 32,
                   workers: int = 0, progress: bool = False, cache: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """``metric`` distances for image-file pairs, each distinct image embedded once.

    Args:
        metric: a loaded Metric (embedding or pairwise).
        pairs: (path a, path b) tuples.
        center: mean-centre the embeddings (True/False) or use the metric's default (None); see ``resolve_center``.
        batch_size: images (or pairs) per batch.
        workers: decoding processes.
        progress: progress bar on stderr.
        cache: path → embedding, read and filled (embedding metrics only); share it between calls on the same
            metric (and centring) to embed each image once across splits.

    Returns:
        (N,) float64 metric values (higher = more different when ``metric.lower_is_better``).
    """
    if not pairs:
        return np.zeros(0)
    if center is not None:
        resolve_center(metric, center)  # validates
    if metric.kind == "embedding":
        cache = {} if cache is None else cache
        todo = [p for p in dict.fromkeys(x for pr in pairs for x in pr) if p not in cache]
        if todo:
            embed = metric.embed if center is None else functools.partial(metric.embed, center=center)
            emb = embed_paths(embed, metric.preprocess, todo, batch_size=batch_size, workers=workers,
                              progress=progress, desc=f"embed ({metric.name})")
            cache.update(zip(todo, emb, strict=True))
        out = np.empty(len(pairs))
        for start in range(0, len(pairs), 4096):
            chunk = pairs[start:start + 4096]
            ea = torch.from_numpy(np.stack([cache[a] for a, _ in chunk]))
            eb = torch.from_numpy(np.stack([cache[b] for _, b in chunk]))
            out[start:start + len(chunk)] = metric.distance_embeddings(ea, eb).double().numpy()
        return out
    unique = list(dict.fromkeys(pairs))
    where = {pr: i for i, pr in enumerate(unique)}
    loader = torch.utils.data.DataLoader(_PairImages(unique, metric.preprocess), batch_size=batch_size,
                                         num_workers=workers, shuffle=False)
    values = np.empty(len(unique))
    with tqdm(total=len(unique), desc=f"compare ({metric.name})", unit="pair", disable=not progress,
              leave=False) as bar:
        for idx, a, b in loader:
            values[idx.numpy()] = metric.distance(a, b).double().numpy()
            bar.update(len(idx))
    return values[[where[pr] for pr in pairs]]


def triplet_distances(metric: Any, triplets: Sequence[Triplet], **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """(d(ref, left), d(ref, right)) for each triplet; keyword arguments as ``pair_distances``."""
    pairs = [(t.ref, t.left) for t in triplets] + [(t.ref, t.right) for t in triplets]
    d = pair_distances(metric, pairs, **kwargs)
    n = len(triplets)
    return d[:n], d[n:]


def evaluate_2afc(metric: Any, triplets: Sequence[Triplet], *, center: bool | None = None, batch_size: int = 32,
                  workers: int = 0, progress: bool = False, level: float = 0.95, n_boot: int = 1000, seed: int = 0,
                  cache: dict[str, np.ndarray] | None = None) -> TwoAFCResult:
    """2AFC score of ``metric`` on ``triplets``, with a bootstrap confidence interval.

    Args:
        metric: a loaded Metric.
        triplets: a TripletSet (or any sequence of Triplet).
        center: mean-centre the embeddings (True), don't (False: reproduces the DreamSim paper numbers), or keep
            the metric's default (None).
        batch_size: images per batch.
        workers: decoding processes.
        progress: progress bar on stderr.
        level: confidence level of the interval.
        n_boot: bootstrap resamples.
        seed: bootstrap seed.
        cache: shared embedding cache (see ``pair_distances``); keep one per (metric, centring).

    Returns:
        A TwoAFCResult.

    Raises:
        ValueError: no triplets, an unreadable image, or ``center`` on a metric without that option.
    """
    if len(triplets) == 0:
        raise InvalidArgument("no triplets to evaluate")
    centered = resolve_center(metric, center)
    d0, d1 = triplet_distances(metric, triplets, center=center, batch_size=batch_size, workers=workers,
                               progress=progress, cache=cache)
    scores = score_2afc(d0, d1, [t.p for t in triplets], lower_is_better=metric.lower_is_better)
    lo, hi = bootstrap_ci(scores, level=level, n_boot=n_boot, seed=seed)
    res = TwoAFCResult(metric=metric.name, dataset=getattr(triplets, "name", "triplets"),
                       split=getattr(triplets, "split", "all"), score=float(scores.mean()), count=len(scores),
                       ci_low=lo, ci_high=hi, level=level, centered=centered)
    _logger.info("2AFC %s on %s/%s: %.4f [%.4f, %.4f] (n=%d)", res.metric, res.dataset, res.split, res.score, lo, hi,
                 res.count)
    return res


def evaluate_jnd(metric: Any, pairs: Sequence[Pair], *, center: bool | None = None, batch_size: int = 32,
                 workers: int = 0, progress: bool = False, cache: dict[str, np.ndarray] | None = None) -> JNDResult:
    """JND mAP of ``metric`` on same/different ``pairs`` (a PairSet); arguments as ``evaluate_2afc``."""
    if len(pairs) == 0:
        raise InvalidArgument("no pairs to evaluate")
    centered = resolve_center(metric, center)
    d = pair_distances(metric, [(q.a, q.b) for q in pairs], center=center, batch_size=batch_size, workers=workers,
                       progress=progress, cache=cache)
    m = jnd_map(d, [q.same for q in pairs], lower_is_better=metric.lower_is_better)
    res = JNDResult(metric=metric.name, dataset=getattr(pairs, "name", "pairs"), split=getattr(pairs, "split", "all"),
                    map=m, count=len(pairs), centered=centered)
    _logger.info("JND mAP %s on %s/%s: %.4f (n=%d)", res.metric, res.dataset, res.split, m, res.count)
    return res


def format_2afc(results: Sequence[TwoAFCResult]) -> str:
    """A plain-text table of 2AFC results."""
    level = f"{round(100 * results[0].level)}% CI" if results else "CI"
    lines = [f"{'split':<20} {'2AFC':>7} {level:>17} {'n':>7}"]
    for r in results:
        lines.append(f"{r.split:<20} {r.score:7.4f} [{r.ci_low:.4f}, {r.ci_high:.4f}] {r.count:7d}")
    return "\n".join(lines)

