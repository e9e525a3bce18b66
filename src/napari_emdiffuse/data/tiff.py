"""TIFF and OME-TIFF: read lazily page by page, written plane by plane with the voxel size.

Pages written one at a time read as one stack, as Fiji reads them; a file of several images of
different sizes is refused rather than read as its first.

A truncated file, or one whose header declares more than the file holds, is refused before
any pixel is read; written files carry our provenance in a private tag.

An image of several samples per pixel (RGB, RGBA, CMYK, grey+alpha, ...: its pages say so)
reads with its samples last, ``(y, x, 3)`` or ``(z, y, x, 3)``, whether the file stores them per
pixel (contiguous) or as planes (planar, which tifffile gives samples first): a stack of planar
RGB images read as stored would pass for a 4D volume. ``meta["colour"]`` names what its samples
are, and :func:`.normalise.check_image` refuses it by that name where grey values are needed.
One exception: a single image of three or four RGB planes that tifffile wrote with its shape
description is what ``tifffile.imwrite`` (and so napari's "Save layer") writes for a stack of
three or four grey slices; in an EM tool the stack is the likely meaning, so it reads as slices
(``meta["planes_as"]`` says so, and ``emdiffuse info`` shows it). Planar RGB written otherwise
stays colour.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from ..errors import InputError
from .image import Image, iter_planes, known_pixel_um, lazy, unit_to_um
from .safe_output import refuse_overwrite, replacing_file

#: what write_tiff can store (ImageJ or OME-TIFF); float64 is written as float32
TIFF_DTYPES = tuple(np.dtype(t) for t in ("u1", "i1", "u2", "i2", "u4", "i4", "f4", "f8"))
#: TIFFs larger than this are written as BigTIFF (classic TIFF offsets end at 4 GiB)
BIGTIFF_BYTES = 3_900_000_000


#: ImageJ's units of an image without a physical size: "pixel" (and the like; ImageJ reads an
#: empty unit as it), which a file carries where some size is not 1 (usually a z spacing) but no
#: length is known
IMAGEJ_PIXEL_UNITS = ("pixel", "pixels", "none", "")


def imagej_um_per_unit(ij: dict[str, Any]) -> float | None:
    """Micrometres per unit of an ImageJ TIFF's resolution and ``spacing``: the one reading of
    it. None where the unit is no length we know, read as a pixel (:data:`IMAGEJ_PIXEL_UNITS`):
    "inch", which ImageJ gives a file whose only size is a screen's dots per inch (a TIFF tag in
    inches is ignored too), or a unit we cannot convert. A size made up from it would be worse than none."""
    unit = str(ij.get("unit", "um")).strip()
    if unit.lower() in IMAGEJ_PIXEL_UNITS:
        return None
    return unit_to_um(unit)


def _tiff_voxel(tf: Any, ndim: int) -> tuple[float, ...]:
    """Voxel size (µm) of a TIFF of ``ndim`` (2 or 3) spatial axes."""
    zyx = _tiff_zyx(tf)
    return zyx[1:] if ndim == 2 else zyx


def imagej_stack_voxel(tf: Any) -> tuple[float, float, float] | None:
    """The (z, y, x) voxel of an ImageJ TIFF that records a z spacing (a single slice saved as a
    stack stays a stack of one, so its z position survives); None where it records none."""
    return _tiff_zyx(tf) if "spacing" in (tf.imagej_metadata or {}) else None


def _tiff_zyx(tf: Any) -> tuple[float, float, float]:
    """Voxel size from ImageJ metadata ('spacing', 'unit') and the XY resolution tags (pixels per
    unit). In a unit that is no length (:func:`imagej_um_per_unit`) the sizes are the voxel's
    shape in x pixels, as Fiji shows it (a 0.5-unit pixel and a spacing of 5: slices 10 pixels
    apart), with no size in µm. An unknown z is 1, as every reader gives a size it does not know,
    never scaled into a size."""
    page = tf.pages[0]
    widths = []  # y, x, in the file's unit
    for tag in ("YResolution", "XResolution"):
        t = page.tags.get(tag)
        num, den = t.value if t is not None else (1, 1)
        widths.append(den / num if num else 1.0)
    ij = tf.imagej_metadata or {}
    spacing = float(ij["spacing"]) if "spacing" in ij else None
    scale = 1.0
    if ij:
        scale = imagej_um_per_unit(ij)
        if scale is None:
            y, x = widths
            return (1.0 if spacing is None else spacing / x, y / x, 1.0)
    else:  # no ImageJ unit (nor spacing): resolution tags in inches/cm give no micrometres we can trust
        res_unit = page.tags.get("ResolutionUnit")
        if res_unit is not None and int(res_unit.value) == 3:  # centimetre
            scale = 1e4
        elif res_unit is not None and int(res_unit.value) == 2:  # inch: typical of screenshots, ignore
            widths = [1.0, 1.0]
    return (1.0 if spacing is None else spacing * scale, widths[0] * scale, widths[1] * scale)


#: the OME unit of a physical size in pixels: read only on Z, as a z spacing (what write_tiff
#: writes for a voxel without a pixel size); on Y or X it is no size, read as 1, never as µm
PIXEL_UNIT = "pixel"


def ome_voxel(xml: str, axes: str) -> tuple[float, ...] | None:
    """Physical sizes of the spatial axes from OME-XML (first image), in micrometres; a size in
    pixels only as a z spacing (:data:`PIXEL_UNIT`), so that no foreign file's pixels become µm."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None)
    if pixels is None:
        return None
    out = []
    for ax in axes:
        size = pixels.get(f"PhysicalSize{ax}")
        unit = pixels.get(f"PhysicalSize{ax}Unit", "µm")
        scale = unit_to_um(unit) or (1.0 if unit == PIXEL_UNIT and ax == "Z" else None)  # see PIXEL_UNIT
        out.append(float(size) * scale if size and scale else 1.0)
    if "Z" in axes and "X" in axes and pixels.get("PhysicalSizeZUnit") == PIXEL_UNIT and known_pixel_um(out) is not None:
        out[axes.index("Z")] *= out[-1]  # a z spacing in x pixels beside x pixels of a known size: that many of them, in µm
    return tuple(out)


