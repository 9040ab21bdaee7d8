"""The fused Pallas kernel (kernels/pallas_vi.py, poa_jax/fused.py) against the pure-JAX solvers.

On the CPU the kernel runs in Pallas interpret mode; each distinct kernel costs 10–30 s of XLA
compilation there, so the module fixtures solve a few batches once and the tests share them:

* float64, 5 × 6 cache-on games, selfish and Dynamo policies mixed in one batch, some
  instances with absent workers (``worker_mask``) and zero-demand classes (padding), 24 lanes
  (not a multiple of the 128-lane block), run in several rounds with compaction: the fused
  iteration is the pure-JAX one, so flows, gaps, statuses and iteration counts agree to rounding;
* the optimum from two starts per instance, float64 (3 × 4, to keep compile time down);
* float32 equilibria (3 × 4) at the GPU tolerance 1e-5, where rounding makes trajectories differ:
  solutions are compared where both converged, and every fused answer is checked by the
  independent gap formula.

The Triton lowering (the GPU code path) is checked on the CPU by lowering for the ``cuda``
platform; ``@pytest.mark.gpu`` tests run the compiled kernel.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from poa_jax.kernels import pallas_vi as pv
from poa_jax.kernels import simplex, vi

import poa_jax as pj
from poa_jax import batching, fused, solve
from poa_jax import game as _game
from poa_jax import policies as _pol
from poa_jax.synthetic import random_games

N = 24
J, K = 5, 6


def _mixed_batch(seed, n, dtype, classes=J, workers=K, cost_unit=1.0):
    """Cache-on games, half selfish / half Dynamo, with absent workers and empty classes;
    ``cost_unit`` scales every true-cost coefficient (the Dynamo weights stay as they are)."""
    g = random_games(seed, n, classes, workers, cache=True)
    lat, pf = g.latency, g.prefill
    lat = dataclasses.replace(lat, **{f: getattr(lat, f) * cost_unit for f in "abcd"})
    pf = dataclasses.replace(pf, **{f: getattr(pf, f) * cost_unit for f in "abc"})
    g = dataclasses.replace(g, latency=lat, prefill=pf)
    mask = np.ones((n, workers), bool)
    mask[: n // 4, workers - 2 :] = False  # e.g. a 4-worker topology padded to 6
    demand = np.array(g.demand)
    demand[n // 4 : n // 2, classes - 2 :] = 0.0  # e.g. 3 classes padded to 5
    g = _game.RoutingGame(**{**g.__dict__, "demand": demand, "worker_mask": mask})
    dyn = np.arange(n) % 2 == 1
    pol = _pol.Policy(
        w_true=np.where(dyn, 0.0, 1.0), w_prefill=np.where(dyn, 0.5, 0.0),
        w_decode=np.where(dyn, 1.0, 0.0), credit=np.ones(n),
    )  # fmt: skip
    return batching.prepare(g, pol, dtype)


def _independent_gap(prep, flows):
    """Relative gap of the policy's perceived cost at ``flows`` by the pure-JAX formulas."""

    def one(g, p, x):
        r = _pol.perceived_cost(p, g, x)
        mask = jnp.broadcast_to(g.worker_mask[None, :], x.shape)
        return vi.relative_gap(x, r, g.demand, mask)

    return np.asarray(jax.jit(jax.vmap(one))(prep.game, prep.policy, jnp.asarray(flows)))


@pytest.fixture(scope="module")
def eq64():
    prep = _mixed_batch(21, N, "float64")
    x0 = solve.starting_flows(prep, 1, greedy=True)
    kw = dict(tol=1e-7, max_iters=400)
    ref = batching.equilibria(prep.game, prep.policy, x0, method="projection", **kw)
    out = fused.fused_equilibria(prep.game, prep.policy, x0, interpret=True, rounds=(60, 100), **kw)
    return prep, jax.device_get(ref), jax.device_get(out), kw["tol"]


