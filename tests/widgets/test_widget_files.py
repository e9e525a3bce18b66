"""Enhance and Train from a file or folder on disk (issue 15, part 4): read lazily as the command
line reads it, results written to OME-Zarr beside the input and opened lazily, placed and
contrasted as the napari reader places them, and bad paths refused in one plain line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from napari_emdiffuse._reader import read_paths
from napari_emdiffuse._widgets.registry import MODELS
from napari_emdiffuse.data.io import write_tiff

ORIGIN = (1.0, 0.5, 0.25)  # µm: where the stack lies, as its ImageJ TIFF says


@pytest.fixture
def em_tiff(isbi, voxel, tmp_path):
    """Three real ssTEM slices of 64 x 64 px as an ImageJ TIFF with voxel size and origin."""
    return write_tiff(tmp_path / "em.tif", isbi[:3, :64, :64], voxel, origin=ORIGIN)


def _enhance(viewer, open_dock, path, model):
    MODELS.add(model, "trained")
    w = open_dock(viewer, "Enhance")
    w.source.setCurrentIndex(w.source.findData("file"))
    w.input_path.set_path(path)
    w.steps.setValue(1)
    w.samples.setValue(2)
    w.device.setCurrentText("cpu")
    return w


def _reader_kwargs(path, name):
    return next(kw for _, kw, _ in read_paths(path) if kw["name"] == name)


def test_enhance_a_tiff_file_into_zarr_beside_it_opened_lazily_where_the_reader_puts_it(
    make_napari_viewer, em_tiff, voxel, tiny_model, open_dock
):
    viewer = make_napari_viewer()
    w = _enhance(viewer, open_dock, em_tiff, tiny_model)
    out = em_tiff.with_name("em_enhanced.zarr")
    assert w.zarr_path.text() == str(out)  # the default: beside the input, editable
    assert not w.scope.isVisible() and not w.image.isVisibleTo(w)
    w.run()
    assert len(w.result_layers) == 2, w.controls.status.text()
    enhanced, uncertainty = w.result_layers
    assert [lyr.name for lyr in viewer.layers][::2] == ["em: estimate", "em: unsure regions"]
    assert zarr.open_group(str(out), mode="r").attrs["complete"] is True
    source = _reader_kwargs(em_tiff, "em")
    stored = _reader_kwargs(out, "em_enhanced: estimate")
    for layer in (enhanced, uncertainty):
        assert hasattr(layer.data, "dask") and layer.data.shape == (3, 64, 64)  # lazy, never loaded
        assert tuple(layer.scale) == pytest.approx(source["scale"]) and source["scale"] == pytest.approx(voxel)
        assert tuple(layer.translate) == pytest.approx(source["translate"]) and source["translate"] == pytest.approx(ORIGIN)
        assert tuple(layer.scale) == pytest.approx(stored["scale"])
        assert tuple(layer.translate) == pytest.approx(stored["translate"])
        assert [str(u) for u in layer.units] == ["micrometer"] * 3
    assert tuple(enhanced.contrast_limits) == pytest.approx(stored["contrast_limits"])
    assert w.controls.status.text().startswith("Done") and str(out) in w.controls.status.text()


def test_enhance_a_folder_of_slices(make_napari_viewer, isbi, tiny_model, tmp_path, open_dock, monkeypatch):
    from qtpy.QtWidgets import QFileDialog

    folder = tmp_path / "slices"
    folder.mkdir()
    for z in range(2):
        write_tiff(folder / f"s{z}.tif", isbi[z, :48, :56], (0.004, 0.004))
    viewer = make_napari_viewer()
    w = _enhance(viewer, open_dock, "", tiny_model)
    w.input_path.edit.setText(str(tmp_path / "typing"))  # nothing is opened while a path is typed
    assert w.zarr_path.text() == "" and w.output_info.text() == ""
    w.input_path.edit.editingFinished.emit()
    assert w.zarr_path.text() == str(tmp_path / "typing_enhanced.zarr") and "no such file" in w.output_info.text()
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(folder))
    w.input_path.folder_button.click()  # Browse: a folder
    assert w.input_path.path() == folder
    assert w.zarr_path.text() == str(tmp_path / "slices_enhanced.zarr")  # the default follows the input
    assert "2 × 48 × 56 px" in w.output_info.text()
    w.run()
    enhanced = w.result_layers[0]
    assert hasattr(enhanced.data, "dask") and enhanced.data.shape == (2, 48, 56)
    assert tuple(enhanced.scale) == pytest.approx((1.0, 0.004, 0.004))  # slices know no z spacing


def test_an_existing_result_is_refused_without_overwrite(make_napari_viewer, em_tiff, tiny_model, notes, open_dock):
    viewer = make_napari_viewer()
    w = _enhance(viewer, open_dock, em_tiff, tiny_model)
    w.run()
    out = em_tiff.with_name("em_enhanced.zarr")
    stamp = (out / "zarr.json").stat().st_mtime_ns
    n = len(viewer.layers)
    w.run()
    assert len(viewer.layers) == n and (out / "zarr.json").stat().st_mtime_ns == stamp  # refused, kept
    message = w.controls.status.text()
    assert "already exists" in message and "tick 'Overwrite'" in message and "--" not in message
    first = list(w.result_layers)
    w.overwrite.setChecked(True)
    w.run()
    # the replaced store's layers go with it; the new result's come (not "[1]" copies beside stale ones)
    assert len(viewer.layers) == n and w.controls.status.text().startswith("Done")
    assert not any(layer in viewer.layers for layer in first) and all(layer in viewer.layers for layer in w.result_layers)


def test_a_plain_rerun_names_the_killed_runs_store_that_overwrite_would_discard(make_napari_viewer, em_tiff, tiny_model, open_dock, cancel_part_way):
    """Beside a stopped run's em_enhanced.partial.zarr, a killed run left its store. Enhance's own
    check said only "tick 'Resume' to continue it, or 'Overwrite' to start again", not that
    Overwrite also discards the killed run's store; it now refuses in prediction's words, each
    store named, every flag a tick box. Nothing is touched."""
    import shutil
    import subprocess
    import sys

    viewer = make_napari_viewer()
    w = _enhance(viewer, open_dock, em_tiff, tiny_model)
    forward = cancel_part_way(w, 3)
    w.run()
    partial = em_tiff.with_name("em_enhanced.partial.zarr")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    killed = em_tiff.with_name(f".em_enhanced.zarr.tmp-{dead.pid}-abc")
    shutil.copytree(partial, killed)  # as a run killed after its first block leaves it
    stamps = {p: sorted((q.name, q.stat().st_mtime_ns) for q in p.rglob("*")) for p in (partial, killed)}
    w.controls.runner._on_event = forward
    w.run()
    message = w.controls.status.text()
    assert message.startswith(f"{partial}: a stopped run's unfinished result is here (1 finished block), and the store a killed run left beside it, {killed.name} (1 finished block)")
    assert "tick 'Resume'" in message and "tick 'Overwrite' to start again, which discards it" in message and "--" not in message
    assert {p: sorted((q.name, q.stat().st_mtime_ns) for q in p.rglob("*")) for p in (partial, killed)} == stamps


def test_a_jobs_warnings_name_the_tick_boxes_not_the_commands_flags(make_napari_viewer, em_tiff, tiny_model, open_dock, cancel_part_way, notes):
    """Two killed runs left their stores; Resume continues the newest and warns that the other is
    kept. Job warnings reached the widget as the command line says them ('--resume continues
    this store'); errors were already put in the widget's words. Now both are."""
    import os
    import shutil
    import subprocess
    import sys
    import time

    viewer = make_napari_viewer()
    w = _enhance(viewer, open_dock, em_tiff, tiny_model)
    forward = cancel_part_way(w, 3)
    w.run()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    older, newer = (em_tiff.with_name(f".em_enhanced.zarr.tmp-{dead.pid}-{k}") for k in "ab")
    shutil.copytree(em_tiff.with_name("em_enhanced.partial.zarr"), older)
    em_tiff.with_name("em_enhanced.partial.zarr").rename(newer)
    os.utime(newer, (time.time() + 60,) * 2)
    w.controls.runner._on_event = forward
    w.resume.setChecked(True)
    w.run()
    [said] = [m for m in notes.messages("warning") if "continues this store" in m]
    assert said.startswith(f"{newer}: 'Resume' continues this store, the newest of 2") and "--" not in said.replace(newer.name, "").replace(older.name, "")
    assert older.is_dir()  # kept, as said


def test_a_cancelled_run_keeps_its_finished_blocks_and_resumes(make_napari_viewer, em_tiff, tiny_model, open_dock, cancel_part_way):
    viewer = make_napari_viewer()
    w = _enhance(viewer, open_dock, em_tiff, tiny_model)
    forward = cancel_part_way(w, 3)
    w.run()
    partial = em_tiff.with_name("em_enhanced.partial.zarr")
    attrs = zarr.open_group(str(partial), mode="r").attrs
    assert attrs["complete"] is False and attrs["finished"][0][0] == 0
    enhanced = w.result_layers[0]
    assert "(partial)" in enhanced.name and hasattr(enhanced.data, "dask") and 1 <= enhanced.data.shape[0] < 3
    assert tuple(enhanced.translate) == pytest.approx(ORIGIN)
    assert "em_enhanced.partial.zarr" in w.controls.status.text() and "Resume" in w.controls.status.text()
    partial_layers = list(w.result_layers)
    w.controls.runner._on_event = forward
    w.run()  # neither Resume nor Overwrite: the partial result is kept, and the user told how to go on
    assert "tick 'Resume'" in w.controls.status.text() and partial.is_dir()
    w.resume.setChecked(True)
    w.steps.setValue(2)  # other settings than the run it would continue: refused, in the widget's words
    w.run()
    assert "cannot resume" in w.controls.status.text() and "'Overwrite' instead of 'Resume' to start again" in w.controls.status.text() and partial.is_dir()
    w.steps.setValue(1)
    w.run()
    assert not partial.exists() and zarr.open_group(str(em_tiff.with_name("em_enhanced.zarr")), mode="r").attrs["complete"] is True
    layers = list(w.result_layers)
    w.run()  # Resume still ticked, the result complete: said so, not "tick 'Overwrite' to replace it"
    assert w.controls.status.text().endswith("this result is complete, nothing is left to resume ('Overwrite' instead of 'Resume' computes it again)")
    assert w.result_layers == layers
    assert w.result_layers[0].data.shape == (3, 64, 64) and "(partial)" not in w.result_layers[0].name
    # the cancelled run's layers read the partial store this run moved: they are gone, not zeros
    assert not any(layer in viewer.layers for layer in partial_layers)


def test_a_failed_block_shows_the_finished_part_as_a_cancel_does_and_keeps_the_error(
    make_napari_viewer, em_tiff, tiny_model, open_dock, monkeypatch
):
    """Review: after a block that ran out of GPU memory Enhance showed only the error, though the
    finished blocks were kept in OUT.partial.zarr; they are now added as '(partial)' layers, as
    after a cancel, beside the error, and go when Resume finishes the result."""
    import torch

    from napari_emdiffuse.jobs import blocks

    original, ran = blocks.BlockRunner.run, []

    def fail_second(self, image, block, *args, **kwargs):  # as tests/jobs/test_failed_block.py forces a failure
        if ran:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        ran.append(block.index)
        return original(self, image, block, *args, **kwargs)

    viewer = make_napari_viewer()
    w = _enhance(viewer, open_dock, em_tiff, tiny_model)
    with monkeypatch.context() as m:
        m.setattr(blocks.BlockRunner, "run", fail_second)
        w.run()
    partial = em_tiff.with_name("em_enhanced.partial.zarr")
    message = w.controls.status.text()
    assert f"Block 2 of 3 (z 1:2 of 3) failed: 1 of 3 blocks are kept in {partial}; run it again and tick 'Resume'" in message
    assert "The GPU ran out of memory" in message and message.endswith("The finished part was added as '(partial)' layers.")
    enhanced, uncertainty = w.result_layers
    assert [lyr.name for lyr in viewer.layers][::2] == ["em (partial): estimate", "em (partial): unsure regions"]
    assert uncertainty.name.startswith("em (partial): ") and uncertainty.name.endswith("[grey values]")
    assert hasattr(enhanced.data, "dask") and enhanced.data.shape == uncertainty.data.shape == (1, 64, 64)
    assert float(np.asarray(enhanced.data).std()) > 0 and tuple(enhanced.translate) == pytest.approx(ORIGIN)
    kept = list(viewer.layers)
    w.resume.setChecked(True)
    w.run()  # the finished part is continued; its layers make way for the whole result's
    assert not partial.exists() and w.result_layers[0].data.shape == (3, 64, 64), w.controls.status.text()
    assert not any(layer in viewer.layers for layer in kept) and len(viewer.layers) == 3


def test_a_kept_part_that_cannot_be_opened_leaves_the_block_error_said(make_napari_viewer, em_tiff, tiny_model, open_dock, monkeypatch, tmp_path):
    """The disk error that failed a block may make its kept store unreadable too: the status
    keeps the block's error and says the finished part could not be opened, in one line."""
    from napari_emdiffuse._widgets import enhance
    from napari_emdiffuse.errors import BlockError

    def unreadable(store):
        raise OSError(5, "Input/output error", str(store))

    monkeypatch.setattr(enhance, "kept_result", unreadable)
    w = _enhance(make_napari_viewer(), open_dock, em_tiff, tiny_model)
    w._plan = w.plan()
    w.controls.status.setText("Block 2 of 3 failed: 1 of 3 blocks are kept in o.partial.zarr.")
    w._on_done(BlockError("block 2 of 3 failed", tmp_path / "o.partial.zarr"))
    assert w.controls.status.text() == (
        f"Block 2 of 3 failed: 1 of 3 blocks are kept in o.partial.zarr. The finished part could not be opened: "
        f"[Errno 5] Input/output error: '{tmp_path / 'o.partial.zarr'}'"
    )
    assert w.result_layers == [] and w._plan is None


def _bad_paths(tmp_path, isbi):
    broken = tmp_path / "broken.tif"
    broken.write_text("not an image")
    (tmp_path / "notes.txt").write_text("a text file")
    flat = write_tiff(tmp_path / "flat.tif", isbi[0, :32, :32], (0.004, 0.004))
    return [
        ("", "denoise", "choose the file or folder"),
        (str(tmp_path / "missing.tif"), "denoise", "no such file or folder"),
        (str(broken), "denoise", "not a valid TIFF"),
        (str(tmp_path / "notes.txt"), "denoise", "unsupported file type '.txt'"),
        (str(flat), "iso_i", f"{flat} is a single 2D image (32, 32), but vEMDiffuse-i"),
    ]


def test_bad_paths_give_one_plain_line(make_napari_viewer, isbi, tiny_model, untrained_model, tmp_path, notes, open_dock):
    viewer = make_napari_viewer()
    MODELS.add(untrained_model("iso_i"), "disk")
    w = _enhance(viewer, open_dock, "", tiny_model)
    for text, variant, expected in _bad_paths(tmp_path, isbi):
        w.variant.setCurrentIndex(w.variant.findData(variant))
        w.input_path.set_path(text)
        w.run()
        message = w.controls.status.text()
        assert expected.lower() in message.lower(), (text, message)
        assert "\n" not in message and "Traceback" not in message and "--" not in message, message
        assert w.result_layers == [] and len(viewer.layers) == 0
    assert len(notes.messages("error")) == 5


def test_a_grey_and_alpha_file_is_enhanced_as_its_grey_channel_as_the_reader_opens_it(make_napari_viewer, isbi, tiny_model, tmp_path, notes, open_dock):
    """The file source refused a grey+alpha TIFF that the napari reader opens as its grey
    channel; it now enhances the grey channel too, and says that the alpha was dropped. A CMYK
    file, which has no one grey channel, is refused as before."""
    import tifffile

    grey = isbi[0, :64, :64]
    path = tmp_path / "la.tif"
    tifffile.imwrite(path, np.stack([grey, np.full_like(grey, 255)], axis=-1), photometric="minisblack", extrasamples=["unassalpha"])
    [(opened, _, _)] = read_paths(str(path))
    viewer = make_napari_viewer()
    w = _enhance(viewer, open_dock, path, tiny_model)
    w.run()
    assert len(w.result_layers) == 2, w.controls.status.text()
    assert w.result_layers[0].data.shape == opened.shape == (64, 64)
    assert [m for m in notes.messages("info") if "alpha" in m] == [
        f"{path} is grey with an alpha channel: its grey values are enhanced, its alpha (where the picture is opaque) is left out"
    ]
    cmyk = tmp_path / "print.tif"
    tifffile.imwrite(cmyk, np.stack([grey] * 4, axis=-1), photometric="separated")
    w.input_path.set_path(cmyk)
    w.zarr_path.setText(str(tmp_path / "print_enhanced.zarr"))
    w.run()
    assert w.controls.status.text() == f"Input {cmyk} has 4 samples per pixel (CMYK; shape (64, 64, 4)), not one grey value: convert it to greyscale first"
    assert not (tmp_path / "print_enhanced.zarr").exists()


def test_train_from_a_clean_file_with_simulated_noise(make_napari_viewer, em_tiff, open_dock):
    viewer = make_napari_viewer()
    w = open_dock(viewer, "Train / fine-tune")
    w.source.setCurrentIndex(w.source.findData("clean_file"))
    assert w.clean_path.isVisibleTo(w) and not w.clean.isVisibleTo(w)
    w.clean_path.set_path(em_tiff)
    w.select_start("preset: tiny")
    w.iterations.setValue(2)
    w.device.setCurrentText("cpu")
    w.run()
    assert w.last_model is not None, w.controls.status.text()
    assert "Model" in w.controls.status.text() and len(MODELS.entries("denoise")) == 1
    meta = json.loads((w.last_model / "model.json").read_text())
    assert str(em_tiff) in meta["training"]["data"]  # the model says what it learnt from
    assert meta["training"]["pixel_size_um"] == pytest.approx(0.004)  # and at which pixel size


def test_train_from_paired_files_and_bad_paths(make_napari_viewer, isbi, voxel, tmp_path, notes, open_dock):
    noisy = write_tiff(tmp_path / "noisy.tif", (isbi[:3, :64, :64] * 0.8 + 20).astype(np.uint8), voxel)
    clean = write_tiff(tmp_path / "clean.tif", isbi[:3, :64, :64], voxel)
    viewer = make_napari_viewer()
    w = open_dock(viewer, "Train / fine-tune")
    w.source.setCurrentIndex(w.source.findData("files"))
    w.select_start("preset: tiny")
    w.iterations.setValue(2)
    w.device.setCurrentText("cpu")
    w.paths["input"].set_path(tmp_path / "missing.tif")
    w.paths["target"].set_path(clean)
    w.run()
    assert "missing.tif: no such file or folder" in w.controls.status.text() and w.last_model is None
    w.paths["input"].set_path(clean)
    w.run()
    assert "same" in w.controls.status.text() and w.last_model is None
    w.paths["input"].set_path(noisy)
    w.run()
    assert w.last_model is not None, w.controls.status.text()
    w.source.setCurrentIndex(w.source.findData("prepared"))
    w.run()
    assert "Choose the prepared training set" in w.controls.status.text()
    w.set_path.set_path(tmp_path)
    w.run()
    assert "not a prepared training set" in w.controls.status.text() and "\n" not in w.controls.status.text()


def test_closing_the_dock_stops_a_run_from_a_file_and_adds_nothing(make_napari_viewer, em_tiff, tiny_model, monkeypatch, qtbot, open_dock):
    from napari_emdiffuse._widgets import _common

    monkeypatch.setattr(_common, "SYNCHRONOUS", False)  # a real worker thread, as in napari
    viewer = make_napari_viewer()
    w = _enhance(viewer, open_dock, em_tiff, tiny_model)
    w.steps.setValue(500)
    w.controls.run_button.click()
    qtbot.waitUntil(lambda: w.controls.progress.value() >= 1, timeout=30_000)
    viewer.window.remove_dock_widget(w)
    qtbot.waitUntil(lambda: not w.controls.runner.running, timeout=30_000)
    assert len(viewer.layers) == 0  # no layers from a closed panel
    assert not em_tiff.with_name("em_enhanced.zarr").exists()  # never a complete-looking result
    partial = em_tiff.with_name("em_enhanced.partial.zarr")
    assert not partial.exists() or zarr.open_group(str(partial), mode="r").attrs["complete"] is False
