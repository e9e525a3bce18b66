"""Bundled default models (shipped inside the package) and looking a model up by name or path."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Callable

from .errors import ModelFileError
from .model_file import MODEL_JSON, Model, in_nm


def bundled_models() -> dict[str, Path]:
    """Names and folders of the models shipped with the package."""
    root = resources.files("napari_emdiffuse") / "models"
    if not root.is_dir():
        return {}
    return {p.name: Path(str(p)) for p in root.iterdir() if (Path(str(p)) / MODEL_JSON).is_file()}


def describe_model(folder: Path, plain_options: Callable[[dict[str, Any]], list[str]]) -> str:
    """One line about a model folder (variant, training steps, the pixel size of the inputs it
    learnt from where recorded, what its options make it do, card title), from its JSON only.
    ``plain_options`` words the options from the stored preset (``variants.plain_options``,
    which this layer below the variants cannot import)."""
    import json

    meta = json.loads((Path(folder) / MODEL_JSON).read_text())
    training = meta.get("training", {})
    pixel = f"  inputs {in_nm(training['pixel_size_um'])}" if training.get("pixel_size_um") else ""
    phrases = plain_options(meta["preset"])
    does = f"{'; '.join(phrases)}  " if phrases else ""
    card = meta.get("card", "")
    title = card.splitlines()[0].split(": ", 1)[-1] if card else meta["preset"].get("name", "")
    return f"{meta['variant']:<9}{training.get('steps', '?'):>6} steps{pixel}  {does}{title}"


def find_model(name_or_path: str | Path) -> Path:
    """The folder of a bundled model by name, or a model folder by path: the one lookup every
    command and widget uses, so a name means the same model everywhere."""
    bundled = bundled_models()
    if str(name_or_path) in bundled:
        return bundled[str(name_or_path)]
    path = Path(name_or_path)
    if not path.exists():
        names = ", ".join(sorted(bundled)) or "none installed"
        raise ModelFileError(f"{name_or_path}: no such model folder, and no bundled model of that name (bundled: {names})")
    return path


def model_record(name_or_path: str | Path) -> str:
    """How an output records the model it was made with: a bundled model by its name, a model
    folder by its full path (as the input is recorded), so that ``info`` names it from anywhere."""
    folder = find_model(name_or_path)
    return str(name_or_path) if folder == bundled_models().get(str(name_or_path)) else str(folder.resolve())


def resolve_model(name_or_path: str | Path) -> Model:
    """Load a bundled model by name, or a model folder by path (:func:`find_model`)."""
    return Model.load(find_model(name_or_path))
