"""A store's run id: a cluster worker of a run that has ended writes nothing into a later run's
store, and a dead run's store vanishes from its path in one step before it is removed."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import pytest
import tifffile
import zarr

from napari_emdiffuse.errors import StaleRunError
from napari_emdiffuse.jobs import predict_output
from napari_emdiffuse.jobs.cluster import _worker_state, run_block
from napari_emdiffuse.jobs.events import new_cancel_token
from napari_emdiffuse.jobs.predict import predict
from napari_emdiffuse.jobs.predict_output import REMOVING, RUN, PredictionOutput


def files(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def cancelled(model, image, output, fast, resume=False):
    """A prediction into ``output`` cancelled after its first block (resuming: after its first
    further block); the partial store and the run id it carries."""
    token = new_cancel_token()
    for ev in predict(model, image, sample=fast, output=output, cancel=token, resume=resume):
        if ev.kind.value == "progress" and ev.done > 0:
            token.set()
    partial = output.with_name(f"{output.stem}.partial.zarr")
    return partial, zarr.open_group(str(partial), mode="r").attrs[RUN]


def test_a_worker_of_an_ended_run_writes_nothing_into_the_store_now_at_its_path(small_stack, tmp_path, random_model, fast, ran_blocks):
    """Run 1 leaves ``o.partial.zarr``; run 2 resumes it and is stopped again, leaving its store at
    the same path under its own run id. A worker still holding run 1's id is refused there before
    computing, and the store is untouched; one of run 2 writes (the look is not a refusal of all)."""
    model, image = random_model("tiny"), small_stack[:3]
    tifffile.imwrite(tmp_path / "in.tif", image)
    model.save(tmp_path / "m")
    partial, first = cancelled(model, image, tmp_path / "o.zarr", fast)
    key = zarr.open_group(str(partial), mode="r").attrs["resume_key"]
    again, second = cancelled(model, image, tmp_path / "o.zarr", fast, resume=True)
    assert again == partial and second != first
    plain = json.dumps({
        "model": str(tmp_path / "m"), "input": str(tmp_path / "in.tif"), "cfg": fast.model_dump(mode="json"), "normaliser": key["normaliser"],
        "device": "cpu", "estimate": "best", "keep_samples": False,
    }, sort_keys=True)  # fmt: skip
    blocks = _worker_state(plain)[0].blocks(image.shape)
    markers = zarr.open_array(str(partial / predict_output.DONE), mode="r")
    todo = next(b for b in blocks if not markers[b.index])
    before, ran_blocks[:] = files(partial), []
    with pytest.raises(StaleRunError, match=rf"a block of run {first}, but the store there is now run {second}'s .*the block is not written"):
        run_block(plain, todo, str(partial), first)
    assert files(partial) == before and ran_blocks == []  # nothing written, nothing computed
    assert run_block(plain, todo, str(partial), second) == todo.index
    assert zarr.open_array(str(partial / predict_output.DONE), mode="r")[todo.index] == 1 and ran_blocks == [todo.index]
    shutil.rmtree(partial)
    with pytest.raises(StaleRunError, match="no store of ours is there now"):
        run_block(plain, todo, str(partial), second)
    assert not partial.exists()  # no folder made again at the removed store's path


@pytest.fixture
def dead_pid() -> int:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return dead.pid


def test_a_dead_runs_store_leaves_its_path_in_one_step_before_it_is_removed(small_stack, tmp_path, random_model, fast, dead_pid, monkeypatch):
    """Started again (``--overwrite``), a killed run's store is renamed away before the removal
    begins: its workers find no store at its path at any moment of it, never a half-removed one.
    A removal cut short (the ``...removing`` folder, no store any more) is finished by the next
    run, and is never offered to ``--resume``."""
    partial, _ = cancelled(random_model("tiny"), small_stack[:3], tmp_path / "o.zarr", fast)
    killed = tmp_path / f".o.zarr.tmp-{dead_pid}-abc"
    partial.rename(killed)
    zarr.open_array(str(killed / predict_output.DONE), mode="r+")[0] = 1  # a finished block: work --resume would continue
    cut_short = tmp_path / f".o.zarr.tmp-{dead_pid}-def{REMOVING}"
    (cut_short / "mean" / "0" / "c").mkdir(parents=True)
    (cut_short / ".blocks_done" / "c").mkdir(parents=True)
    (cut_short / ".blocks_done" / "c" / "0").write_bytes(b"\x01")
    (cut_short / ".blocks_done" / "zarr.json").write_text((killed / ".blocks_done" / "zarr.json").read_text())

    resuming = PredictionOutput(tmp_path / "o.zarr", [], overwrite=False, resume=True)
    resuming.claim(0)
    assert resuming.resumable == killed  # not the folder being removed
    resuming.close()

    removed = []
    rmtree = shutil.rmtree

    def watching(path, *args, **kwargs):
        removed.append((path.name, (path.parent / path.name.removesuffix(REMOVING)).exists()))  # its own name still there?
        return rmtree(path, *args, **kwargs)

    monkeypatch.setattr(predict_output.shutil, "rmtree", watching)
    out = PredictionOutput(tmp_path / "o.zarr", [], overwrite=True)
    out.claim(0)
    out.close()
    assert sorted(removed) == sorted([(killed.name + REMOVING, False), (cut_short.name, False)])
    assert not list(tmp_path.glob(".o.zarr.tmp-*"))


def test_a_worker_refuses_a_device_it_does_not_have(small_stack, tmp_path, random_model, fast):
    """``--cluster ... --device cuda``: the client does not check (the workers may have GPUs it
    has not); a worker without the device fails its blocks rather than run them on its CPU."""
    import torch

    from napari_emdiffuse.errors import DeviceError

    if torch.cuda.is_available():
        pytest.skip("CUDA is here")
    tifffile.imwrite(tmp_path / "in.tif", small_stack[:1])
    random_model("tiny").save(tmp_path / "m")
    plain = json.dumps({
        "model": str(tmp_path / "m"), "input": str(tmp_path / "in.tif"), "cfg": fast.model_dump(mode="json"), "normaliser": {"low": 0.0, "high": 255.0},
        "device": "cuda:1", "estimate": "best", "keep_samples": False,
    }, sort_keys=True)  # fmt: skip
    with pytest.raises(DeviceError, match=r"device 'cuda:1' on a dask worker: CUDA is not available"):
        _worker_state(plain)


def test_a_folder_named_like_a_temporary_but_without_a_process_number_is_not_ours(tmp_path):
    """Only names of our form (``.NAME.tmp-PID-...``) count as a killed run's leftovers: a user's
    ``.o.zarr.tmp-mine.removing`` is neither resumed nor removed."""
    from napari_emdiffuse.jobs.predict_output import _dead_temps

    mine = tmp_path / f".o.zarr.tmp-mine{REMOVING}"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert _dead_temps(tmp_path / "o.zarr") == []
