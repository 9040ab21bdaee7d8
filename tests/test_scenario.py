"""Scenarios: the built-in default, TOML parsing, validation messages and the batch build.

Nothing here compiles a solver: a scenario is host-side data until a sweep solves it.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
import pathlib

import numpy as np
import pytest

import poa_jax as pj
from poa_jax import batching
from poa_jax import scenario as S
from tests.scenarios import TINY

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _write(tmp_path, text, name="scenario.toml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- the default


def test_examples_default_is_the_embedded_default():
    embedded = importlib.resources.files("poa_jax.data").joinpath("default.toml").read_bytes()
    assert (ROOT / "examples" / "default.toml").read_bytes() == embedded


def test_default_scenario_contents():
    sc = S.default_scenario()
    assert sc.name == "default"
    assert sc.shape == (2, 1, 1, 24, 4)
    assert sc.num_points == 192
    assert [(t.name, t.workers) for t in sc.topologies] == [("1P/2D", 2), ("1P/5D", 5)]
    u = sc.load.utilisation()
    assert u[0] == 0.05 and u[-1] == 1.2 and len(u) == 24
    assert u[7] == 0.4  # grid points read as typed
    assert [p.name for p in sc.policies] == ["selfish", "dynamo", "dynamo", "load_balanced"]
    assert sc.policies[1].kwargs() == {"omega": 1.0, "tau": 0.0}
    assert sc.policies[2].kwargs() == {"omega": 0.1, "tau": 0.8}
    assert len(set(sc.policy_labels())) == 4
    pre = sc.worker.prefill
    assert (pre.a, pre.b, pre.c) == (18.10, 0.1019, 7.12e-6)  # DistServe OPT-13B anchor
    assert sc.solver.starts == 4 and sc.solver.dtype == "float32"
    assert sc.solver.optimum_starts == 16
    assert len(sc.classes) == 5 and all(c.tokens > 0 for c in sc.classes)


def test_examples_default_loads_to_the_same_scenario():
    sc = S.load_scenario(ROOT / "examples" / "default.toml")
    assert sc == S.default_scenario()
    assert sc.hash() == S.default_scenario().hash()
    assert sc.source.endswith("default.toml")


def test_build_layout_and_demand():
    sc = S.default_scenario()
    b = sc.build()
    t_n, _, _, u_n, p_n = sc.shape
    n = t_n * u_n * p_n
    assert b.game.demand.shape == (n, 5)
    assert np.shape(b.game.latency.kappa) == (n, 5)
    assert len(b.labels) == n
    # Policy fastest, then load, then topology.
    assert [lb.policy for lb in b.labels[:p_n]] == sc.policy_labels()
    assert b.labels[p_n].utilisation == sc.load.utilisation()[1]
    assert b.labels[u_n * p_n].topology == "1P/5D"
    # 1P/2D is padded from 2 to 5 workers; padded workers have finite, valid parameters.
    mask = np.asarray(b.game.worker_mask)
    assert mask[: u_n * p_n].sum(-1).tolist() == [2] * (u_n * p_n)
    assert mask[u_n * p_n :].all()
    assert np.isfinite(b.game.latency.kappa).all() and np.isfinite(b.game.latency.a).all()
    # Offered prompt tokens = utilisation × the topology's capacity Σκ over existing workers.
    tokens = (b.game.demand * b.game.tokens).sum(-1)
    cap = np.where(mask, b.game.latency.kappa, 0.0).sum(-1)
    util = np.array([lb.utilisation for lb in b.labels])
    np.testing.assert_allclose(tokens, util * cap, rtol=1e-12)
    np.testing.assert_allclose([lb.demand_total for lb in b.labels], b.game.demand.sum(-1))
    # Policy fields stacked per instance; labels carry ω and τ.
    assert np.asarray(b.policy.tau)[:p_n].tolist() == [0.0, 0.0, 0.8, 0.0]
    assert math.isnan(b.labels[0].omega) and b.labels[2].omega == 0.1 and b.labels[2].tau == 0.8
    # The library accepts the batch as it is (checks only, nothing compiled).
    prep = batching.prepare(b.game, b.policy, np.float32)
    assert prep.batch_shape == (n,)


def test_round_trip_and_hash():
    sc = S.default_scenario()
    again = S.Scenario.from_dict(sc.to_dict())
    assert again == sc and again.hash() == sc.hash()
    assert hash(sc) == hash(again)  # frozen and hashable
    # The hash names the computation: not the name or the description ...
    renamed = dataclasses.replace(sc, name="other", description="something else")
    assert renamed.hash() == sc.hash()
    # ... but every number and setting.
    assert sc.with_solver(dtype="float64").hash() != sc.hash()
    assert dataclasses.replace(sc, load=S.LoadAxis(points=12)).hash() != sc.hash()
    d = sc.to_dict()
    d["worker"]["d"] = 41.0
    assert S.Scenario.from_dict(d).hash() != sc.hash()


def test_integer_and_float_spellings_hash_alike(tmp_path):
    a = S.load_scenario(_write(tmp_path, TINY, "a.toml"))
    b = S.load_scenario(_write(tmp_path, TINY.replace("kappa = 8000.0", "kappa = 8000"), "b.toml"))
    assert a.hash() == b.hash()


def test_seeds_past_float_precision_hash_apart():
    """seeds.seed = 2**53 and 2**53 + 1 draw other replicates: as floats they hashed alike, so
    a folder solved for one was reused for the other."""
    sc = S.Scenario.from_dict(__import__("tomllib").loads(TINY))
    a, b = (dataclasses.replace(sc, seeds=S.SeedAxis(2, 0.2, 2**53 + k)) for k in (0, 1))
    assert not np.array_equal(a.build().game.demand, b.build().game.demand)
    assert a.hash() != b.hash()
    assert S.Scenario.from_dict(b.to_dict()).hash() == b.hash()


def test_defaults_written_out_hash_as_left_out():
    """tol and max_iters at their defaults are the same sweep (a resume was refused as
    'another scenario' for tol = 1e-5 written out in float32); other values are not."""
    from poa_jax import tolerances

    sc = S.default_scenario()
    assert sc.solver.tol is None and sc.solver.max_iters is None
    for dtype in ("float32", "float64"):
        base = sc.with_solver(dtype=dtype)
        tol = tolerances.default_tol(np.dtype(dtype))
        written = base.with_solver(tol=tol, max_iters=tolerances.DEFAULT_MAX_ITERS)
        assert written.hash() == base.hash()
        assert base.with_solver(tol=tol * 2).hash() != base.hash()
        assert base.with_solver(max_iters=999).hash() != base.hash()
    # and the built-in scenario hashes as before this rule (its folders keep resuming)
    assert sc.hash() == "346e3f7ca6295398"


def test_tiny_scenario_build(tmp_path):
    sc = S.load_scenario(_write(tmp_path, TINY))
    assert sc.shape == (2, 1, 1, 3, 2)
    assert sc.policy_labels() == ["selfish", "balanced"]
    b = sc.build()
    assert b.game.demand.shape == (12, 2)
    assert np.asarray(b.game.latency.kappa)[6].tolist() == [9000.0, 7000.0]
    assert np.asarray(b.game.worker_mask)[0].tolist() == [True, False]


def test_python_scenario_files(tmp_path):
    """``load_scenario`` (so ``poa-jax sweep``) runs a ``.py`` file that sets ``SCENARIO``."""
    toml = S.load_scenario(_write(tmp_path, TINY))
    as_dict = tmp_path / "d.py"
    as_dict.write_text(
        "import tomllib, pathlib\n"
        f"SCENARIO = tomllib.loads(pathlib.Path({str(tmp_path / 'scenario.toml')!r}).read_text())\n"
    )
    sc = S.load_scenario(as_dict)
    assert sc == toml and sc.hash() == toml.hash() and sc.source == str(as_dict)
    built = tmp_path / "b.py"
    built.write_text(
        "import dataclasses\nfrom poa_jax import scenario as S\n"
        f"base = S.load_scenario({str(tmp_path / 'scenario.toml')!r})\n"
        "SCENARIO = dataclasses.replace(base, load=S.LoadAxis(values=(0.2, 0.4, 0.6, 0.8)))\n"
    )
    sc = S.load_scenario(built)
    assert sc.shape == (2, 1, 1, 4, 2) and sc.source == str(built)
    cases = {
        "none.py": (
            "x = 1\n",
            "SCENARIO must be a poa_jax.scenario.Scenario or a dict .*got nothing",
        ),
        "list.py": ("SCENARIO = [1]\n", "got list"),
        "raises.py": ("1 / 0\n", "running it raised ZeroDivisionError: division by zero"),
        "bad.py": ("SCENARIO = {'name': 'x'}\n", "scenario: missing required key 'workload'"),
    }
    for name, (text, rule) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(pj.InputError, match=f"{tmp_path / name}: .*{rule}"):
            S.load_scenario(tmp_path / name)
    with pytest.raises(pj.InputError, match="no such scenario file"):
        S.load_scenario(tmp_path / "missing.py")


def test_numpy_axes_of_a_python_scenario():
    """Axes computed with NumPy (np.linspace, np.logspace) in a dict scenario were refused
    ("load.values = array([...]): must be an array of numbers")."""
    d = __import__("tomllib").loads(TINY)
    d["load"] = {"values": np.linspace(0.2, 1.0, 5)}
    d["policy_grid"] = [{"name": "dynamo", "omega": np.logspace(-1, 0, 3), "tau": np.zeros(1)}]
    sc = S.Scenario.from_dict(d)
    assert sc.load.utilisation().tolist() == np.linspace(0.2, 1.0, 5).tolist()
    assert sc.policy_labels()[2:] == [
        "dynamo(omega=0.1, tau=0)", "dynamo(omega=0.316228, tau=0)", "dynamo(omega=1, tau=0)",
    ]  # fmt: skip
    listed = dict(d, load={"values": np.linspace(0.2, 1.0, 5).tolist()})
    listed["policy_grid"] = [{"name": "dynamo", "omega": [0.1, 10**-0.5, 1.0], "tau": [0.0]}]
    assert S.Scenario.from_dict(listed).hash() == sc.hash()


def test_built_in_python():
    sc = S.Scenario(
        name="py",
        classes=(S.RequestClass("chat", tokens=128, shareable=0.5),),
        worker=S.WorkerModel(a=5.0, d=20.0, kappa=4000.0),
        topologies=(S.Topology("2D", 2, worker={"a": [5.0, 9.0]}),),
        load=S.LoadAxis(values=(0.5, 0.9)),
        policies=(S.PolicySpec("selfish"), S.PolicySpec("dynamo", {"omega": 0.5, "tau": 0.2})),
    )
    assert sc.policy_labels() == ["selfish", "dynamo(omega=0.5, tau=0.2)"]
    assert sc.topologies[0].overrides() == {"a": [5.0, 9.0]}
    b = sc.build()
    assert np.asarray(b.game.latency.a)[0].tolist() == [5.0, 9.0]
    with pytest.raises(pj.InputError, match=r"^Scenario: topologies\[0\]\.workers = 0: .*>= 1"):
        dataclasses.replace(sc, topologies=(S.Topology("none", 0),))


# --------------------------------------------------------------------------- validation

BAD = {
    "unknown top-level key": (
        'name = "tiny"',
        'name = "tiny"\ncolour = "red"',
        ["colour: unknown key"],
    ),
    "unknown worker key": ("a = 8.0", "a = 8.0\nspeed = 3.0", ["worker.speed: unknown key"]),
    "unknown policy": (
        'name = "load_balanced"',
        'name = "round_robin"',
        ["policies[1].name = 'round_robin'", "unknown policy", "selfish, dynamo, load_balanced"],
    ),
    "unknown policy parameter": (
        'name = "selfish"',
        'name = "selfish"\nparams = { omega = 1.0 }',
        ["policies[0].params.omega", "unknown parameter of selfish"],
    ),
    "duplicate policy label": (
        'label = "balanced"',
        'label = "selfish"',
        ["policies[1].label = 'selfish'", "duplicate"],
    ),
    "zero workers": ("workers = 1", "workers = 0", ["topologies[0].workers = 0", ">= 1"]),
    "workers not an integer": (
        "workers = 2",
        'workers = "2"',
        ["topologies[1].workers = '2'", "must be an integer"],
    ),
    "override of the wrong length": (
        "kappa = [9000.0, 7000.0]",
        "kappa = [9000.0, 7000.0, 5000.0]",
        ["topologies[1].worker.kappa", "one number or one per worker (2)"],
    ),
    "utilisation zero": (
        "values = [0.3, 0.7, 1.0]",
        "values = [0.3, 0.0, 1.0]",
        ["load.values[1] = 0.0", "must be > 0"],
    ),
    "utilisation negative": (
        "values = [0.3, 0.7, 1.0]",
        "min = -0.1\nmax = 1.0",
        ["load.min = -0.1", "must be > 0"],
    ),
    "values and a range": (
        "values = [0.3, 0.7, 1.0]",
        "values = [0.3]\npoints = 4",
        ["load:", "either values or min/max/points"],
    ),
    "missing tokens": (
        "tokens = 1024\n",
        "",
        ["workload.classes[1]", "missing required key 'tokens'"],
    ),
    "tokens not a number": (
        "tokens = 1024",
        'tokens = "long"',
        ["workload.classes[1].tokens = 'long'", "must be a number, got str"],
    ),
    "shareable above one": (
        "shareable = 0.5",
        "shareable = 1.5",
        ["workload.classes[0].shareable = 1.5", "[0, 1]"],
    ),
    "kappa zero": ("kappa = 8000.0", "kappa = 0.0", ["worker.kappa = 0.0", "must be > 0"]),
    "p below one": ("a = 8.0", "a = 8.0\np = 0.5", ["worker.p = 0.5", ">= 1"]),
    "rho_max one": ("rho_max = 0.95", "rho_max = 1.0", ["worker.rho_max = 1.0", "(0, 1)"]),
    "negative prefill": ("b = 0.1019", "b = -0.1", ["worker.prefill.b = -0.1", ">= 0"]),
    "dynamo credit above one": (
        'name = "selfish"',
        'name = "dynamo"\nparams = { credits = [1.0, 0.75, 2.0] }',
        ["policies[0].params.credits[2] = 2.0", "must be in [0, 1]"],
    ),
    "dtype": ('dtype = "float32"', 'dtype = "float16"', ["solver.dtype = 'float16'", "float32"]),
    "starts zero": ("starts = 2", "starts = 0", ["solver.starts = 0", ">= 1"]),
    "load not a table": (
        "[load]\nvalues = [0.3, 0.7, 1.0]",
        "[solver2]\nx = 1",
        ["solver2: unknown key"],
    ),
    "invalid TOML": ('name = "tiny"', 'name = "tiny', ["invalid TOML", "line 1"]),
    "missing workload": (
        "[[workload.classes]]",
        "[[workloads.classes]]",
        ["workloads: unknown key"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_scenario_names_file_key_and_rule(tmp_path, case):
    old, new, expected = BAD[case]
    assert old in TINY, case
    path = _write(tmp_path, TINY.replace(old, new, 1))
    with pytest.raises(pj.InputError) as err:
        S.load_scenario(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: "), msg
    for part in expected:
        assert part in msg, (case, msg)
    assert "\n" not in msg


def test_structure_errors(tmp_path):
    text = "load = 3\n" + TINY.replace("[load]\nvalues = [0.3, 0.7, 1.0]\n", "")
    with pytest.raises(pj.InputError, match=r"scenario.toml: load: must be a table, got int"):
        S.load_scenario(_write(tmp_path, text))
    lines = TINY.splitlines(keepends=True)
    start = lines.index("[[workload.classes]]\n")
    text = "".join(lines[:start] + lines[lines.index("[worker]\n") :])
    with pytest.raises(pj.InputError, match=r"scenario: missing required key 'workload'"):
        S.load_scenario(_write(tmp_path, text))
    text = TINY.replace("[[policies]]", "[[policy]]")
    with pytest.raises(pj.InputError, match=r"policy: unknown key \(allowed: description, load"):
        S.load_scenario(_write(tmp_path, text))


def test_omitted_sections_take_defaults(tmp_path):
    text = TINY.split("[[topologies]]")[0]  # workload and worker only
    sc = S.load_scenario(_write(tmp_path, text))
    assert sc.topologies == S.DEFAULT_TOPOLOGIES
    assert [(t.name, t.workers) for t in sc.topologies] == [("1P/2D", 2), ("1P/5D", 5)]
    assert sc.policies == S.DEFAULT_POLICIES
    assert sc.policy_labels() == S.default_scenario().policy_labels()
    assert sc.shape == (2, 1, 1, 24, 4) and sc.solver == S.SolverSettings()
    named = S.load_scenario(_write(tmp_path, text.replace('name = "tiny"\n', ""), "mine.toml"))
    assert named.name == "mine"  # the file stem when no name is given


def test_missing_scenario_file(tmp_path):
    with pytest.raises(pj.InputError, match="no such scenario file"):
        S.load_scenario(tmp_path / "nope.toml")


def test_a_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "b.toml"
    path.write_bytes(b"\xff\xfe x")
    with pytest.raises(pj.InputError) as err:
        S.load_scenario(path)
    assert str(err.value) == f"{path}: not a UTF-8 text file (invalid start byte)"


# --------------------------------------------------------------------------- size bounds


def test_axis_and_total_bounds_are_checked_without_expanding(tmp_path):
    import tracemalloc

    grid = "[load]\nvalues = [0.3, 0.7, 1.0]"
    cases = {
        "points = 10000000000": "load.points = 10000000000: must be at most 10^8 (points per axis)",
        "points = 100000000\n[seeds]\ncount = 100": (
            "scenario: 2 x 1 x 100 x 100000000 x 2 (topologies x variants x seeds x loads x "
            "policies) = 40000000000 points: must be at most 10^10 in all"
        ),
    }
    tracemalloc.start()
    try:
        for load, expected in cases.items():
            path = _write(tmp_path, TINY.replace(grid, "[load]\n" + load))
            with pytest.raises(pj.InputError) as err:
                S.load_scenario(path)
            assert str(err.value) == f"{path}: {expected}"
        with pytest.raises(pj.InputError, match=r"seeds.count = 100000001: must be at most 10\^8"):
            S.load_scenario(_write(tmp_path, TINY + "\n[seeds]\ncount = 100000001\n"))
        # At the bounds: 10^8 load points x 2 topologies x 2 policies, built a few at a time.
        sc = S.load_scenario(_write(tmp_path, TINY.replace(grid, "[load]\npoints = 100000000")))
        assert sc.num_points == 4 * 10**8
        b = sc.build(np.array([0, 2 * 10**8 - 1, sc.num_points - 1]))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6, peak  # nothing of the size of an axis, let alone of the point set
    assert b.labels.columns["utilisation"].tolist() == [0.05, 1.2, 1.2]


@pytest.mark.parametrize(
    "axis",
    [S.LoadAxis(), S.LoadAxis(0.1, 0.9, 1), S.LoadAxis(0.3, 0.3, 5), S.LoadAxis(1e-3, 7.7, 997)],
)
def test_load_points_by_index_equal_the_grid(axis):
    u = axis.utilisation()
    idx = np.arange(axis.size)[::-1]
    np.testing.assert_array_equal(axis.at(idx), u[idx])
    assert axis.size == len(u)


def test_a_policy_grid_too_large_is_refused_before_expanding(tmp_path):
    values = "[" + ", ".join(str(i / 100) for i in range(10001)) + "]"
    text = TINY + f'\n[[policy_grid]]\nname = "dynamo"\nomega = {values}\ntau = {values}\n'
    with pytest.raises(
        pj.InputError, match=r"policy_grid\[0\]: 100020001 combinations: at most 10\^8 policies"
    ):
        S.load_scenario(_write(tmp_path, text))


# --------------------------------------------------------------------------- policy grids


GRID_ERRORS = {
    "unknown policy": (
        'name = "dynamoo"\nomega = [1.0]',
        "policy_grid[0].name = 'dynamoo': unknown policy: must be one of",
    ),
    "unknown parameter": (
        'name = "dynamo"\nomgea = [1.0]',
        "policy_grid[0].omgea: unknown parameter of dynamo (allowed: omega, tau, ",
    ),
    "bad value": ('name = "dynamo"\nomega = [1.0, -2.0]', "policy_grid[0].omega[1] = -2.0: must"),
    "duplicate label": (
        'name = "dynamo"\nomega = [1.0, 1.0]',
        "policy_grid[0] = 'dynamo(omega=1)': duplicate policy label (a value listed twice, or",
    ),
    "credit above one": (
        'name = "dynamo"\ncredits = [1.5, 0.75, 0.25]',
        "policy_grid[0].credits[0] = 1.5: must be in [0, 1]",
    ),
    "same as a listed policy": (
        'name = "selfish"',
        "policy_grid[0] = 'selfish': duplicate policy label (a value listed twice, or the same "
        "policy as policies[0])",
    ),
}


@pytest.mark.parametrize("case", sorted(GRID_ERRORS))
def test_policy_grid_errors_name_the_grid(tmp_path, case):
    grid, expected = GRID_ERRORS[case]
    path = _write(tmp_path, TINY + "\n[[policy_grid]]\n" + grid + "\n")
    with pytest.raises(pj.InputError) as err:
        S.load_scenario(path)
    assert str(err.value).startswith(f"{path}: {expected}"), str(err.value)


def test_policy_grid_appended_to_the_default_example(tmp_path):
    text = (ROOT / "examples" / "default.toml").read_text(encoding="utf-8")
    path = _write(tmp_path, text + '\n[[policy_grid]]\nname = "dynamoo"\nomega = [1.0]\n')
    with pytest.raises(pj.InputError, match=r"policy_grid\[0\]\.name = 'dynamoo': unknown"):
        S.load_scenario(path)


def test_variant_length_error_shows_the_list(tmp_path):
    path = _write(tmp_path, TINY + '\n[[variants]]\nname = "v"\nmix = [1, 2, 3]\n')
    with pytest.raises(pj.InputError) as err:
        S.load_scenario(path)
    assert str(err.value) == (
        f"{path}: variants[0].mix = [1, 2, 3]: must be a list of one number per request class (2)"
    )
