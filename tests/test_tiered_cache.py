"""Fluid tiered KV-cache game (issue 4) against scipy: best responses by linprog, optima by SLSQP.

The cost model is re-implemented here in NumPy from the module's equations.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import poa_jax as pj
from poa_jax import tiered_cache, tiered_kernels

scipy_opt = pytest.importorskip("scipy.optimize")

W, T, B = 3, 2, 5
CREDIT = np.array([1.0, 0.4])
#: The two ways of giving a tier's value: credits per tier, or access latencies per worker and
#: tier (credits derived per worker; the test derives them itself).
MODES = ("credit", "latency")


def _instance(seed, mode="credit"):
    """``(d, r, cap, size, m, v, a, fields)``: ``m (W, B)`` miss costs, ``v (W, T)`` the
    credits and ``a (W, W)`` the peer reach the cost model uses, ``fields`` the game's credit or
    access_latency keyword."""
    rng = np.random.default_rng(seed)
    pts = rng.random((W, 2))
    d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
    r = rng.random((W, B)) * rng.random(B) * 3
    cap = rng.uniform(0.5, 2.0, (W, T))
    size = rng.uniform(0.5, 1.5, B)
    if mode == "credit":
        m = np.broadcast_to(rng.uniform(0.5, 2.0, B), (W, B))
        a = 0.5 * np.exp(-d) * (1 - np.eye(W))
        return d, r, cap, size, m, np.broadcast_to(CREDIT, (W, T)), a, dict(credit=CREDIT)
    # a hit in tier t of worker w costs lat[w, t]·size[b], a peer's copy d[w, u]·size[b], a
    # miss kappa[w]·size[b]; tier 1 of the last worker is slower than recomputing (credit 0)
    kappa = rng.uniform(0.5, 2.0, W)
    m = kappa[:, None] * size[None, :]
    lat = kappa[:, None] * np.column_stack([rng.uniform(0.0, 0.3, W), rng.uniform(0.3, 0.9, W)])
    lat[-1, 1] = 1.5 * kappa[-1]
    v = np.maximum(0.0, 1.0 - lat / kappa[:, None])
    a = np.maximum(0.0, 1.0 - d / kappa[:, None]) * (1 - np.eye(W))
    return d, r, cap, size, m, v, a, dict(access_latency=lat)


def _costs(reach, r, m, v, y):
    h = y.sum(1)
    peer = 1 - np.prod(1 - reach[:, :, None] * h[None], axis=1)
    own = np.einsum("wt,wtb->wb", v, y)
    return (r * m * (1 - own) * (1 - peer)).sum(1)


def _best_response_lp(reach, r, cap, size, m, v, y, w):
    """Worker w's best-response cost by linprog over its (T, B) placement."""
    h = y.sum(1)
    others = [u for u in range(len(reach)) if u != w]
    peer = 1 - np.prod([1 - reach[w, u] * h[u] for u in others], axis=0)
    gain = r[w] * m[w] * (1 - peer)
    c = -(gain[None, :] * v[w][:, None]).ravel()
    a_ub, b_ub = [], []
    for b in range(B):
        row = np.zeros((T, B))
        row[:, b] = 1
        a_ub.append(row.ravel())
        b_ub.append(1.0)
    for t in range(T):
        row = np.zeros((T, B))
        row[t] = size
        a_ub.append(row.ravel())
        b_ub.append(cap[w, t])
    lp = scipy_opt.linprog(c, A_ub=a_ub, b_ub=b_ub, bounds=(0, 1))
    return gain.sum() + lp.fun


def _game(d, r, cap, size, m, fields):
    return pj.TieredCacheGame(d, r, cap, miss_cost=m, size=size, **fields)


def _batch(insts):
    d, r, cap, size, m = (np.stack(x) for x in list(zip(*insts, strict=True))[:5])
    fields = {k: np.stack([i[7][k] for i in insts]) for k in insts[0][7]}
    return _game(d, r, cap, size, m, fields)


@pytest.fixture(scope="module", params=MODES)
def solved(request):
    insts = [_instance(s, request.param) for s in range(3)]
    # Costs in time reach peers far (reach up to 1, not 0.5): SC has many local minima, and
    # the descent needs more random starts to match SLSQP's best of 6 (instance 1: 4.624 from
    # the equilibria and the uniform fill alone, 4.575 with 4 random starts, 4.521 with 12).
    k = 12 if request.param == "latency" else 4
    return insts, pj.price_of_anarchy(_batch(insts), optimum_starts=k)


@pytest.mark.parametrize("mode", MODES)
def test_best_response_is_the_lp_optimum(mode):
    d, r, cap, size, m, v, a, f = _instance(10, mode)
    rng = np.random.default_rng(1)
    y = rng.random((W, T, B)) * 0.3
    for w in range(W):
        br, cost = tiered_cache.best_response(_game(d, r, cap, size, m, f), y, w)
        ref = _best_response_lp(a, r, cap, size, m, v, y, w)
        assert float(cost) == pytest.approx(ref, rel=1e-9)
        # feasible and its cost is what it says
        assert (br >= 0).all() and (br.sum(0) <= 1 + 1e-12).all()
        assert (br @ size <= cap[w] + 1e-12).all()
        y2 = y.copy()
        y2[w] = br
        assert _costs(a, r, m, v, y2)[w] == pytest.approx(float(cost), rel=1e-12)
        if mode == "latency" and w == W - 1:
            assert (br[1] == 0).all()  # a tier slower than recomputing is never used


def test_access_latency_is_the_cost_of_a_hit():
    """One worker, no peers: a block held whole in tier t costs its rate × ℓ_t × size (the read
    instead of the recompute); a tier slower than recomputing costs the recompute."""
    size = np.array([2.0, 3.0])
    kappa, lat = 1.5, np.array([0.3, 0.9, 2.0])  # per unit of size; tier 2 is slower than kappa
    g = pj.TieredCacheGame(np.zeros((1, 1)), [[1.0, 4.0]], [[5.0, 5.0, 5.0]],
                           miss_cost=kappa * size, size=size, access_latency=lat)  # fmt: skip
    for t in range(3):
        y = np.zeros((1, 3, 2))
        y[0, t] = 1.0
        want = (1.0 * 2.0 + 4.0 * 3.0) * min(lat[t], kappa)
        assert float(tiered_cache.social_cost(g, y)) == pytest.approx(want, rel=1e-12)
    # with room for both blocks in the fastest tier, the optimum and equilibrium use it
    res = pj.price_of_anarchy(g)
    assert float(res.optimum_cost) == pytest.approx(14.0 * 0.3, rel=1e-9)
    assert float(res.poa) == pytest.approx(1.0, rel=1e-9)