@pytest.fixture(scope="module")
def opt64():
    prep = _mixed_batch(22, N // 2, "float64", 3, 4)  # smaller: interpret compiles are slow
    x0 = solve.starting_flows(prep, 2, seed=3)  # uniform + a herd start: 2 lanes each
    kw = dict(tol=1e-7, max_iters=400)
    ref = batching.optima(prep.game, x0, descent_steps=0, lr=0.05, **kw)
    out = fused.fused_optima(prep.game, x0, interpret=True, rounds=(400,), **kw)
    return prep, jax.device_get(ref), jax.device_get(out), kw["tol"]


@pytest.fixture(scope="module")
def eq32():
    prep = _mixed_batch(23, N, "float32", 3, 4)
    x0 = solve.starting_flows(prep, 1, greedy=True)
    kw = dict(tol=1e-5, max_iters=300)
    ref = batching.equilibria(prep.game, prep.policy, x0, method="projection", **kw)
    out = fused.fused_equilibria(prep.game, prep.policy, x0, interpret=True, **kw)
    return prep, jax.device_get(ref), jax.device_get(out), kw["tol"]


def _same_iterations(it_ref, it_fused):
    """Same iteration, different rounding: most lanes take exactly as many iterations, and no
    lane more than a few percent more or fewer. (The heavy ball's restart test, ``cos > 0``
    between the last two steps, can flip on a last-bit difference, which then shifts a long
    lane's end by a few percent.)"""
    diff = np.abs(it_ref - it_fused)
    assert np.mean(diff == 0) >= 0.75, (it_ref, it_fused)
    assert np.all(diff <= 8 + 0.05 * it_ref), (it_ref, it_fused)


def test_keys_shapes_dtypes(eq64, opt64):
    for _, ref, out, _ in (eq64, opt64):
        assert ref.keys() == out.keys()
        for k in ref:
            assert np.shape(ref[k]) == np.shape(out[k]), k
            assert np.asarray(ref[k]).dtype == np.asarray(out[k]).dtype, k


def test_equilibria_float64_match_pure_jax(eq64):
    prep, ref, out, tol = eq64
    np.testing.assert_array_equal(out["status"], ref["status"])
    conv = ref["status"][:, 0] == 0
    assert conv.sum() >= N // 2  # the comparison is meaningful
    _same_iterations(ref["iterations"][conv, 0], out["iterations"][conv, 0])
    scale = np.max(np.asarray(prep.game.demand), -1)[conv]
    dx = np.max(np.abs(out["flows"][conv, 0] - ref["flows"][conv, 0]), axis=(-2, -1))
    assert np.all(dx <= 1e-6 * scale), dx
    sc_r, sc_f = ref["social_cost"][conv, 0], out["social_cost"][conv, 0]
    np.testing.assert_allclose(sc_f, sc_r, rtol=tol)  # a lane that ends elsewhere: within tol
    assert np.all(out["gap"][conv, 0] <= tol)
    np.testing.assert_array_equal(out["overloaded"], ref["overloaded"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_small_power_is_pow(dtype):
    """``x^q`` by squaring for ``q = 0 … 7``: within a few ulps of ``pow``, and ``pow``'s
    special values (``x⁰ = 1`` for 0, ∞ and NaN too; ``0^q = 0``; ``∞^q = ∞``)."""
    x = np.array([0.0, 1e-30, 0.3, 1.0, 2.5, 7.0, 1e3, np.inf, np.nan], dtype)
    for q in range(8):
        got = np.asarray(fused._small_power(jnp.asarray(x), jnp.full(x.shape, q, dtype)))
        want = np.power(x, dtype(q))
        np.testing.assert_allclose(got, want, rtol=8 * np.finfo(dtype).eps, err_msg=str(q))
        assert got.dtype == dtype


def test_small_integer_powers_choose_the_kernel():
    assert fused.small_integer_powers([[1.0, 2.0], [3.0, 4.0]])
    assert fused.small_integer_powers([8.0]) and not fused.small_integer_powers([9.0])
    for p in ([1.0, 2.5], [0.5], [np.nan], [0.0]):
        assert not fused.small_integer_powers(p), p


def test_other_powers_run_the_powf_kernel(monkeypatch):
    """Latency powers outside 1…8 (here p + 0.5) build the kernel with ``powf``, whose
    equilibria match the pure-JAX solver's (the module's other batches, integer powers, run
    the squaring kernel)."""
    prep = _mixed_batch(24, 8, "float64", 3, 4)
    lat = dataclasses.replace(prep.game.latency, p=np.asarray(prep.game.latency.p) + 0.5)
    prep = prep._replace(game=dataclasses.replace(prep.game, latency=lat))
    built = []
    kernel = fused._kernel
    monkeypatch.setattr(fused, "_kernel", lambda *a, **k: built.append(k) or kernel(*a, **k))
    x0 = solve.starting_flows(prep, 1, greedy=True)
    kw = dict(tol=1e-7, max_iters=400)
    ref = jax.device_get(batching.equilibria(prep.game, prep.policy, x0, method="projection",
                                             **kw))  # fmt: skip
    out = jax.device_get(fused.fused_equilibria(prep.game, prep.policy, x0, interpret=True, **kw))
    assert built == [dict(small_power=False, full_mask=False)]  # (the batch has absent workers)
    np.testing.assert_array_equal(out["status"], ref["status"])
    conv = ref["status"][:, 0] == 0
    assert conv.sum() >= 4
    sc_r, sc_f = ref["social_cost"][conv, 0], out["social_cost"][conv, 0]
    np.testing.assert_allclose(sc_f, sc_r, rtol=kw["tol"])


@pytest.mark.parametrize("state", ["registers", "memory"])
def test_full_mask_kernel_matches_pure_jax(state, monkeypatch):
    """Where every worker of every lane is present the kernel is built without its mask
    (``full_mask``): equilibria and optima match the pure-JAX solvers as the general kernel's
    do (the module's other batches have absent workers and run the general kernel)."""
    prep = batching.prepare(random_games(25, 8, 3, 4, cache=True), _pol.selfish(), "float64")
    built = []
    kernel = fused._kernel
    monkeypatch.setattr(fused, "_kernel", lambda *a, **k: built.append(k) or kernel(*a, **k))
    kw = dict(tol=1e-7, max_iters=400)
    x0 = solve.starting_flows(prep, 1, greedy=True)
    ref = jax.device_get(batching.equilibria(prep.game, prep.policy, x0, method="projection",
                                             **kw))  # fmt: skip
    out = jax.device_get(fused.fused_equilibria(prep.game, prep.policy, x0, interpret=True,
                                                state=state, **kw))  # fmt: skip
    x2 = solve.starting_flows(prep, 2, seed=3)
    ref_o = jax.device_get(batching.optima(prep.game, x2, descent_steps=0, lr=0.05, **kw))
    out_o = jax.device_get(fused.fused_optima(prep.game, x2, interpret=True, state=state, **kw))
    assert built == [dict(small_power=True, full_mask=True)] * 2
    for r, o in ((ref, out), (ref_o, out_o)):
        np.testing.assert_array_equal(o["status"], r["status"])
        conv = np.asarray(r["status"]).reshape(len(r["status"]), -1)[:, 0] == 0
        assert conv.sum() >= 4
        sc_r = np.asarray(r["social_cost"]).reshape(conv.size, -1)[conv, 0]
        sc_o = np.asarray(o["social_cost"]).reshape(conv.size, -1)[conv, 0]
        np.testing.assert_allclose(sc_o, sc_r, rtol=kw["tol"])


def test_kernel_variant_is_decided_by_the_inputs():
    prep = batching.prepare(random_games(26, 4, 2, 3, cache=True), _pol.selfish(), "float32")
    (g, p), x = fused._lanes(prep.game, prep.policy, solve.starting_flows(prep, 1))
    params, _, mask, _ = fused._inputs(g, p, x)
    assert fused.kernel_variant(params, mask) == dict(small_power=True, full_mask=True)
    assert not fused.kernel_variant(params, mask.at[1, 2, 3].set(False))["full_mask"]
    params[0]["lat_p"] = params[0]["lat_p"].at[0, 0].set(1.5)
    assert not fused.kernel_variant(params, mask)["small_power"]


@pytest.mark.parametrize("kind", ["equilibrium", "optimum"])
def test_memory_state_is_the_register_kernel(kind, eq64, opt64):
    """``state="memory"`` (grids in the state block, a row or column loaded per trip) runs the
    same iteration as the register layout: bit-identical flows, costs, iterations and statuses
    on the mixed float64 batches (policies mixed, absent workers, empty classes, several rounds
    with compaction). The gap, a difference of nearly equal sums, may differ in its last bits
    (XLA contracts the two layouts' arithmetic into fused multiply-adds differently)."""
    if kind == "equilibrium":
        prep, _, out, tol = eq64
        x0 = solve.starting_flows(prep, 1, greedy=True)
        mem = fused.fused_equilibria(prep.game, prep.policy, x0, interpret=True, tol=tol,
                                     max_iters=400, rounds=(60, 100), state="memory")  # fmt: skip
    else:
        prep, _, out, tol = opt64
        x0 = solve.starting_flows(prep, 2, seed=3)
        mem = fused.fused_optima(prep.game, x0, interpret=True, tol=tol, max_iters=400,
                                 rounds=(400,), state="memory")  # fmt: skip
    mem = jax.device_get(mem)
    assert set(mem) == set(out)
    for key in out:
        if key == "gap":
            np.testing.assert_allclose(mem[key], out[key], rtol=0, atol=1e-14, err_msg=key)
        else:
            np.testing.assert_array_equal(mem[key], out[key], err_msg=key)


def test_unknown_state_layout_is_refused():
    with pytest.raises(ValueError, match="state = 'disk'"):
        pv.projection_kernel(lambda *a: None, tol=1e-5, max_iters=10, state="disk")


def test_equilibria_feasible_and_independent_gap(eq64):
    prep, _, out, tol = eq64
    x = out["flows"][:, 0]
    mask = np.asarray(prep.game.worker_mask)
    assert np.all(x >= 0) and np.all(x[~np.broadcast_to(mask[:, None, :], x.shape)] == 0)
    np.testing.assert_allclose(x.sum(-1), np.asarray(prep.game.demand), rtol=1e-12, atol=1e-14)
    gap = _independent_gap(prep, x)
    np.testing.assert_allclose(gap, out["gap"][:, 0], rtol=1e-6, atol=1e-12)
    conv = out["status"][:, 0] == 0
    assert np.all(gap[conv] <= tol * (1 + 1e-6))


def test_optima_float64_match_pure_jax(opt64):
    prep, ref, out, tol = opt64
    np.testing.assert_array_equal(out["status"], ref["status"])
    conv = ref["status"] == 0
    assert conv.sum() >= len(conv) // 2
    np.testing.assert_allclose(out["social_cost"][conv], ref["social_cost"][conv], rtol=1e-9)
    scale = np.max(np.asarray(prep.game.demand), -1)[conv]
    dx = np.max(np.abs(out["flows"][conv] - ref["flows"][conv]), axis=(-2, -1))
    assert np.all(dx <= 1e-6 * scale), dx
    _same_iterations(ref["iterations"][conv], out["iterations"][conv])
    assert np.all(out["gap"][conv] <= tol)
    # Independent check: the marginal gap by the closed-form gradient of poa_jax.game.
    grad = jax.vmap(_game.social_cost_gradient)(prep.game, jnp.asarray(out["flows"]))
    gap = jax.vmap(fused._solvers.marginal_gap)(prep.game, jnp.asarray(out["flows"]), grad)
    np.testing.assert_allclose(np.asarray(gap), out["gap"], rtol=1e-6, atol=1e-12)


def test_equilibria_float32_solutions(eq32):
    prep, ref, out, tol = eq32
    conv_f = out["status"][:, 0] == 0
    conv_r = ref["status"][:, 0] == 0
    # Rounding makes the float32 trajectories differ; convergence should not.
    assert abs(int(conv_f.sum()) - int(conv_r.sum())) <= 2
    gap = _independent_gap(prep, out["flows"][:, 0].astype(np.float64))
    assert np.all(gap[conv_f] <= 2 * tol), gap[conv_f]
    both = conv_f & conv_r
    sc_r, sc_f = ref["social_cost"][both, 0], out["social_cost"][both, 0]
    rel = np.abs(sc_f - sc_r) / sc_r
    # Equilibria with the cache term need not be unique: most instances reach the same one.
    assert np.mean(rel <= 1e-4) >= 0.8, rel
    scale = np.max(np.asarray(prep.game.demand), -1)[both]
    dx = np.max(np.abs(out["flows"][both, 0] - ref["flows"][both, 0]), axis=(-2, -1)) / scale
    assert np.mean(dx <= 1e-3) >= 0.8, dx


# --------------------------------------------------------------------------- generic kernel


def _proj_kernel(z, total, w, m, block=8):
    """``project_simplex_lanes`` inside a pallas_call (interpret), rows ``(K, N)``."""
    k, n = z.shape

    def kernel(z_ref, t_ref, w_ref, m_ref, o_ref):
        ld = lambda r, i: r[i, :]
        y = pv.project_simplex_lanes(
            [ld(z_ref, i) for i in range(k)], ld(t_ref, 0), [ld(w_ref, i) for i in range(k)],
            [ld(m_ref, i) > 0.5 for i in range(k)],
        )  # fmt: skip
        for i in range(k):
            o_ref[i, :] = y[i]

    spec = lambda r: pl_spec(r, block)
    return pl_call(kernel, z, (spec(k), spec(1), spec(k), spec(k)), spec(k), n // block)(
        z, total[None], w, m.astype(z.dtype)
    )


def pl_spec(rows, block):
    from jax.experimental import pallas as pl

    return pl.BlockSpec((rows, block), lambda i: (0, i))


def pl_call(kernel, like, in_specs, out_spec, grid):
    from jax.experimental import pallas as pl

    return pl.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct(like.shape, like.dtype), grid=(grid,),
        in_specs=list(in_specs), out_specs=out_spec, interpret=True,
    )  # fmt: skip


def test_cost_units_do_not_matter(eq32):
    # The eq32 batch with its costs in a unit 2³⁰ times larger (selfish lanes only: the Dynamo
    # lanes mix the true cost with token counts, whose unit does not change). A power of two
    # scales every float exactly, so the fused iteration must be the same bit for bit: no
    # absolute floor (the metric's was max(max s, 1)·√eps) and no underflow (√(a·b) of two
    # squared norms did, at costs ~1e-9 in float32). Same shapes as eq32: nothing compiles.
    prep0, _, out0, tol = eq32
    prep = _mixed_batch(23, N, "float32", 3, 4, cost_unit=2.0**-30)
    x0 = solve.starting_flows(prep, 1, greedy=True)
    out = jax.device_get(
        fused.fused_equilibria(prep.game, prep.policy, x0, interpret=True, tol=tol, max_iters=300)
    )
    selfish = np.arange(N) % 2 == 0
    assert np.mean(out0["status"][selfish] == 0) >= 0.75
    for key in ("status", "iterations", "flows"):
        np.testing.assert_array_equal(out[key][selfish], out0[key][selfish], err_msg=key)


def test_simplex_lanes_match_kernels_simplex():
    rng = np.random.default_rng(5)
    k, n = 6, 64
    z = rng.normal(0, 2, (k, n)) * rng.choice([0.01, 1.0, 100.0], n)
    total = rng.choice([0.0, 0.3, 1.0, 7.5], n)
    w = np.exp(rng.normal(0, 1.5, (k, n)))
    m = rng.uniform(size=(k, n)) < 0.7
    m[rng.integers(k, size=n), np.arange(n)] = True
    got = np.asarray(_proj_kernel(*(jnp.asarray(a) for a in (z, total, w, m))))
    want = jax.vmap(simplex.project_simplex)(z.T, total, w.T, m.T)
    np.testing.assert_allclose(got, np.asarray(want).T, rtol=1e-12, atol=1e-12)


def test_simplex_lanes_project_infinite_entries_as_kernels_simplex():
    """The lanes' top-set sums multiply by the 0/1 comparison; a −∞ entry (an overflowed step)
    still goes to 0 and a +∞ one takes the whole total, as in ``project_simplex`` (the +∞ row
    came back NaN before), and a NaN entry makes its row NaN, as there."""
    k, n = 4, 8
    rng = np.random.default_rng(7)
    z = rng.normal(0, 1, (k, n)).astype(np.float32)
    z[1, :4] = -np.inf
    z[2, 4:] = np.inf
    z[3, 3] = np.nan
    w = np.exp(rng.normal(0, 1, (k, n))).astype(np.float32)
    total = np.full(n, 1.5, np.float32)
    m = np.ones((k, n), bool)
    got = np.asarray(_proj_kernel(*(jnp.asarray(a) for a in (z, total, w, m))))
    want = np.asarray(jax.vmap(simplex.project_simplex)(z.T, total, w.T, m.T)).T
    assert np.all(want[1, :3] == 0) and np.all(np.isnan(want[:, 3]))
    np.testing.assert_allclose(want[2, 4:], 1.5)  # the +∞ entry takes the total
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_simplex_lanes_keep_the_total_when_rounding_loses_it():
    k, n = 3, 8
    z = np.full((k, n), 1e20, np.float32)
    z[0, ::2] = -1e20
    w = np.ones((k, n), np.float32)
    w[2, 1::2] = 2.0
    total = np.full(n, 2.0, np.float32)
    m = np.ones((k, n), bool)
    got = np.asarray(_proj_kernel(*(jnp.asarray(a) for a in (z, total, w, m))))
    want = jax.vmap(simplex.project_simplex)(z.T, total, w.T, m.T)
    np.testing.assert_allclose(got, np.asarray(want).T, rtol=1e-6)
    np.testing.assert_allclose(got.sum(0), 2.0, rtol=1e-6)


def _affine_field(xk, w, shared):
    """``c_jk = a_k + b_k·X_k`` (a congestion game on parallel links), metric ``b_k``."""
    del shared
    load = pv.lane_sum(xk)
    return pv.Field([w["a"] + w["b"] * load] * len(xk), [w["b"]] * len(xk))


def _affine_problem(seed, n, rows, cols):
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.1, 1.0, (cols, n))
    b = rng.uniform(0.1, 2.0, (cols, n))
    d = rng.uniform(0.2, 1.0, (rows, n))
    x0 = rng.uniform(0.0, 1.0, (rows, cols, n))
    return a, b, d, x0


def test_masked_padding_and_ragged_batch():
    """A 2 × 3 problem padded to 4 × 4 (masked workers, zero-demand rows) solves the same,
    matches kernels.vi.projection, and resumes exactly; 37 lanes, 16-lane blocks."""
    n, tol = 37, 1e-10
    a, b, d, x0 = _affine_problem(7, n, 2, 3)
    kern = pv.projection_kernel(_affine_field, tol=tol, max_iters=200, block=16, interpret=True)

    def solve_(a, b, d, x0, mask):
        st = pv.start_state(jnp.asarray(x0), jnp.asarray(d), jnp.asarray(mask))
        return jax.device_get(kern.advance(dict(a=a, b=b), {}, d, mask, st, 200))

    small = solve_(a, b, d, x0, np.ones((2, 3, n), bool))

    def pad(v, shape, fill=0):
        width = [(0, s - t) for s, t in zip(shape, v.shape, strict=True)]
        return np.pad(v, width, constant_values=fill)

    mask = pad(np.ones((2, 3, n), bool), (4, 4, n))
    big = solve_(
        pad(a, (4, n), 1.0), pad(b, (4, n), 1.0), pad(d, (4, n)), pad(x0, (4, 4, n), 0.5), mask
    )
    np.testing.assert_allclose(big.best_x[:2, :3], small.best_x, rtol=1e-12, atol=1e-14)
    assert np.all(big.best_x[2:] == 0) and np.all(big.best_x[:, 3:] == 0)
    np.testing.assert_array_equal(big.steps, small.steps)
    assert np.all(small.best_gap <= tol)

    def ref(a, b, d, x0):
        cost = lambda x: jnp.broadcast_to(a + b * x.sum(0), x.shape)
        scale = lambda x: jnp.broadcast_to(b, x.shape)
        mask = jnp.ones(x0.shape, bool)
        return vi.projection(cost, scale, x0, d, mask, tol=tol, max_steps=200)

    r = jax.jit(jax.vmap(ref, in_axes=(1, 1, 1, 2)))(a, b, d, x0)
    np.testing.assert_allclose(small.best_x, np.moveaxis(np.asarray(r.x), 0, -1), atol=1e-9)
    np.testing.assert_array_equal(small.steps, np.asarray(r.steps))

    # Resumable: rounds of a few iterations end in the state of one call (the driver's
    # compaction relies on it); the budget is traced, so this reuses the compiled kernel.
    args = (dict(a=a, b=b), {}, d, np.ones((2, 3, n), bool))
    st = pv.start_state(jnp.asarray(x0), jnp.asarray(d), jnp.asarray(args[3]))
    for budget in (1, 3, 7, 200):
        st = kern.advance(*args, st, budget)
    for f in st._fields:
        np.testing.assert_array_equal(np.asarray(getattr(st, f)), getattr(small, f), f)


def _stiff_field(xk, w, shared):
    """:func:`_affine_field` with the metric ``w["s"]`` (may be infinite) instead of ``b``."""
    del shared
    load = pv.lane_sum(xk)
    return pv.Field([w["a"] + w["b"] * load] * len(xk), [w["s"]] * len(xk))


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_an_infinite_curvature_does_not_freeze_the_instance(bad):
    """One worker's metric overflows (``+∞``): it stands in as the stiffest finite one, so the
    instance still converges, in the kernel as in ``kernels.vi.projection`` (before, the
    metric floor became ``∞`` and every step was zero: out of iterations). A NaN metric is
    reported unconverged, the same way in both."""
    n, tol, rows, cols = 16, 1e-10, 2, 3
    a, b, d, x0 = _affine_problem(3, n, rows, cols)
    sc = b.copy()
    sc[0, ::2] = bad
    mask = np.ones((rows, cols, n), bool)
    kern = pv.projection_kernel(_stiff_field, tol=tol, max_iters=300, block=16, interpret=True)
    st = pv.start_state(jnp.asarray(x0), jnp.asarray(d), jnp.asarray(mask))
    got = jax.device_get(kern.advance(dict(a=a, b=b, s=sc), {}, d, mask, st, 300))

    def ref(a, b, s, d, x0):
        cost = lambda x: jnp.broadcast_to(a + b * x.sum(0), x.shape)
        scale = lambda x: jnp.broadcast_to(s, x.shape)
        return vi.projection(cost, scale, x0, d, jnp.ones(x0.shape, bool), tol=tol, max_steps=300)

    r = jax.jit(jax.vmap(ref, in_axes=(1, 1, 1, 1, 2)))(a, b, sc, d, x0)
    np.testing.assert_array_equal(got.steps, np.asarray(r.steps))
    if np.isnan(bad):
        assert np.all(np.asarray(r.status)[::2] != 0) and np.all(np.asarray(r.status)[1::2] == 0)
        np.testing.assert_array_equal(got.best_gap > tol, np.asarray(r.status) != 0)
        return
    assert np.all(np.asarray(r.gap) <= tol) and np.all(np.asarray(r.status) == 0)
    assert np.all(got.best_gap <= tol)
    np.testing.assert_allclose(got.best_x, np.moveaxis(np.asarray(r.x), 0, -1), atol=1e-9)


# --------------------------------------------------------------------------- GPU code path


def _has_triton_lowering() -> bool:
    try:
        from jax._src.pallas.triton import lowering  # noqa: F401
    except ImportError:
        return False
    return True


#: Upper bounds on the lines of the Triton IR (one op a line) of each kernel, 5 × 6 float32.
#: Measured (jax 0.10.2): 1 291 (equilibrium), 1 445 (optimum) with the column/row loops; the
#: unrolled body was ~14 800 and took over 4 minutes to compile on an H200 (LLVM/ptxas on one
#: straight-line loop body). A change that unrolls the loops again fails here, on the CPU.
TRITON_IR_LINES = {
    ("equilibrium", "registers"): 2_500, ("optimum", "registers"): 2_800,
    ("equilibrium", "memory"): 4_500, ("optimum", "memory"): 4_700,
}  # fmt: skip


def _capture_triton_ir(monkeypatch) -> list[str]:
    """Records the text of every Triton module the Pallas lowering builds (private JAX hook)."""
    from jax._src.pallas.triton import lowering

    build = getattr(lowering, "lower_jaxpr_to_triton_module", None)
    if build is None:  # pragma: no cover - depends on the installed jax
        pytest.skip("this jax has no lower_jaxpr_to_triton_module to hook")
    texts = []

    def capture(*args, **kwargs):
        result = build(*args, **kwargs)
        texts.append(result.module.operation.get_asm(enable_debug_info=False))
        return result

    monkeypatch.setattr(lowering, "lower_jaxpr_to_triton_module", capture)
    return texts


@pytest.mark.skipif(not _has_triton_lowering(), reason="this jaxlib has no Triton lowering")
@pytest.mark.parametrize("state", ["registers", "memory"])
@pytest.mark.parametrize("kind", ["equilibrium", "optimum"])
def test_triton_lowering_on_cpu(kind, state, monkeypatch):
    """The compiled (non-interpret) kernel lowers to Triton IR: every primitive it uses has a
    Triton lowering rule. Checked on the CPU by lowering for the ``cuda`` platform; the IR stays
    under :data:`TRITON_IR_LINES` (a proxy for the GPU compile time: the loops stay loops)."""
    texts = _capture_triton_ir(monkeypatch)
    prep = _mixed_batch(24, 8, "float32")
    x0 = solve.starting_flows(prep, 1)
    pol = prep.policy if kind == "equilibrium" else None
    (g, p), x = fused._lanes(prep.game, pol, x0)
    params, demand, mask, xt = fused._inputs(g, p, x)
    kern = fused._kernel(kind, 1e-5, 100, False, fused.BLOCK, fused.NUM_WARPS, state)
    st = pv.start_state(xt, demand, mask)
    lowered = kern.advance.trace(*params, demand, mask, st, 100).lower(lowering_platforms=("cuda",))
    assert "triton" in lowered.as_text()[:20000]
    assert len(texts) == 1, len(texts)
    lines = texts[0].count("\n")
    assert lines <= TRITON_IR_LINES[kind, state], f"{kind}/{state}: Triton IR of {lines} lines"
    assert texts[0].count("scf.for") >= 4  # field, rows, breakpoints, loads/stores: loops


@pytest.mark.skipif(not _has_triton_lowering(), reason="this jaxlib has no Triton lowering")
def test_wide_offsets_lower_the_kernel_with_64_bit_offsets(monkeypatch):
    """The built kernel lowers under :func:`pv.wide_offsets`: its pointers take 64-bit offsets
    (which lets LLVM fold constant row offsets into the loads and stores), where the same
    jitted function lowered without it takes 32-bit ones; the lowering is restored after."""
    from jax._src.pallas.triton import lowering

    original = lowering._compute_offsets_from_indices
    texts = _capture_triton_ir(monkeypatch)
    kern = fused._kernel("equilibrium", 1e-5, 100, False, fused.BLOCK, fused.NUM_WARPS, "memory")

    def args(n):  # another n for the second lowering: lowerings are cached per shape
        prep = _mixed_batch(24, n, "float32")
        (g, p), x = fused._lanes(prep.game, prep.policy, solve.starting_flows(prep, 1))
        params, demand, mask, xt = fused._inputs(g, p, x)
        return (*params, demand, mask, pv.start_state(xt, demand, mask), 100)

    kern.advance.trace(*args(5)).lower(lowering_platforms=("cuda",))  # sizes no other test uses
    kern.advance._fn.trace(*args(7)).lower(lowering_platforms=("cuda",))  # the raw jitted fn
    assert len(texts) == 2
    wide, narrow = ([ln for ln in t.splitlines() if "tt.addptr" in ln] for t in texts)
    assert wide and all(ln.endswith("xi64>") for ln in wide), wide[:3]
    assert narrow and all(ln.endswith("xi32>") for ln in narrow), narrow[:3]
    assert lowering._compute_offsets_from_indices is original
    with pv.wide_offsets() as applied:
        assert applied and lowering._compute_offsets_from_indices is not original
    assert lowering._compute_offsets_from_indices is original


def test_use_fused_predicate():
    assert not fused.use_fused(dtype=np.float64)  # never in float64
    if jax.default_backend() != "gpu":
        assert not fused.use_fused()
    assert fused.flops_per_iteration("equilibrium") > 1000


@pytest.mark.gpu
@pytest.mark.parametrize("state", ["registers", "memory"])
@pytest.mark.parametrize("kind", ["equilibrium", "optimum"])
def test_compiled_kernel_matches_pure_jax_on_gpu(kind, state, monkeypatch):
    """The compiled Triton kernel on a GPU ≡ the pure-JAX solver (float32, tol 1e-5)."""
    monkeypatch.setattr(batching, "KERNEL", "xla")  # the reference: never the fused kernel
    n, tol = 4096, 1e-5
    prep = batching.prepare(random_games(31, n, J, K, cache=True), _pol.selfish(), "float32")
    if kind == "equilibrium":
        x0 = solve.starting_flows(prep, 1, greedy=True)
        run = functools.partial(batching.equilibria, prep.game, prep.policy, x0)
        ref = run(method="projection", tol=tol, max_iters=1000)
        out = fused.fused_equilibria(prep.game, prep.policy, x0, tol=tol, max_iters=1000,
                                     state=state)  # fmt: skip
        pick = lambda r, f: np.asarray(r[f])[:, 0]
    else:
        x0 = solve.starting_flows(prep, 2)
        ref = batching.optima(prep.game, x0, tol=tol, max_iters=1000, descent_steps=0, lr=0.05)
        out = fused.fused_optima(prep.game, x0, tol=tol, max_iters=1000, state=state)
        pick = lambda r, f: np.asarray(r[f])
    conv_f, conv_r = pick(out, "status") == 0, pick(ref, "status") == 0
    assert conv_f.mean() >= conv_r.mean() - 0.01
    assert np.all(pick(out, "gap")[conv_f] <= tol)
    both = conv_f & conv_r
    rel = np.abs(pick(out, "social_cost") - pick(ref, "social_cost"))[both]
    rel /= pick(ref, "social_cost")[both]
    assert np.mean(rel <= 1e-4) >= 0.95


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["equilibrium", "optimum"])
def test_general_kernel_matches_pure_jax_on_gpu(kind, monkeypatch):
    """The general variant (absent workers: the mask is read; half Dynamo, empty classes)
    compiled on a GPU ≡ the pure-JAX solver, memory layout (the test above runs the
    benchmark family's specialised variant). Last in the file: gpu_check's fused step may run
    out of time here first."""
    monkeypatch.setattr(batching, "KERNEL", "xla")
    n, tol = 2048, 1e-5
    prep = _mixed_batch(32, n, "float32")
    assert not np.all(np.asarray(prep.game.worker_mask))  # so the mask is read (full_mask off)
    if kind == "equilibrium":
        x0 = solve.starting_flows(prep, 1, greedy=True)
        ref = batching.equilibria(prep.game, prep.policy, x0, method="projection", tol=tol,
                                  max_iters=1000)  # fmt: skip
        out = fused.fused_equilibria(prep.game, prep.policy, x0, tol=tol, max_iters=1000,
                                     state="memory")  # fmt: skip
        pick = lambda r, f: np.asarray(r[f])[:, 0]  # noqa: E731
    else:
        x0 = solve.starting_flows(prep, 2)
        ref = batching.optima(prep.game, x0, tol=tol, max_iters=1000, descent_steps=0, lr=0.05)
        out = fused.fused_optima(prep.game, x0, tol=tol, max_iters=1000, state="memory")
        pick = lambda r, f: np.asarray(r[f])  # noqa: E731
    conv_f, conv_r = pick(out, "status") == 0, pick(ref, "status") == 0
    # float32 rounding differs (the fused field's own formulas): an instance near the
    # 1 000-iteration bound can end either side of tol (interpret mode, 64 lanes: 1 optimum)
    assert conv_f.mean() >= conv_r.mean() - 0.02
    assert np.all(pick(out, "gap")[conv_f] <= tol)
    both = conv_f & conv_r
    rel = np.abs(pick(out, "social_cost") - pick(ref, "social_cost"))[both]
    assert np.mean(rel / pick(ref, "social_cost")[both] <= 1e-4) >= 0.95


