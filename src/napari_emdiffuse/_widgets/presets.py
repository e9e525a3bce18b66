"""Presets widget: open a JSON preset, see and edit its main settings, save it back, and hand it
to the Train widget.

The form shows the settings a user changes most (network width, patch and batch size, learning
rate, iterations, sampler, steps, samples, tiles); the full preset is shown as JSON below it.
Every edit is validated by the same pydantic model as the command line, so a bad value is
named with what is allowed before anything runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtGui import QFontDatabase
from qtpy.QtWidgets import QComboBox, QFileDialog, QFormLayout, QLabel, QPlainTextEdit, QPushButton, QVBoxLayout, QWidget

from . import _common
from .options_form import OptionsForm
from .qt_helpers import DockWidget, combo, narrow, row, row_layout
from .registry import PRESETS

MAIN_KEYS = (
    "name",
    "description",
    "variant_options",
    "network.base_channels",
    "train.patch_size",
    "train.batch_size",
    "train.lr",
    "train.iterations",
    "train.minutes",
    "sample.sampler",
    "sample.steps",
    "sample.samples",
    "sample.tile_size",
    "sample.overlap",
)
LABELS = {
    "variant_options": "variant options (JSON)",
    "network.base_channels": "network width",
    "train.patch_size": "patch size (px)",
    "train.batch_size": "batch size",
    "train.lr": "learning rate",
    "train.iterations": "iterations",
    "train.minutes": "time limit (min)",
    "sample.sampler": "sampler",
    "sample.steps": "sampler steps",
    "sample.samples": "samples",
    "sample.tile_size": "tile size (px)",
    "sample.overlap": "tile overlap (px)",
}
#: Labels that messages give the preset keys here: none, since this panel shows the JSON, and a
#: key as the file spells it ("train.patch_size") is what the user looks for there.
MESSAGE_NAMES: dict[str, str] = {}


class PresetsWidget(DockWidget):
    """Load, edit, validate and save JSON presets."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        from ..config import Preset, builtin_presets
        from ..variants import VARIANTS

        self.viewer = napari_viewer
        self.base: Any = None
        self.preset_choice = narrow(QComboBox(), "A built-in preset to start from")
        for name in sorted(builtin_presets()):
            self.preset_choice.addItem(name, name)
        self.open_button = QPushButton("Open JSON…")
        self.open_button.setToolTip("Open a preset file (JSON)")
        self.variant = combo(
            ((v.title.split(" (")[0], name, f"{v.title}: {v.description}") for name, v in VARIANTS.items()),
            "The variant this preset trains",
        )
        self.form = OptionsForm(Preset, MAIN_KEYS, labels=LABELS)
        self.json_view = QPlainTextEdit()
        self.json_view.setReadOnly(True)
        self.json_view.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.json_view.setMinimumHeight(160)
        self.json_view.setToolTip("The whole preset as it would be saved")
        self.save_button = QPushButton("Save JSON…")
        self.save_button.setToolTip("Write the edited preset to a JSON file (usable with emdiffuse train --config)")
        self.use_button = QPushButton("Use for training")
        self.use_button.setToolTip("Offer this preset in the Train / fine-tune widget")
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Preset", row(self.preset_choice, self.open_button))
        form.addRow("Variant", self.variant)
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.addLayout(form)
        layout.addWidget(self.form)
        layout.addWidget(QLabel("Full preset:"))
        layout.addWidget(self.json_view)
        layout.addLayout(row_layout(self.save_button, self.use_button))
        layout.addWidget(self.status)
        self.set_body(body)

        self.preset_choice.currentIndexChanged.connect(lambda *_: self.load(self.preset_choice.currentData()))
        self.open_button.clicked.connect(self._open_dialog)
        self.form.changed.connect(self._refresh_json)
        self.variant.currentIndexChanged.connect(self._refresh_json)
        self.save_button.clicked.connect(self._save_dialog)
        self.use_button.clicked.connect(self._use)
        default = self.preset_choice.findData("emdiffuse-n-cpu")
        self.preset_choice.setCurrentIndex(max(default, 0))
        self.load(self.preset_choice.currentData())

    def load(self, name_or_path: str | Path) -> None:
        """Show a built-in preset (by name) or a JSON file in the form."""
        from ..config import load_preset
        from ..variants import resolve

        try:
            self.base = load_preset(name_or_path)
            resolve(self.base, str(name_or_path))
        except Exception as err:  # noqa: BLE001 - shown to the user
            self.status.setText(_common.notify_error(err, names=MESSAGE_NAMES))
            return
        data = self.base.model_dump(mode="json")
        self.form.blockSignals(True)
        self.variant.blockSignals(True)
        self.form.set_from(data)
        self.variant.setCurrentIndex(max(self.variant.findData(self.base.variant), 0))
        self.variant.blockSignals(False)
        self.form.blockSignals(False)
        self._refresh_json()

    def preset(self) -> Any:
        """The edited preset, validated (raises ConfigError naming the bad key)."""
        from ..errors import ConfigError
        from ..variants import resolve

        if self.base is None:
            raise ConfigError("no preset loaded")
        values = self.form.values()
        values["variant"] = self.variant.currentData()
        if values["variant_options"] is None:
            values["variant_options"] = {}
        preset = self.base.with_overrides(values)
        resolve(preset)
        return preset

    def _refresh_json(self, *_: Any) -> None:
        try:
            self.json_view.setPlainText(self.preset().to_json())
            self.status.setText("")
        except Exception as err:  # noqa: BLE001 - the message says which key is wrong
            self.status.setText(_common.user_message(err, names=MESSAGE_NAMES))

    def save(self, path: str | Path) -> Path:
        """Write the edited preset as JSON (refusing an invalid one)."""
        from ..data.safe_output import write_bytes

        path = Path(path)
        if path.suffix.lower() != ".json":
            path = path.with_suffix(".json")
        write_bytes(path, (self.preset().to_json() + "\n").encode())
        self.status.setText(f"Saved to {path}")
        return path

    def _use(self) -> None:
        try:
            preset = self.preset()
        except Exception as err:  # noqa: BLE001 - shown to the user
            self.status.setText(_common.notify_error(err, names=MESSAGE_NAMES))
            return
        PRESETS.add(preset)
        self.status.setText(f"'{preset.name}' is offered in Train / fine-tune.")

    def _open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a preset", "", "JSON (*.json)")
        if path:
            self.load(path)

    def _save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the preset", "", "JSON (*.json)")
        if path:
            try:
                self.save(path)
            except Exception as err:  # noqa: BLE001 - shown to the user
                self.status.setText(_common.notify_error(err, names=MESSAGE_NAMES))
