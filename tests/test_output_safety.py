"""Outputs never destroy a user's data (issue 10, output side).

Each test here failed on the code before: ``.zarr`` outputs deleted the folder they were given,
existing results were replaced without asking, a hard link to the input was written through,
a failed write left a truncated file under the final name, two processes wrote one output, and
``--output x.png`` wrote ``x.tif`` plus ``x.png_uncertainty.tif``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_emdiffuse.cli import main
from napari_emdiffuse.data import safe_output
from napari_emdiffuse.data.io import read_image, write_tiff
from napari_emdiffuse.data.safe_output import refuse_overwrite
from napari_emdiffuse.errors import InputError
from napari_emdiffuse.jobs.events import Kind, new_cancel_token
from napari_emdiffuse.jobs.predict import predict, run_predict
from napari_emdiffuse.jobs.predict_output import OutputNames

FAST = ["--steps", "2", "--samples", "2", "-q"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """An untrained tiny denoiser: these tests are about files, not about quality."""
    from napari_emdiffuse.config import load_preset
    from napari_emdiffuse.model_file import Model, ModelInfo
    from napari_emdiffuse.variants import complete, get_variant

    preset = complete(load_preset("tiny"))
    variant = get_variant(preset.variant)
    out_c, cond_c = variant.channels(variant.options(preset.variant_options))
    folder = tmp_path_factory.mktemp("untrained")
    Model(preset, ModelInfo(out_channels=out_c, cond_channels=cond_c)).save(folder)
    return folder


@pytest.fixture()
def stack(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "in.tif"
    tifffile.imwrite(path, (rng.random((2, 48, 48)) * 200 + 20).astype(np.uint8))
    return path


def checksums(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative name -> sha256)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def error_of(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def predict_args(model_dir: Path, stack: Path, out: Path, *extra: str) -> list[str]:
    return ["predict", "--model", str(model_dir), "--input", str(stack), "--output", str(out), *FAST, *extra]


def user_folder(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    (folder / "raw").mkdir(parents=True)
    (folder / "NOTES.txt").write_text("three weeks of notes")
    tifffile.imwrite(folder / "raw" / "slices.tif", np.arange(64, dtype=np.uint8).reshape(8, 8))
    return folder


# --- 1. a .zarr output never deletes a folder the user has -------------------------------------


@pytest.mark.parametrize("overwrite", [False, True])
def test_predict_and_prepare_never_write_into_a_users_folder(tmp_path, model_dir, stack, capsys, overwrite):
    folder = user_folder(tmp_path, "project.zarr")
    before = checksums(tmp_path)
    flag = ["--overwrite"] if overwrite else []
    assert "not an output of napari-emdiffuse" in error_of(capsys, predict_args(model_dir, stack, folder, *flag))
    argv = ["prepare", "--clean", str(stack), "--out", str(folder), "--patch", "32", "-q", *flag]
    assert "not an output of napari-emdiffuse" in error_of(capsys, argv)
    assert checksums(tmp_path) == before


def test_prepare_writes_only_zarr_sets_and_a_file_is_no_model(tmp_path, model_dir, stack, capsys):
    """``prepare --out x.tif`` wrote a zarr folder named x.tif; ``--model image.tif`` said "no such
    model folder" about a file that exists (the CLI walk of 2026-12-07)."""
    assert "give --out a name ending in .zarr" in error_of(capsys, ["prepare", "--clean", str(stack), "--out", str(tmp_path / "x.tif"), "-q"])
    assert not (tmp_path / "x.tif").exists()
    assert "a file, not a model folder" in error_of(capsys, predict_args(stack, stack, tmp_path / "o.tif"))


def test_zarr_output_is_replaced_only_with_overwrite_and_swapped_in(tmp_path, model_dir, stack, capsys):
    out = tmp_path / "pred.zarr"
    assert main(predict_args(model_dir, stack, out)) == 0
    first = checksums(out)
    assert "--overwrite" in error_of(capsys, predict_args(model_dir, stack, out, "--seed", "5"))
    assert checksums(out) == first
    assert main(predict_args(model_dir, stack, out, "--seed", "5", "--overwrite")) == 0
    group = zarr.open_group(str(out), mode="r")
    assert group.attrs["complete"] is True and group.attrs["settings"]["seed"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "pred.zarr"]  # no temporaries, no lock


