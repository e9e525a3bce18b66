"""Registration of pairs and drift correction, measured on real EM with known distortions."""

from __future__ import annotations

import numpy as np
import pytest

from napari_emdiffuse.data.degrade import poisson_gaussian
from napari_emdiffuse.data.register import FLOW_SLACK, RegistrationError, correct_drift, estimate_drift, keep, ncc, ncc_ceiling, null_sd, patch_ceiling, patch_ncc, patch_null, register_pair, smoothed
from napari_emdiffuse.errors import InputError



def _median_error(coords, qy, qx, margin=32):
    err = np.hypot(coords[0] - qy, coords[1] - qx)
    return float(np.median(err[margin:-margin, margin:-margin]))


@pytest.mark.parametrize("seed,angle,shift", [(0, 3.0, (7.3, -11.6)), (1, -4.0, (-15.2, 9.7))])
def test_noisy_rotated_warped_pair_registered_to_half_a_pixel(isbi_slice, seed, angle, shift, distort):
    qy, qx = distort.known_warp(isbi_slice.shape, shift, angle, elastic=3.0, seed=seed)
    noisy = distort.heavy_noise(distort.apply_warp(isbi_slice, qy, qx), seed=seed)
    reg = register_pair(noisy, isbi_slice)
    rigid = register_pair(noisy, isbi_slice, local=False)
    assert _median_error(reg.coords, qy, qx) < 0.5
    # the non-rigid step is what gets there: the affine alone leaves the section warp
    assert _median_error(rigid.coords, qy, qx) > _median_error(reg.coords, qy, qx)
    assert reg.ncc_local > reg.ncc_before + 0.3
    assert reg.kept.sum() >= reg.kept.size // 2
    # the warped target lines up with the input's content
    assert np.corrcoef(reg.warped[64:-64, 64:-64].ravel(), distort.apply_warp(isbi_slice, qy, qx)[64:-64, 64:-64].ravel())[0, 1] > 0.97


def test_super_resolution_pair_registered_at_the_fine_grid(isbi_slice, distort):
    """A 2x pair: the low-resolution input is the binned, shifted high-resolution image."""
    from napari_emdiffuse.data.degrade import psf_bin

    qy, qx = distort.known_warp(isbi_slice.shape, (6.0, -4.0), 2.0, elastic=0.0)
    low = distort.heavy_noise(psf_bin(distort.apply_warp(isbi_slice, qy, qx), 2), peak=20)
    reg = register_pair(low, isbi_slice, factor=2, patch=64)
    assert reg.warped.shape == isbi_slice.shape
    assert _median_error(reg.coords, qy, qx) < 1.0  # fine pixels: half a coarse pixel


@pytest.mark.parametrize("peak", [1, 2, 5, 20])
def test_only_pixels_the_target_does_not_reach_count_as_not_covered(isbi_slice, peak):
    """Registration is accurate to a fraction of a pixel, not exactly, and at 1-2 counts per pixel
    its local flow wanders by a pixel: an aligned pair must still cover its edges; a target 24 px
    (or 2 px) to the left leaves the input's last 24 (2) columns uncovered."""
    aligned = register_pair(poisson_gaussian(isbi_slice, peak, 0.03), isbi_slice)
    assert aligned.valid.all() and aligned.kept.all()
    shifted = register_pair(poisson_gaussian(isbi_slice[:, 24:], peak, 0.03), isbi_slice[:, :-24])
    assert shifted.valid[:, :464].all() and not shifted.valid[:, 464:].any()
    assert shifted.warped[:, 464:].max() == 0  # nothing made up where the target is missing
    nudged = register_pair(poisson_gaussian(isbi_slice[:, 2:], peak, 0.03), isbi_slice[:, :-2])
    assert nudged.valid[:, :508].all() and not nudged.valid[:, 508:].any()


@pytest.mark.parametrize("amp", [4.0, 8.0])
def test_a_warp_that_carries_the_input_past_the_targets_edge_leaves_it_uncovered_there(isbi_slice, distort, amp):
    """A section warped by 4 or 8 px at the input's edge shows there what lies past the target's
    edge. The global transform still places it on the target; the flow sees the warp, and where it
    carries pixels further past the edge than it wanders by itself they are not covered: not
    counted, and not filled with the target's edge repeated (0.08 of the range wrong there). The
    review's case (noise seed 1), where the global transform alone covered all of the 4 px warp."""
    w = isbi_slice.shape[1] - 40
    shown, _ = distort.edge_warp(isbi_slice, w, amp)
    reg = register_pair(poisson_gaussian(np.clip(shown, 0, 1), 20, 0.03, seed=1), isbi_slice[:, :w])
    past = reg.coords[1] - (w - 0.5)  # how far past the target's edge the flow places each pixel
    assert past.max() > FLOW_SLACK + 0.5  # the flow sees the warp
    assert not reg.valid[past > FLOW_SLACK].any()
    assert reg.warped[past > FLOW_SLACK].max() == 0


