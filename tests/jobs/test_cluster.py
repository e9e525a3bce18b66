"""``predict --cluster``: blocks on dask workers give the in-process result bit for bit, the model
is loaded once per worker, a lost worker's blocks are redone, and cluster files are checked."""

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
        held = None
        for ev in events:
            if ev.kind.value == "progress" and ev.what == "blocks" and ev.done == ev.total and ev.total > 1:
                for _ in range(50):  # releases reach the scheduler a moment later
                    held = client.run_on_scheduler(_blocks_held)
                    if held == 0:
                        break
                    time.sleep(0.1)
            if ev.kind.value == "result":
                assert ev.complete
    assert held == 0


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


#: seconds a forced block other than the first computes: long enough that none of them is done
#: when the run stops, short enough to wait for those already running to end
SLOW_S = 4.0


@pytest.fixture
def forced_blocks(scheduler, tmp_path):
    """``forced_blocks(fail)``: on the workers every block records when it starts (in
    ``tmp_path / "started"``), blocks after the first take :data:`SLOW_S` longer, and block ``fail``
    (None: none) raises once block 0 is marked done in the run's store, so that the run has a
    finished block to keep. Returns a function giving the recorded (block index, start time)s.
    The workers get their own ``BlockRunner.run`` back afterwards."""
    record, marker = tmp_path / "started", str(tmp_path / ".o.zarr.tmp-*" / ".blocks_done" / "c" / "0")

    def install(fail, record, marker, slow):  # defined here, so that it reaches the workers by value
        import glob
        import time

        from napari_emdiffuse.jobs import blocks

        original = blocks.BlockRunner.run

        def run(self, image, block, *args, **kwargs):
            with open(record, "a") as f:
                f.write(f"{block.index} {time.time()}\n")
            if block.index == fail:
                deadline = time.time() + 60
                while not glob.glob(marker) and time.time() < deadline:
                    time.sleep(0.05)
                time.sleep(0.2)  # the client sees block 0 done first
                raise RuntimeError(f"forced failure of block {block.index}")
            if block.index > 0:
                time.sleep(slow)
            return original(self, image, block, *args, **kwargs)

        blocks.BlockRunner.unforced, blocks.BlockRunner.run = original, run

    def restore():
        from napari_emdiffuse.jobs import blocks

        if hasattr(blocks.BlockRunner, "unforced"):
            blocks.BlockRunner.run = blocks.BlockRunner.unforced
            del blocks.BlockRunner.unforced

    def started():
        return [(int(i), float(t)) for i, t in (line.split() for line in record.read_text().splitlines())] if record.exists() else []

    with distributed.Client(scheduler.scheduler_address) as client:

        def force(fail):
            client.run(install, fail, str(record), marker, SLOW_S)
            return started

        yield force
        client.run(restore)


@pytest.mark.parametrize("stop", ["failed block", "cancel"])
def test_a_stopped_cluster_run_starts_no_further_block_and_keeps_only_finished_ones(scheduler, small_stack, tmp_path, random_model, fast, forced_blocks, stop):
    """A block failing for good (named as the run in this process names it: which block, where)
    or a cancel stops the run: the blocks not yet started never start (they are cancelled, not
    left to the workers), and those already running, which end after the store has moved to its
    partial name, write nothing at its old path and mark nothing done. The partial store's
    markers are the blocks the run says it kept."""
    import re

    import zarr

    from napari_emdiffuse.errors import BlockError
    from napari_emdiffuse.jobs.events import new_cancel_token

    image = np.concatenate([small_stack] * 2)  # 8 blocks, one a plane, on 2 workers
    tifffile.imwrite(tmp_path / "in.tif", image)
    started = forced_blocks(1 if stop == "failed block" else None)
    partial, token = tmp_path / "o.partial.zarr", new_cancel_token()
    events = predict(
        random_model("tiny"), image, sample=fast, output=tmp_path / "o.zarr", input_paths=[tmp_path / "in.tif"], cluster=scheduler.scheduler_address,
        cancel=token,
    )  # fmt: skip
    if stop == "failed block":
        kept = re.escape(f"of 8 blocks are kept in {partial}; run it again and add --resume to continue")
        with pytest.raises(BlockError, match=rf"^block 2 of 8 \(z 1:2 of 8\) failed: \d {kept}. The error: RuntimeError: forced failure of block 1$") as err:
            for _ in events:
                pass
        said = int(str(err.value).split(" failed: ")[1].split()[0])
    else:
        for ev in events:
            if ev.kind.value == "progress" and ev.what == "blocks" and ev.done >= 1:
                token.set()
            if ev.kind.value == "result":
                assert not ev.complete and ev.finished is not None
        said = None
    ended = time.time()
    time.sleep(SLOW_S + 2)  # those running end; any block left to the workers would have started
    assert all(t < ended for _, t in started()), (started(), ended)
    assert len({i for i, _ in started()}) < 8
    markers = [int(v) for v in zarr.open_array(str(partial / ".blocks_done"), mode="r")[:]]
    assert markers[0] == 1 and (said is None or sum(markers) == said)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "o.partial.zarr", "started"]  # nothing at the store's old path
