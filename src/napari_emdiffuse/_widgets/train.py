"""Train / fine-tune widget: train a model on layers, optionally only inside a drawn rectangle.

It drives :func:`napari_emdiffuse.jobs.train.train` in a worker thread, plots the loss as it
falls, shows a validation patch (input | prediction | target) as a layer, and registers the
model as soon as it is saved, so the Enhance widget offers it at once. The training data follow
the variant: registered input and target layers (paired variants), one volume (vEM variants),
or clean images with simulated degradation; as layers, or as files or folders on disk, read
as ``emdiffuse train`` reads them (:func:`..jobs.inputs.training_arrays`), also a set made by
``emdiffuse prepare``.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..data.degrade import DEFAULT_DOSE, DEFAULT_READ_NOISE
from ..data.image import known_pixel_um
from ..errors import InputError
from ..jobs.events import CheckpointSaved, Event, Loss, Preview, TrainResult, Validation
from . import _common
from .layers import Placement, image_array, rectangle_roi, unsized_note, unwrap
from .loss_plot import LossPlot
from .options_form import OptionsForm
from .pickers import LayerPicker
from .qt_helpers import DockWidget, PathField, combo, disconnect, image_type, narrow, row_layout, shapes_type, spin
from .registry import MODELS, PRESETS

PREVIEW_LAYER = "training preview"
#: a training input: (short label, tooltip, layer names it is guessed from)
INPUTS = {
    "input": ("Input", "The degraded image (noisy, low resolution), registered to the target", r"nois|low|input|raw|degrad|lr\b"),
    "target": ("Target", "The clean image the model should produce from the input", r"clean|target|gt\b|ground|high|ref|hr\b"),
    "volume": ("Volume", "The volume the model learns from", None),
}
#: the data sources read from disk (the others are layers)
FILE_SOURCES = ("files", "clean_file", "prepared")
#: Fine-tuning a model starts with at most this many steps and this time limit (minutes): a
#: fine-tune adapts a trained model and needs far fewer steps than its first training.
FINE_TUNE_STEPS = 2000
FINE_TUNE_MINUTES = 30.0
#: Previews per run (a one-patch validation every iterations / PREVIEWS steps).
PREVIEWS = 20


def default_start(items: list[tuple[str, Any]]) -> int:
    """The "Start from" entry offered first: fine-tuning the variant's bundled model (a trained
    model adapts to new data in a tenth of the steps, under a time limit), else its ``-cpu``
    preset, else the first entry."""
    for i, (_, (kind, value)) in enumerate(items):
        if kind == "model" and value.source == "bundled":
            return i
    return next((i for i, (label, _) in enumerate(items) if label.endswith("-cpu")), 0)


def can_simulate(variant: Any) -> bool:
    """Whether the variant can make its training data from clean images alone.

    Asked by trying it on a small synthetic stack: variants that cannot (the vEM ones learn
    from a real volume) refuse with an InputError, whichever way they are written.
    """
    probe = np.linspace(0.0, 1.0, 4 * 32 * 32, dtype=np.float32).reshape(4, 32, 32)
    try:
        variant.from_clean(probe, variant.options({}), dose=DEFAULT_DOSE, read_noise=0.0, seed=0)
    except InputError:
        return False
    return True


@dataclass
class _Run:
    preset: Any
    arrays: dict[str, Any]
    roi: Any
    init_model: Any
    run_dir: Path
    device: str
    note: str
    preview_geometry: dict[str, Any]
    pixel_um: float | None = None  # of the network's inputs, where known (the model records it)


class TrainWidget(DockWidget):
    """Train a new model, or fine-tune one, on layers in the viewer."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        from ..engine.device import available_devices
        from ..variants import VARIANTS

        self.viewer = napari_viewer
        self.run_dir: Path | None = None
        self.last_model: Path | None = None
        self.preview_layer: Any = None
        self._run: _Run | None = None

        self.variant = combo(
            ((v.title.split(" (")[0], name, f"{v.title}: {v.description}") for name, v in VARIANTS.items()),
            "What the model will do",
        )
        self.source = narrow(QComboBox(), "Where the training pairs come from")
        self.pickers: dict[str, LayerPicker] = {}
        self.clean = LayerPicker(napari_viewer, image_type(), tip="Clean images: the degraded input is simulated from them")
        self.paths: dict[str, PathField] = {}
        self.clean_path = PathField("A file or folder of clean images: the degraded input is simulated from them", "clean images on disk")
        self.set_path = PathField("A training set made by 'emdiffuse prepare' (a zarr folder): registered pairs with held-out patches", "a prepared set (zarr)")
        self.dose = QDoubleSpinBox()
        self.dose.setRange(0.5, 10000.0)
        self.dose.setValue(DEFAULT_DOSE)
        self.dose.setToolTip("Simulated dose: electron counts for a full-scale pixel (lower is noisier)")
        self.read_noise = QDoubleSpinBox()
        self.read_noise.setRange(0.0, 1.0)
        self.read_noise.setDecimals(3)
        self.read_noise.setSingleStep(0.01)
        self.read_noise.setValue(DEFAULT_READ_NOISE)
        self.read_noise.setToolTip("Simulated detector read noise, as a fraction of the grey-value range")
        self.options_box = QVBoxLayout()
        self.options: OptionsForm | None = None
        self.region = LayerPicker(
            napari_viewer, shapes_type(), optional=True,
            tip="Train only inside a rectangle drawn in this Shapes layer (fine-tuning on a region you trust)",
        )  # fmt: skip
        self.start_from = narrow(QComboBox(), "A preset to train a new model, or a model to fine-tune")
        self.iterations = spin(1, 10_000_000, "Training steps (training also stops at the time limit)")
        self.minutes = QDoubleSpinBox()
        self.minutes.setRange(0.0, 100_000.0)
        self.minutes.setSpecialValueText("no limit")
        self.minutes.setToolTip(
            "End within this many minutes, even before all steps are done: training stops early enough for the final "
            "validation and the calibration of the uncertainty (a short limit calibrates it on fewer patches)"
        )
        self.device = narrow(QComboBox(), "Where to train: auto picks a CUDA GPU, then Apple MPS, then the CPU")
        self.device.addItems(available_devices())
        self.controls = _common.JobControls(
            "Train",
            "step %v / %m",
            "Stopping after the current step; the model so far is kept…",
            on_run=self.run,
            on_event=self._on_event,
            on_done=self._on_done,
            run_tip="Train (or fine-tune) with these settings; the model appears in Enhance when it is saved",
        )
        self.plot = LossPlot()
        self.plot.setToolTip(
            "Above: the training loss (faint: each step; orange: running average; log scale). Below: the validation "
            "PSNR of the model's best estimate on held-out patches (green), against the baseline on the same patches "
            "(dashed red: the noisy input, bicubic or linear interpolation). Green below red: worse than the baseline, train longer"
        )
        self.save_button = QPushButton("Save…")
        self.save_button.setToolTip("Copy the last trained model (model.json + weights) into an empty folder")
        self.save_button.setEnabled(False)
        self.load_button = QPushButton("Load…")
        self.load_button.setToolTip("Add a model folder from disk, as the starting point for fine-tuning")
        self.export_button = QPushButton("bioimage.io…")
        self.export_button.setToolTip(
            "Export the model to fine-tune (or the last trained) as a bioimage.io model package (.zip) "
            "for the BioImage Model Zoo; EMDiffuse-n and -r models"
        )

        body = QWidget()
        form = self.form = QFormLayout()
        form.addRow("Variant", self.variant)
        form.addRow("Data", self.source)
        names = dict.fromkeys(n for v in VARIANTS.values() for n in v.training_inputs)
        for name in sorted(names, key=lambda n: list(INPUTS).index(n) if n in INPUTS else len(INPUTS)):
            label = INPUTS.get(name, (name.capitalize(),))[0]
            form.addRow(label, self._add_picker(name))
            form.addRow(label, self._add_path(name))
        for label, w in (("Clean", self.clean), ("Clean", self.clean_path), ("Set", self.set_path), ("Dose", self.dose), ("Read noise", self.read_noise)):
            form.addRow(label, w)
        form.addRow(self.options_box)
        form.addRow("Region", self.region)
        form.addRow("Start from", self.start_from)
        form.addRow("Steps", self.iterations)
        form.addRow("Time limit", self.minutes)
        form.addRow("Device", self.device)
        layout = QVBoxLayout(body)
        layout.addLayout(form)
        layout.addWidget(self.controls)
        layout.addWidget(self.plot)
        layout.addLayout(row_layout(self.save_button, self.load_button, self.export_button))
        layout.addStretch(1)
        self.set_body(body)

        self.variant.currentIndexChanged.connect(self._variant_changed)
        self.source.currentIndexChanged.connect(self._source_changed)
        self.start_from.currentIndexChanged.connect(self._start_changed)
        self.save_button.clicked.connect(self._save_dialog)
        self.load_button.clicked.connect(self._load_dialog)
        self.export_button.clicked.connect(self._export_dialog)
        for signal in (MODELS.changed, PRESETS.changed):
            signal.connect(self.refresh_start)
            self.destroyed.connect(lambda *_, s=signal: disconnect(s, self.refresh_start))
        self._variant_changed()

    def dock_closed(self) -> None:
        self.controls.close_job()

    # ---- choices -------------------------------------------------------------------------

    def variant_name(self) -> str:
        return self.variant.currentData()

    def _variant_changed(self, *_: Any) -> None:
        from ..variants import get_variant

        variant = get_variant(self.variant_name())
        names = variant.training_inputs
        label, tip = {
            ("input", "target"): ("Paired layers", "A degraded input layer and its registered clean target"),
            ("volume",): ("One volume", "One volume; the model learns from its own slices"),
        }.get(tuple(names), ("Layers", "Layers: " + ", ".join(names)))
        simulate = can_simulate(variant)
        files = "Volume file" if tuple(names) == ("volume",) else "Paired files"
        sources = [
            (label, "layers", tip),
            *([("Simulated", "simulate", "A clean layer, with the degradation (noise, blur) simulated")] if simulate else []),
            (files, "files", f"{tip}, as files or folders on disk (read lazily: for data too large to open as layers)"),
            *([("Clean file", "clean_file", "A clean file or folder on disk, with the degradation (noise, blur) simulated")] if simulate else []),
            ("Prepared set", "prepared", "A training set made by 'emdiffuse prepare' (registered pairs, held-out patches)"),
        ]
        self.source.blockSignals(True)
        self.source.clear()
        for i, (text, key, item_tip) in enumerate(sources):
            self.source.addItem(text, key)
            self.source.setItemData(i, item_tip, Qt.ItemDataRole.ToolTipRole)
        self.source.blockSignals(False)
        if self.options is not None:
            self.options.setParent(None)
            self.options.deleteLater()
            self.options = None
        if variant.options_model.model_fields:
            self.options = OptionsForm(variant.options_model)
            self.options_box.addWidget(self.options)
        self._source_changed()
        self.refresh_start()

    def _source_changed(self, *_: Any) -> None:
        from ..variants import get_variant

        # Every data row is in the form from the start; only the current source's rows are shown
        # (rows taken out of a form leave their labels drawn where they were).
        source = self.source.currentData()
        inputs = set(get_variant(self.variant_name()).training_inputs)
        for name, picker in self.pickers.items():
            self.form.setRowVisible(picker, source == "layers" and name in inputs)
        for name, field in self.paths.items():
            self.form.setRowVisible(field, source == "files" and name in inputs)
        self.form.setRowVisible(self.clean, source == "simulate")
        self.form.setRowVisible(self.clean_path, source == "clean_file")
        self.form.setRowVisible(self.set_path, source == "prepared")
        for w in (self.dose, self.read_noise):
            self.form.setRowVisible(w, source in ("simulate", "clean_file"))
        self.form.setRowVisible(self.region, source not in FILE_SOURCES)  # a rectangle is drawn over a layer

    def _add_picker(self, name: str) -> LayerPicker:
        """The layer picker of a training input; the target's avoids the input's layer."""
        _, tip, prefer = INPUTS.get(name, (name, f"The '{name}' layer", None))
        avoid = (lambda: self.pickers["input"].layer()) if name == "target" and "input" in self.pickers else None
        picker = LayerPicker(self.viewer, image_type(), tip=tip, prefer=prefer, avoid=avoid)
        if avoid is not None:
            self.pickers["input"].currentIndexChanged.connect(picker.refresh)
        picker.currentIndexChanged.connect(self.controls.choices_changed)
        self.pickers[name] = picker
        return picker

    def _add_path(self, name: str) -> PathField:
        """The path field of a training input read from disk."""
        _, tip, _ = INPUTS.get(name, (name, f"The '{name}' image", None))
        field = PathField(f"{tip}: a file or folder on disk, read lazily as 'emdiffuse train' reads it", f"{name} on disk")
        self.paths[name] = field
        return field

    def refresh_start(self, *_: Any) -> None:
        """Presets of the chosen variant (built-in and from the Presets widget), then its models."""
        from ..config import builtin_presets, load_preset

        try:
            current = self.start_from.currentData()
        except RuntimeError:  # deleted with the viewer
            return
        variant = self.variant_name()
        builtin = {name: load_preset(name) for name in sorted(builtin_presets())}
        own = {n: p for n, p in builtin.items() if p.variant == variant}
        if not own:  # a variant without presets yet: the built-in settings, adapted to it
            own = {n: p.with_overrides({"variant": variant, "variant_options": {}}) for n, p in builtin.items()}
        items: list[tuple[str, Any]] = [(f"preset: {n}", ("preset", p)) for n, p in own.items()]
        items += [(f"preset: {n} (edited)", ("preset", p)) for n, p in PRESETS.items().items() if p.variant == variant]
        items += [(f"fine-tune: {e.label}", ("model", e)) for e in MODELS.entries(variant)]
        self.start_from.blockSignals(True)
        self.start_from.clear()
        for label, data in items:
            self.start_from.addItem(label, data)
        keep = next((i for i, (_, d) in enumerate(items) if current is not None and d[1] == current[1]), None)
        self.start_from.setCurrentIndex(keep if keep is not None else default_start(items))
        self.start_from.blockSignals(False)
        if keep is None:  # a new starting point: show its settings (an unchanged one keeps the user's edits)
            self._start_changed()

    def _start_changed(self, *_: Any) -> None:
        data = self.start_from.currentData()
        if data is None:
            return
        kind, value = data
        if kind == "preset":
            self.iterations.setValue(value.train.iterations)
            self.minutes.setValue(value.train.minutes or 0.0)
            if self.options is not None:
                self.options.set_from(value.variant_options)
                self.options.set_read_only(False)
        else:
            from ..model_file import read_model_json

            meta = read_model_json(value.path)
            self.iterations.setValue(max(1, min(FINE_TUNE_STEPS, meta["preset"]["train"]["iterations"] // 10)))
            self.minutes.setValue(FINE_TUNE_MINUTES)
            if self.options is not None:  # a fine-tuned model keeps its options
                self.options.set_from(meta["preset"].get("variant_options") or {})
                self.options.set_read_only(True)

    def select_start(self, label_prefix: str) -> None:
        """Choose the first "Start from" entry whose label starts with ``label_prefix``."""
        for i in range(self.start_from.count()):
            if self.start_from.itemText(i).startswith(label_prefix):
                self.start_from.setCurrentIndex(i)
                return
        raise InputError(f"no starting point {label_prefix!r}")

    # ---- running -------------------------------------------------------------------------

    def plan(self) -> _Run:
        """Check the choices and gather the arrays; raises a user error with what to change."""
        from ..model_file import Model
        from ..variants import get_variant

        variant = get_variant(self.variant_name())
        kind, start = self.start_from.currentData()
        train_over: dict[str, Any] = {"iterations": self.iterations.value(), "minutes": self.minutes.value() or None}
        init = None
        if kind == "model":
            init = Model.load(start.path)
            preset = init.preset.with_overrides({"train": train_over})
        else:
            over: dict[str, Any] = {"train": train_over}
            if self.options is not None:
                over["variant_options"] = self.options.values()
            preset = start.with_overrides(over)
        options = variant.options(preset.variant_options)
        if self.source.currentData() in FILE_SOURCES:
            arrays, note, pixel = self._file_arrays(variant, preset)
            run_dir = Path(tempfile.mkdtemp(prefix=f"emdiffuse-{variant.name}-"))
            return _Run(preset, arrays, None, init, run_dir, self.device.currentText(), note, {}, pixel)
        if self.source.currentData() == "simulate":
            layer = self.clean.layer()
            clean = np.asarray(image_array(layer))
            arrays = variant.from_clean(
                clean, options, dose=self.dose.value(), read_noise=self.read_noise.value(), seed=preset.train.seed
            )
            note = f"layer {layer.name!r} with simulated noise (dose {self.dose.value():g}, read noise {self.read_noise.value():g})"
            grid_shape = clean.shape
            pixel = known_pixel_um(variant.calibration_voxel(Placement.of(layer).voxel_um(), options))
        else:
            arrays, names, chosen = {}, [], {}
            for name in variant.training_inputs:
                layer = self.pickers[name].layer()
                label = INPUTS.get(name, (name,))[0]
                if layer is None:
                    raise InputError(f"choose a layer for '{label}'")
                for other, other_layer in chosen.items():
                    if other_layer is layer or other_layer.data is layer.data:
                        raise InputError(
                            f"'{label}' and '{other}' are the same image ({layer.name!r}): choose the degraded "
                            "image as input and its clean version as target"
                        )
                chosen[label] = layer
                arrays[name] = image_array(layer)
                names.append(f"{name} {layer.name!r}")
            layer = self.pickers[variant.training_inputs[0]].layer()
            note = "layers " + ", ".join(names)
            pixel = known_pixel_um(Placement.of(layer).voxel_um())
            grid_shape = arrays[variant.training_inputs[0]].shape
        if pixel is None and (said := unsized_note(layer, "the model will record none, against which later inputs' pixel sizes are checked")):
            _common.notify(*said)
        roi = None
        if self.region.layer() is not None:
            roi = rectangle_roi(self.region.layer(), layer)
            first = arrays[variant.training_inputs[0]]
            ry, rx = first.shape[-2] / grid_shape[-2], first.shape[-1] / grid_shape[-1]
            if (ry, rx) != (1.0, 1.0):  # simulated input on another grid (e.g. downsampled)
                roi = type(roi)(int(roi.y0 * ry), int(np.ceil(roi.y1 * ry)), int(roi.x0 * rx), int(np.ceil(roi.x1 * rx)))
            roi = roi.clip(*first.shape[-2:])
            note += f", region y {roi.y0}:{roi.y1}, x {roi.x0}:{roi.x1}"
        run_dir = Path(tempfile.mkdtemp(prefix=f"emdiffuse-{variant.name}-"))
        scale = tuple(layer.scale[-2:])
        right = float(layer.translate[-1] + layer.scale[-1] * (layer.data.shape[-1] if not layer.multiscale else layer.data[0].shape[-1]))
        geometry = {"scale": scale, "translate": (float(layer.translate[-2]), right + 8 * scale[-1]), "units": tuple(layer.units[-2:])}
        return _Run(preset, arrays, roi, init, run_dir, self.device.currentText(), note, geometry, pixel)

    def _file_arrays(self, variant: Any, preset: Any) -> tuple[dict[str, Any], str, float | None]:
        """The training arrays from the files chosen, as ``emdiffuse train`` reads them, their
        note and the pixel size of the network's inputs (µm; None: unknown)."""
        from ..jobs.inputs import training_arrays

        source = self.source.currentData()
        files: dict[str, Path | None] = {}
        clean = data = None
        if source == "files":
            for name in variant.training_inputs:
                label = INPUTS.get(name, (name,))[0]
                files[name] = self.paths[name].path()
                if files[name] is None:
                    raise InputError(f"choose a file or folder for '{label}'")
            chosen = [p.resolve() for p in files.values() if p is not None]
            if len(set(chosen)) < len(chosen):
                raise InputError(
                    f"'Input' and 'Target' are the same file ({chosen[0]}): choose the degraded images as input and their clean version as target"
                )
        elif source == "clean_file":
            clean = self.clean_path.path()
            if clean is None:
                raise InputError("choose the file or folder of clean images")
        else:
            data = self.set_path.path()
            if data is None:
                raise InputError("choose the prepared training set (a zarr folder made by 'emdiffuse prepare')")
        arrays, notes, pixel = training_arrays(
            variant.name, preset.variant_options, files, clean=clean, data=data,
            dose=self.dose.value(), read_noise=self.read_noise.value(), seed=preset.train.seed,
        )  # fmt: skip
        return arrays, "; ".join(notes), pixel

    def run(self) -> None:
        """Start training (the Train button); problems are shown as notifications."""
        if self.controls.runner.running:
            return
        try:
            plan = self.plan()
        except Exception as err:  # noqa: BLE001 - every problem becomes a notification
            self.controls.fail(err)
            return
        from ..jobs.train import train

        self._run, self.run_dir = plan, plan.run_dir
        self.plot.clear()
        self.controls.progress.setMaximum(plan.preset.train.iterations)

        def job(cancel: Any):
            return train(
                plan.preset,
                plan.arrays,
                plan.run_dir,
                device=plan.device,
                init_model=plan.init_model,
                roi=plan.roi,
                preview_every=max(1, plan.preset.train.iterations // PREVIEWS),
                data_note=plan.note,
                cancel=cancel,
                pixel_size_um=plan.pixel_um,
            )

        minutes = plan.preset.train.minutes
        self.controls.start(job, f"Training in {plan.run_dir}…", limit_s=60 * minutes if minutes else None)

    def _on_event(self, event: Event) -> None:
        """Loss, validation, previews, checkpoints and the result (progress and messages are
        shown by the job controls)."""
        match event:
            case Loss(step=step, loss=loss):
                self.plot.add(step, loss)
            case Validation(step=step, psnr=psnr, input_psnr=base_psnr, baseline=baseline):
                self.plot.add_validation(step, psnr, base_psnr, baseline)
            case Preview():
                self._show_preview(event)
            case CheckpointSaved(step=step, path=path):
                self.controls.status.setText(f"Step {step}: model saved in {path.parent}")
            case TrainResult():
                name = f"{self.variant_name()}-{time.strftime('%H%M%S')}"
                MODELS.add(event.model_dir, "trained", name=name)
                self.last_model = Path(event.model_dir)
                self.save_button.setEnabled(True)
                psnr = f", validation PSNR {event.best_psnr:.2f} dB" if event.best_psnr is not None else ""
                if event.best_psnr is not None and event.baseline_psnr is not None:
                    psnr += f" ({self.plot.baseline} {event.baseline_psnr:.2f} dB)"
                self.controls.status.setText(
                    f"{event.reason.capitalize()} after {event.steps} steps{psnr}. Model '{name}' is ready in Enhance."
                )

    def _show_preview(self, event: Preview) -> None:
        """Input | prediction | target of a validation patch, side by side, in one layer."""
        panels = [np.asarray(a, np.float32)[0] for a in (event.cond, event.prediction, event.target)]
        h = max(p.shape[0] for p in panels)
        gap = np.full((h, 2), -1.0, np.float32)
        padded = [np.pad(p, ((0, h - p.shape[0]), (0, 0)), constant_values=-1.0) for p in panels]
        image = np.concatenate([padded[0], gap, padded[1], gap, padded[2]], axis=1)
        if self.preview_layer is None or self.preview_layer not in self.viewer.layers:
            self.preview_layer = unwrap(
                self.viewer.add_image(
                    image,
                    name=PREVIEW_LAYER,
                    contrast_limits=(-1.0, 1.0),
                    metadata={"emdiffuse": {"role": "preview"}},
                    **(self._run.preview_geometry if self._run else {}),
                )
            )
        else:
            self.preview_layer.data = image
        self.preview_layer.metadata["step"] = event.step

    def _on_done(self, error: BaseException | None) -> None:
        self._run = None

    # ---- saving and loading --------------------------------------------------------------

    def save_model(self, folder: str | Path) -> Path:
        """Copy the last trained model (model.json + weights) to ``folder`` and register it there."""
        from ..model_file import MODEL_JSON, WEIGHTS

        if self.last_model is None:
            raise InputError("there is no trained model to save yet: train one first")
        folder = Path(folder)
        if folder.exists() and any(folder.iterdir()) and not (folder / MODEL_JSON).is_file():
            raise InputError(f"{folder} is not empty; choose an empty folder for the model")
        folder.mkdir(parents=True, exist_ok=True)
        for name in (MODEL_JSON, WEIGHTS):
            shutil.copy2(self.last_model / name, folder / name)
        MODELS.add(folder, "disk")
        return folder

    def load_model(self, folder: str | Path) -> None:
        """Register a model folder and choose it as the starting point for fine-tuning."""
        entry = MODELS.add(folder, "disk")
        self.variant.setCurrentIndex(self.variant.findData(entry.variant))
        self.select_start(f"fine-tune: {entry.label}")

    def _save_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Save the model into this (empty) folder")
        if folder:
            try:
                path = self.save_model(folder)
                self.controls.status.setText(f"Model saved to {path}")
            except Exception as err:  # noqa: BLE001 - shown to the user
                _common.notify_error(err)

    def _load_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model folder (with model.json)")
        if folder:
            try:
                self.load_model(folder)
            except Exception as err:  # noqa: BLE001 - shown to the user
                _common.notify_error(err)

    def model_to_export(self) -> Path:
        """The model chosen to fine-tune in "Start from", else the last one trained here."""
        data = self.start_from.currentData()
        if data is not None and data[0] == "model":
            return Path(data[1].path)
        if self.last_model is not None:
            return self.last_model
        raise InputError("choose a model in 'Start from' (fine-tune: …) or train one, then export it")

    def export_bioimageio(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write :meth:`model_to_export` as a bioimage.io model package (an existing file is
        replaced only with ``overwrite``)."""
        from ..bioimageio_export import export_bioimageio

        return export_bioimageio(self.model_to_export(), path, overwrite)

    def _export_dialog(self) -> None:
        try:
            folder = self.model_to_export()
        except Exception as err:  # noqa: BLE001 - shown to the user
            _common.notify_error(err)
            return
        path, _ = QFileDialog.getSaveFileName(self, "bioimage.io model package", f"{folder.name}.zip", "zip (*.zip)")
        if path:
            try:
                out = path if path.endswith(".zip") else path + ".zip"
                # the save dialog asked before replacing the name it returned, not one with .zip added
                if out != path and Path(out).exists():
                    raise InputError(f"{out} exists: choose it by that name in the dialog (which asks before replacing it), or give another name")
                out = self.export_bioimageio(out, overwrite=out == path)
                self.controls.status.setText(f"bioimage.io package written to {out}")
            except Exception as err:  # noqa: BLE001 - shown to the user
                self.controls.status.setText(_common.notify_error(err))
