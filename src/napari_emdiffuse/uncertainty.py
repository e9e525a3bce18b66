"""From the spread of diffusion samples to an error bound a user can act on.

Three steps, each measured in ``benchmarks/bench_suite.py`` / ``bench_calibration.py``:

- **An error map at the scale of structures.** The per-pixel standard deviation of K samples is
  mostly sample texture: it barely ranks the pixels where the estimate is wrong (AUROC about
  0.52). Pooled over a neighbourhood (:data:`POOL_PX` pixels, the root of the mean variance) it
  finds the *regions* where the model guesses, which is what a user inspects.
- **An error model** (:class:`ErrorModel`). The spread alone misses errors the samples agree
  on: noise the estimate kept, and dark regions where the dose is low. Calibration therefore
  also fits ``log u = c0 + c1 log spread + c2 log |laplacian of the estimate| + c3 log intensity``
  (each pooled over the same neighbourhood, on the normaliser's unit scale) to the pooled
  error of held-out pixels by least squares. On the calibration regions of the bundled models
  (their check halves, not the test regions) this raised the AUROC for the worst 10 % of 16 px
  patches from 0.72 / 0.59 / 0.68 / 0.66 (spread alone; n, r, i, a) to 0.94 / 0.71 / 0.71 / 0.75;
  on other unseen regions it reaches 0.63-0.70 (docs/benchmarks-calibration-transfer.md). Tried
  for EMDiffuse-n and not adopted: the noise left in the residual (input - estimate) as a
  feature, and an unbiased estimate of each patch's actual error (Monte-Carlo SURE with the
  noise model, one extra pair of evaluations). On unseen slices 24 and 25 they ranked the worst
  patches no better than the spread (AUROC 0.48-0.68 against 0.59-0.69). There is room: on
  unseen slices a patch's expected error (an oracle averaging 16 noise draws) finds the worst
  patches at AUROC 0.89, where the error map reaches 0.67-0.69, with the bundled calibration
  (fitted on other rows of some of those slices) or refitted on two of them
  (``benchmarks/study_error_map_ceiling.py``): a better estimator of each patch's error, not
  more calibration, is what the 0.8 target needs. Tried for the isotropic variants and not
  adopted: where the two kept slices around a gap differ (their difference, pooled) and the
  plane's place in the gap (``w (1 - w)``, largest midway), fitted on one half of the bundled
  models' calibration region (FIB-SEM slices 65-129, rows 448-511) and checked on the other:
  0.75 against 0.75 for vEMDiffuse-i and 0.75 against 0.71 for vEMDiffuse-a (worst 10 % of 16 px
  patches; within each plane 0.745 against 0.738 and 0.722 against 0.719), short of 0.8 either way.
  Fitted on that whole region and checked on another that the suite does not score and
  vEMDiffuse-i never trained on (FIB-SEM slices 0-64, rows 0-63, columns 0-255; vEMDiffuse-a's
  lateral training reads its kept slices; by hand, 2026-12-08): the same two added 0.66 against
  0.65 (i) and 0.67 against 0.60 (a), pooled. Nor did the spread of the samples smoothed first
  (Gaussian, 1-4 px, in the plane or in 3D: sample texture removed, disagreement on structure
  kept; 0.62-0.66 for i), the best estimate's distance from the samples' mean, the gradient, the
  local contrast, or the noise of the two kept slices (the truth's unrecorded noise is most of the
  error; 0.65 for i with it): every mix stayed within 0.57-0.68 there (4 samples, 10 steps, as the suite).
  Where there is room: on synthetic truths made like the FIB-SEM test data, an oracle that knows
  each patch's expected error reaches 0.88-0.89 pooled and 0.83 within planes for the isotropic
  models (content sets their errors: room for a better estimator), but 0.65 within planes for
  EMDiffuse-r, whose error is nearly all the truth's unrecorded noise (no map can reach 0.8 there;
  pooled it does, 0.93; ``benchmarks/study_quality_ceiling.py``, docs/benchmarks-ceiling.md).
- **Calibration (split conformal; Angelopoulos et al., ICML 2022).** At the end of training the
  ratios ``|estimate - truth| / u`` over held-out calibration pixels give, for every miscoverage
  ``alpha``, the scale ``q(alpha)`` such that ``estimate +- q u`` holds the truth at ``1 - alpha``
  of those pixels. The table of ``q`` is stored in model.json; prediction reads ``q`` at the
  model's or the user's ``alpha``. It holds for data like the calibration patches and for the
  sampling settings calibration used (both are stored with it).
- **Inputs noisier than the calibration data.** An error map fitted on data of one noise level
  does not see that an input is noisier: on the EMDiffuse-r benchmark one of four held-back
  FIB-SEM slices has about twice the noise of the rest (in its input and in its truth alike), and
  its 90 % interval held 62 % of the pixels where the others held 91 %. So ``emdiffuse calibrate``
  stores the noise level of its input relative to its contrast (:func:`input_noise`, the median
  over planes), and prediction widens the bounds of every plane whose input is more than
  :data:`NOISE_TOLERANCE` times noisier (:attr:`ErrorModel.widen`), and says so: by the ratio
  where the truth's own noise dominates the error and grows with the input's (super-resolution,
  isotropic volumes; a blurred, binned input shows its noise only in part, so there the widening
  is too small but goes the right way), by its fourth root for denoising, whose error hardly
  grows with the input's noise (``Variant.noise_exponent``; ``benchmarks/study_noise_widening.py``).
  Widened bounds were measured to keep their coverage up to 1.24x and not at 1.47x: past
  :data:`CALIBRATED_WIDENING` a clearly noisier plane's bounds are called a rough guide, not a
  calibrated interval (:func:`rough_note`). Bounds calibrated by training alone (no ``input_noise``) are not widened. Noise is measured
  against the plane's contrast, so content of much lower contrast than the calibration data also
  reads as noisier and widens the bounds (the safe side). A small crop holds less contrast and a
  rougher measure: at the calibration dose, 16-22 % of 64 px crops read more than 1.25 times the
  calibration noise (docs/benchmarks-calibration.md). Its bounds still widen (the safe side), but only a
  ratio beyond what the measure varies at that size (:func:`noise_tolerance`) is warned about as
  a noisier input (``benchmarks/study_noise_widening.py`` counts both on random crops).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: side of the neighbourhood (pixels) over which the samples' variance is pooled
POOL_PX = 16
#: miscoverage levels whose scale is stored (others are interpolated)
ALPHAS = tuple(round(a, 2) for a in np.arange(0.01, 1.0, 0.01))
DEFAULT_ALPHA = 0.1


def error_map(std: np.ndarray, size: int = POOL_PX) -> np.ndarray:
    """The samples' spread pooled over ``size`` x ``size`` neighbourhoods of each 2D plane
    (the last two axes): ``sqrt(mean of variance)``, same shape as ``std``."""
    return _pool_rms(std, size)


#: what the error model reads, in the order of its coefficients (after the constant)
FEATURES = ("spread", "laplacian", "intensity")
#: floor of every feature on the unit scale (a flat or black region must not give log 0)
_FLOOR = 1e-4
#: the intensity feature's floor: darker than 2 % of the normaliser's range counts as 2 %
_DARK = 0.02
#: a plane whose input noise exceeds the calibration data's by more than this factor gets its
#: bounds widened (:func:`widening`; below it, the measure's spread over content and quantisation)
NOISE_TOLERANCE = 1.25
#: the widening (:func:`widening`) up to which widened bounds were measured to keep their
#: coverage (the largest measured that held was 1.24x, the next, 1.47x, did not:
#: docs/benchmarks-calibration.md, ``benchmarks/study_noise_widening.py``). Beyond it a plane
#: clearly noisier than the calibration data has bounds that are only a rough guide (:func:`rough_note`)
CALIBRATED_WIDENING = 1.25
#: how the noise measure's spread grows on small planes: a plane of ``s`` pixels a side (the
#: root of its area) reads as clearly noisier beyond ``1 + SMALL_PLANE_SPREAD / sqrt(s)`` (never
#: below :data:`NOISE_TOLERANCE`, which it meets at 256 px). Set so that crops of 48 px or more at
#: the calibration dose of the bundled EMDiffuse-n and -r (ISBI slices 24-25, EPFL slices 120-135:
#: neither training, calibration nor test data) pass it at most 10 % of the time, where the
#: constant tolerance was passed up to 38 % of the time (``benchmarks/study_noise_widening.py``)
SMALL_PLANE_SPREAD = 4.0
#: side of the central crop of each plane whose noise is measured: noise belongs to the
#: acquisition, not to one region, and a montage need not be read whole for it
NOISE_CROP_PX = 1024
#: the most :func:`input_noise` reads at once: 64 float32 planes of its crop (512-deep chunks would be 2 GiB)
NOISE_SLAB_BYTES = 256 * 2**20
#: the box over which a plane is averaged to measure its contrast without its noise
CONTRAST_PX = 9
#: planes of a stack whose noise is measured, evenly spaced, where only their median is used (a
#: volume variant's prediction, calibration): 64 of the EPFL FIB-SEM volume's 165 planes gave it
#: within 0.2 % of all planes' (tests/test_uncertainty.py), at a fraction of the reading and
#: computing on a deep volume
NOISE_PLANES = 64


def _pool_rms(a: np.ndarray, size: int) -> np.ndarray:
    from scipy.ndimage import uniform_filter

    axes = (1,) * (a.ndim - 2) + (size, size)
    return np.sqrt(np.maximum(uniform_filter(np.asarray(a, np.float32) ** 2, size=axes, mode="reflect"), 0.0))


def features(spread: np.ndarray, estimate: np.ndarray, size: int = POOL_PX) -> np.ndarray:
    """The error model's inputs (:data:`FEATURES`, stacked first) from the pooled ``spread``
    (:func:`error_map`) and the ``estimate``, both on the unit scale (the normaliser's low
    percentile at 0, its high one at 1), as logs. Planes are the last two axes."""
    from scipy.ndimage import laplace, uniform_filter

    est = np.asarray(estimate, np.float32)
    lap = np.empty_like(est)
    for idx in np.ndindex(*est.shape[:-2]):
        lap[idx] = laplace(est[idx], mode="reflect")
    axes = (1,) * (est.ndim - 2) + (size, size)
    intensity = uniform_filter(np.clip(est, 0.0, None), size=axes, mode="reflect")
    return np.log(np.stack([
        np.maximum(np.asarray(spread, np.float32), _FLOOR),
        np.maximum(_pool_rms(lap, size), _FLOOR),
        np.maximum(intensity, _DARK),
    ]))


def noise_level(plane: np.ndarray) -> float:
    """The standard deviation of white noise in a 2D ``plane``, robust to its structure: the
    median absolute finest diagonal detail (2 x 2 Haar) over 0.6745 (Donoho & Johnstone, 1994)."""
    a = np.asarray(plane, np.float64)
    a = a[: a.shape[0] // 2 * 2, : a.shape[1] // 2 * 2]
    detail = (a[0::2, 0::2] - a[0::2, 1::2] - a[1::2, 0::2] + a[1::2, 1::2]) / 2
    return float(np.median(np.abs(detail)) / 0.6745)


def input_noise(image: Any, planes: int | None = None) -> np.ndarray:
    """The noise of every plane of ``image`` (2D: one; 3D: along the first axis) relative to its
    contrast: :func:`noise_level` over the spread (1st to 99th percentile) of the plane's
    :data:`CONTRAST_PX` box means, which noise hardly widens (a percentile range of the raw
    plane grows with its noise and would hide it). On a central crop of at most
    :data:`NOISE_CROP_PX` (only that is read), whole chunks deep, so that a volume chunked in
    depth has each chunk read once, not once per plane; a slab holds at most
    :data:`NOISE_SLAB_BYTES` (chunks deeper than that are read a few times over instead).
    ``planes``: at most that many planes, evenly spaced (:data:`NOISE_PLANES`), for a caller
    that uses only their median."""
    from .data.containers import chunk_size

    h, w = (int(n) for n in image.shape[-2:])
    y0, x0 = max(0, (h - NOISE_CROP_PX) // 2), max(0, (w - NOISE_CROP_PX) // 2)
    crop = (slice(y0, y0 + NOISE_CROP_PX), slice(x0, x0 + NOISE_CROP_PX))
    if len(image.shape) == 2:
        return np.array([_contrast_noise(np.asarray(image[crop]))])
    depth = int(image.shape[0])
    some = planes is not None and depth > planes
    chosen = np.unique(np.linspace(0, depth - 1, planes).round().astype(int)) if some else np.arange(depth)
    deep = chunk_size(image, 0)
    most = max(1, NOISE_SLAB_BYTES // (min(h, NOISE_CROP_PX) * min(w, NOISE_CROP_PX) * np.dtype(image.dtype).itemsize))
    out = []
    for start in range(0, depth, deep):  # a slab of the chosen planes in one chunk's depth, at most `most` planes
        here = chosen[(chosen >= start) & (chosen < start + deep)]
        while here.size:
            part = here[here < here[0] + most]
            slab = np.asarray(image[(slice(int(part[0]), int(part[-1]) + 1), *crop)])
            out += [_contrast_noise(slab[z - part[0]]) for z in part]
            here = here[part.size :]
    return np.array(out)


def _contrast_noise(plane: np.ndarray) -> float:
    """One plane's noise relative to its contrast (:func:`input_noise`)."""
    from scipy.ndimage import uniform_filter

    a = np.asarray(plane, np.float64)
    low, high = np.percentile(uniform_filter(a, CONTRAST_PX, mode="reflect"), [1, 99])
    return noise_level(a) / max(high - low, 1e-12)


