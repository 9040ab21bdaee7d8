"""The ``poa-jax`` command line end to end: sweeps, resuming, ``solve``, and bad input.

Compile time dominates, so the sweep tests share one tiny scenario (2 topologies × 3 loads × 2
policies, 2 starts, chunks of 8 points: one full and one padded part) solved once per module;
the reruns reuse its executables. One test runs the real default scenario, and one runs the
installed console script in a subprocess.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pyarrow.parquet as pq
import pytest
from poa_jax.kernels import loop

import poa_jax as pj
from poa_jax import cli, sweep
from poa_jax import scenario as S
from tests.scenarios import TINY

ROOT = pathlib.Path(__file__).resolve().parents[1]
GAME = ROOT / "examples" / "game.json"
PIGOU = 4.0 / 3.0

CHUNK = "8"  # 12 points: parts of 8 and 4 (padded to 8)


class Run(collections.namedtuple("Run", "rc out err")):
    """Exit status and captured output of one ``cli.main`` call."""


def run(*argv) -> Run:
    """``cli.main(argv)`` in process, capturing stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main([str(a) for a in argv])
    return Run(rc, out.getvalue(), err.getvalue())


def _table_text(stdout: str) -> str:
    """The printed table without the timing line and the output paths (which vary)."""
    keep = [
        ln
        for ln in stdout.splitlines()
        if not ln.startswith(("converged ", "results:", "summary:"))
    ]
    return "\n".join(keep)


