"""Reader, writers and sample data: voxel size in, voxel size out, nothing lost on the way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_emdiffuse import _reader, _writer
from napari_emdiffuse._sample_data import sample_path, sstem_clean, sstem_noisy
from napari_emdiffuse.errors import InputError


def test_reader_opens_the_real_tiff_with_its_voxel_size():
    from pathlib import Path

    path = (Path(__file__).resolve().parents[2] / "../shared/data/isbi2012_sstem_train.tif").resolve()
    if not path.is_file():
        pytest.skip(f"real EM data not found at {path}")
    reader = _reader.get_reader(str(path))
    assert reader is not None
    [(data, kwargs, kind)] = reader(str(path))
    assert kind == "image" and data.shape == (30, 512, 512) and hasattr(data, "dask")  # lazy
    assert kwargs["scale"] == pytest.approx((0.05, 0.004, 0.004))  # 50 x 4 x 4 nm, in µm
    assert kwargs["units"] == ("micrometer",) * 3


def test_reader_declines_what_it_cannot_read(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert _reader.get_reader(str(tmp_path / "notes.txt")) is None
    assert _reader.get_reader(str(tmp_path / "missing.tif")) is None


def test_drag_and_drop_into_napari_uses_the_plugin(make_napari_viewer):
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(sample_path()), plugin="napari-emdiffuse")
    assert layer.data.shape == (6, 256, 256)
    assert tuple(layer.scale) == pytest.approx((0.05, 0.004, 0.004))
    assert [str(u) for u in layer.units] == ["micrometer"] * 3


@pytest.mark.parametrize("suffix", [".ome.zarr", ".tif"])
def test_writers_round_trip_data_scale_and_units(tmp_path, suffix):
    data = np.random.default_rng(0).integers(0, 255, (3, 40, 50), dtype=np.uint8)
    meta = {"name": "em", "scale": [0.05, 0.004, 0.004], "translate": [0.1, 0.2, 0.3], "units": ["micrometer"] * 3}
    path = tmp_path / f"out{suffix}"
    write = _writer.write_ome_zarr if suffix == ".ome.zarr" else _writer.write_tiff
    assert write(str(path), data, meta) == [str(path)]
    [(back, kwargs, _)] = _reader.read_paths(str(path))
    np.testing.assert_array_equal(np.asarray(back), data)
    assert kwargs["scale"] == pytest.approx(meta["scale"])
    assert [str(u) for u in kwargs["units"]] == ["micrometer"] * 3
    if suffix == ".ome.zarr":  # TIFF has no place for an offset
        assert kwargs["translate"] == pytest.approx(meta["translate"])


def test_tiff_writer_converts_nanometres(tmp_path):
    data = np.zeros((2, 16, 16), np.float32)
    _writer.write_tiff(str(tmp_path / "a.tif"), data, {"scale": [50, 4, 4], "units": ["nanometer"] * 3})
    [(_, kwargs, _)] = _reader.read_paths(str(tmp_path / "a.tif"))
    assert kwargs["scale"] == pytest.approx((0.05, 0.004, 0.004))


def test_pixel_layers_stay_in_pixels(tmp_path):
    data = np.arange(16 * 16, dtype=np.uint16).reshape(16, 16)
    _writer.write_tiff(str(tmp_path / "p.tif"), data, {"scale": [1, 1], "units": ["pixel"] * 2})
    [(back, kwargs, _)] = _reader.read_paths(str(tmp_path / "p.tif"))
    np.testing.assert_array_equal(np.asarray(back), data)
    assert "scale" not in kwargs and "units" not in kwargs


@pytest.mark.parametrize("resolution", [(1.0, 1.0), (1.0, 0.5)])
def test_a_file_in_no_length_unit_opens_in_pixels_not_micrometres(tmp_path, resolution):
    """An ImageJ stack in the unit 'pixel' (z spacing 10, y pixels maybe twice the x) has its
    voxel's shape in x pixels, and info says so; the reader gave it napari's units of µm (a scale
    bar of 10 µm per slice). Its pixels are placed as before, in the 'pixel' unit, and Enhance
    and the writer take it as a layer without a pixel size that records its sampling."""
    import tifffile

    from napari_emdiffuse._widgets.layers import Placement

    tifffile.imwrite(tmp_path / "px.tif", np.zeros((2, 16, 16), np.uint8), imagej=True, resolution=resolution, metadata={"spacing": 10, "unit": "pixel"})
    [(_, kwargs, _)] = _reader.read_paths(str(tmp_path / "px.tif"))
    shape = (10.0, 1.0 / resolution[1], 1.0)
    assert kwargs["scale"] == pytest.approx(shape) and kwargs["units"] == ("pixel",) * 3
    where = Placement.from_kwargs(kwargs, 3)
    assert where.voxel_um() == (1.0, 1.0, 1.0) and where.sampling() == pytest.approx(shape)


def test_ome_zarr_writer_refuses_to_replace_a_non_zarr_folder(tmp_path):
    folder = tmp_path / "precious.zarr"
    folder.mkdir()
    (folder / "thesis.docx").write_text("do not delete")
    with pytest.raises(InputError, match="not a zarr store"):
        _writer.write_ome_zarr(str(folder), np.zeros((8, 8), np.uint8), {"scale": [1, 1]})
    assert (folder / "thesis.docx").is_file()


def test_ome_zarr_writer_never_deletes_a_user_folder_under_its_temporary_name(tmp_path):
    """The writer builds ``.NAME.writing`` beside the target and clears one a crashed write left;
    a folder the user keeps under that name is refused, not deleted."""
    mine = tmp_path / ".out.zarr.writing"
    mine.mkdir()
    (mine / "notes.txt").write_text("do not delete")
    with pytest.raises(InputError, match="not an unfinished store of ours"):
        _writer.write_ome_zarr(str(tmp_path / "out.zarr"), np.zeros((8, 8), np.uint8), {"scale": [1, 1]})
    assert (mine / "notes.txt").is_file()


def test_reader_opens_a_prediction_zarr_with_its_uncertainty(tmp_path):
    import zarr

    group = zarr.open_group(str(tmp_path / "pred.zarr"), mode="w")
    group.zeros(name="mean", shape=(2, 8, 8), dtype="float32", chunks=(1, 8, 8))
    group.zeros(name="std", shape=(2, 8, 8), dtype="float32", chunks=(1, 8, 8))
    group.attrs["voxel_size"] = [0.05, 0.002, 0.002]
    layers = {kw["name"]: kw for _, kw, _ in _reader.read_paths(str(tmp_path / "pred.zarr"))}
    assert set(layers) == {"pred mean", "pred uncertainty"}
    assert layers["pred uncertainty"]["colormap"] == "inferno"
    assert layers["pred mean"]["scale"] == pytest.approx((0.05, 0.002, 0.002))


def test_mrc_voxel_size_in_angstrom_becomes_micrometres(tmp_path):
    import mrcfile

    data = np.arange(2 * 12 * 10, dtype=np.float32).reshape(2, 12, 10)
    with mrcfile.new(str(tmp_path / "v.mrc")) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = (40.0, 40.0, 500.0)  # x, y, z in Å: 4 x 4 x 50 nm
    [(back, kwargs, _)] = _reader.read_paths(str(tmp_path / "v.mrc"))
    np.testing.assert_array_equal(np.asarray(back), data)
    assert kwargs["scale"] == pytest.approx((0.05, 0.004, 0.004))


def test_sample_data_is_real_em_with_its_voxel_size():
    [(clean, kw, _)] = sstem_clean()
    [(noisy, kw_noisy, _)] = sstem_noisy()
    assert clean.shape == noisy.shape == (6, 256, 256) and clean.dtype == np.uint8
    assert kw["scale"] == pytest.approx((0.05, 0.004, 0.004)) and "Cardona" in kw["metadata"]["citation"]
    assert sample_path().stat().st_size < 600_000
    # simulated low dose: noisy, but the same image
    corr = np.corrcoef(clean.ravel().astype(float), noisy.ravel())[0, 1]
    assert 0.3 < corr < 0.98
    assert abs(float(noisy.mean()) - float(clean.mean())) < 10


def test_large_layers_get_a_pyramid_that_opens_as_a_multiscale_layer(tmp_path, monkeypatch):
    monkeypatch.setattr(_writer, "PYRAMID_MIN_SIDE", 16)  # a pyramid for a small test image
    data = np.random.default_rng(1).integers(0, 255, (2, 64, 64), dtype=np.uint8)
    meta = {"name": "em", "scale": [0.05, 0.004, 0.004], "translate": [0, 0, 0], "units": ["micrometer"] * 3}
    _writer.write_ome_zarr(str(tmp_path / "p.ome.zarr"), data, meta)
    [(levels, kwargs, _)] = _reader.read_paths(str(tmp_path / "p.ome.zarr"))
    assert kwargs["multiscale"] and [lv.shape for lv in levels] == [(2, 64, 64), (2, 32, 32), (2, 16, 16)]
    np.testing.assert_array_equal(np.asarray(levels[0]), data)
    assert kwargs["scale"] == pytest.approx(meta["scale"])  # the layer's scale is level 0's


def test_pixel_layers_are_not_labelled_micrometres_in_ome_zarr(tmp_path):
    import zarr

    _writer.write_ome_zarr(str(tmp_path / "px.zarr"), np.zeros((16, 16), np.uint8), {"scale": [1, 1], "units": ["pixel"] * 2})
    axes = zarr.open_group(str(tmp_path / "px.zarr"), mode="r").attrs["multiscales"][0]["axes"]
    assert all("unit" not in a for a in axes)
    [(_, kwargs, _)] = _reader.read_paths(str(tmp_path / "px.zarr"))
    assert "scale" not in kwargs


# ---- round trips: what the plugin writes reopens where it was, as it looked ----------------


def test_reader_patterns_in_the_manifest_are_the_readers_suffixes():
    """napari.yaml lists exactly what the core readers read (HDF5 included): one fact, checked."""
    import yaml

    manifest = yaml.safe_load((Path(_reader.__file__).parent / "napari.yaml").read_text())
    [reader] = manifest["contributions"]["readers"]
    assert sorted(reader["filename_patterns"]) == sorted(_reader.filename_patterns())
    assert {"*.h5", "*.hdf5"} <= set(reader["filename_patterns"])


def test_an_hdf5_file_opens_through_napari_with_the_plugin(make_napari_viewer, tmp_path):
    import h5py

    data = np.random.default_rng(2).integers(0, 4000, (3, 20, 24), dtype=np.uint16)
    with h5py.File(tmp_path / "vol.h5", "w") as f:
        f.create_dataset("raw", data=data)
    from npe2 import PluginManager

    viewer = make_napari_viewer()
    offered = {r.plugin_name for r in PluginManager.instance().iter_compatible_readers([str(tmp_path / "vol.h5")])}
    assert "napari-emdiffuse" in offered  # napari offers the plugin for a dragged-in .h5
    [layer] = viewer.open(str(tmp_path / "vol.h5"), plugin="napari-emdiffuse")
    np.testing.assert_array_equal(np.asarray(layer.data), data)
    lo, hi = layer.contrast_limits
    assert data.min() <= lo < hi <= data.max()  # the data's range, not 0-65535


ROUND_TRIPS = {
    "float stack": (np.float32, (4, 30, 40), (0.05, 0.004, 0.004), (1.0, 0.5, 0.25)),
    "uint16 stack": (np.uint16, (3, 30, 40), (0.03, 0.002, 0.002), (0.0, 0.1, 0.2)),
    "single-slice result": (np.float32, (1, 30, 40), (0.05, 0.004, 0.004), (0.15, 0.0, 0.0)),
    "2D image": (np.float32, (30, 40), (0.004, 0.004), (0.5, 0.25)),
}


@pytest.mark.parametrize("suffix", [".ome.zarr", ".tif", ".ome.tif"])
@pytest.mark.parametrize("case", sorted(ROUND_TRIPS))
def test_saved_results_reopen_with_the_same_geometry_and_contrast(make_napari_viewer, tmp_path, suffix, case):
    """Through napari itself: save a layer with the plugin's writer, open the file again (an
    OME-TIFF kept no display range: reopened, its contrast was computed anew)."""
    dtype, shape, scale, translate = ROUND_TRIPS[case]
    rng = np.random.default_rng(3)
    data = (rng.normal(0.5, 0.1, shape) if dtype == np.float32 else rng.integers(1000, 3000, shape)).astype(dtype)
    viewer = make_napari_viewer()
    limits = (float(np.percentile(data, 2)), float(np.percentile(data, 98)))
    layer = viewer.add_image(data, name="result", scale=scale, translate=translate, units=("micrometer",) * len(shape), contrast_limits=limits)
    path = tmp_path / f"result{suffix}"
    viewer.layers.save(str(path), selected=False, plugin="napari-emdiffuse")
    viewer.layers.clear()
    [back] = viewer.open(str(path), plugin="napari-emdiffuse")
    np.testing.assert_array_equal(np.asarray(back.data), data)
    assert tuple(back.scale) == pytest.approx(scale)
    assert tuple(back.translate) == pytest.approx(translate)
    assert [str(u) for u in back.units] == ["micrometer"] * len(shape)
    assert tuple(back.contrast_limits) == pytest.approx(limits, rel=1e-5)
    del layer


#: a layer's geometry as napari holds it, and its pixel size in µm by the one rule that napari's
#: writer and Enhance follow (_widgets.layers.Placement; None: not known): a length unit says it,
#: napari's "pixel" unit never does, whoever set the scale
LAYERS = {
    "napari's default": ({}, None),
    "z spacing without units": ({"scale": (5.0, 1.0, 1.0), "translate": (10.0, 2.0, 3.0)}, None),
    "scale without units": ({"scale": (1.0, 0.5, 0.5), "translate": (1.0, 0.25, 0.75)}, None),
    "result in pixels": ({"scale": (1.0, 0.5, 0.5), "translate": (0.0, -0.25, -0.25), "metadata": {"emdiffuse": {"role": "enhanced"}}}, None),
    "nanometres": ({"scale": (50.0, 4.0, 4.0), "translate": (100.0, 8.0, 4.0), "units": ("nanometer",) * 3}, (0.05, 0.004, 0.004)),
    "micrometres": ({"scale": (0.05, 0.004, 0.004), "translate": (0.1, 0.008, 0.004), "units": ("micrometer",) * 3}, (0.05, 0.004, 0.004)),
}
#: the files napari's writer makes: suffix and a dtype that gives that form
FORMS = {"OME-Zarr": (".ome.zarr", np.float32), "ImageJ TIFF": (".tif", np.uint8), "OME-TIFF": (".tif", np.int16)}


def _placed(layer) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Where a layer lies: its scale and translate in µm on axes in a length unit (as they are
    on others), and each axis's unit kind ("length" or the unit)."""
    from napari_emdiffuse.data.image import unit_to_um

    per_unit = [unit_to_um(str(u)) for u in layer.units]
    factors = np.array([f or 1.0 for f in per_unit])
    return np.asarray(layer.scale) * factors, np.asarray(layer.translate) * factors, ["length" if f else str(u) for f, u in zip(per_unit, layer.units)]


