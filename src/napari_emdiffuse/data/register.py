"""Registration of image pairs and drift correction of z-stacks.

Pairs acquired one after the other (noisy/clean, low/high resolution) are never perfectly
aligned: the stage moves, the beam drifts, the sample charges and warps. Training on misaligned
pairs teaches a network to blur, so the target is warped onto the input in two steps:

1. **global**: translation by phase correlation, refined to an affine transform by ECC
   (enhanced correlation coefficient, OpenCV) on a coarse-to-fine pyramid; ORB features with
   RANSAC take over when ECC does not converge;
2. **local**: dense optical flow (OpenCV Farneback) between the input and the globally aligned target,
   smoothed, for the non-rigid residual (section warping, charging).

Both steps work on Gaussian-smoothed copies, so heavy shot noise does not steer them. The
quality of the result is the normalised cross-correlation (NCC) of the smoothed images in every
patch, judged against the NCC their noise allows a perfectly aligned pair (:func:`ncc_ceiling`):
at a count per pixel or less noise alone holds an aligned patch's NCC well below any fixed
threshold. A patch is kept when its NCC reaches a share of its ceiling *and* stands
:data:`NULL_SIGMAS` standard deviations above what patches with no signal reach by chance
(:func:`null_sd`): where a patch holds little signal (resin, a flat or faintly textured area)
its ceiling is tiny and chance alone would clear a share of it.
A pair whose global alignment correlates no better than unrelated images raises
:class:`RegistrationError` instead of returning garbage.

Where the target reaches (the patches it covers) is decided by both steps. The global transform
pools the whole image and placed the edges of aligned 512 px pairs within half a pixel at 2-5
counts per pixel (mostly at 1); the local flow wanders more near the edges (:data:`FLOW_SLACK`) but
is what sees a section warp carry the input past the target's edge. So a pixel is covered where
the global transform places it on the target and the flow no more than :data:`FLOW_SLACK`
beyond the target's edge; values there are the edge's, repeated.

Coordinates: for every input pixel ``p = (y, x)`` the registration gives the target position
``coords[:, y, x]`` (in target pixels) whose value lands there; ``warped = target(coords)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import cv2
import numpy as np
from scipy import ndimage as ndi

from ..errors import InputError, RegistrationError
from .normalise import to_dtype

FLOW_SLACK = 2.0
"""How far (input pixels) past the half pixel the target's edge pixels cover the local flow may
place a pixel that still counts as covered: the flow's own wander. On aligned pairs (ISBI slices
20-29 and EPFL FIB-SEM 60-87, 512 px and their central 256 px, read noise 0.03) the flow places
the outermost 16 px beyond the global placement, normal to the edge, by 1.9-2.1 px at 0.25
counts per pixel (99th percentile), 1.2-1.4 at 0.5 and 1, 0.8-0.9 at 2, 0.7 at 5 and 0.4 at 20
(``benchmarks/study_prepare_ncc.py``; a first, one-off measure on 90 pairs per dose gave
2.0-2.6 px at 0.25 counts)."""


NULL_SIGMAS = 5.0
"""How many of :func:`null_sd` (chance's spread with no signal) a patch's ceiling and NCC must
reach to be kept, and a pair's global NCC to count as related (:func:`keep`). Chosen on design
data only (``benchmarks/study_prepare_ncc.py --design``: ISBI 10-19, flat and low-contrast
images of other seeds; ``benchmarks/results/prepare_ncc_design.json``), in these units: aligned
128 / 256 px patches reach 9.3 / 23.5 at 0.25 counts per pixel (the fewest), 64 px ones 3.0
(1st percentile 3.3, median 6.2; 6.3 from 1 count on); misaligned flat or faint patches up to
3.4 at 0.25-1 count, and up to 5.1 once the local flow has made the best of an unrelated pair."""


@dataclass
class PairRegistration:
    """The target warped onto the input's grid, how it was done, and how well it fits."""

    warped: np.ndarray  # float32, input's shape, the target's intensity units
    valid: np.ndarray  # bool, input pixels that the target covers (see the module's docstring)
    coords: np.ndarray  # (2, H, W) float32: target (y, x) for every input pixel
    matrix: np.ndarray  # (2, 3) global affine, input (x, y, 1) -> target (x, y), at the input's resolution
    factor: int  # target pixels per input pixel (1, or the super-resolution factor)
    method: str  # how the global step succeeded: "ecc" or "orb"
    prominence: float  # phase-correlation peak over the surface's spread
    ncc_before: float  # smoothed NCC with no alignment (overlapping area)
    ncc_global: float  # after the global step
    ncc_local: float  # after the local step
    patch: int
    patch_ncc: np.ndarray  # (rows, cols): NCC in each patch after registration (NaN: not covered)
    patch_ceiling: np.ndarray  # (rows, cols): the NCC each patch's noise allows (ncc_ceiling; NaN: none)
    patch_null: np.ndarray  # (rows, cols): the NCC's spread by chance in a patch with no signal (null_sd; NaN: not covered)
    ncc_ceiling: float  # the NCC the whole pair's noise allows (covered area, after the local step)
    ncc_null: float  # the NCC's spread by chance over that area with no signal (null_sd)
    min_ncc: float

    @property
    def kept(self) -> np.ndarray:
        """Patches good enough to train on (the squares of :func:`~.patches.grid`): see :func:`keep`."""
        return keep(self.patch_ncc, self.patch_ceiling, self.patch_null, self.min_ncc)[0]

    @property
    def no_signal(self) -> np.ndarray:
        """Patches too poor in signal to judge (:func:`keep`): not kept, but not shown misaligned either."""
        return keep(self.patch_ncc, self.patch_ceiling, self.patch_null, self.min_ncc)[1]

    def summary(self) -> dict[str, Any]:
        good = self.patch_ncc[np.isfinite(self.patch_ncc)]
        ceilings = self.patch_ceiling[np.isfinite(self.patch_ceiling)]
        return {
            "method": self.method,
            "prominence": round(self.prominence, 2),
            "ncc_before": round(self.ncc_before, 4),
            "ncc_global": round(self.ncc_global, 4),
            "ncc_local": round(self.ncc_local, 4),
            "ncc_ceiling": round(self.ncc_ceiling, 4),
            "ncc_chance": round(NULL_SIGMAS * self.ncc_null, 4),
            "matrix": np.round(self.matrix, 5).tolist(),
            "patch": self.patch,
            "patches": int(good.size),
            "patches_kept": int(self.kept.sum()),
            "patches_no_signal": int((self.no_signal & np.isfinite(self.patch_ncc)).sum()),
            "patch_ncc_median": round(float(np.median(good)), 4) if good.size else None,
            "patch_ceiling_median": round(float(np.median(ceilings)), 4) if ceilings.size else None,
            "min_ncc": self.min_ncc,
        }


def _unit(image: Any, name: str) -> np.ndarray:
    """Robustly scaled float32 copy (0.5 and 99.5 percentiles to 0 and 1); refuses what cannot register."""
    a = np.asarray(image)
    if a.ndim != 2:
        raise InputError(f"{name}: registration works on 2D planes, got shape {a.shape}")
    if a.dtype.kind not in "uif":
        raise InputError(f"{name}: data type {a.dtype} is not a grey-value image")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise InputError(f"{name} contains NaN or infinite values; replace them before registering")
    lo, hi = np.percentile(a, [0.5, 99.5])
    if not hi > lo:
        lo, hi = float(a.min()), float(a.max())
    if not hi > lo:
        raise RegistrationError(f"{name} is constant: there is nothing to register", no_signal=True)
    return (a - lo) / (hi - lo)


def ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Normalised cross-correlation (Pearson) of two arrays, optionally inside ``mask``."""
    if mask is not None:
        a, b = a[mask], b[mask]
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    if a.size < 16:
        return float("nan")
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def _noise_map(image: np.ndarray) -> np.ndarray:
    """Every pixel's noise variance, as the square of its 2 x 2 block's diagonal detail (Haar):
    its mean over an area estimates the white noise's variance there, shot noise that varies with
    the grey value included. Not :func:`..uncertainty.noise_level`'s median: below about one count
    per pixel most blocks hold no electron, and their median sees only the read noise."""
    a = np.asarray(image, np.float32)
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    d = (a[0:h:2, 0:w:2] - a[0:h:2, 1:w:2] - a[1:h:2, 0:w:2] + a[1:h:2, 1:w:2]) / 2
    full = np.repeat(np.repeat(d * d, 2, 0), 2, 1)
    return np.pad(full, ((0, a.shape[0] - h), (0, a.shape[1] - w)), mode="edge")


def _kernel(sigma: float) -> np.ndarray:
    """The 1D weights of the Gaussian of ``sigma`` that registration smooths with (its 2D kernel is
    their outer product)."""
    impulse = np.zeros(8 * int(np.ceil(sigma)) + 1)
    impulse[impulse.size // 2] = 1.0
    return ndi.gaussian_filter1d(impulse, sigma)


def _smoothing_gain(sigma: float) -> float:
    """What :func:`scipy.ndimage.gaussian_filter` of ``sigma`` leaves of white noise's variance
    (the sum of its 2D kernel's squared weights)."""
    return float((_kernel(sigma) ** 2).sum()) ** 2 if sigma > 0 else 1.0


def smoothed(image: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """``image`` as registration compares it (Gaussian of ``sigma``), and the variance its noise
    leaves in each pixel of that: what :func:`ncc_ceiling` needs."""
    a = np.asarray(image, np.float32)
    return ndi.gaussian_filter(a, sigma), _noise_map(a) * _smoothing_gain(sigma)


def ncc_ceiling(a: np.ndarray, b: np.ndarray, noise_a: np.ndarray, noise_b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """The NCC that ``a`` and ``b`` would reach if perfectly aligned, as far as their noise (per-pixel
    variances ``noise_a``, ``noise_b``) allows: ``sqrt(signal / total variance)`` of each,
    multiplied (NaN where no signal is left). A fixed threshold on the NCC refuses aligned
    low-dose pairs for their noise alone (``benchmarks/study_prepare_ncc.py``)."""
    if mask is not None:
        a, b, noise_a, noise_b = a[mask], b[mask], noise_a[mask], noise_b[mask]
    if a.size < 16:
        return float("nan")
    shares = [1.0 - float(np.mean(n)) / max(float(np.var(x, dtype=np.float64)), 1e-30) for x, n in ((a, noise_a), (b, noise_b))]
    product = max(shares[0], 0.0) * max(shares[1], 0.0)
    return float(np.sqrt(product)) if product > 0 else float("nan")


def null_sd(n: Any, sigma: float) -> Any:
    """The standard deviation of :func:`ncc` over ``n`` pixels (a number or an array) of two
    unrelated images that hold nothing but white noise, each smoothed by a Gaussian of ``sigma``
    as registration compares them: ``sqrt(sum_d rho(d)^2 / n)``, ``rho`` the autocorrelation the
    smoothing gives the noise (``1/sqrt(n)`` unsmoothed, about ``sqrt(2 pi sigma^2 / n)``
    smoothed). What chance alone gives a patch with no signal; a texture of its own spreads the
    NCC of unrelated patches wider (the ceiling's share, :func:`keep`, answers those)."""
    if sigma > 0:
        g = _kernel(sigma)
        rho = np.correlate(g, g, "full")
        gain = float(((rho / rho.max()) ** 2).sum()) ** 2
    else:
        gain = 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(gain / np.asarray(n, np.float64))


def keep(ncc: Any, ceiling: Any, null: Any, min_ncc: float) -> tuple[np.ndarray, np.ndarray]:
    """Which of these scores (arrays, or numbers) keep their patch, and which patches hold no
    signal: the one place that says so.

    No signal: the ``ceiling`` its noise allows is below :data:`NULL_SIGMAS` times ``null``
    (:func:`null_sd`), or unknown, so even perfectly aligned the patch would not stand out of
    chance. Kept: signal, and an NCC of at least ``min_ncc`` of the ceiling and at least that
    floor. A patch with signal that is not kept is misaligned."""
    ncc, ceiling, null = (np.asarray(v, np.float64) for v in (ncc, ceiling, null))
    floor = NULL_SIGMAS * null
    with np.errstate(invalid="ignore"):
        signal = ceiling >= floor
        kept = signal & (ncc >= np.maximum(min_ncc * ceiling, floor))
    return kept, ~signal


def _no_signal(ceiling: float, null: float) -> RegistrationError:
    """The refusal of a pair that holds too little signal to align by (:func:`keep`)."""
    allows = "no correlation at all" if not np.isfinite(ceiling) else f"a correlation of {ceiling:.2f} at best"
    return RegistrationError(
        f"no signal to align by (flat, or too few counts): their noise allows {allows}, and "
        f"{NULL_SIGMAS * null:.2f} is needed to stand out of chance. A larger patch or a higher dose helps",
        no_signal=True,
    )


def _squares(valid: np.ndarray, patch: int) -> Iterator[tuple[tuple[int, int], tuple[slice, slice]]]:
    """The squares of :func:`~.patches.grid` that are at least 90 % covered: ((row, col), slices)."""
    from .patches import grid

    cols = valid.shape[1] // patch
    for k, (y, x) in enumerate(grid(valid.shape[0], valid.shape[1], patch)):
        sl = (slice(y, y + patch), slice(x, x + patch))
        if valid[sl].mean() >= 0.9:
            yield (k // cols, k % cols), sl


def patch_ncc(a: np.ndarray, b: np.ndarray, valid: np.ndarray, patch: int) -> np.ndarray:
    """NCC in every square of :func:`~.patches.grid`, as a (rows, cols) array (NaN where less
    than 90 % of the square is covered)."""
    out = np.full((a.shape[0] // patch, a.shape[1] // patch), np.nan, np.float32)
    for cell, sl in _squares(valid, patch):
        out[cell] = ncc(a[sl], b[sl], valid[sl])
    return out


def patch_ceiling(a: np.ndarray, b: np.ndarray, valid: np.ndarray, patch: int, noise_a: np.ndarray, noise_b: np.ndarray) -> np.ndarray:
    """:func:`ncc_ceiling` in the squares :func:`patch_ncc` scores."""
    out = np.full((a.shape[0] // patch, a.shape[1] // patch), np.nan, np.float32)
    for cell, sl in _squares(valid, patch):
        out[cell] = ncc_ceiling(a[sl], b[sl], noise_a[sl], noise_b[sl], valid[sl])
    return out


def patch_null(valid: np.ndarray, patch: int, sigma: float) -> np.ndarray:
    """:func:`null_sd` in the squares :func:`patch_ncc` scores (NaN where it scores none)."""
    out = np.full((valid.shape[0] // patch, valid.shape[1] // patch), np.nan, np.float32)
    for cell, sl in _squares(valid, patch):
        out[cell] = null_sd(int(valid[sl].sum()), sigma)
    return out


def _hann(shape: tuple[int, int]) -> np.ndarray:
    return np.outer(np.hanning(shape[0]), np.hanning(shape[1])).astype(np.float32)


def phase_shift(fixed: np.ndarray, moving: np.ndarray, upsample: int = 20) -> tuple[np.ndarray, float]:
    """Translation ``(dy, dx)`` with ``fixed(p) ~ moving(p + d)``, and the correlation peak's
    prominence (peak over the surface's spread: about 3-5 for unrelated images)."""
    from skimage.registration import phase_cross_correlation

    win = _hann(fixed.shape)
    f = (fixed - fixed.mean()) * win
    m = (moving - moving.mean()) * win
    shift, _, _ = phase_cross_correlation(f, m, upsample_factor=upsample, normalization=None)
    corr = np.fft.ifft2(np.fft.fft2(f) * np.conj(np.fft.fft2(m))).real
    prominence = float((corr.max() - corr.mean()) / (corr.std() + 1e-12))
    return -np.asarray(shift, np.float64), prominence


def _ecc_affine(fixed: np.ndarray, moving: np.ndarray, init: np.ndarray, levels: int) -> np.ndarray:
    """ECC affine refinement, coarse to fine; ``init`` and the result map fixed (x, y) to moving."""
    crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 200, 1e-6)
    warp = init.astype(np.float32).copy()
    for level in range(levels - 1, -1, -1):
        f = 2.0**level
        fs = cv2.resize(fixed, None, fx=1 / f, fy=1 / f, interpolation=cv2.INTER_AREA) if level else fixed
        ms = cv2.resize(moving, None, fx=1 / f, fy=1 / f, interpolation=cv2.INTER_AREA) if level else moving
        w = warp.copy()
        w[:, 2] /= f
        _, w = cv2.findTransformECC(fs, ms, w, cv2.MOTION_AFFINE, crit, None, 1)
        w[:, 2] *= f
        warp = w
    return warp.astype(np.float64)


def _orb_affine(fixed: np.ndarray, moving: np.ndarray) -> np.ndarray | None:
    """Affine from ORB features and RANSAC, for when ECC does not converge (large rotations)."""
    f8 = np.clip(fixed * 255, 0, 255).astype(np.uint8)
    m8 = np.clip(moving * 255, 0, 255).astype(np.uint8)
    orb = cv2.ORB_create(4000)
    kf, df = orb.detectAndCompute(f8, None)
    km, dm = orb.detectAndCompute(m8, None)
    if df is None or dm is None or len(kf) < 10 or len(km) < 10:
        return None
    matches = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(df, dm)
    if len(matches) < 10:
        return None
    src = np.float32([kf[m.queryIdx].pt for m in matches])
    dst = np.float32([km[m.trainIdx].pt for m in matches])
    matrix, inliers = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=3.0)
    if matrix is None or inliers is None or inliers.sum() < 10:
        return None
    return matrix.astype(np.float64)


def _coords_from_affine(matrix: np.ndarray, shape: tuple[int, int], flow: np.ndarray | None = None) -> np.ndarray:
    """Target (y, x) for every input pixel: ``matrix @ (p + flow(p))``."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    if flow is not None:
        yy = yy + flow[0]
        xx = xx + flow[1]
    tx = matrix[0, 0] * xx + matrix[0, 1] * yy + matrix[0, 2]
    ty = matrix[1, 0] * xx + matrix[1, 1] * yy + matrix[1, 2]
    return np.stack([ty, tx]).astype(np.float32)


def warp_to(
    image: np.ndarray, coords: np.ndarray, order: int = 3, placed: np.ndarray | None = None, slack: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """``image`` sampled at ``coords`` (2, H, W), and where it covers (0 where it does not).

    A pixel covers the unit square around its centre, so positions up to half a pixel beyond the
    outermost centres are on the image: registration is only accurate to a fraction of a pixel,
    and an aligned pair must not lose its edges to that. ``placed``, a placement less noisy than
    ``coords``, must be on the image too; ``coords`` may then be up to ``slack`` pixels further
    out, where the edge pixels are repeated rather than mixed with a black border.
    """
    interp = {0: cv2.INTER_NEAREST, 1: cv2.INTER_LINEAR, 3: cv2.INTER_CUBIC}[order]
    a = np.asarray(image, np.float32)
    out = cv2.remap(a, coords[1], coords[0], interp, borderMode=cv2.BORDER_REPLICATE)
    valid = _on(coords, a.shape, 0.5 + slack)
    if placed is not None:
        valid &= _on(placed, a.shape, 0.5)
    out[~valid] = 0.0
    return out, valid


def _on(coords: np.ndarray, shape: tuple[int, ...], margin: float) -> np.ndarray:
    """Where ``coords`` lie within ``margin`` pixels beyond the outermost pixel centres of ``shape``."""
    (y, x), (h, w) = coords, shape
    return (y >= -margin) & (y <= h - 1 + margin) & (x >= -margin) & (x <= w - 1 + margin)


def dense_flow(fixed: np.ndarray, moving: np.ndarray, window: int = 63) -> np.ndarray:
    """Dense flow ``(dy, dx)`` with ``fixed(p) ~ moving(p + flow(p))`` (OpenCV Farneback).

    Farneback fits local polynomials over a large ``window`` (pixels), which averages shot noise
    away better than pre-smoothing does: on ISBI slices with 5 counts per pixel it recovers an
    elastic warp to about 0.2 px, where DIS or pre-smoothed input reach 0.3-0.5 px.
    """
    lo, hi = np.percentile(fixed, [0.5, 99.5])
    scale = 255.0 / max(hi - lo, 1e-6)
    f8 = np.clip((fixed - lo) * scale, 0, 255).astype(np.uint8)
    m8 = np.clip((moving - lo) * scale, 0, 255).astype(np.uint8)
    flow = cv2.calcOpticalFlowFarneback(f8, m8, None, 0.5, 3, window, 5, 5, 1.1, cv2.OPTFLOW_FARNEBACK_GAUSSIAN)
    return np.stack([flow[..., 1], flow[..., 0]])


def register_pair(
    input: Any,
    target: Any,
    *,
    factor: int = 1,
    smooth: float = 2.0,
    local: bool = True,
    flow_window: int = 63,
    flow_smooth: float = 16.0,
    patch: int = 128,
    min_ncc: float = 0.6,
    min_prominence: float = 7.0,
) -> PairRegistration:
    """Warp ``target`` onto ``input`` (2D planes) and score every patch.

    ``factor``: the target has ``factor`` times the input's pixels in y and x (super-resolution
    pairs); the transform is estimated at the input's resolution and applied to the full target.
    ``smooth``: Gaussian sigma (input pixels) applied to both for the global step and the scores;
    raise it for very noisy inputs. ``local``: add the non-rigid optical-flow step over
    ``flow_window`` pixels, its field smoothed over ``flow_smooth`` pixels (the scale of real
    section warping). ``min_ncc``: patches whose smoothed NCC after registration is below this
    share of their :func:`ncc_ceiling`, or below what chance reaches (:func:`keep`), are
    rejected. A pair is refused as unrelated when its phase-correlation peak stands less than
    ``min_prominence`` standard deviations out (unrelated EM images give 4-5, pairs of the same
    place 10-17 even at 1 electron per pixel) and the global alignment correlates below half its
    ceiling or below :data:`NULL_SIGMAS` times chance's spread (:func:`null_sd`); as holding no
    signal (``RegistrationError.no_signal``) when even its ceiling is below that.
    """
    if factor < 1 or int(factor) != factor:
        raise InputError(f"factor must be a positive integer, got {factor}")
    factor = int(factor)
    fixed = _unit(input, "input")
    moving_full = _unit(target, "target")
    h, w = fixed.shape
    if moving_full.shape != (h * factor, w * factor):
        raise RegistrationError(
            f"input is {h} x {w} and target {moving_full.shape[0]} x {moving_full.shape[1]}: expected a target of "
            f"{h * factor} x {w * factor} (factor {factor}); crop or resample them to match first"
        )
    if min(h, w) < 64:
        raise RegistrationError(f"input is {h} x {w}: registration needs at least 64 x 64 pixels")
    moving = cv2.resize(moving_full, (w, h), interpolation=cv2.INTER_AREA) if factor > 1 else moving_full
    fs, noise_f = smoothed(fixed, smooth)
    ms, noise_m = smoothed(moving, smooth)
    ncc_before = ncc(fs, ms)

    shift, prominence = phase_shift(fs, ms)
    init = np.array([[1, 0, shift[1]], [0, 1, shift[0]]], np.float64)
    levels = max(1, min(4, int(np.log2(min(h, w) / 64)) + 1))
    method = "ecc"
    try:
        matrix = _ecc_affine(fs, ms, init, levels)
    except cv2.error:
        method, matrix = "orb", _orb_affine(fs, ms)
    if matrix is None:
        ceiling, null = ncc_ceiling(fs, ms, noise_f, noise_m), null_sd(h * w, smooth)  # the ceiling needs no alignment
        if keep(0.0, ceiling, null, 0.5)[1]:
            raise _no_signal(ceiling, null)
        raise RegistrationError(
            "the global alignment failed (ECC did not converge and too few image features matched): "
            "the input and the target look unrelated or too flat. Are they images of the same place?"
        )
    placed = _coords_from_affine(matrix, (h, w))  # the global placement: half of the coverage test (module docstring)
    coords = placed
    warped_s, valid = warp_to(ms, coords, order=1)
    ncc_global = ncc(fs, warped_s, valid)
    ceiling = ncc_ceiling(fs, warped_s, noise_f, warp_to(noise_m, coords, order=0)[0], valid)
    null = null_sd(int(valid.sum()), smooth)
    whole_kept, whole_no_signal = keep(ncc_global, ceiling, null, 0.5)
    if prominence < min_prominence and whole_no_signal:
        raise _no_signal(ceiling, null)
    if prominence < min_prominence and not whole_kept:
        raise RegistrationError(
            f"the input and the target do not match: their correlation peak stands {prominence:.1f} standard "
            f"deviations out ({min_prominence:g} needed) and after alignment they correlate {ncc_global:.2f}, "
            f"of the {ceiling:.2f} their noise allows ({NULL_SIGMAS * null:.2f} stands out of chance). "
            "Are they images of the same place?"
        )
    if valid.mean() < 0.25:
        raise RegistrationError(f"after alignment the target covers only {valid.mean():.0%} of the input")

    if local:
        warped_raw, _ = warp_to(moving, coords, order=1)
        flow = dense_flow(fixed, warped_raw, flow_window)
        flow = np.stack([ndi.gaussian_filter(f, flow_smooth) for f in flow])
        coords = _coords_from_affine(matrix, (h, w), flow)  # target(A (p + flow(p)))
        warped_s, valid = warp_to(ms, coords, order=1, placed=placed, slack=FLOW_SLACK)
    ncc_local = ncc(fs, warped_s, valid)
    noise_w = warp_to(noise_m, coords, order=0)[0]
    ceiling = ncc_ceiling(fs, warped_s, noise_f, noise_w, valid)
    scores, ceilings = patch_ncc(fs, warped_s, valid, patch), patch_ceiling(fs, warped_s, valid, patch, noise_f, noise_w)
    nulls = patch_null(valid, patch, smooth)

    if factor > 1:
        coords, placed = _upsample_coords(coords, factor), _upsample_coords(placed, factor)
    warped, valid = warp_to(np.asarray(target, np.float32), coords, placed=placed, slack=FLOW_SLACK * factor)
    return PairRegistration(
        warped=warped,
        valid=valid,
        coords=coords,
        matrix=matrix,
        factor=factor,
        method=method,
        prominence=prominence,
        ncc_before=ncc_before,
        ncc_global=ncc_global,
        ncc_local=ncc_local,
        patch=patch,
        patch_ncc=scores,
        patch_ceiling=ceilings,
        patch_null=nulls,
        ncc_ceiling=ceiling,
        ncc_null=float(null_sd(int(valid.sum()), smooth)),
        min_ncc=min_ncc,
    )


def _upsample_coords(coords: np.ndarray, factor: int) -> np.ndarray:
    """Coordinates on the input grid (in input pixels) to a grid ``factor`` finer, in target pixels.

    Pixel centres: fine pixel ``u`` sits at input position ``(u + 0.5) / f - 0.5`` (what
    ``cv2.resize`` interpolates at), and input position ``c`` is target position ``(c + 0.5) f - 0.5``.
    """
    h, w = coords.shape[1:]
    fine = [cv2.resize(c, (w * factor, h * factor), interpolation=cv2.INTER_LINEAR) for c in coords]
    return np.stack([(c + 0.5) * factor - 0.5 for c in fine]).astype(np.float32)


@dataclass
class DriftEstimate:
    """Per-slice translation of a z-stack and how well neighbouring slices agreed."""

    shifts: np.ndarray  # (Z, 2): slice z is corrected by sampling it at p + shifts[z]
    prominence: np.ndarray  # (Z - 1,): phase-correlation peak prominence of slices z, z + 1
    ncc_before: np.ndarray  # (Z - 1,): smoothed NCC of neighbouring slices before correction
    ncc_after: np.ndarray  # (Z - 1,): and after

    def summary(self) -> dict[str, Any]:
        return {
            "slices": int(self.shifts.shape[0]),
            "drift_range_px": [round(float(v), 2) for v in np.ptp(self.shifts, axis=0)],
            "neighbour_ncc_before": round(float(np.median(self.ncc_before)), 4),
            "neighbour_ncc_after": round(float(np.median(self.ncc_after)), 4),
            "min_prominence": round(float(self.prominence.min()), 2),
        }


def estimate_drift(volume: Any, smooth: float = 1.5, neighbours: int = 2, upsample: int = 20) -> DriftEstimate:
    """Per-slice translation of a z-stack (FIB-SEM, serial block-face) relative to its first slice.

    Every slice is phase-correlated with the next ``neighbours`` slices and the positions are the
    weighted least-squares solution of all those differences, so one bad pair does not shift the
    rest of the stack and errors do not pile up as a random walk. ``volume`` may be lazy: only
    ``neighbours + 1`` slices are in memory at a time.

    Structures running obliquely through the stack look like drift to any slice-to-slice method;
    on thin slices (FIB-SEM) that is a fraction of a pixel per slice, on 50 nm serial sections it
    is many pixels, so use this on thin-slice volumes, not on serial-section TEM.
    """
    depth = volume.shape[0]
    if volume.ndim != 3 or depth < 2:
        raise InputError(f"drift correction needs a z-stack of at least 2 slices, got shape {tuple(volume.shape)}")
    cache: dict[int, np.ndarray] = {}

    def plane(z: int) -> np.ndarray:
        if z not in cache:
            cache[z] = ndi.gaussian_filter(_unit(volume[z], f"slice {z}"), smooth)
            cache.pop(z - neighbours - 1, None)
        return cache[z]

    rows, rhs, weights = [], [], []
    prominence = np.zeros(depth - 1)
    ncc_before = np.zeros(depth - 1)
    for z in range(depth - 1):
        for k in range(1, neighbours + 1):
            if z + k >= depth:
                break
            d, prom = phase_shift(plane(z), plane(z + k), upsample)
            if k == 1:
                prominence[z], ncc_before[z] = prom, ncc(plane(z), plane(z + 1))
            row = np.zeros(depth)
            row[z + k], row[z] = 1.0, -1.0
            rows.append(row)
            rhs.append(d)
            weights.append(max(prom, 1e-3) / k)  # near, well-defined pairs count most
    w = np.array(weights)[:, None]
    a = np.vstack([np.array(rows) * w, np.eye(depth)[:1] * 1e3])  # slice 0 is the reference
    b = np.vstack([np.array(rhs) * w, np.zeros((1, 2))])
    shifts, *_ = np.linalg.lstsq(a, b, rcond=None)
    ncc_after = np.zeros(depth - 1)
    for z in range(depth - 1):
        rel = shifts[z + 1] - shifts[z]
        m = np.array([[1, 0, rel[1]], [0, 1, rel[0]]], np.float64)
        moved = cv2.warpAffine(plane(z + 1), m, plane(z).shape[::-1], flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        ys, xs = drift_crop(plane(z).shape, np.stack([np.zeros(2), rel]))
        ncc_after[z] = ncc(plane(z)[ys, xs], moved[ys, xs])
    return DriftEstimate(shifts, prominence, ncc_before, ncc_after)


def drift_crop(shape: tuple[int, int], shifts: np.ndarray) -> tuple[slice, slice]:
    """The rectangle (y, x) that every corrected slice covers."""
    lo = np.ceil(np.maximum(0.0, -shifts.min(axis=0))).astype(int)
    hi = np.floor(np.minimum(0.0, -shifts.max(axis=0))).astype(int)
    y1, x1 = shape[0] + hi[0], shape[1] + hi[1]
    if y1 - lo[0] < 16 or x1 - lo[1] < 16:
        raise InputError(f"the drift ({np.ptp(shifts, axis=0).round(1)} px) leaves no common area to keep")
    return slice(int(lo[0]), int(y1)), slice(int(lo[1]), int(x1))


def correct_drift(volume: Any, shifts: np.ndarray, crop: bool = True) -> Any:
    """The stack with slice ``z`` resampled at ``p + shifts[z]`` (lazy: a dask array, slice by slice).

    ``crop`` keeps only the area every slice covers, so no slice has an empty border.
    """
    import dask.array as da

    vol = volume if isinstance(volume, da.Array) else da.from_array(volume, chunks=(1, *volume.shape[1:]))
    vol = vol.rechunk((1, *vol.shape[1:]))
    dtype = vol.dtype

    def shift_block(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        z = block_info[0]["array-location"][0][0]
        dy, dx = shifts[z]
        m = np.array([[1, 0, dx], [0, 1, dy]], np.float64)
        plane = block[0].astype(np.float32)
        out = cv2.warpAffine(plane, m, plane.shape[::-1], flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
        return to_dtype(out, dtype)[None]

    out = vol.map_blocks(shift_block, dtype=dtype)
    if crop:
        ys, xs = drift_crop(tuple(vol.shape[1:]), np.asarray(shifts))
        out = out[:, ys, xs]
    return out
