r"""Γ_KV, fluid form — KV-block placement over a tier hierarchy, selfish and coordinated.

Workers ``w = 1..W`` on a topology with distance ``D (W, W)``; private tiers ``t = 1..T``
(G1 HBM, G2 host DRAM, G3 local SSD, G4 networked storage) with capacity ``C[w, t] ≥ 0`` (in
block-size units) and credit ``v_t ∈ [0, 1]`` (Dynamo's KV-router credits: G1 1.0, G2 0.75,
G3 0.25; the G4 default is the shared credit 0.5); prefix blocks ``b = 1..B`` of size
``s_b > 0``, requested by worker ``w`` at rate ``r[w, b] ≥ 0``, each miss costing ``m[w, b] ≥ 0``
(the prefill time of the block's tokens). A placement is ``y[w, t, b] ∈ [0, 1]``, the fraction of
block ``b`` that ``w`` keeps in tier ``t``, feasible when

    Σ_t y[w, t, b] ≤ 1   (a block's pages are in one place),    Σ_b s_b·y[w, t, b] ≤ C[w, t].

Own credit and peer credit (fetching a peer's copy at the distance between them, valued at the
shared credit ``σ = peer_credit``, default 0.5, discounted by ``exp(−D)``):

    own[w, b]  = Σ_t v_t·y[w, t, b],         h[u, b] = Σ_t y[u, t, b],
    peer[w, b] = 1 − Π_{u ≠ w} (1 − σ·e^{−D[w, u]}·h[u, b]).

A request pays the recompute cost on the part neither its own tiers nor its peers cover,
discounted independently (the fluid model of "own tier first, then a peer, then recompute"):

    C_w(y) = Σ_b r[w, b]·m[w, b]·(1 − own[w, b])·(1 − peer[w, b]),        SC(y) = Σ_w C_w(y).

A block cached anywhere lowers what the others pay (``peer`` rises in ``h``): the positive
externality; a worker free-rides on blocks its neighbours hold.

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
The batched descent keeps the instances on the minor axis and the tiers as separate arrays
(:func:`_optimum_lanes`). Starts: every equilibrium found and a
uniform fill; the best point seen is kept,
and ``SC(opt) ≤ SC(eq)`` by construction. The optimum is a local one: ``poa`` is
SC(worst equilibrium found) / SC(best placement found), a lower bound on the true PoA over the
equilibria found, and exact only where the optimum is (tests compare with scipy).

Arrays: ``distance (..., W, W)``, ``rates (..., W, B)``, ``capacity (..., W, T)``,
``credit (..., T)``, ``miss_cost (..., W, B)`` (or ``(..., 1, B)``), ``size (..., B)``; leading
axes are batch axes and broadcast.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from poa_jax.caching import _dtype, check_distance
from poa_jax.errors import InputError
from poa_jax.kernels import loop
from poa_jax.kernels.capped import project_capped_columns
from poa_jax.kernels.simplex import project_simplex
from poa_jax.validation import as_array, check

__all__ = [
    "TieredCacheGame",
    "TieredPoAResult",
    "DYNAMO_CREDITS",
    "worker_costs",
    "social_cost",
    "best_response",
    "solve_equilibrium",
    "solve_optimum",
    "price_of_anarchy",
    "capacity_paradox",
]

#: Credits of G1 HBM, G2 host DRAM, G3 local SSD, G4 networked storage (the shared credit).
DYNAMO_CREDITS = (1.0, 0.75, 0.25, 0.5)
TOL = {np.dtype(np.float64): 1e-9, np.dtype(np.float32): 1e-5}
#: Factors ``1 − reach·h`` of the peer product are floored here (:func:`_peer` clips the same).
_FLOOR = 1e-12
LANES = 8  # instances per call: 256 -> 8 took the 256-instance optimum from 21.5 s to 17.4 s (CPU)
#: Instances per call of the optimum's descent, on the kernel's minor axis (see
#: :func:`_optimum_lanes`): measured on a 2-core CPU, float32, W, T, B = 8, 4, 256, 100 steps:
#: 16 → 106, 32 → 92, 64 → 74, 128 → 71 µs per instance and step (a loaded machine).
OPT_LANES = 64
#: Dual (diagonal Newton) steps of the projection per descent step, warm-started from the last
#: step's multipliers: 1 is enough for the descent to reach scipy's optima (tests) and costs a
#: third of 3.
PROJ_ITERS = 1


@dataclasses.dataclass(frozen=True)
class TieredCacheGame:
    """A (batch of) fluid tiered KV-cache game(s); see the module docstring.

    Attributes:
      distance: ``(..., W, W)`` finite, ≥ 0, zero diagonal, symmetric unless ``symmetric=False``.
      rates: ``(..., W, B)`` request rate per worker and block, finite, ≥ 0.
      capacity: ``(..., W, T)`` tier capacity in block-size units, finite, ≥ 0.
      credit: ``(..., T)`` hit credit per tier in [0, 1]; default :data:`DYNAMO_CREDITS`
        (its first ``T``).
      miss_cost: ``(..., W, B)`` recompute cost of a miss, finite, ≥ 0 (``(..., 1, B)`` or
        ``(B,)``: the same for every worker); default 1.
      size: ``(..., B)`` block size, finite, > 0; default 1.
      peer_credit: ``σ`` in [0, 1], credit of a peer's copy at distance 0; default 0.5.
      symmetric: whether ``distance`` must be symmetric.

    Example:
      >>> import numpy as np, poa_jax as pj
      >>> g = pj.TieredCacheGame(distance=np.zeros((2, 2)), rates=[[3.0, 1.0], [3.0, 1.0]],
      ...                        capacity=[[1.0], [1.0]])
      >>> r = pj.price_of_anarchy(g)
      >>> bool(r.poa >= 1.0), bool(r.converged)
      (True, True)
    """

    distance: ArrayLike
    rates: ArrayLike
    capacity: ArrayLike
    credit: ArrayLike | None = None
    miss_cost: ArrayLike = 1.0
    size: ArrayLike = 1.0
    peer_credit: float = 0.5
    symmetric: bool = True


@dataclasses.dataclass(frozen=True)
class _Prepared:
    reach: np.ndarray  # (N, W, W) σ·exp(−D), zero diagonal
    rm: np.ndarray  # (N, W, B) r·m
    capacity: np.ndarray  # (N, W, T)
    credit: np.ndarray  # (N, T)
    size: np.ndarray  # (N, B)
    batch_shape: tuple[int, ...]
    dims: tuple[int, int, int]  # W, T, B
    dtype: np.dtype


def _field(name, value, rule):
    a = as_array(f"TieredCacheGame.{name}", value)
    check(f"TieredCacheGame.{name}", a, rule)
    return a


def _prepare(game: TieredCacheGame, dtype=None) -> _Prepared:
    if not isinstance(game, TieredCacheGame):
        raise InputError(f"game: expected a TieredCacheGame, got {type(game).__name__}")
    dt = _dtype(dtype)
    d = as_array("TieredCacheGame.distance", game.distance)
    check_distance("TieredCacheGame.distance", d, bool(game.symmetric))
    w = d.shape[-1]
    rates = _field("rates", game.rates, "finite_ge0")
    if rates.ndim < 2 or rates.shape[-2] != w:
        raise InputError(
            f"TieredCacheGame.rates has shape {rates.shape}: must be (..., W, B) with W = {w} "
            f"workers (the distance matrix is {d.shape})"
        )
    b = rates.shape[-1]
    cap = _field("capacity", game.capacity, "finite_ge0")
    if cap.ndim < 2 or cap.shape[-2] != w:
        raise InputError(
            f"TieredCacheGame.capacity has shape {cap.shape}: must be (..., W, T) with W = {w}"
        )
    t = cap.shape[-1]
    if game.credit is None:
        if t > len(DYNAMO_CREDITS):
            raise InputError(f"TieredCacheGame.credit: needed for T = {t} > 4 tiers")
        credit = np.asarray(DYNAMO_CREDITS[:t])
    else:
        credit = _field("credit", game.credit, "unit")
    if credit.ndim < 1 or credit.shape[-1] != t:
        raise InputError(
            f"TieredCacheGame.credit has shape {credit.shape}: its last axis must be the {t} "
            f"tiers of capacity {cap.shape}"
        )
    miss = _field("miss_cost", game.miss_cost, "finite_ge0")
    if miss.ndim == 1:
        miss = miss[None, :]  # (B,): the same for every worker
    if miss.ndim and (
        miss.shape[-1] not in (1, b) or (miss.ndim >= 2 and miss.shape[-2] not in (1, w))
    ):
        raise InputError(
            f"TieredCacheGame.miss_cost has shape {miss.shape}: must be (..., W, B) = "
            f"(..., {w}, {b}), (..., 1, B) for one value per block, (B,) or a scalar"
        )
    size = _field("size", game.size, "finite_gt0")
    if size.ndim and size.shape[-1] not in (1, b):
        raise InputError(f"TieredCacheGame.size has shape {size.shape}: must end in B = {b}")
    sigma = _field("peer_credit", game.peer_credit, "unit")
    if sigma.ndim:
        raise InputError("TieredCacheGame.peer_credit: must be a scalar")
    try:
        shape = np.broadcast_shapes(
            d.shape[:-2], rates.shape[:-2], cap.shape[:-2], credit.shape[:-1],
            miss.shape[:-2] if miss.ndim >= 2 else (), size.shape[:-1] if size.ndim else (),
        )  # fmt: skip
    except ValueError:
        raise InputError("TieredCacheGame: the fields' batch axes do not broadcast") from None
    n = int(np.prod(shape, dtype=np.int64))

    def bc(a, tail):
        return np.broadcast_to(a, shape + tail).reshape((n,) + tail).astype(dt)

    reach = float(sigma) * np.exp(-d)
    reach = reach * (1.0 - np.eye(w))
    rm = np.broadcast_to(rates, shape + (w, b)) * np.broadcast_to(miss, shape + (w, b))
    return _Prepared(
        reach=bc(reach, (w, w)), rm=bc(rm, (w, b)), capacity=bc(cap, (w, t)),
        credit=bc(credit, (t,)), size=bc(size, (b,)), batch_shape=shape, dims=(w, t, b), dtype=dt,
    )  # fmt: skip


# --------------------------------------------------------------------------- one instance


def _peer(reach, y):
    """``peer[w, b] = 1 − Π_{u≠w}(1 − reach[w,u]·h[u,b])``, ``(W, B)``."""
    h = jnp.clip(jnp.sum(y, axis=1), 0.0, 1.0)  # (W, B)
    # log1p keeps the product accurate for many small factors.
    logs = jnp.log1p(-jnp.clip(reach[:, :, None] * h[None, :, :], 0.0, 1.0 - 1e-12))
    return -jnp.expm1(jnp.sum(logs, axis=1))


def worker_costs_one(reach, rm, credit, y):
    """``C_w(y)``, ``(W,)``, for one instance."""
    own = jnp.einsum("t,wtb->wb", credit, y)
    return jnp.sum(rm * (1.0 - own) * (1.0 - _peer(reach, y)), axis=1)


def _order_desc(x):
    """``argsort(−x)``, ties by index (stable), for ``x (B,)``.

    In float32 with 64-bit integers enabled this is one sort of packed integer keys (the
    order-preserving integer image of ``−x`` in the high 32 bits, the index in the low ones):
    XLA's CPU sort is about 5× faster on one integer operand than on the (float, index) pair of
    ``argsort`` (measured: 40 → 7.5 µs per 256-block row). The order is the same.
    """
    if x.dtype == jnp.float32 and jax.config.jax_enable_x64:
        neg = jnp.where(x == 0, 0.0, -x).astype(jnp.float32)  # −0.0 ties with +0.0
        bits = jax.lax.bitcast_convert_type(neg, jnp.int32)
        key = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # monotone: float order = integer order
        idx = jnp.arange(x.shape[-1], dtype=jnp.int64)
        packed = jax.lax.sort((key.astype(jnp.int64) << 32) | idx, is_stable=False)
        return (packed & 0xFFFFFFFF).astype(jnp.int32)
    return jnp.argsort(-x)


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


def _best_response_one(p, y, w):
    """Worker ``w``'s best response ``(T, B)`` and its cost at ``y``.

    ``gain[b] = rm[w, b]·Π_{u≠w}(1 − reach[w, u]·h[u, b])``: only worker ``w``'s row of the
    peer product is formed (``W·B`` work, not the ``W²·B`` of all rows).
    """
    reach, rm, capacity, credit, size = p
    h = jnp.clip(jnp.sum(y, axis=1), 0.0, 1.0)
    gain = rm[w] * _miss_share(reach[w][None], h)[0]
    br = _fill(gain, credit, capacity[w], size)
    cost_br = jnp.sum(gain * (1.0 - credit @ br))
    return br, cost_br


def _gap_one(p, y):
    """``(gap, SC)`` at ``y``: every worker's cost and best-response cost from one product."""
    reach, rm, capacity, credit, size = p
    h = jnp.clip(jnp.sum(y, axis=1), 0.0, 1.0)
    gain = rm * _miss_share(reach, h)  # (W, B)
    costs = jnp.sum(gain * (1.0 - jnp.einsum("t,wtb->wb", credit, y)), axis=1)
    best = jax.vmap(lambda g, c: jnp.sum(g * (1.0 - credit @ _fill(g, credit, c, size))))(
        gain, capacity
    )
    sc = jnp.sum(costs)
    tiny = jnp.finfo(y.dtype).tiny
    return jnp.maximum(jnp.sum(costs - best), 0.0) / jnp.maximum(sc, tiny), sc


