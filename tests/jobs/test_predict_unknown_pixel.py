"""An input without a pixel size (1 per pixel) gives a result without one: a size derived from
the placeholder (500 nm from "1 µm" for super-resolution) was written as if measured."""

from __future__ import annotations

import pytest
import tifffile

from napari_emdiffuse.cli import main
from napari_emdiffuse.data.io import read_image
from napari_emdiffuse.jobs.predict import run_predict

VOXEL = (0.05, 0.004, 0.004)


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


#: what ``emdiffuse info`` says of a 2x super-resolution result of an input without a pixel size
SAMPLING_LINE = "\nsampling: 0.5 x 0.5 of napari's world pixels per pixel (no pixel size is recorded; napari places it by this)\n"


@pytest.mark.parametrize("output", ["out.tif", "out.zarr"])
def test_info_says_how_large_the_pixels_of_a_result_without_a_pixel_size_are(random_model, small_stack, tmp_path, capsys, output):
    """``emdiffuse info`` did not show the ``sampling`` a result without a pixel size records
    (its pixel in its input's pixels), by which napari lays it over its input: it does, for a
    TIFF and a store, and a result with a pixel size has none."""
    model = random_model("emdiffuse-r-tiny", {"factor": 2}).save(tmp_path / "model")
    bare, sized = tmp_path / "bare.tif", tmp_path / "sized.tif"
    tifffile.imwrite(bare, small_stack[0, :24, :28])
    tifffile.imwrite(sized, small_stack[0, :24, :28], imagej=True, resolution=(250, 250), metadata={"unit": "um"})
    for src in (bare, sized):
        assert main(["predict", "--model", str(model), "--input", str(src), "--output", str(tmp_path / f"{src.stem}_{output}"), "--device", "cpu", "-q"]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / f"bare_{output}")]) == 0
    said = capsys.readouterr().out
    assert SAMPLING_LINE in said and said.index("input:") < said.index("sampling:")  # with the other lines of what made it
    assert main(["info", str(tmp_path / f"sized_{output}")]) == 0
    assert "sampling:" not in capsys.readouterr().out


def test_isotropic_volume_without_voxel_size_keeps_the_placeholder_in_z(random_model, small_stack):
    model = random_model("vemdiffuse-i-tiny", {"factor": 2})
    stack = small_stack[:2, :24, :28]
    assert run_predict(model, stack, voxel=(1.0, 1.0, 1.0)).voxel == (1.0, 1.0, 1.0)
    assert run_predict(model, stack, voxel=(0.05, 0.004, 0.004)).voxel == pytest.approx((0.025, 0.004, 0.004))


def _placement(path):
    """name -> (scale, translate) of each layer the napari reader makes of ``path`` (napari's defaults where none is given)."""
    from napari_emdiffuse._reader import read_paths

    return {kw["name"]: (tuple(kw.get("scale", (1.0,) * d.ndim)), tuple(kw.get("translate", (0.0,) * d.ndim))) for d, kw, _ in read_paths(str(path))}


@pytest.mark.parametrize("output", ["out.tif", "out.zarr"])
def test_superres_of_an_input_without_pixel_size_reopens_over_it(random_model, small_stack, tmp_path, output):
    """The result is placed by its pixel in the input's pixels (``sampling``), pixel centres as a
    known pixel size places them; it was shown in its own pixels, twice the input's size."""
    model = random_model("emdiffuse-r-tiny", {"factor": 2}).save(tmp_path / "model")
    bare, sized = tmp_path / "bare.tif", tmp_path / "sized.tif"
    tifffile.imwrite(bare, small_stack[0, :24, :28])
    tifffile.imwrite(sized, small_stack[0, :24, :28], imagej=True, resolution=(250, 250), metadata={"unit": "um"})
    for src in (bare, sized):
        (tmp_path / src.stem).mkdir()
        args = ["predict", "--model", str(model), "--input", str(src), "--output", str(tmp_path / src.stem / output), "--device", "cpu", "-q"]
        assert main(args) == 0
    files = ["out.tif", "out_uncertainty.tif"] if output.endswith(".tif") else [output]
    unsized = {n: p for f in files for n, p in _placement(tmp_path / "bare" / f).items()}
    known = {n: p for f in files for n, p in _placement(tmp_path / "sized" / f).items()}
    assert _placement(bare) == {"bare": ((1.0, 1.0), (0.0, 0.0))}  # the input layer, in its pixels
    assert len(unsized) >= 2 and set(unsized) == set(known)
    for name, (scale, translate) in unsized.items():
        assert scale == pytest.approx((0.5, 0.5)) and translate == pytest.approx((-0.25, -0.25))
        assert scale == pytest.approx(tuple(s / 0.004 for s in known[name][0]))  # as the sized result lies over its input
        assert translate == pytest.approx(tuple(t / 0.004 for t in known[name][1]))


