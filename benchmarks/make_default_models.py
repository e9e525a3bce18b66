"""Recipe for the default models shipped in ``src/napari_emdiffuse/models/``.

Each default is trained on the real EM in ../shared/data (simulated degradation where no real
pair exists) with the recorded settings below, then bundled: EMA weights stored as float16
(a few MB; they load into float32 networks), ``model.json`` with the measured metrics, and a
model card (MODEL_CARD.md) with the training data, degradation, settings and data terms.

    python benchmarks/make_default_models.py emdiffuse-n --minutes 25            # train, then bundle
    python benchmarks/make_default_models.py emdiffuse-n --run runs/bench_denoise  # bundle a finished run

EMDiffuse-n is the model ``bench_denoise_samplers.py`` trains (ISBI 2012 ssTEM slices 0-23,
Poisson peak 20 counts + read noise 0.03); slices 24-29 are held out for the benchmark and the
bundled sample.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

from napari_emdiffuse.model_file import Model

REPO = Path(__file__).resolve().parents[1]
DEST = REPO / "src" / "napari_emdiffuse" / "models"

CARD = """# {name}: {title}

**What it does.** {what}

**Training data.** ISBI 2012 EM segmentation challenge training stack (serial-section TEM of the
*Drosophila* first-instar larva ventral nerve cord, 4 x 4 x 50 nm), slices 0-23, 512 x 512 px,
from `../shared/data/isbi2012_sstem_train.tif`. Slices 24-29 were held out.

**Degradation.** {degradation}

**Settings.** Preset `{preset}` ({params:.2f} M parameters), {steps} training steps
({seconds} s on {device}), batch {batch}, {patch} px patches, AdamW lr {lr}, EMA {ema}.
Sampling defaults: {sampler}, {sample_steps} steps, {samples} samples.

**Measured.** Validation PSNR (normalised units, fast sampler) {val_psnr}; benchmark figures on
held-out slices are in `docs/benchmarks-denoise.md`.

**Recipe.** `python benchmarks/make_default_models.py {name} --minutes {minutes}` (CPU); the same
command with a GPU trains faster (set `--minutes` lower or raise the preset's iterations).

**Data terms.** The ISBI 2012 stack is free to use for developing and testing non-commercial
image-analysis software, citing Cardona et al. 2010 (PLoS Biol 8:e1000502) and TrakEM2
(Cardona et al. 2012, PLoS ONE 7:e38011).

**Limits.** Trained on one tissue and one (simulated) noise model within a CPU budget: fine-tune
on your own data (Train widget or `emdiffuse train --from-model {name}`) before trusting it on
other samples, and read the uncertainty map.
"""

RECIPES = {
    "emdiffuse-n": {
        "title": "EMDiffuse-n denoising (CPU-sized default)",
        "what": "Denoises 2D ssTEM / SEM images and stacks slice by slice, with an uncertainty map.",
        "degradation": "Simulated low dose: Poisson noise at 20 counts for a full-scale pixel plus Gaussian read noise of 3 % of the range (`data.degrade.poisson_gaussian`).",
        "train": ["benchmarks/bench_denoise_samplers.py", "--crop", "128", "--test-slices", "2", "--samples", "2"],
    },
}


def bundle(name: str, run: Path, minutes: float) -> Path:
    recipe = RECIPES[name]
    model = Model.load(run)
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.network.state_dict().items()}
    t = model.info.training
    tr, sa = model.preset.train, model.preset.sample
    model.info.card = CARD.format(
        name=name,
        title=recipe["title"],
        what=recipe["what"],
        degradation=recipe["degradation"],
        preset=model.preset.name,
        params=sum(p.numel() for p in model.network.parameters()) / 1e6,
        steps=t.get("steps"),
        seconds=t.get("seconds"),
        device=t.get("device"),
        batch=tr.batch_size,
        patch=tr.patch_size,
        lr=tr.lr,
        ema=tr.ema_decay,
        sampler=sa.sampler,
        sample_steps=sa.steps,
        samples=sa.samples,
        val_psnr=f"{model.info.metrics['val_psnr']:.2f} dB" if "val_psnr" in model.info.metrics else "n/a",
        minutes=minutes,
    )
    model.info.training["data"] = "ISBI 2012 ssTEM slices 0-23 with simulated noise"
    dest = DEST / name
    model.save(dest, state=state)
    (dest / "MODEL_CARD.md").write_text(model.info.card)
    size = sum(p.stat().st_size for p in dest.iterdir()) / 1e6
    print(f"bundled {run} as {dest} ({size:.1f} MB)")
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=sorted(RECIPES))
    ap.add_argument("--run", type=Path, help="bundle this finished run instead of training")
    ap.add_argument("--minutes", type=float, default=25.0)
    args = ap.parse_args()
    run = args.run
    if run is None:
        run = REPO / "runs" / f"default_{args.name}"
        cmd = [sys.executable, *RECIPES[args.name]["train"], "--minutes", str(args.minutes), "--run-dir", str(run)]
        subprocess.run(cmd, check=True, cwd=REPO)
    torch.set_grad_enabled(False)
    bundle(args.name, run, args.minutes)


if __name__ == "__main__":
    main()
