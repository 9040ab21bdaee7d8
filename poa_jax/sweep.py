"""Sweeps: solve every topology × load × policy point of a scenario, in chunks, to Parquet.

:func:`run_sweep` builds the scenario's flat batch (:meth:`poa_jax.scenario.Scenario.build`),
solves it with :func:`poa_jax.price_of_anarchy` in chunks of a constant shape (so JAX compiles
once), and writes

* ``out_dir/results.parquet`` — one row per point (columns in :data:`COLUMNS`);
* ``out_dir/summary.json`` — scenario, timing, device, and per topology × policy the PoA curve
  over load, its maximum and where it occurs, and the share of converged points.

Interrupt safety: every chunk is written as ``out_dir/parts/part-NNNNN.parquet`` (to a temporary
name, then renamed atomically). ``out_dir/parts/manifest.json`` records the scenario's hash
(:meth:`~poa_jax.scenario.Scenario.hash`) and the chunking; rerunning the same scenario into the
same folder skips the parts that exist, and ``results.parquet`` is assembled from the parts at
the end. A different scenario or chunking discards the old parts.

The optimum of a game does not depend on the policy, and the optimum solver is a local method
on a nonconvex social cost (the cache term), warm-started from each policy's equilibria. All
policies of one (topology, load) game are solved in the same chunk, and every one of them is
measured against the **best optimum found for that game** by any of them, so ``opt_cost`` is
one number per game and ``PoA ≥ PoS ≥ 1`` still holds.

Example:
  >>> import tempfile
  >>> from poa_jax import scenario, sweep
  >>> sc = scenario.default_scenario()
  >>> res = sweep.run_sweep(sc, tempfile.mkdtemp(), progress=False)  # doctest: +SKIP
  >>> res.table.num_rows, res.summary["points"]                      # doctest: +SKIP
  (192, 192)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import NamedTuple

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from poa_jax import __version__
from poa_jax.errors import InputError
from poa_jax.kernels import loop
from poa_jax.poa import price_of_anarchy
from poa_jax.scenario import Scenario

__all__ = ["run_sweep", "SweepResult", "COLUMNS", "STATUS", "default_chunk"]
#: Status codes of :mod:`poa_jax.kernels.loop` as the strings written to the table.
STATUS = {
    loop.CONVERGED: "converged",
    loop.MAX_ITERS: "max_iterations",
    loop.NONFINITE: "non_finite",
}

#: Columns of ``results.parquet`` and their Arrow types.
COLUMNS = {
    "point": pa.int64(),  # index in the scenario's flat order (policy fastest)
    "topology": pa.string(),
    "workers": pa.int64(),
    "utilisation": pa.float64(),
    "demand_total": pa.float64(),  # requests/s
    "policy": pa.string(),  # the policy's label
    "omega": pa.float64(),  # null for selfish
    "tau": pa.float64(),
    "poa": pa.float64(),
    "price_of_stability": pa.float64(),
    "eq_cost": pa.float64(),  # SC of the worst equilibrium found
    "opt_cost": pa.float64(),  # SC of the best optimum found for the game
    "eq_mean_latency": pa.float64(),  # ms
    "opt_mean_latency": pa.float64(),  # ms
    "eq_gap": pa.float64(),
    "opt_gap": pa.float64(),
    "eq_iterations": pa.int64(),
    "opt_iterations": pa.int64(),
    "eq_status": pa.string(),
    "opt_status": pa.string(),
    "converged": pa.bool_(),  # worst equilibrium and optimum both converged
    "overloaded": pa.bool_(),  # the worst equilibrium runs a worker past rho_max * kappa
    "opt_overloaded": pa.bool_(),
    "converged_starts": pa.int64(),  # equilibrium starts that converged (of solver.starts)
}
SCHEMA = pa.schema(list(COLUMNS.items()))


class SweepResult(NamedTuple):
    """What :func:`run_sweep` returns."""

    table: pa.Table  # results.parquet's contents, sorted by point
    summary: dict  # summary.json's contents
    results_path: str
    summary_path: str


def default_chunk() -> int:
    """Default points per chunk: 64 on CPU, 1024 on an accelerator.

    Under ``vmap`` a batch's while loops run until its slowest instance is done, so on a CPU
    (which gains little from wide batches) small chunks waste less work: the default sweep
    takes ~30% less CPU time in chunks of 64 than in one chunk of 192. An accelerator needs
    wide batches to be busy.
    """
    return 64 if jax.default_backend() == "cpu" else 1024


def _chunk_points(chunk_size: int | None, scenario: Scenario) -> int:
    """Points per chunk: a multiple of the number of policies (each chunk has whole games)."""
    p = len(scenario.policies)
    n = scenario.num_points
    chunk_size = default_chunk() if chunk_size is None else chunk_size
    if isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or chunk_size < 1:
        raise InputError(f"chunk_size = {chunk_size!r}: must be an integer >= 1")
    c = -(-int(chunk_size) // p) * p
    return min(c, n)


def _status_names(codes: np.ndarray) -> list[str]:
    return [STATUS.get(int(c), f"status_{int(c)}") for c in codes]


def _solve_chunk(scenario: Scenario, batch, idx: np.ndarray, n_real: int) -> pa.Table:
    """Solves points ``idx`` (``len(idx)`` constant; the first ``n_real`` are real) to rows."""
    take = lambda tree: jax.tree_util.tree_map(lambda a: np.asarray(a)[idx], tree)
    game, policy = take(batch.game), take(batch.policy)
    sv = scenario.solver
    res = price_of_anarchy(
        game,
        policy,
        starts=sv.starts,
        tol=sv.tol,
        max_iters=sv.max_iters,
        optimum_starts=sv.optimum_starts,
        dtype=sv.dtype,
    )
    eq, best, opt = res.equilibrium, res.best_equilibrium, res.optimum
    p = len(scenario.policies)
    g = len(idx) // p  # games in the chunk; the policies of a game are consecutive

    # One optimum per game: the best any policy's run found.
    opt_sc = np.where(np.isfinite(opt.social_cost), opt.social_cost, np.inf).reshape(g, p)
    pick = (np.arange(g) * p + np.argmin(opt_sc, axis=1)).repeat(p)
    o = {f: np.asarray(getattr(opt, f))[pick] for f in ("social_cost", "mean_latency", "gap")}
    o.update({f: np.asarray(getattr(opt, f))[pick] for f in ("iterations", "status")})
    o["converged"] = np.asarray(opt.converged)[pick]
    o["overloaded"] = np.asarray(opt.overloaded)[pick]
    eq_sc = np.asarray(eq.social_cost, np.float64)
    best_sc = np.asarray(best.social_cost, np.float64)
    opt_c = np.asarray(o["social_cost"], np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        poa = np.where(opt_c > 0, eq_sc / opt_c, 1.0)
        pos = np.where(opt_c > 0, best_sc / opt_c, 1.0)

    r = slice(0, n_real)
    labels = [batch.labels[i] for i in idx[r]]
    cols = {
        "point": idx[r].astype(np.int64),
        "topology": [lb.topology for lb in labels],
        "workers": [lb.workers for lb in labels],
        "utilisation": [lb.utilisation for lb in labels],
        "demand_total": [lb.demand_total for lb in labels],
        "policy": [lb.policy for lb in labels],
        "omega": [None if math.isnan(lb.omega) else lb.omega for lb in labels],
        "tau": [lb.tau for lb in labels],
        "poa": poa[r],
        "price_of_stability": pos[r],
        "eq_cost": eq_sc[r],
        "opt_cost": opt_c[r],
        "eq_mean_latency": np.asarray(eq.mean_latency, np.float64)[r],
        "opt_mean_latency": np.asarray(o["mean_latency"], np.float64)[r],
        "eq_gap": np.asarray(eq.gap, np.float64)[r],
        "opt_gap": np.asarray(o["gap"], np.float64)[r],
        "eq_iterations": np.asarray(eq.iterations, np.int64)[r],
        "opt_iterations": np.asarray(o["iterations"], np.int64)[r],
        "eq_status": _status_names(np.asarray(eq.status)[r]),
        "opt_status": _status_names(np.asarray(o["status"])[r]),
        "converged": (np.asarray(eq.converged) & o["converged"])[r],
        "overloaded": np.asarray(eq.overloaded, bool)[r],
        "opt_overloaded": np.asarray(o["overloaded"], bool)[r],
        "converged_starts": np.asarray(res.converged_starts, np.int64)[r],
    }
    return pa.table({k: pa.array(v, type=COLUMNS[k]) for k, v in cols.items()}, schema=SCHEMA)


def _write_atomic(path: str, write) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _finite_or_none(v):
    """JSON has no NaN/inf: non-finite floats become null, recursively."""
    if isinstance(v, dict):
        return {k: _finite_or_none(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite_or_none(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _write_json(path: str, data: dict) -> None:
    data = _finite_or_none(data)

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, allow_nan=False)
            f.write("\n")

    _write_atomic(path, write)


def _prepare_parts(parts_dir: str, manifest: dict, log) -> None:
    """Keeps the parts of the same scenario and chunking; discards anything else."""
    path = os.path.join(parts_dir, "manifest.json")
    old = None
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
        except (OSError, ValueError):
            old = None
    keep = old is not None and all(old.get(k) == manifest[k] for k in _MANIFEST_KEYS)
    if not keep and os.path.isdir(parts_dir):
        stale = [f for f in os.listdir(parts_dir) if f.startswith("part-")]
        if stale and log:
            log(f"discarding {len(stale)} part(s) of another scenario or chunking in {parts_dir}")
        for f in stale:
            os.remove(os.path.join(parts_dir, f))
    os.makedirs(parts_dir, exist_ok=True)
    if not keep:
        _write_json(path, manifest)


_MANIFEST_KEYS = ("scenario_hash", "chunk_points", "points", "parts", "columns")


def _device() -> dict:
    d = jax.devices()[0]
    return {
        "platform": d.platform,
        "device_kind": d.device_kind,
        "count": jax.device_count(),
    }


def groups(scenario: Scenario, cols: dict) -> list[tuple[object, str, list[int]]]:
    """``(topology, policy label, row indices sorted by utilisation)`` for every group."""
    n = len(cols["topology"])
    out = []
    for t in scenario.topologies:
        for label in scenario.policy_labels():
            rows = [
                i for i in range(n) if cols["topology"][i] == t.name and cols["policy"][i] == label
            ]
            rows.sort(key=lambda i: cols["utilisation"][i])
            out.append((t, label, rows))
    return out


def _summarise(scenario: Scenario, table: pa.Table, timing: dict, chunk: int) -> dict:
    cols = table.to_pydict()
    n = table.num_rows
    conv = np.asarray(cols["converged"], bool)
    util = [float(u) for u in scenario.load.utilisation()]
    per = []
    for t, label, rows in groups(scenario, cols):
        if rows:
            poa = [float(cols["poa"][i]) for i in rows]
            finite = [p if math.isfinite(p) else -math.inf for p in poa]
            k = int(np.argmax(finite))  # NaN (a non-finite solve) never counts as the max
            per.append(
                {
                    "topology": t.name,
                    "workers": t.workers,
                    "policy": label,
                    "max_poa": poa[k] if math.isfinite(finite[k]) else None,
                    "utilisation_at_max_poa": float(cols["utilisation"][rows[k]]),
                    "poa": poa,
                    "price_of_stability": [float(cols["price_of_stability"][i]) for i in rows],
                    "eq_mean_latency": [float(cols["eq_mean_latency"][i]) for i in rows],
                    "opt_mean_latency": [float(cols["opt_mean_latency"][i]) for i in rows],
                    "converged_share": float(np.mean(conv[rows])),
                    "overloaded_from": next(
                        (float(cols["utilisation"][i]) for i in rows if cols["overloaded"][i]), None
                    ),
                }
            )
    return {
        "scenario": scenario.name,
        "description": scenario.description,
        "scenario_hash": scenario.hash(),
        "source": scenario.source,
        "points": n,
        "shape": dict(zip(("topologies", "loads", "policies"), scenario.shape, strict=True)),
        "utilisation": util,
        "converged_share": float(conv.mean()) if n else 0.0,
        "solver": {k: v for k, v in dataclasses.asdict(scenario.solver).items()},
        "chunk_points": chunk,
        "wall_time_s": timing,
        "device": _device(),
        "jax_version": jax.__version__,
        "poa_jax_version": __version__,
        "per_topology_policy": per,
    }


def run_sweep(
    scenario: Scenario,
    out_dir: str | os.PathLike,
    chunk_size: int | None = None,
    progress: bool = True,
    log=None,
) -> SweepResult:
    """Solves every point of ``scenario`` and writes ``results.parquet`` and ``summary.json``.

    Args:
      scenario: the sweep (see :mod:`poa_jax.scenario`).
      out_dir: output folder (created); parts go to ``out_dir/parts``.
      chunk_size: points solved per call (default :func:`default_chunk`), rounded up to a
        multiple of the number of policies and capped at the number of points. Every chunk has
        this shape, so JAX compiles once: the last one is padded by repeating its own points,
        and the padding is dropped.
      progress: show a tqdm progress bar (on stderr) with the converged share.
      log: optional ``callable(str)`` for notes (e.g. discarded stale parts).

    Returns:
      A :class:`SweepResult`.

    Raises:
      InputError: bad chunk size, or float64 requested without ``jax_enable_x64``.
    """
    t_start = time.perf_counter()
    if scenario.solver.dtype == "float64" and not jax.config.jax_enable_x64:
        raise InputError(
            "solver.dtype = 'float64' needs jax.config.update('jax_enable_x64', True) "
            "before any JAX computation (the CLI does it for --dtype float64)"
        )
    chunk = _chunk_points(chunk_size, scenario)
    batch = scenario.build()
    n = len(batch.labels)
    n_parts = -(-n // chunk)

    out_dir = os.fspath(out_dir)
    parts_dir = os.path.join(out_dir, "parts")
    manifest = {
        "scenario": scenario.name,
        "scenario_hash": scenario.hash(),
        "chunk_points": chunk,
        "points": n,
        "parts": n_parts,
        "columns": list(COLUMNS),
        "poa_jax_version": __version__,
    }
    os.makedirs(out_dir, exist_ok=True)
    _prepare_parts(parts_dir, manifest, log)

    from tqdm.auto import tqdm

    bar = tqdm(total=n, unit="pt", desc=scenario.name, disable=not progress, leave=True)
    tables, done_conv, done = [], 0, 0
    first_call, computed, skipped = None, 0, 0
    try:
        for part in range(n_parts):
            path = os.path.join(parts_dir, f"part-{part:05d}.parquet")
            start = part * chunk
            n_real = min(chunk, n - start)
            if os.path.exists(path):
                tab = pq.read_table(path, schema=SCHEMA)
                skipped += 1
            else:
                # Pad by cycling the chunk's own points: whole games, so every chunk has the
                # same shape and the same policy composition (one compile per sub-batch).
                idx = start + np.arange(chunk) % n_real
                t0 = time.perf_counter()
                tab = _solve_chunk(scenario, batch, idx, n_real)
                dt = time.perf_counter() - t0
                first_call = dt if first_call is None else first_call
                computed += 1
                _write_atomic(path, lambda tmp, tab=tab: pq.write_table(tab, tmp))
            tables.append(tab)
            done += tab.num_rows
            done_conv += int(np.sum(tab.column("converged").to_numpy(zero_copy_only=False)))
            bar.set_postfix(converged=f"{done_conv / max(done, 1):.0%}", refresh=False)
            bar.update(tab.num_rows)
    finally:
        bar.close()

    table = pa.concat_tables(tables).sort_by("point")
    results_path = os.path.join(out_dir, "results.parquet")
    _write_atomic(results_path, lambda tmp: pq.write_table(table, tmp))
    total = time.perf_counter() - t_start
    timing = {
        "total": total,
        "first_call": first_call,  # compile + first chunk (None if every part was reused)
        "after_first_call": None if first_call is None else total - first_call,
        "parts_computed": computed,
        "parts_reused": skipped,
    }
    summary = _summarise(scenario, table, timing, chunk)
    summary_path = os.path.join(out_dir, "summary.json")
    _write_json(summary_path, summary)
    return SweepResult(table, summary, results_path, summary_path)
