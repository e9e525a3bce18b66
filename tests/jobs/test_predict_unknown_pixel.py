"""An input without a pixel size (1 per pixel) gives a result without one: a size derived from
the placeholder (500 nm from "1 µm" for super-resolution) was written as if measured."""

from __future__ import annotations

import pytest
import tifffile

from napari_emdiffuse.cli import main
from napari_emdiffuse.data.io import read_image
from napari_emdiffuse.jobs.predict import run_predict


@pytest.mark.parametrize("output", ["out.tif", "out.zarr"])
def test_superres_of_an_input_without_pixel_size_is_not_recorded_either(random_model, small_stack, tmp_path, capsys, output):
    model = random_model("emdiffuse-r-tiny", {"factor": 2}).save(tmp_path / "model")
    bare, sized = tmp_path / "bare.tif", tmp_path / "sized.tif"
    tifffile.imwrite(bare, small_stack[0, :24, :28])
    tifffile.imwrite(sized, small_stack[0, :24, :28], imagej=True, resolution=(250, 250), metadata={"unit": "um"})
    for src, name in ((bare, "bare_" + output), (sized, "sized_" + output)):
        args = ["predict", "--model", str(model), "--input", str(src), "--output", str(tmp_path / name), "--device", "cpu", "-q"]
        assert main(args) == 0
    mean = "/mean" if output.endswith(".zarr") else ""
    assert read_image(f"{tmp_path}/bare_{output}{mean}").voxel == (1.0, 1.0)
    assert read_image(f"{tmp_path}/sized_{output}{mean}").voxel == pytest.approx((0.002, 0.002))
    capsys.readouterr()
    assert main(["info", f"{tmp_path}/bare_{output}{mean}"]) == 0
    assert "not recorded in the file: 1 per pixel" in capsys.readouterr().out


def test_isotropic_volume_without_voxel_size_keeps_the_placeholder_in_z(random_model, small_stack):
    model = random_model("vemdiffuse-i-tiny", {"factor": 2})
    stack = small_stack[:2, :24, :28]
    assert run_predict(model, stack, voxel=(1.0, 1.0, 1.0)).voxel == (1.0, 1.0, 1.0)
    assert run_predict(model, stack, voxel=(0.05, 0.004, 0.004)).voxel == pytest.approx((0.025, 0.004, 0.004))
