"""vEMDiffuse-a: geometry (fractional factors included), lateral training pairs, xz-plane
prediction, interleaving, continuity across gaps and along y, and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_emdiffuse.config import ConfigError
from napari_emdiffuse.errors import InputError
from napari_emdiffuse.jobs.predict import run_predict
from napari_emdiffuse.variants import get_variant
from napari_emdiffuse.variants.base import Split
from napari_emdiffuse.variants.iso_a import interpolate_lines, kept_slices, output_slices

ISO = get_variant("iso_a")


def linear_along_z(vol: np.ndarray, factor: float) -> np.ndarray:
    n = vol.shape[0]
    z = np.arange(output_slices(n, factor)) / factor
    i0 = np.minimum(np.floor(z + 1e-9).astype(int), n - 2)
    t = (z - i0)[:, None, None]
    return vol[i0] * (1 - t) + vol[i0 + 1] * t


@pytest.mark.parametrize("factor", [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 2.5, 12.5, 16])
def test_geometry_for_every_factor(factor):
    opts = ISO.options({"factor": factor})
    g = ISO.output_geometry((30, 40, 50), (0.05, 0.004, 0.004), opts)
    assert g.shape[1:] == (40, 50)
    assert g.shape[0] == int(np.floor(29 * factor + 1e-6)) + 1
    assert g.voxel == pytest.approx((0.05 / factor, 0.004, 0.004))
    assert [p for b in ISO.blocks((30, 40, 50), opts) for p in b.planes] == [(g.shape[0], 50)] * 40


def test_sstem_voxel_becomes_isotropic():
    """4 x 4 x 50 nm at factor 12.5: the output's z voxel equals the lateral one."""
    g = ISO.output_geometry((30, 512, 512), (0.05, 0.004, 0.004), ISO.options({"factor": 12.5}))
    assert g.voxel == pytest.approx((0.004, 0.004, 0.004))
    assert g.shape == (363, 512, 512)
    assert kept_slices(5, 12.5) == [(0, 0), (2, 25), (4, 50)]  # odd slices fall between output planes


@pytest.mark.parametrize("bad", [0, 1, -3, 0.5, 16.5, "12.5nm", None])
def test_bad_factors_are_refused(bad):
    with pytest.raises(ConfigError, match="factor: .*larger than 1 and at most 16"):
        ISO.options({"factor": bad})


def test_interpolate_lines_marks_measured_rows():
    lines = np.array([[0.0, 10.0], [4.0, 30.0]], np.float32)
    out = interpolate_lines(lines, np.array([0.0, 4.0]), np.arange(5))
    np.testing.assert_allclose(out[0, :, 0], [0, 1, 2, 3, 4])
    np.testing.assert_allclose(out[0, :, 1], [10, 15, 20, 25, 30])
    np.testing.assert_allclose(out[1, :, 0], [-1, 0, 1, 0, -1])


def test_lateral_pairs_keep_every_kth_row(sstem_small):
    opts = ISO.options({"factor": 4})
    src = ISO.training_pairs({"volume": sstem_small}, opts, Split("train", 0.25, 32))
    assert src.patch == 32
    cond, target = src.sample(np.random.default_rng(0), 8, 32)
    assert cond.shape == (8, 2, 32, 32) and target.shape == (8, 1, 32, 32)
    for c, t in zip(cond, target):
        # the target is the difference from the interpolation, which is exact on measured rows
        on = c[1] == -1
        assert on.any(axis=1).sum() >= 32 // 4 - 1
        np.testing.assert_allclose(t[0][on], 0, atol=1e-6)
        assert np.abs(t[0][~on]).mean() > 0.01
        gaps = np.diff(np.flatnonzero(on[:, 0]))
        assert np.all(gaps[:-1] == 4) and gaps[-1] <= 4  # the last is shorter where the region ends


