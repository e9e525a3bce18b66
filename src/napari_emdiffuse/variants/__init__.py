"""The four EMDiffuse variants, each a small :class:`~.base.Variant`; the registry lives here.

The widgets and the CLI read :data:`VARIANTS` (names, titles, option models), so a variant added
here appears everywhere without other changes.
"""

from __future__ import annotations

from .base import Variant
from .denoise import Denoise
from .iso_a import IsoA
from .iso_i import IsoI
from .superres import SuperRes

VARIANTS: dict[str, Variant] = {v.name: v for v in (Denoise(), SuperRes(), IsoI(), IsoA())}


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; choose one of {sorted(VARIANTS)}") from None
