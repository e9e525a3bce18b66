"""Single-file volume formats (MRC, HDF5), single PNG images and folders of slices.

MRC is what FIB-SEM and tomography software writes (voxel size in Å in the header); HDF5 is
what ilastik, CREMI and many acquisition tools write (voxel size in dataset attributes, under
several conventions). Folders of numbered slices are how many microscopes export a run.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from .containers import default_chunks
from .formats import sniff
from .image import Image, iter_planes, lazy
from .tiff import read_tiff, read_tiff_pixels, tiff_header
from .safe_output import refuse_overwrite, replacing_file

IMOD_STAMP = 1146047817  # IMOD marks its MRC files; flag bit 0 clear means mode 0 is unsigned bytes
_IMOD_AT = 40  # the stamp and flags are header bytes 152-159, i.e. offset 40 of mrcfile's ``extra2``
SLICE_SUFFIXES = (".tif", ".tiff", ".png")


#: bytes per voxel of the MRC modes this reader knows (0-2 and 6 grey values, 12 float16)
_MRC_MODE_BYTES = {0: 1, 1: 2, 2: 4, 6: 2, 12: 2}


def _check_mrc_header(path: Path) -> None:
    """Refuse an MRC header whose sizes are impossible for the file, before mrcfile maps it."""
    with open(path, "rb") as f:
        raw = f.read(1024)
    if len(raw) < 1024:
        raise InputError(f"{path}: not a readable MRC file (the 1024-byte header is cut short at {len(raw)} bytes)")
    order = ">" if raw[212:214] == b"\x11\x11" else "<"
    nx, ny, nz, mode = np.frombuffer(raw[:16], order + "i4")
    nsymbt = int(np.frombuffer(raw[92:96], order + "i4")[0])
    if min(nx, ny, nz) < 1:
        raise InputError(f"{path}: not a readable MRC file (corrupt header: image size nx, ny, nz = {nx}, {ny}, {nz}; each must be at least 1)")
    if int(mode) not in _MRC_MODE_BYTES:
        raise InputError(f"{path}: not a readable MRC file (mode {int(mode)} is not a grey-value mode this tool reads: 0, 1, 2, 6 or 12)")
    need = 1024 + max(nsymbt, 0) + int(nx) * int(ny) * int(nz) * _MRC_MODE_BYTES[int(mode)]
    size = path.stat().st_size
    if nsymbt < 0 or need > size:
        raise InputError(f"{path}: not a readable MRC file (truncated, or a corrupt header: it declares {need} bytes, the file has {size})")


class _PlaneFile:
    """Pixels stored plane after plane from ``offset`` of a file, read with ``pread`` on demand.

    Not a memory map: a mapped file that shrinks after it was opened (or a network share that
    drops) kills the process with SIGBUS at the first page touched; a read that comes back short
    or fails is an :class:`InputError` naming the file instead.
    """

    def __init__(self, path: Path, offset: int, shape: tuple[int, ...], stored: np.dtype, dtype: np.dtype) -> None:
        self.path, self.offset, self.shape = path, offset, tuple(shape)
        self.stored, self.dtype, self.ndim = stored, dtype, len(shape)
        per_plane = self.shape[1:] if self.ndim > 2 else self.shape
        self.plane_bytes = int(np.prod(per_plane, dtype=np.int64)) * stored.itemsize

    def _read(self, lo: int, hi: int) -> np.ndarray:
        """Planes ``lo`` to ``hi - 1`` (the whole image for 2D data), as an array."""
        want = (hi - lo) * self.plane_bytes
        start = self.offset + lo * self.plane_bytes
        try:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                buf = os.pread(fd, want, start)
            finally:
                os.close(fd)
        except OSError as err:
            raise InputError(f"{self.path}: cannot read its pixel data ({err.strerror or err}); on a network share, check the connection") from None
        if len(buf) < want:
            raise InputError(f"{self.path}: the file ends at {start + len(buf)} bytes, before the pixels its header declares: it was cut or replaced while being read")
        shape = self.shape if self.ndim == 2 else (hi - lo, *self.shape[1:])
        return np.frombuffer(buf, self.stored).reshape(shape).astype(self.dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if self.ndim == 2 or not key or not isinstance(key[0], (slice, int, np.integer)):
            return self._read(0, 1 if self.ndim == 2 else self.shape[0])[key]
        first, rest = key[0], key[1:]
        if isinstance(first, slice):
            zs = range(*first.indices(self.shape[0]))
            if not zs:
                return np.empty((0, *self.shape[1:]), self.dtype)[(slice(None), *rest)]
            lo, hi = min(zs), max(zs) + 1
            return self._read(lo, hi)[(np.asarray(zs) - lo, *rest)]
        z = range(self.shape[0])[int(first)]  # negative indices count from the end; out of range raises
        return self._read(z, z + 1)[(0, *rest)]


def read_mrc(path: Path) -> Image:
    """An MRC file, read plane by plane on demand (lazy), voxel size from the header (Å -> µm)."""
    import mrcfile
    import mrcfile.utils

    _check_mrc_header(path)
    try:
        with mrcfile.open(str(path), mode="r", permissive=False, header_only=True) as mrc:
            header = mrc.header.copy()
            vs = mrc.voxel_size.copy()
    except (ValueError, OSError) as err:
        raise InputError(f"{path}: not a readable MRC file ({err})") from None
    stored = np.dtype(mrcfile.utils.data_dtype_from_header(header))
    shape = tuple(int(n) for n in mrcfile.utils.data_shape_from_header(header))
    stamp, flags = _imod_fields(header)
    dtype = stored.newbyteorder("=")
    if int(header.mode) == 0 and stamp == IMOD_STAMP and not flags & 1:
        stored = dtype = np.dtype(np.uint8)  # IMOD's unsigned bytes
    planes = _PlaneFile(path, 1024 + int(header.nsymbt), shape, stored, dtype)
    xyz = [float(vs.x), float(vs.y), float(vs.z)]
    um = [v * 1e-4 if v > 0 else 1.0 for v in xyz]  # 0 means "not set"
    voxel = (um[2], um[1], um[0]) if len(shape) == 3 else (um[1], um[0])
    chunks = (1, *shape[1:]) if len(shape) >= 3 else shape
    return Image(lazy(planes, path, chunks), voxel, path, meta={"format": "mrc", "mode": int(header.mode), "chunks": chunks})


def _order(header: Any) -> str:
    """The header's byte order as a numpy prefix (MRC files come in both)."""
    order = header.mode.dtype.byteorder
    return {"=": "<" if np.little_endian else ">", "|": "<"}.get(order, order)