def _equilibrium_one(p, y0, *, tol, max_rounds):
    w = y0.shape[0]

    def step(y):
        def visit(i, y):
            br, _ = _best_response_one(p, y, i)
            return y.at[i].set(br)

        y = jax.lax.fori_loop(0, w, visit, y)
        gap, _ = _gap_one(p, y)
        return y, gap

    gap0, _ = _gap_one(p, y0)
    res = loop.iterate(step, y0, tol=tol, max_steps=max_rounds, error0=gap0)
    gap, sc = _gap_one(p, res.state)
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
# ...)``, ``rm (W, B, ...)``, ``credit (T, ...)``, ``size (B, ...)``, and the capacity and the
# placement as lists over the tiers, ``cap[t] (W, ...)``, ``ys[t] (W, B, ...)``. A batched call
# puts the instances on the trailing (minor) axis, so every elementwise op and every sum over
# workers or blocks vectorises over instances, and no op slices the short tier axis (XLA's CPU
# emitters are several times slower on a strided slice than on a whole array).


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
    own = _add([credit[t][None, None] * y for t, y in enumerate(ys)])
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
    own = _add([credit[t][None, None] * y for t, y in enumerate(ys)])
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


def _optimum_lanes(reach, rm, cap, credit, size, ys0, *, steps, lr, proj_iters=PROJ_ITERS):
    """The projected-gradient optimum (module docstring) from ``ys0``; kernel layout above.

    Step ``k``: ``y ← Π(y − η_k·g/max|g|)`` with ``g = ∇SC(y)`` (:func:`_sc_grad_lanes`) and
    ``η_k`` optax's cosine-decay schedule (SGD on the max-norm-scaled gradient), ``Π`` by
    :func:`_project_tiers` with warm-started multipliers. The best point seen is kept. Returns
    ``(placement (tier list), SC (...))``.
    """
    dt = ys0[0].dtype
    ys0 = _retract_tiers(ys0, cap, size)
    sched = optax.cosine_decay_schedule(lr, steps, 0.02)
    vtop = jnp.max(credit, axis=0)
    smin2 = jnp.min(size, axis=0) ** 2
    tiny = jnp.finfo(dt).tiny

    def body(k, carry):
        ys, lam, best_ys, best = carry
        val, alpha, beta = _sc_grad_lanes(reach, rm, credit, ys)
        better = val < best
        best_ys = [jnp.where(better[None, None], y, b) for y, b in zip(ys, best_ys, strict=True)]
        best = jnp.where(better, val, best)
        # −η·g/max|g| = c·(α·v_t + β), c = η / max_{w,b}(α·max v + β)
        gmax = jnp.max(alpha * vtop[None, None] + beta, axis=(0, 1))
        c = (sched(k) / _smax(gmax, tiny)).astype(dt)[None, None]
        alpha, beta = alpha * c, beta * c
        zs = [y + (alpha * credit[t][None, None] + beta) for t, y in enumerate(ys)]
        ys, lam = _project_tiers(zs, cap, size, lam, proj_iters, smin2)
        return ys, lam, best_ys, best

    lam0 = [jnp.zeros_like(c) for c in cap]
    init = (ys0, lam0, ys0, _sc_lanes(reach, rm, credit, ys0))
    ys, _, best_ys, best = jax.lax.fori_loop(0, steps, body, init)
    last = _sc_lanes(reach, rm, credit, ys)
    keep = (last < best)[None, None]
    best_ys = [jnp.where(keep, y, b) for y, b in zip(ys, best_ys, strict=True)]
    return best_ys, jnp.minimum(best, last)


