"""Enhance widget: run a model over a slice, a drawn rectangle or a whole volume.

It drives :func:`napari_emdiffuse.jobs.predict.predict` in a worker thread and adds the enhanced
image, its uncertainty map (for a calibrated model the error bound in grey values) and outlines
of the regions above a threshold in grey values, placed exactly over the input (scale,
translate and units from the input layer, adjusted for super-resolution and isotropic output).
Results too large for memory are written to zarr and opened lazily.

The input is a layer or a file or folder on disk, for volumes too large to open as a layer: it
is read lazily by the readers ``emdiffuse predict`` uses, placed as the napari reader places
it, and its result is written block by block into OME-Zarr (resumable after a cancel) and
opened lazily.
"""

from __future__ import annotations

import re
import tempfile
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..errors import BlockError, InputError
from ..jobs.events import Event, PredictResult
from ..jobs.predict_output import result_bytes
from . import _common
from .layers import (
    INTENSITY_UNIT,
    UNCERTAINTY_COLORMAP,
    Placement,
    current_plane,
    image_array,
    output_placement,
    rectangle_roi,
    result_name,
    sample_percentile,
    samples_kwargs,
    unsized_note,
    unwrap,
    voxel_text,
)
from .pickers import LayerPicker
from .qt_helpers import Collapsible, DockWidget, PathField, combo, disconnect, image_type, narrow, row, shapes_type, spin
from .regions import uncertain_regions
from .registry import MODELS, ModelEntry

#: input source: (short label, tooltip)
SOURCES = {
    "layer": ("Layer", "An image layer open in napari"),
    "file": (
        "File or folder",
        "A file or folder on disk (TIFF, OME-Zarr/zarr, N5, MRC, HDF5, a folder of slices), read lazily block by block: "
        "for volumes too large to open as a layer. The result is written to OME-Zarr and opened lazily",
    ),
}
#: the default result of a run from a file: beside the input, named after it
FILE_RESULT_SUFFIX = "_enhanced.zarr"
#: scope: (short label, tooltip)
SCOPES = {
    "slice": ("Current slice", "The slice the viewer shows"),
    "rectangle": ("Rectangle", "The rectangle drawn in the chosen Shapes layer, on the current slice"),
    "rectangle_stack": ("Rectangle, all slices", "The rectangle drawn in the chosen Shapes layer, through every slice"),
    "whole": ("Whole volume", "The whole image or volume (results too large for memory go to zarr)"),
}
#: sampler: (short label, tooltip)
SAMPLERS = {
    "dpmpp_2m": ("DPM-Solver++", "DPM-Solver++ (2M): few steps suffice; the default"),
    "ddim": ("DDIM", "DDIM: deterministic, needs more steps than DPM-Solver++"),
    "ddpm": ("DDPM", "DDPM: the original ancestral sampler, needs many steps (hundreds)"),
}
CALIBRATED_TIP = (
    "Error bound in the image's grey values: the true value lies within the result ± this at {cover} % "
    "of pixels, on data like the model's calibration patches. Hidden at first: tick it in the layer list"
)
ROUGH_TIP = (
    "Error bound in the image's grey values: {note}. "
    "Hidden at first: tick it in the layer list"
)
UNCALIBRATED_TIP = (
    "Spread of the samples, pooled over regions (uncalibrated: this model has no calibration, so the "
    "values are not an error bound; models trained with this version have one). Hidden at first"
)
#: Results larger than this (bytes of enhanced + uncertainty) go to a zarr file; None means a
#: quarter of the memory available when the job starts.
IN_MEMORY_LIMIT: int | None = None
REGIONS_COLOR = "magenta"


