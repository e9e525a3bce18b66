"""Peak memory of read -> normalise -> write for a volume larger than the memory allowed.

A uint16 volume of a few GB is built in a zarr store from tiles of the real ISBI ssTEM slices in
../shared/data (flipped and shifted so no two tiles are alike). Two child processes then run
under the same address-space ceiling (``RLIMIT_AS``, well below the volume's size):

1. the pipeline: ``read_image`` (lazy) -> ``fit_normaliser`` (sampled) -> ``Normaliser.forward_lazy``
   -> ``write_ome_zarr`` (chunk by chunk) into a float32 OME-Zarr twice the volume's size;
2. the baseline: the same volume read whole with ``np.asarray``, which a tool that loads
   everything into memory would do.

Reported: the pipeline's peak resident memory as a fraction of the volume's and of the output's
size, whether the baseline fitted under the ceiling, and a check that sampled output tiles
equal the normalised input. Everything is measured in this one run, on this machine.

    python benchmarks/bench_io_memory.py --gb 2 --ceiling-mb 1024
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ISBI = (REPO / ".." / "shared" / "data" / "isbi2012_sstem_train.tif").resolve()
PLANE = 4096
CHUNK = (1, 1024, 1024)

CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    limit = int(sys.argv[2]) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import numpy as np
    from napari_emdiffuse.data.io import read_image
    mode, src, out = sys.argv[1], sys.argv[3], sys.argv[4]
    t = time.perf_counter()
    result = {"mode": mode}
    try:
        img = read_image(src)
        if mode == "pipeline":
            from napari_emdiffuse.data.containers import write_ome_zarr
            from napari_emdiffuse.data.normalise import fit_normaliser
            norm = fit_normaliser(img.data, name="volume")
            write_ome_zarr(out, norm.forward_lazy(img.data), img.voxel, chunks=img.data.chunksize)
            result["normaliser"] = norm.to_dict()
        else:
            whole = np.asarray(img.data)
            result["sum"] = float(whole[0, 0, :10].sum())
        result["ok"] = True
    except MemoryError as err:
        result.update(ok=False, error="MemoryError")
    result["seconds"] = round(time.perf_counter() - t, 1)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result))
    """
)


def build_volume(path: Path, depth: int) -> tuple[int, ...]:
    """A (depth, 4096, 4096) uint16 zarr volume tiled from real ssTEM slices (voxel 50 x 4 x 4 nm)."""
    import tifffile

    from napari_emdiffuse.data.containers import create_ome_zarr

    stack = tifffile.imread(ISBI)
    arr = create_ome_zarr(path, (depth, PLANE, PLANE), np.uint16, (0.05, 0.004, 0.004), chunks=CHUNK)
    rng = np.random.default_rng(0)
    n = PLANE // 512
    for z in range(depth):
        plane = np.empty((PLANE, PLANE), np.uint16)
        for i in range(n):
            for j in range(n):
                tile = stack[rng.integers(len(stack))]
                tile = np.rot90(tile, int(rng.integers(4)))
                plane[i * 512 : (i + 1) * 512, j * 512 : (j + 1) * 512] = tile.astype(np.uint16) * 200 + 1000
        arr[z] = plane
    return (depth, PLANE, PLANE)


def run_child(mode: str, ceiling_mb: int, src: Path, out: Path) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, mode, str(ceiling_mb), str(src), str(out)], capture_output=True, text=True)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if not lines:  # killed outright (e.g. a failed allocation inside a C library)
        return {"mode": mode, "ok": False, "error": (r.stderr.strip().splitlines() or ["no output"])[-1], "returncode": r.returncode}
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=2.0, help="size of the uint16 volume (GiB)")
    ap.add_argument("--ceiling-mb", type=int, default=1024, help="address-space limit of each child process")
    ap.add_argument("--workdir", default=str(REPO / "benchmarks" / "results" / "tmp"), help="where the volumes go (deleted after)")
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "io_memory.json"))
    args = ap.parse_args()
    if not ISBI.is_file():
        sys.exit(f"real EM data not found at {ISBI} (see ../shared/data/PROVENANCE.md)")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    src, out = work / "volume.zarr", work / "normalised.zarr"
    depth = max(1, int(args.gb * 2**30 / (PLANE * PLANE * 2)))
    t = time.perf_counter()
    shape = build_volume(src, depth)
    build_s = time.perf_counter() - t
    in_bytes = int(np.prod(shape)) * 2
    try:
        pipe = run_child("pipeline", args.ceiling_mb, src, out)
        base = run_child("whole", args.ceiling_mb, src, out)
        check = None
        if pipe.get("ok"):
            from napari_emdiffuse.data.io import read_image
            from napari_emdiffuse.data.normalise import Normaliser

            norm = Normaliser.from_dict(pipe["normaliser"])
            a, b = read_image(src).data, read_image(out).data
            rng = np.random.default_rng(1)
            diffs = []
            for _ in range(8):
                z, y, x = int(rng.integers(depth)), int(rng.integers(PLANE - 256)), int(rng.integers(PLANE - 256))
                diffs.append(float(np.abs(np.asarray(b[z, y : y + 256, x : x + 256]) - norm.forward(np.asarray(a[z, y : y + 256, x : x + 256]))).max()))
            check = max(diffs)
    finally:
        shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "volume": {"shape": list(shape), "dtype": "uint16", "gib": round(in_bytes / 2**30, 2), "built_in_s": round(build_s, 1)},
        "output_gib": round(in_bytes * 2 / 2**30, 2),
        "ceiling_mb": args.ceiling_mb,
        "pipeline": pipe,
        "whole_volume_baseline": base,
        "peak_rss_over_volume": round(pipe["peak_rss_mb"] * 2**20 / in_bytes, 4) if pipe.get("ok") else None,
        "peak_rss_over_output": round(pipe["peak_rss_mb"] * 2**20 / (2 * in_bytes), 4) if pipe.get("ok") else None,
        "max_abs_error_sampled_tiles": check,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
