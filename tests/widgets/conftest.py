"""Fixtures for the widget tests: real EM crops, tiny models trained on them, clean registries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari", reason="the widget tests need napari (pip install -e '.[dev]')")

DATA = (Path(__file__).resolve().parents[2] / "../shared/data").resolve()
ISBI = DATA / "isbi2012_sstem_train.tif"
# ISBI 2012 ssTEM: 4 x 4 nm pixels, 50 nm sections, in micrometres as the reader gives them
ISBI_VOXEL = (0.05, 0.004, 0.004)


@pytest.fixture(scope="session")
def isbi() -> np.ndarray:
    """Six slices, 128 x 128 px, of the real ssTEM stack (uint8)."""
    if not ISBI.is_file():
        pytest.skip(f"real EM data not found at {ISBI} (see ../shared/data/PROVENANCE.md)")
    import tifffile

    return tifffile.imread(ISBI, key=range(6))[:, 192:320, 192:320].copy()


@pytest.fixture(scope="session")
def voxel() -> tuple[float, float, float]:
    return ISBI_VOXEL


@pytest.fixture(scope="session")
def tiny_model(isbi, tmp_path_factory) -> Path:
    """A tiny denoiser trained for a few steps on the real crop (simulated noise): a real model
    folder the widgets can load; its quality does not matter to these tests."""
    from napari_emdiffuse.config import load_preset
    from napari_emdiffuse.jobs.train import train
    from napari_emdiffuse.variants import get_variant

    variant = get_variant("denoise")
    arrays = variant.from_clean(isbi, variant.options({}))
    preset = load_preset("tiny", {"train": {"iterations": 3, "val_every": 3, "val_patches": 1}})
    run = tmp_path_factory.mktemp("tiny_model")
    for _ in train(preset, arrays, run, device="cpu"):
        pass
    return run


@pytest.fixture
def untrained_model(tmp_path):
    """A factory: a model folder of a variant with the tiny network and initial weights, enough
    to check shapes and geometry, and working for variants added later."""
    from napari_emdiffuse.config import builtin_presets, load_preset
    from napari_emdiffuse.model_file import Model, ModelInfo
    from napari_emdiffuse.variants import complete, get_variant

    def make(variant_name: str) -> Path:
        presets = [load_preset(n) for n in sorted(builtin_presets())]
        tiny = [p for p in presets if p.variant == variant_name and "tiny" in p.name]
        preset = tiny[0] if tiny else load_preset("tiny").with_overrides({"variant": variant_name})
        variant = get_variant(variant_name)
        out_c, cond_c = variant.channels(variant.options(preset.variant_options))
        return Model(complete(preset), ModelInfo(out_channels=out_c, cond_channels=cond_c)).save(tmp_path / f"untrained-{variant_name}")

    return make


@pytest.fixture
def whole_run():
    """``whole_run(enhance, variant, layer, store)``: the Enhance panel set for a quick run of
    ``variant`` over the whole ``layer`` (1 step, 2 samples, CPU) into the zarr ``store``; returns it."""

    def set_up(w, variant: str, layer, store: Path):
        w.variant.setCurrentIndex(w.variant.findData(variant))
        w.image.select(layer)
        w.scope.setCurrentIndex(w.scope.findData("whole"))
        w.steps.setValue(1)
        w.samples.setValue(2)
        w.device.setCurrentText("cpu")
        w.zarr_path.setText(str(store))
        return w

    return set_up


class Notes(list):
    """The napari notifications shown during a test."""

    def messages(self, severity: str) -> list[str]:
        """Their texts, of one severity ("error", "warning", "info")."""
        return [str(n.message) for n in self if str(n.severity).lower().endswith(severity)]


@pytest.fixture
def notes():
    from napari.utils.notifications import notification_manager

    seen = Notes()
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


@pytest.fixture
def cancel_part_way():
    """``cancel_part_way(widget, part)``: the widget's next run cancels itself once more than
    1/``part`` of its progress is done, as a user pressing Cancel mid-run; returns the handler
    it wrapped, to put back for later runs."""

    def install(widget, part: int):
        forward = widget.controls.runner._on_event

        def cancelling(event):
            forward(event)
            if getattr(getattr(event, "kind", None), "value", None) == "progress" and event.done > event.total // part:
                widget.controls.runner.cancel()

        widget.controls.runner._on_event = cancelling
        return forward

    return install


@pytest.fixture
def open_dock():
    """A function: open one of the plugin's dock widgets (by its menu name) and return it."""

    def open_(viewer, name: str):
        _, widget = viewer.window.add_plugin_dock_widget("napari-emdiffuse", name)
        return widget

    return open_


@pytest.fixture(autouse=True)
def _clean_state(monkeypatch, request):
    """Each test starts with no session models or presets, without the bundled models (unless
    marked ``with_bundled_models``), and runs jobs synchronously unless it switches threads on
    itself."""
    from napari_emdiffuse import models
    from napari_emdiffuse._widgets import _common
    from napari_emdiffuse._widgets.registry import MODELS, PRESETS

    monkeypatch.setattr(_common, "SYNCHRONOUS", True)
    if request.node.get_closest_marker("with_bundled_models") is None:
        monkeypatch.setattr(models, "bundled_models", dict)
    MODELS.clear()
    PRESETS.clear()
    yield
    MODELS.clear()
    PRESETS.clear()
