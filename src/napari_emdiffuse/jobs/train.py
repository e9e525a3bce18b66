"""The train job: patches, AdamW, EMA weights, validation, atomic checkpoints, resume.

Every random draw of step ``i`` (patches, augmentation, timesteps, noise, dropout) comes from
generators seeded by ``(seed, i)``, and the learning rate and EMA decay are functions of ``i``.
So a run killed at any moment and resumed from its last checkpoint ends at exactly the weights
of an uninterrupted run with the same seed, and the checkpoint needs no RNG state.

A run folder holds ``model.json`` + ``weights.safetensors`` (the EMA model, usable at once) and
``checkpoint.safetensors`` (raw weights, EMA, optimizer state; its JSON header says the step).
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .. import metrics
from ..config import Preset, parse_preset
from ..engine.device import autocast, configure_backends, prepare_network, select_device
from ..engine.diffusion import Denoiser, DiffusionProcess
from ..engine.samplers import get_sampler
from ..engine.tiling import _splitmix
from ..data.safe_output import Lock
from ..errors import Cancelled, InputError, ModelFileError
from ..model_file import MODEL_JSON, WEIGHTS, Model, ModelInfo, atomic_save_tensors, load_state_strict, load_tensors
from ..variants import get_variant
from ..variants.base import Roi
from .events import CancelToken, CheckpointSaved, Loss, Message, Preview, Progress, TrainResult, Validation

CHECKPOINT = "checkpoint.safetensors"
LOCK = "train.lock"
WARMUP_STEPS = 100


def learning_rate(preset: Preset, step: int) -> float:
    """Linear warm-up, then constant (a function of the step, so resume needs no scheduler state)."""
    return preset.train.lr * min(1.0, (step + 1) / WARMUP_STEPS)


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

    def __init__(self, preset: Preset, model: Model, device: torch.device) -> None:
        self.preset, self.model, self.device = preset, model, device
        self.net = prepare_network(model.network, device).train()
        self.ema = copy.deepcopy(self.net).eval().requires_grad_(False)
        self._ema_params, self._net_params = list(self.ema.parameters()), list(self.net.parameters())
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=preset.train.lr, weight_decay=preset.train.weight_decay)
        self.process = DiffusionProcess(preset.diffusion)
        self.step = 0
        self.elapsed = 0.0
        self.best_psnr: float | None = None
        self.history: list[dict[str, float]] = []

    def save_checkpoint(self, run_dir: Path, extra: dict[str, Any]) -> Path:
        tensors = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        opt_tensors, opt_meta = _optimizer_tensors(self.opt)
        tensors.update(opt_tensors)
        state = {
            "step": self.step,
            "elapsed": self.elapsed,
            "best_psnr": self.best_psnr,
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
        self.best_psnr, self.history = state.get("best_psnr"), list(state.get("history", []))
        return state

    def train_step(self, cond: np.ndarray, target: np.ndarray) -> float:
        i = self.step
        lr = learning_rate(self.preset, i)
        for group in self.opt.param_groups:
            group["lr"] = lr
        torch.manual_seed(_splitmix(self.preset.train.seed, i, 1))  # dropout
        gen = torch.Generator().manual_seed(_splitmix(self.preset.train.seed, i, 2))
        c = torch.from_numpy(cond).to(self.device)
        t = torch.from_numpy(target).to(self.device)
        with autocast(self.device):
            loss = self.process.loss(self.net, t, c, generator=gen)
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
    def validate(self, cond: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
        cfg = self.preset.sample
        den = Denoiser(self.ema, self.preset.diffusion.prediction)
        sigmas = self.process.schedule.sampling_sigmas(self.preset.train.val_steps).to(self.device)
        c = torch.from_numpy(cond).to(self.device)
        gen = torch.Generator().manual_seed(_splitmix(self.preset.train.seed, 0xBA1))
        x = torch.randn(target.shape, generator=gen).to(self.device) * sigmas[0]
        sampler = get_sampler("ddim" if cfg.sampler == "ddpm" else cfg.sampler)
        with autocast(self.device):
            out = sampler(lambda xx, s: den(xx, s, c), x, sigmas)
        pred = out.float().cpu().numpy()
        return psnr(np.clip(pred, -1, 1), target), pred


def _model_for(preset: Preset, init: Model | None) -> Model:
    variant = get_variant(preset.variant)
    out_c, cond_c = variant.channels(variant.options(preset.variant_options))
    if init is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(preset.train.seed)  # the initial weights are part of the run's seed
            return Model(preset, ModelInfo(out_channels=out_c, cond_channels=cond_c))
    if init.variant != preset.variant:
        raise ModelFileError(f"cannot fine-tune a {init.variant} model as {preset.variant}")
    if (init.info.out_channels, init.info.cond_channels) != (out_c, cond_c):
        raise ModelFileError("the starting model was trained with other variant options (e.g. another factor)")
    # Keep the starting model's network and diffusion; take the new training settings.
    merged = preset.with_overrides({"network": init.preset.network.model_dump(), "diffusion": init.preset.diffusion.model_dump()})
    model = Model(merged, ModelInfo(out_c, cond_c, training={"fine_tuned_from": init.info.training}))
    model.network.load_state_dict(init.network.state_dict())
    return model


def checkpoint_state(run_dir: str | Path) -> dict[str, Any]:
    """The JSON state of a run's checkpoint (step, preset, model description, history)."""
    from safetensors import safe_open

    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise ModelFileError(f"{run_dir}: nothing to resume ({CHECKPOINT} is missing)")
    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {})["state"])
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
) -> Iterator[Any]:
    """Train (or fine-tune ``init_model``, or ``resume`` a run in ``run_dir``) on ``arrays``.

    ``arrays`` holds what the variant's ``training_inputs`` name, e.g. ``{"input": noisy,
    "target": clean}``; ``roi`` restricts training to a rectangle (fine-tuning on a region).
    Yields :mod:`.events`; the last is a :class:`TrainResult`. The run folder is locked
    (``train.lock``) for the run, so a second process training into it refuses.
    """
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    lock = Lock(run_dir / LOCK, f"run folder {run_dir}").acquire()
    try:
        yield from _train(preset, arrays, run_dir, device, init_model, resume, roi, preview_every, data_note, cancel)
    finally:
        lock.release()
        if created:
            with contextlib.suppress(OSError):  # only when empty: a run refused at once leaves no folder
                run_dir.rmdir()