def _same_place(layer, other) -> None:
    (scale, translate, kinds), (scale2, translate2, kinds2) = _placed(layer), _placed(other)
    np.testing.assert_allclose(scale, scale2, rtol=1e-6)
    np.testing.assert_allclose(translate, translate2, rtol=1e-6, atol=1e-9)
    assert kinds == kinds2


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("case", sorted(LAYERS))
def test_a_saved_layer_reopens_where_it_lay_with_the_pixel_size_its_units_give(make_napari_viewer, tmp_path, form, case):
    """napari's writer wrote a layer scaled without units (napari's "pixel") at scale 1: a z
    spacing of 5 reopened 5 times thinner, a 2x super-resolution result twice as large and moved;
    an OME-TIFF (int16) lost its position. Now the file records a pixel size only where the units
    give one (no µm made up from a scale in pixels), else the layer's ``sampling``, and reopens
    where the layer lay."""
    from napari_emdiffuse.data.io import read_image

    geometry, pixel_um = LAYERS[case]
    suffix, dtype = FORMS[form]
    data = np.random.default_rng(7).integers(0, 200, (2, 12, 10)).astype(dtype)
    viewer = make_napari_viewer()
    layer = viewer.add_image(data, name="em", **geometry)
    path = tmp_path / f"em{suffix}"
    viewer.layers.save(str(path), selected=False, plugin="napari-emdiffuse")
    saved = read_image(path)
    assert saved.meta["format"] == {"OME-Zarr": "ome-zarr", "ImageJ TIFF": "tiff", "OME-TIFF": "ome-tiff"}[form]
    assert saved.voxel == pytest.approx(pixel_um or (1.0, 1.0, 1.0))
    [back] = viewer.open(str(path), plugin="napari-emdiffuse")
    np.testing.assert_array_equal(np.asarray(back.data), data)
    _same_place(back, layer)