def test_existing_results_and_their_uncertainty_need_overwrite(tmp_path, model_dir, stack, capsys):
    out = tmp_path / "res.tif"
    (tmp_path / "res_uncertainty.tif").write_bytes(b"an older uncertainty map")  # the companion counts too
    before = checksums(tmp_path)
    assert "res_uncertainty.tif already exists; add --overwrite" in error_of(capsys, predict_args(model_dir, stack, out))
    assert checksums(tmp_path) == before
    assert main(predict_args(model_dir, stack, out, "--overwrite")) == 0
    assert read_image(tmp_path / "res_uncertainty.tif").meta["provenance"]["complete"] is True


def test_prepare_replaces_a_set_only_with_overwrite(tmp_path, capsys):
    clean = tmp_path / "in.tif"
    tifffile.imwrite(clean, (np.random.default_rng(0).random((4, 64, 64)) * 200 + 20).astype(np.uint8))
    out = tmp_path / "set.zarr"
    argv = ["prepare", "--clean", str(clean), "--out", str(out), "--patch", "32", "--val-fraction", "0.3", "-q"]
    assert main(argv) == 0
    before = checksums(tmp_path)
    assert "--overwrite" in error_of(capsys, argv)
    assert checksums(tmp_path) == before
    assert main([*argv, "--seed", "3", "--overwrite"]) == 0
    assert zarr.open_group(str(out), mode="r").attrs["report"]["settings"]["seed"] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") or p.suffix == ".lock"]


# --- 2/3. inputs are compared by device and inode, not only by path ----------------------------


def test_a_hard_link_to_the_input_is_refused(tmp_path, model_dir, stack, capsys):
    link = tmp_path / "link.tif"
    os.link(stack, link)
    before = checksums(tmp_path)
    assert "refusing to overwrite the input" in error_of(capsys, predict_args(model_dir, stack, link, "--overwrite"))
    with pytest.raises(InputError, match="refusing to overwrite"):
        write_tiff(link, np.zeros((4, 4), np.float32), (1.0, 1.0), protect=[stack])
    assert checksums(tmp_path) == before


def test_refuse_overwrite_sees_a_second_path_to_an_input_folder(tmp_path):
    container = tmp_path / "in.zarr"
    container.mkdir()
    other = tmp_path / "same"
    os.symlink(container, other)
    with pytest.raises(InputError):
        refuse_overwrite(other / "out.tif", [container])  # inside the input, under another name
    refuse_overwrite(tmp_path / "out.tif", [container])  # beside it is fine


# --- 6. supported names; the uncertainty name derives from the stem -----------------------------


def test_unsupported_output_suffix_is_refused_before_anything_is_written(tmp_path, model_dir, stack, capsys):
    before = sorted(tmp_path.iterdir())
    err = error_of(capsys, predict_args(model_dir, stack, tmp_path / "x.png"))
    assert "'.png'" in err and ".tif" in err and ".zarr" in err
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    "name,std,sample,partial",
    [
        ("x.tif", "x_uncertainty.tif", "x_sample0.tif", "x.partial.tif"),
        ("x.ome.tif", "x_uncertainty.ome.tif", "x_sample0.ome.tif", "x.partial.ome.tif"),
        ("a.b.TIFF", "a.b_uncertainty.TIFF", "a.b_sample0.TIFF", "a.b.partial.TIFF"),
    ],
)
def test_uncertainty_and_partial_names_derive_from_the_stem(tmp_path, name, std, sample, partial):
    names = OutputNames.for_path(tmp_path / name, n_samples=1)
    assert (names.mean.name, names.std.name, names.samples[0].name) == (name, std, sample)
    assert OutputNames.partial(names.mean).name == partial


def test_a_store_named_in_capitals_is_a_store(tmp_path):
    """'o.ZARR' was written as TIFF files named o.ZARR and o_uncertainty.ZARR, which the reader,
    taking '.ZARR' as a store, could not open; the Enhance widget took it as a store too."""
    names = OutputNames.for_path(tmp_path / "o.ZARR", n_samples=1, bounds=True)
    assert names.store and names.finals() == [tmp_path / "o.ZARR"]
    assert OutputNames.partial(names.mean).name == "o.partial.ZARR"


# --- 4. a failed write leaves no file under the final name -------------------------------------


def test_a_failed_tiff_write_leaves_the_old_file_or_nothing(tmp_path, monkeypatch):
    old = tmp_path / "kept.tif"
    write_tiff(old, np.ones((8, 8), np.float32), (1.0, 1.0))
    before = checksums(tmp_path)

    def disk_full(path, *args, **kwargs):
        Path(path).write_bytes(b"II*\x00 half a TIFF")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", disk_full)
    for target in (old, tmp_path / "new.tif"):
        with pytest.raises(OSError):
            write_tiff(target, np.zeros((8, 8), np.float32), (1.0, 1.0))
    assert checksums(tmp_path) == before  # the old file intact, no new file, no temporary


