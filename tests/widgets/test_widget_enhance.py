"""Enhance widget: result and uncertainty layers with the right shape, scale, units and place."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from napari_emdiffuse._widgets.registry import MODELS


def _open(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-emdiffuse", "Enhance")
    return widget


def _one_step(w, variant: str, layer):
    """The Enhance panel set to run ``variant`` on ``layer`` quickly: 1 step, 2 samples, CPU."""
    w.variant.setCurrentIndex(w.variant.findData(variant))
    w.image.select(layer)
    w.steps.setValue(1)
    w.samples.setValue(2)
    w.device.setCurrentText("cpu")
    return w


def _four_nm_model(tiny_model: Path, folder: Path) -> Path:
    """A copy of the tiny model that says it learnt from 4 nm pixels, offered in Enhance's list."""
    import json
    import shutil

    model = folder / "four_nm"
    shutil.copytree(tiny_model, model)
    meta = json.loads((model / "model.json").read_text())
    meta["training"]["pixel_size_um"] = 0.004
    (model / "model.json").write_text(json.dumps(meta))
    MODELS.add(model, "trained")
    return model


def test_enhance_current_slice_of_a_stack(make_napari_viewer, isbi, voxel, tiny_model):
    viewer = make_napari_viewer()
    layer = viewer.add_image(isbi, name="em", scale=voxel, translate=(1.0, 0.5, 0.25), units=("micrometer",) * 3)
    before = isbi.copy()
    MODELS.add(tiny_model, "trained")
    w = _open(viewer)
    viewer.dims.set_point(0, 1.0 + 3 * voxel[0])  # slice 3
    w.scope.setCurrentIndex(w.scope.findData("slice"))
    w.samples.setValue(2)
    w.steps.setValue(2)
    w.run()
    enhanced, uncertainty = w.result_layers
    assert enhanced.data.shape == (1, 128, 128) and uncertainty.data.shape == (1, 128, 128)
    for out in (enhanced, uncertainty):
        assert tuple(out.scale) == pytest.approx(voxel)
        assert tuple(out.translate) == pytest.approx((1.0 + 3 * 0.05, 0.5, 0.25))
        assert [str(u) for u in out.units] == ["micrometer"] * 3
    assert uncertainty.colormap.name == "inferno"
    assert float(np.asarray(uncertainty.data).max()) > 0
    np.testing.assert_array_equal(layer.data, before)  # the input is never modified


# output (shape, scale) for the 4 x 64 x 64 test volume at 50 x 4 x 4 nm, for the variants we know
KNOWN = {
    "denoise": ((4, 64, 64), (0.05, 0.004, 0.004)),
    "superres": ((4, 128, 128), (0.05, 0.002, 0.002)),  # factor 2
    "iso_i": ((13, 64, 64), (0.0125, 0.004, 0.004)),  # factor 4: 3 gaps of 3 new planes
    "iso_a": ((13, 64, 64), (0.0125, 0.004, 0.004)),
}


def _variants():
    from napari_emdiffuse.variants import VARIANTS

    return sorted(VARIANTS)


@pytest.mark.parametrize("variant_name", _variants())
def test_enhance_every_variant_places_its_output_over_the_input(make_napari_viewer, isbi, voxel, untrained_model, variant_name):
    viewer = make_napari_viewer()
    translate = (1.0, 0.5, 0.25)
    volume = isbi[:4, :64, :64]
    layer = viewer.add_image(volume, name="em", scale=voxel, translate=translate, units=("micrometer",) * 3)
    MODELS.add(untrained_model(variant_name), "disk")
    w = _open(viewer)
    w.variant.setCurrentIndex(w.variant.findData(variant_name))
    assert w.model.count() == 1
    w.scope.setCurrentIndex(w.scope.findData("whole"))
    w.steps.setValue(1)
    w.samples.setValue(2)
    w.device.setCurrentText("cpu")
    w.run()
    assert len(w.result_layers) == 2, w.controls.status.text()
    enhanced, uncertainty = w.result_layers
    shape, scale = enhanced.data.shape, tuple(enhanced.scale)
    assert uncertainty.data.shape == shape and tuple(uncertainty.scale) == scale
    assert [str(u) for u in enhanced.units] == ["micrometer"] * 3
    if variant_name in KNOWN:
        assert shape == KNOWN[variant_name][0]
        assert scale == pytest.approx(KNOWN[variant_name][1])
    for a in range(3):  # the output covers the input: the same first edge, or the same first centre
        n_in, s_in, t_in = volume.shape[a], voxel[a], translate[a]
        n_out, s_out, t_out = shape[a], scale[a], enhanced.translate[a]
        assert s_out <= s_in + 1e-12
        if n_out * s_out == pytest.approx(n_in * s_in):
            assert t_out - s_out / 2 == pytest.approx(t_in - s_in / 2)
        else:
            assert t_out == pytest.approx(t_in) and (n_out - 1) * s_out <= (n_in - 1) * s_in + 1e-9
    np.testing.assert_array_equal(layer.data, isbi[:4, :64, :64])


def test_enhance_reads_dask_and_multiscale_layers_at_full_resolution(make_napari_viewer, isbi, voxel, tiny_model):
    import dask.array as da

    viewer = make_napari_viewer()
    pyramid = [isbi[:2], isbi[:2, ::2, ::2]]
    viewer.add_image(pyramid, multiscale=True, name="pyramid", scale=voxel)
    viewer.add_image(da.from_array(isbi[:2], chunks=(1, 64, 64)), name="lazy", scale=voxel)
    MODELS.add(tiny_model, "trained")
    w = _open(viewer)
    w.scope.setCurrentIndex(w.scope.findData("whole"))
    w.steps.setValue(1)
    for name in ("pyramid", "lazy"):
        w.image.select(viewer.layers[name])
        w.run()
        enhanced, _ = w.result_layers
        assert enhanced.data.shape == (2, 128, 128), name
        assert enhanced.name == f"{name}: estimate"


