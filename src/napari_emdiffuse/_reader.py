"""napari reader: TIFF stacks, zarr / OME-Zarr, N5, MRC and HDF5 open lazily, with their voxel size.

The formats themselves are read by :func:`napari_emdiffuse.data.io.read_image`; this module
turns what it returns into layers: the voxel size (µm) into ``scale`` and ``units``, an OME-Zarr
pyramid into a multiscale layer, the position of the first pixel (an OME-Zarr translation, an
ImageJ TIFF's origin) into ``translate``, the saved display window (OME-Zarr ``omero``, ImageJ
``min``/``max``) or else percentiles of the data into ``contrast_limits``, and a zarr group of
several arrays (such as a prediction written by ``emdiffuse predict``: ``mean``, ``std``) into one
layer each, the standard deviation shown as an uncertainty map. A prediction's TIFFs (known by
their provenance) reopen as the store of the same run does: named, valued and placed alike. An
image without a pixel size that records its ``sampling`` (a prediction's, a layer napari's writer
saved) lies where that places it, as its layer did, in napari's pixel unit.

An image of several samples per pixel (``meta["colour"]``) never opens as its bare array, whose
samples napari would show as the last spatial axis (a grey+alpha picture as y slices of x by 2
pixels, which Enhance then enhanced): RGB and RGBA open as napari's colour layers; grey+alpha
opens as its grey channel, named so, because its alpha (where the picture is opaque) is no image
content: the grey values are the picture, and Enhance takes them; any other kind (CMYK, CIELab,
extra samples) has no one grey channel to choose, so the file is refused with the core reader's
one-line message, which napari shows, rather than converted by a guess.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from .errors import InputError

log = logging.getLogger(__name__)

LayerData = tuple[Any, dict[str, Any], str]
UNCERTAINTY_NAMES = ("std", "uncertainty")
#: the role (as the Enhance widget marks its layers) of each array of a prediction's store (and
#: of a TIFF result's ``sample k``, one of them)
RESULT_ROLES = {
    "mean": "enhanced", "std": "uncertainty", "uncertainty": "uncertainty", "lower": "bounds", "upper": "bounds", "samples": "samples", "sample": "samples",
}  # fmt: skip
#: Suffixes the core reads that napari reads as well and better (ordinary pictures): not claimed.
LEFT_TO_NAPARI = (".png",)
#: Percentiles of the data that set the contrast of a layer with no saved display window.
CONTRAST_PERCENTILES = (0.1, 99.9)


def file_suffixes() -> tuple[str, ...]:
    """The file suffixes this reader takes: those of :func:`data.io.read_image`, pictures aside."""
    from .data.formats import FILE_SUFFIXES

    return tuple(s for s in FILE_SUFFIXES if s not in LEFT_TO_NAPARI)


def filename_patterns() -> list[str]:
    """The patterns napari.yaml must list (checked by a test): every suffix in lower and upper
    case, and zarr and N5 folders."""
    suffixes = [*file_suffixes(), ".zarr", ".n5"]
    return [f"*{s}" for s in suffixes] + [f"*{s.upper()}" for s in suffixes]


def _kind(path: Path) -> str | None:
    from .data.containers import container_kind

    if path.is_dir():
        return container_kind(path) or ("zarr" if path.suffix.lower() == ".zarr" else None)
    if path.is_file() and path.name.lower().endswith(file_suffixes()):
        return "file"
    return None


def get_reader(path: str | Sequence[str]) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader hook: :func:`read_paths` if every path is a file or container we read, else None."""
    paths = [Path(p) for p in ([path] if isinstance(path, (str, Path)) else path)]
    if not paths or any(_kind(p) is None for p in paths):
        return None
    return read_paths


def read_paths(path: str | Sequence[str]) -> list[LayerData]:
    """Layers for one path or several (a zarr group of several images gives several layers)."""
    paths = [Path(p) for p in ([path] if isinstance(path, (str, Path)) else path)]
    layers: list[LayerData] = []
    for p in paths:
        layers.extend(_zarr_group_layers(p) if _is_plain_group(p) else [_image_layer(p)])
    return layers