def _memory_limit() -> int:
    if IN_MEMORY_LIMIT is not None:
        return IN_MEMORY_LIMIT
    try:
        import psutil

        return int(psutil.virtual_memory().available // 4)
    except ImportError:
        return 2 << 30


@dataclass
class _Plan:
    """Everything one run needs, checked before it starts."""

    name: str  # the input's: the layer's name or the file's
    contrast: tuple[float, float] | None  # the result's contrast limits; None: measured on it, as the reader does
    entry: ModelEntry
    model: Any
    array: Any
    voxel: tuple[float, ...]  # in µm where the layer's units say how (the jobs' unit); 1 where no size is known
    placement: Placement
    sample: Any
    device: str
    output: Path | None
    input_paths: list[Path]
    overwrite: bool = False
    resume: bool = False
    source_info: dict[str, str] | None = None  # what the result layers' metadata say the input was
    keep_samples: bool = False  # the samples come back as a layer too
    origin: tuple[float, ...] | None = None  # the result's first pixel, in the jobs' unit (Placement.position_um)
    sampling: tuple[float, ...] | None = None  # the input's pixel in its world's pixels where no pixel size is known (Placement.sampling)
    pixel_said: bool = False  # the layer's missing pixel size is said (unsized_note): predict does not repeat it


class EnhanceWidget(DockWidget):
    """Enhance an image layer with a trained model; results come back as new layers."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        from ..config import SamplerName
        from ..engine.device import available_devices
        from ..variants import VARIANTS

        self.viewer = napari_viewer
        self._plan: _Plan | None = None
        self.result_layers: list[Any] = []  # the enhanced image and its uncertainty map
        self.regions_layer: Any = None  # the regions where the samples disagree most
        self.samples_layer: Any = None  # the samples themselves, when asked for
        self._store_layers: dict[str, list[Any]] = {}  # output path: the layers that read the store written there
        self._bound: Any = None  # the last result's error map, the regions' source

        self.source = combo(((label, key, tip) for key, (label, tip) in SOURCES.items()), "What to enhance: a layer, or a file or folder on disk")
        self.image = LayerPicker(napari_viewer, image_type(), tip="The image layer to enhance (2D, 3D, lazy or multiscale)")
        self.input_path = PathField(
            "The file or folder to enhance, read lazily as 'emdiffuse predict' reads it (file.h5:/dataset picks an HDF5 dataset)",
            "a file or folder on disk",
        )
        self._default_output: str | None = None  # the result path last filled in for the input file
        self.variant = combo(
            ((v.title.split(" (")[0], name, f"{v.title}: {v.description}") for name, v in VARIANTS.items()),
            "What the model does",
        )
        self.model = narrow(QComboBox(), "The trained model to run: bundled, trained in this session or loaded from disk")
        self.load_model = QPushButton("Load…")
        self.load_model.setToolTip("Add a model folder (model.json + weights.safetensors) from disk; it is checked first")
        self.import_model = QPushButton("Import…")
        self.import_model.setToolTip(
            "Import a published EMDiffuse *_Network.pth as the variant chosen above (docs/published-models.md)"
        )
        self.remove_model = QPushButton("Remove")
        self.remove_model.setToolTip("Take the chosen model off this list (its folder stays on disk; bundled models stay)")
        self.model_info = QLabel()
        self.model_info.setWordWrap(True)
        self.model_info.setToolTip("What the model does was fixed when it was trained; train another model to change it")
        self.model_options: BaseModel | None = None  # the chosen model's variant options, for the result's size
        self.sampler = combo(
            ((SAMPLERS.get(n, (n, n))[0], n, SAMPLERS.get(n, (n, n))[1]) for n in typing.get_args(SamplerName)),
            "How the diffusion model is sampled",
        )
        self.steps = spin(1, 2000, "Sampler steps: network evaluations per sample (more is slower and a little sharper)")
        self.samples = spin(2, 64, "Samples drawn per pixel (2 or more): their spread is the uncertainty map")
        self.keep_samples = QCheckBox("Add the samples as a layer")
        self.keep_samples.setToolTip(
            "Also add the samples themselves (a layer with a leading sample axis, hidden at first). They have the "
            "texture of an acquired image: look at them for detail, and at an isotropic volume's xz or yz view without "
            "stripes (docs/benchmarks-samples.md); measure on the result, the best estimate. With a .tif under "
            "'Save to', each sample is also written as NAME_sample1.tif, …"
        )
        self.tile_size = spin(32, 4096, "Tile size in pixels: smaller tiles need less GPU memory", step=32)
        self.overlap = spin(0, 1024, "Overlap between tiles in pixels (blended, so no seams)", step=8)
        self.tile_batch = spin(1, 1024, "Tiles x samples evaluated together: more is faster on a GPU; halved by itself where the GPU runs out of memory")
        self.seed = spin(0, 2**31 - 1, "Random seed: the same seed gives the same samples")
        self.device = narrow(QComboBox(), "Where to run: auto picks a CUDA GPU, then Apple MPS, then the CPU")
        self.device.addItems(available_devices())
        self.scope = combo(((label, key, tip) for key, (label, tip) in SCOPES.items()), "What to enhance")
        self.shapes = LayerPicker(napari_viewer, shapes_type(), optional=True, tip="The Shapes layer with the rectangle to enhance")
        self.zarr_path = QLineEdit()
        self.zarr_path.setPlaceholderText("in memory")
        self.zarr_path.setToolTip(
            "A zarr folder to write the result into, tile by tile; empty keeps it in memory "
            "(results larger than a quarter of the free memory go to a temporary zarr)"
        )
        self.browse = QPushButton("…")
        self.browse.setToolTip("Choose the zarr folder for the result")
        self.overwrite = QCheckBox("Overwrite")
        self.overwrite.setToolTip("Replace a result already saved under that name (otherwise it is refused and kept)")
        self.resume = QCheckBox("Resume")
        self.resume.setToolTip(
            "Continue a cancelled or stopped run into this zarr result: only the blocks not finished yet are computed "
            "(same model, input and settings)"
        )
        self.output_info = QLabel()
        self.output_info.setWordWrap(True)
        self.unsure_above = QDoubleSpinBox()
        self.unsure_above.setRange(0.0, 1e9)
        self.unsure_above.setDecimals(3)
        self.unsure_above.setSpecialValueText("automatic")
        self.unsure_above.setToolTip(
            "Outline the regions whose error bound is above this, in the image's grey values; "
            "'automatic' outlines the most uncertain 5 %. Changing it redraws the outlines of the last result"
        )
        self.controls = _common.JobControls(
            "Enhance",
            "%p %",  # of the network passes over every tile, sample and block
            "Cancelling after the current sampler step…",
            on_run=self.run,
            on_event=self._on_event,
            on_done=self._on_done,
            tile_size=self.tile_size.value,
            run_tip="Enhance the chosen scope with the chosen model; the result and its uncertainty come back as layers",
        )

        expert_body = QWidget()
        expert = QFormLayout(expert_body)
        expert.setContentsMargins(0, 0, 0, 0)
        expert.addRow("Sampler", self.sampler)
        expert.addRow("Tile size", self.tile_size)
        expert.addRow("Overlap", self.overlap)
        expert.addRow("Tile batch", self.tile_batch)
        expert.addRow("Seed", self.seed)
        self.expert = Collapsible("Expert settings", expert_body, "Sampler, tiles and seed: the model's own values suit most data")

        body = QWidget()
        form = self.form = QFormLayout()
        form.addRow("Input", self.source)
        form.addRow("Image", self.image)
        form.addRow("File", self.input_path)
        form.addRow("Variant", self.variant)
        form.addRow("Model", self.model)
        form.addRow("", row(self.load_model, self.import_model, self.remove_model))
        form.addRow("", self.model_info)
        form.addRow("Steps", self.steps)
        form.addRow("Samples", self.samples)
        form.addRow("", self.keep_samples)
        form.addRow("Device", self.device)
        form.addRow("Scope", self.scope)
        form.addRow("Rectangle", self.shapes)
        form.addRow("Save to", row(self.zarr_path, self.browse))
        form.addRow("", row(self.overwrite, self.resume))
        form.addRow("Unsure above", self.unsure_above)
        form.addRow("", self.output_info)
        layout = QVBoxLayout(body)
        layout.addLayout(form)
        layout.addWidget(self.expert)
        layout.addWidget(self.controls)
        layout.addStretch(1)
        self.set_body(body)

        self.variant.currentIndexChanged.connect(self.refresh_models)
        self.model.currentIndexChanged.connect(self._model_changed)
        self.image.currentIndexChanged.connect(self._update_output_info)
        self.image.currentIndexChanged.connect(self.controls.choices_changed)
        self.source.currentIndexChanged.connect(self._source_changed)
        self.input_path.changed.connect(self._input_path_changed)
        self.scope.currentIndexChanged.connect(self._scope_changed)
        self.load_model.clicked.connect(self._load_model_dialog)
        self.remove_model.clicked.connect(self._remove_model)
        self.import_model.clicked.connect(self._import_dialog)
        self.browse.clicked.connect(self._browse_zarr)
        self.unsure_above.valueChanged.connect(self._redraw_regions)
        MODELS.changed.connect(self.refresh_models)
        self.destroyed.connect(lambda *_: disconnect(MODELS.changed, self.refresh_models))
        self.refresh_models()
        self._source_changed()

    def dock_closed(self) -> None:
        self.controls.close_job()

    # ---- choices -------------------------------------------------------------------------

    def variant_name(self) -> str:
        return self.variant.currentData()

    def select_model(self, folder: str | Path) -> None:
        """Choose a registered model by folder (also switches the variant to the model's)."""
        folder = Path(folder).resolve()
        for entry in MODELS.entries():
            if entry.path == folder:
                self.variant.setCurrentIndex(self.variant.findData(entry.variant))
                for i in range(self.model.count()):
                    if self.model.itemData(i) == entry:
                        self.model.setCurrentIndex(i)
                return
        raise InputError(f"{folder}: not a known model; load it first")

    def refresh_models(self, *_: Any) -> None:
        try:
            current = self.model.currentData()
        except RuntimeError:  # deleted with the viewer
            return
        entries = MODELS.entries(self.variant_name())
        self.model.blockSignals(True)
        self.model.clear()
        for entry in entries:
            self.model.addItem(entry.label, entry)
        index = next((i for i, e in enumerate(entries) if e == current), len(entries) - 1)
        self.model.setCurrentIndex(max(index, 0))
        self.model.blockSignals(False)
        self._model_changed()

    def _model_changed(self, *_: Any) -> None:
        from ..config import load_preset
        from ..model_file import read_model_json
        from ..variants import get_variant, stored_options

        entry = self.model.currentData()
        variant = get_variant(self.variant_name())
        if entry is None:
            self.model_info.setText(
                f"No {variant.title} model yet: train one in 'Train / fine-tune', or Load… a model folder."
            )
            preset_sample = load_preset("tiny").sample.model_dump()
            self.model_options = None
        else:
            meta = read_model_json(entry.path)
            self.model_info.setText(entry.description or variant.description)
            preset_sample = meta["preset"]["sample"]
            self.model_options = stored_options(meta["preset"])[1]
        self.sampler.setCurrentIndex(max(self.sampler.findData(preset_sample["sampler"]), 0))
        self.steps.setValue(preset_sample["steps"])
        self.samples.setValue(max(2, preset_sample["samples"]))
        self.tile_size.setValue(preset_sample["tile_size"])
        self.overlap.setValue(preset_sample["overlap"])
        self.tile_batch.setValue(preset_sample.get("tile_batch", 8))
        self.seed.setValue(preset_sample.get("seed", 0))
        self.remove_model.setEnabled(entry is not None and entry.source != "bundled")
        self._fit_scopes(variant)
        self._update_output_info()

    def _fit_scopes(self, variant: Any) -> None:
        """Offer the scopes of one plane only to variants that work on planes: a vEM variant
        needs the slices on both sides of each gap, so its scope falls back to the whole volume."""
        planes = 2 in variant.input_ndims
        items = self.scope.model()
        for key in ("slice", "rectangle"):
            item = items.item(self.scope.findData(key))
            item.setEnabled(planes)
            item.setToolTip(SCOPES[key][1] if planes else f"{variant.title} works on volumes: it needs the slices on both sides of each gap")
        if not planes and self.scope.currentData() in ("slice", "rectangle"):
            self.scope.setCurrentIndex(self.scope.findData("whole"))

    def from_file(self) -> bool:
        """Whether the input is a file or folder on disk (else a layer)."""
        return self.source.currentData() == "file"

    def _source_changed(self, *_: Any) -> None:
        """A file is enhanced whole, into zarr: its rows replace the layer's and the scope's."""
        file = self.from_file()
        self.form.setRowVisible(self.image, not file)
        self.form.setRowVisible(self.input_path, file)
        self.form.setRowVisible(self.scope, not file)
        self.form.setRowVisible(self.shapes, not file)
        self.zarr_path.setPlaceholderText("beside the input file" if file else "in memory")
        self._scope_changed()

    def _input_path_changed(self, *_: Any) -> None:
        """Offer the default result path beside the new input, unless the user typed their own."""
        path = self.input_path.path()
        if self.zarr_path.text().strip() in ("", self._default_output or ""):
            self._default_output = str(default_file_output(path)) if path is not None else None
            self.zarr_path.setText(self._default_output or "")
        self._update_output_info()

    def _scope_changed(self, *_: Any) -> None:
        self.shapes.setEnabled(self.scope.currentData() in ("rectangle", "rectangle_stack"))
        self._update_output_info()

    def _update_output_info(self, *_: Any) -> None:
        from ..variants import get_variant

        entry = self.model.currentData()
        file = self.from_file()
        if entry is None or (self.input_path.path() if file else self.image.layer()) is None:
            self.output_info.setText("")
            return
        try:
            if file:
                data, source = read_input_file(self.input_path.path())[:2]
                what = "The file"
            else:
                layer = self.image.layer()
                data, source = self._crop(layer, image_array(layer))[0], Placement.of(layer)
                what = SCOPES[self.scope.currentData()][0]
                if refusal := source.mirror_refusal(layer.name, "its results cannot be placed by", "enhance again"):
                    raise InputError(refusal)  # what Run will say, not a voxel with a negative size
            source = source.measured()
            out = get_variant(entry.variant).output_geometry(data.shape, source.scale[-data.ndim :], self.model_options)
        except Exception as err:  # noqa: BLE001 - an informative line only; Enhance reports it properly
            self.output_info.setText(_common.user_message(err))
            return
        one = not file and self.scope.currentData() in ("slice", "rectangle")  # a plane, whether or not a stack holds it
        shape, voxel, size = (out.shape[-2:], out.voxel[-2:], data.shape[-2:]) if one else (out.shape, out.voxel, data.shape)
        self.output_info.setText(f"{what} → {' × '.join(map(str, shape))} px, voxel {voxel_text(voxel, source.units[-1])}")
        self.output_info.setToolTip(f"{what} ({' × '.join(map(str, size))} px) gives a result of {' × '.join(map(str, shape))} px")

    def _load_model_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model folder (with model.json)")
        if folder:
            try:
                entry = MODELS.add(folder, "disk")
                self.select_model(entry.path)
            except Exception as err:  # noqa: BLE001 - shown to the user
                _common.notify_error(err)

    def _remove_model(self) -> None:
        entry = self.model.currentData()
        if entry is not None and entry.source != "bundled":
            MODELS.remove(entry.path)

    def _import_dialog(self) -> None:
        """Original EMDiffuse weights (as the chosen variant) into a new model folder, then select it."""
        from ..import_emdiffuse import import_emdiffuse

        weights, _ = QFileDialog.getOpenFileName(self, "EMDiffuse weights (*_Network.pth)", "", "PyTorch weights (*.pth *.pt)")
        if not weights:
            return
        suggested = str(Path(weights).with_name(f"{Path(weights).stem}_{self.variant_name()}"))
        out, _ = QFileDialog.getSaveFileName(self, "Save the imported model as a folder", suggested)
        if not out:
            return
        try:
            import_emdiffuse(weights, self.variant_name(), out)
            self.select_model(MODELS.add(out, "imported").path)
        except Exception as err:  # noqa: BLE001 - shown to the user
            _common.notify_error(err)

    def _browse_zarr(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Write the result to", "", "zarr (*.zarr)")
        if path:
            self.zarr_path.setText(path if path.lower().endswith(".zarr") else path + ".zarr")

    # ---- running -------------------------------------------------------------------------

    def plan(self) -> _Plan:
        """Check every choice and build the run; raises a user error with what to change."""
        from ..data.formats import file_stem
        from ..model_file import Model
        from ..variants import get_variant, model_options

        if self.from_file():  # the input first: what to enhance before how
            file = self.input_path.path()
            if file is None:
                raise InputError("choose the file or folder to enhance (File… or Folder…), or enhance a layer")
            data, source, paths, note = read_input_file(file)
            if note:
                _common.notify(note)
            name = file_stem(paths[0])  # as the reader names the file's layer
            contrast, info, described = None, {"source_file": str(file)}, f"file {file}"
        else:
            layer = self.image.layer()
            data, source = image_array(layer), Placement.of(layer)
            refusal = source.mirror_refusal(layer.name, "its results cannot be placed by", "enhance again")
            if refusal:  # before anything runs: a result records a positive voxel and sampling
                raise InputError(refusal)
            paths = [Path(layer.source.path)] if getattr(layer.source, "path", None) else []
            name, contrast = layer.name, tuple(layer.contrast_limits)
            info, described = {"source_layer": layer.name}, f"layer {layer.name!r}"
        source = source.measured()
        entry: ModelEntry | None = self.model.currentData()
        if entry is None:
            raise InputError("no model chosen: train one in 'Train / fine-tune' or Load… a model folder")
        model = Model.load(entry.path)
        variant, options = get_variant(model.variant), model_options(model)
        said = None
        if not self.from_file():  # a file's missing pixel size predict says
            cost = model.unchecked_pixel()
            said = unsized_note(layer, cost or "its results record none", unscaled_too=cost is not None)
            if said:
                _common.notify(*said)
        sample = model.preset.with_overrides(
            {
                "sample": {
                    "sampler": self.sampler.currentData(),
                    "steps": self.steps.value(),
                    "samples": self.samples.value(),
                    "tile_size": self.tile_size.value(),
                    "overlap": self.overlap.value(),
                    "tile_batch": self.tile_batch.value(),
                    "seed": self.seed.value(),
                }
            }
        ).sample
        array, offset = (data, (0,) * data.ndim) if self.from_file() else self._crop(layer, data)
        variant.check_input(array, options, name=described)
        voxel = source.scale[-array.ndim :]
        already = isotropic_note(name, source, variant, options, tuple(array.shape))
        if already:
            _common.notify(already, "warning")
        out = variant.output_geometry(array.shape, voxel, options)
        placement = output_placement(source, offset, tuple(array.shape), tuple(out.shape), out.voxel)
        keep = self.keep_samples.isChecked()
        output = self._output_path(name, result_bytes(out.shape, np.float32, sample.samples if keep else 0, bool(model.calibration)))
        overwrite, resume = self.overwrite.isChecked(), self.resume.isChecked()
        check_output(output, paths, overwrite, resume, self.from_file())
        return _Plan(
            name, contrast, entry, model, array, source.voxel_um()[-array.ndim :], placement, sample, self.device.currentText(),
            output, paths, overwrite, resume, info, keep, source.position_um(placement.translate)[-array.ndim :],
            source.sampling()[-array.ndim :], said is not None,
        )  # fmt: skip

    def _crop(self, layer: Any, data: Any) -> tuple[Any, tuple[int, ...]]:
        """The part of the data the scope asks for, and its offset in the layer. A slice of a
        stack stays a stack of one slice, so that the result (and a store written of it) keeps
        its z position and reopens on that slice."""
        scope = self.scope.currentData()
        if scope == "whole" or (data.ndim == 2 and scope == "slice"):
            return data, (0,) * data.ndim
        if scope in ("rectangle", "rectangle_stack"):
            h, w = data.shape[-2:]
            r = rectangle_roi(self.shapes.layer(), layer).clip(h, w)
            if data.ndim == 2:
                return data[r.y0 : r.y1, r.x0 : r.x1], (r.y0, r.x0)
            if scope == "rectangle_stack":
                return data[:, r.y0 : r.y1, r.x0 : r.x1], (0, r.y0, r.x0)
            z = current_plane(self.viewer, layer)
            return data[z : z + 1, r.y0 : r.y1, r.x0 : r.x1], (z, r.y0, r.x0)
        z = current_plane(self.viewer, layer)
        return data[z : z + 1], (z, 0, 0)

    def _output_path(self, name: str, nbytes: int) -> Path | None:
        text = self.zarr_path.text().strip()
        if text:
            return Path(text).expanduser()
        if self.from_file():
            return default_file_output(self.input_path.path())
        if nbytes <= _memory_limit():
            return None
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "image"
        path = Path(tempfile.mkdtemp(prefix="emdiffuse-")) / f"{safe}_enhanced.zarr"
        _common.notify(f"The result ({nbytes / 2**30:.1f} GB) is larger than memory allows; it is written to {path}")
        return path

    def run(self) -> None:
        """Start enhancing (the Enhance button); problems are shown as notifications."""
        if self.controls.runner.running:
            return
        try:
            plan = self.plan()
        except Exception as err:  # noqa: BLE001 - every problem becomes a notification
            self.controls.fail(err)
            return
        from ..jobs.predict import predict

        self._plan = plan

        def job(cancel: Any):
            return predict(
                plan.model,
                plan.array,
                sample=plan.sample,
                voxel=plan.voxel,
                device=plan.device,
                output=plan.output,
                input_paths=plan.input_paths,
                cancel=cancel,
                overwrite=plan.overwrite,
                origin=plan.origin,
                sampling=plan.sampling,
                pixel_note=not plan.pixel_said,
                keep_samples=plan.keep_samples,
                resume=plan.resume,
            )

        self.controls.start(job, f"Enhancing {plan.name!r} with {plan.entry.name}…")

    def _on_event(self, event: Event) -> None:
        """The result (progress and messages are shown by the job controls)."""
        match event:
            case PredictResult(complete=True):
                self._show(event)
            case PredictResult(finished=None, written=(store, *_)):  # blocks finished, but not the first (a cluster run's)
                self.controls.status.setText(f"Cancelled before the first block was finished: nothing was added; the finished blocks are kept in {store}: run again with Resume ticked to finish it.")
            case PredictResult(finished=None):
                self.controls.status.setText("Cancelled before the first plane was finished: nothing was added.")
            case PredictResult(finished=region):
                self._show(event, region)
                where = f" (also in {event.written[0]}; run again with Resume ticked to finish it)" if event.written else ""
                self.controls.status.setText(f"Cancelled: the part finished so far was added as '(partial)' layers{where}.")

    def _show(self, result: PredictResult, region: tuple[slice, ...] | None = None) -> None:
        """Add a run's result as layers (``region``: a stopped run's finished part, as '(partial)'
        layers), in place of the layers of an earlier run into the same store."""
        self._drop_store_layers(self._plan.output)
        self._add_results(result, region)
        self._remember_store_layers()

    def _remember_store_layers(self) -> None:
        """The layers just added read the store this run wrote (if it wrote one): remembered, to
        go when a later run continues, moves or replaces that store."""
        output = self._plan.output
        if output is not None:
            self._store_layers[str(output)] = [*self.result_layers, *(x for x in (self.samples_layer, self.regions_layer) if x is not None)]

    def _drop_store_layers(self, output: Path | None) -> None:
        """Remove the layers of an earlier run into ``output`` once this run's result is there:
        they read the store it continued and moved (a cancelled run's '(partial)' layers) or
        replaced (Overwrite), so they would show zeros or another result under their old names.
        A run refused or cancelled before it finished a plane leaves them (and their store) be."""
        from qtpy.QtWidgets import QApplication

        stale = [layer for layer in self._store_layers.pop(str(output), []) if layer in self.viewer.layers] if output else []
        for layer in stale:
            self.viewer.layers.remove(layer)
        if stale:
            QApplication.processEvents()  # napari 0.9 under Xvfb needs the removal drawn before new layers come

    def _on_done(self, error: BaseException | None) -> None:
        if isinstance(error, BlockError) and self._plan is not None:
            self._show_kept(error)
        self._plan = None

    def _show_kept(self, error: BlockError) -> None:
        """A run stopped by a failed block kept its finished blocks in a store: they are added as
        a cancelled run's are, and the error (already in the status line) stays there."""
        message = self.controls.status.text()
        try:
            kept = kept_result(error.store) if error.store is not None else None
            if kept is None:
                return
            self._show(kept, kept.finished)
        except Exception as err:  # noqa: BLE001 - the failed block stays the error reported
            self.controls.status.setText(f"{message} The finished part could not be opened: {' '.join(str(err).split())}")
            return
        self.controls.status.setText(f"{message} The finished part was added as '(partial)' layers.")

    def _add_results(self, result: Any, region: tuple[slice, ...] | None = None) -> None:
        """The enhanced image over the input, its uncertainty (hidden) and the regions where the
        samples disagree most (outlined); ``region`` crops a cancelled run to what finished."""
        plan = self._plan
        mean, std = result.mean, result.std
        if not isinstance(mean, np.ndarray):  # written to zarr: open lazily
            import dask.array as da

            mean, std = da.from_zarr(mean), da.from_zarr(std)
        if region is not None:
            mean, std = mean[region], std[region]
        partial = region is not None
        info = {"model": str(plan.entry.path), **(plan.source_info or {}), "samples": plan.sample.samples}
        kwargs = plan.placement.kwargs()
        if plan.contrast is None:  # a file's result: the contrast the reader gives it
            from .._reader import contrast_limits

            contrast = contrast_limits(mean)
        else:
            contrast = plan.contrast
        enhanced = self.viewer.add_image(
            mean,
            name=result_name(plan.name, "estimate", partial),
            colormap="gray",
            contrast_limits=contrast,
            metadata={"emdiffuse": {**info, "role": "enhanced"}},
            **kwargs,
        )
        bound, label, tip = _error_bound(std, plan.model, plan.sample, result.rough_bounds)
        top = sample_percentile(bound, 99.5)
        uncertainty = self.viewer.add_image(
            bound,
            name=result_name(plan.name, f"{label} [{INTENSITY_UNIT}]", partial),
            colormap=UNCERTAINTY_COLORMAP,
            contrast_limits=(0.0, max(top, 1e-6)),  # from zero: the colours show how large the bound is, not only where it is larger
            visible=False,
            metadata={"emdiffuse": {**info, "role": "uncertainty", "tip": tip}},
            **kwargs,
        )
        uncertainty.colorbar.visible = True  # shown with the layer: what a colour means
        # napari 0.9's colour bar has no label: the layer's name, with its unit, is put beside it as one
        uncertainty.name_overlay.position = uncertainty.colorbar.position
        uncertainty.name_overlay.visible = True
        self.result_layers = [unwrap(enhanced), unwrap(uncertainty)]
        self.samples_layer = None if result.samples is None else unwrap(self._add_samples(result.samples, region, result_name(plan.name, "samples", partial), contrast, info, plan.placement))
        self._bound = bound
        self.regions_layer = unwrap(self._add_regions(bound, result_name(plan.name, "unsure regions", partial), info, kwargs)) if plan.sample.samples >= 2 else None
        seconds = time.monotonic() - self.controls.started
        where = f", written to {plan.output}" if plan.output else ""
        self.controls.status.setText(
            f"Done in {seconds:.0f} s{where}: '{enhanced.name}'. Outlined in {REGIONS_COLOR}: the regions where the "
            "samples disagree most (the uncertainty map"
            + (" and the samples are" if self.samples_layer is not None else " itself is")
            + " hidden in the layer list)."
        )

    def _add_samples(
        self, samples: Any, region: tuple[slice, ...] | None, name: str, contrast: Any, info: dict[str, Any], placement: Placement
    ) -> Any:
        """The samples as one hidden layer over the result, their index a leading axis; cropped
        to a cancelled run's finished ``region``."""
        if not isinstance(samples, np.ndarray):  # written to zarr: open lazily
            import dask.array as da

            samples = da.from_zarr(samples)
        if region is not None:
            samples = samples[(slice(None), *region)]
        return self.viewer.add_image(
            samples, name=name, colormap="gray", contrast_limits=contrast, visible=False,
            metadata={"emdiffuse": {**info, "role": "samples"}}, **samples_kwargs(placement),
        )  # fmt: skip

    def _add_regions(self, std: Any, name: str, info: dict[str, Any], kwargs: dict[str, Any]) -> Any:
        from napari.utils.colormaps import DirectLabelColormap

        mask, threshold = uncertain_regions(std, self.unsure_above.value() or None)
        layer = self.viewer.add_labels(
            mask,
            name=name,
            opacity=0.8,
            colormap=DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", 1: REGIONS_COLOR}),
            metadata={"emdiffuse": {**info, "role": "regions", "threshold": threshold}},
            **kwargs,
        )
        layer.contour = 2
        return layer

    def _redraw_regions(self, *_: Any) -> None:
        """The outlines of the last result at the threshold now set (its error map is kept)."""
        if self.regions_layer is None or self._bound is None or self.regions_layer not in self.viewer.layers:
            return
        mask, threshold = uncertain_regions(self._bound, self.unsure_above.value() or None)
        self.regions_layer.data = mask
        self.regions_layer.metadata["emdiffuse"]["threshold"] = threshold


def _error_bound(error_map: Any, model: Any, sample: Any, rough: str | None = None) -> tuple[Any, str, str]:
    """The uncertainty layer's data, name and tooltip: for a calibrated model the error bound
    ``q u`` in the image's grey values (``q`` at the model's alpha, as the predict job's
    ``lower``/``upper`` use it), else the pooled spread, named as uncalibrated. The name claims
    the coverage only at the sampling settings it was calibrated at (``sample``: this run's), and
    none where the run widened the bound past what calibration covers (``rough``: the job's
    :attr:`..jobs.events.PredictResult.rough_bounds`): a "rough error bound", its tip saying why."""
    from .. import uncertainty

    calibration = model.calibration
    if not calibration:
        return error_map, "uncertainty (uncalibrated)", UNCALIBRATED_TIP
    alpha = float(calibration["alpha"])
    cover = round(100 * (1 - alpha))
    q = uncertainty.scale(calibration, alpha)
    match = uncertainty.settings_match(calibration, sample.sampler, sample.steps, sample.samples)
    name, tip = f"error bound ({uncertainty.coverage_label(1 - alpha, match)})", CALIBRATED_TIP.format(cover=cover)
    if rough:
        name, tip = "rough error bound", ROUGH_TIP.format(note=rough)
    if match != "same":
        tip += ". The bound was " + uncertainty.settings_note(calibration, match)
    return error_map * np.float32(q), name, tip


def kept_result(store: Path) -> PredictResult | None:
    """What a stopped run kept in ``store`` (an ``OUT.partial.zarr``), as the run returns it after
    a cancel; None where it is not a stopped prediction of ours or says nothing is finished (as
    one does whose finishing failed before its uncertainty was pooled)."""
    from ..data.safe_output import own_attrs
    from ..jobs.predict_output import result_arrays

    attrs = own_attrs(store) or {}
    if attrs.get("complete") is not False or not attrs.get("finished"):
        return None
    mean, std, samples, lower, upper = result_arrays(store)
    region = tuple(slice(a, b) for a, b in attrs["finished"])
    rough = (attrs.get("bounds_rough") or {}).get("note")
    return PredictResult(mean, std, samples, tuple(attrs["voxel_size"]), False, region, lower, upper, (store,), rough)


def isotropic_note(name: str, source: Placement, variant: Any, options: Any, shape: tuple[int, ...]) -> str | None:
    """A warning when a variant that adds planes in z (isotropic reconstruction) runs on a
    volume whose calibrated voxel is already about isotropic: it would only interpolate."""
    if len(shape) != 3 or any(str(u) in ("pixel", "") for u in source.units[-3:]):
        return None  # no voxel size: napari's default scale says nothing
    voxel = tuple(float(v) for v in source.scale[-3:])
    if variant.output_geometry(shape, voxel, options).voxel[0] >= voxel[0]:
        return None  # the variant keeps the z spacing
    if abs(voxel[0] / voxel[1] - 1.0) > 0.1:
        return None
    return (
        f"'{name}' is already isotropic (z voxel {voxel[0]:.4g}, xy voxel {voxel[1]:.4g} {source.units[-1]}): "
        f"{variant.title.split(' (')[0]} is for volumes whose slices are thicker than their pixels."
    )


def read_input_file(path: Path) -> tuple[Any, Placement, list[Path], str | None]:
    """A file or folder to enhance: its data, lazily, as ``emdiffuse predict`` reads it
    (:func:`..jobs.inputs.read_logged`), placed as the napari reader places it (:func:`.._reader.placed`:
    voxel size, first pixel's position, units, a recorded ``sampling``), the files the result
    must not overwrite, and a note for the user
    (None: nothing to say). A grey+alpha picture gives its grey channel, as the napari reader
    opens it, and the note says so; other images of several samples per pixel are refused."""
    from .._reader import placed
    from ..data.formats import split_dataset
    from ..jobs.inputs import alpha_note, read_logged

    image = read_logged(path, "input", grey_of_alpha=True)
    file = split_dataset(path)[0]
    data = image.data
    if data.ndim not in (2, 3):
        raise InputError(f"{file}: holds {data.ndim}-dimensional data (shape {tuple(data.shape)}); EMDiffuse works on 2D images and 3D stacks (z, y, x)")
    note = alpha_note(path) if image.meta.get("alpha_dropped") else None
    # the data as predict reads it: a single slice saved as a stack, which the reader shows as one, is its plane
    kwargs = {key: value[-data.ndim :] for key, value in placed(path, image).kwargs.items()}
    return data, Placement.from_kwargs(kwargs, data.ndim), [file], note


def default_file_output(path: Path | None) -> Path | None:
    """Where a run from ``path`` writes by default: ``NAME_enhanced.zarr`` beside it (beside
    the whole store, for an array inside one: ``result.zarr/mean`` gives ``result_mean_enhanced.zarr``)."""
    if path is None:
        return None
    from ..data.formats import file_stem, split_dataset, store_root

    file, dataset = split_dataset(path)
    root = store_root(file)
    if root != file:
        file, dataset = root, "/".join([*file.relative_to(root).parts, *([dataset] if dataset else [])])
    stem = file_stem(file) or "image"
    if dataset:
        stem += "_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset.strip("/"))
    return file.parent / f"{stem}{FILE_RESULT_SUFFIX}"


def check_output(output: Path | None, inputs: list[Path], overwrite: bool, resume: bool, from_file: bool) -> None:
    """Refuse a result path now, in plain words, rather than after the run: a run from a file
    writes zarr; an existing result is replaced only with Overwrite; a cancelled run's partial
    result is continued with Resume or replaced with Overwrite, never silently. The refusals are
    prediction's own (they name every store at stake: a stopped run's, killed runs'), which
    :func:`._common.plain_words` puts in the widget's words."""
    from ..jobs.predict_output import OutputNames, check_new_output_beside, complete_refusal, stopped_run_refusal

    if output is None:
        if resume:
            raise InputError("'Resume' continues a result saved as zarr: choose a .zarr name under 'Save to'")
        return
    store = output.name.lower().endswith(".zarr")
    if from_file and not store:
        raise InputError(f"{output}: a run from a file writes OME-Zarr; give the result a name ending in .zarr")
    if resume and not store:
        raise InputError(f"{output}: 'Resume' continues a result saved as zarr; give a name ending in .zarr")
    if store and resume and not overwrite and (done := complete_refusal(output)):
        raise InputError(done)
    check_new_output_beside(output, output, inputs, overwrite)
    if store and not (resume or overwrite):
        if stopped := stopped_run_refusal(output):
            raise InputError(stopped)
        check_new_output_beside(OutputNames.partial(output), output, inputs, overwrite)  # a partial store of no stopped run's