def test_results_too_large_for_memory_go_to_zarr_and_open_lazily(make_napari_viewer, isbi, voxel, tiny_model, tmp_path, monkeypatch):
    from napari_emdiffuse._widgets import enhance

    viewer = make_napari_viewer()
    viewer.add_image(isbi[:2], name="em", scale=voxel)
    MODELS.add(tiny_model, "trained")
    w = _open(viewer)
    w.scope.setCurrentIndex(w.scope.findData("whole"))
    w.steps.setValue(1)
    monkeypatch.setattr(enhance, "IN_MEMORY_LIMIT", 1000)  # every result is "too large"
    w.run()
    enhanced, uncertainty = w.result_layers
    assert hasattr(enhanced.data, "dask") and hasattr(uncertainty.data, "dask")  # lazy, from disk
    assert ".zarr" in w.controls.status.text()
    # a chosen zarr path is used as it is, and reopens through the plugin's reader with its voxel size
    w.zarr_path.setText(str(tmp_path / "out.zarr"))
    w.run()
    layers = viewer.open(str(tmp_path / "out.zarr"), plugin="napari-emdiffuse")
    from napari_emdiffuse.model_file import Model

    calibrated = bool(Model.load(tiny_model).calibration)
    cover = "below 90 %"  # 1 step, fewer than the calibration's
    bounds = {f"out: lower bound ({cover})", f"out: upper bound ({cover})"} if calibrated else set()  # a calibrated model: its interval too
    error = f"out: error bound ({cover}) [grey values]" if calibrated else "out: error map [grey values]"
    assert {lyr.name for lyr in layers} == {"out: estimate", error} | bounds
    assert w.result_layers[1].name == error.replace("out: ", "em: ") + " [1]"  # as Enhance named it (its second run)
    assert all(tuple(lyr.scale) == pytest.approx(voxel) for lyr in layers)


@pytest.mark.with_bundled_models
def test_the_bundled_default_models_are_offered_per_variant(make_napari_viewer):
    viewer = make_napari_viewer()
    w = _open(viewer)
    defaults = {"denoise": "emdiffuse-n", "superres": "emdiffuse-r", "iso_i": "vemdiffuse-i", "iso_a": "vemdiffuse-a"}
    for variant, name in defaults.items():
        w.variant.setCurrentIndex(w.variant.findData(variant))
        offered = [w.model.itemText(i).split(" ")[0] for i in range(w.model.count())]
        assert name in offered, (variant, offered)
        assert all(other not in offered for other in defaults.values() if other != name)


BUNDLED_SAY = {  # what each bundled model's options make it do, as the Enhance widget says it
    "emdiffuse-n": [],
    "emdiffuse-r": ["2x super-resolution (pixels 2 times finer in x and y)"],
    "vemdiffuse-i": ["4x finer in z (k = 4): 3 new slices between each two input slices"],
    "vemdiffuse-a": ["4x finer in z (k = 4): 3 new slices between each two input slices", "averages its xz and yz views"],
}


@pytest.mark.with_bundled_models
def test_the_model_line_says_in_words_what_each_bundled_model_does(make_napari_viewer):
    """The options fixed at training were a greyed-out form of option names ("residual ☑",
    "emdiffuse original", "both views"); the model line now says what they make the model do."""
    from qtpy.QtWidgets import QCheckBox, QDoubleSpinBox, QSpinBox

    from napari_emdiffuse._widgets.options_form import OptionsForm
    from napari_emdiffuse.models import bundled_models

    viewer = make_napari_viewer()
    w = _open(viewer)
    for name, say in BUNDLED_SAY.items():
        w.select_model(bundled_models()[name])  # switches to its variant
        line = w.model_info.text()
        assert line.startswith("; ".join([*say, ""])), (name, line)
        assert re.search(r"\d+ training steps; validation PSNR \d+\.\d dB( \((noisy input|bicubic|linear interpolation) \d+\.\d dB\))?$", line), line
        for raw in ("residual", "emdiffuse", "both views", "factor", "True", "False"):
            assert raw not in line, (name, line)
        assert not w.findChildren(OptionsForm)
        assert not [e for e in w.findChildren((QCheckBox, QSpinBox, QDoubleSpinBox)) if not e.isEnabled()]  # nothing greyed out


def test_the_result_size_follows_the_chosen_models_options(make_napari_viewer, isbi, voxel, untrained_model):
    """The output line reads the model's own factor (the form it read before is gone)."""
    viewer = make_napari_viewer()
    viewer.add_image(isbi[:4, :64, :64], name="em", scale=voxel, units=("micrometer",) * 3)
    MODELS.add(untrained_model("superres"), "disk")
    w = _open(viewer)
    w.variant.setCurrentIndex(w.variant.findData("superres"))
    w.scope.setCurrentIndex(w.scope.findData("slice"))
    assert w.output_info.text().startswith("Current slice → 128 × 128 px"), w.output_info.text()