def test_isotropic_store_without_voxel_size_reopens_over_its_volume(random_model, small_stack, tmp_path):
    """vEMDiffuse-i's slices lie 1/k input slices apart, the first on the input's first; the
    samples' leading axis is not resampled. A store written before ``sampling`` reads as before."""
    import zarr

    run_predict(random_model("vemdiffuse-i-tiny", {"factor": 2}), small_stack[:2, :24, :28], output=tmp_path / "iso.zarr", keep_samples=True)
    layers = _placement(tmp_path / "iso.zarr")
    assert {n: p[0][-3:] for n, p in layers.items()} == {n: pytest.approx((0.5, 1.0, 1.0)) for n in layers}
    assert {n: p[1][-3:] for n, p in layers.items()} == {n: pytest.approx((0.0, 0.0, 0.0)) for n in layers}
    assert layers["iso: samples"][0][0] == 1.0 and len(layers) == 3
    del zarr.open_group(str(tmp_path / "iso.zarr"), mode="r+").attrs["sampling"]
    assert {n: p[0][-3:] for n, p in _placement(tmp_path / "iso.zarr").items()} == {n: (1.0, 1.0, 1.0) for n in layers}


def test_a_store_resumed_with_its_pixel_size_known_is_placed_by_it(random_model, small_stack, tmp_path, cancelled_early, fast):
    """The run that finishes a store says where it lies: a ``sampling`` kept from a run that did
    not know the pixel size would place it in pixels again."""
    import zarr

    model, stack = random_model("emdiffuse-r-tiny", {"factor": 2}), small_stack[:2, :24, :28]
    partial = cancelled_early(model, stack, tmp_path / "o.zarr")
    assert zarr.open_group(str(partial), mode="r").attrs["sampling"] == [1.0, 0.5, 0.5]
    run_predict(model, stack, sample=fast, voxel=VOXEL, output=tmp_path / "o.zarr", resume=True)
    assert "sampling" not in zarr.open_group(str(tmp_path / "o.zarr"), mode="r").attrs
    scale, translate = _placement(tmp_path / "o.zarr")["o: estimate"]
    assert scale == pytest.approx((0.05, 0.002, 0.002)) and translate == pytest.approx((0.0, -0.001, -0.001))


@pytest.mark.parametrize("suffix", [".tif", ".ome.zarr"])
def test_predict_places_and_judges_a_saved_layer_without_a_pixel_size_by_its_sampling(random_model, small_stack, tmp_path, capsys, suffix):
    """A layer scaled (5, 1, 1) without units, saved by napari's writer, records no pixel size
    but its ``sampling``, by which the reader places it: predict ignored it, so the isotropic
    variants' z-spacing warning was lost and the result reopened at z 1 (0.5 apart), away from
    the layer. Now predict is given the file's sampling, as Enhance gives a layer's."""
    from napari_emdiffuse import _writer

    model = random_model("vemdiffuse-i-tiny", {"factor": 2}).save(tmp_path / "model")
    src = tmp_path / f"em{suffix}"
    write = _writer.write_tiff if suffix == ".tif" else _writer.write_ome_zarr
    write(str(src), small_stack[:3, :24, :28], {"scale": [5.0, 1.0, 1.0], "translate": [10.0, 2.0, 3.0], "units": ["pixel"] * 3})
    assert _placement(src) == {"em": ((5.0, 1.0, 1.0), (10.0, 2.0, 3.0))}  # as the layer lay
    assert main(["predict", "--model", str(model), "--input", str(src), "--output", str(tmp_path / "out.zarr"), "--device", "cpu"]) == 0
    said = capsys.readouterr()
    assert "the input's z voxel is 5 times its xy voxel" in said.out + said.err
    scale, translate = _placement(tmp_path / "out.zarr")["out: estimate"]
    assert scale == pytest.approx((2.5, 1.0, 1.0)) and translate == pytest.approx((10.0, 2.0, 3.0))  # its slices between the layer's


