"""Device choice and mixed precision.

``auto`` takes CUDA, then Apple MPS, then the CPU. A device the user names explicitly but that
is missing or unusable falls back to the CPU with a warning that says why (a job is never lost
because a GPU is busy), unless ``strict=True``.
"""

from __future__ import annotations

import contextlib
import logging
from typing import ContextManager

import torch

from ..errors import DeviceError

log = logging.getLogger(__name__)


def available_devices() -> list[str]:
    """Devices a user can pick here, best first (for the widgets' device menu)."""
    out = ["auto"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append("mps")
    return out + ["cpu"]


def _usable(dev: torch.device) -> str | None:
    """None if a tiny op runs on ``dev``; otherwise the reason it does not."""
    try:
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                return "CUDA is not available (no NVIDIA GPU, or torch was installed without CUDA)"
            if (dev.index or 0) >= torch.cuda.device_count():
                return f"there is no {dev} (this machine has {torch.cuda.device_count()} CUDA device(s))"
        elif dev.type == "mps":
            if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
                return "Apple MPS is not available on this machine"
        (torch.ones(1, device=dev) + 1).cpu()
    except RuntimeError as err:  # busy, out of memory, driver trouble
        return f"{dev} cannot be used ({str(err).splitlines()[0]})"
    return None


def select_device(name: str = "auto", strict: bool = False) -> torch.device:
    """The torch device for ``name`` ("auto", "cpu", "cuda", "cuda:1", "mps")."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        for cand in ("cuda", "mps"):
            if _usable(torch.device(cand)) is None:
                return torch.device(cand)
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    reason = _usable(dev) if dev.type != "cpu" else None
    if reason is None:
        return dev
    if strict:
        raise DeviceError(reason)
    log.warning("%s; running on the CPU instead (slower)", reason)
    return torch.device("cpu")


def autocast(device: torch.device, enabled: bool = True) -> ContextManager:
    """bf16 autocast on CUDA GPUs that support it; a no-op elsewhere.

    The samplers and the loss do their arithmetic in float32 on the network's output, and
    GroupNorm runs in float32 under autocast, so only convolutions and attention use bf16.
    """
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def configure_backends(device: torch.device) -> None:
    """Fast kernels: cuDNN autotuning and TF32 matmuls on CUDA (the original turned cuDNN off)."""
    if device.type == "cuda":
        torch.backends.cudnn.enabled = True
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is a device running out of memory (CUDA, MPS), which a smaller batch may avoid."""
    return isinstance(err, torch.OutOfMemoryError) or (isinstance(err, RuntimeError) and "out of memory" in str(err).lower())
