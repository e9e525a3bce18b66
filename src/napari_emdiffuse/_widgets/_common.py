"""Running a job from a widget, and telling the user what went wrong in words they can act on.

A job (``jobs.train.train`` or ``jobs.predict.predict``) is a generator of events. :class:`JobRunner`
runs it in a napari worker thread and hands every event to the widget in the GUI thread, so the
viewer stays responsive; a failure inside the job comes back as an event too (never as a raw
traceback dialog), and is shown as a notification by :func:`notify_error`. :class:`JobControls`
is the Run / Cancel / progress / status strip the Enhance and Train widgets share.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from ..errors import EMDiffuseError
from ..jobs.events import Event, Message, Progress

log = logging.getLogger(__name__)

#: Run jobs in the calling (GUI) thread instead of a worker thread: makes widget tests
#: deterministic (stardist-napari and empanada-napari offer the same switch).
SYNCHRONOUS = False


@dataclass(frozen=True)
class Failed:
    """A job's exception, carried to the GUI thread as its last event."""

    error: BaseException


def _guarded(make_job: Callable[[Any], Iterator[Any]], cancel: Any) -> Iterator[Any]:
    try:
        yield from make_job(cancel)
    except GeneratorExit:  # the worker closed the generator: nothing may be yielded now
        raise
    except BaseException as err:  # noqa: BLE001 - every failure is reported to the user
        yield Failed(err)