def _squeeze_index(shape: Sequence[int], axes: str) -> tuple[tuple[Any, ...], str]:
    """The index that drops length-one channel/time axes, and the axes kept; everything else is
    kept for :func:`check_image` to judge."""
    index: list[Any] = []
    kept = ""
    for ax, n in zip(axes, shape):
        if ax in "CTQIS" and n == 1 and len(axes) > 2:
            index.append(0)
        else:
            index.append(slice(None))
            kept += ax
    return tuple(index), kept


#: the photometric interpretations (tifffile's names) of grey values, one sample per pixel
#: unless extra samples follow
GREY = ("MINISBLACK", "MINISWHITE")
#: the other photometric interpretations whose samples are a pixel's colour components: the
#: colour model each is, and its number of components
COLOUR_MODELS = {
    "RGB": ("RGB", 3), "YCBCR": ("YCbCr", 3), "SEPARATED": ("CMYK", 4), "CIELAB": ("CIELab", 3), "ICCLAB": ("CIELab", 3), "ITULAB": ("CIELab", 3),
}  # fmt: skip
#: TIFF extra-sample kinds that are an alpha (opacity) channel: associated, unassociated
ALPHA_SAMPLES = (1, 2)
#: what :func:`tiff_colour` calls grey values with an alpha channel (the napari reader keeps the grey)
GREY_ALPHA = "grey+alpha"


def tiff_colour(page: Any) -> str | None:
    """What the samples of a page of several samples per pixel are ("RGB", "RGBA", "CMYK",
    "grey+alpha", "RGB+2 extra samples", ...), from its photometric interpretation and extra
    samples; None for one grey value per pixel: the page's metadata, not its shape, says whether
    three values per pixel are colours or three slices."""
    samples = int(page.samplesperpixel)
    if samples == 1:  # grey values, or a palette's indices
        return None
    photometric = getattr(page.photometric, "name", str(page.photometric))
    model, components = ("grey", 1) if photometric in GREY else COLOUR_MODELS.get(photometric, (photometric.lower(), 1))
    extra = list(page.extrasamples)
    alpha = samples > components and bool(extra) and int(extra[0]) in ALPHA_SAMPLES
    name = (GREY_ALPHA if model == "grey" else model + "A") if alpha else model
    rest = samples - components - alpha
    return name + (f"+{rest} extra sample{'s' * (rest > 1)}" if rest > 0 else "")


