"""Combo boxes that follow the viewer's layers and the session's models."""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QComboBox, QWidget

from .layers import unwrap

NONE_LABEL = "(none)"


class LayerPicker(QComboBox):
    """Layers of one kind (``napari.layers.Image``, ``Shapes``...), kept in step with the viewer.

    The selection follows the layer object, not its position, so it survives renames and moves.
    ``optional`` adds a "(none)" entry first.
    """

    def __init__(self, viewer: Any, kind: type, optional: bool = False, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer, self.kind, self.optional = viewer, kind, optional
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        events = viewer.layers.events
        for ev in (events.inserted, events.removed, events.moved, events.reordered):
            ev.connect(self.refresh)
        self.destroyed.connect(lambda *_: self._disconnect(viewer))
        self.refresh()

    def _disconnect(self, viewer: Any) -> None:
        events = viewer.layers.events
        for ev in (events.inserted, events.removed, events.moved, events.reordered):
            try:
                ev.disconnect(self.refresh)
            except (RuntimeError, TypeError, ValueError):
                pass

    def layers(self) -> list[Any]:
        return [layer for layer in self.viewer.layers if isinstance(layer, self.kind)]

    def refresh(self, *_: Any) -> None:
        try:
            current = self.layer()
        except RuntimeError:  # the combo box is being deleted
            return
        self.blockSignals(True)
        self.clear()
        if self.optional:
            self.addItem(NONE_LABEL, None)
        for layer in self.layers():
            self.addItem(layer.name, unwrap(layer))
            layer.events.name.connect(self._renamed)
        index = self.index_of(current) if current is not None else -1
        if index < 0 and not self.optional and self.count():
            index = self.count() - 1  # the newest layer, the one a user just opened
        self.setCurrentIndex(max(index, 0))
        self.blockSignals(False)
        self.currentIndexChanged.emit(self.currentIndex())

    def _renamed(self, event: Any) -> None:
        try:
            for i in range(self.count()):
                if self.itemData(i) is event.source:
                    self.setItemText(i, event.source.name)
        except RuntimeError:  # deleted
            pass

    def layer(self) -> Any:
        """The chosen layer, or None."""
        data = self.currentData()
        return data if data is not None and data in self.viewer.layers else None

    def index_of(self, layer: Any) -> int:
        """Position of ``layer`` in the list (by identity), or -1."""
        layer = unwrap(layer)
        return next((i for i in range(self.count()) if self.itemData(i) is layer), -1)

    def select(self, layer: Any) -> None:
        index = self.index_of(layer)
        if index >= 0:
            self.setCurrentIndex(index)