def test_auto_selection_falls_back_to_xla(monkeypatch):
    """With ``KERNEL = "auto"`` on a GPU in float32 ``batching`` picks the fused kernel; where it
    cannot be built it warns once and uses the XLA loop, with the same results."""
    from poa_jax import fused as _fused

    prep = batching.prepare(random_games(5, 8, 3, 4, cache=True), _pol.selfish(), "float32")
    x0 = solve.starting_flows(prep, 1, greedy=True)
    kw = dict(method="projection", tol=1e-5, max_iters=300)
    ref = batching.equilibria(prep.game, prep.policy, x0, **kw)
    assert batching.LAST_KERNEL["equilibrium"] == "xla"

    def broken(*a, **k):
        raise _fused.FusedUnavailable("no Triton here")

    monkeypatch.setattr(batching, "KERNEL", "auto")
    monkeypatch.setattr(_fused, "use_fused", lambda *a, **k: True)
    monkeypatch.setattr(_fused, "fused_equilibria", broken)
    monkeypatch.setattr(batching, "_FUSED_BROKEN", [])
    with pytest.warns(UserWarning, match="fused Pallas kernel unavailable"):
        out = batching.equilibria(prep.game, prep.policy, x0, **kw)
    assert batching._FUSED_BROKEN and batching.LAST_KERNEL["equilibrium"] == "xla"
    np.testing.assert_array_equal(np.asarray(out["flows"]), np.asarray(ref["flows"]))
    monkeypatch.setattr(batching, "KERNEL", "pallas")  # asked for explicitly: the error surfaces
    with pytest.raises(_fused.FusedUnavailable):
        batching.equilibria(prep.game, prep.policy, x0, **kw)