def _opt_batch_lanes(reach, rm, capacity, credit, size, y0, *, steps, lr):
    """:func:`_optimum_lanes` on a batch ``(N, ...)``: instances moved to the minor axis."""
    last = lambda a: jnp.moveaxis(a, 0, -1)  # noqa: E731
    t = y0.shape[2]
    ys0 = [last(y0[:, :, i]) for i in range(t)]
    cap = [last(capacity[:, :, i]) for i in range(t)]
    ys, sc = _optimum_lanes(last(reach), last(rm), cap, last(credit), last(size), ys0,
                            steps=steps, lr=lr)  # fmt: skip
    return dict(placement=jnp.moveaxis(jnp.stack(ys, axis=1), -1, 0), social_cost=sc)


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
def _opt_jit():
    return jax.jit(
        _opt_batch_lanes, static_argnames=("steps", "lr"), compiler_options=_compiler_options()
    )


def _opt_batch(reach, rm, capacity, credit, size, y0, *, steps, lr):
    """Batched optimum ``(N, ...)`` arrays → ``dict(placement (N, W, T, B), social_cost (N,))``."""
    return _opt_jit()(reach, rm, capacity, credit, size, y0, steps=steps, lr=lr)


def _pack(p: _Prepared):
    return (p.reach, p.rm, p.capacity, p.credit, p.size)