def test_a_zarr_result_keeps_its_place_and_is_replaced_only_when_asked(make_napari_viewer, isbi, voxel, tiny_model, tmp_path, notes):
    """The store reopens where the result was shown (its translation was lost); a second run
    onto the same store is refused in plain words unless 'Overwrite' is ticked."""
    viewer = make_napari_viewer()
    translate = (1.0, 0.5, 0.25)
    em = viewer.add_image(isbi[:2], name="em", scale=voxel, translate=translate, units=("micrometer",) * 3)
    MODELS.add(tiny_model, "trained")
    w = _open(viewer)
    w.scope.setCurrentIndex(w.scope.findData("whole"))
    w.steps.setValue(1)
    out = tmp_path / "out.zarr"
    w.zarr_path.setText(str(out))
    w.run()
    shown = w.result_layers[0]
    layers = viewer.open(str(out), plugin="napari-emdiffuse")
    assert all(tuple(lyr.translate) == pytest.approx(tuple(shown.translate)) for lyr in layers)
    assert tuple(shown.translate) == pytest.approx(translate)
    before = sorted(p.name for p in out.rglob("*"))
    w.image.select(em)  # not the reopened result: writing onto its own source is refused otherwise
    w.run()
    message = notes.messages("error")[-1]
    assert "already exists" in message and "tick 'Overwrite'" in message and "--" not in message
    assert sorted(p.name for p in out.rglob("*")) == before
    w.overwrite.setChecked(True)
    w.run()
    assert len(notes.messages("error")) == 1 and "Done" in w.controls.status.text()


def _with_calibration(model: Path, folder: Path, q: float | None) -> Path:
    """A copy of ``model`` whose model.json says it was calibrated with scale ``q`` at every
    alpha (None: no calibration at all)."""
    import json
    import shutil

    from napari_emdiffuse.uncertainty import ALPHAS

    shutil.copytree(model, folder)
    meta = json.loads((folder / "model.json").read_text())
    metrics = meta.setdefault("metrics", {})
    metrics.pop("calibration", None)
    if q is not None:
        metrics["calibration"] = {"alpha": 0.1, "alphas": list(ALPHAS), "q": [q] * len(ALPHAS), "samples": 2, "steps": 1, "sampler": "dpmpp_2m"}
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


def test_the_uncertainty_layer_is_a_calibrated_error_bound_with_a_colour_bar(make_napari_viewer, isbi, voxel, tiny_model, tmp_path):
    """In grey values: q times the error map for a calibrated model (named for its coverage),
    the spread named as uncalibrated otherwise; the outlines follow a threshold in grey values."""
    from napari_emdiffuse._widgets.regions import smoothed

    viewer = make_napari_viewer()
    viewer.add_image(isbi[:1], name="em", scale=voxel)
    runs = {}
    for q in (None, 3.0):
        MODELS.clear()
        MODELS.add(_with_calibration(tiny_model, tmp_path / f"model-{q}", q), "trained")
        w = _open(viewer)
        w.steps.setValue(1)
        w.samples.setValue(2)
        w.seed.setValue(0)
        w.run()
        runs[q] = (w, w.result_layers[1])
    (_, plain), (w, bound) = runs[None], runs[3.0]
    assert plain.name == "em: uncertainty (uncalibrated) [grey values]" and "uncalibrated" in plain.metadata["emdiffuse"]["tip"]
    assert bound.name == "em: error bound (90 %) [grey values]" and "90 %" in bound.metadata["emdiffuse"]["tip"]
    w.steps.setValue(2)  # not the calibrated settings: the name no longer claims the coverage
    w.run()
    assert w.result_layers[1].name == "em: error bound (about 90 %) [grey values]" and "approximate" in w.result_layers[1].metadata["emdiffuse"]["tip"]
    w.steps.setValue(1)
    w.run()
    bound = w.result_layers[1]
    np.testing.assert_allclose(np.asarray(bound.data), 3.0 * np.asarray(plain.data), rtol=1e-5)
    assert bound.colorbar.visible and not bound.visible
    # napari's colour bar has no label: the layer's name, which says the unit, is shown beside it
    assert bound.name_overlay.visible and bound.name_overlay.position == bound.colorbar.position
    level = float(np.percentile(np.asarray(smoothed(np.asarray(bound.data))), 50))
    w.unsure_above.setValue(level)
    regions = w.regions_layer
    assert regions.metadata["emdiffuse"]["threshold"] == pytest.approx(level, abs=1e-3)
    marked = np.asarray(regions.data).astype(bool)
    assert marked.any() and not marked.all()
    assert np.all(np.asarray(smoothed(np.asarray(bound.data)))[marked] > w.unsure_above.value())


def test_a_bound_widened_past_what_calibration_covers_is_named_a_rough_error_bound(make_napari_viewer, isbi, voxel, tiny_model, tmp_path, notes):
    """An input 20 times noisier than the calibration data: the bound, widened 2.1x, was shown as
    an 'error bound (90 %)'; it is a rough error bound, and its tip says why. An input like the
    calibration data keeps the calibrated name."""
    import json

    from napari_emdiffuse import uncertainty

    viewer = make_napari_viewer()
    viewer.add_image(isbi[:1], name="em", scale=voxel)
    measured = float(np.median(uncertainty.input_noise(isbi[:1])))
    names = {}
    for ratio in (20.0, 1.0):
        model = _with_calibration(tiny_model, tmp_path / f"model-{ratio}", 3.0)
        meta = json.loads((model / "model.json").read_text())
        meta["metrics"]["calibration"]["input_noise"] = measured / ratio
        (model / "model.json").write_text(json.dumps(meta))
        MODELS.clear()
        MODELS.add(model, "trained")
        w = _open(viewer)
        w.steps.setValue(1)
        w.samples.setValue(2)
        w.run()
        bound = w.result_layers[1]
        names[ratio] = (bound.name, bound.metadata["emdiffuse"]["tip"])
    name, tip = names[20.0]
    assert name == "em: rough error bound [grey values]"
    assert tip.startswith("Error bound in the image's grey values: the error bounds of the input are a rough guide, not a calibrated 90 % interval")
    assert "much noisier than the calibration data" in tip
    assert any("rough guide" in m for m in notes.messages("warning"))
    assert names[1.0][0] == "em: error bound (90 %) [grey values]" and "rough" not in names[1.0][1]


