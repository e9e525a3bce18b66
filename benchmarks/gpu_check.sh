#!/usr/bin/env bash
# The GPU measurements in one go (at most 8 minutes on one H100/H200), for the first time a GPU
# is at hand:
#   1. the `gpu` tests;
#   2. bench_throughput.py: ours (fp32 and bf16) against the published layout, s/MP at the default
#      10 steps x 4 samples end to end, achieved vs attainable FLOP/s, peak memory;
#   3. bench_bf16_quality.py: PSNR of bf16 against fp32 on held-back real EM, same seed;
#   4. a short training of the paper-size preset (profile_train.py): steps per second.
# Writes OUT/gpu_check.json (everything) and OUT/gpu_check.md (one table).
#
#   benchmarks/gpu_check.sh [--device cuda] [--quick] [--out DIR]
# `--device cpu --quick` is the dry run the test suite makes, so that the script cannot rot.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda QUICK=0 OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --out) OUT="$2"; shift 2 ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
PY="${PY:-python}"
OUT="${OUT:-benchmarks/results/gpu_check_$DEVICE}"
mkdir -p "$OUT"
STATUS="$OUT/status.txt"; : > "$STATUS"
T0=$(date +%s)

step() {  # step NAME SECONDS COMMAND...: run with a time limit, record its exit status
  local name="$1" limit="$2"; shift 2
  echo "== $name (limit ${limit}s)"
  local s=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name $rc $(( $(date +%s) - s ))" >> "$STATUS"
  tail -n 3 "$OUT/$name.log"
}

if [ "$QUICK" = 1 ]; then
  step gpu_tests 60 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/engine/test_device.py tests/jobs/test_gpu_paths.py
  step throughput 120 "$PY" benchmarks/bench_throughput.py --device "$DEVICE" --quick --repeats 1 --no-doc --json "$OUT/throughput.json"
  step bf16_quality 120 "$PY" benchmarks/bench_bf16_quality.py --device "$DEVICE" --crop 32 --slices 1 --steps 1 --samples 1 --no-doc --json "$OUT/bf16_quality.json"
  step train 120 "$PY" benchmarks/profile_train.py --presets tiny --steps 2 --device "$DEVICE" --no-doc --json "$OUT/train.json"
else
  step gpu_tests 90 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests
  step throughput 210 "$PY" benchmarks/bench_throughput.py --device "$DEVICE" --repeats 5 --e2e 1024 10 4 --no-doc --json "$OUT/throughput.json"
  step bf16_quality 60 "$PY" benchmarks/bench_bf16_quality.py --device "$DEVICE" --crop 512 --slices 4 --no-doc --json "$OUT/bf16_quality.json"
  step train 90 "$PY" benchmarks/profile_train.py --presets emdiffuse-n --steps 100 --device "$DEVICE" --no-doc --json "$OUT/train.json"
fi

"$PY" - "$OUT" "$(( $(date +%s) - T0 ))" <<'EOF'
import json, sys
from pathlib import Path
out, seconds = Path(sys.argv[1]), int(sys.argv[2])
def load(name):
    p = out / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None
status = {n: {"exit": int(rc), "seconds": int(s)} for n, rc, s in (l.split() for l in (out / "status.txt").read_text().splitlines())}
result = {"seconds": seconds, "steps": status, "throughput": load("throughput"), "bf16_quality": load("bf16_quality"), "train": load("train")}
(out / "gpu_check.json").write_text(json.dumps(result, indent=2))
rows = [f"# GPU check ({seconds} s)", "", "| measurement | value |", "|---|---|"]
rows += [f"| step `{n}` | exit {v['exit']}, {v['seconds']} s |" for n, v in status.items()]
tp = result["throughput"]
if tp:
    rows.append(f"| device | {tp['device']} |")
    rows += [f"| attainable {k} | {v / 1e12:.2f} TFLOP/s |" for k, v in tp["attainable"].items()]
    for r in tp["network"]:
        s, tag = r["s_per_mp_nfe"], f"{r['preset']} {r['tile']}² x {r['batch']}"
        rows.append(f"| {tag}: ours / reference s/MP/NFE | {s['ours']:.4f} / {s['reference']:.4f} (ratio **{r['ratio']:.2f}**) |")
        if "ours bf16" in s:
            rows.append(f"| {tag}: ours fp32 / bf16 s/MP/NFE | {s['ours fp32']:.4f} / {s['ours bf16']:.4f} |")
        rows.append(f"| {tag}: ours achieved | {r['flops_ours'] / (s['ours'] * r['tile'] ** 2 * r['batch'] / 1e6) / 1e12:.2f} TFLOP/s |")
        if "peak_memory_gib" in r:
            rows.append(f"| {tag}: peak memory | {r['peak_memory_gib']:.2f} GiB |")
    e = tp.get("end_to_end")
    if e:
        rows.append(f"| predict {e['size']}² x {e['steps']} steps x {e['samples']} samples | {e['s_per_output_mp']:.2f} s/MP; per NFE {e['per_nfe_s']:.4f} s = **{e['ratio']:.2f}** x reference forward |")
q = result["bf16_quality"]
if q:
    rows.append(f"| bf16 - fp32 PSNR (real EM) | {q['delta_db']:+.3f} dB ({'pass' if q['pass'] else 'FAIL'}, limit 0.05) |")
for t in result["train"] or []:
    rows.append(f"| training {t['preset']} ({t['batch']} x {t['patch']}²) | {t['projected_steps_per_s']:.2f} steps/s; outside forward/backward/optimizer {100 * t['outside_fraction']:.1f} % |")
(out / "gpu_check.md").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
sys.exit(0 if all(v["exit"] == 0 for v in status.values()) else 1)
EOF