def test_fractional_factor_training_pairs(sstem_small):
    opts = ISO.options({"factor": 12.5})
    with pytest.raises(InputError, match="at least 32 px"):
        ISO.training_pairs({"volume": sstem_small}, opts, Split("train", 0.25, 16))
    src = ISO.training_pairs({"volume": sstem_small}, opts, Split("train", 0.1, 48))
    cond, target = src.sample(np.random.default_rng(1), 4, src.patch)
    for c in cond:
        gaps = np.diff(np.flatnonzero(c[1][:, 0] == -1))
        assert set(gaps[:-1]) <= {12, 13} and gaps[-1] <= 13


def test_interleaving_and_gap_boundaries_with_an_oracle(oracle_model):
    """An oracle that adds nothing to the baseline must reproduce linear interpolation along z
    exactly, planes of several tiles included; the input slices that fall on the grid are kept
    bit for bit."""
    rng = np.random.default_rng(4)
    vol = (rng.random((5, 9, 70)) * 200 + 20).astype(np.uint8)
    before = vol.copy()
    for factor in (4, 2.5):
        model = oracle_model("vemdiffuse-a-tiny", {"factor": factor}, lambda c, x: 0 * c[:, :1], 1, 2)
        res = run_predict(model, vol, voxel=(0.02, 0.005, 0.005), device="cpu", keep_samples=True)
        n_out = output_slices(5, factor)
        assert res.mean.shape == (n_out, 9, 70) and res.samples.shape == (2, n_out, 9, 70)
        assert res.voxel == pytest.approx((0.02 / factor, 0.005, 0.005))
        np.testing.assert_allclose(res.mean, linear_along_z(vol.astype(np.float64), factor), atol=0.02)
        for i, z in kept_slices(5, factor):
            np.testing.assert_array_equal(res.mean[z], vol[i])
            assert np.all(res.std[z] == 0)
    np.testing.assert_array_equal(vol, before)


def test_row_blocks_and_zarr_output_give_the_same_volume(oracle_model, monkeypatch, tmp_path):
    """Prediction buffers a few y rows at a time and may write into zarr (for volumes larger
    than memory); neither the block size nor the store may change the result."""
    import zarr

    import napari_emdiffuse.variants.iso_a as iso_a

    model = oracle_model("vemdiffuse-a-tiny", {"factor": 3}, lambda c, x: c[:, :1] + 0.1 * c[:, 1:], 1, 2)
    vol = (np.random.default_rng(5).random((4, 11, 40)) * 255).astype(np.uint8)
    whole = run_predict(model, vol, voxel=(0.015, 0.005, 0.005), device="cpu").mean
    monkeypatch.setattr(iso_a, "BUFFER_BYTES", 1)  # one row per block
    monkeypatch.setattr(iso_a, "VIEWS_BUFFER_BYTES", 1)
    run_predict(model, vol, voxel=(0.015, 0.005, 0.005), device="cpu", output=tmp_path / "o.zarr")
    stored = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")
    np.testing.assert_array_equal(np.asarray(stored["mean/0"]), whole)  # one row per block or all at once: the same
    assert stored.attrs["voxel_size"] == pytest.approx([0.005, 0.005, 0.005])
    assert stored["uncertainty/0"].shape == whole.shape and stored["uncertainty/0"].chunks[1] == 1  # a block owns its chunks


def _skewed(c, x):
    """An oracle that is not the same along rows and columns, nor the same at every pixel: what
    it makes of a plane depends on the plane's orientation and on the tiles around each pixel."""
    img = c[:, :1]
    return img + 0.3 * (img - torch.roll(img, 1, -1)) + 0.1 * c[:, 1:] * img.mean((-2, -1), keepdim=True)