@pytest.fixture(scope="module")
def tiny_toml(tmp_path_factory):
    path = tmp_path_factory.mktemp("scenario") / "tiny.toml"
    path.write_text(TINY, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_run(tiny_toml, tmp_path_factory):
    """The tiny sweep, solved once, with the batch shapes handed to the solver."""
    out = tmp_path_factory.mktemp("sweep") / "tiny"
    calls = []
    solve = sweep.price_of_anarchy

    def spy(game, policy, **kw):
        tau = np.asarray(policy.tau)
        calls.append((np.shape(game.demand), np.shape(game.latency.a), int((tau > 0).sum())))
        return solve(game, policy, **kw)

    sweep.price_of_anarchy = spy
    try:
        res = run(
            "sweep", tiny_toml, "--out", out, "--chunk", CHUNK, "--part", CHUNK, "--no-progress"
        )
    finally:
        sweep.price_of_anarchy = solve
    assert res.rc == 0, res.err
    return {"out": out, "run": res, "calls": calls}


def _summary(folder) -> dict:
    return json.loads((pathlib.Path(folder) / "summary.json").read_text())


# --------------------------------------------------------------------------- sweep


def test_tiny_sweep_prints_a_table(tiny_run):
    res = tiny_run["run"]
    for text in ("scenario tiny", "1D (1 worker) · selfish", "2D (2 workers) · balanced", "PoA"):
        assert text in res.out
    assert "max PoA per topology and policy" in res.out
    assert f"results: {tiny_run['out'] / 'results.parquet'}" in res.out
    assert f"summary: {tiny_run['out'] / 'summary.json'}" in res.out
    # one row per load in each of the 4 blocks
    rows = [ln for ln in res.out.splitlines() if ln.startswith(("   0.30", "   0.70", "   1.00"))]
    assert len(rows) == 12


def test_tiny_sweep_results_table(tiny_run, tiny_toml):
    table = pq.read_table(tiny_run["out"] / "results.parquet")
    assert table.num_rows == 12
    assert table.column_names == list(sweep.COLUMNS)
    d = table.to_pydict()
    assert d["point"] == list(range(12))
    assert set(d["topology"]) == {"1D", "2D"} and set(d["policy"]) == {"selfish", "balanced"}
    assert sorted(set(d["utilisation"])) == [0.3, 0.7, 1.0]
    poa, pos = np.array(d["poa"]), np.array(d["price_of_stability"])
    assert np.all(np.isfinite(poa)) and np.all(poa >= 1.0 - 1e-6), poa
    assert np.all(pos >= 1.0 - 1e-6) and np.all(pos <= poa + 1e-9)
    assert np.all(np.array(d["opt_cost"]) <= np.array(d["eq_cost"]) * (1 + 1e-9))
    # One optimum per game: every policy of a (topology, load) is measured against it.
    opt = np.array(d["opt_cost"]).reshape(6, 2)
    assert np.all(opt[:, 0] == opt[:, 1])
    assert set(d["eq_status"]) | set(d["opt_status"]) <= set(sweep.STATUS.values())
    assert all(0 <= c <= 2 for c in d["converged_starts"])
    assert d["omega"][0] is None and d["omega"][1] == 0.0  # selfish has no ω
    # A 1-worker topology has one routing: equilibrium = optimum.
    one = [i for i in range(12) if d["topology"][i] == "1D"]
    np.testing.assert_allclose(poa[one], 1.0, atol=1e-6)
    sc = S.load_scenario(tiny_toml)
    np.testing.assert_allclose(d["demand_total"], [lb.demand_total for lb in sc.build().labels])


def test_tiny_sweep_summary(tiny_run, tiny_toml):
    s = _summary(tiny_run["out"])
    sc = S.load_scenario(tiny_toml)
    assert s["scenario"] == "tiny" and s["points"] == 12
    assert s["scenario_hash"] == sc.hash()
    assert s["shape"] == {"topologies": 2, "variants": 1, "seeds": 1, "loads": 3, "policies": 2}
    assert s["utilisation"] == [0.3, 0.7, 1.0]
    assert 0.0 <= s["converged_share"] <= 1.0
    assert s["jax_version"] == jax.__version__
    assert s["device"]["platform"] == jax.devices()[0].platform
    assert s["device"]["device_kind"] == jax.devices()[0].device_kind
    wt = s["wall_time_s"]
    assert wt["parts_computed"] == 2 and wt["parts_reused"] == 0
    assert 0 < wt["first_call"] <= wt["total"]
    per = s["per_topology_policy"]
    assert [(p["topology"], p["policy"]) for p in per] == [
        ("1D", "selfish"),
        ("1D", "balanced"),
        ("2D", "selfish"),
        ("2D", "balanced"),
    ]
    for p in per:
        assert len(p["poa"]) == 3 and p["max_poa"] == max(p["poa"])
        assert p["utilisation_at_max_poa"] == s["utilisation"][int(np.argmax(p["poa"]))]
        assert 0.0 <= p["converged_share"] <= 1.0
    manifest = json.loads((tiny_run["out"] / "parts" / "_manifest.json").read_text())
    assert manifest["scenario_hash"] == sc.hash() and manifest["parts"] == 2


def test_every_chunk_has_the_same_shape(tiny_run):
    # 12 points in chunks of 8: the last chunk (4 points) is padded to 8, so JAX sees one
    # batch shape (and one split into argmin / logit policies) and compiles once.
    assert tiny_run["calls"] == [((8, 2), (8, 2), 0)] * 2


def test_rerun_reuses_every_part(tiny_run, tiny_toml, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(tiny_run["out"], out)
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "parts").glob("part-*.parquet")}
    res = run(
        "sweep", tiny_toml, "--out", out, "--chunk", CHUNK, "--part", CHUNK
    )  # with the progress bar
    assert res.rc == 0, res.err
    assert "12/12" in res.err and "converged=" in res.err
    # Nothing solved: no speed to report (reused parts are not points per second).
    assert "reused=12" in res.err and "pt/s" not in res.err
    wt = _summary(out)["wall_time_s"]
    assert wt["parts_computed"] == 0 and wt["parts_reused"] == 2 and wt["first_call"] is None
    assert {p.name: p.stat().st_mtime_ns for p in (out / "parts").glob("part-*")} == stamps
    assert pq.read_table(out / "results.parquet").equals(
        pq.read_table(tiny_run["out"] / "results.parquet")
    )
    assert _table_text(res.out) == _table_text(tiny_run["run"].out)


def test_deleted_part_is_recomputed_alone(tiny_run, tiny_toml, tmp_path):
    out = tmp_path / "resume"
    shutil.copytree(tiny_run["out"], out)
    kept = out / "parts" / "part-000000.parquet"
    stamp = kept.stat().st_mtime_ns
    (out / "parts" / "part-000001.parquet").unlink()
    (out / "results.parquet").unlink()
    res = run("sweep", tiny_toml, "--out", out, "--chunk", CHUNK, "--part", CHUNK, "--no-progress")
    assert res.rc == 0, res.err
    wt = _summary(out)["wall_time_s"]
    assert wt["parts_computed"] == 1 and wt["parts_reused"] == 1
    assert kept.stat().st_mtime_ns == stamp
    assert (out / "parts" / "part-000001.parquet").exists()
    assert pq.read_table(out / "results.parquet").equals(
        pq.read_table(tiny_run["out"] / "results.parquet")
    )
    assert _table_text(res.out) == _table_text(tiny_run["run"].out)


