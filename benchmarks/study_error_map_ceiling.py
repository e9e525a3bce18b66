"""How well could any error map find EMDiffuse-n's worst patches? A ceiling for the AUROC target.

The issue asks the error map to find the worst 10 % of 16 px patches with AUROC >= 0.8. For
denoising, part of a patch's error is luck: the noise of this one exposure. No map made before
the error is known can predict that part. This study measures how large it is, on slices that
are neither training nor test data (ISBI 2012 slices 24, 25, 28 and 29, the test crops'
256 x 256 window; the bundled model trained on slices 0-23, the suite tests on 26-27):

- the same clean slices get ``R`` independent noise draws at the suite's dose (peak 20 counts,
  read noise 0.03), and ``emdiffuse-n`` runs on each exactly as the suite runs it (best estimate,
  4 samples of 10 DPM-Solver++ steps, the calibrated error map);
- for each draw, the worst 10 % of patches are the positives, as in the suite;
- **the error map**: the AUROC of the model's map for that draw (what the suite reports);
- **the oracle**: the AUROC of each patch's *expected* error, the root mean squared error of
  the same patch over the *other* draws. It knows everything about a patch except this draw's
  luck, which no map computed from the content can know better; so it bounds what a better
  error model could reach;
- **the error model refitted**: the bundled error model's features (pooled spread, Laplacian,
  intensity; ``uncertainty.ErrorModel``) fitted on slices 24-25 of one draw, as ``emdiffuse
  calibrate`` fits them, and scored on 28-29: what recalibrating on this kind of data gives.
  (Tried by hand besides, not kept: adding the gradient, the local contrast, the residual and
  the input's intensity, with their products, fitted the same way: 0.70 on 28-29 with 8 draws.
  And a parametric bootstrap of the expected error, the estimate re-noised at the known dose 4
  times and denoised again: 0.63 against the map's 0.69 on 28-29 with 6 draws. The error that
  repeats across draws is mostly detail the estimate lost, which re-noising the estimate cannot
  show. A small CNN (six convolutions down to the 16 px patches) trained on the 16 draws of
  24-25 to predict each patch's log error from the input, the estimate, the spread and their
  difference fitted them closely and reached 0.66 on 28-29: two slices of content teach it
  those slices, not EM. Nor did more content help: a CNN of the same kind, fed the input, the
  best estimate and their difference and trained on all 24 training slices with 6 noise draws
  each (the model's error there is its error elsewhere: on a fresh noise draw of its training
  slices it scores what it scores on the draw it trained on, 22.67 against 22.68 dB) to predict
  each pixel's expected pooled error, ranked each plane's worst patches at 0.62 on 24, 25, 28,
  29 with 8 draws (the Laplacian and intensity alone, fitted the same way: 0.64; the oracle:
  0.88; 2026-12-07).)

    python benchmarks/study_error_map_ceiling.py [--draws 16] [--no-doc]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import REPO, load_average, machine, publish, study_args  # noqa: E402
from bench_suite import ISBI, NOISE, PATCH, auroc  # noqa: E402

SLICES = [24, 25, 28, 29]
FIT_SLICES = [24, 25]  # the refitted error model's; it is scored on the others
WINDOW = (slice(128, 384), slice(128, 384))
DOC = REPO / "docs" / "benchmarks-calibration.md"
RESULT = REPO / "benchmarks" / "results" / "error_map_ceiling.json"


def per_patch(a: np.ndarray) -> np.ndarray:
    """Means over the 16 px patches of planes ``(n, h, w)``, flattened."""
    n, h, w = a.shape
    hp, wp = h // PATCH, w // PATCH
    return a[:, : hp * PATCH, : wp * PATCH].reshape(n, hp, PATCH, wp, PATCH).mean(axis=(2, 4)).ravel()


def draws(n_draws: int) -> dict[str, np.ndarray]:
    """Per-patch squared error of the best estimate (``"sq"``) and per-patch error maps, each
    ``(draws, patches)``: the bundled model's (``"bundled"``), and its error model refitted
    on slices 24-25 of the first draw (``"refitted"``), as ``emdiffuse calibrate`` would fit it
    there."""
    import tifffile
    import torch

    from napari_emdiffuse import uncertainty
    from napari_emdiffuse.config import SampleConfig
    from napari_emdiffuse.data.degrade import poisson_gaussian, to_unit
    from napari_emdiffuse.data.normalise import fit_normaliser
    from napari_emdiffuse.jobs.predict import run_predict
    from napari_emdiffuse.models import resolve_model

    clean = to_unit(tifffile.imread(ISBI))[SLICES][(slice(None), *WINDOW)]
    model = resolve_model("emdiffuse-n")
    # the suite's settings (bench_suite.run_task)
    cfg = SampleConfig(sampler="dpmpp_2m", steps=10, samples=4, spacing="karras", tile_size=256, overlap=32, tile_batch=4, seed=1)
    runs = []
    for d in range(n_draws):
        noisy = poisson_gaussian(clean, NOISE["peak"], NOISE["read_noise"], seed=1000 + d)
        norm = fit_normaliser(noisy, name="image")
        with torch.inference_mode():
            res = run_predict(model, noisy, sample=cfg, normaliser=norm, device="cpu", keep_samples=True)
        best = np.asarray(res.mean, np.float32)
        spread = uncertainty.error_map(np.asarray(res.samples, np.float32).std(axis=0, ddof=1))
        runs.append((best, spread, np.asarray(res.std, np.float32), norm))
        print(f"draw {d + 1}/{n_draws}: PSNR {10 * np.log10(1 / np.mean((best - clean) ** 2)):.2f} dB", flush=True)
    best0, spread0, _, norm0 = runs[0]
    fit_part = np.zeros(clean.shape, bool)
    fit_part[: len(FIT_SLICES)] = True
    refit = uncertainty.ErrorModel(None, norm0.low, norm0.high).fitted(best0 - clean, spread0, best0, fit_part)
    return {
        "sq": np.array([per_patch((b - clean) ** 2) for b, *_ in runs]),
        "bundled": np.array([per_patch(u) for *_, u, _ in runs]),
        "refitted": np.array([per_patch(uncertainty.ErrorModel(refit.coef, n.low, n.high)(s, b)) for b, s, _, n in runs]),
    }


def aurocs(sq: np.ndarray, score: np.ndarray | None, keep: np.ndarray) -> list[float]:
    """Per draw, the AUROC of ``score`` (None: the oracle, each patch's RMSE over the other
    draws) for that draw's worst 10 % of the patches ``keep``."""
    out = []
    for d in range(len(sq)):
        rmse = np.sqrt(sq[d][keep])
        s = np.sqrt(np.delete(sq, d, axis=0).mean(axis=0))[keep] if score is None else score[d][keep]
        out.append(auroc(s, rmse >= np.quantile(rmse, 0.9)))
    return out


