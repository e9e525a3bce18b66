"""Recipe for the default models shipped in ``src/napari_emdiffuse/models/``.

Each default is trained on the real EM in ../shared/data (simulated degradation where no real
pair exists) with the recorded settings below, then bundled: EMA weights stored as float16
(a few MB; they load into float32 networks), ``model.json`` with the measured metrics, and a
model card (MODEL_CARD.md) with the training data, degradation, settings and data terms.

    python benchmarks/make_default_models.py emdiffuse-n                  # train by the recipe (resumes a stopped run), then bundle
    python benchmarks/make_default_models.py emdiffuse-r --run runs/default_emdiffuse-r   # bundle a finished run
    python benchmarks/make_default_models.py emdiffuse-r --card-only      # after bench_suite.py: the card's figures only

The training data are exactly what ``bench_suite.py`` trains its regression baseline on
(``bench_suite.training_arrays``): EMDiffuse-n on ISBI 2012 ssTEM slices 0-23 with Poisson noise
at 20 counts and read noise 0.03 (slices 24-29 held out); EMDiffuse-r 2x and vEMDiffuse-i/-a at
k = 4 on the EPFL FIB-SEM (held-out slices in each card). A run is stopped by its iteration count
(the cosine learning-rate decay ends there) or its time cap, whichever comes first, and resumes
exactly from its checkpoint. The cards quote the scores of ``bench_suite.py`` (``--results``):
run it, then ``--card-only`` refreshes them.

The step counts are where these network sizes stop improving, or nearly: trained 3.3 times
longer (10 000 steps, 89 minutes each on one core, 2026-12-06), EMDiffuse-r and vEMDiffuse-a ended at the same
validation PSNR as their 3000-step recipes (22.96 and 23.65 dB against 22.96 and 23.64), flat
from about step 1000 on. Nor did width: EMDiffuse-r at base width 32 (2.66 M parameters, four
times the multiply-adds), trained by its recipe for 2500 steps (about an hour on one core,
2026-12-06), validated at 22.94-22.96 dB from step 500 on and ended at 22.96 dB, as the bundled
network does. That is consistent with a limit of the data rather than of the network: the FIB-SEM
truth's own white noise, three quarters of which a 2 x 2 binned input does not record, caps any
method on the suite's test slices within 0.05 dB of the bundled model (``study_quality_ceiling.py``,
docs/benchmarks-ceiling.md; the validation patches, from the training slices, were not bounded,
but their margin over bicubic, +0.74 dB, is the test slices' +0.71). Nor does width help
EMDiffuse-n: at base width 32 (6.27 M parameters, four times the multiply-adds), trained by its
recipe for 750 steps (57 minutes on one core of a shared machine, 2026-12-07), it validated at
24.73 dB, where the bundled width reaches 24.69 dB in 750 steps and 24.73 dB in its 1500; on the
suite's test crops (measured after, nothing chosen by it) its best estimate scored 21.42 dB, the
bundled model's 21.43 and width 16's at 750 steps 21.43. EMDiffuse-n, trained 4 times longer (6000 steps, 2026-12-07), validated at 24.73 dB at step 1500 as the bundled network does and crept
up to 24.79 dB by step 4250, where it stayed: +0.06 dB on the validation patches for four times
the training, so the bundled recipe stays. Nor is the noise of its training data a limit: it
trains on one fixed noise draw, but it has not learnt that draw (on its training slices it scores
22.68 dB on that draw and 22.67 dB on a fresh one, 2026-12-07), so drawing fresh noise at every
step would not help at this size. A regression UNet of the bundled size and budget also
lands within 0.14 dB of each
model's best estimate (docs/benchmarks.md), so at these patch sizes and this data the margins are
not bought with a few CPU-hours more of either. Nor by averaging over the image's eight
rotations and mirrors (a geometric self-ensemble of the best estimate, eight times its cost): on
the suite's test crops it moved EMDiffuse-n from 21.43 to 21.45 dB and EMDiffuse-r by +0.002 dB
(2026-12-07, measured, not adopted): the estimate's errors are not the network's whims that an
ensemble averages out.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch

from napari_emdiffuse.model_file import Model

sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parents[1]
DEST = REPO / "src" / "napari_emdiffuse" / "models"

ISBI_TERMS = (
    "The ISBI 2012 stack is free to use for developing and testing non-commercial image-analysis "
    "software, citing Cardona et al. 2010 (PLoS Biol 8:e1000502) and TrakEM2 (Cardona et al. 2012, "
    "PLoS ONE 7:e38011)."
)
EPFL_TERMS = (
    "The EPFL FIB-SEM volume (Lucchi et al., EPFL CVLab; Lucchi++ release, Casser et al. 2018, "
    "arXiv:1812.06024) asks for a citation of Lucchi et al. when it is used."
)
EPFL = (
    "EPFL FIB-SEM of mouse hippocampus CA1 (about 5 x 5 x 5 nm, isotropic), central 512 x 512 crop of the "
    "training volume, from `../shared/data/epfl_fibsem_train_crop.tif`"
)

#: the card's paragraph of figures, and the words before those of bench_suite.py (which --card-only replaces)
MEASURED = "**Measured.**"
HELD_BACK = "On held-back data (`docs/benchmarks.md`, `benchmarks/bench_suite.py`)"

CARD = """# {name}: {title}

