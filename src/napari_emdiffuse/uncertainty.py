"""From the spread of diffusion samples to an error bound a user can act on.

Two steps, each measured in ``benchmarks/bench_suite.py``:

- **An error map at the scale of structures.** The per-pixel standard deviation of K samples is
  mostly sample texture: it barely ranks the pixels where the estimate is wrong (AUROC about
  0.52). Pooled over a neighbourhood (:data:`POOL_PX` pixels, the root of the mean variance) it
  finds the *regions* where the model guesses, which is what a user inspects.
- **Calibration (split conformal; Angelopoulos et al., ICML 2022).** At the end of training the
  ratios ``|estimate - truth| / u`` over held-out calibration pixels give, for every miscoverage
  ``alpha``, the scale ``q(alpha)`` such that ``estimate +- q u`` holds the truth at ``1 - alpha``
  of those pixels. The table of ``q`` is stored in model.json; prediction reads ``q`` at the
  model's or the user's ``alpha``. It holds for data like the calibration patches and for the
  sampling settings calibration used (both are stored with it).
"""

from __future__ import annotations

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
    from scipy.ndimage import uniform_filter

    var = np.asarray(std, np.float32) ** 2
    axes = (0,) * (var.ndim - 2)
    size_nd = tuple(1 for _ in axes) + (size, size)
    return np.sqrt(np.maximum(uniform_filter(var, size=size_nd, mode="reflect"), 0.0))


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


def calibration_table(fit_errors: np.ndarray, fit_spread: np.ndarray, check_errors: np.ndarray, check_spread: np.ndarray) -> dict[str, Any]:
    """What model.json stores: the scales fitted on one part of the held-out pixels and the
    coverage they reach at :data:`DEFAULT_ALPHA` on another part (an honest check of the fit)."""
    table: dict[str, Any] = {"alphas": list(ALPHAS), "q": fit(fit_errors, fit_spread)}
    q = scale(table, DEFAULT_ALPHA)
    return {**table, "alpha": DEFAULT_ALPHA, "pool_px": POOL_PX, "check_coverage": coverage(check_errors, check_spread, q)}


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
