"""napari reader: TIFF stacks, zarr / OME-Zarr and MRC files open lazily, with their voxel size.

The voxel size goes into the layer's ``scale`` and ``units``, so the scale bar, measurements and
the Enhance widget's output geometry are right from the start. Arrays stay lazy (dask), so a
volume larger than memory can be opened and browsed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import InputError

LayerData = tuple[Any, dict[str, Any], str]
TIFF_SUFFIXES = (".tif", ".tiff")
MRC_SUFFIXES = (".mrc", ".rec", ".st", ".ali", ".map")
#: OME-NGFF length units napari (pint) understands; anything else opens in pixels.
LENGTH_UNITS = {
    "angstrom", "nanometer", "micrometer", "millimeter", "centimeter", "meter",
    "picometer", "femtometer", "attometer", "kilometer", "inch", "foot", "mile", "yard",
}  # fmt: skip


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and (
        path.suffix.lower() == ".zarr" or any((path / m).is_file() for m in (".zgroup", ".zarray", "zarr.json"))
    )


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if _is_zarr(path):
        return "zarr"
    if path.is_file() and name.endswith(TIFF_SUFFIXES):
        return "tiff"
    if path.is_file() and name.endswith(MRC_SUFFIXES):
        return "mrc"
    return None


def get_reader(path: str | Sequence[str]) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader hook: a reader function if every path is a TIFF, zarr or MRC file, else None."""
    paths = [Path(p) for p in ([path] if isinstance(path, (str, Path)) else path)]
    if not paths or any(_kind(p) is None for p in paths):
        return None
    return read_paths


def read_paths(path: str | Sequence[str]) -> list[LayerData]:
    """Layers for one path or several (one or more layers per file)."""
    paths = [Path(p) for p in ([path] if isinstance(path, (str, Path)) else path)]
    layers: list[LayerData] = []
    for p in paths:
        kind = _kind(p)
        if kind == "tiff":
            layers.append(read_tiff_layer(p))
        elif kind == "mrc":
            layers.append(read_mrc_layer(p))
        elif kind == "zarr":
            layers.extend(read_zarr_layers(p))
        else:
            raise InputError(f"{p}: not a TIFF, zarr or MRC file")
    return layers


def geometry_kwargs(voxel: Sequence[float] | None, unit: str = "micrometer", translate: Sequence[float] | None = None) -> dict[str, Any]:
    """Layer keyword arguments for a voxel size; no voxel size means pixel units."""
    if voxel is None:
        return {}
    out: dict[str, Any] = {"scale": tuple(float(v) for v in voxel), "units": (unit,) * len(voxel)}
    if translate is not None:
        out["translate"] = tuple(float(t) for t in translate)
    return out


def read_tiff_layer(path: Path) -> LayerData:
    """A TIFF stack as a lazy layer; uncalibrated files (voxel 1 in every axis) open in pixels."""
    from .data.io import read_tiff

    image = read_tiff(path)
    voxel = image.voxel if any(v != 1.0 for v in image.voxel) else None
    kwargs = {"name": path.name.split(".")[0], **geometry_kwargs(voxel)}
    return image.data, kwargs, "image"


def read_mrc_layer(path: Path) -> LayerData:
    """An MRC file memory-mapped read-only; the voxel size in its header (Å) becomes micrometres."""
    import dask.array as da
    import mrcfile

    try:
        with mrcfile.mmap(str(path), mode="r", permissive=True) as mrc:
            if mrc.data is None:
                raise InputError(f"{path}: the MRC file holds no image data")
            dtype, shape, offset = mrc.data.dtype, mrc.data.shape, mrc.data.offset
            vs = mrc.voxel_size
            voxel_xyz = (float(vs.x), float(vs.y), float(vs.z))
    except (ValueError, OSError) as err:
        raise InputError(f"{path}: not a readable MRC file ({err})") from None
    data = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    zyx = voxel_xyz[::-1][-len(shape) :]
    voxel = tuple(v * 1e-4 for v in zyx) if all(v > 0 for v in zyx) else None
    chunks = (1,) * (len(shape) - 2) + tuple(shape[-2:])
    return da.from_array(data, chunks=chunks), {"name": path.stem, **geometry_kwargs(voxel)}, "image"


