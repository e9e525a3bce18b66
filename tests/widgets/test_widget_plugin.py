"""The plugin as a new user meets it: the manifest is valid, the Plugins menu opens every
widget, and the sample data opens with its voxel size."""

from __future__ import annotations

from pathlib import Path

import pytest

from napari_emdiffuse._widgets.compare import CompareWidget
from napari_emdiffuse._widgets.enhance import EnhanceWidget
from napari_emdiffuse._widgets.presets import PresetsWidget
from napari_emdiffuse._widgets.train import TrainWidget

MANIFEST = Path(__file__).resolve().parents[2] / "src/napari_emdiffuse/napari.yaml"


def test_manifest_is_valid_and_every_command_imports():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(MANIFEST)
    manifest.validate_imports()  # raises if a python_name does not resolve
    assert {w.display_name for w in manifest.contributions.widgets} == {"Enhance", "Train / fine-tune", "Compare", "Presets"}


def _menu(viewer, *path):
    menu = viewer.window._qt_window.menuBar()
    for title in path:
        menu = next(a.menu() for a in menu.actions() if a.text().replace("&", "") == title)
    return menu


def test_every_widget_opens_from_the_plugins_menu(make_napari_viewer):
    viewer = make_napari_viewer()
    actions = {a.text(): a for a in _menu(viewer, "Plugins", "EMDiffuse").actions()}
    assert set(actions) == {"Enhance", "Train / fine-tune", "Compare", "Presets"}
    for action in actions.values():
        action.trigger()
    opened = list(viewer.window.dock_widgets.values())
    for cls in (EnhanceWidget, TrainWidget, CompareWidget, PresetsWidget):
        assert any(isinstance(w, cls) for w in opened), cls.__name__


@pytest.mark.parametrize("key", ["sstem_clean", "sstem_noisy"])
def test_sample_data_opens_from_the_file_menu(make_napari_viewer, key):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-emdiffuse", key)
    [layer] = viewer.layers
    assert layer.data.shape == (6, 256, 256)
    assert tuple(layer.scale) == pytest.approx((0.05, 0.004, 0.004))
    assert str(layer.units[-1]) == "micrometer"