def test_other_scenario_is_refused_unless_overwrite(tiny_run, tmp_path):
    out = tmp_path / "changed"
    shutil.copytree(tiny_run["out"], out)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.rglob("*")}
    other = tmp_path / "other.toml"
    other.write_text(TINY.replace("values = [0.3, 0.7, 1.0]", "values = [0.3, 0.7, 0.9]"))
    args = ("sweep", other, "--out", out, "--chunk", CHUNK, "--part", CHUNK, "--no-progress")
    res = run(*args)
    assert res.rc == 2 and res.out == ""
    assert res.err == (
        f"poa-jax: error: {out} holds parts of another scenario (load.values[2]: 1.0 there, "
        "0.9 here); pass --overwrite to discard them, or choose another --out\n"
    )
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps  # untouched

    res = run(*args, "--overwrite")
    assert res.rc == 0, res.err
    assert "discarding 2 part(s)" in res.err and "results.parquet and summary.json" in res.err
    s = _summary(out)
    assert s["wall_time_s"]["parts_computed"] == 2 and s["utilisation"] == [0.3, 0.7, 0.9]
    assert sorted(set(pq.read_table(out / "results.parquet")["utilisation"].to_pylist())) == [
        0.3,
        0.7,
        0.9,
    ]


def test_serving_sweep_folder_is_refused_unless_overwrite(tiny_run, tiny_toml, tmp_path):
    """A scenario sweep into a ``sweep --preset`` folder (no parts, a summary.json without a
    scenario hash) is refused, not silently written over the serving results."""
    out = tmp_path / "serving"
    out.mkdir()
    (out / "summary.json").write_text(json.dumps({"kind": "serving_closed_loop"}))
    (out / "results.parquet").write_bytes(b"serving results")
    args = ("sweep", tiny_toml, "--out", out, "--chunk", CHUNK, "--part", CHUNK, "--no-progress")
    res = run(*args)
    assert res.rc == 2 and res.out == ""
    assert "holds the results of a serving sweep" in res.err and "--overwrite" in res.err
    assert (out / "results.parquet").read_bytes() == b"serving results"
    assert not (out / "parts").exists()


def test_preset_sweep_refuses_a_scenario_folder_before_solving(tiny_run, tmp_path, monkeypatch):
    """``sweep --preset`` into a scenario sweep's folder would replace its results.parquet and
    summary.json: refused, as is an --out that cannot be a folder, before anything is solved."""
    from poa_jax import serving_sweep

    monkeypatch.setattr(serving_sweep, "run_serving_sweep", lambda *a, **k: pytest.fail("ran"))
    out = tmp_path / "scenario"
    shutil.copytree(tiny_run["out"], out)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.rglob("*")}
    res = run("sweep", "--preset", "llama70b-1p2d", "--concurrency", "8", "--out", out)
    assert res.rc == 2 and res.out == ""
    assert "holds a scenario sweep" in res.err and "choose another --out" in res.err
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps  # untouched
    res = run("sweep", "--preset", "llama70b-1p2d", "--out", GAME / "sub")  # a file's child
    assert res.rc == 2 and "--out = " in res.err and "cannot create the folder" in res.err


def test_summary_table_states_convergence_without_replicates(tiny_run):
    """``format_summary`` (``--no-merge``) of a sweep with one point per load: the per-load
    share is not in summary.json, so no empty ``conv`` column; the curve's share instead."""
    text = cli.format_summary(_summary(tiny_run["out"]))
    lines = text.splitlines()
    for i, ln in enumerate(lines):
        if "opt ms" in ln and ln.rstrip().endswith("conv"):
            assert lines[i + 1].rstrip().endswith("%"), text  # a conv column has values
    titles = [ln for ln in lines if " · " in ln and "worker" in ln]
    assert titles and all("converged 100%" in t for t in titles), text


