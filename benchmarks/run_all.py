"""``make bench``: run the benchmarks one after the other, each writing its own results file.

By default the throughput group runs (minutes to an hour on 2 cores; it regenerates
docs/benchmarks-throughput.md) and the I/O memory benchmark. ``--all`` adds the model-quality
benchmarks, which train models for many minutes each (hours in all on a CPU).

    python benchmarks/run_all.py [--all] [--only NAME ...] [--dry-run]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (name, arguments, in the default run)
BENCHMARKS = [
    ("bench_throughput.py", [], True),
    ("profile_forward.py", [], True),
    ("profile_train.py", [], True),
    ("bench_bf16_quality.py", [], True),
    ("bench_io_memory.py", ["--gb", "2", "--ceiling-mb", "1024"], True),
    ("bench_denoise_samplers.py", ["--minutes", "20"], False),
    ("bench_variants.py", ["--steps", "2000"], False),
    ("bench_suite.py", [], False),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--all", action="store_true", help="also the model-quality benchmarks (hours)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="just these scripts (e.g. bench_throughput.py)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = ap.parse_args()
    chosen = [(n, a) for n, a, default in BENCHMARKS if (n in args.only if args.only else default or args.all)]
    unknown = set(args.only or ()) - {n for n, _, _ in BENCHMARKS}
    if unknown:
        sys.exit(f"run_all.py: no benchmark named {', '.join(sorted(unknown))}")
    failed = []
    for name, extra in chosen:
        cmd = [sys.executable, str(HERE / name), *extra]
        print("$", " ".join(cmd[1:]), flush=True)
        if args.dry_run:
            continue
        t0 = time.time()
        rc = subprocess.call(cmd)
        print(f"  -> exit {rc} after {time.time() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