def test_a_layer_in_centimetres_has_a_pixel_size():
    """napari spells "cm" as "centimeter", which the table of lengths lacked (mm and m it had):
    a layer in cm had no pixel size, and its file recorded none."""
    import napari.layers

    from napari_emdiffuse._widgets.layers import Placement

    layer = napari.layers.Image(np.zeros((2, 4, 4)), scale=(5e-6, 4e-7, 4e-7), units="cm")
    assert Placement.of(layer).voxel_um() == pytest.approx((0.05, 0.004, 0.004))


@pytest.mark.parametrize("suffix", [".tif", ".ome.zarr"])
def test_a_mirrored_layer_is_refused_in_one_line_and_nothing_is_written(tmp_path, suffix):
    """napari allows a negative scale (a mirrored view); a file cannot hold one: the writer
    recorded a sampling of -1 that its reader refused (the layer reopened unmirrored, elsewhere)
    and a µm layer's pixel size was dropped. It is refused, naming the file and the layer."""
    import napari.layers

    for units in ("pixel", "nm"):
        layer = napari.layers.Image(np.zeros((2, 6, 6), np.float32), name="em", scale=(1.0, -4.0, 4.0), translate=(0.0, 10.0, 0.0), units=units)
        with pytest.raises(InputError) as err:
            _written(layer, tmp_path / f"em{suffix}")
        assert str(err.value).startswith(f"{tmp_path / f'em{suffix}'}: not written: layer 'em' is mirrored (scale 1 x -4 x 4)") and "\n" not in str(err.value)
        assert not list(tmp_path.iterdir())


