"""Sweeps: solve every topology × load × policy point of a scenario, in chunks, to Parquet.

:func:`run_sweep` builds the scenario's flat batch (:meth:`poa_jax.scenario.Scenario.build`),
solves it with :func:`poa_jax.price_of_anarchy` in chunks of a constant shape (so JAX compiles
once), and writes

* ``out_dir/results.parquet`` — one row per point (columns in :data:`COLUMNS`);
* ``out_dir/summary.json`` — scenario, timing, device, and per topology × policy the PoA curve
  over load, its maximum and where it occurs, and the share of converged points.

Interrupt safety: every part is written as ``out_dir/parts/part-NNNNNN.parquet`` (to a temporary
name, then renamed atomically). ``out_dir/parts/_manifest.json`` records the scenario (its hash,
:meth:`~poa_jax.scenario.Scenario.hash`, and its canonical form) and the chunking; rerunning the
same scenario into the same folder skips the parts that exist, and ``results.parquet`` is
assembled from the parts at the end. The bookkeeping files in ``parts/`` start with ``_``
(``_manifest.json``, ``_process-NNNN.json``), so ``pyarrow.dataset.dataset(out_dir + "/parts")``
reads the parts alone; folders written before that (``manifest.json``) still resume.

A folder that holds parts of another scenario (or part size, or columns) is refused
(:class:`~poa_jax.InputError` naming what differs) unless ``overwrite=True``, which discards
those parts and the folder's ``results.parquet`` and ``summary.json``. The chunk size changes
results only through float rounding, but a resumed table must equal an uninterrupted run's: a
resume without ``chunk_size`` takes the folder's chunk size, and another ``chunk_size`` is
refused unless ``overwrite=True``.

The optimum of a game does not depend on the policy, and the optimum solver is a local method
on a nonconvex social cost (the cache term), warm-started from each policy's equilibria. All
policies of one (topology, load) game are solved in the same chunk, and every one of them is
measured against the **best optimum found for that game** by any of them, so ``opt_cost`` is
one number per game and ``PoA ≥ PoS ≥ 1`` still holds.

Warm starts (``solver.warm_start = "load"``): the equilibria of a load curve are solved as a
continuation along the load axis (``price_of_anarchy``'s ``continuation``), in three levels per
chunk — every :data:`WARM_STRIDE`-th load point from the generated starts, the points halfway
between from ``u − 2``, the rest from ``u − 1`` — each start continuing from where the same start
ended at its source, rescaled to the new demand. Chunks then hold whole curves (``U × P``
points). It needs fewer iterations; with the cache term, where a game has several equilibria, the
continued starts can end in other equilibria than the generated ones, so the worst equilibrium
found (and the PoA) can differ (``benchmarks/RESULTS.md`` measures both). The optimum is solved
for the whole chunk at once, as without warm starts.

Example:
  >>> import tempfile
  >>> from poa_jax import scenario, sweep
  >>> sc = scenario.default_scenario()
  >>> res = sweep.run_sweep(sc, tempfile.mkdtemp(), progress=False)  # doctest: +SKIP
  >>> res.table.num_rows, res.summary["points"]                      # doctest: +SKIP
  (192, 192)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import time
from typing import NamedTuple

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from poa_jax import __version__, batching
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
    "variant": pa.string(),  # the workload variant's name ("base" without variants)
    "seed": pa.int64(),  # the seed index (0 without seeds)
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
    """Default points per chunk: 1024 on CPU, 8192 on an accelerator.

    A chunk of ``c`` points is ``c × starts`` solver lanes; above
    :data:`poa_jax.batching.COMPACT_ABOVE` lanes the solver runs in rounds and drops finished
    lanes between them, so one slow instance does not hold the batch. Measured on the default
    scenario replicated to 6 144 points (float32, 2-core CPU, git 13290cc): 139 points/s in
    chunks of 64 (no compaction), 171 with 256, 222 with 1 024. An accelerator needs wider
    batches to be busy.
    """
    return 1024 if jax.default_backend() == "cpu" else 8192


def _chunk_points(chunk_size: int | None, scenario: Scenario) -> int:
    """Points per chunk: a multiple of the number of policies (each chunk has whole games),
    and of a whole load curve (``U × P`` points) under ``solver.warm_start = "load"``."""
    axes = scenario.axes
    p = axes["policy"] * (axes["load"] if scenario.solver.warm_start == "load" else 1)
    n = scenario.num_points
    chunk_size = default_chunk() if chunk_size is None else chunk_size
    if isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or chunk_size < 1:
        raise InputError(f"chunk_size = {chunk_size!r}: must be an integer >= 1")
    c = -(-int(chunk_size) // p) * p
    return min(c, n)


def _status_names(codes: np.ndarray) -> np.ndarray:
    names = np.array([STATUS.get(c, f"status_{c}") for c in range(3)], dtype=object)
    codes = np.asarray(codes)
    known = (codes >= 0) & (codes < 3)
    out = names[np.where(known, codes, 0)]
    if not known.all():
        out[~known] = [f"status_{int(c)}" for c in codes[~known]]
    return out


#: Load-axis stride of the cold points under ``solver.warm_start = "load"``: ``u ≡ 0 (mod 4)``
#: cold, ``u ≡ 2`` from ``u − 2``, odd ``u`` from ``u − 1`` (three solver calls per chunk).
WARM_STRIDE = 4


def _warm_levels(scenario: Scenario) -> list[tuple[np.ndarray, int]]:
    """The warm-start levels of one load curve block (``U × P`` consecutive points).

    Returns ``[(offsets, back)]``: the block offsets solved at that level and how many load
    points back each one's source is (0: cold).
    """
    _, _, _, u_count, p = scenario.axes.values()
    u = np.arange(u_count * p) // p
    levels = [(u % WARM_STRIDE == 0, 0)]
    step = WARM_STRIDE // 2
    while step >= 1:
        done = np.zeros_like(u, bool)
        for m, _ in levels:
            done |= m
        levels.append((~done & (u % step == 0), step))
        step //= 2
    return [(np.flatnonzero(m), back * p) for m, back in levels if m.any()]


def _continuation(scenario: Scenario, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``price_of_anarchy``'s ``continuation`` for a chunk of ``n`` points in whole curves."""
    _, _, _, u_count, p = scenario.axes.values()
    block = u_count * p
    first = np.arange(0, n, block)[:, None]
    out = []
    for offsets, back in _warm_levels(scenario):
        rows = (first + offsets[None, :]).reshape(-1)
        out.append((rows, rows - back if back else np.full(rows.shape, -1)))
    return out