def _train(
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
) -> Iterator[Any]:
    ckpt = run_dir / CHECKPOINT
    if resume:
        saved = checkpoint_state(run_dir)
        old = parse_preset(saved["preset"], source=str(ckpt))
        # Only the stopping rule may change on resume; everything else must match to stay exact.
        preset = old.with_overrides({"train": {"iterations": preset.train.iterations, "minutes": preset.train.minutes}})
        model = Model.from_json(saved["model"], source=str(ckpt))
    else:
        model = _model_for(preset, init_model)
    variant = get_variant(preset.variant)
    options = variant.options(preset.variant_options)
    tc = preset.train
    missing = [k for k in variant.training_inputs if k not in arrays]
    if missing:
        raise ValueError(f"{variant.title} needs {', '.join(variant.training_inputs)}; missing {', '.join(missing)}")

    held_out = {k: arrays[f"val_{k}"] for k in variant.training_inputs if f"val_{k}" in arrays}
    if len(held_out) == len(variant.training_inputs) and roi is None:
        # a prepared set: its validation patches come from other slices; train on every row of the rest
        train_arrays = {k: arrays[k] for k in variant.training_inputs}
        train_src = variant.training_pairs(train_arrays, options, "all", 0.0, tc.patch_size, None, tc.min_foreground_std)
        val_src = variant.training_pairs(held_out, options, "all", 0.0, tc.patch_size, None, tc.min_foreground_std)
        val_src.summary["held_out"] = "validation patches of the prepared set"
    else:
        train_src = variant.training_pairs(arrays, options, "train", tc.val_fraction, tc.patch_size, roi, tc.min_foreground_std)
        val_src = variant.training_pairs(arrays, options, "val", tc.val_fraction, tc.patch_size, roi, tc.min_foreground_std)
    patch = train_src.patch
    if patch != tc.patch_size:
        yield Message(f"patch size reduced to {patch} px to fit the training region", "warning")
    val_cond, val_target = val_src.sample(np.random.default_rng([tc.seed, 0xBA1]), tc.val_patches, val_src.patch)

    dev = select_device(device)
    configure_backends(dev)
    trainer = _Trainer(preset, model, dev)
    if resume:
        trainer.load_checkpoint(ckpt)
        yield Message(f"resumed at step {trainer.step}")
    val_base = val_src.baseline(val_cond)
    if val_base is not None:
        input_psnr = psnr(val_base, val_src.as_image(val_cond, val_target))
    else:
        input_psnr = psnr(val_cond[:, : val_target.shape[1]], val_target) if val_cond.shape == val_target.shape else float("nan")
    model.info.training.update(
        {
            "data": data_note,
            "train_region": train_src.summary,
            "val_region": val_src.summary,
            "patch_size": patch,
            "device": str(dev),
        }
    )

    def checkpoint(reason: str) -> CheckpointSaved:
        """The full training state, then the EMA model beside it (usable while training goes on)."""
        path = trainer.save_checkpoint(run_dir, {"reason": reason})
        model.info.training.update({"steps": trainer.step, "seconds": round(trainer.elapsed, 1), "stopped": reason})
        if trainer.best_psnr is not None:
            model.info.metrics.update(val_psnr=trainer.best_psnr, val_input_psnr=input_psnr)
        model.save(run_dir, state=trainer.ema.state_dict())
        return CheckpointSaved(trainer.step, path)

    run_dir.mkdir(parents=True, exist_ok=True)
    # the time budget is this session's (a resumed run gets its minutes again); elapsed is the total
    start, elapsed_before = time.monotonic(), trainer.elapsed
    budget = tc.minutes * 60 if tc.minutes else None
    reason = "finished"
    try:
        while trainer.step < tc.iterations:
            if cancel is not None and cancel.is_set():
                raise Cancelled("training cancelled")
            if budget is not None and time.monotonic() - start >= budget:
                reason = "time budget"
                break
            rng = np.random.default_rng([tc.seed, trainer.step])
            cond, target = train_src.sample(rng, tc.batch_size, patch)
            loss = trainer.train_step(cond, target)
            trainer.elapsed = elapsed_before + time.monotonic() - start
            yield Loss(trainer.step, loss, learning_rate(preset, trainer.step - 1))
            yield Progress(trainer.step, tc.iterations, "training")
            if trainer.step % tc.val_every == 0 or trainer.step == tc.iterations:
                value, pred = trainer.validate(val_cond, val_target)
                trainer.best_psnr = value if trainer.best_psnr is None else max(trainer.best_psnr, value)
                trainer.history.append({"step": trainer.step, "val_psnr": value})
                yield Validation(trainer.step, value, input_psnr)
                if preview_every is None:
                    yield Preview(trainer.step, val_cond[0], val_src.as_image(val_cond[:1], pred[:1])[0], val_src.as_image(val_cond[:1], val_target[:1])[0])
            if preview_every and trainer.step % preview_every == 0:
                _, pred = trainer.validate(val_cond[:1], val_target[:1])
                yield Preview(trainer.step, val_cond[0], val_src.as_image(val_cond[:1], pred[:1])[0], val_src.as_image(val_cond[:1], val_target[:1])[0])
            if trainer.step % tc.checkpoint_every == 0 and trainer.step < tc.iterations:
                yield checkpoint("periodic")
    except Cancelled:
        reason = "cancelled"
        yield Message("training cancelled; the last state is saved", "warning")
    yield checkpoint(reason)
    yield TrainResult(run_dir, trainer.step, reason, trainer.best_psnr)
