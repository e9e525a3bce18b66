"""`emdiffuse train` and `emdiffuse predict` end to end for the three variants, on tiny presets
and real EM: output files, shapes, voxel sizes, options and one-line errors."""

from __future__ import annotations

import unittest.mock as mock
import numpy as np
import pytest

from napari_emdiffuse.cli import main
from napari_emdiffuse.data.io import read_image, write_tiff


def run(*args: str) -> int:
    return main([*args])


def train_args(preset: str, out, *extra: str) -> list[str]:
    return ["train", "--preset", preset, "--out", str(out), "--iterations", "3", "-q", "--device", "cpu", *extra]


def test_superres_from_clean_images_at_factor_3(tmp_path, isbi_clean, capsys):
    clean = write_tiff(tmp_path / "clean.tif", (isbi_clean[:2, :240, :240] * 255).astype(np.uint8), (0.05, 0.004, 0.004))
    assert run(*train_args("emdiffuse-r-tiny", tmp_path / "m", "--clean", str(clean), "--option", "factor=3")) == 0
    low = write_tiff(tmp_path / "low.tif", (isbi_clean[2, :20, :30] * 255).astype(np.uint8), (0.012, 0.012))
    assert run("predict", "--model", str(tmp_path / "m"), "--input", str(low), "--output", str(tmp_path / "sr.tif"), "-q") == 0
    out = read_image(tmp_path / "sr.tif")
    assert out.shape == (60, 90)
    assert out.voxel == pytest.approx((0.004, 0.004))
    assert read_image(tmp_path / "sr_uncertainty.tif").shape == (60, 90)


def test_superres_from_registered_pair(tmp_path, isbi_clean):
    from napari_emdiffuse.data.degrade import psf_bin

    high = isbi_clean[:2, :96, :96]
    t = write_tiff(tmp_path / "high.tif", high, (0.05, 0.004, 0.004))
    i = write_tiff(tmp_path / "low.tif", psf_bin(high, 2), (0.05, 0.008, 0.008))
    assert run(*train_args("emdiffuse-r-tiny", tmp_path / "m", "--input", str(i), "--target", str(t))) == 0
    assert run("predict", "--model", str(tmp_path / "m"), "--input", str(i), "--output", str(tmp_path / "sr.tif"), "-q") == 0
    out = read_image(tmp_path / "sr.tif")
    assert out.shape == (2, 96, 96)
    assert out.voxel == pytest.approx((0.05, 0.004, 0.004))


def test_iso_i_volume_train_and_predict(tmp_path, fib_small):
    vol = write_tiff(tmp_path / "iso.tif", fib_small, (0.005, 0.005, 0.005))
    assert run(*train_args("vemdiffuse-i-tiny", tmp_path / "m", "--volume", str(vol), "--option", "factor=2")) == 0
    aniso = write_tiff(tmp_path / "aniso.tif", fib_small[::2, :40, :48], (0.01, 0.005, 0.005))
    assert run("predict", "--model", str(tmp_path / "m"), "--input", str(aniso), "--output", str(tmp_path / "o.zarr"), "-q") == 0
    import zarr

    group = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")
    assert group["mean/0"].shape == group["uncertainty/0"].shape == (33, 40, 48)
    assert group.attrs["voxel_size"] == pytest.approx([0.005, 0.005, 0.005])
    assert group.attrs["complete"] is True
    np.testing.assert_array_equal(np.asarray(group["mean/0"][::2]), fib_small[::2, :40, :48])


def test_iso_a_sstem_becomes_isotropic(tmp_path, sstem_small, capsys):
    vol = write_tiff(tmp_path / "sstem.tif", sstem_small, (0.05, 0.004, 0.004))
    assert run(*train_args("vemdiffuse-a-tiny", tmp_path / "m", "--volume", str(vol), "--option", "factor=12.5")) == 0
    crop = write_tiff(tmp_path / "crop.tif", sstem_small[:3, :6, :40], (0.05, 0.004, 0.004))
    out_path = tmp_path / "iso.tif"
    assert run("predict", "--model", str(tmp_path / "m"), "--input", str(crop), "--output", str(out_path), "--keep-dtype", "-q") == 0
    out = read_image(out_path)
    assert out.shape == (26, 6, 40)
    assert out.voxel == pytest.approx((0.004, 0.004, 0.004))
    data = np.asarray(out.data)
    assert data.dtype == np.uint8
    np.testing.assert_array_equal(data[[0, 25]], sstem_small[[0, 2], :6, :40])  # slices on the grid kept


