"""A Qt form built from pydantic fields: a variant's options, or a preset's main settings.

Reading the fields (type, bounds, description) instead of listing them by hand is what lets a
variant added later show its options (a super-resolution factor, a z factor) with no change to
the widgets. Values are validated by pydantic when they are used, not here.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any, Literal, Sequence

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QLineEdit, QSpinBox, QWidget

BIG = 1_000_000_000


def field_at(model: type[BaseModel], dotted: str) -> FieldInfo:
    """The field for a dotted key (``"train.iterations"``) of a nested pydantic model."""
    head, _, rest = dotted.partition(".")
    info = model.model_fields[head]
    if rest:
        return field_at(info.annotation, rest)
    return info


def _bounds(info: FieldInfo, default: tuple[float, float]) -> tuple[float, float]:
    lo, hi = default
    for m in info.metadata:
        if getattr(m, "ge", None) is not None:
            lo = m.ge
        if getattr(m, "gt", None) is not None:
            lo = m.gt
        if getattr(m, "le", None) is not None:
            hi = m.le
        if getattr(m, "lt", None) is not None:
            hi = m.lt
    return lo, hi


def _optional(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (annotation, False)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


class _Editor:
    """One field's widget with a uniform get/set."""

    def __init__(self, info: FieldInfo) -> None:
        annotation, self.optional = _optional(info.annotation)
        self.kind = "json"
        if annotation is bool:
            self.kind, self.widget = "bool", QCheckBox()
        elif typing.get_origin(annotation) is Literal:
            self.kind, self.widget = "choice", QComboBox()
            self.widget.addItems([str(a) for a in typing.get_args(annotation)])
            self.choices = list(typing.get_args(annotation))
        elif annotation is int:
            self.kind, self.widget = "int", QSpinBox()
            lo, hi = _bounds(info, (-BIG, BIG))
            self.widget.setRange(int(lo), int(min(hi, BIG)))
        elif annotation is float:
            self.kind, self.widget = "float", QDoubleSpinBox()
            lo, hi = _bounds(info, (-1e9, 1e9))
            self.widget.setDecimals(6)
            self.widget.setRange(float(lo), float(hi))
            if self.optional:  # the lowest value stands for "not set"
                self.widget.setSpecialValueText("not set")
        elif annotation is str:
            self.kind, self.widget = "str", QLineEdit()
        else:
            self.widget = QLineEdit()  # tuples, lists, dicts: edited as JSON
        self.widget.setToolTip(info.description or "")

    def get(self) -> Any:
        w = self.widget
        if self.kind == "bool":
            return w.isChecked()
        if self.kind == "choice":
            return self.choices[w.currentIndex()]
        if self.kind == "int":
            return w.value()
        if self.kind == "float":
            return None if self.optional and w.value() == w.minimum() else w.value()
        if self.kind == "str":
            return w.text()
        text = w.text().strip()
        try:
            return json.loads(text) if text else None
        except json.JSONDecodeError:
            return text  # pydantic refuses it with a message naming the key

    def set(self, value: Any) -> None:
        w = self.widget
        if self.kind == "bool":
            w.setChecked(bool(value))
        elif self.kind == "choice":
            w.setCurrentIndex(self.choices.index(value) if value in self.choices else 0)
        elif self.kind == "int":
            w.setValue(int(value))
        elif self.kind == "float":
            w.setValue(w.minimum() if value is None else float(value))
        elif self.kind == "str":
            w.setText(str(value))
        else:
            w.setText(json.dumps(value))

    def signal(self) -> Any:
        w = self.widget
        return {
            "bool": getattr(w, "toggled", None),
            "choice": getattr(w, "currentIndexChanged", None),
            "int": getattr(w, "valueChanged", None),
            "float": getattr(w, "valueChanged", None),
        }.get(self.kind, getattr(w, "editingFinished", None))


def _label(dotted: str) -> str:
    return dotted.rsplit(".", 1)[-1].replace("_", " ")


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _lookup(values: dict[str, Any], dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        node = node[part]
    return node


class OptionsForm(QWidget):
    """Editors for ``keys`` (dotted) of ``model``; all its fields when ``keys`` is None."""

    changed = Signal()

    def __init__(
        self,
        model: type[BaseModel],
        keys: Sequence[str] | None = None,
        values: dict[str, Any] | None = None,
        labels: dict[str, str] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.model = model
        self.keys = list(keys) if keys is not None else list(model.model_fields)
        layout = QFormLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.editors: dict[str, _Editor] = {}
        for key in self.keys:
            editor = _Editor(field_at(model, key))
            self.editors[key] = editor
            label = (labels or {}).get(key, _label(key))
            if not editor.widget.toolTip():  # a field without a description: its name in full
                editor.widget.setToolTip(f"{label[:1].upper()}{label[1:]} ({key})")
            layout.addRow(label, editor.widget)
            if editor.signal() is not None:
                editor.signal().connect(lambda *_: self.changed.emit())
        defaults = {}
        for key in self.keys:
            info = field_at(model, key)
            if not info.is_required():
                defaults[key] = info.get_default(call_default_factory=True)
        self.set_values(defaults)
        if values:
            self.set_from(values)

    def set_values(self, flat: dict[str, Any]) -> None:
        for key, value in flat.items():
            if key in self.editors:
                self.editors[key].set(value)

    def values(self) -> dict[str, Any]:
        """The edited values, nested like the model (``{"train": {"iterations": 100}}``)."""
        return _nest({key: ed.get() for key, ed in self.editors.items()})

    def set_from(self, values: dict[str, Any]) -> None:
        """Fill the editors from a nested dict (e.g. a preset's ``model_dump``)."""
        self.set_values({k: _lookup(values, k) for k in self.keys if _has(values, k)})

    def set_read_only(self, read_only: bool) -> None:
        for ed in self.editors.values():
            ed.widget.setEnabled(not read_only)


def _has(values: dict[str, Any], dotted: str) -> bool:
    try:
        _lookup(values, dotted)
    except (KeyError, TypeError):
        return False
    return True
