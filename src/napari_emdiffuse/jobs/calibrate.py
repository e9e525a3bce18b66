"""The calibrate job: fit a model's error bounds on a region the user trusts.

A model's intervals hold for data like its calibration data (:mod:`..uncertainty`). Training
calibrates on held-out patches of its own data; this job does it again on any input whose truth
is known — a noisy/clean pair, a low-/high-resolution pair, or an isotropic volume whose slices
are thinned out — through exactly the path prediction takes (the same tiles, normalisation and
sampler), so that the scale fitted is the one ``predict`` needs. Half of the region (the left
columns) fits the error model and its scale, the other half checks the coverage it reaches; slices a volume
variant copies from its input (no spread, no error) count in neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Sequence

import numpy as np

from .. import metrics, uncertainty
from ..config import SampleConfig
from ..errors import InputError
from ..model_file import Model
from ..variants import complete, get_variant, model_options
from .events import CancelToken, Kind, Message, PredictResult
from .predict import normaliser_for, predict


@dataclass(frozen=True)
class CalibrationResult:
    """The model with its new calibration (``model.calibration``: what the check measured);
    after a cancel (``complete`` False) the model given, unchanged."""

    model: Model
    complete: bool = True
    kind: Kind = field(default=Kind.RESULT, init=False)

    @property
    def check_coverage(self) -> float:
        return float(self.model.calibration["check_coverage"])


def calibrate(
    model: Model,
    image: Any,
    truth: Any,
    sample: SampleConfig | None = None,
    voxel: Sequence[float] | None = None,
    device: str = "auto",
    cancel: CancelToken | None = None,
    source: str = "",
    names: tuple[str, str] = ("the input", "the truth"),
) -> Iterator[Any]:
    """Predict ``image`` with ``model`` (its best estimate and error map at the sampling settings
    ``sample``, by default the model's), compare with ``truth`` and store the conformal scales in
    a copy of the model; yields predict's events, then a :class:`CalibrationResult`. ``source``
    describes the data for the model card; ``names`` are what messages call the input and the
    truth (the command line: their files)."""
    cfg = sample or model.preset.sample
    if cfg.samples < 2:
        raise InputError("calibration needs at least 2 samples per prediction (their spread is the error map)")
    _check_truth(model, image, truth, voxel, names)
    result: PredictResult | None = None
    normaliser = normaliser_for(model, image)
    # without its calibration the model's prediction gives the pooled spread itself, which the error model reads
    bare = Model(model.preset, replace(model.info, metrics={k: v for k, v in model.info.metrics.items() if k != "calibration"}), model.network, model.source)
    for ev in predict(bare, image, sample=cfg, voxel=voxel, device=device, cancel=cancel, estimate="best", normaliser=normaliser):
        match ev:
            case PredictResult():
                result = ev
            case _:
                yield ev
    assert result is not None
    if not result.complete:
        yield Message("calibration cancelled: the model is unchanged", "warning")
        yield CalibrationResult(model, complete=False)
        return
    best, spread = np.asarray(result.mean, np.float32), np.asarray(result.std, np.float32)
    truth = np.asarray(truth, np.float32)
    err = best - truth
    used = spread > 0  # slices copied from the input: exact, nothing to calibrate
    left = np.zeros(best.shape, bool)
    left[..., : best.shape[-1] // 2] = True
    if (used & left).sum() < 256 or (used & ~left).sum() < 256:
        raise InputError(f"the calibration region is too small ({int(used.sum())} predicted pixels); give at least 64 x 64 px")
    table = uncertainty.calibration_table(err, spread, best, left, normaliser.low, normaliser.high)
    planes = used.reshape(-1, *used.shape[-2:]).any(axis=(1, 2))  # the slices a volume variant predicted
    psnr_best = metrics.psnr(best.reshape(-1, *best.shape[-2:])[planes], truth.reshape(-1, *truth.shape[-2:])[planes])
    calibration = {
        **table,
        "estimate": "best",
        "sampler": cfg.sampler,
        "steps": cfg.steps,
        "samples": cfg.samples,
        "pixels": int((used & left).sum()),
        "check_pixels": int((used & ~left).sum()),
        "psnr_best": psnr_best,
        "data": source,
        # the input's noise relative to its contrast (median plane): prediction widens the bounds of noisier inputs
        "input_noise": float(np.median(uncertainty.input_noise(image, uncertainty.NOISE_PLANES))),
    }
    metrics_ = {**model.info.metrics, "calibration": calibration}
    calibrated = Model(complete(model.preset), replace(model.info, metrics=metrics_, card=card_with_calibration(model.info.card, calibration)), model.network)
    yield Message(
        f"calibrated on {calibration['pixels']} pixels; the 90 % interval covers {100 * table['check_coverage']:.1f} % "
        f"of the other {calibration['check_pixels']} (best estimate {psnr_best:.2f} dB)"
    )
    yield CalibrationResult(calibrated)


def _check_truth(model: Model, image: Any, truth: Any, voxel: Sequence[float] | None, names: tuple[str, str]) -> None:
    """Refuse a truth that is not the shape of the model's output for the image before anything
    is predicted (a prediction takes minutes), naming both and their shapes."""
    variant, options = get_variant(model.variant), model_options(model)
    variant.check_input(image, options)
    shape = tuple(int(n) for n in image.shape)
    want = variant.output_geometry(shape, voxel or (1.0,) * len(shape), options).shape
    if tuple(truth.shape) != tuple(want):
        raise InputError(
            f"{names[1]} is {tuple(truth.shape)}, but the model's output for {names[0]} {shape} is {tuple(want)}: they must match pixel for pixel"
        )


CARD_HEADING = "**Calibration.**"


def card_with_calibration(card: str, calibration: dict[str, Any]) -> str:
    """The model card with one paragraph saying where its intervals were calibrated (replacing an earlier one)."""
    line = (
        f"{CARD_HEADING} The error bounds were calibrated on {calibration['data'] or 'a region with known truth'} "
        f"({calibration['pixels']} pixels; {calibration['samples']} samples of {calibration['steps']} "
        f"{calibration['sampler']} steps): on another {calibration['check_pixels']} pixels of it the 90 % interval "
        f"covered {100 * calibration['check_coverage']:.1f} %. The error map is fitted there too, from the samples' "
        f"spread, the estimate's fine structure and its local brightness. They hold for data like it."
    )
    kept = [p.strip("\n") for p in card.strip().split("\n\n") if p.strip() and not p.startswith(CARD_HEADING)]
    return "\n\n".join([*kept, line])
