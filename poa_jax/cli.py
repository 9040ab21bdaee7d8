"""The ``poa-jax`` command line: sweep a scenario, or solve one game from JSON.

Subcommands (``poa-jax bench`` times the solvers on the device present and prints a table):

* ``poa-jax sweep [SCENARIO.toml|SCENARIO.py] [--out DIR] [--dtype float32|float64] [--chunk N]
  [--part N] [--warm-start load|none] [--overwrite] [--no-progress] [--distributed ...]`` —
  runs a scenario (the built-in default without a file; ``--distributed``: one process of a
  multi-process job) with :func:`poa_jax.sweep.run_sweep`, prints a table per
  topology × policy over load (PoA, price of stability, mean latency at equilibrium and optimum,
  converged starts) and the output paths (``DIR/results.parquet``, ``DIR/summary.json``;
  default ``DIR`` is ``out/<scenario name>``). Rerunning into the same folder resumes: finished
  parts are reused, with the chunk size the folder was started with when ``--chunk`` is not
  given. A folder holding another scenario's parts (or another part size, or another explicit
  ``--chunk``) is refused unless ``--overwrite`` (which discards them and the old
  ``results.parquet`` and ``summary.json``).
* ``poa-jax sweep --preset NAME[,NAME...] [--concurrency C1,C2,...] [--variants V] [--seed S]
  [--out DIR] [--chunk N]``
  — the closed-loop serving sweep (:func:`poa_jax.serving_sweep.run_serving_sweep`, float64;
  ``--dtype float32`` and a scenario file are rejected): for each preset (``llama70b-1p2d``,
  ``llama70b-1p5d``, ``nemotron340b-1p2d``, …; an unknown name lists the known ones) and each
  concurrency ``C`` (default the paper's grid 8,16,32,64,96,128,160,192,256,384,512; without
  ``--preset``, ``--concurrency`` is an error) it solves Little's law ``C = X·R(X)`` with the
  routing equilibrium inside for the 16 Dynamo (τ, ω) settings and the selfish and load-balanced
  baselines, keeps the worst equilibrium over 2 starts (uniform, herding on worker 0; the
  herding start is bounded and stopped early when it rejoins the first start's equilibrium)
  and the coordinated optimum, and writes ``DIR/results.parquet`` (C, throughput, TTFT
  P50/P90/P99, ITL, regime, PoA, status per point) and ``DIR/summary.json`` (per topology and
  policy: ``knee_interval [lo, hi]``, the PoA at every C, points not converged). Prints one line
  per topology · policy: knee interval, PoA over C, and the C where some point did not converge.
* ``poa-jax plot DIR [--png FILE]`` — draws PoA and TTFT P99 versus concurrency per policy and
  topology from a ``sweep --preset`` folder, regimes (slack / knee / saturated) shaded, to a PNG
  (default ``DIR/poa_ttft.png``).
* ``poa-jax solve GAME.json [--dtype ...]`` — one routing game (or a batch: leading axes) from
  JSON (keys: ``demand``, ``latency`` {a, b, c, p, d, kappa (``"inf"``: no singular term),
  rho_max}, optional ``tokens``,
  ``shareable``, ``residency``, ``cache_size``, ``prefill`` {a, b, c}, ``worker_mask``,
  ``policy`` {name, ...parameters} (default selfish), ``starts``, ``tol``, ``max_iters``);
  prints the PoA result as JSON on stdout. A file with a ``game`` key holds a caching game
  instead (``selfish_caching``, ``tiered_cache``, ``coupled``: :mod:`poa_jax.cache_io`).

Bad input (a missing or malformed file, an unknown key, a value breaking a rule) prints one line
``poa-jax: error: <file>: <field>[index]: <rule>`` on stderr and exits with status 2; nothing is
compiled first. ``--dtype float64`` turns on ``jax_enable_x64`` before any JAX computation.
On a CPU the program first splits the processor into one JAX device per core, up to 8, and the
solvers shard their lanes over them (:func:`poa_jax.batching.use_cpu_devices`;
``POA_JAX_CPU_DEVICES=1`` keeps one device).

Compilation dominates short runs on a CPU (tens of seconds). JAX's persistent cache makes
repeated runs start faster: ``export JAX_COMPILATION_CACHE_DIR=~/.cache/jax`` (the default
sweep then takes about half the CPU time on its second run).

Example:
  $ poa-jax solve examples/game.json
  $ poa-jax sweep examples/default.toml --out out/mine
  $ poa-jax sweep --preset llama70b-1p2d,nemotron340b-1p2d --concurrency 8,64,128,512 --out out/pd
  $ poa-jax plot out/pd
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys

import numpy as np

from poa_jax.errors import InputError

__all__ = ["main", "format_table", "read_game"]

PROG = "poa-jax"


class _UsageError(Exception):
    """A command-line usage error (reported like every other bad input)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one ``poa-jax: error:`` line and status 2."""

    def error(self, message):
        raise _UsageError(f"{message} (see {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Batched equilibria and Price of Anarchy of LLM-serving routing games.",
        epilog="Tip: export JAX_COMPILATION_CACHE_DIR=~/.cache/jax to reuse compiled solvers "
        "across runs.",
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser(
        "sweep",
        help="solve every topology x load x policy point of a scenario",
        description="Solve a scenario's sweep; write results.parquet and summary.json.",
    )
    s.add_argument(
        "scenario",
        nargs="?",
        help="scenario TOML file, or a Python file that sets SCENARIO (default: the built-in "
        "scenario)",
    )
    s.add_argument(
        "--out",
        help="output folder (default: out/<scenario name>); rerunning the same scenario into it "
        "resumes, reusing the finished parts; a folder holding another scenario's parts is "
        "refused (see --overwrite)",
    )
    s.add_argument(
        "--overwrite",
        action="store_true",
        help="where --out holds parts of another scenario, part size or --chunk, or a "
        "serving sweep's results (sweep --preset), discard them and its results.parquet and "
        "summary.json instead of refusing (parts of the same sweep are still reused)",
    )
    s.add_argument("--dtype", choices=("float32", "float64"), help="override solver.dtype")
    s.add_argument(
        "--warm-start",
        choices=("load", "none"),
        default=None,
        help="override solver.warm_start: 'load' continues each load curve from its "
        "neighbours' solutions (fewer iterations; can select other equilibria), 'none' cold",
    )
    s.add_argument(
        "--chunk",
        type=int,
        default=None,
        help="points per solver call (default: 1024 on CPU, 8192 on GPU/TPU; when resuming, "
        "the chunk size the folder was started with: it changes float rounding, and a resumed "
        "table must equal an uninterrupted run's, so another --chunk is refused there)",
    )
    s.add_argument(
        "--part",
        type=int,
        default=None,
        help="points per Parquet part, the unit of resuming (default: 16384; when resuming, "
        "the folder's part size, and another --part is refused there)",
    )
    s.add_argument(
        "--no-merge",
        action="store_true",
        help="keep the results as the Parquet dataset DIR/parts only (no results.parquet)",
    )
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument(
        "--distributed",
        action="store_true",
        help="one process of a multi-process JAX job (jax.distributed.initialize before "
        "anything else): start the same command once per machine or GPU; process i of n "
        "solves parts i, i + n, ... and process 0 merges them. On Slurm JAX finds the "
        "coordinator, the process count and id itself; elsewhere give the three options below "
        "(or JAX_COORDINATOR_ADDRESS)",
    )
    s.add_argument("--coordinator", help="with --distributed: process 0's HOST:PORT")
    s.add_argument("--num-processes", type=int, help="with --distributed: processes in the job")
    s.add_argument("--process-id", type=int, help="with --distributed: this process, 0 .. n-1")
    # Serving closed-loop sweep (issue 5): --preset routes to poa_jax.serving_sweep.
    s.add_argument(
        "--preset",
        default=None,
        help="serving preset(s), comma list (llama70b-1p2d, llama70b-1p5d, nemotron340b-1p2d, "
        "...): closed-loop serving sweep over --concurrency (float64) instead of a scenario; "
        "writes results.parquet and summary.json (knee_interval, PoA per C) to --out",
    )
    s.add_argument(
        "--concurrency",
        default=None,
        help="with --preset only: in-flight requests C, comma list of numbers > 0 (default "
        "the paper's 8,16,32,64,96,128,160,192,256,384,512)",
    )
    s.add_argument(
        "--variants",
        type=int,
        default=None,
        help="with --preset only: workload variants per preset, ≥ 1 (default 1, the base "
        "workload; more add seeded perturbations, and the summary gives the largest PoA)",
    )
    s.add_argument(
        "--seed",
        type=int,
        default=None,
        help="with --preset only: seed of the workload variants and random starts (default 0)",
    )
    s.set_defaults(func=_cmd_sweep)

    pl = sub.add_parser(
        "plot",
        help="draw PoA and TTFT P99 versus load from a serving sweep folder (PNG)",
        description="Plot PoA and TTFT P99 versus concurrency per policy and topology, regimes "
        "shaded, from DIR/results.parquet and DIR/summary.json.",
    )
    pl.add_argument("out_dir", help="folder written by poa-jax sweep --preset")
    pl.add_argument("--png", default=None, help="output file (default DIR/poa_ttft.png)")
    pl.set_defaults(func=_cmd_plot)

    b = sub.add_parser(
        "bench",
        help="measure the solvers on this machine's device and print a table",
        description="Time the routing solvers (5 classes x 6 workers, cache term) on the "
        "device present: instances/s, compile time, iterations, converged share.",
    )
    b.add_argument(
        "--batch", default="1000,10000", help="comma-separated batch sizes (default 1000,10000)"
    )
    b.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    b.add_argument("--tol", type=float, default=1e-5, help="relative gap (default 1e-5)")
    b.add_argument("--max-iters", type=int, default=1000)
    b.add_argument("--repeats", type=int, default=2, help="steady-state calls, best kept")
    b.add_argument(
        "--chunk", type=int, default=None,
        help="lanes per call (default: 1024 on CPU, 65536 on an accelerator)",
    )  # fmt: skip
    b.add_argument(
        "--round-iters", type=int, default=None,
        help="iterations per compacted round between host-side compactions (default 32)",
    )  # fmt: skip
    b.add_argument("--json", help="also write the rows to this JSON file")
    b.set_defaults(func=_cmd_bench)

    g = sub.add_parser(
        "solve",
        help="solve one routing or caching game (or a batch) from JSON",
        description="Solve a routing game, or a caching game (a 'game' key: selfish_caching, "
        "tiered_cache, coupled), from JSON and print its PoA result as JSON.",
    )
    g.add_argument(
        "game",
        help="game JSON file (see examples/game.json, examples/tiered_cache.json, "
        "examples/coupled.json)",
    )
    g.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    g.set_defaults(func=_cmd_solve)
    return p


def _use_dtype(dtype: str) -> None:
    if dtype == "float64":
        import jax

        jax.config.update("jax_enable_x64", True)


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status (0 ok, 2 bad input, 1 other failure)."""
    try:
        args = _parser().parse_args(argv)
    except _UsageError as e:
        return _fail(str(e), 2)
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    try:
        return args.func(args)
    except InputError as e:
        return _fail(str(e), 2)
    except KeyboardInterrupt:
        return _fail("interrupted (rerun the same command to resume a sweep)", 130)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, as Unix tools do.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 141
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        return _fail(f"{where}{e.strerror or e}", 1)


