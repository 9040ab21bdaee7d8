"""Warm starts: ``x0`` and ``continuation`` of ``price_of_anarchy``, and the sweep's load axis.

A converged equilibrium is its own fixed point, so a warm start from it (rescaled to another
demand: the shares are what carries over) must take no iteration and give the same PoA. Without
the cache term the equilibrium cost is unique, so continuation along the load axis must reach
the cold-start costs, in fewer iterations. With it, continuation may select other equilibria
(benchmarks/RESULTS.md measures how often): that is not asserted either way.
"""

from __future__ import annotations

import dataclasses
import tomllib

import jax
import numpy as np
import pytest

import poa_jax as pj
from poa_jax import scenario as S
from poa_jax import sweep
from poa_jax.synthetic import random_games
from tests.scenarios import TINY

# The tests use the suite's SMALL batch shape (8 games, 3 classes × 4 workers, 4 starts), whose
# executables other test files compile anyway.


def test_a_converged_equilibrium_is_its_own_warm_start(cache_games):
    g = cache_games
    cold = pj.price_of_anarchy(g)
    assert cold.start_flows.shape == (8, 4, 3, 4)
    # Flows of the same game at twice the demand: the rescaling must bring them back exactly.
    warm = pj.price_of_anarchy(g, x0=2.0 * cold.start_flows)
    ok = cold.converged_starts == 4  # every start at an equilibrium: nothing left to do
    assert ok.mean() >= 0.5
    np.testing.assert_array_equal(warm.equilibrium.iterations[ok], 0)
    np.testing.assert_allclose(warm.equilibrium.social_cost[ok],
                               cold.equilibrium.social_cost[ok], rtol=1e-12)  # fmt: skip
    np.testing.assert_allclose(warm.poa[ok], cold.poa[ok], rtol=1e-9)


def test_warm_starts_zero_missing_workers_and_fill_empty_rows(plain_games):
    from poa_jax import batching
    from poa_jax.poa import warm_starts

    mask = np.ones((8, 4), bool)
    mask[0, 3] = False
    g = dataclasses.replace(plain_games, worker_mask=mask)
    x0 = np.zeros((8, 2, 3, 4))
    x0[0, :, 0] = [1.0, 0.0, 0.0, 5.0]  # mass on the missing worker is dropped
    x0[1, 1] = 3.0  # any scale: rows are rescaled to the demand
    start = warm_starts(batching.prepare(g, None, np.float64), x0)
    d = np.asarray(g.demand)
    np.testing.assert_allclose(start[0, :, 0], d[0, 0] * np.array([[1.0, 0, 0, 0]] * 2))
    empty = np.broadcast_to(d[0, 1:, None] / 3 * mask[0], (2, 2, 4))  # empty rows: uniform
    np.testing.assert_allclose(start[0, :, 1:], empty)
    np.testing.assert_allclose(start[1, 1], np.repeat(d[1][:, None] / 4, 4, 1))
    np.testing.assert_allclose(start[2:], np.repeat(d[2:, None, :, None] / 4, 4, -1).repeat(2, 1))
    res = pj.price_of_anarchy(g, x0=np.concatenate([x0, x0], 1))  # 4 starts: the suite's shape
    assert np.all(res.start_flows[0, ..., 3] == 0.0) and np.all(res.equilibrium.converged)


def test_continuation_reaches_the_unique_costs_in_fewer_iterations(plain_games):
    """No cache term: one equilibrium cost per game. Two games, each a curve of 4 loads."""
    factors = np.linspace(0.6, 1.0, 4)
    pick = np.repeat([0, 1], 4)  # row = game * 4 + u
    g = jax.tree_util.tree_map(lambda a: a[pick] if np.ndim(a) else a, plain_games)
    g = dataclasses.replace(g, demand=np.asarray(g.demand) * np.tile(factors, 2)[:, None])
    cold = pj.price_of_anarchy(g)
    rows = np.arange(8).reshape(2, 4)
    levels = [(rows[:, 0], np.full(2, -1))]  # then each load from its lower neighbour
    levels += [(rows[:, u], rows[:, u - 1]) for u in range(1, 4)]
    warm = pj.price_of_anarchy(g, continuation=levels)
    assert np.all(cold.equilibrium.converged) and np.all(warm.equilibrium.converged)
    np.testing.assert_allclose(warm.equilibrium.social_cost, cold.equilibrium.social_cost,
                               rtol=1e-7)  # fmt: skip
    np.testing.assert_allclose(warm.poa, cold.poa, rtol=1e-6)
    it_w = warm.equilibrium.iterations[rows[:, 1:]].sum()
    it_c = cold.equilibrium.iterations[rows[:, 1:]].sum()
    assert it_w < it_c, (it_w, it_c)  # 97 against 104: to 1e-9 the linear tail dominates
    # The cold level is solved exactly as without continuation.
    np.testing.assert_array_equal(warm.equilibrium.iterations[rows[:, 0]],
                                  cold.equilibrium.iterations[rows[:, 0]])  # fmt: skip


