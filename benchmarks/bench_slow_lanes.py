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

Usage: ``python -m benchmarks.bench_slow_lanes --points 4096 --chunk 1024``
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
    args = ap.parse_args(argv)

    from benchmarks.bench_sweep import replicated
    from poa_jax import batching, sweep

    sc = replicated(args.points)
    res, wall = {}, {}
    default = batching.COMPACT_ABOVE
    for mode in ("compacted", "plain", "compacted"):  # compacted twice: first run compiles
        batching.COMPACT_ABOVE = default if mode == "compacted" else 10**9
        out = os.path.join(args.out, mode)
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        r = sweep.run_sweep(sc, out, chunk_size=args.chunk, progress=False)
        wt = r.summary["wall_time_s"]
        wall[mode] = wt["solve"] - wt["first_call"]  # steady state: chunks after the first
        res[mode] = r.table
        print(f"{mode}: {time.perf_counter() - t0:.1f} s wall, steady solve {wall[mode]:.1f} s")
    batching.COMPACT_ABOVE = default

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
    both = np.asarray(tab["converged"]) & np.asarray(res["plain"].to_pydict()["converged"])
    dpoa = np.abs(np.asarray(tab["poa"]) - np.asarray(res["plain"].to_pydict()["poa"]))[both]
    out = {
        "points": len(tab["point"]),
        "chunk": args.chunk,
        "iterations": stats,
        "steady_solve_s": {"plain": wall["plain"], "compacted": wall["compacted"]},
        "speedup": wall["plain"] / wall["compacted"],
        "converged_share": {
            m: float(np.mean(res[m].to_pydict()["converged"])) for m in ("plain", "compacted")
        },
        "max_abs_poa_difference_converged": float(dpoa.max()) if dpoa.size else None,
        "loadavg": os.getloadavg(),
    }
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
