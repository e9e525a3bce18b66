"""The train job: patches, AdamW, EMA weights, validation, atomic checkpoints, resume.

Every random draw of step ``i`` (patches, augmentation, timesteps, noise, dropout) comes from
generators seeded by ``(seed, i)``, and the learning rate and EMA decay are functions of ``i``.
So a run killed at any moment and resumed from its last checkpoint ends at exactly the weights
of an uninterrupted run with the same seed, and the checkpoint needs no RNG state.

Under ``torchrun`` or ``srun`` every process trains on its own patches (its rank is one more key
of those generators; rank 0 draws what a single process would) through DistributedDataParallel;
only rank 0 validates, calibrates and writes (lock, checkpoint, model), the others wait for it at
the end of those blocks (see docs/training-on-several-gpus.md).

A run folder holds ``model.json`` + ``weights.safetensors`` (the EMA model, usable at once) and
``checkpoint.safetensors`` (raw weights, EMA, optimizer state; its JSON header says the step).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .. import metrics, uncertainty
from ..config import Preset, parse_preset
from ..engine.device import autocast, configure_backends, fallback_note, prepare_network, select_device
from ..engine.diffusion import Denoiser, DiffusionProcess
from ..engine.samplers import get_sampler, posterior_mean
from ..engine.distributed import Group, World, detect_world, rank_device
from ..engine.rng import splitmix
from ..data.safe_output import Lock
from ..errors import Cancelled, InputError, ModelFileError
from ..model_file import MODEL_JSON, WEIGHTS, Model, ModelInfo, atomic_save_tensors, load_state_strict, load_tensors, stored_preset
from ..variants import complete, get_variant, model_options, resolve
from ..variants.base import Roi, Split
from .events import CancelToken, CheckpointSaved, Loss, Message, Preview, Progress, TrainResult, Validation

CHECKPOINT = "checkpoint.safetensors"
LOCK = "train.lock"
#: what a run folder holds (and nothing else: a folder with other files is a user's)
RUN_FILES = (MODEL_JSON, WEIGHTS, CHECKPOINT, LOCK, "MODEL_CARD.md")
WARMUP_STEPS = 100
#: wall-clock seconds after which a validation is due, however few steps that was
VALIDATE_SECONDS = 180.0
#: calibration patches drawn at once: under a time limit the calibration stops after the pass
#: that crosses it (keeping at least :data:`MIN_CAL_PATCHES`), so a pass is what it can overrun
CAL_CHUNK = 8
#: the fewest patches a time limit leaves the calibration (half fit the scale, half check it)
MIN_CAL_PATCHES = 8


def learning_rate(preset: Preset, step: int) -> float:
    """Linear warm-up, then constant or a cosine decay to a tenth at ``iterations`` (a function of
    the step, so resume needs no scheduler state)."""
    tc = preset.train
    lr = tc.lr * min(1.0, (step + 1) / WARMUP_STEPS)
    if tc.lr_schedule == "cosine":
        done = min(1.0, step / max(1, tc.iterations))
        lr *= 0.1 + 0.45 * (1 + math.cos(math.pi * done))
    return lr


def ema_decay(preset: Preset, step: int) -> float:
    """EMA decay ramped up linearly from 0 over the first ``ema_warmup`` steps, so that the
    average of a short run follows the network instead of staying at the initial weights."""
    warm = preset.train.ema_warmup
    return preset.train.ema_decay * min(1.0, (step + 1) / warm) if warm else preset.train.ema_decay


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in normalised units (the data span -1..1)."""
    return metrics.psnr(a, b, data_range=2.0)


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, {"param_groups": sd["param_groups"]}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


