#!/usr/bin/env bash
# One-call GPU check for a lent GPU machine (no package index there): installs the project
# offline into the image's python3, then runs each step under its own time limit, so that one
# slow step cannot take the rest down:
#   pytest_gpu     the GPU tests other than the fused kernel's (pytest -m gpu)
#   bench          `poa-jax bench`: the routing pair (XLA loop) at 10^4, 10^5, 10^6, float32
#   closed_loop    issue 5's closed-loop sweep (3 presets x 11 C x 16 settings x 100 variants)
#   caching        issue 4's discrete (n = 12, 10^4) and fluid (8x4x256, 10^3) caching games
#   graph          SiouxFalls user equilibria (benchmarks/bench_graph.py), float64 to 1e-6
#   fused          the fused Pallas kernel, both layouts (grids in registers / in memory), vs
#                  the XLA loop at 10^5 and 10^6, then its GPU tests (compiles in 25-40 s per
#                  layout on an H200 since the loop restructure; capped at FUSED_LIMIT seconds,
#                  default 300: 4 kernels to compile and 6 GPU tests, the general variant's
#                  two last)
#   fused_rounds   (not in the default list) the fused kernel (memory layout) again with rounds
#                  of each of FUSED_ROUNDS iterations (default "32 64"; budgets are traced, so
#                  nothing new compiles): a
#                  program runs until its slowest lane ends the round, and on the float32
#                  equilibrium iteration counts rounds of 160,160,320 keep 58% of the lane slots
#                  busy, rounds of 64 78-80% and rounds of 32 84-87% (fused.slot_occupancy,
#                  2026-11-29); shorter rounds cost more launches, compactions and host syncs
#                  (rounds of 32 take ~31 rounds to the 1000-iteration bound, the default 5)
#   slow_lanes     (not in the default list) the default scenario replicated to 36 864 points:
#                  round occupancy packed vs unpacked, and warm starts along the load axis
#   tuning         (not in the default list) `poa-jax bench` at 10^6 with lanes per call x
#                  iterations per round = 65536 x 32 (the defaults), 65536 x 128, 262144 x 128
#                  and 1048576 x 128: how much of the XLA loop's time is launches and syncs
#                  (TUNE_SET="65536 32;1048576 128" picks other settings)
#   cmdbuf         (not in the default list) the same bench at 10^6, 1048576 x 128, with XLA's
#                  command buffers (CUDA graphs) extended to while loops and conditionals
#                  (XLA_FLAGS=--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL): how much of
#                  the per-iteration time is kernel launches
#   loops          (not in the default list) the same bench at 10^6, default chunk and round,
#                  for each "LOOP UNROLL [cmdbuf]" of LOOP_SET (default "fixed 1;while 4;
#                  while 8;fixed 8 cmdbuf"): fixed-trip rounds (POA_JAX_ROUND_LOOP=fixed: no
#                  per-trip predicate copy and sync), U steps per loop trip
#                  (POA_JAX_LOOP_UNROLL=U: U times fewer trips, launches and syncs), and the
#                  command-buffer flag above (each under LOOPS_LIMIT s, default 120: unrolled
#                  bodies compile longer); compare with the first tuning row (while, 1)
# Tables, JSON and logs go to $OUT (default ./gpu_out), with a summary in $OUT/table.md.
# Usage: bash scripts/gpu_check.sh [STEPS...]   (default: all, in the order above)
# Locally, GPU_CHECK_SMOKE=1 runs every step at toy sizes on the CPU (to check the script).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_out}"
STEPS="${*:-pytest_gpu bench closed_loop caching graph fused}"
SIZES="${FUSED_SIZES:-100000,1000000}"
BENCH=10000,100000,1000000
GRAPH=10000
SLOW=(--points 36864 --chunk 9216)
TUNE_N=1000000
TUNE=("65536 32" "65536 128" "262144 128" "1048576 128")
CMDBUF="1048576 128"
LOOPS=("fixed 1" "while 4" "while 8" "fixed 8 cmdbuf")
SMOKE=()
INTERP=""  # smoke: the fused kernel in Pallas interpret mode (the CPU has no Pallas backend)
PY="${PYTHON:-python3}"
if [[ "${GPU_CHECK_SMOKE:-0}" == 1 ]]; then SIZES=64; BENCH=64; GRAPH=4; SMOKE=(--smoke); SLOW=(--points 192 --chunk 96); INTERP="--interpret 16"
    TUNE_N=300; TUNE=("1024 32" "128 16"); CMDBUF="128 16"; LOOPS=("fixed 1" "while 2" "fixed 2 cmdbuf"); fi
