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

# Colour TIFFs. Colour TIFFs on the command line: recognised by their pages' photometric
# interpretation, stored per pixel or as a stack of planar images, RGB or RGBA, and refused for
# prediction, training and preparation in one line naming the file; ``info`` still describes them,
# as it names the samples of other multi-sample TIFFs (grey+alpha, CMYK, ...). A stack of three
# grey pages stays a volume of three slices, and so does a single image of three or four RGB
# planes that tifffile wrote with its shape description: it is how tifffile (and napari's "Save
# layer") writes a stack of three or four grey slices; planar RGB written otherwise is colour.

RGB, RGBA = _grey((64, 64, 3)), _grey((64, 64, 4))
#: how each colour file is written, and the colour model and shape it reads as
COLOUR = {
    "contiguous-rgb": (RGB, {"photometric": "rgb"}, "RGB", (64, 64, 3)),
    "contiguous-rgba": (RGBA, {"photometric": "rgb"}, "RGBA", (64, 64, 4)),
    "stack-contiguous": (np.stack([RGB, RGB[::-1]]), {"photometric": "rgb"}, "RGB", (2, 64, 64, 3)),
    "stack-planar": (np.stack([np.moveaxis(RGB, -1, 0)] * 2), {"photometric": "rgb", "planarconfig": "separate"}, "RGB", (2, 64, 64, 3)),
}


def _colour_file(tmp_path, kind: str):
    data, kwargs, model, shape = COLOUR[kind]
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, np.ascontiguousarray(data), **kwargs)
    return path, model, shape


def _refused(path, role: str, model: str, shape: tuple[int, ...]) -> str:
    return f"{role} {path} has {shape[-1]} samples per pixel ({model}; shape {shape}), not one grey value: convert it to greyscale first"


@pytest.mark.parametrize("kind", sorted(COLOUR))
def test_predict_refuses_every_colour_tiff_naming_it(tmp_path, capsys, kind):
    path, model, shape = _colour_file(tmp_path, kind)
    before = path.read_bytes()
    out = tmp_path / "out.tif"
    assert main(["predict", "--model", "emdiffuse-n", "--input", str(path), "--output", str(out), "--steps", "1", "--samples", "2", "-q"]) == 2
    assert _one_error_line(capsys, "predict") == _refused(path, "image", model, shape)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["cells.tif"]


@pytest.mark.parametrize(
    "kind, preset, role",
    [("contiguous-rgb", "tiny", "input"), ("contiguous-rgb", "tiny", "clean images"), ("stack-planar", "vemdiffuse-i-tiny", "volume"), ("contiguous-rgba", "tiny", "input")],
)
def test_train_refuses_a_colour_tiff_by_its_role(tmp_path, capsys, kind, preset, role):
    path, model, shape = _colour_file(tmp_path, kind)
    before = path.read_bytes()
    given = {"input": ["--input", str(path), "--target", str(path)], "clean images": ["--clean", str(path)], "volume": ["--volume", str(path)]}[role]
    assert main(["train", "--preset", preset, *given, "--out", str(tmp_path / "run"), "--iterations", "1", "--device", "cpu", "-q"]) == 2
    assert _one_error_line(capsys, "train") == _refused(path, role, model, shape)
    assert path.read_bytes() == before and not (tmp_path / "run").exists()


def test_prepare_refuses_a_colour_tiff(tmp_path, capsys):
    path, model, shape = _colour_file(tmp_path, "contiguous-rgb")
    assert main(["prepare", "--input", str(path), "--target", str(path), "--out", str(tmp_path / "set.zarr"), "--patch", "32", "-q"]) == 2
    assert _one_error_line(capsys, "prepare") == _refused(path, "input", model, shape)
    assert not (tmp_path / "set.zarr").exists()


@pytest.mark.parametrize("kind", ["contiguous-rgb", "stack-planar", "contiguous-rgba"])
def test_info_describes_a_colour_tiff(tmp_path, capsys, kind):
    path, model, shape = _colour_file(tmp_path, kind)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"shape:    {shape}  axes {'QYXS' if len(shape) == 4 else 'YXS'}" in out
    assert f"colour:   {model} ({shape[-1]} samples per pixel), not one grey value" in out


#: TIFFs of several samples per pixel that are not RGB(A): how each is written, what it reads as
MULTI_SAMPLE = {
    "grey+alpha": (_grey((64, 64, 2)), {"photometric": "minisblack", "planarconfig": "contig", "extrasamples": ["unassalpha"]}),
    "CMYK": (_grey((64, 64, 4)), {"photometric": "separated"}),
    "RGB+2 extra samples": (_grey((64, 64, 5)), {"photometric": "rgb"}),
}


@pytest.mark.parametrize("model", sorted(MULTI_SAMPLE))
def test_info_names_what_the_samples_of_a_multi_sample_tiff_are(tmp_path, capsys, model):
    """It printed 'planes: stored as None colour planes' for grey+alpha."""
    data, kwargs = MULTI_SAMPLE[model]
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, data, **kwargs)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"shape:    {data.shape}  axes YXS" in out and "planes:" not in out
    assert f"colour:   {model} ({data.shape[-1]} samples per pixel), not one grey value" in out


