"""Sampling throughput: our network at its default settings against the published EMDiffuse
layout of the same size, and what a whole ``predict`` costs per network evaluation.

Everything is measured in one process with the same threads, the candidates taking turns
(interleaved repeats, medians), so that the ratios hold on a shared machine:

1. **Network.** Seconds per megapixel per network evaluation (s/MP/NFE) of ``engine.network.UNet``
   as ``jobs.predict`` runs it (``prepare_network`` + ``autocast(inference=True)``: channels last,
   bf16 where the hardware has it) and of the published layout in plain float32, channels first
   (``engine.network_original``, the ``emdiffuse-original`` architecture that imported weights
   use: the guided-diffusion UNet with attention in the middle block only, as the published
   configs have it), at the paper size and at the CPU presets' sizes. FLOPs from ``torch.utils.flop_counter`` (a multiply-add is 2); the
   attainable rate is one large 3x3 convolution in the same run.
2. **End to end.** ``emdiffuse predict``'s job (``jobs.predict.run_predict``) with a paper-size model
   on one tile, ``steps x samples`` evaluations, minus a 1-step 1-sample run (which cancels the
   fixed costs), per evaluation, over the reference's bare float32 forward on the same image.

    python benchmarks/bench_throughput.py [--device auto] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import KINDS, bf16_setting, interleaved, load_average, machine, machine_kind, median, replace_section, section_name, sync  # noqa: E402

from napari_emdiffuse.config import NetworkConfig, SampleConfig, load_preset  # noqa: E402
from napari_emdiffuse.engine.device import autocast, configure_backends, prepare_network, select_device, uses_bf16  # noqa: E402
from napari_emdiffuse.engine.network import UNet, count_parameters  # noqa: E402
from napari_emdiffuse.jobs.predict import run_predict  # noqa: E402
from napari_emdiffuse.model_file import Model, ModelInfo, build_network  # noqa: E402
from napari_emdiffuse.variants import get_variant  # noqa: E402

# (preset, tile, batch): the paper size on the 512 x 512 image, the CPU presets at their
# sampling tile and batch
CASES = {
    "cpu": [("emdiffuse-n", 512, 1), ("emdiffuse-n-cpu", 256, 4), ("vemdiffuse-i-cpu", 256, 4)],
    "cuda": [("emdiffuse-n", 512, 4), ("emdiffuse-n", 256, 16), ("emdiffuse-n-cpu", 256, 16)],
    "quick": [("emdiffuse-n-cpu", 32, 2)],
}


def reference(cfg: NetworkConfig, out_channels: int, cond_channels: int) -> torch.nn.Module:
    """The published layout at the widths, levels and block counts of ``cfg``."""
    published = NetworkConfig(**{**cfg.model_dump(), "architecture": "emdiffuse-original", "attention_levels": ()})
    return build_network(published, out_channels, cond_channels)


def _channels(preset_name: str) -> tuple[int, int]:
    p = load_preset(preset_name)
    v = get_variant(p.variant)
    return v.channels(v.options(p.variant_options))


def _randomise(net: torch.nn.Module) -> torch.nn.Module:
    """Small random weights: zero-initialised layers would let either network skip work."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return net