@pytest.mark.parametrize(
    "args, message",
    [
        (["--option", "factor=1"], "1 would leave the data as it is"),
        (["--option", "factor=2.5"], "whole number from 2 to 12"),
        (["--option", "factor=0"], "meaningless"),
    ],
)
def test_bad_factor_on_the_command_line(tmp_path, fib_small, capsys, args, message):
    vol = write_tiff(tmp_path / "iso.tif", fib_small[:5], (0.005, 0.005, 0.005))
    assert run(*train_args("vemdiffuse-i-tiny", tmp_path / "m", "--volume", str(vol), *args)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_volume_variants_refuse_2d_and_short_inputs_naming_the_file_and_its_shape(tmp_path, fib_small, capsys):
    """The refusals named neither the file nor, for a short volume, its shape ("the isotropic
    training volume has 4 slice(s)", "but the image is a single 2D image")."""
    vol = write_tiff(tmp_path / "v.tif", fib_small[:4], (0.005, 0.005, 0.005))
    assert run(*train_args("vemdiffuse-i-tiny", tmp_path / "m", "--volume", str(vol))) == 2
    h, w = fib_small.shape[1:]
    assert f"error: volume {vol} has 4 slice(s) (shape (4, {h}, {w})); vEMDiffuse-i" in capsys.readouterr().err
    image = write_tiff(tmp_path / "2d.tif", fib_small[0], (0.005, 0.005))
    assert run(*train_args("vemdiffuse-a-tiny", tmp_path / "m", "--volume", str(image))) == 2
    assert f"error: volume {image} is a single 2D image ({h}, {w}), but vEMDiffuse-a" in capsys.readouterr().err
    for model in ("vemdiffuse-i", "vemdiffuse-a"):
        assert run("predict", "--model", model, "--input", str(image), "--output", str(tmp_path / "o.tif"), "-q") == 2
        err = capsys.readouterr().err
        assert f"error: image {image} is a single 2D image ({h}, {w}), but vEMDiffuse-" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "name, options, shape",
    [("denoise", {}, (3, 40, 50)), ("denoise", {}, (40, 50)), ("superres", {"factor": 3}, (2, 20, 30)), ("iso_i", {"factor": 4}, (5, 40, 50)),
     ("iso_a", {"factor": 2.5}, (6, 40, 50)), ("iso_a", {"factor": 3, "emdiffuse_original": True}, (4, 40, 50))],
)
def test_blocks_tile_the_output_once_and_own_whole_chunks(name, options, shape):
    """Every output voxel belongs to exactly one block, and the output's chunks never straddle
    two blocks (concurrent writers never share a chunk)."""
    from napari_emdiffuse.jobs.blocks import block_chunks
    from napari_emdiffuse.variants import get_variant, iso_a

    v = get_variant(name)
    opts = v.options(options)
    out = v.output_geometry(shape, (1.0,) * len(shape), opts).shape
    with mock.patch.object(iso_a, "BUFFER_BYTES", 40_000):  # several row blocks even for a small volume
        blocks = v.blocks(shape, opts, samples=2)
    cover = np.zeros(out, np.int32)
    for b in blocks:
        cover[b.region] += 1
    assert (cover == 1).all()
    chunks = block_chunks(out, blocks)
    for b in blocks:
        assert all(s.start % c == 0 for s, c in zip(b.region, chunks))
        assert all(s.stop % c == 0 or s.stop == n for s, c, n in zip(b.region, chunks, out))
    if name == "iso_a" and not options.get("emdiffuse_original"):
        assert len(blocks) > 1


@pytest.mark.parametrize(
    "preset, role, shape, extra, said",
    [
        ("tiny", "input", (20, 20), [], "the 14 x 20 px it trains on (the bottom rows are held out for validation) is too small for a 16 px patch (train.patch_size 32"),
        ("tiny", "input", (40, 40), [], "the 13 x 40 px held out for validation (the bottom rows) is too small for a 16 px patch (train.patch_size 32"),
        ("tiny", "input", (200, 200), ["--roi", "0:10,0:10"], "the 7 x 10 px of the region y 0:10, x 0:10 it trains on (the bottom rows are held out"),
        ("vemdiffuse-i-tiny", "volume", (5, 20, 20), ["--option", "factor=2"], "the 14 x 20 px it trains on (the bottom rows are held out for validation) is too small for a 16 px patch"),
    ],
    ids=["training-rows", "validation-rows", "region", "volume"],
)
def test_train_on_images_too_small_for_a_patch_names_the_file_its_planes_and_the_patch_size(tmp_path, capsys, preset, role, shape, extra, said):
    image = tmp_path / "small.tif"
    write_tiff(image, np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8), (1.0,) * len(shape))
    given = ["--volume", str(image)] if role == "volume" else ["--input", str(image), "--target", str(image)]
    assert run(*train_args(preset, tmp_path / "run", *given, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"emdiffuse train: error: {role} {image} has planes of {shape[-2]} x {shape[-1]} px; {said}"), err
    assert "train.patch_size" in err and not (tmp_path / "run").exists()
