"""Killing ``emdiffuse predict`` and ``train`` in a real subprocess: SIGINT, SIGTERM, SIGKILL.

Whatever the signal, nothing under the output's final name may look complete unless it is,
the exit status says what happened (130 Ctrl-C, 143 SIGTERM), and the input and every file
that was there before keep their checksums. Each test waits for a progress line on the
child's stderr before signalling (no sleeps), and a second process started meanwhile must
refuse, naming the first.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_emdiffuse.cli import main
from napari_emdiffuse.data.io import read_image

pytestmark = pytest.mark.slow
PLANES = 4
STEPS = 25  # one sample, one tile: STEPS progress units per plane, so a run lasts long enough to signal


class Child:
    """``emdiffuse ARGS`` in a subprocess, its stderr watched for tqdm's ``N/TOTAL`` counts."""

    def __init__(self, args: list[str]) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
        self.proc = subprocess.Popen([sys.executable, "-m", "napari_emdiffuse.cli", *args], stderr=subprocess.PIPE, env=env)
        self.text = ""
        self.done = 0
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while chunk := os.read(self.proc.stderr.fileno(), 4096):
            with self.changed:
                self.text += chunk.decode(errors="replace")
                counts = [int(n) for n in re.findall(r"(\d+)/\d+ \[", self.text)]
                self.done = max(counts, default=0)
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def wait_for(self, units: int, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while self.done < units:
                assert self.proc.poll() is None, f"the child ended early: {self.text[-2000:]}"
                assert time.monotonic() < deadline, "no progress from the child"
                self.changed.wait(0.5)

    def finish(self, sig: int | None = None, timeout: float = 120) -> int:
        if sig is not None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        time.sleep(0.05)  # the reader thread takes the last lines
        return rc


def sha(paths: list[Path]) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


@pytest.fixture()
def setting(tmp_path, request):
    """An untrained tiny model, an input stack and a file of the user's beside the output."""
    from napari_emdiffuse.config import load_preset
    from napari_emdiffuse.model_file import Model, ModelInfo

    model = tmp_path / "model"
    from napari_emdiffuse.variants import complete

    Model(complete(load_preset("tiny")), ModelInfo(out_channels=1, cond_channels=1)).save(model)
    stack = tmp_path / "in.tif"
    tifffile.imwrite(stack, (np.random.default_rng(0).random((PLANES, 64, 64)) * 200 + 20).astype(np.uint8))
    mine = tmp_path / "results" / "earlier.tif"
    mine.parent.mkdir()
    mine.write_bytes(b"an earlier result of the user's")
    return model, stack, mine.parent, sha([stack, mine])


def predict_args(model: Path, stack: Path, out: Path) -> list[str]:
    return ["predict", "--model", str(model), "--input", str(stack), "--output", str(out), "--steps", str(STEPS), "--samples", "1", "--device", "cpu"]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".lock")


def test_ctrl_c_writes_only_finished_planes_and_exits_130(setting, capsys):
    model, stack, results, before = setting
    out = results / "out.tif"
    child = Child(predict_args(model, stack, out))
    child.wait_for(1)
    child.proc.send_signal(signal.SIGSTOP)  # held still while a second process tries the same output
    capsys.readouterr()
    assert main(predict_args(model, stack, out)) == 2  # ... and refuses, naming the first
    assert f"in use by process {child.proc.pid}" in capsys.readouterr().err
    child.proc.send_signal(signal.SIGCONT)
    child.wait_for(STEPS + 1)  # into the second plane
    assert child.finish(signal.SIGINT) == 130, child.text
    assert not out.exists() and not (results / "out_uncertainty.tif").exists()
    partial = read_image(results / "out.partial.tif")
    prov = partial.meta["provenance"]
    done = prov["finished"][0][1]
    assert prov["complete"] is False and 1 <= done < PLANES and prov["finished"][1:] == [[0, 64], [0, 64]]
    planes = np.asarray(partial.data).reshape(-1, 64, 64)
    assert len(planes) == done and all(np.abs(p).sum() > 0 for p in planes)  # no zero-filled plane
    assert (results / "out_uncertainty.partial.tif").is_file()
    assert "the finished part (z 0:" in child.text and "Traceback" not in child.text
    assert sha(list(before)) == before and leftovers(results) == []


