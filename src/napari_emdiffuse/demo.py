"""The one-command demo: the bundled EMDiffuse-n model on the bundled real-EM sample.

``make demo`` runs ``python -m napari_emdiffuse.demo --out demo_output``: simulated low-dose noise
(Poisson peak 20 counts, read noise 0.03) on the ssTEM sample crop, denoised with the default
model, written as TIFFs with the voxel size, a side-by-side figure (noisy | enhanced |
uncertainty | reference) and the metrics printed. ``--napari`` opens napari with the plugin's
widgets and the sample instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_MODEL = "emdiffuse-n"


def figure(path: Path, panels: list[tuple[str, np.ndarray]], cmap_last: str = "magma") -> None:
    """Panels side by side, grey values for images and a heat map for the uncertainty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.4), constrained_layout=True)
    for ax, (title, img) in zip(axes, panels):
        is_unc = "uncertainty" in title
        lo, hi = np.percentile(img, [0.5, 99.5])
        im = ax.imshow(img, cmap=cmap_last if is_unc else "gray", vmin=lo, vmax=hi)
        ax.set_title(title, fontsize=11)
        ax.axis("off")
        if is_unc:
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(out: Path, slices: int, samples: int, steps: int, device: str) -> dict:
    from ._sample_data import sample_path
    from .config import SampleConfig
    from .data.degrade import DEFAULT_DOSE, DEFAULT_READ_NOISE, poisson_gaussian, to_unit
    from .data.io import read_image, write_tiff
    from .jobs.predict import run_predict
    from .metrics import psnr, ssim
    from .models import resolve_model

    model = resolve_model(DEFAULT_MODEL)
    sample = read_image(sample_path())
    clean = to_unit(np.asarray(sample.data[:slices]))
    noisy = poisson_gaussian(clean, DEFAULT_DOSE, DEFAULT_READ_NOISE, seed=0)
    cfg = model.preset.sample.model_copy(update={"samples": samples, "steps": steps})
    cfg = SampleConfig.model_validate(cfg.model_dump())
    print(f"denoising {slices} x {clean.shape[1]} x {clean.shape[2]} px of real ssTEM with {DEFAULT_MODEL} "
          f"({cfg.sampler}, {steps} steps, {samples} samples) ...", flush=True)
    t0 = time.time()
    res = run_predict(model, noisy, sample=cfg, voxel=sample.voxel, device=device)
    seconds = time.time() - t0
    out.mkdir(parents=True, exist_ok=True)
    write_tiff(out / "noisy.tif", noisy, sample.voxel)
    write_tiff(out / "denoised.tif", res.mean, res.voxel)
    write_tiff(out / "denoised_uncertainty.tif", res.std, res.voxel)
    write_tiff(out / "reference.tif", clean, sample.voxel)
    metrics = {
        "noisy_psnr_db": float(np.mean([psnr(n, c, 1.0) for n, c in zip(noisy, clean)])),
        "denoised_psnr_db": float(np.mean([psnr(m, c, 1.0) for m, c in zip(res.mean, clean)])),
        "noisy_ssim": float(np.mean([ssim(n, c, 1.0) for n, c in zip(noisy, clean)])),
        "denoised_ssim": float(np.mean([ssim(m, c, 1.0) for m, c in zip(res.mean, clean)])),
        "error_uncertainty_spearman": _spearman_patches(np.abs(res.mean - clean), res.std),
        "seconds": round(seconds, 1),
    }
    figure(
        out / "demo.png",
        [("noisy (simulated low dose)", noisy[0]), ("EMDiffuse-n (mean)", res.mean[0]),
         ("uncertainty (std of samples)", res.std[0]), ("reference (clean)", clean[0])],
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _spearman_patches(error: np.ndarray, std: np.ndarray, patch: int = 16) -> float:
    """Rank correlation between the mean uncertainty and the mean error of 16 x 16 px patches."""
    from scipy.stats import spearmanr

    z, h, w = error.shape
    h, w = h // patch * patch, w // patch * patch
    e = error[:, :h, :w].reshape(z, h // patch, patch, w // patch, patch).mean((2, 4)).ravel()
    s = std[:, :h, :w].reshape(z, h // patch, patch, w // patch, patch).mean((2, 4)).ravel()
    return float(spearmanr(e, s).statistic)


def open_napari() -> None:
    import napari

    viewer = napari.Viewer(title="napari-emdiffuse demo")
    viewer.open_sample("napari-emdiffuse", "sstem_clean")
    viewer.open_sample("napari-emdiffuse", "sstem_noisy")
    viewer.window.add_plugin_dock_widget("napari-emdiffuse", "Enhance")
    viewer.window.add_plugin_dock_widget("napari-emdiffuse", "Compare")
    napari.run()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("demo_output"))
    ap.add_argument("--slices", type=int, default=1, help="sample slices to denoise (each about a minute on 2 CPU cores)")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--napari", action="store_true", help="open napari with the plugin and the sample instead")
    args = ap.parse_args(argv)
    if args.napari:
        open_napari()
        return 0
    m = run_demo(args.out, args.slices, args.samples, args.steps, args.device)
    print(f"noisy    : PSNR {m['noisy_psnr_db']:.2f} dB, SSIM {m['noisy_ssim']:.3f}")
    print(f"denoised : PSNR {m['denoised_psnr_db']:.2f} dB, SSIM {m['denoised_ssim']:.3f}  ({m['seconds']} s)")
    print(f"uncertainty vs actual error (Spearman, 16 px patches): {m['error_uncertainty_spearman']:.2f}")
    print(f"wrote {args.out}/denoised.tif, denoised_uncertainty.tif, demo.png, metrics.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
