r"""SiouxFalls user equilibria, batched, against AequilibraE one instance at a time (issue 3).

    python -m benchmarks.bench_graph --instances 1000 --tol 1e-6 --aeq-instances 20

* **Instances.** ``N`` demand-scaled copies of SiouxFalls (bundled TNTP files), scales
  ``numpy.random.default_rng(seed).uniform(lo, hi, N)`` (default 0.5–1.5).
* **poa_jax.** :func:`poa_jax.solve_equilibrium` on the whole batch (method ``paths``), float64,
  to relative gap ``tol`` against the shortest paths of the graph. The first call (compile plus
  run) is timed separately from a second, steady-state call on the same batch.
* **Frank–Wolfe.** The link-based method (``method="frank_wolfe"``) on the first
  ``--fw-instances`` copies with ``--fw-iters`` iterations, for its convergence.
* **AequilibraE.** ``benchmarks/aequilibrae_reference.py`` (bi-conjugate Frank–Wolfe, one thread,
  run in its own venv ``--aeq-python``, default ``.venv-bench/bin/python``) on the first
  ``--aeq-instances`` scales, in the same run, to the same ``tol``. Its per-instance rate is
  ``1 / mean seconds``; the speed-up is poa_jax's steady instances/s divided by it. Its reported
  gap lags one iteration (it measures the flows against shortest paths at the previous costs);
  the reference recomputes the gap at its final flows (``gap_true``), reported too.
* **Agreement.** Link flows of both on the shared instances (relative, links with flow).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

import poa_jax as pj  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--instances", type=int, default=1000)
    p.add_argument("--lo", type=float, default=0.5)
    p.add_argument("--hi", type=float, default=1.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=1e-6)
    p.add_argument("--max-iters", type=int, default=5000)
    p.add_argument("--fw-instances", type=int, default=20)
    p.add_argument("--fw-iters", type=int, default=2000)
    p.add_argument("--aeq-instances", type=int, default=20, help="0 skips AequilibraE")
    p.add_argument("--aeq-python", default=str(ROOT / ".venv-bench" / "bin" / "python"))
    p.add_argument("--json", help="write the results here")
    return p


def _stats(sol) -> dict:
    it = np.asarray(sol.iterations)
    return dict(
        converged=float(np.mean(sol.converged)),
        iterations_median=float(np.median(it)),
        iterations_max=int(it.max()),
        gap_max=float(np.max(sol.gap)),
    )


def _aequilibrae(args, scales: np.ndarray, net: Path, trips: Path) -> dict | None:
    if args.aeq_instances <= 0:
        return None
    if not Path(args.aeq_python).exists():
        print(f"AequilibraE venv not found at {args.aeq_python}: skipped", file=sys.stderr)
        return None
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "scales.npy"
        np.save(f, scales)
        out = Path(tmp) / "aeq.json"
        cmd = [
            args.aeq_python, str(ROOT / "benchmarks" / "aequilibrae_reference.py"),
            "--net", str(net), "--trips", str(trips), "--scales-file", str(f),
            "--rgap", str(args.tol), "--max-iter", str(args.max_iters), "--json", str(out),
            "--flows",
        ]  # fmt: skip
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def run(args) -> dict:
    net, trips, _ = pj.tntp.bundled("SiouxFalls")
    scales = np.random.default_rng(args.seed).uniform(args.lo, args.hi, args.instances)
    game = pj.read_tntp(net, trips, demand_scale=scales)
    kw = dict(tol=args.tol, max_iters=args.max_iters, dtype=np.float64)

    t = time.perf_counter()
    pj.solve_equilibrium(game, **kw)
    first = time.perf_counter() - t
    t = time.perf_counter()
    sol = pj.solve_equilibrium(game, **kw)
    steady = time.perf_counter() - t
    ours = dict(first_call_s=first, steady_s=steady, instances_per_s=args.instances / steady,
                paths=len(sol.paths), **_stats(sol))  # fmt: skip
    print(f"poa_jax: N={args.instances} first {first:.1f}s steady {steady:.1f}s "
          f"-> {ours['instances_per_s']:.1f}/s, {ours}", flush=True)  # fmt: skip

    fw = None
    if args.fw_instances > 0:
        sub = pj.read_tntp(net, trips, demand_scale=scales[: args.fw_instances])
        t = time.perf_counter()
        fsol = pj.solve_equilibrium(sub, method="frank_wolfe", tol=args.tol,
                                    max_iters=args.fw_iters, dtype=np.float64)  # fmt: skip
        fw = dict(seconds_with_compile=time.perf_counter() - t, max_iters=args.fw_iters,
                  gap_median=float(np.median(fsol.gap)), **_stats(fsol))  # fmt: skip
        print(f"frank_wolfe: {fw}", flush=True)

    aeq = _aequilibrae(args, scales[: args.aeq_instances], net, trips)
    ref = None
    if aeq is not None:
        inst = aeq["instances"]
        secs = np.array([i["seconds"] for i in inst])
        flows = np.array([i["flows"] for i in inst])
        mine = sol.link_flows[: len(inst)]
        carry = flows > 0
        rel = np.abs(mine - flows)[carry] / flows[carry]
        ref = dict(
            n=len(inst),
            seconds_mean=float(secs.mean()),
            seconds_median=float(np.median(secs)),
            seconds_max=float(secs.max()),
            instances_per_s=float(1.0 / secs.mean()),
            iterations_median=float(np.median([i["iterations"] for i in inst])),
            iterations_max=int(max(i["iterations"] for i in inst)),
            gap_max=float(max(i["gap"] for i in inst)),
            gap_true_max=float(max(i["gap_true"] for i in inst)),
            threads=aeq["meta"].get("threads"),
            version=aeq["meta"].get("aequilibrae"),
            flow_rel_diff_median=float(np.median(rel)),
            flow_rel_diff_max=float(rel.max()),
            speedup=ours["instances_per_s"] * float(secs.mean()),
        )
        print(f"aequilibrae: {ref}", flush=True)
    meta = dict(
        date=time.strftime("%Y-%m-%d %H:%M"),
        device=str(jax.devices()[0]),
        jax=jax.__version__,
        python=platform.python_version(),
        cpus=os.cpu_count(),
        loadavg=list(os.getloadavg()),
        command=" ".join(sys.argv),
    )
    return dict(meta=meta, poa_jax=ours, frank_wolfe=fw, aequilibrae=ref)


def main(argv=None) -> dict:
    args = _parser().parse_args(argv)
    res = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    a = res["aequilibrae"]
    if a:
        print(f"\nspeed-up vs AequilibraE (per-instance rate, same run): {a['speedup']:.0f}×")
    return res


if __name__ == "__main__":
    main()
