"""Small Qt building blocks shared by the widgets."""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QHBoxLayout, QSpinBox, QWidget


def image_type() -> type:
    from napari.layers import Image

    return Image


def shapes_type() -> type:
    from napari.layers import Shapes

    return Shapes


def spin(lo: int, hi: int, tip: str, step: int = 1) -> QSpinBox:
    s = QSpinBox()
    s.setRange(lo, hi)
    s.setSingleStep(step)
    s.setToolTip(tip)
    return s


def row_layout(*widgets: QWidget) -> QHBoxLayout:
    row = QHBoxLayout()
    row.setContentsMargins(0, 0, 0, 0)
    for w in widgets:
        row.addWidget(w)
    return row


def row(*widgets: QWidget) -> QWidget:
    """Widgets side by side, as one widget (for a form row)."""
    holder = QWidget()
    holder.setLayout(row_layout(*widgets))
    return holder


def disconnect(signal: Any, slot: Any) -> None:
    """Disconnect, ignoring a connection that is already gone."""
    try:
        signal.disconnect(slot)
    except (RuntimeError, TypeError, ValueError):
        pass