def geometry_kwargs(voxel: Sequence[float], translate: Sequence[float] | None = None, in_pixels: bool = False) -> dict[str, Any]:
    """Layer keyword arguments for a voxel size in µm; an uncalibrated one (all 1) stays in pixels.
    ``in_pixels``: the voxel is a shape in x pixels (a file in no length unit, whose reading
    records ``voxel_unit`` "pixel"): napari's "pixel" unit, never µm (its 10 px z spacing showed as 10 µm)."""
    out: dict[str, Any] = {}
    if not all(v == 1.0 for v in voxel):
        out = {"scale": tuple(float(v) for v in voxel), "units": ("pixel" if in_pixels else "micrometer",) * len(voxel)}
    if translate is not None and any(translate):
        out["translate"] = tuple(float(t) for t in translate)
    return out


def _image_layer(path: Path, dataset: str | None = None, name: str | None = None) -> LayerData:
    from .data.formats import file_stem
    from .data.io import read_image
    from .data.normalise import check_grey
    from .data.tiff import GREY_ALPHA

    image = read_image(path, dataset)
    levels = int(image.meta.get("levels", 1))
    data: Any = image.data
    if levels > 1:  # an OME-Zarr pyramid: napari shows the level that fits the screen
        data = [image.data] + [read_image(path, dataset, level=k).data for k in range(1, levels)]
    where = placed(path, image, data, dataset)
    data, name = where.data, name or file_stem(path)
    samples = image.meta.get("colour")  # several samples per pixel, last (see the module docstring)
    colour = samples in ("RGB", "RGBA")
    if samples == GREY_ALPHA:
        data, name = data[..., 0], f"{name} (grey; alpha dropped)"
    elif samples and not colour:
        check_grey(image, str(path))
    kwargs = {"name": name, **where.kwargs, **({"rgb": True} if colour else {})}
    kwargs["contrast_limits"] = where.window or contrast_limits(data[-1] if levels > 1 else data)
    if levels > 1:
        kwargs["multiscale"] = True
    provenance = image.meta.get("provenance") or {}
    if "finished" in provenance:  # a TIFF emdiffuse predict wrote: as the store of the same run reopens
        data = _tiff_result(data, kwargs, provenance, path)
    return data, kwargs, "image"


def _tiff_result(data: Any, kwargs: dict[str, Any], provenance: dict[str, Any], path: Path) -> Any:
    """A TIFF part of a prediction as :func:`_as_result` shows it (``kwargs`` updated), or, where
    its record is malformed, as the plain image it also is, with one warning."""
    from .jobs.predict_output import result_stem, role_key

    shown = dict(kwargs)
    try:
        role = _tiff_role(provenance, path)
        data = _as_result(data, shown, role_key(role), provenance, result_stem(path, role), path)
    except UNREADABLE as err:
        log.warning("%s: its recorded result metadata is unreadable (%s); shown as a plain image", path, _said(err))
        return data
    kwargs.update(shown)
    return data


def _tiff_role(provenance: dict[str, Any], path: Path) -> str | None:
    """What part of a prediction a TIFF is (None: the estimate), as its provenance records it;
    TIFFs that record none (the estimate, and the other parts of some written in December 2026)
    are known by the tail of their name, where the estimate of the same run lies beside them."""
    from .data.formats import file_stem
    from .jobs.predict_output import PARTIAL, role_of_tail, tiff_tail

    role = provenance.get("role")
    if role is not None:
        if not isinstance(role, str):
            raise ValueError(f"'role' is {role!r}, not a name")
        return role
    stem = file_stem(path)
    partial = stem.endswith(PARTIAL)
    role = role_of_tail(stem.removesuffix(PARTIAL))
    if role is None:
        return None
    estimate = path.with_name(stem.removesuffix(PARTIAL).removesuffix(tiff_tail(role)) + (PARTIAL if partial else "") + path.name[len(stem) :])
    return role if estimate != path and _same_run(estimate, provenance) else None  # never the estimate beside itself


