"""TIFFs written page by page (one tifffile series per page) read as one stack, as Fiji reads
them; a file of images of different sizes is refused rather than read as its first."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import tifffile

from napari_emdiffuse._reader import read_paths
from napari_emdiffuse.data.io import read_image, write_tiff
from napari_emdiffuse.errors import InputError

VOXEL = (0.05, 0.004, 0.0041)


@pytest.fixture(scope="module")
def planes(isbi_path):
    return tifffile.imread(isbi_path, key=range(3))[:, :128, :128]


def _pagewise(path, planes, **kwargs):
    """Each plane written by its own call, as a Python loop over a stack writes it."""
    with tifffile.TiffWriter(path) as w:
        for p in planes:
            w.write(p, **kwargs)
    return path


def test_pages_written_one_by_one_read_as_a_stack_lazily(tmp_path, planes):
    path = _pagewise(tmp_path / "pagewise.tif", planes)
    with tifffile.TiffFile(path) as tf:
        assert len(tf.series) == 3  # what tifffile makes of it
    img = read_image(path)
    assert img.shape == (3, 128, 128) and isinstance(img.data, da.Array) and img.data.chunksize[0] == 1
    np.testing.assert_array_equal(np.asarray(img.data), planes)
    assert img.voxel == (1.0, 1.0, 1.0)
    [(data, kwargs, _)] = read_paths(str(path))  # the napari reader goes the same way
    assert data.shape == (3, 128, 128)


def test_compressed_pages_keep_the_first_pages_pixel_size(tmp_path, planes):
    path = _pagewise(tmp_path / "zlib.tif", planes, compression="zlib", resolution=(1e4 / 0.004, 1e4 / 0.004), resolutionunit="CENTIMETER")
    img = read_image(path)
    np.testing.assert_array_equal(np.asarray(img.data), planes)
    np.testing.assert_allclose(img.voxel[1:], (0.004, 0.004))


def test_images_of_different_sizes_are_refused_naming_the_file(tmp_path, planes):
    path = _pagewise(tmp_path / "mixed.tif", [planes[0], planes[1], planes[2, :64, :64]])
    with pytest.raises(InputError) as err:
        read_image(path)
    assert str(err.value) == (
        f"{path}: the TIFF file holds 3 images of different sizes (2 of 128x128 uint8, 64x64 uint8), not one stack; "
        "save the one to enhance as a file of its own"
    )


def test_a_cut_page_by_page_file_is_refused_as_truncated(tmp_path, planes):
    whole = _pagewise(tmp_path / "whole.tif", planes)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size - 5000])
    with pytest.raises(InputError, match="truncated") as err:
        read_image(cut)
    assert str(cut) in str(err.value)


def test_an_imagej_stack_reads_as_before(tmp_path, planes):
    img = read_image(write_tiff(tmp_path / "ij.tif", planes, VOXEL))
    assert img.shape == (3, 128, 128) and img.meta["axes"] == "ZYX" and img.data.chunksize[0] == 1
    np.testing.assert_array_equal(np.asarray(img.data), planes)
    np.testing.assert_allclose(img.voxel, VOXEL, rtol=1e-5)
    single = tmp_path / "one.tif"
    tifffile.imwrite(single, planes, photometric="minisblack")  # one write of the whole stack: one series, as before
    assert read_image(single).shape == (3, 128, 128)


@pytest.mark.parametrize(
    "write, pages",
    [
        (lambda path, planes: _pagewise(path, planes), 3),  # pages written one by one: read as their first before
        (lambda path, planes: tifffile.imwrite(path, planes[:2], imagej=True, metadata={"axes": "ZYX"}), 2),
        (lambda path, planes: tifffile.imwrite(path, planes, photometric="minisblack"), 3),
        (lambda path, planes: tifffile.imwrite(path, planes), 3),  # one RGB image of 3 planes: refused as RGB before
    ],
    ids=["pagewise", "imagej", "one-write", "tifffile-default"],
)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # tifffile announces it will write (3, y, x) as grey
def test_a_slice_of_several_pages_in_a_slice_folder_is_refused_naming_it(tmp_path, planes, write, pages):
    """A slice folder is one 2D image per file: a file of several pages among them lost all but
    its first page without a word (or stacked up as a fourth axis). It is refused as the stack
    it reads as on its own, saying what to do."""
    folder = tmp_path / "slices"
    folder.mkdir()
    for z in range(4):
        tifffile.imwrite(folder / f"z{z:03d}.tif", planes[z % 3])
    write(folder / "z002.tif", planes)
    assert read_image(folder / "z002.tif").shape == (pages, 128, 128)
    with pytest.raises(InputError) as err:
        read_image(folder)
    want = f"{folder / 'z002.tif'} holds {pages} slices (shape ({pages}, 128, 128)); a slice folder holds one 2D image per file: split it, or open it on its own as a stack"
    assert str(err.value) == want


def test_slice_folder_refuses_an_rgb_slice_and_reads_ome_slices_with_a_length_one_z(tmp_path, planes):
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    for z in range(3):
        tifffile.imwrite(rgb / f"s{z}.tif", np.moveaxis(planes, 0, -1), photometric="rgb")
    with pytest.raises(InputError, match=r"s0.tif: an RGB or multi-channel image \(shape \(128, 128, 3\)\)"):
        read_image(rgb)
    ome = tmp_path / "ome"
    ome.mkdir()
    for z in range(3):
        tifffile.imwrite(ome / f"s{z}.ome.tif", planes[z][None], ome=True, metadata={"axes": "ZYX"})
    img = read_image(ome)
    assert img.shape == (3, 128, 128)
    np.testing.assert_array_equal(np.asarray(img.data), planes)


def test_a_1_bit_tiff_reads_as_its_0_and_1_values_and_is_refused_as_input_by_name(tmp_path):
    """A bilevel TIFF packs 8 pixels a byte: its pages were called corrupt because they hold an
    eighth of the bytes of the decoded (bool) array. Read, it is a mask, which no variant enhances."""
    from PIL import Image as PILImage

    from napari_emdiffuse.data.normalise import check_image

    mask = np.random.default_rng(0).random((3, 37, 70)) > 0.5  # 70 columns: rows padded to whole bytes
    tifffile.imwrite(tmp_path / "mask.tif", mask)
    PILImage.fromarray(mask[0]).convert("1").save(tmp_path / "pil.tif")
    for path, want in ((tmp_path / "mask.tif", mask), (tmp_path / "pil.tif", mask[0])):
        img = read_image(path)
        assert img.data.dtype == bool
        np.testing.assert_array_equal(np.asarray(img.data), want)
        with pytest.raises(InputError, match="1-bit"):
            check_image(img.data, "input")
    with tifffile.TiffFile(tmp_path / "pil.tif") as tf:  # a bilevel page declaring too few bytes is still refused
        tag = tf.pages[0].tags["StripByteCounts"]
        assert tag.value == (9 * 37,)  # one strip; 70 pixels a row: 9 bytes
        at, dtype = tag.valueoffset, np.dtype(tf.byteorder + ("u2" if tag.dtype == 3 else "u4"))  # SHORT or LONG
    raw = bytearray((tmp_path / "pil.tif").read_bytes())
    raw[at : at + dtype.itemsize] = np.array(9 * 36, dtype).tobytes()
    (tmp_path / "short.tif").write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"short.tif: corrupt TIFF header \(page 1 declares \(37, 70\) bool, 333 bytes, but holds 324"):
        read_image(tmp_path / "short.tif")


def _colour_cases(rgb):
    """Colour TIFFs as tifffile writes them (data, keywords), and the array each reads as."""
    planar = {"photometric": "rgb", "planarconfig": "separate"}
    return {
        "contiguous": (rgb, {"photometric": "rgb"}, rgb),
        "contiguous-rgba": (np.concatenate([rgb, rgb[..., :1]], -1), {"photometric": "rgb"}, np.concatenate([rgb, rgb[..., :1]], -1)),
        "stack-planar": (np.stack([np.moveaxis(rgb, -1, 0), np.moveaxis(rgb[::-1], -1, 0)]), planar, np.stack([rgb, rgb[::-1]])),
    }


@pytest.mark.parametrize("kind", ["contiguous", "contiguous-rgba", "stack-planar"])
def test_a_colour_tiff_reads_with_its_samples_last_and_is_refused_as_colour(tmp_path, planes, kind):
    """A stack of planar RGB images stores each image's samples first: read as stored it passed
    for a 4D volume. Its photometric interpretation says it is colour, however the samples lie."""
    from napari_emdiffuse.data.normalise import check_image
    from napari_emdiffuse.data.tiff import tiff_header

    data, kwargs, want = _colour_cases(np.moveaxis(planes, 0, -1))[kind]
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, np.ascontiguousarray(data), **kwargs)
    img = read_image(path)
    model = "RGBA" if want.shape[-1] == 4 else "RGB"
    assert img.shape == want.shape and img.meta["colour"] == model and img.meta["axes"].endswith("YXS")
    np.testing.assert_array_equal(np.asarray(img.data), want)
    assert tiff_header(path) == (want.shape, np.dtype(np.uint8), img.meta["axes"])  # a slice folder lists what read_tiff gives
    assert len(img.voxel) == img.data.ndim and img.voxel[-1] == 1.0  # a sample is no distance
    for given in (img, img.data):  # by the file's record, and by the shape of a bare array (a napari layer's)
        with pytest.raises(InputError) as err:
            check_image(given, "image")
        assert str(err.value) == f"image has {want.shape[-1]} samples per pixel ({model}; shape {want.shape}), not one grey value: convert it to greyscale first"


def _multi_sample(path, kind, pixels):
    """A TIFF of several samples per pixel that are not RGB(A), written as ``kind`` says."""
    from PIL import Image as PILImage

    if kind == "pillow-grey+alpha":
        PILImage.fromarray(pixels[..., :2], mode="LA").save(path)
        return
    data, kwargs = {
        "grey+alpha": (pixels[..., :2], {"photometric": "minisblack", "extrasamples": ["unassalpha"]}),
        "grey+1 extra sample": (pixels[..., :2], {"photometric": "minisblack", "planarconfig": "contig"}),
        "CMYK": (pixels[..., :4], {"photometric": "separated"}),
        "CMYKA": (pixels, {"photometric": "separated", "extrasamples": ["assocalpha"]}),
        "RGB+2 extra samples": (pixels, {"photometric": "rgb"}),
        "CIELab": (pixels[..., :3], {"photometric": "cielab"}),
    }[kind]
    tifffile.imwrite(path, np.ascontiguousarray(data), **kwargs)


@pytest.mark.parametrize("kind", ["pillow-grey+alpha", "grey+alpha", "grey+1 extra sample", "CMYK", "CMYKA", "RGB+2 extra samples", "CIELab"])
def test_a_tiff_of_several_samples_per_pixel_reads_samples_last_and_is_refused_by_what_they_are(tmp_path, planes, kind):
    """Grey+alpha read as (y, x, 2) was enhanced as y slices of x by 2 pixels; CMYK was refused
    as 'RGBA' and CIELab as 'RGB'. The page's samples per pixel, not its shape, say it."""
    from napari_emdiffuse.data.normalise import check_image
    from napari_emdiffuse.data.tiff import tiff_header

    pixels = np.ascontiguousarray(np.moveaxis(np.concatenate([planes, planes[:2]]), 0, -1))  # (128, 128, 5)
    path = tmp_path / "cells.tif"
    _multi_sample(path, kind, pixels)
    img = read_image(path)
    n = {"CMYK": 4, "CMYKA": 5, "RGB+2 extra samples": 5, "CIELab": 3}.get(kind, 2)
    model = kind.removeprefix("pillow-")
    assert img.shape == (128, 128, n) and img.meta["axes"] == "YXS"
    assert img.meta["colour"] == model and "planes_as" not in img.meta
    np.testing.assert_array_equal(np.asarray(img.data), pixels[..., :n])
    assert tiff_header(path) == ((128, 128, n), np.dtype(np.uint8), "YXS")
    with pytest.raises(InputError) as err:
        check_image(img, "image")
    assert str(err.value) == f"image has {n} samples per pixel ({model}; shape (128, 128, {n})), not one grey value: convert it to greyscale first"


