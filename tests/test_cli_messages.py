"""What the command line tells a user: warnings marked as such, and a voxel size that is only
partly known."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tifffile

from napari_emdiffuse.cli import main
from napari_emdiffuse.data.io import read_image


@pytest.fixture(scope="module")
def noisy(tmp_path_factory, isbi_pair):
    """Two noisy ssTEM slices of 96 x 96 px as an ImageJ TIFF with its voxel size."""
    path = tmp_path_factory.mktemp("messages") / "noisy.tif"
    data = (np.clip(isbi_pair[0][:2, :96, :96], 0, 1) * 255).astype(np.uint8)
    tifffile.imwrite(path, data, imagej=True, resolution=(250, 250), metadata={"spacing": 0.05, "unit": "um"})
    return path


def _predict(model, noisy, out, capsys):
    capsys.readouterr()
    assert main(["predict", "--model", str(model), "--input", str(noisy), "--output", str(out), "--steps", "1", "--samples", "2", "--device", "cpu", "-q"]) == 0
    return capsys.readouterr()


def test_warnings_are_marked_and_information_is_plain(tmp_path, noisy, tiny_model_dir, capsys):
    """In a terminal stderr and stdout read alike: a job's warning starts with 'warning: ', its
    information does not (a model worse than its baseline warns; one without calibration informs)."""
    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    meta = json.loads((model / "model.json").read_text())
    meta["metrics"] = {"val_psnr": 15.0, "val_baseline_psnr": 18.0, "val_baseline": "noisy input"}  # and no calibration
    (model / "model.json").write_text(json.dumps(meta))
    said = _predict(model, noisy, tmp_path / "o.tif", capsys)
    [warning] = [t for t in said.err.splitlines() if "worse than noisy input" in t]
    assert warning.startswith("warning: this model is worse than noisy input"), warning
    [info] = [t for t in said.out.splitlines() if "no calibration" in t]
    assert info.startswith("the model has no calibration")


def test_a_job_message_is_shown_by_its_level():
    import sys

    from napari_emdiffuse.cli_jobs import say

    assert say("the input is noisier", "warning") == ("warning: the input is noisier", sys.stderr)
    assert say("resuming", "info") == ("resuming", sys.stdout)


def test_info_says_when_only_the_slice_spacing_is_unknown(tmp_path, capsys):
    """A stack whose pixels are 4 nm but whose slice spacing is not recorded read '1 x 0.004 x 0.004 µm'."""
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((3, 32, 32), np.uint8), imagej=True, resolution=(250, 250), metadata={"unit": "um"})
    assert read_image(path).voxel == pytest.approx((1.0, 0.004, 0.004))
    assert main(["info", str(path)]) == 0
    assert "voxel:    ? x 4 x 4 nm (z unknown)\n" in capsys.readouterr().out