def test_a_layer_in_nanometres_is_measured_in_micrometres_for_the_pixel_size_check(make_napari_viewer, isbi, tiny_model, tmp_path, notes):
    """Layers from other readers may be in nm: the job gets µm (its unit), so a model trained on
    4 nm pixels stays silent on a 4 nm layer and warns on a 10 nm one, and the result layers keep
    the layer's own units."""
    model = _four_nm_model(tiny_model, tmp_path)
    warned = []
    for pixel in (4.0, 10.0):
        viewer = make_napari_viewer()
        viewer.add_image(isbi[:2, :64, :64], name="em", scale=(50.0, pixel, pixel), units=("nanometer",) * 3)
        w = _open(viewer)
        w.model.setCurrentIndex(next(i for i in range(w.model.count()) if w.model.itemData(i).path == model.resolve()))
        w.samples.setValue(2)
        w.steps.setValue(1)
        before = len(notes.messages("warning"))
        w.run()
        assert len(w.result_layers) == 2, w.controls.status.text()
        assert tuple(w.result_layers[0].scale) == pytest.approx((50.0, pixel, pixel))
        assert [str(u) for u in w.result_layers[0].units] == ["nanometer"] * 3
        warned.append([m for m in notes.messages("warning")[before:] if "nm pixels" in m])
    assert warned[0] == [] and len(warned[1]) == 1 and "the input's are 10 nm" in warned[1][0]


@pytest.mark.parametrize("scope", ["slice", "whole"])
def test_the_samples_come_back_as_a_hidden_layer_when_asked(make_napari_viewer, isbi, voxel, tiny_model, scope):
    """The samples (the texture to look at; issue 11's first-class outputs) as one layer over
    the result, their index a leading axis named for what it is; not an input the pickers offer next."""
    viewer = make_napari_viewer()
    viewer.add_image(isbi[:3, :64, :64], name="em", scale=voxel, translate=(1.0, 0.5, 0.25), units=("micrometer",) * 3, axis_labels=("z", "y", "x"))
    MODELS.add(tiny_model, "trained")
    w = _open(viewer)
    w.scope.setCurrentIndex(w.scope.findData(scope))
    w.samples.setValue(2)
    w.steps.setValue(1)
    w.run()
    assert w.samples_layer is None and len(viewer.layers) == 4  # not asked: input, result, uncertainty, regions
    w.keep_samples.setChecked(True)
    w.run()
    enhanced, layer = w.result_layers[0], w.samples_layer
    assert layer is not None and layer in viewer.layers and not layer.visible
    assert layer.data.shape == (2, *enhanced.data.shape)
    assert tuple(layer.scale) == pytest.approx((1.0, *enhanced.scale)) and tuple(layer.translate) == pytest.approx((0.0, *enhanced.translate))
    assert layer.metadata["emdiffuse"]["role"] == "samples" and "samples are hidden" in w.controls.status.text()
    assert tuple(enhanced.axis_labels) == ("z", "y", "x") and tuple(viewer.dims.axis_labels) == ("sample", "z", "y", "x")
    assert np.asarray(layer.data).std(axis=0).max() > 0  # two different draws
    assert w.image.layer().name == "em"  # the next run enhances the image, not the samples
    w.run()
    assert w.samples_layer is not layer and w.result_layers[0].data.shape == enhanced.data.shape


