"""How far can any method go on the suite's FIB-SEM test data? Ceilings set by the truth's own noise.

The issue asks EMDiffuse-r for +1.0 dB over bicubic at 2x and the isotropic models for +1.5 dB
over linear interpolation, scored against the EPFL FIB-SEM volume itself. That volume is not
noise-free: at high frequencies its power spectrum is flat to the corners (from about 0.3
cycles/px), at the same level as the variance of each pixel's difference from its four
neighbours' mean (two independent measures of white detector noise; ``noise_variance``). Noise in the truth that the
input does not carry cannot be predicted by any method, so it bounds the PSNR a method can reach:

- **super-resolution** (the input is the truth blurred and binned 2 x 2: a quarter as many
  numbers as the truth has pixels): whatever the image, at least three quarters of the truth's
  white noise lies outside what the input records, so the mean squared error of any estimate is
  at least ``0.75 sigma^2`` per plane (the posterior mean of Gaussian noise given its 2 x 2
  blurred averages is its projection onto their span, whose complement keeps 3/4 of its energy);
- **isotropic reconstruction** (the removed slices are not in the input at all): the noise of a
  removed slice is independent of every kept slice, so the error is at least ``sigma^2`` there.

The bound is the PSNR at that error, scored as the suite scores (mean of per-plane PSNR for
super-resolution; pooled over the removed slices for the isotropic variants). The noise is taken
as the *smaller* of the two measures, which makes the bound the loosest the data allow (any
signal in the flat band would only raise the measured floor). A Gaussian-noise assumption: both
measures see homoscedastic noise (the neighbour variance changes by less than 20 % from dark to
bright), and the bound is an estimate: the report gives how far the two noise measures
disagree, in dB (about 0.1), and where the model comes closest to it.

Not a ceiling for the error map: synthetic truths with the test slices' spectrum (each slice's
noise floor removed by a Wiener filter, fresh white noise of the measured variance added) were
tried for that, as ``study_error_map_ceiling.py`` does for EMDiffuse-n, and dropped: the model
rebuilt their smoothed signal almost exactly (2 % of its error; 2026-12-07), so every patch's
error there is the draw's noise, which says nothing about the real slices' errors.

    python benchmarks/study_quality_ceiling.py [--no-doc]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import REPO, load_average, machine, publish, study_args  # noqa: E402
from bench_suite import ISO_TEST, SR_TEST, _fibsem  # noqa: E402

DOC = REPO / "docs" / "benchmarks-ceiling.md"
RESULT = REPO / "benchmarks" / "results" / "quality_ceiling.json"
SUITE = REPO / "benchmarks" / "results" / "bench_suite.json"
#: radial frequency (cycles/px) from which a plane's power spectrum is read as its noise floor
FLOOR_FROM = 0.4
#: the window of each isotropic test slice whose noise is measured (the scored rows are a 32 px band inside it)
ISO_WINDOW = (slice(128, 384), slice(128, 384))
#: share of the truth's white noise that a 2 x 2 binned input cannot record
UNRECORDED_SR2 = 0.75


def spectrum_floor(plane: np.ndarray) -> float:
    """Mean power (per pixel, Hann-windowed) of ``plane`` at radial frequencies >= FLOOR_FROM:
    the variance of its white noise plus whatever signal remains there."""
    p = np.asarray(plane, np.float64)
    p = p - p.mean()
    w = np.outer(np.hanning(p.shape[0]), np.hanning(p.shape[1]))
    power = np.abs(np.fft.fft2(p * w)) ** 2 / (w**2).sum()
    fy, fx = np.meshgrid(np.fft.fftfreq(p.shape[0]), np.fft.fftfreq(p.shape[1]), indexing="ij")
    return float(power[np.hypot(fy, fx) >= FLOOR_FROM].mean())


def neighbour_variance(plane: np.ndarray) -> float:
    """Variance of each pixel minus the mean of its four neighbours, divided by 1.25 (what that
    difference does to white noise): the noise variance where the signal is smooth at 1 px."""
    p = np.asarray(plane, np.float64)
    diff = p[1:-1, 1:-1] - (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:]) / 4
    return float(diff.var() / 1.25)


def noise_variance(plane: np.ndarray) -> dict[str, float]:
    floor, neighbours = spectrum_floor(plane), neighbour_variance(plane)
    return {"spectrum": floor, "neighbours": neighbours, "used": min(floor, neighbours)}


def psnr(mse: float) -> float:
    return float(-10 * np.log10(mse))


def best_estimate(low: np.ndarray) -> np.ndarray:
    """The bundled emdiffuse-r's best estimate of ``low``, as the suite runs it."""
    import torch

    from napari_emdiffuse.config import SampleConfig
    from napari_emdiffuse.data.normalise import fit_normaliser
    from napari_emdiffuse.jobs.predict import run_predict
    from napari_emdiffuse.models import resolve_model

    cfg = SampleConfig(sampler="dpmpp_2m", steps=2, samples=1, spacing="karras", tile_size=256, overlap=32, tile_batch=4, seed=1)
    with torch.inference_mode():
        res = run_predict(resolve_model("emdiffuse-r"), low, sample=cfg, normaliser=fit_normaliser(low, name="image"), voxel=(0.005, 0.01, 0.01), device="cpu", estimate="best")
    return np.asarray(res.mean, np.float32)