def study(data: dict[str, np.ndarray], n_fit_patches: int) -> dict:
    """AUROCs on all four slices and on the two the refit did not see (the patches after the
    first ``n_fit_patches``)."""
    sq = data["sq"]
    everywhere = np.ones(sq.shape[1], bool)
    unseen = np.arange(sq.shape[1]) >= n_fit_patches
    rmse = np.sqrt(sq)
    n = len(sq)
    return {
        "slices": SLICES,
        "fit_slices": FIT_SLICES,
        "draws": n,
        "patches": int(sq.shape[1]),
        "all": {"error map": aurocs(sq, data["bundled"], everywhere), "oracle": aurocs(sq, None, everywhere)},
        "unseen": {
            "error map": aurocs(sq, data["bundled"], unseen),
            "error model refitted": aurocs(sq, data["refitted"], unseen),
            "oracle": aurocs(sq, None, unseen),
        },
        # how much of a patch's error its content sets: correlation of two draws' patch errors
        "draw_to_draw_correlation": float(np.mean([np.corrcoef(rmse[d], rmse[(d + 1) % n])[0, 1] for d in range(n)])),
    }


def report(r: dict) -> str:
    def row(name: str, where: str, values: list[float]) -> str:
        v = np.array(values)
        return f"| {name} | {where} | {v.mean():.2f} | {v.min():.2f}-{v.max():.2f} |"

    others = [s for s in r["slices"] if s not in r["fit_slices"]]
    all_sl, unseen_sl = ", ".join(map(str, r["slices"])), ", ".join(map(str, others))
    oracle, refit = np.mean(r["all"]["oracle"]), np.mean(r["unseen"]["error model refitted"])
    return "\n".join([
        "## How far the error map can go: a ceiling for EMDiffuse-n",
        "",
        f"`emdiffuse-n` on ISBI slices {all_sl} (neither training nor test data; the test crops' "
        f"256² window, {r['patches']} patches of 16 px), each with {r['draws']} independent noise draws at the suite's dose, "
        f"run as the suite runs it; {r['machine']}. For each draw, the positives are its worst 10 % of patches. "
        "The oracle scores each patch by its expected error (the RMSE of the same patch over the other draws): "
        "everything about a patch but this draw's noise, which no map made without the truth can know. The refitted "
        f"error model is the bundled one's (pooled spread, Laplacian, intensity) fitted on slices "
        f"{', '.join(map(str, r['fit_slices']))} of the first draw, as `emdiffuse calibrate` fits it, and scored on the other two "
        "(the bundled one was fitted on other rows of slices 28 and 29: both fits have seen this kind of slice).",
        "",
        "| score | slices | AUROC, mean over draws | range |",
        "|---|---|---:|---:|",
        row("the bundled error map (what predict writes)", all_sl, r["all"]["error map"]),
        row("oracle: the patch's expected error", all_sl, r["all"]["oracle"]),
        row("the bundled error map", unseen_sl, r["unseen"]["error map"]),
        row("its error model refitted on this kind of slice", unseen_sl, r["unseen"]["error model refitted"]),
        row("oracle", unseen_sl, r["unseen"]["oracle"]),
        "",
        f"A patch's RMSE correlates with the same patch's in another draw at r = {r['draw_to_draw_correlation']:.2f}. "
        + (f"The oracle reaches the issue's 0.8 ({oracle:.2f}): the content sets most of which patches come out worst, so "
           "the target is within reach of a better error model, not ruled out by the noise. "
           + (f"The error model's features do not get there even fitted on such slices ({refit:.2f}): it needs a better "
              "estimator of each patch's error." if refit < 0.8 else f"Fitted on such slices, the error model gets there ({refit:.2f}).")
           if oracle >= 0.8 else
           f"Even the oracle stays below the issue's 0.8 ({oracle:.2f}): at this dose the ranking of the worst patches is "
           "mostly the noise of the draw, and no error model can reach the target on these slices."),
        "",
        f"Command: `python benchmarks/study_error_map_ceiling.py --draws {r['draws']}`",
    ])


def main() -> None:
    import torch

    args = study_args(__doc__, add=lambda ap: ap.add_argument("--draws", type=int, default=16))
    if args.draws < 3:
        sys.exit("study_error_map_ceiling.py: --draws must be at least 3")
    data = draws(args.draws)
    r = {**study(data, len(FIT_SLICES) * data["sq"].shape[1] // len(SLICES)), "machine": machine(torch.device("cpu")), "load_average": load_average()}
    publish(report(r), r, RESULT, None if args.no_doc else "study_error_map_ceiling", DOC)


if __name__ == "__main__":
    main()
