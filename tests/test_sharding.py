"""The lane axis sharded over every local device ≡ one device; the round loops (issue 6).

A subprocess starts JAX with 8 host devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8``
must be set before JAX starts, so it cannot run in this process) and runs
``tests/sharded_worker.py``: the same 200 cache-on games solved sharded and on one device, with
compaction on in both (small ``COMPACT_ABOVE``), and the tiny scenario swept both ways. Four
more processes solve one batch with and without compaction and in each loop mode (read from the
environment at import). Both jobs run beside the suite (``tests/background.py``).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests import background
from tests.scenarios import TINY

ROOT = pathlib.Path(__file__).resolve().parents[1]


@background.job
def sharded(tmp):
    """The worker's JSON line (8 host devices; runs beside the suite: tests/background.py)."""
    toml = tmp / "tiny.toml"
    toml.write_text(TINY.replace('dtype = "float32"', 'dtype = "float64"'))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.sharded_worker", "200", str(toml)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_eight_host_devices_and_a_mesh(sharded):
    assert sharded["devices"] == 8 and sharded["mesh"] == 8


def test_sharded_solve_equals_one_device(sharded):
    d = sharded["diff"]
    # Same lanes, same iterations and statuses; the floats agree to rounding (XLA vectorises a
    # block of 25 lanes differently from one of 200, so the last bits may differ).
    assert d["eq_iterations"] == 0 and d["status"] == 0
    assert d["poa"] <= 1e-7
    assert d["eq_flows"] <= 1e-7 and d["opt_flows"] <= 1e-6
    assert sharded["converged"] > 0.9


def test_sharded_sweep_equals_one_device(sharded):
    assert sharded["sweep_rows"] == 12
    assert sharded["sweep_other_columns_equal"]
    assert sharded["sweep_max_diff"] <= 1e-9


def test_compacted_rounds_equal_the_plain_loop(rounds):
    """Rounds of ROUND_ITERS with finished lanes dropped ≡ one while_loop over the whole batch."""
    import numpy as np

    plain, w = rounds["plain"], rounds["while"]
    # A lane's trajectory does not depend on the rounds, up to rounding: XLA vectorises a batch
    # of 120 lanes and a gathered sub-batch differently, so the last bits can differ and a lane
    # near the Newton threshold may switch phase earlier or later. How often depends on the
    # CPU's vector units: the optimum's counts agreed on ≥ 95% of lanes in CI and on 113 of 120
    # (differences −35 … +20 iterations, PoA equal to 3e-13) on the 2-core AMD EPYC dev box.
    for name, share in (("eq", 0.95), ("opt", 0.9)):
        np.testing.assert_array_equal(plain[f"{name}_status"], w[f"{name}_status"])
        assert np.mean(plain[f"{name}_iters"] == w[f"{name}_iters"]) >= share
        both = (plain[f"{name}_status"] == 0) & (w[f"{name}_status"] == 0)
        assert both.mean() > 0.9
        np.testing.assert_allclose(plain[f"{name}_flows"][both], w[f"{name}_flows"][both],
                                   rtol=0, atol=1e-5)  # fmt: skip
    ok = (plain["eq_status"] == 0) & (w["eq_status"] == 0)
    ok &= (plain["opt_status"] == 0) & (w["opt_status"] == 0)
    np.testing.assert_allclose(plain["poa"][ok], w["poa"][ok], rtol=1e-7)


def test_round_calls_cover_every_pending_lane_once_with_few_empty_slots():
    import numpy as np

    from poa_jax import batching

    for pending in (1, 127, 128, 129, 300, 1023, 1024, 1025, 4608, 5000):
        calls = batching._calls(pending, [1024, 128])
        covered = np.concatenate([np.arange(lo, min(lo + s, pending)) for lo, s in calls])
        np.testing.assert_array_equal(covered, np.arange(pending))
        assert {s for _, s in calls} <= {1024, 128}
        assert sum(s for _, s in calls) - pending < 128  # empty slots: under one small call


