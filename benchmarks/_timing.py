"""Helpers the throughput benchmarks and profiles share: call timers patched onto functions,
interleaved repeats, and the generated sections of docs/benchmarks-throughput.md."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from napari_emdiffuse.engine.device import cpu_has_native_bf16

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks-throughput.md"
DATA = REPO.parent / "shared" / "data"


class Timers:
    """Wall seconds and calls per category, from functions patched to report to it.

    A call inside another timed call is charged to the outer one only, so categories never
    overlap and their sum is at most the wall time.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._depth = 0
        self._patches: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, name: str, category: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return original(*args, **kwargs)
            self._depth += 1
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self._depth -= 1
                self.seconds[category] = self.seconds.get(category, 0.0) + time.perf_counter() - t0
                self.calls[category] = self.calls.get(category, 0) + 1

        self._patches.append((owner, name, original))
        setattr(owner, name, timed)

    def mark_first_call(self, owner: Any, name: str) -> dict[str, float]:
        """Patch ``owner.name`` to copy the seconds so far (and the time, as ``"_at"``) into the
        returned dict at its first call: what ran before it (a job's setup) can be subtracted."""
        original, mark = getattr(owner, name), {}

        @functools.wraps(original)
        def marked(*args: Any, **kwargs: Any) -> Any:
            if not mark:
                mark.update(self.seconds, _at=time.perf_counter())
            return original(*args, **kwargs)

        self._patches.append((owner, name, original))
        setattr(owner, name, marked)
        return mark

    def restore(self) -> None:
        for owner, name, original in reversed(self._patches):
            setattr(owner, name, original)
        self._patches.clear()

    @contextlib.contextmanager
    def active(self) -> Iterator["Timers"]:
        try:
            yield self
        finally:
            self.restore()


@contextlib.contextmanager
def bf16_setting(flag: str) -> Iterator[None]:
    """``EMDIFFUSE_BF16=flag`` inside the block ("0" float32, "1" bf16 even where it is emulated;
    read by every new predict job), the caller's setting restored after it."""
    before = os.environ.get("EMDIFFUSE_BF16")
    os.environ["EMDIFFUSE_BF16"] = flag
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("EMDIFFUSE_BF16", None)
        else:
            os.environ["EMDIFFUSE_BF16"] = before


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds of each call, the functions taking turns (after one warm-up call each), so that a
    change in the machine's load hits every candidate alike."""
    for fn in fns.values():
        fn()
        sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    bf16 = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    return (f"{platform.processor() or platform.machine()} CPU ({torch.backends.cpu.get_cpu_capability()}, {bf16}), "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}")


#: the kinds of machine whose figures differ in kind, not just in speed: on a CPU with native bf16
#: ``predict`` runs the network in bf16, on one without in float32
KINDS = {"cpu-bf16": "a CPU with native bf16", "cpu-fp32": "a CPU without native bf16", "cuda": "a CUDA GPU"}


def machine_kind(device: torch.device) -> str:
    """The key of :data:`KINDS` for ``device``: each kind has its own sections in the docs, so a
    rerun on one kind of machine leaves the other kinds' figures in place."""
    if device.type == "cuda":
        return "cuda"
    return "cpu-bf16" if cpu_has_native_bf16() else "cpu-fp32"


def section_name(name: str, device: torch.device) -> str:
    """The docs' section ``name`` for machines of ``device``'s kind. Refused while
    ``EMDIFFUSE_BF16`` is set: the figures would not be that kind's defaults."""
    if os.environ.get("EMDIFFUSE_BF16", "").strip():
        raise SystemExit("EMDIFFUSE_BF16 is set: these figures are not this machine's defaults; "
                         "rerun without it to update the docs, or add --no-doc")
    return f"{name} {machine_kind(device)}"


def study_args(description: str | None, threads: int = 2, argv: list[str] | None = None, add: Callable[[Any], None] | None = None) -> Any:
    """The options every study takes, parsed: ``--threads`` (torch is set to them) and
    ``--no-doc``, with those ``add`` declares on the parser."""
    import argparse

    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    if add is not None:
        add(ap)
    ap.add_argument("--threads", type=int, default=threads)
    ap.add_argument("--no-doc", action="store_true", help="print and store the figures, leave the docs as they are")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    return args


def publish(text: str, data: dict[str, Any], result: Path, section: str | None, doc: Path) -> None:
    """A study's end: its report printed, its figures stored as JSON in ``result``, and, with a
    ``section`` name (None: ``--no-doc``), the report put in that section of ``doc``."""
    import json

    print(text)
    result.write_text(json.dumps(data, indent=2))
    if section is not None:
        replace_section(section, text, doc)


def load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def study_sections(text: str) -> list[str]:
    """The sections studies put into a page (:func:`replace_section`), markers included, in order."""
    return [m.group(0) for m in re.finditer(r"<!-- (\w+) -->.*?<!-- /\1 -->", text, re.S)]


def replace_section(name: str, text: str, doc: Path = DOC) -> None:
    """Put ``text`` between the ``<!-- name -->`` and ``<!-- /name -->`` markers of ``doc``
    (appending the section if it is not there yet)."""
    begin, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    block = f"{begin}\n{text.strip()}\n{end}"
    old = doc.read_text() if doc.is_file() else ""
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    new = pattern.sub(lambda _: block, old) if pattern.search(old) else old.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(new.lstrip())
