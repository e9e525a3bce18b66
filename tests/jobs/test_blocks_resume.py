"""Block-wise prediction into OME-Zarr: the store's format, resuming after a cancel or a kill,
and refusing to resume into what is not the same run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile
import zarr

from napari_emdiffuse.errors import InputError
from napari_emdiffuse.jobs.events import new_cancel_token
from napari_emdiffuse.jobs.predict import predict, run_predict

def test_store_is_ome_zarr_0_5_with_scale_and_translation(small_stack, tmp_path, random_model, fast, store_results):
    from ome_zarr_models.v05.image import Image

    model = random_model("emdiffuse-r-tiny", {"factor": 2})
    voxel = (0.05, 0.008, 0.008)
    res = run_predict(model, small_stack[:2, :24, :28], sample=fast, voxel=voxel, output=tmp_path / "sr.zarr", keep_samples=True)
    group = zarr.open_group(str(tmp_path / "sr.zarr"), mode="r")
    assert group.metadata.zarr_format == 3 and group.attrs["complete"] is True
    assert ".spread" not in group  # bookkeeping of an unfinished run only
    for name in ("mean", "uncertainty", "samples"):
        image = Image.from_zarr(group[name])  # validates the OME-Zarr 0.5 metadata
        transforms = image.attributes.ome.multiscales[0].datasets[0].coordinateTransformations
        assert list(transforms[0].scale[-3:]) == pytest.approx([0.05, 0.004, 0.004])
        assert list(transforms[1].translation[-2:]) == pytest.approx([-0.25 * 0.008] * 2)  # pixel centres of a 2x finer grid
    np.testing.assert_array_equal(np.asarray(res.mean), np.asarray(group["mean/0"]))

    from napari_emdiffuse._reader import read_paths

    layers = {kw["name"]: kw for _, kw, _ in read_paths(str(tmp_path / "sr.zarr"))}
    assert layers["sr: estimate"]["scale"] == pytest.approx((0.05, 0.004, 0.004))
    assert layers["sr: estimate"]["translate"] == pytest.approx((0.0, -0.002, -0.002))
    assert any(n.startswith("sr: error ") for n in layers) and not any(n.startswith("sr: .") for n in layers)


def test_an_independent_reader_opens_the_store(small_stack, tmp_path, random_model, fast, store_results):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    run_predict(random_model("tiny"), small_stack[:2], sample=fast, voxel=(0.05, 0.004, 0.004), output=tmp_path / "o.zarr")
    nodes = list(Reader(parse_url(str(tmp_path / "o.zarr" / "mean")))())
    assert nodes and nodes[0].data[0].shape == (2, 48, 56)
    axes = [a["name"] for a in nodes[0].metadata["axes"]]
    assert axes == ["z", "y", "x"]


@pytest.mark.parametrize("preset, options, keep", [("tiny", {}, True), ("vemdiffuse-i-tiny", {"factor": 2}, False)])
def test_cancel_then_resume_computes_only_missing_blocks_and_ends_bit_identical(small_stack, tmp_path, monkeypatch, preset, options, keep, random_model, fast, store_results, ran_blocks):
    model = random_model(preset, options)
    whole = run_predict(model, small_stack, sample=fast, output=tmp_path / "whole.zarr", keep_samples=keep)
    assert whole.complete
    ran = ran_blocks
    ran.clear()  # from here on: the whole run above does not count
    token = new_cancel_token()
    events = predict(model, small_stack, sample=fast, output=tmp_path / "o.zarr", keep_samples=keep, cancel=token)
    for ev in events:
        if ev.kind.value == "progress" and len(ran) == 2:
            token.set()  # during the third block
    assert (tmp_path / "o.partial.zarr").is_dir() and not (tmp_path / "o.zarr").exists()
    attrs = zarr.open_group(str(tmp_path / "o.partial.zarr"), mode="r").attrs
    assert attrs["complete"] is False and attrs["blocks"] >= 3
    ran.clear()
    res = run_predict(model, small_stack, sample=fast, output=tmp_path / "o.zarr", keep_samples=keep, resume=True)
    assert res.complete and sorted(ran) == list(range(2, attrs["blocks"]))  # the two finished blocks are not redone
    assert not (tmp_path / "o.partial.zarr").exists()
    a, b = store_results(tmp_path / "whole.zarr"), store_results(tmp_path / "o.zarr")
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_resume_is_refused_into_another_run_or_a_folder_not_ours(small_stack, tmp_path, random_model, fast, store_results, cancelled_early):
    model = random_model("tiny")
    partial = cancelled_early(model, small_stack, tmp_path / "o.zarr")
    before = sorted(p.name for p in partial.rglob("*"))
    other = fast.model_copy(update={"steps": 3})
    with pytest.raises(InputError, match=r"cannot resume: this run has other sampling settings \(steps") as refused:
        run_predict(model, small_stack, sample=other, output=tmp_path / "o.zarr", resume=True)
    assert f"(steps {fast.steps} then, 3 now)" in str(refused.value) and "tile_size" not in str(refused.value)  # what changed, not two dicts
    # its way out is --overwrite *instead of* --resume: adding --overwrite to --resume (as "use --overwrite" read) resumes, refused again
    assert str(refused.value).endswith("or --overwrite instead of --resume to start again")
    with pytest.raises(InputError, match="cannot resume: this run has other sampling settings"):
        run_predict(model, small_stack, sample=other, output=tmp_path / "o.zarr", resume=True, overwrite=True)
    with pytest.raises(InputError, match="cannot resume: this run has (another input|an input of another shape)"):
        run_predict(model, small_stack[:3], sample=fast, output=tmp_path / "o.zarr", resume=True)
    with pytest.raises(InputError, match=r"cannot resume: this run has another input \(its content differs"):
        run_predict(model, np.ascontiguousarray(small_stack[:, :, ::-1]), sample=fast, output=tmp_path / "o.zarr", resume=True)  # same range: a flipped copy
    with pytest.raises(InputError, match="cannot resume: this run has another model"):
        run_predict(random_model("tiny", {"residual": False}), small_stack, sample=fast, output=tmp_path / "o.zarr", resume=True)
    with pytest.raises(InputError, match="this run has samples kept or not .*'Add the samples as a layer'"):
        run_predict(model, small_stack, sample=fast, output=tmp_path / "o.zarr", resume=True, keep_samples=True)
    assert sorted(p.name for p in partial.rglob("*")) == before  # untouched
    from napari_emdiffuse.jobs.predict_output import RESUME_KEY_WORDS

    assert set(zarr.open_group(str(partial), mode="r").attrs["resume_key"]) == set(RESUME_KEY_WORDS)  # every refusal in words

    user = tmp_path / "mine.partial.zarr"  # a folder of the user's under the name resume would look at
    user.mkdir()
    (user / "NOTES.txt").write_text("keep me")
    with pytest.raises(InputError, match="not an output of napari-emdiffuse"):
        run_predict(model, small_stack, sample=fast, output=tmp_path / "mine.zarr", resume=True)
    assert (user / "NOTES.txt").read_text() == "keep me"
    with pytest.raises(InputError, match="--resume continues a zarr output"):
        run_predict(model, small_stack, sample=fast, output=tmp_path / "o.tif", resume=True)


def test_a_resumed_store_lies_where_the_resuming_run_says(small_stack, tmp_path, random_model, fast, cancelled_early):
    """Started without a voxel size, resumed with one and an origin: the finished store's images
    and provenance carry the new place (the pixels do not depend on it), not the stale one."""
    from ome_zarr_models.v05.image import Image

    model = random_model("tiny")
    cancelled_early(model, small_stack, tmp_path / "o.zarr")
    voxel, origin = (0.05, 0.004, 0.004), (1.0, 0.5, 0.25)
    res = run_predict(model, small_stack, sample=fast, voxel=voxel, origin=origin, output=tmp_path / "o.zarr", resume=True)
    assert res.complete
    group = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")
    assert group.attrs["voxel_size"] == pytest.approx(list(voxel)) and group.attrs["origin"] == pytest.approx(list(origin))
    for name in ("mean", "uncertainty"):
        transforms = Image.from_zarr(group[name]).attributes.ome.multiscales[0].datasets[0].coordinateTransformations
        assert list(transforms[0].scale) == pytest.approx(list(voxel)) and list(transforms[1].translation) == pytest.approx(list(origin))


def test_a_model_that_only_describes_itself_differently_still_resumes(small_stack, tmp_path, random_model, fast, cancelled_early):
    """A newer release may record more about a bundled model's training (its pixel size, a new
    card) without changing what it computes: its partial outputs still resume."""
    model = random_model("tiny")
    cancelled_early(model, small_stack, tmp_path / "o.zarr")
    model.info.training["pixel_size_um"] = 0.004
    model.info.card = "a new card"
    assert run_predict(model, small_stack, sample=fast, output=tmp_path / "o.zarr", resume=True).complete


def test_a_store_of_the_old_layout_is_replaced_with_overwrite_but_not_resumed(small_stack, tmp_path, random_model, fast, store_results):
    """Before stores carried created_by, predict wrote a zarr v2 group: arrays mean/std and
    attributes voxel_size, variant, complete. Such a store is ours: --overwrite replaces it,
    --resume explains that it cannot continue it."""
    old = tmp_path / "o.zarr"
    g = zarr.open_group(str(old), mode="w", zarr_format=2)
    g.attrs.update({"voxel_size": [1.0, 1.0, 1.0], "variant": "denoise", "complete": False})
    g.create_array("mean", shape=(4, 48, 56), dtype="f4")
    g.create_array("std", shape=(4, 48, 56), dtype="f4")
    old.rename(tmp_path / "o.partial.zarr")
    with pytest.raises(InputError, match="older version .* cannot be resumed"):
        run_predict(random_model("tiny"), small_stack, sample=fast, output=old, resume=True)
    (tmp_path / "o.partial.zarr").rename(old)
    with pytest.raises(InputError, match="already exists; add --overwrite"):
        run_predict(random_model("tiny"), small_stack, sample=fast, output=old)
    res = run_predict(random_model("tiny"), small_stack, sample=fast, output=old, overwrite=True)
    assert res.complete and zarr.open_group(str(old), mode="r").metadata.zarr_format == 3


def test_tiff_output_of_a_calibrated_model_writes_the_interval(small_stack, tmp_path, random_model, fast, store_results):
    model = random_model("tiny")
    model.info.metrics["calibration"] = {"alpha": 0.1, "alphas": [0.05, 0.5], "q": [2.0, 2.0], "samples": 2, "steps": 2, "sampler": "dpmpp_2m"}
    res = run_predict(model, small_stack[:2], sample=fast, output=tmp_path / "o.tif")
    lower, upper = tifffile.imread(tmp_path / "o_lower.tif"), tifffile.imread(tmp_path / "o_upper.tif")
    np.testing.assert_allclose(upper - lower, 2 * 2.0 * tifffile.imread(tmp_path / "o_uncertainty.tif"), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(lower, res.lower)
    with pytest.raises(InputError, match="already exists"):  # the bounds are claimed like every other name
        (tmp_path / "p_lower.tif").write_bytes(b"")
        run_predict(model, small_stack[:2], sample=fast, output=tmp_path / "p.tif")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "napari_emdiffuse.cli", *args]


def test_sigkill_mid_run_then_resume_computes_only_missing_blocks(small_stack, tmp_path, random_model, fast, store_results):
    model = random_model("tiny")
    model.save(tmp_path / "m")
    tifffile.imwrite(tmp_path / "in.tif", small_stack)
    args = ["predict", "--model", str(tmp_path / "m"), "--input", str(tmp_path / "in.tif"), "--device", "cpu", "-q"]
    assert subprocess.run(_cli(*args, "--output", str(tmp_path / "whole.zarr")), capture_output=True).returncode == 0
    proc = subprocess.Popen(_cli(*args, "--output", str(tmp_path / "o.zarr")), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # kill once the first block's marker is written
        markers = list(tmp_path.glob(".o.zarr.tmp-*/.blocks_done/c/*"))
        if markers or proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = list(tmp_path.glob(".o.zarr.tmp-*"))
    assert len(left) == 1 and not (tmp_path / "o.zarr").exists()
    n_done = len(list(left[0].glob(".blocks_done/c/*")))
    assert 1 <= n_done < 4
    run = subprocess.run(_cli(*args, "--output", str(tmp_path / "o.zarr"), "--resume"), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert f"{n_done} of 4 blocks are done" in run.stdout + run.stderr  # only the other 4 - n_done were computed
    a, b = store_results(tmp_path / "whole.zarr"), store_results(tmp_path / "o.zarr")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert not list(tmp_path.glob(".o.zarr.tmp-*"))
    assert json.loads((tmp_path / "o.zarr" / "zarr.json").read_text())["attributes"]["complete"] is True
    assert os.listdir(tmp_path / "m")  # the model folder untouched


def test_a_store_resumed_at_another_alpha_says_the_interval_it_holds(small_stack, tmp_path, calibrated_model, fast, cancelled_early):
    """The review: a run cancelled at alpha 0.1 and resumed at 0.3 wrote lower/upper at q(0.3) (a
    70 % interval) while its store still said 90 %: the interval is pooled when the run finishes,
    at that run's alpha, and the store now says what it holds."""
    from napari_emdiffuse import uncertainty

    model = calibrated_model
    cancelled_early(model, small_stack, tmp_path / "o.zarr")
    before = zarr.open_group(str(tmp_path / "o.partial.zarr"), mode="r").attrs["bounds"]
    assert before["coverage"] == pytest.approx(0.9)
    res = run_predict(model, small_stack, sample=fast, output=tmp_path / "o.zarr", resume=True, alpha=0.3)
    assert res.complete
    group = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")
    q = uncertainty.scale(model.calibration, 0.3)
    assert group.attrs["bounds"] == {"coverage": pytest.approx(0.7), "scale": pytest.approx(q), "settings": "same"}
    width = np.asarray(group["upper/0"]) - np.asarray(group["mean/0"])
    np.testing.assert_allclose(width, q * np.asarray(group["uncertainty/0"]), rtol=1e-4, atol=1e-5)


