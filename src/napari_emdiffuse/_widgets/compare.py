"""Compare widget: layers side by side or as a swipe, metrics against a reference, and the
regions where the model is unsure.

Side by side uses napari's grid mode (one camera for all cells, so pan and zoom stay linked);
the layers' visibility, captions and the grid settings are saved first and restored by "One
view", or by closing the panel; a layer removed meanwhile gets its own back at once. Each cell
is captioned by an overlay of Compare's own (:mod:`.captions`), so that a name too long for its
cell is shown shortened while the layer keeps its name. The swipe is a new, lazy layer that
shows one image left of a split and the other right of it.
Metrics (PSNR, SSIM, FRC resolution; :mod:`napari_emdiffuse.metrics`) are computed in a worker
thread on the slice shown, or on the whole volume. No user layer's data is ever modified.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSlider,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..errors import InputError
from . import _common
from .captions import caption_overlay, hide_caption, show_caption
from .layers import SOURCE_CHARS, Placement, current_plane, elide_middle, fit_name, image_array, length_text, sample_values, unwrap
from .pickers import LayerPicker
from .qt_helpers import DockWidget, disconnect, image_type, row_layout
from .regions import MIN_AREA, SIGMA, default_threshold, uncertain_regions

#: The metric table's columns: (header, its tooltip). Headers are short so that the table fits a
#: dock on a 1366 px screen; the layer column takes the rest, its names cut in the middle.
COLUMNS = (
    ("layer", "The layer compared (its full name in each cell's tooltip)"),
    ("PSNR", "Peak signal-to-noise ratio against the reference in dB, data range = the reference's max − min (higher is better)"),
    ("SSIM", "Structural similarity with the reference, 0 to 1 (higher is better)"),
    ("FRC", "FRC resolution: where the Fourier ring correlation with the reference falls below 1/7 (smaller is finer)"),
)
HIGHLIGHT_COLOR = "magenta"
#: Font sizes (points) of a grid cell's caption: napari's, and the smallest it is shrunk to so
#: that a long layer name fits its cell.
CAPTION_PT, MIN_CAPTION_PT = 10.0, 7.0
#: napari draws canvas text 4/3 the size Qt gives the same point size (vispy counts 72 dpi, Qt 96)
CANVAS_TEXT_SCALE = 4 / 3


def frc_text(resolution: float, pixel: float, unit: str) -> str:
    """The FRC resolution as the table shows it. Two pixels is the finest a grid can hold, and
    an FRC that never falls below its threshold is reported there: say so, or a noisy input
    and its denoised result read as equally sharp."""
    text = length_text(resolution, unit)
    return f"≤ {text}\n(pixel limit)" if math.isclose(resolution, 2 * pixel, rel_tol=1e-6) else text


def _canvas_text_width(text: str, points: float) -> float:
    """Width in screen pixels of ``text`` as napari draws it on the canvas (in the app's font)."""
    from qtpy.QtGui import QFont, QFontMetricsF, QGuiApplication

    font = QFont(QGuiApplication.font().family())
    font.setPointSizeF(points)
    return QFontMetricsF(font).horizontalAdvance(text) * CANVAS_TEXT_SCALE


def _colorbar_width(layer: Any) -> float:
    """Room a layer's colour bar takes beside its caption: the bar, its ticks and their labels."""
    bar = layer.colorbar
    return float(bar.size[0] + bar.tick_length) + _canvas_text_width("0000", bar.font_size)


def caption_points(text: str, room: float) -> float:
    """The largest caption size, from :data:`CAPTION_PT` down to :data:`MIN_CAPTION_PT` in half
    points, at which ``text`` fits ``room`` pixels (:data:`MIN_CAPTION_PT` if none does)."""
    points = CAPTION_PT
    while points > MIN_CAPTION_PT and _canvas_text_width(text, points) > room:
        points -= 0.5
    return points


def _grid_region(layer: Any, reference: Any, axes: int) -> tuple[slice, ...]:
    """The part of ``reference`` (last ``axes`` axes) under ``layer``: both must share a pixel grid."""
    ls, rs = np.asarray(layer.scale[-axes:], float), np.asarray(reference.scale[-axes:], float)
    if not np.allclose(ls, rs, rtol=1e-6):
        raise InputError(
            f"{layer.name!r} and the reference have different pixel sizes; compare layers on the same grid "
            "(e.g. a super-resolution result against a high-resolution reference)"
        )
    shift = (np.asarray(layer.translate[-axes:], float) - np.asarray(reference.translate[-axes:], float)) / rs
    if not np.allclose(shift, np.round(shift), atol=1e-3):
        raise InputError(f"{layer.name!r} is offset from the reference by a fraction of a pixel")
    return tuple(slice(int(round(o)), int(round(o)) + n) for o, n in zip(shift, image_array(layer).shape[-axes:]))


def _full_name(layer: Any) -> str:
    """A layer's name, and for a result the full name of what it was made from (a result's name
    shortens it)."""
    meta = getattr(layer, "metadata", None) or {}
    info = meta.get("emdiffuse") if isinstance(meta.get("emdiffuse"), dict) else {}
    source = info.get("source_layer") or info.get("source_file")
    return f"{layer.name}\nmade from {source}" if source else layer.name


@dataclass
class _Look:
    """What "Side by side" changes of one layer, as it was before: given back by "One view", or
    at once when the layer is removed from the viewer. Its name is never changed."""

    layer: Any  # unwrapped
    visible: tuple[bool, bool] | None  # the layer's and napari's caption's visibility (None: added since)
    caption: tuple[Any, float] | None = None  # napari's caption's position and size, once shown side by side

    def uncaption(self, refit: Any) -> None:
        """Take Compare's caption off the layer, and stop refitting it when it is renamed."""
        hide_caption(self.layer)
        disconnect(self.layer.events.name, refit)

    def give_back(self, refit: Any) -> None:
        """The layer as it was before "Side by side"."""
        self.uncaption(refit)
        if self.visible is not None:
            self.layer.visible, self.layer.name_overlay.visible = self.visible
        if self.caption is not None:
            self.layer.name_overlay.position, self.layer.name_overlay.font_size = self.caption


class CompareWidget(DockWidget):
    """Two to four layers: side by side, swipe, metrics, uncertainty above a threshold."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.runner = _common.JobRunner(self._on_metrics, self._on_done)
        self._saved_view: dict[str, Any] | None = None
        self.swipe_layer: Any = None
        self.highlight_layer: Any = None
        self.rows: list[dict[str, Any]] = []
        self._in_grid: list[Any] = []  # the layers side by side
        self._swipe_pair: tuple[Any, Any, Any, tuple[slice, ...]] | None = None  # left, right, the smaller, its region in the larger

        self.layer_list = QListWidget()
        self.layer_list.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.layer_list.setToolTip("Tick two to four layers, e.g. raw, enhanced, uncertainty and reference")
        self.layer_list.setMaximumHeight(120)
        self.layer_list.setTextElideMode(Qt.TextElideMode.ElideMiddle)  # long names keep their ends: what each shows
        self.layer_list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.side_button = QPushButton("Side by side")
        self.side_button.setToolTip("The ticked layers in a grid, one per cell, named, with one linked camera")
        self.restore_button = QPushButton("One view")
        self.restore_button.setToolTip("Back to one view: layer visibility and grid as they were")
        self.restore_button.setEnabled(False)
        self.swipe_button = QPushButton("Swipe")
        self.swipe_button.setToolTip(
            "A layer showing the first ticked layer left of a split and the second right of it; a slice "
            "result is swiped against the matching slice of a stack"
        )
        self.swipe = QSlider(Qt.Orientation.Horizontal)
        self.swipe.setRange(0, 100)
        self.swipe.setValue(50)
        self.swipe.setEnabled(False)
        self.swipe.setToolTip("Where the split is, in % of the width")
        self.reference = LayerPicker(napari_viewer, image_type(), optional=True, tip="The reference (e.g. a clean or high-dose image)")
        self.whole_volume = QCheckBox("whole volume")
        self.whole_volume.setToolTip("Compare whole volumes; otherwise the slice shown")
        self.metrics_button = QPushButton("Compute metrics")
        self.metrics_button.setToolTip("PSNR, SSIM and FRC resolution of each ticked layer against the reference")
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels([header for header, _ in COLUMNS])
        for j, (_, tip) in enumerate(COLUMNS):
            self.table.horizontalHeaderItem(j).setToolTip(tip)
        self.table.setToolTip("Each ticked layer against the reference; point at a column's header for what it measures")
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.table.setWordWrap(False)  # a long name is cut in its middle, not broken over lines
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for j in range(1, len(COLUMNS)):
            header.setSectionResizeMode(j, QHeaderView.ResizeMode.ResizeToContents)
        self.table.setMinimumHeight(90)
        self.uncertainty = LayerPicker(napari_viewer, image_type(), optional=True, tip="The uncertainty map made by Enhance")
        self.threshold = QDoubleSpinBox()
        self.threshold.setDecimals(4)
        self.threshold.setRange(0.0, 1e9)
        self.threshold.setToolTip(
            f"Regions whose uncertainty, averaged over about {SIGMA:g} px, is above this are outlined "
            f"(grey values; regions under {MIN_AREA} px are left out)"
        )
        self.highlight_button = QPushButton("Outline regions")
        self.highlight_button.setToolTip("Outline the regions above the threshold and report their share of the image")
        self.status = QLabel("")
        self.status.setWordWrap(True)

        view_box = QGroupBox("View")
        v = QVBoxLayout(view_box)
        v.addWidget(self.layer_list)
        v.addLayout(row_layout(self.side_button, self.restore_button))
        v.addLayout(row_layout(self.swipe_button, self.swipe))
        metrics_box = QGroupBox("Metrics against a reference")
        m = QFormLayout(metrics_box)
        m.addRow("Reference", self.reference)
        m.addRow(self.whole_volume)
        m.addRow(self.metrics_button)
        m.addRow(self.table)
        unc_box = QGroupBox("Unreliable regions")
        u = QFormLayout(unc_box)
        u.addRow("Uncertainty", self.uncertainty)
        u.addRow("Threshold", self.threshold)
        u.addRow(self.highlight_button)
        body = QWidget()
        layout = QVBoxLayout(body)
        for box in (view_box, metrics_box, unc_box):
            layout.addWidget(box)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.set_body(body)

        events = napari_viewer.layers.events
        for ev in (events.inserted, events.removed, events.reordered):
            ev.connect(self.refresh_layers)
            self.destroyed.connect(lambda *_, e=ev: disconnect(e, self.refresh_layers))
        events.removed.connect(self._layer_removed)
        self.destroyed.connect(lambda *_, e=events.removed: disconnect(e, self._layer_removed))
        self.destroyed.connect(lambda *_, r=self.runner: r.cancel())
        self.destroyed.connect(lambda *_, e=napari_viewer.canvas.events.size: disconnect(e, self._fit_captions))
        self.side_button.clicked.connect(lambda: self._guard(self.side_by_side))
        self.restore_button.clicked.connect(self.restore_view)
        self.swipe_button.clicked.connect(lambda: self._guard(self.start_swipe))
        self.swipe.valueChanged.connect(self._update_swipe)
        self.metrics_button.clicked.connect(lambda: self._guard(self.compute_metrics))
        self.highlight_button.clicked.connect(lambda: self._guard(self.highlight))
        self.uncertainty.currentIndexChanged.connect(self._default_threshold)
        self.refresh_layers()

    def dock_closed(self) -> None:
        self.runner.cancel()
        self.restore_view()  # its button goes with the panel, and the layers' names must come back

    def _guard(self, action: Any) -> None:
        """Run a button's action; a problem becomes a notification and the status line."""
        try:
            action()
        except Exception as err:  # noqa: BLE001 - every problem becomes a notification
            self.status.setText(_common.notify_error(err))

    # ---- choosing layers -----------------------------------------------------------------

    def refresh_layers(self, *_: Any) -> None:
        try:
            ticked = set(id(layer) for layer in self.chosen_layers())
        except RuntimeError:  # deleted with the viewer
            return
        own = (self.swipe_layer, self.highlight_layer)
        self.layer_list.clear()
        for layer in self.viewer.layers:
            if isinstance(layer, image_type()) and layer not in own:
                item = QListWidgetItem(layer.name)
                item.setToolTip(_full_name(layer))
                item.setData(Qt.ItemDataRole.UserRole, unwrap(layer))
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(Qt.CheckState.Checked if id(layer) in ticked else Qt.CheckState.Unchecked)
                self.layer_list.addItem(item)
                layer.events.name.connect(self._renamed)  # the list shows the names the user gives
        if self.uncertainty.layer() is None:  # offer the newest uncertainty map
            maps = [lyr for lyr in self.uncertainty.layers() if lyr.metadata.get("emdiffuse", {}).get("role") == "uncertainty"]
            if maps:
                self.uncertainty.select(maps[-1])

    def _renamed(self, event: Any) -> None:
        try:
            for i in range(self.layer_list.count()):
                item = self.layer_list.item(i)
                if item.data(Qt.ItemDataRole.UserRole) is event.source:
                    item.setText(event.source.name)
                    item.setToolTip(_full_name(event.source))
        except RuntimeError:  # deleted with its panel
            pass

    def choose(self, layers: list[Any]) -> None:
        """Tick exactly ``layers`` (in the list of layers to compare)."""
        for i in range(self.layer_list.count()):
            item = self.layer_list.item(i)
            chosen = any(item.data(Qt.ItemDataRole.UserRole) is unwrap(lyr) for lyr in layers)
            item.setCheckState(Qt.CheckState.Checked if chosen else Qt.CheckState.Unchecked)

    def chosen_layers(self) -> list[Any]:
        out = []
        for i in range(self.layer_list.count()):
            item = self.layer_list.item(i)
            layer = item.data(Qt.ItemDataRole.UserRole)
            if item.checkState() == Qt.CheckState.Checked and layer in self.viewer.layers:
                out.append(layer)
        return out

    def _chosen(self, low: int, high: int) -> list[Any]:
        chosen = self.chosen_layers()
        if not low <= len(chosen) <= high:
            raise InputError(f"tick {low} to {high} layers in the list (now {len(chosen)})")
        return chosen

    # ---- side by side and swipe ----------------------------------------------------------

    def side_by_side(self) -> None:
        """Show the chosen layers in a grid, one per cell, with one shared (linked) camera."""
        chosen = self._chosen(2, 4)
        if self._saved_view is None:
            grid = self.viewer.grid
            self._saved_view = {
                "looks": [_Look(unwrap(layer), (layer.visible, layer.name_overlay.visible)) for layer in self.viewer.layers],
                "grid": (grid.enabled, tuple(grid.shape), grid.stride),
            }
            self.viewer.canvas.events.size.connect(self._fit_captions)  # a resized window fits them again
        for layer in chosen:  # the layers themselves, not their ids: a deleted layer's id can be reused
            look = self._look(layer)
            if look is None:  # added since the first "Side by side"
                look = _Look(layer, None)
                self._saved_view["looks"].append(look)
            if look.caption is None:
                look.caption = (layer.name_overlay.position, layer.name_overlay.font_size)
        for layer in self.viewer.layers:
            layer.visible = any(unwrap(layer) is c for c in chosen)
            layer.name_overlay.visible = False  # each cell says what it shows: _fit_captions captions it
        self._in_grid = chosen
        self._lay_out()
        self.viewer.reset_view()
        self.restore_button.setEnabled(True)
        self.status.setText("Side by side: pan and zoom move all views together.")

    def _lay_out(self) -> None:
        """One cell per layer side by side (2 x 2 for four), each captioned to fit it."""
        grid = self.viewer.grid
        grid.stride = 1
        n = len(self._in_grid)
        grid.shape = (1, max(n, 1)) if n < 4 else (2, 2)
        grid.enabled = True
        self._fit_captions()

    def _fit_captions(self, *_: Any) -> None:
        """Each cell's caption (its layer's name) in a font small enough to fit the cell, beside
        the layer's colour bar where they share a corner, where napari puts the layer's own. A
        name too long even at :data:`MIN_CAPTION_PT` is shown shortened (:func:`.layers.fit_name`:
        what the layer shows kept, the input's name cut in its middle) by Compare's own
        caption (:mod:`.captions`); the layer keeps its name. Fitted again when the window is
        resized or a layer in the grid is renamed. Where this napari cannot show Compare's
        caption, napari's shows the full name in the fitted size; where adding one fails for a
        layer, the layers captioned before it in the same fit are fitted again, to napari's."""
        shown = False
        pad = float(self.viewer.canvas.overlay_tiling.padding[0])
        cell = self.viewer.canvas.size[1] / self.viewer.grid.shape[1]
        for look in self._saved_view["looks"]:
            layer = look.layer
            if look.caption is None or not any(layer is c for c in self._in_grid):
                look.uncaption(self._fit_captions)
                continue
            position, bar = look.caption[0], layer.colorbar
            beside_bar = bar.visible and position == bar.position
            room = cell - 2 * pad - (_colorbar_width(layer) + pad if beside_bar else 0.0)
            points = caption_points(layer.name, room)
            text = fit_name(layer.name, lambda text: _canvas_text_width(text, points) <= room)
            layer.events.name.connect(self._fit_captions)  # a name the user gives it is fitted too
            if show_caption(layer, text, position, points):
                layer.name_overlay.visible = False
                shown = True
            else:
                layer.name_overlay.position, layer.name_overlay.font_size = position, points
                layer.name_overlay.visible = layer.visible
        if shown and caption_overlay() is None:  # adding a caption failed after others were added
            self._fit_captions()  # once more: none is added now, so this does not recur

    def _look(self, layer: Any) -> _Look | None:
        """What "Side by side" saved of ``layer`` (unwrapped; None: nothing)."""
        return next((look for look in self._saved_view["looks"] if look.layer is layer), None)

    def _layer_removed(self, event: Any) -> None:
        """A layer removed from the viewer gets back what Compare changed of it and is forgotten,
        so that nothing here keeps it (and its data) alive; the grid closes up."""
        layer = unwrap(event.value)
        if self._saved_view is not None and (look := self._look(layer)) is not None:
            look.give_back(self._fit_captions)
            self._saved_view["looks"].remove(look)
        if any(layer is c for c in self._in_grid):
            self._in_grid = [c for c in self._in_grid if c is not layer]
            self._lay_out()
        if layer is self.swipe_layer or (self._swipe_pair is not None and any(layer is unwrap(x) for x in self._swipe_pair[:3])):
            self._swipe_pair = None
            self.swipe.setEnabled(False)
        if layer is self.swipe_layer:
            self.swipe_layer = None
        if layer is self.highlight_layer:
            self.highlight_layer = None

    def restore_view(self) -> None:
        """Layer visibility, captions and grid settings as they were before "Side by side"."""
        if self._saved_view is None:
            return
        disconnect(self.viewer.canvas.events.size, self._fit_captions)
        for look in self._saved_view["looks"]:
            look.give_back(self._fit_captions)
        enabled, shape, stride = self._saved_view["grid"]
        grid = self.viewer.grid
        grid.shape, grid.stride, grid.enabled = shape, stride, enabled
        self._saved_view = None
        self._in_grid = []
        self.refresh_layers()
        self.restore_button.setEnabled(False)
        self.viewer.reset_view()
        self.status.setText("One view: the layers' visibility, captions and the grid are as they were before 'Side by side'.")

    def start_swipe(self) -> None:
        """A layer showing the first chosen layer left of the split and the second right of it.

        Layers of different extent on the same pixel grid (a slice or a rectangle enhanced from a
        stack) are swiped where they overlap: the smaller one against the matching part of the other.
        """
        left, right = self._chosen(2, 4)[:2]
        a, b = image_array(left), image_array(right)
        if a.ndim != b.ndim:
            raise InputError(f"swipe needs two layers with the same number of axes ({left.name!r}: {a.ndim}D, {right.name!r}: {b.ndim}D)")
        small, large = (left, right) if a.size <= b.size else (right, left)
        region = _grid_region(small, large, a.ndim)
        part = image_array(large)[region]
        if tuple(part.shape) != tuple(image_array(small).shape):
            raise InputError(f"{small.name!r} is not inside {large.name!r}: swipe needs layers that overlap on the same pixel grid")
        self._swipe_pair = (left, right, small, region)
        name = f"swipe: {elide_middle(left.name, SOURCE_CHARS)} | {elide_middle(right.name, SOURCE_CHARS)}"
        if self.swipe_layer is None or self.swipe_layer not in self.viewer.layers:
            self.swipe_layer = unwrap(
                self.viewer.add_image(
                    self._composite(), name=name, contrast_limits=tuple(left.contrast_limits),
                    metadata={"emdiffuse": {"role": "swipe"}}, **Placement.of(small).kwargs(),
                )
            )  # fmt: skip
        else:
            self.swipe_layer.data = self._composite()
            self.swipe_layer.name = name
            for key, value in Placement.of(small).kwargs().items():
                setattr(self.swipe_layer, key, value)
            self.swipe_layer.contrast_limits = tuple(left.contrast_limits)
        self.swipe.setEnabled(True)
        self.status.setText(f"Left of the split: {left.name!r}; right: {right.name!r}. Move the slider.")

    def _composite(self) -> Any:
        import dask.array as da

        left, right, small, region = self._swipe_pair

        def part(layer: Any) -> Any:
            data = da.asarray(image_array(layer))
            return data if unwrap(layer) is unwrap(small) else data[region]

        a, b = part(left), part(right)
        split = int(round(a.shape[-1] * self.swipe.value() / 100))
        columns = da.arange(a.shape[-1], chunks=a.chunks[-1]) < split
        return da.where(columns, a, b.rechunk(a.chunks))

    def _update_swipe(self, *_: Any) -> None:
        if self._swipe_pair is not None and self.swipe_layer is not None and self.swipe_layer in self.viewer.layers:
            self.swipe_layer.data = self._composite()

    # ---- metrics -------------------------------------------------------------------------

    def compute_metrics(self) -> None:
        """PSNR, SSIM and FRC resolution of each chosen layer against the reference (in a worker)."""
        reference = self.reference.layer()
        if reference is None:
            raise InputError("choose a reference layer (e.g. the clean or high-dose image) to compute metrics")
        layers = [lyr for lyr in self._chosen(1, 4) if lyr is not reference]
        if not layers:
            raise InputError("tick at least one layer besides the reference")
        pairs = [(layer.name, *self._pair(layer, reference)) for layer in layers]
        pixel, unit = float(reference.scale[-1]), str(reference.units[-1])
        self.rows = []
        self.table.setRowCount(0)
        self.metrics_button.setEnabled(False)
        self.status.setText("Computing metrics…")

        def job(cancel: Any):
            from .. import metrics

            for name, a, b in pairs:
                if cancel.is_set():
                    return
                try:
                    yield {"layer": name, **metrics.compare(np.asarray(a), np.asarray(b), pixel), "unit": unit, "pixel": pixel}
                except InputError as err:
                    yield {"layer": name, "error": str(err)}

        self.runner.start(job)

    def _pair(self, layer: Any, reference: Any) -> tuple[Any, Any]:
        """The layer's data and the matching part of the reference: the slice shown, or all of it."""
        a, r = image_array(layer), image_array(reference)
        if self.whole_volume.isChecked() or (a.ndim == 2 and r.ndim == 2):
            if a.ndim != r.ndim:
                raise InputError(f"{layer.name!r} is {a.ndim}D and the reference {r.ndim}D")
            return a, r[_grid_region(layer, reference, a.ndim)]
        a2 = a[current_plane(self.viewer, layer)] if a.ndim == 3 else a
        r2 = r[current_plane(self.viewer, reference)] if r.ndim == 3 else r
        return a2, r2[_grid_region(layer, reference, 2)]

    def _on_metrics(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        i = self.table.rowCount()
        self.table.insertRow(i)
        if "error" in row:
            cells = [row["layer"], row["error"], "", ""]
        else:
            cells = [row["layer"], f"{row['psnr']:.2f}", f"{row['ssim']:.3f}", frc_text(row["frc_resolution"], row["pixel"], row["unit"])]
        for j, text in enumerate(cells):
            item = QTableWidgetItem(text)
            item.setToolTip(row["layer"] if j == 0 else text)
            self.table.setItem(i, j, item)
        self.table.resizeRowsToContents()  # an FRC at the pixel limit takes two lines

    def _on_done(self, error: BaseException | None) -> None:
        self.metrics_button.setEnabled(True)
        if error is not None:
            self.status.setText(_common.notify_error(error))
        else:
            self.status.setText("FRC resolution: where the Fourier ring correlation with the reference falls below 1/7.")

    # ---- uncertainty ---------------------------------------------------------------------

    def _default_threshold(self, *_: Any) -> None:
        layer = self.uncertainty.layer()
        if layer is not None:
            self.threshold.setValue(default_threshold(image_array(layer)))

    def highlight(self) -> float:
        """Outline the regions whose smoothed uncertainty is above the threshold in a Labels
        layer; returns their share of the pixels (0 to 1)."""
        from napari.utils.colormaps import DirectLabelColormap

        layer = self.uncertainty.layer()
        if layer is None:
            raise InputError("choose an uncertainty map (the '… uncertainty' layer made by Enhance)")
        threshold = self.threshold.value()
        mask, _ = uncertain_regions(image_array(layer), threshold)
        share = float(sample_values(mask).mean())
        name = f"{elide_middle(layer.name, SOURCE_CHARS)} above {threshold:g}"
        if self.highlight_layer is None or self.highlight_layer not in self.viewer.layers:
            self.highlight_layer = unwrap(
                self.viewer.add_labels(
                    mask,
                    name=name,
                    opacity=0.8,
                    colormap=DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", 1: HIGHLIGHT_COLOR}),
                    metadata={"emdiffuse": {"role": "regions", "threshold": threshold}},
                    **Placement.of(layer).kwargs(),
                )
            )
            self.highlight_layer.contour = 2
        else:
            self.highlight_layer.data = mask
            self.highlight_layer.name = name
            for key, value in Placement.of(layer).kwargs().items():
                setattr(self.highlight_layer, key, value)
        self.status.setText(f"{share:.1%} of the image lies in regions with an uncertainty above {threshold:g} (outlined in {HIGHLIGHT_COLOR}).")
        return share