def _solve_points(scenario: Scenario, points: np.ndarray):
    batch = scenario.build(points)
    sv = scenario.solver
    warm = sv.warm_start == "load"
    res = price_of_anarchy(
        batch.game,
        batch.policy,
        starts=sv.starts,
        tol=sv.tol,
        max_iters=sv.max_iters,
        optimum_starts=sv.optimum_starts,
        dtype=sv.dtype,
        continuation=_continuation(scenario, len(points)) if warm else None,
    )
    return batch, res


def _solve_chunk(scenario: Scenario, points: np.ndarray, n_real: int) -> pa.Table:
    """Solves ``points`` (``len(points)`` constant; the first ``n_real`` are real) to rows."""
    batch, res = _solve_points(scenario, points)
    eq, best, opt = res.equilibrium, res.best_equilibrium, res.optimum
    p = len(scenario.policies)
    g = len(points) // p  # games in the chunk; the policies of a game are consecutive

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
    lab = {k: v[r] for k, v in batch.labels.columns.items()}
    omega = lab["omega"]
    cols = {
        "point": points[r],
        "topology": lab["topology"],
        "workers": lab["workers"],
        "variant": lab["variant"],
        "seed": lab["seed"],
        "utilisation": lab["utilisation"],
        "demand_total": lab["demand_total"],
        "policy": lab["policy"],
        "omega": pa.array(omega, mask=np.isnan(omega), type=pa.float64()),
        "tau": lab["tau"],
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
    return pa.table(
        {
            k: v if isinstance(v, pa.Array) else pa.array(v, type=COLUMNS[k])
            for k, v in cols.items()
        },
        schema=SCHEMA,
    )


def _write_atomic(path: str, write) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _finite_or_none(v):
    """JSON has no NaN/inf: non-finite floats become null, recursively; NumPy scalars (a
    Python scenario's ``workers = np.int64(4)``) become Python numbers."""
    if isinstance(v, np.generic):
        v = v.item()
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


#: The manifest of a parts folder (a leading ``_``: pyarrow's dataset discovery skips it).
MANIFEST = "_manifest.json"
#: Raised whenever a change alters the numbers a sweep writes (the solvers' starts, stopping
#: rules, finishing steps), so that a folder's parts solved before it are not mixed with parts
#: solved after (:func:`_resolve_layout`). 2 (2026-11-29): random starts independent of
#: padding, the support snap of Wardrop points, the fluid descent's first-round stop. A
#: manifest without the key was written by revision 1.
SOLVER_REVISION = 2
#: The manifest's name before it had the ``_``: still read when resuming such a folder.
_OLD_MANIFEST = "manifest.json"
#: Temporaries of the final writes into ``out_dir`` (``_write_atomic``) left by a crash.
_OUT_TMP = re.compile(r"(results\.parquet|summary\.json)\.tmp-[0-9]+")
#: Per-process counts of a multi-process run, old and current names.
_PROCESS_FILE = re.compile(r"_?process-[0-9]+\.json")


def _process_path(parts_dir: str, rank: int) -> str:
    return os.path.join(parts_dir, f"_process-{rank:04d}.json")


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_manifest(parts_dir: str) -> dict | None:
    """The folder's manifest, under its current or its old name (None: none readable)."""
    # The current name again last: process 0 may be renaming an old folder's meanwhile.
    for name in (MANIFEST, _OLD_MANIFEST, MANIFEST):
        m = _read_json(os.path.join(parts_dir, name))
        if m is not None:
            return m
    return None


def _has_parts(parts_dir: str) -> bool:
    with contextlib.suppress(OSError):
        return any(f.startswith("part-") for f in os.listdir(parts_dir))
    return False


def _diff(old, new, path: str = "") -> list[tuple[str, object, object]]:
    """``(key path, old, new)`` where two JSON values differ (lists of one length item-wise)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in list(old) + [k for k in new if k not in old]:
            where = f"{path}.{k}" if path else k
            out += _diff(old.get(k, _ABSENT), new.get(k, _ABSENT), where)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = []
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            out += _diff(a, b, f"{path}[{i}]")
        return out
    return [] if old == new else [(path, old, new)]


class _Absent:
    def __repr__(self):
        return "absent"


_ABSENT = _Absent()


def _what_differs(old: dict, new: dict) -> str:
    """The scenario differences between two manifests, for a message (at most three)."""
    if "spec" not in old or old["spec"] == new["spec"]:
        return f"scenario hash {old.get('scenario_hash')!r} there, {new['scenario_hash']!r} here"
    diffs = _diff(old["spec"], new["spec"])
    shown = []
    for path, a, b in diffs[:3]:
        a_, b_ = repr(a), repr(b)
        shown.append(f"{path}: {a_} there, {b_} here" if len(a_ + b_) <= 60 else path)
    more = f"; and {len(diffs) - 3} more" if len(diffs) > 3 else ""
    return "; ".join(shown) + more


def _resolve_layout(
    scenario: Scenario,
    out_dir: str,
    chunk_size: int | None,
    part_size: int | None,
    overwrite: bool,
    log,
) -> tuple[int, int, dict, bool]:
    """Chunk and part size, the manifest, and whether the folder's parts must be discarded.

    Reads ``out_dir`` only (every process of a multi-process job calls it and decides alike).
    Refuses (:class:`InputError`) a folder holding parts of another scenario, part size or
    explicit chunk size, unless ``overwrite``; without ``chunk_size`` a resume takes the
    folder's chunk size.
    """
    n = scenario.num_points
    chunk = _chunk_points(chunk_size, scenario)
    parts_dir = os.path.join(out_dir, "parts")

    def manifest(chunk: int, part_size=part_size) -> dict:
        part = _part_points(part_size, chunk, n)
        return {
            "scenario": scenario.name,
            "scenario_hash": scenario.hash(),
            "chunk_points": chunk,
            "part_points": part,
            "points": n,
            "parts": -(-n // part),
            "columns": list(COLUMNS),
            "poa_jax_version": __version__,
            "solver_revision": SOLVER_REVISION,
            "layout": _layout(),
            "spec": json.loads(scenario.canonical_json()),
        }

    new = manifest(chunk)
    old = _read_manifest(parts_dir)
    refusal = note = None
    if old is None:
        summary = _read_json(os.path.join(out_dir, "summary.json")) or {}
        if _has_parts(parts_dir):
            refusal = f"{out_dir} holds parts of an unknown scenario (no readable {MANIFEST})"
        elif summary.get("kind") == "serving_closed_loop":
            refusal = f"{out_dir} holds the results of a serving sweep (poa-jax sweep --preset)"
        elif summary.get("scenario_hash", new["scenario_hash"]) != new["scenario_hash"]:
            refusal = (
                f"{out_dir} holds the results of another scenario (summary.json: scenario hash "
                f"{summary['scenario_hash']!r}, this one {new['scenario_hash']!r})"
            )
        if refusal is not None:
            refusal += "; pass --overwrite to discard them, or choose another --out"
    elif old.get("scenario_hash") != new["scenario_hash"] or old.get("points") != n:
        refusal = (
            f"{out_dir} holds parts of another scenario ({_what_differs(old, new)}); "
            "pass --overwrite to discard them, or choose another --out"
        )
    elif old.get("columns") != new["columns"]:
        refusal = (
            f"{out_dir} holds parts with other columns (written by another poa-jax version); "
            "pass --overwrite to discard them, or choose another --out"
        )
    else:
        was = old.get("chunk_points")
        if was == chunk:
            pass
        elif chunk_size is not None:
            refusal = (
                f"--chunk = {chunk_size}: {out_dir} was started with --chunk {was} (a resumed "
                "table must equal an uninterrupted run's, and the chunk size changes the float "
                f"rounding); pass --chunk {was} (or no --chunk) to resume, --overwrite to start "
                "over, or choose another --out"
            )
        elif not _valid_chunk(was, scenario):
            refusal = (
                f"{out_dir} holds parts of an unknown chunking ({MANIFEST}: chunk_points = "
                f"{was!r}); pass --overwrite to discard them, or choose another --out"
            )
        else:
            note = (
                f"{out_dir} was started with --chunk {was}: resuming with it (pass "
                "--chunk N --overwrite to start over with another)"
            )
            chunk, new = was, manifest(was)
        was = old.get("part_points")
        if refusal is None and was != new["part_points"] and part_size is None:
            adopted = manifest(chunk, was) if isinstance(was, int) and was > 0 else None
            if adopted is not None and adopted["part_points"] == was:
                new = adopted  # resume with the folder's part size, as with its chunk size
                note = (note + "; " if note else f"{out_dir}: ") + f"resuming with --part {was}"
        if refusal is None and was != new["part_points"]:
            given = f"--part = {part_size}: " if part_size is not None else ""
            refusal = (
                f"{given}{out_dir} holds parts of {was} points, not {new['part_points']}; pass "
                f"--part {was} to resume, --overwrite to discard them, or choose another --out"
            )
    done = lambda: all(os.path.exists(_part_path(parts_dir, k)) for k in range(new["parts"]))  # noqa: E731
    if refusal is None and old is not None and old.get("layout", new["layout"]) != new["layout"]:
        was, now = old["layout"], new["layout"]
        if done():  # nothing to solve, so nothing to mix: the folder keeps its layout
            new = dict(new, layout=was)
            note = (note + "; " if note else f"{out_dir}: ") + (
                f"solved on {_describe(was)}; every part is there, reusing them"
            )
        else:
            hint = f" (on a CPU: POA_JAX_CPU_DEVICES={was.get('devices')})" if was.get(
                "platform") == "cpu" else ""  # fmt: skip
            refusal = (
                f"{out_dir} was solved on {_describe(was)}, this run has {_describe(now)}: the "
                "lanes per device change the float rounding, and in float32 the optimum (not "
                "convex with the cache term) can land at another stationary point, so a resumed "
                f"table would mix the two; resume with the same layout{hint}, pass --overwrite "
                "to start over, or choose another --out"
            )
    was = None if old is None else old.get("solver_revision", 1)
    if refusal is None and was is not None and was != SOLVER_REVISION:
        if done():  # nothing to solve, so nothing to mix
            new = dict(new, solver_revision=was)
            note = (note + "; " if note else f"{out_dir}: ") + (
                f"solved by solver revision {was} (this poa-jax: {SOLVER_REVISION}); every "
                "part is there, reusing them"
            )
        else:
            refusal = (
                f"{out_dir} holds parts solved by solver revision {was}, and this poa-jax is "
                f"revision {SOLVER_REVISION}, whose numbers differ: a resumed table would mix "
                "the two; pass --overwrite to start over, or choose another --out"
            )
    if refusal is not None and not overwrite:
        raise InputError(refusal)
    if note is not None and log:
        log(note)
    discard = refusal is not None
    return chunk, new["part_points"], new, discard


def _valid_chunk(chunk, scenario: Scenario) -> bool:
    """Whether a manifest's chunk size is one :func:`_chunk_points` could have chosen."""
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        return False
    with contextlib.suppress(InputError):
        return _chunk_points(chunk, scenario) == chunk
    return False


def _prepare(out_dir: str, manifest: dict, discard: bool, log) -> None:
    """Readies ``out_dir`` (process 0 only): removes crashed writes' temporaries and, with
    ``discard``, the parts and results of another sweep; writes the manifest."""
    parts_dir = os.path.join(out_dir, "parts")
    os.makedirs(out_dir, exist_ok=True)
    stale = [f for f in os.listdir(out_dir) if _OUT_TMP.fullmatch(f)]
    if discard:
        present = set(os.listdir(out_dir))
        results = [f for f in ("results.parquet", "summary.json") if f in present]
        stale += results
        old = os.listdir(parts_dir) if os.path.isdir(parts_dir) else []
        old_parts = [f for f in old if f.startswith("part-")]
        if log and (old_parts or results):
            also = f", and {' and '.join(results)} in {out_dir}" if results else ""
            log(f"--overwrite: discarding {len(old_parts)} part(s) in {parts_dir}{also}")
        stale += [os.path.join("parts", f) for f in old_parts]
        stale += [os.path.join("parts", f) for f in (MANIFEST, _OLD_MANIFEST) if f in old]
    for f in stale:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(out_dir, f))
    os.makedirs(parts_dir, exist_ok=True)
    # Temporaries of killed writes are never results, and the per-process counts are rewritten
    # by every multi-process run: always removed.
    for f in os.listdir(parts_dir):
        if ".tmp-" in f or _PROCESS_FILE.fullmatch(f):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(parts_dir, f))
    if _read_json(os.path.join(parts_dir, MANIFEST)) != manifest:
        _write_json(os.path.join(parts_dir, MANIFEST), manifest)
    with contextlib.suppress(FileNotFoundError):  # renamed: the folder reads as a dataset
        os.remove(os.path.join(parts_dir, _OLD_MANIFEST))


