"""Answers known in closed form (STYLE 8): Pigou, the degree-d Pigou bound, M/M/1 links, affine
links, same-degree monomials — PoA, equilibrium and optimum flows and costs, for every method.

All instances are two parallel links and one class, so they form **one** batch ``(N, 1, 2)``: one
compile per method, and heterogeneous latencies in one array exercise per-instance parameters.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import poa_jax as pj

INF = float("inf")
METHODS = ["projection", "extragradient", "frank_wolfe"]


@dataclasses.dataclass(frozen=True)
class Oracle:
    name: str
    demand: float
    # two links, fields of pj.Latency
    a: tuple[float, float] = (0.0, 0.0)
    b: tuple[float, float] = (0.0, 0.0)
    c: tuple[float, float] = (0.0, 0.0)
    p: tuple[float, float] = (1.0, 1.0)
    d: tuple[float, float] = (0.0, 0.0)
    kappa: tuple[float, float] = (INF, INF)
    # closed-form answers
    poa: float = 1.0
    eq_link0: float = 0.0  # equilibrium flow on link 0
    opt_link0: float = 0.0  # optimal flow on link 0
    eq_cost: float = 0.0  # SC at equilibrium
    opt_cost: float = 0.0  # SC at the optimum


def pigou_d(d: int) -> float:
    """PoA of Pigou's network with latencies x^d and 1 at demand 1 (Roughgarden 2003)."""
    return 1.0 / (1.0 - d * (d + 1) ** (-(d + 1) / d))


def _oracles() -> list[Oracle]:
    out = []
    # Pigou: links x and 1. Equilibrium min(D, 1) on link 0; optimum x = 1/2 (if D ≥ 1/2).
    for demand, poa in [(1.0, 4 / 3), (2.0, 8 / 7), (0.5, 1.0)]:
        eq0 = min(demand, 1.0)
        out.append(
            Oracle(
                f"pigou D={demand}", demand, a=(0.0, 1.0), b=(1.0, 0.0), poa=poa,
                eq_link0=eq0, opt_link0=0.5, eq_cost=eq0**2 + (demand - eq0),
                opt_cost=0.25 + (demand - 0.5),
            )
        )  # fmt: skip
    # Degree-d Pigou: x^d and 1, demand 1. Optimum (d+1)x^d = 1.
    for d in (1, 2, 3, 4):
        x = (d + 1) ** (-1 / d)
        out.append(
            Oracle(
                f"pigou x^{d}", 1.0, a=(0.0, 1.0), c=(1.0, 0.0), p=(float(d), 1.0),
                poa=pigou_d(d), eq_link0=1.0, opt_link0=x, eq_cost=1.0,
                opt_cost=x ** (d + 1) + 1 - x,
            )
        )  # fmt: skip
    # M/M/1 link 1/(1 − x) (a = d = 1, κ = 1) against a constant link.
    #   constant 4, D = 3/4: equilibrium 1/(1 − x) = 4 at x = 3/4; optimum 1/(1 − x)² = 4.
    out.append(
        Oracle(
            "mm1 vs 4", 0.75, a=(1.0, 4.0), d=(1.0, 0.0), kappa=(1.0, INF), poa=1.5,
            eq_link0=0.75, opt_link0=0.5, eq_cost=3.0, opt_cost=2.0,
        )
    )  # fmt: skip
    #   constant 2, D = 1/2: equilibrium x = 1/2; optimum 1/(1 − x)² = 2, x = 1 − 1/√2.
    x = 1 - 2**-0.5
    out.append(
        Oracle(
            "mm1 vs 2", 0.5, a=(1.0, 2.0), d=(1.0, 0.0), kappa=(1.0, INF),
            poa=1 / (2 * 2**0.5 - 2), eq_link0=0.5, opt_link0=x, eq_cost=1.0,
            opt_cost=x / (1 - x) + 2 * (0.5 - x),
        )
    )  # fmt: skip
    # Affine 2x and x + 1, D = 1: equilibrium 2x = 2 − x (x = 2/3), optimum 4x = 3 − 2x (1/2).
    out.append(
        Oracle(
            "2x vs x+1", 1.0, a=(0.0, 1.0), b=(2.0, 1.0), poa=16 / 15, eq_link0=2 / 3,
            opt_link0=0.5, eq_cost=4 / 3, opt_cost=1.25,
        )
    )  # fmt: skip
    # Same-degree monomials A x², B x²: marginal costs are 3× the costs, so eq = opt, PoA 1.
    for (aa, bb), demand in [((1.0, 3.0), 0.5), ((1.0, 3.0), 3.0), ((2.0, 0.5), 1.0)]:
        share = bb**0.5 / (aa**0.5 + bb**0.5)
        x = demand * share
        sc = aa * x**3 + bb * (demand - x) ** 3
        out.append(
            Oracle(
                f"{aa}x^2 vs {bb}x^2 D={demand}", demand, c=(aa, bb), p=(2.0, 2.0), poa=1.0,
                eq_link0=x, opt_link0=x, eq_cost=sc, opt_cost=sc,
            )
        )  # fmt: skip
    # Same-degree cubics with offsets 0: a·x³ and b·x³, again PoA 1.
    share = 1 / (1 + 2 ** (1 / 3))  # x0³ = 2·x1³
    out.append(
        Oracle(
            "2x^3 vs x^3 D=2", 2.0, c=(2.0, 1.0), p=(3.0, 3.0), poa=1.0, eq_link0=2 * share,
            opt_link0=2 * share, eq_cost=2 * (2 * share) ** 4 + (2 - 2 * share) ** 4,
            opt_cost=2 * (2 * share) ** 4 + (2 - 2 * share) ** 4,
        )
    )  # fmt: skip
    return out


