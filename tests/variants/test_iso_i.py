"""vEMDiffuse-i: geometry, training gaps, interleaving, gap boundaries and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_emdiffuse.config import ConfigError
from napari_emdiffuse.errors import InputError
from napari_emdiffuse.jobs.predict import run_predict
from napari_emdiffuse.variants import get_variant
from napari_emdiffuse.variants.base import Split
from napari_emdiffuse.variants.iso_i import context_slices, linear_gap

ISO = get_variant("iso_i")


def catmull_rom(p0, p1, p2, p3, t):
    """The cubic through four equally spaced samples, between the middle two (``t`` in [0, 1])."""
    return 0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (3 * p1 - p0 - 3 * p2 + p3) * t**3)


def spline_gaps(cond: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The oracle's answer: Catmull-Rom interpolation through the four context slices, as the
    difference from linear interpolation between the middle two (the residual the network makes)."""
    k = x.shape[1] + 1
    t = torch.arange(1, k, dtype=cond.dtype)[None, :, None, None] / k
    linear = cond[:, 1:2] * (1 - t) + cond[:, 2:3] * t
    return catmull_rom(*(cond[:, i : i + 1] for i in range(4)), t) - linear


@pytest.mark.parametrize("k", range(2, 13))
def test_geometry_for_every_factor(k):
    opts = ISO.options({"factor": k})
    assert ISO.channels(opts) == (k - 1, 4)
    g = ISO.output_geometry((7, 40, 50), (0.04, 0.005, 0.005), opts)
    assert g.shape == (6 * k + 1, 40, 50)
    assert g.voxel == pytest.approx((0.04 / k, 0.005, 0.005))
    assert [p for b in ISO.blocks((7, 40, 50), opts) for p in b.planes] == [(40, 50)] * 6


@pytest.mark.parametrize("bad", [0, 1, 2.5, 13, -4, "four"])
def test_bad_factors_are_refused(bad):
    with pytest.raises(ConfigError, match="factor: .*2 to 12"):
        ISO.options({"factor": bad})


def test_context_repeats_the_bounding_slice_at_the_ends():
    assert context_slices(0, 5) == [0, 0, 1, 2]
    assert context_slices(2, 5) == [1, 2, 3, 4]
    assert context_slices(3, 5) == [2, 3, 4, 4]
    assert context_slices(0, 2) == [0, 0, 1, 1]


def test_training_gaps_are_slices_k_apart(fib_small):
    opts = ISO.options({"factor": 4})
    src = ISO.training_pairs({"volume": fib_small}, opts, Split("train", 0.2, 32))
    cond, residual = src.sample(np.random.default_rng(0), 6, 32)
    assert cond.shape == (6, 4, 32, 32) and residual.shape == (6, 3, 32, 32)
    assert cond.dtype == residual.dtype == np.float32
    cond2, target = src.source.sample(np.random.default_rng(0), 6, 32)  # the same draw, before the baseline
    np.testing.assert_array_equal(cond, cond2)
    np.testing.assert_allclose(residual, target - linear_gap(cond, 4), atol=1e-6)
    # in FIB-SEM, a slice resembles its neighbour 1 apart more than the bounding slice 4 apart
    near = np.mean([np.corrcoef(c[1].ravel(), t[0].ravel())[0, 1] for c, t in zip(cond, target)])
    far = np.mean([np.corrcoef(c[1].ravel(), c[2].ravel())[0, 1] for c in cond])
    assert near > far
    assert residual.std() < target.std()  # interpolation already explains most of it
    val = ISO.training_pairs({"volume": fib_small}, opts, Split("val", 0.2, 32))
    assert val.source.rows[0] >= src.source.rows[1]  # validation rows never seen in training


