"""A store resumed by a run that computes in another precision (bf16 or float32, which differ in
the last digits) is warned about only where this run computes a block of it, and the warning says
what the provenance records: both ways once a block of this run is done, only the earlier before."""

from __future__ import annotations

import zarr

from napari_emdiffuse.cli import main
from napari_emdiffuse.data import safe_output
from napari_emdiffuse.jobs.events import new_cancel_token
from napari_emdiffuse.jobs.predict import predict

BF16 = {"device": "cpu", "network": "bfloat16"}
MIXED = "the two differ in the last digits"


def test_a_resume_stopped_before_its_first_block_records_only_the_earlier_way(small_stack, tmp_path, random_model, fast, cancelled_early, monkeypatch):
    model, image = random_model("tiny"), small_stack
    monkeypatch.setenv("EMDIFFUSE_BF16", "1")
    partial = cancelled_early(model, image, tmp_path / "o.zarr")
    monkeypatch.setenv("EMDIFFUSE_BF16", "0")
    token, warned = new_cancel_token(), []
    for ev in predict(model, image, sample=fast, output=tmp_path / "o.zarr", resume=True, cancel=token):
        if ev.kind.value == "message" and MIXED in ev.text:
            warned.append(ev.text)
            token.set()  # before the first block of this run is done
        if ev.kind.value == "result":
            assert not ev.complete
    assert len(warned) == 1 and warned[0].endswith("once a block of this run is done, the provenance records both"), warned
    assert zarr.open_group(str(partial), mode="r").attrs["compute"] == BF16


def test_a_finished_store_put_in_place_in_another_precision_is_not_said_to_mix(cli_args, tmp_path, monkeypatch, capsys):
    """A pooled store left under its temporary name (the rename failed) is put in place by
    --resume without computing a block: nothing is mixed, and its provenance keeps its one way."""
    out = tmp_path / "o.zarr"
    monkeypatch.setenv("EMDIFFUSE_BF16", "1")
    with monkeypatch.context() as m:
        m.setattr(safe_output.StagedStore, "commit", lambda self, to=None: (_ for _ in ()).throw(OSError(28, "No space left on device")))
        assert main([*cli_args, "--output", str(out)]) == 2
    monkeypatch.setenv("EMDIFFUSE_BF16", "0")
    capsys.readouterr()
    assert main([*cli_args, "--output", str(out), "--resume"]) == 0
    assert MIXED not in capsys.readouterr().err
    assert zarr.open_group(str(out), mode="r").attrs["compute"] == BF16
