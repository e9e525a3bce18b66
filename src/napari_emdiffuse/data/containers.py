"""Chunked containers: zarr (v2 and v3), OME-Zarr (NGFF 0.4 and 0.5) and N5.

These hold the volumes of hundreds of gigabytes that volume EM produces; everything here is
lazy (dask over the container's own chunks). OME-Zarr is written as NGFF 0.4 on zarr v2, the
version Fiji, napari-ome-zarr, neuroglancer and webKnossos all read, and can be filled tile by
tile (:func:`create_ome_zarr`), so an output never has to fit in memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from .image import Image, lazy, unit_to_um
from .safe_output import CREATED_BY, SOFTWARE, StagedStore, check_new_output, refuse_overwrite

NGFF_VERSION = "0.4"
#: an OME-Zarr image's attribute holding our record beside its pixels (what a TIFF's provenance
#: tag holds: napari's writer's ``sampling`` of a layer without a pixel size), read into
#: ``Image.meta["provenance"]`` for an image we wrote
PROVENANCE = "provenance"


def container_kind(folder: Path) -> str | None:
    """'zarr', 'n5' or None (a plain folder, e.g. of slices)."""
    if any((folder / name).is_file() for name in (".zarray", ".zgroup", "zarr.json")):
        return "zarr"
    attrs = folder / "attributes.json"
    if attrs.is_file() or folder.suffix.lower() == ".n5":
        return "n5"
    return None


def _zarr_root(folder: Path) -> Path:
    """The outermost folder above ``folder`` that is still part of the same zarr hierarchy."""
    root = folder
    while container_kind(root.parent) == "zarr" and root.parent != root:
        root = root.parent
    return root


def _multiscales(attrs: dict[str, Any]) -> list[dict[str, Any]] | None:
    """NGFF multiscales metadata: 0.5 nests it under "ome", 0.4 and earlier keep it at the top."""
    ome = attrs.get("ome")
    if isinstance(ome, dict) and "multiscales" in ome:
        return ome["multiscales"]
    ms = attrs.get("multiscales")
    return ms if isinstance(ms, list) else None


def _scale_of(transforms: list[dict[str, Any]] | None, ndim: int, folder: Path) -> np.ndarray:
    """The product of the ``scale`` transformations, each one number per axis."""
    scale = np.ones(ndim)
    for t in transforms or []:
        if isinstance(t, dict) and t.get("type") == "scale":
            try:
                values = np.asarray(t.get("scale"), float)
            except (TypeError, ValueError):
                raise _malformed(folder, "a 'scale' transformation holds something other than numbers") from None
            if values.shape != (ndim,):
                raise _malformed(folder, f"a 'scale' transformation has {values.size} values for {ndim} axes")
            scale = scale * values
    return scale


def _malformed(folder: Path, what: str) -> InputError:
    return InputError(f"{folder}: malformed OME-Zarr metadata ({what}); see https://ngff.openmicroscopy.org")


def _ome_image(group: Any, folder: Path, level: int) -> Image:
    """One level of an OME-Zarr image group, with the spatial axes' scale in micrometres."""
    ms = _multiscales(dict(group.attrs))[0]
    if not isinstance(ms, dict) or not isinstance(ms.get("datasets", []), list):
        raise _malformed(folder, "'multiscales' must be a list of objects with a list of 'datasets'")
    datasets = ms.get("datasets", [])
    if not datasets:
        raise InputError(f"{folder}: OME-Zarr metadata lists no datasets")
    if not 0 <= level < len(datasets):
        raise InputError(f"{folder}: level {level} does not exist (the pyramid has levels 0..{len(datasets) - 1})")
    ds = datasets[level]
    if not isinstance(ds, dict) or not isinstance(ds.get("path"), str):
        raise _malformed(folder, f"dataset {level} has no 'path'")
    try:
        arr = group[ds["path"]]
    except KeyError:
        raise InputError(f"{folder}: the OME-Zarr metadata lists level {level} at {ds['path']!r}, but the container holds no such array") from None
    if not hasattr(arr, "shape"):
        raise _malformed(folder, f"level {level} ({ds['path']!r}) is a group, not an array")
    ndim = arr.ndim
    axes = ms.get("axes") or [{"name": n, "type": "space"} for n in "tczyx"[-ndim:]]
    axes = [{"name": a, "type": "space" if a in "zyx" else ""} if isinstance(a, str) else a for a in axes]
    if not isinstance(axes, list) or len(axes) != ndim or not all(isinstance(a, dict) and isinstance(a.get("name"), str) for a in axes):
        raise _malformed(folder, f"'axes' must name each of the {ndim} axes of level {level}")
    scale = _scale_of(ds.get("coordinateTransformations"), ndim, folder) * _scale_of(ms.get("coordinateTransformations"), ndim, folder)
    data = lazy(arr, folder)
    index, voxel, names = [], [], ""
    for ax, n, s in zip(axes, arr.shape, scale):
        if ax.get("type") == "space":
            index.append(slice(None))
            voxel.append(float(s) * (unit_to_um(ax.get("unit", "micrometer")) or 1.0))
            names += ax["name"]
        elif n == 1:
            index.append(0)
        else:
            index.append(slice(None))
            voxel.append(1.0)
            names += ax["name"]
    meta = {"format": "ome-zarr", "level": level, "levels": len(datasets), "axes": names, "chunks": arr.chunks}
    attrs = dict(group.attrs)
    if attrs.get(CREATED_BY) == SOFTWARE and isinstance(attrs.get(PROVENANCE), dict):
        meta["provenance"] = attrs[PROVENANCE]
    return Image(data[tuple(index)], tuple(voxel), folder, meta=meta)