def noise_tolerance(shape: tuple[int, ...]) -> float:
    """The noise ratio above which an input of ``shape`` (its last two axes are a plane) is
    clearly noisier than the calibration data, beyond the measure's own spread:
    :data:`NOISE_TOLERANCE`, more for planes under 256 x 256 px (:data:`SMALL_PLANE_SPREAD`)."""
    h, w = (min(NOISE_CROP_PX, int(n)) for n in shape[-2:])  # the crop input_noise measures
    side = float(np.sqrt(max(h * w, 1)))
    return max(NOISE_TOLERANCE, 1.0 + SMALL_PLANE_SPREAD / float(np.sqrt(side)))


def widening(noise: np.ndarray, calibrated: float, exponent: float = 1.0) -> np.ndarray:
    """The factor by which each plane's bounds widen for its input ``noise``
    (:func:`input_noise`), the calibration input's being ``calibrated``: where their ratio
    exceeds :data:`NOISE_TOLERANCE` (on an image of any size: the safe side), the ratio to the
    power ``exponent`` (how the variant's error grows with noise: ``Variant.noise_exponent``)."""
    ratio = np.asarray(noise, np.float64) / calibrated
    return np.where(ratio > NOISE_TOLERANCE, ratio**exponent, 1.0)


def rough_note(where: str, cover: int) -> str:
    """What a user is told of bounds widened beyond :data:`CALIBRATED_WIDENING` (``where``: whose;
    ``cover``: the interval's per cent): by predict's warning, in the outputs' provenance
    (``emdiffuse info``) and by the Enhance layer's tip."""
    return (
        f"the error bounds of {where} are a rough guide, not a calibrated {cover} % interval: the input is much noisier "
        f"than the calibration data, beyond what widening the bounds was seen to make up for (widened past {CALIBRATED_WIDENING:g}x); "
        "calibrate on data like it (emdiffuse calibrate) for bounds that hold"
    )


