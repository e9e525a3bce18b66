"""Small Qt building blocks shared by the widgets."""

from __future__ import annotations

from typing import Any, Iterable

from pathlib import Path

from qtpy.QtCore import QEvent, QSize, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

#: Characters a combo box shows before eliding; its full text is in the tooltip and the list.
COMBO_CHARS = 14


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


def narrow(box: QComboBox, tip: str = "") -> QComboBox:
    """A combo box as wide as a short entry, not its longest one, so docks stay narrow; the
    current entry's full text (and ``tip``) is its tooltip."""
    box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    box.setMinimumContentsLength(COMBO_CHARS)

    def show_full(*_: Any) -> None:
        try:
            item_tip = box.itemData(box.currentIndex(), Qt.ItemDataRole.ToolTipRole) or box.currentText()
            box.setToolTip("\n".join(t for t in (item_tip, tip) if t))
        except RuntimeError:  # deleted
            pass

    box.currentIndexChanged.connect(show_full)
    show_full()
    return box


def combo(entries: Iterable[tuple[str, Any, str]], tip: str = "") -> QComboBox:
    """A :func:`narrow` combo box of ``(short label, data, tooltip)`` entries."""
    box = QComboBox()
    for label, data, item_tip in entries:
        box.addItem(label, data)
        box.setItemData(box.count() - 1, item_tip, Qt.ItemDataRole.ToolTipRole)
    return narrow(box, tip)


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


class PathField(QWidget):
    """A path typed or chosen with File… / Folder… buttons: the formats the readers take are
    files (TIFF, MRC, HDF5) or folders (zarr, N5, a folder of slices), and no one Qt dialog
    chooses either. ``changed`` is emitted with the new text when typing ends (Enter, or the
    focus leaves the field) or a path is chosen, not at every key: listeners open the file."""

    changed = Signal(str)

    def __init__(self, tip: str, placeholder: str = "") -> None:
        super().__init__()
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        self.edit.setToolTip(tip)
        self.file_button = QPushButton("File…")
        self.file_button.setToolTip("Choose a file")
        self.folder_button = QPushButton("Folder…")
        self.folder_button.setToolTip("Choose a folder (zarr, N5 or a folder of slices)")
        self._told = ""  # the text last emitted
        self.setLayout(row_layout(self.edit, self.file_button, self.folder_button))
        self.file_button.clicked.connect(self._choose_file)
        self.folder_button.clicked.connect(self._choose_folder)
        self.edit.editingFinished.connect(self._tell)

    def path(self) -> Path | None:
        text = self.edit.text().strip()
        return Path(text).expanduser() if text else None

    def set_path(self, path: str | Path | None) -> None:
        self.edit.setText("" if path is None else str(path))
        self._tell()

    def _tell(self) -> None:
        if self.edit.text() != self._told:
            self._told = self.edit.text()
            self.changed.emit(self._told)

    def _choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a file", self.edit.text())
        if path:
            self.set_path(path)

    def _choose_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose a folder", self.edit.text())
        if path:
            self.set_path(path)


#: The height a dock asks for at most (pixels); it scrolls for the rest, so two docks share a
#: laptop screen instead of the first taking it all.
DOCK_HEIGHT_HINT = 330


class _Scroll(QScrollArea):
    """As wide as its body needs (plus the scroll bar), at most :data:`DOCK_HEIGHT_HINT` tall."""

    def _width(self) -> int:
        body = self.widget()
        return (body.minimumSizeHint().width() if body else 0) + self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth()

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        hint = super().sizeHint()
        return QSize(max(hint.width(), self._width()), min(hint.height(), DOCK_HEIGHT_HINT))

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        return QSize(self._width(), super().minimumSizeHint().height())

    def eventFilter(self, watched: Any, event: QEvent) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.LayoutRequest:  # the body's needs changed: so do ours
            self.updateGeometry()
        return super().eventFilter(watched, event)


def scrolling(owner: QWidget, body: QWidget) -> QScrollArea:
    """Put ``body`` into ``owner`` inside a vertical scroll area, so a dock shorter than its
    controls (two docks on a laptop screen) still reaches every one of them."""
    area = _Scroll(owner)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setWidget(body)
    body.installEventFilter(area)
    layout = QVBoxLayout(owner)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(area)
    return area


class Collapsible(QWidget):
    """A titled section that opens and closes with a click (closed at first): settings most
    users never change, out of the way but one click from view."""

    def __init__(self, title: str, content: QWidget, tip: str = "") -> None:
        super().__init__()
        self.content = content
        self.toggle = QToolButton()
        self.toggle.setText(title)
        self.toggle.setCheckable(True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.toggle.setStyleSheet("QToolButton { border: none; }")
        self.toggle.setToolTip(tip or f"Show or hide the {title.lower()}")
        self.toggle.toggled.connect(self.set_open)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.toggle)
        layout.addWidget(content)
        content.setVisible(False)

    def set_open(self, open_: bool) -> None:
        self.toggle.setChecked(open_)
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if open_ else Qt.ArrowType.RightArrow)
        self.content.setVisible(open_)


class DockWidget(QWidget):
    """Base of the plugin's dock widgets: a scrolling body, the dock's height shared evenly with
    the other docks beside it when it first appears, and :meth:`dock_closed` when napari closes
    the dock (napari takes the widget out of the dock, no parent, instead of deleting it)."""

    def set_body(self, body: QWidget) -> None:
        self.scroll = scrolling(self, body)
        self._shared = False

    def dock_closed(self) -> None:
        """Called once the dock is closed: stop what runs for it."""

    def event(self, event: QEvent) -> bool:  # noqa: D102 - Qt's name
        if event.type() == QEvent.Type.ParentChange and self.parent() is None:
            self.dock_closed()
        return super().event(event)

    def showEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        super().showEvent(event)
        if not getattr(self, "_shared", True):
            self._shared = True
            QTimer.singleShot(0, self._share_height)

    def _share_height(self) -> None:
        """napari gives a new dock its minimum height and the one above all the rest; two
        plugin docks on a laptop screen should each get half."""
        from qtpy.QtWidgets import QDockWidget, QMainWindow

        try:
            dock, main = self.parent(), self.window()
        except RuntimeError:  # deleted
            return
        if not isinstance(dock, QDockWidget) or not isinstance(main, QMainWindow) or dock.isFloating():
            return
        area = main.dockWidgetArea(dock)
        docks = [
            d for d in main.findChildren(QDockWidget)
            if d.isVisible() and not d.isFloating() and main.dockWidgetArea(d) == area and not main.tabifiedDockWidgets(d)
        ]  # fmt: skip
        if len(docks) > 1:
            main.resizeDocks(docks, [main.height()] * len(docks), Qt.Orientation.Vertical)


def disconnect(signal: Any, slot: Any) -> None:
    """Disconnect, ignoring a connection that is already gone."""
    try:
        signal.disconnect(slot)
    except (RuntimeError, TypeError, ValueError):
        pass
