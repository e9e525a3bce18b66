"""Training under torchrun (2 processes, gloo on the CPU) and the launcher detection behind it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from safetensors.torch import load_file

from napari_emdiffuse.engine.distributed import World, detect_world, first_host
from napari_emdiffuse.errors import InputError, LaunchError
from napari_emdiffuse.jobs.train import CHECKPOINT, checkpoint_state, continues_run

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]

# Runs the CLI in each worker; records every step's patches and every write into the run folder
# (Python's audit events), and on the first attempt kills rank 1 before its step 3, so that
# torchrun (--max-restarts 1) restarts both workers with the same command.
_DRIVER = r"""
import hashlib, json, os, sys
from pathlib import Path

log_dir, run = Path(sys.argv[1]), Path(sys.argv[2]).resolve()
rank, attempt = int(os.environ["RANK"]), int(os.environ["TORCHELASTIC_RESTART_COUNT"])
log = open(log_dir / f"rank{rank}-attempt{attempt}.jsonl", "w", buffering=1)

def audit(event, args):
    if event in ("open", "os.rename", "os.remove", "os.mkdir", "tempfile.mkstemp") and args:
        path = args[0]
        if isinstance(path, (str, os.PathLike)) and str(Path(os.fsdecode(path)).resolve()).startswith(str(run)):
            if event != "open" or set(str(args[1] or "")) & set("wax+") or (args[2] or 0) & (os.O_WRONLY | os.O_RDWR):
                log.write(json.dumps({"write": os.fsdecode(args[1] if event == "os.rename" else path)}) + "\n")

sys.addaudithook(audit)
from napari_emdiffuse import cli
from napari_emdiffuse.jobs import train as job

step = job._Trainer.train_step
def recorded(self, cond, target):
    if rank == 1 and attempt == 0 and self.step == 3:
        os._exit(1)
    log.write(json.dumps({"step": self.step, "data": hashlib.sha1(cond.tobytes()).hexdigest()}) + "\n")
    return step(self, cond, target)
