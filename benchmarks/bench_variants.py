"""Quality benchmark of EMDiffuse-r, vEMDiffuse-i and vEMDiffuse-a on the real EM in ../shared/data.

- Super-resolution at 2x and 4x against bicubic interpolation: EPFL FIB-SEM slices degraded by
  PSF blur and binning; trained on slices 0-119, scored on held-back slices 136-164.
- Isotropic reconstruction at k = 4 and 8 against linear interpolation along z: the FIB-SEM
  with every k-th slice kept, scored on the removed slices (PSNR, SSIM) and on xz planes (FRC).
  vEMDiffuse-i learns from slices 65-164 (isotropic), and is scored on slices 0-64;
  vEMDiffuse-a learns from the decimated volume itself (the removed slices are never seen).
- vEMDiffuse-a on the ISBI ssTEM stack (4 x 4 x 50 nm), factor 12.5: the output's voxel size,
  and an xz plane next to linear interpolation (no ground truth exists).

Every model trains with its ``-cpu`` preset on the CPU, for a number of steps (``--steps``: the
figures then do not depend on how busy the machine was) or for a wall-clock budget (``--minutes``).
The table, the command line and the images go to docs/, the figures to
benchmarks/results/variants.json. Run from the repository root:

    python benchmarks/bench_variants.py --steps 2000

``--only sr`` (or ``iso``, ``sstem``) reruns one part and keeps the others' results;
``--reuse`` scores models that an earlier run with the same budget finished training in
``--work`` instead of training them again (a run killed half-way is trained afresh).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = (REPO / ".." / "shared" / "data").resolve()
FIBSEM = DATA / "epfl_fibsem_train_crop.tif"
ISBI = DATA / "isbi2012_sstem_train.tif"

# Evaluation regions (z, y, x) of the FIB-SEM: held back from every model that is scored on them.
SR_TRAIN_Z = slice(0, 120)
SR_TEST_Z = [136, 146, 156, 164]
SR_CROP = (slice(128, 384), slice(128, 384))
ISO_TEST = (slice(0, 65), slice(240, 272), slice(128, 384))
ISO_TRAIN_Z = slice(65, 165)
SSTEM_CROP = (slice(None), slice(247, 249), slice(128, 384))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


#: run options that the helpers read: samples drawn per prediction (--samples; they make the
#: uncertainty, the best estimate is scored), and whether
#: models that finished training in the work folder are reused instead of retrained (--reuse)
RUN = {"samples": 2, "reuse": False}

#: where the figures of every section are kept between runs (``--only`` reruns one section)
RESULTS = REPO / "benchmarks" / "results" / "variants.json"


def budget(minutes: float | None, steps: int | None) -> dict:
    """The preset's train overrides for a step count or a wall-clock budget (one of them)."""
    if steps:
        return {"iterations": steps, "minutes": None}
    return {"iterations": 1_000_000, "minutes": minutes}


def train_model(preset_name: str, options: dict, arrays: dict, out: Path, limit: dict, seed: int) -> dict:
    from napari_emdiffuse.config import load_preset
    from napari_emdiffuse.jobs.events import Kind
    from napari_emdiffuse.jobs.train import train

    if RUN["reuse"] and (out / "model.json").is_file():
        done = json.loads((out / "model.json").read_text())["training"]
        finished = done.get("stopped") == ("finished" if limit["minutes"] is None else "time budget")
        if finished and (limit["minutes"] is not None or done["steps"] == limit["iterations"]):  # not a run killed half-way
            log(f"  reusing {out.name}: {done['steps']} steps in {done['seconds']:.0f} s")
            return {"steps": done["steps"], "seconds": round(done["seconds"])}

    preset = load_preset(
        preset_name,
        {"variant_options": options, "train": {**limit, "seed": seed, "val_every": 1000}},
    )
    start = time.monotonic()
    result = None
    for ev in train(preset, arrays, out, device="cpu"):
        if ev.kind is Kind.RESULT:
            result = ev
    log(f"  trained {out.name}: {result.steps} steps in {time.monotonic() - start:.0f} s")
    return {"steps": result.steps, "seconds": round(time.monotonic() - start)}


