"""Combo boxes that follow the viewer's layers and the session's models."""

from __future__ import annotations

import re
from typing import Any, Callable

from qtpy.QtWidgets import QComboBox, QWidget

from .layers import is_plugin_output, unwrap
from .qt_helpers import narrow

NONE_LABEL = "(none)"


class LayerPicker(QComboBox):
    """Layers of one kind (``napari.layers.Image``, ``Shapes``...), kept in step with the viewer.

    The selection follows the layer object, not its position, so it survives renames and moves.
    ``optional`` adds a "(none)" entry first. Until the user picks a layer, the picker offers the
    best guess and updates it as layers come and go: the newest layer that is not one of the
    plugin's own results, whose name matches ``prefer`` (a regular expression) if one does, and
    that is not ``avoid()`` (the layer another picker shows, so input and target differ). A layer
    the user picked that is then removed leaves the picker empty until the user picks again: the
    next run must not quietly take another image.
    """

    def __init__(
        self,
        viewer: Any,
        kind: type,
        optional: bool = False,
        parent: QWidget | None = None,
        tip: str = "",
        prefer: str | None = None,
        avoid: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__(parent)
        self.viewer, self.kind, self.optional = viewer, kind, optional
        self.prefer, self.avoid = prefer, avoid
        self.chosen_by_user = False
        narrow(self, tip)
        self.setPlaceholderText("(choose a layer)")
        self.activated.connect(self._user_choice)
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

    def _user_choice(self, *_: Any) -> None:
        self.chosen_by_user = True

    def layers(self) -> list[Any]:
        return [layer for layer in self.viewer.layers if isinstance(layer, self.kind)]

    def best_guess(self) -> Any:
        """The layer offered until the user picks one (None for an optional picker)."""
        if self.optional:
            return None
        layers = [unwrap(layer) for layer in self.layers()]
        avoid = unwrap(self.avoid()) if self.avoid is not None else None
        tiers = [
            [lyr for lyr in layers if not is_plugin_output(lyr) and lyr is not avoid],
            [lyr for lyr in layers if not is_plugin_output(lyr)],
            layers,
        ]
        for tier in tiers:
            if self.prefer:
                named = [lyr for lyr in tier if re.search(self.prefer, lyr.name, re.IGNORECASE)]
                if named:
                    return named[-1]
            if tier:
                return tier[-1]
        return None

    def refresh(self, *_: Any) -> None:
        try:
            current = self.layer() if self.chosen_by_user else self.best_guess()
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
        if index < 0 and not self.optional and self.count() and not self.chosen_by_user:
            index = self.index_of(self.best_guess())
        self.setCurrentIndex(index if index >= 0 or not self.optional else 0)
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
        """Choose ``layer`` as the user would (it stays chosen while it exists)."""
        index = self.index_of(layer)
        if index >= 0:
            self.chosen_by_user = True
            self.setCurrentIndex(index)
