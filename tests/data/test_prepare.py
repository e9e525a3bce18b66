"""`emdiffuse prepare` and `info`: training sets from pairs, clean images and volumes, end to end."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import tifffile
import zarr

from napari_emdiffuse.cli import main
from napari_emdiffuse.data.degrade import poisson_gaussian
from napari_emdiffuse.data.io import Image, read_image
from napari_emdiffuse.data.prepare import PrepareOptions, no_signal_warning
from napari_emdiffuse.jobs.inputs import training_arrays
from napari_emdiffuse.jobs.events import Message, PrepareResult, Progress
from napari_emdiffuse.jobs.prepare import prepare_clean, prepare_pairs, prepare_volume, run_prepare
from napari_emdiffuse.errors import InputError


VOXEL = (0.05, 0.004, 0.004)
OPTS = PrepareOptions(patch=64, overlay=2)


@pytest.fixture(scope="module")
def pair(isbi_path, distort):
    """Five 256 x 256 ssTEM slices (clean, uint8) and noisy 16-bit versions of them, each shifted,
    rotated and warped differently, with the maps that did it."""
    clean = tifffile.imread(isbi_path, key=range(5))[:, 128:384, 128:384].copy()
    noisy, maps = [], []
    for z in range(5):
        qy, qx = distort.known_warp(clean.shape[1:], (4.0 + z, -3.0 * z), 2.0 * (-1) ** z, elastic=2.0, smooth=32, seed=z)
        warped = distort.apply_warp(clean[z].astype(np.float32) / 255, qy, qx)
        noisy.append(np.clip(distort.heavy_noise(warped, seed=z) * 30000 + 1000, 0, 65535).astype(np.uint16))
        maps.append((qy, qx))
    return np.stack(noisy), clean, maps


def test_pairs_are_registered_filtered_and_split(tmp_path, pair, distort):
    noisy, clean, maps = pair
    noisy0, clean0 = noisy.copy(), clean.copy()
    report = run_prepare(prepare_pairs(Image(noisy, VOXEL), Image(clean, VOXEL), tmp_path / "set.zarr", opts=OPTS))
    assert np.array_equal(noisy, noisy0) and np.array_equal(clean, clean0)

    g = zarr.open_group(str(tmp_path / "set.zarr"), mode="r")
    assert g["input"].dtype == np.uint16 and g["target"].dtype == np.uint8
    assert g["input"].shape[1:] == (64, 64) and g["input"].shape[0] == g["target"].shape[0] == report["patches_kept"]["train"]
    assert g["val_input"].shape[0] == report["patches_kept"]["val"] > 0
    roles = {s["slice"]: s["role"] for s in report["slices"]}
    assert roles == {0: "training", 1: "training", 2: "training", 3: "gap between training and validation slices", 4: "validation"}
    assert report["registration"]["median_ncc_after"] > report["registration"]["median_ncc_before"] + 0.3
    assert g.attrs["voxel_size"] == list(VOXEL) and "normalisation" not in g.attrs  # training normalises the patches itself
    assert (tmp_path / "set_overlay.png").stat().st_size > 1000
    assert json.loads((tmp_path / "set_report.json").read_text())["patches_kept"] == report["patches_kept"]

    # every kept target patch shows what the noisy patch shows: the clean slice, registered
    arrays, _, pixel = training_arrays("denoise", None, data=tmp_path / "set.zarr")
    assert pixel == pytest.approx(VOXEL[-1])  # the model trained on it records its inputs' pixel size
    first = np.asarray(arrays["target"][0], np.float32)
    z0 = report["slices"][0]
    assert z0["kept"] > 0
    truth = distort.apply_warp(clean[0].astype(np.float32), *maps[0])
    scores = [np.corrcoef(first.ravel(), truth[y : y + 64, x : x + 64].ravel())[0, 1] for y in range(0, 256, 64) for x in range(0, 256, 64)]
    assert max(scores) > 0.97  # registered to within a fraction of a pixel


@pytest.mark.parametrize("peak", [1, 2, 5, 20])
def test_aligned_pairs_keep_their_edge_patches_and_a_shifted_target_loses_only_those_it_misses(tmp_path, isbi_path, peak):
    """The user walk of an aligned noisy/clean pair: every edge patch used to be "not covered",
    and at 1-5 counts per pixel (almost pure shot noise) a few still were. 128 px patches: at 1
    count the NCC of 64 px ones falls below --min-ncc by noise alone (another matter: "misaligned")."""
    opts = replace(OPTS, patch=128)
    clean = tifffile.imread(isbi_path, key=range(4))[:, :256, :296].copy()
    noisy = np.stack([poisson_gaussian(c / 255.0, peak, 0.03, seed=z) for z, c in enumerate(clean)])
    aligned = run_prepare(prepare_pairs(Image(noisy[..., :256], VOXEL), Image(clean[..., :256], VOXEL), tmp_path / "a.zarr", opts=opts))
    assert aligned["patches_rejected"] == {"not covered": 0, "no signal": 0, "misaligned": 0, "flat": 0}
    # the input starts 40 px (or 2 px) right of the target: the last column of patches is not all in the target
    for name, start in (("s", 40), ("n", 2)):
        shifted = run_prepare(prepare_pairs(Image(noisy[..., start : start + 256], VOXEL), Image(clean[..., :256], VOXEL), tmp_path / f"{name}.zarr", opts=opts))
        cut = sum("kept" in s for s in shifted["slices"])
        assert shifted["patches_rejected"] == {"not covered": 2 * cut, "no signal": 0, "misaligned": 0, "flat": 0}
        assert sum(shifted["patches_kept"].values()) == 2 * cut


@pytest.mark.parametrize("peak", [0.25, 0.5])
def test_aligned_pairs_below_a_count_per_pixel_are_not_rejected_as_misaligned(tmp_path, isbi_path, peak):
    """At 0.25-0.5 counts per pixel noise alone held the NCC of aligned 128 px patches below
    --min-ncc 0.6: on these slices 6 of 16 at 0.5 counts and all 16 at 0.25 were rejected as
    misaligned. Against the NCC their noise allows, none is."""
    opts = replace(OPTS, patch=128)
    clean = tifffile.imread(isbi_path, key=range(4))[:, :256, :256].copy()
    noisy = np.stack([poisson_gaussian(c / 255.0, peak, 0.03, seed=z) for z, c in enumerate(clean)])
    report = run_prepare(prepare_pairs(Image(noisy, VOXEL), Image(clean, VOXEL), tmp_path / "low.zarr", opts=opts))
    assert report["patches_rejected"]["misaligned"] == report["patches_rejected"]["no signal"] == 0
    assert all(s["ncc_ceiling"] < 0.75 for s in report["slices"] if "ncc_ceiling" in s)


def test_patches_a_warp_carries_past_the_targets_edge_are_not_covered(tmp_path, isbi_path, distort):
    """Noisy inputs whose lower right is warped 4 px past the clean target's edge (dose 20): the
    two right-hand patches holding pixels more than 2.5 px past the edge (the flow's own wander,
    2 px, beyond the half pixel an edge pixel covers) used to be kept with the target's edge
    repeated into them; every other patch lies within half a pixel of its target and is kept."""
    opts = replace(OPTS, patch=128)
    clean = tifffile.imread(isbi_path, key=range(4))[:, :384].astype(np.float32) / 255
    noisy = np.stack([poisson_gaussian(np.clip(distort.edge_warp(c, 384, 4.0)[0], 0, 1), 20, 0.03, seed=z) for z, c in enumerate(clean)])
    report = run_prepare(prepare_pairs(Image(noisy, VOXEL), Image(clean[..., :384], VOXEL), tmp_path / "w.zarr", opts=opts))
    cut = sum("kept" in s for s in report["slices"])
    assert report["patches_rejected"] == {"not covered": 2 * cut, "no signal": 0, "misaligned": 0, "flat": 0}
    assert sum(report["patches_kept"].values()) == 7 * cut


def test_unrelated_pairs_yield_no_training_set(tmp_path, pair, fibsem_path):
    noisy, _, _ = pair
    other = tifffile.imread(fibsem_path, key=range(5))[:, :256, :256]
    with pytest.raises(InputError, match="no usable training patches"):
        run_prepare(prepare_pairs(Image(noisy, VOXEL), Image(other, VOXEL), tmp_path / "bad.zarr", opts=OPTS))


def test_a_pair_with_no_signal_yields_no_training_set(tmp_path):
    """Flat noisy inputs against a flat target (mid-grey, noise of 1 % of the range): nothing to
    learn and nothing to judge their alignment by. The ceiling alone let chance keep some such
    patches; now none is kept, and the report says why: no signal, not misaligned, with the
    advice that helps (a larger patch or a higher dose, not a smaller patch)."""
    rng = np.random.default_rng(0)
    noisy = np.stack([poisson_gaussian(np.full((256, 256), 0.5, np.float32), 5, 0.03, seed=z) for z in range(5)])
    flat = (0.5 + rng.normal(0, 0.01, noisy.shape)).astype(np.float32)
    with pytest.raises(InputError, match="no usable training patches") as err:
        run_prepare(prepare_pairs(Image(noisy, VOXEL), Image(flat, VOXEL), tmp_path / "flat.zarr", opts=OPTS))
    assert "no signal" in str(err.value) and "misaligned" not in str(err.value)
    assert "larger --patch or a higher dose" in str(err.value) and "same place" not in str(err.value)


def test_prepare_warns_when_most_patches_hold_no_signal(tmp_path, isbi_path, capsys):
    """Aligned pairs at 5 counts per pixel whose right three quarters are blank: most patches
    are rejected as "no signal", and the summary line says so and what keeps more (review s16 N3)."""
    clean = tifffile.imread(isbi_path, key=range(5))[:, 128:384, 128:384].astype(np.float32) / 255
    clean[:, :, 64:] = 0.5 + np.random.default_rng(0).normal(0, 0.01, clean[:, :, 64:].shape)
    noisy = np.stack([poisson_gaussian(c, 5, 0.03, seed=z) for z, c in enumerate(clean)]).astype(np.float32)
    tifffile.imwrite(tmp_path / "noisy.tif", noisy)
    tifffile.imwrite(tmp_path / "clean.tif", clean)
    s = str(tmp_path / "set.zarr")
    assert main(["prepare", "--input", str(tmp_path / "noisy.tif"), "--target", str(tmp_path / "clean.tif"), "--out", s, "--patch", "64", "--voxel", "50,4,4", "-q"]) == 0
    summary = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("kept "))
    assert 'were rejected as "no signal" (registration judged patches of 64 input px)' in summary
    assert "a larger --patch" in summary and "a higher dose" in summary


def test_the_no_signal_warning_is_for_most_patches_only():
    def report(no_signal, kept):
        return {"patch": {"input": 32, "target": 64}, "patches_kept": {"train": kept, "val": 0},
                "patches_rejected": {"not covered": 0, "no signal": no_signal, "misaligned": 0, "flat": 0}}

    assert no_signal_warning(report(10, 10)) is None  # half: no warning
    assert no_signal_warning(report(0, 0)) is None
    warning = no_signal_warning(report(11, 9))
    assert warning and "11 of 20 patches (55%)" in warning and "32 input px" in warning and "--patch / factor" in warning


def test_mismatched_and_unsuitable_inputs(tmp_path, pair):
    noisy, clean, _ = pair
    with pytest.raises(InputError, match="do not pair up"):
        run_prepare(prepare_pairs(Image(noisy, VOXEL), Image(clean[:, :200], VOXEL), tmp_path / "a.zarr", opts=OPTS))
    with pytest.raises(InputError, match="RGB"):
        run_prepare(prepare_pairs(Image(np.stack([clean[0]] * 3, -1), VOXEL[1:]), Image(clean[0], VOXEL[1:]), tmp_path / "b.zarr", opts=OPTS))
    with pytest.raises(InputError, match="learns from a single volume"):
        run_prepare(prepare_pairs(Image(noisy, VOXEL), Image(clean, VOXEL), tmp_path / "c.zarr", variant="iso_i", variant_options={"factor": 2}, opts=OPTS))
    with pytest.raises(InputError, match="refusing to overwrite"):
        src = tmp_path / "in.zarr"
        zarr.open_group(str(src), mode="w")
        run_prepare(prepare_pairs(Image(noisy, VOXEL, path=src), Image(clean, VOXEL), src, opts=OPTS))


def test_clean_only_data_with_simulated_degradation(tmp_path, pair):
    _, clean, _ = pair
    rep = run_prepare(prepare_clean(Image(clean, VOXEL), tmp_path / "n.zarr", degradation={"dose": 10, "read_noise": 0.03, "jitter": 0.5}, opts=OPTS))
    assert rep["kind"] == "simulated pairs" and rep["registration"] is None
    g = zarr.open_group(str(tmp_path / "n.zarr"), mode="r")
    assert g["input"].dtype == np.float32 and g["input"].shape[1:] == (64, 64)
    rep = run_prepare(prepare_clean(Image(clean, VOXEL), tmp_path / "r.zarr", "superres", {"factor": 2}, {"dose": 20}, opts=OPTS))
    g = zarr.open_group(str(tmp_path / "r.zarr"), mode="r")
    assert g["input"].shape[1:] == (32, 32) and g["target"].shape[1:] == (64, 64)
    assert g.attrs["voxel_size"] == [0.05, 0.008, 0.008] and g.attrs["target_voxel_size"] == list(VOXEL)
    arrays = training_arrays("superres", {"factor": 2}, data=tmp_path / "r.zarr")[0]
    assert set(arrays) == {"input", "target", "val_input", "val_target"}
    with pytest.raises(InputError, match="factor"):
        training_arrays("superres", {"factor": 3}, data=tmp_path / "r.zarr")[0]
    with pytest.raises(InputError, match="prepared for the superres variant"):
        training_arrays("denoise", None, data=tmp_path / "r.zarr")[0]


def test_volume_with_drift_correction(tmp_path, fibsem_crop, distort):
    stack, _ = distort.drifted(fibsem_crop[:8], seed=1)
    rep = run_prepare(prepare_volume(Image(stack, (0.005, 0.005, 0.005)), tmp_path / "v.zarr", "iso_i", {"factor": 2}, drift=True, opts=OPTS))
    g = zarr.open_group(str(tmp_path / "v.zarr"), mode="r")
    assert g["volume"].shape[0] == 8 and g["volume"].shape[1] < 256 and g["volume"].dtype == np.uint8
    assert rep["drift"]["neighbour_ncc_after"] > rep["drift"]["neighbour_ncc_before"]
    assert rep["patches"]["with_structure"] > 0
    with pytest.raises(InputError, match="not from a volume"):
        run_prepare(prepare_volume(Image(stack, (0.005,) * 3), tmp_path / "w.zarr", "denoise", opts=OPTS))


def test_prepare_is_a_job_of_typed_events_and_a_cancel_leaves_the_set_as_it_was(tmp_path, pair):
    """prepare yields what train and predict yield (progress per slice, then its result), so the
    CLI and a widget show it the same way; a cancel stops at the next slice and writes nothing."""
    from napari_emdiffuse.jobs.events import new_cancel_token

    _, clean, _ = pair
    events = list(prepare_clean(Image(clean, VOXEL), tmp_path / "n.zarr", opts=OPTS))
    assert isinstance(events[-1], PrepareResult) and events[-1].complete and events[-1].out == tmp_path / "n.zarr"
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress and progress[-1].done == progress[-1].total == len(clean) and progress[-1].what == "done"
    assert events[-1].report["patches_kept"]["train"] > 0
    before = sorted(p.name for p in (tmp_path / "n.zarr").iterdir())

    token = new_cancel_token()
    seen = []
    for ev in prepare_clean(Image(clean, VOXEL), tmp_path / "n.zarr", opts=OPTS, overwrite=True, cancel=token):
        seen.append(ev)
        if isinstance(ev, Progress):
            token.set()  # the user presses Cancel after the first slice
    assert isinstance(seen[-1], PrepareResult) and not seen[-1].complete and seen[-1].report == {}
    assert [e.level for e in seen if isinstance(e, Message)] == ["warning"]
    assert sorted(p.name for p in (tmp_path / "n.zarr").iterdir()) == before  # the earlier set is untouched
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # and no temporary is left


@pytest.mark.parametrize("exists", [False, True])
def test_a_cancel_says_what_is_at_out_afterwards(tmp_path, pair, exists):
    """"<out> is unchanged" was said of a set that never existed too: a new one is not created."""
    from napari_emdiffuse.jobs.events import new_cancel_token

    _, clean, _ = pair
    out = tmp_path / "n.zarr"
    if exists:
        run_prepare(prepare_clean(Image(clean[:2], VOXEL), out, opts=OPTS))
    token = new_cancel_token()
    messages = []
    for ev in prepare_clean(Image(clean, VOXEL), out, opts=OPTS, overwrite=exists, cancel=token):
        if isinstance(ev, Progress):
            token.set()
        elif isinstance(ev, Message):
            messages.append(ev.text)
    assert messages == [f"cancelled: {out} is unchanged" if exists else f"cancelled: nothing was written ({out} was not created)"]
    assert out.exists() == exists


def test_cli_prepare_shows_its_progress_through_the_jobs_driver(tmp_path, pair, capsys, monkeypatch):
    """``emdiffuse prepare`` runs the job through cli_jobs.drive, as train and predict do: a bar
    counting slices and saying what it does, then the same report as before."""
    from napari_emdiffuse import cli_jobs

    _, clean, _ = pair
    tifffile.imwrite(tmp_path / "clean.tif", clean, imagej=True, resolution=(250, 250), metadata={"spacing": 0.05, "unit": "um", "axes": "ZYX"})
    driven = []
    real = cli_jobs.drive
    monkeypatch.setattr(cli_jobs, "drive", lambda events, *a, **k: driven.append(k) or real(events, *a, **k))
    s = str(tmp_path / "set.zarr")
    assert main(["prepare", "--clean", str(tmp_path / "clean.tif"), "--out", s, "--patch", "64"]) == 0
    out, err = capsys.readouterr()
    assert driven == [{"unit": "slice", "describe": True}]
    assert "slice" in err and "done" in err
    assert out.startswith("kept ") and f"wrote {s} (train with: emdiffuse train --data {s} ...), set_report.json" in out


@pytest.mark.parametrize("kind", ["uint16", "float32"])
def test_cli_prepare_info_train_predict_end_to_end(tmp_path, pair, capsys, kind):
    """16-bit and float data from files, through prepare, train --data and predict."""
    noisy, clean, _ = pair
    data = noisy if kind == "uint16" else (noisy.astype(np.float32) / 65535 - 0.2)
    meta = {"spacing": 0.05, "unit": "um", "axes": "ZYX"}
    tifffile.imwrite(tmp_path / "noisy.tif", data, imagej=True, resolution=(250, 250), metadata=meta)
    tifffile.imwrite(tmp_path / "clean.tif", clean, imagej=True, resolution=(250, 250), metadata=meta)
    s = str(tmp_path / "set.zarr")
    assert main(["prepare", "--input", str(tmp_path / "noisy.tif"), "--target", str(tmp_path / "clean.tif"), "--out", s, "--patch", "64", "-q"]) == 0
    assert "training" in capsys.readouterr().out
    assert main(["info", s]) == 0
    assert "val_input" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "noisy.tif")]) == 0
    out = capsys.readouterr().out
    assert "50 x 4 x 4 nm" in out and kind in out
    run = str(tmp_path / "run")
    assert main(["train", "--preset", "tiny", "--data", s, "--out", run, "--iterations", "2", "--device", "cpu", "-q"]) == 0
    # the set's held-out patches validate; the training patches are used whole (no strip cut off them)
    training = json.loads((tmp_path / "run" / "model.json").read_text())["training"]
    assert training["val_region"]["held_out"] and training["train_region"]["rows"] == [0, 64]
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, data[4, :64, :64], imagej=True, resolution=(250, 250), metadata={"unit": "um"})
    res = str(tmp_path / "den.tif")
    assert main(["predict", "--model", run, "--input", str(small), "--output", res, "--steps", "1", "--samples", "1", "--device", "cpu", "--keep-dtype", "-q"]) == 0
    den = read_image(res)
    assert den.data.dtype == data.dtype and den.shape == (64, 64)
    np.testing.assert_allclose(den.voxel, (0.004, 0.004))
    lo, hi = np.percentile(data, [0.1, 99.9])
    assert lo - (hi - lo) < float(np.asarray(den.data).mean()) < hi + (hi - lo)  # back in the input's range


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["prepare", "--clean", str(tmp_path / "missing.tif"), "--out", str(tmp_path / "x.zarr")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["prepare", "--out", str(tmp_path / "x.zarr")]) == 2
    assert "--input with --target" in capsys.readouterr().err
    assert main(["info", str(tmp_path)]) == 2


def test_training_data_give_the_pixel_size_of_the_networks_inputs(tmp_path):
    """What the model records: the simulated input's pixel (coarser by the factor for
    super-resolution), the input file's and not the target's, and None for a file without one."""
    rng = np.random.default_rng(0)
    img = (rng.random((2, 64, 64)) * 255).astype(np.uint8)
    fine, coarse, bare = tmp_path / "fine.tif", tmp_path / "coarse.tif", tmp_path / "bare.tif"
    tifffile.imwrite(fine, img, imagej=True, resolution=(250, 250), metadata={"spacing": 0.05, "unit": "um"})  # 4 nm
    tifffile.imwrite(coarse, img, imagej=True, resolution=(125, 125), metadata={"spacing": 0.05, "unit": "um"})  # 8 nm
    tifffile.imwrite(bare, img)
    assert training_arrays("denoise", None, clean=fine, dose=20)[2] == pytest.approx(0.004)
    assert training_arrays("superres", {"factor": 2}, clean=fine)[2] == pytest.approx(0.008)
    assert training_arrays("denoise", None, {"input": coarse, "target": fine})[2] == pytest.approx(0.008)
    assert training_arrays("denoise", None, clean=bare, dose=20)[2] is None
    assert training_arrays("superres", {"factor": 2}, clean=bare)[2] is None  # not 2 µm from the 1 per pixel placeholder


@pytest.mark.parametrize("resolution, pixel", [(None, None), ((250, 250), 0.008)], ids=["bare", "4nm"])
def test_a_superres_set_prepared_from_clean_images_makes_up_no_pixel_size(tmp_path, resolution, pixel):
    """``prepare --clean`` scaled the readers' 1-per-pixel placeholder by the factor: a set made
    from clean images without a pixel size recorded 2 µm pixels for its input, which a model
    trained on it (``train --data``) recorded as measured. Now none, as ``train --clean`` gives;
    clean images of 4 nm still give an 8 nm input."""
    clean = tmp_path / "clean.tif"
    img = (np.random.default_rng(0).random((2, 128, 128)) * 255).astype(np.uint8)
    tifffile.imwrite(clean, img, **({"imagej": True, "resolution": resolution, "metadata": {"unit": "um"}} if resolution else {}))
    out = tmp_path / "set.zarr"
    assert main(["prepare", "--clean", str(clean), "--variant", "superres", "--option", "factor=2", "--patch", "64", "--out", str(out), "-q"]) == 0
    assert training_arrays("superres", {"factor": 2}, data=out)[2] == (pytest.approx(pixel) if pixel else None)


@pytest.mark.parametrize("given, role", [("--clean", "clean images"), ("--input", "target")], ids=["clean", "pairs"])
def test_images_smaller_than_a_patch_are_refused_naming_the_file_and_patch(tmp_path, capsys, given, role):
    """The refusal named neither the file nor whose planes were small ("a plane of ..."): it
    names the images whose pixels --patch counts (the target's, or the clean images')."""
    image = tmp_path / "small.tif"
    tifffile.imwrite(image, (np.random.default_rng(0).random((2, 40, 48)) * 255).astype(np.uint8))
    files = ["--clean", str(image)] if given == "--clean" else ["--input", str(image), "--target", str(image)]
    assert main(["prepare", *files, "--out", str(tmp_path / "set.zarr"), "--patch", "64", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"emdiffuse prepare: error: {role} {image} has planes of 40 x 48 px, smaller than a 64 px patch; set a smaller --patch"
    assert not (tmp_path / "set.zarr").exists()