@pytest.mark.parametrize("model", sorted(set(MULTI_SAMPLE) - {"grey+alpha"}))
def test_predict_refuses_a_multi_sample_tiff_by_what_its_samples_are(tmp_path, capsys, model):
    data, kwargs = MULTI_SAMPLE[model]
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, data, **kwargs)
    out = tmp_path / "out.tif"
    assert main(["predict", "--model", "emdiffuse-n", "--input", str(path), "--output", str(out), "--steps", "1", "--samples", "2", "-q"]) == 2
    assert _one_error_line(capsys, "predict") == _refused(path, "image", model, data.shape)


def test_predict_enhances_a_grey_and_alpha_tiff_as_its_grey_channel_and_says_so(tmp_path, capsys):
    """The review: Enhance's file source took a grey+alpha file's grey channel (as the napari
    reader opens it) while ``emdiffuse predict`` refused it, so a zarr result started in the GUI
    could not be resumed from the command line."""
    data, kwargs = MULTI_SAMPLE["grey+alpha"]
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, data, **kwargs)
    out = tmp_path / "out.tif"
    assert main(["predict", "--model", "emdiffuse-n", "--input", str(path), "--output", str(out), "--steps", "1", "--samples", "2", "-q"]) == 0
    assert f"warning: {path} is grey with an alpha channel: its grey values are enhanced" in capsys.readouterr().err
    assert tifffile.imread(out).shape == data.shape[:2]


def test_three_grey_pages_stay_a_volume_of_three_slices(tmp_path, capsys):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, _grey((3, 64, 64)), photometric="minisblack")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "shape:    (3, 64, 64)  axes QYX" in out and "colour" not in out
    out_path = tmp_path / "out.tif"
    assert main(["predict", "--model", "emdiffuse-n", "--input", str(path), "--output", str(out_path), "--steps", "1", "--samples", "2", "-q"]) == 0
    assert tifffile.imread(out_path).shape == (3, 64, 64)


@pytest.mark.parametrize("pages", [3, 4])
def test_three_or_four_grey_slices_saved_as_tifffile_writes_them_stay_a_volume(tmp_path, capsys, pages):
    """``tifffile.imwrite(path, stack)`` of a (3, y, x) or (4, y, x) stack, as napari's "Save layer"
    calls it, stores one planar RGB(A) image: an EM user's stack of slices, read as such."""
    import warnings

    path = tmp_path / "crop.tif"
    stack = _grey((pages, 64, 64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # tifffile announces that it will write such stacks as grey
        tifffile.imwrite(path, stack)
    with tifffile.TiffFile(path) as tf:
        assert tf.pages[0].photometric.name == "RGB" and len(tf.pages) == 1
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"shape:    ({pages}, 64, 64)  axes QYX" in out and "colour:" not in out  # lettered as a larger stack tifffile writes
    assert f"planes:   {pages} grey slices, stored as one {'RGBA' if pages == 4 else 'RGB'} image (as tifffile writes small stacks)\n" in out
    assert "voxel:    unknown (not recorded in the file: 1 per pixel)\n" in out  # it quoted "1 x 1 x 1 µm"
    out_path = tmp_path / "out.tif"
    assert main(["predict", "--model", "emdiffuse-n", "--input", str(path), "--output", str(out_path), "--steps", "1", "--samples", "2", "-q"]) == 0
    assert tifffile.imread(out_path).shape == (pages, 64, 64)


def test_planar_rgb_without_tifffiles_shape_description_is_refused(tmp_path, capsys):
    """Only tifffile's own (shaped) write of a (3, y, x) stack reads as slices: planar RGB from
    other software is a colour image."""
    path = tmp_path / "photo.tif"
    tifffile.imwrite(path, np.moveaxis(RGB, -1, 0), photometric="rgb", planarconfig="separate", metadata=None)
    with tifffile.TiffFile(path) as tf:
        assert not tf.is_shaped and tf.pages[0].photometric.name == "RGB"
    assert main(["info", str(path)]) == 0
    assert "colour:   RGB (3 samples per pixel)" in capsys.readouterr().out
    out = tmp_path / "out.tif"
    assert main(["predict", "--model", "emdiffuse-n", "--input", str(path), "--output", str(out), "--steps", "1", "--samples", "2", "-q"]) == 2
    assert _one_error_line(capsys, "predict") == _refused(path, "image", "RGB", (64, 64, 3))
    assert not out.exists()


@pytest.mark.parametrize("command", ["train", "prepare"])
def test_training_and_preparation_refuse_a_grey_and_alpha_tiff_by_its_role(tmp_path, capsys, command):
    """Refused where the file is read, by what the file says its samples are (the jobs see only
    a (64, 64, 2) array, which its shape would let pass as 64 slices of 64 x 2 px)."""
    data, kwargs = MULTI_SAMPLE["grey+alpha"]
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, data, **kwargs)
    out = tmp_path / ("run" if command == "train" else "set.zarr")
    args = {
        "train": ["train", "--preset", "tiny", "--input", str(path), "--target", str(path), "--out", str(out), "--iterations", "1", "--device", "cpu", "-q"],
        "prepare": ["prepare", "--input", str(path), "--target", str(path), "--out", str(out), "--patch", "32", "-q"],
    }[command]
    assert main(args) == 2
    assert _one_error_line(capsys, command) == _refused(path, "input", "grey+alpha", data.shape)
    assert not out.exists()