def test_samples_written_to_zarr_come_back_lazily(make_napari_viewer, isbi, voxel, tiny_model, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(isbi[:2, :64, :64], name="em", scale=voxel, units=("micrometer",) * 3)
    MODELS.add(tiny_model, "trained")
    w = _open(viewer)
    w.scope.setCurrentIndex(w.scope.findData("whole"))
    w.samples.setValue(2)
    w.steps.setValue(1)
    w.keep_samples.setChecked(True)
    w.zarr_path.setText(str(tmp_path / "r.zarr"))
    w.run()
    layer = w.samples_layer
    assert layer is not None and not isinstance(layer.data, np.ndarray), w.controls.status.text()
    assert layer.data.shape == (2, 2, 64, 64)
    import zarr

    np.testing.assert_array_equal(np.asarray(layer.data), zarr.open_group(str(tmp_path / "r.zarr"), mode="r")["samples/0"][:])


def test_volume_variants_offer_only_volume_scopes_and_the_info_line_names_the_scope(make_napari_viewer, isbi, voxel, untrained_model):
    """A vEM model on the default "Current slice" was refused with "a single 2D image" (the GUI
    walk of 2026-12-07): the scopes of one plane are not offered to it, and the line under the
    settings describes what the chosen scope gives."""
    viewer = make_napari_viewer()
    viewer.add_image(isbi[:4, :64, :64], name="em", scale=voxel, units=("micrometer",) * 3)
    MODELS.add(untrained_model("denoise"), "disk")
    MODELS.add(untrained_model("iso_i"), "disk")
    w = _open(viewer)
    w.variant.setCurrentIndex(w.variant.findData("denoise"))
    w.scope.setCurrentIndex(w.scope.findData("slice"))
    assert w.output_info.text().startswith("Current slice → 64 × 64 px")
    items = w.scope.model()
    w.variant.setCurrentIndex(w.variant.findData("iso_i"))
    assert w.scope.currentData() == "whole"
    assert not items.item(w.scope.findData("slice")).isEnabled() and not items.item(w.scope.findData("rectangle")).isEnabled()
    assert items.item(w.scope.findData("rectangle_stack")).isEnabled()
    assert w.output_info.text().startswith("Whole volume → ")
    w.variant.setCurrentIndex(w.variant.findData("denoise"))
    assert items.item(w.scope.findData("slice")).isEnabled()


def _edges(layer) -> np.ndarray:
    """The first and last pixel edges of a layer along each axis, in world coordinates."""
    scale, translate, shape = np.asarray(layer.scale), np.asarray(layer.translate), np.asarray(layer.data.shape)
    return np.stack([translate - scale / 2, translate + (shape - 0.5) * scale])


@pytest.mark.parametrize("variant_name,units", [("denoise", None), ("superres", None), ("superres", "micrometer")])
def test_an_input_without_a_pixel_size_gives_results_without_one(make_napari_viewer, isbi, untrained_model, tmp_path, variant_name, units):
    """The GUI walk: the result of an input with no pixel size kept a scale made from the
    placeholder (0.5 µm from another reader's "1 µm") while the file it wrote records no pixel
    size. Its layers are in napari's pixel unit, overlaying the input, and so is the store reopened."""
    viewer = make_napari_viewer()
    layer = viewer.add_image(isbi[:2, :32, :32], name="em", **({"units": (units,) * 3} if units else {}))
    MODELS.add(untrained_model(variant_name), "disk")
    w = _open(viewer)
    w.variant.setCurrentIndex(w.variant.findData(variant_name))
    w.scope.setCurrentIndex(w.scope.findData("whole"))
    w.steps.setValue(1)
    w.samples.setValue(2)
    w.device.setCurrentText("cpu")
    assert w.output_info.text().endswith("pixel") and "nm" not in w.output_info.text()
    w.zarr_path.setText(str(tmp_path / "r.zarr"))
    w.run()
    assert len(w.result_layers) == 2, w.controls.status.text()
    factor = 2 if variant_name == "superres" else 1
    for out in (*w.result_layers, w.regions_layer):
        assert [str(u) for u in out.units] == ["pixel"] * 3
        assert tuple(out.scale) == pytest.approx((1.0, 1 / factor, 1 / factor))
        np.testing.assert_allclose(_edges(out), _edges(layer))  # exactly over the input
    reopened = viewer.open(str(tmp_path / "r.zarr"), plugin="napari-emdiffuse")
    assert all(str(u) == "pixel" for lyr in reopened for u in lyr.units)  # no 1 µm made up on reading either
    if factor == 1:  # a finer grid of unknown size is stored in its own pixels (jobs.predict.output_geometry)
        assert all(tuple(lyr.scale) == tuple(w.result_layers[0].scale) for lyr in reopened)


def test_a_reopened_result_of_an_input_without_a_pixel_size_is_enhanced_without_one(make_napari_viewer, isbi, voxel, untrained_model, tmp_path, notes, whole_run):
    """A 2x super-resolution TIFF of an input without a pixel size reopens over its input at a
    scale of 0.5 of napari's pixels. Enhanced again, that 0.5 was taken as 0.5 µm: the new
    result recorded a made-up pixel size (voxel_size 0.5 µm) and no ``sampling``. It records
    none, its ``sampling`` and position in the pixels of the image the reopened one was made from
    (napari's world: review s16 N1), and lies over it; a layer in µm still has its pixel size,
    one scaled without units (napari's "pixel") none, but its scale as its ``sampling``."""
    import zarr

    from napari_emdiffuse.data.io import read_image
    from napari_emdiffuse.jobs.predict import run_predict
    from napari_emdiffuse.model_file import Model

    sr = Model.load(untrained_model("superres"))
    sample = sr.preset.with_overrides({"sample": {"steps": 1, "samples": 2}}).sample
    run_predict(sr, isbi[:2, :24, :28].astype(np.float32), sample=sample, device="cpu", output=tmp_path / "sr.tif")
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(tmp_path / "sr.tif"), plugin="napari-emdiffuse")
    assert tuple(layer.scale) == pytest.approx((1.0, 0.5, 0.5)) and [str(u) for u in layer.units] == ["pixel"] * 3
    MODELS.add(untrained_model("denoise"), "disk")
    w = whole_run(_open(viewer), "denoise", layer, tmp_path / "again.zarr")
    assert w.plan().voxel == (1.0, 1.0, 1.0)
    w.run()
    assert len(w.result_layers) == 2, w.controls.status.text()
    attrs = dict(zarr.open_group(str(tmp_path / "again.zarr"), mode="r").attrs)
    assert attrs["voxel_size"] == [1.0, 1.0, 1.0] and attrs["sampling"] == [1.0, 0.5, 0.5]
    own = read_image(tmp_path / "sr.tif").meta["provenance"]["origin"]  # the SR result's first pixel, in its own pixels
    assert attrs["origin"] == pytest.approx([o * f for o, f in zip(own, (1.0, 0.5, 0.5))])
    assert attrs["origin"] == pytest.approx(list(layer.translate))  # the world's, where the layer lies
    assert any(own)
    assert not [m for m in notes.messages("warning") if "pixel" in m]
    for out in w.result_layers:
        np.testing.assert_allclose(_edges(out), _edges(layer))
        assert [str(u) for u in out.units] == ["pixel"] * 3
    w.zarr_path.setText("")
    w.image.select(viewer.add_image(isbi[:2, :24, :28], name="em", scale=voxel, units=("micrometer",) * 3))
    assert w.plan().voxel == pytest.approx(voxel) and w.plan().sampling == (1.0, 1.0, 1.0)  # a real pixel size: kept
    w.image.select(viewer.add_image(isbi[:2, :24, :28], name="em", scale=voxel))
    assert w.plan().voxel == (1.0, 1.0, 1.0) and w.plan().sampling == pytest.approx(voxel)  # "pixel": no size, where it lies


