"""``make bench`` runs benchmarks that exist (issue 16: it once named a missing script)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_each_kind_of_machine_rewrites_only_its_own_throughput_sections(tmp_path, monkeypatch):
    """A rerun on a CPU with native bf16 (where predict runs in bf16) must not overwrite the
    figures measured on one without, nor the other way round."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import _timing

    doc = tmp_path / "page.md"
    cpu = torch.device("cpu")
    monkeypatch.setenv("EMDIFFUSE_BF16", "0")  # figures that are not the machine's defaults go nowhere
    with pytest.raises(SystemExit, match="EMDIFFUSE_BF16"):
        _timing.section_name("bench_throughput", cpu)
    monkeypatch.delenv("EMDIFFUSE_BF16")
    for native, figure in ((True, "bf16 figures"), (False, "fp32 figures")):
        monkeypatch.setattr(_timing, "cpu_has_native_bf16", lambda native=native: native)
        _timing.replace_section(_timing.section_name("bench_throughput", cpu), figure, doc)
    text = doc.read_text()
    assert "<!-- bench_throughput cpu-bf16 -->\nbf16 figures" in text and "<!-- bench_throughput cpu-fp32 -->\nfp32 figures" in text
    real = (ROOT / "docs" / "benchmarks-throughput.md").read_text()
    for name in ("bench_throughput", "profile_forward", "profile_train"):
        for kind in ("cpu-bf16", "cpu-fp32"):
            assert real.count(f"<!-- {name} {kind} -->") == 1, (name, kind)
