"""Enhance widget: result and uncertainty layers with the right shape, scale, units and place."""

from __future__ import annotations

import numpy as np
import pytest

from napari_emdiffuse._widgets.registry import MODELS


def _open(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-emdiffuse", "Enhance")
    return widget


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
