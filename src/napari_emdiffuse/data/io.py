"""Reading and writing EM images with their voxel size: the one entry, by format.

Every reader returns an :class:`~.image.Image`: a lazy (dask) array and its voxel size in the
array's axis order, in micrometres. :func:`read_image` recognises a file by its content first
(the magic bytes of TIFF, HDF5, PNG and MRC, :mod:`.formats`) and by its name second, so a
mis-named file still opens, and a corrupt or truncated one is refused with a message naming the
file and what is wrong. Writers go plane by plane or tile by tile, so outputs larger than memory
are fine, and never overwrite an input file. The formats themselves live below this module
(:mod:`.tiff`, :mod:`.containers`, :mod:`.volume_files`), which never import it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from . import containers, volume_files
from .formats import BY_SUFFIX, sniff, special_file, split_dataset
from .image import Image
from .memory import memory_budget
from .tiff import read_tiff, write_tiff

log = logging.getLogger(__name__)


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
        log.warning("%s: the voxel size %s in its metadata is not positive; using 1 per pixel along those axes", file, tuple(voxel))
    return out


def _read_any(file: Path, dataset: str | None, level: int) -> Image:
    if file.is_dir():
        kind = containers.container_kind(file)
        if kind == "zarr":
            return containers.read_zarr(file, dataset, level)
        if kind == "n5":
            return containers.read_n5(file, dataset)
        return volume_files.read_slices(file)
    if file.is_file() and file.stat().st_size == 0:  # a copy cut short before its first byte, most likely
        raise InputError(f"{file}: the file is empty (0 bytes)")
    kind = sniff(file)
    named = BY_SUFFIX.get(file.suffix.lower())
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


def write_image(path: str | Path, data: Any, voxel: Sequence[float], protect: Sequence[Path] = (), chunks: Sequence[int] | None = None) -> Path:
    """Write by extension: ``.tif``/``.tiff`` (TIFF), ``.zarr`` (OME-Zarr), ``.mrc``, ``.h5``/``.hdf5``
    (``file.h5:/dataset`` picks the dataset name)."""
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