@functools.partial(jax.jit, static_argnames=("tol", "max_rounds"))
def _eq_batch(reach, rm, capacity, credit, size, y0, *, tol, max_rounds):
    f = lambda *a: _equilibrium_one(a[:5], a[5], tol=tol, max_rounds=max_rounds)  # noqa: E731
    return jax.vmap(f)(reach, rm, capacity, credit, size, y0)


_retract_batch = jax.jit(jax.vmap(_retract))


@jax.jit
def _costs_batch(reach, rm, credit, y):
    return jax.vmap(worker_costs_one)(reach, rm, credit, y)


@jax.jit
def _br_batch(reach, rm, capacity, credit, size, y, w):
    return jax.vmap(lambda *a: _best_response_one(a[:5], a[5], a[6]))(
        reach, rm, capacity, credit, size, y, w
    )


def _chunked(fn, arrays, chunk, **kw):
    from poa_jax.caching import _chunked as chunked

    return chunked(fn, arrays, chunk, **kw)


# --------------------------------------------------------------------------- public


def _placement(p: _Prepared, y, name="y") -> np.ndarray:
    w, t, b = p.dims
    a = np.asarray(y, np.float64)
    try:
        return np.broadcast_to(a, p.batch_shape + (w, t, b)).reshape(-1, w, t, b).astype(p.dtype)
    except ValueError:
        raise InputError(f"{name} has shape {a.shape}: must be (..., {w}, {t}, {b})") from None


