"""Kernels: simplex projection (against optax and a scipy QP), the relative gap, the loop driver
and the VI solvers on a game with a known answer."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import optimize

from poa_jax import kernels

loop, vi = kernels.loop, kernels.vi

project = jax.jit(kernels.project_simplex)
project_weighted = jax.jit(lambda z, t, w, m: kernels.project_simplex(z, t, w, m))


def _random_inputs(seed: int, k: int):
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, k) * rng.choice([0.01, 1.0, 100.0])
    total = float(rng.choice([0.0, 0.3, 1.0, 7.5]))
    w = np.exp(rng.normal(0.0, 1.5, k))
    mask = rng.uniform(size=k) < 0.7
    mask[rng.integers(k)] = True  # at least one allowed coordinate
    return z, total, w, mask


def _qp(z, total, w, mask):
    """Reference: min Σ w (y − z)²/2 s.t. Σ y = total, y ≥ 0, y[~mask] = 0, by SLSQP."""
    k = len(z)
    best = None
    for start in (np.where(mask, total / mask.sum(), 0.0), np.where(mask, np.maximum(z, 0), 0)):
        res = optimize.minimize(
            lambda y: 0.5 * np.sum(w * (y - z) ** 2),
            start,
            jac=lambda y: w * (y - z),
            method="SLSQP",
            bounds=[(0.0, None) if m else (0.0, 0.0) for m in mask],
            constraints=[
                {"type": "eq", "fun": lambda y: np.sum(y) - total, "jac": lambda y: np.ones(k)}
            ],
            options={"ftol": 1e-15, "maxiter": 500},
        )
        if best is None or res.fun < best.fun:
            best = res
    return best.x


def _check_kkt(y, z, total, w, mask, tol):
    """``y`` is the projection iff ``w_k (z_k − y_k) = θ`` on its support, ``w_k z_k ≤ θ`` off."""
    y, z, w = (np.asarray(a, np.float64) for a in (y, z, w))
    assert np.all(y >= 0) and np.all(y[~mask] == 0)
    np.testing.assert_allclose(y.sum(), total, rtol=1e-12, atol=1e-13)
    if total == 0:
        assert np.all(y == 0)
        return
    support = mask & (y > 0)
    theta = w[support] * (z[support] - y[support])
    scale = max(1.0, np.max(np.abs(w * z)))
    assert np.ptp(theta) <= tol * scale, theta
    off = mask & ~support
    assert np.all(w[off] * z[off] <= theta.mean() + tol * scale)


optax_projection = jax.jit(jax.vmap(optax.projections.projection_simplex))


# 16 is the last unrolled size, 17 and 40 take the K × K comparison branch
@pytest.mark.parametrize("k", [1, 2, 3, 7, 16, 17, 40])
def test_project_simplex_matches_optax(k):
    inputs = [_random_inputs(100 * k + seed, k) for seed in range(20)]
    z = np.stack([i[0] for i in inputs])
    # optax returns NaN for scale 0 (the library's zero total is checked in the QP test)
    totals = np.array([i[1] or 1.0 for i in inputs])
    got = np.asarray(jax.jit(jax.vmap(kernels.project_simplex))(z, totals))
    want = np.asarray(optax_projection(z, totals))
    for i in range(len(inputs)):
        np.testing.assert_allclose(got[i], want[i], rtol=1e-10, atol=1e-12 * max(1.0, totals[i]))
        _check_kkt(got[i], z[i], totals[i], np.ones(k), np.ones(k, bool), 1e-10)


@pytest.mark.parametrize("k", [2, 4, 9, 20])
def test_project_simplex_weighted_masked_matches_scipy_qp(k):
    for seed in range(12):
        z, total, w, mask = _random_inputs(7 * k + seed, k)
        got = np.asarray(project_weighted(jnp.asarray(z), total, jnp.asarray(w), jnp.asarray(mask)))
        _check_kkt(got, z, total, w, mask, 1e-9)
        want = _qp(z, total, w, mask)
        np.testing.assert_allclose(got, want, atol=1e-6 * max(1.0, total, np.abs(z).max()))


def test_project_simplex_weights_change_the_answer():
    # The metric matters: a heavy coordinate moves less (non-tautology guard for the QP test).
    z = jnp.array([1.0, 1.0, 0.0])
    eu = np.asarray(project(z, 1.0))
    heavy = np.asarray(project_weighted(z, 1.0, jnp.array([10.0, 1.0, 1.0]), jnp.ones(3, bool)))
    np.testing.assert_allclose(eu, [0.5, 0.5, 0.0], atol=1e-15)
    assert heavy[0] > heavy[1]  # coordinate 0 is "expensive to move" and stays nearer z
    # closed form: y_k = z_k − θ/w_k on the support {0, 1}: θ(1/10 + 1) = 1 → θ = 10/11
    np.testing.assert_allclose(heavy, [1 - 1 / 11, 1 - 10 / 11, 0.0], rtol=1e-14, atol=1e-16)


def test_project_simplex_feasible_on_extreme_inputs():
    rng = np.random.default_rng(5)
    k = 6
    for _ in range(50):
        z = rng.normal(0, 1, k) * 10.0 ** rng.integers(-8, 9)
        total = float(10.0 ** rng.integers(-6, 7))
        w = 10.0 ** rng.uniform(-6, 6, k)
        mask = rng.uniform(size=k) < 0.6
        mask[rng.integers(k)] = True
        y = np.asarray(project_weighted(jnp.asarray(z), total, jnp.asarray(w), jnp.asarray(mask)))
        assert np.all(np.isfinite(y)) and np.all(y >= 0)
        assert np.all(y[~mask] == 0)
        np.testing.assert_allclose(y.sum(), total, rtol=1e-12)


@pytest.mark.parametrize("k", [2, 3, 12])  # the unrolled branch and the vector one
def test_project_simplex_keeps_the_total_when_rounding_loses_it(k):
    # |z| ≫ total: θ rounds to the largest breakpoint and every coordinate to 0. The row kept
    # no mass before (an optimum of all-zero flows, SC 0, reported converged); the limit of the
    # projection puts the total on the largest breakpoints, in proportion to 1/w.
    z = jnp.full((k,), 1e20, jnp.float32)
    np.testing.assert_allclose(project(z, 1.0), np.full(k, 1.0 / k), rtol=1e-6)
    w = jnp.ones((k,), jnp.float32).at[1].set(2.0)  # breakpoint w·z largest at 1
    np.testing.assert_allclose(project_weighted(z, 3.0, w, jnp.ones(k, bool)),
                               3.0 * (np.arange(k) == 1), rtol=1e-6)  # fmt: skip
    y = project_weighted(z.at[0].set(-1e20), 2.0, w.at[1].set(1.0), jnp.arange(k) != 1)
    want = np.where(np.arange(k) >= 2, 2.0 / (k - 2), 0.0) if k > 2 else np.array([2.0, 0.0])
    np.testing.assert_allclose(y, want, rtol=1e-6)


def test_optimum_keeps_the_demand_under_a_huge_prefill_cost():
    import poa_jax as pj

    for c in (1e10, 1e20):
        g = pj.RoutingGame(demand=[1.0, 1.0], latency=pj.Latency(b=[1.0, 1.0]),
                           shareable=[0.5, 0.5], prefill=pj.PrefillTime(c=c))  # fmt: skip
        r = pj.price_of_anarchy(g, dtype="float32")
        np.testing.assert_allclose(r.optimum.flows.sum(-1), [1.0, 1.0], rtol=1e-6)
        assert float(r.optimum.social_cost) > 0 and float(r.poa) == pytest.approx(1.2345679)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 7])
def test_capped_columns_match_a_bisection_reference(k):
    """``{y ≥ 0, Σ y ≤ 1}``: ``max(z, 0)`` inside, else the simplex threshold (by bisection)."""
    from poa_jax.kernels.capped import project_capped_columns

    rng = np.random.default_rng(k)
    z = rng.normal(0.3, 0.8, (k, 500))
    z[:, :5] = 0.1  # ties
    ys = np.stack([np.asarray(y) for y in project_capped_columns([jnp.asarray(r) for r in z])])
    for col in range(z.shape[1]):
        c = z[:, col]
        if np.maximum(c, 0).sum() <= 1:
            ref = np.maximum(c, 0)
        else:
            lo, hi = c.min() - 1, c.max()
            for _ in range(200):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if np.maximum(c - mid, 0).sum() > 1 else (lo, mid)
            ref = np.maximum(c - hi, 0)
        np.testing.assert_allclose(ys[:, col], ref, atol=1e-12)
    assert np.all(ys >= 0) and np.all(ys.sum(0) <= 1 + 1e-12)


@pytest.mark.parametrize("big", [1e7, 1e8, 1e12, 1e30])
def test_capped_columns_keep_the_total_far_from_the_origin(big):
    """Columns with ``|z| ≫ 1/eps`` (float32): the projection still sums to 1 and matches a
    float64 reference on the same (rounded) inputs; before, ``u_1 − 1`` rounded to ``u_1`` and
    the whole total was lost (zeros)."""
    from poa_jax.kernels.capped import project_capped_columns

    rng = np.random.default_rng(0)
    k = 4
    z = (big * (1.0 + rng.uniform(-1e-6, 1e-6, (k, 200)))).astype(np.float32)
    z[:, :3] = np.float32(big)  # exact ties
    z[2, 3:10] = -big  # far below the top
    ys = np.stack(
        [np.asarray(y) for y in project_capped_columns([jnp.asarray(r) for r in z])]
    ).astype(np.float64)
    np.testing.assert_allclose(ys.sum(0), 1.0, rtol=2e-6)
    np.testing.assert_allclose(ys[:, 0], 0.25, rtol=1e-6)
    for col in range(z.shape[1]):
        c = z[:, col].astype(np.float64) - z[:, col].max()  # exact in float64
        lo, hi = c.min() - 1, c.max()
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if np.maximum(c - mid, 0).sum() > 1 else (lo, mid)
        np.testing.assert_allclose(ys[:, col], np.maximum(c - hi, 0), atol=2e-6)


def test_project_simplex_fully_masked_row_is_zero():
    y = project_weighted(jnp.array([0.3, -1.0]), 2.0, jnp.ones(2), jnp.array([False, False]))
    assert np.all(np.asarray(y) == 0.0)


def test_project_rows_is_row_wise():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(4, 5))
    totals = np.array([1.0, 0.0, 2.5, 0.1])
    w = np.exp(rng.normal(size=(4, 5)))
    mask = rng.uniform(size=(4, 5)) < 0.7
    mask[:, 0] = True
    rows = np.asarray(jax.jit(kernels.project_rows)(jnp.asarray(z), totals, jnp.asarray(w), mask))
    for j in range(4):
        one = project_weighted(jnp.asarray(z[j]), totals[j], jnp.asarray(w[j]), mask[j])
        np.testing.assert_allclose(rows[j], np.asarray(one), rtol=1e-15, atol=1e-300)


# --------------------------------------------------------------------------- relative gap


def test_relative_gap_zero_at_equilibrium_positive_elsewhere():
    # Pigou: costs (x, 1); the equilibrium puts everything on link 0 (costs 1 and 1).
    demand = jnp.array([1.0])
    mask = jnp.ones((1, 2), bool)
    cost = lambda x: jnp.stack([x[:, 0], jnp.ones_like(x[:, 1])], axis=-1)
    x_eq = jnp.array([[1.0, 0.0]])
    assert float(vi.relative_gap(x_eq, cost(x_eq), demand, mask)) == 0.0
    # at the optimum (1/2, 1/2): Σxc = 3/4, d·min c = 1/2 → gap 1/3
    x = jnp.array([[0.5, 0.5]])
    np.testing.assert_allclose(float(vi.relative_gap(x, cost(x), demand, mask)), 1 / 3, rtol=1e-15)
    for s in np.linspace(0.0, 0.95, 20):
        x = jnp.array([[s, 1 - s]])
        assert float(vi.relative_gap(x, cost(x), demand, mask)) > 0.0


def test_relative_gap_ignores_masked_and_empty_rows():
    # Two classes; class 1 has no demand; worker 2 is masked and very cheap.
    demand = jnp.array([2.0, 0.0])
    mask = jnp.array([[True, True, False], [True, True, False]])
    c = jnp.array([[3.0, 3.0, 0.0], [1.0, 5.0, 0.0]])
    x = jnp.array([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert float(vi.relative_gap(x, c, demand, mask)) == 0.0
    x2 = jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    c2 = jnp.array([[4.0, 3.0, 0.0], [1.0, 5.0, 0.0]])
    np.testing.assert_allclose(float(vi.relative_gap(x2, c2, demand, mask)), (8 - 6) / 8)


# --------------------------------------------------------------------------- loop driver


def _run(step, x0, tol, max_steps, error0=None):
    return jax.jit(lambda s: loop.iterate(step, s, tol=tol, max_steps=max_steps, error0=error0))(x0)


def test_iterate_converged():
    out = _run(lambda s: (s / 2, s / 2), jnp.float64(1.0), 1e-3, 100)
    assert int(out.status) == loop.CONVERGED == 0
    assert int(out.steps) == 10  # 2^-10 ≤ 1e-3 < 2^-9
    np.testing.assert_allclose(float(out.error), 2.0**-10)
    np.testing.assert_allclose(float(out.state), 2.0**-10)


def test_iterate_max_iterations():
    out = _run(lambda s: (s * 0.99, s * 0.99), jnp.float64(1.0), 1e-3, 7)
    assert int(out.status) == loop.MAX_ITERS == 1
    assert int(out.steps) == 7
    np.testing.assert_allclose(float(out.state), 0.99**7)


def test_iterate_non_finite_stops_at_once():
    def step(s):
        k = s[1] + 1
        err = jnp.where(k == 3, jnp.nan, 1.0 / k)
        return (s[0] * 2, k), err

    out = _run(step, (jnp.float64(1.0), jnp.int32(0)), 1e-12, 50)
    assert int(out.status) == loop.NONFINITE == 2
    assert int(out.steps) == 3  # stops on the NaN, does not run on to max_steps
    assert np.isnan(float(out.error))


def test_iterate_already_converged_start_takes_no_step():
    out = _run(lambda s: (s + 1, jnp.float64(1.0)), jnp.float64(0.0), 1e-3, 10, error0=0.0)
    assert int(out.steps) == 0 and int(out.status) == loop.CONVERGED
    assert float(out.state) == 0.0


def test_iterate_under_vmap_reports_each_lane_exactly():
    # Lane i halves its error from 10^i; the while_loop runs to the slowest lane, but each
    # lane's steps and state are its own.
    x0 = jnp.array([1.0, 10.0, 1e4, jnp.inf])
    out = jax.jit(
        jax.vmap(lambda s: loop.iterate(lambda t: (t / 2, t / 2), s, tol=1e-3, max_steps=20))
    )(x0)
    want_steps = [int(np.ceil(np.log2(v / 1e-3))) if v < 1e4 else 20 for v in [1.0, 10.0, 1e4]]
    np.testing.assert_array_equal(np.asarray(out.steps)[:3], want_steps)
    np.testing.assert_array_equal(np.asarray(out.status), [0, 0, 1, 2])


def test_status_of():
    got = loop.status_of(jnp.array([0.0, 1e-9, 2e-9, jnp.inf, jnp.nan]), 1e-9)
    np.testing.assert_array_equal(np.asarray(got), [0, 0, 1, 2, 2])


# --------------------------------------------------------------------------- VI solvers


def _two_links():
    """Links 2x and x + 1, demand 1: equilibrium (2/3, 1/3); ∇Φ = F (potential game)."""
    cost = lambda x: jnp.stack([2 * x[:, 0], x[:, 1] + 1], axis=-1)
    slope = lambda x: jnp.broadcast_to(jnp.array([2.0, 1.0]), x.shape)
    return cost, slope, jnp.array([1.0]), jnp.ones((1, 2), bool), jnp.array([[0.1, 0.9]])


@pytest.mark.parametrize("solver", ["projection", "extragradient", "frank_wolfe"])
def test_vi_solvers_reach_known_equilibrium(solver):
    cost, slope, demand, mask, x0 = _two_links()
    fn = {
        "projection": functools.partial(vi.projection, cost, slope),
        "extragradient": functools.partial(vi.extragradient, cost, slope),
        "frank_wolfe": functools.partial(vi.frank_wolfe, cost),
    }[solver]
    res = jax.jit(lambda x: fn(x, demand, mask, tol=1e-12, max_steps=500))(x0)
    assert int(res.status) == loop.CONVERGED
    assert float(res.gap) <= 1e-12
    np.testing.assert_allclose(np.asarray(res.x), [[2 / 3, 1 / 3]], atol=1e-10)


def test_smoothed_response_fixed_point():
    # R(x) = d·softmax(−c(x)) with c = (2x0, x1 + 1): a contraction; check x = R(x) directly.
    demand = jnp.array([1.0])
    mask = jnp.ones((1, 2), bool)
    resp = lambda x: (
        demand[:, None] * jax.nn.softmax(-jnp.stack([2 * x[:, 0], x[:, 1] + 1], axis=-1), axis=-1)
    )
    res = jax.jit(lambda x: vi.smoothed_response(resp, x, demand, mask, tol=1e-12, max_steps=500))(
        jnp.array([[1.0, 0.0]])
    )
    assert int(res.status) == loop.CONVERGED
    np.testing.assert_allclose(np.asarray(resp(res.x)), np.asarray(res.x), atol=1e-11)


def test_minimize_on_simplices_never_worse_than_start():
    target = jnp.array([[0.2, 0.5, 0.3]])
    obj = lambda x: jnp.sum((x - target) ** 2)
    x0 = jnp.array([[1.0, 0.0, 0.0]])
    mask = jnp.ones((1, 3), bool)
    x, f = jax.jit(
        lambda x0: kernels.minimize_on_simplices(
            obj, x0, jnp.array([1.0]), mask, optimizer=optax.adam(0.1), steps=300
        )
    )(x0)
    assert float(f) <= float(obj(x0))
    np.testing.assert_allclose(float(f), float(obj(x)), rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(np.asarray(x), np.asarray(target), atol=1e-3)
    np.testing.assert_allclose(float(jnp.sum(x)), 1.0, rtol=1e-12)


def test_fixed_trip_round_has_a_known_trip_count():
    """``advance(fixed=True)`` compiles to a loop whose trip count XLA knows (what lets the GPU
    runtime skip the per-trip predicate copy and sync); the early-exit loop has none. Both
    stop every lane at the same step with the same state."""
    import re

    from poa_jax.kernels import loop

    def run(x, fixed):
        step = lambda s: (s * 0.5, jnp.max(jnp.abs(s)))  # noqa: E731
        one = lambda v: loop.advance(step, v, jnp.float32(jnp.inf), jnp.int32(0), tol=1e-3,
                                     max_steps=100, budget=32, fixed=fixed)  # fmt: skip
        return jax.vmap(one)(x)

    x = jnp.asarray(np.geomspace(1e-4, 1e3, 24, dtype=np.float32).reshape(8, 3))
    hlo = {f: jax.jit(run, static_argnums=1).lower(x, f).compile().as_text() for f in (0, 1)}
    trip = re.compile(r'"known_trip_count":\{"n":"(\d+)"')  # the while op's backend config
    assert trip.findall(hlo[1]) == ["32"]
    assert trip.findall(hlo[0]) == []
    (s0, e0, k0), (s1, e1, k1) = run(x, False), run(x, True)
    np.testing.assert_array_equal(k0, k1)
    assert len(set(np.asarray(k0).tolist())) > 2  # lanes stop at different steps
    np.testing.assert_array_equal(s0, s1)
    np.testing.assert_array_equal(e0, e1)


@pytest.mark.parametrize("fixed", [False, True])
@pytest.mark.parametrize("budget, stop_below", [(32, 0.0), (13, 0.0), (32, 2e-3)])
def test_unrolled_trips_equal_single_steps(fixed, budget, stop_below):
    """``advance(unroll=U)`` (U steps per loop trip, each guarded by the lane's own stopping
    test) stops every lane at the same step, with the same state and error, as ``unroll=1``,
    for budgets that U does not divide, lanes that stop mid-trip, the iteration bound and a
    phase threshold; and the early-exit loop makes U times fewer trips."""
    import re

    from poa_jax.kernels import loop

    def run(x, k0, unroll, fixed=fixed):
        step = lambda s: (s * 0.7 + 1e-4 * jnp.sin(s), jnp.max(jnp.abs(s)))  # noqa: E731
        one = lambda v, k: loop.advance(step, v, jnp.float32(jnp.inf), k, tol=1e-3,
                                        max_steps=40, budget=budget, stop_below=stop_below,
                                        fixed=fixed, unroll=unroll)  # fmt: skip
        return jax.vmap(one)(x, k0)

    x = jnp.asarray(np.geomspace(1e-4, 1e3, 24, dtype=np.float32).reshape(8, 3))
    k0 = jnp.asarray([0, 0, 5, 20, 30, 38, 40, 3], jnp.int32)  # some lanes near the bound
    ref = run(x, k0, 1, fixed=False)  # the plain early-exit loop
    assert len(set(np.asarray(ref[2]).tolist())) > 3  # lanes stop at different steps
    for unroll in (1, 3, 4):
        out = run(x, k0, unroll)
        for a, b in zip(ref, out, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    if not fixed:  # the early-exit loop's body holds U steps: U times fewer trips
        hlo = jax.jit(run, static_argnums=2).lower(x, k0, 4).as_text()
        assert len(re.findall(r"stablehlo\.sine", hlo)) == 4
    with pytest.raises(ValueError, match="unroll"):
        run(x, k0, 0)


def test_ragged_projection_is_exact_when_michelot_needs_many_passes():
    """A 512-path group whose weighted projection needs 42 of Michelot's passes (a fixed
    bound of 32 returned a group total of ~1e33 instead of d), against the passes in NumPy."""
    import jax.numpy as jnp
    from poa_jax.kernels import ragged

    rng = np.random.default_rng(1)
    for _ in range(3):  # the third draw of this generator is the slow one
        n = 512
        z = -np.exp(np.cumsum(rng.uniform(0, rng.uniform(0.01, 1), n)))
        s = 10 ** rng.uniform(-rng.uniform(0, 6), rng.uniform(0, 6), n)
        d = 10 ** rng.uniform(-3, 6)
    support, passes = np.ones(n, bool), 0
    while True:
        theta = (z[support].sum() - d) / (1 / s[support]).sum()
        new = support & (z - theta / s > 0)
        passes += 1
        if (new == support).all():
            break
        support = new
    assert passes > 32
    want = np.where(support, np.maximum(z - theta / s, 0.0), 0.0)
    got = np.asarray(ragged.project_groups(jnp.asarray(z), jnp.asarray([d]), jnp.asarray(s),
                                           jnp.zeros(n, jnp.int32), jnp.ones(n, bool)))  # fmt: skip
    np.testing.assert_allclose(got.sum(), d, rtol=1e-9)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * d)


def test_projections_propagate_nan_and_keep_the_total():
    """A NaN in an allowed entry comes back as NaN, not as a finite all-zero row (off its
    simplex; a solver then read gap 0 and called it converged); an infinite entry takes the
    whole total; and the ragged projection keeps each group's total where rounding lost it
    (|z| ≫ d: a small OD demand, or huge entries)."""
    import jax.numpy as jnp
    from poa_jax.kernels import ragged
    from poa_jax.kernels.simplex import project_simplex

    nan = float("nan")
    assert np.isnan(np.asarray(project_simplex(jnp.array([nan, 0.2, 0.1]), 1.0))).all()
    w = jnp.array([nan, 1.0, 1.0])
    assert np.isnan(np.asarray(project_simplex(jnp.array([0.3, 0.2, 0.1]), 1.0, w))).all()
    inf = float("inf")
    np.testing.assert_array_equal(project_simplex(jnp.array([inf, 0.2, 0.1]), 1.0), [1, 0, 0])

    def groups(z, d, dtype=jnp.float64):
        n = len(z)
        return np.asarray(ragged.project_groups(jnp.asarray(z, dtype), jnp.asarray([d], dtype),
                                                jnp.ones(n, dtype), jnp.zeros(n, jnp.int32),
                                                jnp.ones(n, bool)))  # fmt: skip

    for dtype, rtol in ((jnp.float64, 1e-15), (jnp.float32, 1e-6)):
        y = groups([1.0, 1.0, 0.0], 1e-9, dtype)
        np.testing.assert_allclose(y.sum(), 1e-9, rtol=rtol)
        np.testing.assert_allclose(y, [5e-10, 5e-10, 0.0], rtol=rtol)
    np.testing.assert_allclose(groups([1e30, 1e30, 0.0], 1.0), [0.5, 0.5, 0.0])
    assert np.isnan(groups([nan, 0.2, 0.1], 1.0)).all()
