"""``predict --cluster``: blocks on dask workers give the in-process result bit for bit, the model
is loaded once per worker, a lost worker's blocks are redone, a stopped run (a cancel, a block
failed for good or cancelled on the cluster) keeps exactly what it counts, and cluster files are
checked. Where the order of events matters, blocks wait for the test on distributed events
(:func:`gated`), never on the clock."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest
import tifffile

from napari_emdiffuse.config import ConfigError
from napari_emdiffuse.errors import InputError
from napari_emdiffuse.jobs.cluster import connect, jobqueue_cluster, local_cluster, load_cluster_file
from napari_emdiffuse.jobs.predict import predict, run_predict

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def scheduler():
    """Two worker processes, as ``--cluster local:2`` starts them, reached by address."""
    cluster = local_cluster(2)
    yield cluster
    cluster.close()


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def test_starting_a_local_cluster_leaves_this_process_thread_counts_as_they_were():
    """dask's nannies would set the BLAS/OpenMP thread counts to 1 in the client's environment,
    at the start and at every restart of a worker; a training or subprocess started later from
    this process must not inherit that. The workers get their share."""

    def threads() -> dict[str, str | None]:
        return {k: os.environ.get(k) for k in THREAD_VARIABLES}

    before = threads()
    client, cluster = connect("local:1")
    try:
        assert threads() == before
        client.restart()  # the nanny starts a new worker process
        assert threads() == before
        assert list(client.run(lambda: os.environ["OMP_NUM_THREADS"]).values()) == [str(os.cpu_count() or 1)]
    finally:
        client.close()
        cluster.close()


def _loads(client) -> dict[str, int]:
    from napari_emdiffuse.jobs import cluster

    return client.run(lambda: cluster._worker_state.cache_info().misses)


@pytest.mark.parametrize("preset, options", [("tiny", {}), ("vemdiffuse-i-tiny", {"factor": 2})])
def test_two_workers_equal_the_in_process_result_bit_for_bit(scheduler, small_stack, tmp_path, preset, options, random_model, fast, store_results):
    model = random_model(preset, options)
    tifffile.imwrite(tmp_path / "in.tif", small_stack)
    run_predict(model, small_stack, sample=fast, output=tmp_path / "one.zarr", keep_samples=True)
    with distributed.Client(scheduler.scheduler_address) as client:
        before = _loads(client)
        res = run_predict(
            model, small_stack, sample=fast, output=tmp_path / "two.zarr", keep_samples=True, input_paths=[tmp_path / "in.tif"],
            cluster=scheduler.scheduler_address,
        )  # fmt: skip
        after = _loads(client)
    assert res.complete
    assert all(after[w] - before.get(w, 0) <= 1 for w in after)  # the model loaded once per worker, not per block
    a, b = store_results(tmp_path / "one.zarr"), store_results(tmp_path / "two.zarr")
    assert a.keys() == b.keys() == {"mean", "uncertainty", "samples"}
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert not list(tmp_path.glob(".two.zarr.model-*"))  # the model copy for the workers is removed


@pytest.mark.parametrize("preset, options, crop", [("tiny", {}, np.s_[:, :]), ("emdiffuse-r-tiny", {"factor": 2}, np.s_[:45, :53])])
def test_two_workers_equal_in_process_for_a_plane_cut_into_blocks(scheduler, plane, small_blocks, tmp_path, preset, options, crop, lively, fast, store_results):
    """One 2D image, several rectangular blocks spread over the workers: the in-process result bit
    for bit. On CPUs a network's sums depend on the number of threads, so the in-process run gets a
    worker's share (a network with non-zero output layers sees that; a zero-initialised one does not)."""
    import torch

    model = lively(preset, options)
    image = np.ascontiguousarray(plane[crop])
    tifffile.imwrite(tmp_path / "in.tif", image)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    try:
        run_predict(model, image, sample=fast, output=tmp_path / "one.zarr", keep_samples=True)
    finally:
        torch.set_num_threads(threads)
    res = run_predict(
        model, image, sample=fast, output=tmp_path / "two.zarr", keep_samples=True, input_paths=[tmp_path / "in.tif"],
        cluster=scheduler.scheduler_address,
    )  # fmt: skip
    import zarr

    assert res.complete and zarr.open_group(str(tmp_path / "two.zarr"), mode="r").attrs["blocks"] >= 6
    a, b = store_results(tmp_path / "one.zarr"), store_results(tmp_path / "two.zarr")
    assert a["uncertainty"].min() > 0
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_a_killed_worker_does_not_stop_the_run(scheduler, small_stack, tmp_path, random_model, fast, store_results):
    model = random_model("tiny")
    tifffile.imwrite(tmp_path / "in.tif", small_stack)
    run_predict(model, small_stack, sample=fast, output=tmp_path / "one.zarr")
    with distributed.Client(scheduler.scheduler_address) as client:
        pids = client.run(os.getpid)
        killed = False
        events = predict(model, small_stack, sample=fast, output=tmp_path / "two.zarr", input_paths=[tmp_path / "in.tif"], cluster=scheduler.scheduler_address)
        for ev in events:
            if ev.kind.value == "progress" and ev.done >= 1 and not killed:
                os.kill(next(iter(pids.values())), signal.SIGKILL)  # the nanny starts a new one; its blocks go elsewhere
                killed = True
            if ev.kind.value == "result":
                res = ev
    assert killed and res.complete
    a, b = store_results(tmp_path / "one.zarr"), store_results(tmp_path / "two.zarr")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def _blocks_held(dask_scheduler) -> int:
    return sum(1 for key in dask_scheduler.tasks if str(key).startswith("run_block"))