@pytest.mark.parametrize("suffix", [".zarr", ".tif"])
@pytest.mark.parametrize("again", ["denoise", "superres"])
def test_a_result_of_a_reopened_result_without_a_pixel_size_reopens_where_it_is_shown(make_napari_viewer, isbi, untrained_model, tmp_path, notes, again, suffix, whole_run):
    """Review s16 N1: a result made from a reopened 2x super-resolution TIFF of an input without a
    pixel size (shown at 0.5 of napari's pixels) lay over it in the session, but recorded its
    ``sampling`` and origin in that TIFF's own pixels, which the reader takes as shown at 1:
    reopened, it was twice as large and moved. Reopened from a store or a TIFF, it lies where its
    layer lay, after a denoising and after a second super-resolution (0.25 of the first pixels)."""
    from napari_emdiffuse.jobs.predict import run_predict
    from napari_emdiffuse.model_file import Model

    sr = Model.load(untrained_model("superres"))
    sample = sr.preset.with_overrides({"sample": {"steps": 1, "samples": 2}}).sample
    run_predict(sr, isbi[:2, :12, :14].astype(np.float32), sample=sample, device="cpu", output=tmp_path / "sr.tif")
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(tmp_path / "sr.tif"), plugin="napari-emdiffuse")
    MODELS.add(untrained_model(again), "disk")
    w = whole_run(_open(viewer), again, layer, tmp_path / f"again{suffix}")
    w.run()
    assert len(w.result_layers) == 2, w.controls.status.text()
    shown = {out.name.rpartition(": ")[2]: out for out in w.result_layers}  # by what it shows: the file names the reopened
    factor = 0.25 if again == "superres" else 0.5
    estimate = next(out for out in w.result_layers if out.name.endswith("estimate"))
    assert tuple(estimate.scale) == pytest.approx((1.0, factor, factor))
    reopened = viewer.open(str(tmp_path / f"again{suffix}"), plugin="napari-emdiffuse")
    assert "estimate" in {r.name.rpartition(": ")[2] for r in reopened}
    for r in reopened:
        if (what := r.name.rpartition(": ")[2]) in shown:
            assert tuple(r.scale) == pytest.approx(tuple(shown[what].scale)), r.name
            assert tuple(r.translate) == pytest.approx(tuple(shown[what].translate)), r.name
            np.testing.assert_allclose(_edges(r), _edges(layer))  # over the layer it was made from


def test_a_z_spacing_set_without_units_is_still_checked_against_an_isotropic_model(make_napari_viewer, isbi, untrained_model, notes):
    """Review s16 N5: a user's layer scaled (5, 1, 1) without units (napari's default unit) gave
    the jobs a voxel of (1, 1, 1), so an isotropic model of factor 4 no longer warned that the
    z spacing is not its factor. No pixel size is known, but the scale is given as the input's
    ``sampling``, by which predict judges the z spacing: the warning is back; the result stays
    in napari's pixel unit."""
    viewer = make_napari_viewer()
    layer = viewer.add_image(isbi[:3, :16, :16], name="em", scale=(5.0, 1.0, 1.0))
    MODELS.add(untrained_model("iso_i"), "disk")
    w = _one_step(_open(viewer), "iso_i", layer)
    plan = w.plan()
    assert plan.voxel == (1.0, 1.0, 1.0) and plan.sampling == (5.0, 1.0, 1.0)
    assert [str(u) for u in plan.placement.units] == ["pixel"] * 3
    w.run()
    assert w.result_layers, w.controls.status.text()
    assert any("z voxel is 5 times its xy voxel" in m for m in notes.messages("warning")), notes.messages("warning")


