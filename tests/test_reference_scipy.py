"""An independent reference (STYLE 9): scipy on random small games without the cache term.

The cost model is re-implemented here in NumPy from DESIGN §2.1–2.2 and shares no code with the
library. Without the cache term (``h = 0``) the routing game is a classic nonatomic game:

    W_k = Σ_j x_jk L_j,    c_jk = ℓ_k(W_k) + s_k(L_j),    SC(x) = Σ_jk x_jk c_jk,

* the optimum minimises ``SC`` (convex: ``x·ℓ(x)`` is convex for convex increasing ``ℓ``);
* the equilibrium minimises the Beckmann potential ``Φ(x) = Σ_k Λ_k(W_k) + Σ_jk x_jk L_j s_k(L_j)``
  with ``Λ_k = ∫_0 ℓ_k`` (``∂Φ/∂x_jk = L_j c_jk``, so its KKT conditions are Wardrop's).

Both are solved with ``scipy.optimize.minimize`` (SLSQP, one equality constraint per class,
bounds ``x ≥ 0``, several starts). Equilibrium flows per class need not be unique, so loads ``W``
and social costs are compared, not flows.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import integrate, optimize

import poa_jax as pj

# --------------------------------------------------------------------------- NumPy model


@dataclasses.dataclass
class NpGame:
    """One instance as NumPy arrays: ``demand, tokens (J,)``; the rest ``(K,)``."""

    demand: np.ndarray
    tokens: np.ndarray
    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    p: np.ndarray
    d: np.ndarray
    kappa: np.ndarray
    rho: np.ndarray
    pa: np.ndarray  # prefill s_k(n) = pa + pb n + pc n²
    pb: np.ndarray
    pc: np.ndarray
    mask: np.ndarray

    @classmethod
    def from_batch(cls, g: pj.RoutingGame, i: int) -> NpGame:
        j = np.shape(g.demand)[-1]
        k = np.shape(g.latency.a)[-1]

        def row(v, n):
            v = np.asarray(v, np.float64)
            return np.broadcast_to(v[i] if v.ndim == 2 else v, (n,)).copy()

        lat, pre = g.latency, g.prefill
        return cls(
            demand=row(g.demand, j),
            tokens=row(g.tokens, j),
            a=row(lat.a, k), b=row(lat.b, k), c=row(lat.c, k), p=row(lat.p, k),
            d=row(lat.d, k), kappa=row(lat.kappa, k), rho=row(lat.rho_max, k),
            pa=row(pre.a, k), pb=row(pre.b, k), pc=row(pre.c, k),
            mask=row(g.worker_mask, k).astype(bool),
        )  # fmt: skip


def _raw(g: NpGame, w):
    """ℓ, ℓ' and Λ of the un-continued family at ``w ≤ x̄`` (elementwise over workers)."""
    fin = np.isfinite(g.kappa)
    kap = np.where(fin, g.kappa, 1.0)
    d = np.where(fin, g.d, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        xp1 = np.where(g.p == 1.0, 1.0, np.power(w, g.p - 1.0))
    val = g.a + g.b * w + g.c * w * xp1 + d * w / (kap - w)
    der = g.b + g.c * g.p * xp1 + d * kap / (kap - w) ** 2
    # ∫_0^w x/(κ − x) dx = −w − κ·log(1 − w/κ)
    lam = (
        g.a * w
        + g.b * w**2 / 2
        + g.c * w ** (g.p + 1) / (g.p + 1)
        + d * (-w - kap * np.log1p(-w / kap))
    )
    return val, der, lam


def latency(g: NpGame, w):
    """``ℓ_k(w_k)``, ``ℓ'_k(w_k)``, ``Λ_k(w_k)`` with the tangent-line continuation past ρκ."""
    w = np.maximum(np.asarray(w, np.float64), 0.0)
    xbar = np.where(np.isfinite(g.kappa), g.rho * g.kappa, np.inf)
    wc = np.minimum(w, xbar)
    over = np.where(np.isfinite(xbar), w - wc, 0.0)
    val, der, lam = _raw(g, wc)
    return val + der * over, der, lam + val * over + der * over**2 / 2


def prefill(g: NpGame):
    """``s_k(L_j)``, ``(J, K)``."""
    n = g.tokens[:, None]
    return g.pa + g.pb * n + g.pc * n**2


def loads(g: NpGame, x):
    return (x * g.tokens[:, None]).sum(0)


def costs(g: NpGame, x):
    return latency(g, loads(g, x))[0][None, :] + prefill(g)


def social_cost(g: NpGame, x):
    return float(np.sum(np.where(g.mask, x * costs(g, x), 0.0)))


def social_cost_grad(g: NpGame, x):
    val, der, _ = latency(g, loads(g, x))
    return val[None, :] + prefill(g) + (x.sum(0) * der)[None, :] * g.tokens[:, None]


def potential(g: NpGame, x):
    lam = latency(g, loads(g, x))[2]
    return float(np.sum(np.where(g.mask, lam, 0.0)) + np.sum(x * g.tokens[:, None] * prefill(g)))


def potential_grad(g: NpGame, x):
    return g.tokens[:, None] * costs(g, x)


def relative_gap(g: NpGame, x):
    c = costs(g, x)
    total = np.sum(np.where(g.mask, x * c, 0.0))
    best = np.sum(g.demand * np.min(np.where(g.mask, c, np.inf), axis=1))
    return (total - best) / total


def _starts(g: NpGame, rng, n_random=3):
    j, k = len(g.demand), len(g.mask)
    m = g.mask.astype(float)
    shares = [m / m.sum()]
    for i in np.flatnonzero(g.mask):
        shares.append(np.where(np.arange(k) == i, 0.9, 0.1 / max(m.sum() - 1, 1)) * m)
    for _ in range(n_random):
        shares.append(rng.dirichlet(np.ones(k)) * m)
    for s in shares:
        yield g.demand[:, None] * np.broadcast_to(s / s.sum(), (j, k))


def scipy_minimize(g: NpGame, f, grad, seed=0):
    """``min f(x)`` over the product of simplices by SLSQP from several starts: best ``x``."""
    j, k = len(g.demand), len(g.mask)
    scale = 1.0 / max(f(g.demand[:, None] * g.mask / g.mask.sum()), 1e-12)
    rows = np.kron(np.eye(j), np.ones(k))  # (J, J·K): Σ_k x_jk
    cons = {"type": "eq", "fun": lambda v: rows @ v - g.demand, "jac": lambda v: rows}
    bounds = [(0.0, None) if m else (0.0, 0.0) for m in np.tile(g.mask, j)]
    best = None
    for x0 in _starts(g, np.random.default_rng(seed)):
        res = optimize.minimize(
            lambda v: scale * f(v.reshape(j, k)),
            x0.ravel(),
            jac=lambda v: scale * grad(v.reshape(j, k)).ravel(),
            method="SLSQP",
            bounds=bounds,
            constraints=[cons],
            options={"ftol": 1e-16, "maxiter": 2000},
        )
        x = np.maximum(res.x.reshape(j, k), 0.0)
        x *= (g.demand / np.maximum(x.sum(1), 1e-300))[:, None]  # back onto the simplices
        if best is None or f(x) < f(best):
            best = x
    return best


# --------------------------------------------------------------------------- the batch


@pytest.fixture(scope="module")
def game(plain_games):
    """The ``SMALL`` no-cache batch, with workers masked out in the last two instances.

    The masked workers get zero latency (the cheapest possible): a solver that ignored the mask
    would send everything there. Demand is scaled to the remaining capacity.
    """
    mask = np.ones(np.shape(plain_games.latency.a), bool)
    mask[6, 3] = False
    mask[7, [1, 3]] = False
    lat = {f: np.array(v, np.float64) for f, v in plain_games.latency.as_numpy().items()}
    kappa = lat["kappa"]
    keep = np.where(mask, kappa, 0.0).sum(1) / kappa.sum(1)
    for f in ("a", "b", "c", "d"):
        lat[f] = np.where(mask, lat[f], 0.0)
    demand = np.asarray(plain_games.demand) * keep[:, None]
    return dataclasses.replace(
        plain_games, demand=demand, latency=pj.Latency(**lat), worker_mask=mask
    )


@pytest.fixture(scope="module")
def instances(game):
    return [NpGame.from_batch(game, i) for i in range(np.shape(game.demand)[0])]


@pytest.fixture(scope="module")
def references(instances):
    """Per instance: (optimum flows, equilibrium flows) found by scipy."""
    out = []
    for i, g in enumerate(instances):
        sc, sc_grad = (lambda x, g=g: social_cost(g, x)), (lambda x, g=g: social_cost_grad(g, x))
        phi, phi_grad = (lambda x, g=g: potential(g, x)), (lambda x, g=g: potential_grad(g, x))
        out.append((scipy_minimize(g, sc, sc_grad, i), scipy_minimize(g, phi, phi_grad, i)))
    return out


def test_numpy_model_is_self_consistent(instances):
    # Guards the reference: Λ' = ℓ (quad), gradients = finite differences.
    g = instances[0]
    rng = np.random.default_rng(3)
    x = g.demand[:, None] * rng.dirichlet(np.ones(len(g.mask)), len(g.demand)) * g.mask
    w = loads(g, x)
    for k in np.flatnonzero(g.mask):
        ref, _ = integrate.quad(lambda t, k=k: latency(g, np.full(len(g.mask), t))[0][k], 0, w[k])
        np.testing.assert_allclose(latency(g, w)[2][k], ref, rtol=1e-10)
    for f, grad in [(social_cost, social_cost_grad), (potential, potential_grad)]:
        e = np.zeros_like(x)
        e[1, 2] = 1e-6
        fd = (f(g, x + e) - f(g, x - e)) / 2e-6
        np.testing.assert_allclose(grad(g, x)[1, 2], fd, rtol=1e-7)


def test_references_satisfy_their_optimality_conditions(instances, references):
    # The scipy equilibria are Wardrop equilibria (gap of the NumPy model), and no equilibrium
    # is cheaper than the scipy optimum.
    for g, (x_opt, x_eq) in zip(instances, references, strict=True):
        assert relative_gap(g, x_eq) < 1e-7
        assert social_cost(g, x_opt) <= social_cost(g, x_eq) * (1 + 1e-12)


def test_library_cost_model_matches_numpy(game, instances):
    # Same flows, two implementations: SC agrees to rounding.
    sol = pj.solve_equilibrium(game)
    for i, g in enumerate(instances):
        np.testing.assert_allclose(sol.social_cost[i], social_cost(g, sol.flows[i]), rtol=1e-12)
        assert np.all(sol.flows[i][:, ~g.mask] == 0.0)


def test_optimum_matches_scipy(game, instances, references):
    sol = pj.solve_optimum(game)
    assert sol.converged.all(), sol.gap
    for i, (g, (x_opt, _)) in enumerate(zip(instances, references, strict=True)):
        ref = social_cost(g, x_opt)
        np.testing.assert_allclose(sol.social_cost[i], ref, rtol=1e-6, err_msg=f"instance {i}")
        # and the library never claims to beat the true minimum by more than rounding
        assert sol.social_cost[i] >= ref * (1 - 1e-9)
        np.testing.assert_allclose(loads(g, sol.flows[i]), loads(g, x_opt), rtol=1e-5, atol=1e-7)


def test_equilibrium_matches_scipy(game, instances, references):
    sol = pj.solve_equilibrium(game)
    assert sol.converged.all(), sol.gap
    for i, (g, (_, x_eq)) in enumerate(zip(instances, references, strict=True)):
        w_lib, w_ref = loads(g, sol.flows[i]), loads(g, x_eq)
        np.testing.assert_allclose(w_lib, w_ref, rtol=1e-6, atol=1e-8, err_msg=f"instance {i}")
        np.testing.assert_allclose(
            sol.social_cost[i], social_cost(g, x_eq), rtol=1e-6, err_msg=f"instance {i}"
        )
        # the reported gap is the true gap of the flows it returns
        np.testing.assert_allclose(sol.gap[i], relative_gap(g, sol.flows[i]), atol=1e-12)
        assert relative_gap(g, sol.flows[i]) <= 1e-9 * (1 + 1e-6)
