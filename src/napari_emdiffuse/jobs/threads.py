"""A job's computation in a helper thread, so that progress reported from deep inside it (a
sampler step, a registered slice) reaches the job's generator as events at once; cancelling
(the token, or closing the generator) stops it at its next report."""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator

from .events import CancelToken


def in_thread(work: Callable[[], None], events: queue.Queue, cancel: CancelToken) -> Iterator[Any]:
    """Run ``work`` in a thread, yielding what it puts in ``events``; re-raise its exception."""
    done = object()
    error: list[BaseException] = []

    def target() -> None:
        try:
            work()
        except BaseException as err:  # handed to the generator's thread
            error.append(err)
        finally:
            events.put(done)

    thread = threading.Thread(target=target, name="emdiffuse-job", daemon=True)
    thread.start()
    try:
        while True:
            item = events.get()
            if item is done:
                break
            yield item
    finally:
        if thread.is_alive():  # the consumer stopped early: cancel and wait for the step to end
            if hasattr(cancel, "set"):
                cancel.set()
            thread.join()
    if error:
        raise error[0]