def worker_costs(game: TieredCacheGame, y, dtype=None) -> np.ndarray:
    """``C_w(y)`` for placements ``y (..., W, T, B)``, ``(..., W)``."""
    p = _prepare(game, dtype)
    out = _costs_batch(p.reach, p.rm, p.credit, _placement(p, y))
    return np.asarray(out).reshape(p.batch_shape + (p.dims[0],))


def social_cost(game: TieredCacheGame, y, dtype=None) -> np.ndarray:
    """``SC(y)``, ``(...)``."""
    return worker_costs(game, y, dtype).sum(-1)


def best_response(game: TieredCacheGame, y, worker: int, dtype=None):
    """Worker ``worker``'s best response to ``y``: ``(placement (..., T, B), its cost (...))``."""
    p = _prepare(game, dtype)
    w = p.dims[0]
    if int(worker) != worker or not 0 <= worker < w:
        raise InputError(f"worker = {worker!r}: must be an integer in [0, {w})")
    yy = _placement(p, y)
    idx = np.full(yy.shape[0], int(worker), np.int32)
    br, cost = _br_batch(*_pack(p), yy, idx)
    return (np.asarray(br).reshape(p.batch_shape + br.shape[1:]),
            np.asarray(cost).reshape(p.batch_shape))  # fmt: skip


