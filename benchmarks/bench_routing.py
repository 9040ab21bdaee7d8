r"""Throughput, compile time and convergence of the batched routing solvers, against SciPy.

For the 5 classes × 6 workers cache-on family (:func:`poa_jax.synthetic.random_games`) and each
batch size ``N`` it measures

* the first call of :func:`poa_jax.solve_equilibrium` (selfish policy) and
  :func:`poa_jax.solve_optimum` on a batch — compile plus one run — separately from
* the steady state: later calls on *different* batches of the same shape (no recompile), the
  median over a few repeats when they are cheap; instances/s for the equilibrium, the optimum
  and both (``N / (t_eq + t_opt)``, the pair a PoA needs);
* convergence: share of instances converged, median and max iterations, max gap among the
  converged;

and, in the same run, the per-instance SciPy reference (:mod:`benchmarks.scipy_reference`) on
the first ``M`` instances of the first steady-state batch with ``N ≥ M``, to the same tolerance:
instances/s, share that reached the tolerance, and agreement of the social costs with poa_jax.

Both sides start the equilibrium from the same point: poa_jax's default greedy start (classes
placed one at a time on their cheapest worker), re-implemented in the reference
(``--scipy-eq-start uniform`` starts SciPy from the uniform split instead). The optimum is
warm-started from the equilibrium just computed (DESIGN §2.2: the optimum's starts
always include the equilibrium, so ``SC(opt) ≤ SC(eq)``) in addition to its ``--opt-starts``
generated starts (uniform, then herds onto worker 1, 2, …); the SciPy optimum uses the same
starts (re-created here) and keeps the best. ``--cold-optimum`` drops the warm start on both
sides. poa_jax returns host (NumPy) arrays, so every timed call has finished (and copied its
results back) when the clock stops.

Run ``python -m benchmarks.bench_routing --help``; ``--smoke`` is the tiny CI mode
(``tests/test_bench_smoke.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

import poa_jax as pj
from benchmarks import scipy_reference as sr
from poa_jax.synthetic import random_games

__all__ = ["main", "run", "format_report"]

CLASSES, WORKERS = 5, 6
AGREE = 1e-4  # relative SC difference counted as agreement


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_routing", description=__doc__.split("\n")[0]
    )
    p.add_argument("--sizes", default="100,1000,10000,100000", help="batch sizes N, comma list")
    p.add_argument("--dtype", default="float64", choices=("float32", "float64"))
    p.add_argument("--tol", type=float, default=1e-6, help="relative-gap tolerance (both sides)")
    p.add_argument("--max-iters", type=int, default=None, help="poa_jax iteration bound")
    p.add_argument("--opt-starts", type=int, default=2, help="generated optimum starts")
    p.add_argument("--cold-optimum", action="store_true", help="no equilibrium warm start")
    p.add_argument("--scipy-instances", type=int, default=20, help="M; 0 skips SciPy")
    p.add_argument(
        "--scipy-eq-start", default="greedy", choices=("greedy", "uniform"),
        help="start of the SciPy equilibrium (greedy = poa_jax's default start)",
    )  # fmt: skip
    p.add_argument("--repeats", type=int, default=3, help="steady-state repeats (at most)")
    p.add_argument(
        "--repeat-budget", type=float, default=60.0,
        help="seconds per size after which no further steady-state repeat starts",
    )  # fmt: skip
    p.add_argument(
        "--cpu-devices", type=int, default=None,
        help="split the CPU into this many JAX devices first (pj.use_cpu_devices; default: one)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny run for CI: N=16, M=2, 1 repeat")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p


# --------------------------------------------------------------------------- helpers


def _git() -> str:
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
            timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
        return rev + (" (uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _loadavg() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def _meta(args) -> dict:
    dev = jax.devices()[0]
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = os.cpu_count()
    import scipy

    return dict(
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        device=str(dev),
        device_kind=getattr(dev, "device_kind", dev.platform),
        platform=dev.platform,
        devices=jax.device_count(),
        jax=jax.__version__,
        numpy=np.__version__,
        scipy=scipy.__version__,
        python=platform.python_version(),
        cpu_count=os.cpu_count(),
        cpus_usable=affinity,
        load_average=_loadavg(),
        git=_git(),
        family=f"random_games(seed, N, {CLASSES}, {WORKERS}, cache=True)",
        dtype=args.dtype,
        tol=args.tol,
        max_iters=args.max_iters,
        opt_starts=args.opt_starts,
        warm_optimum=not args.cold_optimum,
        scipy_eq_start=args.scipy_eq_start,
    )


def _convergence(sols: list[pj.Solution]) -> dict:
    conv = np.concatenate([s.converged.ravel() for s in sols])
    iters = np.concatenate([s.iterations.ravel() for s in sols])
    gap = np.concatenate([s.gap.ravel() for s in sols])
    return dict(
        instances=int(conv.size),
        converged_share=float(conv.mean()),
        iterations_median=float(np.median(iters)),
        iterations_max=int(iters.max()),
        max_gap_converged=float(gap[conv].max()) if conv.any() else float("nan"),
        max_gap=float(np.nanmax(gap)),
    )


def _herd_starts(inst: sr.Instance, starts: int) -> list[np.ndarray]:
    """Start 0 uniform; start i ≥ 1 puts 90% of every class on worker i (then uniform again)."""
    J, K = inst.shape
    uni = np.full(K, 1.0 / K)
    out = []
    for i in range(starts):
        share = uni if i == 0 or i > K else 0.9 * np.eye(K)[i - 1] + 0.1 * uni
        out.append(inst.demand[:, None] * share[None, :])
    return out


def _scipy_one(inst: sr.Instance, args) -> dict:
    start = sr.greedy_start(inst) if args.scipy_eq_start == "greedy" else sr.uniform_start(inst)
    eq = sr.equilibrium(inst, start, args.tol)
    starts = _herd_starts(inst, args.opt_starts)
    if not args.cold_optimum:
        starts.append(eq.flows)
    opts = [sr.optimum(inst, x0, args.tol) for x0 in starts]
    ok = [o for o in opts if o.success]
    best = min(ok or opts, key=lambda o: o.social_cost)
    return dict(
        eq_seconds=eq.seconds,
        eq_sc=eq.social_cost,
        eq_gap=eq.gap,
        eq_ok=eq.success,
        opt_seconds=sum(o.seconds for o in opts),
        opt_sc=best.social_cost,
        opt_gap=best.gap,
        opt_ok=best.success,
    )


def _rel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a - b) / np.maximum(np.abs(b), np.finfo(float).tiny)


def _agreement(sp: list[dict], eq: pj.Solution, opt: pj.Solution) -> dict:
    m = len(sp)
    sp_eq = np.array([r["eq_sc"] for r in sp])
    sp_opt = np.array([r["opt_sc"] for r in sp])
    eq_both = eq.converged[:m] & np.array([r["eq_ok"] for r in sp])
    opt_both = opt.converged[:m] & np.array([r["opt_ok"] for r in sp])
    d_eq = _rel(eq.social_cost[:m], sp_eq)[eq_both]
    d_opt = _rel(opt.social_cost[:m], sp_opt)[opt_both]
    both = eq_both & opt_both
    poa_pj = eq.social_cost[:m] / opt.social_cost[:m]
    poa_sp = sp_eq / sp_opt
    d_poa = _rel(poa_pj, poa_sp)[both]

    def stats(d):
        if d.size == 0:
            return dict(n=0, median=float("nan"), max=float("nan"), share_agree=float("nan"))
        return dict(
            n=int(d.size),
            median=float(np.median(d)),
            max=float(d.max()),
            share_agree=float(np.mean(d <= AGREE)),
        )

    # On non-convex SC the two sides may stop at different local optima: which is lower?
    lower = (opt.social_cost[:m] <= sp_opt * (1 + AGREE))[opt_both]
    return dict(
        instances=m,
        equilibrium_sc=stats(d_eq),
        optimum_sc=stats(d_opt),
        optimum_poa_jax_not_worse=float(lower.mean()) if lower.size else float("nan"),
        poa=stats(d_poa),
    )


def _model_check(insts: list[sr.Instance], eq: pj.Solution, opt: pj.Solution) -> dict:
    """poa_jax's own points, re-evaluated by the reference model (no second solve involved).

    Independent of which equilibrium / local optimum each side finds: the SC poa_jax reports
    against the reference's SC at the same flow, and the gap of the points poa_jax calls
    converged as the reference measures it.
    """
    out = {}
    for name, sol, gap_fn in (
        ("equilibrium", eq, sr.equilibrium_gap),
        ("optimum", opt, sr.optimum_gap),
    ):
        diff, gaps = [], []
        for i, inst in enumerate(insts):
            x = np.asarray(sol.flows[i], np.float64)[:, inst.workers]
            diff.append(abs(float(sol.social_cost[i]) - sr.social_cost(inst, x)))
            diff[-1] /= max(abs(sr.social_cost(inst, x)), np.finfo(float).tiny)
            if sol.converged[i]:
                gaps.append(gap_fn(inst, x))
        out[name] = dict(
            sc_rel_diff_max=float(max(diff)),
            converged=len(gaps),
            reference_gap_max=float(max(gaps)) if gaps else float("nan"),
        )
    return out


@contextlib.contextmanager
def _single_threaded_blas():
    """Sets every loaded OpenBLAS to one thread for the duration; yields the thread count set.

    The reference solves 30-variable problems: multithreaded BLAS only adds synchronisation,
    and when other processes hold the cores OpenBLAS's spinning threads made SLSQP calls up to
    ~10× slower and the SciPy timings erratic. NumPy and SciPy each bundle their own OpenBLAS;
    both are found in ``/proc/self/maps`` (Linux) and set through their
    ``*_set_num_threads`` entry points, as threadpoolctl does. Elsewhere nothing changes.
    """
    restore = []
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        maps = []
    paths = {ln.split()[-1] for ln in maps if len(ln.split()) >= 6 and "openblas" in ln.lower()}
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", ""):
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    restore.append((put, int(get())))
                    put(1)
                    break
            else:
                continue
            break
    try:
        yield 1 if restore else None
    finally:
        for put, n in restore:
            put(n)


def _progress(msg: str) -> None:
    print(f"[bench_routing {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


# --------------------------------------------------------------------------- the run


def run(args) -> dict:
    """Runs the benchmark for parsed ``args``; returns the results (plain Python types)."""
    dtype = np.dtype(args.dtype)
    sizes = sorted({int(s) for s in str(args.sizes).split(",") if s.strip()})
    if args.smoke:
        sizes, args.scipy_instances, args.repeats = [16], min(args.scipy_instances, 2), 1
    kw = dict(tol=args.tol, max_iters=args.max_iters, dtype=dtype)

    def solve_pair(g):
        eq, t_eq = _timed(lambda: pj.solve_equilibrium(g, **kw))
        x0 = None if args.cold_optimum else eq.flows
        opt, t_opt = _timed(lambda: pj.solve_optimum(g, starts=args.opt_starts, x0=x0, **kw))
        return eq, opt, t_eq, t_opt

    meta = _meta(args)  # before the run: the load average says what else was running
    m_req = max(int(args.scipy_instances), 0)
    scipy_n = next((n for n in sizes if n >= m_req), sizes[-1]) if m_req else None
    rows, agreement_src = [], None
    for n in sizes:
        # Seeds: the first call and every steady-state repeat solve different batches.
        base = args.seed * 1_000_003 + n * 1009
        first = random_games(base, n, CLASSES, WORKERS, cache=True)
        _, _, c_eq, c_opt = solve_pair(first)
        t_eq, t_opt, sols_eq, sols_opt = [], [], [], []
        spent = 0.0
        for r in range(1, max(args.repeats, 1) + 1):
            g = random_games(base + r, n, CLASSES, WORKERS, cache=True)
            eq, opt, a, b = solve_pair(g)
            t_eq.append(a)
            t_opt.append(b)
            sols_eq.append(eq)
            sols_opt.append(opt)
            spent += a + b
            if r == 1 and n == scipy_n:
                agreement_src = (g, eq, opt)
            if spent + (a + b) > args.repeat_budget:
                break
        _progress(
            f"N={n}: first call eq {c_eq:.1f}s opt {c_opt:.1f}s; steady eq "
            f"{statistics.median(t_eq):.2f}s opt {statistics.median(t_opt):.2f}s ({len(t_eq)} reps)"
        )
        s_eq, s_opt = statistics.median(t_eq), statistics.median(t_opt)
        s_both = statistics.median([a + b for a, b in zip(t_eq, t_opt, strict=True)])
        rows.append(dict(
            n=n,
            repeats=len(t_eq),
            first_call_s=dict(equilibrium=c_eq, optimum=c_opt),
            steady_s=dict(equilibrium=s_eq, optimum=s_opt, both=s_both),
            rate=dict(equilibrium=n / s_eq, optimum=n / s_opt, both=n / s_both),
            equilibrium=_convergence(sols_eq),
            optimum=_convergence(sols_opt),
        ))  # fmt: skip

    result = dict(meta=meta, sizes=rows, scipy=None, speedup=None, agreement=None)
    if scipy_n is None:
        meta["load_average_end"] = _loadavg()
        return result
    g, eq, opt = agreement_src
    m = min(m_req, scipy_n)
    sp = []
    with _single_threaded_blas() as threads:
        meta["scipy_blas_threads"] = threads
        for i in range(m):
            sp.append(_scipy_one(sr.instance(g, i), args))
            r = sp[-1]
            _progress(
                f"SciPy {i + 1}/{m}: eq {r['eq_seconds']:.2f}s gap {r['eq_gap']:.0e}, "
                f"opt {r['opt_seconds']:.2f}s gap {r['opt_gap']:.0e}"
            )
    t_eq = np.array([r["eq_seconds"] for r in sp])
    t_opt = np.array([r["opt_seconds"] for r in sp])

    def per(t):
        return dict(mean=float(t.mean()), median=float(np.median(t)), max=float(t.max()))

    t_both = t_eq + t_opt
    result["scipy"] = dict(
        instances=m,
        batch_n=scipy_n,
        seconds_per_instance=dict(equilibrium=per(t_eq), optimum=per(t_opt), both=per(t_both)),
        rate=dict(equilibrium=m / t_eq.sum(), optimum=m / t_opt.sum(), both=m / t_both.sum()),
        reached_tol=dict(
            equilibrium=float(np.mean([r["eq_ok"] for r in sp])),
            optimum=float(np.mean([r["opt_ok"] for r in sp])),
        ),
        max_gap=dict(
            equilibrium=float(max(r["eq_gap"] for r in sp)),
            optimum=float(max(r["opt_gap"] for r in sp)),
        ),
    )
    both = result["scipy"]["rate"]["both"]
    result["speedup"] = {str(r["n"]): r["rate"]["both"] / both for r in rows}
    result["agreement"] = _agreement(sp, eq, opt)
    result["agreement"]["model"] = _model_check([sr.instance(g, i) for i in range(m)], eq, opt)
    meta["load_average_end"] = _loadavg()
    return result


# --------------------------------------------------------------------------- report


def _load(v) -> str:
    return "n/a" if not v else "/".join(f"{x:.1f}" for x in v)


def _pct(x: float) -> str:
    return "  n/a" if not np.isfinite(x) else f"{100 * x:5.1f}%"


def format_report(res: dict) -> str:
    """The printed report: header, throughput table, convergence table, SciPy, agreement."""
    m = res["meta"]
    out = [
        f"poa_jax routing benchmark — {m['family']}, {m['dtype']}, tol {m['tol']:g}, "
        f"optimum starts {m['opt_starts']}{' + equilibrium' if m['warm_optimum'] else ''}",
        f"device {m['device']} ({m['device_kind']}, {m['devices']} device(s)) | jax {m['jax']} | "
        f"numpy {m['numpy']} | scipy {m['scipy']} | python {m['python']}",
        f"CPUs {m['cpu_count']} ({m['cpus_usable']} usable, load average at start "
        f"{_load(m['load_average'])}, at end {_load(m['load_average_end'])}) | {m['date']} | "
        f"git {m['git']}",
        "",
        "Throughput (steady state = median over repeats, each on a new batch of the same shape)",
        f"{'N':>8} {'reps':>4} | {'first call [s]':^17} | {'steady [s]':^26} | "
        f"{'steady instances/s':^30}",
        f"{'':>8} {'':>4} | {'eq':>8} {'opt':>8} | {'eq':>8} {'opt':>8} {'eq+opt':>8} | "
        f"{'eq':>9} {'opt':>9} {'eq+opt':>10}",
    ]
    for r in res["sizes"]:
        f, s, q = r["first_call_s"], r["steady_s"], r["rate"]
        out.append(
            f"{r['n']:>8} {r['repeats']:>4} | {f['equilibrium']:8.2f} {f['optimum']:8.2f} | "
            f"{s['equilibrium']:8.3f} {s['optimum']:8.3f} {s['both']:8.3f} | "
            f"{q['equilibrium']:9.1f} {q['optimum']:9.1f} {q['both']:10.1f}"
        )
    out += [
        "",
        "Convergence (all steady-state batches; gap = relative gap, iterations of the loop)",
        f"{'N':>8} | {'eq conv':>7} {'iters med/max':>14} {'max gap conv':>12} | "
        f"{'opt conv':>8} {'iters med/max':>14} {'max gap conv':>12}",
    ]
    for r in res["sizes"]:
        e, o = r["equilibrium"], r["optimum"]
        out.append(
            f"{r['n']:>8} | {_pct(e['converged_share']):>7} "
            f"{e['iterations_median']:>8.0f}/{e['iterations_max']:<5} "
            f"{e['max_gap_converged']:12.1e} | {_pct(o['converged_share']):>8} "
            f"{o['iterations_median']:>8.0f}/{o['iterations_max']:<5} "
            f"{o['max_gap_converged']:12.1e}"
        )
    sp = res["scipy"]
    if sp is None:
        return "\n".join(out)
    t = sp["seconds_per_instance"]
    out += [
        "",
        f"SciPy reference, per instance, {sp['instances']} instances of the N = {sp['batch_n']} "
        f"batch, equilibrium from the {m['scipy_eq_start']} start, BLAS threads "
        f"{m.get('scipy_blas_threads') or 'as found'} (seconds per instance: mean / median / max)",
    ]
    for k, label in (("equilibrium", "eq"), ("optimum", "opt"), ("both", "eq+opt")):
        reached = f"  reached tol {_pct(sp['reached_tol'][k])}" if k in sp["reached_tol"] else ""
        gap = f"  max gap {sp['max_gap'][k]:.1e}" if k in sp["max_gap"] else ""
        out.append(
            f"  {label:>6}: {t[k]['mean']:8.3f} / {t[k]['median']:8.3f} / {t[k]['max']:8.3f} s"
            f"   {sp['rate'][k]:8.2f} instances/s{reached}{gap}"
        )
    out += ["", "Speed-up, batched eq+opt instances/s ÷ SciPy eq+opt instances/s"]
    out.append("  " + "   ".join(f"N={n}: {v:,.0f}×" for n, v in res["speedup"].items()))
    a = res["agreement"]
    out += [
        "",
        f"Agreement with SciPy on the {a['instances']} instances (relative SC difference, among "
        f"those both converged; agree = ≤ {AGREE:g})",
    ]
    for k, label in (("equilibrium_sc", "SC(eq)"), ("optimum_sc", "SC(opt)"), ("poa", "PoA")):
        d = a[k]
        out.append(
            f"  {label:>7}: n = {d['n']:>3}  median {d['median']:.1e}  max {d['max']:.1e}  "
            f"agree {_pct(d['share_agree'])}"
        )
    out.append(
        f"  poa_jax optimum not worse than SciPy's (≤ +{AGREE:g}): "
        f"{_pct(a['optimum_poa_jax_not_worse'])}"
    )
    for k, label in (("equilibrium", "eq"), ("optimum", "opt")):
        d = a["model"][k]
        out.append(
            f"  poa_jax's {label} flows in the reference model: SC rel diff max "
            f"{d['sc_rel_diff_max']:.1e}; gap of its {d['converged']} converged points as the "
            f"reference measures it: max {d['reference_gap_max']:.1e}"
        )
    out.append(
        "  (with the cache term equilibria are not unique and SC is not convex: differences can "
        "be different equilibria / local optima, not errors)"
    )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    """Parses ``argv``, runs, prints the report, optionally writes JSON; returns the results."""
    args = _parser().parse_args(argv)
    if args.cpu_devices is not None:  # before JAX's first computation (else it changes nothing)
        from poa_jax import batching

        batching.use_cpu_devices(args.cpu_devices)
    x64 = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", args.dtype == "float64" or x64)
    try:
        res = run(args)
    finally:
        jax.config.update("jax_enable_x64", x64)
    print(format_report(res), flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2, allow_nan=True) + "\n")
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
