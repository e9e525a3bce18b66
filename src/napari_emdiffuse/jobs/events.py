"""Typed events the train, predict and prepare jobs yield; the CLI and the widgets turn them into
progress bars, plots and layers. Each event is a small frozen dataclass with a ``kind``."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Kind(str, Enum):
    PROGRESS = "progress"
    LOSS = "loss"
    VALIDATION = "validation"
    PREVIEW = "preview"
    CHECKPOINT = "checkpoint"
    MESSAGE = "message"
    RESULT = "result"


class CancelToken(Protocol):
    def is_set(self) -> bool: ...


def new_cancel_token() -> threading.Event:
    """A token to pass as ``cancel=``; call ``.set()`` to stop a job at its next step."""
    return threading.Event()


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` in the phase ``what``, counted in ``unit`` (empty: the job's own)."""

    done: int
    total: int
    what: str = ""
    unit: str = ""
    kind: Kind = field(default=Kind.PROGRESS, init=False)


@dataclass(frozen=True)
class Loss:
    step: int
    loss: float
    lr: float
    kind: Kind = field(default=Kind.LOSS, init=False)


@dataclass(frozen=True)
class Validation:
    """PSNR (dB, normalised units) of the best estimate on the held-out patches, and of the
    variant's baseline (``baseline`` names it: noisy input, bicubic, linear interpolation)."""

    step: int
    psnr: float
    input_psnr: float
    baseline: str = "input"
    kind: Kind = field(default=Kind.VALIDATION, init=False)


@dataclass(frozen=True)
class Preview:
    """A validation patch: condition, prediction and target, in normalised units (-1..1)."""

    step: int
    cond: np.ndarray
    prediction: np.ndarray
    target: np.ndarray
    kind: Kind = field(default=Kind.PREVIEW, init=False)


@dataclass(frozen=True)
class CheckpointSaved:
    step: int
    path: Path
    kind: Kind = field(default=Kind.CHECKPOINT, init=False)


@dataclass(frozen=True)
class Message:
    text: str
    level: str = "info"  # info | warning
    kind: Kind = field(default=Kind.MESSAGE, init=False)


@dataclass(frozen=True)
class TrainResult:
    model_dir: Path
    steps: int
    reason: str  # "finished" | "time budget" | "cancelled" | "nothing left to train" (a finished run resumed)
    best_psnr: float | None  # the final validation's PSNR of the best estimate
    baseline_psnr: float | None = None  # and of the baseline, on the same patches
    kind: Kind = field(default=Kind.RESULT, init=False)


@dataclass(frozen=True)
class PredictResult:
    """The estimate (``mean``: the best estimate or the mean of the samples) and the uncertainty
    (``std``: the pooled error map) in the input's units; ``samples`` only when asked for;
    ``lower``/``upper``, the calibrated interval, only for a calibrated model. Arrays are numpy,
    or zarr arrays when the job wrote to a store. ``complete`` is False after a cancel (blocks
    not reached are zero); ``finished`` is the part of the output that is complete (``()``: all
    of it, None: nothing).
    ``written``: the files or store the job wrote (partial names after a cancel). ``rough_bounds``:
    why the bounds are only a rough guide, not the calibrated interval (an input much noisier than
    the calibration data; :func:`..uncertainty.rough_note`), None where they are not."""

    mean: Any
    std: Any | None
    samples: Any | None
    voxel: tuple[float, ...]
    complete: bool = True
    finished: tuple[slice, ...] | None = ()
    lower: Any | None = None
    upper: Any | None = None
    written: tuple[Path, ...] = ()
    rough_bounds: str | None = None
    kind: Kind = field(default=Kind.RESULT, init=False)


@dataclass(frozen=True)
class PrepareResult:
    """The training set written at ``out`` and its report (what was kept, rejected, corrected);
    ``complete`` is False after a cancel, when nothing was written (``report`` is empty)."""

    out: Path
    report: dict[str, Any]
    complete: bool = True
    kind: Kind = field(default=Kind.RESULT, init=False)


#: what a job yields (its last event is its result); consumers dispatch with ``match``
Event = Progress | Loss | Validation | Preview | CheckpointSaved | Message | TrainResult | PredictResult | PrepareResult
