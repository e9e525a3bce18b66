"""Jobs run in worker threads: the Qt event loop keeps running while they are busy, and Cancel
stops them within a few seconds and leaves the viewer usable."""

from __future__ import annotations

import time

import numpy as np
import pytest
from qtpy.QtCore import QTimer

from napari_emdiffuse._widgets import _common
from napari_emdiffuse._widgets.registry import MODELS


@pytest.fixture
def threaded(monkeypatch):
    monkeypatch.setattr(_common, "SYNCHRONOUS", False)


class Ticker:
    """Counts QTimer ticks: they only happen while the Qt event loop runs."""

    def __init__(self) -> None:
        self.ticks = 0
        self.timer = QTimer()
        self.timer.timeout.connect(self._tick)
        self.timer.start(20)

    def _tick(self) -> None:
        self.ticks += 1


def _cancel_and_time(qtbot, widget) -> float:
    start = time.monotonic()
    widget.controls.cancel_button.click()
    qtbot.waitUntil(lambda: not widget.controls.runner.running, timeout=20_000)
    return time.monotonic() - start


def test_enhance_keeps_the_viewer_responsive_and_cancels(make_napari_viewer, qtbot, threaded, isbi, voxel, tiny_model):
    viewer = make_napari_viewer()
    viewer.add_image(isbi, name="em", scale=voxel)
    MODELS.add(tiny_model, "trained")
    _, w = viewer.window.add_plugin_dock_widget("napari-emdiffuse", "Enhance")
    w.scope.setCurrentIndex(w.scope.findData("whole"))
    w.steps.setValue(500)  # far longer than the test waits
    w.samples.setValue(4)
    w.device.setCurrentText("cpu")
    ticker = Ticker()
    w.controls.run_button.click()
    assert w.controls.runner.running and not w.controls.run_button.isEnabled()
    qtbot.waitUntil(lambda: w.controls.progress.value() >= 2, timeout=30_000)  # sampling has started
    ticks, progress = ticker.ticks, w.controls.progress.value()
    qtbot.wait(1000)
    assert w.controls.runner.running  # still busy with the job...
    assert ticker.ticks - ticks >= 10  # ...yet the event loop ran (about 50 ticks a second when idle)
    assert w.controls.progress.value() > progress  # and progress reached the bar while it did
    assert _cancel_and_time(qtbot, w) < 5.0
    assert "Cancelled" in w.controls.status.text()
    # only what was finished is added (here: usually nothing yet), marked partial; the input is untouched
    assert [lyr.name for lyr in viewer.layers][0] == "em"
    assert all("(partial)" in lyr.name and lyr.data.shape[0] < 6 for lyr in w.result_layers)
    # the viewer and the widget are usable again
    w.steps.setValue(1)
    w.scope.setCurrentIndex(w.scope.findData("slice"))
    w.controls.run_button.click()
    qtbot.waitUntil(lambda: not w.controls.runner.running, timeout=30_000)
    assert len(w.result_layers) == 2


def test_training_keeps_the_viewer_responsive_and_cancels_keeping_the_model(make_napari_viewer, qtbot, threaded, isbi, voxel):
    viewer = make_napari_viewer()
    viewer.add_image(isbi, name="clean", scale=voxel)
    _, w = viewer.window.add_plugin_dock_widget("napari-emdiffuse", "Train / fine-tune")
    w.source.setCurrentIndex(w.source.findData("simulate"))
    w.select_start("preset: tiny")
    w.iterations.setValue(100_000)
    w.device.setCurrentText("cpu")
    ticker = Ticker()
    w.controls.run_button.click()
    qtbot.waitUntil(lambda: len(w.plot.steps) >= 2, timeout=60_000)
    ticks, steps = ticker.ticks, len(w.plot.steps)
    qtbot.wait(1000)
    assert w.controls.runner.running and ticker.ticks - ticks >= 10
    assert len(w.plot.steps) >= steps  # the loss curve grows while training runs
    assert _cancel_and_time(qtbot, w) < 5.0
    assert "Cancelled" in w.controls.status.text() and w.last_model is not None  # the model so far is kept
    assert any(e.path == w.last_model.resolve() for e in MODELS.entries())
    assert np.isfinite(w.plot.losses).all()


def test_job_controls_show_progress_and_messages_and_hand_on_the_rest(qtbot, notes):
    """The controls ``match`` on the event types: progress moves the bar, a message becomes a
    notification, every other event (a result) reaches the widget."""
    from pathlib import Path

    from napari_emdiffuse.jobs.events import Message, Progress, TrainResult

    seen = []
    controls = _common.JobControls("Run", "%p%", "cancelling", lambda: None, seen.append)
    qtbot.addWidget(controls)
    result = TrainResult(Path("run"), 3, "finished", None)
    for event in (Progress(2, 4, "training"), Message("careful, add --overwrite", "warning"), result):
        controls._event(event)
    assert (controls.progress.value(), controls.progress.maximum()) == (2, 4)
    assert notes.messages("warning")[-1] == "Careful, tick 'Overwrite'"  # in the widgets' words, as errors are
    assert seen == [result]



def test_job_controls_follow_a_later_phase_under_its_name_within_the_time_limit(qtbot, monkeypatch):
    """Training then calibration: the bar counts the calibration's draws under that name (not
    "step 2 / 4" after 73 training steps), and the time left never exceeds the job's limit."""
    from types import SimpleNamespace

    from napari_emdiffuse.jobs.events import Progress

    clock = [100.0]
    monkeypatch.setattr(_common, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    controls = _common.JobControls("Train", "step %v / %m", "cancelling", lambda: None, lambda e: None)
    qtbot.addWidget(controls)
    controls.runner.start = lambda make_job: None  # no job: events are fed by hand
    controls.start(lambda cancel: iter(()), "training", limit_s=60.0)
    clock[0] = 110.0
    controls._event(Progress(10, 1000, "training"))  # at this pace 990 s more, but the limit is 50 s away
    assert controls.progress.format() == "step %v / %m" and controls.status.text() == "Training… about 50 s left"
    clock[0] = 130.0
    controls._event(Progress(0, 4, "calibrating the uncertainty"))
    clock[0] = 135.0
    controls._event(Progress(1, 4, "calibrating the uncertainty"))  # its own pace: 5 s a draw
    assert controls.progress.format() == "calibrating the uncertainty: %v / %m"
    assert (controls.progress.value(), controls.progress.maximum()) == (1, 4)
    assert controls.status.text() == "Calibrating the uncertainty… about 15 s left"
    clock[0] = 170.0  # past the limit (a wrap-up longer than planned): the pace, not "0 s left"
    controls._event(Progress(2, 4, "calibrating the uncertainty"))
    assert controls.status.text() == "Calibrating the uncertainty… about 40 s left"
    controls.start(lambda cancel: iter(()), "again")
    assert controls.progress.format() == "step %v / %m"  # a new job starts with its own name