def test_costs_in_time_price_a_peer_copy_by_its_transfer():
    """With access latencies, distance is the transfer cost per unit of size: a worker with
    nothing cached pays rate × D × size for a neighbour's copy, and the recompute where the
    transfer is slower; the holder pays its read."""
    d = np.array([[0.0, 0.5, 2.0], [0.5, 0.0, 1.5], [2.0, 1.5, 0.0]])
    size, r = np.array([1.0, 2.0]), np.array([[1.0, 3.0], [2.0, 1.0], [1.0, 1.0]])
    g = pj.TieredCacheGame(d, r, np.full((3, 1), 3.0), miss_cost=size, size=size,
                           access_latency=[0.1])  # fmt: skip
    y = np.zeros((3, 1, 2))
    y[1] = 1.0  # worker 1 holds both blocks
    rs = r @ size
    want = [rs[0] * 0.5, rs[1] * 0.1, rs[2] * 1.0]  # transfer, read, recompute (1.5 > κ = 1)
    np.testing.assert_allclose(tiered_cache.worker_costs(g, y), want, rtol=1e-12)
    with pytest.raises(pj.InputError, match="peer_credit: not used with access_latency"):
        tiered_cache.worker_costs(dataclasses.replace(g, peer_credit=0.5), y)


def test_equilibrium_every_worker_best_responds(solved):
    insts, res = solved
    eq = res.equilibrium
    assert eq.converged.all() and (eq.gap <= 1e-9).all()
    for b, (_, r, cap, size, m, v, a, _) in enumerate(insts):
        y = eq.placement[b]
        np.testing.assert_allclose(eq.social_cost[b], _costs(a, r, m, v, y).sum(), rtol=1e-12)
        for w in range(W):
            ref = _best_response_lp(a, r, cap, size, m, v, y, w)
            assert _costs(a, r, m, v, y)[w] == pytest.approx(ref, rel=1e-8, abs=1e-12)


def test_optimum_against_scipy(solved):
    insts, res = solved
    assert (res.poa >= 1.0).all() and (res.price_of_stability <= res.poa + 1e-12).all()
    for b, (_, r, cap, size, m, v, a, _) in enumerate(insts):
        a_ub, b_ub = [], []
        for w in range(W):
            for k in range(B):
                row = np.zeros((W, T, B))
                row[w, :, k] = 1
                a_ub.append(row.ravel())
                b_ub.append(1.0)
            for t in range(T):
                row = np.zeros((W, T, B))
                row[w, t] = size
                a_ub.append(row.ravel())
                b_ub.append(cap[w, t])
        a_ub, b_ub = np.array(a_ub), np.array(b_ub)
        rng = np.random.default_rng(b)
        best = np.inf

        def sc(x, a=a, r=r, m=m, v=v):
            return _costs(a, r, m, v, x.reshape(W, T, B)).sum()

        cons = [
            dict(type="ineq", fun=lambda x, a=a_ub, c=b_ub: c - a @ x, jac=lambda x, a=a_ub: -a)
        ]
        for _ in range(6):
            o = scipy_opt.minimize(
                sc, rng.random(W * T * B) * 0.3, method="SLSQP", bounds=[(0, 1)] * (W * T * B),
                constraints=cons, options=dict(maxiter=500, ftol=1e-12),
            )  # fmt: skip
            if o.success and (a_ub @ o.x <= b_ub + 1e-9).all():
                best = min(best, o.fun)
        ours = float(res.optimum_cost[b])
        y = res.optimum.placement[b]
        assert (a_ub @ y.ravel() <= b_ub + 1e-9).all() and (y >= 0).all()
        assert ours == pytest.approx(_costs(a, r, m, v, y).sum(), rel=1e-12)
        assert ours <= best * (1 + 1e-4)  # a local optimum at least as good as SLSQP's best
        assert ours <= float(res.equilibrium.social_cost[b]) + 1e-12


def _fw_gap_lp(reach, r, cap, size, m, v, y):
    """Relative Frank–Wolfe gap ``max_{y'} ⟨−∇SC(y), y' − y⟩ / SC(y)`` by linprog per worker.

    The gradient by central differences of :func:`_costs`: SC is affine in each single
    coordinate (own credit and every peer factor are), so the difference is exact to rounding.
    """
    y = np.asarray(y, np.float64)
    sc = _costs(reach, r, m, v, y).sum()
    grad = np.zeros_like(y)
    for idx in np.ndindex(*y.shape):
        e = np.zeros_like(y)
        e[idx] = 0.5
        grad[idx] = _costs(reach, r, m, v, y + e).sum() - _costs(reach, r, m, v, y - e).sum()
    total = 0.0
    for w in range(W):
        a_ub, b_ub = [], []
        for b in range(B):
            row = np.zeros((T, B))
            row[:, b] = 1
            a_ub.append(row.ravel())
            b_ub.append(1.0)
        for t in range(T):
            row = np.zeros((T, B))
            row[t] = size
            a_ub.append(row.ravel())
            b_ub.append(cap[w, t])
        lp = scipy_opt.linprog(grad[w].ravel(), A_ub=a_ub, b_ub=b_ub, bounds=(0, 1))
        total += float(grad[w].ravel() @ y[w].ravel()) - lp.fun
    return total / sc


def test_optimum_certificate_against_linprog(solved):
    """The optimum's ``gap`` bounds the Frank–Wolfe gap from above, is tight where the point is
    stationary, and sets the status; a placement away from stationarity is not certified."""
    insts, res = solved
    opt = res.optimum
    for b, (_, r, cap, size, m, v, a, _) in enumerate(insts):
        truth = _fw_gap_lp(a, r, cap, size, m, v, opt.placement[b])
        assert opt.gap[b] >= truth - 1e-9
        if truth <= 1e-10:
            assert opt.gap[b] <= 1e-6 and opt.converged[b] and opt.status[b] == 0
        else:
            assert opt.status[b] == (0 if opt.gap[b] <= 1e-6 else 1)
        # half of the optimum: feasible, far from stationary (it gives up half of every hit)
        half = 0.5 * opt.placement[b]
        truth = _fw_gap_lp(a, r, cap, size, m, v, half)
        game = _game(*insts[b][:5], insts[b][7])
        bound = tiered_cache.stationarity_gap(game, half)
        assert truth > 1e-2 and bound >= truth - 1e-9
    assert res.converged.all() == (res.equilibrium.converged & opt.converged).all()


def _lp_max(g, cap, size):
    """``max ⟨g, u⟩`` over one worker's placements ``u (T, B)`` by linprog: (value, u)."""
    t, b = g.shape
    a_ub = [np.kron(np.ones(t), np.eye(b)[k]) for k in range(b)]
    a_ub += [np.kron(np.eye(t)[k], size) for k in range(t)]
    lp = scipy_opt.linprog(-g.ravel(), A_ub=np.array(a_ub), b_ub=np.r_[np.ones(b), cap],
                           bounds=(0, 1))  # fmt: skip
    return -lp.fun, lp.x.reshape(t, b)