class Layout(NamedTuple):
    """How :func:`read_tiff` gives a series."""

    index: tuple[Any, ...]  # drops length-one channel/time axes
    order: tuple[int, ...]  # of the axes kept: the samples ('S') of a multi-sample image last
    axes: str  # the kept axes' letters, in that order
    colour: str | None  # what a multi-sample image's samples are (:func:`tiff_colour`); None: grey
    planes_as: str | None  # three or four RGB(A) planes read as grey slices: what they are and were stored as


def _layout(series: Any, shaped: bool) -> Layout:
    """How :func:`read_tiff` gives ``series`` of a file (``shaped``: tifffile wrote it with its
    shape description)."""
    index, kept = _squeeze_index(series.shape, series.axes)
    colour = tiff_colour(series.keyframe)
    if shaped and colour in ("RGB", "RGBA") and kept == "SYX":
        # tifffile's way of writing three or four grey slices (see the module docstring): lettered
        # Q, as tifffile letters the pages of a larger stack it writes, since they are slices
        slices = series.shape[series.axes.index("S")]
        return Layout(index, (0, 1, 2), "QYX", None, f"{slices} grey slices, stored as one {colour} image (as tifffile writes small stacks)")
    order = list(range(len(kept)))
    if colour is not None and "S" in kept:
        order.append(order.pop(kept.index("S")))
    return Layout(index, tuple(order), "".join(kept[i] for i in order), colour, None)


def check_tiff_complete(tf: Any, path: Path) -> None:
    """Refuse a truncated TIFF, or one whose header declares more than the file or memory can
    hold, now, rather than failing half-way through a lazy read (or allocating terabytes)."""
    size = path.stat().st_size
    pages = tf.pages
    series = tf.series[0]
    first = pages[0]
    declared = (tf.imagej_metadata or {}).get("images")
    plane = max(int(np.prod(first.shape)), 1)
    if isinstance(declared, int) and series.size // plane < declared:
        raise InputError(f"{path}: the TIFF file is truncated (its ImageJ header declares {declared} images, the file holds {series.size // plane})")
    if series.dataoffset is not None and series.dataoffset + series.nbytes > size:
        raise InputError(f"{path}: the TIFF file is truncated ({series.nbytes} bytes of pixels declared, the file has {size} bytes)")
    _check_tiff_pages(pages, path, size)


def _check_tiff_pages(pages: Any, path: Path, size: int) -> None:
    """Every page's strips or tiles must lie inside the file and, uncompressed, hold the page:
    read from the page directories alone (no pixel is decoded; about 50 µs per page)."""
    useframes = pages.useframes
    pages.useframes = True  # light TiffFrames: offsets and byte counts without the full tag set
    try:
        for idx, page in enumerate(pages):
            offsets, counts = page.dataoffsets, page.databytecounts
            if offsets and counts and max(o + c for o, c in zip(offsets, counts)) > size:
                raise InputError(f"{path}: the TIFF file is truncated or corrupt (page {idx + 1} of {len(pages)} ends past the end of the file)")
            key = page.keyframe
            if key.compression == 1 and counts and sum(counts) < (need := _stored_bytes(key)):
                raise InputError(f"{path}: corrupt TIFF header (page {idx + 1} declares {key.shape} {key.dtype}, {need} bytes, but holds {sum(counts)} bytes of pixels)")
    finally:
        pages.useframes = useframes


