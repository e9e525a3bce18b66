"""The predict job: a trained model over a whole image or volume, with an uncertainty map.

``predict(...)`` is a generator of events (progress after every sampler step, messages, and a
final :class:`PredictResult`). The computation runs in one helper thread so that progress can be
reported from inside the sampler loop; cancelling (the token, or closing the generator) stops
it within one sampler step and keeps what was finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generator, Iterator, Sequence

import numpy as np

from .. import __version__, uncertainty
from ..config import SampleConfig
from ..data.containers import chunk_size
from ..data.image import known_pixel_um
from ..data.normalise import Normaliser, fit_normaliser
from ..data.safe_output import SOFTWARE
from ..engine.device import cpu_has_native_bf16, fallback_note, select_device, uses_bf16
from ..errors import BlockCancelledOnCluster, BlockError, Cancelled, ConfigError, DeviceError, InputError
from ..model_file import Model
from ..variants import get_variant, model_options
from ..variants.base import Block, Geometry, Variant
from .blocks import ESTIMATES, BlockRun, BlockRunner, finished_region, write_block
from .events import CancelToken, Message, PredictResult, Progress, new_cancel_token
from .predict_output import PredictionOutput, block_failure, describe_compute, describe_region, finish_in_memory, in_memory, result_bytes
from .threads import in_thread

log = logging.getLogger(__name__)


def normaliser_for(model: Model, image: Any) -> Normaliser:
    """Statistics of ``image`` at the percentiles the model records (``model.json``
    ``normalisation``); 8-bit input to a model that records the original EMDiffuse convention
    (``"uint8": "full range"``) maps 0 and 255 to -1 and 1, exactly as the original did in training."""
    norm = model.info.normalisation
    if norm.get("uint8") == "full range" and np.dtype(image.dtype) == np.uint8:
        return Normaliser(0.0, 255.0)
    return fit_normaliser(image, norm["low"], norm["high"], name="image")


def output_geometry(variant: Variant, options: Any, shape: Sequence[int], voxel: Sequence[float], origin: Sequence[float] | None = None) -> Geometry:
    """The output's shape, voxel size (µm) and first pixel's position (``origin``: where the
    caller knows it lies, a part of an image). An input without a pixel size (1 per pixel, see
    :func:`known_pixel_um`) gives an output without one, positioned in its own pixels: a size
    derived from the placeholder (500 nm from "1 µm") would be written and read as measured."""
    geometry = variant.output_geometry(shape, voxel, options)
    if origin is not None:
        geometry = replace(geometry, translation=tuple(float(o) for o in origin))
    if known_pixel_um(voxel) is not None:
        return geometry
    position = None if geometry.translation is None else tuple(t / v for t, v in zip(geometry.translation, geometry.voxel))
    return Geometry(geometry.shape, (1.0,) * len(geometry.shape), position)


def output_sampling(variant: Variant, options: Any, shape: Sequence[int], sampling: Sequence[float] | None = None) -> tuple[float, ...]:
    """The output's pixel in the input's pixels, per axis (0.5 in y and x for 2x super-resolution,
    1/k in z for an isotropic factor k): what an output without a pixel size records (``sampling``)
    so that the reader lays it over its input, which napari shows in its own pixels. ``sampling``:
    the input's own pixel in the pixels of the world it lies in (a result of an image without a
    pixel size: 0.5 for 2x super-resolution; a z spacing set without units: 5), which the output's
    is then counted in."""
    voxel = variant.output_geometry(shape, (1.0,) * len(shape), options).voxel
    return tuple(float(v) * float(s) for v, s in zip(voxel, sampling or (1.0,) * len(voxel)))


def predict(
    model: Model,
    image: Any,
    sample: SampleConfig | None = None,
    voxel: Sequence[float] | None = None,
    device: str = "auto",
    out_dtype: str | np.dtype = "float32",
    output: str | Path | None = None,
    input_paths: Sequence[Path] = (),
    keep_samples: bool = False,
    normaliser: Normaliser | None = None,
    compile: bool = False,
    cancel: CancelToken | None = None,
    overwrite: bool = False,
    model_name: str | None = None,
    estimate: str = "best",
    alpha: float | None = None,
    origin: Sequence[float] | None = None,
    resume: bool = False,
    cluster: str | None = None,
    sampling: Sequence[float] | None = None,
    pixel_note: bool = True,
) -> Iterator[Any]:
    """Enhance ``image`` (numpy or dask; 2D or 3D) with ``model``, block by block (see :mod:`.blocks`).

    ``sample`` overrides the model's sampling settings (sampler, steps, samples, tiles).
    ``out_dtype`` is "float32" or "input" (the input's dtype, clipped and rounded).
    ``output``: ``OUT.tif`` writes ``OUT.tif`` and ``OUT_uncertainty.tif`` at the end;
    ``OUT.zarr`` an OME-Zarr store (images ``mean``, ``uncertainty``, ``lower``, ``upper``,
    ``samples``) block by block, for results larger than memory, which ``resume`` continues
    after a cancel or a kill (see :mod:`.predict_output`: nothing existing is replaced without
    ``overwrite``, a cancelled run writes only its finished blocks, as partial files).
    ``cluster`` runs the blocks on dask workers (:mod:`.cluster`: ``local:N``,
    ``tcp://host:port`` or a cluster file); it needs a zarr output.
    ``normaliser`` fixes the intensity statistics (otherwise they are measured on the whole
    input). ``model_name`` and ``origin`` (the first output pixel's position in µm, per axis:
    where a result of part of an image lies) are recorded in the output's provenance. ``compile`` runs the network
    through ``torch.compile``. ``sampling``, for an input without a pixel size that lies at a scale
    (:meth:`.._widgets.layers.Placement.sampling`: an earlier result of an image without one, whose
    pixel is 0.5 of that image's for 2x super-resolution; a z spacing of 5 set without units): its
    pixel in its world's pixels, per axis, in which the output's ``sampling`` and ``origin`` (given
    in the input's own pixels) are then recorded, so that the reader lays it where its input lies,
    and in which the isotropic variants judge its z spacing. ``pixel_note``: False where the caller
    has said in its own words that the input has no pixel size (Enhance, naming the layer).
    """
    if estimate not in ESTIMATES:
        raise ValueError(f"unknown estimate {estimate!r}; choose one of {', '.join(ESTIMATES)}")
    cancel = cancel or new_cancel_token()
    cfg = sample or model.preset.sample
    variant, options = get_variant(model.variant), model_options(model)
    variant.check_input(image, options)
    voxel = tuple(voxel) if voxel is not None else (1.0,) * image.ndim
    geometry = output_geometry(variant, options, image.shape, voxel, origin)
    # the input's pixel in the pixels the output's place is recorded in: its own where its size is known
    within = tuple(float(f) for f in sampling) if sampling is not None and known_pixel_um(voxel) is None else (1.0,) * image.ndim
    if len(within) != image.ndim or not all(np.isfinite(f) and f > 0 for f in within):
        raise ValueError(f"sampling {sampling!r}: one positive number per axis of the {image.ndim}D input")
    dtype = np.dtype(image.dtype) if str(out_dtype) == "input" else np.dtype(out_dtype)
    n_samples = cfg.samples if keep_samples else 0
    # one sample has no spread: its error map is zero, and bounds from it would claim a certainty it has not
    calibration = model.calibration if cfg.samples >= 2 else None
    out = PredictionOutput(output, input_paths, overwrite, n_samples, bool(calibration), resume) if output is not None else None
    if cluster is not None and (out is None or not out.names.store):
        raise InputError("--cluster writes its blocks into a zarr store: give --output OUT.zarr")
    said = False  # an error raised below says where a kept store is
    try:
        if out is not None:  # before any computation: a refusal now costs nothing
            out.claim(result_bytes(geometry.shape, dtype, n_samples, bool(calibration)))
        normaliser = normaliser or normaliser_for(model, image)

        pixel_um = known_pixel_um(voxel)
        spacing = tuple(v * f for v, f in zip(voxel, within))  # the voxel's shape, in its world's pixels where no size is known
        for note in (variant.voxel_warning(spacing, options), model.quality_warning(), model.pixel_warning(pixel_um)):
            if note:
                yield Message(note, "warning")
        if pixel_um is None and pixel_note and (note := model.unknown_pixel_note()):
            yield Message(note, "info")
        if cfg.samples < 2:
            yield Message("one sample has no spread: the uncertainty map is zero and no error bounds are written; use 2 or more samples for them", "warning")
        elif out is not None and not calibration:
            yield Message("the model has no calibration (trained before it existed): no lower/upper bounds are written", "info")
        bounds = yield from _bounds_for(calibration, alpha, normaliser, image, variant, cfg)
        dev, bf16 = yield from _device_for(device, cluster)
        runner = BlockRunner(model, options, cfg, normaliser, dev, estimate, keep_samples, compile)
        blocks = runner.blocks(image.shape)
        shape = geometry.shape
        content: dict[str, str] = {}
        if out is not None and out.names.store:  # only a store resumes: the whole input read once, before the first block
            try:
                content["input_content"] = input_digest(image, cancel)
            except Cancelled:
                yield Message("cancelled while reading the input, before the first block: nothing is written", "warning")
                yield PredictResult(None, None, None, geometry.voxel, False, None)
                return

        provenance = {
            "software": f"{SOFTWARE} {__version__}",
            "model": model_name or model.preset.name,
            "variant": model.variant,
            "variant_options": options.model_dump(mode="json"),
            "settings": cfg.model_dump(mode="json"),
            "input": [str(Path(p).resolve()) for p in input_paths],
            "voxel_size": list(geometry.voxel),
            # where and in what precision the network ran: results from bf16 and float32 differ in
            # the last digits; on a cluster each worker decides by its own hardware
            "compute": {"cluster": cluster, "device": device} if cluster is not None
            else {"device": str(dev), "network": "bfloat16" if bf16 else "float32"},
            **({"origin": [float(o) * f for o, f in zip(origin, within)]} if origin is not None else {}),
            # no pixel size (voxel_size 1: the output's own pixels): how large those are in the input's pixels
            # (in those of the image the input was made from: ``sampling``)
            **({"sampling": list(output_sampling(variant, options, image.shape, within))} if pixel_um is None else {}),
            **bounds.record(),
            # what a resumed run must share with this one, or its blocks would not fit this store's
            "resume_key": {
                "model": model_digest(model),
                "input_shape": list(image.shape),
                **content,
                "normaliser": normaliser.to_dict(),
                "variant_options": options.model_dump(mode="json"),
                "settings": cfg.model_dump(mode="json"),
                "estimate": estimate,
                "dtype": dtype.str,
                "samples_kept": n_samples,
            },
        }
        if out is not None:
            arrays, done = yield from _open_store(out, resume, geometry, dtype, n_samples, provenance, blocks)
        else:
            arrays, done = in_memory(shape, dtype, n_samples), [False] * len(blocks)
        run = BlockRun(done)
        todo = [b for b in blocks if not done[b.index]]
        if cluster is not None:
            from .cluster import WorkerSpec, run_on_cluster

            spec = WorkerSpec(model, options, image, cfg, normaliser, device, estimate, keep_samples)
            try:
                complete, failed = yield from _run_blocks(run_on_cluster(cluster, spec, todo, out, run, cancel), out, run)
            except BlockCancelledOnCluster as err:  # before a block was kept (after one, block_failure words it): named as there
                raise BlockError(err.said(_what_failed(run, len(blocks), shape))) from None
        else:
            complete, failed = yield from _run_blocks(_in_process(runner, image, todo, arrays, out, run, cancel), out, run)
        region = () if complete else finished_region(blocks, done)
        if failed is not None:
            assert out is not None
            store = _keep_finished(out, arrays, region, geometry, provenance, bounds.scale, bounds.error)
            if isinstance(failed, USER_ERRORS) and not run.ran:  # the setup's one-line error, the store back where it was
                raise failed
            said = True  # the error names where the store is
            raise block_failure(failed, _what_failed(run, len(blocks), shape), store, len(blocks)) from failed
        yield from _finish(out, arrays, complete, region, geometry, provenance, bounds.scale, bounds.error, bounds.rough["note"] if bounds.rough else None)
    finally:
        if out is not None:
            out.close(quiet=said)


#: errors of the run's setup (a misnamed cluster file, a device that is not there): raised before
#: this run finished a block, they are reported as they are, not as a failed block
USER_ERRORS = (InputError, ConfigError, DeviceError)

#: an output's three block-wise arrays (mean, raw spread, samples or None), in memory or in a store
Arrays = tuple[Any, Any, Any]


def _open_store(
    out: PredictionOutput, resume: bool, geometry: Geometry, dtype: np.dtype, n_samples: int, provenance: dict[str, Any], blocks: Sequence[Block]
) -> Generator[Message, None, tuple[Arrays, list[bool]]]:
    """The output's arrays and which blocks are done (:meth:`.PredictionOutput.allocate`), with
    what the store this run continues means for it said first."""
    if resume and out.resumable is None:
        yield Message(f"nothing to resume for {out.names.mean}: starting from the first block", "info")
    if note := out.passed_over_note():  # before the store is looked into: said even where it cannot be resumed
        yield Message(note, "warning")
    mean, spread, samples, done = out.allocate(geometry.shape, dtype, n_samples, provenance, blocks, geometry)
    if any(done):
        yield Message(f"resuming {out.resumable}: {sum(done)} of {len(blocks)} blocks are done", "info")
    if out.pooled and out.pooled_bounds and provenance.get("bounds") and out.pooled_bounds["coverage"] != provenance["bounds"]["coverage"]:
        yield Message(
            f"{out.resumable} was finished already, its lower/upper at {round(100 * out.pooled_bounds['coverage'])} % coverage: "
            f"it is put in place as it is, not at this run's {round(100 * provenance['bounds']['coverage'])} % "
            "(--overwrite computes it again)", "warning")
    if out.computed_before and not all(done):  # a finished store gets no block of this run: nothing is mixed
        yield Message(
            f"{out.resumable}: its finished blocks were computed {' and '.join(map(describe_compute, out.computed_before))}, "
            f"this run computes {describe_compute(provenance['compute'])}: the two differ in the last digits "
            "(EMDIFFUSE_BF16=0 or 1 chooses the precision); once a block of this run is done, the provenance records both", "warning")
    return (mean, spread, samples), done


def _in_process(
    runner: BlockRunner, image: Any, todo: Sequence[Block], arrays: Arrays, out: PredictionOutput | None, run: BlockRun, cancel: CancelToken
) -> Iterator[Any]:
    """Run the blocks ``todo`` here, one after the other in a helper thread (so that every sampler
    step is reported), recording in ``run`` those that finish and the one that fails (its error is
    raised). Raises :class:`Cancelled` at the first sampler step after ``cancel`` is set."""
    events: queue.Queue = queue.Queue()
    total = sum(runner.steps(b) for b in todo)

    def on_step(step: int, of: int) -> None:
        if cancel.is_set():
            raise Cancelled("prediction cancelled")
        events.put(Progress(step, of, "sampling"))

    def work() -> None:
        offset = 0
        for block in todo:
            try:
                write_block(runner.run(image, block, on_step, offset, total), *arrays)
                if out is not None:
                    out.mark_done(block)
            except Cancelled:
                raise
            except Exception:
                run.failed = block
                raise
            run.done[block.index] = True
            offset += runner.steps(block)

    yield Progress(0, total, "sampling")
    yield from in_thread(work, events, cancel)


def _run_blocks(events: Generator[Any, None, None], out: PredictionOutput | None, run: BlockRun) -> Generator[Any, None, tuple[bool, Exception | None]]:
    """The blocks' ``events``, to their end; whether every block is done, and the error of a block
    that failed for good where a store keeps finished ones, as after a cancel (otherwise it is
    raised). A resumed store records this run's way of computing
    (:meth:`.PredictionOutput.record_compute`) as soon as one of its blocks is done, so that a run
    killed later still says it."""
    complete, failed = True, None
    try:
        for event in events:
            if out is not None and run.ran:
                out.record_compute()
            yield event
    except Cancelled:
        complete = False
    except Exception as err:
        if out is None or not out.names.store or not any(run.done):
            raise
        complete, failed = False, err
    finally:
        events.close()
    if out is not None and run.ran:
        out.record_compute()
    return complete and all(run.done), failed


def _keep_finished(
    out: PredictionOutput, arrays: Arrays, region: tuple[slice, ...] | None, geometry: Geometry, provenance: dict[str, Any], q: float | None, error: uncertainty.ErrorModel
) -> Path:
    """After a failed block, the store finished as far as its finished blocks go, as after a
    cancel; where it now is. Where even that fails (the same full disk) it stays where it was
    written, which :meth:`.PredictionOutput.close` keeps: the failed block is the error to report."""
    assert out.store_path is not None
    store = out.store_path
    try:
        store = out.finish(*arrays, False, region, geometry.voxel, provenance, q, geometry.origin, error)[0][0]
    except Exception as second:  # noqa: BLE001 - the first error is the one to report
        log.info("the store of the failed run could not be finished (%s); it stays at %s", second, store)
    return store


def _finish(
    out: PredictionOutput | None, arrays: Arrays, complete: bool, region: tuple[slice, ...] | None, geometry: Geometry,
    provenance: dict[str, Any], q: float | None, error: uncertainty.ErrorModel, rough: str | None,
) -> Iterator[Any]:
    """Pool the uncertainty and write what is complete (:meth:`.PredictionOutput.finish`; only
    in memory without an output), say what a cancelled run keeps, and give the result."""
    if out is not None:
        written, (mean, std, samples, lower, upper) = out.finish(*arrays, complete, region, geometry.voxel, provenance, q, geometry.origin, error)
    else:
        written, (mean, std, samples, lower, upper) = [], finish_in_memory(*arrays, q, error)
    if not complete:
        if region is None and written:  # blocks finished out of order (:meth:`.PredictionOutput.finish`)
            kept = f"the first block is not finished, so no part is shown; the finished blocks are kept in {written[0]}: run it again with --resume to continue them"
        elif region is None:
            kept = "no block was finished, nothing is written" if out is not None else "no block was finished"
        else:
            kept = "the finished part " + describe_region(region, geometry.shape) + (f" is in {', '.join(map(str, written))}" if written else "")
        yield Message(f"cancelled: {kept}", "warning")
    elif out is not None and out.superseded:
        names = ", ".join(p.name for p in out.superseded)
        yield Message(f"discarded the unfinished result a stopped run left ({names}): this finished one replaces it (--overwrite)")
    yield PredictResult(mean, std, samples, geometry.voxel, complete, region, lower, upper, tuple(written), rough)


def _what_failed(run: BlockRun, blocks: int, shape: Sequence[int]) -> str:
    """The block that stopped ``run``, as a user knows it: ``block 3 of 12 (z 8:12 of 48)``; the
    run itself where no block's own error stopped it (a cluster's scheduler lost, say)."""
    if run.failed is None:
        return "the run"
    return f"block {run.failed.index + 1} of {blocks} {describe_region(run.failed.region, shape)}"


@dataclass(frozen=True)
class Bounds:
    """How this run turns its spread into error bounds: the error model (widened for a noisier
    input), the calibrated scale ``q`` at the run's ``alpha`` (None: the model is not calibrated,
    or one sample has no spread), whether it samples as calibration did (``match``) and, where a
    plane was widened past what stays calibrated, that record (``rough``)."""

    error: uncertainty.ErrorModel
    alpha: float | None
    scale: float | None
    match: str
    rough: dict[str, Any] | None

    def record(self) -> dict[str, Any]:
        """What the output's provenance says of its bounds: the interval's coverage on the
        calibration data, its scale (bound = scale x uncertainty) and whether this run sampled as
        calibrated (:func:`.uncertainty.settings_match`); the per-plane widening for an input
        noisier than the calibration data, and where that is past a calibrated interval."""
        return {
            **({"bounds": {"coverage": round(1 - self.alpha, 6), "scale": float(self.scale), "settings": self.match}} if self.scale is not None and self.alpha is not None else {}),
            **({"bounds_widened": list(self.error.widen)} if any(w > 1 for w in self.error.widen) else {}),
            **({"bounds_rough": self.rough} if self.rough is not None else {}),
        }


def _bounds_for(
    calibration: dict[str, Any] | None, alpha: float | None, normaliser: Normaliser, image: Any, variant: Variant, cfg: SampleConfig
) -> Generator[Message, None, Bounds]:
    """The run's :class:`Bounds` (``calibration``: the model's, None where the run has none), and
    the messages that say where they are widened or sampled otherwise than calibrated."""
    alpha = alpha if alpha is not None else calibration["alpha"] if calibration else None
    q = uncertainty.scale(calibration, alpha) if calibration else None
    error = uncertainty.ErrorModel.of(calibration, normaliser.low, normaliser.high)
    rough: dict[str, Any] | None = None
    if calibration and calibration.get("input_noise"):
        error, note, rough = _widened_for_noise(error, image, calibration["input_noise"], variant, round(100 * (1 - alpha)))
        if note is not None:
            yield note
    match = uncertainty.settings_match(calibration, cfg.sampler, cfg.steps, cfg.samples) if calibration else "same"
    if match != "same":
        yield Message("the intervals were " + uncertainty.settings_note(calibration, match), "warning")
    return Bounds(error, alpha, q, match, rough)


def _device_for(device: str, cluster: str | None) -> Generator[Message, None, tuple[Any, bool]]:
    """The device the blocks are cut on (and run on, without a cluster: there the workers choose
    theirs, and check it) and whether the network runs in bf16 there, with the messages that
    say a fallback and, once a session, the CPU's precision."""
    global _PRECISION_SAID
    dev = select_device(device if cluster is None else "cpu")
    fallback = fallback_note(device, dev) if cluster is None else None
    if fallback:
        yield Message(fallback, "warning")
    bf16 = uses_bf16(dev, inference=True)
    if bf16 and dev.type == "cpu" and cluster is None and not _PRECISION_SAID:
        _PRECISION_SAID = True  # a fact about the machine: once a session (the Enhance widget runs often)
        yield Message("this CPU multiplies bf16 natively: the network runs in bf16 (about twice as fast, the same "
                      "result to 0.001 dB); EMDIFFUSE_BF16=0 runs it in float32" if cpu_has_native_bf16() else
                      "EMDIFFUSE_BF16=1: the network runs in bf16, emulated on this CPU (several times slower)", "info")
    return dev, bf16


def _widened_for_noise(
    error: uncertainty.ErrorModel, image: Any, calibrated: float, variant: Variant, cover: int
) -> tuple[uncertainty.ErrorModel, Message | None, dict[str, Any] | None]:
    """The error model with its bounds widened for input planes noisier than the calibration
    data (a volume variant: by the median plane, as its slices are generated together, of at most
    :data:`.uncertainty.NOISE_PLANES` evenly spaced), the
    message that says so (None: nothing widened), and, where a plane clearly noisier is widened
    beyond :data:`.uncertainty.CALIBRATED_WIDENING`, the provenance's record of it (``planes``: a
    flag per widening, ``note``: what it means for the ``cover`` % interval; None: no such plane).
    Bounds widen from :data:`.uncertainty.NOISE_TOLERANCE` on, whatever the image's size (the safe
    side); a ratio within what the measure varies on an image that small
    (:func:`.uncertainty.noise_tolerance`) is said as such, not as a warning."""
    volume = 2 not in variant.input_ndims
    noise = uncertainty.input_noise(image, uncertainty.NOISE_PLANES if volume else None)
    if volume:
        noise = np.array([np.median(noise)])
    widen = uncertainty.widening(noise, calibrated, variant.noise_exponent)
    if not (widen > 1).any():
        return error, None, None
    widened = replace(error, widen=tuple(float(w) for w in widen))
    ratio = noise / calibrated
    clear = ratio > uncertainty.noise_tolerance(image.shape)
    if not clear.any():
        reads = f"{'up to ' if ratio.size > 1 else ''}{ratio.max():.1f}x"
        return widened, Message(
            f"the noise of an image this small ({' x '.join(str(n) for n in image.shape[-2:])} px) cannot be measured "
            f"precisely: it reads {reads} that of the calibration data, within the measure's spread; the error bounds "
            f"are widened by {100 * (widen.max() - 1):.0f} % to be safe",
            "info",
        ), None
    text = (
        f"{_planes(clear, volume, 'is', 'are')} up to {ratio.max():.1f}x noisier than the data the error bounds were calibrated "
        f"on; its error bounds are widened (up to {widen.max():.2f}x), and the result there is likely less accurate than on that data"
    )
    rough = clear & (widen > uncertainty.CALIBRATED_WIDENING)
    if not rough.any():
        return widened, Message(text, "warning"), None
    note = uncertainty.rough_note(_planes(rough, volume), cover)
    return widened, Message(f"{text}. {note[0].upper()}{note[1:]}", "warning"), {"planes": [bool(r) for r in rough], "note": note}


def _planes(which: np.ndarray, volume: bool, *verb: str) -> str:
    """The input planes flagged in ``which`` (one flag: the whole input), in words; ``verb``: its
    singular and plural forms, added after them."""
    if volume:
        said, plural = "the input volume", False
    elif which.size == 1:
        said, plural = "the input", False
    else:
        listed = ", ".join(str(z) for z in np.flatnonzero(which)[:8]) + (", ..." if which.sum() > 8 else "")
        said, plural = f"{int(which.sum())} of {which.size} input planes ({listed})", True
    return f"{said} {verb[plural]}" if verb else said


#: whether this process has said in what precision the CPU runs the network
_PRECISION_SAID = False

#: what model.json says about a model's history, not about what it computes: a store may be
#: resumed by a newer release whose bundled model only describes itself differently
DESCRIPTIVE = ("software_version", "training", "card")


def model_digest(model: Model) -> str:
    """A hash of what the model computes with (its description but its history, and its
    weights): a store is resumed only with the same model."""
    described = {k: v for k, v in model.to_json().items() if k not in DESCRIPTIVE}
    h = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode())
    return weights_digest(model, h)


