"""Do the error bounds hold with sampling settings other than those they were calibrated at?

A model's bounds are calibrated at its own sampling settings (sampler, steps, samples): the error
model turns the spread of those samples into a bound. A user who asks for fewer steps, to go
faster, or for more samples, gets another spread. This study measures the 90 % interval's
coverage and width of the two bundled 2D models at their calibrated settings and with fewer and
more steps and samples, on regions that are neither training, calibration nor test data (those
of ``study_noise_widening.py``): ``emdiffuse-n`` on ISBI 2012 slices 24-25 with the suite's
noise, ``emdiffuse-r`` on EPFL FIB-SEM slices 120, 124, 128 and 132 (the test crops' 256 x 256
window). What it found sets what ``predict`` and the Enhance widget say
(``uncertainty.settings_match``): fewer steps of the same sampler narrow the spread, so the
bounds are called too narrow; other changes are called approximate.

    python benchmarks/study_sampling_coverage.py [--no-doc]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import REPO, load_average, machine, publish, study_args  # noqa: E402
from bench_suite import FIBSEM, ISBI, NOISE  # noqa: E402

DOC = REPO / "docs" / "benchmarks-calibration.md"
RESULT = REPO / "benchmarks" / "results" / "sampling_coverage.json"
WINDOW = (slice(128, 384), slice(128, 384))
ALPHA = 0.1


def regions() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{model: (input, truth)}``."""
    import tifffile

    from napari_emdiffuse.data.degrade import poisson_gaussian, psf_bin, to_unit

    fib = to_unit(tifffile.imread(FIBSEM))[([120, 124, 128, 132], *WINDOW)]
    clean = to_unit(tifffile.imread(ISBI))[([24, 25], *WINDOW)]
    return {
        "emdiffuse-n": (poisson_gaussian(clean, NOISE["peak"], NOISE["read_noise"], seed=1), clean),
        "emdiffuse-r": (psf_bin(fib, 2), fib),
    }


def settings(cal: dict) -> list[tuple[int, int]]:
    """(steps, samples): the calibrated ones first, then fewer and more of each."""
    steps, samples = int(cal["steps"]), int(cal["samples"])
    return [(steps, samples), (3, samples), (5, samples), (2 * steps, samples), (steps, 2), (steps, 2 * samples)]


def measure(name: str, image: np.ndarray, truth: np.ndarray) -> list[dict]:
    import torch

    from napari_emdiffuse.jobs.predict import run_predict
    from napari_emdiffuse.models import resolve_model

    model = resolve_model(name)
    rows = []
    for steps, samples in settings(model.calibration):
        cfg = model.preset.sample.model_copy(update={"steps": steps, "samples": samples})
        with torch.inference_mode():
            res = run_predict(model, image, sample=cfg, device="cpu", alpha=ALPHA)
        lower, upper = np.asarray(res.lower, np.float32), np.asarray(res.upper, np.float32)
        rows.append({
            "steps": steps, "samples": samples,
            "coverage": float(np.mean((truth >= lower) & (truth <= upper))),
            "width": float(np.mean(upper - lower)),
        })  # fmt: skip
        print(f"{name} {steps} steps, {samples} samples: {100 * rows[-1]['coverage']:.1f} %", flush=True)
    return rows


def report(r: dict) -> str:
    lines = [
        "## Sampling settings other than the calibrated ones",
        "",
        "The bounds are calibrated at each model's own sampling settings (first row of each model). With other settings "
        "the samples spread differently, and the bounds with them. Measured on regions that are neither training, "
        "calibration nor test data: `emdiffuse-n` on ISBI 2012 slices 24-25 (the suite's noise), `emdiffuse-r` on EPFL "
        f"FIB-SEM slices 120, 124, 128 and 132; the test crops' 256² window; {r['machine']}, load average {r['load']}. "
        "90 % intervals (target 88-92 %); widths in units of the truth's range. `predict` and the Enhance widget call "
        "the bounds too narrow for fewer steps of the calibrated sampler and approximate for other changes.",
        "",
        "| model | steps | samples | covered | width |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, rows in r["models"].items():
        for i, row in enumerate(rows):
            mark = " (calibrated)" if i == 0 else ""
            lines.append(f"| `{name}` | {row['steps']}{mark} | {row['samples']} | {100 * row['coverage']:.1f} % | {row['width']:.3f} |")
    lines += ["", "Command: `python benchmarks/study_sampling_coverage.py`"]
    return "\n".join(lines)


def main() -> None:
    import torch

    args = study_args(__doc__, threads=1)
    results = {name: measure(name, *pair) for name, pair in regions().items()}
    r = {"models": results, "machine": machine(torch.device("cpu")), "load": load_average()}
    publish(report(r), r, RESULT, None if args.no_doc else "study_sampling_coverage", DOC)


if __name__ == "__main__":
    main()
