"""The CARE approach as a baseline: the diffusion model's own UNet trained as a plain regression.

Same architecture (the noisy-image channels are fed zeros and the noise level is fixed), same
training pairs, patch size, batch, learning rate, EMA and number of steps as the diffusion model
it is compared with; only the objective differs (L1 to the target instead of the diffusion
loss). Prediction goes through the variant's own ``predict`` (volume assembly, residual
baselines, interleaving), with each plane run in one piece instead of the diffusion tiler.

    python benchmarks/regression_baseline.py emdiffuse-r --out /tmp/emdiffuse-bench-suite/care_sr

trains the baseline of a default model (its preset, recipe data and step count) where
``bench_suite.py`` looks for it, e.g. to train several in parallel before the suite runs.
Weights are saved as safetensors with the preset in the metadata (no pickle).
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from napari_emdiffuse.config import Preset, parse_preset
from napari_emdiffuse.data.normalise import Normaliser, fit_normaliser
from napari_emdiffuse.engine.network import UNet
from napari_emdiffuse.jobs.train import ema_decay, learning_rate
from napari_emdiffuse.variants import get_variant
from napari_emdiffuse.variants.base import BlockJob, Split


def regression_net(preset: Preset) -> UNet:
    """The diffusion model's UNet with the same channels (the x_t input is unused)."""
    variant = get_variant(preset.variant)
    out_c, cond_c = variant.channels(variant.options(preset.variant_options))
    torch.manual_seed(preset.train.seed)
    return UNet(preset.network, out_channels=out_c, cond_channels=cond_c)


def _forward(net: UNet, cond: torch.Tensor) -> torch.Tensor:
    n, _, h, w = cond.shape
    x = torch.zeros(n, net.out_channels, h, w, dtype=cond.dtype)
    return net(x, cond, torch.zeros(n, dtype=cond.dtype))


def train_regression(preset: Preset, arrays: dict[str, Any], steps: int, out: Path, log=print) -> dict:
    """Train for ``steps`` steps on what :func:`napari_emdiffuse.jobs.train.train` would sample."""
    variant = get_variant(preset.variant)
    options = variant.options(preset.variant_options)
    tc = preset.train
    src = variant.training_pairs(arrays, options, Split("train", tc.val_fraction, tc.patch_size, None, tc.min_foreground_std))
    net = regression_net(preset).train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    start = time.monotonic()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = learning_rate(preset, step)
        cond, target = src.sample(np.random.default_rng([tc.seed, step]), tc.batch_size, src.patch)
        loss = F.l1_loss(_forward(net, torch.from_numpy(cond)), torch.from_numpy(target))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), tc.grad_clip)
        opt.step()
        with torch.no_grad():
            d = ema_decay(preset, step)
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1 - d)
        if (step + 1) % 500 == 0:
            log(f"  regression {out.name}: step {step + 1}/{steps}, L1 {float(loss.detach()):.4f}")
    info = {"steps": steps, "seconds": round(time.monotonic() - start)}
    out.mkdir(parents=True, exist_ok=True)
    meta = {"preset": json.dumps(preset.model_dump(mode="json")), "training": json.dumps(info)}
    save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, str(out / "regression.safetensors"), metadata=meta)
    return info


def load_regression(folder: Path) -> tuple[UNet, Preset, dict]:
    from safetensors import safe_open

    path = folder / "regression.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    preset = parse_preset(json.loads(meta["preset"]), source=str(path))
    net = regression_net(preset)
    net.load_state_dict(load_file(str(path)))
    return net.eval(), preset, json.loads(meta["training"])


@torch.inference_mode()
def predict_regression(net: UNet, preset: Preset, image: np.ndarray, normaliser: Normaliser | None = None) -> np.ndarray:
    """The regression output, assembled by the variant exactly as a diffusion prediction is."""
    variant = get_variant(preset.variant)
    options = variant.options(preset.variant_options)
    geometry = variant.output_geometry(image.shape, (1.0,) * image.ndim, options)
    out = np.zeros(geometry.shape, np.float32)
    m = net.size_multiple

    def plane(read, h, w) -> np.ndarray:  # whole planes: blocks get no tile grid
        cond = read(0, h)
        ph, pw = math.ceil(h / m) * m - h, math.ceil(w / m) * m - w
        padded = np.pad(cond, ((0, 0), (0, ph), (0, pw)), mode="reflect")
        return _forward(net, torch.from_numpy(np.ascontiguousarray(padded, np.float32))[None])[0, :, :h, :w].numpy()

    def run_plane(read, h, w, mean, std, samples, plane_key=0, region=None) -> None:
        mean[(slice(None), slice(0, h))] = plane(read, h, w)

    def estimate_plane(read, h, w, out, region, plane_key=0) -> None:  # a second view (vEMDiffuse-a's yz planes)
        out[(slice(None), slice(0, h))] = plane(read, h, w)[..., region[2] : region[3]]

    normaliser = normaliser or fit_normaliser(image, name="image")
    for block in variant.blocks(image.shape, options):
        mean = np.zeros(block.shape, np.float32)
        job = BlockJob(normaliser, run_plane, mean, np.zeros_like(mean), None, estimate_plane)
        variant.predict_block(np.asarray(image[block.source]), block, options, job)
        out[block.region] = mean
    return out


def main() -> None:
    import argparse

    from bench_suite import training_arrays  # the recipes' data, so both see the same pairs

    from napari_emdiffuse.models import resolve_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="the diffusion model (a default's name or a folder) whose preset and steps to match")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = resolve_model(args.model)
    steps = int(model.info.training["steps"])
    info = train_regression(model.preset, training_arrays(model.preset), steps, args.out)
    print(f"trained {args.out}: {info}")


if __name__ == "__main__":
    main()