def flops_of(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def attainable(dev: torch.device, bf16: bool, repeats: int) -> float:
    """FLOP/s of one 128 -> 128 3x3 convolution on 2 x 128 x 128, the UNet's dominant operation."""
    conv = prepare_network(torch.nn.Conv2d(128, 128, 3, padding=1), dev)
    x = torch.randn(2, 128, 128, 128, device=dev).contiguous(memory_format=torch.channels_last)

    def run():
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            conv(x)

    return flops_of(run) / median(interleaved({"conv": run}, repeats, dev)["conv"])


def network_case(preset: str, tile: int, batch: int, dev: torch.device, repeats: int, bf16_too: bool, compiled: bool = False) -> dict:
    """Ours (as predict runs it) and the reference (plain fp32), interleaved."""
    cfg = load_preset(preset).network
    out_c, cond_c = _channels(preset)
    ours = prepare_network(_randomise(UNet(cfg, out_c, cond_c)), dev).eval()
    ref = _randomise(reference(cfg, out_c, cond_c)).to(dev).eval()
    x = torch.randn(batch, out_c, tile, tile, device=dev)
    cond = torch.randn(batch, cond_c, tile, tile, device=dev)
    c = torch.full((1,), 0.3, device=dev)  # one noise level for the batch, as a sampler step gives it

    def run_ours(precision: str | None = None):
        def f():
            ctx = autocast(dev, inference=True) if precision is None else torch.autocast(dev.type, torch.bfloat16, enabled=precision == "bf16")
            with torch.inference_mode(), ctx:
                ours(x, cond, c)
        return f

    def run_ref():
        with torch.inference_mode():
            ref(x, cond, c)

    fns = {"ours": run_ours(), "reference": run_ref}
    # "ours" already runs in predict's precision: only the other one needs timing of its own
    own, other = ("ours bf16", "ours fp32") if uses_bf16(dev, inference=True) else ("ours fp32", "ours bf16")
    if bf16_too:
        fns[other] = run_ours(other.removeprefix("ours "))
    compile_s = None
    if compiled:  # opt-in torch.compile: its first call compiles, timed apart
        fast = torch.compile(ours, dynamic=False)

        def run_compiled():
            with torch.inference_mode(), autocast(dev, inference=True):
                fast(x, cond, c)

        t0 = time.perf_counter()
        run_compiled()
        sync(dev)
        compile_s = time.perf_counter() - t0
        fns["ours compiled"] = run_compiled
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = interleaved(fns, repeats, dev)
    if bf16_too:
        times[own] = times["ours"]
    mpix = batch * tile * tile / 1e6
    row = {
        "preset": preset,
        "tile": tile,
        "batch": batch,
        "params_ours": count_parameters(ours),
        "params_reference": count_parameters(ref),
        "flops_ours": flops_of(fns["ours"]),
        "flops_reference": flops_of(run_ref),
        "times": times,
        "s_per_mp_nfe": {k: median(v) / mpix for k, v in times.items()},
    }
    row["ratio"] = row["s_per_mp_nfe"]["ours"] / row["s_per_mp_nfe"]["reference"]
    row["compile_s"] = compile_s
    row["ratio_per_repeat"] = [a / b for a, b in zip(times["ours"], times["reference"])]
    if dev.type == "cuda":
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    return row


def end_to_end(
    dev: torch.device, size: int, steps: int, samples: int, repeats: int, preset: str = "emdiffuse-n", default_tiling: bool = False
) -> dict:
    """Per network evaluation of the predict job on one ``size`` tile, fixed costs cancelled,
    against the reference's bare fp32 forward of the same image (batch 1), same run."""
    p = load_preset(preset)
    model = Model(p, ModelInfo(*_channels(preset)))
    _randomise(model.network)
    image = np.random.default_rng(0).random((size, size), dtype=np.float32)
    ref = _randomise(reference(p.network, *_channels(preset))).to(dev).eval()
    x1 = torch.randn(1, 1, size, size, device=dev)

    def predict(n_steps: int, k: int):
        def f():
            cfg = SampleConfig(steps=n_steps, samples=k, tile_size=size, overlap=0, tile_batch=k, seed=0)
            run_predict(model, image, sample=cfg, device=str(dev))
        return f

    def ref_forward():
        with torch.inference_mode():
            ref(x1, x1, torch.full((1,), 0.3, device=dev))

    fns = {"full": predict(steps, samples), "one": predict(1, 1), "reference": ref_forward}
    if uses_bf16(dev, inference=True):  # the same job in float32, to tell the code's part from bf16's
        fns["full fp32"], fns["one fp32"] = in_fp32(predict(steps, samples)), in_fp32(predict(1, 1))
    if default_tiling:  # the preset's own tiles, overlap and batch, as `emdiffuse predict` runs
        cfg = p.sample.model_copy(update={"steps": steps, "samples": samples, "seed": 0})
        fns["default tiling"] = lambda: run_predict(model, image, sample=cfg, device=str(dev))
    times = interleaved(fns, repeats, dev)
    per_nfe = (median(times["full"]) - median(times["one"])) / (steps * samples - 1)
    per_nfe_fp32 = (median(times["full fp32"]) - median(times["one fp32"])) / (steps * samples - 1) if "full fp32" in times else None
    return {
        "preset": preset,
        "size": size,
        "steps": steps,
        "samples": samples,
        "times": times,
        "per_nfe_s": per_nfe,
        "reference_forward_s": median(times["reference"]),
        "ratio": per_nfe / median(times["reference"]),
        "per_nfe_fp32_s": per_nfe_fp32,
        "ratio_fp32": per_nfe_fp32 / median(times["reference"]) if per_nfe_fp32 is not None else None,
        "s_per_output_mp": median(times["full"]) / (size * size / 1e6),
        "s_per_output_mp_default_tiling": median(times["default tiling"]) / (size * size / 1e6) if default_tiling else None,
    }


def in_fp32(fn: Callable[[], None]) -> Callable[[], None]:
    """``fn`` with bf16 turned off (``EMDIFFUSE_BF16=0``)."""

    def f() -> None:
        with bf16_setting("0"):
            fn()
    return f


def report(net_rows: list[dict], e2e: dict | None, peak: dict[str, float], dev: torch.device, args: argparse.Namespace) -> str:
    bf16 = uses_bf16(dev, inference=True)
    both = "ours bf16" in net_rows[0]["s_per_mp_nfe"]
    lines = [
        f"## Throughput: ours against the published layout, on {KINDS[machine_kind(dev)]}",
        "",
        f"{machine(dev)}; load average {load_average()} at the end (a shared machine: the candidates took "
        f"turns, {args.repeats} repeats each, medians). Ours runs as `predict` runs it: channels last"
        f"{', bf16 autocast' if bf16 else ', float32 (this CPU has no native bf16)' if dev.type == 'cpu' else ''}; "
        "the reference is the published EMDiffuse layout (`engine/network_original.py`: guided-diffusion UNet, "
        "attention in the middle block only) in float32, channels first. Attainable: one 128->128 3x3 convolution, same run: "
        + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peak.items()) + ".",
        "",
        "| preset | tile x batch | parameters ours / ref | ours s/MP/NFE | reference s/MP/NFE | **ratio** (per repeat) | ours GFLOP/s (of attainable) |"
        + (" ours fp32 / reference | bf16 / fp32 (ours) | peak GiB |" if both else ""),
        "|---|---|---|---:|---:|---:|---:|" + ("---:|---:|---:|" if both else ""),
    ]
    for r in net_rows:
        s = r["s_per_mp_nfe"]
        rate = r["flops_ours"] / (s["ours"] * r["tile"] ** 2 * r["batch"] / 1e6)
        base = peak["bf16" if bf16 else "fp32"]
        line = (
            f"| {r['preset']} | {r['tile']}² x {r['batch']} | {r['params_ours'] / 1e6:.2f} / {r['params_reference'] / 1e6:.2f} M "
            f"| {s['ours']:.2f} | {s['reference']:.2f} | **{r['ratio']:.2f}** ({', '.join(f'{q:.2f}' for q in r['ratio_per_repeat'])}) "
            f"| {rate / 1e9:.1f} ({rate / base:.2f}) |"
        )
        if both:
            peak_gib = f"{r['peak_memory_gib']:.2f}" if "peak_memory_gib" in r else "-"
            line += f" {s['ours fp32'] / s['reference']:.2f} | {s['ours bf16'] / s['ours fp32']:.2f} | {peak_gib} |"
        lines.append(line)
    for r in net_rows:
        if r.get("compile_s") is not None:
            s = r["s_per_mp_nfe"]
            lines.append(f"\n`torch.compile` ({r['preset']}, {r['tile']}² x {r['batch']}): compiling took {r['compile_s']:.0f} s; "
                         f"compiled {s['ours compiled']:.2f} s/MP/NFE against eager {s['ours']:.2f} (ratio {s['ours compiled'] / s['ours']:.2f}).")
    if e2e is not None:
        lines += [
            "",
            f"**End to end** (`run_predict`, {e2e['preset']}, one {e2e['size']}² tile, {e2e['steps']} steps x {e2e['samples']} "
            f"samples minus 1 x 1): **{e2e['per_nfe_s']:.2f} s per evaluation**, against the reference's bare fp32 forward "
            f"of the same image {e2e['reference_forward_s']:.2f} s: **ratio {e2e['ratio']:.2f}** (target <= 0.5). "
            f"Whole job: {e2e['s_per_output_mp']:.2f} s per output megapixel"
            + (f" ({e2e['s_per_output_mp_default_tiling']:.2f} with the preset's own tiles)." if e2e["s_per_output_mp_default_tiling"] else "."),
        ]
        if e2e["per_nfe_fp32_s"] is not None:
            lines[-1] += (f" The same job in float32 (`EMDIFFUSE_BF16=0`): {e2e['per_nfe_fp32_s']:.2f} s per evaluation, "
                          f"ratio {e2e['ratio_fp32']:.2f}.")
    lines += ["", f"Command: `python benchmarks/bench_throughput.py --device {args.device}" + (" --quick" if args.quick else "") + (" --compile" if args.compile else "")
              + f" --repeats {args.repeats}" + (f" --case {' '.join(args.case)}" if args.case else "")
              + (" --no-e2e" if args.no_e2e else f" --e2e {args.e2e_size} {args.e2e_steps} {args.e2e_samples}") + "`"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for both networks")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="small network and image (a dry run of the script)")
    ap.add_argument("--e2e", nargs=3, type=int, metavar=("SIZE", "STEPS", "SAMPLES"), default=None,
                    help="end-to-end image size, steps, samples (default 512 10 4; quick: 32 2 2)")
    ap.add_argument("--case", nargs=3, metavar=("PRESET", "TILE", "BATCH"), default=None, help="one network case instead of the default ones")
    ap.add_argument("--no-e2e", action="store_true")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (compile time and compiled speed)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks-throughput.md alone")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = select_device(args.device)
    configure_backends(dev)
    args.e2e_size, args.e2e_steps, args.e2e_samples = args.e2e or ((32, 2, 2) if args.quick else (512, 10, 4))
    if args.e2e_steps * args.e2e_samples < 2:
        ap.error("--e2e: steps x samples must be at least 2 (a 1 x 1 run is what it subtracts)")
    cases = CASES["quick" if args.quick else ("cuda" if dev.type == "cuda" else "cpu")]
    if args.case:
        cases = [(args.case[0], int(args.case[1]), int(args.case[2]))]
    peak = {"fp32": attainable(dev, False, args.repeats)}
    if uses_bf16(dev, inference=True):
        peak["bf16"] = attainable(dev, True, args.repeats)
    t0 = time.perf_counter()
    # fp32 and bf16 side by side wherever predict runs in bf16 (CUDA, CPUs with native bf16); the
    # quick dry run exercises those columns too
    bf16_too = uses_bf16(dev, inference=True) or args.quick
    rows = [network_case(p, t, b, dev, args.repeats, bf16_too, args.compile) for p, t, b in cases]
    e2e = None
    if not args.no_e2e:
        e2e = end_to_end(dev, args.e2e_size, args.e2e_steps, args.e2e_samples, 1 if args.quick else max(1, args.repeats - 1),
                         "emdiffuse-n-cpu" if args.quick else "emdiffuse-n", default_tiling=dev.type == "cuda" or args.quick)
    sync(dev)
    text = report(rows, e2e, peak, dev, args)
    print(text)
    print(f"({time.perf_counter() - t0:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({"device": machine(dev), "attainable": peak, "network": rows, "end_to_end": e2e}, indent=2))
    if not args.no_doc:
        replace_section(section_name("bench_throughput", dev), text)


if __name__ == "__main__":
    main()
