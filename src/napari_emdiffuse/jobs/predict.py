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

from .. import uncertainty
from ..config import SampleConfig
from ..data.normalise import Normaliser, fit_normaliser, to_dtype
from ..engine.device import autocast, configure_backends, prepare_network, select_device
from ..engine.diffusion import Denoiser, Schedule
from ..engine.samplers import get_sampler, posterior_mean
from ..engine.tiling import TiledSampler
from ..errors import Cancelled
from ..model_file import Model
from ..variants import get_variant
from .events import CancelToken, Message, PredictResult, Progress, new_cancel_token

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


def _allocate(shape: tuple[int, ...], dtype: np.dtype, store: Any, name: str, chunks: tuple[int, ...]) -> Any:
    if store is None:
        return np.zeros(shape, dtype)
    return store.zeros(name=name, shape=shape, dtype=dtype, chunks=chunks)  # zarr 2 and 3 alike


def _normaliser_for(model: Model, image: Any) -> Normaliser:
    """Percentile statistics of ``image``; 8-bit input to a model that records the original
    EMDiffuse convention (``"uint8": "full range"``) maps 0 and 255 to -1 and 1, exactly as the
    original did in training."""
    if model.info.normalisation.get("uint8") == "full range" and np.dtype(image.dtype) == np.uint8:
        return Normaliser(0.0, 255.0)
    return fit_normaliser(image, name="image")


def _open_store(output: str | Path, inputs: Sequence[Path]) -> Any:
    import zarr

    from ..data.io import refuse_overwrite

    refuse_overwrite(Path(output), list(inputs))  # nor inside an input container, nor around one
    return zarr.open_group(str(Path(output).resolve()), mode="w")


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
    estimate: str = "best",
    alpha: float | None = None,
) -> Iterator[Any]:
    """Enhance ``image`` (numpy or dask; 2D or 3D) with ``model``.

    ``estimate`` is what the main output holds: ``"best"``, the network's own posterior-mean
    estimate (two network evaluations per tile; the highest PSNR, for measurement), or
    ``"mean"``, the mean of the K samples. Either way the uncertainty is the samples' spread,
    and ``keep_samples`` keeps the samples themselves (sharp, for visual inspection).
    The uncertainty is the samples' spread pooled at the scale of structures
    (:func:`..uncertainty.error_map`); a calibrated model also gives ``lower`` and ``upper``,
    ``estimate -+ q u``, which hold the truth at ``1 - alpha`` of the pixels (``alpha``: the model's).
    ``sample`` overrides the model's sampling settings (sampler, steps, samples, tiles).
    ``out_dtype`` is "float32" or "input" (the input's dtype, clipped and rounded).
    ``output`` writes into a zarr group (arrays ``mean``, ``std``, ``samples``) tile by tile,
    for results larger than memory. ``normaliser`` fixes the intensity statistics (otherwise
    they are measured on the whole input). ``compile`` runs the network through ``torch.compile``.
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
    normaliser = normaliser or _normaliser_for(model, image)
    dtype = np.dtype(image.dtype) if str(out_dtype) == "input" else np.dtype(out_dtype)

    for note in (variant.voxel_warning(voxel, options), model.quality_warning()):
        if note:
            yield Message(note, "warning")
    calibration = model.calibration
    q = uncertainty.scale(calibration, alpha if alpha is not None else calibration["alpha"]) if calibration else None
    if calibration and (cfg.samples, cfg.steps, cfg.sampler) != (calibration["samples"], calibration["steps"], calibration["sampler"]):
        yield Message(
            f"the intervals were calibrated for {calibration['samples']} samples of {calibration['steps']} {calibration['sampler']} "
            "steps; with other sampling settings their coverage is approximate",
            "warning",
        )
    dev = select_device(device)
    if device not in ("auto", "cpu") and dev.type == "cpu":
        yield Message(f"device {device!r} is not usable; running on the CPU", "warning")
    configure_backends(dev)
    network = prepare_network(model.network.eval(), dev, compile=compile)
    denoiser = Denoiser.from_config(network, model.preset.diffusion)
    sigmas = Schedule.from_config(model.preset.diffusion).sampling_sigmas(cfg.steps, cfg.spacing)

    store = _open_store(output, input_paths) if output is not None else None
    shape = geometry.shape
    chunks = (1,) * (len(shape) - 2) + tuple(min(s, 512) for s in shape[-2:])
    out_mean = _allocate(shape, dtype, store, "mean", chunks)
    out_std = _allocate(shape, np.float32, store, "std", chunks)
    out_samples = (
        _allocate((cfg.samples, *shape), dtype, store, "samples", (1, *chunks)) if keep_samples else None
    )
    bounds = [_allocate(shape, np.float32, store, name, chunks) for name in ("lower", "upper")] if q is not None else [None, None]
    if store is not None:
        store.attrs.update({"voxel_size": list(geometry.voxel), "variant": model.variant, "complete": False})
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
                out = _DISCARD if tiler is sampling and len(tilers) > 1 else mean
                spread = (std, samples) if tiler is sampling else (None, None)
                tiler.run(read, h, w, out, *spread, plane_key, progress["offset"], total)
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
        yield Message("cancelled: planes finished so far are kept", "warning")
    _error_map_and_bounds(out_mean, out_std, q, *bounds)
    if store is not None:
        store.attrs["complete"] = complete
    yield PredictResult(out_mean, out_std, out_samples, geometry.voxel, complete, progress["planes"], *bounds)


def _error_map_and_bounds(mean: Any, std: Any, q: float | None, lower: Any, upper: Any) -> None:
    """Plane by plane: the samples' spread becomes the pooled error map, and ``mean -+ q u`` the bounds."""
    planes = [...] if len(std.shape) == 2 else range(std.shape[0])
    for z in planes:
        u = uncertainty.error_map(np.asarray(std[z]))
        std[z] = u
        if q is not None:
            m = np.asarray(mean[z], np.float32)
            lower[z] = m - q * u
            upper[z] = m + q * u


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
