"""Run in a subprocess with several host devices (XLA_FLAGS set by the caller).

Solves the same batch sharded over every local device and on one device, and a tiny sweep both
ways, and prints one JSON line with the largest differences. Used by ``tests/test_sharding.py``.
"""

from __future__ import annotations

import json
import sys
import tempfile

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import poa_jax as pj  # noqa: E402
from poa_jax import batching, scenario, sweep, synthetic  # noqa: E402


def _solve(game, policy):
    r = pj.price_of_anarchy(game, policy, starts=2, tol=1e-7, max_iters=400, dtype="float64")
    return {
        "poa": np.asarray(r.poa),
        "eq_flows": np.asarray(r.equilibrium.flows),
        "opt_flows": np.asarray(r.optimum.flows),
        "eq_iterations": np.asarray(r.equilibrium.iterations),
        "status": np.asarray(r.equilibrium.status),
    }


def main(n: int) -> None:
    # Small blocks still compact (rounds + gathers per device), so both drive paths run.
    batching.COMPACT_ABOVE = 32
    game = synthetic.random_games(7, n)
    policy = pj.policies.dynamo(omega=np.linspace(0.1, 2.0, n), tau=0.0)
    batching.use_devices(None)
    mesh = batching.mesh_for(n)
    sharded = _solve(game, policy)
    batching.use_devices(1)
    single = _solve(game, policy)
    diff = {k: float(np.max(np.abs(sharded[k] - single[k]))) for k in sharded}

    sc = scenario.load_scenario(sys.argv[2])
    tabs = []
    for devices in (None, 1):
        batching.use_devices(devices)
        with tempfile.TemporaryDirectory() as d:
            res = sweep.run_sweep(sc, d, chunk_size=16, part_size=16, progress=False)
            tabs.append(res.table.drop_columns([]))
    numeric = [c for c in tabs[0].column_names if tabs[0].schema.field(c).type in ("double",)]
    sweep_diff = max(
        float(np.nanmax(np.abs(tabs[0][c].to_numpy(zero_copy_only=False).astype(float)
                               - tabs[1][c].to_numpy(zero_copy_only=False).astype(float))))
        for c in numeric
    )  # fmt: skip
    same_text = all(tabs[0][c].equals(tabs[1][c]) for c in tabs[0].column_names if c not in numeric)
    print(
        json.dumps(
            {
                "devices": jax.local_device_count(),
                "mesh": None if mesh is None else int(mesh.size),
                "diff": diff,
                "converged": float(np.mean(single["status"] == 0)),
                "sweep_max_diff": sweep_diff,
                "sweep_other_columns_equal": bool(same_text),
                "sweep_rows": tabs[0].num_rows,
            }
        )
    )


if __name__ == "__main__":
    main(int(sys.argv[1]))
