r"""Where the fluid optimum's descent step spends its time: memory passes, not arithmetic.

Two measurements, both float32, on whatever device is present:

* **step** — the committed descent kernel (:func:`poa_jax.tiered_kernels._descent_batch_lanes`) on
  ``--instances`` fluid instances (``W × T × B``, the generator of
  :mod:`benchmarks.bench_caching`), ``--steps`` steps, in calls of each ``--lanes`` width:
  µs per instance and step (steady state, best of ``--repeats``), and the same for a *trivial*
  body with the same loop and carry shape (four arrays scaled, one reduction) as the floor of
  the loop itself;
* **pass** — one elementwise pass (two reads, one write) over a ``(W, B, L)`` float32 array
  for each ``L`` in ``--pass-lanes``: the cost of moving the data once, from which the step's
  cost in "passes" follows (step time per call / pass time at the same width).

On the 2-core CPU (benchmarks/RESULTS.md, fifth session) a pass costs ~0.5 µs fixed plus
0.24 ns per element from L2 and 0.5 ns from L3, and a step at 64 lanes costs 65–80 passes: the
step is bound by cache bandwidth, and narrower calls pay the fixed cost per fused loop instead.

Run ``python -m benchmarks.bench_fluid_step --help``; ``--smoke`` is a tiny mode.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["main", "run"]


def _parser():
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_fluid_step", description=__doc__.split("\n")[0]
    )
    p.add_argument("--dims", default="8,4,256", help="W,T,B")
    p.add_argument("--instances", type=int, default=128)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lanes", default="8,16,64", help="instances per call, comma-separated")
    p.add_argument("--pass-lanes", default="1,4,8,16,64,128", help="L of the pass calibration")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="tiny sizes (checks the script runs)")
    p.add_argument("--json", type=Path, default=None)
    return p


def _best(fn, repeats):
    jax.block_until_ready(fn())  # compile
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best


def _trivial(reach, rm, capacity, credit, size, y0, *, steps, lr):
    """The descent's loop and carry (tier arrays, best copies, values) with a trivial body."""
    del reach, capacity, credit, size, lr
    last = lambda a: jnp.moveaxis(a, 0, -1)  # noqa: E731
    ys0 = [last(y0[:, :, i]) for i in range(y0.shape[2])]
    rm = last(rm)

    def body(_, carry):
        ys, best_ys, best = carry
        val = jnp.sum(ys[0] * rm, axis=(0, 1))
        better = val < best
        best_ys = [jnp.where(better[None, None], y, b) for y, b in zip(ys, best_ys, strict=True)]
        return [y * 0.999 + 0.0001 for y in ys], best_ys, jnp.where(better, val, best)

    init = (ys0, ys0, jnp.full(ys0[0].shape[-1:], jnp.inf, ys0[0].dtype))
    ys, best_ys, best = jax.lax.fori_loop(0, steps, body, init)
    return best_ys, best


def _pass_cost(w, b, lanes, repeats, iters=200):
    """µs per elementwise pass (2 reads, 1 write) over a ``(w, b, lanes)`` float32 array."""
    from poa_jax import tiered_kernels as tk

    def body(_, ys):
        return [y * 0.999 + 0.001 * ys[(j + 1) % len(ys)] for j, y in enumerate(ys)]

    f = jax.jit(
        lambda ys: jax.lax.fori_loop(0, iters, body, ys), compiler_options=tk._compiler_options()
    )
    ys = [jnp.full((w, b, lanes), float(k), jnp.float32) for k in range(4)]
    return _best(lambda: f(ys), repeats) / iters / len(ys) * 1e6


def run(args) -> dict:
    from benchmarks.bench_caching import fluid_batch
    from poa_jax import tiered_cache as tc
    from poa_jax import tiered_kernels as tk

    if args.smoke:
        args.dims, args.instances, args.steps = "3,2,16", 8, 5
        args.lanes, args.pass_lanes, args.repeats = "4,8", "1,8", 1
    w, t, b = (int(v) for v in args.dims.split(","))
    n = args.instances
    d, r, c = fluid_batch(3, n, w, t, b)
    credit = tc.DYNAMO_CREDITS[:t] if t <= 4 else np.linspace(1, 0.2, t)
    p = tc._prepare(tc.TieredCacheGame(d, r, c, credit=credit), np.float32)
    arrays = [jnp.asarray(a) for a in tc._pack(p)]
    y0 = jnp.asarray(np.random.default_rng(0).random((n, w, t, b)) * 0.05, jnp.float32)
    opts = tk._compiler_options()
    kernels = {
        "descent": jax.jit(tk._descent_batch_lanes, static_argnames=("steps", "lr"),
                           compiler_options=opts),
        "trivial body": jax.jit(_trivial, static_argnames=("steps", "lr"), compiler_options=opts),
    }  # fmt: skip
    rows = []
    for lanes in (int(v) for v in args.lanes.split(",")):
        for name, f in kernels.items():

            def call(f=f, lanes=lanes):
                return [
                    f(*[a[i : i + lanes] for a in arrays], y0[i : i + lanes], steps=args.steps,
                      lr=0.2)
                    for i in range(0, n - n % lanes, lanes)
                ]  # fmt: skip

            done = n - n % lanes
            if done == 0:
                continue
            sec = _best(call, args.repeats)
            rows.append(dict(kernel=name, lanes=lanes, us_per_instance_step=sec / done /
                             args.steps * 1e6))  # fmt: skip
    passes = {
        L: _pass_cost(w, b, L, args.repeats) for L in (int(v) for v in args.pass_lanes.split(","))
    }
    for row in rows:
        per_pass = passes.get(row["lanes"])
        if per_pass is not None and row["kernel"] == "descent":
            row["passes_per_step"] = row["us_per_instance_step"] * row["lanes"] / per_pass
    return dict(
        meta=dict(
            date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            device=str(jax.devices()[0]), jax=jax.__version__, cpu_count=os.cpu_count(),
            load_average=list(os.getloadavg()), dims=[w, t, b], instances=n, steps=args.steps,
            argv=sys.argv[1:],
        ),
        step=rows,
        pass_us={str(k): v for k, v in passes.items()},
    )  # fmt: skip


def main(argv=None) -> dict:
    args = _parser().parse_args(argv)
    res = run(args)
    print("| kernel | lanes | µs per instance and step | passes per step |")
    print("|---|---:|---:|---:|")
    for r in res["step"]:
        ps = f"{r['passes_per_step']:.0f}" if "passes_per_step" in r else "—"
        print(f"| {r['kernel']} | {r['lanes']} | {r['us_per_instance_step']:.1f} | {ps} |")
    print()
    print("| L | µs per elementwise pass over (W, B, L) |")
    print("|---:|---:|")
    for k, v in res["pass_us"].items():
        print(f"| {k} | {v:.2f} |")
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
