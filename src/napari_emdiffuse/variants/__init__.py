"""The four EMDiffuse variants, each a small :class:`~.base.Variant`; the registry lives here.

The widgets and the CLI read :data:`VARIANTS` (names, titles, option models), so a variant added
here appears everywhere without other changes. The registry also owns the check of what a
preset or a model asks of a variant (:func:`resolve`, :func:`model_options`) and writing its
options out (:func:`complete`): ``config`` and ``model_file`` know no variant, so loading a
preset imports none of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from ..errors import ConfigError, ModelFileError
from .base import Variant
from .denoise import Denoise
from .iso_a import IsoA
from .iso_i import IsoI
from .superres import SuperRes

if TYPE_CHECKING:
    from ..config import Preset
    from ..model_file import Model

VARIANTS: dict[str, Variant] = {v.name: v for v in (Denoise(), SuperRes(), IsoI(), IsoA())}


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ConfigError(f"unknown variant {name!r}; choose one of {sorted(VARIANTS)}") from None


def resolve(preset: "Preset", source: str | None = None) -> tuple[Variant, BaseModel]:
    """The preset's variant and its validated options; a bad name or option raises
    :class:`ConfigError` naming ``source`` (default: the preset's name) and the key."""
    try:
        variant = get_variant(preset.variant)
        return variant, variant.options(preset.variant_options)
    except ConfigError as err:
        key = "variant" if preset.variant not in VARIANTS else "variant_options"
        raise ConfigError(f"{source or f'preset {preset.name!r}'}: {key}: {err}") from None


def complete(preset: "Preset") -> "Preset":
    """``preset`` with every variant option written out, as a new model stores it: a later
    default cannot change what a stored model means."""
    _, options = resolve(preset)
    return preset.with_overrides({"variant_options": options.model_dump()})


def stored_options(preset: dict[str, Any]) -> tuple[Variant, BaseModel]:
    """The variant and validated options of a preset as a model.json stores it, read as the model
    reads it (:func:`..model_file.stored_preset`: an option added since then has the value it
    had before it existed), for showing a model without loading its weights."""
    from ..model_file import stored_preset  # torch: only where a model is read

    data = stored_preset(preset)
    variant = get_variant(data.get("variant"))
    return variant, variant.options(data.get("variant_options"))


def plain_options(preset: dict[str, Any]) -> list[str]:
    """What a stored model's variant options make it do, in words (:meth:`Variant.option_phrases`)."""
    variant, options = stored_options(preset)
    return variant.option_phrases(options)


def model_options(model: "Model") -> BaseModel:
    """A model's validated variant options; a bad variant or option in a model read from disk is
    a bad model file, named by its folder."""
    try:
        return resolve(model.preset)[1]
    except ConfigError as err:
        if not model.source:
            raise
        raise ModelFileError(f"{model.source}: {err}") from None
