#!/usr/bin/env bash
# One-call GPU check for a lent GPU machine (no package index there): installs the project
# offline into the image's python3, then, each step under its own time limit so that one slow
# step cannot take the rest down:
#   1. the GPU tests (pytest -m gpu: the compiled Pallas kernel against the XLA loop, ...);
#   2. the fused Pallas kernel against the XLA loop at 10^5 and 10^6 instances, float32,
#      tol 1e-5, with the FLOP floor (benchmarks/bench_fused.py);
#   3. `poa-jax bench` (what the public API runs: kernel picked automatically);
#   4. SiouxFalls user equilibria (benchmarks/bench_graph.py), float64 to 1e-6;
# and writes tables, JSON and logs to $OUT (default ./gpu_out), with a summary in $OUT/table.md.
# Usage: bash scripts/gpu_check.sh [SIZES]     (SIZES for step 2, default 100000,1000000)
# Locally, GPU_CHECK_SMOKE=1 runs every step at toy sizes on the CPU (to check the script).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_out}"
SIZES="${1:-100000,1000000}"
BENCH="10000,100000,1000000"
GRAPH=10000
PY="${PYTHON:-python3}"
if [[ "${GPU_CHECK_SMOKE:-0}" == 1 ]]; then SIZES=64; BENCH=64; GRAPH=4; fi
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
t0=$(date +%s)
step() {  # step NAME SECONDS COMMAND...: runs with a limit, logs to $OUT/NAME.log
    local name=$1 limit=$2; shift 2
    local s=$(date +%s)
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "| $name | rc $rc | $(( $(date +%s) - s )) s |" | tee -a "$OUT/steps.md"
    tail -n 40 "$OUT/$name.log"
}
echo "| step | status | wall |" >"$OUT/steps.md"; echo "|---|---|---|" >>"$OUT/steps.md"
step install 60 "$PY" -m pip install --no-deps --no-build-isolation -e .
"$PY" - <<'PY' | tee "$OUT/device.txt"
import jax, jaxlib
print("jax", jax.__version__, "jaxlib", jaxlib.__version__, "devices", jax.devices())
PY
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
    >>"$OUT/device.txt" 2>/dev/null || true
step pytest_gpu 120 "$PY" -m pytest -q -x -rs -m gpu tests -p no:cacheprovider
step bench_fused 170 "$PY" -m benchmarks.bench_fused --sizes "$SIZES" --repeats 2 \
    --out "$OUT/fused.md"
step poa_jax_bench 120 "$PY" -m poa_jax.cli bench --batch "$BENCH" --repeats 1 \
    --json "$OUT/bench.json"
step bench_graph 60 "$PY" -m benchmarks.bench_graph --instances "$GRAPH" --tol 1e-6 \
    --aeq-instances 0 --fw-instances 0 --json "$OUT/graph.json"
{
    echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), $(( $(date +%s) - t0 )) s"
    echo; cat "$OUT/device.txt"; echo; cat "$OUT/steps.md"; echo
    [[ -f "$OUT/fused.md" ]] && cat "$OUT/fused.md"; echo
    grep -E '^\|' "$OUT/poa_jax_bench.log" || true
} >"$OUT/table.md"
cat "$OUT/table.md"
