"""The error map and its conformal calibration on numbers whose answer is known."""

import numpy as np
import pytest

from napari_emdiffuse import uncertainty


def test_error_map_pools_the_variance_over_a_neighbourhood():
    std = np.zeros((2, 64, 64), np.float32)
    std[0, 32, 32] = 4.0  # one noisy pixel: a 16 px neighbourhood holds 1/256 of its variance
    u = uncertainty.error_map(std)
    assert u.shape == std.shape and u[1].max() == 0
    assert u[0, 32, 32] == pytest.approx(4.0 / 16, rel=1e-4)
    assert u[0, 0, 0] == 0  # far away
    flat = uncertainty.error_map(np.full((40, 40), 0.3, np.float32))
    np.testing.assert_allclose(flat, 0.3, rtol=1e-5)


def test_conformal_scale_covers_the_asked_share_of_new_pixels():
    rng = np.random.default_rng(0)
    u = rng.uniform(0.5, 2.0, 200_000)
    err = rng.standard_normal(u.size) * u * 1.7  # the spread underestimates the error by 1.7
    q = uncertainty.fit(err[:100_000], u[:100_000])
    assert q == sorted(q, reverse=True) and len(q) == len(uncertainty.ALPHAS)
    table = {"alphas": list(uncertainty.ALPHAS), "q": q}
    for alpha in (0.1, 0.2, 0.05):
        qa = uncertainty.scale(table, alpha)
        assert qa == pytest.approx(1.7 * {0.1: 1.645, 0.2: 1.2816, 0.05: 1.96}[alpha], rel=0.02)
        assert uncertainty.coverage(err[100_000:], u[100_000:], qa) == pytest.approx(1 - alpha, abs=0.005)
    with pytest.raises(ValueError, match="alpha must be between 0 and 1"):
        uncertainty.scale(table, 1.5)
