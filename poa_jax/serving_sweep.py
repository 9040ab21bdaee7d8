"""Closed-loop serving sweeps: presets × concurrency grid × router settings × workload variants.

:func:`run_serving_sweep` solves, for every preset (topology), workload variant and concurrency
``C`` of the grid,

* the closed-loop **equilibrium** of every router setting (:func:`poa_jax.load.solve`, the worst
  over ``starts`` starts: uniform, herding on worker 0, …), and
* the closed-loop **coordinated optimum** (multi-start: the best converged start, a local
  optimum; its mean latency is also capped by every converged equilibrium's, so ``PoA ≥ 1``;
  unconverged starts never enter, so a point's results do not depend on the other presets
  solved in the same batch),

then the **PoA** ``R_eq/R_opt = X_opt/X_eq`` per point, and from the latency-versus-``C`` curves
the **regimes and the knee** (:mod:`poa_jax.regimes`). It writes

* ``out_dir/results.parquet`` — one row per (topology, variant, C, policy) with the columns of
  :data:`COLUMNS` (C, throughput, TTFT P50/P90/P99, ITL, regime, knee, PoA, convergence, …);
* ``out_dir/summary.json`` — per topology × policy: ``knee`` and ``knee_interval: [lo, hi]``
  (of the variant-mean latency curve), the regime and the PoA at every load point (mean and max
  over variants), throughput, TTFT P99, ITL, converged share and the loads where a point did not
  converge; per topology: the PoA spread across router settings at every load point and its
  largest value below the knee.

Settings default to the 4 × 4 Dynamo (τ, ω) grid of :func:`poa_jax.load.router_settings` plus
``selfish`` and ``load_balanced``.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from poa_jax import __version__, load, policies, regimes, serving, validation
from poa_jax.errors import InputError
from poa_jax.kernels import loop

__all__ = ["run_serving_sweep", "PAPER_GRID", "COLUMNS", "settings"]

#: The paper's concurrency grid.
PAPER_GRID = (8, 16, 32, 64, 96, 128, 160, 192, 256, 384, 512)

STATUS = {
    loop.CONVERGED: "converged",
    loop.MAX_ITERS: "max_iterations",
    loop.NONFINITE: "non_finite",
}

COLUMNS = {
    "topology": pa.string(),
    "gpu": pa.string(),
    "variant": pa.int64(),
    "concurrency": pa.float64(),  # C
    "policy": pa.string(),
    "tau": pa.float64(),
    "omega": pa.float64(),  # null for selfish / load_balanced
    "throughput": pa.float64(),  # X, requests/s
    "latency": pa.float64(),  # R = C/X, s
    "ttft_mean": pa.float64(),
    "ttft_p50": pa.float64(),
    "ttft_p90": pa.float64(),
    "ttft_p99": pa.float64(),
    "itl": pa.float64(),  # s, X-weighted over decode workers
    "itl_max": pa.float64(),
    "decode_batch": pa.float64(),
    "rho_prefill": pa.float64(),
    "rho_decode": pa.float64(),
    "hit_rate": pa.float64(),
    "opt_throughput": pa.float64(),
    "opt_latency": pa.float64(),
    "poa": pa.float64(),
    "regime": pa.string(),  # of this (topology, policy, variant) curve
    "knee": pa.float64(),  # C of its knee (first grid point past maximal curvature)
    "knee_lo": pa.float64(),  # knee interval (knee_lo, knee]
    "converged": pa.bool_(),
    "eq_status": pa.string(),
    "opt_status": pa.string(),
    "iterations": pa.int64(),
    "gap": pa.float64(),
    "converged_starts": pa.int64(),
    "overloaded": pa.bool_(),
    "little_residual": pa.float64(),
}
SCHEMA = pa.schema(list(COLUMNS.items()))


def settings(include_baselines: bool = True):
    """Labels, policy (fields ``(S,)``), τ and ω (NaN where not Dynamo) of the default grid."""
    labels, pol = load.router_settings()
    tau = list(np.asarray(pol.tau))
    omega = list(np.asarray(pol.w_prefill))
    fields = {f: list(np.asarray(getattr(pol, f))) for f in policies.Policy.__dataclass_fields__}
    if include_baselines:
        for name, p in (
            ("selfish", policies.selfish()),
            ("load_balanced", policies.load_balanced()),
        ):
            labels.append(name)
            tau.append(float(p.tau))
            omega.append(math.nan)
            for f in fields:
                fields[f].append(float(getattr(p, f)))
    pol = policies.Policy(**{f: np.asarray(v, np.float64) for f, v in fields.items()})
    return labels, pol, np.asarray(tau), np.asarray(omega)


def _concurrency(values) -> np.ndarray:
    if isinstance(values, str):
        raise InputError(f"concurrency = {values!r}: must be a list of numbers")
    c = validation.as_array("concurrency", values)
    if c.ndim != 1 or c.size < 1:
        raise InputError("concurrency: must be a non-empty list of numbers")
    bad = ~(np.isfinite(c) & (c > 0))
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(f"concurrency[{i}] = {float(c[i])!r}: must be finite and > 0")
    if not np.all(np.diff(c) > 0):
        raise InputError("concurrency: must be strictly increasing")
    return c


def solve_grid(
    presets, concurrency, *, variants: int = 1, starts: int = 2, opt_starts: int = 2,
    seed: int = 0, include_baselines: bool = True, tol=None, max_iters: int = 400,
    chunk: int | None = None,
) -> dict:  # fmt: skip
    """Solves the grid; returns arrays with axes (topology, variant, C, policy).

    The optimum of a point is the best *converged* optimum start (a local optimum; the best
    unconverged one, with its not-converged status, where none converged), capped by the
    point's converged equilibria (each is a feasible routing at the same ``C``), so
    ``PoA ≥ 1``. Unconverged starts do not enter: their end points depend on rounding (hence
    on the batch they were solved in), and a point's results must not depend on the other
    presets of the sweep. Every argument is checked before anything is compiled.
    """
    ps, conc, opts = _check_grid_args(
        presets, concurrency, variants=variants, starts=starts, opt_starts=opt_starts,
        seed=seed, include_baselines=include_baselines, tol=tol, max_iters=max_iters,
        chunk=chunk,
    )  # fmt: skip
    variants, starts, opt_starts, seed = (
        opts[k] for k in ("variants", "starts", "opt_starts", "seed")
    )
    include_baselines, tol, max_iters, chunk = (
        opts[k] for k in ("include_baselines", "tol", "max_iters", "chunk")
    )
    labels, pol, tau, omega = settings(include_baselines)
    kmax = max(p.decode_workers for p in ps)
    mds = [load.model_arrays(p, kmax) for p in ps]
    wls = [load.workload_variants(p, variants, seed) for p in ps]
    jmax = max(w.tokens.shape[-1] for w in wls)
    if any(w.tokens.shape[-1] != jmax for w in wls):
        raise InputError("presets in one sweep must have the same number of templates")
    T, V, Cn, S = len(ps), variants, conc.size, len(labels)
    md = jax.tree_util.tree_map(lambda *a: np.stack(a), *mds)  # (T, ...)
    wl = jax.tree_util.tree_map(lambda *a: np.stack(a), *wls)  # (T, V, J)

    def expand(tree, shape, lead):
        return jax.tree_util.tree_map(
            lambda a: np.broadcast_to(
                a.reshape(a.shape[:lead] + (1,) * (len(shape) - lead) + a.shape[lead:]),
                shape + a.shape[lead:],
            ).reshape((-1,) + a.shape[lead:]),
            tree,
        )

    eq_shape = (T, V, Cn, S)
    md_e = expand(md, eq_shape, 1)
    wl_e = expand(wl, eq_shape, 2)
    pol_e = jax.tree_util.tree_map(lambda a: np.broadcast_to(a, eq_shape).reshape(-1), pol)
    c_e = np.broadcast_to(conc[None, None, :, None], eq_shape).reshape(-1)
    t0 = time.perf_counter()
    eq = load.solve(md_e, wl_e, pol_e, c_e, starts=starts, seed=seed, tol=tol,
                    max_iters=max_iters, chunk=chunk)  # fmt: skip
    eq, conv_starts = load.pick(eq, "worst")
    t1 = time.perf_counter()
    opt_shape = (T, V, Cn)
    sel = policies.selfish()
    pol_o = jax.tree_util.tree_map(lambda a: np.full(T * V * Cn, float(a)), sel)
    opt = load.solve(
        expand(md, opt_shape, 1), expand(wl, opt_shape, 2), pol_o,
        np.broadcast_to(conc[None, None, :], opt_shape).reshape(-1), optimum=True,
        starts=opt_starts, seed=seed + 1, tol=tol, max_iters=max_iters, chunk=chunk,
    )  # fmt: skip
    # The best converged start (the best unconverged one where none converged: its status says
    # so). Unconverged starts do not cap it: their end points depend on rounding, so on the
    # batch (padding, the other presets), and the results of a point must not.
    opt, _ = load.pick(opt, "best")
    t2 = time.perf_counter()
    r = lambda a, shape: np.asarray(a).reshape(shape + np.asarray(a).shape[1:])
    eqd = {f: r(getattr(eq, f), eq_shape) for f in load.ClosedLoop._fields}
    optd = {f: r(getattr(opt, f), opt_shape) for f in load.ClosedLoop._fields}
    # The optimum is at least as good as every converged equilibrium at the same C and variant
    # (a feasible routing that satisfies Little's law), so PoA ≥ 1 holds by construction.
    eq_ok = np.isfinite(eqd["latency"]) & np.asarray(eqd["converged"], bool)
    eq_lat = np.where(eq_ok, eqd["latency"], np.inf)
    opt_lat = np.minimum(optd["latency"], np.min(eq_lat, axis=-1))
    opt_thr = conc[None, None, :] / opt_lat
    with np.errstate(divide="ignore", invalid="ignore"):
        poa = eqd["latency"] / opt_lat[..., None]
    return dict(
        presets=ps,
        concurrency=conc,
        labels=labels,
        tau=tau,
        omega=omega,
        eq=eqd,
        opt=optd,
        opt_latency=opt_lat,
        opt_throughput=opt_thr,
        poa=poa,
        converged_starts=r(conv_starts, eq_shape),
        variants=V,
        starts=starts,
        timing={"equilibria": t1 - t0, "optima": t2 - t1},
    )


def _check_grid_args(presets, concurrency, **kw):
    """Validates every argument of :func:`solve_grid` (raises :class:`InputError` naming it);
    returns the presets, the concurrency grid and the normalised options."""
    if isinstance(presets, str | serving.ServingPreset):
        presets = [presets]
    try:
        presets = list(presets)
    except TypeError:
        raise InputError(
            f"presets = {presets!r}: must be a preset name or a list of them"
        ) from None
    if not presets:
        raise InputError("presets: must name at least one preset")
    ps = []
    for i, p in enumerate(presets):
        if isinstance(p, str):
            ps.append(serving.preset(p))
        elif isinstance(p, serving.ServingPreset):
            ps.append(serving.check_preset(p))
        else:
            raise InputError(f"presets[{i}] = {p!r}: must be a preset name or a ServingPreset")
    conc = _concurrency(concurrency)
    out = {
        "variants": validation.integer("variants", kw["variants"], 1),
        "starts": validation.integer("starts", kw["starts"], 1, validation.MAX_STARTS),
        "opt_starts": validation.integer("opt_starts", kw["opt_starts"], 1, validation.MAX_STARTS),
        "seed": validation.integer("seed", kw["seed"], 0, validation.SEED_MAX),
        "max_iters": validation.integer("max_iters", kw["max_iters"], 1, validation.INT32_MAX),
    }
    inc = kw["include_baselines"]
    if not isinstance(inc, bool | np.bool_):
        raise InputError(f"include_baselines = {inc!r}: must be True or False")
    out["include_baselines"] = bool(inc)
    tol = kw["tol"]
    if tol is not None:
        tol = validation.number("tol", tol)
        if not (math.isfinite(tol) and tol > 0):
            raise InputError(f"tol = {tol!r}: must be finite and > 0")
    out["tol"] = tol
    chunk = kw["chunk"]
    out["chunk"] = None if chunk is None else validation.integer("chunk", chunk, 1)
    return ps, conc, out


def _finite(v):
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    if isinstance(v, float | np.floating):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


def _knee_fields(conc, curve):
    if conc.size >= 3:
        idx, codes, lo = regimes.knee_intervals(conc, curve)
        return idx, codes, lo
    none = np.full(curve.shape[:-1], -1)
    return none, np.zeros(curve.shape, int), none


def run_serving_sweep(
    presets,
    concurrency=PAPER_GRID,
    out_dir: str | os.PathLike = "out/serving",
    *,
    variants: int = 1,
    starts: int = 2,
    seed: int = 0,
    include_baselines: bool = True,
    chunk: int | None = None,
    log=None,
) -> dict:
    """Solves the grid and writes ``results.parquet`` and ``summary.json`` (module docstring).

    Args:
      presets: a preset name or :class:`~poa_jax.serving.ServingPreset`, or a list of them.
      concurrency: increasing grid of ``C`` (default the paper's).
      out_dir: output folder (created).
      variants: workload variants per preset (variant 0 is the base workload).
      starts: equilibrium starts per point (the worst converged one is kept).
      seed: seed of the variants and random starts.
      include_baselines: also the selfish and load-balanced policies.
      chunk: points per compiled call.
      log: optional ``callable(str)``, given a line on the solve (counts, seconds) and one on
        the files written.

    Returns:
      The summary (also written to ``summary.json``).
    """
    if isinstance(presets, str | serving.ServingPreset):
        presets = [presets]
    t_start = time.perf_counter()
    g = solve_grid(presets, concurrency, variants=variants, starts=starts, seed=seed,
                   include_baselines=include_baselines, chunk=chunk)  # fmt: skip
    conc, labels, eq = g["concurrency"], g["labels"], g["eq"]
    T, V, Cn, S = eq["latency"].shape
    if log is not None:
        tm = g["timing"]
        log(f"solved {T * V * Cn * S} equilibria in {tm['equilibria']:.1f} s and "
            f"{T * V * Cn} optima in {tm['optima']:.1f} s")  # fmt: skip
    # Knee per (topology, variant, policy) curve over C.
    lat = np.moveaxis(eq["latency"], 2, -1)  # (T, V, S, C)
    idx, codes, lo_idx = _knee_fields(conc, lat)
    rows = {k: [] for k in COLUMNS}
    for t, p in enumerate(g["presets"]):
        for v in range(V):
            for c in range(Cn):
                for s in range(S):
                    e = {f: eq[f][t, v, c, s] for f in eq if f != "shares"}
                    ki = int(idx[t, v, s])
                    rows["topology"].append(p.name)
                    rows["gpu"].append(p.gpu.name)
                    rows["variant"].append(v)
                    rows["concurrency"].append(float(conc[c]))
                    rows["policy"].append(labels[s])
                    rows["tau"].append(float(g["tau"][s]))
                    om = float(g["omega"][s])
                    rows["omega"].append(None if math.isnan(om) else om)
                    for f in ("throughput", "latency", "ttft_mean", "ttft_p50", "ttft_p90",
                              "ttft_p99", "itl", "itl_max", "decode_batch", "rho_prefill",
                              "rho_decode", "hit_rate", "gap", "little_residual"):  # fmt: skip
                        rows[f].append(float(e[f]))
                    rows["opt_throughput"].append(float(g["opt_throughput"][t, v, c]))
                    rows["opt_latency"].append(float(g["opt_latency"][t, v, c]))
                    rows["poa"].append(float(g["poa"][t, v, c, s]))
                    rows["regime"].append(regimes.REGIMES[int(codes[t, v, s, c])])
                    rows["knee"].append(float(conc[ki]) if ki >= 0 else None)
                    kl = int(lo_idx[t, v, s])
                    rows["knee_lo"].append(float(conc[kl]) if ki >= 0 else None)
                    opt_ok = bool(g["opt"]["converged"][t, v, c])
                    rows["converged"].append(bool(e["converged"]) and opt_ok)
                    rows["eq_status"].append(STATUS.get(int(e["status"]), "?"))
                    rows["opt_status"].append(STATUS.get(int(g["opt"]["status"][t, v, c]), "?"))
                    rows["iterations"].append(int(e["iterations"]))
                    rows["converged_starts"].append(int(g["converged_starts"][t, v, c, s]))
                    rows["overloaded"].append(bool(e["overloaded"]))
    table = pa.table({k: pa.array(v, type=COLUMNS[k]) for k, v in rows.items()}, schema=SCHEMA)
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    res_path = os.path.join(out_dir, "results.parquet")
    pq.write_table(table, res_path + ".tmp")
    os.replace(res_path + ".tmp", res_path)
    summary = _summary(g, idx, codes)
    summary["wall_time_s"] = {"total": time.perf_counter() - t_start, **g["timing"]}
    summary["points"] = table.num_rows
    sum_path = os.path.join(out_dir, "summary.json")
    with open(sum_path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(_finite(summary), f, indent=2, allow_nan=False)
        f.write("\n")
    os.replace(sum_path + ".tmp", sum_path)
    summary["results_path"], summary["summary_path"] = res_path, sum_path
    if log is not None:
        log(f"wrote {res_path} ({table.num_rows} rows) and {sum_path}")
    return summary


def _summary(g, idx, codes) -> dict:
    conc, labels, eq = g["concurrency"], g["labels"], g["eq"]
    T, V, Cn, S = eq["latency"].shape
    dev = jax.devices()[0]
    per, per_topo = [], []
    mean = lambda a: np.nanmean(a, axis=0)
    for t, p in enumerate(g["presets"]):
        curve = mean(eq["latency"][t])  # (C, S) variant-mean latency
        kidx, kcodes, klo = _knee_fields(conc, curve.T)
        poa_mean = mean(g["poa"][t])  # (C, S)
        for s in range(S):
            ki = int(kidx[s])
            conv = eq["converged"][t, :, :, s] & g["opt"]["converged"][t]
            per.append(
                {
                    "topology": p.name,
                    "gpu": p.gpu.name,
                    "policy": labels[s],
                    "tau": float(g["tau"][s]),
                    "omega": float(g["omega"][s]),
                    "knee": float(conc[ki]) if ki >= 0 else None,
                    "knee_interval": [float(conc[int(klo[s])]), float(conc[ki])]
                    if ki >= 0
                    else None,
                    "regime": [regimes.REGIMES[int(v)] for v in kcodes[s]],
                    "concurrency": conc.tolist(),
                    "poa": poa_mean[:, s].tolist(),
                    "poa_max_over_variants": np.nanmax(g["poa"][t, :, :, s], axis=0).tolist(),
                    "throughput": mean(eq["throughput"][t, :, :, s]).tolist(),
                    "latency": curve[:, s].tolist(),
                    "ttft_p99": mean(eq["ttft_p99"][t, :, :, s]).tolist(),
                    "itl": mean(eq["itl"][t, :, :, s]).tolist(),
                    "converged_share": float(conv.mean()),
                    "not_converged_at": sorted({float(conc[c]) for _, c in np.argwhere(~conv)}),
                    "variant_knees": sorted({float(conc[int(k)]) for k in idx[t, :, s] if k >= 0}),
                }
            )
        dyn = [s for s in range(S) if labels[s].startswith("dynamo")]
        spread = regimes.spread(poa_mean[:, dyn], axis=1) if dyn else np.full(Cn, np.nan)
        opt_curve = mean(g["opt_latency"][t])
        oi, _, olo = _knee_fields(conc, opt_curve[None])
        oi, olo = int(oi[0]), int(olo[0])
        base = (
            [d for d in per if d["topology"] == p.name and d["policy"] == labels[dyn[0]]]
            if dyn
            else []
        )
        klo = base[0]["knee_interval"][0] if base and base[0]["knee_interval"] else None
        below = [float(spread[c]) for c in range(Cn) if klo is not None and conc[c] <= klo]
        per_topo.append(
            {
                "topology": p.name,
                "gpu": p.gpu.name,
                "optimum_knee_interval": [float(conc[olo]), float(conc[oi])] if oi >= 0 else None,
                "concurrency": conc.tolist(),
                "optimum_throughput": mean(g["opt_throughput"][t]).tolist(),
                "optimum_latency": opt_curve.tolist(),
                "poa_spread_across_settings": spread.tolist(),
                "poa_min_across_settings": np.nanmin(poa_mean[:, dyn], axis=1).tolist()
                if dyn
                else None,
                "poa_max_across_settings": np.nanmax(poa_mean[:, dyn], axis=1).tolist()
                if dyn
                else None,
                "max_spread_below_knee": max(below) if below else None,
            }
        )
    conv_all = eq["converged"] & g["opt"]["converged"][..., None]
    return {
        "kind": "serving_closed_loop",
        "presets": [p.name for p in g["presets"]],
        "concurrency": conc.tolist(),
        "policies": labels,
        "variants": V,
        "starts": g["starts"],
        "converged_share": float(conv_all.mean()),
        "device": {"platform": dev.platform, "device_kind": dev.device_kind},
        "jax_version": jax.__version__,
        "poa_jax_version": __version__,
        "dtype": "float64" if jax.config.jax_enable_x64 else "float32",
        "per_topology_policy": per,
        "per_topology": per_topo,
    }
