import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from napari_emdiffuse.config import load_preset
from napari_emdiffuse.errors import ModelFileError
from napari_emdiffuse.jobs.events import Kind, new_cancel_token
from napari_emdiffuse.jobs.train import CHECKPOINT, train
from napari_emdiffuse.model_file import Model
from napari_emdiffuse.variants.base import Roi, Split


def _run(gen):
    return list(gen)


def _tiny(**train):
    return load_preset("tiny", {"train": train})


@pytest.fixture(autouse=True)
def no_wall_clock_validations(monkeypatch):
    """Validations by the clock would make event counts depend on the machine's load."""
    monkeypatch.setattr("napari_emdiffuse.jobs.train.VALIDATE_SECONDS", float("inf"))


def test_events_checkpoint_and_model(tmp_path, isbi_pair):
    noisy, clean = isbi_pair
    events = _run(train(_tiny(iterations=12, val_every=6, checkpoint_every=6), {"input": noisy, "target": clean}, tmp_path))
    kinds = [e.kind for e in events]
    assert kinds.count(Kind.LOSS) == 12 and kinds.count(Kind.VALIDATION) == 2
    assert Kind.PREVIEW in kinds and kinds.count(Kind.CHECKPOINT) == 2
    assert events[-1].kind is Kind.RESULT and events[-1].steps == 12 and events[-1].reason == "finished"
    preview = next(e for e in events if e.kind is Kind.PREVIEW)
    assert preview.prediction.shape == preview.target.shape == (1, 32, 32)
    model = Model.load(tmp_path)
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["training"]["steps"] == 12 and "val_psnr" in meta["metrics"]
    assert model.variant == "denoise"
    assert all(np.isfinite(e.loss) for e in events if e.kind is Kind.LOSS)


def test_training_lowers_the_loss_on_real_em(tiny_model_dir, isbi_pair):
    """The trained EMA weights beat the initial weights on fixed validation patches and noise."""
    from napari_emdiffuse.engine.diffusion import DiffusionProcess
    from napari_emdiffuse.engine.network import UNet
    from napari_emdiffuse.variants import get_variant

    noisy, clean = isbi_pair
    trained = Model.load(tiny_model_dir)
    variant = get_variant("denoise")
    src = variant.training_pairs({"input": noisy, "target": clean}, variant.options({}), Split("val", 0.1, 32))
    cond, target = (torch.from_numpy(a) for a in src.sample(np.random.default_rng(5), 64, 32))
    proc = DiffusionProcess(trained.preset.diffusion)
    torch.manual_seed(trained.preset.train.seed)
    fresh = UNet(trained.preset.network)

    def loss(net):
        with torch.no_grad():
            return proc.loss(net, target, cond, generator=torch.Generator().manual_seed(3)).item()

    assert loss(trained.network) < 0.8 * loss(fresh)


def test_time_budget_and_cancel(tmp_path, isbi_pair):
    noisy, clean = isbi_pair
    ev = _run(train(_tiny(iterations=100000, minutes=0.02, checkpoint_every=100000, val_every=100000), {"input": noisy, "target": clean}, tmp_path / "a"))
    assert ev[-1].reason == "time budget" and 0 < ev[-1].steps < 100000
    assert (tmp_path / "a" / "model.json").is_file()

    token = new_cancel_token()
    results = []
    for e in train(_tiny(iterations=100000, checkpoint_every=100000, val_every=100000), {"input": noisy, "target": clean}, tmp_path / "b", cancel=token):
        if e.kind is Kind.LOSS and e.step == 5:
            token.set()
        results.append(e)
    assert results[-1].reason == "cancelled" and results[-1].steps == 5
    assert Model.load(tmp_path / "b").info.training["stopped"] == "cancelled"


