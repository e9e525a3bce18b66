import numpy as np
import pytest

from napari_emdiffuse.data.normalise import match_intensity
from napari_emdiffuse.errors import InputError


def test_gain_and_offset_are_recovered_under_noise(isbi_clean):
    clean = isbi_clean[0]
    noisy = 40 * clean + 7 + np.random.default_rng(0).normal(0, 5, clean.shape)
    a, b = match_intensity(clean, noisy)
    assert a == pytest.approx(40, rel=0.02) and b == pytest.approx(7, abs=0.5)


def test_super_resolution_pairs_are_binned(isbi_clean):
    high = isbi_clean[0]
    low = 2 * high.reshape(256, 2, 256, 2).mean((1, 3)) + 0.1
    a, b = match_intensity(high, low, factor=2)
    assert a == pytest.approx(2, rel=1e-4) and b == pytest.approx(0.1, abs=1e-4)


def test_unrelated_or_inverted_pairs_are_refused(isbi_clean):
    with pytest.raises(InputError, match="not positively related"):
        match_intensity(isbi_clean[0], 1 - isbi_clean[0])
    with pytest.raises(InputError, match="constant"):
        match_intensity(np.ones((8, 8)), isbi_clean[0, :8, :8])


def test_the_coarse_scans_blur_does_not_bias_the_gain(isbi_clean):
    from napari_emdiffuse.data.degrade import psf_bin

    high = isbi_clean[0]
    low = 3 * psf_bin(high, 2) + 0.2  # blurred then binned, on another intensity scale
    biased, _ = match_intensity(high, low, factor=2)
    a, b = match_intensity(high, low, factor=2, smooth=4)
    assert abs(a - 3) < abs(biased - 3)
    assert a == pytest.approx(3, rel=0.03) and b == pytest.approx(0.2, abs=0.03)
