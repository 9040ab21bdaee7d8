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


def test_a_converged_equilibrium_is_its_own_warm_start():
    g = random_games(3, 12)
    cold = pj.price_of_anarchy(g, starts=3)
    assert cold.start_flows.shape == (12, 3, 5, 6)
    # Flows of the same game at twice the demand: the rescaling must bring them back exactly.
    warm = pj.price_of_anarchy(g, x0=2.0 * cold.start_flows)
    ok = cold.equilibrium.converged
    assert ok.mean() > 0.7
    np.testing.assert_array_equal(warm.equilibrium.iterations[ok], 0)
    np.testing.assert_allclose(warm.equilibrium.social_cost[ok],
                               cold.equilibrium.social_cost[ok], rtol=1e-12)  # fmt: skip
    np.testing.assert_allclose(warm.poa[ok], cold.poa[ok], rtol=1e-9)


def test_warm_starts_zero_missing_workers_and_fill_empty_rows():
    g = random_games(4, 2, classes=2, workers=3, cache=False)
    g = dataclasses.replace(g, worker_mask=np.array([[True, True, False], [True, True, True]]))
    x0 = np.zeros((2, 1, 2, 3))
    x0[0, 0, 0] = [1.0, 0.0, 5.0]  # mass on the missing worker is dropped
    res = pj.price_of_anarchy(g, x0=x0)  # row 0, class 1 and all of game 1: uniform starts
    f = res.start_flows[:, 0]
    assert np.all(f[0, :, 2] == 0.0)
    np.testing.assert_allclose(f.sum(-1), np.asarray(g.demand), rtol=1e-9)
    assert np.all(res.equilibrium.converged)


def test_continuation_reaches_the_unique_costs_in_fewer_iterations():
    """No cache term: one equilibrium cost per game. A load curve of 8 points per game."""
    base = random_games(5, 6, cache=False)
    factors = np.linspace(0.5, 1.0, 8)
    # Batch (6 games, 8 loads) flattened game-major: row = game * 8 + u.
    g = jax.tree_util.tree_map(lambda a: np.repeat(a, 8, axis=0) if np.ndim(a) else a, base)
    g = dataclasses.replace(g, demand=np.asarray(g.demand) * np.tile(factors, 6)[:, None])
    cold = pj.price_of_anarchy(g, starts=2)
    rows = np.arange(48).reshape(6, 8)
    levels = [(rows[:, 0], np.full(6, -1))]  # then each load from its lower neighbour
    levels += [(rows[:, u], rows[:, u - 1]) for u in range(1, 8)]
    warm = pj.price_of_anarchy(g, starts=2, continuation=levels)
    assert np.all(cold.equilibrium.converged) and np.all(warm.equilibrium.converged)
    np.testing.assert_allclose(warm.equilibrium.social_cost, cold.equilibrium.social_cost,
                               rtol=1e-7)  # fmt: skip
    np.testing.assert_allclose(warm.poa, cold.poa, rtol=1e-6)
    it_w = warm.equilibrium.iterations[rows[:, 1:]].sum()
    it_c = cold.equilibrium.iterations[rows[:, 1:]].sum()
    assert it_w < 0.85 * it_c, (it_w, it_c)  # measured 733 against 963
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
    text = TINY.replace("shareable = 0.5", "shareable = 0.0").replace(
        "shareable = 0.2", "shareable = 0.0"
    )
    text = text.replace("values = [0.3, 0.7, 1.0]", "min = 0.1\nmax = 0.9\npoints = 7")
    text = text.replace('dtype = "float32"', 'dtype = "float64"')
    return S.Scenario.from_dict(tomllib.loads(text), source="tiny.toml")


def test_warm_sweep_matches_cold_where_the_equilibrium_is_unique(tmp_path):
    sc = _no_cache()
    cold = sweep.run_sweep(sc, tmp_path / "cold", progress=False).table.to_pydict()
    warm_sc = sc.with_solver(warm_start="load")
    assert warm_sc.hash() != sc.hash()  # old parts are not reused for the other scheme
    warm = sweep.run_sweep(warm_sc, tmp_path / "warm", progress=False, chunk_size=5)
    w = warm.table.to_pydict()
    assert warm.summary["chunk_points"] == 14  # rounded up to whole curves: 7 loads × 2 policies
    assert w["point"] == cold["point"]
    assert all(cold["converged"]) and all(w["converged"])
    np.testing.assert_allclose(w["eq_cost"], cold["eq_cost"], rtol=1e-7)
    np.testing.assert_allclose(w["poa"], cold["poa"], rtol=1e-6)
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
