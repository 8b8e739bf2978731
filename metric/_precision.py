"""``dtype="auto"``: bf16 where the hardware runs it natively, fp32 elsewhere; the names dtypes are recorded under.

Native bf16 means:

* CUDA: a device of compute capability 8.0 or newer (Ampere, Hopper...), where bf16 matmuls run on tensor cores.
  ``torch.cuda.is_bf16_supported()`` alone is not enough: it also says yes where bf16 is only emulated.
* CPU: the CPU advertises AMX-BF16 (``amx_bf16``) or AVX-512 BF16 (``avx512_bf16``), read once from the CPU flags
  (``/proc/cpuinfo`` on Linux). Without them oneDNN emulates bf16 and a model runs many times slower than in fp32
  (efficientnet_lite0 on an AVX2-only AMD EPYC: ~0.5 img/s in bf16 against ~18 in fp32), so bf16 is never assumed.
* Apple MPS and anything else: fp32.

``LOOKALIKE_CPU_BF16=1`` / ``0`` overrides the CPU detection (e.g. in a VM that hides the flags).
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import torch

_logger = logging.getLogger(__name__)

AUTO = "auto"
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
ENV_CPU_BF16 = "LOOKALIKE_CPU_BF16"

_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def dtype_name(dtype: torch.dtype) -> str:
    """The short name a dtype is recorded under ("fp32", "bf16", "fp16")."""
    try:
        return _NAMES[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype} not supported; use float32, bfloat16 or float16") from None


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of the first CPU in a ``/proc/cpuinfo`` text (x86 ``flags`` or ARM ``Features`` line)."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """This machine's CPU feature flags (read once; empty where ``/proc/cpuinfo`` does not exist)."""
    try:
        return parse_cpu_flags(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        return frozenset()


def cpu_has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """True when the CPU runs bf16 natively (AMX-BF16 or AVX-512 BF16), or ``$LOOKALIKE_CPU_BF16`` says so.

    Args:
        flags: CPU flags to judge (default: this machine's, from ``cpu_flags()``).
    """
    env = os.environ.get(ENV_CPU_BF16, "").strip().lower()
    if env in ("1", "true", "yes", "on"):
        return True
    if env in ("0", "false", "no", "off"):
        return False
    return any(f in (cpu_flags() if flags is None else flags) for f in CPU_BF16_FLAGS)


def cuda_has_native_bf16(device: torch.device) -> bool:
    """True for a CUDA device of compute capability >= 8.0 (bf16 tensor cores)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    major, _minor = torch.cuda.get_device_capability(device)
    return major >= 8


def has_native_bf16(device: str | torch.device) -> bool:
    """Whether ``device`` runs bf16 natively (see the module docstring)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return cuda_has_native_bf16(dev)
    if dev.type == "cpu":
        return cpu_has_native_bf16()
    return False


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device) -> torch.dtype:
    """The torch dtype a metric runs in on ``device``.

    Args:
        dtype: "auto" (bf16 where ``device`` runs it natively, else fp32), "fp32" / None, "bf16", "fp16", or a
            torch dtype.
        device: the device the metric runs on.

    Returns:
        torch.float32, torch.bfloat16 or torch.float16.

    Raises:
        ValueError: an unknown dtype name.
    """
    from lookalike.metric._base import get_dtype

    if isinstance(dtype, str) and dtype.strip().lower() == AUTO:
        dt = torch.bfloat16 if has_native_bf16(device) else torch.float32
        _logger.debug("dtype auto on %s: %s", device, dtype_name(dt))
        return dt
    return get_dtype(dtype)


def describe_auto(device: str | torch.device) -> str:
    """One line saying what ``auto`` picks on ``device`` and why (for ``lookalike info``)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return f"{dev}: CUDA not available"
        cc = ".".join(map(str, torch.cuda.get_device_capability(dev)))
        why = f"compute capability {cc}"
        return f"{dev}: {'bf16' if cuda_has_native_bf16(dev) else 'fp32'} ({why})"
    if dev.type == "cpu":
        env = os.environ.get(ENV_CPU_BF16)
        found = sorted(f for f in CPU_BF16_FLAGS if f in cpu_flags())
        why = f"${ENV_CPU_BF16}={env}" if env else (f"CPU flags {', '.join(found)}" if found else
                                                    "no amx_bf16 / avx512_bf16 CPU flag")
        return f"cpu: {'bf16' if cpu_has_native_bf16() else 'fp32'} ({why})"
    return f"{dev}: fp32"