class _Trainer:
    """State of one run; :func:`train` drives it."""

    def __init__(self, preset: Preset, model: Model, device: torch.device, group: Group) -> None:
        self.preset, self.model, self.device, self.rank = preset, model, device, group.world.rank
        self.net = prepare_network(model.network, device).train()
        # what the loss runs: the network, or under several processes its DDP wrapper (gradients averaged)
        self.forward_net: torch.nn.Module = self.net
        if group.active:
            ids = [device.index] if device.type == "cuda" else None
            self.forward_net = torch.nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        self.ema = copy.deepcopy(self.net).eval().requires_grad_(False)
        self._ema_params, self._net_params = list(self.ema.parameters()), list(self.net.parameters())
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=preset.train.lr, weight_decay=preset.train.weight_decay)
        self.process = DiffusionProcess(preset.diffusion)
        self.step = 0
        self.elapsed = 0.0
        self.val_psnr: float | None = None  # the last validation's
        self.history: list[dict[str, float]] = []

    def save_checkpoint(self, run_dir: Path, extra: dict[str, Any]) -> Path:
        tensors = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        opt_tensors, opt_meta = _optimizer_tensors(self.opt)
        tensors.update(opt_tensors)
        state = {
            "step": self.step,
            "elapsed": self.elapsed,
            "val_psnr": self.val_psnr,
            "history": self.history[-1000:],
            "preset": self.preset.model_dump(mode="json"),
            "model": self.model.to_json(),
            "optimizer": opt_meta,
            **extra,
        }
        path = run_dir / CHECKPOINT
        atomic_save_tensors(tensors, path, metadata={"state": json.dumps(state)})
        return path

    def load_checkpoint(self, path: Path) -> dict[str, Any]:
        state = checkpoint_state(path.parent)
        tensors = load_tensors(path)
        load_state_strict(self.net, {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}, str(path))
        load_state_strict(self.ema, {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}, str(path))
        self.opt.load_state_dict(_optimizer_state(tensors, state["optimizer"]))
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
        self.val_psnr, self.history = state.get("val_psnr"), list(state.get("history", []))
        return state

    def step_seed(self, *keys: int) -> int:
        """A seed for one of this step's draws: rank 0's are those of a single process, each
        other rank's its own."""
        return splitmix(self.preset.train.seed, *keys, *rank_keys(self.rank))

    def train_step(self, cond: np.ndarray, target: np.ndarray) -> float:
        i = self.step
        lr = learning_rate(self.preset, i)
        for group in self.opt.param_groups:
            group["lr"] = lr
        torch.manual_seed(self.step_seed(i, 1))  # dropout
        gen = torch.Generator().manual_seed(self.step_seed(i, 2))
        c = torch.from_numpy(cond).to(self.device)
        t = torch.from_numpy(target).to(self.device)
        with autocast(self.device):
            loss = self.process.loss(self.forward_net, t, c, generator=gen)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.preset.train.grad_clip)
        self.opt.step()
        d = ema_decay(self.preset, i)
        with torch.no_grad():
            torch._foreach_lerp_(self._ema_params, self._net_params, 1 - d)  # one fused update for all tensors
            for be, b in zip(self.ema.buffers(), self.net.buffers()):
                be.copy_(b)
        self.step += 1
        return float(loss.detach())

    @torch.no_grad()
    def sample(self, cond: np.ndarray, sampler: Any, steps: int, *key: int) -> np.ndarray:
        """What the EMA model makes of ``cond`` (normalised units) with ``sampler`` over
        ``steps`` noise levels; the starting noise is keyed by ``key``."""
        den = Denoiser.from_config(self.ema, self.preset.diffusion)
        sigmas = self.process.schedule.sampling_sigmas(steps).to(self.device)
        c = torch.from_numpy(cond).to(self.device)
        shape = (cond.shape[0], self.model.info.out_channels, *cond.shape[-2:])
        gen = torch.Generator().manual_seed(splitmix(self.preset.train.seed, 0xBA1, *key))
        x = torch.randn(shape, generator=gen).to(self.device) * sigmas[0]
        with autocast(self.device):
            out = sampler(lambda xx, s: den(xx, s, c), x, sigmas)
        return out.float().cpu().numpy()

    def best_estimate(self, cond: np.ndarray) -> np.ndarray:
        """The network's posterior-mean estimate (two evaluations; what prediction outputs by default)."""
        return self.sample(cond, posterior_mean, 1, 0)

    def preview(self, cond: np.ndarray) -> np.ndarray:
        """One sample, as a user would see it, at ``train.val_steps`` sampler steps."""
        name = self.preset.sample.sampler
        return self.sample(cond, get_sampler("ddim" if name == "ddpm" else name), self.preset.train.val_steps, 1)