def _imod_fields(header: Any) -> tuple[int, int]:
    stamp, flags = np.frombuffer(header.extra2.tobytes()[_IMOD_AT : _IMOD_AT + 8], dtype=_order(header) + "i4")
    return int(stamp), int(flags)


def write_mrc(path: str | Path, data: Any, voxel: Sequence[float], protect: Sequence[Path | None] = ()) -> Path:
    """Write an MRC file plane by plane, voxel size in the header (µm -> Å).

    8-bit data is written as mode 0 with IMOD's unsigned-byte flag (what IMOD and Fiji expect);
    float64 as float32; other types MRC cannot hold are refused.
    """
    import mrcfile

    path = Path(path)
    refuse_overwrite(path, protect)
    dtype = np.dtype(data.dtype)
    store = {np.dtype(np.uint8): np.int8, np.dtype(np.float64): np.float32}.get(dtype, dtype)
    if np.dtype(store) not in (np.int8, np.int16, np.uint16, np.float32, np.float16):
        raise InputError(f"{path}: MRC cannot hold {dtype} data (use uint8, int16, uint16 or float32)")
    if data.ndim not in (2, 3):
        raise InputError(f"{path}: MRC holds 2D or 3D images, got shape {tuple(data.shape)}")
    shape = tuple(int(s) for s in data.shape)
    with replacing_file(path) as tmp, mrcfile.new_mmap(str(tmp), shape=shape, mrc_mode=mrcfile.utils.mode_from_dtype(np.dtype(store)), overwrite=True) as mrc:
        out = mrc.data if data.ndim == 3 else mrc.data[None]
        for z, plane in enumerate(iter_planes(data)):
            out[z] = plane.view(np.int8) if dtype == np.uint8 else plane.astype(store, copy=False)
        zyx = [float(v) for v in voxel] if data.ndim == 3 else [1.0, *map(float, voxel)]
        mrc.voxel_size = (zyx[2] * 1e4, zyx[1] * 1e4, zyx[0] * 1e4)  # Å, in MRC's x, y, z order
        if dtype == np.uint8:
            extra = bytearray(mrc.header.extra2.tobytes())
            extra[_IMOD_AT : _IMOD_AT + 8] = np.array([IMOD_STAMP, 0], _order(mrc.header) + "i4").tobytes()
            mrc.header.extra2 = np.frombuffer(bytes(extra), dtype=mrc.header.extra2.dtype)
        mrc.update_header_stats()
    return path


