"""Does bf16 inference change the result? PSNR of bf16 against float32, same model, same seed.

The bundled ``emdiffuse-n`` model denoises held-back slices of the real ISBI ssTEM stack (it was
trained on slices 0-23; these are 26 on) with simulated low-dose noise (peak 20 counts, read
noise 0.03, its card's degradation). ``predict`` runs twice with the same seed: float32
(``EMDIFFUSE_BF16=0``) and bf16 autocast (``EMDIFFUSE_BF16=1``, which on a CPU without native bf16
is emulated: slow, but the same rounding). Pass: |PSNR(bf16) - PSNR(fp32)| <= 0.05 dB against the
clean slices, for the best estimate (the default output) and for the mean of the samples.

    python benchmarks/bench_bf16_quality.py [--device cpu] [--crop 128] [--slices 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import DATA, KINDS, bf16_setting, machine, machine_kind, replace_section, section_name  # noqa: E402

from napari_emdiffuse.data.degrade import poisson_gaussian, to_unit  # noqa: E402
from napari_emdiffuse.data.normalise import Normaliser  # noqa: E402
from napari_emdiffuse.engine.device import select_device  # noqa: E402
from napari_emdiffuse.jobs.predict import run_predict  # noqa: E402
from napari_emdiffuse.metrics import psnr  # noqa: E402
from napari_emdiffuse.models import resolve_model  # noqa: E402

TOLERANCE_DB = 0.05
FIRST_HELD_BACK = 26


def held_back(crop: int, slices: int) -> tuple[np.ndarray, np.ndarray]:
    path = DATA / "isbi2012_sstem_train.tif"
    if not path.is_file():
        sys.exit(f"real EM not found at {path} (see ../shared/data/PROVENANCE.md)")
    clean = to_unit(tifffile.imread(path))[FIRST_HELD_BACK : FIRST_HELD_BACK + slices]
    noisy = poisson_gaussian(clean, 20.0, 0.03, seed=123)
    y0 = (clean.shape[1] - crop) // 2
    return noisy[:, y0 : y0 + crop, y0 : y0 + crop], clean[:, y0 : y0 + crop, y0 : y0 + crop]


def run(device: str, dev: torch.device, crop: int, slices: int, steps: int, samples: int) -> dict:
    noisy, clean = held_back(crop, slices)
    model = resolve_model("emdiffuse-n")
    norm = Normaliser(*np.percentile(noisy, [0.1, 99.9]).tolist())
    cfg = model.preset.sample.model_copy(update={"steps": steps, "samples": samples, "seed": 0})
    out: dict = {"device": machine(dev), "device_arg": device, "crop": crop, "slices": slices, "steps": steps, "samples": samples}
    images: dict[str, dict[str, np.ndarray]] = {}
    for precision, flag in (("fp32", "0"), ("bf16", "1")):
        t0 = time.perf_counter()
        with bf16_setting(flag):
            res = run_predict(model, noisy, sample=cfg, normaliser=norm, device=device, keep_samples=True)
        seconds = time.perf_counter() - t0
        images[precision] = {"best": np.asarray(res.mean), "mean of samples": np.asarray(res.samples).mean(axis=0)}
        out[precision] = {"seconds": seconds}
    out["input_psnr"] = psnr(noisy, clean, data_range=1.0)
    out["outputs"] = {}
    for k in images["fp32"]:
        fp32, bf16 = (psnr(images[p][k], clean, data_range=1.0) for p in ("fp32", "bf16"))
        out["outputs"][k] = {"fp32": fp32, "bf16": bf16, "delta_db": bf16 - fp32,
                             "bf16_vs_fp32_psnr": psnr(images["bf16"][k], images["fp32"][k], data_range=1.0)}
    out["delta_db"] = max((o["delta_db"] for o in out["outputs"].values()), key=abs)
    out["pass"] = abs(out["delta_db"]) <= TOLERANCE_DB
    return out


def report(r: dict, dev: torch.device) -> str:
    rows = [
        f"| {name} | {r['input_psnr']:.2f} | {o['fp32']:.3f} | {o['bf16']:.3f} | {o['delta_db']:+.3f} dB | {o['bf16_vs_fp32_psnr']:.1f} dB | "
        f"{'yes' if abs(o['delta_db']) <= TOLERANCE_DB else '**no**'} |"
        for name, o in r["outputs"].items()
    ]
    return "\n".join([
        f"## bf16 accuracy on real EM, on {KINDS[machine_kind(dev)]}",
        "",
        f"Bundled `emdiffuse-n` on {r['slices']} held-back ISBI slice(s) from {FIRST_HELD_BACK}, central {r['crop']}² crop, "
        f"simulated dose 20 counts; {r['steps']} steps x {r['samples']} samples, seed 0, {r['device']}. The best estimate is "
        f"`predict`'s default output; the samples are what `--estimate mean` averages. bf16 took "
        f"{r['bf16']['seconds'] / r['fp32']['seconds']:.2f} of the float32 run's time.",
        "",
        "| output | input PSNR | fp32 PSNR | bf16 PSNR | difference | bf16 vs fp32 PSNR | within 0.05 dB |",
        "|---|---:|---:|---:|---:|---:|---|",
        *rows,
        "",
        f"Command: `python benchmarks/bench_bf16_quality.py --device {r['device_arg']} --crop {r['crop']} --slices {r['slices']} --steps {r['steps']} --samples {r['samples']}`",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--slices", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = select_device(args.device)
    r = run(args.device, dev, args.crop, args.slices, args.steps, args.samples)
    text = report(r, dev)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))
    if not args.no_doc:
        replace_section(section_name("bench_bf16_quality", dev), text)


if __name__ == "__main__":
    main()