def test_resume_takes_the_folders_chunk_size(tiny_run, tiny_toml, tmp_path):
    out = tmp_path / "chunked"
    shutil.copytree(tiny_run["out"], out)
    (out / "parts" / "part-000001.parquet").unlink()
    res = run("sweep", tiny_toml, "--out", out, "--chunk", "4", "--part", CHUNK, "--no-progress")
    assert res.rc == 2 and res.out == ""
    lines = res.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"poa-jax: error: --chunk = 4: {out} was started with --chunk 8 ("
    )
    assert "pass --chunk 8 (or no --chunk) to resume, --overwrite to start over" in lines[0]
    assert not (out / "parts" / "part-000001.parquet").exists()  # nothing solved

    res = run("sweep", tiny_toml, "--out", out, "--part", CHUNK, "--no-progress")
    assert res.rc == 0, res.err
    assert res.err == (
        f"poa-jax: {out} was started with --chunk 8: resuming with it (pass --chunk N "
        "--overwrite to start over with another)\n"
    )
    assert _summary(out)["chunk_points"] == 8
    assert pq.read_table(out / "results.parquet").equals(
        pq.read_table(tiny_run["out"] / "results.parquet")
    )


def test_sweep_help_explains_resuming():
    res = run("sweep", "--help")
    text = " ".join(res.out.split())
    assert res.rc == 0
    for words in (
        "--overwrite",
        "a folder holding another scenario's parts is refused",
        "the chunk size the folder was started with",
    ):
        assert words in text, words