def _h5_datasets(f: Any) -> list[str]:
    found: list[str] = []
    f.visititems(lambda name, obj: found.append(name) if hasattr(obj, "shape") and len(obj.shape) >= 2 else None)
    return found


def _h5_voxel(ds: Any) -> tuple[float, ...]:
    """``element_size_um`` (Fiji, ilastik), ``voxel_size`` (µm, ours) or ``resolution`` (CREMI, nm)."""
    n = ds.ndim
    for key, scale in (("element_size_um", 1.0), ("voxel_size", 1.0), ("resolution", 1e-3)):
        v = ds.attrs.get(key)
        if v is not None and len(np.atleast_1d(v)) == n:
            return tuple(float(x) * scale for x in np.atleast_1d(v))
    return (1.0,) * n


def read_hdf5(path: Path, dataset: str | None = None) -> Image:
    """An HDF5 dataset (``file.h5:/dataset``), lazily over its own chunks."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise InputError(f"{path}: not a readable HDF5 file ({err})") from None
    names = _h5_datasets(f)
    if dataset is None:
        if len(names) != 1:
            listing = ", ".join(f"{path}:/{n}" for n in names[:8]) or "none"
            raise InputError(f"{path}: name the dataset to read ({len(names)} image datasets: {listing})")
        dataset = names[0]
    key = dataset.strip("/")
    if key in f and not hasattr(f[key], "shape"):
        inside = [n for n in names if n.startswith(key + "/")] or names
        raise InputError(f"{path}:/{key} is a group, not a dataset; name one of its image datasets: {', '.join(f'{path}:/{n}' for n in inside[:8]) or 'none'}")
    if key not in f:
        raise InputError(f"{path}: no dataset {dataset!r} (image datasets: {', '.join(names[:8]) or 'none'})")
    ds = f[dataset.strip("/")]
    if ds.is_virtual or ds.external:  # pixels from other files: anything on this machine could be read
        kind = "a virtual dataset (its pixels come from other files)" if ds.is_virtual else "stored in external files"
        raise InputError(f"{path}:/{ds.name.strip('/')} is {kind}; copy it into a self-contained dataset first")
    chunks = ds.chunks or ((1, *ds.shape[1:]) if ds.ndim == 3 else ds.shape)
    meta = {"format": "hdf5", "dataset": ds.name, "chunks": chunks}
    return Image(lazy(ds, path, chunks), _h5_voxel(ds), path, meta=meta)


def write_hdf5(
    path: str | Path,
    data: Any,
    voxel: Sequence[float],
    dataset: str = "data",
    chunks: Sequence[int] | None = None,
    protect: Sequence[Path | None] = (),
) -> Path:
    """Write a dataset chunk by chunk (gzip), voxel size as ``element_size_um`` (Fiji, ilastik).

    An existing file keeps its other datasets: the new one is added to a copy written beside
    it, which replaces the file only when complete."""
    import dask.array as da
    import h5py


    path = Path(path)
    refuse_overwrite(path, protect)
    dtype = np.float32 if np.dtype(data.dtype) == np.float64 else np.dtype(data.dtype)
    chunks = tuple(chunks) if chunks is not None else default_chunks(data.shape)
    mode = "a" if path.is_file() else "w"
    with replacing_file(path, keep_existing=True) as tmp, h5py.File(tmp, mode) as f:
        if dataset in f:
            del f[dataset]
        ds = f.create_dataset(dataset, shape=data.shape, dtype=dtype, chunks=chunks, compression="gzip")
        src = data if isinstance(data, da.Array) else da.from_array(np.asarray(data), chunks=chunks)
        da.store(src.astype(dtype).rechunk(chunks), ds, lock=True)
        ds.attrs["element_size_um"] = np.asarray(voxel, np.float64)
    return path


def read_png(path: Path) -> Image:
    """A single PNG (8- or 16-bit grey, or RGB for :func:`check_image` to refuse)."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as im:
            a = np.asarray(im)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable PNG file ({err})") from None
    return Image(a, (1.0, 1.0), path, meta={"format": "png"})