def wrap_up_seconds(trainer: _Trainer, val_cond: np.ndarray, cal_cond: np.ndarray, cfg: Any) -> float:
    """How long the final validation and calibration will take, from a probe of both on two
    patches (the probe's draws change no training state: every draw of training is keyed by its step)."""
    probe = cal_cond[:2]
    trainer.best_estimate(probe)  # the first evaluation of a shape also sets the network up for it: not timed
    t0 = time.monotonic()
    trainer.best_estimate(probe)
    t1 = time.monotonic()
    if cfg.samples >= 2:
        trainer.sample(probe, get_sampler(cfg.sampler, cfg.eta), cfg.steps, 100)
    t2 = time.monotonic()
    per_estimate, per_draw = (t1 - t0) / len(probe), (t2 - t1) / len(probe)
    if cfg.samples < 2:  # no calibration: the validation alone
        return per_estimate * len(val_cond)
    return per_estimate * (len(val_cond) + len(cal_cond)) + per_draw * len(cal_cond) * cfg.samples


def wrap_up_note(budget: float, wrap_up: float, patches: int) -> str:
    """What a time limit leaves for training once the final validation and calibration (about
    ``wrap_up`` seconds on ``patches`` calibration patches; none where the model draws a single
    sample) are paid for; training keeps at least half the limit, and a calibration that does
    not fit in the rest uses fewer patches, so the job ends at about the limit."""
    what = "the final validation and calibration of the uncertainty" if patches else "the final validation"
    if wrap_up > budget / 2:
        rest = (
            f"the uncertainty is calibrated on as many of its {patches} held-out patches as the rest of the limit allows "
            f"(at least {min(patches, MIN_CAL_PATCHES)}; a longer limit calibrates it on all)"
            if patches else f"the job ends about {budget / 2 + wrap_up:.0f} s after it started"
        )
        return f"{what} would take about {wrap_up:.0f} s, more than half the time limit ({budget:.0f} s): training stops after {budget / 2:.0f} s, and {rest}"
    return f"the time limit includes {what} (about {wrap_up:.0f} s): training stops after about {budget - wrap_up:.0f} s"


def rank_keys(rank: int) -> tuple[int, ...]:
    """The extra key of a rank's random streams (none for rank 0, so that one process trains as before)."""
    return (rank,) if rank else ()


def _baseline(source: Any, cond: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The variant's baseline for ``cond`` as an image (a model that learnt the clean image itself
    is compared with its input)."""
    base = source.baseline(cond)
    return base if base is not None else cond[:, : target.shape[1]]


def target_spread(source: Any, seed: int, n: int = 64) -> float:
    """The standard deviation of the network's target over ``n`` training patches: EDM's
    ``sigma_data``, which scales the network's input and output to unit variance."""
    _, target = source.sample(np.random.default_rng([seed, 0x5D]), n, source.patch)
    return round(max(float(target.std()), 1e-3), 4)


def _model_for(preset: Preset, init: Model | None) -> Model:
    """A new model for ``preset``, or one starting from ``init``."""
    if init is None:
        variant, options = resolve(preset)
        out_c, cond_c = variant.channels(options)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(preset.train.seed)  # the initial weights are part of the run's seed
            return Model(complete(preset), ModelInfo(out_channels=out_c, cond_channels=cond_c))
    if init.variant != preset.variant:
        raise ModelFileError(f"cannot fine-tune a {init.variant} model as {preset.variant}")
    # Keep the starting model's network, diffusion and the options the new preset does not set;
    # take the new training settings.
    variant = get_variant(preset.variant)
    options = variant.options({**init.preset.variant_options, **preset.variant_options})
    out_c, cond_c = variant.channels(options)
    if (init.info.out_channels, init.info.cond_channels) != (out_c, cond_c):
        raise ModelFileError("the starting model was trained with other variant options (e.g. another factor)")
    merged = preset.with_overrides(
        {"network": init.preset.network.model_dump(), "diffusion": init.preset.diffusion.model_dump(), "variant_options": dict(options)}
    )
    model = Model(merged, ModelInfo(out_c, cond_c, training={"fine_tuned_from": init.info.training}))
    model.network.load_state_dict(init.network.state_dict())
    return model