def _same_run(path: Path, provenance: dict[str, Any]) -> bool:
    """Whether ``path`` is a TIFF of the same prediction as a part that records ``provenance``."""
    import tifffile

    from .data.tiff import tiff_provenance

    try:
        with tifffile.TiffFile(path) as tf:
            other = tiff_provenance(tf) or {}
    except Exception:  # noqa: BLE001 - not there, or no TIFF: no estimate of this run
        return False
    return other.get("role") is None and all(other.get(k) == provenance.get(k) for k in ("finished", "model", "settings", "input"))


class Placed(NamedTuple):
    """Where this reader lays an image (:func:`placed`)."""

    data: Any  # its data (or pyramid levels); a single slice saved as a stack stays a stack of one
    kwargs: dict[str, Any]  # layer keyword arguments: scale, units, translate (where not napari's defaults)
    window: tuple[float, float] | None  # the saved display window
    position: tuple[float, ...] | None  # its first pixel, as recorded (µm; in its own pixels without a pixel size); None: at 0
    sampling: tuple[float, ...] | None  # the sampling it records and is placed by, per axis; None: none
    ndim: int  # the axes it is placed on (a one-slice stack's z counted, samples per pixel not)


def placed(path: str | Path, image: Any, data: Any = None, dataset: str | None = None, quiet: bool = False) -> Placed:
    """Where this reader lays the image ``read_image(path, dataset)`` gave (``data``: its data or
    pyramid levels, default ``image.data``): the one place the napari reader, Enhance's file input
    and ``emdiffuse predict`` take it from, so that a file is placed and judged alike by each. Its
    voxel size and first pixel's position, and, without a pixel size, the ``sampling`` it records
    (a writer's layer, a prediction: its own or, for an array of a prediction's store, the
    store's). A malformed record is left out, and said in one warning unless ``quiet`` (``emdiffuse
    info`` says it in its own words)."""
    from .data.formats import split_dataset
    from .data.tiff import PIXEL_UNIT

    file, inner = split_dataset(path)
    dataset = dataset or inner
    data = image.data if data is None else data
    try:
        data, voxel, position, window = _placement(file, image, data, dataset)
    except UNREADABLE as err:
        if not quiet:
            log.warning("%s: its recorded position is unreadable (%s); placing it at 0", file, _said(err))
        voxel, position, window = image.voxel, None, None
    if image.meta.get("colour"):  # placed by the axes before its samples
        voxel, position = voxel[:-1], None if position is None else position[:-1]
    kwargs = geometry_kwargs(voxel, position, in_pixels=image.meta.get("voxel_unit") == PIXEL_UNIT)
    sampling = _recorded_sampling(file, image, len(voxel), quiet)
    if sampling is not None:  # its own scale and position are in its own pixels: in its world's
        kwargs["scale"] = tuple(float(s) * f for s, f in zip(kwargs.get("scale", (1.0,) * len(voxel)), sampling))
        if "translate" in kwargs:
            kwargs["translate"] = tuple(float(t) * f for t, f in zip(kwargs["translate"], sampling))
    return Placed(data, kwargs, window, position, sampling, len(voxel))


def _recorded_sampling(path: Path, image: Any, ndim: int, quiet: bool) -> tuple[float, ...] | None:
    """The ``sampling`` an image without a pixel size records (:func:`.data.image.recorded_sampling`:
    its pixel in the pixels of the world it lies in), in its provenance or, an array of a
    prediction's store, in the store's; None where it records none or one that is unreadable."""
    from .data.formats import store_root
    from .data.image import recorded_sampling
    from .data.safe_output import own_attrs

    record = image.meta.get("provenance") or {}
    if "sampling" not in record and image.path is not None and store_root(image.path) != Path(image.path):
        record = own_attrs(store_root(image.path)) or {}
    if "sampling" not in record:
        return None
    factors = recorded_sampling(record["sampling"], ndim)
    if factors is None and not quiet:
        log.warning("%s: its recorded sampling %r is unreadable; placed in its own pixels", path, record["sampling"])
    return factors


