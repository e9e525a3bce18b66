"""Where to calibrate a bundled model: do its error bounds carry over to slices its training never read?

    python benchmarks/study_calibration_transfer.py          # about 50 minutes on one core
    python benchmarks/study_calibration_transfer.py --only emdiffuse-r   # one model; the other keeps its rows

For EMDiffuse-n and EMDiffuse-r, each model is calibrated (``emdiffuse calibrate``, the prediction
path itself) on two regions of its own stack: the validation rows of its *training* slices, and
slices its training never read. Each calibrated model then predicts a third region, of other
unseen slices, and we measure there how often its 90 % interval holds the truth and how well its
error map finds the worst 10 % of 16 px patches. None of these regions is a test region of
``bench_suite.py`` (asserted), so the choice this study informs (``calibrate_default_models.py``)
is not tuned on the data that scores it. Writes ``docs/benchmarks-calibration-transfer.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import REPO, study_args  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "calibration_transfer.json"
ROWS = (slice(0, 128), slice(384, 512))  # ISBI rows outside the bundled sample's crop (128-383)

#: model -> (stack, {region name: [(slices, rows, columns), ...]}); the last region is the one scored
STUDY = {
    "emdiffuse-n": ("isbi", {
        "validation rows of training slices 0, 6, 12, 18": [(slice(0, 24, 6), slice(384, 512), slice(0, 512))],
        "unseen slices 28, 29": [([28, 29], r, slice(0, 512)) for r in ROWS],
        "unseen slices 24, 25 (scored)": [([24, 25], r, slice(0, 512)) for r in ROWS],
    }),
    "emdiffuse-r": ("fibsem", {
        "validation rows of training slices 0-108": [(slice(0, 120, 12), slice(448, 512), slice(0, 512))],
        "unseen slices 122-134, whole": [([122, 126, 130, 134], slice(0, 512), slice(0, 512))],
        "unseen slices 124-151, whole (scored)": [([124, 132, 141, 151], slice(0, 512), slice(0, 512))],
    }),
}


def study(name: str) -> list[dict]:
    from bench_suite import uncertainty_worth
    from calibrate_default_models import misses_tests, stack_blocks
    from napari_emdiffuse.jobs.calibrate import calibrate
    from napari_emdiffuse.jobs.events import Kind
    from napari_emdiffuse.jobs.predict import normaliser_for, run_predict
    from napari_emdiffuse.models import resolve_model
    from napari_emdiffuse.variants import get_variant, model_options

    stack, regions = STUDY[name]
    assert all(misses_tests(stack, blocks) for blocks in regions.values()), f"{name}: a study region overlaps a test region"
    model = resolve_model(name)
    variant = get_variant(model.variant)
    pairs = {r: variant.calibration_pair(stack_blocks(stack, blocks), model_options(model), seed=0) for r, blocks in regions.items()}
    scored = list(regions)[-1]
    image, truth = pairs[scored]
    rows = []
    for fit_on in list(regions)[:-1]:
        calibrated = next(ev.model for ev in calibrate(model, *pairs[fit_on], device="cpu") if ev.kind is Kind.RESULT)
        res = run_predict(calibrated, image, normaliser=normaliser_for(calibrated, image), device="cpu", estimate="best")
        worth = uncertainty_worth(np.asarray(res.std, np.float32), np.asarray(res.mean, np.float32), np.asarray(truth, np.float32), calibrated.calibration)
        rows.append({"model": name, "fit": fit_on, "scored": scored, "check": calibrated.calibration["check_coverage"], **worth})
        print(f"{name}: fitted on {fit_on}: check {100 * rows[-1]['check']:.1f} %, on {scored}: "
              f"{100 * worth['coverage_0.1']:.1f} %, AUROC {worth['auroc_patches']:.2f}", flush=True)
    return rows


def merged(stored: list[dict], new: list[dict]) -> list[dict]:
    """The rows of this run, and the stored rows of the models it did not rerun, in ``STUDY``'s order."""
    rerun = {r["model"] for r in new}
    return sorted([r for r in stored if r["model"] not in rerun] + new, key=lambda r: list(STUDY).index(r["model"]))


def write(path: Path, rows: list[dict]) -> None:
    lines = [
        "# Where to calibrate: error bounds on slices the training never read",
        "",
        f"Written by `python benchmarks/study_calibration_transfer.py` on {time.strftime('%Y-%m-%d')} (its docstring has the",
        "protocol). Each bundled model is calibrated (`emdiffuse calibrate`) on one region of its own stack and scored",
        "on another region of slices its training never read; no region is a test region of `bench_suite.py`.",
        "*Check*: the coverage on the other half of the calibration region, as `emdiffuse calibrate` reports it.",
        "",
        "| model | calibrated on | check at 0.1 | scored on | covered at 0.1 | covered at 0.2 | AUROC, worst 10 % of patches |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['model']}` | {r['fit']} | {100 * r['check']:.1f} % | {r['scored']} | {100 * r['coverage_0.1']:.1f} % "
            f"| {100 * r['coverage_0.2']:.1f} % | {r['auroc_patches']:.2f} |"
        )
    lines += [
        "",
        "Conformal bounds hold for data exchangeable with their calibration data. Where the bounds fitted on the",
        "training slices fall short on unseen ones, `calibrate_default_models.py` calibrates the bundled model on",
        "unseen slices instead, and users should calibrate on a region of their own sample (`emdiffuse calibrate`).",
        "",
    ]
    path.write_text("\n".join(lines))


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--only", default=",".join(STUDY), help="models to study, comma-separated; the others keep their rows")
    p.add_argument("--out", default=str(REPO / "docs" / "benchmarks-calibration-transfer.md"))


def main(argv: list[str] | None = None) -> int:
    args = study_args(__doc__, threads=1, argv=argv, add=_options)
    names = args.only.split(",")
    rows = [row for name in names for row in study(name)]
    rows = merged(json.loads(RESULTS.read_text()) if RESULTS.is_file() else [], rows)
    RESULTS.write_text(json.dumps(rows, indent=1) + "\n")
    if not args.no_doc:
        write(Path(args.out), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
