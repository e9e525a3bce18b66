"""Reading and writing EM images with their voxel size.

Every reader returns an :class:`Image`: a lazy (dask) or in-memory array and its voxel size in
the array's axis order, in micrometres. Writers never overwrite an input file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputError

UNIT = "um"


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


def _tiff_voxel(tf: Any, ndim: int) -> tuple[float, ...]:
    """Voxel size from ImageJ metadata ('spacing') and the XY resolution tags (pixels per unit)."""
    page = tf.pages[0]
    xy = []
    for tag in ("YResolution", "XResolution"):
        t = page.tags.get(tag)
        num, den = t.value if t is not None else (1, 1)
        xy.append(den / num if num else 1.0)
    unit_scale = 1.0
    ij = tf.imagej_metadata or {}
    unit = str(ij.get("unit", "um")).replace("\\u00B5", "u").replace("µ", "u").lower()
    if unit in ("nm", "nanometer"):
        unit_scale = 1e-3
    elif unit in ("mm", "millimeter"):
        unit_scale = 1e3
    elif unit in ("pixel", "") and "unit" in ij:
        unit_scale = 1.0
    if not ij:  # no ImageJ unit: resolution tags in inches/cm give no micrometres we can trust
        res_unit = page.tags.get("ResolutionUnit")
        if res_unit is not None and int(res_unit.value) == 3:  # centimetre
            unit_scale = 1e4
        elif res_unit is not None and int(res_unit.value) == 2:  # inch: typical of screenshots, ignore
            xy = [1.0, 1.0]
    yx = tuple(v * unit_scale for v in xy)
    if ndim == 2:
        return yx
    z = float(ij.get("spacing", 1.0)) * unit_scale
    return (z,) + yx


def read_tiff(path: Path) -> Image:
    import dask.array as da
    import tifffile

    try:
        tf = tifffile.TiffFile(path)
        series = tf.series[0]
        store = series.aszarr()
        import zarr

        arr = zarr.open(store, mode="r")
        if hasattr(arr, "shape") is False or isinstance(arr, zarr.Group):
            arr = arr["0"]
        data = da.from_zarr(arr)
        voxel = _tiff_voxel(tf, data.ndim)
    except (tifffile.TiffFileError, ValueError, OSError, KeyError, IndexError) as err:
        raise InputError(f"{path}: not a readable TIFF file ({err})") from None
    return Image(data, voxel, Path(path))


def read_image(path: str | Path) -> Image:
    """Open an image file lazily (TIFF here; other formats in :mod:`.formats` where available)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix.lower() in (".tif", ".tiff") else path.suffix.lower()
    if suffix.endswith((".tif", ".tiff")):
        return read_tiff(path)
    raise InputError(f"{path}: unsupported file type {path.suffix!r} (use TIFF)")


def write_tiff(path: str | Path, data: Any, voxel: Sequence[float], protect: Sequence[Path] = ()) -> Path:
    """Write a 2D/3D array as an ImageJ TIFF with its voxel size (µm); BigTIFF when large."""
    import tifffile

    path = Path(path)
    for p in protect:
        if p is not None and path.resolve() == Path(p).resolve():
            raise InputError(f"{path}: refusing to overwrite the input file")
    arr = np.asarray(data)
    voxel = tuple(float(v) for v in voxel)
    meta: dict[str, Any] = {"unit": "um"}
    if arr.ndim == 3:
        meta["spacing"] = voxel[0]
        meta["axes"] = "ZYX"
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    big = arr.nbytes > 3_900_000_000
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(
        path,
        arr,
        imagej=not big and arr.dtype in (np.uint8, np.uint16, np.float32),
        bigtiff=big,
        resolution=(1.0 / voxel[-1], 1.0 / voxel[-2]),
        metadata=meta,
        compression="zlib" if not big else None,
    )
    return path