@pytest.mark.parametrize("buffer", [10**9, 3000])  # one block, and blocks of a few rows
def test_the_best_estimate_averages_the_xz_and_the_yz_planes(oracle_model, monkeypatch, buffer):
    """With ``both_views`` (the default) the best estimate is the mean of the reconstruction
    from the xz planes and the one from the yz planes: the same as running the xz-only model on
    the volume with x and y swapped. However the rows are cut into blocks, each block's yz
    planes use the tiles of the whole plane; the samples and the spread stay the xz planes'."""
    from napari_emdiffuse.variants import iso_a

    monkeypatch.setattr(iso_a, "BUFFER_BYTES", buffer)
    monkeypatch.setattr(iso_a, "VIEWS_BUFFER_BYTES", buffer)
    vol = (np.random.default_rng(8).random((4, 70, 20)) * 200 + 20).astype(np.float32)
    both = oracle_model("vemdiffuse-a-tiny", {"factor": 3}, _skewed, 1, 2)
    xz = oracle_model("vemdiffuse-a-tiny", {"factor": 3, "both_views": False}, _skewed, 1, 2)
    assert (len(ISO.blocks(vol.shape, ISO.options({"factor": 3}))) > 1) == (buffer < 10**6)
    voxel = (0.015, 0.005, 0.005)
    res = run_predict(both, vol, voxel=voxel, device="cpu", keep_samples=True)
    one = run_predict(xz, vol, voxel=voxel, device="cpu", keep_samples=True)
    swapped = run_predict(xz, np.ascontiguousarray(vol.transpose(0, 2, 1)), voxel=voxel, device="cpu").mean.transpose(0, 2, 1)
    np.testing.assert_allclose(res.mean, 0.5 * (one.mean + swapped), rtol=1e-5, atol=1e-3)
    assert np.abs(one.mean - swapped).max() > 1  # the two views do differ
    for i, z in kept_slices(4, 3):
        np.testing.assert_array_equal(res.mean[z], vol[i])
    np.testing.assert_array_equal(res.std, one.std)
    np.testing.assert_array_equal(res.samples, one.samples)
    mean_of_samples = run_predict(both, vol, voxel=voxel, device="cpu", estimate="mean")
    np.testing.assert_array_equal(mean_of_samples.mean, run_predict(xz, vol, voxel=voxel, device="cpu", estimate="mean").mean)


def test_blocks_grow_to_a_tile_deep_for_the_second_view(monkeypatch):
    """Each block computes every yz tile that reaches its rows: blocks are made a tile deep
    where the larger budget allows, and stay as thin as the buffer asks without both views."""
    from napari_emdiffuse.engine.grid import TileGrid
    from napari_emdiffuse.variants import iso_a

    monkeypatch.setattr(iso_a, "BUFFER_BYTES", 40_000)
    grid, shape = TileGrid(32, 8), (4, 200, 40)
    thin = ISO.blocks(shape, ISO.options({"factor": 3, "both_views": False}), 0, grid)
    deep = ISO.blocks(shape, ISO.options({"factor": 3}), 0, grid)
    assert max(b.shape[1] for b in thin) < 32 and [b.shape[1] for b in deep[:-1]] == [32] * (len(deep) - 1)
    assert all(b.estimate_planes == () for b in thin) and all(len(b.estimate_planes) == 40 for b in deep)
    monkeypatch.setattr(iso_a, "VIEWS_BUFFER_BYTES", 40_000)  # no room: the buffer's rows
    assert max(b.shape[1] for b in ISO.blocks(shape, ISO.options({"factor": 3}), 0, grid)) < 32