@pytest.mark.parametrize(
    "levels, match",
    [
        ([(np.array([0, 1]), np.array([-1, -1]))], "2 missing"),
        (
            [(np.array([0, 1, 2, 3]), np.array([-1, -1, -1, -1])), (np.array([3]), np.array([0]))],
            "1 repeated",
        ),
        (
            [(np.array([0, 1]), np.array([-1, 2])), (np.array([2, 3]), np.array([-1, -1]))],
            "not solved at an earlier level",
        ),
        ([(np.array([0, 1, 2, 3]), np.array([-1, -1, -1, 9]))], r"indices must be in \[0, 4\)"),
        ([(np.array([0, 1, 2, 3]), np.array([-1, -1]))], "differ in length"),
    ],
)
def test_bad_continuation_is_named(levels, match):
    with pytest.raises(pj.InputError, match=match):
        pj.price_of_anarchy(random_games(0, 4, cache=False), continuation=levels)


def test_bad_x0_is_named():
    g = random_games(0, 4, cache=False)
    with pytest.raises(pj.InputError, match=r"x0 has shape \(4, 5, 6\)"):
        pj.price_of_anarchy(g, x0=np.ones((4, 5, 6)))
    with pytest.raises(pj.InputError, match="x0"):
        pj.price_of_anarchy(g, x0=-np.ones((4, 1, 5, 6)))
    with pytest.raises(pj.InputError, match="routing games only"):
        pj.price_of_anarchy(pj.SelfishCachingGame(np.zeros((2, 2)), 1.0), x0=np.ones(2))


# --------------------------------------------------------------------------- the sweep


def _no_cache() -> S.Scenario:
    """TINY (its float32 shapes are compiled by the CLI tests too) without the cache term."""
    text = TINY.replace("shareable = 0.5", "shareable = 0.0").replace(
        "shareable = 0.2", "shareable = 0.0"
    )
    return S.Scenario.from_dict(tomllib.loads(text), source="tiny.toml")


def test_warm_sweep_matches_cold_where_the_equilibrium_is_unique(tmp_path):
    sc = _no_cache()
    cold = sweep.run_sweep(sc, tmp_path / "cold", progress=False).table.to_pydict()
    warm_sc = sc.with_solver(warm_start="load")
    assert warm_sc.hash() != sc.hash()  # old parts are not reused for the other scheme
    warm = sweep.run_sweep(warm_sc, tmp_path / "warm", progress=False, chunk_size=5)
    w = warm.table.to_pydict()
    assert warm.summary["chunk_points"] == 6  # rounded up to whole curves: 3 loads × 2 policies
    assert w["point"] == cold["point"]
    assert all(cold["converged"]) and all(w["converged"])
    np.testing.assert_allclose(w["eq_cost"], cold["eq_cost"], rtol=2e-5)  # float32, tol 1e-5
    np.testing.assert_allclose(w["poa"], cold["poa"], rtol=2e-5)
    u = np.unravel_index(np.asarray(w["point"]), sc.shape)[3]
    warm_rows = u % sweep.WARM_STRIDE != 0
    assert np.sum(np.asarray(w["eq_iterations"])[warm_rows]) < np.sum(
        np.asarray(cold["eq_iterations"])[warm_rows]
    )


def test_warm_start_in_toml_and_bad_values(tmp_path):
    p = tmp_path / "w.toml"
    p.write_text(TINY.replace("[solver]\n", '[solver]\nwarm_start = "load"\n'))
    assert S.load_scenario(p).solver.warm_start == "load"
    p.write_text(TINY.replace("[solver]\n", '[solver]\nwarm_start = "time"\n'))
    with pytest.raises(pj.InputError, match=r"solver.warm_start = 'time': must be \"load\""):
        S.load_scenario(p)


def test_warm_levels_cover_every_load_point_once():
    sc = dataclasses.replace(_no_cache(), load=S.LoadAxis(min=0.1, max=1.0, points=11))
    levels = sweep._warm_levels(sc)
    p = sc.axes["policy"]
    allrows = np.sort(np.concatenate([o for o, _ in levels]))
    np.testing.assert_array_equal(allrows, np.arange(11 * p))
    cold, *warm = levels
    assert cold[1] == 0 and set(cold[0] // p) == {0, 4, 8}
    for offsets, back in warm:  # every source is solved at an earlier level
        assert back > 0 and np.all((offsets - back) // p >= 0)


def test_cli_warm_start_flag(tmp_path, capsys):
    from poa_jax import cli

    p = tmp_path / "nc.toml"
    p.write_text(TINY)
    out = tmp_path / "o"
    assert cli.main(["sweep", str(p), "--out", str(out), "--warm-start", "load",
                     "--no-progress"]) == 0  # fmt: skip
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert summary["solver"]["warm_start"] == "load"
    capsys.readouterr()
    assert cli.main(["sweep", "--preset", "llama70b-1p2d", "--warm-start", "load"]) == 2
    assert "--warm-start: applies to scenario sweeps" in capsys.readouterr().err
