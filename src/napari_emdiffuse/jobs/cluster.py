"""The blocks of a prediction on dask workers (``emdiffuse predict --cluster``).

``local:N`` starts a ``LocalCluster`` of N worker processes (one per GPU where there are GPUs,
each pinned to its device); ``tcp://host:port`` joins a running scheduler; a JSON cluster file
starts dask-jobqueue jobs (SLURM, PBS or LSF), see :class:`ClusterFile`.

Workers get plain data, never pickled models or arrays: the model folder (saved beside the
output for the run), the input's path and the settings. Each worker loads the model and opens the
input lazily once (:func:`_worker_state`), then for every block computes it with the same
:class:`~.blocks.BlockRunner` the in-process loop uses, writes it into the store (each block
owns whole chunks) and sets its done-marker, but only while the store at its path is still
this run's (the run's id, :func:`.predict_output.check_run`): a worker of a run that has ended
(its client killed, then the output resumed or started again) writes into no later run's store.
Failed blocks are retried; a block cancelled on the cluster by someone else (another client, the
scheduler) fails for good at once. A run that stops (a cancel, Ctrl-C, a block that failed for
good) cancels the blocks not finished, closes the store to those still running (they mark nothing
done in it after the run counted its blocks) and leaves a store that ``--resume`` continues.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
from concurrent.futures import CancelledError
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config import SampleConfig
from ..data.normalise import Normaliser
from ..errors import BlockCancelledOnCluster, Cancelled, ConfigError, DeviceError, InputError, StaleRunError
from ..model_file import Model
from ..variants import model_options
from ..variants.base import Block
from .blocks import BlockRun, BlockRunner, write_block
from .events import CancelToken, Message, Progress
from .predict_output import RUN, PredictionOutput, check_run, clear_stale_writes, open_block_arrays

log = logging.getLogger(__name__)

#: how often a failed block is tried again (a worker lost, a transient error)
RETRIES = 3
#: seconds between looks at the cancel token while blocks run
POLL_S = 0.25


class Adapt(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    minimum: int = Field(ge=0, description="jobs kept running when idle")
    maximum: int = Field(ge=1, description="jobs at most")


class ClusterFile(BaseModel):
    """A dask-jobqueue cluster: one job per worker, each with ``gpus`` GPUs, ``cores`` and
    ``memory``; ``jobs`` of them, or as many as ``adapt`` decides."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["slurm", "pbs", "lsf"]
    queue: str | None = None
    account: str | None = None
    walltime: str = Field("01:00:00", pattern=r"^\d+:\d\d:\d\d$", description="HH:MM:SS")
    cores: int = Field(4, ge=1)
    memory: str = Field("32GB", pattern=r"^\d+(\.\d+)?\s*[KMGT]i?B$", description="e.g. 32GB")
    gpus: int = Field(0, ge=0, description="GPUs per job")
    jobs: int = Field(1, ge=1)
    adapt: Adapt | None = None
    job_extra_directives: list[str] = []
    job_script_prologue: list[str] = Field([], description="shell lines run before the worker starts (module load, venv activate)")
    local_directory: str | None = None