def test_a_full_disk_fails_the_predict_cleanly(tmp_path, model_dir, stack, capsys, monkeypatch):
    def disk_full(path, *args, **kwargs):
        Path(path).write_bytes(b"II*\x00 half a TIFF")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", disk_full)
    before = checksums(tmp_path)
    assert "No space left" in error_of(capsys, predict_args(model_dir, stack, tmp_path / "out.tif"))
    assert checksums(tmp_path) == before


def test_a_set_of_results_is_all_under_its_final_names_or_none_of_it(tmp_path, model_dir, stack, capsys, monkeypatch):
    """The disk filling up at the last file of a calibrated result left the result, its
    uncertainty and its lower bound under their final names, each marked complete, and no upper
    bound (the CLI walk of 2026-12-07). Also with --overwrite: the old set stays whole."""
    calibrated = tmp_path / "calibrated"
    shutil.copytree(model_dir, calibrated)
    meta = json.loads((calibrated / "model.json").read_text())
    from napari_emdiffuse.uncertainty import ALPHAS

    meta.setdefault("metrics", {})["calibration"] = {"alpha": 0.1, "alphas": list(ALPHAS), "q": [2.0] * len(ALPHAS), "samples": 2, "steps": 2, "sampler": "dpmpp_2m"}
    (calibrated / "model.json").write_text(json.dumps(meta))
    real, calls = tifffile.imwrite, []

    def full_at_the_fourth(path, *args, **kwargs):
        calls.append(path)
        if len(calls) % 4 == 0:
            Path(path).write_bytes(b"II*\x00 half a TIFF")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *args, **kwargs)

    out = tmp_path / "res" / "o.tif"
    assert main(predict_args(calibrated, stack, out)) == 0  # the old set: result, uncertainty, lower, upper
    assert sorted(p.name for p in out.parent.iterdir()) == ["o.tif", "o_lower.tif", "o_uncertainty.tif", "o_upper.tif"]
    before = checksums(out.parent)
    monkeypatch.setattr(tifffile, "imwrite", full_at_the_fourth)
    for argv in (predict_args(calibrated, stack, tmp_path / "new" / "o.tif"), predict_args(calibrated, stack, out, "--overwrite")):
        calls.clear()
        err = error_of(capsys, argv)
        assert "No space left" in err and "none of its 4 files" in err and "o.tif" in err
    assert checksums(out.parent) == before  # the old set whole, no temporary beside it
    assert not (tmp_path / "new").exists() or list((tmp_path / "new").iterdir()) == []


def test_an_overwritten_result_keeps_no_companion_of_the_old_one(tmp_path, model_dir, stack, capsys):
    """Samples 0-1 of an earlier result stayed beside a new result that kept none (the CLI walk
    of 2026-12-07); without --overwrite a companion alone is enough to refuse."""
    out = tmp_path / "o.tif"
    assert main(predict_args(model_dir, stack, out, "--save-samples")) == 0
    assert {p.name for p in tmp_path.glob("o_sample*.tif")} == {"o_sample0.tif", "o_sample1.tif"}
    (tmp_path / "o.tif").unlink()
    (tmp_path / "o_uncertainty.tif").unlink()
    assert "o_sample0.tif already exists" in error_of(capsys, predict_args(model_dir, stack, out))
    assert main(predict_args(model_dir, stack, out, "--overwrite")) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("o")) == ["o.tif", "o_uncertainty.tif"]


