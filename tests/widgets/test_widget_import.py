"""Enhance widget: "Import EMDiffuse weights…" imports the original weights and runs them."""

from __future__ import annotations

from pathlib import Path

import pytest

from napari_emdiffuse._widgets import _common, enhance

FIXTURES = (Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "emdiffuse-original").resolve()


@pytest.fixture
def weights() -> Path:
    path = FIXTURES / "emdiffuse_n_small.pth"
    if not path.is_file():
        pytest.skip(f"original EMDiffuse fixtures not found at {FIXTURES}")
    return path


def _dialogs(monkeypatch, weights: Path, out: Path) -> None:
    monkeypatch.setattr(enhance.QFileDialog, "getOpenFileName", staticmethod(lambda *a, **k: (str(weights), "")))
    monkeypatch.setattr(enhance.QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(out), "")))


def test_import_then_enhance_with_every_sampler(make_napari_viewer, isbi, weights, tmp_path, monkeypatch):
    viewer = make_napari_viewer()
    viewer.add_image(isbi[0, :64, :96], name="em")
    _, w = viewer.window.add_plugin_dock_widget("napari-emdiffuse", "Enhance")
    out = tmp_path / "imported-n"
    _dialogs(monkeypatch, weights, out)
    w.variant.setCurrentIndex(w.variant.findData("denoise"))
    w.import_model.click()
    assert (out / "model.json").is_file() and w.model.currentData().path == out.resolve()
    w.scope.setCurrentIndex(w.scope.findData("whole"))
    w.steps.setValue(2)
    w.samples.setValue(2)
    w.device.setCurrentText("cpu")
    for sampler in ("dpmpp_2m", "ddim", "ddpm"):
        w.sampler.setCurrentText(sampler)
        w.run()
        assert len(w.result_layers) == 2, (sampler, w.controls.status.text())
        assert w.result_layers[0].data.shape == (64, 96)


def test_import_as_the_wrong_variant_is_refused_and_writes_nothing(make_napari_viewer, weights, tmp_path, monkeypatch):
    errors = []
    monkeypatch.setattr(_common, "notify_error", errors.append)
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-emdiffuse", "Enhance")
    out = tmp_path / "imported-i"
    _dialogs(monkeypatch, weights, out)
    w.variant.setCurrentIndex(w.variant.findData("iso_i"))
    w.import_model.click()
    assert len(errors) == 1 and "--variant denoise or superres" in str(errors[0])
    assert not out.exists() and w.model.currentData() is None
