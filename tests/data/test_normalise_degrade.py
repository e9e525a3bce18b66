"""Normalisation for any dtype and the simulated degradations, on real EM."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from napari_emdiffuse.data.degrade import poisson_gaussian, scan_line_jitter
from napari_emdiffuse.data.normalise import Normaliser, check_image, fit_normaliser
from napari_emdiffuse.errors import InputError


@pytest.mark.parametrize("dtype,scale", [(np.uint8, 1), (np.uint16, 250), (np.float32, 1 / 255)])
def test_percentiles_do_not_depend_on_dtype(isbi_slice, dtype, scale):
    raw = (isbi_slice * 255 * scale).astype(dtype)
    n = fit_normaliser(raw)
    y = n.forward(raw)
    assert -1.2 < np.percentile(y, 1) < -0.7 and 0.7 < np.percentile(y, 99) < 1.2
    np.testing.assert_allclose(n.inverse(y), raw.astype(np.float32), rtol=1e-4, atol=1e-3 * scale)


def test_saturated_and_empty_regions_do_not_squash_the_range(isbi_slice):
    raw = (isbi_slice * 200 + 20).astype(np.uint8)
    clean = fit_normaliser(raw)
    spoilt = raw.copy()
    spoilt[:200] = 255  # a saturated band (charging) and an empty border
    spoilt[:, :60] = 0
    robust = fit_normaliser(spoilt)
    assert abs(robust.low - clean.low) < 6 and abs(robust.high - clean.high) < 6


def test_statistics_round_trip_and_lazy_application(isbi_slice):
    n = fit_normaliser(isbi_slice)
    again = Normaliser.from_dict(n.to_dict())
    assert again == n
    lazy = again.forward_lazy(da.from_array(isbi_slice, chunks=128))
    np.testing.assert_allclose(lazy.compute(), n.forward(isbi_slice))
    with pytest.raises(InputError, match="low"):
        Normaliser.from_dict({"lo": 1})


def test_unusable_images_are_refused(isbi_slice):
    with pytest.raises(InputError, match="constant"):
        fit_normaliser(np.full((64, 64), 7, np.uint16))
    bad = isbi_slice.copy()
    bad[3, 4] = np.inf
    with pytest.raises(InputError, match="NaN or infinite"):
        fit_normaliser(bad)
    with pytest.raises(InputError, match="RGB"):
        check_image(np.stack([isbi_slice] * 3, axis=-1))


@pytest.mark.parametrize(
    "shape, message",
    [((1, 128), "input is 1 x 128 pixels"), ((128, 1), "input is 128 x 1 pixels"), ((4, 1, 64), "input has planes of 1 x 64 pixels")],
)
def test_an_image_one_pixel_high_or_wide_is_refused_with_the_smallest_size(shape, message):
    """Its noise (measured in 2 x 2 blocks) was the median of nothing: a numpy RuntimeWarning
    and NaN bounds, instead of a message."""
    with pytest.raises(InputError) as err:
        check_image(np.arange(np.prod(shape), dtype=np.uint8).reshape(shape), "input")
    assert str(err.value) == f"{message}; the smallest image this tool takes is 2 x 2 pixels"
    check_image(np.arange(2 * 128, dtype=np.uint8).reshape(2, 128), "input")  # two rows are enough


def test_poisson_gaussian_noise_follows_the_dose(isbi_slice):
    flat = np.full((256, 256), 0.5, np.float32)
    for peak in (5.0, 50.0):
        noisy = poisson_gaussian(flat, peak, 0.02, seed=1)
        assert abs(noisy.mean() - 0.5) < 0.01
        assert abs(noisy.var() - (0.5 / peak + 0.02**2)) < 0.1 * (0.5 / peak)


def test_scan_line_jitter_shifts_whole_lines_by_the_given_amount(isbi_slice):
    ramp = np.tile(np.arange(300, dtype=np.float32), (400, 1))
    out = scan_line_jitter(ramp, amplitude=0.7, seed=2)
    offsets = (out - ramp)[:, 50:250].mean(axis=1)  # each line moved as a whole
    assert np.allclose((out - ramp)[:, 50:250], offsets[:, None], atol=1e-3)
    assert 0.6 < offsets.std() < 0.8
    assert abs(np.corrcoef(offsets[:-1], offsets[1:])[0, 1]) < 0.15
    smooth = (scan_line_jitter(ramp, 0.7, correlation=0.9, seed=2) - ramp)[:, 50:250].mean(axis=1)
    assert np.corrcoef(smooth[:-1], smooth[1:])[0, 1] > 0.8
    img = isbi_slice[:64, :64].copy()
    scan_line_jitter(img, 1.0)
    assert np.array_equal(img, isbi_slice[:64, :64])  # the input is left alone


def _bright_block_image(offset: float, dtype) -> np.ndarray:
    """Texture between 100 and 3900 (12-bit data), a flat 64 x 64 block at the brightest level
    (3900) and a few saturated pixels at 4095, shifted by ``offset`` (negative for signed data)."""
    rng = np.random.default_rng(3)
    a = rng.uniform(100, 3900, (256, 256))
    a[:64, :64] = 3900
    a[200, 100:130] = 4095
    return np.rint(a + offset).astype(dtype)


@pytest.mark.parametrize("offset,dtype", [(0, np.uint16), (-2000, np.int16), (0, np.float32), (-2000, np.float64)])
def test_simulated_dose_is_the_requested_one_whatever_the_dtype(offset, dtype):
    """12-bit data in uint16 files and signed MRC data train at the dose asked for: the flat
    brightest block of the simulated input holds about 20 counts (mean^2 / variance of a Poisson
    variable), not 20 x 3900 / 65535 = 1.2 as when the dtype's maximum was full scale."""
    from napari_emdiffuse.data.degrade import DEFAULT_DOSE
    from napari_emdiffuse.variants import get_variant

    clean = _bright_block_image(offset, dtype)
    variant = get_variant("denoise")
    pair = variant.from_clean(clean, variant.options({}), dose=DEFAULT_DOSE, read_noise=0.0, seed=0)
    block = pair["input"][4:60, 4:60].astype(np.float64)
    counts = block.mean() ** 2 / block.var()
    assert abs(counts - DEFAULT_DOSE) < 0.1 * DEFAULT_DOSE, counts
    target = pair["target"]
    assert target.min() == 0.0 and abs(float(np.median(target[:64, :64])) - 1.0) < 0.01
