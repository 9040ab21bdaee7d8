r"""Where the routing solvers' device time goes: a profiler trace summarised by kernel.

Runs the pure-JAX equilibrium and optimum (:func:`poa_jax.batching.equilibria` /
:func:`~poa_jax.batching.optima`, the path ``bench_fused`` calls ``pure``), or with ``--path
fused`` the fused Pallas kernel (:mod:`poa_jax.fused`, GPU only), on ``N`` instances of
the 5 × 6 cache-on ``random_games`` family in float32, once to compile and once under
``jax.profiler.trace(..., create_perfetto_trace=True)``, then sums the trace's complete events by
name within each process (on a GPU the device's kernels form their own processes) and prints
the top entries as a markdown table: total milliseconds, count, mean microseconds, share of the
process. That answers, without TensorBoard, whether the loop is bound by one kernel (a sort, a
gather), by many small launches, or by the host.

    python -m benchmarks.profile_kernels --n 262144 --out /tmp/prof
    python -m benchmarks.profile_kernels --path fused --n 1000000 --out /tmp/prof_fused
    python -m benchmarks.profile_kernels --summarise /tmp/prof/perfetto_trace.json.gz
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import shutil
import time
from pathlib import Path

__all__ = ["summarise", "main"]


def summarise(trace_path: Path, top: int = 25) -> str:
    """Markdown tables of the trace's complete events, summed by name, per process."""
    with gzip.open(trace_path, "rt") if str(trace_path).endswith(".gz") else open(trace_path) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    names = {e["pid"]: e["args"].get("name", "") for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}  # fmt: skip
    by_pid: dict = collections.defaultdict(lambda: collections.defaultdict(lambda: [0.0, 0]))
    for e in events:
        if e.get("ph") == "X" and "dur" in e:
            acc = by_pid[e.get("pid")][e.get("name", "?")]
            acc[0] += float(e["dur"])
            acc[1] += 1
    out = []
    for pid, table in sorted(by_pid.items(), key=lambda kv: -sum(v[0] for v in kv[1].values())):
        total = sum(v[0] for v in table.values())
        count = sum(v[1] for v in table.values())
        out += [f"### process {pid} {names.get(pid, '')!r}: {total / 1e3:.1f} ms in {count} events",
                "", "| kernel / event | total ms | count | mean µs | share |",
                "|---|---:|---:|---:|---:|"]  # fmt: skip
        for name, (dur, cnt) in sorted(table.items(), key=lambda kv: -kv[1][0])[:top]:
            out.append(f"| `{name[:90]}` | {dur / 1e3:.2f} | {cnt} | {dur / cnt:.1f} | "
                       f"{dur / total:.1%} |")  # fmt: skip
        out.append("")
    return "\n".join(out)


def _run(n: int, out: Path, tol: float, max_iters: int, path: str = "pure", **fused_kw) -> Path:
    import jax
    import numpy as np

    from poa_jax import batching, fused, solve
    from poa_jax.policies import selfish
    from poa_jax.synthetic import random_games

    batching.use_kernel("xla")
    if path == "fused":
        eq_fn = lambda p, x, **kw: fused.fused_equilibria(p.game, p.policy, x, **kw, **fused_kw)
        opt_fn = lambda p, x, **kw: fused.fused_optima(p.game, x, **kw, **fused_kw)
    else:
        eq_fn = lambda p, x, **kw: batching.equilibria(p.game, p.policy, x, method="projection",
                                                       **kw)  # fmt: skip
        opt_fn = lambda p, x, **kw: batching.optima(p.game, x, descent_steps=0, lr=0, **kw)

    def inputs(seed):
        prep = batching.prepare(random_games(seed, n, 5, 6, cache=True), selfish(), "f4")
        return prep, solve.starting_flows(prep, 1, greedy=True)

    def once(prep, x0):
        t = time.perf_counter()
        e = jax.block_until_ready(eq_fn(prep, x0, tol=tol, max_iters=max_iters))
        t_eq = time.perf_counter() - t
        uni = solve.starting_flows(prep, 1)
        x_opt = np.concatenate([uni, np.asarray(e["flows"], uni.dtype)], axis=1)
        t = time.perf_counter()
        jax.block_until_ready(opt_fn(prep, x_opt, tol=tol, max_iters=max_iters))
        return t_eq, time.perf_counter() - t

    print("first call (compiles):", once(*inputs(0)), flush=True)
    args = inputs(1)
    print("steady, untraced: eq {:.3f} s, opt {:.3f} s".format(*once(*args)), flush=True)
    logdir = out / "trace"
    with jax.profiler.trace(str(logdir), create_perfetto_trace=True):
        print("steady, traced: eq {:.3f} s, opt {:.3f} s".format(*once(*args)), flush=True)
    found = sorted(logdir.rglob("perfetto_trace.json.gz"))
    if not found:
        raise SystemExit(f"no perfetto trace under {logdir}")
    dest = out / "perfetto_trace.json.gz"
    shutil.copy(found[-1], dest)
    return dest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_kernels",
                                description=__doc__.split("\n")[0])  # fmt: skip
    p.add_argument("--n", type=int, default=262144, help="instances")
    p.add_argument("--tol", type=float, default=1e-5)
    p.add_argument("--max-iters", type=int, default=1000)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--path", choices=("pure", "fused"), default="pure", help="which solver")
    p.add_argument("--state", choices=("registers", "memory"), default=None,
                   help="fused kernel: where it keeps the grids (default fused.STATE)")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("/tmp/poa_jax_profile"))
    p.add_argument("--summarise", type=Path, default=None, help="only summarise this trace")
    a = p.parse_args(argv)
    kw = {"state": a.state} if a.state else {}
    trace = a.summarise or _run(a.n, a.out, a.tol, a.max_iters, a.path, **kw)
    text = summarise(trace, a.top)
    print(text)
    if not a.summarise:
        (a.out / "profile.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