def test_coordinated_best_response_is_the_lp_optimum():
    """The greedy of _social_lmo against linprog on random LPs, ties, zero credits and
    capacities included, and its prices against the LP value (weak duality, tight). The LPs
    with the same number of tiers are solved in one call, as lanes, padded to 13 blocks with
    blocks worth nothing (which must stay out)."""
    import jax.numpy as jnp

    rng = np.random.default_rng(7)
    lps = {}
    for _ in range(60):
        t, b = int(rng.integers(1, 5)), int(rng.integers(1, 14))
        alpha = rng.random(b) * rng.choice([0.0, 1.0, 10.0])
        beta = rng.random(b) * rng.choice([0.0, 1.0, 10.0])
        v = np.round(rng.random(t), 1) * (rng.random(t) > 0.2)  # ties and zeros
        cap = rng.uniform(0, 3, t) * (rng.random(t) > 0.1)
        size = rng.choice([0.5, 1.0, rng.uniform(0.2, 2)], b)
        lps.setdefault(t, []).append((alpha, beta, v, cap, size))
    for group in lps.values():
        cols = [
            np.stack([np.concatenate([lp[k], np.full(13 - len(lp[k]), fill)]) if pad
                      else lp[k] for lp in group], -1)
            for k, pad, fill in [(0, 1, 0.0), (1, 1, 0.0), (2, 0, 0.0), (3, 0, 0.0), (4, 1, 1.0)]
        ]  # fmt: skip
        u_all, lam_all = tiered_kernels._social_lmo(*(jnp.asarray(c) for c in cols))
        for i, (alpha, beta, v, cap, size) in enumerate(group):
            b = len(alpha)
            u, lam = np.asarray(u_all)[..., i], np.asarray(lam_all)[:, i]
            assert (u[:, b:] == 0).all()
            u = u[:, :b]
            g = alpha[None] * v[:, None] + beta[None]
            best, _ = _lp_max(g, cap, size)
            assert (u >= 0).all() and (u.sum(0) <= 1 + 1e-12).all()
            assert ((u * size).sum(1) <= cap + 1e-12).all()
            assert (g * u).sum() == pytest.approx(best, rel=1e-12, abs=1e-12)
            dual = lam @ cap + np.maximum(0, (g - lam[:, None] * size[None]).max(0)).sum()
            assert (lam >= 0).all() and dual == pytest.approx(best, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("threads", ["1", "2"])
def test_compacted_rounds_are_per_instance(monkeypatch, threads):
    """The host driver of the polish: every instance gets exactly its own number of rounds
    (until its ``more`` is false, at most ``max_rounds``), whatever the lanes, the threads and
    the other instances; freed slots are refilled, so the calls cost what the rounds need."""
    import jax

    from poa_jax.caching import _compacted

    monkeypatch.setenv("POA_JAX_CHUNK_THREADS", threads)
    calls = []

    @jax.jit
    def count_up(target, state):
        return state + 1, state + 1 < target

    def fn(target, state):
        calls.append(len(target))
        return count_up(target, state)

    rng = np.random.default_rng(2)
    target = (1 + 10 * (rng.random(37) < 0.2)).astype(np.int32)  # a few slow instances
    for lanes, max_rounds in [(8, 100), (4, 5), (64, 3), (1, 100)]:
        calls.clear()
        out = _compacted(fn, (target,), np.zeros(37, np.int32), lanes, max_rounds)
        np.testing.assert_array_equal(out, np.minimum(target, max_rounds))
        size = min(lanes, 64)
        assert set(calls) == {size}
        rounds = int(np.minimum(target, max_rounds).sum())
        # full calls, then each slot set's drain (fixed chunks would pay their slowest each)
        assert len(calls) <= rounds / size + 2 * min(max_rounds, target.max()) + 2
    with pytest.raises(ZeroDivisionError):  # an error in a call surfaces, nothing hangs
        _compacted(lambda a, s: 1 // 0, (target,), np.zeros(37), 8, 3)
    assert _compacted(fn, (target,), np.zeros(37, np.int32), 8, 0).sum() == 0


def test_polish_does_not_depend_on_the_batch():
    """Each instance's polish stops after its own pass that lowers nothing: solved in a batch
    or alone, the same optimum."""
    insts = [_instance(20 + k) for k in range(3)]
    y = np.random.default_rng(5).random((3, W, T, B)) * 0.3
    together = tiered_cache.solve_optimum(_batch(insts), y0=y, steps=5, polish_sweeps=10)
    for k, inst in enumerate(insts):
        alone = tiered_cache.solve_optimum(_game(*inst[:5], inst[7]), y0=y[k], steps=5,
                                           polish_sweeps=10)  # fmt: skip
        assert float(alone.social_cost) == pytest.approx(together.social_cost[k], rel=1e-12)
        np.testing.assert_allclose(alone.placement, together.placement[k], atol=1e-12)


def test_count_below_is_searchsorted():
    """The greedy's binary search against NumPy's, for every length up to 40 (ties, values
    past both ends, several lanes)."""
    rng = np.random.default_rng(11)
    for n in range(1, 41):
        cum = np.cumsum(rng.choice([0.0, 0.5, 1.0], (n, 3)), 0)  # non-decreasing, with ties
        lim = rng.uniform(-1, cum.max() + 1, (4, 3))
        lim[0] = cum[rng.integers(n)]  # exactly on a value
        got = np.asarray(tiered_kernels._count_below(cum, lim))
        want = np.stack([np.searchsorted(cum[:, i], lim[:, i], "left") for i in range(3)], 1)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("x64", [True, False])
def test_packed_sorts_are_argsorts(x64):
    """The greedy's orders by packed integer keys (64-bit integers on) and their fallbacks
    (off) against NumPy's stable argsort: descending along either axis, ties by index, +0.0
    tying with −0.0, and the inverse permutation."""
    import jax

    rng = np.random.default_rng(12)
    x = rng.choice([0.0, -0.0, 0.25, 1.5, 3.0, 1e-30], (64, 5)).astype(np.float32)
    x[:, 0] = rng.standard_normal(64)
    old = jax.config.jax_enable_x64
    try:
        jax.config.update("jax_enable_x64", x64)
        for axis in (0, -1):
            got = np.asarray(tiered_kernels._order_desc(x, axis=axis))
            np.testing.assert_array_equal(got, np.argsort(-x, axis=axis, kind="stable"))
        perm = np.argsort(rng.random((64, 5)), axis=0)
        got = np.asarray(tiered_kernels._inverse(perm, axis=0))
        np.testing.assert_array_equal(got, np.argsort(perm, axis=0))
    finally:
        jax.config.update("jax_enable_x64", old)


def test_polish_reaches_the_block_coordinate_optimum_of_linprog():
    """The coordinated best responses (polish) against block-coordinate descent by linprog,
    written here: from the same point both reach the same SC, and the result is certified."""
    rng = np.random.default_rng(3)
    for k in range(2):
        d, r, cap, size, m, v, a, fields = _instance(10 + k)
        game = _game(d, r, cap, size, m, fields)
        y = rng.random((W, T, B)) * 0.2
        ours = tiered_cache.solve_optimum(game, y0=y, steps=1, polish_sweeps=30)
        # linprog's block-coordinate descent from the same (retracted) first step
        start = tiered_cache.solve_optimum(game, y0=y, steps=1, polish_sweeps=0).placement
        x = start.copy()
        for _ in range(30):
            for w in range(W):
                e = np.zeros_like(x)
                grad = np.zeros((T, B))
                for idx in np.ndindex(T, B):
                    e[:] = 0
                    e[(w,) + idx] = 0.5
                    grad[idx] = _costs(a, r, m, v, x - e).sum() - _costs(a, r, m, v, x + e).sum()
                _, x[w] = _lp_max(grad, cap[w], size)
        ref = _costs(a, r, m, v, x).sum()
        assert float(ours.social_cost) == pytest.approx(ref, rel=1e-9)
        assert float(ours.social_cost) <= _costs(a, r, m, v, start).sum()
        assert ours.converged and ours.gap <= 1e-6


def test_descent_stops_only_where_its_first_round_gains_nothing(solved):
    """A start its first round of descent cannot lower (by more than the tolerance) stops
    after :data:`DESCENT_ROUND` steps and keeps its point; every other start runs all its
    steps, in rounds and a shorter last one, to the point one uninterrupted descent reaches."""
    insts, res = solved
    game = _batch(insts)
    n = len(insts)
    rnd = tiered_kernels.DESCENT_ROUND
    steps = 2 * rnd + 7
    stationary = res.optimum.placement  # certified: a projected step does not move it
    assert res.optimum.converged.all()
    held = tiered_cache.solve_optimum(game, y0=stationary, steps=steps, polish_sweeps=0)
    np.testing.assert_array_equal(held.rounds, rnd)
    np.testing.assert_array_less(held.social_cost, res.optimum_cost * (1 + 1e-12))
    uniform = np.full((n, W, T, B), 0.5)
    ran = tiered_cache.solve_optimum(game, y0=uniform, steps=steps, polish_sweeps=0)
    np.testing.assert_array_equal(ran.rounds, steps)
    p = tiered_cache._prepare(game, None)
    one = tiered_kernels._descent_batch(*tiered_cache._pack(p), uniform, steps=steps, lr=0.2)
    np.testing.assert_allclose(ran.placement, np.asarray(one["placement"]), rtol=0, atol=1e-12)
    # with fewer steps than a round, one round of all of them
    short = tiered_cache.solve_optimum(game, y0=stationary, steps=7, polish_sweeps=0)
    np.testing.assert_array_equal(short.rounds, 7)


def test_certificate_skips_the_projection_only_where_the_lp_prices_certify(solved):
    """With the polish's LP prices and a tolerance, a lane whose LP-priced bound is within it
    keeps that bound (never below the full certificate, still within it) and skips the
    projection's pricing; every other lane gets the full certificate, whatever shares its call.
    So the status never changes."""
    insts, res = solved
    game = _batch(insts)
    p = tiered_cache._prepare(game, None)
    args = tiered_cache._pack(p)
    opt = res.optimum.placement
    rng = np.random.default_rng(3)
    # stationary optima and points away from stationarity, in one batch
    y = np.concatenate([opt, 0.5 * opt, opt * rng.uniform(0.7, 1.0, opt.shape)])
    args = tuple(np.concatenate([a] * 3) for a in args)
    lam = np.zeros(y.shape[:3])
    (y, prices), _ = tiered_kernels._sweep_batch(*args, y, lam)
    y, prices = np.asarray(y), np.asarray(prices)
    c = np.ones(len(y))
    full = np.asarray(tiered_kernels._cert_batch(*args, y, lam, c, prices)["gap"])
    assert (full <= 1e-6).any() and (full > 1e-6).any()
    for tol in (-1.0, 1e-6, float(np.median(full)), np.inf):
        got = np.asarray(tiered_kernels._cert_batch(*args, y, lam, c, prices, tol=tol)["gap"])
        np.testing.assert_array_equal(got <= tol, full <= tol)
        assert (got >= full).all()
        np.testing.assert_array_equal(got[got > tol], full[got > tol])
        if tol == -1.0:
            np.testing.assert_array_equal(got, full)
        # a lane alone gets what it gets among the others
        for k in (0, len(y) - 1):
            one = tiered_kernels._cert_batch(*(a[k : k + 1] for a in args), y[k : k + 1],
                                             lam[k : k + 1], c[k : k + 1], prices[k : k + 1],
                                             tol=tol)  # fmt: skip
            assert float(one["gap"][0]) == pytest.approx(got[k], rel=1e-12, abs=1e-300)


def test_optimum_out_of_steps_is_not_called_converged(solved):
    insts, _ = solved
    game = _batch(insts)
    short = tiered_cache.solve_optimum(
        game, y0=np.zeros((len(insts), W, T, B)), steps=1, polish_sweeps=0
    )
    assert (short.gap > 1e-3).all() and (short.status == 1).all() and not short.converged.any()
    res = tiered_cache.price_of_anarchy(game, optimum_steps=1, optimum_starts=0, polish_sweeps=0)
    assert not res.optimum.converged.all() and not res.converged.all()
    np.testing.assert_array_equal(res.converged, res.equilibrium.converged & res.optimum.converged)
    full = tiered_cache.solve_optimum(game, steps=1500)
    loose = tiered_cache.solve_optimum(game, steps=1500, tol=1.0)
    assert loose.converged.all() and (full.converged == (full.gap <= 1e-6)).all()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(capacity=-np.ones((W, T))), r"capacity\[0, 0\].*>= 0"),
        (dict(rates=np.ones((W + 1, B))), "rates has shape"),
        (dict(distance=np.array([[0, 1, 2], [1, 0, 1], [3, 1, 0.0]])), "symmetric"),
        (dict(credit=[1.0, 1.5]), "credit"),
        (dict(size=np.zeros(B)), "size"),
        (
            dict(rates=np.ones((2, W, B)), capacity=np.ones((5, W, T))),
            r"batch axes do not broadcast: rates \(2,\), capacity \(5,\)",
        ),
        (dict(access_latency=np.ones((W, T))), "give credit or access_latency, not both"),
        (dict(credit=None, access_latency=-np.ones(T)), r"access_latency\[0\].*>= 0"),
        (dict(credit=None, access_latency=np.ones((W, T + 1))), "access_latency has shape"),
        (
            dict(credit=None, access_latency=np.ones(T)),
            "miss_cost: with access_latency, a miss must cost in proportion to the block size",
        ),
    ],
)
def test_bad_input(kwargs, match, compile_counter):
    d, r, cap, size, m, *_ = _instance(0)
    base = dict(distance=d, rates=r, capacity=cap, credit=CREDIT, size=size, miss_cost=m)
    base.update(kwargs)
    with pytest.raises(pj.InputError, match=match):
        pj.price_of_anarchy(pj.TieredCacheGame(**base))
    assert compile_counter.solver_count == 0


