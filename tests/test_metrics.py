"""metrics.py against independent computations and against cases with a known answer."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from napari_emdiffuse import metrics
from napari_emdiffuse.errors import InputError

DATA = (Path(__file__).resolve().parents[1] / "../shared/data").resolve()
ISBI = DATA / "isbi2012_sstem_train.tif"


@pytest.fixture(scope="module")
def em() -> np.ndarray:
    if not ISBI.is_file():
        pytest.skip(f"real EM data not found at {ISBI} (see ../shared/data/PROVENANCE.md)")
    import tifffile

    return tifffile.imread(ISBI, key=range(2))[:, :192, :192].astype(np.float64)


def test_psnr_of_known_gaussian_noise(em):
    ref = em[0]
    noisy = ref + np.random.default_rng(0).normal(0, 10.0, ref.shape)
    expected = 20 * math.log10((ref.max() - ref.min()) / 10.0)
    assert metrics.psnr(noisy, ref) == pytest.approx(expected, abs=0.1)
    assert metrics.psnr(ref, ref) == math.inf


def test_psnr_matches_hand_formula_with_explicit_range(em):
    a, b = em[0], em[1]
    mse = ((a - b) ** 2).sum() / a.size
    assert metrics.psnr(a, b, data_range=255) == pytest.approx(10 * math.log10(255**2 / mse), rel=1e-12)


def _ssim_wang(x: np.ndarray, y: np.ndarray, rng: float) -> float:
    """SSIM written out from Wang et al. (2004), eq. 13, with an 11-tap Gaussian window."""
    blur = lambda a: gaussian_filter(a, 1.5, truncate=3.5, mode="reflect")  # noqa: E731
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s[5:-5, 5:-5].mean())  # the border where the window leaves the image is left out


def test_ssim_matches_written_out_formula(em):
    ref = em[0]
    noisy = ref + np.random.default_rng(1).normal(0, 20.0, ref.shape)
    rng = ref.max() - ref.min()
    assert metrics.ssim(noisy, ref) == pytest.approx(_ssim_wang(noisy, ref, rng), abs=1e-6)
    stack = metrics.ssim(np.stack([noisy, ref]), np.stack([ref, ref]))
    assert stack == pytest.approx((_ssim_wang(noisy, ref, rng) + 1.0) / 2, abs=1e-6)


def test_frc_of_an_image_with_itself_is_one(em):
    curve = metrics.frc(em[0], em[0])
    assert curve.frequency[0] == 0 and curve.frequency[-1] == pytest.approx(0.5)
    assert np.allclose(curve.value[1:], 1.0)


def test_frc_of_independent_noise_is_near_zero():
    rng = np.random.default_rng(2)
    curve = metrics.frc(rng.normal(size=(256, 256)), rng.normal(size=(256, 256)))
    # ring k holds about 2*pi*k pixels: the correlation of independent noise shrinks as 1/sqrt(count)
    k = np.arange(len(curve.value))
    assert np.all(np.abs(curve.value[8:]) < 4 / np.sqrt(2 * np.pi * k[8:]))


def _band_limited(shape: tuple[int, int], cutoff: float, seed: int) -> np.ndarray:
    """White noise with every frequency above ``cutoff`` (cycles/pixel) removed."""
    f = np.fft.fft2(np.random.default_rng(seed).normal(size=shape))
    fy, fx = np.fft.fftfreq(shape[0])[:, None], np.fft.fftfreq(shape[1])[None, :]
    f[np.sqrt(fy**2 + fx**2) > cutoff] = 0
    return np.fft.ifft2(f).real


@pytest.mark.parametrize("cutoff", [0.1, 0.2, 0.3])
def test_frc_resolution_finds_a_known_band_limit(cutoff):
    """Two images share a signal band-limited at ``cutoff`` plus independent white noise (in-band
    SNR about 3, FRC about 0.7): they agree up to the cutoff and not beyond, so the resolution is
    1 / cutoff pixels (the taper's leakage moves the crossing by less than a ring)."""
    shape = (256, 256)
    signal = _band_limited(shape, cutoff, 3) * 10
    rng = np.random.default_rng(4)
    a = signal + rng.normal(size=shape) * 6
    b = signal + rng.normal(size=shape) * 6
    res = metrics.frc_resolution(a, b, pixel_size=4.0)  # 4 nm pixels
    assert res == pytest.approx(4.0 / cutoff, rel=0.06)


def test_frc_resolution_is_nyquist_when_the_curve_never_drops(em):
    assert metrics.frc_resolution(em[0], em[0], pixel_size=4.0) == 8.0


def test_frc_resolution_worsens_with_blur(em):
    ref = em[0]
    rng = np.random.default_rng(5)
    res = [
        metrics.frc_resolution(gaussian_filter(ref, s) + rng.normal(0, 2, ref.shape), ref + rng.normal(0, 2, ref.shape))
        for s in (0.5, 2.0, 4.0)
    ]
    assert res[0] < res[1] < res[2]


def test_bad_inputs_are_refused_with_a_message():
    with pytest.raises(InputError, match="differ in shape"):
        metrics.psnr(np.zeros((4, 4)), np.zeros((5, 4)))
    with pytest.raises(InputError, match="constant"):
        metrics.psnr(np.ones((16, 16)), np.ones((16, 16)))
    with pytest.raises(InputError, match="NaN"):
        metrics.ssim(np.full((16, 16), np.nan), np.arange(256.0).reshape(16, 16))


def test_compare_reports_all_three(em):
    out = metrics.compare(em[0] + 1.0, em[0], pixel_size=4.0)
    assert set(out) == {"psnr", "ssim", "frc_resolution"}
    assert out["ssim"] > 0.99 and out["frc_resolution"] == 8.0


def test_perceptual_scores_order_a_blur_and_noise_as_expected(isbi_clean):
    from scipy.ndimage import gaussian_filter

    from napari_emdiffuse.metrics import fsim, gmsd, ms_ssim

    clean = isbi_clean[:1, :192, :192].astype(np.float64)
    noisy = clean + np.random.default_rng(0).normal(0, 0.15, clean.shape)
    smooth = np.stack([gaussian_filter(p, 1.0) for p in noisy])
    assert ms_ssim(clean, clean, 1.0) == pytest.approx(1.0) and fsim(clean, clean, 1.0) == pytest.approx(1.0)
    assert gmsd(clean, clean, 1.0) == pytest.approx(0.0, abs=1e-9)
    for score, better in ((ms_ssim, np.greater), (fsim, np.greater), (gmsd, np.less)):
        assert better(score(smooth, clean, 1.0), score(noisy, clean, 1.0)), score.__name__
    assert 0 < ms_ssim(noisy[:, :40], clean[:, :40], 1.0) < 1  # few scales on a thin image