@pytest.mark.parametrize(("policy", "method"), [("logit", "auto"), ("plain", "extragradient")])
def test_only_projection_lanes_enter_the_newton_phase(policy, method, cache_games, plain_games,
                                                      monkeypatch):  # fmt: skip
    """Phase 2 (the Newton endgame) exists only for ``projection``. Logit averaging and
    extragradient lanes whose gap fell below NEWTON_BELOW were advanced by a second compiled
    program, identical to the first, and in calls of their own each round."""
    import numpy as np

    import poa_jax as pj
    from poa_jax import batching

    phases = []
    stepper = batching._stepper

    def spy(raw, mesh, **static):
        advance = stepper(raw, mesh, **static)

        def run(*args, budget, phase):
            phases.append(phase)
            return advance(*args, budget=budget, phase=phase)

        return run

    monkeypatch.setattr(batching, "_stepper", spy)
    monkeypatch.setattr(batching, "COMPACT_ABOVE", 4)  # the 8 games run in compacted rounds
    monkeypatch.setattr(batching, "ROUND_ITERS", 8)
    game = cache_games if policy == "logit" else plain_games
    pol = pj.policies.dynamo(tau=0.5) if policy == "logit" else pj.policies.selfish()
    sol = pj.solve_equilibrium(game, pol, method=method, tol=1e-10, dtype="float64")
    assert np.mean(sol.converged) >= 0.5 and np.all(sol.iterations > 8)  # rounds below 1e-7
    assert set(phases) == {1}, phases


_ROUNDS_SCRIPT = """
import sys, numpy as np, jax
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
import poa_jax as pj
from poa_jax import batching, synthetic
from poa_jax.kernels import loop
batching.COMPACT_ABOVE, batching.ROUND_ITERS = int(sys.argv[2]), 7  # many rounds, odd ends
game = synthetic.random_games(3, 120)
res = pj.price_of_anarchy(game, pj.policies.dynamo(omega=0.5, tau=0.0), starts=2, tol=1e-8,
                          max_iters=300, dtype="float64")
out = {}
for name, s in (("eq", res.equilibrium), ("opt", res.optimum)):
    out.update({f"{name}_flows": s.flows, f"{name}_iters": s.iterations,
                f"{name}_status": s.status})
np.savez(sys.argv[1], fixed=loop.FIXED_TRIP, unroll=loop.UNROLL, poa=res.poa, **out)
"""


@background.job
def rounds(tmp):
    """The same 120 cache-on games solved in four processes: ``plain`` (one while_loop over
    the batch: compaction off) and, with compaction into rounds of 7 iterations, ``while``
    (the default early-exit rounds), ``fixed`` (``POA_JAX_ROUND_LOOP=fixed``) and ``unroll``
    (``POA_JAX_LOOP_UNROLL=3``). Runs beside the suite (tests/background.py)."""
    import numpy as np

    modes = {"plain": {}, "while": {}, "fixed": {"POA_JAX_ROUND_LOOP": "fixed"},
             "unroll": {"POA_JAX_LOOP_UNROLL": "3"}}  # fmt: skip
    runs = {}
    for mode, extra in modes.items():
        out = tmp / f"{mode}.npz"
        env = {**os.environ, "POA_JAX_ROUND_LOOP": "while", "POA_JAX_LOOP_UNROLL": "1",
               "JAX_PLATFORMS": "cpu", **extra}  # fmt: skip
        compact_above = str(10**9 if mode == "plain" else 16)
        subprocess.run([sys.executable, "-c", _ROUNDS_SCRIPT, str(out), compact_above], env=env,
                       check=True, timeout=600)  # fmt: skip
        with np.load(out) as f:
            runs[mode] = dict(f)
    return runs