def test_float32_agrees_with_float64():
    """The batched float32 solver against the float64 one (the project's rule: a float64
    reference, then the float32 kernel compared with it) on small random instances: the
    best-response order by packed integer keys, the lane-layout descent and its closed-form
    gradient, in both dtypes."""
    insts = [_instance(s, "latency") for s in range(20, 26)]
    g = _batch(insts)
    size, cap = np.stack([i[3] for i in insts]), np.stack([i[2] for i in insts])
    e64 = tiered_cache.solve_equilibrium(g, starts=2, dtype=np.float64)
    e32 = tiered_cache.solve_equilibrium(g, starts=2, dtype=np.float32, tol=1e-7)
    assert e32.converged.all() and (e32.gap <= 1e-7).all()
    np.testing.assert_allclose(e32.social_cost, e64.social_cost, rtol=1e-5)
    o64 = tiered_cache.solve_optimum(g, y0=e64.placement, steps=200, dtype=np.float64)
    o32 = tiered_cache.solve_optimum(g, y0=e64.placement, steps=200, dtype=np.float32)
    assert o32.placement.dtype == np.float32
    np.testing.assert_allclose(o32.social_cost, o64.social_cost, rtol=1e-4)
    # float32 placements are feasible to float32 rounding, and their cost is what they say
    y = o32.placement.astype(np.float64)
    assert (y >= 0).all() and (y.sum(-2) <= 1 + 1e-6).all()
    assert (np.einsum("nwtb,nb->nwt", y, size) <= cap + 1e-5).all()
    for b, (_, ri, _, _, mi, vi, ai, _) in enumerate(insts):
        want = float(o32.social_cost[b])
        assert _costs(ai, ri, mi, vi, y[b]).sum() == pytest.approx(want, rel=1e-5)


