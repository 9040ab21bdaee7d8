r"""Per-instance traffic-assignment reference: AequilibraE's bi-conjugate Frank–Wolfe ("bfw").

What it does
------------
Solves the user equilibrium (UE) of demand-scaled copies of a TNTP network (SiouxFalls by default
in the benchmarks) **one instance at a time** with AequilibraE, as the sequential baseline that the
batched JAX solver in poa_jax is compared with. For every demand scale ``s`` the demand matrix is
``s × (TNTP trips matrix)``, the link costs are TNTP's BPR ``t = fft·(1 + b·(f/cap)^power)``
(AequilibraE's ``"BPR"`` VDF with ``alpha = b``, ``beta = power`` per link), and AequilibraE runs
``bfw`` until its relative gap ≤ ``--rgap`` or ``--max-iter`` iterations.

Per instance it records the wall time of ``TrafficAssignment.execute()`` alone (``seconds``), the
time including the per-instance objects (TrafficClass / TrafficAssignment / matrix fill,
``seconds_with_setup``), AequilibraE's iteration count and final relative gap (``gap``: its own
convention, ``|Σ f·t − Σ AON·t| / Σ f·t`` with ``t`` the costs *before* the last step, i.e. lagged
one iteration), an independently recomputed gap at the returned flows (``gap_true``: costs at the
final flows, shortest paths by SciPy's Dijkstra), the total system travel time ``tstt = Σ f·t(f)``,
the Beckmann objective ``Σ_e ∫_0^{f_e} t_e`` (closed form of BPR, computed here from the flows, not
by AequilibraE) and optionally the link flows (in TNTP link order). One-time network parsing and
graph building is timed separately (``setup_seconds``).

No import of poa_jax or JAX: this runs in a separate benchmark-only venv.

Install (benchmark-only venv, does not touch the project's ``.venv``)::

    python3 -m venv /work/main/.venv-bench
    /work/main/.venv-bench/bin/pip install aequilibrae numpy pandas     # aequilibrae 1.7.2

(``scipy`` comes in as a dependency of aequilibrae; it is used here for ``gap_true`` only.)

Run::

    .venv-bench/bin/python benchmarks/aequilibrae_reference.py \
        --net /work/shared/data/tntp/SiouxFalls/SiouxFalls_net.tntp \
        --trips /work/shared/data/tntp/SiouxFalls/SiouxFalls_trips.tntp \
        --num 20 --lo 0.5 --hi 1.5 --seed 0 --rgap 1e-6 --max-iter 5000 --json out/aeq.json

    # the correctness check (scale 1.0) alone, with flows
    .venv-bench/bin/python benchmarks/aequilibrae_reference.py --net ... --trips ... \
        --scales 1.0 --rgap 1e-6 --max-iter 5000 --json out/aeq_1.json --flows

When a scale is exactly 1.0 its Beckmann objective is checked against the published value
(≤ 1e-5 relative) and its link flows against ``*_flow.tntp`` beside ``--net`` (≤ 1e-3 relative
on every link with flow); the results are printed and stored under ``checks``, and the script
exits 1 if either fails (it does at ``--rgap 1e-4``: 1.5e-5 and 5.3e-3).

Scales come from ``--scales a,b,c``, ``--scales-file F.npy`` (1-D array) or ``--num N --lo --hi
--seed S``, which draws ``numpy.random.default_rng(S).uniform(lo, hi, N)``.

AequilibraE settings
--------------------
* No project / sqlite: the graph is built from a pandas DataFrame of links
  (``Graph.network = df; Graph.prepare_graph(centroids)``), the demand is an in-memory
  ``AequilibraeMatrix``. AequilibraE writes nothing to disk for this (no path files).
* Centroids = zones ``1..Z``. TNTP's ``<FIRST THRU NODE>`` says which zones may be passed
  through: SiouxFalls has ``1`` (every node, zones included, is a through node), so
  ``set_blocked_centroid_flows(False)``. With ``FIRST THRU NODE = Z + 1`` the zones are blocked
  (``True``). AequilibraE can only block all centroids or none; other values raise.
* ``set_vdf("BPR")``, ``set_vdf_parameters({"alpha": "b", "beta": "power"})`` (per link),
  ``set_capacity_field("capacity")``, ``set_time_field("free_flow_time")``,
  ``set_algorithm("bfw")``, ``rgap_target = --rgap``, ``max_iter = --max-iter``,
  ``steps_below_needed_to_terminate = 1`` (AequilibraE's default).
* Threads: ``--cores 1`` (default) calls ``set_cores(1)``; ``--cores 0`` leaves AequilibraE's
  default (parameters.yml ``system.cpus: 0`` = all CPUs). ``meta.threads`` records which.
* A fresh TrafficClass / TrafficAssignment is made per instance (the algorithm object keeps
  iteration state between ``execute()`` calls); the Graph is built once and shared.
* Progress bars off (``AEQ_SHOW_PROGRESS=FALSE``, set by the script unless already in the
  environment; AequilibraE's tests do the same): with them on, tqdm redraws on stderr several
  times per iteration. The "aequilibrae" logger is set to WARNING (one INFO line per iteration).

Measured (2026-11-27, 2-core CPU shared with other work — load average 4.4–6.9 during the runs, so
expect ±30 % noise — Python 3.11.7, aequilibrae 1.7.2, numpy 2.4, SiouxFalls, rgap target 1e-6,
max-iter 5000)
-------------------------------------------------------------------------------------------------

==========================  =====================  ===============================
run                          set_cores(1)           AequilibraE default (2 threads)
==========================  =====================  ===============================
scale 1.0 alone              7.63 s, 976 it         66.4 s, 976 it
20 scales U(0.5,1.5), seed 0 mean 6.64 s,           mean 30.6 s, median 27.1 s,
                             median 6.05 s,         max 71.2 s; 0.033 inst/s
                             max 12.1 s;
                             0.151 inst/s
iterations (20 scales)       median 592, mean 694, min 206, max 1468 (same for both)
time per iteration           7.8–9.6 ms             44–68 ms
==========================  =====================  ===============================

* All 20 (and scale 1.0) reach AequilibraE's rgap ≤ 1e-6 (reported 7.9e-7 … 9.9e-7), well inside
  max-iter. The gap recomputed at the returned flows (``gap_true``) is 0.85e-6 … 2.2e-6: AequilibraE
  tests a gap lagged by one iteration, so "rgap 1e-6" there is ≈ 2e-6 at the final flows.
* Scale 1.0 check: Beckmann 4 231 335.784 vs published 4 231 335.28710744 (rel. err 1.2e-7);
  link flows vs SiouxFalls_flow.tntp max rel. err 2.4e-4 (link 18→16), median 1.2e-5; TSTT
  7 480 016 vs 7 480 225 of the published flows (2.8e-5). (Our BPR/Beckmann code gives exactly
  4 231 335.28710744 and 7 480 225.34 on the published flows, gap 1e-16.)
* One-time setup (parse TNTP + build Graph): 0.04–0.12 s. Per-instance object building adds < 5 ms.
* Where the time goes (cProfile, 1 thread): about 90 % of ``execute()`` is the all-or-nothing
  step, which creates and joins a ``multiprocessing.pool.ThreadPool`` every iteration even with
  1 core (an empty 1-thread pool with 24 tasks costs ≈ 2 ms here, ≈ 25 % of an iteration); the
  line search and BFW direction are < 10 %. With 2 threads on this busy 2-core machine an
  iteration costs 5–7× more, so single thread is the baseline to quote here.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

# Published SiouxFalls UE Beckmann objective (Σ_e ∫ t_e) and the default flow file name.
SIOUXFALLS_BECKMANN = 4231335.28710744


# ---------------------------------------------------------------------------------------------
# TNTP parsing (independent of poa_jax's reader)
# ---------------------------------------------------------------------------------------------


def _metadata(lines: list[str]) -> tuple[dict[str, str], int]:
    meta, i = {}, 0
    for i, line in enumerate(lines):
        s = line.strip()
        if s.startswith("<END OF METADATA>"):
            return meta, i + 1
        if s.startswith("<") and ">" in s:
            key, val = s[1:].split(">", 1)
            meta[key.strip().upper()] = val.strip()
    return meta, 0


def read_net(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """Links of a TNTP ``_net.tntp`` file, in file order, and its metadata."""
    lines = Path(path).read_text().splitlines()
    meta, start = _metadata(lines)
    rows = []
    for line in lines[start:]:
        s = line.strip()
        if not s or s.startswith("~"):
            continue
        parts = s.rstrip(";").split()
        rows.append([float(x) for x in parts[:10]])
    a = np.asarray(rows)
    df = pd.DataFrame(
        {
            "init_node": a[:, 0].astype(np.int64),
            "term_node": a[:, 1].astype(np.int64),
            "capacity": a[:, 2],
            "length": a[:, 3],
            "free_flow_time": a[:, 4],
            "b": a[:, 5],
            "power": a[:, 6],
        }
    )
    info = {
        "zones": int(meta["NUMBER OF ZONES"]),
        "nodes": int(meta["NUMBER OF NODES"]),
        "first_thru_node": int(meta.get("FIRST THRU NODE", "1")),
        "links": int(meta["NUMBER OF LINKS"]),
    }
    if len(df) != info["links"]:
        raise ValueError(f"{path}: {len(df)} links read, header says {info['links']}")
    return df, info


def read_trips(path: str | Path) -> np.ndarray:
    """Dense ``(Z, Z)`` OD matrix of a TNTP ``_trips.tntp`` file (zone ``i`` at row ``i-1``)."""
    lines = Path(path).read_text().splitlines()
    meta, start = _metadata(lines)
    z = int(meta["NUMBER OF ZONES"])
    od = np.zeros((z, z))
    origin = None
    for line in lines[start:]:
        s = line.strip()
        if not s or s.startswith("~"):
            continue
        if s.lower().startswith("origin"):
            origin = int(s.split()[1])
            continue
        for item in s.split(";"):
            if ":" in item:
                d, v = item.split(":")
                od[origin - 1, int(d) - 1] = float(v)
    return od


def read_flow(path: str | Path) -> pd.DataFrame:
    """``From To Volume Cost`` of a TNTP ``_flow.tntp`` file."""
    rows = []
    for line in Path(path).read_text().splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 3:
            rows.append((int(parts[0]), int(parts[1]), float(parts[2])))
    return pd.DataFrame(rows, columns=["init_node", "term_node", "volume"])


# ---------------------------------------------------------------------------------------------
# Model quantities computed here, not by AequilibraE
# ---------------------------------------------------------------------------------------------


def bpr_time(links: pd.DataFrame, f: np.ndarray) -> np.ndarray:
    cap, p = links["capacity"].to_numpy(), links["power"].to_numpy()
    return links["free_flow_time"].to_numpy() * (1.0 + links["b"].to_numpy() * (f / cap) ** p)


def beckmann(links: pd.DataFrame, f: np.ndarray) -> float:
    """Σ_e ∫_0^{f_e} fft (1 + b (x/cap)^p) dx = Σ fft (f + b cap/(p+1) (f/cap)^(p+1))."""
    fft, b = links["free_flow_time"].to_numpy(), links["b"].to_numpy()
    cap, p = links["capacity"].to_numpy(), links["power"].to_numpy()
    return float(np.sum(fft * (f + b * cap / (p + 1.0) * (f / cap) ** (p + 1.0))))


def true_relative_gap(
    links: pd.DataFrame, info: dict, od: np.ndarray, f: np.ndarray
) -> float | None:
    """(Σ f t(f) − Σ_od d_od·dist_od(t(f))) / Σ f t(f), by SciPy Dijkstra.

    Only when every node may be passed through (FIRST THRU NODE ≤ 1); ``None`` otherwise."""
    if info["first_thru_node"] > 1:
        return None
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import dijkstra

    t = bpr_time(links, f)
    n = info["nodes"]
    i = links["init_node"].to_numpy() - 1
    j = links["term_node"].to_numpy() - 1
    # parallel links: keep the cheapest (csr_matrix would sum duplicates)
    order = np.lexsort((t, j, i))
    keep = np.ones(len(order), bool)
    keep[1:] = (i[order][1:] != i[order][:-1]) | (j[order][1:] != j[order][:-1])
    o = order[keep]
    g = csr_matrix((t[o], (i[o], j[o])), shape=(n, n))
    z = od.shape[0]
    dist = dijkstra(g, directed=True, indices=np.arange(z))[:, :z]
    tstt = float(np.sum(f * t))
    sptt = float(np.sum(np.where(od > 0, od * dist, 0.0)))
    return (tstt - sptt) / tstt


# ---------------------------------------------------------------------------------------------
# AequilibraE
# ---------------------------------------------------------------------------------------------


def build_graph(links: pd.DataFrame, info: dict):
    """AequilibraE Graph of the TNTP links (one directed AequilibraE link per TNTP link)."""
    from aequilibrae.paths import Graph

    net = pd.DataFrame(
        {
            "link_id": np.arange(1, len(links) + 1, dtype=np.int64),
            "a_node": links["init_node"].to_numpy(),
            "b_node": links["term_node"].to_numpy(),
            "direction": np.ones(len(links), dtype=np.int8),
            "free_flow_time": links["free_flow_time"].to_numpy(),
            "capacity": links["capacity"].to_numpy(),
            "b": links["b"].to_numpy(),
            "power": links["power"].to_numpy(),
        }
    )
    net["id"] = net["link_id"]
    z, ftn = info["zones"], info["first_thru_node"]
    if ftn <= 1:
        block = False
    elif ftn == z + 1:
        block = True
    else:
        raise ValueError(
            f"FIRST THRU NODE = {ftn} with {z} zones: AequilibraE blocks all centroids or none"
        )
    g = Graph()
    g.network = net
    g.prepare_graph(np.arange(1, z + 1, dtype=np.int64))
    g.set_graph("free_flow_time")
    g.set_skimming([])
    g.set_blocked_centroid_flows(block)
    # graph row -> TNTP link index, and the AequilibraE flow-vector index of each graph row
    link_index = g.graph["link_id"].to_numpy() - 1
    supernet = g.graph["__supernet_id__"].to_numpy()
    return g, link_index, supernet, block


def solve_one(g, link_index, supernet, od: np.ndarray, scale: float, args) -> dict:
    from aequilibrae.matrix import AequilibraeMatrix
    from aequilibrae.paths import TrafficAssignment, TrafficClass

    t0 = time.perf_counter()
    z = od.shape[0]
    mat = AequilibraeMatrix()
    mat.create_empty(zones=z, matrix_names=["demand"], memory_only=True)
    mat.index[:] = np.arange(1, z + 1)
    mat.matrices[:, :, 0] = scale * od
    mat.computational_view(["demand"])

    tc = TrafficClass("car", g, mat)
    ta = TrafficAssignment()
    ta.set_classes([tc])
    ta.set_vdf("BPR")
    ta.set_vdf_parameters({"alpha": "b", "beta": "power"})
    ta.set_capacity_field("capacity")
    ta.set_time_field("free_flow_time")
    if args.cores != 0:
        ta.set_cores(args.cores)
    ta.set_algorithm(args.algorithm)
    ta.max_iter = int(args.max_iter)
    ta.rgap_target = float(args.rgap)
    t1 = time.perf_counter()
    ta.execute(log_specification=False)
    t2 = time.perf_counter()

    la = ta.assignment
    flows = np.zeros(len(link_index))
    flows[link_index] = la.fw_total_flow[supernet]
    return {
        "scale": float(scale),
        "seconds": t2 - t1,
        "seconds_with_setup": t2 - t0,
        "iterations": int(la.iter),
        "gap": float(la.rgap),
        "converged": bool(la.rgap <= args.rgap),
        "cores": int(ta.cores),
        "_flows": flows,
    }


def parse_scales(args) -> np.ndarray:
    if args.scales:
        return np.array([float(x) for x in args.scales.split(",") if x.strip()])
    if args.scales_file:
        return np.asarray(np.load(args.scales_file), dtype=np.float64).ravel()
    if args.num:
        return np.random.default_rng(args.seed).uniform(args.lo, args.hi, args.num)
    raise SystemExit("give --scales, --scales-file or --num")


def check_scale_one(links, rec, flows, args) -> dict:
    """Beckmann vs the published value and link flows vs the TNTP flow file, at scale 1.0."""
    out = {"beckmann_ref": args.beckmann_ref}
    if args.beckmann_ref:
        rel = abs(rec["beckmann"] - args.beckmann_ref) / args.beckmann_ref
        out.update(beckmann_rel_err=rel, beckmann_ok=bool(rel <= 1e-5))
        print(
            f"[check] Beckmann {rec['beckmann']:.6f} vs {args.beckmann_ref:.6f}: rel err {rel:.3e} "
            f"({'OK' if rel <= 1e-5 else 'FAIL'} at 1e-5)"
        )
    flow_file = args.flow_file
    if flow_file is None:
        cand = Path(args.net).with_name(Path(args.net).name.replace("_net.tntp", "_flow.tntp"))
        flow_file = cand if cand.exists() else None
    if flow_file:
        ref = read_flow(flow_file)
        m = (
            links[["init_node", "term_node"]]
            .reset_index()
            .merge(ref, on=["init_node", "term_node"])
        )
        if len(m) != len(links):
            raise ValueError(f"{flow_file}: {len(m)} of {len(links)} links matched")
        r = m["volume"].to_numpy()
        mine = flows[m["index"].to_numpy()]
        pos = r > 0
        rel = np.abs(mine[pos] - r[pos]) / r[pos]
        worst = int(np.argmax(rel))
        out.update(
            flow_file=str(flow_file),
            flow_max_rel_err=float(rel.max()),
            flow_median_rel_err=float(np.median(rel)),
            flow_ok=bool(rel.max() <= 1e-3),
        )
        wl = m[pos].iloc[worst]
        print(
            f"[check] link flows vs {Path(flow_file).name}: max rel err {rel.max():.3e} "
            f"(link {int(wl.init_node)}->{int(wl.term_node)}), median {np.median(rel):.3e} "
            f"({'OK' if rel.max() <= 1e-3 else 'FAIL'} at 1e-3)"
        )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--net", required=True)
    ap.add_argument("--trips", required=True)
    ap.add_argument("--scales", help="comma-separated demand scales")
    ap.add_argument("--scales-file", help=".npy with a 1-D array of scales")
    ap.add_argument("--num", type=int, help="draw NUM scales ~ U(lo, hi) with default_rng(seed)")
    ap.add_argument("--lo", type=float, default=0.5)
    ap.add_argument("--hi", type=float, default=1.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rgap", type=float, default=1e-6)
    ap.add_argument("--max-iter", type=int, default=5000)
    ap.add_argument("--algorithm", default="bfw")
    ap.add_argument(
        "--cores", type=int, default=1, help="set_cores(N); 0 = AequilibraE default (all CPUs)"
    )
    ap.add_argument("--json", required=True, help="output JSON path")
    ap.add_argument("--flows", action="store_true", help="store link flows per instance")
    ap.add_argument(
        "--flow-file", help="TNTP _flow.tntp for the scale-1.0 check (default: beside --net)"
    )
    ap.add_argument(
        "--beckmann-ref",
        type=float,
        default=None,
        help=f"published UE Beckmann objective at scale 1.0 (SiouxFalls: {SIOUXFALLS_BECKMANN})",
    )
    args = ap.parse_args(argv)
    if args.beckmann_ref is None and "siouxfalls" in Path(args.net).name.lower():
        args.beckmann_ref = SIOUXFALLS_BECKMANN

    # AequilibraE draws tqdm progress bars (redrawn several times per iteration) unless told not
    # to; they cost real time per iteration, so they are off, as in AequilibraE's own tests.
    os.environ.setdefault("AEQ_SHOW_PROGRESS", "FALSE")
    import aequilibrae

    logging.getLogger("aequilibrae").setLevel(logging.WARNING)
    scales = parse_scales(args)
    load_start = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="aeq_ref_") as tmp:
        # Anything AequilibraE might write (it should write nothing here) goes to a temp dir.
        os.environ["TMPDIR"] = tmp
        tempfile.tempdir = tmp

        t0 = time.perf_counter()
        links, info = read_net(args.net)
        od = read_trips(args.trips)
        if od.shape[0] != info["zones"]:
            raise ValueError(f"trips has {od.shape[0]} zones, net says {info['zones']}")
        g, link_index, supernet, block = build_graph(links, info)
        setup_seconds = time.perf_counter() - t0

        instances, checks = [], None
        for k, s in enumerate(scales):
            rec = solve_one(g, link_index, supernet, od, float(s), args)
            f = rec.pop("_flows")
            rec["tstt"] = float(np.sum(f * bpr_time(links, f)))
            rec["beckmann"] = beckmann(links, f)
            rec["gap_true"] = true_relative_gap(links, info, s * od, f)
            if args.flows:
                rec["flows"] = f.tolist()
            instances.append(rec)
            print(
                f"[{k + 1}/{len(scales)}] scale {s:.4f}: {rec['seconds']:.3f} s, "
                f"{rec['iterations']} it, "
                f"gap {rec['gap']:.2e} (true {rec['gap_true']:.2e}), TSTT {rec['tstt']:.1f}, "
                f"Beckmann {rec['beckmann']:.3f}",
                flush=True,
            )
            if abs(s - 1.0) < 1e-12 and checks is None:
                checks = check_scale_one(links, rec, f, args)
        tempfile.tempdir = None

    secs = np.array([r["seconds"] for r in instances])
    its = np.array([r["iterations"] for r in instances])
    gaps = np.array([r["gap"] for r in instances])
    summary = {
        "n": len(instances),
        "seconds_mean": float(secs.mean()),
        "seconds_median": float(np.median(secs)),
        "seconds_max": float(secs.max()),
        "seconds_total": float(secs.sum()),
        "instances_per_s": float(len(secs) / secs.sum()),
        "iterations_median": float(np.median(its)),
        "iterations_max": int(its.max()),
        "gap_max": float(gaps.max()),
        "gap_true_max": max(
            (r["gap_true"] for r in instances if r["gap_true"] is not None), default=None
        ),
        "share_converged": float(np.mean([r["converged"] for r in instances])),
    }
    meta = {
        "aequilibrae": getattr(aequilibrae, "version", "?"),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "loadavg_start": list(load_start),
        "loadavg_end": list(os.getloadavg()),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "rgap": args.rgap,
        "max_iter": args.max_iter,
        "algorithm": args.algorithm,
        "threads": instances[0]["cores"] if instances else None,
        "progress_bars": os.environ.get("AEQ_SHOW_PROGRESS"),
        "threads_setting": (
            f"set_cores({args.cores})" if args.cores else "aequilibrae default (all CPUs)"
        ),
        "blocked_centroid_flows": block,
        "net": str(args.net),
        "trips": str(args.trips),
        "gap_definition": "AequilibraE's |sum f*t - sum AON*t|/sum f*t, t lagged one iteration; "
        "gap_true: recomputed at the final flows",
    }
    out = {"meta": meta, "setup_seconds": setup_seconds, "summary": summary, "instances": instances}
    if checks is not None:
        out["checks"] = checks
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    sm = summary
    print(
        f"setup {setup_seconds:.3f} s; {sm['n']} instances: mean {sm['seconds_mean']:.3f} s, "
        f"median {sm['seconds_median']:.3f} s, max {sm['seconds_max']:.3f} s, "
        f"{sm['instances_per_s']:.2f} inst/s; iterations median {sm['iterations_median']:.0f} "
        f"max {sm['iterations_max']}; max gap {sm['gap_max']:.2e}; "
        f"converged {sm['share_converged']:.0%}"
    )
    if checks is not None and not (checks.get("beckmann_ok", True) and checks.get("flow_ok", True)):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
