"""The widgets as a user meets them (issue 15): they fit a laptop screen, say what each control
does, guess the right layers, keep safe defaults, and speak in plain words."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import QPoint, QRect
from qtpy.QtWidgets import (
    QAbstractButton,
    QAbstractSpinBox,
    QApplication,
    QComboBox,
    QLabel,
    QLineEdit,
    QListWidget,
    QPlainTextEdit,
    QSlider,
    QTableWidget,
    QWidget,
)

from napari_emdiffuse._widgets.registry import MODELS

UM = ("micrometer",) * 3
LAPTOP = (1366, 768)
CONTROLS = (QAbstractButton, QAbstractSpinBox, QComboBox, QLineEdit, QSlider, QListWidget, QTableWidget, QPlainTextEdit)
WIDGETS = ("Enhance", "Train / fine-tune", "Compare", "Presets")


def _settle(n: int = 6) -> None:
    for _ in range(n):
        QApplication.processEvents()


def _controls(widget: QWidget) -> list[QWidget]:
    """The controls a user can reach in a widget: visible, not part of another control."""
    found = [w for w in widget.findChildren(QWidget) if isinstance(w, CONTROLS) and w.isVisibleTo(widget)]
    return [w for w in found if not any(isinstance(p, (QAbstractSpinBox, QComboBox, QTableWidget, QListWidget)) for p in _ancestors(w, widget))]


def _ancestors(w: QWidget, top: QWidget) -> list[QWidget]:
    out, p = [], w.parentWidget()
    while p is not None and p is not top:
        out.append(p)
        p = p.parentWidget()
    return out


def _texts(widget: QWidget) -> list[QLabel]:
    return [w for w in widget.findChildren(QLabel) if w.isVisibleTo(widget) and w.text().strip()]


def _scroll_to(area, w: QWidget) -> None:
    """Scroll as a user would until the whole of ``w`` is in view (if it fits)."""
    top = w.mapTo(area.widget(), QPoint(0, 0)).y()
    bar, height = area.verticalScrollBar(), area.viewport().height()
    if top < bar.value():
        bar.setValue(top)
    elif top + w.height() > bar.value() + height:
        bar.setValue(top + w.height() - height)
    _settle(2)


def _rect_in(w: QWidget, ref: QWidget) -> QRect:
    return QRect(w.mapTo(ref, QPoint(0, 0)), w.size())


@pytest.fixture
def laptop(make_napari_viewer, isbi, voxel, open_dock):
    """A 1366 x 768 window with two layers, and Enhance and Train open (the issue's setting)."""
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(*LAPTOP)
    viewer.add_image(isbi, name="clean", scale=voxel, units=UM)
    viewer.add_image(isbi.astype(np.float32) + 10, name="noisy", scale=voxel, units=UM)
    enhance, train = open_dock(viewer, "Enhance"), open_dock(viewer, "Train / fine-tune")
    _settle()
    return viewer, enhance, train


def test_two_docks_fit_a_laptop_screen_and_every_control_is_reachable(laptop):
    viewer, enhance, train = laptop
    window = viewer.window._qt_window
    assert (window.width(), window.height()) == LAPTOP
    canvas = viewer.window._qt_viewer.canvas.native
    assert canvas.width() >= 600  # the image keeps most of the width
    enhance.expert.set_open(True)  # the expert settings too
    _settle()
    for w in (enhance, train):
        assert w.height() < 0.6 * LAPTOP[1]  # the docks share the height instead of one taking it
        controls = _controls(w)
        assert len(controls) >= 8
        for c in controls + _texts(w):
            _scroll_to(w.scroll, c)
            rect = _rect_in(c, window)
            assert window.rect().contains(rect), (type(c).__name__, c.toolTip() or getattr(c, "text", lambda: "")(), rect)
            assert _rect_in(w.scroll.viewport(), window).contains(rect), (c.toolTip(), rect, _rect_in(w.scroll.viewport(), window))


@pytest.mark.parametrize("name", WIDGETS)
def test_no_text_or_control_overlaps_another(make_napari_viewer, name, isbi, voxel, open_dock):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(*LAPTOP)
    viewer.add_image(isbi, name="clean", scale=voxel, units=UM)
    w = open_dock(viewer, name)
    if name == "Enhance":
        w.expert.set_open(True)
    if name == "Train / fine-tune":  # switching data source and variant must not leave labels behind
        for variant in ("iso_i", "denoise"):
            w.variant.setCurrentIndex(w.variant.findData(variant))
            w.source.setCurrentIndex(w.source.count() - 1)
            _settle(2)
            w.source.setCurrentIndex(0)
            _settle(2)
    _settle()
    _assert_nothing_overlaps(w)


@pytest.mark.parametrize("name, source", [("Enhance", "file"), ("Train / fine-tune", "files"), ("Train / fine-tune", "clean_file")])
def test_the_rows_of_a_file_on_disk_fit_without_overlaps(make_napari_viewer, name, source, open_dock):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(*LAPTOP)
    w = open_dock(viewer, name)
    w.source.setCurrentIndex(w.source.findData(source))
    _settle()
    assert w.width() < 0.4 * LAPTOP[0]
    _assert_nothing_overlaps(w)


def _assert_nothing_overlaps(w: QWidget) -> None:
    items = _controls(w) + _texts(w)
    body = w.scroll.widget()
    rects = [(item, _rect_in(item, body)) for item in items]
    for i, (a, ra) in enumerate(rects):
        assert ra.width() > 0 and ra.right() <= body.width() + 1, (a, ra, body.width())
        for b, rb in rects[i + 1 :]:
            if a in _ancestors(b, w) or b in _ancestors(a, w):
                continue
            assert not ra.intersects(rb), (_describe(a), _describe(b), ra, rb)


def _describe(w: QWidget) -> str:
    return f"{type(w).__name__}({getattr(w, 'text', lambda: '')() or w.toolTip()!r})"


def test_train_data_rows_follow_the_source_without_leftover_labels(make_napari_viewer, isbi, open_dock):
    viewer = make_napari_viewer()
    viewer.add_image(isbi, name="clean")
    w = open_dock(viewer, "Train / fine-tune")

    def labels():
        return sorted(lbl.text() for lbl in _texts(w) if lbl.text() in ("Input", "Target", "Volume", "Clean", "Dose", "Read noise"))

    assert labels() == ["Input", "Target"]
    w.source.setCurrentIndex(w.source.findData("simulate"))
    assert labels() == ["Clean", "Dose", "Read noise"]
    w.source.setCurrentIndex(w.source.findData("layers"))
    assert labels() == ["Input", "Target"]
    w.variant.setCurrentIndex(w.variant.findData("iso_i"))
    assert labels() == ["Volume"]


@pytest.mark.parametrize("name", WIDGETS)
def test_every_control_says_what_it_does(make_napari_viewer, name, tiny_model, open_dock):
    viewer = make_napari_viewer()
    MODELS.add(tiny_model, "trained")
    w = open_dock(viewer, name)
    if name == "Enhance":
        w.expert.set_open(True)
    missing = [_describe(c) for c in _controls(w) if not c.toolTip().strip()]
    assert not missing, missing
    for box in w.findChildren(QComboBox):  # short entries; the full name in the tooltip
        assert box.minimumSizeHint().width() < 260, (box.currentText(), box.minimumSizeHint().width())


def test_expert_settings_are_folded_away_and_used(make_napari_viewer, isbi, tiny_model, open_dock):
    viewer = make_napari_viewer()
    viewer.add_image(isbi[0], name="em")
    MODELS.add(tiny_model, "trained")
    w = open_dock(viewer, "Enhance")
    expert = (w.sampler, w.tile_size, w.overlap, w.tile_batch, w.seed)
    assert not any(c.isVisibleTo(w) for c in expert)
    w.expert.toggle.click()
    assert all(c.isVisibleTo(w) for c in expert)
    assert "DPM-Solver++" in w.sampler.itemData(w.sampler.findData("dpmpp_2m"), 3)  # tooltips name the samplers in full
    w.tile_batch.setValue(3)
    w.seed.setValue(11)
    w.sampler.setCurrentIndex(w.sampler.findData("ddim"))
    plan = w.plan()
    assert (plan.sample.tile_batch, plan.sample.seed, plan.sample.sampler) == (3, 11, "ddim")


def test_fine_tuning_starts_with_a_time_limit_and_a_few_thousand_steps(make_napari_viewer, tmp_path, untrained_model, open_dock):
    import json

    from napari_emdiffuse._widgets.train import FINE_TUNE_STEPS

    folder = untrained_model("denoise")
    meta = json.loads((folder / "model.json").read_text())
    meta["preset"]["train"]["iterations"] = 1_000_000  # as the bundled models were trained
    (folder / "model.json").write_text(json.dumps(meta))
    MODELS.add(folder, "disk")
    viewer = make_napari_viewer()
    w = open_dock(viewer, "Train / fine-tune")
    w.select_start("fine-tune:")
    assert 0 < w.iterations.value() <= FINE_TUNE_STEPS <= 5000
    assert 0 < w.minutes.value() <= 60


@pytest.mark.with_bundled_models
def test_a_new_train_panel_offers_to_fine_tune_the_bundled_model_under_a_time_limit(make_napari_viewer, open_dock):
    """Pressing Train on a fresh panel must not start hours of training from scratch (the GUI
    walk of 2026-12-07: the -cpu preset's 3000 steps, no limit)."""
    viewer = make_napari_viewer()
    w = open_dock(viewer, "Train / fine-tune")
    for variant in ("denoise", "superres", "iso_i", "iso_a"):
        w.variant.setCurrentIndex(w.variant.findData(variant))
        kind, entry = w.start_from.currentData()
        assert kind == "model" and entry.source == "bundled", w.start_from.currentText()
        assert 0 < w.minutes.value() <= 60


def test_pickers_choose_distinct_input_and_target_and_skip_results(make_napari_viewer, isbi, voxel, tiny_model, open_dock):
    viewer = make_napari_viewer()
    viewer.add_image(isbi, name="ssTEM clean", scale=voxel)
    viewer.add_image(isbi.astype(np.float32) + 5, name="ssTEM noisy", scale=voxel)
    train = open_dock(viewer, "Train / fine-tune")
    assert train.pickers["input"].layer().name == "ssTEM noisy"
    assert train.pickers["target"].layer().name == "ssTEM clean"
    # the other order of opening: names still decide
    viewer2 = make_napari_viewer()
    viewer2.add_image(isbi.astype(np.float32) + 5, name="noisy", scale=voxel)
    viewer2.add_image(isbi, name="clean", scale=voxel)
    train2 = open_dock(viewer2, "Train / fine-tune")
    assert (train2.pickers["input"].layer().name, train2.pickers["target"].layer().name) == ("noisy", "clean")
    # after a run, Enhance (re-)opened offers the user's image, not the result or its uncertainty
    MODELS.add(tiny_model, "trained")
    enhance = open_dock(viewer, "Enhance")
    enhance.steps.setValue(1)
    enhance.run()
    assert len(enhance.result_layers) == 2
    assert enhance.image.layer().name == "ssTEM noisy"
    again = open_dock(viewer, "Compare")  # any picker: a new one guesses the same way
    del again
    from napari_emdiffuse._widgets.pickers import LayerPicker
    from napari_emdiffuse._widgets.qt_helpers import image_type

    assert LayerPicker(viewer, image_type()).layer().name == "ssTEM noisy"


def test_a_picked_layer_that_is_removed_leaves_the_picker_empty(make_napari_viewer, isbi, voxel, open_dock):
    """The next Enhance must not quietly run on another image (the GUI walk of 2026-12-07: the
    picker jumped to the clean reference)."""
    from qtpy.QtWidgets import QApplication

    viewer = make_napari_viewer()
    viewer.add_image(isbi, name="clean", scale=voxel)
    noisy = viewer.add_image(isbi.astype(np.float32) + 5, name="noisy", scale=voxel)
    viewer.add_image(isbi, name="other", scale=voxel)
    w = open_dock(viewer, "Enhance")
    w.image.select(noisy)
    viewer.layers.remove(noisy)
    QApplication.processEvents()
    assert w.image.layer() is None and w.image.currentIndex() == -1
    viewer.add_image(isbi, name="new", scale=voxel)  # layers still come and go: no guess replaces the lost choice
    QApplication.processEvents()
    assert w.image.layer() is None
    w.image.select(viewer.layers["new"])
    assert w.image.layer().name == "new"


def test_a_refusal_goes_when_the_layers_it_was_about_change(make_napari_viewer, isbi, voxel, open_dock):
    """"Choose a layer for 'Input'" must not stay beside pickers that now show layers."""
    from qtpy.QtWidgets import QApplication

    viewer = make_napari_viewer()
    w = open_dock(viewer, "Train / fine-tune")
    w.select_start("preset: tiny")
    w.run()
    assert "Input" in w.controls.status.text()
    viewer.add_image(isbi, name="noisy", scale=voxel)
    QApplication.processEvents()
    assert w.controls.status.text() == ""


def test_identical_input_and_target_are_refused(make_napari_viewer, isbi, notes, open_dock):
    viewer = make_napari_viewer()
    viewer.add_image(isbi, name="noisy")
    w = open_dock(viewer, "Train / fine-tune")
    w.select_start("preset: tiny")
    w.pickers["input"].select(viewer.layers["noisy"])
    w.pickers["target"].select(viewer.layers["noisy"])
    w.run()
    message = notes.messages("error")[-1]
    assert "same image" in message and "noisy" in message
    assert w.last_model is None and not w.controls.runner.running


def test_cancel_adds_only_the_finished_planes(make_napari_viewer, isbi, voxel, tiny_model, open_dock, cancel_part_way):
    viewer = make_napari_viewer()
    stack = isbi[:6, :64, :64]
    viewer.add_image(stack, name="em", scale=voxel, translate=(1.0, 0.5, 0.25), units=UM)
    MODELS.add(tiny_model, "trained")
    w = open_dock(viewer, "Enhance")
    w.scope.setCurrentIndex(w.scope.findData("whole"))
    w.steps.setValue(3)
    w.samples.setValue(2)
    w.device.setCurrentText("cpu")
    cancel_part_way(w, 6)
    w.run()
    enhanced, uncertainty = w.result_layers
    n = enhanced.data.shape[0]
    assert 1 <= n < 6 and enhanced.data.shape[1:] == (64, 64) and uncertainty.data.shape == enhanced.data.shape
    assert "(partial)" in enhanced.name
    assert all(float(np.asarray(enhanced.data[i]).std()) > 0 for i in range(n))  # no black planes
    assert tuple(enhanced.translate) == pytest.approx((1.0, 0.5, 0.25))


def test_cancel_before_any_plane_adds_nothing(make_napari_viewer, isbi, tiny_model, open_dock):
    viewer = make_napari_viewer()
    viewer.add_image(isbi[0], name="em")
    MODELS.add(tiny_model, "trained")
    w = open_dock(viewer, "Enhance")
    forward = w.controls.runner._on_event

    def cancel_at_once(event):
        forward(event)
        if getattr(getattr(event, "kind", None), "value", None) == "progress":
            w.controls.runner.cancel()

    w.controls.runner._on_event = cancel_at_once
    w.run()
    assert w.result_layers == [] and [lyr.name for lyr in viewer.layers] == ["em"]
    assert "nothing was added" in w.controls.status.text()


def test_swipe_takes_a_slice_result_against_its_slice_and_reswipe_updates(make_napari_viewer, isbi, voxel, open_dock):
    viewer = make_napari_viewer()
    stack = viewer.add_image(isbi.astype(np.float32), name="stack", scale=voxel, units=UM)
    result = viewer.add_image(
        isbi[3:4].astype(np.float32) * 2, name="stack denoise", scale=voxel, translate=(3 * voxel[0], 0, 0),
        contrast_limits=(0, 510), units=UM,
    )  # fmt: skip
    w = open_dock(viewer, "Compare")
    w.choose([result, stack])
    w.start_swipe()
    composite = np.asarray(w.swipe_layer.data)
    assert composite.shape == (1, 128, 128)
    # left of the split the first layer in the list (the stack, at the matching slice), right the result
    np.testing.assert_array_equal(composite[0, :, :64], stack.data[3, :, :64])
    np.testing.assert_array_equal(composite[0, :, 64:], result.data[0, :, 64:])
    assert tuple(w.swipe_layer.translate) == pytest.approx(tuple(result.translate))
    first = w.swipe_layer.name
    other = viewer.add_image(isbi.astype(np.float32) + 1, name="other", scale=voxel, contrast_limits=(1, 256), units=UM)
    viewer.layers.move(viewer.layers.index(other), 0)  # first in the list: the left of the split
    w.choose([other, result])
    w.start_swipe()
    assert w.swipe_layer.name != first and "other" in w.swipe_layer.name
    assert tuple(w.swipe_layer.contrast_limits) == pytest.approx((1, 256))  # the left layer's
    assert w.swipe_layer.data.shape == (1, 128, 128)
    w.choose([stack, other])
    w.start_swipe()
    assert w.swipe_layer.data.shape == (6, 128, 128)


def test_side_by_side_panels_are_labelled(make_napari_viewer, isbi, open_dock):
    viewer = make_napari_viewer()
    a = viewer.add_image(isbi, name="raw")
    b = viewer.add_image(isbi + 1, name="enhanced")
    w = open_dock(viewer, "Compare")
    w.choose([a, b])
    w.side_by_side()
    # each cell is captioned with its layer's name: by Compare's own caption (which fits long
    # names to their cells), or napari's where this napari cannot draw Compare's
    from napari_emdiffuse._widgets.captions import KEY

    def captioned(layer) -> bool:
        ours = layer._overlays.get(KEY)
        return (ours is not None and ours.visible and ours.text == layer.name) or layer.name_overlay.visible

    assert captioned(a) and captioned(b)
    w.restore_view()
    assert not captioned(a) and not captioned(b)


def test_uncertainty_is_hidden_and_unsure_regions_are_regions_not_speckle(make_napari_viewer, isbi, voxel, tiny_model, open_dock):
    from scipy.ndimage import label

    viewer = make_napari_viewer()
    viewer.add_image(isbi[0], name="em", scale=voxel[1:])
    MODELS.add(tiny_model, "trained")
    w = open_dock(viewer, "Enhance")
    w.steps.setValue(2)
    w.samples.setValue(3)
    w.run()
    enhanced, uncertainty = w.result_layers
    assert enhanced.visible and not uncertainty.visible
    mask = np.asarray(w.regions_layer.data)
    assert mask.shape == enhanced.data.shape and w.regions_layer.contour > 0
    assert 0.005 < mask.mean() < 0.2  # a few regions, not half the image
    labels, n = label(mask)
    sizes = np.bincount(labels.ravel())[1:]
    assert n >= 1 and sizes.min() >= 64  # regions, no isolated pixels
    # raw thresholding of the same map at the same share makes more pieces, and pieces too small to matter
    std = np.asarray(uncertainty.data)
    raw_labels, n_raw = label(std > np.quantile(std, 1 - mask.mean()))
    assert n_raw > n and np.bincount(raw_labels.ravel())[1:].min() < 64


def test_broken_models_are_refused_at_load_and_models_can_be_removed(make_napari_viewer, tiny_model, tmp_path, open_dock):
    import shutil

    from napari_emdiffuse.errors import ModelFileError

    viewer = make_napari_viewer()
    w = open_dock(viewer, "Enhance")
    for damage in ("missing", "truncated", "wrong"):
        folder = tmp_path / damage
        shutil.copytree(tiny_model, folder)
        weights = folder / "weights.safetensors"
        if damage == "missing":
            weights.unlink()
        elif damage == "truncated":
            weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        else:
            from safetensors.torch import save_file
            import torch

            save_file({"nothing": torch.zeros(3)}, str(weights))
        with pytest.raises(ModelFileError, match=str(folder.name)):
            MODELS.add(folder, "disk")
        assert w.model.count() == 0
    MODELS.add(tiny_model, "disk")
    assert w.model.count() == 1 and w.remove_model.isEnabled()
    w.remove_model.click()
    assert w.model.count() == 0 and tiny_model.is_dir()  # off the list, still on disk


def test_closing_the_dock_cancels_its_job(make_napari_viewer, isbi, voxel, tiny_model, monkeypatch, qtbot, open_dock):
    from napari_emdiffuse._widgets import _common

    monkeypatch.setattr(_common, "SYNCHRONOUS", False)
    viewer = make_napari_viewer()
    viewer.add_image(isbi, name="em", scale=voxel)
    MODELS.add(tiny_model, "trained")
    w = open_dock(viewer, "Enhance")
    w.scope.setCurrentIndex(w.scope.findData("whole"))
    w.steps.setValue(500)
    w.device.setCurrentText("cpu")
    w.controls.run_button.click()
    qtbot.waitUntil(lambda: w.controls.progress.value() >= 1, timeout=30_000)
    viewer.window.remove_dock_widget(w)
    qtbot.waitUntil(lambda: not w.controls.runner.running, timeout=20_000)
    _settle()
    assert [lyr.name for lyr in viewer.layers] == ["em"]  # no layers from a closed panel


PLAIN = re.compile(r"Value error|invalid preset|Roi\(|Error\b|\(--|\s--[a-z]|<[a-z_.]+ object")


def test_messages_are_in_plain_words(make_napari_viewer, isbi, voxel, tiny_model, untrained_model, notes, open_dock):
    viewer = make_napari_viewer()
    viewer.add_image(isbi, name="em", scale=voxel, units=UM)
    MODELS.add(tiny_model, "trained")
    w = open_dock(viewer, "Enhance")
    w.tile_size.setValue(64)
    w.overlap.setValue(48)
    w.run()  # a bad pair of tile settings
    assert notes.messages("error")[-1] == "Overlap: 48 must be less than half the tile size (64)"
    # an empty stack
    viewer.add_image(np.zeros((0, 32, 32), np.float32), name="empty", contrast_limits=(0, 1))
    w.image.select(viewer.layers["empty"])
    w.run()
    assert "'empty' is empty" in notes.messages("error")[-1]
    # a rectangle outside the image
    w.image.select(viewer.layers["em"])
    w.tile_size.setValue(128)
    w.overlap.setValue(16)
    viewer.add_shapes([[[10, 10], [10, 12], [12, 12], [12, 10]]], shape_type="rectangle", name="far away")
    w.scope.setCurrentIndex(w.scope.findData("rectangle"))
    w.shapes.select(viewer.layers["far away"])
    w.run()
    assert "lies outside the image" in notes.messages("error")[-1]
    # an unexpected failure: no exception class, no repr
    from napari_emdiffuse._widgets._common import user_message

    assert "IndexError" not in user_message(IndexError("index 0 is out of bounds for axis 0 with size 0"))
    # vEMDiffuse-i on a volume that is already isotropic, and the factor warning has no CLI flag
    iso = viewer.add_image(isbi[:3, :64, :64], name="isotropic", scale=(0.004,) * 3, units=UM)
    MODELS.add(untrained_model("iso_i"), "disk")
    w.variant.setCurrentIndex(w.variant.findData("iso_i"))
    w.image.select(iso)
    w.scope.setCurrentIndex(w.scope.findData("whole"))
    w.steps.setValue(1)
    w.samples.setValue(2)
    w.run()
    assert any("already isotropic" in m for m in notes.messages("warning"))
    shown = [str(n.message) for n in notes]
    bad = [m for m in shown if PLAIN.search(m)]
    assert not bad, bad


@pytest.mark.parametrize(
    ("core", "shown"),
    [
        ("o.zarr: add --resume to continue it, or --overwrite to start again", "o.zarr: tick 'Resume' to continue it, or tick 'Overwrite' to start again"),
        ("x; --overwrite also discards k (--resume --overwrite continues it instead)", "x; 'Overwrite' also discards k (ticking 'Resume' and 'Overwrite' continues it instead)"),
        ("p: --resume continues one store; or start again with --overwrite instead of --resume", "p: 'Resume' continues one store; or start again with 'Overwrite' instead of 'Resume'"),
    ],
)
def test_the_commands_flags_read_as_the_widgets_tick_boxes(core, shown):
    """Prediction's refusals name its flags; in a widget they are tick boxes. Only "add --flag"
    and "or --flag" became "tick '...'": a flag named in a sentence ("--overwrite also discards",
    "--resume --overwrite continues it") stayed as the command line says it."""
    from napari_emdiffuse._widgets._common import plain_words

    assert plain_words(core) == shown and not PLAIN.search(plain_words(core))


def test_a_reopened_result_is_not_guessed_as_the_next_input(make_napari_viewer, isbi, voxel, tiny_model, tmp_path):
    """Opening a saved result made the Enhance picker guess its upper bound as the next input
    (the GUI walk of 2026-12-07): a reopened prediction store's layers count as results."""
    from qtpy.QtWidgets import QApplication

    from napari_emdiffuse import _reader
    from napari_emdiffuse._widgets.pickers import LayerPicker
    from napari_emdiffuse._widgets.qt_helpers import image_type
    from napari_emdiffuse.jobs.predict import run_predict
    from napari_emdiffuse.model_file import Model

    run_predict(Model.load(tiny_model), isbi[:2, :32, :32], device="cpu", output=tmp_path / "lay.zarr", keep_samples=True)
    viewer = make_napari_viewer()
    viewer.add_image(isbi[:2, :32, :32], name="em", scale=voxel)
    for data, kwargs, _ in _reader.read_paths(str(tmp_path / "lay.zarr")):
        viewer.add_image(data, **kwargs)
    QApplication.processEvents()
    roles = {layer.name: layer.metadata.get("emdiffuse", {}).get("role") for layer in viewer.layers}
    assert roles["lay: estimate"] == "enhanced" and roles["lay: samples"] == "samples"
    assert [name for name, role in roles.items() if role == "uncertainty"] == [next(n for n in roles if n.startswith("lay: error "))]
    assert LayerPicker(viewer, image_type()).layer().name == "em"


def test_a_block_that_ran_out_of_gpu_memory_says_how_to_finish_what_was_kept():
    """Review: Enhance showed a failed block's message without the out-of-memory advice, and the
    advice it gave elsewhere (a smaller tile) would start the result afresh: resume needs the
    same settings, on a device with more memory."""
    import torch

    from napari_emdiffuse._widgets._common import user_message
    from napari_emdiffuse.jobs.predict_output import block_failure

    try:
        raise block_failure(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "block 3 of 4", Path("/nowhere/o.zarr"), 4)
    except Exception as err:  # noqa: BLE001 - as the job raises it: from its cause
        failed = err
    failed.__cause__ = torch.OutOfMemoryError("CUDA out of memory")
    text = user_message(failed, 512)
    assert text.startswith("Block 3 of 4 failed:") and "tick 'Resume'" in text
    assert "The GPU ran out of memory: resume on the CPU (slower) or on a GPU with more memory" in text
    assert "starts the result afresh" in user_message(failed) and "ran out" not in user_message(block_failure(ValueError("x"), "block 1 of 2", Path("/nowhere/o.zarr"), 2))