def test_default_output_folder(tiny_run, tiny_toml, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = run("sweep", tiny_toml, "--chunk", CHUNK, "--part", CHUNK, "--no-progress")
    assert res.rc == 0, res.err
    assert (tmp_path / "out" / "tiny" / "results.parquet").exists()
    assert f"results: {os.path.join('out', 'tiny', 'results.parquet')}" in res.out


@pytest.mark.slow
def test_default_scenario_through_the_cli(tmp_path):
    t0 = time.perf_counter()
    res = run("sweep", "--out", tmp_path / "default", "--no-progress")
    elapsed = time.perf_counter() - t0
    assert res.rc == 0, res.err
    sc = S.default_scenario()
    for label in sc.policy_labels():
        assert f"1P/2D (2 workers) · {label}" in res.out
        assert f"1P/5D (5 workers) · {label}" in res.out
    table = pq.read_table(tmp_path / "default" / "results.parquet")
    assert table.num_rows == 192
    poa = np.array(table["poa"].to_pylist())
    assert np.all(np.isfinite(poa)) and np.all(poa >= 1.0 - 1e-6)
    s = _summary(tmp_path / "default")
    assert s["points"] == 192 and s["converged_share"] >= 0.9
    # Token-balancing routers overload the slower workers at high load; selfish routing not yet.
    d = table.to_pydict()
    at = {
        (d["topology"][i], d["policy"][i]): d["poa"][i]
        for i in range(192)
        if d["utilisation"][i] == 1.0
    }
    assert at[("1P/2D", "load_balanced")] > 2 * at[("1P/2D", "selfish")]
    print(f"default scenario through the CLI: {elapsed:.1f} s")


# --------------------------------------------------------------------------- solve


def test_solve_batch_in_float64(tmp_path, capsys):
    # Pigou at demand 1 and 2: PoA 4/3 and 8/7 (x + y = 2, SC = x² + y: optimum x = 1/2).
    game = json.loads(GAME.read_text())
    game["demand"] = [[1.0], [2.0]]
    path = tmp_path / "batch.json"
    path.write_text(json.dumps(game))
    rc = cli.main(["solve", str(path), "--dtype", "float64"])
    r = json.loads(capsys.readouterr().out)
    assert rc == 0
    np.testing.assert_allclose(r["poa"], [PIGOU, 8.0 / 7.0], rtol=1e-8)
    assert r["status"] == ["converged", "converged"] and r["converged"] == [True, True]
    assert np.shape(r["flows"]) == (2, 1, 2)


def test_solve_writes_an_infinite_poa_as_a_string(tmp_path, capsys):
    # Load-balanced routing on Pigou with a free link: SC(opt) = 0, SC(eq) = 1/2, PoA = inf.
    # json.dumps(allow_nan=False) raised after the whole solve (traceback, status 1).
    game = {"demand": [1.0], "latency": {"a": [1.0, 0.0], "b": [0.0, 0.0]},
            "policy": {"name": "load_balanced"}}  # fmt: skip
    path = tmp_path / "inf.json"
    path.write_text(json.dumps(game))
    rc = cli.main(["solve", str(path), "--dtype", "float64"])
    r = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert r["poa"] == "inf" and r["optimum_cost"] == 0.0
    np.testing.assert_allclose(r["equilibrium_cost"], 0.5)


def test_solve_caching_games(tmp_path, capsys):
    """The two caching examples: the star of Chun et al. (PoA 14/11 exactly, by enumeration)
    and the three-worker cache paradox (its unique equilibrium costs 6.68)."""
    rc = cli.main(["solve", str(ROOT / "examples" / "selfish_caching.json"), "--dtype", "float64"])
    r = json.loads(capsys.readouterr().out)
    assert rc == 0 and r["exact"] is True and r["equilibrium_count"] == 2
    assert r["poa"] == pytest.approx(14 / 11, rel=1e-12) and r["price_of_stability"] == 1.0
    assert r["equilibrium_costs"] == [7.0, 5.5] and r["optimum"] == [True] + [False] * 4
    rc = cli.main(["solve", str(TIERED), "--dtype", "float64"])
    r = json.loads(capsys.readouterr().out)
    assert rc == 0 and r["status"] == "converged" and r["converged"] is True
    # its 4 starts all reach the one equilibrium: listed once
    np.testing.assert_allclose(r["equilibrium_costs"], [6.68], rtol=1e-12)
    assert r["equilibrium_count"] == 1
    np.testing.assert_allclose(r["equilibrium_placement"], [[[1, 0]], [[0, 1]], [[0, 0]]])
    assert r["poa"] >= 1.0 and r["optimum_cost"] <= 6.68 and r["dtype"] == "float64"
    assert "equilibrium_shared" not in r
    # with a shared pool of one block read at 0.3 of the recompute: the pool's holding reported
    path = tmp_path / "pool.json"
    path.write_text(_tiered(shared_capacity=1.0, shared_latency=0.3))
    assert cli.main(["solve", str(path), "--dtype", "float64"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert np.sum(r["equilibrium_shared"]) == pytest.approx(1.0) and r["converged"] is True


def test_solve_coupled_game(capsys):
    """``examples/coupled.json`` gives what the Python API gives for the same game: the coupled
    fixed point, a stationary joint optimum, PoA ≥ 1."""
    path = ROOT / "examples" / "coupled.json"
    assert cli.main(["solve", str(path), "--dtype", "float64"]) == 0
    r = json.loads(capsys.readouterr().out)
    data = json.loads(path.read_text())
    rt = data["routing"]
    routing = pj.RoutingGame(
        demand=rt["demand"], tokens=rt["tokens"], shareable=rt["shareable"],
        latency=pj.Latency(**rt["latency"]), prefill=pj.PrefillTime(**rt["prefill"]),
    )  # fmt: skip
    game = pj.CoupledGame(routing, data["distance"], data["capacity"], credit=data["credit"])
    ref = pj.price_of_anarchy(game, dtype="float64", optimum_starts=4, seed=0)
    assert r["poa"] == pytest.approx(float(ref.poa), rel=1e-12) and r["poa"] > 1.05
    assert r["optimum_cost"] == pytest.approx(float(ref.optimum_cost), rel=1e-12)
    assert r["status"] == "converged" and r["optimum_status"] == "converged" and r["converged"]
    assert r["optimum_gap"] <= 1e-6 and r["dtype"] == "float64"
    np.testing.assert_allclose(r["hit"], ref.equilibrium.hit, rtol=1e-12)
    assert np.shape(r["placement"]) == (3, 2, 2) and "shared" not in r


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"starts": 2}, "starts: the coupled game computes one fixed point"),
        (
            {"routing": {"demand": [1.0], "latency": {"a": [0.0, 1.0]}, "starts": 2}},
            "routing.starts: not an option of the coupled game's file",
        ),
        (
            {
                "routing": {
                    "demand": [1.0],
                    "latency": {"a": [0.0, 1.0]},
                    "policy": {"name": "dynamo"},
                }
            },
            "routing.policy: the coupled game routes",
        ),
        ({"routing": [1.0]}, "routing: must be an object, got array"),
        ({"capacity": [[-1.0, 1.0]] * 3}, "capacity"),
        ({"damping": "x"}, "damping"),
        ({"colour": 1}, "colour: unknown key"),
    ],
)
def test_solve_coupled_game_bad_input(tmp_path, capsys, change, expected):
    data = json.loads((ROOT / "examples" / "coupled.json").read_text())
    data.update(change)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    assert cli.main(["solve", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"poa-jax: error: {path}: ") and expected in err, err
    assert "CoupledGame." not in err


def test_console_script_solves_pigou():
    # The installed entry point, once, in a subprocess: float32 Pigou, PoA 4/3 to 1e-4.
    exe = pathlib.Path(sys.executable).with_name("poa-jax")
    if not exe.exists():
        pytest.skip("console script poa-jax is not installed next to this Python")
    proc = subprocess.run(
        [str(exe), "solve", str(GAME)], capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert abs(r["poa"] - PIGOU) < 1e-4
    assert abs(r["equilibrium_cost"] - 1.0) < 1e-4 and abs(r["optimum_cost"] - 0.75) < 1e-6
    np.testing.assert_allclose(r["flows"], [[1.0, 0.0]], atol=1e-4)
    np.testing.assert_allclose(r["optimum_flows"], [[0.5, 0.5]], atol=1e-4)
    assert r["converged"] is True and r["status"] == "converged" and r["dtype"] == "float32"
    for key in ("price_of_stability", "gap", "optimum_gap", "optimum_status"):
        assert key in r
    bad = subprocess.run(
        [str(exe), "solve", "no-such-game.json"], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 2
    assert bad.stderr == "poa-jax: error: no-such-game.json: no such game file\n"


# --------------------------------------------------------------------------- bad input

PIGOU_GAME = {"demand": [1.0], "latency": {"a": [0.0, 1.0], "b": [1.0, 0.0]}}


def _game(**changes):
    g = json.loads(json.dumps(PIGOU_GAME))
    for key, value in changes.items():
        if key.startswith("latency_"):
            g["latency"][key[len("latency_") :]] = value
        else:
            g[key] = value
    return json.dumps(g)


BAD_GAMES = {
    "malformed JSON": ('{"demand": [1.0],', ["invalid JSON", "line 1"]),
    "not an object": ("[1, 2]", ["game: must be an object, got array"]),
    "missing latency": ('{"demand": [1.0]}', ["missing required key 'latency'"]),
    "unknown key": (_game(colour="red"), ["colour: unknown key"]),
    "unknown latency key": (_game(latency_q=[1.0, 1.0]), ["latency.q: unknown key"]),
    # (the library writes the value as a NumPy repr, e.g. np.float64(-1.0): not matched exactly)
    "negative demand": (_game(demand=[-1.0]), ["demand[0] = ", "-1.0", "must be finite and >= 0"]),
    "kappa zero": (_game(latency_kappa=[1.0, 0.0]), ["latency.kappa[1] = ", "0.0", "must be > 0"]),
    "p below one": (_game(latency_p=[0.5, 1.0]), ["latency.p[0] = ", "0.5", ">= 1"]),
    "unknown policy": (
        _game(policy={"name": "round_robin"}),
        ["policy.name = 'round_robin'", "unknown policy"],
    ),
    "unknown policy parameter": (
        _game(policy={"name": "dynamo", "omgea": 1.0}),
        ["policy.omgea", "unknown parameter of dynamo"],
    ),
    "negative tau": (_game(policy={"name": "dynamo", "tau": -1.0}), ["policy.tau", ">= 0"]),
    # Named as written in the file (not the Policy field w_prefill), with the file's name.
    "negative omega": (
        _game(policy={"name": "dynamo", "omega": -1.0}),
        ["game.json: policy.omega = -1.0"],
    ),
    "credit above one": (
        _game(policy={"name": "dynamo", "credits": [2.0, 0.5, 0.1]}),
        ["game.json: policy.credits[0] = 2.0", "[0, 1]"],
    ),
    "mismatched shapes": (
        _game(latency_b=[1.0, 0.0, 0.0]),
        ["mismatched shapes", "latency.a (2,)", "latency.b (3,)"],
    ),
    "string for a number": (_game(demand=["1.0"]), ["demand[0] = '1.0'", "must be a number"]),
    "ragged array": (_game(demand=[[1.0], [1.0, 2.0]]), ["demand", "array of numbers"]),
    "starts zero": (_game(starts=0), ["starts = 0", "integer >= 1"]),
    # Huge integers: max_iters 1e20 overflowed the int32 loop counter (traceback, status 1),
    # and starts 1e20 filled the memory building the starts.
    "huge max_iters": (
        _game(max_iters=10**20),
        ["max_iters = 100000000000000000000", "(and <= 2147483647)"],
    ),
    "too many starts": (_game(starts=5000), ["starts = 5000", "(and <= 1024)"]),
    "tol zero": (_game(tol=0.0), ["tol = 0.0", "must be in (0, 1)"]),
}
# Caching games (poa_jax.cache_io): the tiered example with one change.
TIERED = ROOT / "examples" / "tiered_cache.json"


def _tiered(**changes):
    return json.dumps({**json.loads(TIERED.read_text()), **changes})


BAD_GAMES.update({
    "unknown game": (_tiered(game="lru"), ["game = 'lru'", "selfish_caching, tiered_cache"]),
    "caching unknown key": (_tiered(demand=[1.0]), ["demand: unknown key"]),
    "caching missing key": (
        json.dumps({"game": "selfish_caching", "distance": [[0.0]]}),
        ["missing required key 'placement_cost'"],
    ),
    "caching string": (_tiered(rates="many"), ["rates = 'many'", "must be a number"]),
    "caching negative capacity": (
        _tiered(capacity=[[1.0], [-1.0], [0.0]]), ["capacity[1, 0] = ", ">= 0"]
    ),
    "caching both values": (_tiered(credit=[1.0]), ["give credit or access_latency, not both"]),
    "caching optimum starts": (
        _tiered(optimum_starts=-1), ["optimum_starts = -1", "integer >= 0"]
    ),
    "caching symmetric": (_tiered(symmetric="yes"), ["symmetric = 'yes'", "true or false"]),
    # A seed beyond int64 raised a TypeError inside np.isfinite (traceback, status 1).
    "caching huge seed": (_tiered(seed=10**23), ["seed = 100000000000000000000000",
                                                 "(and <= 9223372036854775807)"]),
})  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_GAMES))
def test_bad_game_is_one_line_and_status_2(tmp_path, case):
    text, expected = BAD_GAMES[case]
    path = tmp_path / "game.json"
    path.write_text(text)
    res = run("solve", path)
    assert res.rc == 2, (case, res)
    assert res.out == ""
    lines = res.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"poa-jax: error: {path}: "), res.err
    for part in expected:
        assert part in lines[0], (case, lines[0])


