"""How a command runs a job: its events shown as a progress bar and messages, and Ctrl-C / SIGTERM turned into a clean cancel (the job keeps what it finished)."""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from typing import Any, Iterator


def say(text: str, level: str) -> tuple[str, Any]:
    """A job's message as a terminal shows it, and where: a warning on stderr marked
    ``warning: `` (in a terminal both streams read alike), information plain on stdout."""
    return (f"warning: {text}", sys.stderr) if level == "warning" else (text, sys.stdout)


def add_quiet(parser: Any) -> None:
    """The ``-q`` of every command that runs a job: what it leaves out, said in its help."""
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar (messages, warnings and what was written are still shown)")


def drive(events: Iterator[Any], quiet: bool, echo: bool = True, unit: str = "step", describe: bool = False) -> Any:
    """Show a job's events as a tqdm bar counting ``unit`` and messages (``echo=False``: no
    messages; ``describe``: what the job is doing before the bar); return its result event."""
    from tqdm import tqdm

    from .jobs.calibrate import CalibrationResult
    from .jobs.events import Loss, Message, PredictResult, PrepareResult, Progress, TrainResult, Validation

    bar = None
    phase = None
    result = None

    def write(line: str, stream: Any = sys.stdout) -> None:
        if bar is None:
            print(line, file=stream, flush=True)
        else:
            bar.write(line, file=stream)

    try:
        for ev in events:
            match ev:
                case Progress(done=done, total=of, what=what, unit=own_unit):
                    # the bar appears with the job's first progress (after its checks and notes: no
                    # empty bar); a later phase, or one counted in its own unit, gets a bar of its
                    # own, named (``describe``: one bar that names each phase)
                    if bar is None or (what != phase and not describe):
                        if bar is not None:
                            bar.close()
                        named = phase is not None or bool(own_unit)
                        bar = tqdm(total=of, initial=done, unit=own_unit or unit, dynamic_ncols=True, disable=quiet, desc=what if named else None)
                        phase = what
                    if describe:
                        bar.set_description(what, refresh=False)
                    bar.total, bar.n = of, done
                    bar.refresh()
                case Loss(loss=loss) if bar is not None:
                    bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                case TrainResult() | PredictResult() | CalibrationResult() | PrepareResult():
                    result = ev
                case Validation(step=step, psnr=psnr, input_psnr=base_psnr, baseline=baseline) if echo:
                    write(f"step {step}: validation PSNR {psnr:.2f} dB ({baseline} {base_psnr:.2f} dB)")
                case Message(text=text, level=level) if echo:
                    write(*say(text, level))
    finally:
        if bar is not None:
            bar.close()
    return result


class Interrupted(KeyboardInterrupt):
    """A signal that stops the command at once (the second Ctrl-C, or SIGTERM where nothing
    can be cancelled cleanly); ``signum`` gives the exit status 128 + signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Stop:
    """Which signal cancelled a job (None while none has)."""

    signum: int | None = None

    def exit_status(self) -> int:
        return 128 + (self.signum or signal.SIGINT)


#: seconds within which the same signal again is the first one delivered twice, not a second
#: request: GNU ``timeout`` (and job schedulers) signal the process and then its process group,
#: and on a busy machine the handler can run between the two; a person's second Ctrl-C is slower
REPEAT_S = 0.5


@contextlib.contextmanager
def ctrl_c_cancels(token: Any) -> Iterator[Stop]:
    """The first Ctrl-C or SIGTERM cancels the job at its next step (checkpoint / finished
    planes kept); a second one stops at once, unless it is the first delivered again
    (:data:`REPEAT_S`). Exit status: 130 for Ctrl-C, 143 for SIGTERM."""
    stop = Stop()
    first: list[float] = []  # when the signal that cancelled came

    def handler(signum: int, frame: Any) -> None:
        if token.is_set():
            if signum == stop.signum and first and time.monotonic() - first[0] < REPEAT_S:
                return
            raise Interrupted(signum)
        stop.signum = signum
        first.append(time.monotonic())
        token.set()
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\nemdiffuse: {name}: stopping after the current step (again to abort) ...", file=sys.stderr)

    try:
        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: leave the signals alone
        yield stop
        return
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def terminate(signum: int, frame: Any) -> None:
    """SIGTERM outside a cancellable job: unwind (temporaries are removed) and exit 143."""
    raise Interrupted(signum)
