"""The predict job: a trained model over a whole image or volume, with an uncertainty map.

``predict(...)`` is a generator of events (progress after every sampler step, messages, and a
final :class:`PredictResult`). The computation runs in one helper thread so that progress can be
reported from inside the sampler loop; cancelling (the token, or closing the generator) stops
it within one sampler step and keeps what was finished.
"""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from .. import __version__, uncertainty
from ..config import SampleConfig
from ..data.normalise import Normaliser, fit_normaliser, to_dtype
from ..data.safe_output import SOFTWARE
from ..engine.device import autocast, configure_backends, prepare_network, select_device
from ..engine.diffusion import Denoiser, Schedule
from ..engine.samplers import get_sampler, posterior_mean
from ..engine.tiling import TiledSampler
from ..errors import Cancelled
from ..model_file import Model
from ..variants import get_variant
from .events import CancelToken, Message, PredictResult, Progress, new_cancel_token
from .predict_output import PredictionOutput, describe_region, in_memory

log = logging.getLogger(__name__)


ESTIMATES = ("best", "mean")


class _Discard:
    """An output that keeps nothing (the sampling pass's mean, when the best estimate is the output)."""

    def __setitem__(self, key: Any, value: np.ndarray) -> None:
        pass


_DISCARD = _Discard()


class _Cast:
    """Output wrapper converting float results to an integer dtype (clipped and rounded)."""

    def __init__(self, target: Any, dtype: np.dtype) -> None:
        self.target, self.dtype, self.shape = target, np.dtype(dtype), target.shape

    def __setitem__(self, key: Any, value: np.ndarray) -> None:
        self.target[key] = to_dtype(value, self.dtype)


