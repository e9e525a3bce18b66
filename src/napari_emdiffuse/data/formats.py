"""What a file is, from its first bytes and its name: the facts the readers dispatch on.

Imports no reader, so every reader (and :func:`.io.read_image`) can ask it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import InputError


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


#: the format each file suffix names (a file's first bytes come first: :func:`sniff`)
BY_SUFFIX = {
    ".tif": "tiff", ".tiff": "tiff", ".btf": "tiff", ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5",
    ".mrc": "mrc", ".rec": "mrc", ".st": "mrc", ".ali": "mrc", ".map": "mrc", ".mrcs": "mrc", ".png": "png",
}  # fmt: skip
#: The file suffixes :func:`read_image` reads (folders aside: zarr, N5, slice folders).
FILE_SUFFIXES: tuple[str, ...] = tuple(BY_SUFFIX)
#: what a name ends in that says what the file or folder is, not what it holds (longest first)
NAME_SUFFIXES = tuple(sorted({*FILE_SUFFIXES, ".ome.tif", ".ome.tiff", ".ome.zarr", ".zarr", ".n5"}, key=len, reverse=True))


def file_stem(path: str | Path) -> str:
    """A file's or folder's name less the suffix that says its format (``my.run.ome.tif`` and
    ``my.run.zarr``: ``my.run``), the user's name kept whole, dots and all; a name without such
    a suffix (a folder of slices) whole. What the napari reader names layers by."""
    name = Path(path).name
    lower = name.lower()
    for suffix in NAME_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


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


#: files that make a folder part of a zarr (v2, v3) or N5 store
STORE_MARKERS = (".zarray", ".zgroup", "zarr.json", "attributes.json")


def store_root(path: str | Path) -> Path:
    """The outermost zarr or N5 store that ``path`` lies in (``path`` itself when its parent is
    none): an array of a store (``result.zarr/mean``) belongs to the whole store, which a write
    anywhere inside would change."""
    root = Path(path)
    for parent in root.parents:
        if not _store_folder(parent):
            break
        root = parent
    return root


def _store_folder(folder: Path) -> bool:
    """Whether ``folder`` is part of a zarr store (its own marker files), or of an N5 store
    (``attributes.json``, a name common enough that it counts only inside a ``.n5`` folder)."""
    if any((folder / name).is_file() for name in STORE_MARKERS[:3]):
        return True
    return (folder / "attributes.json").is_file() and any(p.suffix.lower() == ".n5" for p in (folder, *folder.parents))


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
