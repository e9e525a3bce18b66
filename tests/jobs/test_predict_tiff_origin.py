"""TIFF results of ``predict`` record where their first pixel lies and their voxel size, so the
napari reader reopens them exactly where the same result written as OME-Zarr reopens."""

from __future__ import annotations

import numpy as np
import pytest

from napari_emdiffuse._reader import read_paths
from napari_emdiffuse.jobs.predict import run_predict

VOXEL = (0.05, 0.004, 0.004)


def _layers(path):
    """name -> (scale, translate) of the layers the reader makes of ``path``."""
    return {kw["name"]: (tuple(kw.get("scale", ())), tuple(kw.get("translate", (0.0,) * data.ndim))) for data, kw, _ in read_paths(path)}


def test_superres_tiff_reopens_where_its_zarr_does(random_model, small_stack, tmp_path):
    """Super-resolution moves the first output pixel by a fraction of an input pixel; the TIFF
    lost that shift (and so lay half a coarse pixel off the input) before it was recorded."""
    model = random_model("emdiffuse-r-tiny", {"factor": 2})
    stack = small_stack[:2, :24, :28]
    res = run_predict(model, stack, voxel=VOXEL, output=tmp_path / "sr.tif")
    run_predict(model, stack, voxel=VOXEL, output=tmp_path / "sr.zarr")
    tif, tif_u = _layers(tmp_path / "sr.tif")["sr: estimate"], _layers(tmp_path / "sr_uncertainty.tif")["sr: error map [grey values]"]
    zarr_mean = _layers(tmp_path / "sr.zarr")["sr: estimate"]
    assert res.voxel == pytest.approx((0.05, 0.002, 0.002)) and tif[0] == pytest.approx(res.voxel)
    assert zarr_mean[1] == pytest.approx((0.0, -0.001, -0.001)) and tif[1] == pytest.approx(zarr_mean[1])
    assert tif_u[0] == pytest.approx(tif[0]) and tif_u[1] == pytest.approx(tif[1])


@pytest.mark.parametrize("dtype", [np.float32, np.int16])  # ImageJ TIFF; OME-TIFF (ImageJ holds no int16)
def test_tiff_keeps_the_origin_of_the_region_predicted(random_model, small_stack, tmp_path, dtype):
    model = random_model("tiny")
    stack = small_stack[:2, :24, :28].astype(dtype)
    origin = (0.1, 0.012, 0.02)  # where this part of a larger volume lies
    run_predict(model, stack, voxel=VOXEL, output=tmp_path / "part.tif", origin=origin, out_dtype="input")
    scale, translate = _layers(tmp_path / "part.tif")["part: estimate"]
    assert scale == pytest.approx(VOXEL) and translate == pytest.approx(origin)


@pytest.mark.parametrize("output", ["out.tif", "out.zarr"])
def test_the_command_line_result_lies_where_its_input_does(random_model, small_stack, tmp_path, output):
    """``emdiffuse predict`` on an input that records its position (an ImageJ origin) writes a
    result the reader reopens over it; before, the result lay at 0 whatever the input said."""
    from napari_emdiffuse.cli import main
    from napari_emdiffuse.data.io import write_tiff

    origin = (2.0, 0.4, 0.8)
    src = write_tiff(tmp_path / "in.tif", small_stack[:2, :24, :28], VOXEL, origin=origin)
    model = random_model("emdiffuse-r-tiny", {"factor": 2}).save(tmp_path / "model")
    args = ["predict", "--model", str(model), "--input", str(src), "--output", str(tmp_path / output), "--device", "cpu", "-q"]
    assert main(args) == 0
    scale, translate = _layers(tmp_path / output)["out: estimate"]
    assert scale == pytest.approx((0.05, 0.002, 0.002))
    assert translate == pytest.approx((2.0, 0.4 - 0.001, 0.8 - 0.001))  # half a fine pixel before the coarse centre