def natural_key(name: str) -> list[Any]:
    """``slice_2`` before ``slice_10``: digits compare as numbers."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _plane_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and type of one slice; a TIFF slice is checked complete (every page inside the
    file) as it is listed, so a cut slice deep in a long run is refused before the run starts,
    and refused when it holds several planes: each file is one z-slice, and a stack among them
    would lose all but one plane or stack up as a fourth axis."""
    try:
        if sniff(path) == "tiff":
            shape, dtype, axes = tiff_header(path)
            kept = [(ax, n) for ax, n in zip(axes, shape) if n > 1 or ax in "YX"]  # a length-one z is still one plane
            stacked = [(ax, n) for ax, n in kept if ax not in "YXS"]  # S: the samples of a pixel (RGB)
            planes = int(np.prod([n for _, n in stacked]))
            if planes > 1:  # named as it reads on its own: slices of a stack (Z; Q, I: tifffile's unnamed pages), else planes
                what = "slices (" if all(ax in "ZQI" for ax, _ in stacked) else f"planes (axes {axes}, "
                raise InputError(f"{path} holds {planes} {what}shape {shape}); a slice folder holds one 2D image per file: split it, or open it on its own as a stack")
            if len(kept) > 2:
                raise InputError(f"{path}: an RGB or multi-channel image (shape {shape}); a slice folder holds one grey-value 2D image per file")
            return tuple(n for _, n in kept), dtype
        a = read_png(path).data
        return a.shape, a.dtype
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - a broken slice: say which
        raise InputError(f"{path}: cannot read this slice ({type(err).__name__}: {' '.join(str(err).split())})") from None


def read_slices(folder: Path) -> Image:
    """A folder of TIFF/PNG slices as a (z, y, x) stack in natural order, read slice by slice.

    Every file is one 2D slice (a file of several pages is refused, naming it) with the first
    one's shape and type; the voxel size in y and x comes from the first slice's TIFF metadata
    (z is unknown and set to 1).
    """
    import dask
    import dask.array as da

    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in SLICE_SUFFIXES and p.is_file()), key=lambda p: natural_key(p.name))
    if not files:
        raise InputError(f"{folder}: a folder with no TIFF or PNG slices (and not a zarr or N5 container)")
    headers = [_plane_header(p) for p in files]
    first = headers[0]
    for p, h in zip(files, headers):
        if h != first:
            raise InputError(f"{p}: shape {h[0]} {h[1]} differs from the first slice {files[0].name} ({first[0]} {first[1]})")

    def load(p: Path) -> np.ndarray:
        try:
            if sniff(p) == "tiff":
                return read_tiff_pixels(p).reshape(first[0])  # without a length-one z
            return read_png(p).data
        except InputError:
            raise
        except Exception as err:  # noqa: BLE001 - a slice broken since the folder was listed
            raise InputError(f"{p}: cannot read this slice ({type(err).__name__}: {err})") from None

    planes = [da.from_delayed(dask.delayed(load)(p), shape=first[0], dtype=first[1]) for p in files]
    voxel: tuple[float, ...] = (1.0, 1.0)
    if sniff(files[0]) == "tiff":
        voxel = read_tiff(files[0]).voxel[-2:]
    return Image(da.stack(planes), (1.0, *voxel), folder, meta={"format": f"folder of {len(files)} slices", "chunks": (1, *first[0])})
