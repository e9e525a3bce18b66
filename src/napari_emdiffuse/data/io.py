"""Reading and writing EM images with their voxel size.

Every reader returns an :class:`Image`: a lazy (dask) array and its voxel size in the array's
axis order, in micrometres. :func:`read_image` recognises a file by its content first (the magic
bytes of TIFF, HDF5, PNG and MRC) and by its name second, so a mis-named file still opens, and a
corrupt or truncated one is refused with a message naming the file and what is wrong. Writers
go plane by plane or tile by tile, so outputs larger than memory are fine, and never overwrite
an input file.
"""

from __future__ import annotations

import json
import logging
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import InputError
from .memory import memory_budget

log = logging.getLogger(__name__)
UNIT = "um"
#: what write_tiff can store (ImageJ or OME-TIFF); float64 is written as float32
TIFF_DTYPES = tuple(np.dtype(t) for t in ("u1", "i1", "u2", "i2", "u4", "i4", "f4", "f8"))
#: TIFFs larger than this are written as BigTIFF (classic TIFF offsets end at 4 GiB)
BIGTIFF_BYTES = 3_900_000_000
#: micrometres per unit, for the spellings found in ImageJ, OME and NGFF metadata
UNITS_UM = {
    "um": 1.0, "µm": 1.0, "\\u00b5m": 1.0, "micron": 1.0, "micrometer": 1.0, "micrometre": 1.0,
    "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3, "a": 1e-4, "å": 1e-4, "angstrom": 1e-4,
    "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3, "m": 1e6, "meter": 1e6, "metre": 1e6,
    "pm": 1e-6, "picometer": 1e-6,
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
    return UNITS_UM.get(str(unit).strip().lower().replace("\u00b5", "µ"))


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
    if ij:
        unit_scale = unit_to_um(ij.get("unit", "um")) or 1.0
    else:  # no ImageJ unit: resolution tags in inches/cm give no micrometres we can trust
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


def _ome_voxel(xml: str, axes: str) -> tuple[float, ...] | None:
    """Physical sizes of the spatial axes from OME-XML (first image), in micrometres."""
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
        scale = unit_to_um(pixels.get(f"PhysicalSize{ax}Unit", "µm"))
        out.append(float(size) * scale if size and scale else 1.0)
    return tuple(out)


def _squeeze_axes(data: Any, axes: str) -> tuple[Any, str]:
    """Drop length-one channel/time axes; keep everything else for :func:`check_image` to judge."""
    index, kept = [], ""
    for ax, n in zip(axes, data.shape):
        if ax in "CTQIS" and n == 1 and len(axes) > 2:
            index.append(0)
        else:
            index.append(slice(None))
            kept += ax
    return data[tuple(index)], kept


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
            if key.compression == 1 and counts and sum(counts) < key.nbytes:
                raise InputError(f"{path}: corrupt TIFF header (page {idx + 1} declares {key.shape} {key.dtype}, {key.nbytes} bytes, but holds {sum(counts)} bytes of pixels)")
    finally:
        pages.useframes = useframes


def read_tiff(path: Path) -> Image:
    """A TIFF or OME-TIFF stack, lazily (one chunk per page or tile)."""
    import tifffile
    import zarr

    path = Path(path)
    try:
        tf = tifffile.TiffFile(path)
        check_tiff_complete(tf, path)
        series = tf.series[0]
        arr = zarr.open(series.aszarr(), mode="r")
        if isinstance(arr, zarr.Group):
            arr = arr["0"]
        data, axes = _squeeze_axes(lazy(arr, path), series.axes)
        voxel = None
        if tf.is_ome and tf.ome_metadata:
            spatial = "".join(a for a in axes if a in "ZYX")
            voxel = _ome_voxel(tf.ome_metadata, spatial) if len(spatial) == data.ndim else None
        if voxel is None:
            voxel = _tiff_voxel(tf, data.ndim) if data.ndim in (2, 3) else (1.0,) * data.ndim
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - tifffile raises many types on a corrupt file
        raise InputError(f"{path}: not a readable TIFF file ({' '.join(str(err).split()) or type(err).__name__})") from None
    meta = {"format": "ome-tiff" if tf.is_ome else "tiff", "axes": axes, "provenance": tiff_provenance(tf)}
    return Image(data, tuple(float(v) for v in voxel), path, meta=meta)


def sniff(path: Path) -> str | None:
    """The format a file's first bytes say it is: 'tiff', 'hdf5', 'png', 'mrc', or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(224)
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror or err})") from None
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:8] == b"\x89HDF\r\n\x1a\n":
        return "hdf5"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[208:211] == b"MAP":
        return "mrc"
    return None


_BY_SUFFIX = {
    ".tif": "tiff", ".tiff": "tiff", ".btf": "tiff", ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5",
    ".mrc": "mrc", ".rec": "mrc", ".st": "mrc", ".ali": "mrc", ".map": "mrc", ".mrcs": "mrc", ".png": "png",
}  # fmt: skip
#: The file suffixes :func:`read_image` reads (folders aside: zarr, N5, slice folders).
FILE_SUFFIXES: tuple[str, ...] = tuple(_BY_SUFFIX)


def split_dataset(path: str | Path) -> tuple[Path, str | None]:
    """``file.h5:/dataset`` or ``volume.n5:/dataset`` -> (file, dataset); a plain path -> (path, None)."""
    text = str(path)
    p = Path(text)
    if p.exists():
        return p, None
    m = re.match(r"^(.+?\.(?:h5|hdf5|hdf|n5|zarr)):/?(.*)$", text, re.IGNORECASE)
    if m and Path(m.group(1)).exists():
        return Path(m.group(1)), m.group(2) or None
    return p, None


def special_file(path: Path) -> str | None:
    """What ``path`` is when it exists but is neither a regular file nor a folder ("a named
    pipe (FIFO)", "a character device", ...), else None: opening one would block or read
    endless bytes, so callers refuse it by name before opening it."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kinds = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "a special file")


def read_image(path: str | Path, dataset: str | None = None, level: int = 0) -> Image:
    """Open an image lazily: TIFF/OME-TIFF, a folder of TIFF/PNG slices, zarr v2/v3 and
    OME-Zarr (``path`` or ``path.zarr/dataset``; ``level`` of a multiscale pyramid), N5, MRC,
    HDF5 (``file.h5:/dataset`` or ``dataset=``), PNG.

    Whatever the file holds, the result is an image or an :class:`InputError` naming the file:
    special files are refused before they are opened (a FIFO would block), a failure inside a
    format library becomes one message, and a voxel size that is not a positive number is
    replaced by 1 with a warning.
    """
    file, inner = split_dataset(path)
    dataset = dataset or inner
    if not file.exists():
        raise InputError(f"{file}: no such file or folder")
    special = special_file(file)
    if special:
        raise InputError(f"{file}: {special}, not a regular file or folder; give an image file")
    try:
        img = _read_any(file, dataset, level)
    except InputError:
        raise
    except MemoryError:
        raise InputError(f"{file}: too large to read into memory here (or its header is corrupt)") from None
    except Exception as err:  # noqa: BLE001 - format libraries raise anything on a corrupt file
        raise InputError(f"{file}: cannot read ({type(err).__name__}: {' '.join(str(err).split())})") from None
    if 0 in img.shape:
        raise InputError(f"{file}: the image is empty (shape {img.shape})")
    _check_chunk_size(img.data, file)
    img.voxel = _checked_voxel(img.voxel, file)
    return img


def _check_chunk_size(data: Any, file: Path) -> None:
    """Refuse a file whose header declares blocks (chunks, strips, tiles) too large to decode in
    memory: a corrupt or hostile header must not make us allocate terabytes."""
    chunks = getattr(data, "chunks", None)
    block = [max(c) for c in chunks] if chunks and isinstance(chunks[0], tuple) else list(data.shape)
    nbytes = int(np.prod(block, dtype=np.float64)) * np.dtype(data.dtype).itemsize
    if nbytes > memory_budget():
        raise InputError(
            f"{file}: its header declares a {tuple(data.shape)} {data.dtype} image read in blocks of {tuple(block)}, "
            f"{nbytes / 2**30:,.1f} GiB each, more than this machine can decode at once (corrupt header?)"
        )


def _checked_voxel(voxel: Sequence[float], file: Path) -> tuple[float, ...]:
    """Voxel sizes that are positive numbers; anything else (0, negative, NaN) becomes 1 per pixel."""
    out = tuple(float(v) if np.isfinite(v) and v > 0 else 1.0 for v in voxel)
    if out != tuple(voxel):
        log.warning("%s: warning: the voxel size %s in its metadata is not positive; using 1 per pixel along those axes", file, tuple(voxel))
    return out


def _read_any(file: Path, dataset: str | None, level: int) -> Image:
    from . import containers, volume_files

    if file.is_dir():
        kind = containers.container_kind(file)
        if kind == "zarr":
            return containers.read_zarr(file, dataset, level)
        if kind == "n5":
            return containers.read_n5(file, dataset)
        return volume_files.read_slices(file)
    kind = sniff(file)
    named = _BY_SUFFIX.get(file.suffix.lower())
    if kind is None and named is not None:
        raise InputError(f"{file}: not a valid {named.upper()} file (its first bytes are not those of any format this tool reads); the file may be corrupt")
    if kind is None:
        raise InputError(f"{file}: unsupported file type {file.suffix!r} (use TIFF, OME-Zarr/zarr, N5, MRC, HDF5, PNG or a folder of slices)")
    if kind == "tiff":
        return read_tiff(file)
    if kind == "hdf5":
        return volume_files.read_hdf5(file, dataset)
    if kind == "mrc":
        return volume_files.read_mrc(file)
    return volume_files.read_png(file)


def _file_ids(path: Path) -> set[tuple[int, int]]:
    """(device, inode) of ``path`` and of each of its folders that exist."""
    ids = set()
    for p in (path, *path.parents):
        try:
            st = os.stat(p)
        except OSError:
            continue
        ids.add((st.st_dev, st.st_ino))
    return ids


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def refuse_overwrite(path: Path, protect: Sequence[Path | None]) -> None:
    """Raise when ``path`` is (or lies inside, or holds) one of the input paths; compared by
    resolved path and by device and inode, so a hard link to an input (or a second mount of
    its folder) is caught too."""
    target = Path(path).resolve()
    target_id, target_chain = _file_id(target), _file_ids(target)
    for p in protect:
        if p is None:
            continue
        src = Path(p).resolve()
        src_id = _file_id(src)
        same = src_id is not None and (src_id in target_chain or (target_id is not None and target_id in _file_ids(src)))
        if same or target == src or src in target.parents or target in src.parents:
            raise InputError(f"{path}: refusing to overwrite the input {p}; choose another output name")


def iter_planes(data: Any) -> Iterator[np.ndarray]:
    """Planes of a 2D or 3D (lazy) array, one at a time."""
    if data.ndim == 2:
        yield np.asarray(data)
        return
    for z in range(data.shape[0]):
        yield np.asarray(data[z])


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
    """Write a 2D/3D array (numpy or dask, plane by plane) as a TIFF with its voxel size (µm).

    ImageJ hyperstack for 8/16-bit and float32 data that fits a classic TIFF; otherwise an
    OME-TIFF (BigTIFF above 4 GB) whose physical sizes Fiji, napari and this reader understand.
    The ImageJ form also keeps ``origin`` (the first pixel's position in µm, z y x, as ImageJ's
    ``xorigin``/``yorigin``/``zorigin``, in pixels) and ``display_range`` (``min``/``max``).
    Written beside ``path`` and renamed into place when complete (:mod:`.safe_output`).
    ``provenance`` (JSON-able) goes into a private tag that ``emdiffuse info`` shows.
    """
    import tifffile

    from .safe_output import replacing_file

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
    with replacing_file(path) as tmp:
        if not big and dtype in (np.uint8, np.uint16, np.float32):
            meta: dict[str, Any] = {"unit": "um"}
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
        for ax, v in zip(axes, voxel):
            meta.update({f"PhysicalSize{ax}": v, f"PhysicalSize{ax}Unit": "µm"})
        resolution = (1e4 / voxel[-1], 1e4 / voxel[-2])  # pixels per centimetre, for readers without OME
        tifffile.imwrite(
            tmp, planes, shape=shape, dtype=dtype, ome=True, bigtiff=big, metadata=meta, resolution=resolution,
            resolutionunit="CENTIMETER", compression=None if big else "zlib", extratags=extratags,
        )  # fmt: skip
    return path


def write_image(path: str | Path, data: Any, voxel: Sequence[float], protect: Sequence[Path] = (), chunks: Sequence[int] | None = None) -> Path:
    """Write by extension: ``.tif``/``.tiff`` (TIFF), ``.zarr`` (OME-Zarr), ``.mrc``, ``.h5``/``.hdf5``
    (``file.h5:/dataset`` picks the dataset name)."""
    from . import containers, volume_files

    file, dataset = Path(str(path)), None
    m = re.match(r"^(.+?\.(?:h5|hdf5)):/?(.*)$", str(path), re.IGNORECASE)
    if m:
        file, dataset = Path(m.group(1)), m.group(2) or None
    suffix = file.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return write_tiff(file, data, voxel, protect)
    if suffix == ".zarr":
        return containers.write_ome_zarr(file, data, voxel, chunks=chunks, protect=protect)
    if suffix in (".mrc", ".rec", ".map"):
        return volume_files.write_mrc(file, data, voxel, protect)
    if suffix in (".h5", ".hdf5"):
        return volume_files.write_hdf5(file, data, voxel, dataset=dataset or "data", chunks=chunks, protect=protect)
    raise InputError(f"{path}: cannot write {suffix or 'files without an extension'} (use .tif, .zarr, .mrc or .h5)")