def _written(layer, path: Path) -> None:
    """Save ``layer`` as napari's writer is given it (its data and state), by the suffix of ``path``."""
    data, meta, _ = layer.as_layer_data_tuple()
    (_writer.write_ome_zarr if path.name.endswith(".zarr") else _writer.write_tiff)(str(path), data, meta)


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("case", sorted(LAYERS))
def test_a_saved_single_slice_reopens_as_a_stack_of_one_where_it_lay(tmp_path, caplog, form, case):
    """A one-slice stack written as OME-TIFF (int16 and the other dtypes ImageJ cannot hold)
    reopened 2D and unplaced, with a warning that its own recorded sampling was unreadable (one
    axis too many); one in µm lost its position. It keeps its z axis, as an ImageJ TIFF's does."""
    import napari.layers

    geometry, _ = LAYERS[case]
    suffix, dtype = FORMS[form]
    layer = napari.layers.Image(np.random.default_rng(7).integers(0, 200, (1, 12, 10)).astype(dtype), **geometry)
    _written(layer, tmp_path / f"em{suffix}")
    [(data, kwargs, _)] = _reader.read_paths(str(tmp_path / f"em{suffix}"))
    assert data.shape == (1, 12, 10)
    _same_place(napari.layers.Image(data, **kwargs), layer)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