def test_missing_game_file(tmp_path):
    res = run("solve", tmp_path / "nope.json")
    assert res.rc == 2
    assert res.err == f"poa-jax: error: {tmp_path / 'nope.json'}: no such game file\n"


BAD_SWEEPS = {
    "missing file": (None, ["nope.toml: no such scenario file"]),
    "not UTF-8": (b"\xff\xfe x", ["not a UTF-8 text file (invalid start byte)"]),
    "too many load points": (
        TINY.replace("values = [0.3, 0.7, 1.0]", "points = 10000000000"),
        ["load.points = 10000000000: must be at most 10^8 (points per axis)"],
    ),
    "policy grid": (
        TINY + '\n[[policy_grid]]\nname = "dynamoo"\nomega = [1.0]\n',
        ["policy_grid[0].name = 'dynamoo': unknown policy"],
    ),
    "malformed TOML": ("name = [", ["invalid TOML"]),
    "unknown key": (TINY + "\ncolour = 1\n", ["solver.colour: unknown key"]),
    "unknown policy": (
        TINY.replace('"load_balanced"', '"round_robin"'),
        ["policies[1].name = 'round_robin'", "unknown policy"],
    ),
    "non-positive workers": (
        TINY.replace("workers = 2", "workers = -2"),
        ["topologies[1].workers = -2", ">= 1"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SWEEPS))
def test_bad_scenario_is_one_line_and_status_2(tmp_path, case):
    text, expected = BAD_SWEEPS[case]
    path = tmp_path / "nope.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    out = tmp_path / "out"
    res = run("sweep", path, "--out", out, "--no-progress")
    assert res.rc == 2, (case, res)
    lines = res.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"poa-jax: error: {path}: "), res.err
    for part in expected:
        assert part in lines[0], (case, lines[0])
    assert not out.exists()  # rejected before anything was written or compiled


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["sweep", "--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
        (["sweep", "--chunk", "0"], "--chunk = 0: must be an integer >= 1"),
        (["bench", "--chunk", "0"], "--chunk = 0: must be >= 1"),
        (["bench", "--round-iters", "0"], "--round-iters = 0: must be >= 1"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["sweep", "--preset", " , "], "--preset = ' , ': give at least one preset name"),
        (["plot", "anywhere", "--png", "x.txt"], "--png = 'x.txt': must name a .png file"),
        (["solve"], "the following arguments are required: game"),
        ([], "the following arguments are required: command"),
    ],
)
def test_usage_errors(argv, expected, tmp_path):
    res = run(*argv, *(["--out", tmp_path / "o"] if argv[:1] == ["sweep"] else []))
    assert res.rc == 2
    lines = res.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("poa-jax: error: "), res.err
    assert expected in lines[0]


