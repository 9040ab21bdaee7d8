r"""The coupled routing ⇄ caching game's joint optimum: what the refinement rounds buy.

For each tier model of the coupled test family (``credit``: Dynamo-like credits; ``pool``: the
same plus a shared pool; ``latency``: access latencies per worker and tier) and each dtype, it
solves ``--instances`` random cache-on routing games (3 classes × 4 workers, 2 tiers,
:func:`poa_jax.synthetic.random_games`) twice through :func:`poa_jax.coupled.price_of_anarchy`:
with ``optimum_rounds=0`` (the joint descent from the fixed point and 4 generated starts, as
before the rounds existed) and with the default rounds (up to 40) (descent, then the pairwise /
Frank–Wolfe polish, until the Frank–Wolfe gap is ≤ ``optimum_tol``). It reports the optimum's
relative Frank–Wolfe gap (median, max), the share with status 0, the mean PoA, the largest
relative rise of an instance's PoA, and the steady-state time of each (compile excluded: each
configuration runs once untimed first).

Run ``python -m benchmarks.bench_coupled --help``; ``--smoke`` is a tiny mode.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["main", "run"]

K, T = 4, 2
LATENCY = np.array([[0.0, 0.5], [0.1, 0.6], [0.05, 0.3], [0.2, 1.4]])
MODELS = {
    "credit": (1.0, dict(credit=[1.0, 0.5])),
    "pool": (1.0, dict(credit=[1.0, 0.5], shared_capacity=2.0, shared_credit=0.6)),
    "latency": (0.6, dict(access_latency=LATENCY)),
}


def _parser():
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_coupled", description=__doc__.split("\n")[0]
    )
    p.add_argument("--instances", type=int, default=64)
    p.add_argument("--models", default=",".join(MODELS), help="comma list of " + ", ".join(MODELS))
    p.add_argument("--dtypes", default="float64,float32")
    p.add_argument("--seed", type=int, default=12, help="seed of the random routing games")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (checks the script runs)")
    p.add_argument("--json", type=Path, default=None)
    return p


def run(args) -> list[dict]:
    import jax

    if "float64" in args.dtypes:
        jax.config.update("jax_enable_x64", True)
    import poa_jax as pj
    from poa_jax import coupled
    from poa_jax.synthetic import random_games

    rows = []
    for dtype in args.dtypes.split(","):
        routing = random_games(args.seed, args.instances, 3, K, cache=True)
        for name in args.models.split(","):
            dist, kw = MODELS[name]
            game = pj.CoupledGame(routing, dist * (np.ones((K, K)) - np.eye(K)),
                                  np.full((K, T), 1.0), **kw)  # fmt: skip
            out = {}
            for label, rounds in (("descent", {"optimum_rounds": 0}), ("rounds", {})):
                kw = dict(dtype=dtype, **rounds)
                coupled.price_of_anarchy(game, **kw)  # compiles
                t0 = time.perf_counter()
                r = coupled.price_of_anarchy(game, **kw)
                out[label] = (r, time.perf_counter() - t0)
            r0 = out["descent"][0]
            for label, (r, t) in out.items():
                rows.append({
                    "dtype": dtype, "model": name, "optimum": label,
                    "instances": args.instances, "seconds": round(t, 3),
                    "gap_median": float(np.median(r.optimum_gap)),
                    "gap_max": float(np.max(r.optimum_gap)),
                    "stationary_share": float(np.mean(r.optimum_status == 0)),
                    "poa_mean": float(np.mean(r.poa)),
                    "poa_rise_max": float(np.max(r.poa / r0.poa - 1)),
                })  # fmt: skip
    return rows


def _print(rows, device):
    print(f"device: {device}")
    head = ("dtype", "model", "optimum", "s", "gap med", "gap max", "stationary", "PoA mean",
            "PoA rise max")  # fmt: skip
    print(("{:8} {:8} {:8} {:>7} {:>9} {:>9} {:>10} {:>9} {:>12}").format(*head))
    for r in rows:
        print(
            f"{r['dtype']:8} {r['model']:8} {r['optimum']:8} {r['seconds']:7.2f} "
            f"{r['gap_median']:9.1e} {r['gap_max']:9.1e} {r['stationary_share']:10.1%} "
            f"{r['poa_mean']:9.4f} {r['poa_rise_max']:12.2%}"
        )


def main(argv=None) -> list[dict]:
    args = _parser().parse_args(argv)
    if args.smoke:
        args.instances, args.models, args.dtypes = 2, "credit", "float64"
    rows = run(args)
    import jax

    device = f"{jax.devices()[0].device_kind} ({jax.default_backend()}, {os.cpu_count()} CPUs)"
    _print(rows, device)
    if args.json is not None:
        args.json.write_text(json.dumps({"device": device, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    main()
