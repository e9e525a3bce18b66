"""Problems reach the user as napari notifications in plain words; nothing freezes or is lost."""

from __future__ import annotations

import numpy as np
import pytest

from napari_emdiffuse._widgets.registry import MODELS


def test_no_layer_and_no_model_are_explained(make_napari_viewer, notes, tiny_model, open_dock):
    viewer = make_napari_viewer()
    w = open_dock(viewer, "Enhance")
    w.run()
    assert "no image layer selected" in notes.messages("error")[-1].lower()
    viewer.add_image(np.zeros((32, 32), np.float32) + np.arange(32), name="em")
    w.run()
    assert "no model chosen" in notes.messages("error")[-1].lower()
    assert not w.controls.runner.running and w.controls.run_button.isEnabled()


def test_wrong_dimensionality_is_explained(make_napari_viewer, notes, tiny_model, open_dock):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((2, 3, 16, 16), np.float32), name="4d")
    MODELS.add(tiny_model, "trained")
    w = open_dock(viewer, "Enhance")
    w.run()
    assert "2D images and 3D stacks" in notes.messages("error")[-1]


def _volume_only():
    from napari_emdiffuse.variants import VARIANTS

    return [name for name, v in VARIANTS.items() if 2 not in v.input_ndims]


@pytest.mark.parametrize("variant_name", _volume_only())
def test_a_volume_variant_on_a_single_image_is_explained(make_napari_viewer, notes, untrained_model, variant_name, open_dock):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((32, 32)).astype(np.float32), name="single image")
    MODELS.add(untrained_model(variant_name), "disk")
    w = open_dock(viewer, "Enhance")
    w.variant.setCurrentIndex(w.variant.findData(variant_name))
    w.run()
    assert "volume" in notes.messages("error")[-1] and w.result_layers == []
    _, train = viewer.window.add_plugin_dock_widget("napari-emdiffuse", "Train / fine-tune")
    train.variant.setCurrentIndex(train.variant.findData(variant_name))
    # it learns from a real volume: no "simulated degradation" is offered for it (layers or files)
    assert [train.source.itemData(i) for i in range(train.source.count())] == ["layers", "files", "prepared"]


def test_a_missing_gpu_falls_back_to_the_cpu_with_a_warning(make_napari_viewer, notes, isbi, tiny_model, open_dock):
    viewer = make_napari_viewer()
    viewer.add_image(isbi[0, :64, :64], name="em")
    MODELS.add(tiny_model, "trained")
    w = open_dock(viewer, "Enhance")
    w.device.addItem("cuda:7")  # a GPU this machine does not have
    w.device.setCurrentText("cuda:7")
    w.steps.setValue(1)
    w.run()
    assert any("running on the CPU" in m for m in notes.messages("warning"))
    assert len(w.result_layers) == 2


def test_out_of_memory_suggests_a_smaller_tile(make_napari_viewer, notes, isbi, tiny_model, monkeypatch, open_dock):
    import napari_emdiffuse.jobs.predict as predict_job

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        yield  # a generator, like the real job

    monkeypatch.setattr(predict_job, "predict", out_of_memory)
    viewer = make_napari_viewer()
    layer = viewer.add_image(isbi[0], name="em")
    MODELS.add(tiny_model, "trained")
    w = open_dock(viewer, "Enhance")
    w.tile_size.setValue(256)
    w.run()
    message = notes.messages("error")[-1]
    assert "ran out of memory" in message and "tile size (now 256 px)" in message
    assert w.controls.run_button.isEnabled() and list(viewer.layers) == [layer]


def test_bad_tile_settings_are_refused_before_a_run(make_napari_viewer, notes, isbi, tiny_model, open_dock):
    viewer = make_napari_viewer()
    viewer.add_image(isbi[0], name="em")
    MODELS.add(tiny_model, "trained")
    w = open_dock(viewer, "Enhance")
    w.tile_size.setValue(64)
    w.overlap.setValue(48)
    w.run()
    assert notes.messages("error")[-1].startswith("Overlap: 48") and not w.controls.runner.running  # named by its label


def test_a_model_with_a_bad_variant_option_is_refused_when_loaded(make_napari_viewer, notes, tiny_model, tmp_path, monkeypatch, open_dock):
    """model_file knows no variant, so the widgets' model list asks the registry right after
    loading: the folder is refused at Load…, in one line naming it, and never listed."""
    import json
    import shutil

    from qtpy.QtWidgets import QFileDialog

    folder = tmp_path / "bad-option"
    shutil.copytree(tiny_model, folder)
    meta = json.loads((folder / "model.json").read_text())
    meta["preset"]["variant_options"]["factr"] = 2
    (folder / "model.json").write_text(json.dumps(meta))
    w = open_dock(make_napari_viewer(), "Enhance")
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(folder))
    w.load_model.click()
    message = notes.messages("error")[-1]
    assert str(folder) in message and "factr" in message and "\n" not in message.strip()
    assert w.model.count() == 0
