"""Reading and writing every supported format: round trips, voxel sizes, laziness, bad files."""

from __future__ import annotations

import gzip
import json
import struct

import dask.array as da
import numpy as np
import pytest
import tifffile

from napari_emdiffuse.data import tiff
from napari_emdiffuse.data.containers import create_ome_zarr, write_ome_zarr
from napari_emdiffuse.data.io import read_image, write_image, write_tiff
from napari_emdiffuse.errors import InputError

VOXEL = (0.05, 0.004, 0.0041)


def _stack(dtype, shape=(4, 70, 90), seed=0):
    rng = np.random.default_rng(seed)
    a = rng.random(shape) * (60000 if np.dtype(dtype) == np.uint16 else 250)
    return a.astype(dtype)


@pytest.mark.parametrize("ext", [".tif", ".zarr", ".mrc", ".h5"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_round_trip_keeps_data_and_voxel(tmp_path, ext, dtype):
    a = _stack(dtype)
    path = write_image(tmp_path / f"a{ext}", da.from_array(a, chunks=(1, 32, 32)), VOXEL)
    img = read_image(path)
    assert isinstance(img.data, da.Array)
    assert img.data.dtype == a.dtype
    np.testing.assert_array_equal(np.asarray(img.data), a)
    np.testing.assert_allclose(img.voxel, VOXEL, rtol=1e-5)
    # and once more through the reader's own output
    again = read_image(write_image(tmp_path / f"b{ext}", img.data, img.voxel))
    np.testing.assert_array_equal(np.asarray(again.data), a)
    np.testing.assert_allclose(again.voxel, VOXEL, rtol=1e-5)


@pytest.mark.parametrize("ext", [".tif", ".zarr", ".mrc", ".h5"])
def test_round_trip_2d(tmp_path, ext):
    a = _stack(np.uint16, (70, 90))
    img = read_image(write_image(tmp_path / f"a{ext}", a, VOXEL[1:]))
    np.testing.assert_array_equal(np.asarray(img.data), a)
    np.testing.assert_allclose(img.voxel, VOXEL[1:], rtol=1e-5)


def test_real_ssTEM_stack_is_read_lazily_with_its_voxel(isbi_path):
    img = read_image(isbi_path)
    assert img.shape == (30, 512, 512) and img.data.dtype == np.uint8
    assert isinstance(img.data, da.Array) and img.data.chunksize[0] == 1
    np.testing.assert_allclose(img.voxel, (0.05, 0.004, 0.004))
    np.testing.assert_array_equal(np.asarray(img.data[3]), tifffile.imread(isbi_path, key=3))


def test_large_or_unusual_tiffs_are_written_as_ome_tiff(tmp_path, monkeypatch):
    monkeypatch.setattr(tiff, "BIGTIFF_BYTES", 1000)  # pretend 60 kB is more than classic TIFF holds
    a = _stack(np.uint16)
    img = read_image(write_tiff(tmp_path / "big.tif", a, VOXEL))
    assert img.meta["format"] == "ome-tiff"
    with tifffile.TiffFile(tmp_path / "big.tif") as tf:
        assert tf.is_bigtiff
    np.testing.assert_array_equal(np.asarray(img.data), a)
    np.testing.assert_allclose(img.voxel, VOXEL, rtol=1e-6)
    monkeypatch.undo()
    signed = read_image(write_tiff(tmp_path / "int32.tif", a.astype(np.int32), VOXEL))  # not an ImageJ type
    assert signed.data.dtype == np.int32
    np.testing.assert_allclose(signed.voxel, VOXEL, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16], ids=["ImageJ", "OME-TIFF"])
def test_a_tiff_without_a_pixel_size_claims_no_micrometres(tmp_path, dtype):
    """A voxel of 1 (no pixel size known: a layer in napari's pixels, a result of an input
    without one) was written as ImageJ's unit "um" at resolution 1 and as OME PhysicalSize 1 µm,
    which Fiji showed as 1 x 1 x 1 µm. It is in pixels now, a z spacing kept in pixels; this
    reader reads either as before, and a known pixel size is written as it was."""
    import re

    def written(name: str, voxel: tuple[float, ...]) -> tuple[set[str], tuple[float, ...]]:
        """The units the file claims (ImageJ's, or the OME physical sizes'), and the voxel it reads as."""
        path = write_tiff(tmp_path / name, _stack(dtype, (2, 8, 8)), voxel)
        with tifffile.TiffFile(path) as tf:
            units = {tf.imagej_metadata["unit"]} if tf.imagej_metadata else set(re.findall(r'PhysicalSize\wUnit="([^"]*)"', tf.ome_metadata))
        return units, read_image(path).voxel

    assert written("bare.tif", (1.0, 1.0, 1.0)) in [({"pixel"}, (1.0, 1.0, 1.0)), (set(), (1.0, 1.0, 1.0))]
    assert written("spaced.tif", (5.0, 1.0, 1.0)) == ({"pixel"}, (5.0, 1.0, 1.0))
    units, voxel = written("sized.tif", VOXEL)
    assert units == ({"um"} if dtype == np.uint8 else {"µm"}) and voxel == pytest.approx(VOXEL)


def test_a_foreign_ome_tiff_in_pixels_has_no_pixel_size(tmp_path):
    """OME physical sizes in the unit "pixel" on Y/X are no pixel size (they read as 2 µm after
    c7db183, a made-up size); on Z, a spacing in pixels (what write_tiff writes without a pixel
    size), it is kept."""
    from napari_emdiffuse.data.image import known_pixel_um

    meta = {"axes": "ZYX", "PhysicalSizeX": 2.0, "PhysicalSizeXUnit": "pixel", "PhysicalSizeY": 2.0, "PhysicalSizeYUnit": "pixel"}
    tifffile.imwrite(tmp_path / "xy.ome.tif", np.zeros((3, 32, 32), np.uint16), ome=True, metadata=meta)
    img = read_image(tmp_path / "xy.ome.tif")
    assert img.voxel == (1.0, 1.0, 1.0) and known_pixel_um(img.voxel) is None
    tifffile.imwrite(tmp_path / "z.ome.tif", np.zeros((3, 32, 32), np.uint16), ome=True, metadata={**meta, "PhysicalSizeZ": 5.0, "PhysicalSizeZUnit": "pixel"})
    img = read_image(tmp_path / "z.ome.tif")
    assert img.voxel == (5.0, 1.0, 1.0) and img.meta["voxel_unit"] == "pixel"  # info says pixels, not 5 µm


def test_a_z_spacing_in_pixels_beside_x_and_y_in_micrometres_is_that_many_x_pixels(tmp_path):
    """A foreign OME-TIFF with Z in "pixel" and X/Y in µm: its z spacing is 10 x pixels, 0.04 µm.
    It read as 10 µm beside 0.004 µm pixels, and was then marked as a voxel in pixels, which the
    napari reader opened without a pixel size where predict kept one. One size for all."""
    from napari_emdiffuse._reader import read_paths

    meta = {"axes": "ZYX", "PhysicalSizeX": 4.0, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 4.0, "PhysicalSizeYUnit": "nm",
            "PhysicalSizeZ": 10.0, "PhysicalSizeZUnit": "pixel"}
    tifffile.imwrite(tmp_path / "mixed.ome.tif", np.zeros((3, 32, 32), np.uint16), ome=True, metadata=meta)
    img = read_image(tmp_path / "mixed.ome.tif")
    assert img.voxel == pytest.approx((0.04, 0.004, 0.004)) and "voxel_unit" not in img.meta
    [(_, kwargs, _)] = read_paths(str(tmp_path / "mixed.ome.tif"))
    assert kwargs["scale"] == pytest.approx((0.04, 0.004, 0.004)) and kwargs["units"] == ("micrometer",) * 3


def test_info_tells_a_z_spacing_in_pixels_from_one_in_micrometres(tmp_path, capsys):
    """A voxel whose x size is unknown holds its z spacing in µm (an ImageJ stack with a spacing
    and no x/y resolution) or in x pixels (a file in no length): info printed both as µm."""
    from napari_emdiffuse.cli import main

    a = _stack(np.uint8, (3, 20, 30))
    tifffile.imwrite(tmp_path / "um.tif", a, imagej=True, metadata={"spacing": 0.05, "unit": "um"})
    tifffile.imwrite(tmp_path / "px.tif", a, imagej=True, resolution=(2, 2), metadata={"spacing": 5, "unit": "pixel"})
    assert main(["info", str(tmp_path / "um.tif")]) == 0
    assert "voxel:    50 x ? x ? nm (y, x unknown)" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "px.tif")]) == 0
    assert "voxel:    10 x 1 x 1 pixels (no pixel size recorded: the voxel's shape in x pixels)" in capsys.readouterr().out


