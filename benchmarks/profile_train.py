"""Where a training run's wall time goes: the real ``jobs.train.train`` loop on real EM, with
timers patched onto its parts.

Categories (each call charged once, to the outermost timed part): patch sampling (random crops,
augmentation, residual targets), forward (the loss: timestep and noise draw, network, MSE),
backward, optimizer (gradient clipping, AdamW, zero_grad), the rest of the step (learning rate,
seeding, EMA update), validation, checkpointing, and everything else in the loop (events, the
generator). A short run calls validation and checkpointing a few times to time them; the table
then projects the fractions onto the preset's own schedule (``val_every``, ``checkpoint_every``).
The calibration of the error map at the end of a run (its samples on the calibration patches)
happens once per run, whatever its length: it is timed and reported apart, not as loop time.

    python benchmarks/profile_train.py [--steps 40] [--presets emdiffuse-n-cpu vemdiffuse-i-cpu]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import tifffile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import DATA, KINDS, Timers, interleaved, load_average, machine, machine_kind, median, replace_section, section_name  # noqa: E402
from bench_throughput import _channels  # noqa: E402

from napari_emdiffuse.config import load_preset  # noqa: E402
from napari_emdiffuse.data.degrade import poisson_gaussian, to_unit  # noqa: E402
from napari_emdiffuse.engine.distributed import Group, World  # noqa: E402
from napari_emdiffuse.engine.diffusion import DiffusionProcess  # noqa: E402
from napari_emdiffuse.jobs import train as train_job  # noqa: E402
from napari_emdiffuse.model_file import Model, ModelInfo  # noqa: E402
from napari_emdiffuse.variants import base as variants_base  # noqa: E402

STEP_PARTS = ("forward", "backward", "optimizer")
BF16_REPEATS = 10  # of each precision's training step, taking turns
ORDER = ("sampling", "forward", "backward", "optimizer", "step rest (lr, seeds, EMA)", "validation", "checkpoint", "loop rest")


def arrays_for(variant: str) -> dict[str, np.ndarray]:
    """Training data as a user would give it: ISBI ssTEM with simulated noise (denoising), the
    isotropic EPFL FIB-SEM volume (isotropic reconstruction)."""
    if variant == "denoise":
        clean = to_unit(tifffile.imread(DATA / "isbi2012_sstem_train.tif"))[:24]
        return {"input": poisson_gaussian(clean, 20.0, 0.03, seed=1), "target": clean}
    if variant in ("iso_i", "iso_a"):
        return {"volume": to_unit(tifffile.imread(DATA / "epfl_fibsem_train_crop.tif"))[:100]}
    raise SystemExit(f"profile_train has no data recipe for the {variant} variant")


def profile(preset_name: str, steps: int, batch: int | None, device: str) -> dict:
    overrides: dict = {"train": {"iterations": steps, "val_every": max(1, steps // 2), "checkpoint_every": max(1, steps // 2), "minutes": None}}
    if batch:
        overrides["train"]["batch_size"] = batch
    preset = load_preset(preset_name, overrides)
    own = load_preset(preset_name).train
    data = arrays_for(preset.variant)
    timers = Timers()
    timers.wrap(variants_base.PatchPairs, "sample", "sampling")
    timers.wrap(variants_base.ResidualPairs, "sample", "sampling")
    timers.wrap(DiffusionProcess, "loss", "forward")
    timers.wrap(torch.Tensor, "backward", "backward")
    timers.wrap(torch.nn.utils, "clip_grad_norm_", "optimizer")
    timers.wrap(torch.optim.AdamW, "step", "optimizer")
    timers.wrap(torch.optim.AdamW, "zero_grad", "optimizer")
    timers.wrap(train_job._Trainer, "best_estimate", "validation")
    timers.wrap(train_job._Trainer, "preview", "preview")  # part of a validation, counted with it below
    timers.wrap(train_job._Trainer, "sample", "calibration")  # what validation's own calls leave: the end-of-run calibration
    timers.wrap(train_job._Trainer, "save_checkpoint", "checkpoint")
    timers.wrap(Model, "save", "checkpoint")
    setup_mark = timers.mark_first_call(train_job._Trainer, "train_step")
    step_timer = Timers()
    step_timer.wrap(train_job._Trainer, "train_step", "step")
    with tempfile.TemporaryDirectory() as tmp, timers.active(), step_timer.active():
        gen = train_job.train(preset, data, Path(tmp) / "run", device=device)
        t0 = time.perf_counter()
        for _ in gen:
            pass
        wall = time.perf_counter() - t0
    secs = dict(timers.seconds)
    secs["validation"] = secs.get("validation", 0.0) + secs.pop("preview", 0.0)
    setup = setup_mark["_at"] - t0  # training pairs, validation patches, input baseline
    secs["sampling"] = secs.get("sampling", 0.0) - setup_mark.get("sampling", 0.0)
    in_steps = sum(secs.get(k, 0.0) for k in STEP_PARTS)
    secs["step rest (lr, seeds, EMA)"] = step_timer.seconds["step"] - in_steps
    loop = wall - setup
    secs["loop rest"] = loop - secs.get("calibration", 0.0) - sum(secs.get(k, 0.0) for k in ORDER if k != "loop rest")
    n_val, n_ckpt = timers.calls.get("validation", 0), max(1, timers.calls.get("checkpoint", 0) // 2)
    per_step = {k: secs.get(k, 0.0) / steps for k in ORDER if k not in ("validation", "checkpoint")}
    per_val = secs.get("validation", 0.0) / max(1, n_val)
    per_ckpt = secs.get("checkpoint", 0.0) / n_ckpt
    projected = dict(per_step, validation=per_val / own.val_every, checkpoint=per_ckpt / own.checkpoint_every)
    total = sum(projected.values())
    return {
        "preset": preset_name,
        "batch": preset.train.batch_size,
        "patch": preset.train.patch_size,
        "steps": steps,
        "wall_s": wall,
        "setup_s": setup,
        "measured_s": {k: secs.get(k, 0.0) for k in ORDER},
        "per_validation_s": per_val,
        "per_checkpoint_s": per_ckpt,
        "calibration_s": secs.get("calibration", 0.0),
        "val_every": own.val_every,
        "checkpoint_every": own.checkpoint_every,
        "projected_fraction": {k: v / total for k, v in projected.items()},
        "projected_steps_per_s": 1.0 / total,
        "outside_fraction": 1.0 - sum(projected[k] for k in STEP_PARTS) / total,
    }


def bf16_step_ratio(preset_name: str, dev: torch.device, repeats: int) -> float:
    """Time of one training step as the training job takes it (``_Trainer.train_step``: loss,
    backward, clipping, AdamW, EMA) under bf16 autocast over the same step in float32, the two
    taking turns: whether training too should run in bf16 where ``predict`` does (on CPUs it
    runs in float32)."""
    preset = load_preset(preset_name)
    info = ModelInfo(*_channels(preset_name))
    trainer = train_job._Trainer(preset, Model(preset, info), dev, Group(World(), dev))
    rng = np.random.default_rng(0)
    b, p = preset.train.batch_size, preset.train.patch_size
    cond = rng.standard_normal((b, info.cond_channels, p, p), dtype=np.float32)
    target = rng.standard_normal((b, info.out_channels, p, p), dtype=np.float32)

    def step(bf16: bool) -> Callable[[], None]:
        def f() -> None:
            own = train_job.autocast  # the job's choice of precision, replaced for this step only
            train_job.autocast = lambda device: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
            try:
                trainer.train_step(cond, target)
            finally:
                train_job.autocast = own
        return f

    times = interleaved({"fp32": step(False), "bf16": step(True)}, repeats, dev)
    return median(times["bf16"]) / median(times["fp32"])


def _cpu_verdict(ratios: list[float]) -> str:
    """What the bf16 step ratios say about ``engine/device.py``'s choice of float32 training on CPUs."""
    if all(r > 1 for r in ratios):
        return ": slower than float32, which is why training on a CPU stays in float32 and only `predict` uses bf16."
    return (": faster than float32 for some preset here, yet training on a CPU runs in float32 "
            "(`engine/device.py`); worth revisiting on this machine.")