def finished_run(run_dir: Path, step: int, preset: Preset) -> tuple[TrainResult, str] | None:
    """The result of a run resumed at or past the steps ``preset`` asks for, whose model was
    validated at its last step (and calibrated on all its patches, if it samples more than once),
    and what to say: there is nothing to do, where the wrap-up took minutes to compute it all
    again. None where something is left (steps; a wrap-up a kill interrupted: the checkpoint is
    saved before it; a calibration a time limit cut short)."""
    if step < preset.train.iterations:
        return None
    try:
        metrics = Model.load(run_dir).info.metrics
    except Exception:  # noqa: BLE001 - no readable model: the wrap-up makes one
        return None
    cal = metrics.get("calibration")
    # all its patches (a model.json from before the count was kept: as it was)
    calibrated = cal is not None and ("patches" not in cal or cal["patches"] + cal.get("check_patches", 0) >= preset.train.cal_patches)
    if metrics.get("val_step") != step or not (calibrated or preset.sample.samples < 2):
        return None
    done = "validated and calibrated" if cal is not None else "validated"
    text = (
        f"nothing left to train: the run in {run_dir} has trained {step} steps (asked: {preset.train.iterations}) and was "
        f"{done} then; ask for more steps to train it further"
    )
    return TrainResult(run_dir, step, "nothing left to train", metrics.get("val_psnr"), metrics.get("val_baseline_psnr")), text


def checkpoint_state(run_dir: str | Path) -> dict[str, Any]:
    """The JSON state of a run's checkpoint (step, preset, model description, history)."""
    from safetensors import safe_open

    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise ModelFileError(f"{run_dir}: nothing to resume ({CHECKPOINT} is missing)")
    try:
        with safe_open(str(path), framework="pt") as f:
            state = json.loads((f.metadata() or {})["state"])
        state["preset"] = stored_preset(state["preset"])
        return state
    except Exception as err:  # noqa: BLE001 - any failure means the file is unusable
        raise ModelFileError(f"{path}: not a readable checkpoint ({err})") from None


