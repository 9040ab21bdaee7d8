"""Routing ⇄ caching fixed point (issue 4): reduces to the routing game; a real fixed point."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import poa_jax as pj
from poa_jax import coupled, tiered_cache

K, T = 4, 2


@pytest.fixture(scope="module")
def routing(cache_games):
    """The suite's shared SMALL cache-on batch (8 games, 3 classes × 4 workers): its routing
    executables are compiled once for the whole suite."""
    return cache_games


def _topology():
    return np.ones((K, K)) - np.eye(K)


def test_caching_off_is_the_routing_game_exactly(routing):
    off = pj.CoupledGame(routing, _topology(), np.ones((K, T)), caching=False)
    s, e = coupled.solve(off), pj.solve_equilibrium(routing)
    np.testing.assert_array_equal(s.flows, e.flows)
    np.testing.assert_array_equal(s.social_cost, e.social_cost)
    # PoA on Pigou (small: its compile is cheap and shared with the CLI tests)
    pigou = pj.RoutingGame(demand=[1.0], latency=pj.Latency(a=[0.0, 1.0], b=[1.0, 0.0]))
    off = pj.CoupledGame(pigou, np.zeros((2, 2)), np.ones((2, T)), caching=False)
    a, b = pj.price_of_anarchy(off), pj.price_of_anarchy(pigou)
    np.testing.assert_array_equal(a.poa, b.poa)
    np.testing.assert_array_equal(a.equilibrium.flows, b.equilibrium.flows)
    np.testing.assert_array_equal(a.optimum.social_cost, b.optimum.social_cost)
    assert float(a.poa) == pytest.approx(4 / 3, rel=1e-6)


def test_no_capacity_is_the_routing_game_without_cache(routing):
    """Caching on but nothing fits: the routing stage is the cache-free routing game."""
    z = coupled.solve(pj.CoupledGame(routing, _topology(), np.zeros((K, T))))
    e0 = pj.solve_equilibrium(dataclasses.replace(routing, shareable=0.0))
    assert z.converged.all() and np.all(z.hit == 0)
    np.testing.assert_allclose(z.social_cost, e0.social_cost, rtol=1e-6)


#: Tier values: Dynamo-like credits per tier, or access latencies per worker and tier (as a
#: fraction of the recompute time; the last worker's second tier is slower than recomputing).
LATENCY = np.array([[0.0, 0.5], [0.1, 0.6], [0.05, 0.3], [0.2, 1.4]])
VALUES = {
    "credit": dict(credit=[1.0, 0.5]),
    "latency": dict(access_latency=LATENCY),
    # a shared pool of 2 tokens read at 0.6 (credits) by every worker
    "pool": dict(credit=[1.0, 0.5], shared_capacity=2.0, shared_credit=0.6),
}
#: A peer's copy is worth 0.5·e^(−1) with credits; with latencies the distance is the transfer
#: time per token as a fraction of the recompute: 0.6 saves 40% of a miss.
DIST = {"credit": 1.0, "latency": 0.6, "pool": 1.0}
REACH = {"credit": 0.5 * np.exp(-1.0), "latency": 0.4, "pool": 0.5 * np.exp(-1.0)}


@pytest.mark.parametrize("value", list(VALUES))
def test_fixed_point_is_consistent(routing, value):
    topo = DIST[value] * _topology()
    game = pj.CoupledGame(routing, topo, np.full((K, T), 1.0), **VALUES[value])
    v = np.broadcast_to([1.0, 0.5], (K, T)) if value != "latency" else np.clip(1 - LATENCY, 0, 1)
    r = pj.price_of_anarchy(game)
    s = r.equilibrium
    assert s.converged.all() and (s.residual <= 1e-6).all() and (s.rounds >= 1).all()
    assert (s.routing_gap <= 1e-6).all() and (s.caching_gap <= 1e-9).all()
    assert (r.poa >= 1.0).all() and (r.optimum_cost <= s.social_cost).all()
    # the joint optimum is first-order stationary (its Frank–Wolfe gap), and says so
    assert (r.optimum_gap <= 1e-6).all() and (r.optimum_status == 0).all() and r.converged.all()
    if value == "latency":  # a worker keeps nothing for itself in a tier slower than recompute
        assert np.all(s.placement[:, 3, 1] == 0) and np.any(s.placement[:, 3, 0] > 0)
    pool = value == "pool"
    assert (s.shared is None) != pool and (r.optimum_shared is None) != pool
    if pool:  # the pool holds something, within its 2 tokens
        size_all = np.asarray(routing.shareable) * np.asarray(routing.tokens)
        assert ((s.shared * size_all).sum(-1) <= 2.0 + 1e-9).all() and (s.shared > 0).any()
    # The caching stage at the fixed point's rates reproduces the hit fractions fed to routing.
    eta = np.asarray(routing.shareable)
    tokens = np.asarray(routing.tokens)
    for b in range(s.flows.shape[0]):
        size = np.maximum(eta[b] * tokens[b], 1e-9 * tokens[b])
        tg = pj.TieredCacheGame(
            topo, s.flows[b].T, np.full((K, T), 1.0), miss_cost=eta[b] * tokens[b],
            size=size, **VALUES[value],
        )  # fmt: skip
        y0 = s.placement[b]
        if pool:  # the fixed point's pool holding as the start's last row
            y0 = np.concatenate([y0, np.zeros((1, T, y0.shape[-1]))])
            y0[K, 0] = s.shared[b]
        eq = tiered_cache.solve_equilibrium(tg, y0=y0)
        assert eq.converged and eq.gap <= 1e-9
        own = np.einsum("kt,ktj->kj", v, eq.placement)
        reach = REACH[value] * _topology()
        h = eq.placement.sum(1)
        peer = 1 - np.prod(1 - reach[:, :, None] * h[None], axis=1)
        if pool:
            np.testing.assert_allclose(eq.shared, s.shared[b], atol=1e-9)
            peer = 1 - (1 - peer) * (1 - 0.6 * eq.shared[None])
        hit = eta[b][:, None] * (1 - (1 - own) * (1 - peer)).T
        np.testing.assert_allclose(hit, s.hit[b], atol=5e-6)


def test_a_stage_out_of_iterations_is_not_converged(routing):
    """The fixed point converges only where both stages met their tolerances: with a routing
    tolerance below what float64 reaches, the alternation settles (the residual meets
    ``outer_tol``) but the routing stage runs out of iterations, and the status says so."""
    game = pj.CoupledGame(routing, _topology(), np.full((K, T), 1.0), credit=[1.0, 0.5])
    s = coupled.solve(game, tol=1e-30, max_iters=100, max_outer=30)
    short = s.routing_gap > 1e-30
    assert (short & (s.residual <= 1e-6)).any()  # settled, but the routing stage is short
    np.testing.assert_array_equal(s.converged[short], False)
    np.testing.assert_array_equal(s.status[short], 1)


def test_bad_input(routing, compile_counter):
    with pytest.raises(pj.InputError, match="K = 4"):
        coupled.solve(pj.CoupledGame(routing, np.zeros((3, 3)), np.ones((K, T))))
    with pytest.raises(pj.InputError, match="capacity"):
        coupled.solve(pj.CoupledGame(routing, _topology(), -np.ones((K, T))))
    with pytest.raises(pj.InputError, match="give credit or access_latency, not both"):
        coupled.solve(pj.CoupledGame(routing, _topology(), np.ones((K, T)), credit=[1.0, 0.5],
                                     access_latency=LATENCY))  # fmt: skip
    with pytest.raises(pj.InputError, match="access_latency has shape"):
        coupled.solve(pj.CoupledGame(routing, _topology(), np.ones((K, T)),
                                     access_latency=np.ones((K + 1, T))))  # fmt: skip
    with pytest.raises(pj.InputError, match="damping"):
        coupled.solve(pj.CoupledGame(routing, _topology(), np.ones((K, T)), damping=0.0))
    assert compile_counter.solver_count == 0


def test_generated_optimum_starts_find_lower_optima(routing):
    """The joint optimum is local: 16 generated starts besides the fixed point find a lower
    optimum on some instances of the test family (and never a higher one than the fixed
    point); a bad count is refused before any solve."""
    game = pj.CoupledGame(routing, _topology(), np.full((K, T), 1.0), credit=[1.0, 0.5])
    # The starts alone, without the Frank–Wolfe rounds that refine the best one.
    one = coupled.price_of_anarchy(game, optimum_starts=0, optimum_rounds=0)
    many = coupled.price_of_anarchy(game, optimum_starts=16, optimum_rounds=0)
    assert (many.optimum_cost <= many.equilibrium.social_cost + 1e-12).all()
    assert (many.poa >= 1.0).all()
    assert (many.optimum_cost < one.optimum_cost * (1 - 1e-3)).sum() >= 2
    with pytest.raises(pj.InputError, match="optimum_starts = -1"):
        coupled.solve_optimum(game, optimum_starts=-1)
    with pytest.raises(pj.InputError, match="optimum_starts = 1.5"):
        coupled.price_of_anarchy(game, optimum_starts=1.5)


# --------------------------------------------------------------------------- the API audit


def test_errors_name_the_coupled_game(routing, take_instances, compile_counter):
    cap = np.ones((K, T))
    with pytest.raises(pj.InputError, match=r"^CoupledGame\.credit\[0\] = 2\.0: must be in"):
        coupled.solve(pj.CoupledGame(routing, _topology(), cap, credit=[2.0, 0.5]))
    directed = _topology() + np.triu(_topology())
    with pytest.raises(pj.InputError, match=r"must be symmetric$"):  # no symmetric= to suggest
        coupled.solve(pj.CoupledGame(routing, directed, cap))
    with pytest.raises(pj.InputError, match=r"capacity has shape \(4, 0\): needs at least one"):
        pj.CoupledGame(routing, _topology(), np.ones((K, 0)))  # at construction
    with pytest.raises(pj.InputError, match=r"distance has shape \(0, 0\): needs at least one"):
        pj.CoupledGame(routing, np.zeros((0, 0)), cap)
    none = pj.RoutingGame(demand=np.zeros(0), latency=pj.Latency(a=[0.0, 1.0], b=[1.0, 0.0]))
    with pytest.raises(pj.InputError, match=r"routing\.demand has shape \(0,\): needs at least"):
        pj.CoupledGame(none, np.zeros((2, 2)), np.ones((2, T)))
    with pytest.raises(pj.InputError, match="empty batch"):  # (its routing game says so first)
        pj.price_of_anarchy(pj.CoupledGame(take_instances(routing, slice(0, 0)), _topology(), cap))
    with pytest.raises(pj.InputError, match="caching = 'no': must be True or False"):
        pj.CoupledGame(routing, _topology(), cap, caching="no")
    with pytest.raises(pj.InputError, match="capacity: must be real"):
        coupled.solve(pj.CoupledGame(routing, _topology(), cap * 1j))
    assert compile_counter.solver_count == 0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(method="nonsense"), "method 'nonsense'"),
        (dict(starts=0), "starts = 0"),
        (dict(tol=-5.0), "tol = -5.0"),
        (dict(outer_tol=-1.0), "outer_tol = -1.0"),
        (dict(max_outer=0), "max_outer = 0"),
        (dict(lr=0.0), "lr = 0.0"),
        (dict(optimum_steps=0), "optimum_steps = 0"),
        (dict(seed=-1), "seed = -1"),
        (dict(optimum_tol=0.0), "optimum_tol = 0.0"),
        (dict(optimum_rounds=-1), "optimum_rounds = -1"),
    ],
)
def test_options_are_checked(routing, kwargs, match, compile_counter):
    game = pj.CoupledGame(routing, _topology(), np.ones((K, T)))
    with pytest.raises(pj.InputError, match=match):
        coupled.price_of_anarchy(game, **kwargs)
    if set(kwargs) <= {"method", "starts", "tol", "seed"}:  # pj.price_of_anarchy's options
        with pytest.raises(pj.InputError, match=match):
            pj.price_of_anarchy(game, **kwargs)
    assert compile_counter.solver_count == 0


def test_a_game_alone_and_inside_a_batch_give_the_same_results(routing, take_instances):
    """The random optimum starts (flows and placements) are drawn from the seed alone and
    shared by every instance: three instances alone give their numbers in the batch of 8."""
    game = pj.CoupledGame(routing, _topology(), np.full((K, T), 1.0), credit=[1.0, 0.5])
    batch = pj.price_of_anarchy(game)
    for b in (0, 3, 6):
        one = dataclasses.replace(game, routing=take_instances(routing, [b]))
        alone = pj.price_of_anarchy(one)
        np.testing.assert_allclose(alone.poa, batch.poa[[b]], rtol=1e-6)
        np.testing.assert_allclose(alone.optimum_cost, batch.optimum_cost[[b]], rtol=1e-6)
        np.testing.assert_allclose(
            alone.equilibrium.social_cost, batch.equilibrium.social_cost[[b]], rtol=1e-6
        )


# --------------------------------------------------------------------------- joint optimum


def _coupled_sc(game1, x, y, reach, v):
    """SC of one instance at flows ``x (J, K)`` and placement ``y (K, T, J)``, in NumPy from
    the model's formulas (DESIGN §2.2–2.3), not the solver's code."""
    eta, tokens = np.asarray(game1.shareable)[0], np.asarray(game1.tokens)[0]
    own = np.einsum("kt,ktj->kj", v, y)
    q = np.prod(1 - reach[:, :, None] * y.sum(1)[None], axis=1)
    n = tokens[:, None] * (1 - eta[:, None] * (1 - (1 - own) * q).T)  # uncached tokens (J, K)
    w = (x * n).sum(0)
    lat = np.asarray(game1.latency.value(w[None]))[0]
    pre = np.asarray(game1.prefill.value(n[None]))[0]
    return float((x * (lat[None] + pre)).sum())


def _scipy_gap(game1, x, y, reach, v, cap):
    """Relative Frank–Wolfe gap by central differences and scipy's linprog over the joint
    feasible set: flows on ``Σ_k x = d``, placements with ``Σ_t y ≤ 1`` per block and
    ``Σ_j s_j·y ≤ cap`` per worker and tier."""
    from scipy.optimize import linprog

    z = np.concatenate([x.ravel(), y.ravel()])
    nx = x.size

    def f(z):
        return _coupled_sc(game1, z[:nx].reshape(x.shape), z[nx:].reshape(y.shape), reach, v)

    grad = np.array([(f(z + e) - f(z - e)) / 2e-7 for e in 1e-7 * np.eye(z.size)])
    j, k = x.shape
    t = y.shape[1]
    size = np.asarray(game1.shareable)[0] * np.asarray(game1.tokens)[0]
    a_eq = np.zeros((j, z.size))
    for c in range(j):
        a_eq[c, c * k : (c + 1) * k] = 1
    rows, b = [], []
    idx = nx + np.arange(y.size).reshape(y.shape)
    for w in range(k):
        for c in range(j):  # one block's tier fractions
            r = np.zeros(z.size)
            r[idx[w, :, c]] = 1
            rows.append(r), b.append(1.0)
        for tt in range(t):  # one tier's capacity
            r = np.zeros(z.size)
            r[idx[w, tt]] = size
            rows.append(r), b.append(cap[w, tt])
    lp = linprog(grad, A_ub=np.array(rows), b_ub=b, A_eq=a_eq, b_eq=np.asarray(game1.demand)[0],
                 bounds=(0, None), method="highs")  # fmt: skip
    assert lp.status == 0
    return (grad @ z - lp.fun) / f(z), f(z)


def test_joint_optimum_gap_is_the_frank_wolfe_gap(routing, take_instances):
    """The optimum's reported gap is the Frank–Wolfe gap that scipy computes independently
    (central differences of SC written in NumPy, linprog over the joint feasible set): at the
    best start's end point, where it is far from 0, and after the rounds of Frank–Wolfe steps
    and descent, which bring it to ≤ 1e-6 and raise the PoA where the starts stopped short."""
    cap = np.full((K, T), 1.0)
    game = pj.CoupledGame(routing, _topology(), cap, credit=[1.0, 0.5])
    assert np.asarray(routing.worker_mask).all()
    rough = coupled.price_of_anarchy(game, optimum_rounds=0)
    fine = coupled.price_of_anarchy(game)
    assert (rough.optimum_status == 1).any() and (fine.optimum_status == 0).all()
    assert (fine.optimum_cost <= rough.optimum_cost * (1 + 1e-12)).all()
    assert (fine.poa > rough.poa * (1 + 1e-2)).sum() >= 2  # up to 6% lower on this family
    reach = REACH["credit"] * _topology()
    v = np.broadcast_to([1.0, 0.5], (K, T))
    for b in range(0, 8, 3):
        game1 = take_instances(routing, [b])
        for r in (rough, fine):
            gap, sc = _scipy_gap(game1, r.optimum_flows[b], r.optimum_placement[b], reach, v, cap)
            assert sc == pytest.approx(r.optimum_cost[b], rel=1e-9)
            # (central differences of SC ≈ 10 at step 1e-7 carry ~1e-9 of rounding each)
            assert gap == pytest.approx(r.optimum_gap[b], rel=1e-4, abs=1e-7)
            assert r is rough or gap <= 1e-6 + 1e-7


def test_a_padded_worker_holds_nothing(routing):
    """A padded worker (``worker_mask`` False, to batch topologies of different sizes) does
    not exist: whatever capacity the batch gives it, it caches nothing, at the fixed point or
    in the joint optimum, and the game is the one where it has none. (Its capacity used to
    serve its peers in the joint optimum: 1.2025 for 1.2149 on a 2-worker game padded to 3.)"""
    padded = dataclasses.replace(routing, worker_mask=[True, True, True, False])
    cap = np.full((K, T), 1.0)
    game = pj.CoupledGame(padded, _topology(), cap, credit=[1.0, 0.5])
    none = pj.CoupledGame(padded, _topology(), np.where(np.arange(K)[:, None] < 3, cap, 0.0),
                          credit=[1.0, 0.5])  # fmt: skip
    a, b = pj.price_of_anarchy(game), pj.price_of_anarchy(none)
    assert np.all(a.optimum_placement[:, 3] == 0) and np.all(a.equilibrium.placement[:, 3] == 0)
    np.testing.assert_allclose(a.optimum_cost, b.optimum_cost, rtol=1e-12)
    np.testing.assert_allclose(a.poa, b.poa, rtol=1e-12)


def test_an_overflowed_fixed_point_is_non_finite(routing):
    """Demands past what the latencies can price in float64: the routing stage overflows, and
    the fixed point says so (status 2, as the routing game alone; it said 1, "out of rounds"),
    and its PoA is NaN, not a number read off infinite costs."""
    huge = dataclasses.replace(routing, demand=np.asarray(routing.demand) * 1e200)
    game = pj.CoupledGame(huge, _topology(), np.full((K, T), 1.0), credit=[1.0, 0.5])
    with np.errstate(over="ignore", invalid="ignore"):
        s = coupled.solve(game, max_outer=2)
    bad = ~np.isfinite(s.social_cost)
    assert bad.any()
    np.testing.assert_array_equal(s.status[bad], 2)
    assert not s.converged[bad].any()