def test_blocks_finished_out_of_order_are_kept_under_the_partial_name_and_said(small_stack, tmp_path, random_model, fast, store_results, ran_blocks):
    """A store whose first block is not finished but a later one is (a cluster's blocks finish
    in any order; a resumed store of such a run), cancelled again before its first block: it said
    "no block was finished, nothing is written" while it kept the store, moved to a hidden
    temporary name. Now it is kept as any cancelled store, at OUT.partial.zarr, and said so."""
    model = random_model("tiny")
    whole = run_predict(model, small_stack, sample=fast, output=tmp_path / "whole.zarr")
    token = new_cancel_token()
    ran_blocks.clear()
    for ev in predict(model, small_stack, sample=fast, output=tmp_path / "o.zarr", cancel=token):
        if ev.kind.value == "progress" and len(ran_blocks) == 2:
            token.set()  # during the third block
    partial = tmp_path / "o.partial.zarr"
    done = zarr.open_array(str(partial / ".blocks_done"), mode="r+")
    assert list(done[:2]) == [1, 1]
    done[0] = 0  # block 1 finished, block 0 not: as a cluster run may leave it
    token = new_cancel_token()
    events = []
    for ev in predict(model, small_stack, sample=fast, output=tmp_path / "o.zarr", resume=True, cancel=token):
        events.append(ev)
        if ev.kind.value == "progress":
            token.set()  # before block 0 is finished again
    said = [ev.text for ev in events if ev.kind.value == "message" and ev.text.startswith("cancelled")]
    assert said == [f"cancelled: the first block is not finished, so no part is shown; the finished blocks are kept in {partial}: run it again with --resume to continue them"]
    assert partial.is_dir() and [int(v) for v in zarr.open_array(str(partial / ".blocks_done"), mode="r")[:2]] == [0, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.partial.zarr", "whole.zarr"]  # nothing under a hidden name
    res = run_predict(model, small_stack, sample=fast, output=tmp_path / "o.zarr", resume=True)
    assert res.complete and whole.complete
    a, b = store_results(tmp_path / "whole.zarr"), store_results(tmp_path / "o.zarr")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


@pytest.mark.parametrize("newer", ["killed", "partial"])
def test_resume_refuses_to_choose_between_a_partial_store_and_a_killed_runs(small_stack, tmp_path, random_model, fast, cancelled_early, newer):
    """A cancelled run's o.partial.zarr and a killed run's hidden store (a later run started with
    --overwrite) both hold finished blocks. --resume took the newer one, and when that run stopped
    again its store was committed to o.partial.zarr, replacing the other unchecked. Now --resume
    refuses, names both and says how to choose; nothing is changed, and the advice works."""
    from napari_emdiffuse.jobs.events import new_cancel_token

    model, image = random_model("tiny"), small_stack[:3]
    partial = cancelled_early(model, image, tmp_path / "o.zarr")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    killed = tmp_path / f".o.zarr.tmp-{dead.pid}-abc"
    cancelled_early(model, image, tmp_path / "k.zarr").rename(killed)
    os.utime(partial if newer == "partial" else killed, (time.time() + 60,) * 2)
    files = _files
    before = files(partial), files(killed)
    token = new_cancel_token()
    with pytest.raises(InputError) as err:
        for ev in predict(model, image, sample=fast, output=tmp_path / "o.zarr", resume=True, cancel=token):
            if ev.kind.value == "progress":
                token.set()  # stopped again: the old code committed the resumed store over the other
    assert str(err.value) == (
        f"{partial}: --resume continues one unfinished store, and two are here: this one (1 finished block) and {killed} (1 finished block, "
        f"left by a killed run); to continue the killed run's, move o.partial.zarr away; to continue o.partial.zarr, remove {killed.name}; "
        "or start again with --overwrite instead of --resume, which discards the killed run's store (and discards o.partial.zarr once it finishes, or replaces it if it is stopped too)"
    )
    assert (files(partial), files(killed)) == before
    partial.rename(tmp_path / "kept.partial.zarr")  # as advised: the killed run's is continued
    assert run_predict(model, image, sample=fast, output=tmp_path / "o.zarr", resume=True).complete
    assert not killed.exists() and files(tmp_path / "kept.partial.zarr") == before[0]


@pytest.mark.parametrize("beside", [0, 1])
def test_a_plain_rerun_beside_a_stopped_runs_store_says_what_resume_and_overwrite_would_do(small_stack, tmp_path, random_model, fast, cancelled_early, beside):
    """A plain rerun where a stopped run left o.partial.zarr was refused with 'o.partial.zarr
    already exists; add --overwrite to replace it': no word of --resume, nor that --overwrite also
    discards the stores killed runs left beside it. Now both are said; nothing is touched."""
    model, image = random_model("tiny"), small_stack[:3]
    partial = cancelled_early(model, image, tmp_path / "o.zarr", blocks=2)
    killed = []
    if beside:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        killed = [tmp_path / f".o.zarr.tmp-{dead.pid}-abc"]
        cancelled_early(model, image, tmp_path / "k.zarr").rename(killed[0])
    before = [_files(p) for p in [partial, *killed]]
    with pytest.raises(InputError) as err:
        run_predict(model, image, sample=fast, output=tmp_path / "o.zarr")
    said = f"{partial}: a stopped run's unfinished result is here (2 finished blocks)"
    if beside:
        said += (
            f", and the store a killed run left beside it, {killed[0].name} (1 finished block); add --resume (it says how to choose "
            "which to continue), or --overwrite to start again, which discards it (o.partial.zarr is discarded once that run finishes, or replaced if it is stopped too)"
        )
    else:
        said += "; add --resume to continue it, or --overwrite to start again (o.partial.zarr is discarded once that run finishes, or replaced if it is stopped too)"
    assert str(err.value) == said
    assert [_files(p) for p in [partial, *killed]] == before
    (tmp_path / "o.zarr").mkdir()  # a result of that name exists too: refused first, as --resume would be
    (tmp_path / "o.zarr" / "mine.txt").write_text("a user's")
    with pytest.raises(InputError) as err:
        run_predict(model, image, sample=fast, output=tmp_path / "o.zarr")
    assert str(err.value).startswith(f"{tmp_path / 'o.zarr'}: an existing folder") and "stopped run" not in str(err.value)


def test_a_rerun_onto_an_existing_result_names_the_killed_runs_stores_overwrite_would_discard(small_stack, tmp_path, random_model, fast, cancelled_early):
    """Where OUT.zarr exists, its refusal ('already exists; add --overwrite') came first and named
    no killed run's store beside it, though --overwrite discards them: now named, with the way to
    continue the newest instead, which works."""
    model, image = random_model("tiny"), small_stack[:3]
    assert run_predict(model, image, sample=fast, output=tmp_path / "o.zarr").complete
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    killed = tmp_path / f".o.zarr.tmp-{dead.pid}-abc"
    cancelled_early(model, image, tmp_path / "k.zarr", blocks=2).rename(killed)
    before = _files(killed)
    with pytest.raises(InputError) as err:
        run_predict(model, image, sample=fast, output=tmp_path / "o.zarr")
    assert str(err.value).endswith(
        f"; --overwrite also discards the store a killed run left beside o.zarr: {killed.name} (2 finished blocks) "
        "(--resume --overwrite continues it instead)"
    )
    assert _files(killed) == before
    assert run_predict(model, image, sample=fast, output=tmp_path / "o.zarr", resume=True, overwrite=True).complete  # as advised
    assert not killed.exists()


def test_a_finished_overwrite_discards_the_stopped_runs_unfinished_result_and_says_so(small_stack, tmp_path, random_model, fast, cancelled_early):
    """--overwrite "starts again", but a finished run left the stopped run's o.partial.zarr (or
    o.partial.tif and its companions) beside the new result, taking room (the CLI walk). Once the
    new run finishes, they go, and the run says so; a run stopped again replaces them, as before."""
    model, image = random_model("tiny"), small_stack[:3]
    partial = cancelled_early(model, image, tmp_path / "o.zarr", blocks=2)
    events = list(predict(model, image, sample=fast, output=tmp_path / "o.zarr", overwrite=True))
    assert events[-1].complete and not partial.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.zarr"]
    said = [e.text for e in events if e.kind.value == "message" and "discarded" in e.text]
    assert said == ["discarded the unfinished result a stopped run left (o.partial.zarr): this finished one replaces it (--overwrite)"]

    from unittest import mock

    from napari_emdiffuse.jobs.predict_output import PredictionOutput

    token, mark = new_cancel_token(), PredictionOutput.mark_done

    def mark_done(self, block):
        mark(self, block)
        token.set()  # stopped after its first block

    with mock.patch.object(PredictionOutput, "mark_done", mark_done):
        list(predict(model, image, sample=fast, output=tmp_path / "t.tif", cancel=token))
    stopped = sorted(p.name for p in tmp_path.iterdir() if ".partial." in p.name)
    assert stopped == ["t.partial.tif", "t_uncertainty.partial.tif"]
    (tmp_path / "x.partial.tif").write_bytes((tmp_path / "t.partial.tif").read_bytes())  # another output's: untouched
    events = list(predict(model, image, sample=fast, output=tmp_path / "t.tif", overwrite=True))
    assert events[-1].complete
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("t", "x"))) == ["t.tif", "t_uncertainty.tif", "x.partial.tif"]
    assert any("(t.partial.tif, t_uncertainty.partial.tif)" in e.text for e in events if e.kind.value == "message")