def _fail(message: str, code: int) -> int:
    line = " ".join(str(message).split())  # one line, whatever the message
    print(f"{PROG}: error: {line}", file=sys.stderr)
    return code


# --------------------------------------------------------------------------- sweep


def _folder_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "scenario"


def _cmd_serving_sweep(args) -> int:
    """``sweep --preset``: the closed-loop serving sweep (:mod:`poa_jax.serving_sweep`)."""
    if args.scenario is not None:
        raise InputError("--preset: give either a scenario file or --preset, not both")
    if args.dtype == "float32":
        raise InputError(
            "--preset: the serving sweep runs in float64 (--dtype float32 unsupported)"
        )
    if args.warm_start is not None:
        raise InputError("--warm-start: applies to scenario sweeps, not to --preset")
    if getattr(args, "overwrite", False):
        raise InputError("--overwrite: applies to scenario sweeps, not to --preset")
    if getattr(args, "part", None) is not None:
        raise InputError("--part: applies to scenario sweeps, not to --preset")
    if getattr(args, "no_merge", False):
        raise InputError("--no-merge: applies to scenario sweeps, not to --preset")
    _use_dtype("float64")
    from poa_jax import serving_sweep

    names = [n.strip() for n in args.preset.split(",") if n.strip()]
    if not names:
        raise InputError(f"--preset = {args.preset!r}: give at least one preset name")
    if args.concurrency is None:
        conc = list(serving_sweep.PAPER_GRID)
    else:
        try:
            conc = [float(v) for v in args.concurrency.split(",") if v.strip()]
        except ValueError:
            raise InputError(
                f"--concurrency = {args.concurrency!r}: must be a comma list of numbers"
            ) from None
    out = args.out or os.path.join("out", _folder_name("-".join(names) or "serving"))
    extra = {k: v for k in ("variants", "seed") if (v := getattr(args, k)) is not None}
    if extra.get("variants", 1) < 1:
        raise InputError(f"--variants = {args.variants}: must be ≥ 1")
    if extra.get("seed", 0) < 0:
        raise InputError(f"--seed = {args.seed}: must be ≥ 0")
    _serving_out_dir(out)
    summary = serving_sweep.run_serving_sweep(names, conc, out, chunk=args.chunk, **extra)
    for d in summary["per_topology_policy"]:
        knee = d["knee_interval"]
        kn = f"({knee[0]:g}, {knee[1]:g}]" if knee else "none"
        poa = " ".join(_num(v, 7, 4).strip() for v in d["poa"])
        bad = d["not_converged_at"]
        note = f"  NOT CONVERGED at C = {', '.join(f'{c:g}' for c in bad)}" if bad else ""
        print(f"{d['topology']} · {d['policy']}: knee {kn}; PoA {poa}{note}")
    print(f"converged {summary['converged_share']:.1%} of points")
    print(f"results: {summary['results_path']}")
    print(f"summary: {summary['summary_path']}")
    return 0