def predict(model_dir: Path, image: np.ndarray, voxel: tuple[float, ...]) -> tuple[np.ndarray, tuple[float, ...]]:
    from napari_emdiffuse.jobs.predict import run_predict
    from napari_emdiffuse.model_file import Model

    model = Model.load(model_dir)
    sample = model.preset.with_overrides({"sample": {"samples": RUN["samples"]}}).sample
    start = time.monotonic()
    res = run_predict(model, image, sample=sample, voxel=voxel, device="cpu")
    log(f"  predicted {model_dir.name} on {image.shape}: {time.monotonic() - start:.0f} s")
    return np.asarray(res.mean), tuple(res.voxel)


def linear_z(volume: np.ndarray, factor: float) -> np.ndarray:
    """The baseline: linear interpolation along z onto the same grid as vEMDiffuse's output."""
    from napari_emdiffuse.variants.iso_a import output_slices

    n = volume.shape[0]
    z = np.arange(output_slices(n, factor)) / factor
    i0 = np.minimum(np.floor(z + 1e-9).astype(int), n - 2)
    t = (z - i0)[:, None, None]
    v = volume.astype(np.float32)
    return v[i0] * (1 - t) + v[i0 + 1] * t


def iso_scores(recon: np.ndarray, truth: np.ndarray, k: int, pixel_nm: float) -> dict:
    from napari_emdiffuse import metrics

    removed = [z for z in range(truth.shape[0]) if z % k]
    xz_r, xz_t = recon.transpose(1, 0, 2), truth.transpose(1, 0, 2)
    curve = metrics.frc(xz_r, xz_t)
    return {
        "psnr": metrics.psnr(recon[removed], truth[removed], data_range=255.0),
        "ssim": metrics.ssim(recon[removed], truth[removed], data_range=255.0),
        "frc_nm": metrics.frc_resolution(xz_r, xz_t, pixel_nm, threshold=0.5),
        "frc_mean": float(np.mean(curve.value[1:])),
        "frc_curve": [curve.frequency.tolist(), curve.value.tolist()],
    }


def bench_sr(fib: np.ndarray, factor: int, work: Path, limit: dict, seed: int) -> dict:
    from napari_emdiffuse import metrics
    from napari_emdiffuse.data.degrade import psf_bin, to_unit
    from napari_emdiffuse.variants import get_variant
    from napari_emdiffuse.variants.superres import upsample

    variant = get_variant("superres")
    options = variant.options({"factor": factor})
    arrays = variant.from_clean(fib[SR_TRAIN_Z], options)
    info = train_model("emdiffuse-r-cpu", {"factor": factor}, arrays, work / f"sr{factor}", limit, seed)
    truth = to_unit(fib[SR_TEST_Z][(slice(None),) + SR_CROP])
    low = psf_bin(truth, factor)
    model, voxel = predict(work / f"sr{factor}", low, (0.005, 0.005 * factor, 0.005 * factor))
    bicubic = upsample(low, factor)
    row = {"factor": factor, "voxel_out": voxel, **info}
    for name, img in (("bicubic", bicubic), ("model", model)):
        row[name] = {"psnr": metrics.psnr(img, truth, data_range=1.0), "ssim": metrics.ssim(img, truth, data_range=1.0)}
    log(f"  SR x{factor}: {row}")
    return row


def bench_iso(fib: np.ndarray, k: int, work: Path, limit: dict, seed: int) -> tuple[dict, dict]:
    from napari_emdiffuse.data.degrade import decimate_z

    truth = fib[ISO_TEST].astype(np.float32)
    anisotropic = decimate_z(fib[ISO_TEST], k)
    voxel = (0.005 * k, 0.005, 0.005)
    info_i = train_model("vemdiffuse-i-cpu", {"factor": k}, {"volume": fib[ISO_TRAIN_Z]}, work / f"iso_i{k}", limit, seed)
    info_a = train_model("vemdiffuse-a-cpu", {"factor": k}, {"volume": decimate_z(fib, k)}, work / f"iso_a{k}", limit, seed)
    recon_i, vox_i = predict(work / f"iso_i{k}", anisotropic, voxel)
    recon_a, vox_a = predict(work / f"iso_a{k}", anisotropic, voxel)
    linear = linear_z(anisotropic, k)
    row = {"k": k, "voxel_out": {"iso_i": vox_i, "iso_a": vox_a}, "train": {"iso_i": info_i, "iso_a": info_a}}
    for name, img in (("linear", linear), ("iso_i", recon_i), ("iso_a", recon_a)):
        row[name] = iso_scores(img, truth, k, 5.0)
    log(f"  iso k={k}: {row}")
    planes = {"truth": truth, "linear": linear, "iso_i": recon_i, "iso_a": recon_a}
    return row, planes