def test_ome_tiff_with_singleton_channel_and_nanometres(tmp_path):
    a = _stack(np.uint8, (3, 1, 40, 50))
    meta = {"axes": "ZCYX", "PhysicalSizeX": 4.0, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 4.0, "PhysicalSizeYUnit": "nm", "PhysicalSizeZ": 30.0, "PhysicalSizeZUnit": "nm"}
    tifffile.imwrite(tmp_path / "x.ome.tif", a, ome=True, metadata=meta)
    img = read_image(tmp_path / "x.ome.tif")
    assert img.shape == (3, 40, 50)
    np.testing.assert_allclose(img.voxel, (0.03, 0.004, 0.004))


def test_ome_zarr_pyramid_levels_and_tile_by_tile_filling(tmp_path):
    a = _stack(np.uint16, (2, 64, 96))
    write_ome_zarr(tmp_path / "p.zarr", a, VOXEL, chunks=(1, 32, 32), levels=3)
    top = read_image(tmp_path / "p.zarr")
    assert top.meta["levels"] == 3
    np.testing.assert_array_equal(np.asarray(top.data), a)
    low = read_image(tmp_path / "p.zarr", level=2)
    assert low.shape == (2, 16, 24)
    np.testing.assert_allclose(low.voxel, (0.05, 0.016, 0.0164))
    np.testing.assert_allclose(np.asarray(low.data[0, 0, 0]), a[0, :4, :4].mean(), atol=1.0)  # rounded at each level
    # a sub-array path finds its scale in the parent's metadata
    np.testing.assert_allclose(read_image(tmp_path / "p.zarr" / "1").voxel, (0.05, 0.008, 0.0082))
    with pytest.raises(InputError, match="level 5 does not exist"):
        read_image(tmp_path / "p.zarr", level=5)

    arr = create_ome_zarr(tmp_path / "pred.zarr", (2, 64, 96), np.float32, VOXEL, image="mean")
    for y in range(0, 64, 32):
        arr[:, y : y + 32] = a[:, y : y + 32]
    create_ome_zarr(tmp_path / "pred.zarr", (2, 64, 96), np.float32, VOXEL, image="std")
    mean = read_image(tmp_path / "pred.zarr" / "mean")
    np.testing.assert_array_equal(np.asarray(mean.data), a.astype(np.float32))
    np.testing.assert_allclose(mean.voxel, VOXEL)
    with pytest.raises(InputError, match="pred.zarr/mean"):
        read_image(tmp_path / "pred.zarr")  # a group of images: the message names them


