"""The prepare job: a training set for a variant. The variant is looked up and asked what the
set depends on (the inputs it learns from, their dimensionality, its simulated degradation, the
factor between input and target pixels); :mod:`..data.prepare` writes the set knowing no variant.

``prepare_pairs``, ``prepare_clean`` and ``prepare_volume`` are generators of the events train
and predict yield (:mod:`.events`: progress per slice, then a :class:`~.events.PrepareResult`),
so the CLI and a widget show them the same way. The writing runs in a helper thread; a cancel
stops it at the next slice and leaves what was at ``out`` (if anything) unchanged.
"""

from __future__ import annotations

import queue
from pathlib import Path
from typing import Any, Callable, Iterator

from pydantic import BaseModel

from ..data.image import Image
from ..data.normalise import check_image
from ..data.prepare import PrepareOptions, SetVariant, write_clean, write_pairs, write_volume
from ..data.prepare import Progress as SetProgress
from ..errors import Cancelled, InputError
from ..variants import Variant, get_variant
from .events import CancelToken, Event, Message, PrepareResult, Progress, new_cancel_token
from .threads import in_thread

#: a writer of :mod:`..data.prepare`, given the progress callback it reports to; returns the report
Writer = Callable[[SetProgress], dict[str, Any]]


def _variant(name: str, raw_options: dict[str, Any] | None) -> tuple[Variant, BaseModel, SetVariant]:
    try:
        variant = get_variant(name)
        options = variant.options(raw_options or {})
    except ValueError as err:
        raise InputError(str(err).splitlines()[0]) from None
    return variant, options, SetVariant(variant.name, variant.title, options.model_dump(mode="json"), variant.pixel_factor(options))


def _run(write: Writer, out: str | Path, cancel: CancelToken | None) -> Iterator[Event]:
    """``write`` in a helper thread: its progress as events, then the result. A cancel says
    what is at ``out`` afterwards: the set that was there, or nothing."""
    cancel = cancel or new_cancel_token()
    out = Path(out)
    existed = out.exists() or out.is_symlink()
    events: queue.Queue = queue.Queue()
    report: dict[str, Any] = {}

    def progress(done: int, total: int, what: str) -> None:
        if cancel.is_set():
            raise Cancelled("preparation cancelled")
        events.put(Progress(done, total, what))

    try:
        yield from in_thread(lambda: report.update(write(progress)), events, cancel)
    except Cancelled:
        yield Message(f"cancelled: {out} is unchanged" if existed else f"cancelled: nothing was written ({out} was not created)", "warning")
        yield PrepareResult(out, {}, complete=False)
        return
    yield PrepareResult(out, report)


def prepare_pairs(
    input: Image,
    target: Image,
    out: str | Path,
    variant: str = "denoise",
    variant_options: dict[str, Any] | None = None,
    opts: PrepareOptions = PrepareOptions(),
    overwrite: bool = False,
    cancel: CancelToken | None = None,
) -> Iterator[Event]:
    """A set of registered pairs for a paired variant (:func:`..data.prepare.write_pairs`). The
    inputs are only read; an existing set is replaced only with ``overwrite`` (as for every
    ``prepare_*``)."""
    v, _, spec = _variant(variant, variant_options)
    if tuple(v.training_inputs) != ("input", "target"):
        raise InputError(f"{v.title} learns from a single volume, not from pairs: prepare it with --volume")
    check_image(input.data, "input", v.input_ndims)
    check_image(target.data, "target", v.input_ndims)
    yield from _run(lambda progress: write_pairs(input, target, out, spec, opts, progress, overwrite), out, cancel)


def prepare_clean(
    clean: Image,
    out: str | Path,
    variant: str = "denoise",
    variant_options: dict[str, Any] | None = None,
    degradation: dict[str, Any] | None = None,
    opts: PrepareOptions = PrepareOptions(),
    overwrite: bool = False,
    cancel: CancelToken | None = None,
) -> Iterator[Event]:
    """A set simulated from clean images by the variant's own degradation (noise for
    EMDiffuse-n, PSF blur and binning for EMDiffuse-r; :func:`..data.prepare.write_clean`)."""
    v, options, spec = _variant(variant, variant_options)
    if tuple(v.training_inputs) != ("input", "target"):
        raise InputError(f"{v.title} learns from a volume as it is: prepare it with --volume")
    check_image(clean.data, "clean images", v.input_ndims)

    def simulate(data: Any, **deg: Any) -> dict[str, Any]:
        return v.from_clean(data, options, **deg)

    yield from _run(lambda progress: write_clean(clean, out, spec, simulate, degradation, opts, progress, overwrite), out, cancel)


def prepare_volume(
    volume: Image,
    out: str | Path,
    variant: str = "iso_i",
    variant_options: dict[str, Any] | None = None,
    drift: bool = False,
    opts: PrepareOptions = PrepareOptions(),
    overwrite: bool = False,
    cancel: CancelToken | None = None,
) -> Iterator[Event]:
    """A volume for the vEM variants, drift corrected if ``drift`` (:func:`..data.prepare.write_volume`)."""
    v, options, spec = _variant(variant, variant_options)
    if tuple(v.training_inputs) != ("volume",):
        raise InputError(f"{v.title} learns from pairs (--input/--target) or clean images (--clean), not from a volume")
    v.check_input(volume.data, options, "volume")
    yield from _run(lambda progress: write_volume(volume, out, spec, drift, opts, progress, overwrite), out, cancel)


def run_prepare(events: Iterator[Event]) -> dict[str, Any]:
    """A prepare job without its events: the report (for scripts and tests)."""
    result = None
    for ev in events:
        if isinstance(ev, PrepareResult):
            result = ev
    assert result is not None
    return result.report
