"""The caching games through ``pj.solve_equilibrium`` and ``pj.solve_optimum`` (issue 4's "same
functions"), checked against the issue's closed-form instances and the modules' own solvers."""

from __future__ import annotations

import numpy as np
import pytest

import poa_jax as pj
from poa_jax import caching, coupled, tiered_cache


def test_discrete_two_clusters_through_the_generic_functions():
    g = pj.SelfishCachingGame(caching.cluster_distance(2, 5, 0.0, 0.9), 1.0)
    eq = pj.solve_equilibrium(g)
    assert isinstance(eq, caching.BestResponse)
    assert eq.stable.all()
    np.testing.assert_allclose(eq.costs, 5.5)  # every equilibrium: one replica, cost 5.5
    opt = pj.solve_optimum(g)
    assert isinstance(opt, caching.CachingOptimum) and bool(opt.exact)
    assert float(opt.social_cost) == pytest.approx(2.0)
    assert int(opt.profile.sum()) == 2  # one replica per cluster


def test_discrete_star_optimum_and_the_large_n_path():
    star = pj.SelfishCachingGame(caching.star_distance(4, 1.0, 2.0), 1.5)
    assert float(pj.solve_optimum(star).social_cost) == pytest.approx(5.5)
    line = pj.SelfishCachingGame(caching.line_distance(18), 4.5)  # 2¹⁸ profiles: no enumeration
    opt = pj.solve_optimum(line)
    eq = pj.solve_equilibrium(line)
    assert not bool(opt.exact)
    assert float(opt.lower_bound) <= float(opt.social_cost) + 1e-9
    assert float(opt.social_cost) <= np.where(eq.stable, eq.costs, np.inf).min() + 1e-9
    small = pj.solve_optimum(line, dtype=None)  # the same call again: deterministic
    np.testing.assert_array_equal(small.profile, opt.profile)


def test_solve_optimum_passes_starts_to_the_discrete_game(monkeypatch):
    """``starts`` reaches the discrete game's optimum (at least its own 16, as in
    ``pj.price_of_anarchy``); it was checked and then dropped."""
    seen = []

    def record(game, **kw):
        seen.append(kw["starts"])
        return "optimum"

    monkeypatch.setattr(caching, "solve_optimum", record)
    line = pj.SelfishCachingGame(caching.line_distance(18), 4.5)
    assert pj.solve_optimum(line, starts=64) == "optimum"
    pj.solve_optimum(line)  # the generic default, 2
    assert seen == [64, 16]


def _fluid():
    rng = np.random.default_rng(0)
    return pj.TieredCacheGame(
        distance=caching.line_distance(3),
        rates=rng.uniform(0.1, 1.0, (2, 3, 6)),
        capacity=np.full((2, 3, 2), 2.0),
    )


def test_fluid_game_through_the_generic_functions():
    g = _fluid()
    eq, ref = pj.solve_equilibrium(g), tiered_cache.solve_equilibrium(g)
    np.testing.assert_array_equal(eq.placement, ref.placement)
    assert eq.converged.all()
    opt = pj.solve_optimum(g)
    assert np.all(opt.social_cost <= eq.social_cost * (1 + 1e-9))


def test_coupled_game_and_bad_calls(cache_games):
    k = np.asarray(cache_games.latency.a).shape[-1]  # workers
    game = pj.CoupledGame(cache_games, np.ones((k, k)) - np.eye(k), np.ones((k, 2)))
    sol = pj.solve_equilibrium(game)
    assert isinstance(sol, coupled.CoupledSolution) and sol.converged.all()
    opt = pj.solve_optimum(game, starts=4)
    assert isinstance(opt, coupled.CoupledOptimum)
    assert np.all(opt.social_cost <= sol.social_cost)
    ref = pj.price_of_anarchy(game)  # the same joint descent (4 generated starts) behind the PoA
    np.testing.assert_array_equal(opt.social_cost, ref.optimum_cost)
    # the fields every game's result has (issue 4's API): one fixed point, so one cost
    np.testing.assert_array_equal(ref.equilibrium_costs, np.asarray(sol.social_cost)[:, None])
    np.testing.assert_array_equal(ref.equilibrium_count, 1)
    np.testing.assert_allclose(ref.poa, ref.equilibrium_costs[:, 0] / ref.optimum_cost)
    np.testing.assert_allclose(opt.flows.sum(-1), np.asarray(cache_games.demand), rtol=1e-9)
    off = pj.CoupledGame(cache_games, np.ones((k, k)) - np.eye(k), np.ones((k, 2)), caching=False)
    np.testing.assert_array_equal(pj.solve_optimum(off).social_cost,
                                  pj.solve_optimum(cache_games).social_cost)  # fmt: skip
    routing = pj.price_of_anarchy(off)  # the routing game's result, with the same fields
    np.testing.assert_array_equal(routing.optimum_cost, routing.optimum.social_cost)
    np.testing.assert_allclose(routing.poa, routing.equilibrium_costs[:, 0] / routing.optimum_cost)
    with pytest.raises(pj.InputError, match="starts from the coupled fixed point"):
        pj.solve_optimum(game, x0=np.ones(3))
    g = pj.SelfishCachingGame(caching.complete_distance(3), 1.0)
    with pytest.raises(pj.InputError, match="selfish"):
        pj.solve_equilibrium(g, pj.policies.dynamo(omega=1.0, tau=0.0))
    with pytest.raises(pj.InputError, match="takes no start"):
        pj.solve_optimum(g, x0=np.ones(3, bool))


@pytest.mark.parametrize(
    ("kw", "rule"),
    [
        ({"method": "nonsense"}, "method 'nonsense'.*must be 'auto'"),
        ({"tol": -5.0}, "tol = -5.0: must be finite and > 0"),
        ({"starts": 0}, "starts = 0: must be an integer >= 1"),
        ({"max_iters": 0}, "max_iters = 0: must be an integer >= 1"),
    ],
)
def test_generic_functions_refuse_bad_options_for_caching_games(kw, rule):
    # (these were dropped silently: tol, method and max_iters never reached the caching solvers,
    # and starts = 0 was raised to 16)
    star = pj.SelfishCachingGame(caching.star_distance(4, 1.0, 2.0), 1.5)
    fluid = _fluid()
    for fn in (pj.price_of_anarchy, pj.solve_equilibrium):
        if "starts" in kw and fn is pj.solve_equilibrium:
            continue
        with pytest.raises(pj.InputError, match=rule):
            fn(star, **kw)
        if "tol" in kw or "starts" in kw:
            continue  # the fluid game's own checks (tests/test_tiered_cache.py)
        with pytest.raises(pj.InputError, match=rule.replace("discrete", "fluid")):
            fn(fluid, **kw)
    with pytest.raises(pj.InputError, match="starts = 0"):
        pj.solve_optimum(star, starts=0)