def read_zarr(folder: Path, dataset: str | None = None, level: int = 0) -> Image:
    """A zarr array, an OME-Zarr image (``level`` of its pyramid) or a named array of a group."""
    import zarr

    path = folder / dataset if dataset else folder
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as err:  # noqa: BLE001 - zarr raises many types for broken metadata
        raise InputError(f"{path}: not a readable zarr container ({err})") from None
    if isinstance(node, zarr.Group):
        if _multiscales(dict(node.attrs)):
            return _ome_image(node, path, level)
        # hidden names (".blocks_done" of our results) are bookkeeping, never an image to offer
        names = sorted(name for name, _ in node.arrays() if not name.startswith("."))
        groups = sorted(name for name, _ in node.groups() if not name.startswith("."))
        raise InputError(
            f"{path}: a zarr group, not an image; name one of its arrays or images: "
            + ", ".join(f"{path}/{n}" for n in (names + groups)[:8])
        )
    # a bare array: its voxel size comes from our own attrs, or from an OME-Zarr parent
    voxel = node.attrs.get("voxel_size")
    root = _zarr_root(path)
    if voxel is None and root != path:
        parent = zarr.open_group(str(path.parent), mode="r")
        ms = _multiscales(dict(parent.attrs))
        if ms:
            paths = [d.get("path") for d in ms[0].get("datasets", [])]
            if path.name in paths:
                return _ome_image(parent, path.parent, paths.index(path.name))
    voxel = tuple(float(v) for v in voxel) if voxel and len(voxel) == node.ndim else (1.0,) * node.ndim
    meta = {"format": f"zarr v{node.metadata.zarr_format}", "chunks": node.chunks}
    return Image(lazy(node, path), voxel, path, meta=meta)


def _n5_voxel(attrs: dict[str, Any], ndim: int, where: str) -> tuple[float, ...]:
    """N5 conventions, in N5's (x, y, z) order: ``pixelResolution`` {dimensions, unit} (Saalfeld
    lab) or ``resolution`` with ``units`` (BigDataViewer/paintera); returned as (z, y, x) µm."""
    pr = attrs.get("pixelResolution")
    try:
        if isinstance(pr, dict) and len(pr.get("dimensions", ())) == ndim:
            scale = unit_to_um(pr.get("unit", "um")) or 1.0
            return tuple(float(v) * scale for v in reversed(pr["dimensions"]))
        res = attrs.get("resolution")
        if isinstance(res, list) and len(res) == ndim:
            units = attrs.get("units") or ["um"] * ndim
            return tuple(float(v) * (unit_to_um(u) or 1.0) for v, u in zip(reversed(res), reversed(units)))
    except (TypeError, ValueError):
        raise InputError(f"{where}: the N5 voxel size ('pixelResolution' or 'resolution' in attributes.json) holds something other than numbers") from None
    return (1.0,) * ndim