def test_neighbouring_xz_planes_share_their_noise(oracle_model):
    """A volume that does not change along y must come out unchanged along y even from a model
    whose result depends on the noise: every xz plane starts from the same noise, so the xy
    view of generated slices does not flicker from row to row. (Keyed by y, it would.)"""
    noisy = oracle_model("vemdiffuse-a-tiny", {"factor": 4}, lambda c, x: c[:, :1] + 0.3 * torch.tanh(x), 1, 2)
    column = np.random.default_rng(6).random((3, 1, 36)) * 200
    vol = np.broadcast_to(column, (3, 10, 36)).astype(np.float32)
    res = run_predict(noisy, vol, voxel=(0.02, 0.005, 0.005), device="cpu", estimate="mean")
    np.testing.assert_allclose(res.mean, np.broadcast_to(res.mean[:, :1], res.mean.shape), atol=1e-3)
    other = noisy.preset.with_overrides({"sample": {"seed": 1}}).sample
    reseeded = run_predict(noisy, vol, sample=other, voxel=(0.02, 0.005, 0.005), device="cpu", estimate="mean")
    assert np.abs(reseeded.mean - res.mean).max() > 1  # the noise does reach the result
    assert np.abs(res.std[1]).mean() > 0.1  # and samples differ: a real uncertainty map


def test_a_2d_image_or_single_slice_is_refused(sstem_small):
    opts = ISO.options({"factor": 4})
    with pytest.raises(InputError, match="works on volumes"):
        ISO.check_input(sstem_small[0], opts)
    with pytest.raises(InputError, match="works on volumes"):
        ISO.training_pairs({"volume": sstem_small[0]}, opts, Split("train", 0.1, 32))
    with pytest.raises(InputError, match="1 slice.*at least 2"):
        ISO.check_input(sstem_small[:1], opts)


def test_cancel_keeps_the_finished_blocks_of_rows(oracle_model, monkeypatch):
    """Rows are predicted in blocks (two rows each here); a cancel during the second block keeps
    the first, with its input slices, and nothing of the second."""
    from napari_emdiffuse.jobs.events import new_cancel_token
    from napari_emdiffuse.jobs.predict import predict
    from napari_emdiffuse.variants import iso_a

    monkeypatch.setattr(iso_a, "BUFFER_BYTES", 9000)  # 2 rows of a (10, 40) output and (4, 40) input
    monkeypatch.setattr(iso_a, "VIEWS_BUFFER_BYTES", 9000)

    calls = {"n": 0, "cancel_at": None}
    token = new_cancel_token()

    def answer(c, x):
        calls["n"] += 1
        if calls["n"] == calls["cancel_at"]:
            token.set()  # from the worker: lands during the third xz plane (second block), whatever the event queue does
        return c[:, :1] + 0.1 * c[:, 1:]

    model = oracle_model("vemdiffuse-a-tiny", {"factor": 3}, answer, 1, 2)
    vol = (np.random.default_rng(7).random((4, 6, 40)) * 200 + 20).astype(np.uint8)
    run_predict(model, vol[:, :2], voxel=(0.015, 0.005, 0.005), device="cpu")  # two rows: an image is at least 2 x 2
    per_plane, calls["n"] = calls["n"] // 2, 0
    calls["cancel_at"] = 2 * per_plane + 1
    res = list(predict(model, vol, voxel=(0.015, 0.005, 0.005), device="cpu", cancel=token))[-1]
    assert not res.complete
    assert np.abs(res.mean[1:3, :2]).sum() > 0  # generated slices of rows 0 and 1 were kept
    np.testing.assert_array_equal(res.mean[0, :2], vol[0, :2])  # with the input slices put back
    assert np.abs(res.mean[:, 2:]).sum() == 0  # rows not finished stay empty


def test_a_voxel_size_that_does_not_match_the_factor_is_pointed_out(oracle_model):
    from napari_emdiffuse.jobs.events import Kind
    from napari_emdiffuse.jobs.predict import predict

    model = oracle_model("vemdiffuse-a-tiny", {"factor": 4}, lambda c, x: c[:, :1], 1, 2)
    vol = (np.random.default_rng(3).random((3, 8, 24)) * 255).astype(np.uint8)

    def warnings(voxel):
        return [ev.text for ev in predict(model, vol, voxel=voxel, device="cpu") if ev.kind is Kind.MESSAGE]

    assert any("not be isotropic" in t for t in warnings((0.05, 0.004, 0.004)))
    assert not any("not be isotropic" in t for t in warnings((0.02, 0.005, 0.005)))