@pytest.mark.parametrize("read", [0.0, 0.05])
def test_the_ceiling_is_the_ncc_a_perfectly_aligned_pair_reaches_through_its_noise(isbi_slice, read):
    """Shot noise at 0.5 counts per pixel (plus read noise) on the input and white noise on the
    target: the ceiling, from each image's own noise, predicts what they correlate."""
    noisy = poisson_gaussian(isbi_slice, 0.5, read, seed=3)
    target = isbi_slice + np.random.default_rng(4).normal(0, 0.2, isbi_slice.shape).astype(np.float32)
    (a, na), (b, nb) = smoothed(noisy, 2.0), smoothed(target, 2.0)
    measured, ceiling = ncc(a, b), ncc_ceiling(a, b, na, nb)
    assert 0.4 < ceiling < 0.8 and ceiling == pytest.approx(measured, abs=0.03)
    assert ncc_ceiling(a, a, np.zeros_like(a), np.zeros_like(a)) == 1.0


def test_an_aligned_pair_at_a_quarter_count_keeps_its_patches_and_one_patch_off_does_not(isbi_slice):
    """At 0.25 counts per pixel noise holds the NCC of aligned 128 px patches near 0.5: a fixed
    --min-ncc of 0.6 refused almost all of them (and some such pairs as unrelated). Judged against
    their noise's ceiling they are kept; a target one patch off, as noisy, still is not."""
    noisy = poisson_gaussian(isbi_slice, 0.25, 0.03, seed=7)
    reg = register_pair(noisy, isbi_slice)
    assert np.nanmedian(reg.patch_ncc) < 0.6  # the old rule refuses them
    assert reg.kept.mean() >= 0.95 and reg.summary()["ncc_ceiling"] < 0.7
    (a, na) = smoothed(noisy, 2.0)
    full = np.ones(noisy.shape, bool)
    for axis in (0, 1):
        b, nb = smoothed(np.roll(isbi_slice, 128, axis), 2.0)
        assert np.nanmax(patch_ncc(a, b, full, 128) / patch_ceiling(a, b, full, 128, na, nb)) < 0.6


def _flat(seed, dose=None):
    """A 512 px image at mid-grey holding no signal: at ``dose`` counts per pixel (read noise
    0.03), or with noise 0.01 of the range as a target."""
    flat = np.full((512, 512), 0.5, np.float32)
    if dose is not None:
        return poisson_gaussian(flat, dose, 0.03, seed=seed)
    return flat + np.random.default_rng(seed).normal(0, 0.01, flat.shape).astype(np.float32)


def test_chance_is_the_spread_of_the_ncc_of_unrelated_noise():
    """null_sd: the NCC of unrelated smoothed noise spreads as predicted (128 px, sigma 2: 0.039)."""
    rng = np.random.default_rng(0)
    scores = [ncc(smoothed(rng.normal(size=(128, 128)), 2.0)[0], smoothed(rng.normal(size=(128, 128)), 2.0)[0]) for _ in range(300)]
    assert null_sd(128 * 128, 2.0) == pytest.approx(np.sqrt(2 * np.pi * 4 / 128**2), rel=0.02)
    assert np.std(scores) == pytest.approx(null_sd(128 * 128, 2.0), rel=0.15)
    assert null_sd(100, 0.0) == pytest.approx(0.1)


@pytest.mark.parametrize("dose", [0.25, 5, 1000])
def test_a_flat_misaligned_patch_is_not_kept(dose):
    """In a patch with no signal the ceiling is tiny (about 0.05), so chance cleared 0.6 of it:
    the ceiling alone kept 12-16 % of such misaligned 128 px patches at any dose (the review's
    simulation). Judged against chance too, none is kept, and they hold no signal."""
    full = np.ones((512, 512), bool)
    by_ceiling = kept = no_signal = 0
    for seed in range(8):
        (a, na), (b, nb) = smoothed(_flat(seed, dose), 2.0), smoothed(_flat(100 + seed), 2.0)
        scores, ceilings = patch_ncc(a, b, full, 128), patch_ceiling(a, b, full, 128, na, nb)
        by_ceiling += int((np.nan_to_num(scores / ceilings, nan=-1) >= 0.6).sum())
        k, n = keep(scores, ceilings, patch_null(full, 128, 2.0), 0.6)
        kept, no_signal = kept + int(k.sum()), no_signal + int(n.sum())
    assert by_ceiling >= 5  # what the ceiling alone let through (of 128 patches)
    assert kept == 0 and no_signal == 128


