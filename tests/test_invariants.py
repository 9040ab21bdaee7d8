"""The conformance suite (STYLE 10) on seeded random games *with* the cache term.

Flows on the simplex (padded workers included), gap ≥ 0 and ≤ tol when converged, SC(opt) ≤
SC(eq), PoA ≥ PoS ≥ 1, batched ≡ looped, no recompile for new numbers, float32 ≈ float64, every
policy finite with a status (overloaded instances included). Reported gaps, costs and overload
flags are re-derived with an independent NumPy model of DESIGN §2.2 (no library cost code), so
a status cannot claim convergence that the flows do not have.

The cache-on family is hard (positive externality, several equilibria, non-monotone): the
converged share is asserted above a floor measured on this family, not at 100%.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import poa_jax as pj
from poa_jax import batching, game
from poa_jax import policies as P

TOL64 = 1e-9  # the float64 default tolerance (poa_jax.tolerances)
TOL32 = 1e-5
#: Converged shares measured on these batches were 0.84–0.92 (PoA, LARGE) and 0.88–1.0 (SMALL,
#: per policy); the floors leave room for rounding-level changes, not for a regression.
FLOOR_POA = 0.75
FLOOR_POLICY = 0.6

POLICIES = {
    "selfish": P.selfish(),
    "dynamo(1,0)": P.dynamo(1.0, 0.0),
    "dynamo(0.1,0.8)": P.dynamo(0.1, 0.8),
    "load_balanced": P.load_balanced(),
}

# --------------------------------------------------------------------------- NumPy model


def _full(g: pj.RoutingGame) -> dict[str, np.ndarray]:
    """All fields of a batched game as float64 arrays ``(N, J)`` / ``(N, K)``."""
    n, j = np.shape(g.demand)
    k = np.shape(g.latency.a)[-1]
    jf = {"demand": g.demand, "tokens": g.tokens, "eta": g.shareable}
    kf = {
        **{f: getattr(g.latency, f) for f in ("a", "b", "c", "p", "d", "kappa", "rho_max")},
        "r": g.residency, "m": g.cache_size, "sa": g.prefill.a, "sb": g.prefill.b,
        "sc": g.prefill.c,
    }  # fmt: skip
    out = {n_: np.broadcast_to(np.asarray(v, np.float64), (n, j)) for n_, v in jf.items()}
    out.update({n_: np.broadcast_to(np.asarray(v, np.float64), (n, k)) for n_, v in kf.items()})
    out["mask"] = np.broadcast_to(np.asarray(g.worker_mask, bool), (n, k))
    return out


def np_latency(f, w):
    """``ℓ(w)`` per worker with the tangent-line continuation past ``ρ_max·κ``; ``w (N, K)``."""
    fin = np.isfinite(f["kappa"])
    kap = np.where(fin, f["kappa"], 1.0)
    d = np.where(fin, f["d"], 0.0)
    xbar = np.where(fin, f["rho_max"] * kap, np.inf)
    w = np.maximum(w, 0.0)
    wc = np.minimum(w, xbar)
    over = np.where(fin, w - wc, 0.0)
    pw = np.where(f["p"] == 1.0, 1.0, np.power(wc, f["p"] - 1.0))
    val = f["a"] + f["b"] * wc + f["c"] * wc * pw + d * wc / (kap - wc)
    der = f["b"] + f["c"] * f["p"] * pw + d * kap / (kap - wc) ** 2
    return val + der * over


def np_state(f, x):
    """Hit fractions, uncached work ``W``, resident tokens ``D`` and true costs; ``x (N, J, K)``."""
    load = x.sum(1, keepdims=True)  # X_k
    evict = f["r"][:, None, :] * (1.0 + load / f["m"][:, None, :])
    h = f["eta"][:, :, None] * x / (x + evict)
    tok = f["tokens"][:, :, None]
    w = (x * tok * (1 - h)).sum(1)
    dk = (x * tok).sum(1)
    n = tok * (1 - h)
    s = f["sa"][:, None, :] + f["sb"][:, None, :] * n + f["sc"][:, None, :] * n**2
    c = np_latency(f, w)[:, None, :] + s
    return h, w, dk, c


def np_social_cost(f, x):
    c = np_state(f, x)[3]
    return np.where(f["mask"][:, None, :], x * c, 0.0).sum((1, 2))


def np_perceived(f, x, pol: P.Policy):
    h, w, dk, c = np_state(f, x)
    tok = f["tokens"][:, :, None]
    prefill = w[:, None, :] + tok * np.maximum(1 - pol.credit * h, 0.0)
    decode = dk[:, None, :] + tok
    return pol.w_true * c + pol.w_prefill * prefill + pol.w_decode * decode


def np_gap(f, x, pol: P.Policy | None = None):
    """The relative gap for ``τ = 0``; the fixed-point residual of the logit response else."""
    pol = P.selfish() if pol is None else pol
    r = np_perceived(f, x, pol)
    m = f["mask"][:, None, :]
    if pol.tau > 0:
        lo = np.min(np.where(m, r, np.inf), -1, keepdims=True)
        hi = np.max(np.where(m, r, -np.inf), -1, keepdims=True)
        span = np.maximum(hi - lo, pol.span_floor * np.abs(hi))
        z = np.where(m, -(r - lo) / (span * pol.tau), -np.inf)
        p = np.exp(z - z.max(-1, keepdims=True))
        resp = f["demand"][:, :, None] * p / p.sum(-1, keepdims=True)
        return np.abs(resp - x).sum((1, 2)) / f["demand"].sum(-1)
    total = np.where(m, x * r, 0.0).sum((1, 2))
    best = (f["demand"] * np.min(np.where(m, r, np.inf), -1)).sum(-1)
    return (total - best) / total


def np_overloaded(f, x):
    w = np_state(f, x)[1]
    xbar = np.where(np.isfinite(f["kappa"]), f["rho_max"] * f["kappa"], np.inf)
    return np.any(f["mask"] & (w > xbar), -1)


def assert_on_simplex(f, flows):
    mask = f["mask"][:, None, :]
    assert np.all(flows >= 0)
    assert np.all(np.where(mask, 0.0, flows) == 0.0), "flow on a masked worker"
    np.testing.assert_allclose(flows.sum(-1), f["demand"], rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- batches


def pad(g: pj.RoutingGame, masked: dict[int, list[int]]) -> pj.RoutingGame:
    """Masks workers out of some instances (``{instance: [workers]}``) as a padded batch would.

    The masked workers are made free (zero latency, zero prefill) — a solver that routed to them
    would be caught — and demand is scaled to the capacity that remains.
    """
    n, k = np.shape(g.latency.a)
    mask = np.ones((n, k), bool)
    for i, ws in masked.items():
        mask[i, ws] = False
    lat = {f_: np.array(np.broadcast_to(v, (n, k)), np.float64)
           for f_, v in g.latency.as_numpy().items()}  # fmt: skip
    keep = np.where(mask, lat["kappa"], 0).sum(1) / lat["kappa"].sum(1)
    for f_ in ("a", "b", "c", "d"):
        lat[f_] = np.where(mask, lat[f_], 0.0)
    pre = {f_: np.where(mask, np.asarray(getattr(g.prefill, f_)), 0.0) for f_ in ("a", "b", "c")}
    return dataclasses.replace(
        g,
        demand=np.asarray(g.demand) * keep[:, None],
        latency=pj.Latency(**lat),
        prefill=pj.PrefillTime(**pre),
        worker_mask=mask,
    )


def overload(g: pj.RoutingGame, factor: float = 2.0) -> pj.RoutingGame:
    """Demand such that uncached work exceeds total capacity ``factor``-fold whatever the routing.

    ``h ≤ η`` so ``Σ_k W_k ≥ Σ_j d_j L_j (1 − η_j)``; some worker must then run past ``κ``.
    """
    f = _full(g)
    floor_work = (f["demand"] * f["tokens"] * (1 - f["eta"])).sum(-1)
    scale = factor * f["kappa"].sum(-1) / floor_work
    return dataclasses.replace(g, demand=f["demand"] * scale[:, None])


@pytest.fixture(scope="module")
def large(large_cache_games):
    masked = {i: [5] for i in range(48, 56)} | {i: [1, 4] for i in range(56, 64)}
    return pad(large_cache_games, masked)


@pytest.fixture(scope="module")
def poa_large(large):
    return pj.price_of_anarchy(large)


# --------------------------------------------------------------------------- PoA invariants


def test_flows_on_simplex(large, poa_large):
    f = _full(large)
    for sol in (poa_large.equilibrium, poa_large.best_equilibrium, poa_large.optimum):
        assert sol.flows.shape == (64, 5, 6)
        assert_on_simplex(f, sol.flows)


def test_status_gap_and_convergence_flags(poa_large):
    for sol in (poa_large.equilibrium, poa_large.best_equilibrium, poa_large.optimum):
        assert np.all(sol.gap >= 0)
        assert set(np.unique(sol.status)) <= {0, 1, 2}
        np.testing.assert_array_equal(sol.converged, sol.status == 0)
        assert np.all(sol.gap[sol.converged] <= TOL64)
        assert np.all(np.isfinite(sol.social_cost)) and np.all(np.isfinite(sol.flows))
    np.testing.assert_array_equal(
        poa_large.converged, poa_large.equilibrium.converged & poa_large.optimum.converged
    )


def test_reported_gap_and_cost_are_the_true_ones(large, poa_large):
    f = _full(large)
    for sol in (poa_large.equilibrium, poa_large.best_equilibrium):
        gap = np_gap(f, sol.flows)
        np.testing.assert_allclose(sol.gap, gap, rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(sol.social_cost, np_social_cost(f, sol.flows), rtol=1e-12)
        # the status is truthful both ways: converged ⇔ the flows' own gap is within tol
        assert np.all(gap[sol.converged] <= TOL64 * (1 + 1e-6))
        assert np.all(gap[~sol.converged] > TOL64 * (1 - 1e-6))
    np.testing.assert_allclose(
        poa_large.optimum.social_cost, np_social_cost(f, poa_large.optimum.flows), rtol=1e-12
    )
    np.testing.assert_array_equal(
        poa_large.equilibrium.overloaded, np_overloaded(f, poa_large.equilibrium.flows)
    )


def test_cost_ordering_poa_and_pos(poa_large):
    r = poa_large
    opt, worst, best = (
        r.optimum.social_cost,
        r.equilibrium.social_cost,
        r.best_equilibrium.social_cost,
    )
    assert np.all(opt <= best) and np.all(best <= worst)
    assert np.all(r.poa >= r.price_of_stability) and np.all(r.price_of_stability >= 1.0)
    np.testing.assert_allclose(r.poa, worst / opt, rtol=1e-14)
    np.testing.assert_allclose(r.price_of_stability, best / opt, rtol=1e-14)
    # equilibrium_costs: worst first, NaN exactly for the starts that did not converge
    costs = r.equilibrium_costs
    assert costs.shape == (64, 4)
    np.testing.assert_array_equal((~np.isnan(costs)).sum(-1), r.converged_starts)
    has = r.converged_starts > 0
    np.testing.assert_allclose(costs[has, 0], worst[has], rtol=1e-14)
    for row, k in zip(costs, r.converged_starts, strict=True):
        assert not np.isnan(row[:k]).any() and np.isnan(row[k:]).all()  # NaNs last
        assert np.all(np.diff(row[:k]) <= 0)
    # the cache externality makes PoA > 1 on this family (a tautology guard: not all ones)
    assert np.median(r.poa) > 1.001


def test_optimum_satisfies_first_order_conditions(large, poa_large):
    # Marginal costs by central differences of the NumPy SC: at a converged optimum every class
    # only uses workers of (nearly) minimal marginal cost.
    f = _full(large)
    x = poa_large.optimum.flows
    n, j, k = x.shape
    grad = np.zeros_like(x)
    for a in range(j):
        for b in range(k):
            e = np.zeros_like(x)
            e[:, a, b] = 1e-6 * np.maximum(x[:, a, b], 1e-3)
            grad[:, a, b] = (np_social_cost(f, x + e) - np_social_cost(f, x - e)) / (2 * e[:, a, b])
    m = f["mask"][:, None, :]
    lin = np.where(m, x * grad, 0.0).sum((1, 2))
    best = (f["demand"] * np.min(np.where(m, grad, np.inf), -1)).sum(-1)
    gap = (lin - best) / np_social_cost(f, x)
    ok = poa_large.optimum.converged
    assert ok.mean() > 0.9
    assert np.all(gap[ok] <= 1e-6), gap[ok].max()


@pytest.mark.parametrize("variant", ["as_drawn", "infinite_cache", "overloaded"])
def test_social_cost_gradient_matches_finite_differences(large, variant):
    # The optimum solver's closed-form marginal cost against central differences of the NumPy
    # social cost, at random interior flows (padded workers included: their entries are 0).
    g = large
    if variant == "infinite_cache":
        g = dataclasses.replace(g, cache_size=np.inf)
    elif variant == "overloaded":
        g = overload(g, 1.5)
    f = _full(g)
    rng = np.random.default_rng(5)
    n, j = f["demand"].shape
    k = f["mask"].shape[-1]
    share = rng.dirichlet(np.ones(k), (n, j)) * f["mask"][:, None, :]
    x = f["demand"][:, :, None] * share / share.sum(-1, keepdims=True)
    prep = batching.prepare(g, None, np.float64)
    got = np.asarray(jax.jit(jax.vmap(game.social_cost_gradient))(prep.game, jnp.asarray(x)))
    want = np.zeros_like(x)
    for a in range(j):
        for b in range(k):
            e = np.zeros_like(x)
            e[:, a, b] = 1e-6 * np.maximum(x[:, a, b], 1e-3)
            diff = np_social_cost(f, x + e) - np_social_cost(f, x - e)
            want[:, a, b] = np.where(f["mask"][:, b], diff / (2 * e[:, a, b]), 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


def test_converged_share_above_floor(poa_large):
    r = poa_large
    share = float(r.converged.mean())
    starts = float(r.converged_starts.mean()) / 4
    print(f"\nLARGE cache-on PoA: converged share {share:.3f}, converged starts {starts:.3f}")
    assert share >= FLOOR_POA
    assert np.all(r.converged_starts >= 0) and np.all(r.converged_starts <= 4)
    # every non-converged instance says so
    assert np.all((r.equilibrium.status != 0) | r.equilibrium.converged)
    assert np.all(r.equilibrium.status[~r.equilibrium.converged] != 0)


def test_padded_workers_get_nothing(large, poa_large):
    mask = _full(large)["mask"]
    for sol in (poa_large.equilibrium, poa_large.optimum):
        assert np.all(sol.flows[48:56, :, 5] == 0.0)
        assert np.all(sol.flows[56:, :, [1, 4]] == 0.0)
        # the free (masked) workers would have been the cheapest: everything else is used
        used = sol.flows[48:].sum(1) > 0
        assert used[mask[48:]].mean() > 0.5


# --------------------------------------------------------------------------- SMALL batches


def test_batched_equals_looped(cache_games, take_instances):
    batch = pj.solve_equilibrium(cache_games)
    for i in range(np.shape(cache_games.demand)[0]):
        one = pj.solve_equilibrium(take_instances(cache_games, slice(i, i + 1)))
        np.testing.assert_allclose(one.flows[0], batch.flows[i], rtol=0, atol=1e-12)
        np.testing.assert_allclose(one.social_cost[0], batch.social_cost[i], rtol=1e-12)
        np.testing.assert_allclose(one.gap[0], batch.gap[i], rtol=1e-6, atol=1e-15)
        assert one.status[0] == batch.status[i]
        assert abs(int(one.iterations[0]) - int(batch.iterations[i])) <= 1


def test_random_starts_do_not_depend_on_the_batch(cache_games, take_instances):
    # With more starts than uniform + herds (1 + K) the random mixes are used. They are drawn
    # from the seed alone, so an instance gets the same starts — and the same equilibria and
    # optimum — alone, in a batch, or in another chunk of a sweep (they were drawn per batch
    # row before, and a sweep's results changed with --chunk).
    many = 4 + 4  # SMALL has K = 4 workers: starts 5.. are random
    batch = pj.price_of_anarchy(cache_games, starts=many, optimum_starts=many)
    for i in (0, 5):
        one = pj.price_of_anarchy(
            take_instances(cache_games, slice(i, i + 1)), starts=many, optimum_starts=many
        )
        np.testing.assert_allclose(one.equilibrium_costs[0], batch.equilibrium_costs[i],
                                   rtol=1e-9)  # fmt: skip
        np.testing.assert_allclose(one.optimum.social_cost[0], batch.optimum.social_cost[i],
                                   rtol=1e-9)  # fmt: skip
    from poa_jax.starts import start_shares

    mask = np.array([[1, 1, 1, 1], [1, 0, 1, 1], [1, 1, 1, 1]], bool)
    s = start_shares(mask, 9, seed=3)
    np.testing.assert_allclose(s.sum(-1), 1.0)
    assert np.all(s[1, :, 1] == 0.0)
    np.testing.assert_array_equal(s[2], start_shares(mask[2:], 9, seed=3)[0])
    np.testing.assert_array_equal(s[0], s[2])  # same mask, same starts, wherever it sits
    assert not np.allclose(s[0, 6], s[0, 7])  # but the random starts differ from each other


def _costs_times(g: pj.RoutingGame, k: float) -> pj.RoutingGame:
    """The same games with every cost coefficient × ``k`` (a change of time unit)."""
    lat, pf = g.latency, g.prefill
    return dataclasses.replace(
        g,
        latency=dataclasses.replace(lat, **{f: np.asarray(getattr(lat, f)) * k for f in "abcd"}),
        prefill=dataclasses.replace(pf, **{f: np.asarray(getattr(pf, f)) * k for f in "abc"}),
    )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("k", [2.0**-30, 2.0**20])
def test_cost_units_do_not_matter(cache_games, dtype, k):
    # Costs in seconds instead of microseconds change nothing but the unit: the equilibria, the
    # optimum and the PoA must not move. A power of two scales every float exactly, so the
    # trajectories must be the same bit for bit. (An absolute floor in the solver's metric,
    # max(max s, 1)·√eps, made the float32 steps tiny at costs ~1e-8: nothing converged.)
    base = pj.price_of_anarchy(cache_games, dtype=dtype)
    scaled = pj.price_of_anarchy(_costs_times(cache_games, k), dtype=dtype)
    assert base.converged.mean() >= FLOOR_POA
    np.testing.assert_array_equal(scaled.converged, base.converged)
    np.testing.assert_array_equal(scaled.poa, base.poa)
    for a, b in ((scaled.equilibrium, base.equilibrium), (scaled.optimum, base.optimum)):
        np.testing.assert_array_equal(a.iterations, b.iterations)
        np.testing.assert_array_equal(a.flows, b.flows)
        np.testing.assert_array_equal(a.social_cost, b.social_cost * k)


def test_compile_counter_sees_compiles(compile_counter):
    # Positive control for the no-recompile test: a fresh function must be seen compiling.
    jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)(jnp.arange(7.0))
    assert compile_counter.solver_count >= 1


def test_no_recompile_for_new_numbers(cache_games, cache_games_other, compile_counter):
    first = pj.solve_equilibrium(cache_games)
    opt_first = pj.solve_optimum(cache_games)
    compile_counter.names.clear()
    second = pj.solve_equilibrium(cache_games_other)
    opt_second = pj.solve_optimum(cache_games_other)
    assert compile_counter.count == 0, compile_counter.names
    # a tautology guard: the second batch really is different
    assert not np.allclose(first.social_cost, second.social_cost)
    assert not np.allclose(opt_first.social_cost, opt_second.social_cost)


def test_float32_close_to_float64_unique_equilibrium(plain_games):
    # Without the cache term equilibrium costs are unique: float32 must find the same SC.
    s64 = pj.solve_equilibrium(plain_games)
    s32 = pj.solve_equilibrium(plain_games, dtype=np.float32)
    assert s32.flows.dtype == np.float32 and s32.social_cost.dtype == np.float32
    assert s64.flows.dtype == np.float64
    assert s64.converged.all() and s32.converged.all()
    assert np.all(s32.gap <= TOL32)
    np.testing.assert_allclose(s32.social_cost, s64.social_cost, rtol=1e-4)


def test_float32_with_cache_term(cache_games):
    # With the cache term equilibria are not unique, and a float32 trajectory may settle in a
    # different one than float64 from the same start. What must hold: float32's converged flows
    # are equilibria in float64 arithmetic (the NumPy model) and, where both dtypes reached the
    # same equilibrium, their costs agree.
    s64 = pj.solve_equilibrium(cache_games)
    s32 = pj.solve_equilibrium(cache_games, dtype=np.float32)
    assert s32.flows.dtype == np.float32 and s32.gap.dtype == np.float32
    f = _full(cache_games)
    flows32 = s32.flows.astype(np.float64)
    assert np.all(s32.flows >= 0)
    np.testing.assert_allclose(flows32.sum(-1), f["demand"], rtol=1e-5)
    assert s32.converged.mean() >= FLOOR_POLICY
    assert np.all(np_gap(f, flows32)[s32.converged] <= 1e-4)
    _same_equilibria_agree(f, s32, s64)


def _same_equilibria_agree(f, s32, s64):
    """Where a float32 and a float64 solve from the same start settle in the same equilibrium
    (flows within 1e-2 of the demand: with the cache term there are several, and rounding can
    tip a trajectory into another), their costs agree to 1e-4; at least half of them do."""
    scale = f["demand"].max(-1)
    same = s32.converged & s64.converged
    same &= np.abs(s32.flows.astype(np.float64) - s64.flows).max((1, 2)) <= 1e-2 * scale
    print(f"\nfloat32 converged {s32.converged.mean():.3f}, float64 {s64.converged.mean():.3f}, "
          f"same equilibrium {same.mean():.3f}")  # fmt: skip
    assert same.mean() >= 0.5
    np.testing.assert_allclose(s32.social_cost[same], s64.social_cost[same], rtol=1e-4)


@pytest.mark.parametrize("overloaded", [False, True], ids=["normal", "overloaded"])
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_finite_with_status(cache_games, name, overloaded):
    game = overload(cache_games) if overloaded else cache_games
    pol = POLICIES[name]
    sol = pj.solve_equilibrium(game, pol)
    f = _full(game)
    n = np.shape(game.demand)[0]
    for field in ("flows", "social_cost", "mean_latency", "gap"):
        assert np.all(np.isfinite(getattr(sol, field))), field
    assert sol.status.shape == (n,) and set(np.unique(sol.status)) <= {0, 1, 2}
    np.testing.assert_array_equal(sol.converged, sol.status == 0)
    assert_on_simplex(f, sol.flows)
    np.testing.assert_allclose(sol.social_cost, np_social_cost(f, sol.flows), rtol=1e-12)
    # the reported gap is the flows' true gap (residual for τ > 0), so the flags are truthful
    gap = np_gap(f, sol.flows, pol)
    np.testing.assert_allclose(sol.gap, gap, rtol=1e-6, atol=1e-12)
    assert np.all(sol.status[gap > TOL64 * (1 + 1e-6)] != 0)
    np.testing.assert_array_equal(sol.overloaded, np_overloaded(f, sol.flows))
    if overloaded:
        assert sol.overloaded.all()
    share = sol.converged.mean()
    print(f"\n{name} {'overloaded' if overloaded else 'normal'}: converged {share:.3f}")
    if not overloaded:  # overloaded: finite and flagged is the contract (see the report)
        assert share >= FLOOR_POLICY


@pytest.mark.gpu
def test_gpu_float32_matches_cpu_float64(cache_games):
    gpu = pj.solve_equilibrium(cache_games, dtype=np.float32)
    with jax.default_device(jax.devices("cpu")[0]):
        cpu = pj.solve_equilibrium(cache_games)
    assert (gpu.converged & cpu.converged).mean() >= 0.75
    _same_equilibria_agree(_full(cache_games), gpu, cpu)


def test_start_shares_do_not_depend_on_padding():
    """A topology padded with absent workers (to batch it with larger ones) gets the same starts
    on its workers as unpadded: its results do not depend on the other topologies in a batch."""
    from poa_jax.starts import start_shares

    small = start_shares(np.ones((1, 2), bool), 9, seed=5)
    padded = start_shares(np.array([[1, 1, 0, 0, 0]], bool), 9, seed=5)
    np.testing.assert_array_equal(padded[..., 2:], 0.0)
    np.testing.assert_allclose(padded[..., :2], small, rtol=1e-15)
    inner = start_shares(np.array([[0, 1, 0, 1]], bool), 9, seed=5)  # gaps in the mask too
    np.testing.assert_allclose(inner[..., [1, 3]], small, rtol=1e-15)


def test_results_do_not_depend_on_the_padding_workers_parameters(cache_games):
    """Two absent workers padded onto SMALL with steep parameters (κ = 1e-300: an infinite
    slope at zero load) leave the equilibria exactly as unpadded. The Newton endgame took its
    Levenberg–Marquardt shift over every column, absent ones included, and 0·∞ = NaN in its
    system rejected every Newton step: 8 of 8 instances took other (more) iterations."""
    g = cache_games
    n = np.shape(g.demand)[0]

    def pad(a, fill):
        return np.concatenate([np.broadcast_to(a, (n, 4)), np.full((n, 2), fill)], 1)

    steep = {f: pad(getattr(g.latency, f), 1.0) for f in ("a", "b", "c", "p", "d")}
    lat = dataclasses.replace(g.latency, kappa=pad(g.latency.kappa, 1e-300), **steep)
    pre = dataclasses.replace(g.prefill, **{f: pad(getattr(g.prefill, f), 0.0) for f in "abc"})
    padded = dataclasses.replace(
        g, latency=lat, prefill=pre, residency=pad(g.residency, 1e-300),
        cache_size=pad(g.cache_size, 1.0), worker_mask=pad(np.ones((n, 4), bool), False),
    )  # fmt: skip
    a = pj.solve_equilibrium(g, tol=1e-10)  # below NEWTON_BELOW: the endgame runs
    b = pj.solve_equilibrium(padded, tol=1e-10)
    assert np.all(b.flows[..., 4:] == 0.0)
    np.testing.assert_array_equal(b.iterations, a.iterations)
    np.testing.assert_allclose(b.flows[..., :4], a.flows, rtol=0, atol=1e-12)


def test_no_gap_finer_than_the_dtype_resolves():
    """float32 at a tolerance below its resolution (1e-7; a relative gap subtracts two sums
    known to ~eps): no instance claims convergence, every reported gap is at least eps. Before,
    54% of these games read "gap 0, converged" with true (float64) gaps up to 2.8× tol. At the
    float32 default (1e-5) the verdicts are unchanged and the gaps stay honest."""
    from poa_jax.synthetic import random_games

    games = random_games(0, 48, 5, 6, cache=True)
    eps32 = float(np.finfo(np.float32).eps)
    fine = pj.solve_equilibrium(games, dtype="float32", tol=1e-7, max_iters=150)
    assert np.all(np.asarray(fine.status) != 0)
    assert np.all(np.asarray(fine.gap) >= eps32)
    opt = pj.solve_optimum(games, dtype="float32", tol=1e-7, max_iters=150)
    assert np.all(np.asarray(opt.status) != 0) and np.all(np.asarray(opt.gap) >= eps32)
    # the default tolerance: converged verdicts, gaps within tol and above the resolution
    eq = pj.solve_equilibrium(games, dtype="float32")
    gap = np.asarray(eq.gap)
    conv = np.asarray(eq.status) == 0
    assert conv.mean() > 0.9 and np.all(gap[conv] <= 1e-5) and np.all(gap >= eps32)
    truth = np_gap(_full(games), np.asarray(eq.flows, np.float64))  # float64, independent
    assert np.all(truth[conv] <= 1.02e-5)
