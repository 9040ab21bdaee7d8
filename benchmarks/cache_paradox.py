"""Batched search for cache paradoxes: more cache, higher equilibrium cost (issue 4).

Discrete game (exact, by enumeration, :func:`poa_jax.caching.paradox_search`): random
topologies of ``n + 1 ≤ 10`` nodes — line, star, two clusters, random Euclidean — with random
placement costs and demands; does *adding a node* (the last one) raise the original nodes'
cost at the worst / best equilibrium, and does *halving node 0's placement cost* (cheaper
capacity) raise the worst / best equilibrium's SC?

Fluid game (:func:`poa_jax.tiered_cache.capacity_paradox`): random instances, with credits
and again with costs in time (access latencies, distance as transfer time); does adding one
block of G1 capacity at worker 0 raise the worst / best equilibrium SC (4 starts)? And with a
shared pool: does one more block of pool capacity raise it? Flagged instances are re-checked
with ``--verify-starts`` starts.

``python -m benchmarks.cache_paradox [--instances N] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import numpy as np


def _topologies(rng, kind, batch, n):
    from poa_jax import caching

    if kind == "line":
        d = caching.line_distance(n) * rng.uniform(0.3, 1.5, (batch, 1, 1))
    elif kind == "star":
        d = caching.star_distance(n - 1) * rng.uniform(0.3, 1.5, (batch, 1, 1))
    elif kind == "clusters":
        d = np.stack(
            [caching.cluster_distance(2, n // 2, 0.0, rng.uniform(0.3, 2)) for _ in range(batch)]
        )
    else:
        pts = rng.random((batch, n, 2)) * rng.uniform(0.5, 3, (batch, 1, 1))
        d = np.sqrt(((pts[:, :, None] - pts[:, None]) ** 2).sum(-1))
    return d


def main(argv=None):
    jax.config.update("jax_enable_x64", True)
    from poa_jax import caching
    from poa_jax import tiered_cache as tc

    ap = argparse.ArgumentParser(prog="python -m benchmarks.cache_paradox")
    ap.add_argument("--instances", type=int, default=2000, help="per topology kind and size")
    ap.add_argument("--fluid-instances", type=int, default=500)
    ap.add_argument("--fluid-starts", type=int, default=4, help="equilibrium starts (fluid)")
    ap.add_argument("--verify-starts", type=int, default=64,
                    help="starts to re-check each flagged fluid instance")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    out = dict(discrete=[], fluid=None)
    t0 = time.perf_counter()
    for kind in ("line", "star", "clusters", "euclidean"):
        for n in (6, 8, 10):
            d = _topologies(rng, kind, args.instances, n)
            a = rng.uniform(0.2, 3.0, (args.instances, n))
            w = rng.uniform(0.2, 2.0, (args.instances, n))
            r = caching.paradox_search(d, a, w)
            row = dict(kind=kind, nodes=n, instances=r["instances"])
            for k in ("node_worst", "node_best", "capacity_worst", "capacity_best"):
                where, which = k.split("_")
                row[f"{k}_paradoxes"] = r[f"{where}_paradox_{which}"]  # past the enumeration's ties
                row[f"{k}_max_rise"] = float(np.max(r[k]))
                if row[f"{k}_paradoxes"]:
                    i = int(np.argmax(r[k]))
                    row[f"{k}_example"] = dict(
                        distance=d[i].tolist(), alpha=a[i].tolist(), demand=w[i].tolist(),
                        rise=float(r[k][i]),
                    )  # fmt: skip
            out["discrete"].append(row)
            print(
                json.dumps({k: v for k, v in row.items() if not k.endswith("example")}), flush=True
            )
    n_f = args.fluid_instances
    pts = rng.random((n_f, 4, 2)) * 2
    d = np.sqrt(((pts[:, :, None] - pts[:, None]) ** 2).sum(-1))
    rates = rng.zipf(1.5, (n_f, 1, 12)).astype(float) * rng.uniform(0.2, 1, (n_f, 4, 12))
    cap = rng.integers(0, 3, (n_f, 4, 2)).astype(float)
    # Credits (G1 1.0, G3 0.25, peers 0.5·e^(−D)), and the same instances with costs in time:
    # reads at 5% and 40% of the recompute time (±25% per worker), transfers at 0.3·D of it,
    # so that peers reach up to 1 instead of 0.5 (stronger free-riding).
    lat = np.array([0.05, 0.4]) * rng.uniform(0.8, 1.25, (n_f, 4, 1))
    # With a shared pool of 1–3 blocks (read at 0.5, or at 20% of the recompute time), and the
    # extra block of capacity added to the pool instead of worker 0's G1.
    pool = rng.integers(1, 4, n_f).astype(float)

    def game(name, idx):
        kw = {}
        if name.endswith("_pool"):
            kw = dict(shared_capacity=pool[idx])
            kw.update(shared_latency=0.2) if "time" in name else kw.update(shared_credit=0.5)
        if name.startswith("fluid_time"):
            return tc.TieredCacheGame(0.3 * d[idx], rates[idx], cap[idx], access_latency=lat[idx],
                                      **kw)  # fmt: skip
        return tc.TieredCacheGame(d[idx], rates[idx], cap[idx], credit=[1.0, 0.25], **kw)

    every = np.arange(n_f)
    for name in ("fluid", "fluid_time", "fluid_pool", "fluid_time_pool"):
        where = dict(worker="shared") if name.endswith("_pool") else dict(worker=0, tier=0)
        f = tc.capacity_paradox(game(name, every), **where, extra=1.0, starts=args.fluid_starts)
        out[name] = dict(
            instances=f["instances"], workers=4, tiers=2, blocks=12, starts=args.fluid_starts,
            converged=int(f["converged"].sum()), worst_paradoxes=f["worst_paradoxes"],
            best_paradoxes=f["best_paradoxes"], worst_max_rise=float(np.max(f["worst_rise"])),
            best_max_rise=float(np.max(f["best_rise"])),
        )  # fmt: skip
        # Equilibria are found from a few starts: re-check every flagged instance with
        # --verify-starts starts before and after (a rise that was a missed equilibrium goes).
        flagged = np.flatnonzero(f["converged"] & ((f["worst_rise"] > 0) | (f["best_rise"] > 0)))
        if flagged.size:
            v = tc.capacity_paradox(game(name, flagged), **where, extra=1.0,
                                    starts=args.verify_starts, seed=1)  # fmt: skip
            for k in ("worst", "best"):
                out[name][f"{k}_confirmed"] = v[f"{k}_paradoxes"]
                f[f"{k}_rise"] = np.asarray(f[f"{k}_rise"]).copy()
                f[f"{k}_rise"][flagged] = np.where(v["converged"], v[f"{k}_rise"], -np.inf)
            out[name]["verify_starts"] = args.verify_starts
        for k in ("worst", "best"):
            if out[name].get(f"{k}_confirmed"):
                i = int(np.argmax(f[f"{k}_rise"]))
                out[name][f"{k}_example"] = dict(
                    distance=d[i].tolist(), rates=rates[i].tolist(), capacity=cap[i].tolist(),
                    rise=float(f[f"{k}_rise"][i]),
                    **({"access_latency": lat[i].tolist()} if "time" in name else {}),
                    **({"shared_capacity": float(pool[i])} if "pool" in name else {}),
                )  # fmt: skip
        print(json.dumps({k: v for k, v in out[name].items() if not k.endswith("example")}),
              flush=True)  # fmt: skip
    out["seconds"] = time.perf_counter() - t0
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
