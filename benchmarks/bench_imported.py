"""Imported EMDiffuse weights: our samplers against the original's 1000-step sampling.

Uses the small fixture networks in ``../shared/fixtures/emdiffuse-original`` (made with the
original code; see its MANIFEST.json), imported with ``import-emdiffuse``. They are small and
*untrained* (randomly initialised), so what this measures is the samplers, not image quality:

1. **Same algorithm.** The original's test-time loop (its ``restoration``: DDPM posterior steps on
   its test schedule, linear beta 1e-4 to 0.09 over 1000 steps, x0 estimate clipped to [-1, 1]),
   written out here from its equations, against our ``ddpm`` sampler with
   ``spacing="emdiffuse-test"`` fed the same starting and per-step noise.
2. **Steps against agreement.** Our deterministic samplers (DPM-Solver++(2M), DDIM) at a few
   step counts against the converged probability-flow ODE solution (DDIM, 1000 steps) from the
   same starting noise: how far a 10-step sample is from what more steps would give.
3. **Network evaluations and time** per image, 10-step DPM-Solver++ against the original's 1000
   ancestral steps, as a ratio measured in this run.

The condition is real EM (ISBI 2012 ssTEM crops, ../shared/data), normalised as predict does.

    python benchmarks/bench_imported.py [--size 32] [--images 1]   # writes benchmarks/results/imported.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import tifffile
import torch

from napari_emdiffuse.data.normalise import fit_normaliser
from napari_emdiffuse.engine.diffusion import EMDIFFUSE_TEST_SCHEDULE, Denoiser, Schedule
from napari_emdiffuse.engine.samplers import get_sampler
from napari_emdiffuse.import_emdiffuse import import_emdiffuse
from napari_emdiffuse.model_file import Model

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "emdiffuse-original"
DATA = REPO.parent / "shared" / "data" / "isbi2012_sstem_train.tif"


def original_loop(unet: torch.nn.Module, cond: torch.Tensor, y_t: torch.Tensor, noises: list[torch.Tensor], clip: bool) -> torch.Tensor:
    """The original's 1000-step ancestral sampling (Ho et al. 2020, Algorithm 2 with the
    posterior q(x_{t-1} | x_t, x0) of eq. 6-7), on its test schedule, in its VP form."""
    lo, hi, n = EMDIFFUSE_TEST_SCHEDULE
    betas = torch.linspace(lo, hi, n, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    var = betas * (1 - abar_prev) / (1 - abar)
    coef1 = betas * abar_prev.sqrt() / (1 - abar)
    coef2 = (1 - abar_prev) * (1 - betas).sqrt() / (1 - abar)
    for i, t in enumerate(reversed(range(n))):
        g = abar[t].float().expand(y_t.shape[0])
        eps = unet(torch.cat([cond, y_t], 1), g)
        x0 = (y_t - (1 - abar[t]).sqrt().float() * eps) / abar[t].sqrt().float()
        if clip:
            x0 = x0.clamp(-1, 1)
        mean = coef1[t].float() * x0 + coef2[t].float() * y_t
        y_t = mean + (noises[i] * var[t].clamp_min(1e-20).sqrt().float() if t > 0 else 0)
    return y_t


def ours_ddpm(model: Model, cond: torch.Tensor, y_t: torch.Tensor, noises: list[torch.Tensor]) -> torch.Tensor:
    """Our ddpm sampler in VE form on the same schedule, with the same noise (VP noise z_t
    enters the VE state as z_t times the posterior std over sqrt(abar_{t-1}))."""
    den = Denoiser(model.network, "eps")
    sigmas = Schedule.from_config(model.preset.diffusion).sampling_sigmas(1000, "emdiffuse-test")
    x = y_t * (1 + sigmas[0].double() ** 2).sqrt().float()
    return get_sampler("ddpm")(lambda xx, s: den(xx, s, cond), x, sigmas, noise=lambda i, like: noises[i])


def ode(model: Model, cond: torch.Tensor, x_unit: torch.Tensor, sampler: str, steps: int) -> torch.Tensor:
    den = Denoiser(model.network, "eps")
    spacing = "karras" if sampler == "dpmpp_2m" else "uniform"
    sigmas = Schedule.from_config(model.preset.diffusion).sampling_sigmas(steps, spacing)
    return get_sampler(sampler)(lambda xx, s: den(xx, s, cond), x_unit * sigmas[0], sigmas)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--images", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "imported.json"))
    args = ap.parse_args()
    if not (FIXTURES / "emdiffuse_n_small.pth").is_file() or not DATA.is_file():
        sys.exit(f"needs {FIXTURES} and {DATA}")
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        model, _ = import_emdiffuse(FIXTURES / "emdiffuse_n_small.pth", "denoise", Path(tmp) / "m")
    model.network.eval()
    em = tifffile.imread(DATA)[24 : 24 + args.images, 200 : 200 + args.size, 200 : 200 + args.size]
    cond = torch.from_numpy(fit_normaliser(em).forward(em))[:, None]
    gen = torch.Generator().manual_seed(0)
    y_t = torch.randn(cond.shape, generator=gen)
    noises = [torch.randn(cond.shape, generator=gen) for _ in range(1000)]

    results: dict = {"network": "emdiffuse_n_small fixture (untrained, 4.09 M parameters)", "size": args.size, "images": args.images}
    t0 = time.perf_counter()
    orig_clip = original_loop(model.network.denoise_fn, cond, y_t, noises, clip=True)
    t_orig = time.perf_counter() - t0
    orig_free = original_loop(model.network.denoise_fn, cond, y_t, noises, clip=False)
    ours = ours_ddpm(model, cond, y_t, noises)
    results["same_algorithm"] = {
        "ours_ddpm_vs_original_unclipped_rel": rel(ours, orig_free),
        "ours_ddpm_vs_original_clipped_rel": rel(ours, orig_clip),
        "original_clipped_vs_unclipped_rel": rel(orig_clip, orig_free),
    }
    reference = ode(model, cond, y_t, "ddim", 1000)
    rows = []
    for sampler in ("dpmpp_2m", "ddim"):
        for steps in (5, 10, 20, 50):
            t0 = time.perf_counter()
            out = ode(model, cond, y_t, sampler, steps)
            rows.append({"sampler": sampler, "steps": steps, "rel_to_1000_step_ode": rel(out, reference), "seconds": time.perf_counter() - t0})
    results["steps_vs_agreement"] = rows
    t10 = next(r["seconds"] for r in rows if r["sampler"] == "dpmpp_2m" and r["steps"] == 10)
    results["speed"] = {
        "original_1000_steps_s": t_orig,
        "dpmpp_2m_10_steps_s": t10,
        "time_ratio": t_orig / t10,
        "evaluation_ratio": 100.0,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