def test_zarr_v3_array_and_ngff_05_group(tmp_path):
    import zarr

    a = _stack(np.float32, (3, 20, 30))
    z3 = zarr.create_array(str(tmp_path / "v3.zarr"), shape=a.shape, dtype=a.dtype, chunks=(1, 20, 30), zarr_format=3)
    z3[:] = a
    z3.attrs["voxel_size"] = list(VOXEL)
    img = read_image(tmp_path / "v3.zarr")
    np.testing.assert_array_equal(np.asarray(img.data), a)
    np.testing.assert_allclose(img.voxel, VOXEL)

    g = zarr.open_group(str(tmp_path / "ngff05.zarr"), mode="w", zarr_format=3)
    axes = [{"name": "c", "type": "channel"}] + [{"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"]
    g.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": [{"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [1, 50, 4, 4]}]}]}]}
    g.create_array("s0", shape=(1, *a.shape), dtype=a.dtype, chunks=(1, 1, 20, 30))[:] = a[None]
    img = read_image(tmp_path / "ngff05.zarr")
    assert img.shape == a.shape
    np.testing.assert_allclose(img.voxel, (0.05, 0.004, 0.004))


def _write_n5(root, a, block=(16, 8, 2)):
    """A minimal N5 dataset (gzip, big-endian blocks, x-y-z order) as the N5 spec describes it."""
    (root / "vol").mkdir(parents=True)
    (root / "attributes.json").write_text(json.dumps({"n5": "2.5.0"}))
    dims = list(a.shape[::-1])
    meta = {"dimensions": dims, "blockSize": list(block), "dataType": "uint16", "compression": {"type": "gzip"}, "resolution": [4, 4, 50], "units": ["nm", "nm", "nm"]}
    (root / "vol" / "attributes.json").write_text(json.dumps(meta))
    bx, by, bz = block
    for z in range(0, a.shape[0], bz):
        for y in range(0, a.shape[1], by):
            for x in range(0, a.shape[2], bx):
                blk = a[z : z + bz, y : y + by, x : x + bx]
                header = struct.pack(">HH", 0, 3) + struct.pack(">3I", blk.shape[2], blk.shape[1], blk.shape[0])
                d = root / "vol" / str(x // bx) / str(y // by)
                d.mkdir(parents=True, exist_ok=True)
                (d / str(z // bz)).write_bytes(header + gzip.compress(blk.astype(">u2").tobytes()))


def test_n5_dataset_by_path(tmp_path):
    pytest.importorskip("zarr_n5")
    a = _stack(np.uint16, (5, 20, 37))
    _write_n5(tmp_path / "v.n5", a)
    img = read_image(f"{tmp_path / 'v.n5'}:/vol")
    np.testing.assert_array_equal(np.asarray(img.data), a)
    np.testing.assert_allclose(img.voxel, (0.05, 0.004, 0.004))
    with pytest.raises(InputError, match="v.n5:/vol"):
        read_image(tmp_path / "v.n5")  # the root group: names the dataset to use


def test_hdf5_dataset_by_path_and_conventions(tmp_path):
    import h5py

    a = _stack(np.uint8)
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f.create_dataset("volumes/raw", data=a, chunks=(1, 35, 45)).attrs["resolution"] = [50.0, 4.0, 4.0]  # CREMI: nm
        f.create_dataset("volumes/labels", data=a)
    img = read_image(f"{tmp_path / 'c.h5'}:/volumes/raw")
    np.testing.assert_array_equal(np.asarray(img.data), a)
    np.testing.assert_allclose(img.voxel, (0.05, 0.004, 0.004))
    assert img.data.chunksize == (1, 35, 45)
    assert read_image(tmp_path / "c.h5", dataset="volumes/labels").shape == a.shape
    with pytest.raises(InputError, match="name the dataset"):
        read_image(tmp_path / "c.h5")


def test_folder_of_slices_in_natural_order(tmp_path):
    from PIL import Image as PILImage

    a = _stack(np.uint16, (12, 30, 40))
    for z in range(12):
        PILImage.fromarray(a[z]).save(tmp_path / f"slice_{z}.png")  # slice_2 must come before slice_10
    img = read_image(tmp_path)
    np.testing.assert_array_equal(np.asarray(img.data), a)
    tif_dir = tmp_path / "tifs"
    tif_dir.mkdir()
    for z in range(3):
        tifffile.imwrite(tif_dir / f"s{z:03d}.tif", a[z], resolution=(250, 250), imagej=True, metadata={"unit": "um"})
    np.testing.assert_allclose(read_image(tif_dir).voxel[1:], (0.004, 0.004))
    tifffile.imwrite(tif_dir / "s003.tif", a[0, :10])
    with pytest.raises(InputError, match="s003.tif"):
        read_image(tif_dir)


def test_a_folder_of_many_tiff_slices_reads_every_slice_with_no_file_left_open(tmp_path):
    """Each slice was read through a lazy reader that kept its file open: about 126 descriptors
    open after one read, 'Too many open files' on 1500 slices under a limit of 64."""
    import os

    def open_here() -> list[str]:
        links = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                links.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:  # the listing's own descriptor, closed by now
                pass
        return [link for link in links if link.startswith(str(tmp_path))]

    a = _stack(np.uint16, (200, 16, 24))
    for z in range(len(a)):  # OME slices keep a length-one z that the folder drops
        tifffile.imwrite(tmp_path / f"s{z}.ome.tif", a[z][None], ome=True, metadata={"axes": "ZYX"})
    before = open_here()
    img = read_image(tmp_path)
    np.testing.assert_array_equal(np.asarray(img.data), a)
    np.testing.assert_array_equal(np.asarray(img.data[::50]), a[::50])
    assert open_here() == before == []


@pytest.mark.parametrize("unit", ["CENTIMETER", "INCH"])
@pytest.mark.parametrize("imagej", [False, True])
def test_a_tiff_stack_without_imagej_spacing_keeps_its_z_unknown(tmp_path, unit, imagej):
    """A stack with centimetre resolution tags and no ImageJ spacing read with a z voxel of
    10000 µm: the unknown z (1) was scaled by the unit. Inch tags are ignored (screenshots)."""
    a = _stack(np.uint8, (3, 20, 30))
    path = tmp_path / "stack.tif"
    if imagej:  # ImageJ's unit and spacing decide, whatever the TIFF unit tag says
        tifffile.imwrite(path, a, imagej=True, resolution=(250, 250), resolutionunit=unit, metadata={"spacing": 0.05, "unit": "um"})
        want = (0.05, 0.004, 0.004)
    else:
        tifffile.imwrite(path, a, resolution=(2.5e6, 2.5e6), resolutionunit=unit)  # 0.004 µm pixels if centimetres
        want = (1.0, 0.004, 0.004) if unit == "CENTIMETER" else (1.0, 1.0, 1.0)
    with tifffile.TiffFile(path) as tf:
        assert tf.pages[0].resolutionunit.name == unit and bool(tf.imagej_metadata) == imagej
    np.testing.assert_allclose(read_image(path).voxel, want)


def test_bad_files_are_refused_with_the_file_and_the_reason(tmp_path):
    a = _stack(np.uint8)
    good = write_tiff(tmp_path / "good.tif", a, VOXEL)
    (tmp_path / "truncated.tif").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "noise.tif").write_bytes(np.random.default_rng(0).bytes(5000))
    (tmp_path / "empty.mrc").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "half.mrc").write_bytes(write_image(tmp_path / "ok.mrc", a, VOXEL).read_bytes()[:3000])
    (tmp_path / "broken.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    cases = {
        "truncated.tif": "truncated",
        "noise.tif": "not a valid TIFF",
        "empty.mrc": r"the file is empty \(0 bytes\)",  # was "not a valid MRC file ...; the file may be corrupt"
        "notes.txt": "unsupported file type",
        "half.mrc": "not a readable MRC",
        "broken.h5": "not a readable HDF5",
        "missing.tif": "no such file",
    }
    for name, reason in cases.items():
        with pytest.raises(InputError, match=reason) as err:
            read_image(tmp_path / name)
        assert name in str(err.value)


def test_a_misnamed_file_is_read_by_its_content(tmp_path):
    a = _stack(np.uint16)
    write_tiff(tmp_path / "stack.tif", a, VOXEL)
    (tmp_path / "stack.mrc").write_bytes((tmp_path / "stack.tif").read_bytes())
    img = read_image(tmp_path / "stack.mrc")
    np.testing.assert_array_equal(np.asarray(img.data), a)


def test_writers_never_overwrite_an_input(tmp_path):
    a = _stack(np.uint8)
    src = write_tiff(tmp_path / "in.tif", a, VOXEL)
    before = src.read_bytes()
    for target in (src, tmp_path / "in.tif"):
        with pytest.raises(InputError, match="refusing to overwrite"):
            write_image(target, a[:1], VOXEL, protect=[src])
    zsrc = write_image(tmp_path / "in.zarr", a, VOXEL)
    with pytest.raises(InputError, match="refusing to overwrite"):
        create_ome_zarr(zsrc, a.shape, a.dtype, VOXEL, protect=[zsrc])
    assert src.read_bytes() == before
    np.testing.assert_array_equal(np.asarray(read_image(zsrc).data), a)


def test_mrc_cut_after_it_was_opened_is_an_error_naming_it_not_a_crash(tmp_path):
    """A memory-mapped MRC that shrinks mid-run (a network share, another program rewriting it)
    killed the process with SIGBUS; read plane by plane, the short read is a one-line error."""
    import subprocess
    import sys

    path = write_image(tmp_path / "vol.mrc", _stack(np.uint16, (6, 256, 256)), VOXEL)
    script = (
        "import sys, numpy as np\n"
        "from napari_emdiffuse.data.io import read_image\n"
        "from napari_emdiffuse.errors import InputError\n"
        f"img = read_image({str(path)!r})\n"
        "first = np.asarray(img.data[0])\n"
        f"open({str(path)!r}, 'r+b').truncate(1024 + 2 * 256 * 256 * 2)\n"
        "try:\n"
        "    img.data[4:].compute()\n"
        "except InputError as err:\n"
        "    print(err); sys.exit(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, (done.returncode, done.stderr[-2000:])
    assert "vol.mrc" in done.stdout and "cut or replaced" in done.stdout


def test_mrc_planes_index_like_an_array(tmp_path):
    a = _stack(np.int16, (7, 20, 30))
    data = read_image(write_image(tmp_path / "v.mrc", a, VOXEL)).data
    for key in (np.s_[2], np.s_[-1], np.s_[1:6:2], np.s_[5:1:-2], np.s_[3:3], np.s_[..., 4], np.s_[2, 5:9, ::3]):
        np.testing.assert_array_equal(np.asarray(data[key]), a[key])
    np.testing.assert_array_equal(np.asarray(data.rechunk((3, 20, 30))), a)


@pytest.mark.parametrize(
    ("unit", "per_unit", "spacing", "want"),
    [
        ("nanometers", 0.25, 50, (0.05, 0.004, 0.004)),
        ("microns", 250, 0.05, (0.05, 0.004, 0.004)),
        *[(mu, 250, 0.008, (0.008, 0.004, 0.004)) for mu in ("\\u00B5", "u", "\\u00b5m", "\\u03BCm")],  # ImageJ writes "µ" escaped
        ("inch", 72, 0.5, (36, 1, 1)),
        ("furlong", 250, 3, (750, 1, 1)),
    ],
)
def test_an_imagej_unit_is_read_as_the_length_it_names_or_as_none(tmp_path, unit, per_unit, spacing, want):
    """Plural units are lengths ("nanometers" read as µm: 4 nm pixels became 4 µm), and so is
    every spelling of the micrometre (ImageJ stores a bare "µ" where a user types "u"; the Greek
    mu). "inch", ImageJ's unit for a file sized only by a screen's dots per inch, and a unit we
    cannot convert give no pixel size (they read as µm: made-up sizes); the voxel keeps its shape
    in x pixels, as Fiji shows it (slices 0.5 inch apart at 72 pixels per inch: 36 pixels)."""
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, _stack(np.uint8, (3, 20, 30)), imagej=True, resolution=(per_unit, per_unit), metadata={"spacing": spacing, "unit": unit})
    np.testing.assert_allclose(read_image(path).voxel, want)


def test_every_micrometre_spelling_an_imagej_description_may_hold_is_a_micrometre():
    """Those tifffile cannot write (it writes only ASCII; ImageJ escapes them): the micro sign
    alone (ImageJ's for a unit typed as "u") or with m, and the Greek mu, either case. They read
    as µm before "a unit we cannot convert" meant no size; they must still."""
    from napari_emdiffuse.data.tiff import imagej_um_per_unit

    assert [imagej_um_per_unit({"unit": mu}) for mu in ("\u00b5", "\u00b5m", "\u03bcm", "\u039cM")] == [1.0] * 4
