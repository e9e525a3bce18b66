"""Image-quality metrics against a reference: PSNR, SSIM, MS-SSIM, FSIM, GMSD and Fourier ring
correlation (FRC).

Shared by the Compare widget and the benchmarks, so that a number shown in the GUI and a number
in a benchmark table mean the same thing. Conventions (stated once, here):

- Both images are compared in the reference's intensity units, as float64.
- ``data_range`` defaults to the reference's ``max - min`` (not the dtype's range: an enhanced
  float image and a uint8 reference must be scored on the same scale).
- SSIM uses the settings of Wang et al. (2004): an 11-tap Gaussian window with sigma 1.5,
  K1 = 0.01, K2 = 0.03, population (not sample) covariance; 3D inputs are scored slice by slice
  and averaged, because EM stacks are often strongly anisotropic.
- FRC (Saxton & Baumeister 1982; van Heel & Schatz 2005) is computed per 2D plane; see
  :func:`frc` for the ring binning and the apodisation.
- The perceptual scores of the EMDiffuse paper and its field: MS-SSIM (Wang et al. 2003,
  torchmetrics), FSIM (Zhang et al. 2011, the ``image-similarity-measures`` implementation on
  8-bit images, as the paper's authors computed it) and GMSD (Xue et al. 2014, lower is better);
  stacks are scored slice by slice and averaged. They need the ``dev`` extra's packages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import InputError

#: The fixed 1/7 threshold used for FRC resolution (Rosenthal & Henderson 2003).
FRC_THRESHOLD = 1.0 / 7.0
#: Fraction of each image edge tapered by the Tukey window before the FFT.
FRC_TAPER = 0.25


def _pair(image: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(image, np.float64)
    b = np.asarray(reference, np.float64)
    if a.shape != b.shape:
        raise InputError(f"the images differ in shape ({a.shape} vs reference {b.shape}); compare images of the same size")
    if a.size == 0:
        raise InputError("the images are empty")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise InputError("an image contains NaN or infinite values")
    return a, b


def _data_range(reference: np.ndarray, data_range: float | None) -> float:
    value = float(reference.max() - reference.min()) if data_range is None else float(data_range)
    if not value > 0:
        raise InputError("the reference is constant, so PSNR and SSIM are undefined; pass data_range")
    return value


def psnr(image: np.ndarray, reference: np.ndarray, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(range^2 / MSE)``; ``inf`` for identical images."""
    a, b = _pair(image, reference)
    rng = _data_range(b, data_range)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(rng**2 / mse)