@pytest.mark.parametrize("kwargs", [{}, {"photometric": "rgb", "planarconfig": "separate"}])
def test_one_image_of_three_rgb_planes_reads_as_three_grey_slices(tmp_path, planes, kwargs):
    """What tifffile writes for a (3, y, x) array unless told otherwise (napari's "Save layer"
    too), with its shape description: a planar colour image that is, for an EM user, a stack of
    three slices."""
    import warnings

    from napari_emdiffuse.data.normalise import check_image
    from napari_emdiffuse.data.tiff import tiff_header

    path = tmp_path / "crop.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        tifffile.imwrite(path, planes, **kwargs)
    img = read_image(path)
    assert img.shape == planes.shape and "colour" not in img.meta and img.meta["planes_as"].startswith("3 grey slices,")
    assert img.meta["axes"] == "QYX"  # as tifffile letters the pages of a larger stack, not its samples (S)
    np.testing.assert_array_equal(np.asarray(img.data), planes)
    assert tiff_header(path) == (planes.shape, np.dtype(np.uint8), img.meta["axes"])
    check_image(img.data, "image")  # a grey volume: accepted


@pytest.mark.parametrize("kwargs", [{"metadata": None}, {"ome": True}])
def test_planar_rgb_not_written_with_tifffiles_shape_description_stays_colour(tmp_path, planes, kwargs):
    """Only tifffile's shaped (3, y, x) write is read as slices; planar RGB from other software
    (here: no shape description, or OME-XML declaring three samples) is a colour image."""
    from napari_emdiffuse.data.normalise import check_image

    path = tmp_path / "photo.tif"
    tifffile.imwrite(path, planes, photometric="rgb", planarconfig="separate", **kwargs)
    with tifffile.TiffFile(path) as tf:
        assert not tf.is_shaped and tf.pages[0].photometric.name == "RGB"
    img = read_image(path)
    assert img.shape == (128, 128, 3) and img.meta["colour"] == "RGB" and "planes_as" not in img.meta
    np.testing.assert_array_equal(np.asarray(img.data), np.moveaxis(planes, 0, -1))
    with pytest.raises(InputError, match=r"has 3 samples per pixel \(RGB; shape \(128, 128, 3\)\)"):
        check_image(img, "image")


@pytest.mark.parametrize("pages", [3, 4])
def test_grey_pages_as_many_as_colour_samples_stay_a_volume(tmp_path, planes, pages):
    from napari_emdiffuse.data.normalise import check_image
    from napari_emdiffuse.data.tiff import tiff_header

    stack = np.concatenate([planes, planes[:1]])[:pages]
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack, photometric="minisblack")
    img = read_image(path)
    assert img.shape == (pages, 128, 128) and "colour" not in img.meta
    assert tiff_header(path) == ((pages, 128, 128), np.dtype(np.uint8), img.meta["axes"])
    np.testing.assert_array_equal(np.asarray(img.data), stack)
    check_image(img.data, "image")  # a grey volume: accepted
