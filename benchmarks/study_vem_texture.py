"""Why an isotropic reconstruction shows stripes in its xz view, and which output has none.

vEMDiffuse-i and -a keep the input's slices as they are and generate the slices between them.
The best estimate (the default output) is the average of what the slices could be, so it is
smoother than an acquired slice: in an xz or yz view, every k-th row then has the raw slice's
fine detail and noise and the rows between do not, which reads as stripes. A single sample has
the texture of an acquired slice. This study measures how much: the fine detail of each xy slice
(the mean squared Laplacian, on the [0, 1] scale) of the generated slices over that of the kept
ones, for the truth (what an isotropic acquisition would show), linear interpolation, the best
estimate and single samples, on EPFL FIB-SEM z 0-64, y 360-391, x 128-383 with every 4th slice
kept (held out from vEMDiffuse-i's training; vEMDiffuse-a never sees generated slices), with the
suite's sampling settings.

    python benchmarks/study_vem_texture.py [--no-doc]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import REPO, load_average, machine, publish, study_args  # noqa: E402
from bench_suite import FIBSEM, K_SCORED, SCORED_STEPS, interpolate_z  # noqa: E402

REGION = (slice(0, 65), slice(360, 392), slice(128, 384))
K = 4
VOXEL = (0.005 * K, 0.005, 0.005)
MODELS = ("vemdiffuse-i", "vemdiffuse-a")
SCALES = ("pixel", "structure")
DOC = REPO / "docs" / "benchmarks-samples.md"
RESULT = REPO / "benchmarks" / "results" / "vem_texture.json"


def detail(volume: np.ndarray, scale: str) -> np.ndarray:
    """The detail of every xy slice at a ``scale``: "pixel" is the mean squared Laplacian (the
    finest detail, an acquisition's noise included), "structure" the mean squared difference of
    Gaussians of 1 and 2 px (membranes and vesicles, little of the noise)."""
    from scipy.ndimage import gaussian_filter, laplace

    def one(plane: np.ndarray) -> float:
        p = np.asarray(plane, np.float64)
        band = laplace(p) if scale == "pixel" else gaussian_filter(p, 1.0) - gaussian_filter(p, 2.0)
        return float(np.mean(band**2))

    return np.array([one(s) for s in volume])


def ratio(volume: np.ndarray) -> dict[str, float]:
    """Detail of the generated slices over that of the kept ones (every K-th from the first), per scale."""
    kept = np.zeros(len(volume), bool)
    kept[::K] = True
    out = {}
    for scale in SCALES:
        d = detail(volume, scale)
        out[scale] = float(d[~kept].mean() / d[kept].mean())
    return out


def measure() -> dict:
    """Generated-over-kept detail (per scale) of the truth, linear interpolation, and each
    model's best estimate, single samples and mean of K."""
    import tifffile
    import torch

    from napari_emdiffuse.config import SampleConfig
    from napari_emdiffuse.data.degrade import decimate_z, to_unit
    from napari_emdiffuse.data.normalise import fit_normaliser
    from napari_emdiffuse.jobs.predict import run_predict
    from napari_emdiffuse.models import resolve_model

    truth = to_unit(tifffile.imread(FIBSEM))[REGION]
    aniso = decimate_z(truth, K)
    out = {"truth (an isotropic acquisition)": ratio(truth), "linear interpolation": ratio(interpolate_z(aniso, K, "linear"))}
    cfg = SampleConfig(sampler="dpmpp_2m", steps=SCORED_STEPS, samples=K_SCORED, spacing="karras", tile_size=256, overlap=32, tile_batch=4, seed=1)
    for name in MODELS:
        with torch.inference_mode():
            res = run_predict(resolve_model(name), aniso, sample=cfg, voxel=VOXEL, normaliser=fit_normaliser(aniso, name="image"), device="cpu", keep_samples=True)
        samples = np.asarray(res.samples, np.float32)
        out[f"`{name}`, best estimate"] = ratio(np.asarray(res.mean, np.float32))
        singles = [ratio(s) for s in samples]
        out[f"`{name}`, single sample"] = {scale: float(np.mean([r[scale] for r in singles])) for scale in SCALES}
        out[f"`{name}`, mean of {K_SCORED}"] = ratio(samples.mean(axis=0))
    return out


def region_text() -> str:
    """The study's region, as the docs name regions."""
    z, y, x = REGION
    return f"z {z.start}-{z.stop - 1}, y {y.start}-{y.stop - 1}, x {x.start}-{x.stop - 1}"


def report(r: dict) -> str:
    rows = [f"| {name} | {v['pixel']:.2f} | {v['structure']:.2f} |" for name, v in r["ratios"].items()]
    truth = r["ratios"]["truth (an isotropic acquisition)"]["pixel"]
    best = [v["pixel"] for k, v in r["ratios"].items() if k.endswith("best estimate")]
    single = [v["pixel"] for k, v in r["ratios"].items() if k.endswith("single sample")]
    best_s = [v["structure"] for k, v in r["ratios"].items() if k.endswith("best estimate")]

    def span(values: list[float]) -> str:
        low, high = f"{min(values):.2f}", f"{max(values):.2f}"
        return low if low == high else f"{low}-{high}"

    return "\n".join([
        "## Isotropic reconstructions: stripes in the xz view, and which output to look at",
        "",
        "vEMDiffuse-i and -a keep the input's slices and generate the ones between. The table gives the detail of the "
        "generated xy slices over that of the kept ones, at the pixel scale (mean squared Laplacian: the finest detail "
        "and the acquisition's noise) and at the scale of structures (mean squared difference of Gaussians of 1 and 2 px): "
        f"1 means an xz or yz view shows no stripes. EPFL FIB-SEM {region_text()}, every {K}th slice kept (held out from vEMDiffuse-i's "
        f"training), {SCORED_STEPS} DPM-Solver++ steps as in the suite; {r['machine']}.",
        "",
        "| output | pixel-scale detail, generated / kept slices | structure-scale detail, generated / kept |",
        "|---|---:|---:|",
        *rows,
        "",
        f"An isotropic acquisition would show {truth:.2f}. The best estimate's generated slices carry "
        f"{span(best)} of the kept slices' pixel-scale detail (it leaves out the noise no model can "
        f"predict) and {span(best_s)} at the scale of structures, so its xz and yz views alternate "
        f"one noisy row with {K - 1} smooth ones: that is the stripes. Single samples carry {span(single)} "
        "at the pixel scale. Use the best estimate to measure (it is the most accurate, docs/benchmarks.md), and a "
        "sample (`--save-samples`, or the Enhance widget's samples) to look at the volume in xz or yz, or to segment "
        "with a method trained on acquired slices.",
        "",
        "Command: `python benchmarks/study_vem_texture.py`",
    ])


def main() -> None:
    import torch

    args = study_args(__doc__)
    r = {"ratios": measure(), "machine": machine(torch.device("cpu")), "load_average": load_average()}
    publish(report(r), r, RESULT, None if args.no_doc else "study_vem_texture", DOC)


if __name__ == "__main__":
    main()