@pytest.mark.parametrize("origin", [["a", 0, 0], [None, 1, 1]], ids=["text", "null"])
def test_a_malformed_origin_of_an_ome_tiff_is_one_warning(tmp_path, caplog, origin):
    """It raised (ValueError, TypeError) in napari: the file could not be opened."""
    from napari_emdiffuse.data.io import write_tiff

    path = write_tiff(tmp_path / "em.tif", np.zeros((2, 8, 8), np.int16), (1.0, 1.0, 1.0), provenance={"origin": origin})
    [(data, kwargs, _)] = _reader.read_paths(str(path))
    assert data.shape == (2, 8, 8) and "translate" not in kwargs
    (said,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert str(path) in said and "position is unreadable" in said and "\n" not in said


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("case", sorted(LAYERS))
def test_enhance_takes_a_file_placed_as_the_reader_places_it(tmp_path, form, case):
    """Enhance's file input placed a file by its voxel size and position alone: one without a pixel
    size that records its ``sampling`` (a layer scaled without units, saved) lay at scale 1, so
    its result lay beside the reopened layer and the isotropic variants' z spacing went unchecked."""
    import napari.layers

    from napari_emdiffuse._widgets.enhance import read_input_file
    from napari_emdiffuse._widgets.layers import Placement

    geometry, _ = LAYERS[case]
    suffix, dtype = FORMS[form]
    layer = napari.layers.Image(np.random.default_rng(7).integers(0, 200, (2, 12, 10)).astype(dtype), **geometry)
    _written(layer, tmp_path / f"em{suffix}")
    [(data, kwargs, _)] = _reader.read_paths(str(tmp_path / f"em{suffix}"))
    _, source, _, _ = read_input_file(tmp_path / f"em{suffix}")
    assert source == Placement.from_kwargs(kwargs, data.ndim)
    assert source.sampling() == pytest.approx(Placement.of(layer).sampling())


#: Enhance runs of the layers above: every layer denoised (its result on its grid), and the finer
#: grids of a layer without a pixel size (isotropic in z, super-resolution in y and x)
RUNS = [*((case, "denoise") for case in sorted(LAYERS)), ("z spacing without units", "iso_i"), ("scale without units", "superres")]


@pytest.mark.parametrize("case,variant_name", RUNS)
def test_enhance_records_what_the_writer_records_and_its_result_reopens_where_it_lay(make_napari_viewer, isbi, untrained_model, tmp_path, case, variant_name, whole_run):
    """Enhance took a scale set without units as µm (a made-up pixel size its files recorded, the
    writer none) and recorded no ``sampling`` for a user's layer: a result of a layer scaled
    (5, 1, 1) reopened at z 1, at the wrong place. It gives the jobs the voxel size, ``sampling``
    and position the writer records for the layer, and its result reopens where it lay."""
    from napari_emdiffuse._widgets.registry import MODELS
    from napari_emdiffuse.data.io import read_image

    geometry, _ = LAYERS[case]
    viewer = make_napari_viewer()
    layer = viewer.add_image(isbi[:3, :16, :16], name="em", **geometry)
    viewer.layers.save(str(tmp_path / "em.tif"), selected=False, plugin="napari-emdiffuse")
    saved = read_image(tmp_path / "em.tif")
    record = saved.meta.get("provenance") or {}
    MODELS.add(untrained_model(variant_name), "disk")
    w = whole_run(viewer.window.add_plugin_dock_widget("napari-emdiffuse", "Enhance")[1], variant_name, layer, tmp_path / "r.zarr")
    plan = w.plan()
    assert plan.voxel == pytest.approx(saved.voxel)
    assert plan.sampling == pytest.approx(record.get("sampling", (1.0, 1.0, 1.0)))
    if variant_name == "denoise":  # the result's first pixel is the layer's, which the file records
        assert plan.origin == pytest.approx(_reader.placed(tmp_path / "em.tif", saved).position or (0.0, 0.0, 0.0))
    w.run()
    estimate = w.result_layers[0]
    assert estimate.name == "em: estimate", w.controls.status.text()
    reopened = {lyr.name: lyr for lyr in viewer.open(str(tmp_path / "r.zarr"), plugin="napari-emdiffuse")}
    _same_place(reopened["r: estimate"], estimate)


def test_a_float_ome_zarr_without_a_saved_window_gets_the_contrast_of_its_data(tmp_path):
    from napari_emdiffuse.data.containers import write_ome_zarr

    data = np.random.default_rng(4).normal(100.0, 20.0, (3, 32, 32)).astype(np.float32)
    write_ome_zarr(tmp_path / "plain.ome.zarr", data, (0.05, 0.004, 0.004))  # as the CLI writes it
    [(_, kwargs, _)] = _reader.read_paths(str(tmp_path / "plain.ome.zarr"))
    lo, hi = kwargs["contrast_limits"]
    assert 20 < lo < 80 and 120 < hi < 180  # the data's percentiles, not 0-1


def test_enhance_results_written_to_zarr_reopen_with_a_visible_contrast(tmp_path):
    import zarr

    group = zarr.open_group(str(tmp_path / "pred.zarr"), mode="w")
    mean = group.zeros(name="mean", shape=(2, 16, 16), dtype="float32", chunks=(1, 16, 16))
    mean[:] = np.random.default_rng(5).normal(120.0, 15.0, (2, 16, 16))
    std = group.zeros(name="std", shape=(2, 16, 16), dtype="float32", chunks=(1, 16, 16))
    std[:] = np.random.default_rng(6).uniform(0.0, 4.0, (2, 16, 16))
    group.attrs["voxel_size"] = [0.05, 0.004, 0.004]
    layers = {kw["name"]: kw for _, kw, _ in _reader.read_paths(str(tmp_path / "pred.zarr"))}
    lo, hi = layers["pred mean"]["contrast_limits"]
    assert 60 < lo < 110 and 130 < hi < 180
    lo, hi = layers["pred uncertainty"]["contrast_limits"]
    assert 0 <= lo < 0.5 and 3.5 < hi <= 4.0


def test_a_colour_tiff_opens_as_an_rgb_layer_placed_by_its_pixel_size(tmp_path):
    """The core reads a colour image with its samples last (and refuses to enhance it); opened in
    napari it is an RGB layer whose scale has no entry for the samples (napari refused three)."""
    import napari.layers
    import tifffile

    from napari_emdiffuse._reader import read_paths

    rgb = (np.random.default_rng(0).random((2, 64, 64, 3)) * 255).astype(np.uint8)
    path = tmp_path / "stained.tif"
    tifffile.imwrite(path, rgb, photometric="rgb", imagej=True, resolution=(250, 250), metadata={"spacing": 0.05, "unit": "um"})
    data, kwargs, kind = read_paths(str(path))[0]
    layer = napari.layers.Image(data, **kwargs)
    assert kind == "image" and layer.rgb and layer.ndim == 3
    np.testing.assert_allclose(layer.scale, (0.05, 0.004, 0.004))


def test_a_5d_ome_zarr_with_length_one_t_and_c_keeps_its_position(tmp_path):
    """bioformats2raw and ome-zarr-py write TCZYX; the reader drops t and c of length 1 and the
    translation's spatial part must still place the layer (and a result's origin)."""
    import zarr

    from napari_emdiffuse.data.io import read_image

    folder = tmp_path / "tczyx.ome.zarr"
    group = zarr.open_group(str(folder), mode="w", zarr_format=2)
    group.create_array(name="0", shape=(1, 1, 4, 64, 64), dtype="uint8", chunks=(1, 1, 1, 64, 64))
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}] + [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]
    transforms = [{"type": "scale", "scale": [1, 1, 0.05, 0.004, 0.004]}, {"type": "translation", "translation": [0, 0, 1, 2, 3]}]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [{"path": "0", "coordinateTransformations": transforms}]}]
    image = read_image(folder)
    assert image.data.shape == (4, 64, 64)
    assert _reader._ngff_translation(folder, 3) == (1.0, 2.0, 3.0)
    assert _reader.placed(folder, image).position == (1.0, 2.0, 3.0)
    [(_, kwargs, _)] = _reader.read_paths(str(folder))
    assert kwargs["translate"] == (1.0, 2.0, 3.0)
    assert kwargs["scale"] == pytest.approx((0.05, 0.004, 0.004))


