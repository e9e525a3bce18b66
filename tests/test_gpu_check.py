"""``benchmarks/gpu_check.sh --device cpu --quick``: the GPU measurement script's dry run, so
that it still works the day a GPU is lent."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_writes_its_json_and_table(tmp_path, isbi_path):
    env = {**os.environ, "PY": sys.executable}
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--quick", "--out", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert {s: v["exit"] for s, v in result["steps"].items()} == {"gpu_tests": 0, "throughput": 0, "bf16_quality": 0, "train": 0}
    row = result["throughput"]["network"][0]
    assert {"ours", "reference", "ours fp32", "ours bf16"} <= set(row["s_per_mp_nfe"]) and row["ratio"] > 0
    assert result["throughput"]["end_to_end"]["per_nfe_s"] is not None
    assert abs(result["bf16_quality"]["delta_db"]) < 1.0 and result["train"][0]["projected_steps_per_s"] > 0
    table = (tmp_path / "gpu_check.md").read_text()
    assert "ratio" in table and "bf16 - fp32 PSNR" in table and "steps/s" in table