@pytest.mark.parametrize("scope", ["whole", "slice"])
@pytest.mark.parametrize("calibrated", [True, False])
def test_a_reopened_store_mixes_no_units_with_the_result_shown(make_napari_viewer, isbi, voxel, tiny_model, tmp_path, notes, calibrated, scope):
    """The GUI walk: dragging a prediction store into napari beside the result made napari warn
    "Inconsistent units across layers" (the reopened samples' sample axis was in µm, the shown
    samples' in pixels; an unknown pixel size came back as 1 µm). napari says so in a notification,
    not a Python warning. The reopened layers lie where the shown ones do, in the same units; a
    slice of a stack too (its store was 2D, without its z: it reopened on every slice)."""
    from qtpy.QtWidgets import QApplication

    viewer = make_napari_viewer()
    geometry = {"scale": voxel, "translate": (1.0, 0.5, 0.25), "units": ("micrometer",) * 3} if calibrated else {}
    layer = viewer.add_image(isbi[:2, :32, :32], name="em", **geometry)
    viewer.dims.set_point(0, layer.translate[0] + layer.scale[0])  # the second slice
    MODELS.add(tiny_model, "trained")
    w = _open(viewer)
    w.scope.setCurrentIndex(w.scope.findData(scope))
    w.steps.setValue(1)
    w.keep_samples.setChecked(True)
    w.zarr_path.setText(str(tmp_path / "r.zarr"))
    w.run()
    QApplication.processEvents()
    shown = {"enhanced": w.result_layers[0], "uncertainty": w.result_layers[1], "samples": w.samples_layer}
    shown["bounds"] = shown["enhanced"]  # the calibrated interval's lower and upper images, on the result's grid
    reopened = viewer.open(str(tmp_path / "r.zarr"), plugin="napari-emdiffuse")
    QApplication.processEvents()  # napari checks the units when it next draws
    assert not [m for m in notes.messages("warning") if "units" in m]
    assert viewer.layers.extent.units is not None
    assert {"enhanced", "uncertainty", "samples"} <= {lyr.metadata["emdiffuse"]["role"] for lyr in reopened}
    for lyr in reopened:
        twin = shown[lyr.metadata["emdiffuse"]["role"]]
        assert [str(u) for u in lyr.units] == [str(u) for u in twin.units]
        assert tuple(lyr.scale) == pytest.approx(tuple(twin.scale)) and tuple(lyr.translate) == pytest.approx(tuple(twin.translate))
    assert tuple(shown["samples"].axis_labels)[0] == "sample" == tuple(next(lyr for lyr in reopened if lyr.name == "r: samples").axis_labels)[0]
    assert [lyr.metadata["emdiffuse"]["role"] for lyr in reopened if lyr.visible] == ["enhanced"]  # the rest hidden, as Enhance adds them
    reopened_bound = next(lyr for lyr in reopened if lyr.metadata["emdiffuse"]["role"] == "uncertainty")
    assert reopened_bound.contrast_limits[0] == 0.0
    # named, and valued, as Enhance showed them: the store's error map becomes the same error bound
    for role in ("enhanced", "uncertainty"):
        again = next(lyr for lyr in reopened if lyr.metadata["emdiffuse"]["role"] == role)
        assert again.name == shown[role].name.replace("em: ", "r: ")
        np.testing.assert_allclose(np.asarray(again.data), np.asarray(shown[role].data), rtol=1e-5, atol=1e-6)
    if scope == "slice":
        assert all(lyr.ndim == 3 + (lyr.metadata["emdiffuse"]["role"] == "samples") for lyr in reopened)
        assert shown["enhanced"].translate[0] == pytest.approx(layer.translate[0] + layer.scale[0])  # on the slice it came from


def test_result_names_are_short_and_say_what_each_layer_is(make_napari_viewer, isbi, voxel, tiny_model):
    """The GUI walk: names such as "em denoise error bound (below 90 %: fewer steps)" were cut
    off in napari's layer list. A name is the input's and what the layer shows; a second run
    gets napari's "[1]" and nothing longer; the roles stay in the metadata."""
    viewer = make_napari_viewer()
    viewer.add_image(isbi[:1, :32, :32], name="em", scale=voxel)
    MODELS.add(tiny_model, "trained")
    w = _open(viewer)
    w.steps.setValue(1)
    w.keep_samples.setChecked(True)
    names = []
    for _ in range(2):
        w.run()
        layers = [*w.result_layers, w.regions_layer, w.samples_layer]
        names.append([lyr.name for lyr in layers])
        assert [lyr.metadata["emdiffuse"]["role"] for lyr in layers] == ["enhanced", "uncertainty", "regions", "samples"]
    first, second = names
    assert first[0] == "em: estimate" and first[2:] == ["em: unsure regions", "em: samples"]
    assert re.fullmatch(r"em: error bound \((below |about )?90 %\) \[grey values\]", first[1]), first[1]
    assert second == [f"{name} [1]" for name in first]


def test_a_long_input_name_is_cut_in_the_middle_of_its_results_names(make_napari_viewer, isbi, voxel, tiny_model):
    """The GUI walk at 1366 px: "2024-03-11_mouse_cortex_FIBSEM_stack_aligned_8bit: error bound ..."
    showed only its start in the layer list, the same for every result. The results keep the
    name's start and end; the full name stays in their metadata."""
    long_name = "2024-03-11_mouse_cortex_FIBSEM_stack_aligned_8bit"
    viewer = make_napari_viewer()
    viewer.add_image(isbi[:1, :32, :32], name=long_name, scale=voxel)
    MODELS.add(tiny_model, "trained")
    w = _open(viewer)
    w.steps.setValue(1)
    w.run()
    enhanced, bound = w.result_layers
    assert enhanced.name == "2024-03-11_…aligned_8bit: estimate"
    assert bound.name.startswith("2024-03-11_…aligned_8bit: ") and "error bound" in bound.name
    assert enhanced.metadata["emdiffuse"]["source_layer"] == long_name


def _console(message: str, layer, **values) -> None:
    """Run the napari console command a message quotes (after "napari's console: "), on a viewer
    holding ``layer``, as a user would paste it."""
    from types import SimpleNamespace

    from napari.components import LayerList

    command = message.split("napari's console: ", 1)[1].split(" (or ", 1)[0]
    exec(command, {"viewer": SimpleNamespace(layers=LayerList([layer])), **values})