def _multi_sample_tiff(path: Path, kind: str, pixels: np.ndarray) -> None:
    """A TIFF of several samples per pixel as other software writes it."""
    import tifffile
    from PIL import Image as PILImage

    if kind == "pillow-la":
        PILImage.fromarray(pixels[..., :2], mode="LA").save(path)
    elif kind == "grey+alpha":
        tifffile.imwrite(path, pixels[..., :2], photometric="minisblack", extrasamples=["unassalpha"])
    else:
        tifffile.imwrite(path, pixels[..., :4], photometric="separated")


@pytest.mark.parametrize("kind", ["pillow-la", "grey+alpha"])
def test_a_grey_and_alpha_tiff_opens_as_its_grey_channel(tmp_path, kind):
    """It opened as (128, 128, 2): 128 slices of 128 x 2 px, which Enhance then enhanced."""
    from napari_emdiffuse.data.normalise import check_image

    pixels = np.random.default_rng(0).integers(0, 255, (128, 128, 4), dtype=np.uint8)
    path = tmp_path / "la.tif"
    _multi_sample_tiff(path, kind, pixels)
    [(data, kwargs, kind_)] = _reader.read_paths(str(path))
    assert kind_ == "image" and data.shape == (128, 128) and kwargs["name"] == "la (grey; alpha dropped)"
    np.testing.assert_array_equal(np.asarray(data), pixels[..., 0])
    assert "rgb" not in kwargs and "scale" not in kwargs  # a 2D grey image, in pixels
    check_image(np.asarray(data), "image")  # what Enhance checks: a grey image


