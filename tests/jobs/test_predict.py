import dask.array as da
import numpy as np
import pytest
import zarr

from napari_emdiffuse.config import SampleConfig
from napari_emdiffuse.errors import InputError
from napari_emdiffuse.jobs.events import Kind, new_cancel_token
from napari_emdiffuse.jobs.predict import predict, run_predict

FAST = SampleConfig(sampler="dpmpp_2m", steps=3, samples=2, tile_size=64, overlap=16, tile_batch=8)


def test_2d_result_and_uncertainty(tiny_model, isbi_pair):
    noisy, _ = isbi_pair
    img = noisy[0, :70, :90].copy()
    before = img.copy()
    events = list(predict(tiny_model, img, sample=FAST, voxel=(0.004, 0.004)))
    res = events[-1]
    assert res.kind is Kind.RESULT and res.complete
    assert res.mean.shape == res.std.shape == img.shape and res.mean.dtype == np.float32
    assert res.voxel == (0.004, 0.004)
    assert np.all(res.std >= 0) and res.std.mean() > 0
    progress = [e for e in events if e.kind is Kind.PROGRESS]
    assert progress[-1].done == progress[-1].total > 0
    np.testing.assert_array_equal(img, before)  # the input is never modified


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_dtypes_map_back_to_the_input_range(tiny_model, isbi_pair, dtype):
    noisy, _ = isbi_pair
    scale = {np.uint8: 255, np.uint16: 40000, np.float32: 7.5}[dtype]
    img = (np.clip(noisy[0, :48, :48], 0, 1) * scale).astype(dtype)
    res = run_predict(tiny_model, img, sample=FAST)
    assert abs(float(res.mean.mean()) - float(img.mean())) < 0.25 * scale
    kept = run_predict(tiny_model, img, sample=FAST, out_dtype="input")
    assert kept.mean.dtype == dtype


def test_stack_slice_by_slice_and_dask_equal_numpy(tiny_model, isbi_pair):
    noisy, _ = isbi_pair
    stack = noisy[:3, :64, :80]
    a = run_predict(tiny_model, stack, sample=FAST, voxel=(0.05, 0.004, 0.004))
    b = run_predict(tiny_model, da.from_array(stack, chunks=(1, 32, 32)), sample=FAST, voxel=(0.05, 0.004, 0.004))
    assert a.mean.shape == stack.shape and a.voxel == (0.05, 0.004, 0.004)
    np.testing.assert_allclose(a.mean, b.mean, atol=1e-5)
    assert not np.allclose(a.mean[0], a.mean[1])


def test_zarr_output_tile_by_tile(tiny_model, isbi_pair, tmp_path):
    noisy, _ = isbi_pair
    stack = noisy[:2, :64, :64]
    res = run_predict(tiny_model, stack, sample=FAST, output=tmp_path / "out.zarr", keep_samples=True, estimate="mean")
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    assert group["mean/0"].shape == stack.shape and group["samples/0"].shape == (2, *stack.shape)
    assert group.attrs["complete"] is True
    ref = run_predict(tiny_model, stack, sample=FAST, estimate="mean")
    np.testing.assert_array_equal(group["mean/0"][:], ref.mean)
    np.testing.assert_allclose(group["mean/0"][:], np.asarray(res.samples).mean(0), atol=1e-4)


def test_tiled_equals_untiled_without_seams(tiny_model, isbi_pair):
    """A 320 x 384 plane in 128 px tiles (12 tiles) against one 384 px tile: same image, no seam.

    The remaining difference comes from GroupNorm, whose statistics are taken over the tile."""
    from napari_emdiffuse.engine.grid import tile_starts

    noisy, _ = isbi_pair
    img = noisy[1, :320, :384]
    one = SampleConfig(sampler="dpmpp_2m", steps=4, samples=1, tile_size=384, overlap=16, tile_batch=1)
    tiled = SampleConfig(sampler="dpmpp_2m", steps=4, samples=1, tile_size=128, overlap=48, tile_batch=8)
    a = run_predict(tiny_model, img, sample=one).mean
    b = run_predict(tiny_model, img, sample=tiled).mean
    rng = float(np.percentile(a, 99.9) - np.percentile(a, 0.1))
    diff = np.abs(a - b) / rng
    assert diff.mean() < 0.01 and np.percentile(diff, 99) < 0.03
    # seams: the jump across tile borders is no larger than the jump between any neighbouring pixels
    for axis, length in ((1, 384), (0, 320)):
        starts = tile_starts(length, 128, 48)
        borders = [s - 1 for s in starts[1:]] + [s + 127 for s in starts[:-1]]
        jumps = np.abs(np.diff(b, axis=axis)).mean(1 - axis)
        assert jumps[borders].mean() < 1.3 * jumps.mean()


