"""napari writers: an image layer to OME-Zarr or to an ImageJ TIFF, with its voxel size.

The layer's ``scale`` and ``units`` are written so that the file reopens (here, in Fiji or in
any OME-Zarr viewer) at the right physical size. Large (dask or zarr backed) layers are
written plane by plane into OME-Zarr, never loaded whole.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import InputError

AXIS_NAMES = {2: "yx", 3: "zyx", 4: "tzyx", 5: "tczyx"}


def _full_resolution(data: Any) -> Any:
    """Level 0 of a multiscale layer's list of arrays; the array itself otherwise."""
    return data[0] if isinstance(data, (list, tuple)) else data


def _units(meta: dict[str, Any], ndim: int) -> list[str]:
    units = meta.get("units") or ("pixel",) * ndim
    return [str(u) for u in units]


def _to_micrometres(scale: Sequence[float], units: Sequence[str]) -> tuple[float, ...] | None:
    """The voxel size in µm, or None when an axis has no length unit (e.g. pixels)."""
    import pint

    ureg = pint.get_application_registry()
    out = []
    for s, u in zip(scale, units):
        try:
            out.append(float((s * ureg(u)).to("micrometer").magnitude))
        except (pint.errors.DimensionalityError, pint.errors.UndefinedUnitError, AttributeError):
            return None
    return tuple(out)


def write_tiff(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """An image layer as an ImageJ TIFF (zlib), with the voxel size in µm when the layer has one."""
    import tifffile

    from .data.io import write_tiff as write_calibrated

    arr = np.asarray(_full_resolution(data))
    if arr.ndim not in (2, 3) and not meta.get("rgb"):
        raise InputError(f"TIFF export takes 2D images and 3D stacks; this layer has {arr.ndim} dimensions (use OME-Zarr)")
    scale = list(meta.get("scale") or [1.0] * arr.ndim)
    voxel = None if meta.get("rgb") else _to_micrometres(scale, _units(meta, arr.ndim))
    if voxel is not None:
        write_calibrated(path, arr, voxel)
    else:
        tifffile.imwrite(path, arr, photometric="rgb" if meta.get("rgb") else "minisblack", compression="zlib")
    return [str(path)]


def _axes(ndim: int, units: Sequence[str]) -> list[dict[str, str]]:
    if ndim not in AXIS_NAMES:
        raise InputError(f"OME-Zarr holds 2 to 5 dimensions; this layer has {ndim}")
    axes = []
    for name, unit in zip(AXIS_NAMES[ndim], units):
        kind = "space" if name in "zyx" else ("time" if name == "t" else "channel")
        axis = {"name": name, "type": kind}
        if kind == "space" and unit != "pixel":
            axis["unit"] = unit
        axes.append(axis)
    return axes


def _open_new_group(path: Path) -> Any:
    """A fresh zarr (format 2, as NGFF 0.4 expects) group; an existing zarr store is replaced,
    anything else at the path is left alone."""
    import zarr

    if path.exists():
        if not path.is_dir() or not any((path / m).exists() for m in (".zgroup", ".zattrs", "zarr.json")):
            raise InputError(f"{path} exists and is not a zarr store; choose another name")
        shutil.rmtree(path)
    try:
        return zarr.open_group(str(path), mode="w", zarr_format=2)
    except TypeError:  # zarr 2 has no zarr_format and writes format 2
        return zarr.open_group(str(path), mode="w")


def write_ome_zarr(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """An image layer as OME-Zarr (NGFF 0.4, one resolution level), with scale, translation and units."""
    if meta.get("rgb"):
        raise InputError("RGB layers cannot be written as OME-Zarr here; save them as TIFF")
    arr = _full_resolution(data)
    ndim = arr.ndim
    units = _units(meta, ndim)
    axes = _axes(ndim, units)
    scale = [float(s) for s in (meta.get("scale") or [1.0] * ndim)]
    translate = [float(t) for t in (meta.get("translate") or [0.0] * ndim)]
    group = _open_new_group(Path(path))
    chunks = (1,) * (ndim - 2) + tuple(min(s, 512) for s in arr.shape[-2:])
    create = getattr(group, "create_array", None) or group.zeros  # zarr 3 / zarr 2 (zeros in zarr 3 writes format 3)
    target = create(name="0", shape=tuple(arr.shape), dtype=np.dtype(arr.dtype), chunks=chunks)
    for index in np.ndindex(*arr.shape[:-2]):  # plane by plane: bounded memory for lazy layers
        target[index] = np.asarray(arr[index])
    transforms: list[dict[str, Any]] = [{"type": "scale", "scale": scale}]
    if any(translate):
        transforms.append({"type": "translation", "translation": translate})
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "name": str(meta.get("name", "image")),
            "axes": axes,
            "datasets": [{"path": "0", "coordinateTransformations": transforms}],
        }
    ]
    return [str(path)]