ORACLES = _oracles()
IDS = [o.name for o in ORACLES]


def _col(field: str) -> np.ndarray:
    return np.array([getattr(o, field) for o in ORACLES], np.float64)


@pytest.fixture(scope="module")
def game() -> pj.RoutingGame:
    lat = pj.Latency(**{f: _col(f) for f in ("a", "b", "c", "p", "d", "kappa")})
    return pj.RoutingGame(demand=_col("demand")[:, None], latency=lat)


@pytest.fixture(scope="module")
def poa_results(game):
    cache = {}

    def get(method):
        if method not in cache:
            cache[method] = pj.price_of_anarchy(game, method=method)
        return cache[method]

    return get


def test_closed_forms_are_the_published_numbers():
    # Guards the oracles themselves (Roughgarden's degree-d Pigou bound, to 10 digits).
    published = [1.3333333333, 1.6257523846, 1.8956282038, 2.1505017649]
    np.testing.assert_allclose([pigou_d(d) for d in (1, 2, 3, 4)], published, atol=1e-10)
    np.testing.assert_allclose(1 / (2 * 2**0.5 - 2), 1.2071067812, atol=1e-10)
    for o in ORACLES:
        np.testing.assert_allclose(o.eq_cost / o.opt_cost, o.poa, rtol=1e-14, err_msg=o.name)


@pytest.mark.parametrize("method", METHODS)
def test_price_of_anarchy(poa_results, method):
    r = poa_results(method)
    assert r.poa.shape == (len(ORACLES),)
    np.testing.assert_allclose(r.poa, _col("poa"), rtol=0, atol=1e-7)
    # Without the cache term equilibrium costs are unique: PoS = PoA, every start agrees.
    np.testing.assert_allclose(r.price_of_stability, _col("poa"), rtol=0, atol=1e-7)
    costs = r.equilibrium_costs
    np.testing.assert_allclose(costs, np.broadcast_to(costs[:, :1], costs.shape), rtol=1e-7)


