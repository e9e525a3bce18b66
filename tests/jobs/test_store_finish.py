"""The last steps of a zarr prediction: pooling the uncertainty, renaming the store into place and
removing the samples' raw spread (``.spread``, needed only to resume). The spread is removed only
once the complete store is in place, so a store that stops anywhere on the way resumes to the
same result as an uninterrupted run's, and a removal that stops half way leaves a complete result."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_emdiffuse._reader import read_paths
from napari_emdiffuse.cli import main
from napari_emdiffuse.data import safe_output
from napari_emdiffuse.jobs import predict_output


@pytest.fixture
def whole(cli_args, tmp_path, store_results) -> dict[str, np.ndarray]:
    """An uninterrupted run's results, to compare against."""
    assert main([*cli_args, "--output", str(tmp_path / "whole.zarr")]) == 0
    return store_results(tmp_path / "whole.zarr")


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def remove_half(folder: Path) -> None:
    """Half of an array's chunk files gone, as a removal stopped half way leaves it."""
    chunks = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "zarr.json")
    assert len(chunks) >= 2
    for p in chunks[: len(chunks) // 2]:
        p.unlink()


def test_a_spread_removal_that_stops_half_way_leaves_a_complete_result(cli_args, tmp_path, monkeypatch, capsys, whole, store_results):
    """EBUSY on NFS half way through removing the spread: the result is complete and in place
    (exit 0, a warning that the leftover can be deleted); the reader and info read it as a
    complete result, and --overwrite replaces it."""
    out = tmp_path / "o.zarr"

    def stops_half_way(path, *args, **kwargs):
        remove_half(Path(path))
        raise OSError(16, "Device or resource busy")

    with monkeypatch.context() as m:
        m.setattr(predict_output.shutil, "rmtree", stops_half_way)
        capsys.readouterr()
        assert main([*cli_args, "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"warning: {out / '.spread'}: the samples' raw spread, needed only to resume, could not be removed" in err
    assert zarr.open_group(str(out), mode="r").attrs["complete"] is True
    assert_same(whole, store_results(out))

    assert len(read_paths(str(out))) == len(read_paths(str(tmp_path / "whole.zarr")))  # the reader offers no leftover
    assert main(["info", str(out)]) == 0
    said = capsys.readouterr().out
    assert "complete: yes" in said and ".spread" not in said
    assert main([*cli_args, "--output", str(out), "--overwrite"]) == 0
    assert not (out / ".spread").exists()
    assert_same(whole, store_results(out))


@pytest.mark.parametrize("spread_left", ["all", "half", "none"])
def test_a_pooled_store_whose_rename_failed_resumes_as_it_is(cli_args, tmp_path, monkeypatch, capsys, whole, store_results, ran_blocks, spread_left):
    """The rename into place fails (ENOSPC) after pooling: the store stays under its hidden
    temporary name, a warning names it, and --resume renames it into place without pooling again:
    its spread, whole here, may be half removed or gone in a store an earlier version left (it
    removed the spread before the rename), and its missing chunks would read as 0 uncertainty."""
    out = tmp_path / "o.zarr"
    with monkeypatch.context() as m:
        m.setattr(safe_output.StagedStore, "commit", lambda self, to=None: (_ for _ in ()).throw(OSError(28, "No space left on device")))
        capsys.readouterr()
        assert main([*cli_args, "--output", str(out)]) == 2
    (temp,) = tmp_path.glob(".o.zarr.tmp-*")
    err = capsys.readouterr().err
    assert f"warning: 4 finished blocks are kept in {temp}; run the same command again with --resume" in err
    assert err.strip().endswith("error: [Errno 28] No space left on device")
    if spread_left == "half":
        remove_half(temp / ".spread")
    elif spread_left == "none":
        shutil.rmtree(temp / ".spread")

    ran_blocks.clear()
    assert main([*cli_args, "--output", str(out), "--resume"]) == 0
    assert ran_blocks == [] and not temp.exists() and not (out / ".spread").exists()
    assert zarr.open_group(str(out), mode="r").attrs["complete"] is True
    assert_same(whole, store_results(out))


def test_a_pooled_store_resumed_at_another_alpha_says_it_keeps_its_interval(tmp_path, monkeypatch, capsys, predict_cli, calibrated_model):
    """A finished (pooled) store is put in place as it is: its lower/upper stay at the coverage
    it was pooled at, and a resume asking for another --alpha is told so, not silently ignored."""
    args = [*predict_cli(calibrated_model), "--output", str(tmp_path / "o.zarr")]
    with monkeypatch.context() as m:
        m.setattr(safe_output.StagedStore, "commit", lambda self, to=None: (_ for _ in ()).throw(OSError(28, "No space left on device")))
        assert main([*args, "-q"]) == 2
    capsys.readouterr()
    assert main([*args, "--resume", "--alpha", "0.3"]) == 0
    assert "was finished already, its lower/upper at 90 % coverage: it is put in place as it is, not at this run's 70 %" in capsys.readouterr().err
    assert zarr.open_group(str(tmp_path / "o.zarr"), mode="r").attrs["bounds"]["coverage"] == pytest.approx(0.9)