#: how :func:`input_digest` hashes, written before the hash: a store whose key holds a hash
#: without it was made by a version that hashed only the central squares of a few planes
DIGEST_SCHEME = "sha256-planes"
#: bytes of the input :func:`input_digest` reads at once (whole chunks, at least one)
DIGEST_READ_BYTES = 64 * 2**20


def input_digest(image: Any, cancel: CancelToken | None = None) -> str:
    """A hash of the input's whole content (its dtype and every pixel): a store is resumed only
    from the same input, and an edit anywhere (a corner of one plane) makes another input.
    Shape and intensity range alone would let another image of the same range (a flipped copy)
    finish a store begun on the first one. The input (numpy, dask or zarr) is read in pieces of
    about :data:`DIGEST_READ_BYTES`, one chunk deep and whole chunks high where it is chunked, so
    that each chunk is read once and a volume larger than memory is never held (a piece is at
    least one chunk deep and high across the whole width: 512^3 chunks of a volume 8192 px wide
    read 2 GiB a uint8 piece, and make block reads slow too); each plane is hashed on its own and
    the planes' hashes in order, so the hash does not depend on the chunking. It costs one read of
    the input before the first block, short next to the prediction (not benchmarked). ``cancel`` is
    looked at after every piece (a large volume takes a while)."""
    shape = tuple(int(n) for n in image.shape)
    height, width = shape[-2:]
    depth = shape[0] if len(shape) == 3 else 1
    chunk_z = chunk_size(image, -3) if len(shape) == 3 else 1
    chunk_y = chunk_size(image, -2)
    row_bytes = max(1, width * np.dtype(image.dtype).itemsize)
    slab = min(depth, chunk_z)
    rows = max(chunk_y, DIGEST_READ_BYTES // (slab * row_bytes) // chunk_y * chunk_y)
    whole = hashlib.sha256(f"{DIGEST_SCHEME} {np.dtype(image.dtype)}".encode())
    for z0 in range(0, depth, slab):
        planes = [hashlib.sha256() for _ in range(min(slab, depth - z0))]
        lead = (slice(z0, z0 + len(planes)),) if len(shape) == 3 else ()
        for y0 in range(0, height, rows):
            piece = np.asarray(image[(*lead, slice(y0, y0 + rows))]).reshape(len(planes), -1)
            for plane, part in zip(planes, piece):
                plane.update(np.ascontiguousarray(part))
            if cancel is not None and cancel.is_set():
                raise Cancelled("prediction cancelled")
        for plane in planes:
            whole.update(plane.digest())
    return f"{DIGEST_SCHEME}:{whole.hexdigest()}"


def weights_digest(model: Model, h: Any = None) -> str:
    """A hash of the network's weights alone (a recalibrated model keeps it, a retrained one does
    not), fed into ``h`` when given (a ``hashlib`` object)."""
    h = h if h is not None else hashlib.sha256()
    for name, tensor in sorted(model.network.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def run_predict(model: Model, image: Any, **kwargs: Any) -> PredictResult:
    """:func:`predict` without the events: the final result (for scripts and tests)."""
    result = None
    for ev in predict(model, image, **kwargs):
        if isinstance(ev, PredictResult):
            result = ev
    assert result is not None
    return result
