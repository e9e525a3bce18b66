"""Train / fine-tune widget: trains through the job, plots, previews, saves; fine-tunes on a region."""

from __future__ import annotations

import numpy as np
import pytest

from napari_emdiffuse._widgets.registry import MODELS


def _open(viewer, name="Train / fine-tune"):
    _, widget = viewer.window.add_plugin_dock_widget("napari-emdiffuse", name)
    return widget


def _tiny(w, iterations=4):
    w.select_start("preset: tiny")
    w.iterations.setValue(iterations)
    w.device.setCurrentText("cpu")


def test_train_plots_previews_saves_and_offers_the_model_to_enhance(make_napari_viewer, isbi, voxel, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(isbi, name="clean", scale=voxel, units=("micrometer",) * 3)
    w = _open(viewer)
    enhance = _open(viewer, "Enhance")
    assert enhance.model.count() == 0
    w.source.setCurrentIndex(w.source.findData("simulate"))
    _tiny(w)
    w.run()
    assert w.plot.steps == [1, 2, 3, 4] and all(np.isfinite(w.plot.losses))
    preview = viewer.layers["training preview"]
    assert preview.ndim == 2 and preview.data.shape[1] > 3 * preview.data.shape[0] - 1
    assert tuple(preview.scale) == pytest.approx(voxel[1:])
    assert w.controls.progress.value() == w.controls.progress.maximum()  # the bar ends full (calibration is last)
    assert w.iterations.value() == 4  # the user's settings survive the new model's arrival
    # the new model is in Enhance at once, and Save writes a loadable model folder
    assert enhance.model.count() == 1 and enhance.model.currentData().path == w.last_model.resolve()
    saved = w.save_model(tmp_path / "my model")
    from napari_emdiffuse.model_file import Model

    assert Model.load(saved).variant == "denoise"
    assert Model.load(saved).info.training["pixel_size_um"] == pytest.approx(voxel[-1])  # the layer's, in µm
    assert any(e.path == saved.resolve() for e in MODELS.entries())
    # Load model: a saved folder becomes the starting point for fine-tuning
    w.load_model(saved)
    kind, entry = w.start_from.currentData()
    assert kind == "model" and entry.path == saved.resolve()


def test_fine_tuning_on_a_drawn_rectangle_uses_only_that_region(make_napari_viewer, isbi, voxel, tiny_model):
    """Outside the rectangle both layers are NaN, which training refuses: the run succeeds only
    if nothing outside the rectangle (drawn in world units on scaled, offset layers) is read."""
    viewer = make_napari_viewer()
    translate = (0.0, 0.3, 0.1)
    rows, cols = slice(30, 110), slice(20, 100)
    clean = np.full(isbi[:3].shape, np.nan, np.float32)
    clean[:, rows, cols] = isbi[:3, rows, cols]
    noisy = clean + np.random.default_rng(0).normal(0, 20, clean.shape).astype(np.float32)
    kw = {"scale": voxel, "translate": translate, "units": ("micrometer",) * 3}
    viewer.add_image(noisy, name="noisy", **kw)
    viewer.add_image(clean, name="clean", **kw)
    corner = lambda y, x: (translate[1] + y * voxel[1], translate[2] + x * voxel[2])  # noqa: E731 - pixel centre, world
    (y0, x0), (y1, x1) = corner(30, 20), corner(109, 99)
    viewer.add_shapes([[[y0, x0], [y0, x1], [y1, x1], [y1, x0]]], shape_type="rectangle", name="trusted region")
    MODELS.add(tiny_model, "trained")
    w = _open(viewer)
    w.pickers["input"].select(viewer.layers["noisy"])
    w.pickers["target"].select(viewer.layers["clean"])
    w.region.select(viewer.layers["trusted region"])
    w.select_start("fine-tune:")
    w.iterations.setValue(2)
    w.device.setCurrentText("cpu")
    w.run()
    assert w.last_model is not None, w.controls.status.text()
    from napari_emdiffuse.model_file import Model

    training = Model.load(w.last_model).info.training
    assert "region y 30:110, x 20:100" in training["data"]
    assert training["fine_tuned_from"]  # started from the chosen model


@pytest.mark.slow
def test_the_train_widget_exports_the_chosen_model_to_bioimageio(make_napari_viewer, tiny_model, tmp_path):
    import zipfile

    pytest.importorskip("bioimageio.spec", reason="bioimage.io export needs the export extra")
    viewer = make_napari_viewer()
    MODELS.add(tiny_model, "trained")
    w = _open(viewer)
    assert w.export_button.toolTip()
    w.select_start("fine-tune:")
    assert w.model_to_export() == tiny_model.resolve()
    out = w.export_bioimageio(tmp_path / "tiny.zip")
    names = zipfile.ZipFile(out).namelist()
    assert {"model.json", "weights.pt"} <= set(names) and any(n.endswith(".yaml") for n in names)


def test_export_to_a_name_whose_zip_exists_says_how_to_replace_it(make_napari_viewer, tiny_model, tmp_path, monkeypatch):
    """A name typed without '.zip' whose .zip exists: the save dialog asked nothing (the name it
    returned does not exist), so the export refuses; it said "tick 'Overwrite'", a box the Train
    panel does not have. It now says how, and the file is untouched."""
    from napari_emdiffuse._widgets import train

    (tmp_path / "mine.zip").write_bytes(b"an earlier package")
    viewer = make_napari_viewer()
    MODELS.add(tiny_model, "trained")
    w = _open(viewer)
    w.select_start("fine-tune:")
    monkeypatch.setattr(train.QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(tmp_path / "mine"), "")))
    w._export_dialog()
    said = w.controls.status.text()
    assert said == f"{tmp_path / 'mine.zip'} exists: choose it by that name in the dialog (which asks before replacing it), or give another name"
    assert (tmp_path / "mine.zip").read_bytes() == b"an earlier package"


def test_train_says_when_the_model_will_record_no_pixel_size(make_napari_viewer, isbi, voxel, notes):
    """Train was silent when the layer it learns from has no pixel size, and the model recorded
    none (later inputs then go unchecked). It says so, naming the layer and how to give it one; a
    scale without a length unit is a warning that it only places the layer. A mirrored layer
    (negative scale) has pixels of its scale's size: it records them, and says nothing (it said
    its pixels were 1 µm across and recorded none)."""
    said, mirrored = {}, (voxel[0], voxel[1], -voxel[2])
    for case, geometry in (("scaled", {"scale": (0.05, 0.004, 0.004)}), ("default", {}), ("sized", {"scale": voxel, "units": ("micrometer",) * 3}),
                           ("mirrored", {"scale": mirrored, "units": ("micrometer",) * 3})):
        viewer = make_napari_viewer()
        viewer.add_image(isbi[:2, :64, :64], name="clean", **geometry)
        w = _open(viewer)
        w.source.setCurrentIndex(w.source.findData("simulate"))
        _tiny(w)
        before = {level: len(notes.messages(level)) for level in ("info", "warning")}
        assert w.plan().pixel_um == (pytest.approx(voxel[-1]) if case in ("sized", "mirrored") else None)
        said[case] = {level: notes.messages(level)[before[level] :] for level in ("info", "warning")}
    [warning] = said["scaled"]["warning"]
    assert warning.startswith("layer 'clean': its scale 0.05 x 0.004 x 0.004 has no length unit, so it places the layer but is no pixel size, and the model will record none")
    [info] = said["default"]["info"]
    assert info.startswith("layer 'clean' has no pixel size, so the model will record none") and "viewer.layers['clean'].units = 'nm'" in info
    assert said["sized"] == said["mirrored"] == {"info": [], "warning": []}