def check_run_folder(run_dir: str | Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start a new run in a folder that holds a trained model or checkpoint unless
    the user asked to replace it (``overwrite``) or to continue it (``resume``)."""
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise InputError("--resume continues the run in --out, --overwrite replaces it: give one of them")
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"{run_dir}: a file, not a run folder; choose another --out")
    held = [name for name in (MODEL_JSON, WEIGHTS, CHECKPOINT) if (run_dir / name).exists()]
    if held and not resume and not overwrite:
        raise InputError(f"{run_dir} holds a trained model ({', '.join(held)}); add --resume to continue it, or --overwrite to start afresh and replace it")
    if not held and run_dir.is_dir() and any(p.name not in RUN_FILES and not p.name.startswith(".") for p in run_dir.iterdir()):  # (hidden: a killed write's temporaries)
        raise InputError(f"{run_dir}: an existing folder that is not a training run; refusing to write into it, choose a new --out")


def continues_run(run_dir: str | Path, resume: bool, overwrite: bool, world: World | None = None) -> bool:
    """Whether a run started with ``--resume``/``--overwrite`` continues the checkpoint in
    ``run_dir`` (after refusing what :func:`check_run_folder` refuses).

    Under a launcher the same command must serve every attempt: a restart by the launcher
    (torchrun ``--max-restarts``, a requeued SLURM job) continues the checkpoint its own earlier
    attempt wrote, whatever the flags; and ``--resume`` on a folder with no checkpoint yet starts
    the run, so a job script may always say ``--resume``."""
    world = detect_world() if world is None else world
    run_dir = Path(run_dir)
    if (run_dir / CHECKPOINT).is_file():
        if world.restart and world.run_id and checkpoint_state(run_dir).get("launch_id") == world.run_id:
            return True
    elif resume and world.launcher:
        resume = False
    check_run_folder(run_dir, resume, overwrite)
    return resume


@contextlib.contextmanager
def _run_session(run_dir: Path, world: World, device: torch.device) -> Iterator[Group]:
    """The process group of the run, and rank 0's lock on the run folder (an empty folder it
    created is removed again, so a run refused at once leaves no folder)."""
    group = Group(world, device)
    created = not run_dir.exists()
    lock = Lock(run_dir / LOCK, f"run folder {run_dir}")
    try:
        with group.together():
            if world.is_main:
                lock.acquire()
        yield group
    finally:
        lock.release()
        group.close()
        if created and world.is_main:
            with contextlib.suppress(OSError):
                run_dir.rmdir()


def train(
    preset: Preset,
    arrays: dict[str, Any],
    run_dir: str | Path,
    device: str = "auto",
    init_model: Model | None = None,
    resume: bool = False,
    roi: Roi | None = None,
    preview_every: int | None = None,
    data_note: str = "",
    cancel: CancelToken | None = None,
    pixel_size_um: float | None = None,
) -> Iterator[Any]:
    """Train (or fine-tune ``init_model``, or ``resume`` a run in ``run_dir``) on ``arrays``.

    ``arrays`` holds what the variant's ``training_inputs`` name, e.g. ``{"input": noisy,
    "target": clean}``; ``roi`` restricts training to a rectangle (fine-tuning on a region).
    Yields :mod:`.events`; the last is a :class:`TrainResult`. The run folder is locked
    (``train.lock``) for the run, so a second process training into it refuses. Under torchrun
    or srun each process calls this with the same arguments (see the module's docstring).
    ``pixel_size_um``: the pixel size of the network's inputs, where known; the model records it,
    and prediction warns on inputs of a very different one.
    """
    run_dir = Path(run_dir)
    world = detect_world()
    dev = rank_device(select_device(device), world)
    fallback = fallback_note(device, dev)
    if fallback:  # the Train widget asked for a GPU that is busy or gone: say so where it shows
        yield Message(fallback, "warning")
    with _run_session(run_dir, world, dev) as group:
        yield from _train(preset, arrays, run_dir, dev, group, init_model, resume, roi, preview_every, data_note, cancel, pixel_size_um)


def _train(preset, arrays, run_dir, dev, group, init_model, resume, roi, preview_every, data_note, cancel, pixel_size_um):  # noqa: ANN001 - train()'s
    world = group.world
    ckpt = run_dir / CHECKPOINT
    if resume:
        saved = checkpoint_state(run_dir)
        old = parse_preset(saved["preset"], source=str(ckpt))
        # Only the stopping rule may change on resume; everything else must match to stay exact.
        preset = old.with_overrides({"train": {"iterations": preset.train.iterations, "minutes": preset.train.minutes}})
        model = Model.from_json(saved["model"], source=str(ckpt))
        finished = finished_run(run_dir, int(saved["step"]), preset)
        if finished is not None:
            yield Message(finished[1])
            yield finished[0]
            return
    else:
        model = _model_for(preset, init_model)
        preset = model.preset
    variant, options = get_variant(preset.variant), model_options(model)
    tc = preset.train
    missing = [k for k in variant.training_inputs if k not in arrays]
    if missing:
        raise ValueError(f"{variant.title} needs {', '.join(variant.training_inputs)}; missing {', '.join(missing)}")

    held_out = {k: arrays[f"val_{k}"] for k in variant.training_inputs if f"val_{k}" in arrays}
    if len(held_out) == len(variant.training_inputs) and roi is None:
        # a prepared set: its validation patches come from other slices; train on every row of the rest
        train_arrays = {k: arrays[k] for k in variant.training_inputs}
        train_src = variant.training_pairs(train_arrays, options, Split("all", 0.0, tc.patch_size, None, tc.min_foreground_std))
        val_src = variant.training_pairs(held_out, options, Split("all", 0.0, tc.patch_size, None, tc.min_foreground_std))
        val_src.summary["held_out"] = "validation patches of the prepared set"
    else:
        train_src = variant.training_pairs(arrays, options, Split("train", tc.val_fraction, tc.patch_size, roi, tc.min_foreground_std))
        val_src = variant.training_pairs(arrays, options, Split("val", tc.val_fraction, tc.patch_size, roi, tc.min_foreground_std))
    patch = train_src.patch
    if patch != tc.patch_size:
        yield Message(f"patch size reduced to {patch} px to fit the training region", "warning")
    val_cond, val_target = val_src.sample(np.random.default_rng([tc.seed, 0xBA1]), tc.val_patches, val_src.patch)
    if preset.diffusion.prediction == "edm" and preset.diffusion.sigma_data is None:
        preset = preset.with_overrides({"diffusion": {"sigma_data": target_spread(train_src, tc.seed)}})
        model.preset = preset

    configure_backends(dev)
    trainer = _Trainer(preset, model, dev, group)
    if resume:
        saved_world = trainer.load_checkpoint(ckpt).get("processes", 1)
        yield Message(f"resumed at step {trainer.step}")
        if saved_world != world.size:
            yield Message(
                f"the run continues with {world.size} process(es) instead of {saved_world}: the effective batch "
                "changes, so it will not end where an uninterrupted run would", "warning",
            )
    val_truth = val_src.as_image(val_cond, val_target)
    baseline_psnr = psnr(_baseline(val_src, val_cond, val_target), val_truth)
    # calibration patches: the same held-out region, other places (half fit the scale, half check it)
    cal_cond, cal_target = val_src.sample(np.random.default_rng([tc.seed, 0xCA1]), tc.cal_patches, val_src.patch)
    model.info.training.update(
        {
            "data": data_note,
            "train_region": train_src.summary,
            "val_region": val_src.summary,
            "patch_size": patch,
            "device": str(dev),
            "processes": world.size,
        }
    )
    if pixel_size_um:
        model.info.training["pixel_size_um"] = float(pixel_size_um)

    def validate() -> Validation:
        pred = trainer.best_estimate(val_cond)
        trainer.val_psnr = psnr(np.clip(val_src.as_image(val_cond, pred), -1, 1), val_truth)
        trainer.history.append({"step": trainer.step, "val_psnr": trainer.val_psnr})
        return Validation(trainer.step, trainer.val_psnr, baseline_psnr, variant.baseline_name)

    def final_validation(deadline: float | None) -> Iterator[Any]:
        """Score the model that is saved against the baseline, calibrate it, and say how it did."""
        result = validate()
        yield result
        metrics: dict[str, Any] = {
            "val_psnr": result.psnr,
            "val_baseline_psnr": baseline_psnr,
            "val_baseline": variant.baseline_name,
            "val_step": trainer.step,
            "val_patches": int(val_cond.shape[0]),
            "val_estimate": "best",
        }
        calibration = yield from calibrate(deadline)
        if calibration is not None:
            metrics["calibration"] = calibration
        model.info.metrics = metrics
        yield Message(
            f"validation on {val_cond.shape[0]} held-out patches: best estimate {result.psnr:.2f} dB, "
            f"{variant.baseline_name} {baseline_psnr:.2f} dB"
        )
        warning = model.quality_warning()
        if warning:
            yield Message(warning, "warning")

    def calibrate(deadline: float | None) -> Iterator[Any]:
        """Split-conformal scale of the error map (:mod:`..uncertainty`) at the model's sampling
        settings, on the calibration patches a pass of :data:`CAL_CHUNK` at a time: past the
        ``deadline`` (a ``time.monotonic()``; the time limit's end) on those drawn so far."""
        cfg = preset.sample
        if cfg.samples < 2:
            yield Message("no calibration: the model's sampling settings draw a single sample, which has no spread", "warning")
            return None
        sampler = get_sampler(cfg.sampler, cfg.eta)  # as predict samples
        n, spreads, bests, means = len(cal_cond), [], [], []
        yield Progress(0, n, "calibrating the uncertainty", "patch")
        for at in range(0, n, CAL_CHUNK):
            part = cal_cond[at : at + CAL_CHUNK]
            draws = np.stack([trainer.sample(part, sampler, cfg.steps, 100 + i, at) for i in range(cfg.samples)])
            spreads.append(uncertainty.error_map(draws.std(0, ddof=1)))
            means.append(val_src.as_image(part, draws.mean(0)))
            bests.append(val_src.as_image(part, trainer.best_estimate(part)))
            done = at + len(part)
            yield Progress(done, n, "calibrating the uncertainty", "patch")
            if deadline is not None and done < n and done >= MIN_CAL_PATCHES and time.monotonic() >= deadline:
                yield Message(f"the time limit is reached: the uncertainty is calibrated on {done} of the {n} held-out patches", "warning")
                break
        cond, target = cal_cond[:done], cal_target[:done]
        truth = val_src.as_image(cond, target)
        best, spread, mean = np.concatenate(bests), np.concatenate(spreads), np.concatenate(means)
        half = len(truth) // 2
        first = np.zeros(truth.shape, bool)
        first[:half] = True
        return {
            **uncertainty.calibration_table(best - truth, spread, best, first),  # patches are normalised: -1 and 1 are the unit scale's ends
            "estimate": "best",
            "sampler": cfg.sampler,
            "steps": cfg.steps,
            "samples": cfg.samples,
            "patches": half,
            "check_patches": len(truth) - half,
            "psnr_best": psnr(np.clip(best, -1, 1), truth),
            "psnr_mean": psnr(np.clip(mean, -1, 1), truth),
            "psnr_baseline": psnr(_baseline(val_src, cond, target), truth),
        }

    def checkpoint(reason: str) -> CheckpointSaved:
        """The full training state, then the EMA model beside it (usable while training goes on)."""
        path = trainer.save_checkpoint(run_dir, {"reason": reason, "processes": world.size, "launch_id": world.run_id})
        model.info.training.update({"steps": trainer.step, "seconds": round(trainer.elapsed, 1), "stopped": reason})
        model.save(run_dir, state=trainer.ema.state_dict())
        return CheckpointSaved(trainer.step, path)

    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    # the time budget is this session's (a resumed run gets its minutes again); elapsed is the total
    start, elapsed_before = time.monotonic(), trainer.elapsed
    budget = tc.minutes * 60 if tc.minutes else None
    # the budget covers the whole job: training stops early enough for the final validation and
    # calibration (rank 0's work) to end within it
    wrap_up = wrap_up_seconds(trainer, val_cond, cal_cond, preset.sample) if budget is not None and world.is_main else 0.0
    reserve = min(wrap_up, budget / 2) if budget is not None else 0.0  # training keeps at least half the limit
    if budget is not None and world.is_main:
        calibrated = len(cal_cond) if preset.sample.samples >= 2 else 0
        yield Message(wrap_up_note(budget, wrap_up, calibrated), "warning" if wrap_up > budget / 2 else "info")
    first_step = trainer.step
    reason = "finished"
    last_validation = time.monotonic()
    with group.peers_watched():  # a peer process that is gone ends the run with a LaunchError, not a traceback
        try:
            while trainer.step < tc.iterations:
                # every decision by the clock or a signal is taken by all processes together
                cancelled, out_of_time = group.any([
                    cancel is not None and cancel.is_set(),
                    budget is not None and trainer.step > first_step and time.monotonic() - start >= budget - reserve,
                ])  # fmt: skip
                if cancelled:
                    raise Cancelled("training cancelled")
                if out_of_time:
                    reason = "time budget"
                    break
                rng = np.random.default_rng([tc.seed, trainer.step, *rank_keys(world.rank)])
                cond, target = train_src.sample(rng, tc.batch_size, patch)
                loss = trainer.train_step(cond, target)
                trainer.elapsed = elapsed_before + time.monotonic() - start
                yield Loss(trainer.step, loss, learning_rate(preset, trainer.step - 1))
                yield Progress(trainer.step, tc.iterations, "training")
                if trainer.step == tc.iterations:
                    break  # the final validation follows
                (by_clock,) = group.any([time.monotonic() - last_validation >= VALIDATE_SECONDS])
                due = trainer.step % tc.val_every == 0 or by_clock  # and every few minutes however slow the steps are
                show = (preview_every and trainer.step % preview_every == 0) or (due and preview_every is None)
                save = trainer.step % tc.checkpoint_every == 0
                if due or show or save:
                    with group.together():  # rank 0's work; the others wait at its end
                        if world.is_main and due:
                            yield validate()
                        if world.is_main and show:
                            pred = trainer.preview(val_cond[:1])
                            yield Preview(trainer.step, val_cond[0], val_src.as_image(val_cond[:1], pred)[0], val_truth[0])
                        if world.is_main and save:
                            yield checkpoint("periodic")
                    last_validation = time.monotonic() if due else last_validation
        except Cancelled:
            reason = "cancelled"
            yield Message("training cancelled; the last state is saved first, then validated", "warning")
        with group.together():
            if world.is_main:
                # the state first: a kill or a second Ctrl-C during the minute of wrap-up (a
                # cluster's grace period after SIGTERM is often 30 s) then loses no step
                yield checkpoint(reason)
                yield from final_validation(start + budget if budget is not None else None)
                model.save(run_dir, state=trainer.ema.state_dict())  # now with its validation and calibration
        yield TrainResult(run_dir, trainer.step, reason, trainer.val_psnr, baseline_psnr)