def test_help_exits_zero():
    res = run("--help")
    assert res.rc == 0 and "sweep" in res.out and "solve" in res.out


def test_bench_table_and_tuning(tmp_path, monkeypatch):
    """``poa-jax bench`` times both solvers, reports convergence, and runs with the lanes per
    call and the round length it is given (300 lanes > COMPACT_ABOVE: compacted rounds), then
    restores the defaults."""
    from poa_jax import batching

    seen = []
    buckets = batching._buckets
    monkeypatch.setattr(batching, "_buckets", lambda n: seen.append(buckets(n)) or seen[-1])
    defaults = (dict(batching.MAX_CHUNK), batching.MAX_CHUNK_ACCELERATOR, batching.ROUND_ITERS)
    out = tmp_path / "bench.json"
    res = run("bench", "--batch", "300", "--repeats", "1", "--chunk", "128",
              "--round-iters", "16", "--json", out)  # fmt: skip
    assert res.rc == 0, res.err
    rows = json.loads(out.read_text())
    assert [r["solver"] for r in rows] == ["equilibrium", "optimum", "eq+opt"]
    for r in rows:
        assert r["batch"] == 300 and r["chunk"] == 128 and r["round_iters"] == 16
        assert r["round_loop"] == loop.describe()
        assert r["instances_per_s"] > 0 and r["converged_share"] >= 0.9
        bound = 2000 if r["solver"] == "eq+opt" else 1000  # eq+opt: the sum per instance
        assert r["iterations_max"] <= bound and r["device"].startswith("cpu")
    assert seen and all(b == [128, 16] for b in seen)  # every compacted solve used the chunk
    table = res.out.splitlines()
    assert table[0].startswith("| solver | N |") and table[0].endswith("| chunk | round | loop |")
    tail = f"| 128 | 16 | {loop.describe()} |"
    assert len(table) == 5 and all(line.endswith(tail) for line in table[2:])
    assert (dict(batching.MAX_CHUNK), batching.MAX_CHUNK_ACCELERATOR,
            batching.ROUND_ITERS) == defaults  # fmt: skip


