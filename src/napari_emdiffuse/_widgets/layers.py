"""From napari layers to arrays, regions and output geometry, and back (no Qt here).

The widgets never modify a user's layer: they read its data (level 0 of a multiscale layer,
lazily for dask and zarr), its ``scale``/``translate``/``units``, the slice the viewer shows
and rectangles drawn in a Shapes layer, and they build new layers from what the jobs return.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import InputError
from ..variants.base import Roi


def unwrap(layer: Any) -> Any:
    """The layer itself, not napari's ``PublicOnlyProxy`` around it.

    A dock widget's viewer is such a proxy, and every layer it returns is a new proxy object, so
    layers are unwrapped before they are kept or compared by identity.
    """
    return getattr(layer, "__wrapped__", layer)


#: napari's unit of an axis without a physical size
PIXEL = "pixel"
#: The leading axis of a samples layer: which draw, not a place. It has napari's default unit, as
#: an axis without a physical size has, in the layer Enhance adds and in the one a reopened
#: store gives alike (a length there made napari warn of mixed units).
SAMPLE_AXIS = {"scale": 1.0, "translate": 0.0, "units": PIXEL, "axis_labels": "sample"}

#: ``metadata["emdiffuse"]["role"]`` of the layers the plugin makes (results, overlays, previews).
PLUGIN_ROLES = ("enhanced", "uncertainty", "bounds", "regions", "samples", "preview", "swipe")


#: the unit of an error bound (as of the result): the input's own intensities
INTENSITY_UNIT = "grey values"
#: the colours of an error bound or map, from zero: they say how large it is, not only where larger
UNCERTAINTY_COLORMAP = "inferno"

#: Characters of an input's name kept in its results' names: napari's layer list shows about 28
#: of a name and a grid cell's caption about 40, so a long file name is cut in its middle there.
SOURCE_CHARS = 24


def elide_middle(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters in its middle ("2024-03-11_…aligned_8bit"): the start
    and the end of a file name are what tell images apart (date and sample; step and bit depth)."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return f"{text[:head]}…{text[len(text) - (limit - 1 - head):]}"


#: in a result's name: between its input's name and what it shows; after the input's name of a
#: stopped run's finished part
SHOWS, PARTIAL = ": ", " (partial)"


def result_name(source: str, what: str, partial: bool = False) -> str:
    """A result layer's name: its input's, cut in the middle when long, and what it shows
    ("em: estimate", "em (partial): estimate" for a cancelled run's finished part), so the layer
    list and a grid caption still say which layer is which. The input's full name stays in the
    layer's metadata (``source_layer`` / ``source_file``), and nothing finds a layer by this
    name (outputs on disk are named from the full one)."""
    return f"{elide_middle(source, SOURCE_CHARS)}{PARTIAL if partial else ''}{SHOWS}{what}"


#: the fewest characters of a result's input name worth showing in a caption, for which the
#: units of what it shows (" [grey values]") give way: side by side, which input a cell shows
#: matters more, and the layer list keeps the whole name
MIN_SOURCE_CHARS = 8


def fit_name(name: str, fits: Callable[[str], bool]) -> str:
    """``name`` as short as ``fits`` (a caption's width) needs: a result's input part cut in its
    middle, what the layer shows (after the last ": ") and "(partial)" kept whole, for they tell
    the results of one input apart; a name of another form cut in its middle. Where not even
    :data:`MIN_SOURCE_CHARS` of the input's name would fit, the units in brackets at the end of
    what it shows give way first. At its shortest "…: what it shows", whether or not that fits."""
    head, sep, what = name.rpartition(SHOWS)
    if not sep:
        head, what = name, ""
    tail = PARTIAL if head.endswith(PARTIAL) else ""
    head = head.removesuffix(tail)
    unitless = re.sub(r" \[[^\[\]]*\]$", "", what)
    for shows, shortest in ((what, min(len(head), MIN_SOURCE_CHARS)), (unitless, min(len(head), MIN_SOURCE_CHARS)), (what, 1)):
        for n in range(len(head), shortest - 1, -1):
            text = f"{elide_middle(head, n)}{tail}{sep}{shows}"
            if fits(text):
                return text
    return f"…{tail}{sep}{what}"


def is_plugin_output(layer: Any) -> bool:
    """Whether the plugin made this layer (a result or an overlay), not the user."""
    meta = getattr(layer, "metadata", None) or {}
    return isinstance(meta.get("emdiffuse"), dict) and meta["emdiffuse"].get("role") in PLUGIN_ROLES


def image_array(layer: Any) -> Any:
    """The full-resolution data of an image layer, refusing what no variant can use."""
    if layer is None:
        raise InputError("no image layer selected: open an image (drag a TIFF into napari) and pick it in the list")
    if getattr(layer, "rgb", False):
        raise InputError(f"layer {layer.name!r} is an RGB image; EM images are grey-scale (convert it first)")
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    if data.ndim not in (2, 3):
        raise InputError(
            f"layer {layer.name!r} has {data.ndim} dimensions (shape {tuple(data.shape)}); "
            "EMDiffuse works on 2D images and 3D stacks (z, y, x)"
        )
    if 0 in tuple(data.shape):
        raise InputError(f"layer {layer.name!r} is empty (shape {' x '.join(map(str, data.shape))}): there is nothing to enhance")
    if not isinstance(data, np.ndarray) and not hasattr(data, "dask"):
        import dask.array as da

        data = da.from_array(data, chunks=(1,) * (data.ndim - 2) + tuple(data.shape[-2:]))
    return data


def current_plane(viewer: Any, layer: Any) -> int:
    """Index (in the layer's data) of the slice the viewer shows, for a 3D layer."""
    point = viewer.dims.point[-layer.ndim :]
    z = int(round(float(layer.world_to_data(point)[0])))
    return min(max(z, 0), layer.data[0].shape[0] - 1 if getattr(layer, "multiscale", False) else layer.data.shape[0] - 1)


def rectangle_roi(shapes: Any, image: Any) -> Roi:
    """The rectangle drawn in ``shapes`` (the selected one, else the last), in ``image`` pixels.

    Shape vertices go from the Shapes layer's data coordinates to world coordinates and then to
    the image's data coordinates, so layers with different scales and offsets line up.
    """
    if shapes is None:
        raise InputError("no Shapes layer selected: add one (Layers > New Shapes Layer) and draw a rectangle")
    kinds = list(shapes.shape_type)
    candidates = [i for i, k in enumerate(kinds) if k == "rectangle"]
    if not candidates:
        raise InputError(f"Shapes layer {shapes.name!r} has no rectangle: draw one with the rectangle tool")
    selected = [i for i in sorted(shapes.selected_data) if kinds[i] == "rectangle"]
    verts = np.asarray(shapes.data[(selected or candidates)[-1]], dtype=float)
    world = np.array([shapes.data_to_world(v) for v in verts])
    pix = np.array([image.world_to_data(w) for w in world])[:, -2:]
    y0, x0 = np.floor(pix.min(axis=0) + 0.5).astype(int)
    y1, x1 = np.ceil(pix.max(axis=0) + 0.5).astype(int)
    return Roi(int(y0), int(y1), int(x0), int(x1))


@dataclass(frozen=True)
class Placement:
    """Where a layer sits in the world: per-axis ``scale``, ``translate``, ``units`` and the
    user's ``axis_labels`` (None: napari's defaults), so that results share the input's sliders.

    The one rule for a layer's pixel size, which Enhance, Train and napari's writer follow (so that
    a job and a saved file record the same): it is known, in µm, where every axis is in a length
    unit and the pixels are not 1 µm (the placeholder of a file without a pixel size,
    :func:`..data.image.known_pixel_um`). A scale in napari's default "pixel" unit, or in any unit
    that is no length, says where the layer lies, not how large its pixels are: its pixel is that
    many pixels of the world (``sampling``), whether the plugin made the layer (a 2x
    super-resolution result of an image without a pixel size: 0.5) or the user set it (a z
    spacing of 5)."""

    scale: tuple[float, ...]
    translate: tuple[float, ...]
    units: tuple[str, ...]
    axis_labels: tuple[str, ...] | None = None

    @classmethod
    def of(cls, layer: Any) -> "Placement":
        return cls(
            tuple(float(s) for s in layer.scale),
            tuple(float(t) for t in layer.translate),
            tuple(str(u) for u in layer.units),
            tuple(str(a) for a in layer.axis_labels),
        )

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any], ndim: int) -> "Placement":
        """The placement that layer keyword arguments (a reader's) or a layer's state (what napari
        gives a writer) give, napari's defaults where one is missing."""
        given = {key: kwargs[key] for key in ("scale", "translate", "units") if kwargs.get(key) is not None}
        return cls(
            tuple(float(s) for s in given.get("scale", (1.0,) * ndim)),
            tuple(float(t) for t in given.get("translate", (0.0,) * ndim)),
            tuple(str(u) for u in given.get("units", (PIXEL,) * ndim)),
        )

    def _um_per_unit(self) -> tuple[float, ...] | None:
        """Micrometres per world unit along each axis, or None where the pixel size is not known
        (the rule in the class docstring)."""
        from ..data.image import known_pixel_um, unit_to_um

        per_unit = [unit_to_um(u) for u in self.units]
        lengths = [f for f in per_unit if f is not None]
        if len(lengths) < len(per_unit) or known_pixel_um([abs(float(s)) * f for s, f in zip(self.scale, lengths)]) is None:
            return None
        return tuple(lengths)

    def voxel_um(self) -> tuple[float, ...]:
        """The voxel size in µm, the jobs' unit, per axis; 1 (unknown, as a file without a pixel
        size reads) where the pixel size is not known. A mirrored axis (a negative scale) has
        pixels as large as unmirrored: what Train records (Enhance and the writer refuse such a
        layer, :meth:`mirror_refusal`, as they must place what they write)."""
        per_unit = self._um_per_unit()
        return tuple(abs(float(s)) * f for s, f in zip(self.scale, per_unit)) if per_unit else (1.0,) * len(self.scale)

    def position_um(self, values: Sequence[float]) -> tuple[float, ...]:
        """A position in this placement's world (a result's first pixel) in the jobs' unit: µm
        where the pixel size is known, else in this image's own pixels (the world position over
        the scale), which a job given no pixel size counts in."""
        per_unit = self._um_per_unit()
        if per_unit:
            return tuple(float(v) * f for v, f in zip(values, per_unit))
        return tuple(float(v) / float(s) for v, s in zip(values, self.scale))

    def sampling(self) -> tuple[float, ...]:
        """This layer's pixel in its world's pixels, per axis, where the pixel size is not known
        (its scale: 0.5 for a 2x super-resolution result of an image without a pixel size, 5 in z
        for a z spacing set without units), else 1: what a file of it records (predict's and the
        writer's ``sampling``), so that it reopens where the layer lies (:meth:`position_um` is
        in its own pixels)."""
        return (1.0,) * len(self.scale) if self._um_per_unit() else self.scale

    def measured(self) -> "Placement":
        """This placement in its units where the pixel size is known, else in napari's pixel
        unit (its place unchanged), so that nothing derived from it (0.5 µm for a super-resolution
        result of a layer at a reader's 1 µm placeholder) reads as a measured size."""
        if self._um_per_unit():
            return self
        return Placement(self.scale, self.translate, (PIXEL,) * len(self.scale), self.axis_labels)

    def mirror_refusal(self, name: str, cannot: str, then: str) -> str | None:
        """The one-line refusal of layer ``name`` where it is mirrored (a negative scale, which
        napari allows), which napari's writer and Enhance give (a result is placed by its input's
        scale, and a file records no mirror): ``cannot``, what the mirror prevents; ``then``, what
        to do once its scale is positive. None where no axis is mirrored."""
        if all(s > 0 for s in self.scale):
            return None
        shown, positive = " x ".join(f"{s:g}" for s in self.scale), ", ".join(f"{abs(s):g}" for s in self.scale)
        return (
            f"layer {name!r} is mirrored (scale {shown}), which {cannot}; give it a positive scale "
            f"(in napari's console: viewer.layers[{name!r}].scale = ({positive})) and {then}"
        )

    def labels(self) -> tuple[str, ...]:
        """The axis labels, napari's defaults ("-3", "-2", "-1") where the layer had none."""
        return self.axis_labels or tuple(str(i) for i in range(-len(self.scale), 0))

    def kwargs(self) -> dict[str, Any]:
        return {"scale": self.scale, "translate": self.translate, "units": self.units, "axis_labels": self.labels()}


def unsized_note(layer: Any, cost: str, unscaled_too: bool = True) -> tuple[str, str] | None:
    """What Enhance and Train say of a layer without a pixel size (the rule of :class:`Placement`),
    and at what level (None: it has one, or nothing to say): ``cost``, what the missing size costs
    here, a clause ("it cannot be compared with ..."); ``unscaled_too``: said of a layer at
    napari's default scale too (in info). A scale other than 1 that the user set (not a plugin's
    result in pixels) is likely a size given without its unit: a warning that it only places the
    layer. napari 0.9 has no editor for a layer's units: the fix is this plugin's reader (which
    gives a file's pixel size its unit) or napari's console."""
    from ..data.image import known_pixel_um, unit_to_um

    where = Placement.of(layer)
    if known_pixel_um(where.voxel_um()) is not None:
        return None
    name, reopen = layer.name, "reopen its file with the napari-emdiffuse reader"
    axes = ", ".join("zyx"[-len(where.scale) :])
    if all(unit_to_um(u) for u in where.units):  # in lengths, its pixels at the 1 µm of a file without a pixel size
        return (
            f"layer {name!r}: its pixels are 1 µm across, the size a file without a pixel size reads as, so it is taken to have "
            f"none, and {cost}. If its pixels are known, in napari's console: viewer.layers[{name!r}].scale = ({axes}) in its unit",
            "info",
        ) if unscaled_too else None
    if any(s != 1.0 for s in where.scale) and not is_plugin_output(layer):
        scale = " x ".join(f"{s:g}" for s in where.scale)
        return (
            f"layer {name!r}: its scale {scale} has no length unit, so it places the layer but is no pixel size, and {cost}. "
            f"If it is one, give it its unit: {reopen}, or in napari's console: viewer.layers[{name!r}].units = 'nm' (or the unit it is in)",
            "warning",
        )
    if not unscaled_too:
        return None
    return (
        f"layer {name!r} has no pixel size, so {cost}. To give it one, {reopen}, "
        f"or in napari's console: viewer.layers[{name!r}].scale = ({axes}); viewer.layers[{name!r}].units = 'nm'",
        "info",
    )


def samples_kwargs(placement: Placement) -> dict[str, Any]:
    """Layer keyword arguments for the samples of a result placed at ``placement``: the sample
    axis in front of its axes, whose slider says what it moves through."""
    return {key: (SAMPLE_AXIS[key], *value) for key, value in placement.kwargs().items()}


def output_placement(
    source: Placement, offset: Sequence[int], in_shape: Sequence[int], out_shape: Sequence[int], out_voxel: Sequence[float]
) -> Placement:
    """Placement of a result computed from the source's pixels ``offset : offset + in_shape``.

    ``out_shape`` and ``out_voxel`` are the variant's output geometry on the same axes. Where
    pixels get finer, the variant's output either tiles the input's extent edge to edge
    (super-resolution: ``out_n * out_voxel == in_n * in_voxel``), and pixel centres move by half
    the change of pixel size; or it resamples between the input's first and last pixel centres
    (isotropic output in z: the first output plane is the first input slice), and they do not.
    """
    translate = []
    for t, o, s, n_in, n_out, vo in zip(source.translate, offset, source.scale, in_shape, out_shape, out_voxel):
        tiles_extent = math.isclose(n_out * vo, n_in * s, rel_tol=1e-6)
        translate.append(t + o * s + ((vo - s) / 2 if tiles_extent else 0.0))
    return Placement(tuple(float(v) for v in out_voxel), tuple(translate), source.units, source.axis_labels)


def sample_values(data: Any, max_pixels: int = 2_000_000) -> np.ndarray:
    """The finite values of a (possibly lazy, large) array, or of whole planes spread through it."""
    if data.size <= max_pixels or data.ndim < 3:
        values = np.asarray(data)
    else:
        n = max(1, min(data.shape[0], max_pixels // int(np.prod(data.shape[-2:]))))
        values = np.stack([np.asarray(data[int(i)]) for i in np.linspace(0, data.shape[0] - 1, n).round()])
    values = values.ravel()
    return values[np.isfinite(values)]


def sample_percentile(data: Any, q: float) -> float:
    """A percentile of :func:`sample_values` (0 for an array with no finite value)."""
    values = sample_values(data)
    return float(np.percentile(values, q)) if values.size else 0.0


def _nanometres(value: float, unit: str) -> float | None:
    import pint

    try:
        return float((value * pint.get_application_registry()(unit)).to("nanometer").magnitude)
    except (pint.errors.DimensionalityError, pint.errors.UndefinedUnitError, AttributeError):
        return None


def length_text(value: float, unit: str) -> str:
    """A length in nm when the unit allows it (EM voxels and resolutions are read in nm), else as given."""
    return voxel_text((value,), unit)


def voxel_text(voxel: Sequence[float], unit: str) -> str:
    """A voxel size such as "50 × 4 × 4 nm" (in the unit given when it is not a length)."""
    nm = [_nanometres(v, unit) for v in voxel]
    if all(v is not None for v in nm):
        return " × ".join(f"{v:.4g}" for v in nm) + " nm"
    return " × ".join(f"{v:.4g}" for v in voxel) + f" {unit}"
