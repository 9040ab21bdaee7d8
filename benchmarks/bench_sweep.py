"""The sweep engine's overhead and memory: the default scenario replicated to N points.

The default scenario (2 topologies × 24 loads × 4 policies = 192 points) is given ``[seeds]``
replicates (log-normal jitter 5% on the class mix and worker capacities) until it has at least
``--points`` points, and swept with :func:`poa_jax.sweep.run_sweep` into a fresh folder. Reported:

* wall time, time inside the solver calls, and the engine's overhead = (wall − first call −
  solve after the first call) / solve: lazy expansion, Parquet writes, summary, merge;
* points per second after the first call, converged share;
* peak resident memory (``ru_maxrss``) — flat in the number of parts when memory is bounded;
* with ``--stub``: the solver is replaced by a stub that returns made-up numbers at once, so the
  run measures the engine alone (expansion, result columns, Parquet parts, summary, merge) at a
  size the real solver would take hours for on a laptop CPU; ``--solve-points`` then also runs
  the real solver on that many points in the same process, and the engine's share is the
  engine's time per point over the solver's.

Usage::

  python -m benchmarks.bench_sweep --points 1000000 --chunk 1024 --out /tmp/sweep1m
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import shutil
import time

import jax
import numpy as np


def replicated(points: int, jitter: float = 0.05):
    from poa_jax import scenario

    sc = scenario.default_scenario()
    count = max(1, math.ceil(points / sc.num_points))
    return dataclasses.replace(
        sc, name=f"default-x{count}", seeds=scenario.SeedAxis(count=count, jitter=jitter)
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=10_000)
    ap.add_argument("--chunk", type=int, default=None)
    ap.add_argument("--part", type=int, default=None)
    ap.add_argument("--out", default="/tmp/poa_jax_bench_sweep")
    ap.add_argument("--json", default=None, help="write the measurements here")
    ap.add_argument("--no-merge", action="store_true")
    ap.add_argument("--stub", action="store_true", help="engine only: the solver is a stub")
    ap.add_argument("--solve-points", type=int, default=0, help="with --stub: real points too")
    args = ap.parse_args(argv)

    from poa_jax import sweep

    real = None
    if args.stub and args.solve_points:
        real = _run(sweep, args.solve_points, args.chunk, args.part, args.out + "-real", False)
    if args.stub:
        sweep.price_of_anarchy = stub_price_of_anarchy
    out = _run(sweep, args.points, args.chunk, args.part, args.out, args.no_merge)
    if real is not None:
        out["real_solver"] = real
        if real["points"] > real["chunk"]:  # else only the first call ran: no steady solve
            engine_per_point = out["wall_s"] / out["points"]
            solve_per_point = real["solve_s_steady"] / (real["points"] - real["chunk"])
            out["engine_us_per_point"] = engine_per_point * 1e6
            out["solver_us_per_point"] = solve_per_point * 1e6
            out["overhead_share"] = engine_per_point / solve_per_point
        else:
            print("--solve-points: one chunk only, no steady-state solve to compare with")
    for k, v in out.items():
        print(f"{k:>20}: {v:.4g}" if isinstance(v, float) else f"{k:>20}: {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


def stub_price_of_anarchy(game, policy, **_):
    """Stands in for ``price_of_anarchy``: plausible shapes and values, no solving."""
    from types import SimpleNamespace

    d = np.asarray(game.demand).sum(-1)
    n = d.shape[0]
    sol = SimpleNamespace(
        social_cost=d * 1.1, mean_latency=d, gap=np.full(n, 1e-7), iterations=np.full(n, 50),
        status=np.zeros(n, np.int32), converged=np.ones(n, bool), overloaded=np.zeros(n, bool),
    )  # fmt: skip
    opt = SimpleNamespace(**{**vars(sol), "social_cost": d})
    return SimpleNamespace(
        equilibrium=sol, best_equilibrium=sol, optimum=opt, converged_starts=np.full(n, 4)
    )


def _run(sweep, points, chunk, part, out_dir, no_merge) -> dict:
    sc = replicated(points)
    shutil.rmtree(out_dir, ignore_errors=True)
    t0 = time.perf_counter()
    res = sweep.run_sweep(
        sc, out_dir, chunk_size=chunk, part_size=part, merge=not no_merge, progress=False
    )
    wall = time.perf_counter() - t0
    wt = res.summary["wall_time_s"]
    first, solve = wt["first_call"], wt["solve"]
    steady_solve = solve - first
    steady_wall = wall - first
    overhead = (steady_wall - steady_solve) / steady_solve if steady_solve > 0 else None
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "device": f"{jax.devices()[0].platform} ({jax.devices()[0].device_kind})",
        "points": res.summary["points"],
        "chunk": res.summary["chunk_points"],
        "part": res.summary["part_points"],
        "parts": wt["parts_computed"],
        "wall_s": wall,
        "first_call_s": first,
        "solve_s": solve,
        "solve_s_steady": steady_solve,
        "overhead_share": overhead,
        # after the first call; None where it was the only one (one chunk)
        "points_per_s": (res.summary["points"] - res.summary["chunk_points"]) / steady_wall
        if res.summary["points"] > res.summary["chunk_points"]
        else None,
        "converged_share": res.summary["converged_share"],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loadavg": os.getloadavg(),
    }
    # Sanity: every point is in the merged table once.
    if res.table is not None:
        pts = np.sort(res.table.column("point").to_numpy())
        assert np.array_equal(pts, np.arange(res.summary["points"])), "points missing"
    return out


if __name__ == "__main__":
    raise SystemExit(main())