def _placement(path: Path, image: Any, data: Any, dataset: str | None) -> tuple[Any, tuple[float, ...], tuple[float, ...] | None, tuple[float, float] | None]:
    """The image's data (a single slice saved as a stack gains its z axis), voxel size (µm),
    first pixel's position (None: at 0) and saved display window, as its format records them."""
    translate, window, voxel = None, None, image.voxel
    if image.meta.get("format") == "ome-zarr":
        folder = path / dataset if dataset else path
        translate, window = _ngff_translation(folder, image.data.ndim), _omero_window(folder)
    elif image.meta.get("format") == "tiff":
        data, voxel, translate, window = _imagej_extras(path, data, voxel)
    elif image.meta.get("format") == "ome-tiff":
        data, voxel, translate, window = _ome_tiff_extras(path, data, voxel, image.meta.get("provenance") or {})
    return data, voxel, translate, window


def _ome_tiff_extras(
    path: Path, data: Any, voxel: tuple[float, ...], record: dict[str, Any]
) -> tuple[Any, tuple[float, ...], tuple[float, ...] | None, tuple[float, float] | None]:
    """What our OME-TIFFs (other dtypes than ImageJ's, over 4 GB, or named .ome.tif) keep in
    their provenance, as an ImageJ TIFF keeps it in its own metadata: a single slice saved as a
    stack (its ``origin`` or ``sampling`` recorded for one axis more than the file holds) stays a
    stack of one, its z size the OME metadata's, so its z position survives; the ``origin``; the
    display range (``display_range``, which the napari writer records)."""
    recorded = [record.get(key) for key in ("origin", "sampling")]
    if data.ndim == 2 and any(isinstance(v, list) and len(v) == 3 for v in recorded):
        import tifffile

        from .data.tiff import ome_voxel

        with tifffile.TiffFile(path) as tf:
            z = ome_voxel(tf.ome_metadata or "", "Z")
        data, voxel = data[None], ((z or (1.0,))[0], *voxel)
    kept = record.get("display_range")
    ok = isinstance(kept, list) and len(kept) == 2 and all(isinstance(v, (int, float)) for v in kept) and kept[1] > kept[0]
    window = (float(kept[0]), float(kept[1])) if ok else None
    origin = record.get("origin")
    if isinstance(origin, list) and len(origin) == data.ndim and any(origin):
        return data, voxel, tuple(float(o) for o in origin), window
    return data, voxel, None, window


def contrast_limits(data: Any) -> tuple[float, float]:
    """Contrast limits from percentiles of (planes spread through) the data: napari cannot
    measure a lazy float volume and would show 0-1, white for most EM results."""
    from ._widgets.layers import sample_values

    if np.dtype(data.dtype) == np.uint8:
        return (0.0, 255.0)
    values = sample_values(data)
    if not values.size:
        return (0.0, 1.0)
    lo, hi = (float(v) for v in np.percentile(values, CONTRAST_PERCENTILES))
    return (lo, hi if hi > lo else lo + 1.0)


def _omero_window(folder: Path) -> tuple[float, float] | None:
    """The display window an OME-Zarr image saved (``omero.channels[0].window``), if any."""
    import zarr

    attrs = dict(zarr.open_group(str(folder), mode="r").attrs)
    channels = ((attrs.get("ome") or attrs).get("omero") or {}).get("channels") or [{}]
    window = channels[0].get("window") or {}
    if "start" in window and "end" in window and float(window["end"]) > float(window["start"]):
        return (float(window["start"]), float(window["end"]))
    return None


def _imagej_extras(path: Path, data: Any, voxel: tuple[float, ...]) -> tuple[Any, tuple[float, ...], tuple[float, ...] | None, tuple[float, float] | None]:
    """What an ImageJ TIFF adds: a single slice saved as a stack (``spacing`` set) stays a stack
    of one, so its z position survives; the origin (``xorigin``..., pixels) as a translation in
    µm; the display range (``min``/``max``)."""
    import tifffile

    from .data.tiff import imagej_stack_voxel

    with tifffile.TiffFile(path) as tf:
        ij = tf.imagej_metadata or {}
        stack = imagej_stack_voxel(tf) if data.ndim == 2 else None
    if stack is not None:
        data, voxel = data[None], stack
    origin = tuple(-float(ij.get(f"{ax}origin", 0.0)) * v for ax, v in zip("zyx"[-len(voxel) :], voxel))
    window = None
    if "min" in ij and "max" in ij and float(ij["max"]) > float(ij["min"]):
        window = (float(ij["min"]), float(ij["max"]))
    return data, voxel, (origin if any(origin) else None), window


