"""Bad input of every kind, fed to the command line as a careless user or an adversary would.

Each case builds its tiny bad files in its own folder and runs one command. Every case must end
with the documented exit status (2: a problem the user can fix), exactly one line on stderr that
names the file or key at fault, no traceback, no hang, and every file in the folder unchanged.
Cases run in-process (``cli.main``) under an alarm, which also interrupts a Python ``open`` blocked
on a FIFO; the ones whose FIFO would be opened inside a C library (safetensors, torch.load), where
no alarm reaches, run as subprocesses with a timeout.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import tifffile

from napari_emdiffuse.cli import main

TIMEOUT_S = 20
#: a subprocess also starts Python and imports torch: on a busy 2-core machine that alone can take 20 s
SUBPROCESS_TIMEOUT_S = 60
CASES: dict[str, Callable[[Path], "Case"]] = {}


class Case:
    """A command line and what its one-line error must mention."""

    def __init__(self, argv: list[str], names: str | Path, code: int = 2, subprocess: bool = False) -> None:
        self.argv, self.names, self.code, self.subprocess = [str(a) for a in argv], str(names), code, subprocess


def case(fn: Callable[[Path], Case]) -> Callable[[Path], Case]:
    CASES[fn.__name__] = fn
    return fn


# --- helpers that make tiny files -------------------------------------------------------------


def _tiff_bytes(width: int, height: int, data: bytes, bits: int = 16, compression: int = 1, extra: tuple = ()) -> bytes:
    """A hand-made one-strip classic TIFF whose header says whatever the case needs."""
    entries = sorted(
        [
            (256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, bits), (259, 3, 1, compression),
            (262, 3, 1, 1), (273, 4, 1, 0), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, len(data)), *extra,
        ]
    )  # fmt: skip
    ifd_size = 2 + 12 * len(entries) + 4
    data_at = 8 + ifd_size
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        value = data_at if tag == 273 else value
        ifd += struct.pack("<HHI", tag, typ, count) + (struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value))
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + data


def _tif(path: Path, a: np.ndarray | None = None, **kw) -> Path:
    tifffile.imwrite(path, np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) if a is None else a, **kw)
    return path


def _ramp(shape: tuple[int, ...] = (2, 64, 64), dtype=np.uint8) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(10, 200, shape).astype(dtype)


def _ome_zarr(path: Path) -> Path:
    from napari_emdiffuse.data.containers import write_ome_zarr

    write_ome_zarr(path, _ramp((2, 32, 32)), (0.05, 0.004, 0.004))
    return path


def _zattrs(path: Path, attrs: object) -> None:
    (path / ".zattrs").write_text(json.dumps(attrs))


def _mrc(path: Path, a: np.ndarray | None = None) -> Path:
    import mrcfile

    with mrcfile.new(str(path), overwrite=True) as m:
        m.set_data(_ramp((2, 32, 32), np.int16) if a is None else a)
    return path


def _patch(path: Path, offset: int, fmt: str, *values) -> Path:
    raw = bytearray(path.read_bytes())
    raw[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, *values)
    path.write_bytes(bytes(raw))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """An untrained tiny model: a valid folder to break in every way (no training needed)."""
    from napari_emdiffuse.config import load_preset
    from napari_emdiffuse.model_file import Model, ModelInfo
    from napari_emdiffuse.variants import complete

    folder = tmp_path_factory.mktemp("fuzz_model") / "model"
    Model(complete(load_preset("tiny")), ModelInfo(card="tiny: an untrained test model")).save(folder)
    return folder


#: the valid model folder of this module's fixture, set by the test before a case is built
MODEL_DIR: list[Path] = []


def _model(tmp: Path, name: str = "model") -> Path:
    """A copy of the valid model in the case's folder, for the case to break (or to use)."""
    import shutil

    dst = tmp / name
    shutil.copytree(MODEL_DIR[0], dst)
    return dst


def _edit_json(path: Path, fn: Callable[[dict], None]) -> None:
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta))


def _preset(tmp: Path, data: object, name: str = "p.json") -> Path:
    p = tmp / name
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return p


def _predict(tmp: Path, model: Path | str, inp: Path | str, *more: str) -> list:
    return ["predict", "--model", model, "--input", inp, "--output", tmp / "out.tif", "-q", *more]


def _train(tmp: Path, *more: str) -> list:
    return ["train", "--preset", "tiny", "--out", tmp / "run", "--iterations", "1", "-q", *more]


# --- info: every reader, every kind of broken file ----------------------------------------------


@case
def tiff_truncated_in_header(tmp):
    good = _tif(tmp / "good.tif").read_bytes()
    (tmp / "a.tif").write_bytes(good[:20])
    return Case(["info", tmp / "a.tif"], "a.tif")