**What it does.** {what}

**Training data.** {data}

**Degradation.** {degradation}

**Settings.** Preset `{preset}` ({params:.2f} M parameters){options}, {steps} training steps
({seconds} s on {device}), batch {batch}, {patch} px patches, AdamW lr {lr}, EMA {ema}.
Sampling defaults: {sampler}, {sample_steps} steps, {samples} samples.

**Measured.** {validation} {held_back}: {measured}

**Recipe.** `{recipe}` (CPU, 1 thread; preset `{preset}`, at most {iterations} steps or {minutes} minutes,
run folder `{run}`); a GPU trains the same number of steps far faster.

**Data terms.** {terms}

**Limits.** {limits}
"""

FINE_TUNE = (
    "Trained on one tissue within a CPU budget: fine-tune on your own data (Train widget or "
    "`emdiffuse train --from-model {name}`) before trusting it on other samples, and read the uncertainty map. "
    "The default output is the best estimate (for measurement); `--save-samples` writes the samples, sharper but with "
    "partly invented texture (for looking at detail); their spread is the uncertainty map (docs/benchmarks.md)."
)

RECIPES = {
    "emdiffuse-n": {
        "title": "EMDiffuse-n denoising (CPU-sized default)",
        "what": "Denoises 2D ssTEM / SEM images and stacks slice by slice, with an uncertainty map.",
        "data": "ISBI 2012 EM segmentation challenge training stack (serial-section TEM of the *Drosophila* "
        "first-instar larva ventral nerve cord, 4 x 4 x 50 nm), slices 0-23, 512 x 512 px, from "
        "`../shared/data/isbi2012_sstem_train.tif`. Slices 24-29 were held out (the bundled sample and the benchmark).",
        "degradation": "Simulated low dose: Poisson noise at 20 counts for a full-scale pixel plus Gaussian read noise of 3 % of the range (`data.degrade.poisson_gaussian`).",
        "terms": ISBI_TERMS,
        "preset": "emdiffuse-n-cpu",
        "pixel_size_um": 0.004,
        "iterations": 1500,
        "minutes": 90,
        "run": "runs/default_emdiffuse-n",
        "bench": "denoise",
    },
    "emdiffuse-r": {
        "title": "EMDiffuse-r 2x super-resolution (CPU-sized default)",
        "what": "Doubles the sampling of 2D point-scanning EM images (output pixel size = input / 2), with an uncertainty map.",
        "data": f"{EPFL}, slices 0-119. Slices 120-164 were held out (the benchmark scores slices 136-164).",
        "degradation": "Simulated 2x coarser point scan: Gaussian PSF with a FWHM of one coarse pixel, then 2 x 2 binning (`data.degrade.psf_bin`); the condition is the bicubic upsampling of the coarse image.",
        "terms": EPFL_TERMS,
        "preset": "emdiffuse-r-cpu",
        "options": {"factor": 2},
        "pixel_size_um": 0.010,  # its input: the 5 nm FIB-SEM binned 2x
        "iterations": 3000,
        "minutes": 60,
        "run": "runs/default_emdiffuse-r",
        "bench": "sr",
    },
    "vemdiffuse-i": {
        "title": "vEMDiffuse-i, 4x isotropic reconstruction (CPU-sized default)",
        "what": "Generates the 3 slices between each pair of slices of a volume whose z spacing is 4 times its pixel size (e.g. 5 x 5 x 20 nm FIB-SEM to 5 nm isotropic), jointly per gap, with an uncertainty map.",
        "data": f"{EPFL}, slices 65-164 (isotropic; every 4th slice is the condition, the 3 between are the target). Slices 0-64 were held out for the benchmark.",
        "degradation": "Simulated anisotropy: every 4th slice kept (`data.degrade.decimate_z`); the network learns the difference from linear interpolation.",
        "terms": EPFL_TERMS,
        "preset": "vemdiffuse-i-cpu",
        "options": {"factor": 4},
        "pixel_size_um": 0.005,
        "iterations": 3000,
        "minutes": 60,
        "run": "runs/default_vemdiffuse-i",
        "bench": "iso_i",
    },
    "vemdiffuse-a": {
        "title": "vEMDiffuse-a, 4x isotropic reconstruction without isotropic data (CPU-sized default)",
        "what": "Generates the slices between the slices of a volume whose z spacing is 4 times its pixel size, learnt from the lateral (xy) axes only, with an uncertainty map. vEMDiffuse-a is meant to be trained on the volume it reconstructs: use this model to try it and as a starting point for `emdiffuse train --from-model vemdiffuse-a` on your own volume.",
        "data": f"{EPFL}, with every 4th slice kept (5 x 5 x 20 nm): the model saw only these decimated slices, learning along x and y; the removed slices (the benchmark's truth) were never seen.",
        "degradation": "Lines 4 px apart within xy planes stand in for slices 4 px apart in z; the network learns the difference from linear interpolation.",
        "terms": EPFL_TERMS,
        "preset": "vemdiffuse-a-cpu",
        "options": {"factor": 4.0},
        "pixel_size_um": 0.005,
        "iterations": 3000,
        "minutes": 60,
        "run": "runs/default_vemdiffuse-a",
        "bench": "iso_a",
    },
}


def measured(key: str, results: Path) -> str:
    """The model's rows of the benchmark suite, in a sentence."""
    import json

    if not results.is_file():
        return "not measured yet (run `benchmarks/bench_suite.py`)."
    data = json.loads(results.read_text()).get(key)
    if data is None:
        return "not measured yet (run `benchmarks/bench_suite.py`)."
    rows = data["rows"]
    base = next(r for r in rows if r["method"] == data["info"]["input"])
    best = next((r for r in rows if r["kind"] == "best"), None) or next(r for r in rows if r["kind"] == "scored")
    u = data["uncertainty"]
    text = (
        f"{best['method']}: PSNR {best['psnr']:.2f} dB, SSIM {best['ssim']:.3f}, mean FRC {best['frc']:.3f}, against "
        f"{base['method']} {base['psnr']:.2f} dB, {base['ssim']:.3f}, {base['frc']:.3f}; error map/error rank "
        f"correlation {u['spearman']:.2f}"
    )
    if "coverage_0.1" in u:
        text += f"; the 90 % interval covers {100 * u['coverage_0.1']:.1f} % of the pixels"
    return text + "."