def test_a_cmyk_tiff_is_refused_with_one_line_saying_what_it_is(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 255, (128, 128, 4), dtype=np.uint8)
    path = tmp_path / "print.tif"
    _multi_sample_tiff(path, "CMYK", pixels)
    with pytest.raises(InputError) as err:
        _reader.read_paths(str(path))
    assert str(err.value) == f"{path} has 4 samples per pixel (CMYK; shape (128, 128, 4)), not one grey value: convert it to greyscale first"


def test_enhance_refuses_a_grey_and_alpha_array_another_reader_gives():
    """napari's own reader gives a grey+alpha picture as (y, x, 2): refused, not enhanced as y
    slices of x by 2 px."""
    from napari_emdiffuse.data.normalise import check_image

    with pytest.raises(InputError, match=r"^layer has 2 samples per pixel \(grey\+alpha; shape \(128, 128, 2\)\)"):
        check_image(np.zeros((128, 128, 2), np.uint8), "layer")


@pytest.mark.parametrize("complete", [True, False])
def test_a_reopened_prediction_store_is_named_and_valued_as_enhance_shows_it(tmp_path, complete):
    """A store of ours reopens with Enhance's names (an unfinished one's as '(partial)', as Enhance
    names a cancelled run's part: the review found 'o.partial.zarr' named like a finished result)
    and its error map u shown as the bound q u its record states."""
    import zarr

    from napari_emdiffuse.data.safe_output import CREATED_BY, SOFTWARE

    group = zarr.open_group(str(tmp_path / f"o{'' if complete else '.partial'}.zarr"), mode="w")
    for name, value in (("mean", 100.0), ("uncertainty", 2.0), ("lower", 94.0), ("upper", 106.0)):
        group.full(name=name, shape=(2, 8, 8), fill_value=value, dtype="float32", chunks=(1, 8, 8))
    group.attrs.update({CREATED_BY: SOFTWARE, "complete": complete, "finished": None, "voxel_size": [0.05, 0.004, 0.004],
                        "bounds": {"coverage": 0.9, "scale": 3.0, "settings": "fewer steps"}})
    layers = {kw["name"]: data for data, kw, _ in _reader.read_paths(str(group.store.root))}
    stem = "o" if complete else "o (partial)"
    assert set(layers) == {f"{stem}: estimate", f"{stem}: error bound (below 90 %) [grey values]", f"{stem}: lower bound (below 90 %)", f"{stem}: upper bound (below 90 %)"}
    np.testing.assert_allclose(np.asarray(layers[f"{stem}: error bound (below 90 %) [grey values]"]), 6.0)  # upper - mean
