"""How a command runs a job: its events shown as a progress bar and messages, and Ctrl-C / SIGTERM turned into a clean cancel (the job keeps what it finished)."""

from __future__ import annotations

import contextlib
import signal
import sys
from typing import Any, Iterator

def drive(events: Iterator[Any], quiet: bool, total: int | None = None, echo: bool = True) -> Any:
    """Show a job's events as a tqdm bar and messages (``echo=False``: no messages); return its result event."""
    from tqdm import tqdm

    from .jobs.events import Kind

    bar = None
    result = None
    try:
        for ev in events:
            if bar is None:  # after the job has checked its inputs, so an error is not drawn over a bar
                bar = tqdm(total=total, unit="step", dynamic_ncols=True, disable=quiet)
            if ev.kind is Kind.PROGRESS:
                bar.total = ev.total
                bar.n = ev.done
                bar.refresh()
            elif ev.kind is Kind.LOSS:
                bar.set_postfix(loss=f"{ev.loss:.4f}", refresh=False)
            elif ev.kind is Kind.RESULT:
                result = ev
            elif not echo:
                continue
            elif ev.kind is Kind.VALIDATION:
                bar.write(f"step {ev.step}: validation PSNR {ev.psnr:.2f} dB ({ev.baseline} {ev.input_psnr:.2f} dB)")
            elif ev.kind is Kind.MESSAGE:
                bar.write(ev.text, file=sys.stderr if ev.level == "warning" else sys.stdout)
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


@contextlib.contextmanager
def ctrl_c_cancels(token: Any) -> Iterator[Stop]:
    """The first Ctrl-C or SIGTERM cancels the job at its next step (checkpoint / finished
    planes kept); a second one stops at once. Exit status: 130 for Ctrl-C, 143 for SIGTERM."""
    stop = Stop()

    def handler(signum: int, frame: Any) -> None:
        if token.is_set():
            raise Interrupted(signum)
        stop.signum = signum
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
