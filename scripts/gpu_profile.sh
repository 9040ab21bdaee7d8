#!/usr/bin/env bash
# One-call GPU profile (a follow-up to gpu_check.sh): where the routing solvers' device time goes.
#   1. benchmarks.profile_kernels --path fused at N = 10^6: the fused kernel's rounds, the
#      driver's gathers and scatters, and anything that compiles inside the timed region
#   2. benchmarks.profile_kernels (the XLA loop) at N = 262 144, summed by kernel
#   3. where `ncu` exists: Nsight Compute's launch, occupancy and warp-stall sections for one
#      launch of the fused kernel (65 536 lanes)
# Writes profile_fused.md, profile_pure.md, their traces (*.json.gz), ncu.txt and
# profile_log.txt to $OUT (default ./gpu_out): 6 files, within what a lent machine returns.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_out}"; PY="${PYTHON:-python3}"; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{
"$PY" -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "install failed"
for path in fused pure; do
    n=1000000; [[ $path == pure ]] && n=262144
    timeout "${PROFILE_LIMIT:-150}" "$PY" -m benchmarks.profile_kernels --path "$path" --n "$n" \
        --out "/tmp/poa_prof_$path"
    cp "/tmp/poa_prof_$path/profile.md" "$OUT/profile_$path.md" 2>/dev/null
    cp "/tmp/poa_prof_$path/perfetto_trace.json.gz" "$OUT/${path}_trace.json.gz" 2>/dev/null
done
if command -v ncu >/dev/null; then
    timeout "${NCU_LIMIT:-180}" ncu --clock-control none -k regex:fused_projection -c 1 \
        --section LaunchStats --section Occupancy --section SpeedOfLight \
        --section WarpStateStats --section InstructionStats \
        "$PY" -m benchmarks.bench_fused --paths fused --sizes 65536 --repeats 1 \
        >"$OUT/ncu.txt" 2>&1
    grep -E "Registers|Occupancy|Duration|Throughput|Stall|Executed Ipc|Warp Cycles" "$OUT/ncu.txt" | head -40
else
    echo "no ncu on this machine"
fi
} 2>&1 | tee "$OUT/profile_log.txt"