@pytest.fixture()
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs (root only; skipped where mounting is not permitted)."""
    where = tmp_path / "tiny"
    where.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield where
    subprocess.run(["umount", str(where)], check=False)


def test_a_really_full_disk(tiny_disk, model_dir, stack, capsys):
    big = np.random.default_rng(0).random((8, 256, 256)).astype(np.float32)  # 2 MiB, about 1.7 MiB compressed
    with pytest.raises(OSError):
        write_tiff(tiny_disk / "big.tif", big, (1.0, 1.0, 1.0))
    assert list(tiny_disk.iterdir()) == []
    with pytest.raises(InputError, match="not enough free space"):
        safe_output.check_space(tiny_disk, big.nbytes)
    (tiny_disk / "old.tif").write_bytes(b"keep me")
    out = tiny_disk / "pred.tif"
    vol = stack.parent / "vol.tif"
    tifffile.imwrite(vol, (np.random.default_rng(1).random((8, 128, 128)) * 200).astype(np.uint8))
    assert "not enough free space" in error_of(capsys, predict_args(model_dir, vol, out))  # before computing
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["old.tif"]


def test_a_read_only_destination_is_refused_before_computing(tiny_disk, model_dir, stack, capsys):
    if subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], capture_output=True).returncode:
        pytest.skip("cannot remount the tmpfs read-only")
    err = error_of(capsys, predict_args(model_dir, stack, tiny_disk / "out.tif"))
    assert "cannot write there" in err and "Read-only" in err


def test_destination_problems_are_found_before_computing(tmp_path, model_dir, stack):
    from napari_emdiffuse.model_file import Model

    blocked = tmp_path / "file"
    blocked.write_text("a file where a folder should be")
    events = predict(Model.load(model_dir), tifffile.imread(stack), output=blocked / "out.tif", input_paths=[stack])
    with pytest.raises(InputError, match="cannot write there"):
        next(events)  # refused before the first progress event, not after the computation


# --- 5. locks: a second process refuses, a dead one's lock is taken over ----------------------


def test_a_live_lock_refuses_and_names_its_process(tmp_path, model_dir, stack, capsys):
    out = tmp_path / "out.zarr"
    with safe_output.lock_beside(out):
        err = error_of(capsys, predict_args(model_dir, stack, out))
    assert f"in use by process {os.getpid()}" in err and "started" in err
    assert not out.exists()


def test_a_stale_lock_is_taken_over_and_its_temporaries_removed(tmp_path, model_dir, stack, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out.zarr"
    info = {"pid": dead.pid, "host": os.uname().nodename, "started": "yesterday"}
    (tmp_path / "out.zarr.lock").write_text(json.dumps(info))
    leftover = tmp_path / f".out.zarr.tmp-{dead.pid}-abc"
    leftover.mkdir()
    assert main(predict_args(model_dir, stack, out)) == 0
    assert f"lock of process {dead.pid}, which is no longer running" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "out.zarr"]


def test_two_processes_taking_over_one_stale_lock_at_once_only_one_wins(tmp_path, monkeypatch):
    """Both find the same dead process's lock; the slower one must not remove the lock the faster
    one has just taken. Threads stand for processes: a barrier makes both read the stale lock
    before either acts, then one is held back until the other holds the new lock."""
    import threading
    import time

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_path = tmp_path / "out.zarr.lock"
    lock_path.write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "started": "yesterday"}))
    both_saw_it = threading.Barrier(2)
    real_alive = safe_output.pid_alive

    def alive(pid: int) -> bool:
        if pid != dead.pid:
            return real_alive(pid)
        both_saw_it.wait(timeout=10)
        if threading.current_thread().name == "late":
            time.sleep(0.3)
        return False

    monkeypatch.setattr(safe_output, "pid_alive", alive)
    outcome: dict[str, str] = {}

    def contend() -> None:
        try:
            safe_output.Lock(lock_path, "out.zarr").acquire()
            outcome[threading.current_thread().name] = "held"
        except InputError as err:
            outcome[threading.current_thread().name] = str(err)

    threads = [threading.Thread(target=contend, name=name) for name in ("early", "late")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert outcome["early"] == "held"
    assert "in use by process" in outcome["late"]
    assert json.loads(lock_path.read_text())["pid"] == os.getpid()
    assert not (tmp_path / "out.zarr.lock.takeover").exists()


def test_a_takeover_guard_left_by_a_dead_process_is_named_not_waited_on_forever(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_path = tmp_path / "out.tif.lock"
    lock_path.write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "started": "yesterday"}))
    guard = tmp_path / "out.tif.lock.takeover"
    guard.write_text("{}")
    os.utime(guard, (0, 0))
    with pytest.raises(InputError, match="died while taking over") as err:
        safe_output.Lock(lock_path, "out.tif").acquire()
    assert str(guard) in str(err.value)


def test_train_refuses_a_folder_holding_a_model_and_a_locked_one(tmp_path, model_dir, stack, capsys):
    run = tmp_path / "run"
    shutil.copytree(model_dir, run)
    before = checksums(run)
    argv = ["train", "--preset", "tiny", "--clean", str(stack), "--out", str(run), "--iterations", "2", "-q"]
    err = error_of(capsys, argv)
    assert "--resume" in err and "--overwrite" in err
    assert checksums(run) == before
    with safe_output.Lock(run / "train.lock", f"run folder {run}"):
        assert f"in use by process {os.getpid()}" in error_of(capsys, [*argv, "--overwrite"])
    assert checksums(run) == before
    # a user's folder (no model in it) is never written into, as the README promises (it was)
    mine = user_folder(tmp_path, "mine")
    mine_before = checksums(mine)
    for extra in ((), ("--overwrite",), ("--resume",)):
        argv = ["train", "--preset", "tiny", "--clean", str(stack), "--out", str(mine), "--iterations", "2", "-q", *extra]
        assert "not a training run" in error_of(capsys, argv)
    assert checksums(mine) == mine_before


# --- 3. cancel keeps only finished planes; info says what a file is -----------------------------


def _cancel_after(model, calls: int):
    token = new_cancel_token()
    count = {"n": 0}

    def hook(module, args, output):
        count["n"] += 1
        if count["n"] == calls:
            token.set()

    return token, model.network.register_forward_hook(hook)


def _evaluations_per_plane(model, plane, sample) -> int:
    """How many network calls one plane takes (best estimate + sampler steps), counted, not assumed."""
    count = {"n": 0}
    hook = model.network.register_forward_hook(lambda *a: count.__setitem__("n", count["n"] + 1))
    try:
        list(predict(model, plane, sample=sample))
    finally:
        hook.remove()
    return count["n"]


def test_cancelled_tiff_output_holds_only_finished_planes(tmp_path, model_dir, stack):
    from napari_emdiffuse.model_file import Model

    model = Model.load(model_dir)
    image = np.concatenate([tifffile.imread(stack)] * 2)  # 4 planes
    sample = model.preset.sample.model_copy(update={"steps": 2})
    token, hook = _cancel_after(model, _evaluations_per_plane(model, image[0], sample) + 1)  # in the second plane
    try:
        events = list(predict(model, image, output=tmp_path / "out.tif", input_paths=[stack], cancel=token, sample=sample))
    finally:
        hook.remove()
    res = events[-1]
    assert not res.complete
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "out.partial.tif", "out_uncertainty.partial.tif"]
    partial = read_image(tmp_path / "out.partial.tif")
    planes = np.asarray(partial.data).reshape(-1, 48, 48)  # one plane reads back as a 2D image
    assert len(planes) == 1 and np.abs(planes).sum() > 0
    prov = partial.meta["provenance"]
    assert prov["complete"] is False and prov["finished"] == [[0, 1], [0, 48], [0, 48]] and prov["shape"] == [4, 48, 48]
    assert any(e.kind is Kind.MESSAGE and "finished part (z 0:1 of 4) is in" in e.text for e in events)


def test_cancelled_2d_prediction_writes_nothing_and_says_so(tmp_path, model_dir, stack):
    from napari_emdiffuse.model_file import Model

    model = Model.load(model_dir)
    token, hook = _cancel_after(model, 1)
    try:
        events = list(predict(model, tifffile.imread(stack)[0], output=tmp_path / "out.tif", cancel=token))
    finally:
        hook.remove()
    assert not events[-1].complete and events[-1].written == ()
    assert any(e.kind is Kind.MESSAGE and "nothing is written" in e.text for e in events)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


def test_a_run_that_writes_nothing_leaves_no_folder_it_made(tmp_path, model_dir, stack):
    """`--output new/sub/out.tif` made both folders and left them empty when a cancel (or an
    error) wrote nothing (the CLI walk). The folders a run made and left empty go again; one
    that holds anything stays, and so does a folder that was there before."""
    from unittest import mock

    from napari_emdiffuse.model_file import Model

    model = Model.load(model_dir)
    image = tifffile.imread(stack)[0]
    for out in (tmp_path / "new" / "sub" / "out.tif", tmp_path / "new" / "sub" / "out.zarr"):
        token, hook = _cancel_after(model, 1)
        try:
            events = list(predict(model, image, output=out, cancel=token))
        finally:
            hook.remove()
        assert not events[-1].complete and events[-1].written == ()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "new").mkdir()
    (tmp_path / "kept" / "new" / "notes.txt").write_text("mine")
    token, hook = _cancel_after(model, 1)
    try:
        list(predict(model, image, output=tmp_path / "kept" / "new" / "out.tif", cancel=token))
    finally:
        hook.remove()
    assert sorted(p.name for p in (tmp_path / "kept" / "new").iterdir()) == ["notes.txt"]
    done = list(predict(model, image, output=tmp_path / "made" / "out.tif"))[-1]  # a finished run keeps its folder
    assert done.complete and (tmp_path / "made" / "out.tif").is_file()
    # only what it made: through a missing folder and back up ("a/../b") the folder b was there
    # before, empty, and stays; and a lock that cannot be taken leaves no folder of its own
    (tmp_path / "b").mkdir()
    token, hook = _cancel_after(model, 1)
    try:
        list(predict(model, image, output=tmp_path / "a" / ".." / "b" / "out.tif", cancel=token))
    finally:
        hook.remove()
    assert (tmp_path / "b").is_dir() and not (tmp_path / "a").exists()
    with mock.patch.object(safe_output.os, "open", side_effect=OSError(28, "No space left on device")):
        with pytest.raises(InputError, match="cannot write there"):
            safe_output.Lock(tmp_path / "x" / "y" / "o.lock", "o").acquire()
    assert not (tmp_path / "x").exists()


def test_cancelled_zarr_output_is_a_valid_store_marked_incomplete(tmp_path, model_dir, stack, capsys):
    from napari_emdiffuse.model_file import Model

    model = Model.load(model_dir)
    image = np.concatenate([tifffile.imread(stack)] * 2)
    sample = model.preset.sample.model_copy(update={"steps": 2})
    token, hook = _cancel_after(model, _evaluations_per_plane(model, image[0], sample) + 1)  # in the second plane
    try:
        res = list(predict(model, image, output=tmp_path / "out.zarr", cancel=token, sample=sample))[-1]
    finally:
        hook.remove()
    assert res.written == (tmp_path / "out.partial.zarr",) and not (tmp_path / "out.zarr").exists()
    group = zarr.open_group(str(tmp_path / "out.partial.zarr"), mode="r")
    assert group.attrs["complete"] is False and group.attrs["finished"] == [[0, 1], [0, 48], [0, 48]]
    capsys.readouterr()
    assert main(["info", str(tmp_path / "out.partial.zarr")]) == 0
    text = capsys.readouterr().out
    assert "complete: NO: only z 0:1 of 4 is finished" in text and "voxel:" in text and "made by:" in text and "denoise" in text
    # enhanced again as an input, its unfinished planes (zeros) are named as such
    assert main(["predict", "--model", str(model_dir), "--input", str(tmp_path / "out.partial.zarr" / "mean"), "--output", str(tmp_path / "again.tif"), *FAST]) == 0
    assert "an unfinished result (only z 0:1 of 4 is finished)" in capsys.readouterr().err


def test_info_on_a_complete_output(tmp_path, model_dir, stack, capsys):
    assert main(predict_args(model_dir, stack, tmp_path / "o.tif")) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "o.tif")]) == 0
    text = capsys.readouterr().out
    assert "complete: yes" in text and f"model {model_dir}" in text and "2 steps" in text


@pytest.mark.parametrize("bf16", ["0", "1"])
def test_an_output_says_in_what_precision_the_network_ran(tmp_path, model_dir, stack, capsys, monkeypatch, bf16):
    """bf16 and float32 results differ in their last digits: the provenance says which ran, and
    on a CPU the run says so when it takes bf16."""
    monkeypatch.setenv("EMDIFFUSE_BF16", bf16)  # 1: bf16 on any CPU (emulated where not native)
    monkeypatch.setattr("napari_emdiffuse.jobs.predict._PRECISION_SAID", False)  # said once a session: not yet in this one
    assert main(predict_args(model_dir, stack, tmp_path / "o.tif")) == 0
    said = capsys.readouterr().out
    assert ("runs in bf16" in said) == (bf16 == "1")
    assert main(["info", str(tmp_path / "o.tif")]) == 0
    network = "bfloat16" if bf16 == "1" else "float32"
    assert f"computed: on cpu, network in {network}" in capsys.readouterr().out
    prov = read_image(tmp_path / "o.tif").meta["provenance"]
    assert prov["compute"] == {"device": "cpu", "network": network}


def test_a_store_resumed_in_another_precision_says_so(tmp_path, model_dir, stack, capsys, monkeypatch):
    """Blocks computed in bf16 and in float32 differ in the last digits: a resume that mixes them
    warns, and the provenance records both ways."""
    from napari_emdiffuse.model_file import Model

    model = Model.load(model_dir)
    image = np.concatenate([tifffile.imread(stack)] * 2)
    sample = model.preset.sample.model_copy(update={"steps": 2})
    monkeypatch.setenv("EMDIFFUSE_BF16", "1")
    token, hook = _cancel_after(model, _evaluations_per_plane(model, image[0], sample) + 1)
    try:
        list(predict(model, image, output=tmp_path / "out.zarr", cancel=token, sample=sample))
    finally:
        hook.remove()
    monkeypatch.setenv("EMDIFFUSE_BF16", "0")
    events = list(predict(model, image, output=tmp_path / "out.zarr", resume=True, sample=sample))
    assert events[-1].complete
    warned = [e.text for e in events if e.kind is Kind.MESSAGE and e.level == "warning"]
    assert any("computed on cpu, network in bfloat16" in w and "this run computes on cpu, network in float32" in w for w in warned), warned
    capsys.readouterr()
    assert main(["info", str(tmp_path / "out.zarr")]) == 0
    assert "computed: in parts: on cpu, network in bfloat16; on cpu, network in float32" in capsys.readouterr().out


def test_info_names_a_cluster_run(capsys):
    from napari_emdiffuse.data.cli_commands import _provenance_lines

    lines = _provenance_lines({"shape": [2, 8, 8], "finished": [], "complete": True, "compute": {"cluster": "local:2", "device": "auto"}})
    assert "computed: on the cluster local:2 (device auto on each worker, each in its own precision)" in lines


def test_the_old_in_memory_api_still_returns_everything(model_dir, stack):
    from napari_emdiffuse.model_file import Model

    res = run_predict(Model.load(model_dir), tifffile.imread(stack), sample=Model.load(model_dir).preset.sample.model_copy(update={"steps": 2}))
    assert res.complete and res.finished == () and res.written == ()


@pytest.mark.parametrize("exchange", [True, False])
def test_a_store_is_replaced_only_once_the_new_one_is_in_place(tmp_path, monkeypatch, exchange):
    if not exchange:  # systems without renameat2: two renames
        monkeypatch.setattr(safe_output, "_exchange", lambda a, b: False)
    dest = tmp_path / "s.zarr"
    dest.mkdir()
    (dest / "old").write_text("old")
    new = tmp_path / "new"
    new.mkdir()
    (new / "fresh").write_text("new")
    safe_output.swap_in(new, dest)
    assert [p.name for p in dest.iterdir()] == ["fresh"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_no_output_is_written_inside_the_store_an_input_array_belongs_to(tmp_path, model_dir, stack, capsys):
    """Enhancing ``result.zarr/mean`` from the Enhance widget wrote its default output inside
    ``result.zarr``, which napari could then no longer open (the GUI walk of 2026-12-07)."""
    from napari_emdiffuse._widgets.enhance import default_file_output

    store = tmp_path / "result.zarr"
    assert main(predict_args(model_dir, stack, store)) == 0
    before = checksums(store)
    array = store / "mean"
    assert default_file_output(array) == tmp_path / "result_mean_enhanced.zarr"
    said = [error_of(capsys, ["predict", "--model", str(model_dir), "--input", str(array), "--output", str(inside), *FAST])
            for inside in (store / "mean_enhanced.zarr", store / "mean" / "x.tif")]  # fmt: skip
    assert "lies inside" in said[0] and "the store the input" in said[0] and "refusing to overwrite the input" in said[1]
    assert checksums(store) == before
    assert main(["predict", "--model", str(model_dir), "--input", str(array), "--output", str(default_file_output(array)), *FAST]) == 0
    # the store itself names its images to pick, not its bookkeeping
    err = error_of(capsys, ["predict", "--model", str(model_dir), "--input", str(store), "--output", str(tmp_path / "x.tif"), *FAST])
    assert f"{store}/mean" in err and ".blocks_done" not in err


def test_a_tiff_output_that_is_a_folder_is_refused_before_computing(tmp_path, model_dir, stack, capsys, monkeypatch):
    (tmp_path / "isdir.tif").mkdir()
    monkeypatch.setattr("napari_emdiffuse.jobs.blocks.BlockRunner.run", lambda *a, **k: pytest.fail("computed first"))
    for extra in ((), ("--overwrite",)):
        assert "is a folder; a TIFF result needs a file name" in error_of(capsys, predict_args(model_dir, stack, tmp_path / "isdir.tif", *extra))


def test_one_sample_writes_no_bounds_and_says_why(tmp_path, model_dir, stack, capsys):
    """``--samples 1`` wrote lower and upper bounds equal to the result (zero spread: a 0-width
    "90 %" interval; the CLI walk of 2026-12-07)."""
    calibrated = tmp_path / "calibrated"
    shutil.copytree(model_dir, calibrated)
    meta = json.loads((calibrated / "model.json").read_text())
    from napari_emdiffuse.uncertainty import ALPHAS

    meta.setdefault("metrics", {})["calibration"] = {"alpha": 0.1, "alphas": list(ALPHAS), "q": [2.0] * len(ALPHAS), "samples": 2, "steps": 2, "sampler": "dpmpp_2m"}
    (calibrated / "model.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["predict", "--model", str(calibrated), "--input", str(stack), "--output", str(tmp_path / "o.tif"), "--steps", "2", "--samples", "1"]) == 0
    said = capsys.readouterr()
    assert "one sample has no spread" in said.out + said.err
    assert sorted(p.name for p in tmp_path.glob("o*.tif")) == ["o.tif", "o_uncertainty.tif"]


def test_a_users_file_named_like_a_companion_is_never_removed(tmp_path, model_dir, stack, capsys):
    """``o_sample12.tif`` of the user's was taken for an earlier result's sample and deleted
    under --overwrite (the review of 2026-12-07): only files carrying our provenance go."""
    out = tmp_path / "o.tif"
    mine = tmp_path / "o_sample12.tif"
    tifffile.imwrite(mine, np.zeros((4, 4), np.uint8))
    before = checksums(tmp_path)
    for extra in ((), ("--overwrite",)):
        assert "not written by" in error_of(capsys, predict_args(model_dir, stack, out, *extra))
    assert checksums(tmp_path) == before


def test_a_set_whose_rename_fails_half_way_keeps_the_old_set_whole(tmp_path, monkeypatch):
    """A rename that fails after the first (a file open in Fiji on Windows) left a new result
    beside the old uncertainty (the review of 2026-12-07)."""
    finals = [tmp_path / "o.tif", tmp_path / "o_uncertainty.tif"]
    for f in finals:
        f.write_bytes(b"old " + f.name.encode())
    before = checksums(tmp_path)
    real, calls = os.replace, []

    def second_fails(a, b):
        calls.append((a, b))
        if Path(b) == finals[1] and Path(a).name.endswith("set.tif"):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(a, b)

    monkeypatch.setattr(safe_output.os, "replace", second_fails)
    with pytest.raises(InputError, match="none of its 2 files"):
        with safe_output.replacing_set(finals) as temps:
            for t in temps:
                t.write_bytes(b"new")
    assert checksums(tmp_path) == before  # both old files back, no temporary or moved-aside file left


def test_a_name_with_glob_characters_touches_no_other_outputs_store(tmp_path, model_dir, stack):
    """Writing ``a[1].zarr`` removed the killed-run store of ``a1.zarr`` (a glob pattern, not a name)."""
    other = tmp_path / ".a1.zarr.tmp-999999-x"
    (other / ".blocks_done").mkdir(parents=True)
    assert main(predict_args(model_dir, stack, tmp_path / "a[1].zarr", "--overwrite")) == 0
    assert other.is_dir()


def test_the_store_an_input_belongs_to_is_found_without_climbing_into_a_users_folder(tmp_path):
    """A folder that happens to hold an ``attributes.json`` is no N5 store (the review of 2026-12-07)."""
    from napari_emdiffuse.data.formats import store_root

    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "attributes.json").write_text("{}")
    assert store_root(mine / "x.tif") == mine / "x.tif"
    n5 = tmp_path / "v.n5"
    (n5 / "g" / "s0").mkdir(parents=True)
    for folder in (n5, n5 / "g", n5 / "g" / "s0"):
        (folder / "attributes.json").write_text("{}")
    assert store_root(n5 / "g" / "s0") == n5
    z = tmp_path / "r.zarr"
    (z / "mean").mkdir(parents=True)
    (z / "zarr.json").write_text("{}")
    (z / "mean" / "zarr.json").write_text("{}")
    assert store_root(z / "mean") == z


def test_the_precision_note_is_given_once_a_session(model_dir, stack, monkeypatch):
    """The bf16 note popped up on every Enhance run (the GUI walk of 2026-12-07): it is a fact
    about the machine, said once; a note about the run itself (nothing to resume) is said each time."""
    from napari_emdiffuse.jobs import predict as predict_module
    from napari_emdiffuse.model_file import Model

    monkeypatch.setattr(predict_module, "uses_bf16", lambda dev, inference=False: True)
    monkeypatch.setattr(predict_module, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(predict_module, "_PRECISION_SAID", False)
    image = tifffile.imread(stack)
    said = [[e.text for e in predict(Model.load(model_dir), image, device="cpu") if e.kind is Kind.MESSAGE] for _ in range(2)]
    assert sum("bf16" in t for t in said[0]) == 1 and not any("bf16" in t for t in said[1])


def test_info_on_a_stopped_store_whose_markers_cannot_be_read_says_it_does_not_know():
    """It said "nothing is finished" for markers it could not read (blocks_done gives None then),
    the very store a plain rerun now refuses to remove for that reason."""
    from napari_emdiffuse.data.cli_commands import _provenance_lines

    stopped = {"shape": [2, 8, 8], "finished": None, "complete": False, "blocks": 4}
    assert any("what is finished is unknown" in line for line in _provenance_lines(stopped, None))
    assert any("2 of 4 blocks are finished" in line for line in _provenance_lines(stopped, 2))
    assert any("nothing is finished" in line for line in _provenance_lines(stopped, 0))