class JobRunner:
    """One job at a time for one widget: start, cancel, and events delivered in the GUI thread.

    ``on_event(event)`` receives each job event; ``on_done(error)`` is called once at the end,
    with the job's exception or None (also after a cancel, which the jobs report as events).
    """

    def __init__(self, on_event: Callable[[Event], None], on_done: Callable[[BaseException | None], None]) -> None:
        self._on_event, self._on_done = on_event, on_done
        self._worker: Any = None
        self._cancel: Any = None
        self._error: BaseException | None = None
        self._running = False

    @property
    def running(self) -> bool:
        return self._running

    def start(self, make_job: Callable[[Any], Iterator[Any]]) -> None:
        """Run ``make_job(cancel_token)`` (a generator of events) in a worker thread."""
        from ..jobs.events import new_cancel_token

        if self._running:
            raise EMDiffuseError("a job is already running in this widget; cancel it or wait for it to finish")
        self._cancel, self._error, self._running = new_cancel_token(), None, True
        if SYNCHRONOUS:
            for event in _guarded(make_job, self._cancel):
                self._dispatch(event)
            self._finish()
            return
        from napari.qt.threading import create_worker

        worker = create_worker(_guarded, make_job, self._cancel, _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(self._dispatch)
        worker.finished.connect(self._finish)
        self._worker = worker
        worker.start()

    def cancel(self) -> None:
        """Ask the job to stop at its next step (the jobs check the token at every step)."""
        if self._cancel is not None:
            self._cancel.set()

    def _dispatch(self, event: Any) -> None:
        if isinstance(event, Failed):
            self._error = event.error
            return
        if self._error is not None:
            return
        try:
            self._on_event(event)
        except Exception as err:  # noqa: BLE001 - a GUI-side failure stops the job, and is reported
            self._error = err
            self.cancel()

    def _finish(self) -> None:
        self._worker = None
        self._running = False
        try:
            self._on_done(self._error)
        except RuntimeError:  # the widget was closed (deleted) while its job was stopping
            log.debug("job finished after its widget was closed")


def is_out_of_memory(err: BaseException) -> bool:
    from ..engine.device import is_out_of_memory as device_oom  # torch only when a job has failed

    return device_oom(err)


def user_message(err: BaseException, tile_size: int | None = None, names: Mapping[str, str] | None = None) -> str:
    """What went wrong, for a biologist: the message of a user error, a hint for memory trouble
    (``names``: the panel's labels of the preset keys it names, see :func:`plain_words`)."""
    if isinstance(err, EMDiffuseError):
        text = plain_words(str(err), names)
        if err.__cause__ is not None and is_out_of_memory(err.__cause__):  # a block failed for want of GPU memory, others kept
            text += (
                " The GPU ran out of memory: resume on the CPU (slower) or on a GPU with more memory; a smaller "
                "tile size starts the result afresh."
            )
        return text
    if is_out_of_memory(err):
        now = f" (now {tile_size} px)" if tile_size else ""
        # the tile batch is halved by itself down to one tile before this is raised (engine.tiling):
        # only a smaller tile, or another device, helps now
        return f"The GPU ran out of memory even for one tile at a time. Reduce the tile size{now}, or run on the CPU."
    if isinstance(err, MemoryError):
        return (
            "Not enough memory (RAM) for this. Enhance the current slice or a rectangle first, or "
            "choose a zarr file for the result so it is written tile by tile."
        )
    if isinstance(err, ValueError):  # the jobs and pydantic raise ValueError with readable messages
        return plain_words(str(err).splitlines()[0], names)
    return "Something went wrong that napari-emdiffuse did not expect. Details are in the terminal; please report them."


#: The settings' keys as the Enhance and Train panels label them, for messages about a bad setting.
SETTING_NAMES = {
    "sample.sampler": "Sampler",
    "sample.steps": "Steps",
    "sample.samples": "Samples",
    "sample.tile_size": "Tile size",
    "sample.overlap": "Overlap",
    "sample.tile_batch": "Tile batch",
    "sample.seed": "Seed",
    "train.iterations": "Steps",
    "train.minutes": "Time limit",
}


def plain_words(message: str, names: Mapping[str, str] | None = None) -> str:
    """A message from the core, as the widgets say it: a setting by its label, not its preset key.

    The core's messages name preset keys and flags (the command line and JSON files use them);
    in a widget the user sees labels and tick boxes, so "sample.overlap: ..." reads
    "Overlap: ..." and "add --overwrite" "tick 'Overwrite'". ``names`` maps keys to the panel's
    labels (default :data:`SETTING_NAMES`; the Presets panel, which shows the JSON, keeps the
    keys). A message is capitalised only where it starts with a word, never a key or a name.
    """
    # the command's flags are the widgets' tick boxes: "add --resume" reads "tick 'Resume'", a flag
    # named as the subject or object of a sentence ("--overwrite also discards") the box's name
    message = re.sub(r"(?<![\w-])--resume --overwrite\b", "ticking 'Resume' and 'Overwrite'", message)
    for flag, box in (("overwrite", "Overwrite"), ("resume", "Resume")):
        message = re.sub(rf"\b(add|or) --{flag}\b", lambda m, box=box: f"{'or ' if m.group(1) == 'or' else ''}tick '{box}'", message)
        message = re.sub(rf"(?<![\w-])--{flag}\b", f"'{box}'", message)
    for key, label in (SETTING_NAMES if names is None else names).items():
        message = re.sub(rf"(^|; ){re.escape(key)}: ", rf"\g<1>{label}: ", message)
    if re.match(r"[a-z]+([ ,]|$)", message):
        return message[:1].upper() + message[1:]
    return message


def notify_error(err: BaseException, tile_size: int | None = None, names: Mapping[str, str] | None = None) -> str:
    """Show :func:`user_message` as a napari error notification (and log unexpected errors)."""
    from napari.utils.notifications import show_error

    message = user_message(err, tile_size, names)
    if not isinstance(err, (EMDiffuseError, ValueError, MemoryError)) and not is_out_of_memory(err):
        log.error("unexpected error in a napari-emdiffuse job", exc_info=err)
    show_error(message)
    return message


def notify(text: str, level: str = "info") -> None:
    """A job's message (or the widget's own) as a napari notification."""
    from napari.utils.notifications import show_info, show_warning

    (show_warning if level == "warning" else show_info)(text)


class JobControls(QWidget):
    """Run and Cancel buttons, a progress bar and a status line around one :class:`JobRunner`.

    Progress and message events are shown here (with an estimate of the time left); every other
    event goes to ``on_event``. A job may go through phases (training, then calibrating the
    uncertainty): the bar follows each phase's own count, named after the first, and the time
    left is estimated from the phase's own pace, never beyond a time limit the job was given. A failure, before or during the job, becomes a notification and
    the status line; ``tile_size()`` feeds the out-of-memory hint.
    """

    def __init__(
        self,
        run_label: str,
        progress_format: str,
        cancel_note: str,
        on_run: Callable[[], None],
        on_event: Callable[[Event], None],
        on_done: Callable[[BaseException | None], None] | None = None,
        tile_size: Callable[[], int | None] = lambda: None,
        run_tip: str = "",
    ) -> None:
        super().__init__()
        self._on_event, self._on_done, self._tile_size = on_event, on_done, tile_size
        self._cancel_note = cancel_note
        self.started = 0.0  # time.monotonic() when the job started
        self._format = progress_format
        self._phase, self._phase_started = "", 0.0  # the job's current phase (its Progress ``what``) and its start
        self._limit: float | None = None  # seconds the job was given, if any
        self._failure = ""  # the status line of the last refusal before a job, while it is shown
        self._cancelled = False
        self.closed = False  # the dock was closed: the job is cancelled and its results dropped
        self.runner = JobRunner(self._event, self._done)
        self.run_button = QPushButton(run_label)
        self.run_button.setToolTip(run_tip or run_label)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop after the current step; what is finished is kept")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setFormat(progress_format)
        self.progress.setToolTip("Progress of the running job")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        self.run_button.clicked.connect(on_run)
        self.cancel_button.clicked.connect(self.cancel)
        self.destroyed.connect(lambda *_, r=self.runner: r.cancel())

    def start(self, make_job: Callable[[Any], Iterator[Any]], status: str, limit_s: float | None = None) -> None:
        """Run ``make_job``; ``limit_s``: the job ends within that many seconds (a training's time limit)."""
        self.started = time.monotonic()
        self._phase, self._phase_started, self._limit = "", self.started, limit_s
        self.progress.setFormat(self._format)
        self._cancelled = False
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        self.status.setText(status)
        self.runner.start(make_job)

    def fail(self, err: BaseException) -> None:
        """A problem found before the job could start."""
        self.status.setText(notify_error(err, self._tile_size()))
        self._failure = self.status.text()

    def choices_changed(self, *_: Any) -> None:
        """A choice the last refusal was about may have changed: its message goes, so that it
        does not stand beside settings it no longer describes."""
        if self._failure and self.status.text() == self._failure:
            self.status.setText("")
        self._failure = ""

    def cancel(self) -> None:
        self.runner.cancel()
        self._cancelled = True
        self.status.setText(self._cancel_note)

    def close_job(self) -> None:
        """The dock was closed: stop the job, and add nothing it still delivers."""
        self.closed = True
        self.runner.cancel()

    def _event(self, event: Event) -> None:
        if self.closed:
            return
        match event:
            case Progress(done=done, total=total, what=what):
                now = time.monotonic()
                if what != self._phase:
                    if self._phase:  # a later phase: the bar counts its own units, under its name
                        self.progress.setFormat(f"{what}: %v / %m")
                        self._phase_started = now
                    self._phase = what
                self.progress.setMaximum(max(total, 1))
                self.progress.setValue(done)
                if 0 < done < total and not self._cancelled:
                    left = (now - self._phase_started) * (total - done) / done
                    if self._limit is not None and now - self.started < self._limit:  # past it, the pace alone says
                        left = min(left, self._limit - (now - self.started))
                    self.status.setText(f"{what.capitalize() or 'Working'}… about {left:.0f} s left")
            case Message(text=text, level=level):  # a job's words, as the widgets say them (its flags are their tick boxes)
                notify(plain_words(text), level)
            case _:
                self._on_event(event)

    def _done(self, error: BaseException | None) -> None:
        if self.closed:
            return
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if error is not None:
            self.status.setText(notify_error(error, self._tile_size()))
        if self._on_done is not None:
            self._on_done(error)