def load_cluster_file(path: Path) -> ClusterFile:
    """A cluster file, checked: a bad key or value is one line naming it."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read the cluster file ({err})") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a cluster file is a JSON object, e.g. {{\"kind\": \"slurm\", \"queue\": \"gpu\", \"gpus\": 1}}")
    try:
        return ClusterFile(**raw)
    except ValidationError as err:
        e = err.errors()[0]
        key = ".".join(str(p) for p in e["loc"]) or "cluster"
        msg = "unknown key; use " + ", ".join(ClusterFile.model_fields) if e["type"] == "extra_forbidden" else e["msg"]
        raise ConfigError(f"{path}: {key}: {msg}") from None


def jobqueue_cluster(spec: ClusterFile) -> Any:
    """The dask-jobqueue cluster of a cluster file (no job submitted yet: see :func:`connect`)."""
    import dask_jobqueue

    kind = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster, "lsf": dask_jobqueue.LSFCluster}[spec.kind]
    gpu = {"slurm": f"--gres=gpu:{spec.gpus}", "pbs": f"-l ngpus={spec.gpus}", "lsf": f"-gpu num={spec.gpus}"}[spec.kind]
    extra = [*spec.job_extra_directives, *([gpu] if spec.gpus else [])]
    options: dict[str, Any] = dict(
        queue=spec.queue, account=spec.account, walltime=spec.walltime, cores=spec.cores, memory=spec.memory, processes=1,
        job_extra_directives=extra, job_script_prologue=spec.job_script_prologue, local_directory=spec.local_directory,
    )  # fmt: skip
    if spec.kind == "lsf":  # LSF takes walltime as HH:MM
        options["walltime"] = spec.walltime.rsplit(":", 1)[0]
    return kind(**{k: v for k, v in options.items() if v is not None})


def local_cluster(n: int) -> Any:
    """``n`` worker processes on this machine, their threads shared out between them.

    dask's nannies live in this (the client's) process and, before every worker they start or
    restart, set ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` and ``OPENBLAS_NUM_THREADS`` to 1 in
    *this* process's environment (``distributed.nanny.pre-spawn-environ``): anything it started
    afterwards (a training, a subprocess) would run single-threaded, with other floating-point
    sums. So that setting is emptied for this process, and the workers get their thread counts
    through ``env``, which only they see."""
    import dask
    from distributed import LocalCluster

    dask.config.set({"distributed.nanny.pre-spawn-environ": {}})
    threads = str(max(1, (os.cpu_count() or 1) // n))
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
    return LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0", env=env)


def connect(address: str) -> tuple[Any, Any]:
    """A dask client for ``local:N``, ``tcp://host:port`` or a cluster file, and the cluster
    this started (None when it joined a running scheduler)."""
    from distributed import Client

    if address.startswith("local:"):
        n = address.removeprefix("local:")
        if not n.isdigit() or int(n) < 1:
            raise InputError(f"--cluster {address}: local:N needs a whole number of workers N >= 1, e.g. local:2")
        cluster = local_cluster(int(n))
        return Client(cluster), cluster
    if "://" in address:
        try:
            return Client(address, timeout="20s"), None
        except (OSError, TimeoutError) as err:
            raise InputError(f"--cluster {address}: cannot reach the dask scheduler ({err})") from None
    path = Path(address)
    if not path.is_file():
        raise InputError(f"--cluster {address}: not local:N, a scheduler address (tcp://host:port) or a cluster file")
    spec = load_cluster_file(path)
    cluster = jobqueue_cluster(spec)
    if spec.adapt is not None:  # jobs come and go with the blocks waiting
        cluster.adapt(minimum_jobs=spec.adapt.minimum, maximum_jobs=spec.adapt.maximum)
    else:
        cluster.scale(jobs=spec.jobs)
    return Client(cluster), cluster


@dataclass(frozen=True)
class WorkerSpec:
    """What the client knows of a prediction, before it becomes plain data for the workers."""

    model: Model
    options: BaseModel  # the model's variant options, as the client checked them
    image: Any
    cfg: SampleConfig
    normaliser: Normaliser
    device: str
    estimate: str
    keep_samples: bool


def run_on_cluster(address: str, spec: WorkerSpec, todo: Sequence[Block], out: PredictionOutput, run: BlockRun, cancel: CancelToken) -> Iterator[Any]:
    """Run the blocks ``todo`` on the workers of ``address``, recording in ``run`` those that
    finish and the one that fails for good (its error is raised). Raises :class:`Cancelled` when
    ``cancel`` is set. However the run stops (a cancel, a failed block, Ctrl-C), the blocks not
    finished are cancelled before the client closes: no worker starts one whose result would be
    dropped. One already running goes on, but the store is closed to it (:func:`_close_store`):
    ``run`` holds the blocks the store keeps. A block cancelled on the cluster by someone else
    fails the run as a block that failed for good (:class:`~..errors.BlockCancelledOnCluster`, which the job
    words as it words any failed block)."""
    from distributed import wait

    inputs = [p for p in out.inputs if p is not None]
    if not inputs:
        raise InputError("--cluster: the workers read the input themselves; give it as a file or container, not an array in memory")
    assert out.store_path is not None
    client, cluster = connect(address)
    model_dir = Path(tempfile.mkdtemp(prefix=f".{out.names.mean.name}.model-", dir=out.names.mean.parent))
    unfinished: dict[Any, Block] = {}  # future -> its block, until the block is done
    try:
        # the options as the client resolved them, written out: a model built in memory from a preset
        # without a key would otherwise read back as a model from before that key existed
        preset = spec.model.preset.with_overrides({"variant_options": spec.options.model_dump(mode="json")})
        Model(preset, spec.model.info, spec.model.network).save(model_dir)
        plain = json.dumps({
            "model": str(model_dir), "input": str(Path(inputs[0]).resolve()), "cfg": spec.cfg.model_dump(mode="json"),
            "normaliser": spec.normaliser.to_dict(), "device": spec.device, "estimate": spec.estimate, "keep_samples": spec.keep_samples,
        }, sort_keys=True)  # fmt: skip
        store = str(out.store_path)
        yield Message(f"dask: {len(todo)} blocks on {address}; dashboard {client.dashboard_link}", "info")
        unfinished.update((client.submit(run_block, plain, b, store, out.run, pure=False, retries=RETRIES), b) for b in todo)
        pending, finished = set(unfinished), 0
        yield Progress(0, len(todo), "blocks", "block")
        while pending:
            if cancel.is_set():
                raise Cancelled("prediction cancelled")
            try:
                wait(list(pending), timeout=POLL_S, return_when="FIRST_COMPLETED")
            except TimeoutError:  # nothing finished meanwhile: look at the cancel token again
                continue
            except CancelledError:  # distributed's wait raises where one was cancelled on the cluster: its status says which
                pass
            ready = {f for f in pending if f.status != "pending"}
            pending -= ready
            for fut in sorted(ready, key=lambda f: f.status != "finished"):  # a failure is raised once the blocks done with it are counted
                # a finished block is written and marked in the store by its worker: its result (its
                # index) is not fetched, and its future is released at once, so that the scheduler
                # forgets it (on thousands of blocks it would hold them all, and compute again one
                # whose result was lost with its worker)
                if fut.status == "finished":
                    run.done[unfinished.pop(fut).index] = True
                    fut.release()
                    finished += 1
                elif fut.status in ("lost", "pending"):  # lost with its worker since: dask computes it again
                    pending.add(fut)
                else:
                    run.failed = unfinished[fut]
                    try:
                        fut.result()  # re-raises the block's error after its retries
                    except CancelledError as err:  # this run cancels its blocks only once it has stopped: someone else did
                        raise BlockCancelledOnCluster(getattr(err, "reason", "unknown")) from None
            if ready:
                yield Progress(finished, len(todo), "blocks", "block")
    finally:
        _cancel(client, list(unfinished))
        if unfinished:
            _close_store(out, run)
        client.close()
        if cluster is not None:
            cluster.close()
        shutil.rmtree(model_dir, ignore_errors=True)


def _cancel(client: Any, futures: list[Any]) -> None:
    """Cancel a stopped run's unfinished blocks. Never raises: it runs on the way out of the
    run's own outcome, which is what the user must see; a client that has lost its scheduler
    has nothing left to cancel there (the scheduler forgets a lost client's tasks)."""
    if not futures:
        return
    try:
        client.cancel(futures)
    except Exception as err:  # noqa: BLE001 - see above
        log.info("the unfinished blocks could not be cancelled (%s); closing the client releases them", err)


def _close_store(out: PredictionOutput, run: BlockRun) -> None:
    """Close a stopped run's store to its blocks still running on the workers, and add to ``run``
    those marked done in it by then that the client had not seen finish. A block still running
    would otherwise mark itself done while the client finishes the store (pooling a large one
    takes minutes), after the run counted its blocks and recorded how it computed them. The run's
    id in the store changes, so :func:`run_block` refuses it from now on; left over is only a
    worker between its last look and its marker at this very moment (a write of one byte). Never
    raises (see :func:`_cancel`): where the store cannot be closed, ``run`` keeps what the client saw.
    A store at that path that is not this run's (:func:`check_run`) is left as it is: never another run's."""
    import zarr

    assert out.store_path is not None
    try:
        check_run(out.store_path, out.run)
    except StaleRunError:
        log.info("%s: left as it is, not closed: it is not the store of this run (%s)", out.store_path, out.run)
        return
    try:
        zarr.open_group(str(out.store_path), mode="r+").attrs[RUN] = f"{out.run}-stopped"
        marked = open_block_arrays(out.store_path)[3][:]
    except Exception as err:  # noqa: BLE001 - see above
        log.info("%s: not closed to the blocks still running (%s); they may finish after the run counted its blocks", out.store_path, err)
        return
    for index, done in enumerate(marked):
        run.done[index] = run.done[index] or bool(done)


@functools.lru_cache(maxsize=2)
def _worker_state(plain: str) -> tuple[BlockRunner, Any]:
    """The runner and the lazily opened input of one prediction, once per worker process."""
    from ..data.io import read_image
    from ..engine.device import select_device

    spec = json.loads(plain)
    model = Model.load(spec["model"])
    device = spec["device"]
    if device == "auto":
        device = _pinned_device()
    try:  # a device named but missing here fails the worker's blocks: they must not creep along on its CPU
        dev = select_device(device, strict=True)
    except DeviceError as err:
        raise DeviceError(f"device {device!r} on a dask worker: {err}") from None
    runner = BlockRunner(
        model, model_options(model), SampleConfig(**spec["cfg"]), Normaliser.from_dict(spec["normaliser"]), dev, spec["estimate"], spec["keep_samples"]
    )
    return runner, read_image(spec["input"]).data


def _pinned_device() -> str:
    """One GPU per worker: the worker's number modulo the GPUs here (auto where there are none)."""
    import torch

    if not torch.cuda.is_available():
        return "auto"
    from distributed import get_worker

    name = str(get_worker().name)
    index = int(name) if name.isdigit() else abs(hash(name))
    return f"cuda:{index % torch.cuda.device_count()}"


def run_block(plain: str, block: Block, store: str, run: str) -> int:
    """On a worker: compute ``block``, write it into ``store`` and mark it done; its index. Only
    while ``store`` is still run ``run``'s (looked at before each of the three): otherwise
    :class:`~..errors.StaleRunError`, and nothing is written. A store moved away while the block
    was written gets no marker, and the writes that landed at its old path are removed there."""
    import dask

    path = Path(store)
    check_run(path, run)  # an ended run's block is not even computed
    runner, image = _worker_state(plain)
    with dask.config.set(scheduler="synchronous"):  # read the lazy input here, not as tasks of the cluster
        result = runner.run(image, block)
    check_run(path, run)
    try:
        mean, spread, samples, markers = open_block_arrays(path)
        write_block(result, mean, spread, samples)
        check_run(path, run)  # a block written while its store changed is not marked done there
        markers[block.index] = 1
    finally:  # the store moved away while this block was written: the folders the writes made again at its path go
        clear_stale_writes(path)
    return block.index

