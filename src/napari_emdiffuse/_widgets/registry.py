"""Models and presets known to this napari session, shared by the widgets.

A model trained or loaded in the Train widget, and a preset edited in the Presets widget, must
appear at once in the other widgets: they all read these registries and listen to ``changed``.
Bundled models are always listed first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psygnal import Signal


@dataclass(frozen=True)
class ModelEntry:
    """A model folder and what the widgets show about it (read from its ``model.json``)."""

    name: str
    path: Path
    variant: str
    source: str  # "bundled" | "trained" | "disk" | "imported"
    description: str = ""

    @property
    def label(self) -> str:
        return f"{self.name} ({self.source})"


def describe(meta: dict[str, Any]) -> str:
    """One line about a model for the widgets: what its options make it do (in words, not option
    names), training length, validation PSNR and its baseline's on the same patches."""
    from ..variants import plain_options

    parts = plain_options(meta["preset"])
    training = meta.get("training") or {}
    if training.get("steps") is not None:
        parts.append(f"{training['steps']} training steps")
    metrics = meta.get("metrics") or {}
    psnr, base = metrics.get("val_psnr"), metrics.get("val_baseline_psnr")
    if psnr is not None:  # beside its baseline on the same patches: a figure alone says little
        against = f" ({metrics.get('val_baseline', 'baseline')} {base:.1f} dB)" if base is not None else ""
        parts.append(f"validation PSNR {psnr:.1f} dB{against}")
    return "; ".join(parts)


class ModelRegistry:
    """Bundled models plus those trained or loaded in this session."""

    changed = Signal()

    def __init__(self) -> None:
        self._session: dict[Path, ModelEntry] = {}

    def entries(self, variant: str | None = None) -> list[ModelEntry]:
        from ..model_file import read_model_json
        from ..models import bundled_models

        out = []
        for name, folder in sorted(bundled_models().items()):
            meta = read_model_json(folder)
            out.append(ModelEntry(name, folder, meta["variant"], "bundled", describe(meta)))
        out += list(self._session.values())
        return [e for e in out if variant is None or e.variant == variant]

    def add(self, folder: str | Path, source: str = "disk", name: str | None = None) -> ModelEntry:
        """Register a model folder; re-adding replaces it.

        The whole model is loaded once here (description, weights, their match with the
        network, its variant options), so a broken folder is refused when the user loads it, not
        at Enhance.
        """
        from ..model_file import Model, read_model_json
        from ..variants import model_options

        folder = Path(folder).resolve()
        meta = read_model_json(folder)
        model_options(Model.load(folder))
        entry = ModelEntry(name or folder.name, folder, meta["variant"], source, describe(meta))
        self._session[folder] = entry
        self.changed.emit()
        return entry

    def remove(self, folder: str | Path) -> None:
        """Forget a model loaded or trained in this session (its folder stays on disk)."""
        if self._session.pop(Path(folder).resolve(), None) is not None:
            self.changed.emit()

    def clear(self) -> None:
        self._session.clear()
        self.changed.emit()


class PresetRegistry:
    """Presets edited in this session (the Presets widget's "Use for training")."""

    changed = Signal()

    def __init__(self) -> None:
        self._presets: dict[str, Any] = {}

    def items(self) -> dict[str, Any]:
        return dict(self._presets)

    def add(self, preset: Any) -> None:
        self._presets[preset.name] = preset
        self.changed.emit()

    def clear(self) -> None:
        self._presets.clear()
        self.changed.emit()


MODELS = ModelRegistry()
PRESETS = PresetRegistry()