def table(rows: list[dict], args: argparse.Namespace, dev: torch.device) -> str:
    lines = [
        f"## Training loop profile, on {KINDS[machine_kind(dev)]}",
        "",
        f"`jobs.train.train` on real EM, {machine(dev)}, load average {load_average()} at the end "
        f"(shared machine; fractions are what matters). Each preset ran {args.steps} steps with validation "
        "and checkpointing twice to time them; the fractions are projected onto the preset's own "
        "`val_every` / `checkpoint_every`. *Outside* is everything but forward, backward and optimizer.",
        "",
        "| preset | batch x patch | " + " | ".join(ORDER) + " | outside | steps/s |",
        "|---|---|" + "---:|" * (len(ORDER) + 2),
    ]
    for r in rows:
        f = r["projected_fraction"]
        lines.append(
            f"| {r['preset']} | {r['batch']} x {r['patch']} | " + " | ".join(f"{100 * f[k]:.1f} %" for k in ORDER)
            + f" | **{100 * r['outside_fraction']:.1f} %** | {r['projected_steps_per_s']:.2f} |"
        )
    lines += ["", "One validation / one checkpoint took: " + "; ".join(
        f"{r['preset']} {r['per_validation_s']:.2f} s / {r['per_checkpoint_s']:.2f} s (every {r['val_every']} / {r['checkpoint_every']} steps)" for r in rows
    ) + ". The calibration at the end of a run, once per run: " + "; ".join(f"{r['preset']} {r['calibration_s']:.1f} s" for r in rows) + "."]
    ratios = {r["preset"]: r["bf16_step_ratio"] for r in rows if "bf16_step_ratio" in r}
    if ratios:
        lines += ["", "A training step (forward, backward, clipping, AdamW, EMA) under bf16 autocast took "
                  + "; ".join(f"{name} **{q:.2f}**" for name, q in ratios.items())
                  + f" of the float32 step's time (`jobs.train`'s own step, the two taking turns, {BF16_REPEATS} repeats each, medians)"
                  + (_cpu_verdict(list(ratios.values())) if dev.type == "cpu" else ".")]
    lines += ["", f"Command: `python benchmarks/profile_train.py --steps {args.steps} --presets {' '.join(args.presets)}`"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["emdiffuse-n-cpu", "vemdiffuse-i-cpu"])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=None, help="override the presets' batch size")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks-throughput.md alone")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from napari_emdiffuse.engine.device import select_device

    dev = select_device(args.device)
    rows = [profile(p, args.steps, args.batch, args.device) for p in args.presets]
    if machine_kind(dev) != "cpu-fp32":  # emulated bf16 says nothing about speed
        for r in rows:
            r["bf16_step_ratio"] = bf16_step_ratio(r["preset"], dev, BF16_REPEATS)
    text = table(rows, args, dev)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if not args.no_doc:
        replace_section(section_name("profile_train", dev), text)


if __name__ == "__main__":
    main()