def test_finished_blocks_are_not_held_by_the_scheduler_until_the_run_ends(scheduler, small_stack, tmp_path, random_model, fast):
    """On a volume of thousands of blocks the client must not keep every finished one: once the
    last block is reported done, the scheduler holds none of the run's blocks (the run's client
    is still open, the result not yet written)."""
    model = random_model("tiny")
    tifffile.imwrite(tmp_path / "in.tif", small_stack)
    with distributed.Client(scheduler.scheduler_address) as client:
        events = predict(model, small_stack, sample=fast, output=tmp_path / "o.zarr", input_paths=[tmp_path / "in.tif"], cluster=scheduler.scheduler_address)
        looked = False
        for ev in events:
            if ev.kind.value == "progress" and ev.what == "blocks" and ev.done == ev.total and ev.total > 1:
                _eventually(lambda: client.run_on_scheduler(_blocks_held) == 0, "the finished blocks released")  # releases reach the scheduler a moment later
                looked = True
            if ev.kind.value == "result":
                assert ev.complete
    assert looked


def test_cluster_needs_a_store_and_an_input_file(small_stack, tmp_path, random_model, fast, store_results):
    with pytest.raises(InputError, match="--cluster writes its blocks into a zarr store"):
        run_predict(random_model("tiny"), small_stack, sample=fast, output=tmp_path / "o.tif", cluster="local:1")
    with pytest.raises(InputError, match="local:N needs a whole number"):
        connect("local:zero")
    with pytest.raises(InputError, match="not local:N, a scheduler address"):
        connect(str(tmp_path / "missing.json"))


