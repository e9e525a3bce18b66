"""The calibrate job and `emdiffuse calibrate`: error bounds fitted on data with known truth,
through the prediction path, written as a new model folder without touching anything else."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_emdiffuse import uncertainty
from napari_emdiffuse.cli import main
from napari_emdiffuse.jobs.calibrate import CalibrationResult, calibrate
from napari_emdiffuse.jobs.predict import run_predict
from napari_emdiffuse.model_file import Model
from napari_emdiffuse.variants import get_variant


def _run(model, image, truth, **kw) -> CalibrationResult:
    results = [ev for ev in calibrate(model, image, truth, device="cpu", **kw) if isinstance(ev, CalibrationResult)]
    assert len(results) == 1
    return results[0]


def test_the_scale_fitted_on_one_half_covers_the_asked_share_of_the_other(random_model, isbi_pair):
    model = random_model("tiny")
    noisy, clean = isbi_pair[0][:2, :96, :128], isbi_pair[1][:2, :96, :128]
    res = _run(model, noisy, clean, source="two test slices")
    cal = res.model.calibration
    assert model.calibration is None  # the model given is left as it was
    assert (cal["samples"], cal["steps"], cal["sampler"]) == (model.preset.sample.samples, model.preset.sample.steps, model.preset.sample.sampler)
    assert cal["pixels"] == cal["check_pixels"] == noisy.size // 2
    # the halves are alike, so the scale fitted on the left covers about 90 % of the right
    assert 0.85 < cal["check_coverage"] < 0.95 and res.check_coverage == cal["check_coverage"]
    assert "**Calibration.** The error bounds were calibrated on two test slices" in res.model.info.card
    # predict with the calibrated model gives bounds whose width is the fitted scale times the error map
    out = run_predict(res.model, noisy, device="cpu")
    q = uncertainty.scale(cal, 0.1)
    np.testing.assert_allclose(np.asarray(out.upper) - np.asarray(out.lower), 2 * q * np.asarray(out.std), rtol=1e-4, atol=1e-6)
    # its error map is the fitted error model applied to the pooled spread the bare model gives
    assert len(cal["error_model"]) == 1 + len(uncertainty.FEATURES)
    bare = run_predict(model, noisy, device="cpu")
    from napari_emdiffuse.jobs.predict import normaliser_for

    nz = normaliser_for(model, noisy)
    expected = uncertainty.ErrorModel.of(cal, nz.low, nz.high)(np.asarray(bare.std), np.asarray(bare.mean))
    np.testing.assert_allclose(np.asarray(out.std), expected, rtol=1e-4, atol=1e-6)
    # calibrating the calibrated model again starts from that same bare spread: the same fit
    again = _run(res.model, noisy, clean, source="two test slices").model.calibration
    np.testing.assert_allclose(again["error_model"], cal["error_model"], rtol=1e-5)


def test_bounds_widen_where_the_input_is_noisier_than_the_calibration_data(random_model, isbi_pair, tmp_path):
    """Calibration stores its input's noise level; a plane whose input is clearly noisier gets
    its error map (and so its interval) widened by the ratio, with a warning naming it and a
    record in the provenance; planes like the calibration data are left as they were."""
    from dataclasses import replace

    from napari_emdiffuse.jobs.events import Message
    from napari_emdiffuse.jobs.predict import predict

    model = random_model("tiny")
    noisy, clean = isbi_pair[0][:2, :96, :128], isbi_pair[1][:2, :96, :128]
    calibrated = _run(model, noisy, clean).model
    cal = calibrated.calibration
    assert cal["input_noise"] == pytest.approx(np.median(uncertainty.input_noise(noisy)))
    stack = noisy.astype(np.float32).copy()
    stack[1] += np.random.default_rng(0).normal(0, 2 * uncertainty.noise_level(stack[1]), stack[1].shape).astype(np.float32)  # about 2.2x the noise
    plain = Model(calibrated.preset, replace(calibrated.info, metrics={**calibrated.info.metrics, "calibration": {k: v for k, v in cal.items() if k != "input_noise"}}), calibrated.network)
    events = list(predict(calibrated, stack, device="cpu"))
    out, before = events[-1], run_predict(plain, stack, device="cpu")
    ratio = uncertainty.input_noise(stack) / cal["input_noise"]
    assert ratio[0] < uncertainty.NOISE_TOLERANCE < ratio[1]
    widen = ratio[1] ** get_variant("denoise").noise_exponent  # a denoiser's error hardly grows with the noise
    assert 1 < widen < ratio[1]
    np.testing.assert_array_equal(np.asarray(out.std[0]), np.asarray(before.std[0]))
    np.testing.assert_allclose(np.asarray(out.std[1]), np.asarray(before.std[1]) * widen, rtol=1e-5)
    q = uncertainty.scale(cal, 0.1)
    np.testing.assert_allclose(np.asarray(out.upper) - np.asarray(out.lower), 2 * q * np.asarray(out.std), rtol=1e-4, atol=1e-6)
    notes = [ev.text for ev in events if isinstance(ev, Message) and "noisier" in ev.text]
    assert len(notes) == 1 and notes[0].startswith("1 of 2 input planes (1) are up to") and f"{ratio[1]:.1f}x" in notes[0]
    assert not [ev for ev in predict(calibrated, noisy, device="cpu") if isinstance(ev, Message) and "noisier" in ev.text]
    from napari_emdiffuse.data.io import read_image

    run_predict(calibrated, stack, device="cpu", output=tmp_path / "o.tif")
    prov = read_image(tmp_path / "o_upper.tif").meta["provenance"]
    assert prov["bounds_widened"] == pytest.approx([1.0, widen])
    from napari_emdiffuse.data.cli_commands import _provenance_lines

    assert f"bounds:   widened for an input noisier than the calibration data: plane 1 {widen:.2f}x" in _provenance_lines(prov)
    # what interval the bounds are, and whether it was sampled as calibrated (info did not say: a user's walk)
    assert "bounds:   lower/upper hold the truth at 90 % of pixels like the calibration data's (sampled as calibrated)" in _provenance_lines(prov)
    fewer = {**prov, "bounds": {**prov["bounds"], "coverage": 0.8, "settings": "fewer steps"}}
    assert "bounds:   lower/upper hold the truth at below 80 % of pixels like the calibration data's (sampled with fewer steps than calibrated: likely too narrow)" in _provenance_lines(fewer)


def test_a_small_input_a_little_noisier_is_widened_to_be_safe_and_said_so_without_alarm(random_model, isbi_pair):
    """On a small image the noise measure varies more: a ratio above the constant tolerance but
    within the spread for that size still widens the bounds (the safe side), said as an info
    note, not as the warning that the input is noisier."""
    from napari_emdiffuse.jobs.events import Message
    from napari_emdiffuse.jobs.predict import predict

    noisy, clean = isbi_pair[0][:2, :96, :128], isbi_pair[1][:2, :96, :128]
    calibrated = _run(random_model("tiny"), noisy, clean).model
    plane = noisy[0].astype(np.float32)
    rng = np.random.default_rng(3)
    for extra in np.linspace(0.5, 1.0, 11):  # the first amount of added noise that lands between the two tolerances
        image = plane + rng.normal(0, extra * uncertainty.noise_level(plane), plane.shape).astype(np.float32)
        ratio = uncertainty.input_noise(image)[0] / calibrated.calibration["input_noise"]
        if uncertainty.NOISE_TOLERANCE < ratio < uncertainty.noise_tolerance(image.shape):
            break
    else:
        pytest.fail("no amount of added noise landed between the tolerances")
    events = list(predict(calibrated, image, device="cpu"))
    notes = [ev for ev in events if isinstance(ev, Message) and "noise" in ev.text]
    assert len(notes) == 1 and notes[0].level == "info" and notes[0].text.endswith("to be safe")
    assert notes[0].text.startswith("the noise of an image this small (96 x 128 px) cannot be measured precisely: it reads 1.")
    assert events[-1].upper is not None


def test_noise_level_reads_the_noise_not_the_structure():
    """The noise estimate of a plane with edges and gradients is its noise's standard deviation."""
    rng = np.random.default_rng(1)
    y, x = np.mgrid[:256, :300]
    structure = 0.5 * (x > 150) + 0.3 * np.sin(y / 9.0) + y / 512
    for sigma in (0.02, 0.1):
        assert uncertainty.noise_level(structure + rng.normal(0, sigma, structure.shape)) == pytest.approx(sigma, rel=0.06)
    widen = uncertainty.widening(np.array([0.1, 0.12, 0.2]), 0.1)
    np.testing.assert_allclose(widen, [1.0, 1.0, 2.0])  # within the tolerance: unchanged
    np.testing.assert_allclose(uncertainty.widening(np.array([0.12, 0.4]), 0.1, 0.5), [1.0, 2.0])


