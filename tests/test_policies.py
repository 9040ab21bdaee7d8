"""Router policies: Dynamo's documented worked example, the logit response, load balancing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import poa_jax as pj
from poa_jax import batching
from poa_jax import game as G
from poa_jax import policies as P

INF = float("inf")


def _one(g: pj.RoutingGame, i: int) -> pj.RoutingGame:
    """Instance ``i`` of a batched game, every field a full array (as the solvers see it)."""
    full = batching.prepare(g).game  # checked, broadcast, flattened to (N, ...)
    return jax.tree_util.tree_map(lambda a: a[i], full)


# The one-instance functions, jitted: one compile instead of many eager dispatches.
perceived_cost = jax.jit(P.perceived_cost)
perceived_slope = jax.jit(P.perceived_slope)
logit_response = jax.jit(P.logit_response)


# --------------------------------------------------------------------------- Dynamo


def dynamo_example():
    """A game and flow reproducing the Dynamo v1.2.0 "Routing Concepts" worked example.

    The docs score three workers for a request of 10 blocks: W1 (cached 2, prefill 8, decode 10),
    W2 (5, 5, 5), W3 (8, 2, 9); with weight 1 the costs ``ω·prefill + decode`` are 18, 10, 11
    and W2 is picked.

    Here class 0 is that request (``L = 10`` tokens as blocks, shareable ``η = 1``) and class 1
    a background of uncacheable 1-block requests. The flow is chosen so that class 0's hit
    fraction is 2/10, 5/10, 8/10 (``h = x/(x + r)`` with no eviction), every worker has the same
    queued prefill work ``W_k = 40``, and the resident blocks are ``D_k = 40 + (10, 5, 9)``.
    The library's ``P = W_k + L·(1 − h)`` and ``D = D_k + L`` are then the docs' prefill and
    decode blocks plus offsets common to all workers (``40`` and ``50``).
    """
    x0 = np.array([5.0, 1.0, 1.125])  # class 0 on W1..W3
    h = np.array([0.2, 0.5, 0.8])
    residency = x0 * (1 - h) / h  # h = x0/(x0 + r)  ⇒  r = x0 (1 − h)/h: 20, 1, 0.28125
    background = 40.0 - x0 * 10 * (1 - h)  # uncached class-1 work: W_k = 40 everywhere
    g = pj.RoutingGame(
        demand=jnp.array([x0.sum(), background.sum()]),
        latency=pj.Latency(a=jnp.ones(3), b=jnp.ones(3)),
        tokens=jnp.array([10.0, 1.0]),
        shareable=jnp.array([1.0, 0.0]),
        residency=jnp.asarray(residency),
        cache_size=jnp.full(3, INF),
    )
    return g, jnp.asarray(np.stack([x0, background]))


def test_dynamo_example_construction():
    g, x = dynamo_example()
    np.testing.assert_allclose(np.asarray(G.hit_fraction(g, x))[0], [0.2, 0.5, 0.8], rtol=1e-15)
    h = G.hit_fraction(g, x)
    np.testing.assert_allclose(np.asarray(G.worker_work(g, x, h)), [40.0, 40.0, 40.0], rtol=1e-14)
    np.testing.assert_allclose(np.asarray(G.decode_load(g, x)), [50.0, 45.0, 49.0], rtol=1e-15)


@pytest.mark.parametrize("omega", [0.0, 0.5, 1.0, 2.0])
def test_dynamo_worked_example(omega):
    g, x = dynamo_example()
    r = np.asarray(perceived_cost(P.dynamo(omega=omega), g, x))[0]
    prefill_blocks = np.array([8.0, 5.0, 2.0])  # 10 − cached
    decode_blocks = np.array([10.0, 5.0, 9.0])
    offset = omega * 40.0 + 50.0  # common to all workers: queued prefill, own + background KV
    np.testing.assert_allclose(r - offset, omega * prefill_blocks + decode_blocks, rtol=1e-13)
    if omega == 1.0:
        np.testing.assert_allclose(r - offset, [18.0, 10.0, 11.0], rtol=1e-13)
        assert np.argmin(r) == 1  # W2 is picked
    if omega == 2.0:
        assert np.argmin(r) == 2  # prefill weighs more: W3, the best cache hit, wins


def test_dynamo_device_credit_scales_the_overlap():
    g, x = dynamo_example()
    full = np.asarray(perceived_cost(P.dynamo(1.0), g, x))[0]
    half = np.asarray(perceived_cost(P.dynamo(1.0, credits=(0.5, 0.75, 0.25)), g, x))[0]
    # adjusted prefill = L·(1 − credit·h): 10·(1 − 0.5·(0.2, 0.5, 0.8)) = 9, 7.5, 6
    np.testing.assert_allclose(half - full, [9 - 8, 7.5 - 5, 6 - 2], rtol=1e-13)


def test_load_balanced_and_selfish_perceived_costs():
    g, x = dynamo_example()
    lb = np.asarray(perceived_cost(P.load_balanced(), g, x))
    np.testing.assert_allclose(lb[0], [60.0, 55.0, 59.0], rtol=1e-15)  # D_k + L_0
    np.testing.assert_allclose(lb[1], [51.0, 46.0, 50.0], rtol=1e-15)  # D_k + L_1
    own = np.asarray(perceived_cost(P.selfish(), g, x))
    np.testing.assert_allclose(own, np.asarray(G.true_cost(g, x)), rtol=1e-15)
    # true cost: ℓ(W) = 1 + W = 41 on every worker (no prefill model here)
    np.testing.assert_allclose(own, 41.0, rtol=1e-15)


def test_perceived_slope_is_the_jacobian_diagonal_without_cache(plain_games):
    g = _one(plain_games, 0)
    rng = np.random.default_rng(0)
    j, k = np.shape(g.demand)[0], np.shape(g.latency.a)[0]
    x = jnp.asarray(rng.uniform(0.05, 0.3, (j, k)))
    for pol in (P.selfish(), P.dynamo(0.7), P.load_balanced()):
        jac = jax.jacfwd(lambda y, pol=pol: perceived_cost(pol, g, y))(x)  # (J, K, J, K)
        diag = np.einsum("jkjk->jk", np.asarray(jac))
        np.testing.assert_allclose(np.asarray(perceived_slope(pol, g, x)), diag, rtol=1e-12)


# --------------------------------------------------------------------------- logit response


def _logit_ref(r, demand, mask, tau, span_floor):
    """NumPy min–max-normalised softmax (Dynamo's sampler) with the library's span floor."""
    rm = np.where(mask, r, np.nan)
    lo, hi = np.nanmin(rm, -1, keepdims=True), np.nanmax(rm, -1, keepdims=True)
    span = np.maximum(hi - lo, span_floor * np.abs(hi))
    z = np.where(mask, -(r - lo) / (span * tau), -np.inf)
    p = np.exp(z - z.max(-1, keepdims=True))
    return demand[:, None] * p / p.sum(-1, keepdims=True)


def test_logit_response_uniform_for_equal_costs():
    k = 4
    g = pj.RoutingGame(
        demand=jnp.array([1.0, 2.5]),
        latency=pj.Latency(a=jnp.full(k, 0.3), b=jnp.full(k, 1.0), d=jnp.full(k, 0.2),
                           kappa=jnp.full(k, 5.0)),
        tokens=jnp.array([1.0, 2.0]),
        shareable=jnp.array([0.5, 0.5]),
        residency=jnp.ones(k),
        cache_size=jnp.full(k, 4.0),
    )  # fmt: skip
    pol = P.dynamo(1.0, tau=0.5)
    mask = jnp.ones((2, k), bool)
    x = g.demand[:, None] * jnp.full((2, k), 1 / k)
    out = np.asarray(logit_response(pol, g, x, g.demand, mask))
    np.testing.assert_allclose(out, np.asarray(x), rtol=1e-14)  # uniform: d_j / K each
    # with a masked worker: uniform over the remaining three, zero on the masked one
    mask3 = mask.at[:, 2].set(False)
    x3 = jnp.where(mask3, g.demand[:, None] / 3, 0.0)
    out3 = np.asarray(logit_response(pol, g, x3, g.demand, mask3))
    np.testing.assert_allclose(out3, np.asarray(x3), rtol=1e-14)
    assert np.all(out3[:, 2] == 0.0)


@pytest.mark.parametrize("tau", [0.05, 0.5, 3.0])
def test_logit_response_matches_reference_and_sums_to_demand(cache_games, tau):
    g = _one(cache_games, 2)
    j, k = np.shape(g.demand)[0], np.shape(g.latency.a)[0]
    rng = np.random.default_rng(1)
    x = jnp.asarray(np.asarray(g.demand)[:, None] * rng.dirichlet(np.ones(k), j))
    mask = jnp.ones((j, k), bool).at[:, 1].set(False)
    pol = P.dynamo(0.4, tau=tau)
    out = np.asarray(logit_response(pol, g, x, g.demand, mask))
    r = np.asarray(perceived_cost(pol, g, x))
    ref = _logit_ref(r, np.asarray(g.demand), np.asarray(mask), tau, 0.1)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(out.sum(-1), np.asarray(g.demand), rtol=1e-13)
    assert np.all(out[:, 1] == 0.0) and np.all(out >= 0)
    # cheaper workers get more flow, row by row
    for row_r, row_p in zip(r[:, [0, 2, 3]], out[:, [0, 2, 3]], strict=True):
        order = np.argsort(row_r)
        assert np.all(np.diff(row_p[order]) <= 1e-15)


def test_logit_response_lower_temperature_is_greedier(cache_games):
    g = _one(cache_games, 2)
    j, k = np.shape(g.demand)[0], np.shape(g.latency.a)[0]
    x = g.demand[:, None] * jnp.full((j, k), 1 / k)
    mask = jnp.ones((j, k), bool)
    r = np.asarray(perceived_cost(P.dynamo(0.4), g, x))
    best = np.argmin(r, -1)
    shares = [
        np.asarray(logit_response(P.dynamo(0.4, tau=t), g, x, g.demand, mask))[np.arange(j), best]
        for t in (5.0, 0.5, 0.05)
    ]
    assert np.all(shares[0] < shares[1]) and np.all(shares[1] < shares[2])


# --------------------------------------------------------------------------- equilibria


def test_load_balanced_equalises_token_loads(cache_games):
    sol = pj.solve_equilibrium(cache_games, P.load_balanced())
    assert sol.converged.all()
    tokens = np.asarray(cache_games.tokens)
    d_k = np.einsum("njk,nj->nk", sol.flows, tokens)  # resident token load per worker
    total = (np.asarray(cache_games.demand) * tokens).sum(-1)
    np.testing.assert_allclose(d_k, np.broadcast_to(total[:, None] / d_k.shape[1], d_k.shape),
                               rtol=1e-8)  # fmt: skip


# --------------------------------------------------------------------------- construction


def test_from_name():
    assert P.from_name("selfish") == P.selfish()
    assert P.from_name("load_balanced") == P.load_balanced()
    assert P.from_name("dynamo", omega=0.1, tau=0.8) == P.dynamo(0.1, 0.8)
    d = P.dynamo()
    assert (d.w_true, d.w_prefill, d.w_decode, d.tau, d.credit) == (0.0, 1.0, 1.0, 0.0, 1.0)
    assert set(P.NAMES) == {"selfish", "dynamo", "load_balanced"}


def test_from_name_bad_parameters():
    with pytest.raises(pj.InputError, match="dynamo"):
        P.from_name("dynamo", omgea=1.0)
    with pytest.raises(pj.InputError, match="credits"):
        P.dynamo(credits=(1.0, 0.5))
