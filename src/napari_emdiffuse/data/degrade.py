"""Simulated degradations, for users with clean data only and for evaluation."""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .normalise import fit_normaliser

#: the project's standard low-dose level: counts at full scale, and read noise as a fraction of it
DEFAULT_DOSE = 20.0
DEFAULT_READ_NOISE = 0.03


def to_unit(image: np.ndarray, name: str = "image") -> np.ndarray:
    """``image`` scaled so that its own grey-value range (the robust percentiles of
    :func:`fit_normaliser`, not its data type's) spans 0 to 1; darker pixels clipped at 0.

    "Full scale" for a simulated dose is then the brightest structure in the data, whether it is
    8-bit, 12-bit data in a 16-bit file, signed (MRC) or floating point.
    """
    a = np.asarray(image)
    return fit_normaliser(a, name=name).to_unit(a)


def poisson_gaussian(
    clean: np.ndarray, peak: float = DEFAULT_DOSE, read_noise: float = DEFAULT_READ_NOISE, seed: int | np.random.Generator | None = 0
) -> np.ndarray:
    """Shot noise at ``peak`` counts for a full-scale pixel, then Gaussian read noise.

    ``clean`` in [0, 1] (see :func:`to_unit`); the result is float32 on the same scale, so a
    lower ``peak`` means a lower electron dose. ``read_noise`` is a fraction of the full range.
    The benchmark's standard level is :data:`DEFAULT_DOSE` and :data:`DEFAULT_READ_NOISE`.
    """
    if not (np.isfinite(peak) and peak > 0):
        raise InputError(f"dose {peak}: the counts at full scale must be a positive number")
    if not (np.isfinite(read_noise) and read_noise >= 0):
        raise InputError(f"read noise {read_noise}: must be zero or a positive number")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    c = np.clip(np.asarray(clean, np.float32), 0.0, None)
    noisy = rng.poisson(c * peak).astype(np.float32) / peak
    if read_noise:
        noisy += rng.normal(0.0, read_noise, size=c.shape).astype(np.float32)
    return noisy


def psf_bin(image: np.ndarray, factor: int, psf_sigma: float | None = None) -> np.ndarray:
    """A point-scanning acquisition at ``factor`` times the pixel size, simulated from ``image``.

    The beam's point-spread function (a Gaussian of ``psf_sigma`` fine pixels; by default a
    full width at half maximum of one coarse pixel, ``factor / 2.355``) blurs the image, and
    each coarse pixel is the mean of the ``factor x factor`` fine pixels it covers. The last two
    axes are binned; rows and columns beyond a multiple of ``factor`` are dropped.
    """
    from scipy.ndimage import gaussian_filter

    if int(factor) != factor or factor < 1:
        raise ValueError("factor must be a positive whole number")
    a = np.asarray(image, np.float32)
    sigma = factor / 2.355 if psf_sigma is None else float(psf_sigma)
    if sigma > 0:
        a = gaussian_filter(a, [0.0] * (a.ndim - 2) + [sigma, sigma], mode="reflect")
    h, w = a.shape[-2] // factor * factor, a.shape[-1] // factor * factor
    a = a[..., :h, :w]
    return a.reshape(*a.shape[:-2], h // factor, factor, w // factor, factor).mean(axis=(-3, -1))


def decimate_z(volume: np.ndarray, factor: int, offset: int = 0) -> np.ndarray:
    """Every ``factor``-th slice of a volume from ``offset`` on: an anisotropic acquisition
    simulated from an isotropic one (the slices in between are the ground truth). Lazy for
    dask arrays."""
    if int(factor) != factor or factor < 1:
        raise ValueError("factor must be a positive whole number")
    return volume[offset::factor]


def scan_line_jitter(image: np.ndarray, amplitude: float = 0.5, correlation: float = 0.0, seed: int | np.random.Generator | None = 0) -> np.ndarray:
    """Each scan line shifted sideways by a random sub-pixel offset, as an unsteady beam or stage
    does in point-scanning SEM/STEM.

    ``amplitude`` is the offsets' standard deviation in pixels; ``correlation`` (0 to <1) makes
    neighbouring lines move together (an AR(1) process, as slow vibrations do). The last two
    axes are (lines, pixels along the line); values are interpolated linearly, edges repeated.
    """
    if amplitude < 0:
        raise ValueError("amplitude must be zero or positive")
    if not 0.0 <= correlation < 1.0:
        raise ValueError("correlation must be in [0, 1)")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    a = np.asarray(image, np.float32)
    lines = a.reshape(-1, a.shape[-1])
    n = lines.shape[0]
    noise = rng.normal(0.0, amplitude * np.sqrt(1 - correlation**2), n)
    offsets = np.empty(n)
    offsets[0] = rng.normal(0.0, amplitude)  # the stationary spread, from the first line on
    for i in range(1, n):
        offsets[i] = correlation * offsets[i - 1] + noise[i]
    x = np.arange(lines.shape[1], dtype=np.float64)
    out = np.stack([np.interp(x + d, x, line) for line, d in zip(lines, offsets)])
    return out.reshape(a.shape).astype(np.float32)
