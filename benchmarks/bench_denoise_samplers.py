"""EMDiffuse-n: quality against the number of network evaluations, for every sampler.

Real EM (ISBI 2012 ssTEM, ../shared/data) with simulated Poisson-Gaussian noise at the standard
level (peak 20 counts, read noise 0.03). One model is trained within the benchmark's budget on
slices 0-23; the test crops come from slices 26-29, never seen in training. For each sampler and
step count we report PSNR/SSIM of the mean of K samples and of single samples; the reference is
the ancestral DDPM sampler with 1000 steps, as EMDiffuse uses.

    python benchmarks/bench_denoise_samplers.py --minutes 20 [--model runs/x]   # writes docs/benchmarks-denoise.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

from napari_emdiffuse.config import SampleConfig, load_preset
from napari_emdiffuse.data.degrade import poisson_gaussian, to_unit
from napari_emdiffuse.data.normalise import Normaliser
from napari_emdiffuse.jobs.predict import run_predict
from napari_emdiffuse.jobs.train import train
from napari_emdiffuse.metrics import psnr, ssim
from napari_emdiffuse.model_file import Model

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "isbi2012_sstem_train.tif"


def load_data(crop: int, n_test: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if not DATA.is_file():
        sys.exit(f"real EM not found at {DATA} (see ../shared/data/PROVENANCE.md)")
    clean = to_unit(tifffile.imread(DATA))
    noisy = poisson_gaussian(clean, 20.0, 0.03, seed=123)
    test_c = clean[26 : 26 + n_test, 128 : 128 + crop, 128 : 128 + crop]
    test_n = noisy[26 : 26 + n_test, 128 : 128 + crop, 128 : 128 + crop]
    return noisy[:24], clean[:24], test_n, test_c


def train_model(preset_name: str, minutes: float, noisy: np.ndarray, clean: np.ndarray, out: Path) -> Model:
    preset = load_preset(preset_name, {"train": {"iterations": 10**7, "minutes": minutes, "val_every": 500, "checkpoint_every": 500}})
    t0 = time.time()
    for ev in train(preset, {"input": noisy, "target": clean}, out):
        if ev.kind.value == "validation":
            print(f"  step {ev.step}: val PSNR {ev.psnr:.2f} dB (input {ev.input_psnr:.2f})", flush=True)
        elif ev.kind.value == "result":
            print(f"  trained {ev.steps} steps in {time.time() - t0:.0f} s", flush=True)
    return Model.load(out)


def detail(image: np.ndarray, reference: np.ndarray, band: tuple[float, float] = (0.15, 0.5)) -> float:
    """High-frequency power of ``image`` over that of ``reference`` (0.15-0.5 cycles/pixel).

    PSNR rewards a blurred conditional mean; this says how much fine structure is kept (1 = as
    much as the clean image; a regression-like estimate falls well below 1)."""
    def power(x):
        f = np.fft.fftshift(np.abs(np.fft.fft2(x - x.mean())) ** 2)
        h, w = x.shape
        yy, xx = np.meshgrid(np.fft.fftshift(np.fft.fftfreq(h)), np.fft.fftshift(np.fft.fftfreq(w)), indexing="ij")
        r = np.hypot(yy, xx)
        return f[(r >= band[0]) & (r <= band[1])].sum()

    return float(power(image) / power(reference))


def evaluate(model: Model, test_n: np.ndarray, test_c: np.ndarray, sampler: str, steps: int, k: int, spacing: str) -> dict:
    # the noisy test stack's own statistics, as a user's prediction would use
    norm = Normaliser(*np.percentile(test_n, [0.1, 99.9]).tolist())
    cfg = SampleConfig(sampler=sampler, steps=steps, samples=k, spacing=spacing, tile_size=256, overlap=32, tile_batch=8, seed=0)
    t0 = time.time()
    res = run_predict(model, test_n, sample=cfg, keep_samples=True, normaliser=norm, device="auto")
    secs = time.time() - t0
    mean = np.asarray(res.mean)
    singles = np.asarray(res.samples)
    row = {
        "sampler": sampler,
        "steps": steps,
        "nfe": steps,
        "psnr_mean": np.mean([psnr(m, c, 1.0) for m, c in zip(mean, test_c)]),
        "ssim_mean": np.mean([ssim(m, c, 1.0) for m, c in zip(mean, test_c)]),
        "psnr_single": np.mean([psnr(s[z], test_c[z], 1.0) for s in singles for z in range(len(test_c))]),
        "ssim_single": np.mean([ssim(s[z], test_c[z], 1.0) for s in singles for z in range(len(test_c))]),
        "detail_mean": np.mean([detail(m, c) for m, c in zip(mean, test_c)]),
        "detail_single": np.mean([detail(s[z], test_c[z]) for s in singles for z in range(len(test_c))]),
        "seconds": secs,
    }
    print(f"  {sampler:9s} {steps:5d} steps: mean {row['psnr_mean']:.2f} dB / {row['ssim_mean']:.3f}, single {row['psnr_single']:.2f} dB ({secs:.0f} s)", flush=True)
    return row


def to_markdown(rows: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| sampler | NFE | PSNR mean-of-K (dB) | SSIM mean-of-K | detail mean-of-K | PSNR single (dB) | SSIM single | detail single | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['sampler']} | {r['nfe']} | {r['psnr_mean']:.2f} | {r['ssim_mean']:.3f} | {r['detail_mean']:.2f} | "
            f"{r['psnr_single']:.2f} | {r['ssim_single']:.3f} | {r['detail_single']:.2f} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="emdiffuse-n-cpu")
    ap.add_argument("--minutes", type=float, default=20.0, help="training budget")
    ap.add_argument("--model", type=Path, help="use this trained model instead of training one")
    ap.add_argument("--run-dir", type=Path, default=REPO / "runs" / "bench_denoise")
    ap.add_argument("--samples", type=int, default=4, help="K for the mean")
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--test-slices", type=int, default=2)
    ap.add_argument("--ddpm-steps", type=int, nargs="*", default=[100, 1000])
    ap.add_argument("--fast-steps", type=int, nargs="*", default=[1, 2, 4, 8, 10, 16, 32])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks-denoise.md")
    args = ap.parse_args()

    noisy, clean, test_n, test_c = load_data(args.crop, args.test_slices)
    model = Model.load(args.model) if args.model else train_model(args.preset, args.minutes, noisy, clean, args.run_dir)
    input_psnr = np.mean([psnr(n, c, 1.0) for n, c in zip(test_n, test_c)])
    input_ssim = np.mean([ssim(n, c, 1.0) for n, c in zip(test_n, test_c)])
    print(f"noisy input: {input_psnr:.2f} dB / {input_ssim:.3f}")
    rows = []
    for sampler in ("dpmpp_2m", "ddim"):
        for steps in args.fast_steps:
            rows.append(evaluate(model, test_n, test_c, sampler, steps, args.samples, "karras"))
    for steps in args.ddpm_steps:
        rows.append(evaluate(model, test_n, test_c, "ddpm", steps, args.samples, "uniform"))

    ref = next((r for r in rows if r["sampler"] == "ddpm" and r["steps"] == max(args.ddpm_steps)), None)
    fast = [r for r in rows if r["sampler"] != "ddpm" and r["nfe"] <= 10]
    best = max(fast, key=lambda r: r["psnr_mean"])
    training = model.info.training
    header = (
        "# EMDiffuse-n: quality against network evaluations\n\n"
        f"Model: preset `{model.preset.name}`, {training.get('steps')} training steps "
        f"({training.get('seconds')} s on {training.get('device')}), trained on ISBI 2012 ssTEM slices 0-23 with "
        "simulated noise (Poisson peak 20 counts, read noise 0.03). Test: slices 26-"
        f"{25 + args.test_slices}, central {args.crop}x{args.crop} crops, never seen in training. "
        f"K = {args.samples} samples for the mean. Noisy input: {input_psnr:.2f} dB PSNR, SSIM {input_ssim:.3f}. "
        "*Detail* is the high-frequency power (0.15-0.5 cycles/px) relative to the clean image.\n\n"
        "Command: `python benchmarks/bench_denoise_samplers.py " + " ".join(sys.argv[1:]) + "`\n"
    )
    summary = ""
    if ref is not None:
        gap = best["psnr_mean"] - ref["psnr_mean"]
        summary = (
            f"\nBest fast sampler at <= 10 NFE: {best['sampler']} with {best['nfe']} steps, "
            f"{best['psnr_mean']:.2f} dB against {ref['psnr_mean']:.2f} dB for DDPM with {ref['steps']} steps "
            f"({gap:+.2f} dB; the target is no worse than -0.20 dB): {'met' if gap >= -0.2 else 'NOT met'}.\n"
        )
    text = to_markdown(rows, header) + summary
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