def bench_sstem(work: Path, limit: dict, seed: int) -> tuple[dict, dict]:
    import tifffile

    from napari_emdiffuse.data.io import read_image

    img = read_image(ISBI)
    vol = np.asarray(img.data)
    factor = img.voxel[0] / img.voxel[1]
    info = train_model("vemdiffuse-a-cpu", {"factor": factor}, {"volume": vol}, work / "iso_a_sstem", limit, seed)
    crop = vol[SSTEM_CROP]
    recon, voxel = predict(work / "iso_a_sstem", crop, img.voxel)
    linear = linear_z(crop, factor)
    tifffile.imwrite(work / "sstem_iso_a.tif", recon.astype(np.float32))
    row = {"factor": factor, "voxel_in": img.voxel, "voxel_out": voxel, "shape_in": crop.shape, "shape_out": recon.shape, **info}
    log(f"  ssTEM: {row}")
    return row, {"linear": linear, "iso_a": recon}


def plot_frc(path: Path, rows: list[dict]) -> None:
    """FRC of the xz planes against the truth, one panel per k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(5 * len(rows), 3.6), sharey=True, squeeze=False)
    for ax, r in zip(axes[0], rows):
        for key, label, style in (("linear", "linear interpolation", "k--"), ("iso_i", "vEMDiffuse-i", "C0-"), ("iso_a", "vEMDiffuse-a", "C1-")):
            f, v = r[key]["frc_curve"]
            ax.plot(np.asarray(f[1:]) / 5.0, v[1:], style, label=label)  # cycles per nm (5 nm pixels)
        ax.axhline(0.5, color="0.6", lw=0.8)
        ax.axhline(1 / 7, color="0.6", lw=0.8, ls=":")
        ax.set_title(f"k = {r['k']} (input z spacing {5 * r['k']} nm)")
        ax.set_xlabel("spatial frequency (1/nm)")
    axes[0][0].set_ylabel("FRC, xz planes vs truth")
    axes[0][0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_panel(path: Path, planes: list[np.ndarray], scale: int = 1) -> None:
    """Images side by side (uint8, 8 px white gaps), each enlarged ``scale`` times without smoothing."""
    import cv2

    h = max(p.shape[0] for p in planes)
    tiles = []
    for p in planes:
        a = np.clip(np.rint(p), 0, 255).astype(np.uint8)
        a = np.pad(a, ((0, h - a.shape[0]), (0, 0)), constant_values=255)
        tiles += [a, np.full((h, 8), 255, np.uint8)]
    panel = np.concatenate(tiles[:-1], axis=1)
    panel = np.kron(panel, np.ones((scale, scale), np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), panel)


def verdict(model: dict, base: dict, base_name: str) -> str:
    """Which of the measured scores are better than the baseline's, worked out from the numbers."""
    checks = [
        ("PSNR", model["psnr"] > base["psnr"]),
        ("SSIM", model["ssim"] > base["ssim"]),
        ("FRC 0.5 resolution", model.get("frc_nm", 0) < base.get("frc_nm", 0)) if "frc_nm" in model else None,
        ("mean FRC", model["frc_mean"] > base["frc_mean"]) if "frc_mean" in model else None,
    ]
    checks = [c for c in checks if c is not None]
    better = [name for name, ok in checks if ok]
    worse = [name for name, ok in checks if not ok]
    text = f"better than {base_name} on {', '.join(better) or 'nothing measured'}"
    return text + (f"; not on {', '.join(worse)}." if worse else ".")


def settings_line(st: dict) -> str:
    trained = f"{st['steps']} steps" if st.get("steps") else f"{st['minutes']:g} minutes of wall-clock time"
    return (
        f"Command: `{st['command']}` ({st['date']}). Each model trained for {trained} "
        f"with its `-cpu` preset (about 700 thousand parameters), seed {st['seed']}, torch on the CPU with "
        f"{st['threads']} thread(s) of a {st['cores']}-core machine shared with other work. Scored: "
        + (
            "the best estimate (`predict`'s default output)."
            if st.get("estimate") == "best"
            else f"the mean of {st['samples']} samples, DPM-Solver++(2M), 10 steps."
        )
    )