def validation(metrics: dict) -> str:
    """What the run's final validation and calibration measured, on its held-out patches."""
    if "val_baseline_psnr" not in metrics:  # trained before every run ended with one
        return f"Validation PSNR (normalised units, 4 sampler steps) {metrics['val_psnr']:.2f} dB." if "val_psnr" in metrics else ""
    text = (
        f"Final validation on {metrics['val_patches']} held-out patches (normalised units): best estimate "
        f"{metrics['val_psnr']:.2f} dB, {metrics['val_baseline']} {metrics['val_baseline_psnr']:.2f} dB."
    )
    cal = metrics.get("calibration")
    if cal:
        text += (
            f" On {2 * cal['patches']} more held-out patches, the best estimate {cal['psnr_best']:.2f} dB against the mean of "
            f"{cal['samples']} samples {cal['psnr_mean']:.2f} dB (so the best estimate is the default output); the error map "
            f"was calibrated by the training at alpha {cal['alpha']} on half of them and covered {100 * cal['check_coverage']:.1f} % of the other half "
            "(the bounds shipped are those of the Calibration paragraph, fitted by `calibrate_default_models.py`)."
        )
    return text


def options_words(model: Model) -> str:
    """The card's words for what the model's options make it do (``Variant.option_phrases``, as
    the widgets and ``emdiffuse models`` say it), each after a comma; empty where it says nothing."""
    from napari_emdiffuse.variants import get_variant, model_options

    return "".join(f", {p}" for p in get_variant(model.variant).option_phrases(model_options(model)))