def suite_rows() -> dict[str, dict[str, float]]:
    """PSNR of the suite's last run (benchmarks/results/bench_suite.json) by task and method kind."""
    if not SUITE.is_file():
        return {}
    data = json.loads(SUITE.read_text())
    out = {}
    for key in ("sr", "iso_i", "iso_a"):
        if key in data:
            rows = data[key]["rows"]
            base = data[key]["info"]["input"]
            out[key] = {
                "baseline": next(r["psnr"] for r in rows if r["method"] == base),
                "best": next(r["psnr"] for r in rows if r["kind"] == "best"),
                **{"regression": r["psnr"] for r in rows if r["kind"] == "care"},
            }
    return out


def sr_ceiling() -> dict:
    """Per test slice: noise measures, the bound, bicubic and the bundled best estimate."""
    from napari_emdiffuse import metrics
    from napari_emdiffuse.data.degrade import psf_bin, to_unit
    from napari_emdiffuse.variants.superres import upsample

    truth = to_unit(_fibsem())[SR_TEST]
    low = psf_bin(truth, 2)
    bicubic, best = upsample(low, 2), best_estimate(low)
    slices = []
    for z, t, b, e in zip(SR_TEST[0], truth, bicubic, best):
        noise = noise_variance(t)
        slices.append({"slice": z, **{f"noise_{k}": v for k, v in noise.items()}, "bound": psnr(UNRECORDED_SR2 * noise["used"]),
                       "bicubic": metrics.psnr(b, t, 1.0), "best": metrics.psnr(e, t, 1.0)})
    mean = {k: float(np.mean([s[k] for s in slices])) for k in ("bound", "bicubic", "best")}
    return {"slices": slices, "mean": mean}


def iso_ceiling() -> dict:
    """The noise of each removed test slice and the bound on the pooled PSNR over them."""
    from napari_emdiffuse.data.degrade import to_unit

    fib = to_unit(_fibsem())
    zs = [z for z in range(ISO_TEST[0].start, ISO_TEST[0].stop) if (z - ISO_TEST[0].start) % 4]
    noise = [noise_variance(fib[(z, *ISO_WINDOW)]) for z in zs]
    used = np.array([n["used"] for n in noise])
    return {"removed_slices": len(zs), "noise_median": float(np.median(used)), "noise_max": float(used.max()), "bound": psnr(float(used.mean()))}