def _layout() -> dict:
    """What a part's lanes are split over: the platform and the devices each process shards
    them on (:func:`poa_jax.batching.mesh_for`). Not the processes: each solves whole parts,
    as one process does (``tests/test_distributed.py``: the tables are equal)."""
    devs = jax.local_devices()
    cap = batching._DEVICES
    return {
        "platform": devs[0].platform,
        "devices": len(devs) if cap is None else min(cap, len(devs)),
    }


def _describe(layout: dict) -> str:
    return f"{layout.get('devices')} {layout.get('platform')} device(s) per process"


def _device() -> dict:
    d = jax.local_devices()[0]
    return {
        "platform": d.platform,
        "device_kind": d.device_kind,
        "count": jax.local_device_count(),
        "processes": jax.process_count(),
    }


def _read_part(path: str, rows: int) -> pa.Table | None:
    """A finished part, or None when it is missing, unreadable or not the expected rows."""
    if not os.path.exists(path):
        return None
    try:
        if pq.ParquetFile(path).metadata.num_rows != rows:
            return None
        return pq.read_table(path, schema=SCHEMA)
    except (OSError, pa.ArrowException):
        return None


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


class _Summary:
    """Per (topology, policy, load point) sums over variants and seeds, fed part by part.

    Memory is ``O(T·P·U)``, the size of ``summary.json``'s curves, whatever the number of
    variants, seeds and parts; a part costs its own size. A sweep of any size is summarised in
    one pass over its parts.
    """

    _MEAN = ("poa", "price_of_stability", "eq_mean_latency", "opt_mean_latency")

    def __init__(self, scenario: Scenario):
        self.shape = scenario.shape
        t, _, _, u, p = self.shape
        self.n = np.zeros((t, p, u), np.int64)
        self.finite = np.zeros((t, p, u), np.int64)
        self.sums = {k: np.zeros((t, p, u)) for k in self._MEAN}
        self.max_poa = np.full((t, p, u), -np.inf)
        self.converged = np.zeros((t, p, u), np.int64)
        self.overloaded = np.zeros((t, p, u), np.int64)
        self.starts = np.zeros((t, p, u), np.int64)

    def add(self, tab: pa.Table) -> None:
        """Adds a part's rows: a group-by over the groups the part touches, so its cost is the
        part's size, not the number of groups (a bincount over all of them cost 0.4 s per part
        at 2·10⁷ groups)."""
        t, _, _, u, p = np.unravel_index(tab.column("point").to_numpy(), self.shape)
        groups, inv = np.unique(np.ravel_multi_index((t, p, u), self.n.shape), return_inverse=True)
        m = groups.size

        def add_to(total, w, as_int=False):
            s = np.bincount(inv, weights=w, minlength=m)
            total.reshape(-1)[groups] += s.astype(np.int64) if as_int else s

        col = {k: tab.column(k).to_numpy(zero_copy_only=False) for k in tab.column_names}
        poa = np.asarray(col["poa"], np.float64)
        ok = np.isfinite(poa)
        add_to(self.n, None, True)
        add_to(self.finite, ok.astype(np.float64), True)
        for k in self._MEAN:
            add_to(self.sums[k], np.where(ok, np.asarray(col[k], np.float64), 0.0))
        np.maximum.at(self.max_poa.reshape(-1), groups[inv[ok]], poa[ok])
        add_to(self.converged, col["converged"].astype(np.float64), True)
        add_to(self.overloaded, col["overloaded"].astype(np.float64), True)
        add_to(self.starts, col["converged_starts"].astype(np.float64), True)

    def per_group(self, scenario: Scenario) -> list[dict]:
        util = [float(x) for x in scenario.load.utilisation()]
        reps = self.shape[1] * self.shape[2]  # variants × seeds per (topology, policy, load)
        out = []
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = {k: self.sums[k] / self.finite for k in self._MEAN}
        for i, t in enumerate(scenario.topologies):
            for j, label in enumerate(scenario.policy_labels()):
                if not self.n[i, j].any():
                    continue
                poa = np.where(self.finite[i, j] > 0, mean["poa"][i, j], np.nan).tolist()
                finite = [x if math.isfinite(x) else -math.inf for x in poa]
                k = int(np.argmax(finite))  # NaN (a non-finite solve) never counts as the max
                entry = {
                    "topology": t.name,
                    "workers": t.workers,
                    "policy": label,
                    "max_poa": poa[k] if math.isfinite(finite[k]) else None,
                    "utilisation_at_max_poa": util[k],
                    "poa": poa,
                    "price_of_stability": [float(x) for x in mean["price_of_stability"][i, j]],
                    "eq_mean_latency": [float(x) for x in mean["eq_mean_latency"][i, j]],
                    "opt_mean_latency": [float(x) for x in mean["opt_mean_latency"][i, j]],
                    "converged_share": float(self.converged[i, j].sum() / self.n[i, j].sum()),
                    # the lowest overloaded utilisation (load.values may be in any order)
                    "overloaded_from": min(
                        (util[m] for m in range(len(util)) if self.overloaded[i, j, m]),
                        default=None,
                    ),
                }
                if reps > 1:  # the curves above are means over variants and seeds
                    entry["poa_max_over_replicates"] = [
                        float(x) if math.isfinite(x) else None for x in self.max_poa[i, j]
                    ]
                    entry["converged_share_per_load"] = [
                        float(c / n) if n else None
                        for c, n in zip(self.converged[i, j], self.n[i, j], strict=True)
                    ]
                    entry["replicates"] = reps
                out.append(entry)
        return out