def test_cancel_keeps_finished_planes(tiny_model, isbi_pair):
    noisy, _ = isbi_pair
    token = new_cancel_token()
    calls = {"n": 0, "cancel_at": None}

    def count(module, args, output):  # the cancel comes from the worker, in the second plane
        calls["n"] += 1
        if calls["n"] == calls["cancel_at"]:
            token.set()

    hook = tiny_model.network.register_forward_hook(count)
    try:
        run_predict(tiny_model, noisy[:1, :64, :64], sample=FAST)
        calls["cancel_at"], calls["n"] = calls["n"] + 1, 0
        res = list(predict(tiny_model, noisy[:3, :64, :64], sample=FAST, cancel=token))[-1]
    finally:
        hook.remove()
    assert not res.complete
    assert np.abs(res.mean[0]).sum() > 0 and np.abs(res.mean[2]).sum() == 0


@pytest.mark.parametrize(
    "image,match",
    [
        (np.zeros((0, 10)), "empty"),
        (np.zeros((4, 4, 4, 4)), "dimensions"),
        (np.ones((20, 20)), "constant"),
        (np.zeros((20, 20, 3), np.uint8) + np.arange(20, dtype=np.uint8)[:, None, None], "RGB"),
        (np.full((20, 20), np.nan), "NaN"),
        (np.array([["a"]]), "data type"),
    ],
)
def test_bad_inputs(tiny_model, image, match):
    with pytest.raises(InputError, match=match):
        run_predict(tiny_model, image, sample=FAST)


def test_nan_inside_a_large_lazy_stack_is_caught(tiny_model, isbi_pair):
    noisy, _ = isbi_pair
    stack = noisy[:3, :48, :48].copy()
    stack[2, 10, 10] = np.nan
    with pytest.raises(InputError, match="NaN"):
        run_predict(tiny_model, stack, sample=FAST)


def test_output_may_not_overwrite_the_input(tiny_model, tmp_path, isbi_pair):
    noisy, _ = isbi_pair
    src = tmp_path / "in.zarr"
    with pytest.raises(InputError, match="overwrite"):
        run_predict(tiny_model, noisy[0, :32, :32], sample=FAST, output=src, input_paths=[src])


def test_output_inside_or_around_an_input_container_is_refused(tiny_model, tmp_path, isbi_pair):
    noisy, _ = isbi_pair
    container = tmp_path / "vol.zarr"
    (container / "raw").mkdir(parents=True)
    for out in (container, container / "raw" / "enhanced.zarr"):
        with pytest.raises(InputError, match="refusing to overwrite"):
            run_predict(tiny_model, noisy[0, :32, :32], sample=FAST, output=out, input_paths=[container / "raw"])
    assert (container / "raw").is_dir()


def test_weights_digest_keeps_the_names_older_files_use():
    """A stopped job resumes only with the same model (its digest): the digest hashes the weights
    under the names their file gives them, which the network's upsampling change kept, so jobs and
    benchmark records from before that change still match."""
    import hashlib

    import torch
    from safetensors.torch import load_file

    from napari_emdiffuse.jobs.predict import weights_digest
    from napari_emdiffuse.models import find_model, resolve_model

    model = resolve_model("emdiffuse-r")
    stored = load_file(str(find_model("emdiffuse-r") / "weights.safetensors"))
    assert set(model.network.file_names().values()) <= set(stored)
    h = hashlib.sha256()
    for name in sorted(stored):
        h.update(name.encode())
        h.update(stored[name].to(torch.float32).contiguous().numpy().tobytes())
    assert weights_digest(model) == h.hexdigest()
