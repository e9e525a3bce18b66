"""A block that fails for good (a CUDA out-of-memory, a disk error in one chunk) during
``emdiffuse predict --output OUT.zarr``: the finished blocks are kept, marked, for ``--resume``,
the exit status is not 0 and one line says what failed, what is kept and how to continue. A
TIFF output, written at the end, has nothing finished to keep: nothing is left behind."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from napari_emdiffuse.cli import main
from napari_emdiffuse.cli_jobs import Interrupted
from napari_emdiffuse.jobs import blocks as blocks_module
from napari_emdiffuse.jobs import predict_output

OOM = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.11 GiB")


def fail_after(monkeypatch: pytest.MonkeyPatch, finished: int, error: BaseException = OOM) -> None:
    """Blocks compute as usual until ``finished`` of them are done in this run; the next raises ``error``."""
    original = blocks_module.BlockRunner.run
    ran: list[int] = []

    def run(self, image, block, *args, **kwargs):
        if len(ran) == finished:
            raise error
        out = original(self, image, block, *args, **kwargs)
        ran.append(block.index)
        return out

    monkeypatch.setattr(blocks_module.BlockRunner, "run", run)


def error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def markers(store: Path) -> list[int]:
    return [int(v) for v in zarr.open_array(str(store / ".blocks_done"), mode="r")[:]]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".lock")


def test_a_failed_block_keeps_the_finished_ones_and_resume_completes_them(cli_args, tmp_path, monkeypatch, capsys, store_results, ran_blocks):
    out, partial = tmp_path / "o.zarr", tmp_path / "o.partial.zarr"
    assert main([*cli_args, "--output", str(tmp_path / "whole.zarr")]) == 0
    with monkeypatch.context() as m:
        fail_after(m, 2)
        capsys.readouterr()
        assert main([*cli_args, "--output", str(out)]) == 2
    err = error_line(capsys)
    assert f"block 3 of 4 (z 2:3 of 4) failed: 2 of 4 blocks are kept in {partial}; run it again and add --resume to continue" in err
    assert "The error: OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.11 GiB" in err
    assert err.endswith("; the GPU ran out of memory: resume with --device cpu (slower) or on a GPU with more memory; a smaller --tile-size starts the result afresh")
    assert not out.exists() and markers(partial) == [1, 1, 0, 0] and leftovers(tmp_path) == []
    assert zarr.open_group(str(partial), mode="r").attrs["complete"] is False

    with monkeypatch.context() as m:  # resumed, and failing again before a block is finished: still kept
        fail_after(m, 0, OSError(5, "Input/output error"))
        assert main([*cli_args, "--output", str(out), "--resume"]) == 2
    assert "block 3 of 4 (z 2:3 of 4) failed: 2 of 4 blocks are kept" in error_line(capsys)
    assert markers(partial) == [1, 1, 0, 0] and leftovers(tmp_path) == []

    ran_blocks.clear()
    assert main([*cli_args, "--output", str(out), "--resume"]) == 0
    assert sorted(ran_blocks) == [2, 3] and not partial.exists() and leftovers(tmp_path) == []
    a, b = store_results(tmp_path / "whole.zarr"), store_results(out)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_a_store_that_cannot_be_finished_after_a_failed_block_stays_under_its_temporary_name(cli_args, tmp_path, monkeypatch, capsys):
    """The same full disk that failed the block fails pooling the uncertainty: the finished blocks
    stay, under the hidden temporary name a killed run's do, and the message names it."""
    out = tmp_path / "o.zarr"
    with monkeypatch.context() as m:
        fail_after(m, 1, OSError(28, "No space left on device"))
        m.setattr(predict_output, "pool_uncertainty", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left on device")))
        assert main([*cli_args, "--output", str(out)]) == 2
    err = error_line(capsys)
    temps = list(tmp_path.glob(".o.zarr.tmp-*"))
    assert len(temps) == 1 and markers(temps[0]) == [1, 0, 0, 0]
    assert f"block 2 of 4 (z 1:2 of 4) failed: 1 of 4 blocks are kept in {temps[0]}; run it again and add --resume" in err
    assert main([*cli_args, "--output", str(out)]) == 2  # a plain rerun does not throw them away unasked
    assert f"a run that was killed left its store beside it: {temps[0].name} (1 finished block); add --resume" in error_line(capsys)
    assert main([*cli_args, "--output", str(out), "--resume"]) == 0
    assert zarr.open_group(str(out), mode="r").attrs["complete"] is True and leftovers(tmp_path) == []


@pytest.mark.parametrize("name, finished", [("o.zarr", 0), ("o.tif", 2)])
def test_with_nothing_finished_to_keep_nothing_is_left_behind(cli_args, tmp_path, monkeypatch, capsys, name, finished):
    """A store whose first block fails, and a TIFF (written at the end) whatever failed: the error
    as it is, and no file, temporary or partial result beside the input. A GPU out of memory is
    the user's to fix (exit status 2, what to lower; it was an "internal error", exit 1); an
    unexpected error stays one (exit 1)."""
    before = sorted(p.name for p in tmp_path.iterdir())
    with monkeypatch.context() as m:
        fail_after(m, finished)
        assert main([*cli_args, "--output", str(tmp_path / name)]) == 2
    assert error_line(capsys) == (
        "emdiffuse predict: error: the GPU ran out of memory: try a smaller --tile-size, or --device cpu "
        "(CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.11 GiB)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    with monkeypatch.context() as m:
        fail_after(m, finished, RuntimeError("a bug"))
        assert main([*cli_args, "--output", str(tmp_path / name)]) == 1
    assert error_line(capsys).startswith("emdiffuse predict: internal error: RuntimeError: a bug")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_cancel_before_the_first_block_leaves_nothing(small_stack, tmp_path, random_model, fast):
    """'nothing is written' is what the run says, and what it leaves."""
    from napari_emdiffuse.jobs.events import new_cancel_token
    from napari_emdiffuse.jobs.predict import predict

    token, said = new_cancel_token(), []
    for ev in predict(random_model("tiny"), small_stack, sample=fast, output=tmp_path / "o.zarr", cancel=token):
        if ev.kind.value == "progress":
            token.set()
        elif ev.kind.value == "message":
            said.append(ev.text)
    assert said[-1] == "cancelled: no block was finished, nothing is written"
    assert list(tmp_path.iterdir()) == []


def test_unreadable_markers_never_remove_a_store(cli_args, tmp_path, monkeypatch, capsys):
    """The disk error that fails a block, and finishing the store, makes its done-markers
    unreadable too: the resumed store is kept (its count unknown, said without a number), a plain
    rerun does not take it for an empty one, and --resume continues it once the disk is back."""
    out, partial = tmp_path / "o.zarr", tmp_path / "o.partial.zarr"
    with monkeypatch.context() as m:
        fail_after(m, 2, OSError(5, "Input/output error"))
        assert main([*cli_args, "--output", str(out)]) == 2
    assert markers(partial) == [1, 1, 0, 0]
    capsys.readouterr()
    real_open, broken = zarr.open_array, []

    def open_array(store, *args, **kwargs):
        if broken and str(store).endswith(".blocks_done"):
            raise OSError(5, "Input/output error")
        return real_open(store, *args, **kwargs)

    def run(*args, **kwargs):
        broken.append(True)
        raise OSError(5, "Input/output error")

    with monkeypatch.context() as m:
        m.setattr(blocks_module.BlockRunner, "run", run)
        m.setattr(zarr, "open_array", open_array)
        m.setattr(predict_output, "pool_uncertainty", lambda *a, **k: (_ for _ in ()).throw(OSError(5, "Input/output error")))
        assert main([*cli_args, "--output", str(out), "--resume"]) == 2
        (temp,) = tmp_path.glob(".o.zarr.tmp-*")
        assert f"block 3 of 4 (z 2:3 of 4) failed: its finished blocks are kept in {temp}; run it again and add --resume" in error_line(capsys)
        assert main([*cli_args, "--output", str(out)]) == 2
        assert f"left its store beside it: {temp.name} (finished blocks); add --resume" in error_line(capsys)
    assert markers(temp) == [1, 1, 0, 0]
    assert main([*cli_args, "--output", str(out), "--resume"]) == 0
    assert zarr.open_group(str(out), mode="r").attrs["complete"] is True and leftovers(tmp_path) == []


def test_a_setup_error_on_resume_is_said_as_it_is(cli_args, tmp_path, monkeypatch, capsys):
    """A misnamed cluster file on --resume is the user's own error, not a failed block: said as
    it is, the store back where it was, and its provenance claims no cluster part (this run
    computed nothing)."""
    out, partial = tmp_path / "o.zarr", tmp_path / "o.partial.zarr"
    with monkeypatch.context() as m:
        fail_after(m, 2, OSError(5, "Input/output error"))
        assert main([*cli_args, "--output", str(out)]) == 2
    compute = zarr.open_group(str(partial), mode="r").attrs["compute"]
    capsys.readouterr()
    nosuch = tmp_path / "nosuch.yaml"
    assert main([*cli_args, "--output", str(out), "--resume", "--cluster", str(nosuch)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"emdiffuse predict: error: --cluster {nosuch}: not local:N") and "failed" not in last
    assert markers(partial) == [1, 1, 0, 0] and leftovers(tmp_path) == []
    assert zarr.open_group(str(partial), mode="r").attrs["compute"] == compute


def test_a_second_ctrl_c_says_where_the_finished_blocks_are(cli_args, tmp_path, monkeypatch, capsys):
    """A second Ctrl-C mid-block aborts at once: the store stays under its hidden temporary name,
    and a warning names it and how to continue."""
    with monkeypatch.context() as m:
        fail_after(m, 2, Interrupted(signal.SIGINT))
        capsys.readouterr()
        assert main([*cli_args, "--output", str(tmp_path / "o.zarr")]) == 130
    (temp,) = tmp_path.glob(".o.zarr.tmp-*")
    assert f"warning: 2 finished blocks are kept in {temp}; run the same command again with --resume to continue them" in capsys.readouterr().err
    assert markers(temp) == [1, 1, 0, 0]


def test_only_a_block_cancelled_on_the_cluster_leads_the_failed_blocks_line(tmp_path):
    """block_failure says a block cancelled on the cluster in one sentence naming the block as any
    failed block is named (its z range too); any other cause, one of our own errors included, reads
    'BLOCK failed: ... The error: ...' (every BlockError led, and the block's name was lost)."""
    from napari_emdiffuse.errors import BlockCancelledOnCluster, BlockError

    store, what = tmp_path / "o.partial.zarr", "block 2 of 4 (z 1:2 of 4)"
    zarr.open_array(str(store / predict_output.DONE), mode="w", shape=(4,), dtype="u1")[0] = 1
    kept = f"1 of 4 blocks are kept in {store}; run it again and add --resume to continue"
    cancelled = predict_output.block_failure(BlockCancelledOnCluster("stimulus-1"), what, store, 4)
    assert str(cancelled) == f"{what} was cancelled on the dask cluster, not by this run (dask's reason: stimulus-1): {kept}"
    other = predict_output.block_failure(BlockError("a disk error"), what, store, 4)
    assert str(other) == f"{what} failed: {kept}. The error: BlockError: a disk error"
    assert cancelled.store == other.store == store
