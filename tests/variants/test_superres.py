"""EMDiffuse-r: geometry, degradation, training pairs, whole-image prediction and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from napari_emdiffuse.config import ConfigError, load_preset
from napari_emdiffuse.data.degrade import psf_bin
from napari_emdiffuse.data.normalise import Normaliser
from napari_emdiffuse.errors import InputError
from napari_emdiffuse.jobs.events import Kind
from napari_emdiffuse.jobs.predict import run_predict
from napari_emdiffuse.jobs.train import train
from napari_emdiffuse.model_file import Model
from napari_emdiffuse.variants import get_variant, resolve
from napari_emdiffuse.variants.base import Split
from napari_emdiffuse.variants.superres import upsample, upsample_bilinear, upsampled_window

SR = get_variant("superres")


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_geometry_divides_pixel_size_for_2d_and_stacks(factor):
    opts = SR.options({"factor": factor})
    g2 = SR.output_geometry((50, 70), (0.008, 0.006), opts)
    assert g2.shape == (50 * factor, 70 * factor)
    assert g2.voxel == pytest.approx((0.008 / factor, 0.006 / factor))
    g3 = SR.output_geometry((3, 50, 70), (0.05, 0.008, 0.006), opts)
    assert g3.shape == (3, 50 * factor, 70 * factor)
    assert g3.voxel == pytest.approx((0.05, 0.008 / factor, 0.006 / factor))  # z untouched
    assert [p for b in SR.blocks((3, 50, 70), opts) for p in b.planes] == [(50 * factor, 70 * factor)] * 3
    assert g3.origin == pytest.approx((0.0, (0.5 / factor - 0.5) * 0.008, (0.5 / factor - 0.5) * 0.006))  # pixel centres aligned


@pytest.mark.parametrize("bad", [0, 1, -2, 2.5, 5, "2x", True, None])
def test_bad_factors_are_refused_with_the_allowed_values(bad):
    with pytest.raises(ConfigError, match="factor: .*2 to 4"):
        SR.options({"factor": bad})
    with pytest.raises(ConfigError, match="factor"):
        resolve(load_preset("emdiffuse-r-tiny", {"variant_options": {"factor": bad}}))


def test_whole_float_factor_is_accepted():
    assert SR.options({"factor": 3.0}).factor == 3


def test_psf_bin_keeps_mean_and_bins_by_the_factor():
    rng = np.random.default_rng(0)
    img = rng.random((2, 37, 50)).astype(np.float32)
    low = psf_bin(img, 3)
    assert low.shape == (2, 12, 16)
    assert low.mean() == pytest.approx(img[:, :36, :48].mean(), abs=0.01)
    assert low.std() < img.std()  # blurred and averaged
    flat = psf_bin(np.full((8, 8), 0.25, np.float32), 4)
    np.testing.assert_allclose(flat, 0.25, atol=1e-6)


def test_window_upsampling_equals_whole_image_upsampling_bit_for_bit():
    """A block of a large plane upsamples only its window of the input: the result must be the
    whole image's, exactly (also at the right edge, where OpenCV's last columns depend on where
    the row starts, and for the bilinear condition of imported models)."""
    rng = np.random.default_rng(1)
    low = rng.random((23, 311)).astype(np.float32)
    for resize in (upsample, upsample_bilinear):
        for f in (2, 3, 4):
            whole = resize(low, f)
            w = 311 * f
            rects = [(0, 5, 0, w), (7, 30, 13, 200), (f * 23 - 9, f * 23, 250 * f, w), (0, 9, 248 * f, w), (13, 14, 71, 72), (0, f * 23, 5, w)]
            for y0, y1, x0, x1 in rects:
                got = upsampled_window(low, f, (y0, y1, x0, x1), lambda a: a, resize)
                np.testing.assert_array_equal(got, whole[y0:y1, x0:x1])


def test_from_clean_simulates_low_resolution_and_crops_to_the_factor(isbi_clean):
    opts = SR.options({"factor": 3})
    clean = (isbi_clean[:2, :100, :101] * 255).astype(np.uint8)
    arrays = SR.from_clean(clean, opts)
    assert arrays["target"].shape == (2, 99, 99)
    assert arrays["input"].shape == (2, 33, 33)
    noisy = SR.from_clean(clean, opts, dose=20, read_noise=0.03, seed=0)["input"]
    assert np.abs(noisy - arrays["input"]).mean() > 0.01
    assert clean.shape == (2, 100, 101)  # the user's array is untouched


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_training_pairs_condition_is_the_upsampled_input(isbi_clean, factor):
    opts = SR.options({"factor": factor})
    arrays = SR.from_clean(isbi_clean[:2, :192, :192], opts)
    src = SR.training_pairs(arrays, opts, Split("train", 0.1, 64, min_std=0.0))
    assert src.patch % factor == 0 and src.patch % 16 == 0
    cond, residual = src.sample(np.random.default_rng(0), 3, src.patch)
    assert cond.shape == residual.shape == (3, 1, src.patch, src.patch)
    cond2, target = src.source.sample(np.random.default_rng(0), 3, src.patch)  # the same draw, whole target
    np.testing.assert_array_equal(cond, cond2)
    np.testing.assert_allclose(residual, target - cond, atol=1e-6)
    # the condition is an interpolation of the same place: strongly correlated with the target
    assert np.corrcoef(cond.ravel(), target.ravel())[0, 1] > 0.5
    assert residual.std() < target.std()


def test_a_target_on_another_intensity_scale_is_mapped_onto_the_inputs(isbi_clean):
    """Two real acquisitions differ in gain and offset: the model must learn the input's scale."""
    opts = SR.options({"factor": 2})
    arrays = SR.from_clean(isbi_clean[:2, :192, :192], opts)
    rescaled = {"input": arrays["input"], "target": 50 * arrays["target"] + 20}
    same = SR.training_pairs(arrays, opts, Split("train", 0.1, 64)).source.sample(np.random.default_rng(0), 3, 64)
    other = SR.training_pairs(rescaled, opts, Split("train", 0.1, 64)).source.sample(np.random.default_rng(0), 3, 64)
    np.testing.assert_allclose(other[1], same[1], atol=0.03 * np.ptp(same[1]))


