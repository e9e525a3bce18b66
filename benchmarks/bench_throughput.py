"""Sampling throughput: seconds per megapixel per network evaluation, and how close the network
runs to the machine's attainable rate.

The attainable rate is measured in the same process with one large 3x3 convolution (the
operation that dominates the UNet), so the ratio is meaningful on a shared, noisy machine.
FLOPs are counted by ``torch.utils.flop_counter`` (a multiply-add counts as 2).

    python benchmarks/bench_throughput.py [--device auto] [--tile 256] [--batch 4]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from napari_emdiffuse.config import load_preset
from napari_emdiffuse.engine.device import autocast, configure_backends, select_device
from napari_emdiffuse.engine.diffusion import Denoiser
from napari_emdiffuse.engine.network import UNet, count_parameters

REPO = Path(__file__).resolve().parents[1]


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev: torch.device, repeats: int) -> float:
    """Median seconds of one call, after a warm-up call."""
    fn()
    _sync(dev)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def flops_of(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def attainable(dev: torch.device, batch: int, tile: int, repeats: int) -> float:
    """FLOP/s of a large 3x3 convolution (128 -> 128 channels), the UNet's dominant operation."""
    conv = torch.nn.Conv2d(128, 128, 3, padding=1).to(dev)
    x = torch.randn(batch, 128, tile, tile, device=dev)
    if dev.type == "cuda":
        conv, x = conv.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)

    def run():
        with torch.inference_mode(), autocast(dev):
            conv(x)

    return flops_of(run) / timed(run, dev, repeats)


def network_rate(preset: str, dev: torch.device, batch: int, tile: int, repeats: int) -> dict:
    p = load_preset(preset)
    net = UNet(p.network).to(dev).eval()
    if dev.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    den = Denoiser(net, p.diffusion.prediction)
    x = torch.randn(batch, 1, tile, tile, device=dev)
    cond = torch.randn(batch, 1, tile, tile, device=dev)
    sigma = torch.tensor(1.0, device=dev)

    def run():
        with torch.inference_mode(), autocast(dev):
            den(x, sigma, cond)

    flops = flops_of(run)
    secs = timed(run, dev, repeats)
    mpix = batch * tile * tile / 1e6
    return {"preset": preset, "params": count_parameters(net), "s_per_mpix_nfe": secs / mpix, "flops": flops / secs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--batch", type=int, default=None, help="tiles per evaluation (default 16 on CUDA, 2 on CPU)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks-throughput.md")
    args = ap.parse_args()
    dev = select_device(args.device)
    configure_backends(dev)
    batch = args.batch or (16 if dev.type == "cuda" else 2)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    peak = attainable(dev, batch, args.tile // 2, args.repeats)
    rows = [network_rate(p, dev, batch, args.tile, args.repeats) for p in ("emdiffuse-n", "emdiffuse-n-cpu")]
    lines = [
        f"# Sampling throughput on {name}",
        "",
        f"Tiles of {args.tile}x{args.tile} px, {batch} per evaluation"
        f"{', bf16 autocast, channels_last' if dev.type == 'cuda' else ', float32'}. "
        f"Attainable rate (one 128->128 3x3 convolution, same run): {peak / 1e9:.1f} GFLOP/s.",
        "",
        "| network | parameters | s per megapixel per evaluation | achieved GFLOP/s | achieved / attainable |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['preset']} | {r['params'] / 1e6:.1f} M | {r['s_per_mpix_nfe']:.3f} | {r['flops'] / 1e9:.1f} | {r['flops'] / peak:.2f} |"
        )
    lines += ["", f"Command: `python benchmarks/bench_throughput.py --device {args.device} --tile {args.tile} --batch {batch}`", ""]
    text = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
