"""The Metric base class: preprocess, embed, distance, with explicit shapes and typed errors."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from lookalike.common.errors import InvalidArgument
from lookalike.data.transforms import build_transform
from lookalike.metric._pretrained import MetricCfg

_logger = logging.getLogger(__name__)

_DTYPES = {
    None: torch.float32,
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}


def get_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as given, else cuda > mps > cpu."""
    if device is not None:
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise InvalidArgument(f"device {device!r} requested but CUDA is not available here; use 'cpu'")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def get_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise InvalidArgument(f"dtype {dtype} not supported; use float32, bfloat16 or float16")
        return dtype
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise InvalidArgument(f"unknown dtype {dtype!r}; choose from auto, fp32, bf16, fp16") from None


def sample_hash(path: Path, *, chunks: int = 16, chunk_size: int = 1 << 16) -> str:
    """sha256 over the size and ``chunks`` evenly spaced slices of a file (fast on GB checkpoints)."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= chunks * chunk_size:
            h.update(f.read())
        else:
            step = (size - chunk_size) // (chunks - 1)
            for j in range(chunks):
                f.seek(j * step)
                h.update(f.read(chunk_size))
    return h.hexdigest()


def compute_fingerprint(cfg: MetricCfg, files: Mapping[str, Path]) -> str:
    """A short id of (metric name, its weight files' content): vectors with different fingerprints never mix."""
    h = hashlib.sha256(cfg.name.encode())
    for rel in sorted(files):
        h.update(rel.encode())
        h.update(sample_hash(files[rel]).encode())
    return f"{cfg.name}-{h.hexdigest()[:16]}"


class Metric(nn.Module):
    """A similarity measure.

    Attributes:
        name: registry name.
        kind: "embedding" (``embed`` gives vectors that can be indexed) or "pairwise" (``distance`` only).
        dim: embedding width (None for pairwise metrics).
        lower_is_better: True when a lower ``distance`` value means more similar.
        fingerprint: id of the name + weight files; stored with every index.
    """

    def __init__(self, cfg: MetricCfg, *, device: torch.device, dtype: torch.dtype, fingerprint: str):
        super().__init__()
        self.cfg = cfg
        self.name = cfg.name
        self.kind = cfg.kind
        self.lower_is_better = cfg.lower_is_better
        self.fingerprint = fingerprint
        self._device = torch.device(device)  # only for metrics without tensors (pixel measures); see ``device``
        self.dtype = dtype
        self.dim: int | None = None
        self._autocast: bool | None = None
        self._transform = build_transform(cfg.preprocess)

    @property
    def device(self) -> torch.device:
        """Where the model is now: the device of its first parameter or buffer (so it follows ``metric.to(...)``)."""
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return self._device

    def _apply(self, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        # ``to()`` / ``cuda()`` / ``cpu()`` end here: follow them for metrics that hold no tensor.
        out = super()._apply(fn, *args, **kwargs)
        with contextlib.suppress(Exception):
            self._device = fn(torch.empty(0, device=self._device)).device
        return out

    @property
    def autocast(self) -> bool:
        """Reduced precision runs as autocast on the CPU (weights stay fp32 there); weights are cast elsewhere.

        Follows the current device unless set explicitly (``metric.autocast = False`` after casting the weights).
        """
        if self._autocast is not None:
            return self._autocast
        return self.dtype != torch.float32 and self.device.type == "cpu"

    @autocast.setter
    def autocast(self, value: bool) -> None:
        self._autocast = bool(value)

    @property
    def input_size(self) -> int:
        return self.cfg.preprocess.size

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        """PIL image → float32 tensor (3, S, S) in [0, 1] (stack them into a batch for ``embed``)."""
        return self._transform(img)

    def check_batch(self, x: torch.Tensor, what: str = "batch") -> torch.Tensor:
        """Validate a (B, 3, S, S) float batch in [0, 1] and move it to the metric's current device."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() == 3:
            x = x.unsqueeze(0)
        s = self.input_size
        if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != (s, s):
            raise InvalidArgument(
                f"{what} has shape {tuple(x.shape)}; {self.name} expects (B, 3, {s}, {s}) in [0, 1] "
                f"(use metric.preprocess on each PIL image)"
            )
        if not x.is_floating_point():
            raise InvalidArgument(f"{what} has dtype {x.dtype}; expected floats in [0, 1] (use metric.preprocess)")
        return x.to(self.device, torch.float32, non_blocking=True)  # the device now, not the one at load time

    @contextlib.contextmanager
    def _precision(self) -> Iterator[None]:
        """Autocast for reduced precision on the CPU (weights stay fp32 there); plain weights elsewhere."""
        if self.autocast:
            with torch.autocast(self.device.type, dtype=self.dtype):
                yield
        else:
            yield

    def enable_compile(self, **kwargs: object) -> Metric:
        """Compile the inner network with ``torch.compile``; returns self.

        Opt-in: measured slower on a 2-core CPU (see docs/benchmarks.md); meant for GPUs. Keyword arguments go to
        ``torch.compile``.
        """
        for attr in ("net", "model"):
            inner = getattr(self, attr, None)
            if isinstance(inner, nn.Module):
                inner.compile(**kwargs)
                _logger.info("compiled %s.%s", self.name, attr)
                return self
        _logger.info("metric %s has no network to compile", self.name)
        return self

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] → (B, dim) float32 unit vectors. Only for kind == "embedding"."""
        raise TypeError(f"metric {self.name!r} is pairwise: it has no embed(); use distance(a, b)")

    def distance_embeddings(self, ea: torch.Tensor, eb: torch.Tensor) -> torch.Tensor:
        """1 - cosine of unit embeddings, row by row: (B,), in [0, 2], higher means more different."""
        return 1.0 - (ea * eb).sum(dim=-1)

    @torch.inference_mode()
    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Distance between two batches of images, row by row → (B,) float32 on the CPU.

        For embedding metrics this is 1 - cosine in [0, 2]; higher means more different.
        """
        a = self.check_batch(a, "a")
        b = self.check_batch(b, "b")
        if a.shape[0] != b.shape[0]:
            raise InvalidArgument(f"a and b must have the same batch size, got {a.shape[0]} and {b.shape[0]}")
        return self.distance_embeddings(self.embed(a), self.embed(b)).float().cpu()

    @property
    def has_distance_map(self) -> bool:
        """True when ``distance_map`` can say where two images differ (efficientnet_lite0, LPIPS, single-branch
        ViTs, DiffSim)."""
        return type(self).distance_map is not Metric.distance_map

    def distance_map(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Where A differs from B: (B, h, w) float32 on the CPU, higher = more different, on A's grid.

        Raises:
            TypeError: this metric has no spatial map (``has_distance_map`` is False).
        """
        raise TypeError(f"metric {self.name!r} cannot say where two images differ (no distance map); maps exist "
                        f"for efficientnet_lite0 (no download), LPIPS, DiffSim, DreamSim patch variants and "
                        f"single-branch ViT backbones")

    def extra_repr(self) -> str:
        return f"name={self.name!r}, kind={self.kind!r}, dim={self.dim}, device={self.device}, dtype={self.dtype}"


def fit_batch_size(per_image_bytes: float, free_bytes: float, *, fraction: float = 0.6, cap: int = 1024,
                   floor: int = 1) -> int:
    """The largest power of two ≤ ``cap`` whose activations (``per_image_bytes`` each) fit in ``fraction`` of
    ``free_bytes`` (at least ``floor``)."""
    if per_image_bytes <= 0:
        return cap
    n = int(fraction * free_bytes // per_image_bytes)
    if n < floor:
        return floor
    return min(cap, 1 << (n.bit_length() - 1))


def suggest_batch_size(metric: Metric, *, cap: int = 1024, cpu_default: int = 32) -> int:
    """A batch size for ``metric.embed`` that fits the device.

    CPU: ``cpu_default`` (throughput is flat beyond a few dozen images there). CUDA: a probe batch measures the peak
    memory per image, then the largest power of two that fits 60 % of the free memory, at most ``cap``.
    """
    if metric.device.type != "cuda":
        return cpu_default
    probe = 8
    x = torch.rand(probe, 3, metric.input_size, metric.input_size, device=metric.device)
    torch.cuda.synchronize(metric.device)
    torch.cuda.reset_peak_memory_stats(metric.device)
    base = torch.cuda.memory_allocated(metric.device)
    metric.embed(x)
    torch.cuda.synchronize(metric.device)
    per_image = (torch.cuda.max_memory_allocated(metric.device) - base) / probe
    free, _total = torch.cuda.mem_get_info(metric.device)
    size = fit_batch_size(per_image, free, cap=cap)
    _logger.info("batch size %d for %s (%.1f MB activations per image, %.1f GB free)", size, metric.name,
                 per_image / 1e6, free / 1e9)
    return size


def center_l2(x: torch.Tensor, *, center: bool = True) -> torch.Tensor:
    """Subtract the mean over the last dim (optional), then L2-normalize over it, in float32."""
    x = x.float()
    if center:
        x = x - x.mean(dim=-1, keepdim=True)
    return x / x.norm(dim=-1, keepdim=True)