def test_mismatched_pair_is_refused():
    opts = SR.options({"factor": 2})
    low = np.zeros((2, 30, 40), np.float32)
    with pytest.raises(InputError, match="2 times the input"):
        SR.training_pairs({"input": low, "target": np.zeros((2, 60, 79), np.float32)}, opts, Split("train", 0.1, 32))
    with pytest.raises(InputError, match="patch size 32 px is too small at factor 3.*48"):
        SR.training_pairs({"input": low, "target": upsample(low, 3)}, SR.options({"factor": 3}), Split("train", 0.1, 32))
    with pytest.raises(InputError, match=r"input has planes of 12 x 12 px; the 8 x 12 px it trains on .* too small for a 48 px target patch, 16 px of the input at factor 3 \(train.patch_size 64"):
        small = np.random.default_rng(0).random((1, 12, 12)).astype(np.float32)
        SR.training_pairs({"input": small, "target": upsample(small, 3)}, SR.options({"factor": 3}), Split("train", 0.1, 64))


@pytest.mark.parametrize("factor", [2, 3])
def test_prediction_over_tiles_reads_the_right_rows(factor, oracle_model):
    """With an oracle answering half its condition (the network's share, added to the bicubic
    baseline), prediction must equal 1.5 x the normalised bicubic upsampling exactly, across
    many tiles and the band boundaries of the row reader."""
    model = oracle_model("emdiffuse-r-tiny", {"factor": factor}, lambda c, x: 0.5 * c, 1, 1)
    rng = np.random.default_rng(2)
    image = (rng.random((2, 29, 41)) * 200 + 20).astype(np.uint8)
    before = image.copy()
    norm = Normaliser(20.0, 220.0)
    res = run_predict(model, image, voxel=(0.05, 0.01, 0.01), device="cpu", normaliser=norm)
    assert res.mean.shape == (2, 29 * factor, 41 * factor)
    assert res.voxel == pytest.approx((0.05, 0.01 / factor, 0.01 / factor))
    expect = norm.inverse(1.5 * norm.forward(upsample(image, factor)))
    np.testing.assert_allclose(res.mean, expect, atol=0.02)
    assert np.abs(res.std).max() < 0.02  # every sample agrees
    np.testing.assert_array_equal(image, before)


def test_tiny_model_trains_and_predicts_2d(isbi_clean, tmp_path):
    preset = load_preset("emdiffuse-r-tiny", {"train": {"iterations": 6, "val_every": 3, "checkpoint_every": 6}})  # a preview comes with a mid-run validation
    arrays = SR.from_clean(isbi_clean[:2, :128, :128], SR.options(preset.variant_options))
    events = list(train(preset, arrays, tmp_path / "m", device="cpu"))
    # previews and the "input" PSNR are in image terms, not in the network's residual terms
    preview = next(e for e in events if e.kind is Kind.PREVIEW)
    assert np.corrcoef(preview.cond.ravel(), preview.target.ravel())[0, 1] > 0.8
    assert preview.prediction.shape == preview.target.shape == preview.cond.shape
    val = next(e for e in events if e.kind is Kind.VALIDATION)
    assert 15 < val.input_psnr < 45  # bicubic against the truth, on the normalised scale
    model = Model.load(tmp_path / "m")
    assert (model.info.out_channels, model.info.cond_channels) == (1, 1)
    low = arrays["input"][0, :24, :40]
    res = run_predict(model, low, voxel=(0.008, 0.008), device="cpu", keep_samples=True)
    assert res.mean.shape == res.std.shape == (48, 80)
    assert res.samples.shape == (2, 48, 80)
    assert res.voxel == pytest.approx((0.004, 0.004))
    assert np.isfinite(res.mean).all() and (res.std >= 0).all()
