"""napari writers: an image layer to OME-Zarr or to a TIFF, with its voxel size.

The files are written by :mod:`napari_emdiffuse.data` (plane by plane or chunk by chunk, so
large lazy layers are never loaded whole); this module records the layer's ``scale``,
``units`` and ``translate`` as Enhance records a layer's (a voxel size in µm where the units say
how, else none and the ``sampling`` that places the file where the layer lay), and refuses to
replace a folder that is not a zarr store.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Sequence

from .data.containers import PROVENANCE
from .data.image import known_pixel_um
from .errors import InputError

#: OME-Zarr pyramid levels are added (each half the size in y and x) while the smaller side of
#: the last level is at least this many pixels, so large volumes browse quickly.
PYRAMID_MIN_SIDE = 1024


def _full_resolution(data: Any) -> Any:
    """Level 0 of a multiscale layer's list of arrays; the array itself otherwise."""
    return data[0] if isinstance(data, (list, tuple)) else data


def _recorded(meta: dict[str, Any], ndim: int) -> tuple[tuple[float, ...], tuple[float, ...], dict[str, Any]]:
    """What a file of the layer records, by the rule Enhance follows too (:class:`._widgets.layers.Placement`):
    its voxel size in µm (1 where it is not known), its first pixel's position (µm; else in its own
    pixels) and a record for our reader: where no pixel size is known, the ``sampling`` that lays
    the layer where it lay (a z spacing set without units, a result at 0.5 of its input's pixels)."""
    from ._widgets.layers import Placement

    where = Placement.from_kwargs(meta, ndim)
    sampling = where.sampling()
    return where.voxel_um(), where.position_um(where.translate), ({"sampling": list(sampling)} if any(f != 1.0 for f in sampling) else {})


def _check(data: Any, meta: dict[str, Any], what: str, path: str) -> Any:
    """The layer's full-resolution array, or a one-line refusal of what a file of it cannot hold:
    colour, other than 2 or 3 dimensions, a mirror (a negative scale: the pixels would be written
    unmirrored and reopen elsewhere; a pixel size in it would be lost)."""
    arr = _full_resolution(data)
    if meta.get("rgb"):
        raise InputError(f"{what} export is for grey-scale EM images; this layer is RGB")
    if arr.ndim not in (2, 3):
        raise InputError(f"{what} export takes 2D images and 3D stacks; this layer has {arr.ndim} dimensions")
    from ._widgets.layers import Placement

    refusal = Placement.from_kwargs(meta, arr.ndim).mirror_refusal(meta.get("name", ""), "a file cannot record", "save again")
    if refusal:
        raise InputError(f"{path}: not written: {refusal}")
    return arr


def _window(meta: dict[str, Any]) -> tuple[float, float] | None:
    limits = meta.get("contrast_limits")
    return (float(limits[0]), float(limits[1])) if limits is not None and len(limits) == 2 else None


def write_tiff(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """An image layer as a TIFF with the voxel size in µm (none for a layer without one, whose
    ``sampling`` the provenance keeps), the position of its first pixel and its contrast limits
    (ImageJ origin and display range)."""
    from .data.io import write_tiff as write_calibrated

    arr = _check(data, meta, "TIFF", path)
    voxel, origin, record = _recorded(meta, arr.ndim)
    # the OME-TIFF form (other dtypes, over 4 GB, or asked for by the name .ome.tif) has no ImageJ
    # origin, and reads a stack of one slice as an image: the reader takes both from here (a z axis
    # where the origin has one)
    if any(origin) or arr.shape[:-2] == (1,):
        record["origin"] = list(origin)
    window = _window(meta)
    if window is not None:  # nor ImageJ's display range
        record["display_range"] = list(window)
    write_calibrated(path, arr, voxel, origin=origin, display_range=window, provenance=record or None)
    return [str(path)]


def _pyramid_levels(shape: Sequence[int]) -> int:
    levels, side = 1, min(shape[-2:])
    while side // 2 >= PYRAMID_MIN_SIDE:
        side //= 2
        levels += 1
    return levels


def write_ome_zarr(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """An image layer as OME-Zarr (NGFF 0.4) with scale, translation and units (none for a layer
    without a pixel size, whose ``sampling`` the ``provenance`` attribute keeps)."""
    import zarr

    from .data.containers import write_ome_zarr as write_container
    from .data.safe_output import own_attrs, swap_in

    arr = _check(data, meta, "OME-Zarr", path)
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
    voxel, origin, record = _recorded(meta, arr.ndim)
    write_container(target, arr, voxel, levels=_pyramid_levels(arr.shape))
    group = zarr.open_group(str(target), mode="r+")
    multiscales = group.attrs["multiscales"]
    if known_pixel_um(voxel) is None:  # a layer in pixels: say so, rather than claim micrometres
        for axis in multiscales[0]["axes"]:
            axis.pop("unit", None)
    if record:
        group.attrs[PROVENANCE] = record
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