def _summarise(scenario: Scenario, acc: _Summary, timing: dict, chunk: int, part: int) -> dict:
    n = int(acc.n.sum())
    conv = int(acc.converged.sum())
    t, v, s, u, p = scenario.shape
    return {
        "scenario": scenario.name,
        "description": scenario.description,
        "scenario_hash": scenario.hash(),
        "source": scenario.source,
        "points": n,
        "shape": {"topologies": t, "variants": v, "seeds": s, "loads": u, "policies": p},
        "axes": {
            "topology": [x.name for x in scenario.topologies],
            "variant": scenario.variant_names(),
            "seed": {"count": s, "jitter": scenario.seeds.jitter, "seed": scenario.seeds.seed},
            "load": [float(x) for x in scenario.load.utilisation()],
            "policy": scenario.policy_labels(),
        },
        "utilisation": [float(x) for x in scenario.load.utilisation()],
        "converged_share": conv / n if n else 0.0,
        "solver": {k: v for k, v in dataclasses.asdict(scenario.solver).items()},
        "chunk_points": chunk,
        "part_points": part,
        "wall_time_s": timing,
        "device": _device(),
        "jax_version": jax.__version__,
        "poa_jax_version": __version__,
        "per_topology_policy": acc.per_group(scenario),
    }


#: Default points per Parquet part: big enough that a 10⁸-point sweep has ~6 000 files, small
#: enough that an interrupted sweep loses at most a few seconds to minutes of work.
PART_POINTS = 16384
#: ``SweepResult.table`` is loaded into memory only up to this many rows.
TABLE_MAX_ROWS = 2_000_000


