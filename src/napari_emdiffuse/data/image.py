"""An image and its voxel size, read lazily: what every reader returns.

The lowest floor of the readers (:mod:`.formats` beside it; :mod:`.tiff`, :mod:`.containers`,
:mod:`.volume_files` and :mod:`.io` above): it imports none of them, so the readers form a
chain, not a circle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import InputError

UNIT = "um"
#: micrometres per unit, for the spellings found in ImageJ, OME and NGFF metadata
UNITS_UM = {
    "um": 1.0, "µm": 1.0, "µ": 1.0, "u": 1.0, "micron": 1.0, "micrometer": 1.0, "micrometre": 1.0,
    "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3, "a": 1e-4, "å": 1e-4, "angstrom": 1e-4,
    "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3, "cm": 1e4, "centimeter": 1e4, "centimetre": 1e4, "m": 1e6, "meter": 1e6, "metre": 1e6,
    "pm": 1e-6, "picometer": 1e-6, "picometre": 1e-6,
    # the plurals some writers use (ImageJ's "microns")
    "microns": 1.0, "micrometers": 1.0, "micrometres": 1.0, "nanometers": 1e-3, "nanometres": 1e-3, "angstroms": 1e-4,
    "millimeters": 1e3, "millimetres": 1e3, "centimeters": 1e4, "centimetres": 1e4, "meters": 1e6, "metres": 1e6,
    "picometers": 1e-6, "picometres": 1e-6,
}  # fmt: skip


@dataclass
class Image:
    data: Any  # numpy or dask array, (y, x) or (z, y, x)
    voxel: tuple[float, ...]  # per axis, micrometres
    path: Path | None = None
    unit: str = UNIT
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


def unit_to_um(unit: str | None) -> float | None:
    """Micrometres per ``unit`` (None when the unit is unknown or 'pixel')."""
    if unit is None:
        return None
    text = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), str(unit))  # ImageJ writes "\\u00B5m" for "µm"
    return UNITS_UM.get(text.strip().lower().replace("\u03bc", "\u00b5"))  # the Greek mu as the micro sign


def known_pixel_um(voxel: Sequence[float]) -> float | None:
    """The x pixel size in µm of a voxel size in µm, or None where it is unknown: a file without
    a pixel size reads as 1 µm per pixel and napari's default scale is 1, and no EM image has
    pixels of exactly 1 µm."""
    if len(voxel) == 0 or not np.isfinite(voxel[-1]) or voxel[-1] <= 0 or float(voxel[-1]) == 1.0:
        return None
    return float(voxel[-1])


def coarsened(voxel: Sequence[float], factor: float) -> tuple[float, ...]:
    """A voxel size coarser in y and x by ``factor``: a super-resolution input's, simulated from
    clean images of ``voxel``. One without a pixel size (1 per pixel) stays without one, never a
    size scaled from the placeholder (2 µm for 2x), which :func:`known_pixel_um` would take as measured."""
    if known_pixel_um(voxel) is None:
        return tuple(voxel)
    return (*voxel[:-2], *(float(v) * factor for v in voxel[-2:]))


def recorded_sampling(value: Any, ndim: int) -> tuple[float, ...] | None:
    """A file's recorded ``sampling`` as one number per axis of its ``ndim`` axes (1 on leading
    axes it leaves out: a result's samples), or None where it is no list of at most ``ndim``
    positive numbers (a string's digits are none). Where no pixel size is known, a prediction
    records each output pixel's size in its input's pixels (0.5 for 2x super-resolution) and
    napari's writer a layer's pixel in the pixels of the world it lay in (a z spacing of 5 set
    without units), per axis. The one reading of it, the napari reader's and ``emdiffuse info``'s."""
    try:
        factors = tuple(float(f) for f in value) if isinstance(value, (list, tuple)) else ()
    except (TypeError, ValueError):
        return None
    if not factors or len(factors) > ndim or not all(np.isfinite(f) and f > 0 for f in factors):
        return None
    return (1.0,) * (ndim - len(factors)) + factors


class _Guarded:
    """An array whose reads fail with an :class:`InputError` naming its file: a corrupt chunk
    deep inside a large file is found only when the computation reaches it."""

    def __init__(self, array: Any, path: Path) -> None:
        self.array, self.path = array, path
        self.shape, self.dtype, self.ndim = tuple(array.shape), np.dtype(array.dtype), len(array.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return np.asarray(self.array[key])
        except InputError:
            raise
        except MemoryError:
            raise InputError(f"{self.path}: not enough memory to read a chunk of it") from None
        except Exception as err:  # noqa: BLE001 - decoders raise anything on corrupt data
            raise InputError(f"{self.path}: cannot read its pixel data, the file is corrupt ({type(err).__name__}: {' '.join(str(err).split())})") from None


def lazy(array: Any, path: Path, chunks: Any = None) -> Any:
    """A dask array over ``array`` (zarr, h5py, numpy) read chunk by chunk, errors naming ``path``."""
    import dask.array as da

    guarded = _Guarded(array, path)
    chunks = chunks or getattr(array, "chunks", None) or guarded.shape
    return da.from_array(guarded, chunks=chunks, name=False, asarray=False, meta=np.empty((0,) * guarded.ndim, guarded.dtype))


def iter_planes(data: Any) -> Iterator[np.ndarray]:
    """Planes of a 2D or 3D (lazy) array, one at a time."""
    if data.ndim == 2:
        yield np.asarray(data)
        return
    for z in range(data.shape[0]):
        yield np.asarray(data[z])
