#!/usr/bin/env bash
# One-call GPU profile (a follow-up to gpu_check.sh): where the routing solvers' device time goes.
#   1. benchmarks.profile_kernels: the XLA loop's kernels at N = 262 144, summed by name
#   2. the fused Pallas kernel at 10^6 with other block / warp shapes than the default 128 / 4
#   3. the fused kernel's PTX (XLA dump): local-memory loads and stores (spills, run-time-indexed
#      arrays) and register declarations per kernel
# Writes profile.md, perfetto_trace.json.gz, ptx.tgz and profile_log.txt to $OUT (default ./gpu_out).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_out}"; PY="${PYTHON:-python3}"; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{
"$PY" -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "install failed"
timeout "${PROFILE_LIMIT:-120}" "$PY" -m benchmarks.profile_kernels --n "${PROFILE_N:-262144}" \
    --out /tmp/poa_prof
cp /tmp/poa_prof/profile.md /tmp/poa_prof/perfetto_trace.json.gz "$OUT"/ 2>/dev/null
for v in ${FUSED_SHAPES:-64x2 256x8}; do
    echo "fused block x warps = $v"
    timeout "${SHAPE_LIMIT:-75}" "$PY" -m benchmarks.bench_fused --paths fused --sizes 1000000 \
        --repeats 1 --block "${v%x*}" --num-warps "${v#*x}" 2>&1 | grep -E '^\| 1000000|rror'
done
rm -rf /tmp/poa_xd
XLA_FLAGS="--xla_dump_to=/tmp/poa_xd" timeout 90 "$PY" -m benchmarks.bench_fused --paths fused \
    --sizes 4096 --repeats 1 2>&1 | grep -E '^\| 4096|rror'
for f in /tmp/poa_xd/*.ptx; do
    [[ -f "$f" ]] || continue
    echo "$(basename "$f"): $(grep -c 'ld\.local' "$f") ld.local, $(grep -c 'st\.local' "$f") st.local," \
         "$(grep -cE '^\.visible \.entry|^\.entry' "$f") entries; regs: $(grep -E '\.reg \.(b32|f32)' "$f" | head -n 3 | tr -s ' \t' ' ')"
done
(cd /tmp/poa_xd 2>/dev/null && tar czf "$OLDPWD/$OUT/ptx.tgz" $(ls *.ptx 2>/dev/null | head -n 40))
} 2>&1 | tee "$OUT/profile_log.txt"