def _ngff_translation(folder: Path, ndim: int) -> tuple[float, ...] | None:
    """The first dataset's translation (µm) of an OME-Zarr image of ``ndim`` dimensions as read,
    when it has one. Where the data keeps every axis, one that is not in space (the sample axis
    of a prediction's ``samples``) is not moved; where the reader dropped axes (the length-one t
    and c of a 5D TCZYX store), only the spatial axes' translation is given."""
    import zarr

    from .data.image import unit_to_um

    attrs = dict(zarr.open_group(str(folder), mode="r").attrs)
    ms = (attrs.get("ome") or attrs).get("multiscales") or [{}]
    axes = ms[0].get("axes") or []
    space = [isinstance(a, dict) and a.get("type") == "space" for a in axes]
    if not any(space):
        return None
    for t in (ms[0].get("datasets") or [{}])[0].get("coordinateTransformations", []):
        if t.get("type") != "translation" or len(t["translation"]) != len(axes):
            continue
        um = [float(v) * (unit_to_um(a.get("unit")) or 1.0) if s else 0.0 for v, a, s in zip(t["translation"], axes, space)]
        if len(axes) != ndim:
            um = [v for v, s in zip(um, space) if s]
        return tuple(um) if len(um) == ndim else None
    return None


def _is_plain_group(path: Path) -> bool:
    """A zarr group that is not itself an image (no OME multiscales): a container of images."""
    if _kind(path) != "zarr":
        return False
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception:  # noqa: BLE001 - let read_image report the problem
        return False
    attrs = dict(node.attrs)
    return isinstance(node, zarr.Group) and not (attrs.get("ome") or attrs).get("multiscales")


def _group_geometry(kwargs: dict[str, Any], ndim: int, voxel: Sequence[float] | None, origin: Sequence[float] | None) -> dict[str, Any]:
    """Where an array of a group lies: its own scale and translation, else the group's
    ``voxel_size`` and ``origin`` (µm; a voxel of 1, a pixel size never known, stays in pixels
    as any file's does). An array with an axis more than those (``samples``) has the sample
    axis in front, as the Enhance widget adds it, so that the two never mix units."""
    from ._widgets.layers import Placement, samples_kwargs

    spatial = len(voxel or origin or ())
    if spatial > ndim:  # not an array of this group's geometry
        return {}
    lead = ndim - spatial
    own = {key: tuple(kwargs[key])[lead:] for key in ("scale", "translate", "units") if key in kwargs}
    group = geometry_kwargs(voxel or (1.0,) * (ndim - lead), origin if origin and len(origin) == ndim - lead else None)
    placement = Placement.from_kwargs({**group, **own}, ndim - lead)
    return samples_kwargs(placement) if lead else {**group, **own}


#: what malformed metadata raises where it is read (a string where a record should be, a missing key)
UNREADABLE = (ValueError, TypeError, KeyError, AttributeError, IndexError)


def _said(err: Exception) -> str:
    """An error read from malformed metadata, in one line (a KeyError's own text is only the key)."""
    return f"no {err}" if isinstance(err, KeyError) else str(err) or type(err).__name__


def _reopened_result(name: str, attrs: dict[str, Any]) -> tuple[str, float]:
    """What an array of a prediction's store shows, named as the Enhance widget names it, and the
    factor its values take for that: the store keeps the error map ``u``, whose bound ``q u``
    (the widget's layer) its ``bounds`` attribute gives the scale of (stores written before it
    existed show the map itself). Bounds widened past calibration (``bounds_rough``) are rough."""
    from ._widgets.layers import INTENSITY_UNIT
    from .uncertainty import coverage_label

    bounds, rough = attrs.get("bounds"), attrs.get("bounds_rough")
    if bounds and not (isinstance(bounds, dict) and {"coverage", "scale", "settings"} <= bounds.keys()):
        raise ValueError(f"'bounds' is {bounds!r}, not a record of coverage, scale and settings")
    cover = coverage_label(bounds["coverage"], bounds["settings"]) if bounds else ""
    if name == "mean":
        return "estimate", 1.0
    if name in UNCERTAINTY_NAMES:
        if not bounds:
            return f"error map [{INTENSITY_UNIT}]", 1.0
        return f"{'rough error bound' if rough else f'error bound ({cover})'} [{INTENSITY_UNIT}]", float(bounds["scale"])
    if name in ("lower", "upper"):
        return f"{'rough ' if rough else ''}{name} bound{f' ({cover})' if cover and not rough else ''}", 1.0
    return name, 1.0


