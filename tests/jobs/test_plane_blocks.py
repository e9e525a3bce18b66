"""A large 2D plane (an EM montage) is cut into rectangular blocks: each computes only the tiles
its rectangle needs and reads only the input they span, and the result is bit for bit the one
block's; the uncertainty is pooled in strips of rows, as over the whole plane."""

from __future__ import annotations


import numpy as np
import pytest

from napari_emdiffuse.data.normalise import fit_normaliser
from napari_emdiffuse.engine.grid import TileGrid
from napari_emdiffuse.errors import InputError
from napari_emdiffuse.jobs import blocks as blocks_module
from napari_emdiffuse.jobs import predict_output
from napari_emdiffuse.jobs.events import new_cancel_token
from napari_emdiffuse.jobs.predict import predict, run_predict
from napari_emdiffuse.uncertainty import ErrorModel, error_map
from napari_emdiffuse.variants import base, get_variant, model_options

CASES = [("tiny", {}, np.s_[:, :]), ("emdiffuse-r-tiny", {"factor": 2}, np.s_[:45, :53]), ("tiny", {}, "stack")]


@pytest.mark.parametrize("preset, options, crop", CASES)
def test_a_plane_cut_into_blocks_equals_one_block_bit_for_bit(plane, small_stack, request, tmp_path, lively, fast, store_results, preset, options, crop, recorded):
    model = lively(preset, options)
    image = np.ascontiguousarray(small_stack[:2] if crop == "stack" else plane[crop])
    norm = fit_normaliser(image)
    one = run_predict(model, image, sample=fast, normaliser=norm, keep_samples=True, output=tmp_path / "one.zarr")
    request.getfixturevalue("small_blocks")  # from here on, planes are cut
    lazy = recorded(image)
    cut = run_predict(model, lazy, sample=fast, normaliser=norm, keep_samples=True, output=tmp_path / "cut.zarr")
    assert one.complete and cut.complete
    blocks = get_variant(model.variant).blocks(image.shape, model_options(model), fast.samples, TileGrid(32, 8))
    digest = lazy.keys[: len(lazy.keys) - len(blocks)]  # the store's resume key hashes the whole input first
    reads = np.zeros(image.shape, int)
    for key in digest:
        reads[key] += 1
    assert digest and (reads == 1).all()  # every pixel once
    assert len(blocks) >= 6 and lazy.keys[len(digest) :] == [b.source for b in blocks]  # each block reads its source only, once
    if image.ndim == 2:  # (the stack's planes are 2 x 2 tiles: every block needs them all)
        corner = blocks[0].source
        assert corner[0].stop < image.shape[0] and corner[1].stop < image.shape[1]  # not the whole plane
    a, b = store_results(tmp_path / "one.zarr"), store_results(tmp_path / "cut.zarr")
    assert a.keys() == b.keys() == {"mean", "uncertainty", "samples"}
    assert a["uncertainty"].min() > 0
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_blocks_own_whole_chunks_of_at_most_chunk_px(small_blocks, monkeypatch):
    grid = TileGrid(32, 8)
    for shape in [(97, 111), (3, 97, 111), (200, 45)]:
        blocks = get_variant("denoise").blocks(shape, get_variant("denoise").options({}), 0, grid)
        chunks = blocks_module.block_chunks(shape, blocks)
        assert len(blocks) > (shape[0] if len(shape) == 3 else 1)
        assert max(chunks[-2:]) <= 512
        for b in blocks:
            for s, c, n in zip(b.region, chunks, shape):
                assert s.start % c == 0 and (s.stop % c == 0 or s.stop == n)
    big = [base.Block(i, (slice(y, y + 2048), slice(0, 5000)), ((4096, 5000),), ()) for i, y in enumerate((0, 2048))]
    assert blocks_module.block_chunks((4096, 5000), big) == (512, 512)  # a 2048 px cut, chunks still of 512
    monkeypatch.setattr(base, "BLOCK_PX", 4096)
    monkeypatch.setattr(base, "CHUNK_PX", 512)
    assert base.plane_windows(4096, 4000, grid) == [None]  # no side above BLOCK_PX: one block, as before
    assert base.cuts(9000) == [0, 3072, 6144, 9000] and base.cuts(4100) == [0, 2048, 4100]


def test_resume_of_a_cut_plane_computes_only_the_missing_blocks(plane, small_blocks, monkeypatch, tmp_path, lively, fast, store_results, ran_blocks):
    model = lively("tiny")
    whole = run_predict(model, plane, sample=fast, output=tmp_path / "whole.zarr")
    ran = ran_blocks
    ran.clear()  # from here on: the whole run above does not count
    token = new_cancel_token()
    for ev in predict(model, plane, sample=fast, output=tmp_path / "o.zarr", cancel=token):
        if ev.kind.value == "progress" and len(ran) == 3:
            token.set()  # during the fourth block
    assert (tmp_path / "o.partial.zarr").is_dir()
    ran.clear()
    res = run_predict(model, plane, sample=fast, output=tmp_path / "o.zarr", resume=True)
    n = len(get_variant("denoise").blocks(plane.shape, model_options(model), 0, TileGrid(32, 8)))
    assert whole.complete and res.complete and sorted(ran) == list(range(3, n))
    a, b = store_results(tmp_path / "whole.zarr"), store_results(tmp_path / "o.zarr")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_resume_refuses_a_store_cut_into_other_blocks(plane, small_blocks, monkeypatch, tmp_path, random_model, fast, cancelled_early):
    """A store begun by a version that cut large planes otherwise: its done-markers are of other blocks."""
    model = random_model("tiny")
    partial = cancelled_early(model, plane, tmp_path / "o.zarr")
    monkeypatch.setattr(base, "BLOCK_PX", 4096)  # now the plane is one block
    with pytest.raises(InputError, match=r"cut into \d+ blocks, this version cuts the input into 1"):
        run_predict(model, plane, sample=fast, output=tmp_path / "o.zarr", resume=True)
    assert partial.is_dir()


@pytest.mark.parametrize("shape", [(75, 61), (2, 53, 40)])
def test_uncertainty_pooled_in_strips_equals_the_whole_plane(monkeypatch, shape):
    """Strips of 8 rows (with the halo): the error map and the interval are the whole plane's."""
    rng = np.random.default_rng(0)
    mean = rng.random(shape, dtype=np.float32) * 200
    spread = rng.random(shape, dtype=np.float32) * 5 * (np.arange(shape[-1]) % 7 > 0)
    error = ErrorModel((0.1, 0.9, 0.3, -0.2), 10.0, 190.0)
    monkeypatch.setattr(predict_output, "POOL_STRIP_PX", 1)
    monkeypatch.setattr(predict_output, "CHUNK_PX", 8)
    u, lower, upper = (np.zeros(shape, np.float32) for _ in range(3))
    predict_output.pool_uncertainty(mean, spread, 2.0, u, lower, upper, error)
    want = error(error_map(spread), mean)
    np.testing.assert_allclose(u, want, rtol=1e-6, atol=0)
    np.testing.assert_allclose(lower, mean - 2.0 * want, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(upper, mean + 2.0 * want, rtol=1e-6, atol=1e-5)