def test_pallas_selection_leaves_what_the_kernel_does_not_implement_to_xla(monkeypatch):
    """``use_kernel("pallas")`` with a logit policy (τ > 0) or another method: the XLA loop, as
    for optima with descent steps (it raised "fused equilibria run the projection method")."""
    g = pj.RoutingGame(demand=[1.0, 0.5], latency=pj.Latency(a=[0.0, 1.0], b=[1.0, 0.0]))
    cases = [(_pol.dynamo(tau=0.5), "auto"), (_pol.selfish(), "extragradient")]
    ref = [pj.solve_equilibrium(g, p, method=m, dtype="float64") for p, m in cases]
    monkeypatch.setattr(batching, "KERNEL", "pallas")
    for (p, m), r in zip(cases, ref, strict=True):
        batching.LAST_KERNEL["equilibrium"] = None
        out = pj.solve_equilibrium(g, p, method=m, dtype="float64")
        assert batching.LAST_KERNEL["equilibrium"] == "xla"
        np.testing.assert_array_equal(out.flows, r.flows)


def test_fused_driver_compiles_nothing_for_new_round_counts():
    """Each round leaves another number of unfinished lanes. Every kernel call and every
    scatter back into the batch has one of the driver's fixed sizes (pad slots go past the end
    and are dropped), so new counts compile nothing. On an H200 each compile of a new scatter
    shape cost a few tenths of a second, more than the kernel's work in a round."""
    kw = dict(tol=1e-5, max_iters=120, interpret=True, rounds=(10, 20), block=8, chunk=64)
    fused._put_lanes.clear_cache()
    pending_counts = set()
    for seed in (41, 42):
        prep = _mixed_batch(seed, 40, "float32", 3, 4)
        x0 = solve.starting_flows(prep, 1, greedy=True)
        out = jax.device_get(fused.fused_equilibria(prep.game, prep.policy, x0, **kw))
        it = np.ravel(out["iterations"])
        pending_counts |= {int(np.sum(it >= 10)), int(np.sum(it >= 30))}
    # the guard: rounds really left counts other than the call sizes (64, 8)
    assert len(pending_counts - {0, 8, 64}) >= 2, pending_counts
    assert fused._put_lanes._cache_size() <= len(fused._sizes(8, 64)), pending_counts