class _Progress:
    """The progress bar's postfix: rate and time left over the points solved in this run (the
    reused parts count as done, not as speed), the converged share, per solved chunk.

    The run's first chunk compiles the solvers (seconds to minutes) and is left out of the
    rate once a second chunk has been solved: with it, a resume whose first chunk compiled
    for 10 s promised minutes for what took seconds."""

    def __init__(self, total: int, format_interval):
        self.total, self.format_interval = total, format_interval
        self.done = self.solved_points = self.reused_points = self.converged = 0
        self.work_s = 0.0  # time spent in finished computed parts
        self.part_s = 0.0  # time spent in the computed part under way
        self.first = None  # (points, seconds) of the run's first solved chunk

    def first_chunk(self, points: int, seconds: float) -> None:
        if self.first is None:
            self.first = (points, seconds)

    def reused(self, tab: pa.Table) -> None:
        self.done += tab.num_rows
        self.reused_points += tab.num_rows
        self.converged += _count_true(tab)

    def solved(self, tab: pa.Table, part_s: float) -> None:
        self.done += tab.num_rows
        self.solved_points += tab.num_rows
        self.converged += _count_true(tab)
        self.part_s = part_s

    def part_done(self, part_s: float) -> None:
        self.work_s += part_s
        self.part_s = 0.0

    def text(self) -> str:
        out = []
        elapsed = self.work_s + self.part_s
        points = self.solved_points
        if self.first is not None and points > self.first[0] and elapsed > self.first[1]:
            points, elapsed = points - self.first[0], elapsed - self.first[1]
        if points and elapsed > 0:
            rate = points / elapsed
            left = self.format_interval((self.total - self.done) / rate)
            out.append(f"{rate:.1f} pt/s, {left} left")
        if self.done:
            out.append(f"converged={self.converged / self.done:.0%}")
        if self.reused_points:
            out.append(f"reused={self.reused_points}")
        return ", ".join(out)