def test_bench_refuses_a_json_path_before_running(tmp_path, monkeypatch):
    """An unwritable ``--json`` is bad input, refused before the benchmark (not after it)."""
    from poa_jax import bench

    monkeypatch.setattr(bench, "run", lambda *a, **k: pytest.fail("benchmark ran"))
    for path in (tmp_path / "missing" / "rows.json", tmp_path):
        res = run("bench", "--batch", "1", "--json", path)
        assert res.rc == 2 and res.out == ""
        assert res.err.startswith(f"poa-jax: error: --json = '{path}': must name a file")


def test_bench_says_when_no_compacted_round_ran():
    """A solve of at most COMPACT_ABOVE lanes per device runs as one loop: ``--chunk`` and
    ``--round-iters`` play no part there, and its row must not claim them (the equilibrium's
    100 lanes here; the optimum's 3 starts per instance make 300 lanes on one device)."""
    from poa_jax import batching, bench

    rows = bench.run([100], repeats=1, chunk=128, round_iters=16)
    eq, opt, both = rows
    assert not eq.compacted
    assert opt.compacted == (300 // jax.local_device_count() > batching.COMPACT_ABOVE)
    assert both.compacted == opt.compacted
    table = bench.format_rows(rows).splitlines()
    assert table[2].startswith("| equilibrium |") and table[2].endswith(
        f"| — | — | {loop.describe()} |"
    )


def test_read_game_takes_inf_as_written_in_the_output(tmp_path):
    """JSON has no infinity; the output writes it "inf", and kappa / cache_size take it back."""
    from poa_jax.cli import read_game

    path = tmp_path / "game.json"
    path.write_text(json.dumps({
        "demand": [0.75], "latency": {"a": [1.0, 4.0], "d": [1.0, 0.0], "kappa": [1.0, "inf"]},
        "cache_size": ["inf", 2.0],
    }))  # fmt: skip
    game, _, _ = read_game(str(path))
    assert list(game.latency.kappa) == [1.0, float("inf")]
    assert list(game.cache_size) == [float("inf"), 2.0]
    path.write_text(json.dumps({"demand": ["inf"], "latency": {"a": [1.0]}}))
    with pytest.raises(pj.InputError, match="demand"):  # only where inf is allowed
        read_game(str(path))