def test_closed_form_gradient_matches_autodiff():
    """``_sc_grad_lanes`` against ``jax.grad`` of the value, at a
    point with ``0 < h < 1`` (where the clip of ``h`` is inactive and autodiff is exact)."""
    import jax
    import jax.numpy as jnp

    d, r, cap, size, m, v, a, f = _instance(3, "latency")  # per-worker credits
    p = tiered_cache._prepare(_game(d, r, cap, size, m, f))
    np.testing.assert_allclose(p.credit[0], v, rtol=1e-15)
    np.testing.assert_allclose(p.reach[0], a, rtol=1e-15)
    rng = np.random.default_rng(0)
    y = rng.uniform(0.05, 0.2, (W, T, B))
    ys = [jnp.asarray(y[:, t]) for t in range(T)]
    cr = [jnp.asarray(v[:, t]) for t in range(T)]
    ref = jax.grad(lambda z: jnp.sum(tiered_kernels.worker_costs_one(p.reach[0], p.rm[0],
                                                                   p.credit[0], z)))(y)  # fmt: skip
    sc, alpha, beta = tiered_kernels._sc_grad_lanes(p.reach[0], p.rm[0], cr, ys)
    g = -(alpha[:, None, :] * v[:, :, None] + beta[:, None, :])
    np.testing.assert_allclose(g, ref, rtol=1e-10, atol=1e-12)
    assert float(sc) == pytest.approx(_costs(a, r, m, v, y).sum(), rel=1e-12)


def test_concurrent_chunks_give_identical_results(monkeypatch):
    """Chunks in flight at once (``POA_JAX_CHUNK_THREADS``, the CPU default: the CPU count)
    give the same arrays, bit for bit, as one chunk at a time: the equilibria in 2-lane
    chunks and the optimum in 2-lane chunks, over 7 instances (a padded last chunk)."""
    g = _batch([_instance(s) for s in range(30, 37)])
    monkeypatch.setattr(tiered_cache, "LANES", 2)
    monkeypatch.setattr(tiered_cache, "OPT_LANES", 2)
    runs = {}
    for threads in ("1", "3"):
        monkeypatch.setenv("POA_JAX_CHUNK_THREADS", threads)
        eq = tiered_cache.solve_equilibrium(g, starts=2)
        opt = tiered_cache.solve_optimum(g, y0=eq.placement, steps=30)
        runs[threads] = (eq.placement, eq.social_cost, eq.rounds, opt.placement, opt.social_cost)
    for a, b in zip(runs["1"], runs["3"], strict=True):
        np.testing.assert_array_equal(a, b)
    monkeypatch.setenv("POA_JAX_CHUNK_THREADS", "two")
    with pytest.raises(pj.InputError, match="POA_JAX_CHUNK_THREADS = 'two': must be an integer"):
        tiered_cache.solve_equilibrium(g, starts=1)


def test_a_cache_paradox_by_hand():
    """Adding a cache slot raises the cost at the unique equilibrium (a Braess-like paradox).

    Workers A, B, C; transfer costs A–B 0.5, B–C 0.1, A–C 0.6 (peers save 0.5, 0.9, 0.4 of a
    miss); one G1 tier read at 0.1 (saves 0.9); blocks X, Y of size 1, a miss costing 1.
    Rates: A wants X at 1; B wants X at 1 and Y at 0.8; C wants X at 10. B has one slot, C none.

    * A without a slot: B keeps X (gain 0.9 > 0.72 for Y); A and C fetch B's copy.
      SC = A 1·0.5 + B (1·0.1 + 0.8) + C 10·0.1 = 2.4.
    * A with one slot: A keeps X (its only wanted block); B now free-rides on A's X (gain
      1·0.5·0.9 = 0.45 < 0.72 for Y) and keeps Y; C must fetch X from A, farther away.
      SC = A 0.1 + B (1·0.5 + 0.8·0.1) + C 10·0.6 = 6.68.

    Both equilibria are unique (A always fills X; B's choice then follows), so every start
    must reach them.
    """
    d = np.array([[0.0, 0.5, 0.6], [0.5, 0.0, 0.1], [0.6, 0.1, 0.0]])
    rates = np.array([[1.0, 0.0], [1.0, 0.8], [10.0, 0.0]])
    before = pj.TieredCacheGame(d, rates, [[0.0], [1.0], [0.0]], access_latency=[0.1])
    after = dataclasses.replace(before, capacity=[[1.0], [1.0], [0.0]])
    y_before = np.zeros((3, 1, 2))
    y_before[1, 0, 0] = 1.0  # B keeps X
    y_after = np.zeros((3, 1, 2))
    y_after[0, 0, 0] = y_after[1, 0, 1] = 1.0  # A keeps X, B keeps Y
    assert float(tiered_cache.social_cost(before, y_before)) == pytest.approx(2.4, rel=1e-12)
    assert float(tiered_cache.social_cost(after, y_after)) == pytest.approx(6.68, rel=1e-12)
    for game, y in ((before, y_before), (after, y_after)):
        _, out = tiered_cache.solve_equilibrium(game, starts=8, _all=True)
        assert (out["status"] == 0).all()
        np.testing.assert_allclose(out["placement"][0], np.broadcast_to(y, (8, 3, 1, 2)),
                                   atol=1e-12)  # fmt: skip
    f = tiered_cache.capacity_paradox(before, worker=0, tier=0, extra=1.0, starts=8)
    assert f["worst_paradoxes"] == f["best_paradoxes"] == 1
    assert float(f["worst_rise"]) == pytest.approx(4.28, rel=1e-12)