def test_cluster_files_are_checked_and_make_a_job_script(tmp_path, random_model, fast, store_results):
    good = tmp_path / "slurm.json"
    good.write_text(json.dumps({"kind": "slurm", "queue": "gpu", "walltime": "02:00:00", "gpus": 1, "memory": "48GB", "cores": 8, "jobs": 3}))
    spec = load_cluster_file(good)
    cluster = jobqueue_cluster(spec.model_copy(update={"jobs": 1}))
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH -p gpu" in script and "--gres=gpu:1" in script and "#SBATCH -t 02:00:00" in script
    for bad, message in [
        ({"kind": "sge"}, "kind: Input should be 'slurm', 'pbs' or 'lsf'"),
        ({"kind": "slurm", "walltime": "2h"}, "walltime: String should match pattern"),
        ({"kind": "slurm", "gpu": 1}, "gpu: unknown key; use kind, queue"),
        ({"kind": "pbs", "jobs": 0}, "jobs: Input should be greater than or equal to 1"),
        ({"kind": "lsf", "adapt": {"minimum": 1}}, "adapt.maximum: Field required"),
    ]:
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match=message):
            load_cluster_file(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_cluster_file(path)


#: seconds after which a wait for the workers or for the test gives up: it only bounds a failure
#: (a block that never ends, a gate never opened), a passing run never waits nearly that long
WAIT_S = 300


def _eventually(probe, what: str) -> None:
    """Look at ``probe()`` until it holds; a test failure naming ``what`` after :data:`WAIT_S`."""
    deadline = time.monotonic() + WAIT_S
    while not probe():
        assert time.monotonic() < deadline, f"not within {WAIT_S} s: {what}"
        time.sleep(0.05)


def _blocks_on_workers(dask_worker) -> list[str]:
    """The states of the run blocks a worker holds (``cancelled``: executing, its result unwanted)."""
    return [ts.state for key, ts in dask_worker.state.tasks.items() if str(key).startswith("run_block")]


class Gate:
    """Blocks on the workers that wait for the test, made by the fixture :func:`gated`."""

    def __init__(self, client, record, tag: str) -> None:
        self.client, self.record = client, record
        self.names = {name: f"{name}-{tag}" for name in ("running", "seen", "open")}

    def event(self, name: str):
        return distributed.Event(self.names[name], client=self.client)

    def started(self) -> list[tuple[int, str]]:
        """The held blocks that started, in order: index and task key."""
        lines = self.record.read_text().splitlines() if self.record.exists() else []
        return [(int(i), key) for i, key in (line.split() for line in lines)]

    def wait_running(self) -> None:
        """Until a held block is running on a worker."""
        assert self.event("running").wait(WAIT_S), "no held block started"

    def cancel(self, key: str) -> None:
        """Cancel a block from this client, not the run's: as another user of the cluster could."""
        self.client.cancel([distributed.Future(key, self.client)], force=True)

    def drop(self) -> None:
        """Wait until the stopped run's blocks are gone from the scheduler and from the workers'
        queues, so that none of them can start any more (a block left to the workers would stay
        there: this fails), then let those running end, and wait for them."""
        dropped = lambda: self.client.run_on_scheduler(_blocks_held) == 0 and all(  # noqa: E731
            set(states) <= {"cancelled"} for states in self.client.run(_blocks_on_workers).values()
        )
        _eventually(dropped, "the stopped run's blocks dropped by the scheduler and the workers")
        self.event("open").set()
        _eventually(lambda: not any(self.client.run(_blocks_on_workers).values()), "the blocks running when the run stopped ended")


@pytest.fixture
def gated(scheduler, tmp_path):
    """``gated(free=(0,), fail=None)``: on the workers every block not in ``free`` records its
    start (index and task key) in ``tmp_path / "started"``, then waits for the test: block
    ``fail`` until the ``seen`` event (the test saw a block finish), then raises; any other sets
    ``running`` and waits for ``open`` before it computes. Returns a :class:`Gate`. Afterwards
    every held block is let go and the workers get ``BlockRunner.run`` back."""
    import uuid

    def install(free, fail, record, names, wait_s):  # defined here, so that it reaches the workers by value
        import distributed

        from napari_emdiffuse.jobs import blocks

        original = blocks.BlockRunner.run

        def run(self, image, block, *args, **kwargs):
            if block.index not in free:
                with open(record, "a") as f:
                    f.write(f"{block.index} {distributed.get_worker().get_current_task()}\n")
                if block.index != fail:
                    distributed.Event(names["running"]).set()
                awaited = names["seen" if block.index == fail else "open"]
                if not distributed.Event(awaited).wait(wait_s):  # bounds a failure of the test only
                    raise RuntimeError(f"block {block.index}: {awaited} never came")
                if block.index == fail:
                    raise RuntimeError(f"forced failure of block {block.index}")
            return original(self, image, block, *args, **kwargs)

        blocks.BlockRunner.unforced, blocks.BlockRunner.run = original, run

    def restore():
        from napari_emdiffuse.jobs import blocks

        if hasattr(blocks.BlockRunner, "unforced"):
            blocks.BlockRunner.run = blocks.BlockRunner.unforced
            del blocks.BlockRunner.unforced

    with distributed.Client(scheduler.scheduler_address, set_as_default=False) as client:  # the run's dask arrays stay in the run's process
        gate = Gate(client, tmp_path / "started", uuid.uuid4().hex)

        def hold(free=(0,), fail=None):
            client.run(install, tuple(free), fail, str(gate.record), gate.names, WAIT_S)
            return gate

        yield hold
        for name in ("open", "seen"):
            gate.event(name).set()
        _eventually(lambda: not any(client.run(_blocks_on_workers).values()), "the held blocks ended")
        client.run(restore)


def _markers(store) -> list[int]:
    import zarr

    return [int(v) for v in zarr.open_array(str(store / ".blocks_done"), mode="r")[:]]


@pytest.mark.parametrize("stop", ["failed block", "cancel"])
def test_a_stopped_cluster_run_starts_no_further_block_and_keeps_only_finished_ones(scheduler, small_stack, tmp_path, random_model, fast, gated, monkeypatch, stop):
    """A block failing for good (named as the run in this process names it: which block, where)
    or a cancel stops the run: the blocks not yet started never start (they are cancelled, not
    left to the workers), and those already running, which end after the store has moved to its
    partial name, write nothing at its old path and mark nothing done. The partial store's
    markers are the blocks the run says it kept. The run cancels its 7 unfinished blocks itself
    before it closes its client: the scheduler's events for that client say so in that order
    (closing the client would release them too, a moment later, so the stop alone does not show it)."""
    import re

    from napari_emdiffuse.errors import BlockError
    from napari_emdiffuse.jobs import cluster
    from napari_emdiffuse.jobs.events import new_cancel_token

    clients, connect = [], cluster.connect

    def connecting(address):  # the run's own client, whose events the scheduler keeps under its id
        client, started = connect(address)
        clients.append(client.id)
        return client, started

    monkeypatch.setattr(cluster, "connect", connecting)

    image = np.concatenate([small_stack] * 2)  # 8 blocks, one a plane, on 2 workers
    tifffile.imwrite(tmp_path / "in.tif", image)
    fail = 1 if stop == "failed block" else None
    gate = gated(fail=fail)
    partial, token = tmp_path / "o.partial.zarr", new_cancel_token()
    events = predict(
        random_model("tiny"), image, sample=fast, output=tmp_path / "o.zarr", input_paths=[tmp_path / "in.tif"], cluster=scheduler.scheduler_address,
        cancel=token,
    )  # fmt: skip

    if fail is not None:
        monkeypatch.setattr(cluster, "RETRIES", 0)  # failed for good at once: a retry could wait behind a held block
    stopping = []

    def stop_after_block_0(ev) -> None:  # once a held block runs: the stop finds one running
        if ev.kind.value == "progress" and ev.what == "blocks" and ev.done >= 1 and not stopping:
            gate.wait_running()
            stopping.append(True)
            if fail is not None:
                gate.event("seen").set()
            else:
                token.set()

    if stop == "failed block":
        kept = re.escape(f"1 of 8 blocks are kept in {partial}; run it again and add --resume to continue")
        with pytest.raises(BlockError, match=rf"^block 2 of 8 \(z 1:2 of 8\) failed: {kept}. The error: RuntimeError: forced failure of block 1$"):
            for ev in events:
                stop_after_block_0(ev)
    else:
        for ev in events:
            stop_after_block_0(ev)
            if ev.kind.value == "result":
                assert not ev.complete and ev.finished is not None
    (run_client,) = clients

    def said() -> list[tuple[str, int | None]]:
        events = gate.client.get_events(run_client)
        return [(e["action"], e.get("count")) for _, e in events if e.get("action") in ("cancel", "remove-client")]

    _eventually(lambda: ("remove-client", None) in said(), "the run's client closed")
    assert said()[: said().index(("remove-client", None))] == [("cancel", 7)]  # its removal may be logged twice
    gate.drop()  # the blocks not started are dropped; those running end after the store has moved
    assert _markers(partial) == [1] + [0] * 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "o.partial.zarr", "started"]  # nothing at the store's old path


