"""Device choice, mixed precision and the network's memory layout.

``auto`` takes CUDA, then Apple MPS, then the CPU. A device named explicitly but missing or
unusable falls back to the CPU with a warning that says why (the jobs, for the widgets, whose
menus offer only the devices found: a job is never lost because a GPU is busy), unless
``strict=True``: the command line's ``--device`` and the cluster workers ask so, and a device
named there that is not usable is an error (:class:`~..errors.DeviceError`).

Per device, :func:`prepare_network` and :func:`autocast` decide how the network runs: channels
last on CPUs and CUDA GPUs (oneDNN and cuDNN convolutions skip their layout reorders), bf16 on
CUDA GPUs that have it, and bf16 for inference on CPUs with native bf16 arithmetic (AVX-512 BF16
or AMX; elsewhere bf16 is emulated and about ten times slower than float32). The environment
variable ``EMDIFFUSE_BF16=0`` turns bf16 off everywhere; ``EMDIFFUSE_BF16=1`` turns it on for CPU
inference whatever is detected (to measure its accuracy on any CPU).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from pathlib import Path
from typing import ContextManager

import torch
from torch import nn

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
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):  # torch knows more (xpu, hpu, ...), which this tool has never run on
        raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    reason = _usable(dev) if dev.type != "cpu" else None
    if reason is None:
        return dev
    if strict:
        raise DeviceError(reason)
    log.warning("%s; running on the CPU instead (slower)", reason)
    return torch.device("cpu")


def fallback_note(name: str, dev: torch.device) -> str | None:
    """What to tell a user whose requested device ``name`` gave way to the CPU ``dev`` in
    :func:`select_device` (None: it did not): the widgets show messages, not the log."""
    name = (name or "auto").strip().lower()
    if name in ("auto", "cpu") or dev.type != "cpu":
        return None
    return f"device {name!r} is not usable ({_usable(torch.device(name))}); running on the CPU (slower)"


@functools.lru_cache(maxsize=None)
def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16, AMX, or Arm's BF16) and torch's
    oneDNN backend can use it."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        onednn_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        onednn_bf16 = False
    return onednn_bf16 and bool({"avx512_bf16", "amx_bf16", "bf16"} & _cpu_flags())


def uses_bf16(device: torch.device, inference: bool = False) -> bool:
    """Whether :func:`autocast` runs the network in bf16 on ``device`` (CPU: inference only)."""
    forced = os.environ.get("EMDIFFUSE_BF16", "").strip()
    if forced == "0":
        return False
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu" and inference:
        return forced == "1" or cpu_has_native_bf16()
    return False


def autocast(device: torch.device, enabled: bool = True, inference: bool = False) -> ContextManager:
    """bf16 autocast where :func:`uses_bf16` says so; a no-op elsewhere.

    The samplers and the loss do their arithmetic in float32 on the network's output, and
    GroupNorm runs in float32 under autocast, so only convolutions and attention use bf16.
    On CPUs only ``inference=True`` (sampling) uses bf16; training stays float32, because a
    training step under bf16 autocast took 1.61-1.62 times as long as in float32 on a CPU with
    AVX-512 BF16 (``benchmarks/profile_train.py`` measures it; why was not profiled).
    """
    if enabled and uses_bf16(device, inference):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_network(network: nn.Module, device: torch.device, compile: bool = False) -> nn.Module:
    """``network`` on ``device`` in the layout that is fastest there (channels last on CPUs and
    CUDA GPUs: the same arithmetic, in another memory order). ``compile=True`` wraps it in
    ``torch.compile`` (opt-in: the first calls compile for a minute or more; attributes such as
    ``size_multiple`` still read through)."""
    network = network.to(device)
    if device.type in ("cpu", "cuda"):
        network = network.to(memory_format=torch.channels_last)
    if compile:
        network = torch.compile(network, dynamic=False)
    return network


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