def read_n5(folder: Path, dataset: str | None = None) -> Image:
    """An N5 dataset (``volume.n5:/dataset``), axes reversed to (z, y, x) like every other reader."""
    import zarr

    try:
        import zarr_n5
        from zarr.storage import LocalStore
    except ImportError:
        raise InputError(f"{folder}: reading N5 needs the zarr-n5 package (pip install zarr-n5)") from None
    key = (dataset or "").strip("/")
    attrs_file = folder / key / "attributes.json"
    if key and not attrs_file.is_file():
        parent = (folder / key).parent
        subs = sorted(str(p.relative_to(folder)) for p in parent.iterdir() if (p / "attributes.json").is_file()) if parent.is_dir() else []
        raise InputError(f"{folder}: no N5 dataset {key!r} (beside it: {', '.join(subs[:8]) or 'nothing'})")
    try:
        attrs = json.loads(attrs_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{folder}: not a readable N5 container ({attrs_file.name}: {err})") from None
    if "dimensions" not in attrs:
        subs = sorted(p.name for p in (folder / key).iterdir() if (p / "attributes.json").is_file())
        raise InputError(f"{folder / key}: an N5 group, not a dataset; name one, e.g. " + ", ".join(f"{folder}:/{key + '/' if key else ''}{s}" for s in subs[:8]))
    store = zarr_n5.N5WrapperStore(LocalStore(str(folder), read_only=True))
    try:
        arr = zarr.open_array(store, path=key, mode="r")
    except Exception as err:  # noqa: BLE001
        raise InputError(f"{folder}:/{key}: cannot open the N5 dataset ({err})") from None
    data = lazy(arr, folder).transpose(tuple(range(arr.ndim))[::-1])
    meta = {"format": "n5", "chunks": tuple(reversed(arr.chunks))}
    return Image(data, _n5_voxel(attrs, arr.ndim, f"{folder}:/{key}"), folder, meta=meta)


def _ngff_attrs(voxel: Sequence[float], ndim: int, name: str, levels: int = 1, factor: int = 2) -> dict[str, Any]:
    axes = [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"[-ndim:]]
    datasets = []
    for lv in range(levels):
        f = np.array([1.0] * (ndim - 2) + [factor**lv] * 2) if ndim == 3 else np.array([factor**lv] * 2)
        datasets.append({"path": str(lv), "coordinateTransformations": [{"type": "scale", "scale": [float(v) for v in np.asarray(voxel) * f]}]})
    return {"multiscales": [{"version": NGFF_VERSION, "name": name, "axes": axes, "datasets": datasets}], CREATED_BY: SOFTWARE}


#: the largest chunk side (pixels) of the arrays we write
CHUNK_PX = 512


def chunk_size(array: Any, axis: int) -> int:
    """Pixels along ``axis`` in one chunk of ``array`` (zarr, h5py; dask: its first chunk's; 1 for
    an array without chunks, numpy or a memory-mapped TIFF): a reader that takes a chunked input
    whole chunks at a time along it reads each chunk once."""
    chunks = getattr(array, "chunks", None)
    if not chunks:
        return 1
    size = chunks[axis]
    return max(1, int(size[0] if isinstance(size, tuple) else size))


def default_chunks(shape: Sequence[int]) -> tuple[int, ...]:
    """One plane deep, up to 512 x 512: tiles that predict and napari read quickly."""
    return (1,) * (len(shape) - 2) + tuple(min(int(s), CHUNK_PX) for s in shape[-2:])


def create_ome_zarr(
    path: str | Path,
    shape: Sequence[int],
    dtype: Any,
    voxel: Sequence[float],
    chunks: Sequence[int] | None = None,
    image: str | None = None,
    protect: Sequence[Path | None] = (),
    name: str | None = None,
) -> Any:
    """An empty OME-Zarr image (NGFF 0.4, one level) to fill tile by tile; returns its zarr array.

    ``image``: write it as the sub-group ``image`` of the group at ``path`` (e.g. ``mean`` and
    ``std`` of one prediction in one store); the root group is created or kept. Without it,
    ``path`` itself becomes the image group; it must not exist yet (or be an empty folder).
    ``voxel`` in µm per axis.
    """
    import zarr

    path = Path(path)
    if image:
        refuse_overwrite(path, protect)
    else:
        check_new_output(path, protect)
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or len(voxel) != len(shape):
        raise InputError(f"{path}: OME-Zarr images here are 2D or 3D with one voxel size per axis, got shape {shape} and voxel {tuple(voxel)}")
    if image:
        root = zarr.open_group(str(path), mode="a", zarr_format=2)
        group = root.create_group(image, overwrite=True)
    else:
        group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.attrs.update(_ngff_attrs(voxel, len(shape), name or image or path.stem))
    chunks = tuple(chunks) if chunks is not None else default_chunks(shape)
    return group.create_array("0", shape=shape, dtype=np.dtype(dtype), chunks=chunks, fill_value=0)


def write_ome_zarr(
    path: str | Path,
    data: Any,
    voxel: Sequence[float],
    chunks: Sequence[int] | None = None,
    levels: int = 1,
    image: str | None = None,
    protect: Sequence[Path | None] = (),
    overwrite: bool = False,
) -> Path:
    """Write a (lazy) 2D/3D array as OME-Zarr, chunk by chunk, with ``levels`` pyramid levels
    (each half the size in y and x, by 2 x 2 averaging) for fast browsing of large volumes.

    Without ``image`` the store is built beside ``path`` and swapped in when complete; an
    existing one is replaced only with ``overwrite`` and only when it is one of our outputs.
    """
    if image is None:
        check_new_output(path, protect, overwrite)
        staged = StagedStore(path)
        try:
            _write_ome_zarr(staged.path, data, voxel, chunks, levels, None, Path(path).stem)
        except BaseException:
            staged.discard()
            raise
        return staged.commit()
    return _write_ome_zarr(path, data, voxel, chunks, levels, image, image, protect)


def _write_ome_zarr(
    path: Path, data: Any, voxel: Sequence[float], chunks: Sequence[int] | None, levels: int, image: str | None, name: str,
    protect: Sequence[Path | None] = (),
) -> Path:  # fmt: skip
    import dask.array as da
    import zarr

    arr = create_ome_zarr(path, data.shape, data.dtype if data.dtype != np.float64 else np.float32, voxel, chunks, image, protect, name)
    src = data if isinstance(data, da.Array) else da.from_array(np.asarray(data), chunks=arr.chunks)
    da.store(src.astype(arr.dtype).rechunk(arr.chunks), arr, lock=False)
    if levels > 1:
        group = zarr.open_group(str(Path(path) / image) if image else str(path), mode="a", zarr_format=2)
        prev, written = da.from_zarr(arr), 1
        for lv in range(1, levels):
            if min(prev.shape[-2:]) < 2:
                break
            even = prev[(Ellipsis, slice(0, prev.shape[-2] // 2 * 2), slice(0, prev.shape[-1] // 2 * 2))]
            down = da.coarsen(np.mean, even.astype(np.float32), {prev.ndim - 2: 2, prev.ndim - 1: 2})
            down = (down.round() if arr.dtype.kind in "ui" else down).astype(arr.dtype)
            out = group.create_array(str(lv), shape=down.shape, dtype=arr.dtype, chunks=default_chunks(down.shape), fill_value=0)
            da.store(down.rechunk(out.chunks), out, lock=False)
            prev, written = da.from_zarr(out), written + 1
        group.attrs.update(_ngff_attrs(voxel, len(data.shape), name, levels=written))
    return Path(path)