@pytest.mark.parametrize("dose", [1, 20])
def test_a_pair_with_no_signal_keeps_no_patch(dose):
    """Pure noise on both sides, unrelated or of the same flat scene: refused as holding no
    signal (not as unrelated: prepare counts it so), or not a patch kept."""
    for target in (np.random.default_rng(1).random((512, 512)).astype(np.float32), _flat(2)):
        try:
            reg = register_pair(_flat(3, dose), target)
        except RegistrationError as err:
            assert err.no_signal and "no signal" in str(err) and "same place" not in str(err)
            continue
        assert not reg.kept.any() and reg.no_signal.all()


def test_a_constant_image_is_refused_as_holding_no_signal():
    with pytest.raises(RegistrationError, match="constant") as err:
        register_pair(_flat(3, 5), np.full((512, 512), 0.5, np.float32))
    assert err.value.no_signal


def test_unrelated_pairs_are_refused(isbi_slice, fibsem_path, distort):
    import tifffile

    other = tifffile.imread(fibsem_path, key=100).astype(np.float32)
    with pytest.raises(RegistrationError, match="same place"):
        register_pair(distort.heavy_noise(isbi_slice), other)
    with pytest.raises(RegistrationError, match="same place"):  # however noisy: not the same place
        register_pair(poisson_gaussian(isbi_slice, 0.25, 0.03), other)
    with pytest.raises(RegistrationError):
        register_pair(isbi_slice, np.random.default_rng(0).random(isbi_slice.shape).astype(np.float32))


def test_bad_pairs_give_clear_errors(isbi_slice):
    with pytest.raises(RegistrationError, match="expected a target of 512 x 512"):
        register_pair(isbi_slice, isbi_slice[:400])
    with pytest.raises(RegistrationError, match="constant"):
        register_pair(isbi_slice, np.full_like(isbi_slice, 0.3))
    bad = isbi_slice.copy()
    bad[10, 10] = np.nan
    with pytest.raises(InputError, match="NaN"):
        register_pair(bad, isbi_slice)
    with pytest.raises(InputError, match="2D"):
        register_pair(np.stack([isbi_slice] * 3, -1), isbi_slice)


def test_inputs_are_not_modified(isbi_slice, distort):
    a = distort.heavy_noise(isbi_slice)
    a0, b0 = a.copy(), isbi_slice.copy()
    register_pair(a, isbi_slice)
    assert np.array_equal(a, a0) and np.array_equal(isbi_slice, b0)


def test_drift_of_a_fibsem_stack_is_corrected_to_half_a_pixel(fibsem_crop, distort):
    # Structures oblique to z look like drift to any slice-to-slice method, so the stack as
    # published has an apparent drift of its own; the known drift added on top must be found.
    baseline = estimate_drift(fibsem_crop).shifts
    stack, truth = distort.drifted(fibsem_crop, seed=3)
    est = estimate_drift(stack)
    err = np.hypot(*(est.shifts - baseline - truth).T)
    assert np.median(err) < 0.5
    assert est.summary()["neighbour_ncc_after"] > est.summary()["neighbour_ncc_before"]
    fixed = correct_drift(stack, est.shifts)
    assert fixed.dtype == stack.dtype and fixed.shape[0] == stack.shape[0]
    assert fixed.shape[1] < stack.shape[1]  # cropped to what every slice covers
    ref = np.asarray(correct_drift(fibsem_crop, baseline, crop=False), np.float32)
    out = np.asarray(correct_drift(stack, est.shifts, crop=False), np.float32)
    inner = (slice(None), slice(40, -40), slice(40, -40))
    assert np.mean(np.abs(out[inner] - ref[inner])) < 0.25 * np.mean(np.abs(stack.astype(np.float32)[inner] - ref[inner]))


def test_drift_needs_a_stack(isbi_slice):
    with pytest.raises(InputError, match="at least 2 slices"):
        estimate_drift(isbi_slice[None])
