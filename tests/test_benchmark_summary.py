"""The README's headline figures are the benchmark suite's: one block, rewritten by the suite."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
bench_suite = pytest.importorskip("bench_suite")


def _results() -> dict:
    rows = [
        {"method": "noisy input", "kind": "baseline", "psnr": 15.7},
        {"method": "Gaussian filter (sigma 1.0)", "kind": "baseline", "psnr": 21.2},
        {"method": "diffusion, best estimate (default output)", "kind": "best", "psnr": 21.9},
        {"method": "regression UNet, L1 (CARE), 1500 steps", "kind": "care", "psnr": 21.8},
    ]
    info = {"model": "emdiffuse-n", "training_steps": 1500, "input": "noisy input"}
    unc = {"coverage_0.1": 0.893, "auroc_patches": 0.71}
    return {"denoise": {"info": info, "rows": rows, "uncertainty": unc, "settings": {"date": "2026-12-02"}}}


def test_the_readme_has_one_summary_block():
    text = (REPO / "README.md").read_text()
    assert text.count(bench_suite.README_START) == 1 and text.count(bench_suite.README_END) == 1
    assert text.index(bench_suite.README_START) < text.index(bench_suite.README_END)


def test_the_summary_block_is_replaced_and_nothing_else(tmp_path):
    page = tmp_path / "README.md"
    page.write_text(f"before\n{bench_suite.README_START}\nold figures\n{bench_suite.README_END}\nafter\n")
    bench_suite.write_readme_summary(page, _results())
    text = page.read_text()
    assert text.startswith("before\n") and text.endswith("\nafter\n") and "old figures" not in text
    row = next(line for line in text.splitlines() if line.startswith("| `emdiffuse-n`"))
    for cell in ("1500", "21.90 dB", "noisy input 15.70 dB", "Gaussian filter (sigma 1.0) 21.20 dB", "21.80 dB", "89.3 %", "0.71"):
        assert cell in row
    bench_suite.write_readme_summary(page, _results())
    assert page.read_text() == text  # rewriting is idempotent


def test_a_page_without_the_markers_is_refused(tmp_path):
    page = tmp_path / "README.md"
    page.write_text("no block here\n")
    with pytest.raises(SystemExit, match="markers"):
        bench_suite.write_readme_summary(page, _results())
    assert page.read_text() == "no block here\n"


def test_a_model_the_run_did_not_measure_keeps_its_earlier_row(tmp_path):
    page = tmp_path / "README.md"
    kept = "| `emdiffuse-r` (EMDiffuse-r 2x) | 3000 | 23.10 dB | bicubic 22.27 dB | Lanczos 22.30 dB | 22.90 dB | 86.0 % | 0.70 |"
    page.write_text(f"{bench_suite.README_START}\n| model |\n|---|\n{kept}\n{bench_suite.README_END}\n")
    bench_suite.write_readme_summary(page, _results())
    lines = page.read_text().splitlines()
    assert kept in lines and any(line.startswith("| `emdiffuse-n`") for line in lines)
    assert lines.index(kept) > next(i for i, line in enumerate(lines) if line.startswith("| `emdiffuse-n`"))  # in task order


def test_a_partial_rerun_keeps_the_rows_it_did_not_measure_dated_for_the_same_network():
    earlier = _results()["denoise"]
    earlier["info"] = {**earlier["info"], "params": 1000, "weights": "abc"}
    new = {"info": {**earlier["info"]}, "rows": earlier["rows"][:3], "uncertainty": {}, "settings": {"date": "2026-12-06"}}
    kept = bench_suite.kept_rows(earlier, new)
    assert [r["method"] for r in kept] == ["regression UNet, L1 (CARE), 1500 steps"] and kept[0]["measured"] == "2026-12-02"
    assert "(run of 2026-12-02)" in "\n".join(bench_suite.summary_lines({"denoise": {**new, "rows": new["rows"] + kept}}))
    retrained = {**new, "info": {**new["info"], "weights": "def"}}
    assert bench_suite.kept_rows(earlier, retrained) == []  # other weights: nothing is carried over
    assert bench_suite.kept_rows(None, new) == []


def test_a_study_of_one_model_keeps_the_other_models_rows():
    study = pytest.importorskip("study_calibration_transfer")
    stored = [{"model": "emdiffuse-n", "fit": "a"}, {"model": "emdiffuse-r", "fit": "old"}]
    new = [{"model": "emdiffuse-r", "fit": "b"}, {"model": "emdiffuse-r", "fit": "c"}]
    assert study.merged(stored, new) == [{"model": "emdiffuse-n", "fit": "a"}, *new]
    assert study.merged([], new) == new


def test_targets_against_the_regression_unet_are_judged_for_denoising_only():
    """The issue sets targets against the regression UNet for EMDiffuse-n; the other variants show
    the comparison without a verdict."""
    denoise = {**_results()["denoise"], "key": "denoise", "uncertainty": {"spearman": 0.4, "patches": 9}}
    sr_rows = [
        {"method": "bicubic", "kind": "baseline", "psnr": 22.3},
        {"method": "diffusion, best estimate (default output)", "kind": "best", "psnr": 23.0},
        {"method": "regression UNet, L1 (CARE), 3000 steps", "kind": "care", "psnr": 23.1},
    ]
    sr = {"key": "sr", "info": {"input": "bicubic"}, "rows": sr_rows, "uncertainty": {"spearman": 0.3, "patches": 9}}
    care_line = next(v for v in bench_suite.verdicts(denoise) if "vs the regression UNet" in v)
    assert "target +0.0 dB" in care_line and "**met**" in care_line
    care_line = next(v for v in bench_suite.verdicts(sr) if "vs the regression UNet" in v)
    assert "target" not in care_line and "(-0.10 dB)." in care_line
    assert any("vs bicubic" in v and "**missed**" in v for v in bench_suite.verdicts(sr))


def test_the_error_map_ceiling_oracle_knows_what_content_sets_and_not_the_luck():
    study = pytest.importorskip("study_error_map_ceiling").study
    rng = np.random.default_rng(0)
    content = rng.uniform(0.5, 2.0, 400)  # each patch's expected squared error
    # errors set by the content alone, with a little luck: the oracle (the other draws' mean) ranks them
    sq = content * rng.uniform(0.9, 1.1, (5, 400))
    # a map that reads the content on the last 200 patches only (those a refit did not see) and
    # is noise on the first 200: the split must score the two parts apart
    half = np.concatenate([rng.uniform(0.5, 2.0, 200), content[200:]])
    r = study({"sq": sq, "bundled": np.tile(half, (5, 1)), "refitted": np.tile(content, (5, 1))}, 200)
    assert min(r["all"]["oracle"]) > 0.95 and min(r["unseen"]["oracle"]) > 0.95
    assert min(r["unseen"]["error model refitted"]) > 0.95
    assert min(r["unseen"]["error map"]) > 0.95 > max(r["all"]["error map"])
    # errors that are luck alone: no patch is worse on average, so the oracle is at chance
    luck = rng.exponential(1.0, (6, 400))
    maps = np.tile(content, (6, 1))
    r = study({"sq": luck, "bundled": maps, "refitted": maps}, 200)
    assert abs(np.mean(r["all"]["oracle"]) - 0.5) < 0.1 and abs(r["draw_to_draw_correlation"]) < 0.2


def test_the_best_estimates_share_of_a_run_counts_the_second_view():
    """The suite shares one run's time between the best estimate and the samples by network
    work: two evaluations per tile against samples x steps, and for vEMDiffuse-a's second view
    (yz planes, as many voxels as the xz planes) two more."""
    from napari_emdiffuse.config import SampleConfig
    from napari_emdiffuse.models import resolve_model

    cfg = SampleConfig(steps=10, samples=4, tile_size=256, overlap=32)
    assert bench_suite.estimate_share(resolve_model("emdiffuse-n"), cfg, (2, 256, 256)) == pytest.approx(2 / 42)
    model = resolve_model("vemdiffuse-a")
    assert bench_suite.estimate_share(model, cfg, (17, 32, 256)) == pytest.approx(4 / 44)
    xz_only = model.preset.with_overrides({"variant_options": {"both_views": False}})
    model.preset = xz_only
    assert bench_suite.estimate_share(model, cfg, (17, 32, 256)) == pytest.approx(2 / 42)


def test_the_noise_widening_study_undoes_the_widening_for_its_plain_figures():
    """The study scores each prediction twice: with the bounds predict wrote (widened for a
    noisier input) and with them divided back by the widening, which must be what predict writes
    for an input like the calibration data."""
    import tifffile

    from napari_emdiffuse.data.degrade import poisson_gaussian, to_unit

    study = pytest.importorskip("study_noise_widening")
    clean = to_unit(tifffile.imread(study.ISBI))[24:26, 128:384, 128:384]
    calm = study.measure("emdiffuse-n", poisson_gaussian(clean, 20.0, 0.03, seed=1), clean)
    assert calm["widening"] == [1.0, 1.0] and calm["coverage_plain"] == calm["coverage_widened"]
    noisy = study.measure("emdiffuse-n", poisson_gaussian(clean, 2.0, 0.03, seed=1), clean)
    assert all(w == pytest.approx(r**0.25, rel=1e-2) and r > 1.25 for w, r in zip(noisy["widening"], noisy["noise_ratio"]))
    assert noisy["width_widened"] > noisy["width_plain"] and noisy["coverage_widened"] > noisy["coverage_plain"]


def test_the_error_map_is_also_scored_within_each_plane():
    """A map that only tells the worse plane from the better one finds the worst patches of the
    stack but not those of each image: the within-plane AUROC shows it."""
    rng = np.random.default_rng(2)
    truth = np.zeros((2, 64, 64), np.float32)
    estimate = rng.normal(0, 1, truth.shape).astype(np.float32)
    estimate[1] *= 4  # the second plane is far worse
    u = np.ones_like(truth)
    u[1] = 4  # and the map says so, but nothing about where within a plane
    r = bench_suite.uncertainty_worth(u, estimate, truth, None)
    assert r["auroc_patches"] > 0.7 and abs(r["auroc_within_planes"] - 0.5) < 0.01


def test_the_calibration_page_keeps_the_studies_sections(tmp_path):
    """bench_calibration.py rewrites its table; the sections the studies write into the same page
    stay, once each, however often it runs."""
    bench_calibration = pytest.importorskip("bench_calibration")
    page = tmp_path / "cal.md"
    page.write_text("old table\n\n<!-- study_a -->\n## A\nfigures\n<!-- /study_a -->\n\n<!-- study_b -->\nmore\n<!-- /study_b -->\n")
    row = {"title": "t", "coverage_0.1": 0.9, "coverage_0.2": 0.8, "width_0.1": 0.2, "check_coverage": 0.9, "auroc_patches": 0.9, "calibrated_on": "x"}
    for _ in range(2):
        bench_calibration.write(page, {"sr": row}, "cmd")
    text = page.read_text()
    assert "old table" not in text and "| t | 90.0 % |" in text
    assert text.count("<!-- study_a -->\n## A\nfigures\n<!-- /study_a -->") == 1 and text.count("<!-- /study_b -->") == 1


def test_a_study_publishes_its_figures_and_its_section_only_when_asked(tmp_path):
    """A study stores its figures as JSON; its report goes into the page only without --no-doc."""
    from _timing import publish

    doc, result = tmp_path / "page.md", tmp_path / "r.json"
    doc.write_text("# page\n")
    publish("## Study\nfigures", {"x": 1}, result, None, doc)
    assert json.loads(result.read_text()) == {"x": 1} and doc.read_text() == "# page\n"
    publish("## Study\nfigures", {"x": 2}, result, "study_x", doc)
    assert "<!-- study_x -->\n## Study\nfigures\n<!-- /study_x -->" in doc.read_text()


def test_exact_posterior_samples_have_the_squared_frc_of_the_posterior_mean():
    """The sample-FRC study's bound, on images whose posterior is known: a smooth truth plus
    white detail the input cannot show. The posterior mean is the smooth part; an exact sample
    adds an independent draw of the detail."""
    frc = pytest.importorskip("napari_emdiffuse.metrics").frc
    study = pytest.importorskip("study_sample_frc")
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    mean = np.stack([gaussian_filter(rng.normal(size=(128, 128)), 2.0) * 5 for _ in range(6)])
    truth = mean + 0.3 * rng.normal(size=mean.shape)
    samples = mean[None] + 0.3 * rng.normal(size=(4, *mean.shape))
    f_mean = frc(mean, truth).value[1:]
    f_single = np.mean([frc(s, truth).value for s in samples], axis=0)[1:]
    f_mean4 = frc(samples.mean(axis=0), truth).value[1:]
    rho = np.clip(f_mean, 0, None) ** 2
    assert np.abs(f_single - rho).mean() < 0.03
    assert np.abs(f_mean4 - study.exact_mean_of(rho, 4)).mean() < 0.03
    assert f_single.mean() < f_mean4.mean() < f_mean.mean()  # below the posterior mean, and the mean of 4 between


def test_study_args_parse_threads_no_doc_and_a_studys_own_options():
    import torch

    study_args = pytest.importorskip("_timing").study_args
    before = torch.get_num_threads()
    try:
        args = study_args("a study", argv=["--threads", "1", "--no-doc", "--draws", "5"], add=lambda ap: ap.add_argument("--draws", type=int, default=16))
        assert (args.threads, args.no_doc, args.draws) == (1, True, 5) and torch.get_num_threads() == 1
        args = study_args("a study", threads=2, argv=[])
        assert (args.threads, args.no_doc) == (2, False)
    finally:
        torch.set_num_threads(before)


def test_the_ceiling_study_measures_white_noise_beside_a_smooth_signal():
    """Both noise measures of the ceiling study read the variance of white noise added to a
    smooth image, and the smaller is the one used (any signal left raises a measure)."""
    study = pytest.importorskip("study_quality_ceiling")
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    signal = gaussian_filter(rng.normal(size=(256, 256)), 3.0) * 2 + 0.5  # contrast like EM on the unit scale (sd 0.2)
    measured = study.noise_variance(signal + 0.07 * rng.normal(size=signal.shape))
    assert measured["spectrum"] == pytest.approx(0.07**2, rel=0.05)
    assert measured["neighbours"] == pytest.approx(0.07**2, rel=0.05)
    assert measured["used"] == min(measured["spectrum"], measured["neighbours"])
    assert study.psnr(0.01) == pytest.approx(20.0)


def test_a_2x_binned_input_leaves_three_quarters_of_white_noise_unrecorded():
    """The ceiling study's bound for 2x super-resolution: the best any estimate can do with the
    truth's white noise, given the input (the project's own blur and 2 x 2 binning), is its
    projection onto what the input records, which leaves UNRECORDED_SR2 of its energy."""
    study = pytest.importorskip("study_quality_ceiling")
    from napari_emdiffuse.data.degrade import psf_bin

    n = 16
    basis = np.eye(n * n, dtype=np.float32).reshape(n * n, 1, n, n)
    a = np.stack([psf_bin(b, 2).ravel() for b in basis], axis=1)  # (coarse pixels, fine pixels)
    noise = np.random.default_rng(1).normal(size=(n * n, 400))
    recorded = a.T @ np.linalg.lstsq(a @ a.T, a @ noise, rcond=None)[0]  # projection onto the input's span
    assert np.mean((noise - recorded) ** 2) == pytest.approx(study.UNRECORDED_SR2, rel=0.03)


def test_the_ceiling_studys_synthetic_truths_and_oracle():
    """The Wiener filter takes the white noise off a smooth image (what the synthetic truths are
    built on); the noise curve keeps the measured variance on average; the oracle finds errors set
    by content (the same patches every draw) and not those that are luck."""
    study = pytest.importorskip("study_quality_ceiling")
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    signal = gaussian_filter(rng.normal(size=(256, 256)), 3.0) * 2 + 0.5
    noisy = signal + 0.07 * rng.normal(size=signal.shape)
    cleaned = study.wiener_clean(noisy, 0.07**2)
    assert np.mean((cleaned - signal) ** 2) < 0.2 * 0.07**2
    curve = study.noise_curve(noisy)
    assert curve(gaussian_filter(noisy, 3)).mean() == pytest.approx(study.noise_variance(noisy)["used"], rel=1e-6)
    content = rng.gamma(2.0, size=(2, 50))  # each patch's expected error, the same in every draw
    by_content = content[None] * rng.uniform(0.95, 1.05, size=(8, 2, 50))
    luck = rng.gamma(2.0, size=(8, 2, 50))
    assert min(study.oracle_aurocs(by_content)["within"]) > 0.95
    assert abs(np.mean(study.oracle_aurocs(luck)["pooled"]) - 0.5) < 0.15
