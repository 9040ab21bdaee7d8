r"""Closed-loop serving sweep speed (issue 5): batched vs one point at a time, same run.

The sweep: the three paper presets (``llama70b-1p2d``, ``llama70b-1p5d``,
``nemotron340b-1p2d``, padded to 5 decode slots) × the paper's concurrency grid (11 points) ×
16 Dynamo (τ, ω) router settings × ``--variants`` workload variants (default 100) =
52 800 closed-loop points, each solving Little's law ``C = X·R(X)`` with the routing equilibrium
inside (:func:`poa_jax.load.solve`, float64, ``--starts`` starts per point). Measured:

* **first call** — the whole sweep on a fresh process: tracing + XLA compilation of every
  compiled batch size + the run;
* **steady state** — the same sweep again on *other* workload variants (seed + 1), same shapes,
  no recompilation (compilations during it are counted and reported); points/s;
* **one at a time** — ``--single`` points drawn at random from the same grid, each solved alone
  (compiled for one lane, warmed up first), mean seconds per point, extrapolated to the sweep;
* **the optima** for the PoA (one per preset × C × variant, 3 300 points) timed separately;
* convergence share, iterations (median / p90 / max) and Little's-law residual.

Then (``--poa-variants``, default 10) the full serving sweep with optima and the selfish and
load-balanced baselines, giving the knee per preset and the PoA across router settings at every
load point. ``--markdown PATH`` writes the results section (date, machine, load average,
command). ``--smoke`` is a tiny run for CI.

Run ``python -m benchmarks.bench_closed_loop --help``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

from poa_jax import load, serving_sweep  # noqa: E402

PRESETS = ("llama70b-1p2d", "llama70b-1p5d", "nemotron340b-1p2d")


def _parser():
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_closed_loop", description=__doc__.split("\n")[0]
    )
    p.add_argument("--variants", type=int, default=100, help="workload variants per preset")
    p.add_argument("--starts", type=int, default=2, help="equilibrium starts per point")
    p.add_argument("--extra-iters", type=int, default=64,
                   help="iteration bound of the starts after the first")  # fmt: skip
    p.add_argument("--single", type=int, default=30, help="points solved one at a time")
    p.add_argument("--poa-variants", type=int, default=10, help="variants of the PoA sweep")
    p.add_argument("--chunk", type=int, default=None, help="largest lanes per compiled call")
    p.add_argument("--smoke", action="store_true", help="tiny run: 2 variants, 3 single points")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)
    return p


def _git() -> str:
    try:
        here = Path(__file__).resolve().parent
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here,
                             capture_output=True, text=True, timeout=5).stdout.strip()  # fmt: skip
        return rev or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class _Compiles:
    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.n = 0

    def __call__(self, event, duration, **kw):
        if event == self.EVENT:
            self.n += 1


def grid(variants: int, seed: int):
    """Flat arrays of the sweep: (preset, C, setting, variant) points."""
    labels, pol = load.router_settings()
    conc = np.asarray(serving_sweep.PAPER_GRID, np.float64)
    mds = [load.model_arrays(p, 5) for p in PRESETS]
    wls = [load.workload_variants(p, variants, seed) for p in PRESETS]
    T, C, S, V = len(PRESETS), conc.size, len(labels), variants
    shape = (T, C, S, V)
    ti, ci, si, vi = (a.ravel() for a in np.indices(shape))
    md = load.Model(*(np.stack([getattr(m, f) for m in mds])[ti] for f in load.Model._fields))
    wl = load.Workload(
        *(np.stack([getattr(w, f) for w in wls])[ti, vi] for f in load.Workload._fields)
    )
    pl = type(pol)(**{f: np.asarray(getattr(pol, f))[si] for f in pol.__dataclass_fields__})
    return md, wl, pl, conc[ci], shape


def _take(tree, idx):
    return jax.tree_util.tree_map(lambda a: np.asarray(a)[idx], tree)


def run(args) -> dict:
    if args.smoke:
        args.variants, args.single, args.poa_variants = 2, 3, 1
    dev = jax.devices()[0]
    out = dict(
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        device=str(dev), platform=dev.platform, device_kind=dev.device_kind,
        cpus=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        python=platform.python_version(), jax=jax.__version__, git=_git(),
        loadavg_start=list(os.getloadavg()),
        command=" ".join(["python -m benchmarks.bench_closed_loop"] + sys.argv[1:]),
        variants=args.variants, starts=args.starts, extra_iters=args.extra_iters,
    )  # fmt: skip
    md, wl, pl, conc, shape = grid(args.variants, 0)
    n = conc.size
    out["points"] = n
    kw = dict(starts=args.starts, chunk=args.chunk, extra_iters=args.extra_iters)
    t = time.perf_counter()
    load.solve(md, wl, pl, conc, **kw)
    out["first_call_s"] = time.perf_counter() - t

    md2, wl2, pl2, conc2, _ = grid(args.variants, 1)
    counter = _Compiles()
    jax.monitoring.register_event_duration_secs_listener(counter)
    t = time.perf_counter()
    res = load.solve(md2, wl2, pl2, conc2, **kw)
    steady = time.perf_counter() - t
    jax.monitoring.unregister_event_duration_listener(counter)
    res_all = res
    res, _ = load.pick(res, "worst")
    out["steady_s"] = steady
    out["steady_compiles"] = counter.n
    out["points_per_s"] = n / steady
    out["converged_share"] = float(res.converged.mean())
    it = np.asarray(res.iterations)
    out["iterations"] = dict(median=float(np.median(it)), p90=float(np.percentile(it, 90)),
                             max=int(it.max()), mean=float(it.mean()))  # fmt: skip
    out["little_max"] = float(np.max(res.little_residual))
    conv = res.converged.reshape(shape)
    out["converged_by_preset"] = {p: float(conv[i].mean()) for i, p in enumerate(PRESETS)}
    out["converged_logit"] = float(res.converged[np.asarray(pl2.tau) > 0].mean())
    out["converged_argmin"] = float(res.converged[np.asarray(pl2.tau) == 0].mean())
    out["duplicate_share"] = float(res_all.duplicate[:, 1:].mean()) if args.starts > 1 else 0.0
    out["extra_converged_share"] = (
        float(res_all.converged[:, 1:].mean()) if args.starts > 1 else 0.0
    )

    # The optima (PoA denominators): one per preset × C × variant.
    T, C, S, V = shape
    first = np.ravel_multi_index(np.indices((T, C, 1, V)).reshape(4, -1), shape)
    sel = type(pl2)(**{f: np.full(first.size, v) for f, v in
                       (("w_true", 1.0), ("w_prefill", 0.0), ("w_decode", 0.0), ("tau", 0.0),
                        ("credit", 1.0), ("span_floor", 0.1))})  # fmt: skip
    t = time.perf_counter()
    load.solve(_take(md2, first), _take(wl2, first), sel, conc2[first], optimum=True, starts=2,
               chunk=args.chunk)  # fmt: skip
    out["optima_first_call_s"] = time.perf_counter() - t
    t = time.perf_counter()
    opt = load.solve(_take(md, first), _take(wl, first), sel, conc[first], optimum=True, starts=2,
                     chunk=args.chunk)  # fmt: skip
    out["optima_steady_s"] = time.perf_counter() - t
    out["optima_points"] = int(first.size)
    out["optima_converged_share"] = float(load.pick(opt, "best")[0].converged.mean())

    # One at a time: random points of the same grid, compiled for one lane.
    rng = np.random.default_rng(0)
    idx = rng.choice(n, size=args.single, replace=False)
    one = lambda i: load.solve(_take(md2, [i]), _take(wl2, [i]), _take(pl2, [i]), conc2[[i]],
                               starts=args.starts, chunk=1,
                               extra_iters=args.extra_iters)  # fmt: skip
    warm = {bool(np.asarray(pl2.tau)[i] > 0): i for i in idx}
    for i in warm.values():  # compile both loops (argmin and logit) for one lane
        one(i)
    times = []
    for i in idx:
        t = time.perf_counter()
        one(i)
        times.append(time.perf_counter() - t)
    out["single_mean_s"] = float(np.mean(times))
    out["single_median_s"] = float(np.median(times))
    out["single_points"] = int(args.single)
    out["single_extrapolated_s"] = out["single_mean_s"] * n
    out["speedup"] = out["single_extrapolated_s"] / steady
    out["loadavg_end_timing"] = list(os.getloadavg())

    # PoA sweep with optima and baselines: knee per preset, PoA across router settings.
    t = time.perf_counter()
    summ = serving_sweep.run_serving_sweep(
        list(PRESETS), serving_sweep.PAPER_GRID, out_dir=os.path.join("out", "bench_closed_loop"),
        variants=args.poa_variants, starts=2, chunk=args.chunk,
    )  # fmt: skip
    out["poa_sweep_s"] = time.perf_counter() - t
    out["poa"] = {
        "per_topology": summ["per_topology"],
        "per_topology_policy": [
            {
                k: d[k]
                for k in (
                    "topology",
                    "policy",
                    "knee_interval",
                    "poa",
                    "ttft_p99",
                    "throughput",
                    "converged_share",
                    "not_converged_at",
                )
            }
            for d in summ["per_topology_policy"]
        ],  # fmt: skip
        "converged_share": summ["converged_share"],
        "variants": args.poa_variants,
    }
    out["loadavg_end"] = list(os.getloadavg())
    return out


def _row(v, f: str) -> str:
    return " | ".join("—" if x is None else f.format(x) for x in v) + " |"


def format_report(r: dict) -> str:
    lines = [
        f"## {r['date'][:10]} — closed-loop serving sweep (issue 5)",
        "",
        f"**Machine.** {r['cpus']}-core CPU ({r['device']}), jax {r['jax']}, python "
        f"{r['python']}, git `{r['git']}`; load average at start "
        f"{'/'.join(f'{x:.2f}' for x in r['loadavg_start'])}, after the timings "
        f"{'/'.join(f'{x:.2f}' for x in r['loadavg_end_timing'])}, at the end "
        f"{'/'.join(f'{x:.2f}' for x in r['loadavg_end'])}.",
        "",
        f"    {r['command']}",
        "",
        f"3 presets × 11 C × 16 (τ, ω) × {r['variants']} variants = **{r['points']} closed-loop "
        f"points**, float64, {r['starts']} start(s) per point (starts after the first: at most "
        f"{r.get('extra_iters', 400)} iterations, stopped as duplicates within 1e-3 of the "
        "first start's equilibrium).",
        "",
        "| | points | time | rate |",
        "|---|---:|---|---:|",
        f"| batched, first call (compile + run) | {r['points']} | {r['first_call_s']:.1f} s | — |",
        f"| **batched, steady state** (other variants, {r['steady_compiles']} compilations) | "
        f"{r['points']} | **{r['steady_s']:.2f} s** | **{r['points_per_s']:.0f} points/s** |",
        f"| one at a time ({r['single_points']} random points, one-lane compiled loop) | "
        f"{r['single_points']} | {r['single_mean_s'] * 1e3:.1f} ms mean "
        f"({r['single_median_s'] * 1e3:.1f} median) | {1 / r['single_mean_s']:.0f} points/s |",
        f"| one at a time, extrapolated to the sweep | {r['points']} | "
        f"{r['single_extrapolated_s']:.0f} s | — |",
        f"| optima for the PoA (2 starts), steady | {r['optima_points']} | "
        f"{r['optima_steady_s']:.2f} s (first call {r['optima_first_call_s']:.1f} s) | "
        f"{r['optima_points'] / r['optima_steady_s']:.0f} points/s |",
        "",
        f"- **Speed-up batched vs one at a time: {r['speedup']:.0f}×**; target < 10 s: "
        f"**{'met' if r['steady_s'] < 10 else 'NOT met'}** ({r['steady_s']:.2f} s steady; "
        f"{r['first_call_s']:.1f} s with compilation).",
        f"- Convergence: {r['converged_share']:.1%} of points (argmin τ = 0: "
        f"{r['converged_argmin']:.1%}, logit τ > 0: {r['converged_logit']:.1%}; by preset "
        + ", ".join(f"{k} {v:.1%}" for k, v in r["converged_by_preset"].items())
        + f"); iterations median {r['iterations']['median']:.0f}, p90 "
        f"{r['iterations']['p90']:.0f}, max {r['iterations']['max']}; optima converged "
        f"{r['optima_converged_share']:.1%}. Starts after the first: "
        f"{r.get('extra_converged_share', 0):.1%} converged (of all extra starts "
        f"{r.get('duplicate_share', 0):.1%} stopped as duplicates of the first).",
        f"- Little's law: max |X·R − C|/C = {r['little_max']:.1e}.",
        "",
        f"### Knee and PoA across router settings ({r['poa']['variants']} workload variants, "
        f"2 starts, optima included; {r['poa_sweep_s']:.0f} s)",
        "",
        "Grid C = 8, 16, 32, 64, 96, 128, 160, 192, 256, 384, 512. PoA = R(worst eq)/R(opt), mean "
        "over variants; spread = (max − min)/min across the 16 Dynamo settings.",
        "",
    ]
    for t in r["poa"]["per_topology"]:
        rows = [d for d in r["poa"]["per_topology_policy"] if d["topology"] == t["topology"]]
        knees = sorted({tuple(d["knee_interval"]) for d in rows if d["knee_interval"]})
        lines += [
            f"**{t['topology']}** — knee of the equilibrium latency curve: "
            + ", ".join(f"({a:g}, {b:g}]" for a, b in knees)
            + f"; optimum's knee: {tuple(t['optimum_knee_interval']) if t['optimum_knee_interval'] else None}; "  # noqa: E501
            f"largest PoA spread below the knee: {t['max_spread_below_knee']}",
            "",
            "| C | " + " | ".join(f"{c:g}" for c in t["concurrency"]) + " |",
            "|---|" + "---:|" * len(t["concurrency"]),
            "| PoA min (Dynamo) | " + _row(t["poa_min_across_settings"], "{:.5f}"),
            "| PoA max (Dynamo) | " + _row(t["poa_max_across_settings"], "{:.5f}"),
            "| spread | " + " | ".join(f"{x:.1e}" for x in t["poa_spread_across_settings"]) + " |",
        ]  # fmt: skip
        for name in ("selfish", "load_balanced"):
            d = next((d for d in rows if d["policy"] == name), None)
            if d:
                lines.append(f"| PoA {name} | " + " | ".join(f"{x:.5f}" for x in d["poa"]) + " |")
        d0 = rows[0]
        lines.append("| X (req/s) | " + " | ".join(f"{x:.0f}" for x in d0["throughput"]) + " |")
        lines.append(
            "| TTFT P99 (ms) | " + " | ".join(f"{x * 1e3:.1f}" for x in d0["ttft_p99"]) + " |"
        )
        bad = sorted({c for d in rows for c in d["not_converged_at"]})
        lines += ["", f"Not converged (some setting, some variant) at C = {bad or 'none'}.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    r = run(args)
    text = format_report(r)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(r, indent=2, default=float))
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