# --------------------------------------------------------------------------- shared pool


def _pooled(seed, mode):
    """An instance of :func:`_instance` with a shared pool of capacity 1.5: ``(inst, zr, cp)``
    with ``zr (W,)`` the pool's value to each worker (0.5; with costs in time, reads at 30%
    of the recompute: 0.7)."""
    inst = _instance(seed, mode)
    fields = dict(inst[7], shared_capacity=1.5)
    if mode == "latency":
        kappa = inst[4][:, 0] / inst[3][0]
        fields["shared_latency"] = 0.3 * kappa
        zr = np.full(W, 0.7)
    else:
        zr = np.full(W, 0.5)
    return inst[:7] + (fields,), zr, 1.5


def _pool_costs(a, r, m, v, y, z, zr):
    """Worker costs with the pool's holding ``z (B,)`` read at ``zr (W,)``."""
    h = y.sum(1)
    q = np.prod(1 - a[:, :, None] * h[None], axis=1) * (1 - zr[:, None] * z[None])
    return (r * m * (1 - np.einsum("wt,wtb->wb", v, y)) * q).sum(1)


@pytest.fixture(scope="module", params=MODES)
def pool_solved(request):
    cases = [_pooled(s, request.param) for s in range(40, 43)]
    # With the random optimum starts shared by every instance (the same draws alone or in a
    # batch), the descent matches SLSQP's best of 6 from 6 starts with credits (4 found 3.3389
    # for instance 2, SLSQP 3.3348) and from 16 with costs in time (12: 4.0225 for instance 1,
    # SLSQP 3.9978).
    k = 16 if request.param == "latency" else 6
    return cases, pj.price_of_anarchy(_batch([c[0] for c in cases]), optimum_starts=k)


def test_shared_pool_alone_holds_the_most_valuable_blocks():
    """No worker capacity: the pool keeps the blocks of highest total value per unit size,
    ``Σ_w rate·miss·σ_P / size`` (a knapsack), and that is also the optimum: PoA 1."""
    rng = np.random.default_rng(7)
    r, size = rng.uniform(0.1, 2.0, (3, 4)), np.array([1.0, 2.0, 1.0, 1.0])
    g = pj.TieredCacheGame(np.ones((3, 3)) - np.eye(3), r, np.zeros((3, 1)), size=size,
                           shared_capacity=2.0, shared_credit=0.6)  # fmt: skip
    dens = r.sum(0) / size
    z = np.zeros(4)
    left = 2.0
    for b in np.argsort(-dens):
        z[b] = min(1.0, left / size[b])
        left -= z[b] * size[b]
    res = pj.price_of_anarchy(g)
    np.testing.assert_allclose(res.equilibrium.shared, z, atol=1e-12)
    want = (r * (1 - 0.6 * z[None])).sum()
    assert float(res.equilibrium.social_cost) == pytest.approx(want, rel=1e-12)
    assert float(res.poa) == pytest.approx(1.0, abs=1e-9)
    y0 = np.zeros((3, 1, 4))
    assert float(tiered_cache.social_cost(g, y0, shared=z)) == pytest.approx(want, rel=1e-12)


def test_shared_pool_equilibrium_against_linprog(pool_solved):
    """Every worker's placement is its selfish LP best response (the pool's copy among its
    peers), and the pool's is the LP optimum of SC over the pool alone (SC is linear in it)."""
    cases, res = pool_solved
    eq = res.equilibrium
    assert eq.converged.all() and (eq.gap <= 1e-9).all() and eq.shared.shape == (3, B)
    for i, (inst, zr, cp) in enumerate(cases):
        _, r, cap, size, m, v, a, _ = inst
        y, z = eq.placement[i], eq.shared[i]
        assert (z >= -1e-12).all() and z @ size <= cp + 1e-9
        costs = _pool_costs(a, r, m, v, y, z, zr)
        assert float(eq.social_cost[i]) == pytest.approx(costs.sum(), rel=1e-12)
        for w in range(W):  # the pool is a peer at reach zr[w] holding z
            a2 = np.zeros((W + 1, W + 1))
            a2[:W, :W], a2[:W, W] = a, zr
            y2 = np.concatenate([y, np.zeros((1, T, B))])
            y2[W, 0] = z
            r2, m2 = np.vstack([r, np.zeros(B)]), np.vstack([m, np.zeros(B)])
            v2 = np.vstack([v, [1.0] + [0.0] * (T - 1)])
            cap2 = np.vstack([cap, np.zeros(T)])
            ref = _best_response_lp(a2, r2, cap2, size, m2, v2, y2, w)
            assert costs[w] == pytest.approx(ref, rel=1e-8, abs=1e-12)
        # the pool: SC is linear in z, slope −beta; its placement maximises beta·z
        beta = np.array([_pool_costs(a, r, m, v, y, np.where(np.arange(B) == b, 0.0, z), zr).sum()
                         - _pool_costs(a, r, m, v, y, np.where(np.arange(B) == b, 1.0, z), zr).sum()
                         for b in range(B)])  # fmt: skip
        lp = scipy_opt.linprog(-beta, A_ub=[size], b_ub=[cp], bounds=(0, 1))
        assert beta @ z == pytest.approx(-lp.fun, rel=1e-9, abs=1e-12)