def report(r: dict) -> str:
    sr, iso, suite = r["sr"], r["iso"], r["suite"]
    lines = [
        "## What the truth's own noise allows: ceilings for the FIB-SEM targets",
        "",
        "The EPFL FIB-SEM truth carries white detector noise: its power spectrum is flat at high frequencies, "
        f"from about 0.3 cycles/px to the corners. Measured two ways (the spectrum beyond {FLOOR_FROM} cycles/px; each pixel's "
        "difference from its four neighbours' mean), the smaller taken. No input carries the part of that noise "
        f"it does not record: for 2x super-resolution at least {UNRECORDED_SR2:.0%} of it (a 2 x 2 binned input holds a quarter "
        "as many numbers), for the removed slices of isotropic reconstruction all of it. The PSNR at that error "
        "bounds every method (scored as the suite scores).",
        "",
        "| EMDiffuse-r test slice | noise sd (spectrum / neighbours) | bound | bicubic | bundled best estimate |",
        "|---|---|---:|---:|---:|",
    ]
    for s in sr["slices"]:
        lines.append(f"| {s['slice']} | {np.sqrt(s['noise_spectrum']):.3f} / {np.sqrt(s['noise_neighbours']):.3f} | {s['bound']:.2f} dB | "
                     f"{s['bicubic']:.2f} dB | {s['best']:.2f} dB |")
    m = sr["mean"]
    top = max(sr["slices"], key=lambda s: s["best"] - s["bound"])  # where the model comes closest
    spread = max(abs(10 * np.log10(s["noise_spectrum"] / s["noise_neighbours"])) for s in sr["slices"])
    lines += [
        f"| mean (the suite's PSNR) | | **{m['bound']:.2f} dB** | {m['bicubic']:.2f} dB | {m['best']:.2f} dB |",
        "",
        f"So no method can gain more than about **{m['bound'] - m['bicubic']:+.2f} dB** over bicubic on these slices "
        f"(the issue asks +1.0; the bound is an estimate, as uncertain as the two noise measures disagree: by up to "
        f"{spread:.2f} dB; on slice {top['slice']} the model lands {abs(top['best'] - top['bound']):.2f} dB "
        f"{'above' if top['best'] > top['bound'] else 'below'} it): the bundled model's {m['best'] - m['bicubic']:+.2f} dB is within {m['bound'] - m['best']:.2f} dB of "
        "the bound" + (f", and so is the regression UNet of the suite ({suite['sr']['regression']:.2f} dB)" if "regression" in suite.get("sr", {}) else "")
        + ". On this data the +1.0 dB target is out of reach of any method: the truth's noise, not the model, sets the "
        "margin. That is consistent with 3.3 times longer training and a network of four times the multiply-adds "
        "leaving EMDiffuse-r's validation where it was (`benchmarks/make_default_models.py`; those patches come from "
        "the training slices and were not bounded here).",
        "",
    ]
    for key, name in (("iso_i", "vEMDiffuse-i"), ("iso_a", "vEMDiffuse-a")):
        if key in suite:
            s = suite[key]
            lines.append(f"- {name}: bound {iso['bound']:.2f} dB on the {iso['removed_slices']} removed slices (median noise sd "
                         f"{np.sqrt(iso['noise_median']):.3f}), best estimate {s['best']:.2f} dB, linear interpolation {s['baseline']:.2f} dB "
                         f"(the suite's last run): at most {iso['bound'] - s['baseline']:+.2f} dB over linear is possible, "
                         f"{s['best'] - s['baseline']:+.2f} dB is reached.")
    lines += [
        "",
        "Command: `python benchmarks/study_quality_ceiling.py`",
    ]
    return "\n".join(lines)


def main() -> None:
    import torch

    args = study_args(__doc__, threads=1)
    r = {"sr": sr_ceiling(), "iso": iso_ceiling(), "suite": suite_rows(), "machine": machine(torch.device("cpu")), "load_average": load_average()}
    publish(report(r), r, RESULT, None if args.no_doc else "study_quality_ceiling", DOC)


if __name__ == "__main__":
    main()