def write_table(path: Path, results: dict) -> None:
    lines = [
        "# Benchmark: super-resolution and isotropic reconstruction on real EM",
        "",
        "Written by `benchmarks/bench_variants.py` (its docstring has the protocol; the figures are kept in "
        "benchmarks/results/variants.json). Training steps are listed: a run with a wall-clock budget trains "
        "further on a quieter or faster machine (at the `-cpu` sizes the validation PSNR levels off after about "
        "1000-1500 steps: `benchmarks/make_default_models.py`). The bundled models' own figures are in "
        "docs/benchmarks.md.",
        "",
    ]
    if results.get("sr"):
        lines += [
            "## EMDiffuse-r against bicubic interpolation",
            "",
            settings_line(results["sr"]["settings"]),
            "",
            "EPFL FIB-SEM (5 nm), high-resolution truth: 4 held-back slices (z 136-164, 256 x 256 px centre crop); "
            "input: PSF blur (FWHM one coarse pixel) and binning by the factor. Training: slices 0-119, same degradation. "
            "PSNR in dB on the [0, 1] scale, SSIM with the Wang et al. settings (`napari_emdiffuse.metrics`).",
            "",
            "| factor | output pixel | bicubic PSNR | EMDiffuse-r PSNR | bicubic SSIM | EMDiffuse-r SSIM | training steps |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in results["sr"]["rows"]:
            lines.append(
                f"| {r['factor']}x | {r['voxel_out'][-1] * 1000:g} nm | {r['bicubic']['psnr']:.2f} | {r['model']['psnr']:.2f} | "
                f"{r['bicubic']['ssim']:.3f} | {r['model']['ssim']:.3f} | {r['steps']} |"
            )
        lines.append("")
        for r in results["sr"]["rows"]:
            lines.append(f"- {r['factor']}x: " + verdict(r["model"], r["bicubic"], "bicubic interpolation"))
        lines.append("")
    if results.get("iso"):
        lines += [
            "## vEMDiffuse-i and vEMDiffuse-a against linear interpolation along z",
            "",
            settings_line(results["iso"]["settings"]),
            "",
            "EPFL FIB-SEM (5 nm isotropic), scored on z 0-64, y 240-271, x 128-383 with every k-th slice kept "
            "(input 5 x 5 x 5k nm). PSNR and SSIM over the removed slices only (0-255 scale); Fourier ring "
            "correlation (FRC) of the 32 xz planes with the true ones: the resolution where it falls below 0.5 "
            "(smaller is better; 10 nm is Nyquist) and its mean over all rings (higher is better). The kept slices "
            "are in both, so the FRC never falls to the usual 1/7 threshold. vEMDiffuse-i trained on slices 65-164 "
            "of the isotropic volume; vEMDiffuse-a on the decimated volume itself.",
            "",
            "| k | method | PSNR (removed slices) | SSIM (removed slices) | FRC 0.5 resolution, xz | mean FRC, xz | training steps |",
            "|---|---|---|---|---|---|---|",
        ]
        names = {"linear": "linear interpolation", "iso_i": "vEMDiffuse-i", "iso_a": "vEMDiffuse-a"}
        for r in results["iso"]["rows"]:
            for key, label in names.items():
                s = r[key]
                steps = r["train"][key]["steps"] if key in r["train"] else "-"
                lines.append(
                    f"| {r['k']} | {label} | {s['psnr']:.2f} | {s['ssim']:.3f} | {s['frc_nm']:.1f} nm | {s['frc_mean']:.3f} | {steps} |"
                )
        lines.append("")
        for r in results["iso"]["rows"]:
            for key in ("iso_i", "iso_a"):
                lines.append(f"- k = {r['k']}, {names[key]}: " + verdict(r[key], r["linear"], "linear interpolation"))
        lines += [
            "",
            "The FRC curves behind the two FRC columns (grey lines: 0.5 and 1/7):",
            "",
            "![FRC of xz planes against the truth](images/variants-fibsem-frc.png)",
            "",
            "xz planes at k = 8 (y = 256; z down, 5 nm pixels, shown 2x): truth | linear interpolation | "
            "vEMDiffuse-i | vEMDiffuse-a.",
            "",
            "![FIB-SEM xz planes, k = 8](images/variants-fibsem-xz-k8.png)",
            "",
        ]
    if results.get("sstem"):
        r = results["sstem"]["rows"][0]
        vin = " x ".join(f"{v * 1000:g}" for v in r["voxel_in"][::-1])
        vout = " x ".join(f"{v * 1000:g}" for v in r["voxel_out"][::-1])
        lines += [
            "## vEMDiffuse-a on the ssTEM stack (genuinely anisotropic)",
            "",
            settings_line(results["sstem"]["settings"]),
            "",
            f"ISBI 2012 ssTEM, voxel (x, y, z) {vin} nm, factor {r['factor']:g}; trained {r['steps']} steps on the "
            f"stack's own xy planes. Input crop {tuple(r['shape_in'])} (z, y, x) gives an output of "
            f"{tuple(r['shape_out'])} with voxel (x, y, z) {vout} nm: z voxel equal to the xy voxel.",
            "",
            "An xz plane (y = 248, x 128-383; z down, 4 nm pixels): linear interpolation along z | vEMDiffuse-a.",
            "",
            "![ssTEM xz plane](images/variants-sstem-xz.png)",
            "",
            "There is no ground truth here; the sections are 50 nm thick, so each input slice is itself a "
            "projection through 50 nm, which a model trained on single 4 nm rows does not know (docs/variants/iso-a.md).",
            "",
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    budget_args = p.add_mutually_exclusive_group()
    budget_args.add_argument("--minutes", type=float, default=12.0, help="wall-clock training budget per model")
    budget_args.add_argument("--steps", type=int, help="training steps per model instead (figures independent of the machine's load)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a machine shared with other jobs)")
    p.add_argument("--samples", type=int, default=2, help="samples per prediction (the uncertainty's; the best estimate is scored)")
    p.add_argument("--reuse", action="store_true", help="reuse models in --work that finished training (same budget); train the rest")
    p.add_argument("--only", default="sr,iso,sstem", help="comma-separated subset of sr, iso, sstem (the others keep earlier results)")
    p.add_argument("--sr-factors", default="2,4")
    p.add_argument("--iso-factors", default="4,8")
    p.add_argument("--work", default="/tmp/emdiffuse-bench-variants", help="trained models go here")
    p.add_argument("--out", default=str(REPO / "docs" / "benchmarks-variants.md"))
    args = p.parse_args(argv)
    import tifffile
    import torch

    if not FIBSEM.is_file() or not ISBI.is_file():
        print(f"real EM not found in {DATA} (see ../shared/data/PROVENANCE.md); nothing to benchmark", file=sys.stderr)
        return 1
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    RUN.update(samples=args.samples, reuse=args.reuse)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    store = RESULTS
    results: dict = json.loads(store.read_text()) if store.is_file() else {}
    command = ("python benchmarks/bench_variants.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    settings = {
        "command": command,
        "date": time.strftime("%Y-%m-%d"),
        "minutes": None if args.steps else args.minutes,
        "steps": args.steps,
        "seed": args.seed,
        "threads": args.threads,
        "samples": args.samples,
        "estimate": "best",
        "cores": os.cpu_count(),
        "machine": platform.machine(),
    }
    only = set(args.only.split(","))
    limit = budget(args.minutes, args.steps)

    fib = tifffile.imread(FIBSEM)
    images = Path(args.out).parent / "images"
    if "sr" in only:
        rows = [bench_sr(fib, int(f), work, limit, args.seed) for f in args.sr_factors.split(",")]
        results["sr"] = {"settings": settings, "rows": rows}
    if "iso" in only:
        rows = []
        for k in (int(f) for f in args.iso_factors.split(",")):
            row, planes = bench_iso(fib, k, work, limit, args.seed)
            rows.append(row)
            if k == 8:
                y = 16  # y = 240 + 16 = 256 in the full volume
                save_panel(images / "variants-fibsem-xz-k8.png", [planes[n][:, y] for n in ("truth", "linear", "iso_i", "iso_a")], 2)
        results["iso"] = {"settings": settings, "rows": rows}
        plot_frc(images / "variants-fibsem-frc.png", rows)
    if "sstem" in only:
        row, planes = bench_sstem(work, limit, args.seed)
        results["sstem"] = {"settings": settings, "rows": [row]}
        save_panel(images / "variants-sstem-xz.png", [planes["linear"][:, 1], planes["iso_a"][:, 1]])
    # another run may have finished a section meanwhile: merge into what is stored now
    merged = json.loads(store.read_text()) if store.is_file() else {}
    merged.update({name: results[name] for name in ("sr", "iso", "sstem") if name in only and name in results})
    store.parent.mkdir(parents=True, exist_ok=True)
    store.write_text(json.dumps(merged, indent=2, default=str))
    write_table(Path(args.out), merged)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