def test_a_time_limit_keeps_room_for_the_final_validation_and_calibration(tmp_path, isbi_pair, monkeypatch):
    """The limit covers the whole job: the probe that sizes the wrap-up changes no weight, and a
    wrap-up longer than half the limit leaves training half of it, and says so."""
    noisy, clean = isbi_pair
    arrays = {"input": noisy, "target": clean}
    plain = _run(train(_tiny(iterations=3), arrays, tmp_path / "plain"))
    timed = _run(train(_tiny(iterations=3, minutes=60), arrays, tmp_path / "timed"))
    note = [e.text for e in timed if e.kind is Kind.MESSAGE and "time limit includes" in e.text]
    assert len(note) == 1 and "training stops after about" in note[0]
    assert not any(e.kind is Kind.MESSAGE and "time limit" in e.text for e in plain)
    a, b = (load_file(str(tmp_path / d / "weights.safetensors")) for d in ("plain", "timed"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # same weights: the probe is outside training's draws

    monkeypatch.setattr("napari_emdiffuse.jobs.train.wrap_up_seconds", lambda *a: 1e9)
    short = _run(train(_tiny(iterations=100000, minutes=0.01, checkpoint_every=100000, val_every=100000), arrays, tmp_path / "short"))
    assert short[-1].reason == "time budget" and short[-1].steps >= 1
    assert any(e.kind is Kind.MESSAGE and e.level == "warning" and "training stops after 0 s" in e.text for e in short)


def test_a_time_limit_shortens_the_calibration_it_has_no_room_for(tmp_path, isbi_pair, monkeypatch):
    """`train --minutes 2` ran for about 4-8 minutes: the calibration's draws took longer than
    the limit (the CLI walk of 2026-12-08). Under a limit the calibration now stops after the pass
    that crosses it, on at least MIN_CAL_PATCHES patches, and says so; without one it uses all."""
    from napari_emdiffuse.jobs import train as train_job

    noisy, clean = isbi_pair
    arrays = {"input": noisy, "target": clean}
    monkeypatch.setattr(train_job, "wrap_up_seconds", lambda *a: 1e9)  # far more than the limit
    short = _run(train(_tiny(iterations=100000, minutes=0.005, checkpoint_every=100000, val_every=100000, cal_patches=32), arrays, tmp_path / "short"))
    assert short[-1].reason == "time budget"
    said = [e.text for e in short if e.kind is Kind.MESSAGE and "limit is reached" in e.text]
    assert said == [f"the time limit is reached: the uncertainty is calibrated on {train_job.MIN_CAL_PATCHES} of the 32 held-out patches"]
    cal = Model.load(tmp_path / "short").info.metrics["calibration"]
    assert cal["patches"] + cal["check_patches"] == train_job.MIN_CAL_PATCHES
    bars = [(e.done, e.total) for e in short if e.kind is Kind.PROGRESS and e.what == "calibrating the uncertainty"]
    assert bars == [(0, 32), (train_job.CAL_CHUNK, 32)] and all(e.unit == "patch" for e in short if e.kind is Kind.PROGRESS and e.what.startswith("calib"))

    # resumed without a limit, a run calibrated on part of its patches is calibrated on all of them
    steps = short[-1].steps
    again = _run(train(_tiny(iterations=steps, cal_patches=32), arrays, tmp_path / "short", resume=True))
    assert again[-1].reason == "finished" and again[-1].steps == steps
    cal = Model.load(tmp_path / "short").info.metrics["calibration"]
    assert (cal["patches"], cal["check_patches"]) == (16, 16)

    full = _run(train(_tiny(iterations=2, cal_patches=32), arrays, tmp_path / "full"))
    assert not any(e.kind is Kind.MESSAGE and "limit is reached" in e.text for e in full)
    cal = Model.load(tmp_path / "full").info.metrics["calibration"]
    assert (cal["patches"], cal["check_patches"]) == (16, 16)


def test_resuming_a_finished_run_says_there_is_nothing_to_train_and_changes_nothing(tmp_path, isbi_pair):
    """Resumed at or past its steps, a run validated and calibrated there ran the whole wrap-up
    again (minutes) and said "model saved ... (finished)" (the CLI walk of 2026-12-08). It now says
    there is nothing left to train and leaves the run as it is; a run whose wrap-up a kill cut
    short (the checkpoint comes first) still gets it."""
    import json

    noisy, clean = isbi_pair
    arrays = {"input": noisy, "target": clean}
    _run(train(_tiny(iterations=2), arrays, tmp_path))
    before = {f.name: f.read_bytes() for f in tmp_path.iterdir() if f.is_file()}
    for asked in (2, 1):
        again = _run(train(_tiny(iterations=asked), arrays, tmp_path, resume=True))
        assert [e.kind for e in again] == [Kind.MESSAGE, Kind.RESULT]
        assert again[0].text.startswith(f"nothing left to train: the run in {tmp_path} has trained 2 steps (asked: {asked})")
        assert again[-1].reason == "nothing left to train" and again[-1].steps == 2 and again[-1].best_psnr is not None
        assert {f.name: f.read_bytes() for f in tmp_path.iterdir() if f.is_file()} == before

    assert again[0].text.endswith("was validated and calibrated then; ask for more steps to train it further")
    single = tmp_path / "single"  # a model that draws one sample has no calibration to wait for
    one = load_preset("tiny", {"train": {"iterations": 2}, "sample": {"samples": 1}})
    _run(train(one, arrays, single))
    again = _run(train(one, arrays, single, resume=True))
    assert again[-1].reason == "nothing left to train" and again[0].text.endswith("was validated then; ask for more steps to train it further")

    meta = json.loads((tmp_path / "model.json").read_text())  # as a kill during the wrap-up leaves it
    del meta["metrics"]["calibration"]
    (tmp_path / "model.json").write_text(json.dumps(meta))
    wrapped = _run(train(_tiny(iterations=2), arrays, tmp_path, resume=True))
    assert Kind.VALIDATION in [e.kind for e in wrapped] and wrapped[-1].reason == "finished"
    assert "calibration" in Model.load(tmp_path).info.metrics


def test_a_stopped_run_saves_its_state_before_the_wrap_up(tmp_path, isbi_pair):
    """A second Ctrl-C or a kill during the final validation and calibration (a minute; a
    cluster's grace period after SIGTERM is often 30 s) lost the run: the checkpoint came after
    them (the CLI walk of 2026-12-07). It now comes first, and the model is saved again with
    its validation."""
    noisy, clean = isbi_pair
    token = new_cancel_token()
    events = []
    for e in train(_tiny(iterations=100000, checkpoint_every=100000, val_every=100000), {"input": noisy, "target": clean}, tmp_path, cancel=token):
        if e.kind is Kind.LOSS and e.step == 3:
            token.set()
        events.append(e)
    kinds = [e.kind for e in events]
    assert kinds.index(Kind.CHECKPOINT) < kinds.index(Kind.VALIDATION)
    assert load_file(str(tmp_path / CHECKPOINT))  # on disk before the wrap-up began
    assert Model.load(tmp_path).info.metrics["val_step"] == 3  # and the model carries its validation


def test_roi_restricts_training_data(tmp_path, isbi_pair):
    noisy, clean = isbi_pair
    ev = _run(train(_tiny(iterations=2), {"input": noisy, "target": clean}, tmp_path, roi=Roi(100, 200, 300, 420)))
    meta = Model.load(tmp_path).info.training
    # the split lives inside the 100 x 120 region: train rows + validation rows = its height
    assert meta["train_region"]["cols"] == [0, 120]
    assert meta["train_region"]["rows"][0] == 0 and meta["val_region"]["rows"][1] == 100
    with pytest.raises(Exception, match="outside"):
        _run(train(_tiny(iterations=2), {"input": noisy, "target": clean}, tmp_path / "x", roi=Roi(600, 700, 0, 10)))
    assert ev[-1].steps == 2


def test_fine_tune_starts_from_the_model(tmp_path, isbi_pair, tiny_model_dir):
    noisy, clean = isbi_pair
    base = Model.load(tiny_model_dir)
    preset = load_preset("tiny", {"train": {"iterations": 1, "lr": 1e-12}})
    _run(train(preset, {"input": noisy, "target": clean}, tmp_path, init_model=base))
    tuned = Model.load(tmp_path)
    for (k, a), b in zip(base.network.state_dict().items(), tuned.network.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), k
    assert "fine_tuned_from" in tuned.info.training


_KILLED_RUN = """
import sys, numpy as np
from napari_emdiffuse.config import load_preset
from napari_emdiffuse.jobs.train import train
d = np.load(sys.argv[1])
p = load_preset("tiny", {"train": {"iterations": 100000, "checkpoint_every": 10, "val_every": 100000}})
for _ in train(p, {"input": d["noisy"], "target": d["clean"]}, sys.argv[2], device="cpu"):
    pass
"""


@pytest.mark.slow
def test_sigkill_and_resume_gives_the_same_weights(tmp_path, isbi_pair):
    noisy, clean = isbi_pair
    data = tmp_path / "data.npz"
    np.savez(data, noisy=noisy[:2, :128, :128], clean=clean[:2, :128, :128])
    arrays = {"input": noisy[:2, :128, :128], "target": clean[:2, :128, :128]}
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, str(data), str(run)], env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    deadline = time.monotonic() + 120
    while not (run / CHECKPOINT).exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the training subprocess ended early"
        time.sleep(0.05)
    time.sleep(0.3)  # let it run past the checkpoint, into the middle of later steps
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step_at_kill = json.loads(load_file_metadata(run / CHECKPOINT)["state"])["step"]
    assert step_at_kill % 10 == 0 and step_at_kill < 40

    preset = load_preset("tiny", {"train": {"iterations": 40, "checkpoint_every": 10, "val_every": 100000}})
    resumed = _run(train(preset, arrays, run, device="cpu", resume=True))
    assert resumed[0].text.startswith(f"resumed at step {step_at_kill}")
    _run(train(preset, arrays, tmp_path / "straight", device="cpu"))
    a = load_file(str(run / "weights.safetensors"))
    b = load_file(str(tmp_path / "straight" / "weights.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def load_file_metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def test_interrupted_checkpoint_write_keeps_the_last_good_one(tmp_path, isbi_pair, monkeypatch):
    noisy, clean = isbi_pair
    arrays = {"input": noisy, "target": clean}
    _run(train(_tiny(iterations=4, checkpoint_every=2, val_every=100), arrays, tmp_path))
    before = (tmp_path / CHECKPOINT).read_bytes()

    import napari_emdiffuse.model_file as mf

    def dying_save(tensors, path, metadata=None):
        Path(path).write_bytes(b"half a file")
        raise KeyboardInterrupt  # the process dies mid-write

    monkeypatch.setattr(mf, "save_file", dying_save)
    with pytest.raises(KeyboardInterrupt):
        _run(train(_tiny(iterations=8, checkpoint_every=2, val_every=100), arrays, tmp_path, resume=True))
    assert (tmp_path / CHECKPOINT).read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind
    monkeypatch.undo()
    ev = _run(train(_tiny(iterations=6, checkpoint_every=2, val_every=100), arrays, tmp_path, resume=True))
    assert ev[-1].steps == 6


def test_resume_without_checkpoint_and_bad_inputs(tmp_path, isbi_pair):
    noisy, clean = isbi_pair
    with pytest.raises(ModelFileError, match="nothing to resume"):
        _run(train(_tiny(), {"input": noisy, "target": clean}, tmp_path, resume=True))
    with pytest.raises(ValueError, match="missing target"):
        _run(train(_tiny(), {"input": noisy}, tmp_path))
    with pytest.raises(ValueError, match="differ in shape"):
        _run(train(_tiny(), {"input": noisy[:, :100], "target": clean}, tmp_path))
    bad = noisy.copy()
    bad[0, 5, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        _run(train(_tiny(), {"input": bad, "target": clean}, tmp_path))
    with pytest.raises(ValueError, match="constant"):
        _run(train(_tiny(), {"input": np.zeros_like(noisy), "target": clean}, tmp_path))
    with pytest.raises(ValueError, match="dimensions"):
        _run(train(_tiny(), {"input": noisy[0, 0], "target": clean[0, 0]}, tmp_path))


def test_a_resumed_run_gets_its_time_budget_again(tmp_path, isbi_pair):
    noisy, clean = isbi_pair
    arrays = {"input": noisy, "target": clean}
    first = _run(train(_tiny(iterations=100000, minutes=0.01, checkpoint_every=100000, val_every=100000), arrays, tmp_path))
    again = _run(train(_tiny(iterations=100000, minutes=0.01, checkpoint_every=100000, val_every=100000), arrays, tmp_path, resume=True))
    assert again[-1].reason == "time budget" and again[-1].steps > first[-1].steps


def test_model_files_are_readable_by_others(tmp_path, tiny_model_dir):
    import stat

    for f in tiny_model_dir.iterdir():
        assert f.stat().st_mode & stat.S_IRGRP, f


def test_ema_decay_ramps_up_over_ema_warmup_steps():
    from napari_emdiffuse.jobs.train import ema_decay

    preset = load_preset("tiny", {"train": {"ema_decay": 0.99, "ema_warmup": 100}})
    assert ema_decay(preset, 0) == pytest.approx(0.0099)
    assert ema_decay(preset, 49) == pytest.approx(0.495)
    assert ema_decay(preset, 99) == ema_decay(preset, 5000) == pytest.approx(0.99)
    assert ema_decay(load_preset("tiny", {"train": {"ema_decay": 0.99, "ema_warmup": 0}}), 0) == 0.99


def test_cosine_learning_rate_decays_to_a_tenth_at_the_last_iteration():
    from napari_emdiffuse.jobs.train import learning_rate

    preset = load_preset("tiny", {"train": {"lr": 1e-3, "iterations": 1000, "lr_schedule": "cosine"}})
    assert learning_rate(preset, 0) == pytest.approx(1e-5, rel=0.1)  # warm-up
    assert learning_rate(preset, 500) == pytest.approx(0.55e-3, rel=1e-3)
    assert learning_rate(preset, 1000) == pytest.approx(1e-4)
    assert learning_rate(load_preset("tiny", {"train": {"lr": 1e-3}}), 900) == pytest.approx(1e-3)



def test_every_run_ends_validated_calibrated_and_no_worse_than_its_input(tmp_path, isbi_pair):
    """A few steps, far fewer than val_every: the run still ends with a validation against the
    baseline, written to model.json with a conformal calibration, and the model's best estimate
    on held-back slices is not worse than the noisy input (the EDM parameterisation)."""
    from napari_emdiffuse import metrics
    from napari_emdiffuse.jobs.predict import run_predict

    noisy, clean = isbi_pair
    events = _run(train(_tiny(iterations=8, val_every=1000, cal_patches=6), {"input": noisy[:3], "target": clean[:3]}, tmp_path, device="cpu"))
    validations = [e for e in events if e.kind is Kind.VALIDATION]
    assert len(validations) == 1 and validations[0].step == 8 and validations[0].baseline == "noisy input"
    m = json.loads((tmp_path / "model.json").read_text())["metrics"]
    assert m["val_step"] == 8 and m["val_baseline"] == "noisy input"
    assert m["val_psnr"] >= m["val_baseline_psnr"]
    cal = m["calibration"]
    assert cal["alpha"] == 0.1 and len(cal["q"]) == len(cal["alphas"]) and cal["q"] == sorted(cal["q"], reverse=True)
    assert 0.5 < cal["check_coverage"] <= 1.0
    assert (cal["patches"], cal["check_patches"]) == (3, 3)  # train.cal_patches, split in halves
    model = Model.load(tmp_path)
    image = noisy[3, :128, :128]
    best = run_predict(model, image, device="cpu").mean
    assert metrics.psnr(best, clean[3, :128, :128], 1.0) >= metrics.psnr(image, clean[3, :128, :128], 1.0)


def test_a_cancelled_run_is_validated_too_and_validations_follow_the_clock(tmp_path, isbi_pair, monkeypatch):
    noisy, clean = isbi_pair
    monkeypatch.setattr("napari_emdiffuse.jobs.train.VALIDATE_SECONDS", 0.0)
    token = new_cancel_token()
    events = []
    for ev in train(_tiny(iterations=50, val_every=1000), {"input": noisy[:2], "target": clean[:2]}, tmp_path, cancel=token):
        events.append(ev)
        if ev.kind is Kind.LOSS and ev.step == 3:
            token.set()
    steps = [e.step for e in events if e.kind is Kind.VALIDATION]
    assert steps == [1, 2, 3, 3]  # by the clock after every step, then the final one
    assert events[-1].reason == "cancelled"
    assert json.loads((tmp_path / "model.json").read_text())["metrics"]["val_step"] == 3
