r"""Γ_KV, fluid form — the batched solvers of :mod:`poa_jax.tiered_cache`'s game.

Notation as in :mod:`poa_jax.tiered_cache`: workers ``w``, tiers ``t`` (credit ``v_t``, short for
the per-worker ``v[w, t]``), blocks ``b`` (size ``s_b``), placements ``y[w, t, b]``,
``reach[w, u] = σ·e^{−D[w, u]}`` or its time form (zero diagonal), ``rm = r·m``,
``h[u, b] = Σ_t y[u, t, b]``,
``q[w, b] = Π_{u≠w}(1 − reach[w,u]·h[u,b]) = 1 − peer[w, b]``,
``own[w, b] = Σ_t v_t·y[w, t, b]`` and

    C_w(y) = Σ_b rm[w, b]·(1 − own[w, b])·q[w, b],        SC(y) = Σ_w C_w(y).

**Best response is a fractional knapsack.** Given ``y_{−w}``, ``C_w`` is linear in ``y[w]`` with
gain per unit of ``y[w, t, b]`` equal to ``g_b·v_t``, ``g_b = r[w,b]·m[w,b]·(1 − peer[w,b])``. The
profit per unit size ``(g_b/s_b)·v_t`` is a product of a block factor and a tier factor, so the
transportation problem over tiers is Monge: filling the tiers in decreasing credit with the
blocks in decreasing density ``g_b/s_b`` (fractional at the boundaries) is optimal (Hoffman
1963; the exchange argument of the fractional knapsack). Blocks with ``g_b = 0`` are not kept.

**Equilibrium**: sequential (Gauss–Seidel) best response over the workers from ``starts``
placements, to the relative gap

    gap(y) = Σ_w [C_w(y) − min_{y'_w} C_w(y'_w, y_{−w})] / SC(y)    (0 exactly at a NE).

**Optimum**: ``SC`` is multilinear, not convex. Projected gradient descent (SGD on the
max-norm-scaled gradient with optax's cosine-decayed rate) on ``y``, with the gradient in closed
form: with ``a[w, u] = σe^{−D[w,u]}`` (``u ≠ w``), ``q[w, b] = Π_{u≠w}(1 − a[w,u]·h[u,b]) =
1 − peer[w, b]`` and ``ρ = r·m``,

    ∂SC/∂y[w, t, b] = −ρ[w,b]·q[w,b]·v_t
                      − Σ_{w'} ρ[w',b]·(1 − own[w',b])·q[w',b]·a[w',w] / (1 − a[w',w]·h[w,b]).

The projection onto the feasible set is computed through its dual — with tier multipliers
``λ[w, t] ≥ 0`` it separates into one projection per block onto ``{Σ_t y ≤ 1, y ≥ 0}``
(:mod:`poa_jax.kernels.capped`), and ``λ`` is updated by a few warm-started diagonal Newton steps
per descent step — followed by a scaling retraction that makes every iterate exactly feasible.
**Polish and certificate.** ``SC`` is linear in one worker's placement (``α``, ``β`` above do
not depend on it), so each worker's coordinated best response is an LP, solved exactly by the
greedy of :func:`_social_lmo`; block-coordinate descent over the workers
(:func:`_sweep_lanes`, one pass per call, each instance stopping after its own pass that
lowers nothing) follows the projected descent. The point returned is certified by
:func:`_stationarity_lanes`, an upper bound on its relative Frank–Wolfe gap by LP duality.

The batched descent keeps the instances on the minor axis and the tiers as separate arrays
(:func:`_optimum_lanes`); the best point seen is kept, so the optimum never costs more than its
start.

Functions take one instance's arrays (``reach (W, W)``, ``rm (W, B)``, ``capacity (W, T)``,
``credit (W, T)``, ``size (B,)``, ``y (W, T, B)``); the ``*_batch`` programs are their jitted
batched forms, and the optimum's descent has its own lane layout (below).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from poa_jax.kernels import loop
from poa_jax.kernels.capped import project_capped_columns
from poa_jax.kernels.simplex import project_simplex

#: Factors ``1 − reach·h`` of the peer product are floored here (:func:`_peer` clips the same).
_FLOOR = 1e-12
#: Dual (diagonal Newton) steps of the projection per descent step, warm-started from the last
#: step's multipliers: 1 is enough for the descent to reach scipy's optima (tests) and costs a
#: third of 3.
PROJ_ITERS = 1
#: Dual steps of the final projection that prices the optimum's stationarity certificate.
CERT_ITERS = 50
#: Steps per round of the optimum's descent. A start whose first round lowers SC by no more
#: than the optimum's tolerance (relative) stops descending there and is left to the polish;
#: every other start runs all its steps. Equilibria are such starts: on 8 workers × 4 tiers ×
#: 256 Zipf-popular blocks in float32, 300 steps from the equilibrium lowered SC by 8e-7 on
#: average, and the polished optimum was the same to the last bit after 1 step as after 300
#: (2026-11-29). (Stopping any start after a round that gains that little was tried: on 1 of
#: 120 small float64 instances it cut a slow descent that would have crossed into a better
#: basin, 0.23% lower SC.)
DESCENT_ROUND = 50


# --------------------------------------------------------------------------- one instance


def _peer(reach, y):
    """``peer[w, b] = 1 − Π_{u≠w}(1 − reach[w,u]·h[u,b])``, ``(W, B)``."""
    h = jnp.clip(jnp.sum(y, axis=1), 0.0, 1.0)  # (W, B)
    # log1p keeps the product accurate for many small factors.
    logs = jnp.log1p(-jnp.clip(reach[:, :, None] * h[None, :, :], 0.0, 1.0 - 1e-12))
    return -jnp.expm1(jnp.sum(logs, axis=1))


def worker_costs_one(reach, rm, credit, y):
    """``C_w(y)``, ``(W,)``, for one instance."""
    own = jnp.einsum("wt,wtb->wb", credit, y)
    return jnp.sum(rm * (1.0 - own) * (1.0 - _peer(reach, y)), axis=1)


def _order_desc(x, axis: int = -1):
    """``argsort(−x, axis)``, ties by index (stable).

    In float32 with 64-bit integers enabled this is one sort of packed integer keys (the
    order-preserving integer image of ``−x`` in the high 32 bits, the index in the low ones):
    XLA's CPU sort is about 5× faster on one integer operand than on the (float, index) pair of
    ``argsort`` (measured: 40 → 7.5 µs per 256-block row). The order is the same.
    """
    if x.dtype == jnp.float32 and jax.config.jax_enable_x64:
        neg = jnp.where(x == 0, 0.0, -x).astype(jnp.float32)  # −0.0 ties with +0.0
        bits = jax.lax.bitcast_convert_type(neg, jnp.int32)
        key = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # monotone: float order = integer order
        idx = jax.lax.broadcasted_iota(jnp.int64, x.shape, axis % x.ndim)
        packed = jax.lax.sort((key.astype(jnp.int64) << 32) | idx, dimension=axis % x.ndim,
                              is_stable=False)  # fmt: skip
        return (packed & 0xFFFFFFFF).astype(jnp.int32)
    return jnp.argsort(-x, axis=axis)


def _inverse(perm, axis: int = 0):
    """The inverse of the permutations ``perm`` along ``axis`` (``argsort(perm)``): with 64-bit
    integers one sort of packed keys (the permutation's value high, the position low), as in
    :func:`_order_desc`."""
    if jax.config.jax_enable_x64:
        idx = jax.lax.broadcasted_iota(jnp.int64, perm.shape, axis % perm.ndim)
        packed = jax.lax.sort((perm.astype(jnp.int64) << 32) | idx, dimension=axis % perm.ndim,
                              is_stable=False)  # fmt: skip
        return (packed & 0xFFFFFFFF).astype(jnp.int32)
    return jnp.argsort(perm, axis=axis)


def _fill(gain, credit, capacity, size):
    """One worker's best response: blocks by density ``gain/size``, tiers by credit, ``(T, B)``.

    Block ``b`` occupies ``[hi_b − s_b, hi_b]`` of the cumulative size in density order, tier
    ``t`` occupies ``[c_hi_t − C_t, c_hi_t]`` of the cumulative capacity in credit order; the
    block's fraction in the tier is their overlap over ``s_b``. Only the two cumulative sums
    are scattered back to the original order (``B`` and ``T`` values), not the ``(T, B)``
    placement.
    """
    dens = gain / size
    order = _order_desc(dens)
    hi_sorted = jnp.cumsum(size[order])
    hi = jnp.zeros_like(hi_sorted).at[order].set(hi_sorted)
    lo = hi - size
    t_order = jnp.argsort(-credit)
    c_hi_sorted = jnp.cumsum(capacity[t_order])
    c_hi = jnp.zeros_like(c_hi_sorted).at[t_order].set(c_hi_sorted)
    c_lo = c_hi - capacity
    overlap = jnp.minimum(hi[None, :], c_hi[:, None]) - jnp.maximum(lo[None, :], c_lo[:, None])
    frac = jnp.clip(overlap, 0.0, None) / size[None, :]  # (T, B)
    return jnp.where((dens > 0)[None, :] & (credit > 0)[:, None], frac, 0.0)


def _miss_share(reach, h):
    """``1 − peer = Π_{u≠w}(1 − reach[w, u]·h[u, b])``, ``(W, B)``, as a direct product (the
    factors are floored at ``_FLOOR`` as :func:`_peer` clips them)."""
    return jnp.prod(jnp.maximum(1.0 - reach[:, :, None] * h[None, :, :], _FLOOR), axis=1)


def _pool_gain(reach, rm, credit, y):
    """The shared pool's (the last worker's) social gain per unit of ``h_P``, ``(B,)``:

        β_P[b] = Σ_w rm[w, b]·(1 − own[w, b])·reach[w, P]·Π_{u ≠ w, P}(1 − reach[w, u]·h[u, b]),

    the fall in SC per unit of the block held in the pool (SC is linear in the pool's
    placement). The pool's own factor is left out of the product, not divided out.
    """
    p = y.shape[0] - 1
    h = jnp.clip(jnp.sum(y, axis=1), 0.0, 1.0)
    own = jnp.einsum("wt,wtb->wb", credit, y)
    f = jnp.maximum(1.0 - reach[:, :, None] * h[None, :, :], _FLOOR)  # (W, U, B)
    f = jnp.where((jnp.arange(y.shape[0]) == p)[None, :, None], 1.0, f)
    return jnp.sum(rm * (1.0 - own) * jnp.prod(f, axis=1) * reach[:, p][:, None], axis=0)


def _best_response_one(p, y, w, pool: bool = False):
    """Worker ``w``'s best response ``(T, B)`` and its cost at ``y``.

    ``gain[b] = rm[w, b]·Π_{u≠w}(1 − reach[w, u]·h[u, b])``: only worker ``w``'s row of the
    peer product is formed (``W·B`` work, not the ``W²·B`` of all rows). With ``pool`` the
    last worker is the shared pool, a cooperative player: its gain is the social one,
    :func:`_pool_gain` (``W²·B``), so its best response minimises SC given the others.
    """
    reach, rm, capacity, credit, size = p
    h = jnp.clip(jnp.sum(y, axis=1), 0.0, 1.0)
    gain = rm[w] * _miss_share(reach[w][None], h)[0]
    cost_br = lambda br: jnp.sum(gain * (1.0 - credit[w] @ br))  # noqa: E731
    if pool:  # (a real branch in the equilibrium's sweep, where w is not batched)
        gain_p = jax.lax.cond(
            w == y.shape[0] - 1, lambda: _pool_gain(reach, rm, credit, y), lambda: gain
        )
        br = _fill(gain_p, credit[w], capacity[w], size)
        return br, cost_br(br)
    br = _fill(gain, credit[w], capacity[w], size)
    return br, cost_br(br)


def _gap_one(p, y, pool: bool = False):
    """``(gap, SC)`` at ``y``: every worker's cost and best-response cost from one product.

    With ``pool``, the last worker (the shared pool, whose own cost is 0) adds what its social
    best response would save, ``β_P·(h'_P − h_P) ≥ 0`` (SC is linear in its placement).
    """
    reach, rm, capacity, credit, size = p
    h = jnp.clip(jnp.sum(y, axis=1), 0.0, 1.0)
    gain = rm * _miss_share(reach, h)  # (W, B)
    costs = jnp.sum(gain * (1.0 - jnp.einsum("wt,wtb->wb", credit, y)), axis=1)
    best = jax.vmap(lambda g, v, c: jnp.sum(g * (1.0 - v @ _fill(g, v, c, size))))(
        gain, credit, capacity
    )
    sc = jnp.sum(costs)
    excess = jnp.sum(costs - best)
    if pool:
        beta = _pool_gain(reach, rm, credit, y)
        br = _fill(beta, credit[-1], capacity[-1], size)
        excess = excess + jnp.sum(beta * (jnp.sum(br, axis=0) - h[-1]))
    tiny = jnp.finfo(y.dtype).tiny
    return jnp.maximum(excess, 0.0) / jnp.maximum(sc, tiny), sc


def _equilibrium_one(p, y0, *, tol, max_rounds, pool: bool = False):
    w = y0.shape[0]

    def step(y):
        def visit(i, y):
            br, _ = _best_response_one(p, y, i, pool)
            return y.at[i].set(br)

        y = jax.lax.fori_loop(0, w, visit, y)
        gap, _ = _gap_one(p, y, pool)
        return y, gap

    gap0, _ = _gap_one(p, y0, pool)
    res = loop.iterate(step, y0, tol=tol, max_steps=max_rounds, error0=gap0)
    gap, sc = _gap_one(p, res.state, pool)
    return dict(placement=res.state, social_cost=sc, gap=gap, rounds=res.steps, status=res.status)


def _retract(y, capacity, size):
    """Clip to [0, 1], scale each block's tier fractions to ≤ 1, each tier to its capacity."""
    y = jnp.clip(y, 0.0, 1.0)
    tot = jnp.sum(y, axis=1, keepdims=True)  # (W, 1, B)
    y = y / jnp.maximum(tot, 1.0)
    used = jnp.sum(y * size[None, None, :], axis=-1)
    scale = jnp.where(used > capacity, capacity / jnp.maximum(used, 1e-300), 1.0)
    return y * scale[:, :, None]


def _block_project(z):
    """Each column of ``z (..., T, B)`` onto ``{y ≥ 0, Σ_t y ≤ 1}``."""
    y = jnp.clip(z, 0.0, None)
    t, b = z.shape[-2:]
    cols = jnp.moveaxis(z, -2, -1).reshape(-1, t)
    simplex = jax.vmap(lambda c: project_simplex(c, 1.0))(cols)
    simplex = jnp.moveaxis(simplex.reshape(z.shape[:-2] + (b, t)), -1, -2)
    return jnp.where(jnp.sum(y, axis=-2, keepdims=True) > 1.0, simplex, y)


def _project(z, capacity, size, lam, iters: int):
    """Euclidean projection of ``z (W, T, B)`` onto the feasible placements, by the dual.

    With tier multipliers ``λ (W, T) ≥ 0`` the problem separates per block:
    ``y(λ) = Π_blocks(z − λ·s)`` (each block's tier fractions onto ``{y ≥ 0, Σ_t y ≤ 1}``), and
    ``λ`` solves the complementarity ``λ ≥ 0, used(λ) ≤ C, λ·(used − C) = 0``. ``iters``
    diagonal Newton steps ``λ ← max(0, λ + (used − C)/Σ_{active b} s_b²)`` from the previous
    step's ``λ`` (warm start: descent moves ``z`` little), then the scaling retraction makes the
    point exactly feasible. Returns ``(y, λ)``.
    """

    def body(_, lam):
        y = _block_project(z - lam[:, :, None] * size[None, None, :])
        # Sums over blocks as elementwise products + reductions: under vmap on CPU these are
        # several times faster than the equivalent einsum (a batched matrix-vector product).
        used = jnp.sum(y * size[None, None, :], axis=-1)
        curv = jnp.sum(jnp.where(y > 0, size[None, None, :] ** 2, 0.0), axis=-1)
        curv = jnp.maximum(curv, jnp.min(size) ** 2)
        return jnp.maximum(lam + (used - capacity) / curv, 0.0)

    lam = jax.lax.fori_loop(0, iters, body, lam)
    y = _block_project(z - lam[:, :, None] * size[None, None, :])
    return _retract(y, capacity, size), lam


# --------------------------------------------------------------------------- optimum kernel
#
# The descent works on one instance with optional trailing *lane* axes ``...``: ``reach (W, W,
# ...)``, ``rm (W, B, ...)``, ``size (B, ...)``, and the credit, the capacity and the placement
# as lists over the tiers, ``credit[t] (W, ...)``, ``cap[t] (W, ...)``, ``ys[t] (W, B, ...)``. A
# batched call puts the instances on the trailing (minor) axis, so every elementwise op and
# every sum over workers or blocks vectorises over instances, and no op slices the short tier
# axis (XLA's CPU emitters are several times slower on a strided slice than on a whole array).


def _smax(a, b):
    """``max(a, b)`` as compare + select (XLA's CPU ``maximum`` also propagates NaN: slower)."""
    return jnp.where(a > b, a, b)


def _smin(a, b):
    return jnp.where(a < b, a, b)


def _add(xs):
    return functools.reduce(jnp.add, xs)


def _sc_lanes(reach, rm, credit, ys):
    """``SC (...)`` of tier-list placements ``ys`` (see the kernel layout above)."""
    h = _smin(_smax(_add(ys), 0.0), 1.0)  # (W, B, ...)
    f = _smax(1.0 - reach[:, :, None] * h[None], _FLOOR)  # (W, U, B, ...)
    own = _add([v[:, None] * y for v, y in zip(credit, ys, strict=True)])
    return jnp.sum(rm * (1.0 - own) * jnp.prod(f, axis=1), axis=(0, 1))


def _sc_grad_lanes(reach, rm, credit, ys):
    r"""``SC`` and its gradient in closed form, sharing the products.

    With ``f[w, u, b] = 1 − reach[w, u]·h[u, b]``, ``q[w, b] = Π_{u≠w} f[w, u, b]`` (so
    ``1 − peer = q``) and ``tq[w, b] = rm[w, b]·(1 − own[w, b])·q[w, b]``:

        ∂SC/∂y[w, t, b] = −(α[w, b]·v_t + β[w, b]),   α = rm·q,
        β[u, b] = Σ_w tq[w, b]·reach[w, u] / f[w, u, b]   (= −Σ_w rm(1 − own)·∂q[w]/∂h[u]).

    This is the derivative of the formula without the clip of ``h`` to ``[0, 1]`` (inactive
    on the feasible set, where ``0 ≤ h ≤ 1``): at ``h = 0``, the blocks nobody holds, it is the
    one-sided derivative into the feasible set, where autodiff through the clip would halve
    it. Returns ``(SC (...), α (W, B, ...), β (W, B, ...))``; ``α, β ≥ 0`` so the gradient is
    ``≤ 0`` and its largest magnitude is ``max(α·max_t v_t + β)``.
    """
    h = _smin(_smax(_add(ys), 0.0), 1.0)  # (W, B, ...)
    own = _add([v[:, None] * y for v, y in zip(credit, ys, strict=True)])
    # One (W, U, B, ...) expression; the diagonal reach is 0, so its factor is 1 and its term
    # 0. (Unrolling the worker pairs into W² fused (B, ...) expressions was measured equal in
    # speed at 64 instances per call, slower at 8–16, and took 2× longer to compile.)
    f = _smax(1.0 - reach[:, :, None] * h[None], _FLOOR)  # (W, U, B, ...)
    q = jnp.prod(f, axis=1)
    tq = rm * (1.0 - own) * q
    beta = jnp.sum(tq[:, None] * reach[:, :, None] / f, axis=0)
    return jnp.sum(tq, axis=(0, 1)), rm * q, beta


def _retract_tiers(ys, cap, size):
    """:func:`_retract` on tier lists: clip to [0, 1], each block to ``Σ_t ≤ 1``, each tier to
    its capacity (``y ← y·min(1, C/used)``)."""
    ys = [_smin(_smax(y, 0.0), 1.0) for y in ys]
    tot = _smax(_add(ys), 1.0)
    tiny = jnp.finfo(ys[0].dtype).tiny
    out = []
    for c, y in zip(cap, ys, strict=True):
        y = y / tot
        used = jnp.sum(y * size[None], axis=1)  # (W, ...)
        out.append(y * jnp.where(used > c, c / _smax(used, tiny), 1.0)[:, None])
    return out


def _project_tiers(zs, cap, size, lam, iters: int, smin2):
    """:func:`_project` on tier lists (same dual Newton steps and retraction); the per-block
    projections by :func:`poa_jax.kernels.capped.project_capped_columns`."""
    s, s2 = size[None], (size * size)[None]
    shift = lambda lam: [z - mu[:, None] * s for z, mu in zip(zs, lam, strict=True)]  # noqa: E731
    for _ in range(iters):
        ys = project_capped_columns(shift(lam))
        new = []
        for c, mu, y in zip(cap, lam, ys, strict=True):
            used = jnp.sum(y * s, axis=1)
            curv = _smax(jnp.sum(jnp.where(y > 0, s2, 0.0), axis=1), smin2[None])
            new.append(_smax(mu + (used - c) / curv, 0.0))
        lam = new
    ys = project_capped_columns(shift(lam))
    return _retract_tiers(ys, cap, size), lam


def _descend_lanes(reach, rm, cap, credit, size, carry, k0, *, n, steps, lr, proj_iters=PROJ_ITERS):
    """Steps ``k0 … k0 + n − 1`` (``k0 (...)`` per lane) of the projected-gradient optimum
    (module docstring) of a descent of ``steps``; kernel layout above.

    Step ``k``: ``y ← Π(y − η_k·g/max|g|)`` with ``g = ∇SC(y)`` (:func:`_sc_grad_lanes`) and
    ``η_k`` optax's cosine-decay schedule over ``steps`` (SGD on the max-norm-scaled gradient),
    ``Π`` by :func:`_project_tiers` with warm-started multipliers. ``carry`` is ``(y, λ, best
    y, best SC, c)`` (tier lists, ``c`` the last step's scale); the best point seen, the last
    one included, is kept. Returns the carry after the ``n`` steps.
    """
    dt = carry[0][0].dtype
    sched = optax.cosine_decay_schedule(lr, steps, 0.02)
    vtop = functools.reduce(_smax, credit)[:, None]  # (W, 1, ...)
    smin2 = jnp.min(size, axis=0) ** 2
    tiny = jnp.finfo(dt).tiny

    def body(i, carry):
        ys, lam, best_ys, best, _ = carry
        val, alpha, beta = _sc_grad_lanes(reach, rm, credit, ys)
        better = val < best
        best_ys = [jnp.where(better[None, None], y, b) for y, b in zip(ys, best_ys, strict=True)]
        best = jnp.where(better, val, best)
        # −η·g/max|g| = c·(α·v_t + β), c = η / max_{w,b}(α·max v + β)
        gmax = jnp.max(alpha * vtop + beta, axis=(0, 1))
        c = (sched(k0 + i) / _smax(gmax, tiny)).astype(dt)
        alpha, beta = alpha * c[None, None], beta * c[None, None]
        zs = [y + (alpha * v[:, None] + beta) for v, y in zip(credit, ys, strict=True)]
        ys, lam = _project_tiers(zs, cap, size, lam, proj_iters, smin2)
        return ys, lam, best_ys, best, c

    ys, lam, best_ys, best, c = jax.lax.fori_loop(0, n, body, carry)
    last = _sc_lanes(reach, rm, credit, ys)
    keep = (last < best)[None, None]
    best_ys = [jnp.where(keep, y, b) for y, b in zip(ys, best_ys, strict=True)]
    return ys, lam, best_ys, jnp.minimum(best, last), c


def _optimum_lanes(reach, rm, cap, credit, size, ys0, *, steps, lr, proj_iters=PROJ_ITERS):
    """The whole descent of ``steps`` from ``ys0`` (:func:`_descend_lanes`). Returns
    ``(best placement (tier list), its SC (...), λ, c)``."""
    ys0 = _retract_tiers(ys0, cap, size)
    sc0 = _sc_lanes(reach, rm, credit, ys0)
    carry = (ys0, [jnp.zeros_like(c) for c in cap], ys0, sc0, jnp.ones_like(sc0))
    k0 = jnp.zeros(sc0.shape, jnp.int32)
    _, lam, best_ys, best, c = _descend_lanes(reach, rm, cap, credit, size, carry, k0,
                                              n=steps, steps=steps, lr=lr,
                                              proj_iters=proj_iters)  # fmt: skip
    return best_ys, best, lam, c


def _count_below(cum, lim):
    """``#{b : cum[b] < lim_k}`` per ``lim_k`` (``lim (K, ...)``) for ``cum (B, ...)``
    non-decreasing along its first axis: a binary search (``⌈log₂ B⌉ + 1`` gathers of ``(K,
    ...)``) where the count over a ``(B, K, ...)`` comparison costs ``K·B`` per lane."""
    n = cum.shape[0]
    pos = jnp.zeros(lim.shape, jnp.int32)
    step = 1 << (n.bit_length() - 1)
    while step:  # unrolled: invariant cum[:pos] < lim; try to extend it by ``step``
        probe = jnp.minimum(pos + step - 1, n - 1)
        ok = (pos + step <= n) & (jnp.take_along_axis(cum, probe, 0) < lim)
        pos = jnp.where(ok, pos + step, pos)
        step >>= 1
    return pos


def _social_lmo(alpha, beta, v, cap, size):
    r"""One worker's placement minimising SC given the others: the LP ``max ⟨g, u⟩``.

    ``g[t, b] = α_b·v_t + β_b`` (``α, β (B, ...)``, ``v, cap (T, ...)``, ``size (B, ...)``);
    ``u (T, B, ...)`` fractions with ``Σ_t u ≤ 1`` per block and ``Σ_b s_b·u ≤ C_t`` per tier.
    SC is linear in one worker's placement (:func:`_sc_grad_lanes`: ``α``, ``β`` do not depend
    on it), so this is the exact coordinated best response.

    Per unit of size a block is worth ``a_b·v_t + c_b`` (``a = α/s``, ``c = β/s``). Given the
    kept amounts ``x_b``, the Monge argument of the selfish best response still places them
    (higher ``a`` in higher ``v``), so with the tiers by decreasing credit, ``P_k`` their
    cumulative capacities and ``w_k = v_k − v_{k+1}`` (``v_{T+1} = 0``)

        V(x) = Σ_b c_b·x_b + Σ_k w_k·TopSum_{P_k}(x),

    ``TopSum_P`` the largest ``a``-weighted mass of ``P`` kept units: an assignment
    (gross-substitutes, M♮-concave) valuation, non-decreasing in ``x``. It is maximised
    greedily: add, whole, the block of largest marginal value
    ``c_b + Σ_k w_k·max(0, a_b − θ_k)`` (``θ_k`` the ``a`` of the kept unit at ``P_k``, 0 while
    fewer are kept) until the tiers are full or no block adds value (Murota's greedy for
    M♮-concave functions under a cardinality bound). Tests check it against linprog.
    """
    dt = alpha.dtype
    n_b = alpha.shape[0]
    tiny = jnp.finfo(dt).tiny
    ot = jnp.argsort(-v, axis=0)
    vs = jnp.take_along_axis(v, ot, 0)
    big_p = jnp.cumsum(jnp.take_along_axis(cap, ot, 0), 0)  # (T, ...)
    wk = vs - jnp.concatenate([vs[1:], jnp.zeros_like(vs[:1])], 0)
    a = alpha / size
    ob = _order_desc(a, axis=0)  # blocks by decreasing a
    a_s, c_s, s_s = (jnp.take_along_axis(q, ob, 0) for q in (a, beta / size, size))
    total = big_p[-1]
    eps = 64 * jnp.finfo(dt).eps * _smax(total, tiny)
    rows = jnp.arange(n_b).reshape((n_b,) + (1,) * (alpha.ndim - 1))

    lim = big_p - eps[None]  # (T, ...)

    def bounds(x, cum, kept):
        """For the kept amounts ``x`` (``cum`` their cumulative sum in the a-order, carried):
        whether each ``P_k`` is filled, the block ``j_k`` holding the unit at ``P_k``, the kept
        mass before that block and ``θ``, each ``(T, ...)``."""
        filled = kept[None] >= lim
        j = jnp.minimum(_count_below(cum, lim), n_b - 1)
        theta = jnp.where(filled, jnp.take_along_axis(a_s, j, 0), 0.0)
        return filled, j, jnp.take_along_axis(cum - x, j, 0), theta

    def gains(x, theta):
        """The marginal values ``(B, ...)`` (``-inf`` for the blocks wholly kept)."""
        gain = c_s + jnp.sum(wk[:, None] * _smax(a_s[None] - theta[:, None], 0.0), axis=0)
        return jnp.where(x >= s_s, -jnp.inf, gain)

    def add(carry):
        # The bounds are carried from the trip before, not computed here: computed in the trip,
        # XLA's CPU fusion recomputed their binary search for every element of the gains (the
        # trip's one big fusion: 2/3 of its time).
        x, cum, kept, _, k, (filled, j, before_j, theta) = carry
        gain = gains(x, theta)
        # The first block of the largest gain as a max and a min over the blocks holding it,
        # not an argmax: XLA's CPU variadic reduction was most of the trip's time (with the
        # bounds carried: one LP of 32 lanes × 256 blocks, 7.3 → 4.8 ms).
        gmax = jnp.max(gain, 0)
        pick = jnp.minimum(jnp.min(jnp.where(gain == gmax[None], rows, n_b), 0), n_b - 1)
        room = total - kept
        go = (gmax > 0) & (room > eps)
        # Add until a marginal value can change: the block is whole, the tiers are full, the
        # kept mass reaches the next P_k, or the unit at a filled P_k (block j_k) would leave
        # its block because the pick sits above it in the a-order.
        shift = jnp.where(filled & (pick[None] < j), big_p - before_j, jnp.inf)
        reach_p = jnp.where(filled, jnp.inf, big_p - kept[None])
        step = _smin(jnp.min(_smin(shift, reach_p), axis=0), room)
        step = _smax(step, eps)  # progress even where a boundary sits within rounding
        amount = jnp.where((rows == pick[None]) & go[None], _smin(s_s - x, step[None]), 0.0)
        added = jnp.where(go, _smin(jnp.take_along_axis(s_s - x, pick[None], 0)[0], step), 0.0)
        # The cumulative sum moves by ``added`` from the pick on: carried, not recomputed (XLA's
        # CPU cumsum is a reduce-window, O(B²): it was most of a trip's time). The sum of the
        # one nonzero ``amount`` is a gather, not a reduction over the blocks.
        cum = cum + jnp.where(rows >= pick[None], added[None], 0.0)
        x, kept = x + amount, kept + added
        return x, cum, kept, jnp.any(go), k + 1, bounds(x, cum, kept)

    # Each trip completes a block (≤ B), reaches a P_k (≤ T), moves the unit at a P_k up one
    # block (j_k only falls: ≤ T·B) or fills the tiers: (B + 1)·(T + 2) bounds them all.
    limit = (n_b + 1) * (big_p.shape[0] + 2)
    zero = jnp.zeros_like(a_s)
    kept0 = jnp.zeros_like(total)
    x, cum, kept, _, _, (_, _, _, theta) = jax.lax.while_loop(
        lambda c: c[3] & (c[4] < limit),
        add,
        (zero, zero, kept0, True, 0, bounds(zero, zero, kept0)),
    )
    # LP dual prices of the tiers: λ_k = Σ_{j≥k} w_j·θ_j + η, with θ_T = 0 (given Σ x ≤ P_T,
    # TopSum_{P_T} is the plain sum) and η the price of that total, the best marginal value
    # of what is not wholly kept once the tiers are full. The reduced gain of a block is then
    # c_b + Σ_j w_j·max(0, a_b − θ_j) − η (θ non-increasing): ≤ 0 for what is left out.
    theta = theta.at[-1].set(0.0)
    gain = gains(x, theta)
    eta = jnp.where(total - kept <= eps, _smax(jnp.max(gain, 0), 0.0), 0.0)
    lam_rank = jnp.flip(jnp.cumsum(jnp.flip(wk * theta, 0), 0), 0) + eta[None]
    prices = jnp.take_along_axis(lam_rank, jnp.argsort(ot, axis=0), 0)
    before = cum - x
    p_prev = jnp.concatenate([jnp.zeros_like(big_p[:1]), big_p[:-1]], 0)
    amt = _smax(_smin(cum[None], big_p[:, None]) - _smax(before[None], p_prev[:, None]), 0.0)
    u_sorted = amt / s_s[None]  # (rank, sorted block, ...)
    inv_b = _inverse(ob, axis=0)
    u_sorted = jnp.take_along_axis(u_sorted, jnp.broadcast_to(inv_b[None], u_sorted.shape), 1)
    inv_t = jnp.argsort(ot, axis=0)
    u = jnp.take_along_axis(u_sorted, jnp.broadcast_to(inv_t[:, None], u_sorted.shape), 0)
    return u, prices


def _sweep_lanes(reach, rm, cap, credit, size, ys):
    """One pass of block-coordinate descent: each worker in turn takes its coordinated best
    response (:func:`_social_lmo`), kept only where SC does not rise. Returns the placement
    and, per lane, whether the pass lowered SC. Each accepted step lowers SC (or keeps it); a
    point no worker can improve is first-order stationary. The passes are driven from the host
    (:func:`poa_jax.caching._compacted`), so that each instance stops after its own pass that
    lowers nothing. Also returns each worker's LP prices from the pass, ``(T, W, ...)``, which
    price the certificate (:func:`_certify_lanes`)."""
    n_w = ys[0].shape[0]
    cap_a, cr_a = jnp.stack(cap), jnp.stack(credit)  # (T, W, ...)

    def visit(w, carry):
        # (SC, α, β) of the current point are carried: the candidate's, computed to accept or
        # reject it, are the next visit's where it is accepted (one evaluation per visit).
        ys, (sc, alpha, beta), improved, prices = carry
        u, lam = _social_lmo(alpha[w], beta[w], cr_a[:, w], cap_a[:, w], size)  # (T, B, ...)
        new = [y.at[w].set(u[i]) for i, y in enumerate(ys)]
        val, a_new, b_new = _sc_grad_lanes(reach, rm, credit, new)
        ok = val <= sc
        keep = lambda a, b: jnp.where(ok, a, b)  # noqa: E731
        ys = [keep(q, y) for q, y in zip(new, ys, strict=True)]
        grad = (keep(val, sc), keep(a_new, alpha), keep(b_new, beta))
        return ys, grad, improved | (val < sc), prices.at[:, w].set(lam)

    grad = _sc_grad_lanes(reach, rm, credit, ys)
    init = (ys, grad, jnp.zeros(rm.shape[2:], bool), jnp.zeros_like(cap_a))
    ys, _, improved, prices = jax.lax.fori_loop(0, n_w, visit, init)
    return ys, improved, prices


def _certify_lanes(reach, rm, cap, credit, size, ys, lam, c, iters, lmo_prices=None, tol=None):
    """:func:`_stationarity_lanes` at ``ys``, priced by the projection ``Π(y + g/max g)`` and by
    the workers' coordinated best responses (``lmo_prices``, tier lists of ``(W, ...)``: the
    polish's last pass computed them; else they are computed here).

    With the polish's prices and a ``tol``, the projection (``iters`` dual steps) prices the
    bound only of the lanes that the LP prices leave above ``tol`` (and is skipped in a call
    with none: 8 workers × 4 tiers × 256 blocks, float32, 128 polished optima: its bound was
    never below theirs, and the certificate took 0.8 → 0.2 ms per instance).

    At a stationary ``y`` the projection returns ``y`` for any step, and its tier multipliers
    ``λ`` over the step are the LP dual prices that make the bound exact. The step is the full
    max-norm one (not the descent's last, ~50× shorter: in float32 that one leaves the prices
    only ~1e-5 accurate); ``iters`` dual steps, warm-started from the descent's last multipliers
    ``lam`` of step ``c`` rescaled to it.
    """
    sc, alpha, beta = _sc_grad_lanes(reach, rm, credit, ys)
    grad = (sc, alpha, beta)
    tiny = jnp.finfo(c.dtype).tiny

    def projected():
        vtop = functools.reduce(_smax, credit)[:, None]
        step = 1.0 / _smax(jnp.max(alpha * vtop + beta, axis=(0, 1)), tiny)
        zs = [y + step[None, None] * (alpha * v[:, None] + beta)
              for v, y in zip(credit, ys, strict=True)]  # fmt: skip
        warm = [mu * (step / _smax(c, tiny))[None] for mu in lam]
        _, mus = _project_tiers(zs, cap, size, warm, iters, jnp.min(size, axis=0) ** 2)
        return _stationarity_lanes(grad, cap, credit, size, ys, [mu / step[None] for mu in mus])

    # Every worker's coordinated best response at once (workers as one more lane axis): its
    # LP prices make the bound exact wherever that LP is solved exactly.
    # (Prices from the polish's last pass are exact where that pass changed nothing, and any
    # prices still give a bound.)
    polished = lmo_prices is not None
    if not polished:
        wl = lambda q: jnp.moveaxis(q, 0, 1)  # noqa: E731  (W, B, ...) -> (B, W, ...)
        _, lmo_prices = _social_lmo(wl(alpha), wl(beta), jnp.stack(credit), jnp.stack(cap),
                                    jnp.broadcast_to(size[:, None], wl(alpha).shape))  # fmt: skip
    # Any prices give a bound; the lowest is kept (the free ones, 0, cover a degenerate LP).
    bound = functools.reduce(
        jnp.minimum,
        [_stationarity_lanes(grad, cap, credit, size, ys, q)
         for q in (list(lmo_prices), [jnp.zeros_like(c) for c in cap])],
    )  # fmt: skip
    if polished and tol is not None:  # per lane, so that no lane depends on the others
        done = bound <= tol
        return jax.lax.cond(
            jnp.all(done),
            lambda: bound,
            lambda: jnp.where(done, bound, jnp.minimum(bound, projected())),
        )
    return jnp.minimum(bound, projected())


def _stationarity_lanes(grad, cap, credit, size, ys, lam):
    r"""Relative first-order gap of ``ys`` (an upper bound on the Frank–Wolfe gap), ``(...)``.

    With ``g = −∇SC(y)`` (``g[w, t, b] = α[w, b]·v_t + β[w, b] ≥ 0``, :func:`_sc_grad_lanes`)
    the Frank–Wolfe gap ``max_{y' feasible} ⟨g, y' − y⟩`` is 0 exactly where ``y`` is a
    stationary point of SC over the placements (a KKT point; SC is not convex, so a local
    optimum or a saddle). ``max ⟨g, y'⟩`` is a linear program per worker; for any tier prices
    ``λ[w, t] ≥ 0`` weak duality bounds it by

        D_w(λ) = Σ_t λ[w, t]·C[w, t] + Σ_b max(0, max_t (g[w, t, b] − λ[w, t]·s_b)),

    so ``gap = Σ_w (D_w(λ) − ⟨g_w, y_w⟩) / SC(y) ≥`` the relative Frank–Wolfe gap. At a fixed
    point of the projected step the projection's multipliers (over the step) make it tight.
    0 for a game with SC = 0 whose bound is 0; ``inf`` where SC = 0 and the bound is not.
    ``grad`` is ``(SC, α, β)`` at ``ys`` (:func:`_sc_grad_lanes`).
    """
    sc, alpha, beta = grad
    # D_w(λ) − ⟨g_w, y_w⟩ as a sum of terms that are each ≥ 0 and vanish at a KKT point (no
    # cancellation between two large sums): Σ_t λ_t·(C_t − used_t) plus, per block, the best
    # reduced gain r = g − λ·s (or 0) less the reduced gain y collects, Σ_t y_t·r_t.
    red = [alpha * v[:, None] + beta - mu[:, None] * size[None]
           for v, mu in zip(credit, lam, strict=True)]  # fmt: skip
    top = _smax(functools.reduce(_smax, red), 0.0)
    per_block = _smax(top - _add([y * r for y, r in zip(ys, red, strict=True)]), 0.0)
    slack = [mu * _smax(c - jnp.sum(y * size[None], axis=1), 0.0)
             for mu, c, y in zip(lam, cap, ys, strict=True)]  # fmt: skip
    excess = jnp.sum(per_block, axis=(0, 1)) + jnp.sum(_add(slack), axis=0)
    rel = excess / jnp.where(sc > 0, sc, 1.0)
    return jnp.where(sc > 0, rel, jnp.where(excess > 0, jnp.inf, 0.0))


def _to_lanes(reach, rm, capacity, credit, size, y):
    """Batch arrays ``(N, ...)`` in the kernel layout: instances on the minor axis, the
    capacity, the credit and the placement as lists over the tiers."""
    last = lambda a: jnp.moveaxis(a, 0, -1)  # noqa: E731
    tiers = lambda a: [last(a[:, :, i]) for i in range(a.shape[2])]  # noqa: E731
    return last(reach), last(rm), tiers(capacity), tiers(credit), last(size), tiers(y)


def _from_lanes(ys):
    """Tier-list placements ``(W, B, N)`` back to ``(N, W, T, B)``."""
    return jnp.moveaxis(jnp.stack(ys, axis=1), -1, 0)


def _descent_batch_lanes(reach, rm, capacity, credit, size, y0, *, steps, lr):
    """:func:`_optimum_lanes` on a batch ``(N, ...)``: ``dict(placement (N, W, T, B), lam
    (N, W, T), c (N,))``, the last two the descent's last tier multipliers and step scale (the
    certificate's warm start)."""
    args = _to_lanes(reach, rm, capacity, credit, size, y0)
    ys, _, lam, c = _optimum_lanes(*args, steps=steps, lr=lr)
    return dict(placement=_from_lanes(ys), lam=jnp.moveaxis(jnp.stack(lam, 1), -1, 0), c=c)


def _descent_round_lanes(
    reach, rm, capacity, credit, size, y, lam, best_y, best, c, k, go, *, n, steps, lr, rtol
):
    """One round of the batched descent: ``n`` steps from each instance's step ``k (N,)``.

    The state is ``(y, λ (N, W, T), best y, best SC (N,), c (N,), k, go)``, placements
    ``(N, W, T, B)``. Where ``k = 0`` the start ``y`` is first retracted onto the feasible set
    and priced. Returns ``(state, go)``: ``go`` is false after a first round (``k = 0``) that
    lowered SC by no more than ``rtol`` relative to the start's (that start stops descending,
    see :data:`DESCENT_ROUND`), true after any other round.
    """
    reach, rm, cap, cr, size, ys = _to_lanes(reach, rm, capacity, credit, size, y)
    tiers = lambda a: [jnp.moveaxis(a[:, :, i], 0, -1) for i in range(a.shape[2])]  # noqa: E731
    fresh = k == 0
    ys0 = _retract_tiers(ys, cap, size)
    ys = [jnp.where(fresh, a, b) for a, b in zip(ys0, ys, strict=True)]
    before = jnp.where(fresh, _sc_lanes(reach, rm, cr, ys0), best)
    best_ys = [jnp.where(fresh, a, b) for a, b in zip(ys0, tiers(best_y), strict=True)]
    carry = (ys, tiers(lam), best_ys, before, c)
    ys, lam, best_ys, best, c = _descend_lanes(reach, rm, cap, cr, size, carry, k, n=n,
                                               steps=steps, lr=lr)  # fmt: skip
    go = (k > 0) | (before - best > rtol * jnp.abs(before))
    lam = jnp.moveaxis(jnp.stack(lam, 1), -1, 0)
    return (_from_lanes(ys), lam, _from_lanes(best_ys), best, c, k + n, go), go


def _sweep_batch_lanes(reach, rm, capacity, credit, size, y, prices):
    """:func:`_sweep_lanes` on a batch: ``((placement (N, W, T, B), prices (N, W, T)),
    improved (N,))`` (``prices`` in: the last pass's, replaced)."""
    ys, improved, prices = _sweep_lanes(*_to_lanes(reach, rm, capacity, credit, size, y))
    return (_from_lanes(ys), jnp.moveaxis(prices, -1, 0).transpose(0, 2, 1)), improved


def _cert_batch_lanes(reach, rm, capacity, credit, size, y, lam, c, prices=None, *, iters,
                      tol=None):  # fmt: skip
    """``dict(social_cost (N,), gap (N,))`` of placements ``y (N, W, T, B)``, ``gap`` by
    :func:`_certify_lanes` with ``iters`` dual steps from the multipliers ``lam (N, W, T)`` of
    step scale ``c (N,)`` (zeros and ones: a cold start), and the polish's LP ``prices (N, W,
    T)`` where it ran."""
    reach, rm, cap, cr, size, ys = _to_lanes(reach, rm, capacity, credit, size, y)
    tiers = lambda a: [jnp.moveaxis(a[:, :, i], 0, -1) for i in range(a.shape[2])]  # noqa: E731
    lmo = None if prices is None else tiers(prices)
    gap = _certify_lanes(reach, rm, cap, cr, size, ys, tiers(lam), c, iters, lmo, tol)
    return dict(social_cost=_sc_lanes(reach, rm, cr, ys), gap=gap)


#: XLA options for the descent on CPU: no YNNPACK library fusions. jaxlib 0.10's CPU backend
#: hands the reductions over blocks to YNNPACK, which is several times slower than XLA's own
#: loops at these shapes (measured: the 8 × 256 retraction 15 µs → 5 µs per instance).
_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def _compiler_options() -> dict | None:
    if jax.default_backend() != "cpu":
        return None
    try:  # an XLA that does not know the option rejects it
        jax.jit(lambda x: x + 1, compiler_options=_CPU_OPTIONS).lower(np.float32(0)).compile()
    except Exception:
        return None
    return _CPU_OPTIONS


@functools.cache
def _cpu_jit(fn, **static):
    """``fn`` jitted with :func:`_compiler_options`, ``static`` its static argument values."""
    return jax.jit(functools.partial(fn, **static), compiler_options=_compiler_options())


def _descent_batch(reach, rm, capacity, credit, size, y0, *, steps, lr):
    """Batched projected descent ``(N, ...)`` (:func:`_descent_batch_lanes`)."""
    f = _cpu_jit(_descent_batch_lanes, steps=steps, lr=lr)
    return f(reach, rm, capacity, credit, size, y0)


def _descent_round(*, n, steps, lr, rtol):
    """The jitted :func:`_descent_round_lanes` of these static values (one object per set)."""
    return _cpu_jit(_descent_round_lanes, n=n, steps=steps, lr=lr, rtol=rtol)


def _sweep_batch(reach, rm, capacity, credit, size, y, prices):
    """One pass of the polish on a batch (:func:`_sweep_batch_lanes`)."""
    return _cpu_jit(_sweep_batch_lanes)(reach, rm, capacity, credit, size, y, prices)


#: Dual steps when a placement is certified without the descent's multipliers to start from.
CERT_ITERS_COLD = 200


def _cert_batch(reach, rm, capacity, credit, size, y, lam=None, c=None, prices=None, *,
                tol=None):  # fmt: skip
    """``dict(social_cost, gap)`` of a batch of placements (:func:`_cert_batch_lanes`): warm
    from the descent's ``lam``, ``c`` (:data:`CERT_ITERS` dual steps), else cold
    (:data:`CERT_ITERS_COLD`); priced by the polish's ``prices`` where given (and then by the
    projection only in the lanes they leave above ``tol``, if given)."""
    iters = CERT_ITERS
    if lam is None:
        iters = CERT_ITERS_COLD
        lam = np.zeros(capacity.shape, y.dtype)
        c = np.ones(y.shape[:1], y.dtype)
    f = _cpu_jit(_cert_batch_lanes, iters=iters, tol=None if prices is None else tol)
    return f(reach, rm, capacity, credit, size, y, lam, c, prices)


@functools.partial(jax.jit, static_argnames=("tol", "max_rounds", "pool"))
def _eq_batch(reach, rm, capacity, credit, size, y0, *, tol, max_rounds, pool=False):
    f = lambda *a: _equilibrium_one(a[:5], a[5], tol=tol, max_rounds=max_rounds, pool=pool)  # noqa: E731
    return jax.vmap(f)(reach, rm, capacity, credit, size, y0)


_retract_batch = jax.jit(jax.vmap(_retract))


@jax.jit
def _costs_batch(reach, rm, credit, y):
    return jax.vmap(worker_costs_one)(reach, rm, credit, y)


@functools.partial(jax.jit, static_argnames=("pool",))
def _br_batch(reach, rm, capacity, credit, size, y, w, pool=False):
    return jax.vmap(lambda *a: _best_response_one(a[:5], a[5], a[6], pool))(
        reach, rm, capacity, credit, size, y, w
    )