def test_fixed_trip_and_unrolled_rounds_equal_while_rounds(rounds):
    """``POA_JAX_ROUND_LOOP=fixed`` (rounds of exactly ROUND_ITERS trips, finished lanes frozen
    by the body: no per-trip predicate sync on a GPU) and ``POA_JAX_LOOP_UNROLL=3`` (three
    guarded steps per loop trip) ≡ the default early-exit rounds."""
    import numpy as np

    runs = rounds
    w = runs["while"]
    assert not w["fixed"] and runs["fixed"]["fixed"]  # the variables reached the loop
    assert w["unroll"] == 1 and runs["unroll"]["unroll"] == 3
    for f in (runs["fixed"], runs["unroll"]):
        for name in ("eq", "opt"):
            np.testing.assert_array_equal(w[f"{name}_status"], f[f"{name}_status"])
            np.testing.assert_array_equal(w[f"{name}_iters"], f[f"{name}_iters"])
            np.testing.assert_allclose(w[f"{name}_flows"], f[f"{name}_flows"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(w["poa"], f["poa"], rtol=1e-12)


def test_bad_unroll_setting_is_a_clear_error():
    """A malformed ``POA_JAX_LOOP_UNROLL`` fails at import, naming the variable and the rule."""
    env = {**os.environ, "POA_JAX_LOOP_UNROLL": "0", "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-c", "import poa_jax"], env=env, capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode != 0
    assert "POA_JAX_LOOP_UNROLL = '0': must be an integer >= 1" in r.stderr


_CPU_DEVICES_SCRIPT = """
import sys, jax
from poa_jax import batching
n = batching.use_cpu_devices(int(sys.argv[1]) if len(sys.argv) > 1 else None)
import jax.numpy as jnp
jnp.zeros(3).block_until_ready()  # JAX has started: later calls change nothing
late = batching.use_cpu_devices(5)
print(n, jax.local_device_count(), late)
"""


_CPU_DEVICE_CASES = [
    (["3"], {}, "3 3 3"),
    ([], {"POA_JAX_CPU_DEVICES": "2"}, "2 2 2"),
    ([], {"POA_JAX_CPU_DEVICES": "1"}, "1 1 1"),
    (["4"], {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, "2 2 2"),
]


@background.job
def cpu_device_runs(tmp):
    """``_CPU_DEVICES_SCRIPT`` for each case, ``(returncode, stdout, stderr)`` by case index;
    the ``poa-jax bench`` runs of the CLI test. Beside the suite (tests/background.py)."""
    runs = []
    for args, env, _ in _CPU_DEVICE_CASES:
        full = {**os.environ, "JAX_PLATFORMS": "cpu", **env}
        if "XLA_FLAGS" not in env:
            full.pop("XLA_FLAGS", None)
        r = subprocess.run([sys.executable, "-c", _CPU_DEVICES_SCRIPT, *args], env=full,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
        runs.append((r.returncode, r.stdout, r.stderr))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "POA_JAX_CPU_DEVICES": "2"}
    env.pop("XLA_FLAGS", None)
    out = tmp / "bench.json"
    cmd = [sys.executable, "-m", "poa_jax.cli", "bench", "--batch", "16", "--repeats", "1"]
    r = subprocess.run([*cmd, "--json", str(out)], env=env, capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    rows = json.loads(out.read_text()) if r.returncode == 0 else None
    bad = subprocess.run(cmd, env={**env, "POA_JAX_CPU_DEVICES": "lots"}, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    return {"cases": runs, "bench": (r.returncode, r.stderr, rows),
            "bad": (bad.returncode, bad.stderr)}  # fmt: skip


@pytest.mark.parametrize("case", range(len(_CPU_DEVICE_CASES)))
def test_use_cpu_devices(cpu_device_runs, case):
    """``batching.use_cpu_devices`` splits the CPU into that many JAX devices before JAX
    starts (argument, else ``POA_JAX_CPU_DEVICES``), leaves a count set by ``XLA_FLAGS``
    alone, and changes nothing once JAX has computed."""
    rc, stdout, stderr = cpu_device_runs["cases"][case]
    assert rc == 0, stderr[-2000:]
    assert stdout.split("\n")[-2] == _CPU_DEVICE_CASES[case][2]


def test_cli_splits_the_cpu_and_names_a_bad_setting(cpu_device_runs):
    """The ``poa-jax`` program shards over one CPU device per core (here forced to 2: the bench
    row names the devices); a malformed ``POA_JAX_CPU_DEVICES`` is a usage error."""
    rc, stderr, rows = cpu_device_runs["bench"]
    assert rc == 0, stderr[-2000:]
    assert {row["device"] for row in rows} == {"cpu:cpu x2"}
    rc, stderr = cpu_device_runs["bad"]
    assert rc == 2
    assert "POA_JAX_CPU_DEVICES = 'lots': must be an integer >= 1" in stderr