def _starts(p: _Prepared, starts: int, seed: int) -> np.ndarray:
    """``(N, S, W, T, B)``: start 0 empty, then random placements (retracted on device)."""
    n = p.rm.shape[0]
    w, t, b = p.dims
    rng = np.random.default_rng(seed)
    y = rng.random((n, starts, w, t, b)) * (rng.random((n, starts, 1, 1, 1)) < 1.0)
    y[:, 0] = 0.0
    return y.astype(p.dtype)


@dataclasses.dataclass(frozen=True)
class TieredSolution:
    """Placements and outcomes; ``...`` the batch shape.

    Attributes:
      placement: ``(..., W, T, B)``.
      social_cost: ``(...)``.
      gap: ``(...)`` relative best-response gap (equilibria; NaN for optima).
      rounds: ``(...)`` best-response rounds (equilibria) or descent steps (optima).
      status: ``(...)`` 0 converged, 1 out of rounds, 2 non-finite.
      converged: ``(...)`` bool.
    """

    placement: np.ndarray
    social_cost: np.ndarray
    gap: np.ndarray
    rounds: np.ndarray
    status: np.ndarray
    converged: np.ndarray


def solve_equilibrium(
    game: TieredCacheGame,
    *,
    starts: int = 4,
    seed: int = 0,
    tol: float | None = None,
    max_rounds: int = 200,
    y0=None,
    dtype=None,
    _all: bool = False,
):
    """Selfish equilibria by sequential best response from ``starts`` placements (batched).

    Returns the worst converged equilibrium per instance as a :class:`TieredSolution` (with
    ``_all``, the raw per-start dict ``(N, S, ...)`` for :func:`price_of_anarchy`).
    """
    p = _prepare(game, dtype)
    tol = TOL[p.dtype] if tol is None else float(tol)
    if not (np.isfinite(tol) and tol > 0):
        raise InputError(f"tol = {tol!r}: must be finite and > 0")
    if int(max_rounds) != max_rounds or max_rounds < 1:
        raise InputError(f"max_rounds = {max_rounds!r}: must be an integer >= 1")
    n = p.rm.shape[0]
    if y0 is not None:
        x = _placement(p, y0, "y0")[:, None]
    else:
        if int(starts) != starts or starts < 1:
            raise InputError(f"starts = {starts!r}: must be an integer >= 1")
        x = _starts(p, int(starts), seed)
    s = x.shape[1]
    rep = lambda a: np.repeat(a, s, axis=0)  # noqa: E731
    flat_y = x.reshape((n * s,) + x.shape[2:])
    args = tuple(rep(a) for a in _pack(p))
    flat_y = _chunked(_retract_batch, (flat_y, args[2], args[4]), LANES)
    out = _chunked(_eq_batch, args + (flat_y,), LANES, tol=tol, max_rounds=int(max_rounds))
    out = {k: v.reshape((n, s) + v.shape[1:]) for k, v in out.items()}
    if _all:
        return p, out
    return _pick(p, out, worst=True)