def test_shared_pool_optimum_against_scipy(pool_solved):
    cases, res = pool_solved
    assert (res.poa >= 1.0).all()
    for i, (inst, zr, cp) in enumerate(cases):
        _, r, cap, size, m, v, a, _ = inst
        n = W * T * B

        def sc(x, a=a, r=r, m=m, v=v, zr=zr, n=n):
            return _pool_costs(a, r, m, v, x[:n].reshape(W, T, B), x[n:], zr).sum()

        rows, rhs = [], []
        for w in range(W):
            for k in range(B):
                row = np.zeros(n + B)
                row[w * T * B + k : (w + 1) * T * B : B] = 1
                rows.append(row)
                rhs.append(1.0)
            for t in range(T):
                row = np.zeros(n + B)
                row[(w * T + t) * B : (w * T + t + 1) * B] = size
                rows.append(row)
                rhs.append(cap[w, t])
        rows.append(np.concatenate([np.zeros(n), size]))
        rhs.append(cp)
        a_ub, b_ub = np.array(rows), np.array(rhs)
        rng = np.random.default_rng(i)
        best = np.inf
        cons = [dict(type="ineq", fun=lambda x, A=a_ub, c=b_ub: c - A @ x,
                     jac=lambda x, A=a_ub: -A)]  # fmt: skip
        for _ in range(6):
            o = scipy_opt.minimize(
                sc, rng.random(n + B) * 0.3, method="SLSQP", bounds=[(0, 1)] * (n + B),
                constraints=cons, options=dict(maxiter=500, ftol=1e-12),
            )  # fmt: skip
            if o.success and (a_ub @ o.x <= b_ub + 1e-9).all():
                best = min(best, o.fun)
        x = np.concatenate([res.optimum.placement[i].ravel(), res.optimum.shared[i]])
        assert (a_ub @ x <= b_ub + 1e-9).all() and (x >= 0).all()
        ours = float(res.optimum_cost[i])
        assert ours == pytest.approx(sc(x), rel=1e-12)
        assert ours <= best * (1 + 1e-4)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(shared_credit=0.5), "shared_credit: needs shared_capacity"),
        (dict(shared_capacity=-1.0), r"shared_capacity.*>= 0"),
        (dict(shared_capacity=1.0, shared_latency=0.1), "shared_latency: only with access_lat"),
        (dict(shared_capacity=1.0, shared_credit=1.5), "shared_credit"),
    ],
)
def test_shared_pool_bad_input(kwargs, match, compile_counter):
    d, r, cap, size, m, *_ = _instance(0)
    g = pj.TieredCacheGame(d, r, cap, credit=CREDIT, size=size, miss_cost=m, **kwargs)
    with pytest.raises(pj.InputError, match=match):
        pj.price_of_anarchy(g)
    inst, _, _ = _pooled(0, "latency")
    t = _game(*inst[:5], inst[7])
    bads = [
        (dict(shared_latency=None), "shared_latency: needed"),
        (dict(shared_credit=0.5), "shared_credit: not used with access_latency"),
        (dict(shared_latency=np.ones(W + 1)), "shared_latency has shape"),
    ]
    for bad, match in bads:
        with pytest.raises(pj.InputError, match=match):
            pj.price_of_anarchy(dataclasses.replace(t, **bad))
    with pytest.raises(pj.InputError, match="no shared pool"):
        tiered_cache.social_cost(_game(d, r, cap, size, m, {}), np.zeros((W, T, B)), shared=0.0)
    assert compile_counter.solver_count == 0


def test_capacity_paradox_on_the_shared_pool():
    """``worker="shared"`` adds the capacity to the pool: with the pool alone (no worker
    capacity) one more block kept by it lowers SC by exactly that block's value."""
    r = np.array([[3.0, 2.0, 1.0], [1.0, 1.0, 0.5]])
    g = pj.TieredCacheGame(np.zeros((2, 2)), r, np.zeros((2, 1)), shared_capacity=1.0,
                           shared_credit=0.5)  # fmt: skip
    f = tiered_cache.capacity_paradox(g, worker="shared", extra=1.0, starts=2)
    # the pool keeps block 0 (value 4), then block 1 (value 3): SC falls by 0.5·3
    assert f["worst_paradoxes"] == f["best_paradoxes"] == 0
    assert float(f["worst_rise"]) == pytest.approx(-1.5, rel=1e-12)
    with pytest.raises(pj.InputError, match="no shared pool"):
        plain = dataclasses.replace(g, shared_capacity=None, shared_credit=None)
        tiered_cache.capacity_paradox(plain, worker="shared")


def test_shared_pool_float32_agrees_with_float64():
    """The pool's equilibria and optima in float32 against float64 (costs in time)."""
    g = _batch([_pooled(s, "latency")[0] for s in range(50, 54)])
    e64 = tiered_cache.solve_equilibrium(g, starts=2, dtype=np.float64)
    e32 = tiered_cache.solve_equilibrium(g, starts=2, dtype=np.float32, tol=1e-7)
    assert e32.converged.all() and e64.converged.all()
    np.testing.assert_allclose(e32.social_cost, e64.social_cost, rtol=1e-5)
    np.testing.assert_allclose(e32.shared, e64.shared, atol=1e-5)
    o64 = tiered_cache.solve_optimum(g, y0=e64.placement, steps=200, dtype=np.float64)
    o32 = tiered_cache.solve_optimum(g, y0=e64.placement, steps=200, dtype=np.float32)
    np.testing.assert_allclose(o32.social_cost, o64.social_cost, rtol=1e-4)
    assert o32.shared.dtype == np.float32 and (o32.shared >= 0).all()


# --------------------------------------------------------------------------- the API audit


def test_zero_sizes_and_an_empty_batch_are_named(compile_counter):
    d, r, c = np.zeros((2, 2)), [[3.0, 1.0], [3.0, 1.0]], [[1.0], [1.0]]
    zero = [
        ((np.zeros((0, 0)), np.zeros((0, 2)), np.zeros((0, 1))),
         r"distance has shape \(0, 0\): needs at least one worker"),
        ((d, np.zeros((2, 0)), c), r"rates has shape \(2, 0\): needs at least one block"),
        ((d, r, np.zeros((2, 0))), r"capacity has shape \(2, 0\): needs at least one tier"),
    ]  # fmt: skip
    for args, match in zero:  # at construction
        with pytest.raises(pj.InputError, match=match):
            pj.TieredCacheGame(*args)
    with pytest.raises(pj.InputError, match=r"TieredCacheGame: empty batch .*\(0,\)"):
        pj.price_of_anarchy(pj.TieredCacheGame(np.zeros((0, 2, 2)), r, c))
    bad = [
        (dict(symmetric="no"), "symmetric = 'no': must be True or False"),
        (dict(rates=None), "rates: required, got None"),
        (dict(capacity=np.ones((2, 1)) * 1j), "capacity: must be real"),
        (dict(distance=[[0.0, 1.0], [3.0, 0.0]]),
         r"distance\[0, 1\] = 1\.0 but TieredCacheGame\.distance\[1, 0\] = 3\.0: must be sym"),
    ]  # fmt: skip
    base = dict(distance=d, rates=r, capacity=c)
    for kwargs, match in bad:
        with pytest.raises(pj.InputError, match=match):
            pj.price_of_anarchy(pj.TieredCacheGame(**{**base, **kwargs}))
    assert compile_counter.solver_count == 0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(seed=-1), "seed = -1: must be an integer >= 0"),
        (dict(starts=True), "starts = True"),
        (dict(tol="small"), "tol = 'small'"),
        (dict(lr=0.0), "lr = 0.0: must be finite and > 0"),
        (dict(optimum_steps=0), "optimum_steps = 0"),
        (dict(optimum_starts=1.5), "optimum_starts = 1.5"),
    ],
)
def test_options_are_checked(kwargs, match, compile_counter):
    d, r, cap, size, m, *_ = _instance(0)
    g = pj.TieredCacheGame(d, r, cap, credit=CREDIT, size=size, miss_cost=m)
    with pytest.raises(pj.InputError, match=match):
        tiered_cache.price_of_anarchy(g, **kwargs)
    assert compile_counter.solver_count == 0