def _normaliser_for(model: Model, image: Any) -> Normaliser:
    """Percentile statistics of ``image``; 8-bit input to a model that records the original
    EMDiffuse convention (``"uint8": "full range"``) maps 0 and 255 to -1 and 1, exactly as the
    original did in training."""
    if model.info.normalisation.get("uint8") == "full range" and np.dtype(image.dtype) == np.uint8:
        return Normaliser(0.0, 255.0)
    return fit_normaliser(image, name="image")


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
) -> Iterator[Any]:
    """Enhance ``image`` (numpy or dask; 2D or 3D) with ``model``.

    ``sample`` overrides the model's sampling settings (sampler, steps, samples, tiles).
    ``out_dtype`` is "float32" or "input" (the input's dtype, clipped and rounded).
    ``output``: ``OUT.tif`` writes ``OUT.tif`` and ``OUT_uncertainty.tif`` at the end;
    ``OUT.zarr`` a zarr group (arrays ``mean``, ``std``, ``samples``) tile by tile, for results
    larger than memory (see :mod:`.predict_output`: nothing existing is replaced without
    ``overwrite``, a cancelled run writes only its finished planes, as partial files).
    ``normaliser`` fixes the intensity statistics (otherwise they are measured on the whole
    input). ``model_name`` and ``origin`` (the first output pixel's position in µm, per axis:
    where a result of part of an image lies) are recorded in the output's provenance. ``compile`` runs the network
    through ``torch.compile``.
    """
    if estimate not in ESTIMATES:
        raise ValueError(f"unknown estimate {estimate!r}; choose one of {', '.join(ESTIMATES)}")
    cancel = cancel or new_cancel_token()
    cfg = sample or model.preset.sample
    variant = get_variant(model.variant)
    options = variant.options(model.preset.variant_options)
    variant.check_input(image, options)
    voxel = tuple(voxel) if voxel is not None else (1.0,) * image.ndim
    geometry = variant.output_geometry(image.shape, voxel, options)
    dtype = np.dtype(image.dtype) if str(out_dtype) == "input" else np.dtype(out_dtype)
    n_samples = cfg.samples if keep_samples else 0
    out = PredictionOutput(output, input_paths, overwrite, n_samples) if output is not None else None
    try:
        if out is not None:  # before any computation: a refusal now costs nothing
            out.claim(int(np.prod(geometry.shape)) * (dtype.itemsize * (1 + n_samples) + 4))
        normaliser = normaliser or _normaliser_for(model, image)

        for note in (variant.voxel_warning(voxel, options), model.quality_warning()):
            if note:
                yield Message(note, "warning")
        calibration = model.calibration
        q = uncertainty.scale(calibration, alpha if alpha is not None else calibration["alpha"]) if calibration else None
        if calibration and (cfg.samples, cfg.steps, cfg.sampler) != (calibration["samples"], calibration["steps"], calibration["sampler"]):
            yield Message(
                f"the intervals were calibrated for {calibration['samples']} samples of {calibration['steps']} "
                f"{calibration['sampler']} steps; with other sampling settings their coverage is approximate",
                "warning",
            )
        dev = select_device(device)
        if device not in ("auto", "cpu") and dev.type == "cpu":
            yield Message(f"device {device!r} is not usable; running on the CPU", "warning")
        configure_backends(dev)
        network = prepare_network(model.network.eval(), dev, compile=compile)
        denoiser = Denoiser.from_config(network, model.preset.diffusion)
        sigmas = Schedule.from_config(model.preset.diffusion).sampling_sigmas(cfg.steps, cfg.spacing)

        provenance = {
            "software": f"{SOFTWARE} {__version__}",
            "model": model_name or model.preset.name,
            "variant": model.variant,
            "variant_options": options.model_dump(mode="json"),
            "settings": cfg.model_dump(mode="json"),
            "input": [str(Path(p).resolve()) for p in input_paths],
            "voxel_size": list(geometry.voxel),
            **({"origin": [float(o) for o in origin]} if origin is not None else {}),
        }
        shape = geometry.shape
        if out is not None:
            out_mean, out_std, out_samples = out.allocate(shape, dtype, n_samples, provenance)
        else:
            out_mean, out_std, out_samples = in_memory(shape, dtype, n_samples)
        mean_w = _Cast(out_mean, dtype) if dtype != np.float32 else out_mean
        samples_w = _Cast(out_samples, dtype) if out_samples is not None and dtype != np.float32 else out_samples

        events: queue.Queue = queue.Queue()

        def on_step(done: int, total: int) -> None:
            if cancel.is_set():
                raise Cancelled("prediction cancelled")
            events.put(Progress(done, total, "sampling"))

        def tiler_for(sampler: Any, levels: torch.Tensor, samples: int) -> TiledSampler:
            return TiledSampler(
                denoiser,
                sampler,
                levels,
                out_channels=model.info.out_channels,
                size_multiple=network.size_multiple,
                tile_size=cfg.tile_size,
                overlap=cfg.overlap,
                samples=samples,
                tile_batch=cfg.tile_batch,
                device=dev,
                seed=cfg.seed,
                eta=cfg.eta,
                step_callback=on_step,
            )

        sampling = tiler_for(get_sampler(cfg.sampler), sigmas, cfg.samples)
        # the best estimate: one pass at the highest noise level (posterior_mean uses sigmas[0] only)
        tilers = [tiler_for(posterior_mean, sigmas[[0, -1]], 1), sampling] if estimate == "best" else [sampling]
        total = sum(t.count_steps(h, w) for h, w in variant.plan(image.shape, options) for t in tilers)
        progress = {"offset": 0, "planes": 0}

        def run_plane(read, h, w, mean, std, samples, plane_key=0) -> None:
            with torch.inference_mode(), autocast(dev, inference=True):
                for tiler in tilers:
                    # with a best estimate, the sampling pass gives only the spread (and the samples)
                    target = _DISCARD if tiler is sampling and len(tilers) > 1 else mean
                    spread = (std, samples) if tiler is sampling else (None, None)
                    tiler.run(read, h, w, target, *spread, plane_key, progress["offset"], total)
                    progress["offset"] += tiler.count_steps(h, w)
            progress["planes"] += 1

        def work() -> None:
            variant.predict(image, options, normaliser, run_plane, mean_w, out_std, samples_w)

        yield Progress(0, total, "sampling")
        complete = True
        try:
            yield from _in_thread(work, events, cancel)
        except Cancelled:
            complete = False
        bounds = _error_map_and_bounds(out_mean, out_std, q if out is None else None)
        region = () if complete else variant.finished_region(shape, progress["planes"], options)
        written: list[Path] = []
        if out is not None:
            written, (out_mean, out_std, out_samples) = out.finish(out_mean, out_std, out_samples, complete, region, geometry.voxel, provenance)
        if not complete:
            if region is None:
                kept = "no plane was finished, nothing is written" if out is not None else "no plane was finished"
            else:
                kept = "the finished part " + describe_region(region, shape) + (f" is in {', '.join(map(str, written))}" if written else "")
            yield Message(f"cancelled: {kept}", "warning")
        yield PredictResult(out_mean, out_std, out_samples, geometry.voxel, complete, progress["planes"], *bounds, tuple(written))
    finally:
        if out is not None:
            out.close()


def _error_map_and_bounds(mean: Any, std: Any, q: float | None) -> tuple[Any, Any]:
    """Plane by plane: the samples' spread becomes the pooled error map (:func:`..uncertainty.error_map`);
    with a calibration scale ``q``, also the interval ``mean -+ q u`` (in memory)."""
    lower = upper = None
    if q is not None:
        lower, upper = np.zeros(std.shape, np.float32), np.zeros(std.shape, np.float32)
    planes = [...] if len(std.shape) == 2 else range(std.shape[0])
    for z in planes:
        u = uncertainty.error_map(np.asarray(std[z]))
        std[z] = u
        if q is not None:
            m = np.asarray(mean[z], np.float32)
            lower[z], upper[z] = m - q * u, m + q * u
    return lower, upper


def _in_thread(work: Callable[[], None], events: queue.Queue, cancel: CancelToken) -> Iterator[Any]:
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

    thread = threading.Thread(target=target, name="emdiffuse-predict", daemon=True)
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


def run_predict(model: Model, image: Any, **kwargs: Any) -> PredictResult:
    """:func:`predict` without the events: the final result (for scripts and tests)."""
    result = None
    for ev in predict(model, image, **kwargs):
        if isinstance(ev, PredictResult):
            result = ev
    assert result is not None
    return result
