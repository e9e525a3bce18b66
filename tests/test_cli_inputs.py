"""Bad inputs on the command line: one line naming the file and what is wrong with it, before
any computation, never a traceback or a numpy warning, and the inputs left as they were."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import tifffile

from napari_emdiffuse.cli import main
from napari_emdiffuse.models import find_model


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"emdiffuse {command}: error: "), err
    return err.removeprefix(f"emdiffuse {command}: error: ")


def _grey(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)


def _predict(tmp_path, source, model: str = "emdiffuse-n") -> int:
    return main(["predict", "--model", model, "--input", str(source), "--output", str(tmp_path / "out.tif"), "--steps", "1", "--samples", "2", "-q"])


def test_an_image_one_pixel_high_is_refused_naming_the_smallest_size(tmp_path, capsys):
    thin = tmp_path / "thin.tif"
    tifffile.imwrite(thin, _grey((1, 128)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # it was numpy's "Mean of empty slice"
        assert _predict(tmp_path, thin) == 2
    assert _one_error_line(capsys, "predict") == f"image {thin} is 1 x 128 pixels; the smallest image this tool takes is 2 x 2 pixels"
    assert not (tmp_path / "out.tif").exists()


def test_a_1_bit_tiff_is_refused_as_1_bit_not_as_corrupt(tmp_path, capsys):
    mask = tmp_path / "mask.tif"
    tifffile.imwrite(mask, _grey((64, 70)) > 127)  # tifffile packs a bool image as 1 bit a pixel
    before = mask.read_bytes()
    assert _predict(tmp_path, mask) == 2
    message = _one_error_line(capsys, "predict")
    assert message.startswith(f"image {mask} is a 1-bit") and "corrupt" not in message
    assert mask.read_bytes() == before


def test_a_multi_page_file_in_a_slice_folder_is_refused_naming_it(tmp_path, capsys):
    folder = tmp_path / "slices"
    folder.mkdir()
    for z in range(5):
        tifffile.imwrite(folder / f"z{z:03d}.tif", _grey((64, 64), z))
    with tifffile.TiffWriter(folder / "z002.tif") as w:  # three pages, written one by one
        for seed in range(3):
            w.write(_grey((64, 64), seed))
    assert _predict(tmp_path, folder) == 2
    assert _one_error_line(capsys, "predict") == (
        f"{folder / 'z002.tif'} holds 3 slices (shape (3, 64, 64)); a slice folder holds one 2D image per file: split it, or open it on its own as a stack"
    )


@pytest.mark.parametrize("model", ["vemdiffuse-i", "vemdiffuse-a"])
def test_a_vem_model_given_a_2d_image_names_the_file_and_its_shape(tmp_path, capsys, model):
    image = tmp_path / "plane.tif"
    tifffile.imwrite(image, _grey((64, 64)))
    assert _predict(tmp_path, image, model) == 2
    message = _one_error_line(capsys, "predict")
    assert message.startswith(f"image {image} is a single 2D image (64, 64), but vEMDiffuse-") and "works on volumes (z, y, x)" in message


def test_a_model_json_whose_variants_disagree_is_refused_naming_it(tmp_path, capsys):
    folder = shutil.copytree(find_model("emdiffuse-n"), tmp_path / "model")
    meta = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**meta, "variant": "superres"}))
    image = tmp_path / "in.tif"
    tifffile.imwrite(image, _grey((64, 64)))
    assert _predict(tmp_path, image, str(folder)) == 2
    assert _one_error_line(capsys, "predict") == (
        f"{folder}: model.json says variant 'superres' at its top level but 'denoise' in its preset; one of them was edited: make them agree"
    )


@pytest.mark.parametrize("model, output", [("emdiffuse-n", (64, 64)), ("emdiffuse-r", (128, 128))])
def test_calibrate_refuses_a_truth_of_another_shape_naming_both_files_before_predicting(tmp_path, capsys, monkeypatch, model, output):
    from napari_emdiffuse.jobs import calibrate

    def no_prediction(*args, **kwargs):
        raise AssertionError("predicted before the shapes were compared")

    monkeypatch.setattr(calibrate, "predict", no_prediction)
    image, truth = tmp_path / "in.tif", tmp_path / "truth.tif"
    tifffile.imwrite(image, _grey((64, 64)))
    tifffile.imwrite(truth, _grey((64, 80), 1))
    args = ["calibrate", "--model", model, "--input", str(image), "--truth", str(truth), "--out", str(tmp_path / "cal"), "-q"]
    assert main(args) == 2
    assert _one_error_line(capsys, "calibrate") == (
        f"the truth {truth} is (64, 80), but the model's output for the input {image} (64, 64) is {output}: they must match pixel for pixel"
    )
    assert not (tmp_path / "cal").exists()


def test_a_simulated_input_too_small_to_train_on_names_the_clean_file(tmp_path, capsys):
    """With --clean the input is simulated: a refusal of it names the file it was simulated from."""
    clean = tmp_path / "small.tif"
    tifffile.imwrite(clean, (np.random.default_rng(0).random((20, 20)) * 255).astype(np.uint8))
    assert main(["train", "--preset", "tiny", "--clean", str(clean), "--out", str(tmp_path / "run"), "--iterations", "1", "--device", "cpu", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"emdiffuse train: error: input (simulated from {clean}) has planes of 20 x 20 px")