def _count_true(tab: pa.Table) -> int:
    return int(np.count_nonzero(tab.column("converged").to_numpy(zero_copy_only=False)))


def _barrier(name: str) -> None:
    """Waits for every process of a multi-process JAX job (no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def run_sweep(
    scenario: Scenario,
    out_dir: str | os.PathLike,
    chunk_size: int | None = None,
    progress: bool = True,
    log=None,
    part_size: int | None = None,
    merge: bool = True,
    overwrite: bool = False,
) -> SweepResult:
    """Solves every point of ``scenario`` and writes the results and ``summary.json``.

    The points are expanded lazily (:meth:`~poa_jax.scenario.Scenario.build` per chunk), so
    host memory does not grow with the size of the sweep. Every part of ``part_size`` points is
    written to ``out_dir/parts/part-NNNNNN.parquet`` (atomically: to a temporary name, then
    renamed) as soon as it is solved; a rerun of the same scenario skips the parts that exist
    and are whole, and redoes the rest (with the chunk size the folder was started with, so the
    table is the same as an uninterrupted run's). In a multi-process JAX job (after
    ``jax.distributed.initialize``) process ``i`` of ``n`` solves the parts ``i, i + n, …`` on
    its own devices; process 0 then writes the summary and the merged table.

    Args:
      scenario: the sweep (see :mod:`poa_jax.scenario`).
      out_dir: output folder (created); parts go to ``out_dir/parts``.
      chunk_size: points solved per call (default :func:`default_chunk`, or when resuming the
        chunk size ``out_dir`` was started with), rounded up to a multiple of the number of
        policies and capped at the number of points. Every chunk has this shape, so JAX
        compiles once: the last one is padded by repeating its own points, and the padding is
        dropped.
      progress: show a tqdm progress bar (on stderr): points per second and time left (over
        the points solved in this run, not the reused parts), and the converged share.
      log: optional ``callable(str)`` for notes (the resumed chunk size, discarded parts).
      part_size: points per Parquet part (default :data:`PART_POINTS`), rounded up to a
        multiple of the chunk.
      merge: also write the whole table to ``out_dir/results.parquet`` (streamed part by part,
        so memory stays bounded); the parts folder is a Parquet dataset either way.
      overwrite: where ``out_dir`` holds parts of another scenario, part size or chunk size,
        discard them and ``out_dir``'s ``results.parquet`` and ``summary.json`` instead of
        refusing (parts of the same sweep are still reused).

    Returns:
      A :class:`SweepResult` (on processes other than 0 of a multi-process job, with an empty
      summary and no table).

    Raises:
      InputError: bad chunk or part size, float64 requested without ``jax_enable_x64``, or
        (without ``overwrite``) ``out_dir`` holds parts of another scenario, part size or
        chunk size, or another single-process sweep is writing ``out_dir`` (its lock file
        :data:`LOCK`); nothing is solved then.
    """
    if scenario.solver.dtype == "float64" and not jax.config.jax_enable_x64:
        raise InputError(
            "solver.dtype = 'float64' needs jax.config.update('jax_enable_x64', True) "
            "before any JAX computation (the CLI does it for --dtype float64)"
        )
    out_dir = os.fspath(out_dir)
    with _folder_lock(out_dir, jax.process_count()):
        return _run_sweep(scenario, out_dir, chunk_size, progress, log, part_size, merge, overwrite)


#: Lock file of a single-process sweep in its output folder: ``{"host", "pid"}``.
LOCK = ".poa_jax.lock"


@contextlib.contextmanager
def _folder_lock(out_dir: str, world: int):
    """Holds ``out_dir/LOCK`` while a single-process sweep writes ``out_dir``: two runs into
    one folder would each solve every part, and one's start-up would delete the other's
    temporaries. A lock left by a process of this host that is gone is taken over. A
    multi-process job takes none (its processes share the folder by design; do not start a
    second job on it)."""
    if world > 1:
        yield
        return
    import socket

    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, LOCK)
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = _read_json(path)
            if held is None:  # unreadable: being written this instant, or left half-written
                with contextlib.suppress(OSError):
                    if time.time() - os.path.getmtime(path) < 10.0:
                        held = {"host": "?", "pid": "?"}
            if held is None or (held.get("host") == me["host"] and not _alive(held.get("pid"))):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)  # stale: its run is gone (or it was never written out)
                continue
            where = "" if held.get("host") == me["host"] else f" on host {held.get('host')}"
            raise InputError(
                f"{out_dir} is being written by another poa-jax sweep (PID {held.get('pid')}"
                f"{where}); wait for it, or choose another --out (if no sweep is running there, "
                f"remove {path})"
            ) from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(me, f)
        break
    else:  # pragma: no cover - another run took it between our removal and retry
        raise InputError(f"{out_dir}: could not take its lock {path}; is another sweep starting?")
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _alive(pid) -> bool:
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _run_sweep(scenario, out_dir, chunk_size, progress, log, part_size, merge, overwrite):
    """:func:`run_sweep` inside its folder lock."""
    t_start = time.perf_counter()
    n = scenario.num_points
    rank, world = jax.process_index(), jax.process_count()
    parts_dir = os.path.join(out_dir, "parts")
    # Every process reads the folder and decides alike (a refusal raises everywhere).
    chunk, part, manifest, discard = _resolve_layout(
        scenario, out_dir, chunk_size, part_size, overwrite, log if rank == 0 else None
    )
    n_parts = -(-n // part)
    if rank == 0:
        _prepare(out_dir, manifest, discard, log)
    _barrier("poa_jax.sweep.prepared")

    mine = range(rank, n_parts, world)
    todo_points = sum(min(part, n - k * part) for k in mine)
    from tqdm.auto import tqdm

    # tqdm's own rate would count the reused parts as solved: the rate and the time left are
    # computed here, over the points solved in this run.
    bar = tqdm(
        total=todo_points, unit="pt", desc=scenario.name, disable=not progress, leave=True,
        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]",
    )  # fmt: skip
    progress_text = _Progress(todo_points, tqdm.format_interval)
    acc = _Summary(scenario)
    first_call, computed, skipped, solve_s = None, 0, 0, 0.0
    try:
        for k in mine:
            path = _part_path(parts_dir, k)
            lo, hi = k * part, min((k + 1) * part, n)
            tab = _read_part(path, hi - lo)
            if tab is not None:
                skipped += 1
                progress_text.reused(tab)
                bar.set_postfix_str(progress_text.text(), refresh=False)
                bar.update(tab.num_rows)
            else:
                tables = []
                t_part = time.perf_counter()
                for c0 in range(lo, hi, chunk):
                    n_real = min(chunk, hi - c0)
                    # Pad by cycling the chunk's own points: whole games, so every chunk has
                    # the same shape and the same policy composition (one compile).
                    idx = c0 + np.arange(chunk, dtype=np.int64) % n_real
                    t0 = time.perf_counter()
                    tables.append(_solve_chunk(scenario, idx, n_real))
                    dt = time.perf_counter() - t0
                    first_call = dt if first_call is None else first_call
                    solve_s += dt
                    progress_text.first_chunk(n_real, time.perf_counter() - t_part)
                    progress_text.solved(tables[-1], time.perf_counter() - t_part)
                    bar.set_postfix_str(progress_text.text(), refresh=False)
                    bar.update(n_real)
                tab = pa.concat_tables(tables)
                _write_atomic(path, lambda tmp, tab=tab: pq.write_table(tab, tmp))
                progress_text.part_done(time.perf_counter() - t_part)
                computed += 1
            acc.add(tab)
    finally:
        bar.close()
    mine_timing = {"parts_computed": computed, "parts_reused": skipped, "solve": solve_s}
    if world > 1:  # for process 0's summary: what every process did
        _write_json(_process_path(parts_dir, rank), mine_timing)
    _barrier("poa_jax.sweep.solved")

    results_path = os.path.join(out_dir, "results.parquet")
    summary_path = os.path.join(out_dir, "summary.json")
    if rank != 0:
        return SweepResult(None, {}, results_path, summary_path)
    per_process = None
    if world > 1:  # the other processes' parts and counts
        acc = _Summary(scenario)
        for k in range(n_parts):
            acc.add(_read_part(_part_path(parts_dir, k), min(part, n - k * part)))
        per_process = []
        for r in range(world):
            with open(_process_path(parts_dir, r), encoding="utf-8") as f:
                per_process.append(json.load(f))
        computed = sum(p["parts_computed"] for p in per_process)
        skipped = sum(p["parts_reused"] for p in per_process)
    if merge:
        _merge(parts_dir, n_parts, results_path)
    total = time.perf_counter() - t_start
    timing = {
        "total": total,
        "first_call": first_call,  # compile + first chunk (None if every part was reused)
        "after_first_call": None if first_call is None else total - first_call,
        "solve": solve_s,  # inside the solver calls (the rest is expansion, I/O, summary)
        "parts_computed": computed,
        "parts_reused": skipped,
    }
    if per_process is not None:
        timing["per_process"] = per_process
    summary = _summarise(scenario, acc, timing, chunk, part)
    _write_json(summary_path, summary)
    table = None
    if merge and n <= TABLE_MAX_ROWS:
        table = pq.read_table(results_path, schema=SCHEMA)
    return SweepResult(table, summary, results_path if merge else parts_dir, summary_path)


def _part_path(parts_dir: str, k: int) -> str:
    return os.path.join(parts_dir, f"part-{k:06d}.parquet")


def _part_points(part_size: int | None, chunk: int, n: int) -> int:
    """Points per part: a multiple of the chunk, capped at the number of points."""
    part = PART_POINTS if part_size is None else part_size
    if isinstance(part, bool) or int(part) != part or part < 1:
        raise InputError(f"part_size = {part_size!r}: must be an integer >= 1")
    return min(-(-int(part) // chunk) * chunk, -(-n // chunk) * chunk)


def _merge(parts_dir: str, n_parts: int, path: str) -> None:
    """``results.parquet`` from the parts, one part in memory at a time, in point order."""

    def write(tmp):
        with pq.ParquetWriter(tmp, SCHEMA) as w:
            for k in range(n_parts):
                w.write_table(pq.read_table(_part_path(parts_dir, k), schema=SCHEMA))

    _write_atomic(path, write)