def _as_uncertainty(kwargs: dict[str, Any], scale: float) -> None:
    """As Enhance shows an error map or bound: the colours say how large, from zero."""
    from ._widgets.layers import UNCERTAINTY_COLORMAP

    top = max(kwargs["contrast_limits"][1] * scale, 1e-6)
    kwargs.update(colormap=UNCERTAINTY_COLORMAP, contrast_limits=(0.0, top))


def _as_result(data: Any, kwargs: dict[str, Any], key: str, attrs: dict[str, Any], stem: str, path: Path) -> Any:
    """A part of a prediction (``key``: its array in the store; a TIFF's ``sample k``), from a store
    or a TIFF alike, as Enhance showed it: named so, the error map as the bound its record states
    (the data returned scaled), and marked as a result, so that the layer pickers do not guess it
    (its bounds least) as the next input; it is placed (by its ``sampling`` too) by :func:`placed`."""
    from ._widgets.layers import result_name

    what, scale = _reopened_result(key, attrs)
    kwargs["name"] = result_name(stem, what, partial=attrs.get("complete") is False)  # as Enhance names a cancelled run's part
    if scale != 1.0:
        data = [level * np.float32(scale) for level in data] if isinstance(data, list) else data * np.float32(scale)
    if key in UNCERTAINTY_NAMES:
        _as_uncertainty(kwargs, scale)
    role = RESULT_ROLES.get(key.split(" ")[0], "enhanced")
    kwargs["metadata"] = {**kwargs.get("metadata", {}), "emdiffuse": {"role": role, "reopened": str(path)}}
    return data


def _zarr_group_layers(path: Path) -> list[LayerData]:
    """One layer per array or image in the group; the group's ``voxel_size`` and ``origin`` (µm,
    as the predict job writes them) place arrays that carry no geometry of their own. A
    prediction's store whose record is malformed opens as a plain group, with one warning."""
    from .data.safe_output import own_attrs

    attrs = own_attrs(path) or {}
    if "finished" in attrs:  # a prediction's store (a training set is an input)
        try:
            return _group_layers(path, attrs)
        except UNREADABLE as err:
            log.warning("%s: its recorded result metadata is unreadable (%s); shown as plain images", path, _said(err))
    return _group_layers(path, None)


def _group_layers(path: Path, result: dict[str, Any] | None) -> list[LayerData]:
    """The layers of :func:`_zarr_group_layers`, as the parts of a prediction whose record is
    ``result``, or (None) as plain images."""
    import zarr

    from .data.formats import file_stem
    from .jobs.predict_output import result_stem

    group = zarr.open_group(str(path), mode="r")
    group_voxel, origin = group.attrs.get("voxel_size"), group.attrs.get("origin")
    stem = file_stem(path) if result is None else result_stem(path)
    layers = []
    names = [n for n, _ in group.arrays()] + [n for n, _ in group.groups()]
    for name in sorted(n for n in names if not n.startswith(".")):  # hidden: a prediction's bookkeeping
        data, kwargs, kind = _image_layer(path, name, name=f"{stem} {name}")
        ndim = data[0].ndim if isinstance(data, list) else data.ndim
        if group_voxel or origin:
            kwargs.update(_group_geometry(kwargs, ndim, group_voxel, origin))
        if result is not None:
            data = _as_result(data, kwargs, name, result, stem, path)
            kwargs["visible"] = kwargs["metadata"]["emdiffuse"]["role"] == "enhanced"  # as Enhance adds them: the result shown, the rest in the layer list
        elif name in UNCERTAINTY_NAMES:
            _as_uncertainty(kwargs, 1.0)
            kwargs["name"] = f"{stem} uncertainty"
        layers.append((data, kwargs, kind))
    if not layers:
        raise InputError(f"{path}: the zarr group holds no images")
    return layers
