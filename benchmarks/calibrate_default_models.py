"""Calibrate the error bounds of the bundled default models on held-out regions of their own data.

    python benchmarks/calibrate_default_models.py                      # all four
    python benchmarks/calibrate_default_models.py emdiffuse-r vemdiffuse-i

Each model is run through ``emdiffuse calibrate`` (:mod:`napari_emdiffuse.jobs.calibrate`: the
prediction path itself, at the model's sampling settings) on a region with known truth that its
training never saw and that no benchmark scores. The calibrated model replaces the bundled folder
(swapped in complete) and its card gains a "Calibration" paragraph. ``bench_calibration.py`` then
measures the intervals on the held-back test regions of ``bench_suite.py``.

EMDiffuse-n's region lies in slices its training never read, like the images a user brings: calibrated
on the validation rows of its training slices its 90 % interval held 87.3 % of the pixels of other
unseen slices, calibrated on unseen slices 90.3 %. EMDiffuse-r's bounds from its training slices'
validation rows held on whole unseen slices (90.7 %; calibrated on other whole unseen slices,
89.8 %), so they stay there, as do the vEM models' (their training reads every slice). Both measured by ``study_calibration_transfer.py``
(docs/benchmarks-calibration-transfer.md), on regions that are neither training nor test data.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parents[1]
DEST = REPO / "src" / "napari_emdiffuse" / "models"

#: where each model is calibrated: the file, its (slices, rows, columns) blocks of clean data (stacked
#: along z; all of one height and width), and the words for its card
REGIONS = {
    "emdiffuse-n": ("isbi", [([28, 29], slice(0, 128), slice(0, 512)), ([28, 29], slice(384, 512), slice(0, 512))],
                    "ISBI 2012 slices 28 and 29, rows 0-127 and 384-511 (slices its training never read; outside the bundled sample's crop)"),
    "emdiffuse-r": ("fibsem", [(slice(0, 120, 12), slice(448, 512), slice(0, 512))],
                    "EPFL FIB-SEM slices 0-108 (every 12th), rows 448-511 (its validation rows)"),
    "vemdiffuse-i": ("fibsem", [(slice(65, 130), slice(448, 512), slice(0, 256))], "EPFL FIB-SEM slices 65-129, rows 448-511, columns 0-255 (its validation rows)"),
    "vemdiffuse-a": ("fibsem", [(slice(65, 130), slice(448, 512), slice(0, 256))],
                     "EPFL FIB-SEM slices 65-129, rows 448-511, columns 0-255 (validation rows of its lateral training)"),
}


def stack_blocks(source: str, blocks: list) -> np.ndarray:
    """The clean ``(slices, rows, columns)`` blocks of the ISBI or FIB-SEM stack, stacked along z."""
    import tifffile

    from bench_suite import FIBSEM, ISBI

    volume = tifffile.imread(ISBI if source == "isbi" else FIBSEM)
    return np.concatenate([volume[z][:, y, x] if isinstance(z, list) else volume[z, y, x] for z, y, x in blocks])


def clean_region(name: str) -> np.ndarray:
    return stack_blocks(*REGIONS[name][:2])


def _slices(z: slice | list[int]) -> set[int]:
    return set(z) if isinstance(z, list) else set(range(z.start, z.stop, z.step or 1))


def misses_tests(source: str, blocks: list) -> bool:
    """Whether ``blocks`` of the stack miss every test region of ``bench_suite.py``."""
    import bench_suite as bs

    if source == "isbi":
        tests = [(_slices(bs.DENOISE_TEST[0]), bs.DENOISE_TEST[1])]
    else:
        tests = [(set(bs.SR_TEST[0]), bs.SR_TEST[1]), (_slices(bs.ISO_TEST[0]), bs.ISO_TEST[1])]
    return not any(
        _slices(z) & tz and set(range(y.start, y.stop)) & set(range(ty.start, ty.stop)) for z, y, _ in blocks for tz, ty in tests
    )


def held_back_from_tests(name: str) -> bool:
    """Whether the calibration region misses every test region of ``bench_suite.py`` (and, for
    EMDiffuse-n, every training slice)."""
    import bench_suite as bs

    source, blocks = REGIONS[name][:2]
    trained = _slices(bs.DENOISE_TRAIN) if name == "emdiffuse-n" else set()
    return misses_tests(source, blocks) and not any(_slices(z) & trained for z, _, _ in blocks)


def calibrate_default(name: str) -> None:
    import torch

    from napari_emdiffuse.jobs.calibrate import calibrate
    from napari_emdiffuse.jobs.events import Kind
    from napari_emdiffuse.model_file import WEIGHTS, load_tensors
    from napari_emdiffuse.models import resolve_model
    from napari_emdiffuse.variants import get_variant

    assert held_back_from_tests(name), f"{name}: the calibration region overlaps a test region"
    torch.set_num_threads(1)
    model = resolve_model(name)
    variant = get_variant(model.variant)
    image, truth = variant.calibration_pair(clean_region(name), variant.options(model.preset.variant_options), seed=0)
    result = None
    for ev in calibrate(model, image, truth, device="cpu", source=REGIONS[name][2]):
        if ev.kind is Kind.RESULT:
            result = ev
        elif ev.kind is Kind.MESSAGE:
            print(f"{name}: {ev.text}", flush=True)
    assert result is not None and result.complete
    stored = load_tensors(DEST / name / WEIGHTS)  # the bundled weights as they are (float16)
    result.model.save_new(DEST / name, overwrite=True, state=stored)
    print(f"{name}: calibrated and bundled in {DEST / name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help=f"some of {', '.join(sorted(REGIONS))} (default: all four)")
    names = ap.parse_args().names or sorted(REGIONS)
    if set(names) - set(REGIONS):  # not argparse's choices: with nargs="*" it refuses the empty list
        ap.error(f"no default model named {', '.join(sorted(set(names) - set(REGIONS)))}")
    for name in names:
        calibrate_default(name)


if __name__ == "__main__":
    main()