def test_a_block_cancelled_on_the_cluster_stops_the_run_as_a_failed_block_does(scheduler, small_stack, tmp_path, random_model, fast, gated):
    """A block's task cancelled by someone else (another client, the scheduler) is a block that
    failed for good: named once, as a failed block is, with its z range (the line said 'block 2
    of 8 (...) failed: ... The error: BlockError: block 2 of 8 was cancelled ...', then 'block 2
    of 8 was cancelled ...' without the range), the finished blocks kept for ``--resume``, which
    completes them."""
    from napari_emdiffuse.errors import BlockError

    model, image = random_model("tiny"), np.concatenate([small_stack] * 2)
    tifffile.imwrite(tmp_path / "in.tif", image)
    gate, out, partial = gated(), tmp_path / "o.zarr", tmp_path / "o.partial.zarr"
    events = predict(model, image, sample=fast, output=out, input_paths=[tmp_path / "in.tif"], cluster=scheduler.scheduler_address)
    cancelled = []
    with pytest.raises(BlockError) as err:
        for ev in events:
            if ev.kind.value == "progress" and ev.what == "blocks" and ev.done >= 1 and not cancelled:
                gate.wait_running()
                index, key = gate.started()[0]
                gate.cancel(key)
                cancelled.append(index)
    (i,) = cancelled
    assert str(err.value) == (
        f"block {i + 1} of 8 (z {i}:{i + 1} of 8) was cancelled on the dask cluster, not by this run (dask's reason: unknown): "
        f"1 of 8 blocks are kept in {partial}; run it again and add --resume to continue"
    )
    gate.drop()
    assert _markers(partial) == [1] + [0] * 7
    assert run_predict(model, image, sample=fast, output=out, resume=True).complete and not partial.exists()


