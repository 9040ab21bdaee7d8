r"""The fused Pallas kernel against the pure-JAX batched solver, and the FLOP floor.

Family: :func:`poa_jax.synthetic.random_games` (5 classes × 6 workers, cache term on), selfish
policy, float32, tolerance 1e-5 (issue 6's target). For each batch size ``N`` and each path —
``pure`` (:func:`poa_jax.batching.equilibria` / :func:`~poa_jax.batching.optima`, what
``pj.solve_equilibrium`` / ``pj.solve_optimum`` / ``pj.price_of_anarchy`` run) and ``fused``
(:func:`poa_jax.fused.fused_equilibria` / :func:`~poa_jax.fused.fused_optima`) — on the same
prepared inputs (equilibrium from the greedy start; optimum from the uniform split and the
equilibrium just found, two lanes per instance):

* first call (trace + compile + run) and the steady state (median over ``--repeats`` calls on
  other batches of the same shape), ``jax.block_until_ready`` around every timed call;
  compile ≈ first − steady;
* instances/s for the equilibrium, the optimum, and both (``N / (t_eq + t_opt)``);
* convergence: share converged, median / max iterations, max gap among the converged;
* the **FLOP floor**: arithmetic per instance-iteration of the kernel
  (:func:`poa_jax.fused.flops_per_iteration`) × the mean iterations measured, against the card's
  FP32 (non-tensor) rate — H100 SXM / H200 ≈ 67 TFLOP/s — as instances/s, and how many times
  the measured rate is below it. The optimum's floor counts its two lanes per instance at the
  reported (chosen candidate's) iteration count, an approximation;
* **eq slots busy**: the share of the fused kernel's lane-iteration slots that would do work
  for the equilibria's per-lane iteration counts under ``--rounds`` and ``--block``
  (:func:`poa_jax.fused.slot_occupancy`; a program runs until its slowest lane ends the
  round), computed on every row, so a CPU run of the pure path shows it too.

On a GPU the fused kernel is compiled by Pallas' Triton backend. On a CPU only the pure-JAX path
is timed, unless ``--interpret N``: then the fused kernel also runs in Pallas interpret mode on
``N`` instances, flagged ``interpret`` (a correctness smoke, not a speed measurement).

    python -m benchmarks.bench_fused --sizes 1000000 --out benchmarks/fused_h100.md
    python -m benchmarks.bench_fused --smoke --out /tmp/fused.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path

import jax
import numpy as np

from poa_jax import batching, fused, solve
from poa_jax.policies import selfish
from poa_jax.synthetic import random_games

__all__ = ["main", "run", "format_report", "FP32_RATE"]

CLASSES, WORKERS = 5, 6
#: FP32 non-tensor FLOP/s by device kind (substring match, lower case).
FP32_RATE = {"h100": 67e12, "h200": 67e12, "a100": 19.5e12}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_fused", description=__doc__.split("\n")[0]
    )
    p.add_argument("--sizes", default="10000,100000,1000000", help="batch sizes N, comma list")
    p.add_argument("--tol", type=float, default=1e-5)
    p.add_argument("--max-iters", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3, help="steady-state repeats")
    p.add_argument("--paths", default="pure,fused", help="which paths to time")
    p.add_argument("--interpret", type=int, default=0, help="CPU: interpret-mode run on N")
    p.add_argument("--block", type=int, default=fused.BLOCK, help="lanes per program")
    p.add_argument("--num-warps", type=int, default=fused.NUM_WARPS)
    p.add_argument("--state", default=fused.STATE,
                   help="where the kernel keeps the grids during its loop: registers, memory, "
                        "or both as a comma list (one fused row each)")  # fmt: skip
    p.add_argument("--rounds", default=",".join(map(str, fused.ROUNDS)), help="round budgets")
    p.add_argument("--flops", type=float, default=None, help="FP32 FLOP/s (default by device)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny CPU run: N=64, 1 repeat")
    p.add_argument("--out", type=Path, default=None, help="markdown table here (+ .json beside)")
    return p


def _device() -> dict:
    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", dev.platform)
    return dict(device=str(dev), device_kind=kind, platform=dev.platform, jax=jax.__version__)


def _rate(kind: str, override: float | None) -> float | None:
    if override:
        return override
    k = kind.lower()
    return next((v for name, v in FP32_RATE.items() if name in k), None)


def _inputs(n: int, seed: int):
    prep = batching.prepare(random_games(seed, n, CLASSES, WORKERS, cache=True), selfish(), "f4")
    x0 = solve.starting_flows(prep, 1, greedy=True)
    return prep, x0


def _solvers(path: str, args, interpret: bool, state: str):
    tol, it = args.tol, args.max_iters
    if path == "pure":
        batching.use_kernel("xla")  # the pure path must not pick the fused kernel on a GPU
        eq = lambda p, x: batching.equilibria(
            p.game, p.policy, x, method="projection", tol=tol, max_iters=it
        )
        opt = lambda p, x: batching.optima(p.game, x, tol=tol, max_iters=it, descent_steps=0, lr=0)
        return eq, opt
    kw = dict(
        tol=tol, max_iters=it, interpret=interpret, block=args.block, num_warps=args.num_warps,
        rounds=tuple(int(r) for r in args.rounds.split(",")), state=state,
    )  # fmt: skip
    eq = lambda p, x: fused.fused_equilibria(p.game, p.policy, x, **kw)
    opt = lambda p, x: fused.fused_optima(p.game, x, **kw)
    return eq, opt


def _one(eq, opt, prep, x0):
    """Times one equilibrium + optimum pass; returns (t_eq, t_opt, eq_out, opt_out)."""
    t = time.perf_counter()
    e = jax.block_until_ready(eq(prep, x0))
    t_eq = time.perf_counter() - t
    # Optimum starts: the uniform split and the equilibrium just found.
    uniform = solve.starting_flows(prep, 1)
    x_opt = np.concatenate([uniform, np.asarray(e["flows"], uniform.dtype)], axis=1)
    t = time.perf_counter()
    o = jax.block_until_ready(opt(prep, x_opt))
    t_opt = time.perf_counter() - t
    return t_eq, t_opt, jax.device_get(e), jax.device_get(o)


def _stats(outs: list[dict], rounds=None, block=None) -> dict:
    status = np.concatenate([np.ravel(o["status"]) for o in outs])
    iters = np.concatenate([np.ravel(o["iterations"]) for o in outs])
    # The fused driver's busy share of lane slots for these counts, one call's lanes at a time
    # (equilibria only: their counts are per lane; the optimum's are per instance).
    slots = [fused.slot_occupancy(np.ravel(o["iterations"]), rounds, block) for o in outs
             if rounds]  # fmt: skip
    gap = np.concatenate([np.ravel(o["gap"]) for o in outs])
    conv = status == 0
    return dict(
        converged_share=float(conv.mean()),
        iterations_median=float(np.median(iters)),
        iterations_mean=float(np.mean(iters)),
        iterations_max=int(iters.max()),
        max_gap_converged=float(gap[conv].max()) if conv.any() else float("nan"),
        slots_busy=float(np.mean(slots)) if rounds else float("nan"),
    )


def run(args) -> dict:
    """Runs the benchmark; returns a JSON-able dict (meta + one row per (N, path))."""
    meta = _device()
    on_gpu = meta["platform"] == "gpu"
    rate = _rate(meta["device_kind"], args.flops)
    flops = {k: fused.flops_per_iteration(k, CLASSES, WORKERS) for k in ("equilibrium", "optimum")}
    meta.update(
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        family=f"random_games(seed, N, {CLASSES}, {WORKERS}, cache=True), selfish, float32",
        tol=args.tol, max_iters=args.max_iters, block=args.block, num_warps=args.num_warps,
        rounds=args.rounds, state=args.state, fp32_flops=rate, flops_per_iteration=flops,
    )  # fmt: skip
    states = args.state.split(",")
    if bad := [x for x in states if x not in ("registers", "memory")]:
        raise SystemExit(f"--state {args.state}: {bad} not in registers, memory")
    plan = []
    sizes = [64] if args.smoke else [int(s) for s in args.sizes.split(",")]
    for path in args.paths.split(","):
        if path == "fused" and not on_gpu:
            if args.interpret:
                plan += [(args.interpret, "fused", True, st) for st in states]
            continue
        plan += [
            (n, path, False, st) for n in sizes for st in (states if path == "fused" else [""])
        ]
    rows = []
    for n, path, interpret, st in plan:
        eq, opt = _solvers(path, args, interpret, st)
        path = f"{path} ({st})" if st and len(states) > 1 else path
        try:
            t0_eq, t0_opt, e, o = _one(eq, opt, *_inputs(n, args.seed))
        except fused.FusedUnavailable as err:
            rows.append(dict(n=n, path=path, error=str(err)[:500]))
            continue
        steady, outs_e, outs_o = [], [e], [o]
        for r in range(1 if args.smoke or interpret else args.repeats):
            t_eq, t_opt, e, o = _one(eq, opt, *_inputs(n, args.seed + 1 + r))
            steady.append((t_eq, t_opt))
            outs_e.append(e)
            outs_o.append(o)
        t_eq = statistics.median(t for t, _ in steady)
        t_opt = statistics.median(t for _, t in steady)
        rounds = tuple(int(r) for r in args.rounds.split(","))
        se, so = _stats(outs_e, rounds, args.block), _stats(outs_o)
        row = dict(
            n=n, path=path + (" (interpret)" if interpret else ""),
            eq_per_s=n / t_eq, opt_per_s=n / t_opt, both_per_s=n / (t_eq + t_opt),
            compile_s=max(t0_eq + t0_opt - t_eq - t_opt, 0.0), t_eq=t_eq, t_opt=t_opt,
            eq=se, opt=so,
        )  # fmt: skip
        if rate:
            work = flops["equilibrium"] * se["iterations_mean"]
            work += 2 * flops["optimum"] * so["iterations_mean"]
            row["floor_both_per_s"] = rate / work
            row["x_of_floor"] = row["floor_both_per_s"] / row["both_per_s"]
        rows.append(row)
        print(_line(row), flush=True)
    return dict(meta=meta, rows=rows)


def _line(r: dict) -> str:
    if "error" in r:
        return f"| {r['n']} | {r['path']} | error: {r['error'][:120]} |" + " |" * 10
    floor = f"{r['floor_both_per_s']:.3g} ({r['x_of_floor']:.1f}×)" if "x_of_floor" in r else "–"
    e, o = r["eq"], r["opt"]
    return (
        f"| {r['n']} | {r['path']} | {r['eq_per_s']:.4g} | {r['opt_per_s']:.4g} | "
        f"{r['both_per_s']:.4g} | {r['compile_s']:.1f} | "
        f"{e['iterations_median']:.0f} / {e['iterations_max']} | "
        f"{o['iterations_median']:.0f} / {o['iterations_max']} | "
        f"{e['converged_share']:.4f} / {o['converged_share']:.4f} | "
        f"{max(e['max_gap_converged'], o['max_gap_converged']):.2e} | {floor} | "
        f"{e['slots_busy']:.3f} |"
    )


def format_report(res: dict) -> str:
    """Markdown: a header with the device and the FLOP count, then the table."""
    m = res["meta"]
    head = [
        f"# Fused kernel vs pure JAX — {m['device_kind']} ({m['platform']}), jax {m['jax']}",
        "",
        f"{m['date']}; {m['family']}; tol {m['tol']}, max_iters {m['max_iters']}; "
        f"block {m['block']}, num_warps {m['num_warps']}, rounds {m['rounds']}, "
        f"state in {m.get('state', 'registers')}.",
        f"FLOPs per instance-iteration: equilibrium {m['flops_per_iteration']['equilibrium']}, "
        f"optimum {m['flops_per_iteration']['optimum']}; FP32 rate "
        f"{m['fp32_flops'] or 'unknown (pass --flops)'}.",
        "",
        "| N | path | eq/s | opt/s | eq+opt/s | compile s | eq iters med/max "
        "| opt iters med/max | converged eq/opt | max gap | floor eq+opt/s (measured ×) "
        "| eq slots busy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    return "\n".join(head + [_line(r) for r in res["rows"]]) + "\n"


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    res = run(args)
    text = format_report(res)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