@pytest.mark.parametrize("method", METHODS)
def test_flows_and_costs(poa_results, method):
    r = poa_results(method)
    eq0 = _col("eq_link0")
    opt0 = _col("opt_link0")
    demand = _col("demand")
    np.testing.assert_allclose(r.equilibrium.flows[:, 0, 0], eq0, atol=1e-7)
    np.testing.assert_allclose(r.equilibrium.flows[:, 0, 1], demand - eq0, atol=1e-7)
    np.testing.assert_allclose(r.optimum.flows[:, 0, 0], opt0, atol=1e-7)
    np.testing.assert_allclose(r.optimum.flows[:, 0, 1], demand - opt0, atol=1e-7)
    np.testing.assert_allclose(r.equilibrium.social_cost, _col("eq_cost"), rtol=1e-8)
    np.testing.assert_allclose(r.optimum.social_cost, _col("opt_cost"), rtol=1e-8)
    np.testing.assert_allclose(r.optimum.mean_latency, _col("opt_cost") / demand, rtol=1e-8)
    assert not r.equilibrium.overloaded.any() and not r.optimum.overloaded.any()


@pytest.mark.parametrize("method", METHODS)
def test_converged_flags(poa_results, method):
    r = poa_results(method)
    assert np.all(r.converged_starts == 4)
    assert np.all(r.equilibrium.status == 0) and np.all(r.equilibrium.gap <= 1e-9)
    assert np.all(r.best_equilibrium.status == 0)
    # The optimum is exact (test_flows_and_costs); its status may be spuriously non-zero when
    # an unpolished warm start wins by rounding — see test_near_optimal_warm_starts_converge.
    assert np.all(r.optimum.gap <= 1e-8)
    assert np.all((r.optimum.status == 0) | (r.optimum.iterations == 0))


def test_near_optimal_warm_starts_converge():
    # 1·x² vs 3·x² at D = 3 (eq = opt), warm starts 1e-10 … 1e-6 away from the optimum. Every
    # polish converges; so must the reported optimum, whichever candidate wins.
    n = len(ORACLES)  # the shape of the oracle batch: the compiled optimum is shared
    demand = 3.0
    x_star = demand * 3**0.5 / (1 + 3**0.5)
    g = pj.RoutingGame(
        demand=np.full((n, 1), demand),
        latency=pj.Latency(c=np.tile([1.0, 3.0], (n, 1)), p=np.full((n, 2), 2.0)),
    )
    x0 = np.zeros((n, 4, 1, 2))
    x0[..., 0, 0] = x_star + np.logspace(-10, -6, 4 * n).reshape(n, 4)
    x0[..., 0, 1] = demand - x0[..., 0, 0]
    opt = pj.solve_optimum(g, starts=1, x0=x0)
    np.testing.assert_allclose(opt.flows[:, 0, 0], x_star, atol=1e-6)
    bad = np.flatnonzero(opt.status != 0)
    assert bad.size == 0, (bad, opt.iterations[bad], opt.gap[bad])


def test_methods_agree(poa_results):
    base = poa_results("projection")
    for method in METHODS[1:]:
        other = poa_results(method)
        np.testing.assert_allclose(other.poa, base.poa, atol=1e-7)
        np.testing.assert_allclose(
            other.equilibrium.social_cost, base.equilibrium.social_cost, rtol=1e-8
        )
        np.testing.assert_allclose(other.optimum.social_cost, base.optimum.social_cost, rtol=1e-8)


def test_auto_is_projection(game, poa_results):
    # "auto" picks projection dynamics for τ = 0 (and shares its compiled solver).
    auto = pj.price_of_anarchy(game, method="auto")
    np.testing.assert_array_equal(auto.poa, poa_results("projection").poa)
    np.testing.assert_array_equal(
        auto.equilibrium.flows, poa_results("projection").equilibrium.flows
    )