def _files(store):
    """A store's files and their bytes: equal before and after, it was not touched."""
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


#: finished blocks of the killed runs' stores, oldest first: each its own count, none in order of age
KILLED_BLOCKS = (2, 3, 1)


def _killed_stores(cancelled_early, model, image, tmp_path, counts):
    """Hidden stores beside o.zarr of runs that were killed (their process is gone), holding
    ``counts`` finished blocks, oldest first (each a minute newer than the one before)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stores = []
    for k, n in enumerate(counts):
        store = tmp_path / f".o.zarr.tmp-{dead.pid}-{k}"
        cancelled_early(model, image, tmp_path / f"k{k}.zarr", blocks=n).rename(store)
        os.utime(store, (time.time() + 60 * (k + 1),) * 2)
        stores.append(store)
    return stores


@pytest.fixture
def six_planes(small_stack):
    """Six blocks: room for stores that each hold another number of them."""
    return np.concatenate([small_stack] * 2)[:6]


@pytest.mark.parametrize("n_killed", [2, 3])
def test_resume_says_which_killed_runs_store_it_continues_and_names_the_others(six_planes, tmp_path, random_model, fast, cancelled_early, n_killed):
    """Several killed runs' hidden stores, no o.partial.zarr: --resume continued the newest and
    said nothing of the others. Each is its own folder, which neither the resumed run nor its
    stop touches (committed to o.zarr or o.partial.zarr), so it continues the newest and says so,
    naming the others and their finished blocks (each its own count: one said of another store
    would show), which stay byte for byte as they were."""
    model = random_model("tiny")
    counts = KILLED_BLOCKS[:n_killed]
    stores = _killed_stores(cancelled_early, model, six_planes, tmp_path, counts)
    newest, others = stores[-1], stores[-2::-1]
    before = [_files(p) for p in others]
    said = [ev.text for ev in predict(model, six_planes, sample=fast, output=tmp_path / "o.zarr", resume=True) if ev.kind.value == "message"]
    listed = ", ".join(f"{p} ({n} finished block{'s' * (n != 1)})" for p, n in zip(others, counts[-2::-1]))
    kept = "the other is kept as it is" if n_killed == 2 else f"the other {n_killed - 1} are kept as they are"
    assert (
        f"{newest}: --resume continues this store, the newest of {n_killed} that killed runs left beside {tmp_path / 'o.zarr'}; "
        f"{kept}, not continued: {listed}; to continue an older one instead, move the newer ones away first"
    ) in said, said
    assert f"resuming {newest}: {counts[-1]} of 6 blocks are done" in said, said
    assert (tmp_path / "o.zarr").is_dir() and not newest.exists()
    assert [_files(p) for p in others] == before


@pytest.mark.parametrize("n_killed", [1, 3])
def test_a_plain_rerun_names_every_killed_runs_store_and_what_overwrite_discards(six_planes, tmp_path, random_model, fast, cancelled_early, n_killed):
    """A plain rerun (neither --resume nor --overwrite) refuses to discard what killed runs left.
    With several, it named only one, and its advice, --overwrite, discards them all: now each
    is named, newest first, with its finished blocks; it says which one --resume continues and
    that --overwrite discards all of them. Nothing is changed, and --overwrite does as it says."""
    model = random_model("tiny")
    counts = KILLED_BLOCKS[:n_killed]
    stores = _killed_stores(cancelled_early, model, six_planes, tmp_path, counts)
    before = [_files(p) for p in stores]
    with pytest.raises(InputError) as err:
        run_predict(model, six_planes, sample=fast, output=tmp_path / "o.zarr")
    if n_killed == 1:
        expected = (
            f"{tmp_path / 'o.zarr'}: a run that was killed left its store beside it: {stores[0].name} (2 finished blocks); "
            "add --resume to continue it, or --overwrite to start again, which discards it"
        )
    else:
        expected = (
            f"{tmp_path / 'o.zarr'}: 3 runs that were killed left their stores beside it, newest first: "
            f"{stores[2].name} (1 finished block), {stores[1].name} (3 finished blocks), {stores[0].name} (2 finished blocks); "
            f"add --resume to continue the newest, {stores[2].name} (it names the others and keeps them as they are), "
            "or --overwrite to start again, which discards all 3"
        )
    assert str(err.value) == expected
    assert [_files(p) for p in stores] == before and not (tmp_path / "o.zarr").exists()
    assert run_predict(model, six_planes, sample=fast, output=tmp_path / "o.zarr", overwrite=True).complete
    assert not any(p.exists() for p in stores)


@pytest.mark.parametrize("advice", ["move o.partial.zarr away", "remove the killed runs' stores"])
def test_resume_stopped_beside_killed_runs_stores_names_them_all_and_either_advice_works(six_planes, tmp_path, random_model, fast, cancelled_early, advice):
    """Three killed runs' stores; --resume continues the newest and is stopped: o.partial.zarr and
    the other two. The next --resume refused naming only the newer of them ('two are here'), and
    removing it, as advised, led to a second refusal for the other. Now it counts and names every
    store with its own finished blocks, nothing is changed, and either advice, taken once, lets
    the next --resume go on."""
    model = random_model("tiny")
    k0, k1, k2 = _killed_stores(cancelled_early, model, six_planes, tmp_path, (4, 2, 1))
    partial = cancelled_early(model, six_planes, tmp_path / "o.zarr", blocks=2, resume=True)  # k2's 1 and 2 more
    assert not k2.exists()
    before = [_files(p) for p in (partial, k1, k0)]
    with pytest.raises(InputError) as err:
        run_predict(model, six_planes, sample=fast, output=tmp_path / "o.zarr", resume=True)
    assert str(err.value) == (
        f"{partial}: --resume continues one unfinished store, and 3 are here: this one (3 finished blocks) and 2 that killed runs left, "
        f"newest first: {k1} (2 finished blocks), {k0} (4 finished blocks); to continue the newest killed run's ({k1.name}; "
        "--resume then names the others and keeps them as they are), move o.partial.zarr away; "
        f"to continue o.partial.zarr, remove {k1.name} and {k0.name}; or start again with --overwrite instead of --resume, "
        "which discards both killed runs' stores (and discards o.partial.zarr once it finishes, or replaces it if it is stopped too)"
    )
    assert [_files(p) for p in (partial, k1, k0)] == before
    if advice == "move o.partial.zarr away":
        partial.rename(tmp_path / "kept.partial.zarr")
        said = [ev.text for ev in predict(model, six_planes, sample=fast, output=tmp_path / "o.zarr", resume=True) if ev.kind.value == "message"]
        assert f"resuming {k1}: 2 of 6 blocks are done" in said, said
        assert any(f"the other is kept as it is, not continued: {k0} (4 finished blocks)" in m for m in said), said
        assert _files(k0) == before[2] and _files(tmp_path / "kept.partial.zarr") == before[0]
    else:
        shutil.rmtree(k1)
        shutil.rmtree(k0)
        said = [ev.text for ev in predict(model, six_planes, sample=fast, output=tmp_path / "o.zarr", resume=True) if ev.kind.value == "message"]
        assert f"resuming {partial}: 3 of 6 blocks are done" in said, said
        assert not partial.exists()
    assert zarr.open_group(str(tmp_path / "o.zarr"), mode="r").attrs["complete"] is True


def test_resume_onto_a_complete_result_says_it_is_complete(small_stack, tmp_path, random_model, fast):
    """--resume where o.zarr is finished answered 'already exists; add --overwrite to replace it':
    advice to throw the finished result away, to a user who asked to continue (a user's walk)."""
    model, image = random_model("tiny"), small_stack[:2]
    assert run_predict(model, image, sample=fast, output=tmp_path / "o.zarr").complete
    before = _files(tmp_path / "o.zarr")
    with pytest.raises(InputError) as err:
        run_predict(model, image, sample=fast, output=tmp_path / "o.zarr", resume=True)
    assert str(err.value) == f"{tmp_path / 'o.zarr'}: this result is complete, nothing is left to resume (--overwrite instead of --resume computes it again)"
    assert _files(tmp_path / "o.zarr") == before