def _serving_out_dir(out: str) -> None:
    """Creates ``sweep --preset``'s output folder before anything is solved, and refuses one
    holding a scenario sweep (its results.parquet and summary.json would be replaced)."""
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out = {out!r}: cannot create the folder ({e.strerror or e})") from None
    summary = os.path.join(out, "summary.json")
    kind = None
    if os.path.isfile(summary):
        try:
            with open(summary, encoding="utf-8") as f:
                data = json.load(f)
            kind = data.get("kind") if isinstance(data, dict) else None
        except (OSError, ValueError):
            pass
    scenario = os.path.isdir(os.path.join(out, "parts")) or (
        os.path.exists(summary) and kind != "serving_closed_loop"
    )
    if scenario:
        raise InputError(
            f"--out = {out!r}: holds a scenario sweep (parts/ or another summary.json), whose "
            "results.parquet and summary.json a serving sweep would replace; choose another --out"
        )


def _cmd_plot(args) -> int:
    from poa_jax import plot

    if args.png is not None and not str(args.png).lower().endswith(".png"):
        raise InputError(f"--png = {args.png!r}: must name a .png file")
    path = plot.plot_sweep(args.out_dir, args.png)
    print(f"plot: {path}")
    return 0


def _cmd_sweep(args) -> int:
    _distributed(args)
    if getattr(args, "preset", None) is not None:
        return _cmd_serving_sweep(args)
    for name in ("concurrency", "variants", "seed"):
        if getattr(args, name, None) is not None:
            raise InputError(f"--{name}: needs --preset NAME")
    from poa_jax import scenario as _scenario
    from poa_jax import sweep as _sweep

    if args.scenario is None:
        sc = _scenario.default_scenario()
    else:
        sc = _scenario.load_scenario(args.scenario)
    if args.dtype is not None:
        sc = sc.with_solver(dtype=args.dtype)
    if args.warm_start is not None:
        sc = sc.with_solver(warm_start=None if args.warm_start == "none" else args.warm_start)
    for flag in ("chunk", "part"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            raise InputError(f"--{flag} = {v}: must be an integer >= 1")
    _use_dtype(sc.solver.dtype)
    out = args.out or os.path.join("out", _folder_name(sc.name))
    res = _sweep.run_sweep(
        sc,
        out,
        chunk_size=args.chunk,
        part_size=args.part,
        merge=not args.no_merge,
        overwrite=getattr(args, "overwrite", False),
        progress=not args.no_progress,
        log=lambda m: print(f"{PROG}: {m}", file=sys.stderr),
    )
    if not res.summary:  # a process other than 0 of a multi-process job
        return 0
    if res.table is None or sc.shape[1] * sc.shape[2] > 1:
        print(format_summary(res.summary))
    else:
        print(format_table(res.table, sc, res.summary))
    print(f"results: {res.results_path}")
    print(f"summary: {res.summary_path}")
    return 0


def _distributed(args) -> None:
    """``--distributed``: joins the multi-process JAX job, before anything touches a device."""
    given = {
        k: getattr(args, k, None)
        for k in ("coordinator", "num_processes", "process_id")
        if getattr(args, k, None) is not None
    }
    if not getattr(args, "distributed", False):
        if given:
            flag = "--" + next(iter(given)).replace("_", "-")
            raise InputError(f"{flag}: needs --distributed")
        return
    if getattr(args, "preset", None) is not None:
        raise InputError("--distributed: not with --preset (the serving sweep runs in one process)")
    n, i = given.get("num_processes"), given.get("process_id")
    if n is not None and n < 1:
        raise InputError(f"--num-processes = {n}: must be an integer >= 1")
    if i is not None and (i < 0 or (n is not None and i >= n)):
        raise InputError(f"--process-id = {i}: must be an integer in 0 .. --num-processes - 1")
    import jax

    try:
        jax.distributed.initialize(
            coordinator_address=given.get("coordinator"), num_processes=n, process_id=i
        )
    except (RuntimeError, ValueError) as e:
        raise InputError(f"--distributed: jax.distributed.initialize failed: {e}") from None


def format_table(table, scenario, summary: dict | None = None) -> str:
    """A readable text table of a sweep: one block per topology × policy, one row per load.

    Args:
      table: the results (``pyarrow.Table`` with :data:`poa_jax.sweep.COLUMNS`).
      scenario: the :class:`~poa_jax.scenario.Scenario` it came from.
      summary: optional ``summary.json`` contents (adds a timing/device line).

    Returns:
      The table as a string.
    """
    cols = table.to_pydict()
    n = table.num_rows
    t_n, _, _, u_n, p_n = scenario.shape
    starts = scenario.solver.starts
    lines = [
        f"scenario {scenario.name}: {n} points = {t_n} topologies x {u_n} loads x {p_n} "
        f"policies, {scenario.solver.dtype}, {starts} starts"
    ]
    if scenario.description:
        lines.append(f"  {scenario.description}")
    head = f"  {'util':>5}  {'PoA':>8}  {'PoS':>8}  {'eq ms':>9}  {'opt ms':>9}  {'conv':>5}  flags"
    best = []
    from poa_jax.sweep import groups  # imports JAX; kept out of argument parsing

    for t, label, rows in groups(scenario, cols):
        if rows:
            workers = f"{t.workers} worker{'s' if t.workers != 1 else ''}"
            lines += ["", f"{t.name} ({workers}) · {label}", head]
            for i in rows:
                flags = []
                if cols["overloaded"][i]:
                    flags.append("overloaded")
                if not cols["converged"][i]:
                    bad = [
                        f"{w} {cols[f'{w}_status'][i]}"
                        for w in ("eq", "opt")
                        if cols[f"{w}_status"][i] != "converged"
                    ]
                    flags.append("NOT CONVERGED" + (f" ({', '.join(bad)})" if bad else ""))
                lines.append(
                    f"  {cols['utilisation'][i]:5.2f}  {_num(cols['poa'][i], 8, 4)}  "
                    f"{_num(cols['price_of_stability'][i], 8, 4)}  "
                    f"{_num(cols['eq_mean_latency'][i], 9, 1)}  "
                    f"{_num(cols['opt_mean_latency'][i], 9, 1)}  "
                    f"{cols['converged_starts'][i]:>2}/{starts:<2}  {', '.join(flags)}".rstrip()
                )
            k = max(rows, key=lambda i: cols["poa"][i] if math.isfinite(cols["poa"][i]) else -1.0)
            conv = sum(bool(cols["converged"][i]) for i in rows) / len(rows)
            best.append((t.name, label, cols["poa"][k], cols["utilisation"][k], conv))
    lines += ["", "max PoA per topology and policy:"]
    width = max(len(f"{a} · {b}") for a, b, *_ in best)
    for topo, label, poa, util, conv in best:
        lines.append(
            f"  {f'{topo} · {label}':<{width}}  {_num(poa, 8, 4)} at util {util:.2f}"
            f"   converged {conv:.0%}"
        )
    lines += [
        "",
        "PoA = SC(worst equilibrium) / SC(optimum); PoS = SC(best equilibrium) / SC(optimum);",
        "eq/opt ms = mean latency per request; conv = equilibrium starts that converged.",
    ]
    if summary is not None:
        lines.append(_timing_line(summary))
    return "\n".join(lines)


def format_summary(summary: dict) -> str:
    """A text table from ``summary.json`` alone: for sweeps too large to print row by row.

    One block per topology × policy, one row per load point: PoA, price of stability and the
    latencies averaged over workload variants and seeds, the largest PoA among them, and the
    converged share.
    """
    sh = summary["shape"]
    lines = [
        f"scenario {summary['scenario']}: {summary['points']} points = "
        + " x ".join(f"{v} {k}" for k, v in sh.items())
        + f", {summary['solver']['dtype']}, {summary['solver']['starts']} starts"
    ]
    if summary.get("description"):
        lines.append(f"  {summary['description']}")
    util = summary["utilisation"]
    head = f"  {'util':>5}  {'PoA':>8}  {'PoA max':>8}  {'PoS':>8}  {'eq ms':>9}  {'opt ms':>9}"
    for g in summary["per_topology_policy"]:
        s = "s" if g["workers"] != 1 else ""
        title = f"{g['topology']} ({g['workers']} worker{s}) · {g['policy']}"
        conv = g.get("converged_share_per_load")
        if conv is None:  # one point per load (no replicates): only the curve's share is kept
            conv = [None] * len(util)
            title += f" · converged {g['converged_share']:.0%}"
        lines += ["", title, head + ("  conv" if any(c is not None for c in conv) else "")]
        mx = g.get("poa_max_over_replicates", g["poa"])
        for m, u in enumerate(util):
            c = "" if conv[m] is None else f"{conv[m]:4.0%}"
            lines.append(
                f"  {u:5.2f}  {_num(g['poa'][m], 8, 4)}  {_num(mx[m], 8, 4)}  "
                f"{_num(g['price_of_stability'][m], 8, 4)}  {_num(g['eq_mean_latency'][m], 9, 1)}  "
                f"{_num(g['opt_mean_latency'][m], 9, 1)}  {c}".rstrip()
            )
    lines += [
        "",
        "PoA, PoS, eq/opt ms: means over workload variants and seeds; PoA max: the largest.",
        _timing_line(summary),
    ]
    return "\n".join(lines)


def _timing_line(summary: dict) -> str:
    conv = summary["converged_share"]
    wt = summary["wall_time_s"]
    dev = summary["device"]
    first = "" if wt["first_call"] is None else f", first call {wt['first_call']:.1f} s"
    kind = "" if dev["device_kind"] == dev["platform"] else " " + dev["device_kind"]
    count = f" x{dev['count']}" if dev.get("count", 1) > 1 else ""
    procs = f", {dev['processes']} processes" if dev.get("processes", 1) > 1 else ""
    return (
        f"converged {conv:.1%} of points; wall time {wt['total']:.1f} s{first} "
        f"({wt['parts_computed']} parts computed, {wt['parts_reused']} reused) on "
        f"{dev['platform']}{kind}{count}{procs}, jax {summary['jax_version']}"
    )


def _num(v, width: int, digits: int) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return f"{'nan':>{width}}"
    if abs(v) >= 10 ** (width - digits - 2):
        return f"{v:>{width}.3g}"
    return f"{v:>{width}.{digits}f}"


# --------------------------------------------------------------------------- bench


def _cmd_bench(args) -> int:
    try:
        batches = [int(x) for x in args.batch.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--batch = {args.batch!r}: must be comma-separated integers") from None
    if not batches or min(batches) < 1:
        raise InputError(f"--batch = {args.batch!r}: batch sizes must be >= 1")
    if not (math.isfinite(args.tol) and args.tol > 0):
        raise InputError(f"--tol = {args.tol}: must be finite and > 0")
    for flag in ("max_iters", "repeats", "chunk", "round_iters"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise InputError(f"--{flag.replace('_', '-')} = {getattr(args, flag)}: must be >= 1")
    if args.json:  # refused now, not after the whole benchmark has run
        folder = os.path.dirname(os.path.abspath(args.json))
        if os.path.isdir(args.json) or not os.path.isdir(folder):
            raise InputError(f"--json = {args.json!r}: must name a file in an existing folder")
    _use_dtype(args.dtype)
    from poa_jax import bench

    rows = bench.run(
        batches, dtype=args.dtype, tol=args.tol, max_iters=args.max_iters,
        repeats=args.repeats, progress=lambda m: print(f"{PROG}: {m}", file=sys.stderr),
        chunk=args.chunk, round_iters=args.round_iters,
    )  # fmt: skip
    print(bench.format_rows(rows))
    if args.json:
        import dataclasses

        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([dataclasses.asdict(r) for r in rows], f, indent=1)
    return 0


# --------------------------------------------------------------------------- solve

_GAME_KEYS = {
    "demand", "latency", "tokens", "shareable", "residency", "cache_size", "prefill",
    "worker_mask", "policy", "starts", "tol", "max_iters", "name", "description",
}  # fmt: skip
_LATENCY_KEYS = ("a", "b", "c", "p", "d", "kappa", "rho_max")
_ARRAY_KEYS = ("demand", "tokens", "shareable", "residency", "cache_size", "worker_mask")


def _numeric(src: str, name: str, v, allow_bool: bool, index=()) -> None:
    """A number or nested arrays of numbers (JSON strings like "1.0" are not numbers)."""
    if isinstance(v, list):
        for i, x in enumerate(v):
            _numeric(src, name, x, allow_bool, index + (i,))
        return
    ok = isinstance(v, bool) if allow_bool else False
    ok = ok or (isinstance(v, int | float) and not isinstance(v, bool))
    if not ok:
        where = f"[{', '.join(map(str, index))}]" if index else ""
        kind = "a boolean or number" if allow_bool else "a number"
        raise InputError(f"{src}: {name}{where} = {v!r}: must be {kind}, got {_jtype(v)}")


def _keys(src: str, path: str, obj, allowed, required=()) -> dict:
    if not isinstance(obj, dict):
        raise InputError(f"{src}: {path or 'game'}: must be an object, got {_jtype(obj)}")
    pre = f"{path}." if path else ""
    for k in obj:
        if k not in allowed:
            names = ", ".join(sorted(allowed))
            raise InputError(f"{src}: {pre}{k}: unknown key (allowed: {names})")
    for k in required:
        if k not in obj:
            raise InputError(f"{src}: {path or 'game'}: missing required key {k!r}")
    return obj


def _inf_strings(v):
    """``"inf"`` (and ``"Infinity"``) as ``float("inf")``, in nested lists; the rest as is."""
    if isinstance(v, list):
        return [_inf_strings(x) for x in v]
    return float("inf") if isinstance(v, str) and v in ("inf", "Infinity") else v


def _jtype(v) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(v), "null" if v is None else type(v).__name__
    )


def _int_field(src: str, name: str, v, maximum: int | None = None):
    if v is None:
        return None
    from poa_jax.validation import INT32_MAX

    top = INT32_MAX if maximum is None else maximum
    if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= top:
        raise InputError(f"{src}: {name} = {v!r}: must be an integer >= 1 (and <= {top})")
    return v


def _load_json(path: str):
    """A JSON file's value; raises :class:`InputError` naming the file and the problem."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise InputError(f"{path}: no such game file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a game file") from None
    except json.JSONDecodeError as e:
        raise InputError(
            f"{path}: invalid JSON: {e.msg} (line {e.lineno}, column {e.colno})"
        ) from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not a UTF-8 text file ({e.reason})") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    return data


def read_game(path: str, data=None):
    """Reads a routing-game JSON file: ``(RoutingGame, Policy, options)``; raises
    :class:`InputError`. ``data``: the file's parsed value, if already read."""
    from poa_jax import policies
    from poa_jax.game import RoutingGame
    from poa_jax.latency import Latency, PrefillTime
    from poa_jax.scenario import _policy_params

    data = _load_json(path) if data is None else data
    d = _keys(path, "", data, _GAME_KEYS, ("demand", "latency"))
    lat = _keys(path, "latency", d["latency"], set(_LATENCY_KEYS))
    # JSON has no infinity: the fields where inf is allowed take the string "inf", as the
    # output writes it (so an output value can be fed back).
    d = {**d, **({"cache_size": _inf_strings(d["cache_size"])} if "cache_size" in d else {})}
    if "kappa" in lat:
        lat = {**lat, "kappa": _inf_strings(lat["kappa"])}
    fields = {k: d[k] for k in _ARRAY_KEYS if k in d}
    fields.update({f"latency.{k}": v for k, v in lat.items()})
    if "prefill" in d:
        pre = _keys(path, "prefill", d["prefill"], {"a", "b", "c"})
        fields.update({f"prefill.{k}": v for k, v in pre.items()})
    for k, v in fields.items():
        _numeric(path, k, v, allow_bool=k == "worker_mask")
    kw = {k: d[k] for k in _ARRAY_KEYS if k in d and k != "demand"}
    if "prefill" in d:
        kw["prefill"] = PrefillTime(**d["prefill"])
    for k in ("name", "description"):
        if k in d and not isinstance(d[k], str):
            raise InputError(f"{path}: {k} = {d[k]!r}: must be a string")
    game = RoutingGame(demand=d["demand"], latency=Latency(**lat), **kw)

    pol_d = d.get("policy", {"name": "selfish"})
    if not isinstance(pol_d, dict):
        raise InputError(f"{path}: policy: must be an object, got {_jtype(pol_d)}")
    if "name" not in pol_d:
        raise InputError(f"{path}: policy: missing required key 'name'")
    name = pol_d["name"]
    if not isinstance(name, str) or name not in policies.NAMES:
        raise InputError(
            f"{path}: policy.name = {name!r}: unknown policy, must be one of "
            f"{', '.join(policies.NAMES)}"
        )
    params = {k: v for k, v in pol_d.items() if k != "name"}
    allowed = _policy_params(name)
    for k, v in params.items():
        if k not in allowed:
            raise InputError(
                f"{path}: policy.{k}: unknown parameter of {name} "
                f"(allowed: {', '.join(allowed) or 'none'})"
            )
        _numeric(path, f"policy.{k}", v, allow_bool=False)
    if "credits" in params:
        if not isinstance(params["credits"], list) or len(params["credits"]) != 3:
            raise InputError(f"{path}: policy.credits: must be an array of 3 numbers")
        params["credits"] = tuple(params["credits"])
    try:
        policy = policies.from_name(name, **params)
    except InputError as e:  # "dynamo.omega = -1.0: ..." names the JSON key policy.omega
        msg = str(e)
        raise InputError(f"{path}: {msg.replace(name + '.', 'policy.', 1)}") from None

    from poa_jax.validation import MAX_STARTS

    tol = d.get("tol")
    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, int | float)):
        raise InputError(f"{path}: tol = {tol!r}: must be a number > 0")
    opts = {
        "starts": _int_field(path, "starts", d.get("starts", 4), MAX_STARTS),
        "tol": tol,
        "max_iters": _int_field(path, "max_iters", d.get("max_iters")),
    }
    return game, policy, opts


