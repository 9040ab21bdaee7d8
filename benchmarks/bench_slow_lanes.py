"""Slow lanes: the spread of iteration counts on the default scenario and what compaction gains.

Under ``vmap`` a ``while_loop`` runs until its slowest lane stops (jax-ml/jax#20628). The solver
edge (:func:`poa_jax.batching.drive`) therefore runs batches larger than ``COMPACT_ABOVE`` lanes
in rounds of ``ROUND_ITERS`` iterations and gathers the unfinished lanes between rounds. This
script sweeps the default scenario (replicated with seeds to ``--points`` points) twice in the
same process, in chunks of ``--chunk`` points:

* **plain**: ``COMPACT_ABOVE`` set past the chunk's lane count: one ``while_loop`` per phase,
  every lane iterating until the slowest is done;
* **compacted**: the default rounds.

and reports the iteration distribution (median, p90, p99, max of the equilibrium and optimum
iterations), the tail's share of a plain loop's lane-iterations ``1 − mean/max`` per chunk, both
wall times, and the largest difference in PoA between the two runs over points converged in both.

With ``--warm`` it also runs ``solver.warm_start = "load"`` (continuation along the load axis,
:mod:`poa_jax.sweep`) interleaved with compacted cold runs, and reports its speed-up, the
iteration means and how often it selected a different worst equilibrium. Every compacted run
reports its round occupancy (:data:`poa_jax.batching.DRIVE_STATS`): the share of advanced lane
slots that held a pending lane, i.e. what refilling free slots with new instances could add.

Usage: ``python -m benchmarks.bench_slow_lanes --points 4096 --chunk 1024 [--warm]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import numpy as np


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=4096)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--out", default="/tmp/poa_jax_slow_lanes")
    ap.add_argument("--json", default=None)
    ap.add_argument("--skip-plain", action="store_true", help="no plain-loop run")
    ap.add_argument(
        "--warm", action="store_true", help='also the compacted run with solver.warm_start = "load"'
    )
    ap.add_argument(
        "--unpacked",
        action="store_true",
        help="also the previous round scheme: one large call for any rest above the small size",
    )
    args = ap.parse_args(argv)

    from benchmarks.bench_sweep import replicated
    from poa_jax import batching, sweep

    sc = replicated(args.points)
    res, wall, occupancy = {}, {}, {}
    default = batching.COMPACT_ABOVE
    modes = ["compacted"] + ([] if args.skip_plain else ["plain"]) + ["compacted"]
    if args.unpacked:
        modes += ["unpacked", "compacted", "unpacked"]  # interleaved: the load here drifts
    if args.warm:
        modes += ["warm", "compacted", "warm"]
    for mode in modes:  # each twice or after a twin: the first run compiles
        batching.COMPACT_ABOVE = default if mode != "plain" else 10**9
        batching.PACK_REST = mode != "unpacked"
        s = sc.with_solver(warm_start="load") if mode == "warm" else sc
        out = os.path.join(args.out, mode)
        shutil.rmtree(out, ignore_errors=True)
        batching.DRIVE_STATS.update(calls=0, slots=0, lanes=0)
        t0 = time.perf_counter()
        r = sweep.run_sweep(s, out, chunk_size=args.chunk, progress=False)
        wt = r.summary["wall_time_s"]
        wall[mode] = wt["solve"] - wt["first_call"]  # steady state: chunks after the first
        st = batching.DRIVE_STATS
        occupancy[mode] = st["lanes"] / st["slots"] if st["slots"] else None
        res[mode] = r.table
        print(f"{mode}: {time.perf_counter() - t0:.1f} s wall, steady solve {wall[mode]:.1f} s, "
              f"round occupancy {occupancy[mode]}")  # fmt: skip
    batching.COMPACT_ABOVE, batching.PACK_REST = default, True

    tab = res["compacted"].to_pydict()
    stats = {}
    for k in ("eq_iterations", "opt_iterations"):
        it = np.asarray(tab[k])
        per_chunk = it[: len(it) // args.chunk * args.chunk].reshape(-1, args.chunk)
        stats[k] = {
            "median": float(np.median(it)),
            "p90": float(np.percentile(it, 90)),
            "p99": float(np.percentile(it, 99)),
            "max": int(it.max()),
            "tail_share_plain_loop": float(np.mean(1 - per_chunk.mean(1) / per_chunk.max(1))),
        }
    out = {
        "points": len(tab["point"]),
        "chunk": args.chunk,
        "iterations": stats,
        "steady_solve_s": dict(wall),
        "compacted_round_occupancy": occupancy,
        "converged_share": {m: float(np.mean(res[m].to_pydict()["converged"])) for m in res},
        "loadavg": os.getloadavg(),
    }
    if "plain" in res:
        out["speedup"] = wall["plain"] / wall["compacted"]
        out["max_abs_poa_difference_converged"] = _poa_difference(tab, res["plain"].to_pydict())
    if "unpacked" in res:
        out["packing_speedup"] = wall["unpacked"] / wall["compacted"]
        out["max_abs_poa_difference_unpacked"] = _poa_difference(tab, res["unpacked"].to_pydict())
    if "warm" in res:
        w = res["warm"].to_pydict()
        out["warm"] = {
            "speedup": wall["compacted"] / wall["warm"],
            "eq_iterations_mean": {
                "cold": float(np.mean(tab["eq_iterations"])),
                "warm": float(np.mean(w["eq_iterations"])),
            },
            "opt_iterations_mean": {
                "cold": float(np.mean(tab["opt_iterations"])),
                "warm": float(np.mean(w["opt_iterations"])),
            },
            **_selection(tab, w),
        }
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


def _poa_difference(a: dict, b: dict):
    both = np.asarray(a["converged"]) & np.asarray(b["converged"])
    d = np.abs(np.asarray(a["poa"]) - np.asarray(b["poa"]))[both]
    return float(d.max()) if d.size else None


def _selection(cold: dict, warm: dict) -> dict:
    """How often continuation kept, raised or lowered the worst equilibrium found (> 1e-4)."""
    both = np.asarray(cold["converged"]) & np.asarray(warm["converged"])
    c, w = np.asarray(cold["eq_cost"])[both], np.asarray(warm["eq_cost"])[both]
    rel = (w - c) / c
    return {
        "worst_eq_cost_higher_share": float(np.mean(rel > 1e-4)),
        "worst_eq_cost_lower_share": float(np.mean(rel < -1e-4)),
        "max_abs_poa_difference_converged": _poa_difference(cold, warm),
        "mean_poa": {
            "cold": float(np.mean(np.asarray(cold["poa"])[both])),
            "warm": float(np.mean(np.asarray(warm["poa"])[both])),
        },
    }


if __name__ == "__main__":
    main()