def test_a_volume_variant_calibrates_only_the_slices_it_predicts(random_model, small_stack):
    model = random_model("vemdiffuse-i-tiny", {"factor": 2})
    variant = get_variant(model.variant)
    clean = np.concatenate([small_stack, small_stack[::-1]])[:7]  # 7 slices: 4 kept, 3 predicted
    image, truth = variant.calibration_pair(clean, variant.options(model.preset.variant_options))
    assert image.shape[0] == 4 and truth.shape == (7, *clean.shape[1:])
    cal = _run(model, image, truth).model.calibration
    h, w = clean.shape[1:]
    assert cal["pixels"] + cal["check_pixels"] == 3 * h * w  # the 4 copied slices count in neither half


def test_a_truth_that_does_not_match_the_output_is_refused(random_model, isbi_pair):
    from napari_emdiffuse.errors import InputError

    with pytest.raises(InputError, match="must match pixel for pixel"):
        _run(random_model("tiny"), isbi_pair[0][0, :64, :64], isbi_pair[1][0, :64, :80])


def test_cli_writes_a_calibrated_copy_and_refuses_to_replace_what_exists(tiny_model_dir, isbi_clean, tmp_path, capsys):
    clean = tmp_path / "clean.tif"
    tifffile.imwrite(clean, (isbi_clean[:1, :96, :128] * 255).astype(np.uint8))
    out = tmp_path / "calibrated"
    args = ["calibrate", "--model", str(tiny_model_dir), "--clean", str(clean), "--out", str(out), "--device", "cpu", "-q"]
    before = (tiny_model_dir / "model.json").read_bytes()
    assert main(args) == 0
    assert (tiny_model_dir / "model.json").read_bytes() == before  # the source model is untouched
    model = Model.load(out)
    assert model.calibration["data"].startswith("clean.tif (its degradation simulated: dose 20")
    assert (out / "MODEL_CARD.md").read_text() == model.info.card
    # an existing model folder is replaced only with --overwrite; any other folder never
    capsys.readouterr()
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main([*args[:-5], "--out", str(mine), "--device", "cpu", "-q"]) == 2
    err = capsys.readouterr().err
    assert "not a model folder" in err and len(err.strip().splitlines()) == 1
    assert (mine / "notes.txt").read_text() == "keep me"
    stamp = json.loads((out / "model.json").read_text())["metrics"]["calibration"]["check_coverage"]
    assert main([*args, "--overwrite", "--samples", "3"]) == 0
    again = json.loads((out / "model.json").read_text())["metrics"]["calibration"]
    assert again["samples"] == 3 and isinstance(stamp, float)
    # the model's own folder is never the copy: it may hold the training checkpoint (the CLI
    # walk of 2026-12-07: --out = --model with --overwrite deleted checkpoint.safetensors)
    (out / "checkpoint.safetensors").write_bytes(b"training state")
    assert main(["calibrate", "--model", str(out), "--clean", str(clean), "--out", str(out), "--overwrite", "--device", "cpu", "-q"]) == 2
    err = capsys.readouterr().err
    assert "is the model being calibrated" in err and len(err.strip().splitlines()) == 1
    assert (out / "checkpoint.safetensors").read_bytes() == b"training state"


def test_cli_asks_for_clean_data_or_a_pair(tiny_model_dir, tmp_path, capsys):
    assert main(["calibrate", "--model", str(tiny_model_dir), "--out", str(tmp_path / "m")]) == 2
    assert "either --clean" in capsys.readouterr().err
    assert main(["calibrate", "--model", str(tiny_model_dir), "--input", "a.tif", "--out", str(tmp_path / "m")]) == 2
    assert "both --input and --truth" in capsys.readouterr().err


def test_the_simulated_input_has_the_voxel_size_of_what_it_simulates():
    from napari_emdiffuse.variants import get_variant

    voxel = (0.05, 0.004, 0.004)
    sr, iso = get_variant("superres"), get_variant("iso_i")
    assert sr.calibration_voxel(voxel, sr.options({"factor": 2})) == (0.05, 0.008, 0.008)
    assert iso.calibration_voxel((0.005, 0.005, 0.005), iso.options({"factor": 4})) == (0.02, 0.005, 0.005)
    assert get_variant("denoise").calibration_voxel(voxel, get_variant("denoise").options({})) == voxel
    assert sr.calibration_voxel((1.0, 1.0), sr.options({"factor": 2})) == (1.0, 1.0)  # no pixel size: none made up