def _jsonable(a, single: bool = False):
    """NumPy results as JSON values: scalars for 0-d, nested lists otherwise; NaN → null,
    ±inf → "inf" / "-inf".

    With ``single`` (a float32 solve) floats are written with float32's shortest repr.
    """
    a = np.asarray(a)
    if single and a.dtype.kind == "f":
        a = a.astype(np.float32)
    if a.dtype == np.float32:
        # Shortest repr of each float32 (1.3333334, not 1.3333333730697632).
        flat = [float(str(np.float32(x))) for x in a.ravel()]
        return _nan_to_none(np.array(flat, dtype=object).reshape(a.shape).tolist())
    if a.dtype.kind == "f":
        return _nan_to_none(a.astype(np.float64).tolist())
    return a.tolist()


def _nan_to_none(obj):
    """NaN → null and ±inf → the strings "inf" / "-inf": JSON has no non-finite numbers."""
    if isinstance(obj, list):
        return [_nan_to_none(x) for x in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def _cmd_solve(args) -> int:
    from poa_jax.poa import price_of_anarchy
    from poa_jax.sweep import STATUS

    _use_dtype(args.dtype)
    data = _load_json(args.game)
    single = args.dtype == "float32"
    if isinstance(data, dict) and "game" in data:  # a caching game (poa_jax.cache_io)
        from poa_jax import cache_io

        game, opts = cache_io.read(args.game, data)
        res = cache_io.solve(args.game, game, opts, args.dtype)
        _print_json(cache_io.report(res, single), args.dtype)
        return 0
    game, policy, opts = read_game(args.game, data)
    try:
        res = price_of_anarchy(game, policy, dtype=args.dtype, **opts)
    except InputError as e:
        # Library messages name RoutingGame fields; the JSON keys are the same without it.
        raise InputError(f"{args.game}: {str(e).replace('RoutingGame.', '')}") from None
    names = np.vectorize(lambda c: STATUS.get(int(c), str(c)), otypes=[object])
    eq, opt = res.equilibrium, res.optimum
    out = {
        "poa": _jsonable(res.poa, single),
        "price_of_stability": _jsonable(res.price_of_stability, single),
        "equilibrium_cost": _jsonable(eq.social_cost, single),
        "optimum_cost": _jsonable(opt.social_cost, single),
        "equilibrium_mean_latency": _jsonable(eq.mean_latency, single),
        "optimum_mean_latency": _jsonable(opt.mean_latency, single),
        "flows": _jsonable(eq.flows, single),
        "optimum_flows": _jsonable(opt.flows, single),
        "gap": _jsonable(eq.gap, single),
        "optimum_gap": _jsonable(opt.gap, single),
        "iterations": _jsonable(eq.iterations, single),
        "optimum_iterations": _jsonable(opt.iterations, single),
        "converged": _jsonable(res.converged, single),
        "status": names(np.asarray(eq.status)).tolist(),
        "optimum_status": names(np.asarray(opt.status)).tolist(),
        "converged_starts": _jsonable(res.converged_starts, single),
        "overloaded": _jsonable(eq.overloaded, single),
    }
    _print_json(out, args.dtype)
    return 0


def _print_json(out: dict, dtype: str) -> None:
    """One key per line, each value compact (flows stay readable as nested lists)."""
    out = {**out, "dtype": dtype}
    body = ",\n".join(
        f"  {json.dumps(k)}: {json.dumps(v, allow_nan=False)}" for k, v in out.items()
    )
    print("{\n" + body + "\n}")


def console() -> int:
    """The ``poa-jax`` program: one JAX CPU device per core (:func:`poa_jax.batching.
    use_cpu_devices`; ``POA_JAX_CPU_DEVICES=1`` keeps one), then :func:`main`. In-process
    callers of :func:`main` keep whatever devices their process has."""
    try:
        from poa_jax import batching

        batching.use_cpu_devices()
    except InputError as e:
        return _fail(str(e), 2)
    return main()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(console())
