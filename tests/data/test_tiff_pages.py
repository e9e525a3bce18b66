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
    tifffile.imwrite(single, planes)  # one write of the whole stack: one series, as before
    assert read_image(single).shape == (3, 128, 128)