def _pick(p, out, worst: bool) -> TieredSolution:
    ok = out["status"] == loop.CONVERGED
    use = np.where(ok.any(-1, keepdims=True), ok, True)
    sc = out["social_cost"]
    i = (
        np.argmax(np.where(use, sc, -np.inf), -1)
        if worst
        else np.argmin(np.where(use, sc, np.inf), -1)
    )
    rows = np.arange(sc.shape[0])
    sh = p.batch_shape
    r = {k: v[rows, i] for k, v in out.items()}
    return TieredSolution(
        placement=r["placement"].reshape(sh + r["placement"].shape[1:]),
        social_cost=r["social_cost"].reshape(sh),
        gap=r["gap"].reshape(sh),
        rounds=r["rounds"].reshape(sh),
        status=r["status"].reshape(sh),
        converged=(r["status"] == loop.CONVERGED).reshape(sh),
    )


def solve_optimum(
    game: TieredCacheGame, *, y0=None, steps: int = 1500, lr: float = 0.2, dtype=None
) -> TieredSolution:
    """Coordinated placement by projected gradient descent with optax from ``y0`` (batched).

    ``y0 (..., S, W, T, B)`` or ``(..., W, T, B)``: starts (default: one empty placement and
    one uniform fill); the best point seen over all starts is kept.
    """
    p = _prepare(game, dtype)
    if int(steps) != steps or steps < 1:
        raise InputError(f"steps = {steps!r}: must be an integer >= 1")
    n = p.rm.shape[0]
    w, t, b = p.dims
    if y0 is None:
        x = np.stack([np.zeros((n, w, t, b)), np.full((n, w, t, b), 1.0 / t)], 1)
    else:
        x = np.asarray(y0, np.float64)
        if x.ndim == len(p.batch_shape) + 3:
            x = x[..., None, :, :, :]
        x = x.reshape(n, -1, w, t, b)
    x = x.astype(p.dtype)
    s = x.shape[1]
    rep = lambda a: np.repeat(a, s, axis=0)  # noqa: E731
    args = tuple(rep(a) for a in _pack(p))
    out = _chunked(_opt_batch, args + (x.reshape(n * s, w, t, b),), OPT_LANES,
                   steps=int(steps), lr=float(lr))  # fmt: skip
    sc = out["social_cost"].reshape(n, s)
    i = np.argmin(sc, -1)
    rows = np.arange(n)
    sh = p.batch_shape
    pl = out["placement"].reshape(n, s, w, t, b)[rows, i]
    return TieredSolution(
        placement=pl.reshape(sh + (w, t, b)),
        social_cost=sc[rows, i].reshape(sh),
        gap=np.full(sh, np.nan),
        rounds=np.full(sh, int(steps)),
        status=np.zeros(sh, np.int32),
        converged=np.ones(sh, bool),
    )


@dataclasses.dataclass(frozen=True)
class TieredPoAResult:
    """PoA of fluid tiered games; ``...`` the batch shape, ``S`` the equilibrium starts.

    Attributes:
      poa: ``(...)`` SC(worst equilibrium found) / SC(best placement found), ≥ 1.
      price_of_stability: ``(...)`` SC(best equilibrium found) / SC(best placement found).
      optimum_cost: ``(...)`` SC of the best placement found (an upper bound on SC(opt)).
      equilibrium_costs: ``(..., S)`` SC of every start's equilibrium, worst first, NaN where it
        did not converge.
      equilibrium: worst equilibrium (:class:`TieredSolution`); best_equilibrium; optimum.
      converged: ``(...)`` the worst equilibrium converged.
    """

    poa: np.ndarray
    price_of_stability: np.ndarray
    optimum_cost: np.ndarray
    equilibrium_costs: np.ndarray
    equilibrium: TieredSolution
    best_equilibrium: TieredSolution
    optimum: TieredSolution
    converged: np.ndarray