[[ -n "${TUNE_SET:-}" ]] && IFS=';' read -r -a TUNE <<<"$TUNE_SET"
[[ -n "${LOOP_SET:-}" ]] && IFS=';' read -r -a LOOPS <<<"$LOOP_SET"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# One persistent compilation cache for every step (and a rerun on the same warm machine).
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/poa_jax_jit_cache}"
t0=$(date +%s)
RAN=()  # the steps of this run: the table reads only their outputs ($OUT may hold older ones)
step() {  # step NAME SECONDS COMMAND...: runs with a limit, logs to $OUT/NAME.log
    local name=$1 limit=$2; shift 2
    local s=$(date +%s)
    RAN+=("$name"); rm -f "$OUT/$name.log" "$OUT/$name.json" "$OUT/$name.md"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "| $name | rc $rc | $(( $(date +%s) - s )) s |" | tee -a "$OUT/steps.md"
    tail -n 40 "$OUT/$name.log"
}
echo "| step | status | wall |" >"$OUT/steps.md"; echo "|---|---|---|" >>"$OUT/steps.md"
step install 60 "$PY" -m pip install --no-deps --no-build-isolation -e .
# Where the install fails (e.g. a setuptools without bdist_wheel), run from the source tree:
# a shadow package with kernels/ at poa_jax/kernels, first on PYTHONPATH. PYTHONSAFEPATH=1
# keeps `python -m`/`-c` (and the tests' subprocesses) from putting the working directory,
# whose poa_jax/ has no kernels/, ahead of it on sys.path.
if [[ "${GPU_CHECK_FROM_SOURCE:-0}" == 1 ]] || ! "$PY" -c "import poa_jax.kernels.vi" 2>/dev/null; then
    SHADOW=$(mktemp -d); mkdir "$SHADOW/poa_jax"
    for f in poa_jax/*; do ln -s "$PWD/$f" "$SHADOW/poa_jax/"; done
    ln -s "$PWD/kernels" "$SHADOW/poa_jax/kernels"
    export PYTHONPATH="$SHADOW:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONSAFEPATH=1
    echo "| (from source: PYTHONPATH=$SHADOW) | | |" | tee -a "$OUT/steps.md"
fi
"$PY" - <<'PY' | tee "$OUT/device.txt"
import jax, jaxlib
print("jax", jax.__version__, "jaxlib", jaxlib.__version__, "devices", jax.devices())
PY
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
    >>"$OUT/device.txt" 2>/dev/null || true
want() { [[ " $STEPS " == *" $1 "* ]]; }
want pytest_gpu && step pytest_gpu 60 "$PY" -m pytest -q -rs -m gpu tests -p no:cacheprovider \
    -k "not compiled_kernel"
want bench && step bench 120 "$PY" -m poa_jax.cli bench --batch "$BENCH" --repeats 1 \
    --json "$OUT/bench.json"
want closed_loop && step closed_loop 90 "$PY" -m benchmarks.bench_closed_loop "${SMOKE[@]}" \
    --json "$OUT/closed_loop.json"
want caching && step caching 90 "$PY" -m benchmarks.bench_caching "${SMOKE[@]}" \
    --json "$OUT/caching.json"
want graph && step graph 60 "$PY" -m benchmarks.bench_graph --instances "$GRAPH" --tol 1e-6 \
    --aeq-instances 0 --fw-instances 0 --json "$OUT/graph.json"
# fused: the timing first (its rows are logged as they finish), then the kernel's GPU test
want fused && step fused "${FUSED_LIMIT:-300}" sh -c "'$PY' -m benchmarks.bench_fused --sizes '$SIZES' $INTERP \
    --repeats 2 --paths fused,pure --state registers,memory --out '$OUT/fused.md'; \
    '$PY' -m pytest -q -rs -m gpu \
    tests/test_pallas.py -p no:cacheprovider"
want fused_rounds && step fused_rounds "${FUSED_LIMIT:-300}" sh -c "for r in ${FUSED_ROUNDS:-32 64}; do \
    '$PY' -m benchmarks.bench_fused --sizes '$SIZES' --repeats 2 --paths fused --state memory \
    --rounds \$r $INTERP --out '$OUT/fused_rounds_'\$r.md; done"
want slow_lanes && step slow_lanes 240 "$PY" -m benchmarks.bench_slow_lanes "${SLOW[@]}" \
    --skip-plain --unpacked --warm --json "$OUT/slow_lanes.json"
if want tuning; then
    for cfg in "${TUNE[@]}"; do
        read -r chunk rounds <<<"$cfg"
        step "tuning_${chunk}_$rounds" "${TUNING_LIMIT:-90}" "$PY" -m poa_jax.cli bench \
            --batch "$TUNE_N" --repeats 1 --chunk "$chunk" --round-iters "$rounds" \
            --json "$OUT/tuning_${chunk}_$rounds.json"
    done
fi
if want cmdbuf; then
    read -r chunk rounds <<<"$CMDBUF"
    step cmdbuf "${TUNING_LIMIT:-90}" env XLA_FLAGS="${XLA_FLAGS:-} \
        --xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL" "$PY" -m poa_jax.cli bench \
        --batch "$TUNE_N" --repeats 1 --chunk "$chunk" --round-iters "$rounds" \
        --json "$OUT/cmdbuf.json"
fi
if want loops; then
    for cfg in "${LOOPS[@]}"; do
        read -r kind unroll flag <<<"$cfg"
        name="loops_${kind}_${unroll}${flag:+_$flag}"
        flags="${XLA_FLAGS:-}"
        [[ "$flag" == cmdbuf ]] && flags="$flags --xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL"
        step "$name" "${LOOPS_LIMIT:-120}" env POA_JAX_ROUND_LOOP="$kind" \
            POA_JAX_LOOP_UNROLL="$unroll" XLA_FLAGS="$flags" "$PY" -m poa_jax.cli bench \
            --batch "$TUNE_N" --repeats 1 --json "$OUT/$name.json"
    done
fi
{
    echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), $(( $(date +%s) - t0 )) s"
    echo; cat "$OUT/device.txt"; echo; cat "$OUT/steps.md"; echo
    echo "Compile times and first calls load what JAX's persistent cache already holds"
    echo "($JAX_COMPILATION_CACHE_DIR: earlier steps and runs on this machine), so they can"
    echo "be far below a cold compile."; echo
    ran() { [[ " ${RAN[*]} " == *" $1 "* ]]; }
    ran fused && [[ -f "$OUT/fused.md" ]] && cat "$OUT/fused.md"; echo
    ran fused_rounds && for f in "$OUT"/fused_rounds_*.md; do [[ -f "$f" ]] && cat "$f"; done; echo
    ran bench && grep -E '^\|' "$OUT/bench.log"
    tuning=(); loops=()
    for n in "${RAN[@]}"; do
        [[ "$n" == tuning_* ]] && tuning+=("$OUT/$n.log")
        [[ "$n" == loops_* ]] && loops+=("$OUT/$n.log")
    done
    if (( ${#tuning[@]} )); then  # one header (from a run that printed one), then the eq+opt rows
        echo; grep -hE '^\| solver|^\|---' "${tuning[@]}" | head -n 2
        grep -hE '^\| eq\+opt' "${tuning[@]}"
    fi
    for f in "${loops[@]}"; do  # the loop column names the setting
        echo; echo "$(basename "$f" .log):"; grep -E '^\|(---| solver| eq\+opt)' "$f"
    done
    if ran cmdbuf; then
        echo; echo "command buffers (+WHILE,+CONDITIONAL):"; grep -E '^\|' "$OUT/cmdbuf.log"
    fi
} >"$OUT/table.md"
cat "$OUT/table.md"