@dataclass(frozen=True)
class ErrorModel:
    """How a prediction turns the pooled spread and its estimate into the error map ``u``.

    ``coef`` None is the pooled spread itself (models calibrated before the error model existed,
    and uncalibrated ones). ``low`` / ``high``: the intensities that are 0 and 1 on the unit
    scale the coefficients were fitted on (the normaliser's percentiles; -1 and 1 for arrays
    already normalised). ``u`` is in the estimate's units and 0 where the spread is 0 (slices a
    volume variant copies from its input). ``widen``: a factor per output plane (one for all)
    for inputs noisier than the calibration data (:func:`widening`), applied by :meth:`plane`."""

    coef: tuple[float, ...] | None = None
    low: float = -1.0
    high: float = 1.0
    widen: tuple[float, ...] = ()

    def plane(self, z: tuple[int, ...]) -> float:
        """The widening of output plane ``z`` (``()`` for a 2D output)."""
        if not self.widen:
            return 1.0
        return self.widen[0] if len(self.widen) == 1 else self.widen[z[0] if z else 0]

    @classmethod
    def of(cls, calibration: dict[str, Any] | None, low: float = -1.0, high: float = 1.0) -> "ErrorModel":
        coef = (calibration or {}).get("error_model")
        return cls(tuple(float(c) for c in coef) if coef else None, float(low), float(high))

    def __call__(self, spread: np.ndarray, estimate: np.ndarray) -> np.ndarray:
        spread = np.asarray(spread, np.float32)
        if self.coef is None:
            return spread
        unit = self.high - self.low
        f = features(spread / unit, (np.asarray(estimate, np.float32) - self.low) / unit)
        log_u = self.coef[0] + np.tensordot(np.asarray(self.coef[1:], np.float32), f, axes=1)
        return np.where(spread > 0, np.exp(log_u) * unit, 0.0).astype(np.float32)

    def fitted(self, errors: np.ndarray, spread: np.ndarray, estimate: np.ndarray, where: np.ndarray) -> "ErrorModel":
        """This model's scale with coefficients fitted on the pixels ``where`` (a mask of the
        arrays' shape): least squares of the log pooled error on :func:`features`."""
        unit = self.high - self.low
        f = features(np.asarray(spread, np.float32) / unit, (np.asarray(estimate, np.float32) - self.low) / unit)
        target = np.log(np.maximum(_pool_rms(np.asarray(errors, np.float32) / unit, POOL_PX), _FLOOR))
        pick = np.asarray(where, bool) & (np.asarray(spread) > 0)
        x = np.column_stack([np.ones(int(pick.sum())), *(fk[pick] for fk in f)]).astype(np.float64)
        coef, *_ = np.linalg.lstsq(x, target[pick].astype(np.float64), rcond=None)
        return ErrorModel(tuple(float(c) for c in coef), self.low, self.high, self.widen)