def test_the_cli_says_a_block_cancelled_on_the_cluster_in_one_line(scheduler, cli_args, tmp_path, gated, capsys):
    """Cancelled on the cluster before any block finished: one line naming the block as a failed
    block is named (with its z range), status 2 (not an internal error), nothing left behind."""
    import re
    import threading

    from napari_emdiffuse.cli import main

    gate = gated(free=())

    def cancel_one() -> None:  # another user of the cluster, while the command runs
        gate.wait_running()
        gate.cancel(gate.started()[0][1])

    canceller = threading.Thread(target=cancel_one, daemon=True)
    canceller.start()
    status = main([*cli_args, "--output", str(tmp_path / "o.zarr"), "--cluster", scheduler.scheduler_address])
    err = capsys.readouterr().err.strip()
    said = re.fullmatch(r"emdiffuse predict: error: block (\d) of 4 \(z (\d):(\d) of 4\) was cancelled on the dask cluster, not by this run \(dask's reason: unknown\)", err)
    assert status == 2 and said, (status, err)
    canceller.join()
    i = gate.started()[0][0]
    assert [int(n) for n in said.groups()] == [i + 1, i, i + 1]
    gate.drop()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "m", "started"]


def test_a_stopped_runs_store_keeps_what_it_counted_and_says_how_it_computed_that(scheduler, small_stack, tmp_path, random_model, fast, gated, monkeypatch):
    """After a stop the store keeps exactly the blocks the run counts, and its provenance is true
    of them: a block that marked itself done before the stop, which the client had not seen
    finish, is counted (and the resumed store records that part of it was computed on the
    cluster); the blocks still running, which end while the client finishes the store (pooling a
    large volume takes minutes), are refused and mark nothing."""
    import zarr

    from napari_emdiffuse.jobs import predict_output
    from napari_emdiffuse.jobs.events import new_cancel_token
    from napari_emdiffuse.jobs.predict_output import PredictionOutput

    model, image = random_model("tiny"), np.concatenate([small_stack] * 2)
    tifffile.imwrite(tmp_path / "in.tif", image)
    out, partial = tmp_path / "o.zarr", tmp_path / "o.partial.zarr"
    token, mark = new_cancel_token(), PredictionOutput.mark_done
    with monkeypatch.context() as m:  # in this process, cancelled after its first block
        m.setattr(PredictionOutput, "mark_done", lambda self, block: (mark(self, block), token.set()))
        run_predict(model, image, sample=fast, output=out, input_paths=[tmp_path / "in.tif"], cancel=token)
    before = zarr.open_group(str(partial), mode="r").attrs["compute"]
    gate, token, pool = gated(free=(1,)), new_cancel_token(), predict_output.pool_uncertainty
    monkeypatch.setattr(predict_output, "pool_uncertainty", lambda *a, **k: (gate.drop(), pool(*a, **k)))  # the held blocks end meanwhile
    for ev in predict(model, image, sample=fast, output=out, input_paths=[tmp_path / "in.tif"], cluster=scheduler.scheduler_address, resume=True, cancel=token):
        if ev.kind.value == "progress" and ev.what == "blocks" and not token.is_set():  # the client waits here, before its first look
            (store,) = tmp_path.glob(".o.zarr.tmp-*")
            _eventually(lambda: _markers(store)[1] == 1, "block 1 marked done")
            gate.wait_running()
            token.set()
        if ev.kind.value == "result":
            assert not ev.complete and ev.finished == (slice(0, 2), slice(0, 48), slice(0, 56))
    assert _markers(partial) == [1, 1] + [0] * 6
    assert zarr.open_group(str(partial), mode="r").attrs["compute"] == {"parts": [before, {"cluster": scheduler.scheduler_address, "device": "auto"}]}
