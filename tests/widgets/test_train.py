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
    assert w.progress.value() == 4
    # the new model is in Enhance at once, and Save writes a loadable model folder
    assert enhance.model.count() == 1 and enhance.model.currentData().path == w.last_model.resolve()
    saved = w.save_model(tmp_path / "my model")
    from napari_emdiffuse.model_file import Model

    assert Model.load(saved).variant == "denoise"
    assert any(e.path == saved.resolve() for e in MODELS.entries())