def bundle(name: str, run: Path, results: Path) -> Path:
    """Write ``run``'s EMA weights as float16 with the model card into the package."""
    recipe = RECIPES[name]
    model = Model.load(run)
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.network.state_dict().items()}
    t = model.info.training
    tr, sa = model.preset.train, model.preset.sample
    model.info.card = CARD.format(
        name=name,
        title=recipe["title"],
        what=recipe["what"],
        data=recipe["data"],
        degradation=recipe["degradation"],
        preset=model.preset.name,
        params=sum(p.numel() for p in model.network.parameters()) / 1e6,
        options=options_words(model),
        steps=t.get("steps"),
        seconds=round(t.get("seconds", 0)),
        device=t.get("device"),
        batch=tr.batch_size,
        patch=tr.patch_size,
        lr=tr.lr,
        ema=tr.ema_decay,
        sampler=sa.sampler,
        sample_steps=sa.steps,
        samples=sa.samples,
        validation=validation(model.info.metrics),
        held_back=HELD_BACK,
        measured=measured(recipe["bench"], results),
        recipe=f"python benchmarks/make_default_models.py {name}",
        run=recipe["run"],
        iterations=recipe["iterations"],
        minutes=recipe["minutes"],
        terms=recipe["terms"],
        limits=FINE_TUNE.format(name=name),
    )
    model.info.training["data"] = recipe["data"].split(", from ")[0]
    model.info.training.setdefault("pixel_size_um", recipe["pixel_size_um"])  # runs trained before models recorded it
    dest = DEST / name
    model.save(dest, state=state)
    (dest / "MODEL_CARD.md").write_text(model.info.card)
    size = sum(p.stat().st_size for p in dest.iterdir()) / 1e6
    print(f"bundled {run} as {dest} ({size:.1f} MB)")
    return dest


def refresh_card(name: str, results: Path) -> None:
    """Rewrite the bundled model's "Measured" paragraph from its own metrics and ``results`` (after a
    ``bench_suite.py`` run), and its options' words, keeping its weights and everything else as
    they are."""
    from dataclasses import replace

    from napari_emdiffuse.model_file import WEIGHTS, load_tensors

    dest = DEST / name
    model = Model.load(dest)
    held_back = f" {HELD_BACK}: {measured(RECIPES[name]['bench'], results)}"
    parts = model.info.card.strip().split("\n\n")  # the training's own validation, before HELD_BACK, stays
    card = "\n\n".join(p.split(f" {HELD_BACK}")[0] + held_back if p.startswith(MEASURED) else p for p in parts)
    # the options in words, as bundle() writes them now (cards bundled before said "residual True")
    card = re.sub(r"(\*\*Settings\.\*\* Preset `[^`]+` \([\d.]+ M parameters)[^)]*\)[^\n]*?, (\d+ training steps)",
                  lambda m: f"{m.group(1)}){options_words(model)}, {m.group(2)}", card)
    Model(model.preset, replace(model.info, card=card), model.network).save_new(dest, overwrite=True, state=load_tensors(dest / WEIGHTS))
    print(f"{name}: card refreshed from {results}")


def train_default(name: str, run: Path, finish: bool = False) -> None:
    """Train ``name`` by its recipe into ``run``, resuming from the checkpoint there if any;
    ``finish``: stop a stopped run where it is (its final validation and calibration only)."""
    from bench_suite import training_arrays

    from napari_emdiffuse.config import load_preset
    from napari_emdiffuse.jobs.train import CHECKPOINT, checkpoint_state, train

    recipe = RECIPES[name]
    iterations = int(checkpoint_state(run)["step"]) if finish else recipe["iterations"]
    over = {"train": {"iterations": iterations, "minutes": recipe["minutes"]}}
    if "options" in recipe:
        over["variant_options"] = recipe["options"]
    preset = load_preset(recipe["preset"], over)
    resume = (run / CHECKPOINT).is_file()
    start = time.monotonic()
    note = recipe["data"].split(", from ")[0]
    for ev in train(preset, training_arrays(preset), run, device="cpu", resume=resume, data_note=note, pixel_size_um=recipe["pixel_size_um"]):
        kind = ev.kind.value
        if kind == "validation":
            print(f"[{time.monotonic() - start:6.0f} s] step {ev.step}: validation {ev.psnr:.2f} dB (baseline {ev.input_psnr:.2f} dB)", flush=True)
        elif kind in ("message", "result"):
            print(f"[{time.monotonic() - start:6.0f} s] {ev}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=sorted(RECIPES))
    ap.add_argument("--run", type=Path, help="bundle this finished run (a model folder) instead of training")
    ap.add_argument("--finish", action="store_true", help="end a stopped run where it is: final validation and calibration, then bundle")
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "bench_suite.json", help="bench_suite.py results for the card")
    ap.add_argument("--card-only", action="store_true", help="only rewrite the bundled model's Measured paragraph from --results")
    args = ap.parse_args()
    if args.card_only:
        refresh_card(args.name, args.results)
        return
    recipe = RECIPES[args.name]
    run = args.run
    if run is None or args.finish:
        torch.set_num_threads(1)
        run = run or REPO / recipe["run"]
        train_default(args.name, run, args.finish)
    torch.set_grad_enabled(False)
    bundle(args.name, run, args.results)


if __name__ == "__main__":
    main()