def fit(errors: np.ndarray, spread: np.ndarray) -> list[float]:
    """Conformal scales ``q(alpha)`` for every alpha of :data:`ALPHAS` from held-out absolute
    errors and error-map values (any shapes, the same): the finite-sample quantile
    ``ceil((n + 1)(1 - alpha)) / n`` of the scores ``|error| / u``."""
    e = np.abs(np.asarray(errors, np.float64)).ravel()
    u = np.asarray(spread, np.float64).ravel()
    floor = max(float(np.median(u)) * 1e-3, 1e-12)  # a zero spread (a kept slice) must not divide by 0
    scores = np.sort(e / np.maximum(u, floor))
    n = scores.size
    out = []
    for a in ALPHAS:
        k = min(n - 1, int(np.ceil((n + 1) * (1 - a))) - 1)
        out.append(float(scores[max(k, 0)]))
    return out


def calibration_table(errors: np.ndarray, spread: np.ndarray, estimate: np.ndarray, fit_part: np.ndarray, low: float = -1.0, high: float = 1.0) -> dict[str, Any]:
    """What model.json stores, from held-out pixels with known ``errors``, their pooled
    ``spread`` (:func:`error_map`) and the ``estimate`` (arrays of one shape, whole planes so
    that the pooling sees neighbours): the error model and the scales fitted on the pixels of
    ``fit_part`` (a mask), and the coverage they reach at :data:`DEFAULT_ALPHA` on the others
    (an honest check of the fit). Pixels with no spread count in neither."""
    used = np.asarray(spread) > 0
    fit_px, check_px = used & fit_part, used & ~np.asarray(fit_part, bool)
    model = ErrorModel(low=low, high=high).fitted(errors, spread, estimate, fit_px)
    u = model(spread, estimate)
    table: dict[str, Any] = {"alphas": list(ALPHAS), "q": fit(np.asarray(errors)[fit_px], u[fit_px])}
    q = scale(table, DEFAULT_ALPHA)
    return {
        **table,
        "alpha": DEFAULT_ALPHA,
        "pool_px": POOL_PX,
        "error_model": list(model.coef or ()),
        "error_features": list(FEATURES),
        "check_coverage": coverage(np.asarray(errors)[check_px], u[check_px], q),
    }