job._Trainer.train_step = recorded
sys.exit(cli.main(sys.argv[3:]))
"""


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}


@pytest.fixture()
def tiny_setup(tmp_path, isbi_clean):
    tifffile.imwrite(tmp_path / "clean.tif", (isbi_clean[:2, :96, :96] * 255).astype(np.uint8))
    preset = {"base": "tiny", "train": {"checkpoint_every": 2, "val_every": 1000, "val_patches": 2, "batch_size": 2}}
    (tmp_path / "preset.json").write_text(json.dumps(preset))
    return ["train", "--config", str(tmp_path / "preset.json"), "--clean", str(tmp_path / "clean.tif"), "--device", "cpu", "-q"]


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_torchrun_restart_resumes_from_the_checkpoint_with_the_same_command(tmp_path, tiny_setup):
    logs, run = tmp_path / "logs", tmp_path / "run"
    logs.mkdir()
    (tmp_path / "driver.py").write_text(_DRIVER)
    cmd = [*TORCHRUN, "--max-restarts", "1", str(tmp_path / "driver.py"), str(logs), str(run), *tiny_setup, "--out", str(run), "--iterations", "4"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    first = {r: _records(logs / f"rank{r}-attempt0.jsonl") for r in (0, 1)}
    again = {r: _records(logs / f"rank{r}-attempt1.jsonl") for r in (0, 1)}
    steps = {r: [e["step"] for e in again[r] if "step" in e] for r in (0, 1)}
    assert steps == {0: [2, 3], 1: [2, 3]}  # the restart went on from the checkpoint of step 2
    assert [e["step"] for e in first[1] if "step" in e] == [0, 1, 2]
    for records in (first, again):  # the ranks trained on different patches at every step
        data = [{e["step"]: e["data"] for e in records[r] if "step" in e} for r in (0, 1)]
        assert all(data[0][s] != data[1][s] for s in data[1] if s in data[0])
    # and a step's patches are a function of the step: the restart drew what the first attempt drew
    assert {e["step"]: e["data"] for e in again[0] if "step" in e}[2] == {e["step"]: e["data"] for e in first[0] if "step" in e}[2]
    # only rank 0 wrote into the run folder: lock, checkpoints, model
    assert not [e for r in (first[1], again[1]) for e in r if "write" in e]
    written = {Path(e["write"]).name for r in (first[0], again[0]) for e in r if "write" in e}
    assert {"train.lock", "model.json", "weights.safetensors", CHECKPOINT} <= written
    assert sorted(p.name for p in run.iterdir()) == [CHECKPOINT, "model.json", "weights.safetensors"]
    state = checkpoint_state(run)
    assert state["step"] == 4 and state["processes"] == 2 and state["launch_id"]
    assert json.loads((run / "model.json").read_text())["training"]["processes"] == 2


@pytest.mark.slow
def test_torchrun_cli_resume_ends_where_an_uninterrupted_run_ends(tmp_path, tiny_setup):
    cli = ["-m", "napari_emdiffuse.cli", *tiny_setup]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    for args in ([*cli, "--out", str(straight), "--iterations", "4"], [*cli, "--out", str(resumed), "--iterations", "2"],
                 [*cli, "--out", str(resumed), "--iterations", "4", "--resume"]):
        proc = subprocess.run([*TORCHRUN, *args], env=_env(), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed at step 2" in proc.stdout
    a, b = load_file(str(straight / "weights.safetensors")), load_file(str(resumed / "weights.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_launchers_are_read_from_their_environment_variables():
    assert detect_world({}) == World()
    tr = detect_world({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "TORCHELASTIC_RESTART_COUNT": "2", "TORCHELASTIC_RUN_ID": "x"})
    assert (tr.rank, tr.size, tr.local_rank, tr.launcher, tr.restart, tr.run_id, tr.master) == (1, 4, 1, "torchrun", 2, "x", "")
    slurm = {"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "3", "SLURM_JOB_ID": "123456", "SLURM_STEP_NODELIST": "gpu[07-08]"}
    sr = detect_world(slurm)
    assert (sr.rank, sr.size, sr.local_rank, sr.launcher, sr.run_id, sr.master) == (3, 8, 3, "srun", "123456", "gpu07:23456")
    assert detect_world({**slurm, "MASTER_ADDR": "head", "MASTER_PORT": "1234"}).master == "head:1234"
    # a batch script's own shell (no srun step) is a single process, whatever SLURM_NTASKS says
    assert detect_world({"SLURM_PROCID": "0", "SLURM_NTASKS": "8"}) == World()
    assert first_host("nid[001234-001240,001300],login1") == "nid001234" and first_host("node5") == "node5"
    with pytest.raises(LaunchError, match="RANK='one'"):
        detect_world({"RANK": "one", "WORLD_SIZE": "2"})
    with pytest.raises(LaunchError, match="rank 2 of 2"):
        detect_world({"RANK": "2", "WORLD_SIZE": "2"})


def test_the_same_command_serves_every_attempt_of_a_launched_run(tmp_path):
    import torch

    from napari_emdiffuse.config import load_preset
    from napari_emdiffuse.model_file import atomic_save_tensors

    run = tmp_path / "run"
    launched = World(launcher="torchrun", run_id="job-1")
    assert continues_run(run, resume=True, overwrite=False, world=launched) is False  # --resume starts an empty run
    assert continues_run(run, resume=False, overwrite=False, world=World()) is False
    state = {"step": 2, "preset": load_preset("tiny").model_dump(mode="json"), "launch_id": "job-1"}
    atomic_save_tensors({"x": torch.zeros(1)}, run / CHECKPOINT, metadata={"state": json.dumps(state)})
    restarted = World(launcher="torchrun", run_id="job-1", restart=1)
    assert continues_run(run, resume=False, overwrite=False, world=restarted) is True
    assert continues_run(run, resume=False, overwrite=True, world=restarted) is True  # not a second fresh start
    with pytest.raises(InputError, match="add --resume"):  # another run's checkpoint is not taken over
        continues_run(run, resume=False, overwrite=False, world=World(launcher="torchrun", run_id="job-2", restart=1))
    assert continues_run(run, resume=True, overwrite=False, world=World()) is True


_DYING = r"""
import os, sys
from napari_emdiffuse import cli
from napari_emdiffuse.jobs import train as job

step = job._Trainer.train_step
def dying(self, cond, target):
    if os.environ["SLURM_PROCID"] == "1" and self.step == 3:
        os._exit(1)  # killed, as by the out-of-memory killer or a lost node
    return step(self, cond, target)
job._Trainer.train_step = dying
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_peer_that_dies_ends_the_others_with_a_one_line_error_and_the_checkpoint_kept(tmp_path, tiny_setup):
    import socket

    (tmp_path / "driver.py").write_text(_DYING)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "run"
    cmd = [sys.executable, str(tmp_path / "driver.py"), *tiny_setup, "--out", str(run), "--iterations", "6"]
    procs = [
        subprocess.Popen(cmd, env={**_env(), "SLURM_PROCID": str(r), "SLURM_STEP_NUM_TASKS": "2", "SLURM_JOB_ID": "7", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for r in (0, 1)
    ]
    (_, err), _ = procs[0].communicate(timeout=600), procs[1].communicate(timeout=600)
    assert procs[0].returncode == 2, err[-2000:]
    assert len(err.strip().splitlines()) == 1 and "another process of this training run stopped" in err and "--resume" in err
    assert "internal error" not in err and "Traceback" not in err
    assert checkpoint_state(run)["step"] == 2  # the periodic checkpoint before the loss is kept
    assert not (run / "train.lock").exists()
