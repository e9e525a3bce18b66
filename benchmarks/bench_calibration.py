"""How the bundled models' error bounds hold on held-back real EM: writes docs/benchmarks-calibration.md.

    python benchmarks/bench_calibration.py            # all four; about 15 minutes on one core

For each default model, on the test regions of ``bench_suite.py`` (none of it seen in training or
in calibration, see ``calibrate_default_models.py``), at the model's default sampling settings:
the share of pixels the calibrated interval ``best estimate +- q u`` holds at alpha = 0.1 and 0.2
(the targets are 88-92 % and 78-82 %), its mean width in units of the image's range, the coverage
its calibration check measured on the other half of its calibration region, and how well the error
map ranks the worst 10 % of 16 px patches (AUROC; 0.5 is chance).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import study_sections  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def measure(task) -> dict:
    import torch

    from bench_suite import uncertainty_worth
    from napari_emdiffuse.jobs.predict import normaliser_for, run_predict
    from napari_emdiffuse.models import resolve_model

    model = resolve_model(task.model)
    cal = model.calibration
    with torch.inference_mode():
        res = run_predict(model, task.image, normaliser=normaliser_for(model, task.image), voxel=task.voxel, device="cpu", estimate="best")
    best, u = np.asarray(res.mean, np.float32), np.asarray(res.std, np.float32)
    keep = [z for z in range(best.shape[0]) if z % task.iso_k] if task.iso_k else list(range(best.shape[0]))
    worth = uncertainty_worth(u[keep], best[keep], task.truth[keep], cal)
    span = float(np.ptp(task.truth))
    return {
        "title": task.title,
        **worth,
        "width_0.1": worth.get("width_0.1", float("nan")) / span,
        "width_0.2": worth.get("width_0.2", float("nan")) / span,
        "check_coverage": cal.get("check_coverage") if cal else None,
        "calibrated_on": cal.get("data", "its training's held-out patches") if cal else None,
    }


def write(path: Path, rows: dict, command: str) -> None:
    lines = [
        "# Calibrated error bounds on held-back real EM",
        "",
        f"Measured by `{command}` on {time.strftime('%Y-%m-%d')} (CPU, one thread), on the test regions of",
        "`bench_suite.py`, at each model's default sampling settings (4 samples of 10 steps). The interval is",
        "`best estimate +- q u` with `u` the error map (the samples' spread pooled over 16 px, through the error model fitted",
        "with the calibration) and `q` the scale",
        "calibrated by `emdiffuse calibrate` on held-out data of the model's own stack (`calibrate_default_models.py`).",
        "Widths are in units of the truth's range. Targets: 88-92 % at alpha = 0.1, AUROC >= 0.8.",
        "",
        "| model | covered at 0.1 | covered at 0.2 | width at 0.1 | calibration check at 0.1 | AUROC, worst 10 % of patches | the same within each plane | calibrated on |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, r in rows.items():
        check = f"{100 * r['check_coverage']:.1f} %" if r["check_coverage"] is not None else "—"
        within = f"{r['auroc_within_planes']:.2f}" if "auroc_within_planes" in r else "—"
        lines.append(
            f"| {r['title']} | {100 * r['coverage_0.1']:.1f} % | {100 * r['coverage_0.2']:.1f} % | {r['width_0.1']:.3f} | {check} "
            f"| {r['auroc_patches']:.2f} | {within} | {r['calibrated_on']} |"
        )
    lines += [
        "",
        "Where the test coverage falls below the calibration check, the test region differs from the calibration",
        "region (other structures, another part of the stack): conformal bounds hold for data like those they were",
        "calibrated on. Calibrate on a region of your own data (`emdiffuse calibrate`) before relying on them.",
        "",
        "The AUROC rests on the 512-1536 patches of one test region and moves with the seed of the samples: this page",
        "draws with each model's seed (0), `bench_suite.py` with seed 1, so their figures differ by up to about 0.1.",
        "Within each plane, the positives are that plane's own worst 10 % of patches: a map that tells only the worse",
        "plane from the better (EMDiffuse-r's test slice 156 is twice as noisy as the others, and its bounds are widened",
        "for it) finds the stack's worst patches without ranking those of one image.",
        "",
    ]
    # marked sections (<!-- name --> ... <!-- /name -->: the studies', and notes on them such as rough_bounds)
    # stay; text outside them is this table's and is rewritten
    old = path.read_text() if path.is_file() else ""
    kept = study_sections(old)
    path.write_text("\n".join(lines) + "".join(f"\n{block}\n" for block in kept))


def main(argv: list[str] | None = None) -> int:
    import torch

    from bench_suite import make_tasks

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="denoise,sr,iso_i,iso_a")
    p.add_argument("--out", default=str(REPO / "docs" / "benchmarks-calibration.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = {}
    for task in make_tasks(set(args.only.split(","))):
        rows[task.key] = measure(task)
        print(task.key, rows[task.key], flush=True)
    command = ("python benchmarks/bench_calibration.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    write(Path(args.out), rows, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