@case
def tiff_truncated_in_data(tmp):
    good = _tif(tmp / "good.tif", _ramp((3, 64, 64))).read_bytes()
    (tmp / "a.tif").write_bytes(good[: len(good) // 2])
    return Case(["info", tmp / "a.tif"], "a.tif")


@case
def tiff_huge_declared_over_4kb(tmp):
    (tmp / "a.tif").write_bytes(_tiff_bytes(200_000, 200_000, zlib.compress(bytes(4096)), compression=8))
    return Case(["predict", "--model", _model(tmp), "--input", tmp / "a.tif", "--output", tmp / "o.tif", "-q"], "a.tif")


@case
def tiff_huge_declared_info(tmp):
    (tmp / "a.tif").write_bytes(_tiff_bytes(2**31 - 1, 2**31 - 1, bytes(4096)))
    return Case(["info", tmp / "a.tif"], "a.tif")


@case
def tiff_zero_width(tmp):
    (tmp / "a.tif").write_bytes(_tiff_bytes(0, 64, bytes(128)))
    return Case(["info", tmp / "a.tif"], "a.tif")


@case
def tiff_unknown_compression(tmp):
    (tmp / "a.tif").write_bytes(_tiff_bytes(8, 8, bytes(128), compression=12345))
    return Case(["predict", "--model", _model(tmp), "--input", tmp / "a.tif", "--output", tmp / "o.tif", "-q"], "a.tif")


@case
def tiff_corrupt_zlib(tmp):
    (tmp / "a.tif").write_bytes(_tiff_bytes(64, 64, b"\x78\x9c" + os.urandom(200), compression=8))
    return Case(["predict", "--model", _model(tmp), "--input", tmp / "a.tif", "--output", tmp / "o.tif", "-q"], "a.tif")


@case
def tiff_magic_only(tmp):
    (tmp / "a.tif").write_bytes(b"II*\x00")
    return Case(["info", tmp / "a.tif"], "a.tif")


@case
def tiff_empty_file(tmp):
    (tmp / "a.tif").write_bytes(b"")
    return Case(["info", tmp / "a.tif"], "a.tif")


@case
def tiff_voxel_zero(tmp):
    _tif(tmp / "a.tif", _ramp(), imagej=True, resolution=(250, 250), metadata={"spacing": 0.0, "unit": "um"})
    return Case(_predict(tmp, _model(tmp), tmp / "a.tif", "--steps", "1", "--samples", "2"), "a.tif", code=0)


@case
def tiff_voxel_negative(tmp):
    _tif(tmp / "a.tif", _ramp(), imagej=True, resolution=(250, 250), metadata={"spacing": -0.05, "unit": "um"})
    return Case(["info", tmp / "a.tif"], "a.tif", code=0)


@case
def ome_tiff_bad_physical_size(tmp):
    _tif(tmp / "a.ome.tif", _ramp(), ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": -4.0, "PhysicalSizeY": 4.0, "PhysicalSizeZ": 50.0})
    return Case(["info", tmp / "a.ome.tif"], "a.ome.tif", code=0)


@case
def tiff_with_nan(tmp):
    a = np.ones((64, 64), np.float32)
    a[3, 4] = np.nan
    _tif(tmp / "a.tif", a)
    return Case(_predict(tmp, _model(tmp), tmp / "a.tif"), "a.tif")


@case
def tiff_complex(tmp):
    _tif(tmp / "a.tif", np.ones((64, 64), np.complex64))
    return Case(_predict(tmp, _model(tmp), tmp / "a.tif"), "a.tif")


@case
def tiff_rgb(tmp):
    _tif(tmp / "a.tif", np.zeros((64, 64, 3), np.uint8), photometric="rgb")
    return Case(_predict(tmp, _model(tmp), tmp / "a.tif"), "a.tif")


@case
def tiff_4d(tmp):
    _tif(tmp / "a.tif", _ramp((2, 2, 32, 32)))
    return Case(_predict(tmp, _model(tmp), tmp / "a.tif"), "a.tif")


@case
def tiff_constant(tmp):
    _tif(tmp / "a.tif", np.full((64, 64), 7, np.uint8))
    return Case(_predict(tmp, _model(tmp), tmp / "a.tif"), "a.tif")


@case
def tiff_keep_dtype_int64(tmp):
    _tif(tmp / "a.tif", _ramp((64, 64), np.int64))
    return Case(_predict(tmp, _model(tmp), tmp / "a.tif", "--keep-dtype", "--steps", "1", "--samples", "2"), "a.tif")


@case
def tiff_disk_full_leftover(tmp):
    good = _tif(tmp / "good.tif", _ramp((4, 64, 64), np.float32), imagej=True).read_bytes()
    (tmp / "a.tif").write_bytes(good[: len(good) * 2 // 3])
    return Case(["info", tmp / "a.tif"], "a.tif")


@case
def tiff_written_by_us_then_cut(tmp):
    """What a disk-full run of an older version left: write_tiff's zlib ImageJ stack, cut short."""
    from napari_emdiffuse.data.io import write_tiff

    write_tiff(tmp / "good.tif", np.random.default_rng(0).random((4, 64, 64), np.float32), (0.05, 0.004, 0.004))
    raw = (tmp / "good.tif").read_bytes()
    (tmp / "a.tif").write_bytes(raw[: len(raw) * 2 // 3])
    return Case(_predict(tmp, _model(tmp), tmp / "a.tif"), "a.tif")


def _tiff_page_past_the_end(path: Path, page: int = 1) -> Path:
    """A 3-page zlib TIFF whose middle page's strip offset points past the end of the file (the
    first and last pages are fine, so only a check of every page finds it)."""
    tifffile.imwrite(path, _ramp((3, 64, 64)), compression="zlib", photometric="minisblack")
    with tifffile.TiffFile(path) as tf:
        tag = tf.pages[page].tags["StripOffsets"]
        at, typ = tag.valueoffset, tag.dtype
    assert tag.count == 1
    return _patch(path, at, "<I" if typ == 4 else "<Q", path.stat().st_size + 10)


@case
def tiff_middle_page_past_the_end(tmp):
    return Case(["info", _tiff_page_past_the_end(tmp / "a.tif")], "a.tif")


@case
def zarr_v3_bad_metadata(tmp):
    (tmp / "a.zarr").mkdir()
    (tmp / "a.zarr" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "array", "shape": [-1]}')
    return Case(["info", tmp / "a.zarr"], "a.zarr")


@case
def n5_dataset_without_blocks(tmp):
    (tmp / "a.n5").mkdir()
    (tmp / "a.n5" / "attributes.json").write_text(json.dumps({"dimensions": [8, 8], "blockSize": [8, 8], "dataType": "uint8", "compression": {"type": "raw"}}))
    return Case(_predict(tmp, _model(tmp), tmp / "a.n5"), "a.n5")


def _n5(path: Path, **attrs) -> Path:
    (path / "raw").mkdir(parents=True)
    (path / "attributes.json").write_text(json.dumps({"n5": "2.0.0"}))
    meta = {"dimensions": [32, 32, 2], "blockSize": [32, 32, 1], "dataType": "uint8", "compression": {"type": "raw"}, **attrs}
    (path / "raw" / "attributes.json").write_text(json.dumps(meta))
    return path


@case
def n5_dataset_missing(tmp):
    return Case(["info", f"{_n5(tmp / 'a.n5')}:/nope"], "a.n5: no N5 dataset 'nope'")


@case
def n5_resolution_not_numbers(tmp):
    return Case(["info", f"{_n5(tmp / 'a.n5', resolution=['a', 'b', 'c'])}:/raw"], "a.n5:/raw: the N5 voxel size")


@case
def n5_block_size_zero(tmp):
    return Case(_predict(tmp, _model(tmp), f"{_n5(tmp / 'a.n5', blockSize=[0, 0, 0])}:/raw"), "a.n5")


@case
def zarr_pyramid_scale_wrong_length(tmp):
    from napari_emdiffuse.data.containers import write_ome_zarr

    path = write_ome_zarr(tmp / "a.zarr", _ramp((2, 32, 32)), (0.05, 0.004, 0.004), levels=3)
    attrs = json.loads((path / ".zattrs").read_text())
    attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"] = [{"type": "scale", "scale": [0.004, 0.004]}]
    _zattrs(path, attrs)
    return Case(["info", path], "a.zarr: malformed OME-Zarr metadata (a 'scale' transformation has 2 values for 3 axes")


@case
def zarr_pyramid_level_two_missing(tmp):
    from napari_emdiffuse.data.containers import write_ome_zarr

    path = write_ome_zarr(tmp / "a.zarr", _ramp((2, 32, 32)), (0.05, 0.004, 0.004), levels=3)
    import shutil

    shutil.rmtree(path / "2")
    return Case(["info", path, "--level", "2"], "a.zarr")


@case
def preset_patch_not_multiple_of_16(tmp):
    return Case(["presets", "--show", _preset(tmp, {"base": "tiny", "train": {"patch_size": 17}})], "train.patch_size")


@case
def preset_sample_steps_huge(tmp):
    return Case(["presets", "--show", _preset(tmp, {"base": "tiny", "sample": {"steps": 1e9}})], "sample.steps")


@case
def preset_channel_mults_huge(tmp):
    return Case(["presets", "--show", _preset(tmp, {"base": "tiny", "network": {"channel_mults": [1, 100000]}})], "network.channel_mults")


@case
def preset_folder(tmp):
    (tmp / "p.json").mkdir()
    return Case(["presets", "--show", tmp / "p.json"], "p.json")


@case
def model_is_a_file(tmp):
    (tmp / "model.json").write_text("{}")
    return Case(_predict(tmp, tmp / "model.json", _tif(tmp / "a.tif", _ramp())), "model.json")


@case
def model_weights_are_a_fifo(tmp):
    m = _model(tmp)
    (m / "weights.safetensors").unlink()
    os.mkfifo(m / "weights.safetensors")
    return Case(["predict", "--model", m, "--input", _tif(tmp / "a.tif", _ramp()), "--output", tmp / "o.tif", "-q"], "weights.safetensors", subprocess=True)


@case
def mrc_zero_slices(tmp):
    return Case(["info", _patch(_mrc(tmp / "a.mrc"), 8, "<i", 0)], "a.mrc")


@case
def png_truncated(tmp):
    from PIL import Image

    Image.fromarray(_ramp((64, 64))).save(tmp / "good.png")
    (tmp / "a.png").write_bytes((tmp / "good.png").read_bytes()[:60])
    return Case(_predict(tmp, _model(tmp), tmp / "a.png"), "a.png")


@case
def random_bytes_named_tif(tmp):
    (tmp / "a.tif").write_bytes(np.random.default_rng(1).bytes(300))
    return Case(["info", tmp / "a.tif"], "a.tif")


@case
def text_file(tmp):
    (tmp / "notes.txt").write_text("hello")
    return Case(["info", tmp / "notes.txt"], "notes.txt")


@case
def missing_file(tmp):
    return Case(["info", tmp / "nope.tif"], "nope.tif")


@case
def empty_folder(tmp):
    (tmp / "slices").mkdir()
    return Case(["info", tmp / "slices"], "slices")


@case
def slices_one_corrupt(tmp):
    (tmp / "s").mkdir()
    _tif(tmp / "s" / "s1.tif", _ramp((32, 32)))
    (tmp / "s" / "s2.tif").write_bytes(b"II*\x00" + bytes(10))
    return Case(_predict(tmp, _model(tmp), tmp / "s"), "s")


@case
def slices_one_cut_in_its_pixels(tmp):
    """The header of the cut slice is intact: only its strips reach past the end of the file."""
    (tmp / "s").mkdir()
    _tif(tmp / "s" / "s1.tif", _ramp((32, 32)))
    raw = _tif(tmp / "s" / "s2.tif", _ramp((32, 32))).read_bytes()
    (tmp / "s" / "s2.tif").write_bytes(raw[: len(raw) - 300])
    return Case(["info", tmp / "s"], "s2.tif")


@case
def slices_one_a_folder_of_pages(tmp):
    (tmp / "s").mkdir()
    _tif(tmp / "s" / "s1.tif", _ramp((32, 32)))
    _tiff_page_past_the_end(tmp / "s" / "s2.tif")
    return Case(_predict(tmp, _model(tmp), tmp / "s"), "s2.tif")


@case
def slices_mismatched(tmp):
    (tmp / "s").mkdir()
    _tif(tmp / "s" / "s1.tif", _ramp((32, 32)))
    _tif(tmp / "s" / "s2.tif", _ramp((32, 48)))
    return Case(["info", tmp / "s"], "s2.tif")


@case
def zarr_missing_level_array(tmp):
    import shutil

    _ome_zarr(tmp / "a.zarr")
    shutil.rmtree(tmp / "a.zarr" / "0")
    return Case(["info", tmp / "a.zarr"], "a.zarr")


@case
def zarr_multiscales_not_objects(tmp):
    _ome_zarr(tmp / "a.zarr")
    _zattrs(tmp / "a.zarr", {"multiscales": ["oops"]})
    return Case(["info", tmp / "a.zarr"], "a.zarr")


@case
def zarr_multiscales_no_path(tmp):
    _ome_zarr(tmp / "a.zarr")
    _zattrs(tmp / "a.zarr", {"multiscales": [{"datasets": [{"nopath": 1}]}]})
    return Case(["info", tmp / "a.zarr"], "a.zarr")


@case
def zarr_multiscales_bad_axes(tmp):
    _ome_zarr(tmp / "a.zarr")
    _zattrs(tmp / "a.zarr", {"multiscales": [{"axes": [3, None], "datasets": [{"path": "0"}]}]})
    return Case(["info", tmp / "a.zarr"], "a.zarr")


@case
def zarr_multiscales_bad_scale(tmp):
    _ome_zarr(tmp / "a.zarr")
    _zattrs(tmp / "a.zarr", {"multiscales": [{"datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": ["a", "b", "c"]}]}]}]})
    return Case(["info", tmp / "a.zarr"], "a.zarr")


@case
def zarr_scale_zero(tmp):
    _ome_zarr(tmp / "a.zarr")
    _zattrs(tmp / "a.zarr", {"multiscales": [{"datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [0.0, 0.004, -0.004]}]}]}]})
    return Case(["info", tmp / "a.zarr"], "a.zarr", code=0)


@case
def zarr_level_out_of_range(tmp):
    _ome_zarr(tmp / "a.zarr")
    return Case(["info", tmp / "a.zarr", "--level", "7"], "a.zarr")


@case
def zarr_array_bad_json(tmp):
    _ome_zarr(tmp / "a.zarr")
    (tmp / "a.zarr" / "0" / ".zarray").write_text("{not json")
    return Case(["info", tmp / "a.zarr"], "a.zarr")


@case
def zarr_chunk_corrupt(tmp):
    _ome_zarr(tmp / "a.zarr")
    for chunk in (tmp / "a.zarr" / "0").rglob("*"):
        if chunk.is_file() and not chunk.name.startswith("."):
            chunk.write_bytes(b"garbage")
    return Case(_predict(tmp, _model(tmp), tmp / "a.zarr", "--steps", "1", "--samples", "2"), "a.zarr")


@case
def zarr_group_plain(tmp):
    import zarr

    zarr.open_group(str(tmp / "g.zarr"), mode="w", zarr_format=2)
    return Case(["info", tmp / "g.zarr"], "g.zarr")


def _set(path: Path, **attrs) -> Path:
    """A training set's folder as `prepare` marks it, with whatever attributes the case needs."""
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.attrs.update({"format": "napari-emdiffuse-training-set", "variant": "denoise", "variant_options": {}, "complete": True, **attrs})
    return path


@case
def training_set_without_arrays(tmp):
    return Case(_train(tmp, "--data", _set(tmp / "set.zarr")), "set.zarr")


@case
def training_set_damaged_attrs(tmp):
    return Case(["info", _set(tmp / "set.zarr", voxel_size=7, report=[1])], "set.zarr")


@case
def zarr_huge_chunk_declared(tmp):
    import zarr

    zarr.open_array(str(tmp / "a.zarr"), mode="w", shape=(10**6, 10**6), chunks=(10**6, 10**6), dtype="u2", zarr_format=2)
    return Case(_predict(tmp, _model(tmp), tmp / "a.zarr"), "a.zarr")


@case
def n5_bad_json(tmp):
    (tmp / "a.n5").mkdir()
    (tmp / "a.n5" / "attributes.json").write_text("{")
    return Case(["info", tmp / "a.n5"], "a.n5")


@case
def mrc_negative_nx(tmp):
    _patch(_mrc(tmp / "a.mrc"), 0, "<i", -5)
    return Case(["info", tmp / "a.mrc"], "a.mrc")


@case
def mrc_huge_declared(tmp):
    path = _mrc(tmp / "a.mrc")
    _patch(path, 0, "<iii", 100_000, 100_000, 100_000)
    return Case(["info", path], "a.mrc")


@case
def mrc_truncated(tmp):
    path = _mrc(tmp / "a.mrc")
    path.write_bytes(path.read_bytes()[:1500])
    return Case(["info", path], "a.mrc")


@case
def mrc_header_only_part(tmp):
    path = _mrc(tmp / "a.mrc")
    path.write_bytes(path.read_bytes()[:300])
    return Case(["info", path], "a.mrc")


@case
def mrc_bad_mode(tmp):
    path = _patch(_mrc(tmp / "a.mrc"), 12, "<i", 77)
    return Case(["info", path], "a.mrc")


@case
def mrc_huge_extended_header(tmp):
    path = _patch(_mrc(tmp / "a.mrc"), 92, "<i", 2**31 - 1)
    return Case(["info", path], "a.mrc")


@case
def hdf5_external_storage(tmp):
    import h5py

    secret = tmp / "secret.bin"
    secret.write_bytes(bytes(range(256)) * 16)
    with h5py.File(tmp / "a.h5", "w") as f:
        f.create_dataset("data", shape=(64, 64), dtype="u1", external=[(str(secret), 0, 4096)])
    return Case(["info", tmp / "a.h5"], "a.h5")


@case
def hdf5_virtual(tmp):
    import h5py

    with h5py.File(tmp / "src.h5", "w") as f:
        f.create_dataset("data", data=_ramp((32, 32)))
    layout = h5py.VirtualLayout(shape=(32, 32), dtype="u1")
    layout[:] = h5py.VirtualSource(str(tmp / "src.h5"), "data", shape=(32, 32))
    with h5py.File(tmp / "a.h5", "w") as f:
        f.create_virtual_dataset("data", layout)
    return Case(["info", tmp / "a.h5"], "a.h5")


@case
def hdf5_truncated(tmp):
    import h5py

    with h5py.File(tmp / "good.h5", "w") as f:
        f.create_dataset("data", data=_ramp((2, 64, 64)))
    (tmp / "a.h5").write_bytes((tmp / "good.h5").read_bytes()[:1000])
    return Case(["info", tmp / "a.h5"], "a.h5")


@case
def hdf5_no_images(tmp):
    import h5py

    with h5py.File(tmp / "a.h5", "w") as f:
        f.create_dataset("x", data=np.arange(5))
    return Case(["info", tmp / "a.h5"], "a.h5")


@case
def hdf5_missing_dataset(tmp):
    import h5py

    with h5py.File(tmp / "a.h5", "w") as f:
        f.create_dataset("data", data=_ramp((32, 32)))
    return Case(["info", f"{tmp / 'a.h5'}:/nope"], "a.h5")


def _h5_in_groups(path: Path) -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        grp = f.create_group("volumes")
        grp.create_dataset("raw", data=_ramp((2, 32, 32)))
        grp.create_dataset("labels", data=_ramp((2, 32, 32)))
        f.create_dataset("volumes_mean", data=1.0)
    return path


@case
def hdf5_group_named_not_a_dataset(tmp):
    return Case(["info", f"{_h5_in_groups(tmp / 'a.h5')}:/volumes"], "a.h5:/volumes is a group")


@case
def hdf5_nested_dataset_missing(tmp):
    return Case(_predict(tmp, _model(tmp), f"{_h5_in_groups(tmp / 'a.h5')}:/volumes/nope"), "a.h5")


@case
def hdf5_scalar_dataset_named(tmp):
    return Case(_predict(tmp, _model(tmp), f"{_h5_in_groups(tmp / 'a.h5')}:/volumes_mean"), "a.h5")


@case
def hdf5_compound_dtype(tmp):
    import h5py

    with h5py.File(tmp / "a.h5", "w") as f:
        f.create_dataset("data", data=np.zeros((32, 32), dtype=[("a", "u1"), ("b", "f4")]))
    return Case(_predict(tmp, _model(tmp), tmp / "a.h5"), "a.h5")


@case
def hdf5_voxel_negative(tmp):
    import h5py

    with h5py.File(tmp / "a.h5", "w") as f:
        ds = f.create_dataset("data", data=_ramp((2, 64, 64)))
        ds.attrs["element_size_um"] = [0.05, -0.004, 0.0]
    return Case(["info", tmp / "a.h5"], "a.h5", code=0)


@case
def fifo_input(tmp):
    os.mkfifo(tmp / "pipe.tif")
    return Case(["info", tmp / "pipe.tif"], "pipe.tif")


@case
def fifo_as_training_data(tmp):
    os.mkfifo(tmp / "pipe.h5")
    return Case(["prepare", "--clean", tmp / "pipe.h5", "--out", tmp / "set.zarr", "-q"], "pipe.h5")


@case
def char_device_input(tmp):
    return Case(["info", "/dev/zero"], "/dev/zero")


@case
def fifo_as_preset(tmp):
    os.mkfifo(tmp / "preset.json")
    return Case(["presets", "--show", tmp / "preset.json"], "preset.json")


# --- train ------------------------------------------------------------------------------------


@case
def train_clean_with_nan(tmp):
    a = _ramp((64, 64)).astype(np.float32)
    a[5, 5] = np.nan
    return Case(_train(tmp, "--clean", _tif(tmp / "c.tif", a)), "c.tif contains NaN")


@case
def train_clean_constant(tmp):
    return Case(_train(tmp, "--clean", _tif(tmp / "c.tif", np.full((64, 64), 3, np.uint16))), "c.tif")


@case
def train_iterations_huge_in_preset(tmp):
    p = _preset(tmp, {"base": "tiny", "train": {"iterations": 1e9}})
    return Case(["train", "--config", p, "--clean", _tif(tmp / "c.tif", _ramp()), "--out", tmp / "run", "-q"], "train.iterations")


@case
def train_iterations_zero(tmp):
    return Case(["train", "--preset", "tiny", "--out", tmp / "run", "--iterations", "0", "--clean", _tif(tmp / "c.tif", _ramp()), "-q"], "iterations")


@case
def train_iterations_not_a_number(tmp):
    return Case(["train", "--preset", "tiny", "--out", tmp / "run", "--iterations", "lots", "--clean", _tif(tmp / "c.tif", _ramp())], "--iterations")


@case
def train_batch_size_huge(tmp):
    return Case(_train(tmp, "--batch-size", "100000", "--clean", _tif(tmp / "c.tif", _ramp())), "--batch-size")  # the option, not the preset key


@case
def train_minutes_negative(tmp):
    return Case(_train(tmp, "--minutes", "-3", "--clean", _tif(tmp / "c.tif", _ramp())), "minutes")


@case
def train_dose_zero(tmp):
    return Case(_train(tmp, "--dose", "0", "--clean", _tif(tmp / "c.tif", _ramp())), "dose")


@case
def train_dose_nan(tmp):
    return Case(_train(tmp, "--dose", "nan", "--clean", _tif(tmp / "c.tif", _ramp())), "dose")


@case
def train_read_noise_negative(tmp):
    return Case(_train(tmp, "--read-noise", "-1", "--clean", _tif(tmp / "c.tif", _ramp())), "read")


@case
def train_seed_negative(tmp):
    return Case(_train(tmp, "--seed", "-1", "--clean", _tif(tmp / "c.tif", _ramp())), "seed")


@case
def train_bad_roi(tmp):
    return Case(_train(tmp, "--roi", "a:b", "--clean", _tif(tmp / "c.tif", _ramp())), "--roi")


@case
def train_roi_outside(tmp):
    return Case(_train(tmp, "--roi", "500:600,500:600", "--clean", _tif(tmp / "c.tif", _ramp())), "lies outside the image")


@case
def train_unknown_option(tmp):
    return Case(_train(tmp, "--option", "bogus=1", "--clean", _tif(tmp / "c.tif", _ramp())), "bogus")


@case
def train_option_without_value(tmp):
    return Case(_train(tmp, "--option", "factor", "--clean", _tif(tmp / "c.tif", _ramp())), "--option")


@case
def train_preset_unknown(tmp):
    return Case(["train", "--preset", "nope", "--out", tmp / "run", "--clean", _tif(tmp / "c.tif", _ramp())], "nope")


@case
def train_config_bad_json(tmp):
    return Case(["train", "--config", _preset(tmp, "{oops"), "--out", tmp / "run"], "p.json")


@case
def train_config_list(tmp):
    return Case(["train", "--config", _preset(tmp, "[1, 2]"), "--out", tmp / "run"], "p.json")


@case
def train_config_unknown_key(tmp):
    return Case(["train", "--config", _preset(tmp, {"base": "tiny", "train": {"bacth_size": 2}}), "--out", tmp / "run"], "train.bacth_size")


@case
def train_config_bad_base(tmp):
    return Case(["train", "--config", _preset(tmp, {"base": "nonesuch"}), "--out", tmp / "run"], "nonesuch")


@case
def train_config_base_not_string(tmp):
    return Case(["train", "--config", _preset(tmp, {"base": ["tiny"]}), "--out", tmp / "run"], "base")


@case
def train_config_network_not_object(tmp):
    return Case(["train", "--config", _preset(tmp, {"base": "tiny", "network": 5}), "--out", tmp / "run"], "network")


@case
def train_config_huge_network(tmp):
    p = _preset(tmp, {"base": "tiny", "network": {"base_channels": 512, "channel_mults": [8, 8, 8, 8, 8, 8], "num_res_blocks": 8}})
    return Case(["train", "--config", p, "--out", tmp / "run", "--clean", _tif(tmp / "c.tif", _ramp())], "network")


@case
def train_config_val_every_huge(tmp):
    p = _preset(tmp, {"base": "tiny", "train": {"val_every": 10**15}})
    return Case(["train", "--config", p, "--out", tmp / "run"], "train.val_every")


@case
def train_config_not_utf8(tmp):
    (tmp / "p.json").write_bytes(b"\xff\xfe{\x00")
    return Case(["train", "--config", tmp / "p.json", "--out", tmp / "run"], "p.json")


@case
def train_pair_mismatched(tmp):
    return Case(_train(tmp, "--input", _tif(tmp / "n.tif", _ramp((2, 64, 64))), "--target", _tif(tmp / "c.tif", _ramp((2, 48, 64)))), "differ in shape")


@case
def train_resume_nothing(tmp):
    return Case(["train", "--out", tmp / "run", "--resume", "--clean", _tif(tmp / "c.tif", _ramp())], "run")


@case
def train_resume_corrupt_checkpoint(tmp):
    (tmp / "run").mkdir()
    for name in ("checkpoint.json", "checkpoint.safetensors"):
        (tmp / "run" / name).write_bytes(b"garbage")
    return Case(["train", "--out", tmp / "run", "--resume", "--clean", _tif(tmp / "c.tif", _ramp())], "run")


@case
def train_from_model_missing(tmp):
    return Case(_train(tmp, "--from-model", tmp / "nomodel", "--clean", _tif(tmp / "c.tif", _ramp())), "nomodel")


@case
def train_data_not_a_set(tmp):
    return Case(_train(tmp, "--data", _ome_zarr(tmp / "a.zarr")), "a.zarr")


@case
def train_no_data(tmp):
    return Case(_train(tmp), "--clean")


# --- predict: broken models and bad option values ---------------------------------------------


@case
def model_missing(tmp):
    return Case(_predict(tmp, tmp / "nomodel", _tif(tmp / "a.tif", _ramp())), "nomodel")


@case
def model_json_not_json(tmp):
    m = _model(tmp)
    (m / "model.json").write_text("{")
    return Case(_predict(tmp, m, _tif(tmp / "a.tif", _ramp())), "model.json")


@case
def model_json_wrong_format_version(tmp):
    m = _model(tmp)
    _edit_json(m / "model.json", lambda d: d.update(format_version=99))
    return Case(_predict(tmp, m, _tif(tmp / "a.tif", _ramp())), "model.json")


@case
def model_json_huge_network(tmp):
    m = _model(tmp)
    _edit_json(m / "model.json", lambda d: d["preset"]["network"].update(base_channels=512, channel_mults=[8, 8, 8, 8, 8, 8], num_res_blocks=8))
    return Case(_predict(tmp, m, _tif(tmp / "a.tif", _ramp())), "model")


@case
def model_json_channels_huge(tmp):
    m = _model(tmp)
    _edit_json(m / "model.json", lambda d: d.update(cond_channels=10**9))
    return Case(_predict(tmp, m, _tif(tmp / "a.tif", _ramp())), "model")


@case
def model_json_channels_text(tmp):
    m = _model(tmp)
    _edit_json(m / "model.json", lambda d: d.update(out_channels="one"))
    return Case(_predict(tmp, m, _tif(tmp / "a.tif", _ramp())), "model")


@case
def model_json_preset_not_object(tmp):
    m = _model(tmp)
    _edit_json(m / "model.json", lambda d: d.update(preset=[1]))
    return Case(_predict(tmp, m, _tif(tmp / "a.tif", _ramp())), "model")


@case
def model_json_normalisation_text(tmp):
    m = _model(tmp)
    _edit_json(m / "model.json", lambda d: d.update(normalisation="lots"))
    return Case(_predict(tmp, m, _tif(tmp / "a.tif", _ramp())), "model")


@case
def model_weights_missing(tmp):
    m = _model(tmp)
    (m / "weights.safetensors").unlink()
    return Case(_predict(tmp, m, _tif(tmp / "a.tif", _ramp())), "weights.safetensors")


@case
def model_weights_truncated(tmp):
    m = _model(tmp)
    w = m / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:500])
    return Case(_predict(tmp, m, _tif(tmp / "a.tif", _ramp())), "weights.safetensors")


@case
def model_weights_header_huge(tmp):
    m = _model(tmp)
    (m / "weights.safetensors").write_bytes(struct.pack("<Q", 2**60) + b"{}")
    return Case(_predict(tmp, m, _tif(tmp / "a.tif", _ramp())), "weights.safetensors")


def _rewrite_weights(m: Path, fn) -> None:
    from safetensors.torch import load_file, save_file

    w = m / "weights.safetensors"
    save_file({k: fn(v) for k, v in load_file(str(w)).items()}, str(w))


@case
def model_weights_all_nan(tmp):
    import torch

    m = _model(tmp)
    _rewrite_weights(m, lambda v: torch.full_like(v, float("nan")) if v.is_floating_point() else v)
    return Case(_predict(tmp, m, _tif(tmp / "a.tif", _ramp())), "weights.safetensors")


@case
def model_weights_one_inf(tmp):
    m = _model(tmp)

    def poison(v):
        if v.is_floating_point() and v.numel() > 10:
            v = v.clone()
            v.view(-1)[3] = float("inf")
        return v

    _rewrite_weights(m, poison)
    return Case(_predict(tmp, m, _tif(tmp / "a.tif", _ramp())), "weights.safetensors")


@case
def model_weights_int32(tmp):
    import torch

    m = _model(tmp)
    _rewrite_weights(m, lambda v: v.to(torch.int32))
    return Case(_predict(tmp, m, _tif(tmp / "a.tif", _ramp())), "weights.safetensors")


@case
def model_weights_wrong_shapes(tmp):
    m = _model(tmp)
    _rewrite_weights(m, lambda v: v.reshape(-1)[:1].clone())
    return Case(_predict(tmp, m, _tif(tmp / "a.tif", _ramp())), "weights.safetensors")


@case
def predict_steps_zero(tmp):
    return Case(_predict(tmp, _model(tmp), _tif(tmp / "a.tif", _ramp()), "--steps", "0"), "steps")


@case
def predict_samples_huge(tmp):
    return Case(_predict(tmp, _model(tmp), _tif(tmp / "a.tif", _ramp()), "--samples", "100000"), "samples")


@case
def predict_overlap_too_big(tmp):
    return Case(_predict(tmp, _model(tmp), _tif(tmp / "a.tif", _ramp()), "--tile-size", "64", "--overlap", "40"), "overlap")


@case
def predict_bad_sampler(tmp):
    return Case(_predict(tmp, _model(tmp), _tif(tmp / "a.tif", _ramp()), "--sampler", "magic"), "--sampler")


@case
def predict_bad_device(tmp):
    return Case(_predict(tmp, _model(tmp), _tif(tmp / "a.tif", _ramp()), "--device", "tpu:9"), "tpu:9")


@case
def predict_output_is_input(tmp):
    a = _tif(tmp / "a.tif", _ramp())
    return Case(["predict", "--model", _model(tmp), "--input", a, "--output", a, "-q"], "a.tif")


# --- prepare, presets, models -----------------------------------------------------------------


@case
def prepare_val_fraction_negative(tmp):
    return Case(["prepare", "--clean", _tif(tmp / "c.tif", _ramp()), "--out", tmp / "set.zarr", "--val-fraction", "-1", "-q"], "--val-fraction")


@case
def prepare_val_fraction_one(tmp):
    return Case(["prepare", "--clean", _tif(tmp / "c.tif", _ramp()), "--out", tmp / "set.zarr", "--val-fraction", "1", "-q"], "--val-fraction")


@case
def prepare_patch_negative(tmp):
    return Case(["prepare", "--clean", _tif(tmp / "c.tif", _ramp()), "--out", tmp / "set.zarr", "--patch", "-16", "-q"], "--patch")


@case
def prepare_voxel_zero(tmp):
    return Case(["prepare", "--clean", _tif(tmp / "c.tif", _ramp()), "--out", tmp / "set.zarr", "--voxel", "0,1,1", "-q"], "--voxel")


@case
def prepare_dose_negative(tmp):
    return Case(["prepare", "--clean", _tif(tmp / "c.tif", _ramp()), "--out", tmp / "set.zarr", "--dose", "-5", "-q"], "dose")


@case
def prepare_no_source(tmp):
    return Case(["prepare", "--out", tmp / "set.zarr", "-q"], "--clean")


@case
def prepare_target_missing(tmp):
    return Case(["prepare", "--input", _tif(tmp / "n.tif", _ramp()), "--target", tmp / "nope.tif", "--out", tmp / "set.zarr", "-q"], "nope.tif")


@case
def prepare_clean_nan(tmp):
    a = _ramp().astype(np.float32)
    a[0, 1, 1] = np.nan
    return Case(["prepare", "--clean", _tif(tmp / "c.tif", a), "--out", tmp / "set.zarr", "-q"], "c.tif contains NaN")


@case
def presets_show_unknown(tmp):
    return Case(["presets", "--show", "nonesuch"], "nonesuch")


@case
def presets_show_bad_file(tmp):
    return Case(["presets", "--show", _preset(tmp, {"train": {"iterations": -4}})], "train.iterations")


@case
def models_show_unknown(tmp):
    return Case(["models", "--show", "nonesuch"], "nonesuch")


@case
def models_show_broken_folder(tmp):
    m = _model(tmp)
    (m / "model.json").write_text('{"format": "napari-emdiffuse-model"}')
    return Case(["models", "--show", m], "model.json")


@case
def import_emdiffuse_garbage(tmp):
    (tmp / "net.pth").write_bytes(np.random.default_rng(2).bytes(200))
    return Case(["import-emdiffuse", tmp / "net.pth", "--variant", "denoise", "--out", tmp / "imported"], "net.pth")


@case
def import_emdiffuse_not_a_zip(tmp):
    (tmp / "net.pth").write_bytes(b"PK\x03\x04garbage")
    return Case(["import-emdiffuse", tmp / "net.pth", "--variant", "denoise", "--out", tmp / "imported"], "net.pth")


@case
def import_emdiffuse_fifo(tmp):
    os.mkfifo(tmp / "net.pth")
    return Case(["import-emdiffuse", tmp / "net.pth", "--variant", "denoise", "--out", tmp / "imported"], "net.pth: a named pipe (FIFO)", subprocess=True)


@case
def import_emdiffuse_config_fifo(tmp):
    import torch

    torch.save({"denoise_fn.x": torch.zeros(1)}, tmp / "net.pth")
    os.mkfifo(tmp / "config.json")
    return Case(["import-emdiffuse", tmp / "net.pth", "--variant", "denoise", "--config", tmp / "config.json", "--out", tmp / "imported"], "config.json: a named pipe (FIFO)")


@case
def import_emdiffuse_folder(tmp):
    (tmp / "net.pth").mkdir()
    return Case(["import-emdiffuse", tmp / "net.pth", "--variant", "denoise", "--out", tmp / "imported"], "net.pth: a folder")


@case
def unknown_command(tmp):
    return Case(["frobnicate"], "frobnicate")


# --- the runner -------------------------------------------------------------------------------


class _Hang(BaseException):
    """Raised by the alarm: a case ran past its time (not an Exception, so nothing catches it)."""


def _checksums(folder: Path) -> dict[str, str]:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _in_process(argv: list[str], capsys) -> tuple[int, str, str]:
    def alarm(signum, frame):
        raise _Hang

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(TIMEOUT_S)
    try:
        code = main(argv)
    except _Hang:
        pytest.fail(f"hung for more than {TIMEOUT_S} s")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    out = capsys.readouterr()
    return code, out.out, out.err


def _subprocess(argv: list[str]) -> tuple[int, str, str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    try:
        done = subprocess.run([sys.executable, "-m", "napari_emdiffuse.cli", *argv], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung for more than {SUBPROCESS_TIMEOUT_S} s")
    return done.returncode, done.stdout, done.stderr


def test_enough_cases():
    assert len(CASES) >= 60


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, tmp_path, capsys, model_dir, monkeypatch):
    MODEL_DIR[:] = [model_dir]
    monkeypatch.chdir(tmp_path)
    c = CASES[name](tmp_path)
    before = _checksums(tmp_path)
    code, out, err = _subprocess(c.argv) if c.subprocess else _in_process(c.argv, capsys)
    assert "Traceback" not in out + err, err
    assert code == c.code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert c.names in lines[0], lines[0]
    after = _checksums(tmp_path)
    assert {k: after.get(k) for k in before} == before, "a file in the case folder changed or vanished"


def test_internal_errors_are_one_line_and_verbose_shows_the_traceback(capsys, monkeypatch):
    """A bug of ours (here: a preset listing that breaks) is not the user's fault: exit 1, one
    line saying so with the -v hint; with -v the traceback follows for the bug report."""
    import napari_emdiffuse.config as config

    def broken():
        raise RuntimeError("something inside broke")

    monkeypatch.setattr(config, "builtin_presets", broken)
    assert main(["presets"]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["emdiffuse presets: internal error: RuntimeError: something inside broke (run with -v for the traceback)"]
    assert main(["-v", "presets"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("emdiffuse presets: internal error: RuntimeError")


def test_model_card_is_printed_without_terminal_escapes(tmp_path, capsys, model_dir):
    """`models --show` on someone else's folder: colours, cursor moves, a window-title change and
    a bell in the card are removed; the text and its line breaks stay."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    card = "Title\x1b[31m red\x1b[0m\n\x1b]0;owned\x07line two\x07\x1b[2J\x08 end\r"
    _edit_json(folder / "model.json", lambda d: d.update(card=card))
    assert main(["models", "--show", str(folder)]) == 0
    out = capsys.readouterr().out
    assert out == "Title red\nline two end\n"
