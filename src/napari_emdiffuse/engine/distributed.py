"""Which process of a multi-process training run this is, and the few collectives training needs.

The launcher says it in environment variables: ``torchrun`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` (and ``TORCHELASTIC_RESTART_COUNT`` / ``TORCHELASTIC_RUN_ID`` for its restarts);
``srun`` sets ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS``, ``SLURM_LOCALID`` (and
``SLURM_RESTART_COUNT`` / ``SLURM_JOB_ID`` when a job is requeued). Without either, the process
is alone (rank 0 of 1) and nothing here touches ``torch.distributed``.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator, Mapping, Sequence

import torch
import torch.distributed as dist

from ..errors import LaunchError

#: how long a rank waits for the others (rank 0 validates and saves while they wait)
COLLECTIVE_TIMEOUT = timedelta(minutes=30)
#: how long a rank leaving the group waits for the others to leave too
CLOSE_TIMEOUT = timedelta(seconds=60)
#: the rendezvous port under srun when MASTER_PORT is not set: this plus the job id modulo 10000
SLURM_PORT_BASE = 20000


@dataclass(frozen=True)
class World:
    """This process's place in the run: ``rank`` of ``size`` processes, ``local_rank`` on its node.

    ``launcher`` is ``"torchrun"``, ``"srun"`` or ``""`` (a plain process); ``restart`` counts
    the launcher's restarts of the run and ``run_id`` stays the same across them."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    launcher: str = ""
    restart: int = 0
    run_id: str = ""
    master: str = ""  # "host:port" of rank 0 under srun (torchrun sets MASTER_ADDR/MASTER_PORT itself)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    text = env.get(name)
    if text is None and default is not None:
        return default
    try:
        return int(str(text))
    except ValueError:
        raise LaunchError(f"environment variable {name}={text!r}: expected a whole number (set by torchrun or srun)") from None


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list (``"gpu[03-05,09],cpu1"`` -> ``"gpu03"``)."""
    m = re.match(r"([^,\[]+)(?:\[([^\],\-]+))?", nodelist.strip())
    if not m:
        raise LaunchError(f"SLURM node list {nodelist!r}: cannot tell the first host; set MASTER_ADDR")
    return m.group(1) + (m.group(2) or "")


def detect_world(env: Mapping[str, str] | None = None) -> World:
    """The :class:`World` the launcher describes in ``env`` (default: this process's environment)."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        world = World(
            rank=_int(env, "RANK"), size=_int(env, "WORLD_SIZE"), local_rank=_int(env, "LOCAL_RANK", 0),
            launcher="torchrun", restart=_int(env, "TORCHELASTIC_RESTART_COUNT", 0),
            run_id=env.get("TORCHELASTIC_RUN_ID", ""),
        )
    elif "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:  # srun, not a batch script's own shell
        size = _int(env, "SLURM_STEP_NUM_TASKS")
        job = env.get("SLURM_JOB_ID", "")
        addr = env.get("MASTER_ADDR") or first_host(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", ""))
        port = _int(env, "MASTER_PORT", SLURM_PORT_BASE + (int(job) % 10000 if job.isdigit() else 0))
        world = World(
            rank=_int(env, "SLURM_PROCID"), size=size, local_rank=_int(env, "SLURM_LOCALID", 0), launcher="srun",
            restart=_int(env, "SLURM_RESTART_COUNT", 0), run_id=job, master=f"{addr}:{port}",
        )
    else:
        return World()
    if not 0 <= world.rank < world.size or world.local_rank < 0:
        raise LaunchError(f"{world.launcher}: rank {world.rank} of {world.size} processes does not exist")
    return world


def rank_device(device: torch.device, world: World) -> torch.device:
    """One GPU per process: a bare ``cuda`` becomes ``cuda:LOCAL_RANK``; other devices stay."""
    if device.type == "cuda" and device.index is None and world.size > 1:
        return torch.device("cuda", world.local_rank)
    return device


#: what gloo and NCCL say when a peer process is gone
_PEER_GONE = re.compile(r"connection (reset|closed) by peer|broken pipe|socket closed|remote process exited|NCCL (error|communicator was aborted)", re.I)


def lost_peer(err: BaseException) -> str | None:
    """The short reason when ``err`` is a collective failing for a peer that is gone, else None."""
    text = str(err)
    if not (isinstance(err, getattr(dist, "DistError", ())) or _PEER_GONE.search(text)):
        return None
    first = re.sub(r"^\[[^\]]*\]\s*", "", text.strip().splitlines()[0] if text.strip() else type(err).__name__)
    return first.split(". This is typically")[0].rstrip(".")


class Group:
    """The process group of a run (a no-op for a single process): NCCL on CUDA, gloo otherwise."""

    def __init__(self, world: World, device: torch.device) -> None:
        self.world = world
        self.device = device if device.type == "cuda" else torch.device("cpu")
        self.owned = False
        if world.size == 1:
            return
        if dist.is_initialized():
            if dist.get_world_size() != world.size:
                raise LaunchError(f"a process group of {dist.get_world_size()} is running, the launcher says {world.size}")
            return
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        url = f"tcp://{world.master}" if world.master else "env://"
        try:
            store, _, _ = next(dist.rendezvous(url, world.rank, world.size, timeout=COLLECTIVE_TIMEOUT))
            # torchrun keeps one store across its restarts: keys of an earlier attempt must not be read as this one's
            store = dist.PrefixStore(f"emdiffuse/attempt-{world.restart}", store)
            dist.init_process_group(backend, store=store, rank=world.rank, world_size=world.size, timeout=COLLECTIVE_TIMEOUT)
        except (RuntimeError, ValueError) as err:
            raise LaunchError(f"{world.launcher}: rank {world.rank} cannot join the other {world.size - 1} processes ({err})") from None
        self.owned = True

    @property
    def active(self) -> bool:
        return self.world.size > 1

    def any(self, flags: Sequence[bool]) -> list[bool]:
        """Each flag, true where any process has it true: decisions all ranks take together."""
        if not self.active:
            return list(flags)
        t = torch.tensor([float(f) for f in flags], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def agree(self, failed: bool) -> None:
        """Share whether this rank failed; the ranks that did not fail raise when one did (instead
        of waiting for it at the next collective until the timeout)."""
        if self.any([failed])[0] and not failed:
            raise LaunchError("another process of this training run failed (its own message says why); this one stops too")

    @contextlib.contextmanager
    def peers_watched(self) -> Iterator[None]:
        """A collective that fails because another process is gone (killed, crashed, its node
        lost) ends this one with a :class:`LaunchError` saying so, not as an internal error."""
        try:
            yield
        except RuntimeError as err:
            reason = lost_peer(err) if self.active else None
            if reason is None:
                raise
            raise LaunchError(
                f"another process of this training run stopped ({reason}); the run folder keeps its last "
                "checkpoint: run the same command with --resume to continue from it"
            ) from None

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """A block every rank runs through (rank 0 validating or saving, the others waiting at
        its end): an exception on one rank ends the block on all of them."""
        try:
            yield
        except BaseException:
            if self.active:
                with contextlib.suppress(Exception):  # the peers may be gone already
                    self.agree(True)
            raise
        self.agree(False)

    def close(self) -> None:
        """Leave the group together: a rank tearing its connections down while another is still
        in the group can make gloo abort that one ("terminate called without an active exception")."""
        if self.owned and dist.is_initialized():
            with contextlib.suppress(Exception):  # a peer that is gone cannot wait; gloo's barrier has a timeout
                if dist.get_backend() == "gloo":
                    dist.monitored_barrier(timeout=CLOSE_TIMEOUT)
                else:
                    dist.barrier()
            dist.destroy_process_group()
            self.owned = False