def test_predict_places_and_judges_a_file_whose_z_spacing_alone_is_known_as_enhance_does(random_model, small_stack, tmp_path, capsys):
    """An ImageJ stack with a slice spacing (5 µm) and no x/y resolution opens at z scale 5: predict
    recorded its result at z 1 (it reopened beside the stack) and did not judge the spacing, where
    Enhance, given the layer, counts that voxel as its sampling in pixels (review F3)."""
    import tifffile

    model = random_model("vemdiffuse-i-tiny", {"factor": 2}).save(tmp_path / "model")
    src = tmp_path / "em.tif"
    tifffile.imwrite(src, small_stack[:3, :24, :28], imagej=True, metadata={"spacing": 5.0, "unit": "um", "axes": "ZYX"})
    assert _placement(src)["em"][0] == (5.0, 1.0, 1.0)
    assert main(["predict", "--model", str(model), "--input", str(src), "--output", str(tmp_path / "out.zarr"), "--device", "cpu"]) == 0
    said = capsys.readouterr()
    assert "the input's z voxel is 5 times its xy voxel" in said.out + said.err
    scale, translate = _placement(tmp_path / "out.zarr")["out: estimate"]
    assert scale == pytest.approx((2.5, 1.0, 1.0)) and translate == pytest.approx((0.0, 0.0, 0.0))  # its slices between the stack's


@pytest.mark.parametrize("unit", ["pixel", ""])
def test_an_imagej_tiff_in_pixels_has_no_pixel_size_whatever_its_resolution(random_model, small_stack, tmp_path, capsys, unit):
    """An ImageJ TIFF whose unit is "pixel" (ImageJ reads an empty one so) records no physical
    size: its resolution of 2 pixels per unit read as a 0.5 µm pixel for the reader, ``emdiffuse
    info`` and predict alike. Its voxel keeps its shape in x pixels, as Fiji shows it: a 0.5-unit
    pixel and a spacing of 5 put the slices 10 pixels apart."""
    model = random_model("emdiffuse-r-tiny", {"factor": 2}).save(tmp_path / "model")
    src = tmp_path / "em.tif"
    tifffile.imwrite(src, small_stack[:3, :24, :28], imagej=True, resolution=(2.0, 2.0), metadata={"spacing": 5.0, "unit": unit, "axes": "ZYX"})
    assert read_image(src).voxel == (10.0, 1.0, 1.0)
    assert _placement(src) == {"em": ((10.0, 1.0, 1.0), (0.0, 0.0, 0.0))}
    assert main(["info", str(src)]) == 0
    assert "voxel:    10 x 1 x 1 pixels (no pixel size recorded: the voxel's shape in x pixels)" in capsys.readouterr().out
    assert main(["predict", "--model", str(model), "--input", str(src), "--output", str(tmp_path / "out.zarr"), "--device", "cpu", "-q"]) == 0
    assert read_image(f"{tmp_path}/out.zarr/mean").voxel == (1.0, 1.0, 1.0)
    assert _placement(tmp_path / "out.zarr")["out: estimate"][0] == pytest.approx((10.0, 0.5, 0.5))


@pytest.mark.parametrize("preset", ["vemdiffuse-i-tiny", "emdiffuse-r-tiny"])
def test_predict_places_a_file_whose_z_spacing_alone_is_known_and_its_position_as_enhance_does(random_model, small_stack, tmp_path, preset):
    """As the test above, with the stack's position recorded too (ImageJ origin: first slice at
    z 10 µm, y 2, x 3): predict kept the old placement there (its result at z scale 0.5 for the
    isotropic variant, 1 for super-resolution: off the stack); it now lays it over the stack, as
    Enhance does."""
    model = random_model(preset, {"factor": 2}).save(tmp_path / "model")
    src = tmp_path / "em.tif"
    meta = {"spacing": 5.0, "unit": "um", "axes": "ZYX", "zorigin": -2.0, "yorigin": -2.0, "xorigin": -3.0}
    tifffile.imwrite(src, small_stack[:3, :24, :28], imagej=True, metadata=meta)
    assert _placement(src)["em"] == ((5.0, 1.0, 1.0), (10.0, 2.0, 3.0))
    assert main(["predict", "--model", str(model), "--input", str(src), "--output", str(tmp_path / "out.zarr"), "--device", "cpu", "-q"]) == 0
    scale, translate = _placement(tmp_path / "out.zarr")["out: estimate"]
    if preset.startswith("vemdiffuse-i"):  # its slices between the stack's
        assert scale == pytest.approx((2.5, 1.0, 1.0)) and translate == pytest.approx((10.0, 2.0, 3.0))
    else:  # each slice's pixels halved, centred as a known pixel size centres them
        assert scale == pytest.approx((5.0, 0.5, 0.5)) and translate == pytest.approx((10.0, 1.75, 2.75))