def _ngff_geometry(transforms: list[dict[str, Any]] | None, ndim: int) -> tuple[list[float], list[float]]:
    scale, translate = [1.0] * ndim, [0.0] * ndim
    for t in transforms or []:
        if t.get("type") == "scale":
            scale = [a * float(b) for a, b in zip(scale, t["scale"])]
        elif t.get("type") == "translation":
            translate = [a + float(b) for a, b in zip(translate, t["translation"])]
    return scale, translate


def _read_ome(root: Any, path: Path, multiscales: dict[str, Any]) -> list[LayerData]:
    """The first multiscale image of an OME-Zarr group (NGFF 0.4 or 0.5), as one (pyramid) layer."""
    import dask.array as da

    datasets = multiscales["datasets"]
    levels = [da.from_zarr(root[d["path"]]) for d in datasets]
    ndim = levels[0].ndim
    axes = multiscales.get("axes") or [{"name": n} for n in "tczyx"[-ndim:]]
    axes = [a if isinstance(a, dict) else {"name": a} for a in axes]
    scale, translate = _ngff_geometry(datasets[0].get("coordinateTransformations"), ndim)
    outer_scale, outer_translate = _ngff_geometry(multiscales.get("coordinateTransformations"), ndim)
    scale = [a * b for a, b in zip(scale, outer_scale)]
    translate = [a * s + b for a, s, b in zip(translate, outer_scale, outer_translate)]
    units = [a.get("unit") if a.get("unit") in LENGTH_UNITS else "pixel" for a in axes]
    kwargs: dict[str, Any] = {
        "name": multiscales.get("name") or path.name.split(".")[0],
        "scale": tuple(scale),
        "translate": tuple(translate),
        "units": tuple(units),
        "axis_labels": tuple(a.get("name", f"axis {i}") for i, a in enumerate(axes)),
    }
    channel = [i for i, a in enumerate(axes) if a.get("type") == "channel"]
    if channel and levels[0].shape[channel[0]] > 1:
        c = channel[0]
        kwargs["channel_axis"] = c
        for key in ("scale", "translate", "units", "axis_labels"):
            kwargs[key] = tuple(v for i, v in enumerate(kwargs[key]) if i != c)
    elif channel:
        c = channel[0]
        levels = [lv.squeeze(axis=c) for lv in levels]
        for key in ("scale", "translate", "units", "axis_labels"):
            kwargs[key] = tuple(v for i, v in enumerate(kwargs[key]) if i != c)
    kwargs["multiscale"] = len(levels) > 1
    return [(levels if len(levels) > 1 else levels[0], kwargs, "image")]


def read_zarr_layers(path: Path) -> list[LayerData]:
    """OME-Zarr (first image), a single zarr array, or every array of a plain zarr group.

    A plain group written by ``emdiffuse predict`` (arrays ``mean``, ``std``, ``samples``) keeps
    its voxel size in the ``voxel_size`` attribute (µm); ``std`` opens as an uncertainty map.
    """
    import dask.array as da
    import zarr

    try:
        root = zarr.open(str(path), mode="r")
    except Exception as err:  # noqa: BLE001 - zarr raises many types for an unreadable store
        raise InputError(f"{path}: not a readable zarr store ({err})") from None
    stem = path.name.split(".")[0]
    if not hasattr(root, "members"):  # a bare array
        attrs = dict(root.attrs)
        return [(da.from_zarr(root), {"name": stem, **geometry_kwargs(attrs.get("voxel_size"))}, "image")]
    attrs = dict(root.attrs)
    ome = attrs.get("ome", attrs)
    if ome.get("multiscales"):
        return _read_ome(root, path, ome["multiscales"][0])
    voxel = attrs.get("voxel_size")
    layers: list[LayerData] = []
    for name, arr in sorted(root.arrays()):
        data = da.from_zarr(arr)
        v = voxel if voxel is not None and len(voxel) == data.ndim else None
        if name == "samples" and v is not None:
            v = [1.0, *v]
        kwargs = {"name": f"{stem} {name}", **geometry_kwargs(v)}
        if name == "samples" and v is not None:
            kwargs["units"] = ("pixel", *kwargs["units"][1:])
        if name == "std":
            kwargs.update(name=f"{stem} uncertainty", colormap="inferno")
        layers.append((data, kwargs, "image"))
    if not layers:
        raise InputError(f"{path}: the zarr group holds no arrays")
    return layers