def test_interleaving_and_gap_boundaries(oracle_model):
    """An oracle that fits a Catmull-Rom spline through its four context slices must give exactly
    the spline through the whole stack: a gap written at the wrong place, given the wrong
    bounding or outer slices, or a missing original slice, breaks it. The spline is continuous
    with a continuous slope at every input slice, so gaps that use the context this way join
    without a jump or a kink."""
    k = 3
    model = oracle_model("vemdiffuse-i-tiny", {"factor": k}, spline_gaps, k - 1, 4)
    rng = np.random.default_rng(3)
    vol = (rng.random((5, 36, 44)) * 200 + 20).astype(np.uint8)
    before = vol.copy()
    res = run_predict(model, vol, voxel=(0.03, 0.01, 0.01), device="cpu", keep_samples=True)
    assert res.mean.shape == (13, 36, 44)
    assert res.voxel == pytest.approx((0.01, 0.01, 0.01))
    np.testing.assert_array_equal(res.mean[::k], vol)  # originals bit for bit
    np.testing.assert_array_equal(res.samples[:, ::k], np.broadcast_to(vol, (2, *vol.shape)))
    assert np.all(res.std[::k] == 0)
    v = vol.astype(np.float64)
    padded = np.concatenate([v[:1], v, v[-1:]])  # the end slices stand in for missing neighbours
    expect = np.empty_like(res.mean, dtype=np.float64)
    for z in range(13):
        g, j = min(z // k, 3), z - min(z // k, 3) * k
        expect[z] = catmull_rom(*padded[g : g + 4], j / k)
    np.testing.assert_allclose(res.mean, expect, atol=0.05)
    np.testing.assert_array_equal(vol, before)


def test_one_gap_volume_and_large_factor(oracle_model):
    """Two slices and k = 12: eleven planes generated in one sample between them."""
    model = oracle_model("vemdiffuse-i-tiny", {"factor": 12}, spline_gaps, 11, 4)
    vol = np.stack([np.full((20, 24), 10, np.uint16), np.full((20, 24), 130, np.uint16)])
    res = run_predict(model, vol, voxel=(0.06, 0.005, 0.005), device="cpu")
    assert res.mean.shape == (13, 20, 24)
    assert res.voxel == pytest.approx((0.005, 0.005, 0.005))
    t = np.arange(13) / 12
    np.testing.assert_allclose(res.mean[:, 5, 5], catmull_rom(10, 10, 130, 130, t), atol=0.05)


def test_a_2d_image_is_refused():
    opts = ISO.options({"factor": 4})
    with pytest.raises(InputError, match="works on volumes"):
        ISO.check_input(np.zeros((64, 64), np.uint8), opts)
    with pytest.raises(InputError, match="works on volumes"):
        ISO.training_pairs({"volume": np.zeros((64, 64), np.uint8)}, opts, Split("train", 0.1, 32))


def test_too_few_slices_are_refused(fib_small):
    opts = ISO.options({"factor": 8})
    with pytest.raises(InputError, match="1 slice.*at least 2"):
        ISO.check_input(fib_small[:1], opts)
    with pytest.raises(InputError, match="has 8 slice.*at least 9 at factor 8"):
        ISO.training_pairs({"volume": fib_small[:8]}, opts, Split("train", 0.1, 32))
    ISO.training_pairs({"volume": fib_small[:9]}, opts, Split("train", 0.1, 32))  # one gap is enough


def test_clean_images_alone_point_to_the_volume(fib_small):
    with pytest.raises(InputError, match="--volume"):
        ISO.from_clean(fib_small, ISO.options({"factor": 4}))


@pytest.mark.parametrize(
    "voxel,warned",
    [((0.05, 0.004, 0.004), True), ((0.02, 0.005, 0.005), False), ((1.0, 1.0, 1.0), False), ((0.021, 0.005, 0.005), False)],
)
def test_a_voxel_size_that_does_not_match_the_factor_is_pointed_out(oracle_model, voxel, warned):
    from napari_emdiffuse.jobs.events import Kind
    from napari_emdiffuse.jobs.predict import predict

    model = oracle_model("vemdiffuse-i-tiny", {"factor": 4}, lambda c, x: torch.zeros_like(x), 3, 4)
    vol = (np.random.default_rng(3).random((3, 16, 16)) * 255).astype(np.uint8)
    texts = [ev.text for ev in predict(model, vol, voxel=voxel, device="cpu") if ev.kind is Kind.MESSAGE]
    assert any("not be isotropic" in t and "12.5" in t for t in texts) == warned
