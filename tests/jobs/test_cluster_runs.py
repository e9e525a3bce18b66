"""A store's run id: a cluster worker of a run that has ended writes nothing into a later run's
store, and a dead run's store vanishes from its path in one step before it is removed."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from unittest import mock

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
    token, mark = new_cancel_token(), PredictionOutput.mark_done
    with mock.patch.object(PredictionOutput, "mark_done", lambda self, block: (mark(self, block), token.set())):
        for _ in predict(model, image, sample=fast, output=output, cancel=token, resume=resume):
            pass
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


def test_closing_a_stopped_runs_store_leaves_another_runs_store_as_it_is(small_stack, tmp_path, random_model, fast):
    """_close_store changes the run id of the store at the run's path only where the store is the
    run's own: a store there whose run id is another's keeps its files and ``run`` what it had."""
    from types import SimpleNamespace

    from napari_emdiffuse.jobs.blocks import BlockRun
    from napari_emdiffuse.jobs.cluster import _close_store

    partial, first = cancelled(random_model("tiny"), small_stack[:3], tmp_path / "o.zarr", fast)
    marked = list(zarr.open_array(str(partial / predict_output.DONE), mode="r")[:])
    before, run = files(partial), BlockRun(done=[False] * len(marked))
    _close_store(SimpleNamespace(store_path=partial, run=f"not-{first}"), run)
    assert files(partial) == before and run.done == [False] * len(marked)
    _close_store(SimpleNamespace(store_path=partial, run=first), run)  # its own: closed, its markers counted
    assert zarr.open_group(str(partial), mode="r").attrs[RUN] == f"{first}-stopped" and run.done == [bool(m) for m in marked] and any(run.done)


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


def _worker_spec(tmp_path, model, image, fast, normaliser) -> str:
    model.save(tmp_path / "m")
    tifffile.imwrite(tmp_path / "in.tif", image)
    return json.dumps({
        "model": str(tmp_path / "m"), "input": str(tmp_path / "in.tif"), "cfg": fast.model_dump(mode="json"), "normaliser": normaliser,
        "device": "cpu", "estimate": "best", "keep_samples": False,
    }, sort_keys=True)  # fmt: skip


def test_a_worker_whose_store_moves_away_while_it_writes_leaves_nothing_at_the_old_path(small_stack, tmp_path, random_model, fast, dead_pid, monkeypatch):
    """A killed run's store is resumed (moved to the new run's name) while a worker of the killed
    run writes a block into it: the writes land at the old path, making folders of chunk files
    there again that no run would resume or remove. The worker removes them (renamed first, as
    every discard) and marks nothing; the moved store is untouched."""
    from napari_emdiffuse.jobs import cluster

    model, image = random_model("tiny"), small_stack[:3]
    partial, first = cancelled(model, image, tmp_path / "o.zarr", fast)
    killed, resumed = tmp_path / f".o.zarr.tmp-{dead_pid}-abc", tmp_path / ".o.zarr.tmp-1-new"
    partial.rename(killed)
    plain = _worker_spec(tmp_path, model, image, fast, zarr.open_group(str(killed), mode="r").attrs["resume_key"]["normaliser"])
    markers = zarr.open_array(str(killed / predict_output.DONE), mode="r")
    todo = next(b for b in _worker_state(plain)[0].blocks(image.shape) if not markers[b.index])
    before = files(killed)
    write_block = cluster.write_block

    def moved_meanwhile(result, *arrays):
        killed.rename(resumed)  # the new run takes the store over, after this worker's last look
        write_block(result, *arrays)
        assert (killed / "mean" / "0" / "c").is_dir()  # the writes made the old path again

    monkeypatch.setattr(cluster, "write_block", moved_meanwhile)
    removed = _watch_removals(monkeypatch)
    with pytest.raises(StaleRunError, match="no store of ours is there now"):
        run_block(plain, todo, str(killed), first)
    assert not killed.exists() and removed == [killed.name + REMOVING]
    assert files(resumed) == before  # no part of the block, no marker
    assert sorted(p.name for p in tmp_path.glob(".o.zarr.*")) == [resumed.name]


def _watch_removals(monkeypatch) -> list[str]:
    """The names of the folders predict_output removes."""
    removed: list[str] = []
    rmtree = shutil.rmtree

    def watching(path, *args, **kwargs):
        removed.append(path.name)
        return rmtree(path, *args, **kwargs)

    monkeypatch.setattr(predict_output.shutil, "rmtree", watching)
    return removed


def test_the_next_run_removes_a_killed_workers_writes_at_a_stores_old_path_and_nothing_else(small_stack, tmp_path, random_model, fast, dead_pid, monkeypatch):
    """A worker killed after writing at its store's old path (the store moved away meanwhile)
    could not remove what it made there. The next run of the output removes it, resuming or
    starting again, and only that: not the killed run's store that ``--resume`` continues, not a
    folder of the same name form holding anything else (a user's), not one of a live process."""
    import os

    from napari_emdiffuse.jobs.predict_output import open_block_arrays

    partial, _ = cancelled(random_model("tiny"), small_stack[:3], tmp_path / "o.zarr", fast)
    store = tmp_path / f".o.zarr.tmp-{dead_pid}-def"
    partial.rename(store)  # a killed run's store: its finished blocks are work to resume
    zarr.open_array(str(store / predict_output.DONE), mode="r+")[0] = 1

    def stale_writes(name: str):
        """A worker of an ended run writing a block after its store left ``name``."""
        path = tmp_path / name
        shutil.copytree(store, path)
        mean, spread, _, markers = open_block_arrays(path)
        shutil.rmtree(path)
        mean[:], spread[:], markers[1] = 7, 1.0, 1
        return path

    mine = stale_writes(f".o.zarr.tmp-{dead_pid}-mine")
    (mine / "notes.txt").write_text("keep")
    alive = stale_writes(f".o.zarr.tmp-{os.getppid()}-abc")
    kept = {p: files(p) for p in (mine, alive)}
    removed = _watch_removals(monkeypatch)

    stale = stale_writes(f".o.zarr.tmp-{dead_pid}-abc")
    removed.clear()
    resuming = PredictionOutput(tmp_path / "o.zarr", [], overwrite=False, resume=True)
    resuming.claim(0)
    resuming.close()
    assert resuming.resumable == store and store.is_dir()
    assert not stale.exists() and removed == [stale.name + REMOVING]

    stale = stale_writes(f".o.zarr.tmp-{dead_pid}-ghi")
    removed.clear()
    again = PredictionOutput(tmp_path / "o.zarr", [], overwrite=True)
    again.claim(0)
    again.close()
    assert not stale.exists() and not store.exists()
    assert {p: files(p) for p in (mine, alive)} == kept


def test_a_worker_cleaning_up_never_hides_its_blocks_own_outcome(tmp_path, monkeypatch):
    """The review: the worker's cleanup runs in a ``finally``; a folder that vanished while it was
    looked through (another stale worker removing it) raised FileNotFoundError there, which
    replaced the block's StaleRunError and made dask retry the block three times."""
    from napari_emdiffuse.jobs import predict_output

    old = tmp_path / ".o.zarr.tmp-123-abc"
    (old / "mean" / "0" / "c").mkdir(parents=True)

    def vanishing(self, pattern):
        yield self / "mean"
        raise FileNotFoundError(self / "mean" / "0")

    monkeypatch.setattr(type(old), "rglob", vanishing)
    predict_output.clear_stale_writes(old)  # no error: left for the next run
    assert old.is_dir()
