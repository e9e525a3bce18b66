"""Where a network evaluation and a whole ``predict`` spend their time.

1. **Forward pass, by operation.** ``torch.profiler`` over one forward of our network as
   ``predict`` runs it and of the published layout (``engine/network_original.py``, float32),
   self CPU time grouped into convolutions, GroupNorm, activations, attention, element-wise
   arithmetic, copies/concatenations, linear layers and resampling.
2. **Predict, by stage.** ``jobs.predict.run_predict`` with timers on the network evaluations
   (``Denoiser.forward``), the position-keyed noise (``tiling.keyed_noise``) and the tiled sampler
   as a whole (``TiledSampler.run``); what is left inside the sampler is its arithmetic, reading,
   padding and blending, what is left outside it is the job (normalisation, allocation, thread).

    python benchmarks/profile_forward.py [--quick] [--predict 512 10 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import KINDS, Timers, load_average, machine, machine_kind, replace_section, section_name  # noqa: E402
from bench_throughput import CASES, _channels, _randomise, reference  # noqa: E402

from napari_emdiffuse.config import SampleConfig, load_preset  # noqa: E402
from napari_emdiffuse.engine import tiling  # noqa: E402
from napari_emdiffuse.engine.device import autocast, prepare_network, select_device  # noqa: E402
from napari_emdiffuse.engine.diffusion import Denoiser  # noqa: E402
from napari_emdiffuse.engine.network import UNet  # noqa: E402
from napari_emdiffuse.jobs.predict import run_predict  # noqa: E402
from napari_emdiffuse.model_file import Model, ModelInfo  # noqa: E402

GROUPS = {
    "convolution": ("convolution", "conv2d", "conv1d", "mkldnn_conv"),
    "GroupNorm": ("group_norm",),
    "activation": ("silu", "sigmoid"),
    "attention": ("scaled_dot_product", "softmax", "bmm", "einsum", "baddbmm"),
    "element-wise": ("add", "mul", "addcmul", "sub", "div"),
    "copies, cat": ("cat", "copy_", "clone", "contiguous", "to_dense", "reorder"),
    "linear": ("addmm", "linear", "aten::mm"),
    "resampling": ("upsample", "avg_pool", "interpolate"),
}
ORDER = (*GROUPS, "other")


def group_of(name: str) -> str:
    for group, keys in GROUPS.items():
        if any(k in name for k in keys):
            return group
    return "other"


def op_breakdown(net: torch.nn.Module, inputs: tuple, ctx_fn) -> tuple[dict[str, float], float]:
    """Self CPU seconds per group over one forward (after a warm-up), and the wall time."""
    with torch.inference_mode(), ctx_fn():
        net(*inputs)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            net(*inputs)
            wall = time.perf_counter() - t0
    out = dict.fromkeys(ORDER, 0.0)
    for ev in prof.key_averages():
        if ev.key.startswith("aten::"):  # leaf operators carry the time; module scopes would count twice
            out[group_of(ev.key)] += ev.self_cpu_time_total / 1e6
    return out, wall


def forward_rows(cases: list, dev: torch.device) -> list[dict]:
    rows = []
    for preset, tile, batch in cases:
        cfg = load_preset(preset).network
        out_c, cond_c = _channels(preset)
        x = torch.randn(batch, out_c, tile, tile, device=dev)
        cond = torch.randn(batch, cond_c, tile, tile, device=dev)
        c = torch.full((1,), 0.3, device=dev)  # one noise level for the batch, as a sampler step gives it
        ours = prepare_network(_randomise(UNet(cfg, out_c, cond_c)), dev).eval()
        ref = _randomise(reference(cfg, out_c, cond_c)).to(dev).eval()
        for name, net, ctx in (("ours", ours, lambda: autocast(dev, inference=True)), ("reference", ref, lambda: torch.autocast(dev.type, enabled=False))):
            groups, wall = op_breakdown(net, (x, cond, c), ctx)
            rows.append({"preset": preset, "tile": tile, "batch": batch, "network": name, "groups": groups, "wall": wall})
    return rows


def predict_breakdown(dev: torch.device, preset: str, size: int, steps: int, samples: int, tile: int | None) -> dict:
    p = load_preset(preset)
    model = Model(p, ModelInfo(*_channels(preset)))
    _randomise(model.network)
    image = np.random.default_rng(0).random((size, size), dtype=np.float32)
    tile = tile or size
    cfg = SampleConfig(steps=steps, samples=samples, tile_size=tile, overlap=0 if tile >= size else 32, tile_batch=samples, seed=0)
    run_predict(model, image[:64, :64], sample=cfg.model_copy(update={"steps": 1, "samples": 1, "tile_size": 64}), device=str(dev))  # warm-up
    timers = Timers()
    timers.wrap(Denoiser, "forward", "network")
    timers.wrap(tiling, "keyed_noise", "noise")
    outer = Timers()
    outer.wrap(tiling.TiledSampler, "run", "sampler")
    with timers.active(), outer.active():
        t0 = time.perf_counter()
        run_predict(model, image, sample=cfg, device=str(dev))
        wall = time.perf_counter() - t0
    net, noise, run = timers.seconds.get("network", 0.0), timers.seconds.get("noise", 0.0), outer.seconds["sampler"]
    return {
        "preset": preset, "size": size, "tile": tile, "steps": steps, "samples": samples, "wall": wall,
        "stages": {"network": net, "keyed noise": noise, "sampler arithmetic, padding, blending": run - net - noise, "job (normalise, allocate, thread)": wall - run},
        "calls": timers.calls,
    }


def report(rows: list[dict], pred: list[dict], dev: torch.device, args: argparse.Namespace) -> str:
    lines = [
        f"## Forward pass profile, on {KINDS[machine_kind(dev)]}",
        "",
        f"`torch.profiler`, self CPU time of the aten operators over one forward, {machine(dev)}, load average "
        f"{load_average()} (shares are what matters on a shared machine). Ours as `predict` runs it; the reference "
        "(the published layout) in float32, channels first.",
        "",
        "| preset | tile x batch | network | wall s | " + " | ".join(ORDER) + " |",
        "|---|---|---|---:|" + "---:|" * len(ORDER),
    ]
    for r in rows:
        tot = sum(r["groups"].values()) or 1.0
        lines.append(
            f"| {r['preset']} | {r['tile']}² x {r['batch']} | {r['network']} | {r['wall']:.2f} | "
            + " | ".join(f"{100 * r['groups'][k] / tot:.0f} %" for k in ORDER) + " |"
        )
    lines += ["", f"## Predict profile, on {KINDS[machine_kind(dev)]}", "", "`run_predict` with a randomly initialised model, timers on its stages (seconds, share of the wall time).", "",
              "| preset | image, tile | steps x samples | wall s | " + " | ".join(pred[0]["stages"]) + " |" if pred else "",
              "|---|---|---|---:|" + "---:|" * (len(pred[0]["stages"]) if pred else 0)]
    for p in pred:
        lines.append(
            f"| {p['preset']} | {p['size']}², {p['tile']} | {p['steps']} x {p['samples']} | {p['wall']:.1f} | "
            + " | ".join(f"{v:.2f} ({100 * v / p['wall']:.0f} %)" for v in p["stages"].values()) + " |"
        )
    lines += ["", "Command: `python benchmarks/profile_forward.py" + (" --quick" if args.quick else "") + f" --predict {' '.join(map(str, args.predict))}`"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--predict", nargs=3, type=int, metavar=("SIZE", "STEPS", "SAMPLES"), default=None,
                    help="predict profile: image size (one tile), steps, samples (default 512 4 4; quick 32 2 2)")
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = select_device(args.device)
    args.predict = args.predict or ([32, 2, 2] if args.quick else [512, 4, 4])
    cases = CASES["quick" if args.quick else ("cuda" if dev.type == "cuda" else "cpu")]
    rows = forward_rows(cases, dev)
    size, steps, samples = args.predict
    preset = "emdiffuse-n-cpu" if args.quick else "emdiffuse-n"
    pred = [predict_breakdown(dev, preset, size, steps, samples, None)]
    text = report(rows, pred, dev, args)
    print(text)
    if not args.no_doc:
        replace_section(section_name("profile_forward", dev), text)


if __name__ == "__main__":
    main()
