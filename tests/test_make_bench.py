"""``make bench`` runs benchmarks that exist (issue 16: it once named a missing script)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_make_bench_runs_scripts_that_exist():
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^bench:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe, "no bench target"
    scripts = re.findall(r"(benchmarks/\S+\.py)", recipe.group(1))
    assert scripts and all((ROOT / s).is_file() for s in scripts), scripts
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks/run_all.py"), "--all", "--dry-run"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    listed = re.findall(r"(\S+\.py)", run.stdout)
    assert len(listed) >= 5 and all(Path(p).is_file() for p in listed), listed