@pytest.mark.parametrize("rounds", [(10, 0), (0,), (-5, 10)])
def test_a_round_of_no_iterations_is_refused(rounds):
    """A round budget below 1 made no progress: the driver looped forever (bench_fused
    --rounds 0). Refused before anything is built."""
    prep = _mixed_batch(3, 8, "float32", 3, 4)
    x0 = solve.starting_flows(prep, 1, greedy=True)
    with pytest.raises(ValueError, match="rounds"):
        fused.fused_equilibria(prep.game, prep.policy, x0, tol=1e-5, max_iters=50,
                               interpret=True, rounds=rounds, block=8)  # fmt: skip


@pytest.mark.parametrize("m", [1, 50, 512, 513, 4095, 100_000, 262_144, 1_000_000])
def test_round_plan_covers_every_lane_with_few_pad_slots(m):
    sizes = fused._sizes(128, 1 << 18)
    plan = fused._plan(m, sizes)
    starts = [lo for lo, _ in plan]
    assert starts == sorted(starts) and starts[0] == 0
    assert all(z in sizes for _, z in plan)
    assert all(b == a + z for (a, z), (b, _) in zip(plan, plan[1:], strict=False))  # contiguous
    slots = sum(z for _, z in plan)
    assert m <= slots < m + sizes[-1]  # pad slots: fewer than the smallest call