def price_of_anarchy(
    game: TieredCacheGame,
    *,
    starts: int = 4,
    seed: int = 0,
    tol: float | None = None,
    max_rounds: int = 200,
    optimum_steps: int = 1500,
    lr: float = 0.2,
    dtype=None,
) -> TieredPoAResult:
    """PoA and price of stability of every fluid tiered game in the batch.

    Equilibria from ``starts`` starts (:func:`solve_equilibrium`); the optimum by
    :func:`solve_optimum` warm-started from every equilibrium found plus a uniform fill, and
    never above the best equilibrium.
    """
    p, out = solve_equilibrium(game, starts=starts, seed=seed, tol=tol, max_rounds=max_rounds,
                               dtype=dtype, _all=True)  # fmt: skip
    worst, best = _pick(p, out, True), _pick(p, out, False)
    n, s = out["social_cost"].shape
    w, t, b = p.dims
    uni = np.full((n, 1, w, t, b), 1.0 / t, p.dtype)
    y0 = np.concatenate([out["placement"], uni], 1).reshape(p.batch_shape + (s + 1, w, t, b))
    opt = solve_optimum(game, y0=y0, steps=optimum_steps, lr=lr, dtype=dtype)
    lower = best.social_cost < opt.social_cost
    if np.any(lower):
        opt = dataclasses.replace(
            opt,
            placement=np.where(lower[..., None, None, None], best.placement, opt.placement),
            social_cost=np.where(lower, best.social_cost, opt.social_cost),
        )
    ok = out["status"] == loop.CONVERGED
    costs = np.where(ok, out["social_cost"], -np.inf)
    costs = -np.sort(-costs, axis=-1)
    costs = np.where(np.isinf(costs), np.nan, costs).reshape(p.batch_shape + (s,))
    with np.errstate(divide="ignore", invalid="ignore"):
        o = opt.social_cost
        poa = np.where(o > 0, worst.social_cost / np.where(o > 0, o, 1), 1.0)
        pos = np.where(o > 0, best.social_cost / np.where(o > 0, o, 1), 1.0)
    return TieredPoAResult(
        poa=poa, price_of_stability=pos, optimum_cost=opt.social_cost, equilibrium_costs=costs,
        equilibrium=worst, best_equilibrium=best, optimum=opt, converged=worst.converged,
    )  # fmt: skip


def capacity_paradox(
    game: TieredCacheGame,
    *,
    worker: int = 0,
    tier: int = 0,
    extra: float = 1.0,
    starts: int = 4,
    seed: int = 0,
    dtype=None,
) -> dict:
    """Does adding ``extra`` capacity to ``(worker, tier)`` raise the equilibrium SC? (batched)

    Equilibria from the same ``starts`` before and after; the worst and the best converged
    ones are compared. Returns ``(...)`` arrays ``worst_rise``, ``best_rise`` (> 0: a cache
    paradox) and the counts of instances where each is positive beyond ``1e-9`` relative.
    """
    p = _prepare(game, dtype)
    w, t, _ = p.dims
    if not (0 <= worker < w and 0 <= tier < t):
        raise InputError(f"(worker, tier) = ({worker}, {tier}): must index capacity (W={w}, T={t})")
    if not (np.isfinite(extra) and extra > 0):
        raise InputError(f"extra = {extra!r}: must be finite and > 0")
    cap = np.broadcast_to(np.asarray(game.capacity, np.float64), p.batch_shape + (w, t)).copy()
    cap[..., worker, tier] += extra
    more = dataclasses.replace(game, capacity=cap)
    before = [_pick(*solve_equilibrium(game, starts=starts, seed=seed, dtype=dtype, _all=True), k)
              for k in (True, False)]  # fmt: skip
    after = [_pick(*solve_equilibrium(more, starts=starts, seed=seed, dtype=dtype, _all=True), k)
             for k in (True, False)]  # fmt: skip
    rise_w = after[0].social_cost - before[0].social_cost
    rise_b = after[1].social_cost - before[1].social_cost
    tol = 1e-9 * np.maximum(before[1].social_cost, 1e-300)
    ok = before[0].converged & after[0].converged & before[1].converged & after[1].converged
    return dict(
        worst_rise=rise_w, best_rise=rise_b, converged=ok,
        worst_paradoxes=int(np.sum(ok & (rise_w > tol))),
        best_paradoxes=int(np.sum(ok & (rise_b > tol))), instances=int(np.prod(p.batch_shape)),
    )  # fmt: skip