def _stored_bytes(key: Any) -> int:
    """The fewest bytes an uncompressed page of this shape holds: its rows packed to whole
    bytes, not its decoded array's size, which is 8 times larger for a 1-bit (bilevel) page."""
    row_bits = int(key.imagewidth) * int(key.samplesperpixel) * int(key.bitspersample)
    return -(-row_bits // 8) * int(key.imagelength) * int(key.imagedepth)


def _open_stack(path: Path) -> Any:
    """The open TIFF, its first series the whole image. Pages written one by one are a series
    each to tifffile (one 'shaped' series per write), but one stack to Fiji: opened again without
    the shaped metadata, tifffile joins the pages of one shape and type into one series. A file
    of several images that do not join is refused rather than read as its first alone."""
    import tifffile

    tf = tifffile.TiffFile(path)
    series = tf.series
    if len(series) > 1 and tf.is_shaped:
        tf.close()
        tf = tifffile.TiffFile(path, is_shaped=False)
    if len(tf.series) > 1:
        tf.close()
        sizes = Counter(f"{'x'.join(map(str, s.shape))} {s.dtype}" for s in series)
        held = ", ".join(f"{n} of {size}" if n > 1 else size for size, n in sizes.items())
        what = "images of different sizes" if len(sizes) > 1 else "separate images"
        raise InputError(f"{path}: the TIFF file holds {len(series)} {what} ({held}), not one stack; save the one to enhance as a file of its own")
    return tf


def tiff_header(path: Path) -> tuple[tuple[int, ...], np.dtype, str]:
    """The shape, type and axes (tifffile's letters) :func:`read_tiff` gives ``path``, from the
    header alone, the file checked complete: a folder of slices is listed file by file."""
    path = Path(path)
    with _open_stack(path) as tf:
        check_tiff_complete(tf, path)
        series = tf.series[0]
        layout = _layout(series, tf.is_shaped)
        kept = [int(n) for n, i in zip(series.shape, layout.index) if isinstance(i, slice)]
        return tuple(kept[i] for i in layout.order), np.dtype(series.dtype), layout.axes


def _unreadable(path: Path, err: Exception) -> InputError:
    """The one-line refusal of a file tifffile cannot read."""
    return InputError(f"{path}: not a readable TIFF file ({' '.join(str(err).split()) or type(err).__name__})")


def read_tiff_pixels(path: Path) -> np.ndarray:
    """All pixels of a TIFF as :func:`read_tiff` gives them, read now and the file closed: a
    folder of thousands of slices must not hold a file open per slice (nor pay a lazy
    reader's set-up, 35 times the read itself, for each)."""
    path = Path(path)
    try:
        with _open_stack(path) as tf:
            series = tf.series[0]
            layout = _layout(series, tf.is_shaped)
            return series.asarray()[layout.index].transpose(layout.order)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - tifffile raises many types on a corrupt file
        raise _unreadable(path, err) from None


def read_tiff(path: Path) -> Image:
    """A TIFF or OME-TIFF stack, lazily (one chunk per page or tile)."""
    import zarr

    path = Path(path)
    try:
        tf = _open_stack(path)
        check_tiff_complete(tf, path)
        series = tf.series[0]
        arr = zarr.open(series.aszarr(), mode="r")
        if isinstance(arr, zarr.Group):
            arr = arr["0"]
        layout = _layout(series, tf.is_shaped)
        axes, colour = layout.axes, layout.colour
        data = lazy(arr, path)[layout.index].transpose(layout.order)
        grey = data.ndim - (colour is not None)  # the axes before a multi-sample image's samples
        voxel, in_pixels = None, False
        if tf.is_ome and tf.ome_metadata:
            spatial = "".join(a for a in axes if a in "ZYX")
            voxel = ome_voxel(tf.ome_metadata, spatial) if len(spatial) == grey else None
            in_pixels = voxel is not None and voxel[0] != 1.0 and known_pixel_um(voxel) is None and f'PhysicalSizeZUnit="{PIXEL_UNIT}"' in tf.ome_metadata
        if voxel is None:
            voxel = _tiff_voxel(tf, grey) if grey in (2, 3) else (1.0,) * grey
            ij = tf.imagej_metadata
            in_pixels = bool(ij) and imagej_um_per_unit(ij) is None and voxel != (1.0,) * grey
        voxel = (*voxel, *(1.0,) * (data.ndim - grey))  # a sample is no distance
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - tifffile raises many types on a corrupt file
        raise _unreadable(path, err) from None
    meta = {"format": "ome-tiff" if tf.is_ome else "tiff", "axes": axes, "provenance": tiff_provenance(tf)}
    if colour is not None:
        meta["colour"] = colour
    if layout.planes_as is not None:
        meta["planes_as"] = layout.planes_as
    if in_pixels:  # no length is known, only the voxel's shape in x pixels (a z spacing in pixels)
        meta["voxel_unit"] = PIXEL_UNIT
    return Image(data, tuple(float(v) for v in voxel), path, meta=meta)


#: private TIFF tag holding our provenance (JSON): what made the file and whether it is complete
PROVENANCE_TAG = 65000


def tiff_provenance(tf: Any) -> dict[str, Any] | None:
    """The provenance a TIFF written by :func:`write_tiff` carries, or None."""
    tag = tf.pages[0].tags.get(PROVENANCE_TAG)
    if tag is None:
        return None
    try:
        value = json.loads(tag.value)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_tiff(
    path: str | Path,
    data: Any,
    voxel: Sequence[float],
    protect: Sequence[Path | None] = (),
    origin: Sequence[float] | None = None,
    display_range: tuple[float, float] | None = None,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write a 2D/3D array (numpy or dask, plane by plane) as a TIFF with its voxel size (µm);
    one without a pixel size (:func:`.image.known_pixel_um`) is written in pixels (ImageJ's unit
    "pixel", no OME physical size but a z spacing other than 1, in pixels), claiming no µm.

    ImageJ hyperstack for 8/16-bit and float32 data that fits a classic TIFF, unless the name
    asks for OME (``.ome.tif``: Bio-Formats, OMERO and QuPath choose their reader by it); otherwise
    an OME-TIFF (BigTIFF above 4 GB) whose physical sizes Fiji, napari and this reader understand.
    The ImageJ form also keeps ``origin`` (the first pixel's position in µm, z y x, as ImageJ's
    ``xorigin``/``yorigin``/``zorigin``, in pixels) and ``display_range`` (``min``/``max``).
    Written beside ``path`` and renamed into place when complete (:mod:`.safe_output`).
    ``provenance`` (JSON-able) goes into a private tag that ``emdiffuse info`` shows.
    """
    import tifffile

    path = Path(path)
    refuse_overwrite(path, protect)
    dtype = np.dtype(data.dtype)
    if dtype not in TIFF_DTYPES:
        raise InputError(f"{path}: a TIFF cannot hold {dtype} data (use float32, or write .zarr)")
    if dtype == np.float64:
        dtype = np.dtype(np.float32)
    if data.ndim not in (2, 3):
        raise InputError(f"{path}: can only write 2D or 3D images as TIFF, got shape {tuple(data.shape)}")
    voxel = tuple(float(v) for v in voxel)
    if len(voxel) != data.ndim or not all(np.isfinite(v) and v > 0 for v in voxel):
        voxel = (1.0,) * data.ndim  # no usable voxel size: say one unit per pixel rather than fail
    shape = tuple(int(s) for s in data.shape)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    big = nbytes > BIGTIFF_BYTES
    planes = (p.astype(dtype, copy=False) for p in iter_planes(data))
    extratags = [(PROVENANCE_TAG, "s", 0, json.dumps(provenance), True)] if provenance else []
    sized = known_pixel_um(voxel) is not None  # else in pixels: Fiji must not read the placeholder's 1 as 1 µm
    ome = path.name.lower().endswith((".ome.tif", ".ome.tiff"))
    with replacing_file(path) as tmp:
        if not (big or ome) and dtype in (np.uint8, np.uint16, np.float32):
            meta: dict[str, Any] = {"unit": "um" if sized else "pixel"}
            if len(shape) == 3:
                meta.update(spacing=voxel[0], axes="ZYX")
            if origin is not None and any(origin):  # ImageJ: position = (index - origin) * spacing
                for ax, o, v in zip("zyx"[-len(shape) :], origin, voxel):
                    meta[f"{ax}origin"] = -float(o) / v
            if display_range is not None:
                meta.update(min=float(display_range[0]), max=float(display_range[1]))
            resolution = (1.0 / voxel[-1], 1.0 / voxel[-2])
            tifffile.imwrite(
                tmp, planes, shape=shape, dtype=dtype, imagej=True, resolution=resolution, metadata=meta,
                compression="zlib", extratags=extratags,
            )  # fmt: skip
            return path
        axes = "ZYX"[-len(shape) :]
        meta = {"axes": axes}
        for ax, v in zip(axes, voxel):  # without a pixel size: only a z spacing other than 1, in pixels (PIXEL_UNIT)
            if sized or (ax == "Z" and v != 1.0):
                meta.update({f"PhysicalSize{ax}": v, f"PhysicalSize{ax}Unit": "µm" if sized else PIXEL_UNIT})
        # pixels per centimetre, for readers without OME
        resolution = {"resolution": (1e4 / voxel[-1], 1e4 / voxel[-2]), "resolutionunit": "CENTIMETER"} if sized else {}
        tifffile.imwrite(
            tmp, planes, shape=shape, dtype=dtype, ome=True, bigtiff=big, metadata=meta, compression=None if big else "zlib",
            extratags=extratags, **resolution,
        )  # fmt: skip
    return path
