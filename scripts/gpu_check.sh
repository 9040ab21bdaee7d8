#!/usr/bin/env bash
# One-call GPU check for a lent GPU machine (no package index there): installs the project
# offline into the image's python3, runs the GPU tests, the routing benchmark and the SiouxFalls
# graph benchmark, and writes tables and JSON to $OUT (default ./gpu_out).
# Usage: bash scripts/gpu_check.sh [SIZES]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_out}"
SIZES="${1:-1000,10000,100000,1000000}"
mkdir -p "$OUT"
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1
python3 - <<'PY' | tee "$OUT/device.txt"
import jax
print("jax", jax.__version__, "devices", jax.devices())
PY
# GPU-only tests (skip cleanly elsewhere), then the CPU suite's fast core as a sanity check.
python3 -m pytest -q -m gpu tests 2>&1 | tee "$OUT/pytest_gpu.txt"
# float32 on the GPU: the throughput target is stated there (gap <= 1e-5).
python3 -m benchmarks.bench_routing --sizes "$SIZES" --dtype float32 --tol 1e-5 \
    --scipy-instances 10 --json "$OUT/bench_f32.json" 2>&1 | tee "$OUT/bench_f32.txt"
# SiouxFalls user equilibria (issue 3 target: >= 1 000 instances/s on a GPU), float64 to 1e-6.
python3 -m benchmarks.bench_graph --instances 10000 --tol 1e-6 --aeq-instances 0 \
    --fw-instances 0 --json "$OUT/bench_graph.json" 2>&1 | tee "$OUT/bench_graph.txt"
echo "wrote $OUT"
