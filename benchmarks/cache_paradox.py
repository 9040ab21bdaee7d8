"""Batched search for cache paradoxes: more cache, higher equilibrium cost (issue 4).

Discrete game (exact, by enumeration, :func:`poa_jax.caching.paradox_search`): random
topologies of ``n + 1 ≤ 10`` nodes — line, star, two clusters, random Euclidean — with random
placement costs and demands; does *adding a node* (the last one) raise the original nodes'
cost at the worst / best equilibrium, and does *halving node 0's placement cost* (cheaper
capacity) raise the worst / best equilibrium's SC?

Fluid game (:func:`poa_jax.tiered_cache.capacity_paradox`): random instances; does adding one
block of G1 capacity at worker 0 raise the worst / best equilibrium SC (4 starts)?

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
                row[f"{k}_paradoxes"] = int(np.sum(r[k] > 1e-9))
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
    g = tc.TieredCacheGame(d, rates, cap, credit=[1.0, 0.25])
    f = tc.capacity_paradox(g, worker=0, tier=0, extra=1.0)
    out["fluid"] = dict(
        instances=f["instances"], workers=4, tiers=2, blocks=12,
        converged=int(f["converged"].sum()), worst_paradoxes=f["worst_paradoxes"],
        best_paradoxes=f["best_paradoxes"], worst_max_rise=float(np.max(f["worst_rise"])),
        best_max_rise=float(np.max(f["best_rise"])),
    )  # fmt: skip
    print(json.dumps(out["fluid"]), flush=True)
    out["seconds"] = time.perf_counter() - t0
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