def ssim(image: np.ndarray, reference: np.ndarray, data_range: float | None = None) -> float:
    """Mean structural similarity (Wang et al. 2004 settings); 3D stacks averaged over slices."""
    from skimage.metrics import structural_similarity

    a, b = _pair(image, reference)
    rng = _data_range(b, data_range)
    if a.ndim == 2:
        a, b = a[None], b[None]
    if a.ndim != 3 or min(a.shape[-2:]) < 11:
        raise InputError(f"SSIM needs 2D images or stacks at least 11 x 11 pixels (shape {a.shape})")
    scores = [
        structural_similarity(x, y, data_range=rng, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        for x, y in zip(a, b)
    ]
    return float(np.mean(scores))


def _tukey(n: int, alpha: float) -> np.ndarray:
    from scipy.signal.windows import tukey

    return tukey(n, alpha) if n > 2 else np.ones(n)


def _ring_index(height: int, width: int) -> tuple[np.ndarray, int]:
    """Ring of every FFT pixel and the number of rings (see :func:`frc`)."""
    n = min(height, width)
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.fftfreq(width)[None, :]
    radius = np.sqrt(fy**2 + fx**2)  # cycles per pixel
    return np.floor(radius * n + 0.5).astype(np.int64), n // 2 + 1


@dataclass(frozen=True)
class FRCCurve:
    """FRC per ring: ``frequency`` in cycles per pixel (0 to 0.5), ``value`` in [-1, 1]."""

    frequency: np.ndarray
    value: np.ndarray


def frc(image: np.ndarray, reference: np.ndarray) -> FRCCurve:
    """Fourier ring correlation of two images (2D, or stacks of 2D planes).

    Ring binning: every Fourier pixel ``(ky, kx)`` has the frequency
    ``f = sqrt((ky/H)^2 + (kx/W)^2)`` cycles per pixel and belongs to ring
    ``k = floor(f * min(H, W) + 0.5)``, so rings are ``1/min(H, W)`` wide and centred on
    ``k / min(H, W)``; rings ``0 .. min(H, W) // 2`` are kept (the last one reaches Nyquist,
    0.5 cycles per pixel). Before the FFT each image has its mean removed and is tapered by a
    separable Tukey window (:data:`FRC_TAPER` of each edge), so the image border does not
    correlate with itself. For a stack, each ring's sums run over all planes.

    ``FRC(k) = Re sum F1 conj(F2) / sqrt(sum |F1|^2 * sum |F2|^2)`` over the pixels of ring k.
    """
    a, b = _pair(image, reference)
    if a.ndim == 2:
        a, b = a[None], b[None]
    if a.ndim != 3 or min(a.shape[-2:]) < 8:
        raise InputError(f"FRC needs 2D images or stacks at least 8 x 8 pixels (shape {a.shape})")
    h, w = a.shape[-2:]
    window = _tukey(h, FRC_TAPER)[:, None] * _tukey(w, FRC_TAPER)[None, :]
    rings, n_rings = _ring_index(h, w)
    keep = rings < n_rings
    idx = rings[keep]
    num = np.zeros(n_rings)
    p1 = np.zeros(n_rings)
    p2 = np.zeros(n_rings)
    for x, y in zip(a, b):
        f1 = np.fft.fft2((x - x.mean()) * window)[keep]
        f2 = np.fft.fft2((y - y.mean()) * window)[keep]
        num += np.bincount(idx, (f1 * np.conj(f2)).real, n_rings)
        p1 += np.bincount(idx, np.abs(f1) ** 2, n_rings)
        p2 += np.bincount(idx, np.abs(f2) ** 2, n_rings)
    denom = np.sqrt(p1 * p2)
    value = np.divide(num, denom, out=np.zeros(n_rings), where=denom > 0)
    return FRCCurve(np.arange(n_rings) / min(h, w), value)


def frc_resolution(
    image: np.ndarray, reference: np.ndarray, pixel_size: float = 1.0, threshold: float = FRC_THRESHOLD
) -> float:
    """Resolution (in the units of ``pixel_size``) where the FRC first falls below ``threshold``.

    The crossing frequency is interpolated linearly between the two rings around it (ring 0,
    the mean, is skipped). A curve that never falls below the threshold is limited by the
    sampling, and the Nyquist resolution (``2 * pixel_size``) is returned.
    """
    curve = frc(image, reference)
    f, v = curve.frequency, curve.value
    for k in range(1, len(v)):
        if v[k] < threshold:
            if k == 1:
                return float(pixel_size / f[1])
            t = (v[k - 1] - threshold) / (v[k - 1] - v[k])
            crossing = f[k - 1] + t * (f[k] - f[k - 1])
            return float(pixel_size / crossing)
    return 2.0 * float(pixel_size)


def compare(image: np.ndarray, reference: np.ndarray, pixel_size: float = 1.0) -> dict[str, float]:
    """PSNR (dB), SSIM and FRC resolution (units of ``pixel_size``) of ``image`` against ``reference``."""
    return {
        "psnr": psnr(image, reference),
        "ssim": ssim(image, reference),
        "frc_resolution": frc_resolution(image, reference, pixel_size),
    }


#: MS-SSIM weights of the five scales (Wang et al. 2003)
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _planes(image: np.ndarray, reference: np.ndarray, smallest: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = _pair(image, reference)
    if a.ndim == 2:
        a, b = a[None], b[None]
    if a.ndim != 3 or min(a.shape[-2:]) < smallest:
        raise InputError(f"{name} needs 2D images or stacks at least {smallest} x {smallest} pixels (shape {a.shape})")
    return a, b


def ms_ssim(image: np.ndarray, reference: np.ndarray, data_range: float | None = None) -> float:
    """Multi-scale SSIM with as many of the five scales as the image size allows (at least two;
    the weights of the scales used are renormalised); stacks averaged over slices."""
    import torch
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as msssim

    a, b = _planes(image, reference, 32, "MS-SSIM")
    rng = _data_range(b, data_range)
    side = min(a.shape[-2:])
    kernel = 11 if side >= 42 else 7
    scales = 2
    while scales < len(MS_SSIM_BETAS) and (kernel - 1) * 2 ** scales + 1 <= side:
        scales += 1
    betas = np.asarray(MS_SSIM_BETAS[:scales])
    betas = tuple(float(x) for x in betas / betas.sum())
    x = torch.from_numpy(a)[:, None]
    y = torch.from_numpy(b)[:, None]
    scores = [
        float(msssim(x[i : i + 1], y[i : i + 1], data_range=rng, kernel_size=kernel, betas=betas, normalize="relu"))
        for i in range(len(x))
    ]
    return float(np.mean(scores))


def _uint8(a: np.ndarray, low: float, rng: float) -> np.ndarray:
    return np.clip(np.rint((a - low) / rng * 255.0), 0, 255).astype(np.uint8)


def fsim(image: np.ndarray, reference: np.ndarray, data_range: float | None = None) -> float:
    """Feature similarity (phase congruency and gradient magnitude) on 8-bit versions of the
    images, the reference's minimum at 0 and ``data_range`` at 255; stacks averaged over slices."""
    from image_similarity_measures.quality_metrics import fsim as _fsim

    a, b = _planes(image, reference, 16, "FSIM")
    rng = _data_range(b, data_range)
    low = float(b.min())
    return float(np.mean([_fsim(_uint8(y, low, rng)[..., None], _uint8(x, low, rng)[..., None]) for x, y in zip(a, b)]))


def gmsd(image: np.ndarray, reference: np.ndarray, data_range: float | None = None) -> float:
    """Gradient magnitude similarity deviation (Xue et al. 2014): the standard deviation over
    pixels of ``(2 m_r m_d + c) / (m_r^2 + m_d^2 + c)``, with Prewitt gradient magnitudes of the
    images averaged 2 x 2 and subsampled, on the 0-255 scale (``c = 170``). 0 is identical;
    lower is better. Stacks averaged over slices."""
    from scipy.ndimage import convolve

    a, b = _planes(image, reference, 8, "GMSD")
    rng = _data_range(b, data_range)
    hx = np.array([[1.0, 0.0, -1.0]] * 3) / 3.0
    box = np.full((2, 2), 0.25)

    def magnitude(plane: np.ndarray) -> np.ndarray:
        p = convolve(plane * (255.0 / rng), box, mode="nearest")[::2, ::2]
        return np.hypot(convolve(p, hx, mode="nearest"), convolve(p, hx.T, mode="nearest"))

    scores = []
    for x, y in zip(a, b):
        mr, md = magnitude(y), magnitude(x)
        gms = (2 * mr * md + 170.0) / (mr**2 + md**2 + 170.0)
        scores.append(float(gms.std()))
    return float(np.mean(scores))
