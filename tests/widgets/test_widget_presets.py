"""Presets widget: load, edit, validate, save back; an edited preset is offered for training."""

from __future__ import annotations

import json

import pytest

from napari_emdiffuse.config import load_preset


def test_edit_save_reload_and_use_for_training(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-emdiffuse", "Presets")
    w.load("tiny")
    w.form.editors["train.iterations"].set(123)
    w.form.editors["sample.steps"].set(7)
    w.form.editors["name"].set("my-tiny")
    assert json.loads(w.json_view.toPlainText())["train"]["iterations"] == 123
    path = w.save(tmp_path / "mine.json")
    back = load_preset(path)
    assert (back.name, back.train.iterations, back.sample.steps) == ("my-tiny", 123, 7)
    assert back.network == load_preset("tiny").network  # what was not edited is kept
    w.load(path)  # open the file again: the form shows it
    assert w.form.editors["train.iterations"].get() == 123
    w.use_button.click()
    _, train = viewer.window.add_plugin_dock_widget("napari-emdiffuse", "Train / fine-tune")
    train.select_start("preset: my-tiny (edited)")
    assert train.iterations.value() == 123


def test_an_invalid_edit_is_named_and_not_saved(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-emdiffuse", "Presets")
    w.load("tiny")
    w.form.editors["sample.tile_size"].set(64)
    w.form.editors["sample.overlap"].set(40)  # more than half the tile
    assert "overlap" in w.status.text()
    with pytest.raises(ValueError, match="overlap"):
        w.save(tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()


def test_a_bad_value_is_named_by_its_key_in_one_sentence(make_napari_viewer, tmp_path, notes):
    """The GUI walk read "Train.patch_size: patch_size must ..." (a capitalised key, after a
    stripped "preset: invalid preset:"): the panel names the key as the JSON spells it."""
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-emdiffuse", "Presets")
    w.load("tiny")
    w.form.editors["train.patch_size"].set(50)
    assert w.status.text() == "train.patch_size: 50 is not a multiple of 16"
    w.form.editors["train.patch_size"].set(64)
    w.form.editors["sample.tile_size"].set(64)
    w.form.editors["sample.overlap"].set(40)
    assert w.status.text() == "sample.overlap: 40 must be less than half the tile size (64)"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"base": "tiny", "train": {"patch_size": 50}}))
    w.load(bad)
    assert w.status.text() == notes.messages("error")[-1] == f"{bad}: train.patch_size: 50 is not a multiple of 16"