def settings_match(calibration: dict[str, Any], sampler: str, steps: int, samples: int) -> str:
    """How sampling settings compare with those the bounds were calibrated at: ``"same"``;
    ``"fewer steps"`` (the same sampler with fewer steps: its samples spread less, so the bounds
    come out too narrow; docs/benchmarks-calibration.md measures it); or ``"other"`` (other
    samples, more steps or another sampler: coverage approximate)."""
    if (sampler, steps, samples) == (calibration["sampler"], calibration["steps"], calibration["samples"]):
        return "same"
    if sampler == calibration["sampler"] and steps < calibration["steps"]:
        return "fewer steps"
    return "other"


def coverage_label(coverage: float, match: str) -> str:
    """An interval's coverage as a user reads it ("90 %"), qualified by how the sampling settings
    compare with the calibrated ones (``match`` from :func:`settings_match`): "below 90 %" with
    fewer steps, "about 90 %" with others. The Enhance layer and a reopened store say the same."""
    cover = f"{round(100 * coverage)} %"
    return {"same": cover, "fewer steps": f"below {cover}", "other": f"about {cover}"}[match]


def settings_note(calibration: dict[str, Any], match: str) -> str:
    """What a user is told when the sampling settings are not the calibrated ones (``match``
    from :func:`settings_match`, not "same"): by predict's warning and the Enhance layer's tip."""
    said = f"calibrated for {calibration['samples']} samples of {calibration['steps']} {calibration['sampler']} steps; "
    if match == "fewer steps":
        return said + f"with fewer steps the samples spread less, and the bounds are likely too narrow (use {calibration['steps']} steps to measure)"
    return said + "with other sampling settings their coverage is approximate"


def scale(calibration: dict[str, Any], alpha: float) -> float:
    """``q(alpha)`` from a stored calibration (interpolated between the stored levels)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1 (e.g. 0.1 for 90 % intervals), not {alpha}")
    table = np.asarray(calibration["q"], np.float64)
    alphas = np.asarray(calibration.get("alphas", ALPHAS), np.float64)
    return float(np.interp(alpha, alphas, table))  # np.interp needs increasing x: alphas increase


def coverage(errors: np.ndarray, spread: np.ndarray, q: float) -> float:
    """Share of pixels whose absolute error lies within ``q`` times the error map."""
    return float(np.mean(np.abs(errors) <= q * np.asarray(spread)))
