"""Block-wise prediction on dask workers against the in-process loop, in one run.

Reports (all on this machine, a tiny untrained EMDiffuse-n network, ssTEM slices of 96 x 96 px):

- blocks/s in-process, with 1 and with 2 dask workers (``LocalCluster``, one thread each);
- the overhead per block of a 1-worker cluster against the in-process loop;
- peak memory (max RSS) per worker for a volume and for one 8 times larger (it must stay flat:
  a worker holds one block at a time; ratio <= 1.1);
- in-process ``predict`` time before and after the block refactor (``--before COMMIT``, default
  the last commit before it), both timed here in subprocesses on the same volume, interleaved.

    nice -n 19 python benchmarks/bench_distributed.py [--slices 8] [--reps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

REPO = Path(__file__).resolve().parents[1]
ISBI = REPO.parent / "shared" / "data" / "isbi2012_sstem_train.tif"
BEFORE = "34fcc9b"  # main just before predict became block-wise

#: times one in-process prediction of ``in.tif`` with the ``src`` on PYTHONPATH (old or new code)
TIMER = """
import sys, time, torch, tifffile
torch.set_num_threads(1)
from napari_emdiffuse.config import SampleConfig
from napari_emdiffuse.model_file import Model
from napari_emdiffuse.jobs.predict import run_predict
model, image = Model.load(sys.argv[1]), tifffile.imread(sys.argv[2])
cfg = SampleConfig(sampler="dpmpp_2m", steps=2, samples=2, tile_size=48, overlap=8, tile_batch=4)
run_predict(model, image[:1], sample=cfg, device="cpu")  # warm-up
t = time.perf_counter(); run_predict(model, image, sample=cfg, device="cpu"); print(time.perf_counter() - t)
"""


#: saves the benchmark's tiny untrained model with the ``src`` on PYTHONPATH: made by the older code
#: of a before/after comparison, it is a file both can read (newer code reads older model files)
MAKER = """
import sys, torch
from napari_emdiffuse.config import load_preset
from napari_emdiffuse.model_file import Model, ModelInfo, build_network
try:  # today's code writes every variant option out; older code did so itself
    from napari_emdiffuse.variants import complete
except ImportError:
    complete = lambda preset: preset
preset = complete(load_preset("tiny", {"sample": {"steps": 2, "samples": 2, "tile_size": 48, "overlap": 8, "tile_batch": 4}}))
torch.manual_seed(0)
Model(preset, ModelInfo(out_channels=1, cond_channels=1), network=build_network(preset.network, 1, 1)).save(sys.argv[1])
"""


def make_inputs(folder: Path, slices: int, src: Path) -> tuple[Path, Path, Path]:
    """The model (saved by the code in ``src``) and a small and an 8 times larger stack."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    subprocess.run([sys.executable, "-c", MAKER, str(folder / "model")], env=env, check=True, capture_output=True)
    stack = tifffile.imread(ISBI)[:, :96, :96]
    small = np.concatenate([stack] * (-(-slices // len(stack))))[:slices]
    large = np.concatenate([stack] * (-(-8 * slices // len(stack))))[: 8 * slices]
    tifffile.imwrite(folder / "small.tif", small)
    tifffile.imwrite(folder / "large.tif", large)
    return folder / "model", folder / "small.tif", folder / "large.tif"


def time_code(src: Path, model: Path, image: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", TIMER, str(model), str(image)], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"timing the code in {src} failed:\n{out.stderr.strip().splitlines()[-1]}")
    return float(out.stdout.strip().splitlines()[-1])


def run_cluster(model_dir: Path, image: Path, out: Path, workers: int) -> tuple[float, float, int]:
    """Seconds for the blocks, the largest worker's peak RSS (MiB), and the block count."""
    import resource

    from distributed import Client, LocalCluster

    from napari_emdiffuse.config import SampleConfig
    from napari_emdiffuse.jobs.predict import predict
    from napari_emdiffuse.model_file import Model

    cfg = SampleConfig(sampler="dpmpp_2m", steps=2, samples=2, tile_size=48, overlap=8, tile_batch=4)
    model, data = Model.load(model_dir), tifffile.imread(image)
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0", env={"OMP_NUM_THREADS": "1"})
    try:
        with Client(cluster) as client:
            client.run(lambda: __import__("napari_emdiffuse.jobs.cluster"))
            start, first = time.perf_counter(), None
            for ev in predict(model, data, sample=cfg, device="cpu", output=out, input_paths=[image], cluster=cluster.scheduler_address):
                if ev.kind.value == "progress" and ev.done == 1 and first is None:
                    first = time.perf_counter()  # from the first block on: model loading excluded
                if ev.kind.value == "result":
                    n = int(np.prod(ev.mean.shape[:1]))
            end = time.perf_counter()
            peaks = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    finally:
        cluster.close()
    return (end - (first or start)) * n / max(n - 1, 1), max(peaks.values()), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--before", default=BEFORE, help="the commit whose in-process predict is the reference ('none': skip); "
                    "its code makes the model, which today's code reads as an older model file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as tmp:
        tmp = Path(tmp)
        before, after = [], []
        if args.before == "none":
            model, small, large = make_inputs(tmp, args.slices, REPO / "src")
            after = [time_code(REPO / "src", model, small) for _ in range(args.reps)]
        else:
            old = tmp / "before"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(old), args.before], check=True, capture_output=True)
            try:
                model, small, large = make_inputs(tmp, args.slices, old / "src")
                for _ in range(args.reps):  # interleaved, so a change in the machine's load hits both
                    before.append(time_code(old / "src", model, small))
                    after.append(time_code(REPO / "src", model, small))
            finally:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)], check=True, capture_output=True)
        t_in = min(after)
        t1, peak1, n = run_cluster(model, small, tmp / "one.zarr", 1)
        t2, _, _ = run_cluster(model, small, tmp / "two.zarr", 2)
        _, peak8, n8 = run_cluster(model, large, tmp / "large.zarr", 1)
    report = {
        "blocks": n,
        "in_process_blocks_per_s": n / t_in,
        "workers_1_blocks_per_s": n / t1,
        "workers_2_blocks_per_s": n / t2,
        "speedup_2_over_1": t1 / t2,
        "overhead_per_block_s": (t1 - t_in) / n,
        "overhead_ratio": t1 / t_in,
        "peak_worker_MiB": peak1,
        "peak_worker_MiB_8x": peak8,
        "peak_ratio_8x": peak8 / peak1,
        "blocks_8x": n8,
        "in_process_s_before": min(before) if before else None,
        "in_process_s_after": min(after),
        "after_over_before": min(after) / min(before) if before else None,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
