"""napari writers: an image layer to OME-Zarr or to a TIFF, with its voxel size.

The files are written by :mod:`napari_emdiffuse.data` (plane by plane or chunk by chunk, so
large lazy layers are never loaded whole); this module converts the layer's ``scale`` and
``units`` to a voxel size in µm, keeps its ``translate`` in the OME-Zarr metadata, and refuses
to replace a folder that is not a zarr store.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Sequence


from .errors import InputError

#: OME-Zarr pyramid levels are added (each half the size in y and x) while the smaller side of
#: the last level is at least this many pixels, so large volumes browse quickly.
PYRAMID_MIN_SIDE = 1024


def _full_resolution(data: Any) -> Any:
    """Level 0 of a multiscale layer's list of arrays; the array itself otherwise."""
    return data[0] if isinstance(data, (list, tuple)) else data


def _voxel_um(meta: dict[str, Any], ndim: int) -> tuple[float, ...] | None:
    """The layer's voxel size in µm, or None when an axis has no length unit (e.g. pixels)."""
    import pint

    scale = meta.get("scale") or [1.0] * ndim
    units = meta.get("units") or ["pixel"] * ndim
    ureg = pint.get_application_registry()
    try:
        return tuple(float((s * ureg(str(u))).to("micrometer").magnitude) for s, u in zip(scale, units))
    except (pint.errors.DimensionalityError, pint.errors.UndefinedUnitError, AttributeError):
        return None


def _check(data: Any, meta: dict[str, Any], what: str) -> Any:
    arr = _full_resolution(data)
    if meta.get("rgb"):
        raise InputError(f"{what} export is for grey-scale EM images; this layer is RGB")
    if arr.ndim not in (2, 3):
        raise InputError(f"{what} export takes 2D images and 3D stacks; this layer has {arr.ndim} dimensions")
    return arr


def _origin_um(meta: dict[str, Any], voxel: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    """The layer's ``translate`` (the first pixel's position) in µm, or in pixels for a layer in pixels."""
    translate = [float(t) for t in (meta.get("translate") or [0.0] * ndim)]
    if voxel is None:
        return tuple(translate)
    return tuple(t * v / s for t, v, s in zip(translate, voxel, meta.get("scale") or [1.0] * ndim))


def _window(meta: dict[str, Any]) -> tuple[float, float] | None:
    limits = meta.get("contrast_limits")
    return (float(limits[0]), float(limits[1])) if limits is not None and len(limits) == 2 else None


def write_tiff(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """An image layer as a TIFF with the voxel size in µm (pixels for pixel-unit layers), the
    position of its first pixel and its contrast limits (ImageJ origin and display range)."""
    from .data.io import write_tiff as write_calibrated

    arr = _check(data, meta, "TIFF")
    voxel = _voxel_um(meta, arr.ndim)
    write_calibrated(path, arr, voxel or (1.0,) * arr.ndim, origin=_origin_um(meta, voxel, arr.ndim), display_range=_window(meta))
    return [str(path)]


def _pyramid_levels(shape: Sequence[int]) -> int:
    levels, side = 1, min(shape[-2:])
    while side // 2 >= PYRAMID_MIN_SIDE:
        side //= 2
        levels += 1
    return levels


def write_ome_zarr(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """An image layer as OME-Zarr (NGFF 0.4) with scale, translation and units."""
    import zarr

    from .data.containers import write_ome_zarr as write_container
    from .data.safe_output import own_attrs, swap_in

    arr = _check(data, meta, "OME-Zarr")
    final = Path(path)
    if final.exists():  # napari asked the user before overwriting; never delete other folders
        if not final.is_dir() or not any((final / m).exists() for m in (".zgroup", ".zattrs", "zarr.json")):
            raise InputError(f"{final} exists and is not a zarr store; choose another name")
    # Write beside the target and swap at the end: the layer may be reading lazily from ``final``.
    target = final.with_name(f".{final.name}.writing")
    if target.exists():  # an earlier write that did not finish, unless the user owns that name
        if target.is_symlink() or not target.is_dir() or (any(target.iterdir()) and own_attrs(target) is None):
            raise InputError(f"{target} exists and is not an unfinished store of ours; move it away and save again")
        shutil.rmtree(target)
    voxel = _voxel_um(meta, arr.ndim)
    write_container(target, arr, voxel or (1.0,) * arr.ndim, levels=_pyramid_levels(arr.shape))
    group = zarr.open_group(str(target), mode="r+")
    multiscales = group.attrs["multiscales"]
    if voxel is None:  # a layer in pixels: say so, rather than claim micrometres
        for axis in multiscales[0]["axes"]:
            axis.pop("unit", None)
    origin = _origin_um(meta, voxel, arr.ndim)
    if any(origin):
        for ds in multiscales[0]["datasets"]:
            ds["coordinateTransformations"].append({"type": "translation", "translation": list(origin)})
    multiscales[0]["name"] = str(meta.get("name", final.stem))
    group.attrs["multiscales"] = multiscales
    window = _window(meta)
    if window is not None:  # NGFF 0.4's display settings, which napari-ome-zarr and Fiji read too
        group.attrs["omero"] = {
            "channels": [{"label": multiscales[0]["name"], "color": "FFFFFF", "active": True,
                          "window": {"start": window[0], "end": window[1], "min": window[0], "max": window[1]}}],
            "rdefs": {"model": "greyscale"},
        }  # fmt: skip
    swap_in(target, final)  # the old store is removed only once the new one is in place
    return [str(path)]