def test_slot_occupancy_counts_idle_lanes_slot_by_slot():
    """``fused.slot_occupancy`` ≡ a literal count of the driver's schedule, one trip at a time:
    each round the unfinished lanes, in order, form programs of ``block`` lanes, and a program
    trips while any of its lanes still works in the round."""
    assert fused.slot_occupancy([1, 10], rounds=(4,), block=2) == 11 / 20  # 8 + 8 + 4 slots
    assert fused.slot_occupancy([4, 4, 8, 8], rounds=(4,), block=2) == 1.0
    rng = np.random.default_rng(5)
    for _ in range(20):
        iters = rng.integers(0, 60, rng.integers(1, 40))
        block, rounds = int(rng.integers(1, 6)), tuple(rng.integers(1, 12, rng.integers(1, 4)))
        left, slots, r = [int(i) for i in iters], 0, 0
        while any(left):
            budget = rounds[min(r, len(rounds) - 1)]
            r += 1
            todo = [i for i, v in enumerate(left) if v > 0]
            for lo in range(0, len(todo), block):
                prog = todo[lo : lo + block]
                for _trip in range(budget):
                    if not any(left[i] > 0 for i in prog):
                        break
                    slots += block
                    for i in prog:
                        left[i] = max(left[i] - 1, 0)
        want = iters.sum() / slots if slots else 1.0
        assert fused.slot_occupancy(iters, rounds, block) == pytest.approx(want, rel=1e-12)