def test_a_layer_without_a_pixel_size_is_said_by_name_with_a_fix_napari_has(make_napari_viewer, isbi, tiny_model, tmp_path, notes):
    """Enhance said "the input has no pixel size ... (set ... the layer's scale in a length unit)",
    which napari 0.9's GUI cannot do (it has no units editor), as an info note even for a layer
    whose scale the user can see. Now the note names the layer and quotes a console command that
    works; a scale other than 1 (a size given without its unit) is a warning that the scale only
    places the layer. Predict does not repeat its own note."""
    import napari.layers

    from napari_emdiffuse._widgets.layers import Placement

    model = _four_nm_model(tiny_model, tmp_path)
    said = {}
    for case, scale in (("scaled", (0.05, 0.008, 0.008)), ("default", (1.0, 1.0, 1.0))):
        viewer = make_napari_viewer()
        viewer.add_image(isbi[:2, :64, :64], name="em", scale=scale)
        w = _open(viewer)
        w.model.setCurrentIndex(next(i for i in range(w.model.count()) if w.model.itemData(i).path == model.resolve()))
        w.samples.setValue(2)
        w.steps.setValue(1)
        before = {level: len(notes.messages(level)) for level in ("info", "warning")}
        w.run()
        assert w.result_layers, w.controls.status.text()
        new = {level: [m for m in notes.messages(level)[before[level] :] if "pixel size" in m] for level in ("info", "warning")}
        said[case] = new
    [warning] = said["scaled"]["warning"]
    assert warning.startswith("layer 'em': its scale 0.05 x 0.008 x 0.008 has no length unit, so it places the layer but is no pixel size")
    assert "4 nm pixels this model learnt from" in warning and not said["scaled"]["info"]
    [info] = said["default"]["info"]
    assert info.startswith("layer 'em' has no pixel size, so it cannot be compared with the 4 nm pixels") and not said["default"]["warning"]
    layer = napari.layers.Image(np.zeros((2, 4, 4)), name="em", scale=(0.05, 0.008, 0.008))
    _console(warning, layer)  # the commands quoted work in napari 0.9, and give the layer a pixel size
    assert Placement.of(layer).voxel_um() == pytest.approx((5e-5, 8e-6, 8e-6))
    layer = napari.layers.Image(np.zeros((2, 4, 4)), name="em")
    _console(info, layer, z=50, y=4, x=4)
    assert Placement.of(layer).voxel_um() == pytest.approx((0.05, 0.004, 0.004))


def test_a_cancel_that_keeps_blocks_but_not_the_first_says_where_they_are(make_napari_viewer, tmp_path):
    """A resumed store whose first block is not finished (a cluster run's) and is cancelled again
    keeps its finished blocks: the status said "nothing was added" and nothing of where they are."""
    from napari_emdiffuse.jobs.events import PredictResult

    w = _open(make_napari_viewer())
    store = tmp_path / "o.partial.zarr"
    w._on_event(PredictResult(None, None, None, (1.0, 1.0), False, None, written=(store,)))
    assert w.controls.status.text() == (
        f"Cancelled before the first block was finished: nothing was added; the finished blocks are kept in {store}: run again with Resume ticked to finish it."
    )
    w._on_event(PredictResult(None, None, None, (1.0, 1.0), False, None))
    assert w.controls.status.text() == "Cancelled before the first plane was finished: nothing was added."
    assert w.result_layers == []


def test_a_layer_in_micrometres_at_the_placeholder_is_not_said_to_lack_a_unit():
    """An ImageJ stack with a slice spacing and no x/y resolution opens in µm with 1 µm pixels (a
    file without a pixel size): Enhance said "its scale 0.05 x 1 x 1 has no length unit", which is
    untrue. It now says what makes it sizeless, in information, with the console fix."""
    import napari.layers

    from napari_emdiffuse._widgets.layers import unsized_note

    layer = napari.layers.Image(np.zeros((2, 4, 4)), name="em", scale=(0.05, 1.0, 1.0), units=("micrometer",) * 3)
    text, level = unsized_note(layer, "its results record none")
    assert level == "info" and "no length unit" not in text
    assert text.startswith("layer 'em': its pixels are 1 µm across, the size a file without a pixel size reads as")
    assert unsized_note(layer, "its results record none", unscaled_too=False) is None


@pytest.mark.parametrize("units", ["pixel", "nm"])
def test_a_mirrored_layer_is_refused_up_front_in_one_line_naming_it(make_napari_viewer, isbi, untrained_model, notes, units):
    """napari allows a negative scale (a mirrored view), by which no result can be placed: Enhance
    started the job and predict refused it as "sampling (1.0, -4.0, 4.0): one positive number per
    axis", unclear to a user. It is refused before anything runs, naming the layer and what to
    do, in the words napari's writer refuses it in (one rule, Placement.mirror_refusal)."""
    viewer = make_napari_viewer()
    layer = viewer.add_image(isbi[:2, :16, :16], name="em", scale=(1.0, -4.0, 4.0), units=(units,) * 3)
    MODELS.add(untrained_model("denoise"), "disk")
    w = _one_step(_open(viewer), "denoise", layer)
    said = w.output_info.text()  # the line under 'Save to' says it before Run, where it showed 'voxel 4 x -4 nm'
    w.run()
    [error] = notes.messages("error")
    assert error == said == (
        "Layer 'em' is mirrored (scale 1 x -4 x 4), which its results cannot be placed by; give it a positive scale "
        "(in napari's console: viewer.layers['em'].scale = (1, 4, 4)) and enhance again"
    )
    assert w.controls.status.text() == error and not w.result_layers and len(viewer.layers) == 1