def test_solve_equilibrium_and_optimum(game, poa_results):
    eq = pj.solve_equilibrium(game)
    # Four extra warm starts (far from the optimum: everything on one link) give the optimum the
    # same number of starts as price_of_anarchy's, so the compiled solver is shared.
    demand = _col("demand")
    herd = np.zeros((len(ORACLES), 4, 1, 2))
    herd[:, :2, 0, 0] = demand[:, None]
    herd[:, 2:, 0, 1] = demand[:, None]
    opt = pj.solve_optimum(game, starts=1, x0=herd)
    np.testing.assert_allclose(eq.flows[:, 0, 0], _col("eq_link0"), atol=1e-7)
    np.testing.assert_allclose(eq.social_cost, _col("eq_cost"), rtol=1e-8)
    np.testing.assert_allclose(eq.mean_latency, _col("eq_cost") / demand, rtol=1e-8)
    np.testing.assert_allclose(opt.flows[:, 0, 0], _col("opt_link0"), atol=1e-7)
    np.testing.assert_allclose(opt.social_cost, _col("opt_cost"), rtol=1e-8)
    assert eq.converged.all() and opt.converged.all()
    np.testing.assert_allclose(eq.social_cost / opt.social_cost, _col("poa"), atol=1e-7)
    assert eq.flows.shape == (len(ORACLES), 1, 2) and eq.status.dtype.kind == "i"


def test_unbatched_game_gives_scalar_results():
    # Unbatched fields: batch shape (), results are scalars.
    g = pj.RoutingGame(demand=[1.0], latency=pj.Latency(a=[0.0, 1.0], b=[1.0, 0.0]))
    eq = pj.solve_equilibrium(g, method="frank_wolfe")
    assert eq.social_cost.shape == () and eq.flows.shape == (1, 2)
    np.testing.assert_allclose(eq.flows, [[1.0, 0.0]], atol=1e-9)
    np.testing.assert_allclose(float(eq.social_cost), 1.0, rtol=1e-12)
    assert bool(eq.converged)


@pytest.mark.parametrize("dtype,atol", [("float32", 1e-6), ("float64", 1e-12)])
@pytest.mark.parametrize("d", [1, 2, 4])
def test_degenerate_equilibria_are_exact(dtype, atol, d):
    """Degree-d Pigou's equilibrium leaves the constant link unused at the same cost: a
    degenerate equilibrium, where a gap within ``tol`` alone leaves SC only ``√tol`` accurate
    (float32 Pigou's PoS read 1.33309, and 8 starts gave 8 "equilibria" 1 … 0.99961). With the
    support snap every start ends on ``[1, 0]``: PoS = PoA = the degree-d bound."""
    lat = pj.Latency(a=[0.0, 1.0], c=[1.0, 0.0], p=[float(d), 1.0])  # x^d and 1
    g = pj.RoutingGame(demand=[1.0], latency=lat)
    r = pj.price_of_anarchy(g, starts=8, dtype=dtype)
    np.testing.assert_allclose(r.poa, pigou_d(d), rtol=0, atol=atol * 10)
    np.testing.assert_allclose(r.price_of_stability, r.poa, rtol=0, atol=atol)
    np.testing.assert_allclose(r.equilibrium_costs, 1.0, rtol=0, atol=atol)
    e = pj.solve_equilibrium(g, x0=[[0.5, 0.5]], dtype=dtype)
    np.testing.assert_array_equal(e.flows, [[1.0, 0.0]])
    assert e.converged


def test_a_small_interior_flow_is_not_snapped():
    """Links x and 0.999 + x: the equilibrium keeps 5e-4 on the second link, below float32's
    snap threshold √tol ≈ 3e-3; clearing it would raise the gap to 1e-3, so it stays."""
    g = pj.RoutingGame(demand=[1.0], latency=pj.Latency(a=[0.0, 0.999], b=[1.0, 1.0]))
    e = pj.solve_equilibrium(g, dtype="float32")
    np.testing.assert_allclose(e.flows, [[0.9995, 0.0005]], rtol=0, atol=2e-5)
    assert e.converged