def test_sigterm_leaves_a_store_marked_incomplete_and_exits_143(setting):
    model, stack, results, before = setting
    out = results / "out.zarr"
    child = Child(predict_args(model, stack, out))
    child.wait_for(STEPS + 1)
    assert child.finish(signal.SIGTERM) == 143, child.text
    assert not out.exists()
    group = zarr.open_group(str(results / "out.partial.zarr"), mode="r")
    assert group.attrs["complete"] is False and 1 <= group.attrs["finished"][0][1] < PLANES
    assert sha(list(before)) == before and leftovers(results) == []


def test_a_second_signal_aborts_at_once_and_leaves_nothing_half_written(setting):
    """Ctrl-C, then at once another signal (a person's second Ctrl-C, slower than REPEAT_S, is
    tested on the handler below: the same abort)."""
    model, stack, results, before = setting
    out = results / "out.tif"
    child = Child(predict_args(model, stack, out))
    child.wait_for(1)
    child.proc.send_signal(signal.SIGINT)
    assert child.finish(signal.SIGTERM) == 143, child.text
    assert not out.exists() and "Traceback" not in child.text
    assert sha(list(before)) == before and leftovers(results) == []


def test_the_same_signal_delivered_twice_at_once_cancels_once():
    """GNU timeout signals the process and then its group: on a busy machine the handler ran
    between the two, took the second for 'again to abort' and threw the finished part away
    (seen in a user's walk). A repeat within REPEAT_S is the same stop; later, it aborts."""
    import os

    from napari_emdiffuse.cli_jobs import REPEAT_S, Interrupted, ctrl_c_cancels
    from napari_emdiffuse.jobs.events import new_cancel_token

    token = new_cancel_token()
    with ctrl_c_cancels(token) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # the handlers run
        assert token.is_set() and stop.signum == signal.SIGINT
        time.sleep(REPEAT_S)
        with pytest.raises(Interrupted):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)


def test_sigkill_leaves_only_a_temporary_marked_incomplete(setting, caplog, capsys):
    model, stack, results, before = setting
    out = results / "out.zarr"
    child = Child(predict_args(model, stack, out))
    child.wait_for(2 * STEPS + 4)  # into the second plane: the first is written and marked done
    assert child.finish(signal.SIGKILL) == -signal.SIGKILL
    assert not out.exists() and not (results / "out.partial.zarr").exists()
    temps = [p for p in results.iterdir() if p.name.startswith(f".out.zarr.tmp-{child.proc.pid}-")]
    assert len(temps) == 1 and zarr.open_group(str(temps[0]), mode="r").attrs["complete"] is False
    assert (results / "out.zarr.lock").exists()
    done = int(np.count_nonzero(zarr.open_array(str(temps[0] / ".blocks_done"), mode="r")[:]))
    assert done >= 1  # the first plane was finished: work a plain rerun must not throw away unasked
    capsys.readouterr()
    assert main(predict_args(model, stack, out)) == 2
    err = capsys.readouterr().err
    held = f"{done} finished block{'s' * (done != 1)}"
    assert f"a run that was killed left its store beside it: {temps[0].name} ({held}); add --resume to continue it" in err, err
    assert main(["info", str(temps[0])]) == 0
    assert f"complete: NO: {done} of {PLANES} blocks are finished" in capsys.readouterr().out  # as resume sees it
    assert temps[0].is_dir() and not out.exists()
    assert main([*predict_args(model, stack, out), "--overwrite"]) == 0  # asked: the dead process's lock and temporary are cleared
    assert "no longer running" in caplog.text and zarr.open_group(str(out), mode="r").attrs["complete"] is True
    assert sha(list(before)) == before and leftovers(results) == []


def test_cancelled_train_exits_130_after_its_checkpoint_and_a_second_train_refuses(setting, capsys):
    model, stack, results, before = setting
    run = results / "run"
    args = ["train", "--preset", "tiny", "--clean", str(stack), "--out", str(run), "--iterations", "100000", "--device", "cpu"]
    child = Child(args)
    child.wait_for(2)
    child.proc.send_signal(signal.SIGSTOP)
    capsys.readouterr()
    assert main([*args, "--overwrite"]) == 2
    assert f"in use by process {child.proc.pid}" in capsys.readouterr().err
    child.proc.send_signal(signal.SIGCONT)
    assert child.finish(signal.SIGINT) == 130, child.text
    from napari_emdiffuse.jobs.train import checkpoint_state

    assert checkpoint_state(run)["reason"] == "cancelled" and checkpoint_state(run)["step"] >= 2
    assert not (run / "train.lock").exists()
    assert sha(list(before)) == before