def test_a_game_alone_and_inside_a_batch_give_the_same_results():
    """The random equilibrium and optimum starts are drawn from the seed alone and shared by
    every instance: each instance solved alone gives its numbers in the batch. Workers close
    together with peer credit 1 have many equilibria and local optima, so the starts matter
    (drawn per batch, instances 1 and 2 gave PoA 1.426 and 1.308 here, 1.465 and 1.385 alone)."""
    rng = np.random.default_rng(100)
    pts = rng.random((3, W, 2)) * 0.2
    d = np.sqrt(((pts[:, :, None] - pts[:, None]) ** 2).sum(-1))
    r = rng.random((3, W, B)) * rng.random((3, 1, B)) * 3
    cap = rng.uniform(0.5, 2.0, (3, W, T))
    batch = pj.price_of_anarchy(pj.TieredCacheGame(d, r, cap, credit=CREDIT, peer_credit=1.0))
    for b in range(3):
        alone = pj.price_of_anarchy(
            pj.TieredCacheGame(d[b], r[b], cap[b], credit=CREDIT, peer_credit=1.0)
        )
        np.testing.assert_allclose(alone.poa, batch.poa[b], rtol=1e-6)
        np.testing.assert_allclose(alone.optimum_cost, batch.optimum_cost[b], rtol=1e-6)
        np.testing.assert_allclose(alone.equilibrium_costs, batch.equilibrium_costs[b], rtol=1e-6)


def test_equilibrium_costs_list_each_equilibrium_once():
    """Starts that reach the same equilibrium count once (within the equilibrium tolerance);
    distinct equilibria keep their own entries, worst first, then NaN."""
    costs = np.array(
        [[1.0, np.nan, 2.0, 1.0 + 1e-12, 3.0], [np.nan] * 5, [5.0, 5.0, 4.0, 4.0, 5.0]]
    )
    kept, count = tiered_cache._distinct_worst_first(costs, 1e-9)
    np.testing.assert_array_equal(count, [3, 0, 2])
    np.testing.assert_array_equal(kept[0, :3], [3.0, 2.0, 1.0 + 1e-12])
    np.testing.assert_array_equal(kept[2, :2], [5.0, 4.0])
    assert np.isnan(kept[0, 3:]).all() and np.isnan(kept[1]).all() and np.isnan(kept[2, 2:]).all()
    # three workers, unit distances: the 4 starts end at 2 equilibria (13.14 and 13.0025)
    g = pj.TieredCacheGame(pj.caching.complete_distance(3), np.ones((3, 8)), np.ones((3, 4)))
    r = pj.price_of_anarchy(g, dtype="float32")
    assert int(r.equilibrium_count) == 2 and np.isnan(r.equilibrium_costs[2:]).all()
    assert r.equilibrium_costs[0] == pytest.approx(float(r.equilibrium.social_cost))
    assert r.equilibrium_costs[1] == pytest.approx(float(r.best_equilibrium.social_cost))
    assert r.equilibrium_costs[0] > r.equilibrium_costs[1] * (1 + 1e-5)


def test_one_optimum_start_for_a_whole_batch():
    """``y0 (W, T, B)`` is one start for every instance (leading axes broadcast), as for the
    equilibrium: it gives what the same start repeated per instance gives (it crashed in a
    reshape on a batch)."""
    insts = [_instance(s) for s in range(3)]
    g = _batch(insts)
    y = np.full((W, T, B), 0.1)
    one = tiered_cache.solve_optimum(g, y0=y, steps=5, polish_sweeps=1)
    each = tiered_cache.solve_optimum(g, y0=np.broadcast_to(y, (3, W, T, B)), steps=5,
                                      polish_sweeps=1)  # fmt: skip
    np.testing.assert_array_equal(one.social_cost, each.social_cost)
    np.testing.assert_array_equal(one.placement, each.placement)


def test_placements_and_options_of_the_helpers_are_checked(compile_counter):
    """Placements are checked before anything compiles: finite numbers, and for the
    certificate a feasible placement (beyond a float32 solve's rounding; it read 0,
    "stationary", with every worker holding every block in one unit of capacity); the
    workers, tiers and options named."""
    g = pj.TieredCacheGame(np.array([[0.0, 1.0], [1.0, 0.0]]), [[3.0, 1.0, 2.0], [1.0, 2.0, 3.0]],
                           [[1.0], [1.0]])  # fmt: skip
    y = np.zeros((2, 1, 3))
    bad = [
        (lambda: tiered_cache.stationarity_gap(g, np.ones((2, 1, 3))),
         r"y: not a feasible placement: worker 0 uses 3 of tier 0's capacity 1"),
        (lambda: tiered_cache.stationarity_gap(g, y - 0.3),
         r"y: not a feasible placement: worker 0 holds -0\.3 of block 0: must be >= 0"),
        (lambda: tiered_cache.social_cost(g, np.full((2, 1, 3), np.nan)),
         r"y\[0, 0, 0\] = nan: must be finite"),
        (lambda: tiered_cache.solve_equilibrium(g, y0=y + np.inf), r"y0\[0, 0, 0\] = inf: must be"),
        (lambda: tiered_cache.solve_optimum(g, y0="abc"), "y0: must be numbers, got text"),
        (lambda: tiered_cache.best_response(g, y, None), "worker = None: must be an integer"),
        (lambda: tiered_cache.capacity_paradox(g, worker=0.5), r"\(worker, tier\) = \(0\.5, 0\)"),
        (lambda: tiered_cache.capacity_paradox(g, extra="1"), "extra = '1': must be finite"),
        (lambda: pj.price_of_anarchy(g, descent_steps=100),
         "descent_steps = 100: does not apply to a TieredCacheGame"),
        (lambda: pj.price_of_anarchy(g, descent_steps=-1), "descent_steps = -1: must be an int"),
    ]  # fmt: skip
    for call, match in bad:
        with pytest.raises(pj.InputError, match=match):
            call()
    assert compile_counter.solver_count == 0
    # a float32 solve's placement (off by its rounding), cast or not, is certified
    yf = tiered_cache.solve_equilibrium(g, dtype=np.float32).placement
    for a in (yf, yf.astype(np.float64)):
        assert np.isfinite(tiered_cache.stationarity_gap(g, a))


def test_an_overflowed_solve_is_not_poa_one():
    """A cost that overflows (rate × miss cost past float32's range) is flagged (status 2) and
    its PoA is NaN, as the routing game's: it read 1.0, "no inefficiency"."""
    g = pj.TieredCacheGame(np.array([[0.0, 1.0], [1.0, 0.0]]), np.full((2, 3), 1e20),
                           [[1.0], [1.0]], miss_cost=1e20)  # fmt: skip
    with np.errstate(over="ignore"):
        r = pj.price_of_anarchy(g, dtype=np.float32)
    assert r.equilibrium.status == 2 and not r.converged
    assert np.isnan(r.poa) and np.isnan(r.price_of_stability)
