r"""Routing ⇄ caching: the combined fixed point of Γ_R (DESIGN §2.2) and fluid Γ_KV (§2.3).

The routing game (classes ``j``, workers ``k``, flow ``x[j, k]``) and the fluid tiered caching
game (:mod:`poa_jax.tiered_cache`, one prefix block per class) see each other:

* **routing → caching.** The rate at which worker ``k`` requests class ``j``'s prefix is its
  routed flow, ``r[k, j] = x[j, k]``; a miss recomputes the shareable prefix, ``m[k, j] =
  η_j·L_j`` tokens (the unit of the uncached work ``W_k``), and the block occupies
  ``s_j = η_j·L_j`` tokens of tier capacity (``capacity`` is in tokens).
* **caching → routing.** At the caching equilibrium ``y`` the hit fraction of class ``j`` on
  worker ``k`` is its covered share of the shareable prefix,

      H[k, j] = 1 − (1 − own[k, j])·(1 − peer[k, j]),        h[j, k] = η_j·H[k, j],

  which replaces the routing game's own hit curve in its cache externality (DESIGN §2.2):
  ``W_k = Σ_j x[j,k]·L_j·(1 − h[j,k])``, ``c[j,k] = ℓ_k(W_k) + s_k(L_j(1 − h[j,k]))``,
  ``SC = Σ x·c``. Given ``h`` the routing stage is a congestion game solved by the projection
  dynamics of :mod:`poa_jax.kernels.vi` to the relative gap ``tol``.

**Fixed point** by alternating the two, damped on the hit fractions:

    x⁰ = routing equilibrium at H⁰ = 0;
    y^{k+1} = caching equilibrium at rates x^k (warm start y^k);
    H^{k+1} = (1 − θ)·H^k + θ·H(y^{k+1});
    x^{k+1} = routing equilibrium at H^{k+1} (warm start x^k);
    residual^{k+1} = max(‖H^{k+1} − H^k‖_∞, ‖x^{k+1} − x^k‖₁ / Σ_j d_j),

until ``residual ≤ outer_tol`` (per instance; converged instances stop changing) or
``max_outer`` rounds. The report says, per instance, rounds, residual, status and both stages'
final gaps.

**Caching switched off** (``caching=False``): the coupled game *is* the routing game, with its own
hit curve — :func:`solve` and :func:`price_of_anarchy` return exactly what
:func:`poa_jax.solve_equilibrium` and :func:`poa_jax.price_of_anarchy` return for ``routing``.

**PoA.** ``SC`` at the coupled fixed point over a coordinated optimum found by joint gradient
descent on the true ``SC(x, y)`` from the fixed point and ``optimum_starts`` generated starts
(the routing game's herding and random flows, with random placements; optax Adam on per-class
softmax logits for ``x``, projected gradient for ``y`` as in :mod:`poa_jax.tiered_kernels`); the
fixed point is itself a candidate, so ``PoA ≥ 1``.

**Stationarity of the optimum.** With ``g_x = ∇_x SC`` and ``g_y = −∇_y SC``, which the
placement reaches only through the own coverage and the held fraction, so that ``g_y[w, t, j]
= α[w, j]·v[w, t] + β[w, j]`` (:func:`_sc_split`), the Frank–Wolfe gap over the joint feasible
set is

    G = Σ_j (⟨g_x[j], x[j]⟩ − d_j·min_k g_x[j, k]) + Σ_w ⟨g_y[w], u_w − y_w⟩,

``u_w`` the exact maximiser of row ``w``'s linear gain over its placements (the tiered game's
greedy LP, :func:`poa_jax.tiered_kernels._social_lmo`). ``G / SC`` is the optimum's ``gap``;
it is 0 exactly at a first-order stationary point. The softmax descent stalls short of one
(its logit gradient vanishes with a worker's share, and in float32 its last steps wander at
rounding level), so the best start is refined in rounds — ``optimum_steps`` descent steps,
then :data:`FW_ITERS` polish steps: per class a pairwise step moving the flow whose move gains
most to first order onto the worker of least marginal cost, then a Frank–Wolfe step of the
placement toward ``u``, each of the longest length in ``1, 1/2, …, 2⁻³⁰`` at which SC still
falls — until ``gap ≤ optimum_tol`` (status 0), a round that lowers nothing or
``optimum_rounds`` (status 1). SC is not
convex: the optimum is a stationary point, PoA a lower estimate, and more starts raise it
(benchmarks/RESULTS.md).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from poa_jax import batching, tiered_cache, tiered_kernels
from poa_jax.caching import (
    _chunked,
    _integer,
    _seed,
    _starts,
    check_batch,
    check_bool,
    check_distance,
    check_tol,
    need_axis,
    read_real,
)
from poa_jax.errors import InputError
from poa_jax.game import RoutingGame
from poa_jax.kernels import loop, vi
from poa_jax.kernels.descent import softmax_flows
from poa_jax.validation import MAX_STARTS, check

__all__ = [
    "CoupledGame",
    "CoupledSolution",
    "CoupledPoAResult",
    "CoupledOptimum",
    "solve",
    "solve_optimum",
    "price_of_anarchy",
]

LANES = 256
#: The optimum's default tolerance on its relative Frank–Wolfe gap (:func:`_fw_step`).
OPT_TOL = {np.dtype(np.float64): 1e-6, np.dtype(np.float32): 1e-5}
#: Frank–Wolfe steps per round of the optimum's polish (:func:`_fw_polish_one`).
FW_ITERS = 20


@dataclasses.dataclass(frozen=True)
class CoupledGame:
    """A routing game whose cache externality comes from a fluid tiered caching game.

    Attributes:
      routing: a :class:`~poa_jax.RoutingGame` batch (``J`` classes, ``K`` workers).
      distance: ``(..., K, K)`` worker topology (finite, ≥ 0, zero diagonal, symmetric).
      capacity: ``(..., K, T)`` tier capacities in tokens, finite, ≥ 0.
      credit: ``(..., T)`` tier credits (default Dynamo's, see :mod:`poa_jax.tiered_cache`).
      peer_credit: credit of a peer's copy at distance 0 (default, None: 0.5).
      access_latency: ``(..., K, T)`` (or ``(T,)``), instead of ``credit``: the time to read a
        token of a cached prefix from worker ``k``'s tier ``t``, as a fraction of the time to
        recompute it (a miss costs its tokens, as here); the credits become
        ``max(0, 1 − ℓ[k, t])``, per worker, and ``distance`` is the transfer time per token in
        the same unit, a peer's copy saving ``max(0, 1 − D)`` (no ``peer_credit``).
      shared_capacity, shared_credit, shared_latency: a shared pool (tokens) that every worker
        reads, filled by a cooperative player, as in :class:`~poa_jax.TieredCacheGame`.
      caching: ``False`` switches the caching game off (the plain routing game).
      damping: ``θ ∈ (0, 1]`` on the hit fractions between rounds.
    """

    routing: RoutingGame
    distance: ArrayLike
    capacity: ArrayLike
    credit: ArrayLike | None = None
    peer_credit: float | None = None
    caching: bool = True
    damping: float = 0.5
    access_latency: ArrayLike | None = None
    shared_capacity: ArrayLike | None = None
    shared_credit: float | None = None
    shared_latency: ArrayLike | None = None

    def __post_init__(self):
        # Shape-only checks, at construction; the values are checked before solving.
        check_bool("CoupledGame.caching", self.caching)
        need_axis("CoupledGame.distance", self.distance, "worker", ndim=2)
        need_axis("CoupledGame.capacity", self.capacity, "tier", ndim=2)
        if isinstance(self.routing, RoutingGame):  # one prefix block per class
            need_axis("CoupledGame.routing.demand", self.routing.demand, "class (block)")


@dataclasses.dataclass(frozen=True)
class CoupledSolution:
    """The coupled fixed point; ``...`` the batch shape.

    Attributes:
      flows: ``(..., J, K)``; placement: ``(..., K, T, J)``; hit: ``(..., J, K)`` = ``η·H``.
      social_cost: ``(...)`` routing SC at (flows, hit).
      rounds: ``(...)`` alternation rounds until the residual met ``outer_tol``.
      residual: ``(...)`` last residual.
      status: ``(...)`` 0 converged, 1 out of rounds, 2 non-finite.
      converged: ``(...)`` bool.
      routing_gap, caching_gap: ``(...)`` relative gaps of the two stages at the end.
      shared: ``(..., J)`` the shared pool's holding of each class's prefix (None without one).
    """

    flows: np.ndarray
    placement: np.ndarray
    hit: np.ndarray
    social_cost: np.ndarray
    rounds: np.ndarray
    residual: np.ndarray
    status: np.ndarray
    converged: np.ndarray
    routing_gap: np.ndarray
    caching_gap: np.ndarray
    shared: np.ndarray | None = None


# --------------------------------------------------------------------------- one instance


def _route_cost(g: RoutingGame, h, x):
    n = g.tokens[:, None] * (1.0 - h)
    w = jnp.sum(x * n, axis=0)
    return g.latency.value(w)[None, :] + g.prefill.value(n)


def _route_sc(g, h, x):
    mask = jnp.broadcast_to(g.worker_mask[None, :], x.shape)
    return jnp.sum(jnp.where(mask, x * _route_cost(g, h, x), 0.0))


def _route_one(g: RoutingGame, h, x0, *, tol, max_iters):
    """Routing equilibrium with the hit fraction ``h (J, K)`` held fixed."""
    mask = jnp.broadcast_to(g.worker_mask[None, :], x0.shape)

    def scale(x):
        n = g.tokens[:, None] * (1.0 - h)
        return g.latency.derivative(jnp.sum(x * n, axis=0))[None, :] * n

    res = vi.projection(
        lambda x: _route_cost(g, h, x), scale, x0, g.demand, mask, tol=tol, max_steps=max_iters
    )
    return dict(flows=res.x, gap=res.gap, status=res.status, social_cost=_route_sc(g, h, res.x))


def _hit(c, y):
    """``H (K, J)`` at placement ``y (K, T, J)``: ``1 − (1 − own)(1 − peer)``."""
    reach, credit = c
    own = jnp.einsum("kt,ktj->kj", credit, y)
    return 1.0 - (1.0 - own) * (1.0 - tiered_kernels._peer(reach, y))


def _joint_opt_one(g, c, x0, y0, *, steps, lr):
    """Joint descent on ``SC(x, y)``: Adam on softmax logits of ``x``, projected SGD on ``y``."""
    reach, credit, capacity, size = c
    mask = jnp.broadcast_to(g.worker_mask[None, :], x0.shape)

    def sc_of(z, y):
        x = softmax_flows(z, g.demand, mask)
        h = g.shareable[:, None] * _hit((reach, credit), y)[: x0.shape[1]].T
        return _route_sc(g, h, x)

    scale = jnp.maximum(sc_of(jnp.log(jnp.maximum(x0, 1e-12)), y0), jnp.finfo(x0.dtype).tiny)
    vg = jax.value_and_grad(lambda z, y: sc_of(z, y) / scale, argnums=(0, 1))
    share = x0 / jnp.maximum(g.demand[:, None], jnp.finfo(x0.dtype).tiny)
    z0 = jnp.log(jnp.maximum(share, 1e-9))
    opt_z = optax.adam(lr)
    opt_y = optax.sgd(optax.cosine_decay_schedule(lr, steps, 0.02))

    def body(_, carry):
        z, sz, y, sy, lam, bz, by, best = carry
        val, (gz, gy) = vg(z, y)
        better = val < best
        bz, by, best = jnp.where(better, z, bz), jnp.where(better, y, by), jnp.minimum(val, best)
        gz = jnp.where(mask, gz, 0.0)
        uz, sz = opt_z.update(gz, sz, z)
        gy = gy / jnp.maximum(jnp.max(jnp.abs(gy)), jnp.finfo(gy.dtype).tiny)
        uy, sy = opt_y.update(gy, sy, y)
        y, lam = tiered_kernels._project(
            optax.apply_updates(y, uy), capacity, size, lam, tiered_kernels.PROJ_ITERS
        )
        return optax.apply_updates(z, uz), sz, y, sy, lam, bz, by, best

    lam0 = jnp.zeros(capacity.shape, x0.dtype)
    init = (z0, opt_z.init(z0), y0, opt_y.init(y0), lam0, z0, y0, sc_of(z0, y0) / scale)
    z, _, y, _, _, bz, by, best = jax.lax.fori_loop(0, steps, body, init)
    last = sc_of(z, y) / scale
    bz = jnp.where(last < best, z, bz)
    by = jnp.where(last < best, y, by)
    return dict(
        flows=softmax_flows(bz, g.demand, mask), placement=by,
        social_cost=jnp.minimum(best, last) * scale,
    )  # fmt: skip


def _sc_split(g, reach, x, own, held):
    """``SC`` from the flows and, per placement row and class, the own coverage ``own
    (K', J)`` and the held fraction ``held (K', J)`` that peers read (``Σ_t y``): the
    placement enters ``SC`` only through these two, so ``−∂SC/∂y[w, t, j] = α[w, j]·v[w, t] +
    β[w, j]`` with ``α = −∂SC/∂own``, ``β = −∂SC/∂held``."""
    f = jnp.maximum(1.0 - reach[:, :, None] * held[None], tiered_kernels._FLOOR)
    hit = 1.0 - (1.0 - own) * jnp.prod(f, axis=1)  # (K', J); the diagonal reach is 0
    return _route_sc(g, g.shareable[:, None] * hit[: x.shape[1]].T, x)


def _fw_step(g, c, x, y):
    r"""``(SC, s_x, u, G_x, G_y)`` at the joint point ``(x, y)``: the Frank–Wolfe vertices of
    both blocks and their gaps.

    ``s_x`` puts each class's demand on its worker of least marginal cost ``∂_{x[j,k]}SC``
    (over the workers present); ``G_x = ⟨∇_x SC, x − s_x⟩``. ``u`` is, per placement row
    ``w``, the exact maximiser of ``⟨g_w, ·⟩`` over its placements, ``g = −∇_y SC = α·v + β``
    (:func:`_sc_split`), by :func:`poa_jax.tiered_kernels._social_lmo` (the LP of the tiered
    game's polish, checked against linprog); ``G_y = ⟨g, u − y⟩``. Both maximise a linear
    function exactly over a product of polytopes, so ``G_x + G_y`` is the Frank–Wolfe gap over
    the joint feasible set: 0 exactly at a first-order stationary point (SC is not convex: a
    local optimum or a saddle).
    """
    reach, credit, capacity, size = c
    own = jnp.einsum("kt,ktj->kj", credit, y)
    held = jnp.sum(y, axis=1)
    sc, (gx, g_own, g_held) = jax.value_and_grad(
        lambda x_, o, h: _sc_split(g, reach, x_, o, h), argnums=(0, 1, 2)
    )(x, own, held)
    mask = jnp.broadcast_to(g.worker_mask[None, :], x.shape)
    best = jnp.argmin(jnp.where(mask, gx, jnp.inf), axis=1)  # (J,)
    s_x = g.demand[:, None] * (jnp.arange(x.shape[1])[None, :] == best[:, None])
    g_x = jnp.sum(jnp.where(mask, gx * (x - s_x), 0.0))
    alpha, beta = -g_own, -g_held  # (K', J)
    u, _ = tiered_kernels._social_lmo(
        alpha.T, beta.T, credit.T, capacity.T, jnp.broadcast_to(size[:, None], alpha.T.shape)
    )  # (T, J, K'): the rows as lanes
    u = jnp.transpose(u, (2, 0, 1))
    gy = alpha[:, None, :] * credit[:, :, None] + beta[:, None, :]  # (K', T, J)
    return sc, s_x, u, g_x, jnp.sum(gy * (u - y))


def _relative(excess, sc):
    return jnp.where(
        sc > 0, excess / jnp.where(sc > 0, sc, 1.0), jnp.where(excess > 0, jnp.inf, 0.0)
    )


def _optimum_gap_one(g, c, x, y):
    """Relative Frank–Wolfe gap ``(G_x + G_y) / SC`` of the joint point (:func:`_fw_step`)."""
    sc, _, _, g_x, g_y = _fw_step(g, c, x, y)
    return _relative(jnp.maximum(g_x, 0.0) + jnp.maximum(g_y, 0.0), sc)


#: Step lengths tried by the polish's line searches: 1, 1/2, …, 2⁻³⁰.
_GAMMAS = 2.0 ** -np.arange(31)


def _fw_polish_one(g, c, x, y, *, iters):
    """``iters`` polish steps, each of the longest length in :data:`_GAMMAS` where SC still
    falls (its slope along the step is < 0, and SC there is not above SC now):

    * flows, one class at a time, by a *pairwise* Frank–Wolfe step: the flow on the worker
      whose move gains most to first order (``x_k·(∂_k SC − min ∂SC)``) moves toward the
      worker of lowest marginal cost (a step toward the
      class's vertex would also drag the flows already balanced, and stall near saturation).
      It opens a worker that the descent's softmax has all but shut (its logit gradient
      vanishes with its share), which the descent cannot;
    * the placement by a Frank–Wolfe step toward its vertex ``u`` (:func:`_fw_step`).
    """
    reach, credit = c[0], c[1]
    n_j, n_k = x.shape
    mask = jnp.broadcast_to(g.worker_mask[None, :], x.shape)
    cols = jnp.arange(n_k)

    def sc_at(x_, y_):
        return _sc_split(g, reach, x_, jnp.einsum("kt,ktj->kj", credit, y_), jnp.sum(y_, axis=1))

    gam = jnp.asarray(_GAMMAS, x.dtype)

    def search(sc, make):
        # The longest step at which SC still falls, read from the slope φ'(t) (accurate in
        # float32 where differences of SC, near a stationary point, are lost to rounding) and
        # kept only where SC there is not above SC now.
        phi = lambda t: sc_at(*make(t))  # noqa: E731
        vals, slopes = jax.vmap(jax.value_and_grad(phi))(gam)
        ok = (slopes < 0) & (vals <= sc)
        i = jnp.argmax(ok)  # the longest (the steps fall)
        return jnp.where(ok[i], vals[i], sc), jnp.where(ok[i], gam[i], 0.0)

    def pairwise(jj, carry):
        x, y, sc = carry
        gx = jax.grad(sc_at)(x, y)[jj]
        row = x[jj]
        toward = jnp.argmin(jnp.where(mask[jj], gx, jnp.inf))
        # The flow whose move gains most to first order (not merely the dearest worker used:
        # a worker holding 1e-9 of the flow, which the softmax leaves, would stall it).
        away = jnp.argmax(jnp.where(mask[jj], row * (gx - gx[toward]), -jnp.inf))
        move = row[away] * ((cols == toward).astype(x.dtype) - (cols == away))
        d = jnp.zeros_like(x).at[jj].set(move)
        sc, t = search(sc, lambda t: (x + t * d, y))
        return x + t * d, y, sc

    def body(_, carry):
        x, y, sc = jax.lax.fori_loop(0, n_j, pairwise, carry)
        u = _fw_step(g, c, x, y)[2]
        sc, t = search(sc, lambda t: (x, y + t * (u - y)))
        return x, y + t * (u - y), sc

    x, y, sc = jax.lax.fori_loop(0, iters, body, (x, y, sc_at(x, y)))
    return dict(flows=x, placement=y, social_cost=sc, gap=_optimum_gap_one(g, c, x, y))


# --------------------------------------------------------------------------- batch edge


@jax.jit
def _gap_batch(g, reach, credit, capacity, size, x, y):
    f = lambda g, r, c, cap, s, x, y: _optimum_gap_one(g, (r, c, cap, s), x, y)  # noqa: E731
    return jax.vmap(f)(g, reach, credit, capacity, size, x, y)


@functools.partial(jax.jit, static_argnames=("iters",))
def _polish_batch(g, reach, credit, capacity, size, x, y, *, iters):
    f = lambda g, r, c, cap, s, x, y: _fw_polish_one(g, (r, c, cap, s), x, y, iters=iters)  # noqa: E731
    return jax.vmap(f)(g, reach, credit, capacity, size, x, y)


@functools.partial(jax.jit, static_argnames=("tol", "max_iters"))
def _route_batch(g, h, x0, *, tol, max_iters):
    return jax.vmap(functools.partial(_route_one, tol=tol, max_iters=max_iters))(g, h, x0)


@jax.jit
def _hit_batch(reach, credit, y):
    return jax.vmap(lambda r, c, yy: _hit((r, c), yy))(reach, credit, y)


@functools.partial(jax.jit, static_argnames=("steps", "lr"))
def _joint_batch(g, reach, credit, capacity, size, x0, y0, *, steps, lr):
    f = lambda g, r, c, cap, s, x, y: _joint_opt_one(g, (r, c, cap, s), x, y, steps=steps, lr=lr)  # noqa: E731
    return jax.vmap(f)(g, reach, credit, capacity, size, x0, y0)


@dataclasses.dataclass(frozen=True)
class _Prepared:
    route: batching.Prepared
    reach: np.ndarray  # (N, K, K)
    capacity: np.ndarray  # (N, K, T)
    credit: np.ndarray  # (N, K', T) per worker; K' = K + 1 with a shared pool (the last row)
    size: np.ndarray  # (N, J) tokens of each class's shareable prefix (floored > 0)
    miss: np.ndarray  # (N, J) tokens recomputed on a miss (η·L)
    pool: bool = False


def _prepare(game: CoupledGame, dtype=None) -> _Prepared:
    if not isinstance(game, CoupledGame):
        raise InputError(f"game: expected a CoupledGame, got {type(game).__name__}")
    route = batching.prepare(game.routing, None, dtype)
    check_batch("CoupledGame", route.batch_shape)
    n, k = route.game.demand.shape[0], route.num_workers
    d = read_real("CoupledGame.distance", game.distance)
    check_distance("CoupledGame.distance", d, True, hint=False)
    if d.shape[-1] != k:
        raise InputError(
            f"CoupledGame.distance has shape {d.shape}: must be (..., K, K) with K = {k} "
            "workers of the routing game"
        )
    cap = read_real("CoupledGame.capacity", game.capacity)
    check("CoupledGame.capacity", cap, "finite_ge0")
    if cap.ndim < 2 or cap.shape[-2] != k:
        raise InputError(f"CoupledGame.capacity has shape {cap.shape}: must be (..., {k}, T)")
    t = cap.shape[-1]
    if t < 1:
        raise InputError(f"CoupledGame.capacity has shape {cap.shape}: needs at least one tier")
    # The tiered game's checks, credits and peer reach, on a one-block stand-in whose miss
    # costs its size (so latencies and distances are fractions of the recompute time).
    stand_in = tiered_cache.TieredCacheGame(
        d, np.zeros((k, 1)), np.zeros((k, t)), credit=game.credit,
        peer_credit=game.peer_credit, access_latency=game.access_latency,
        shared_capacity=game.shared_capacity, shared_credit=game.shared_credit,
        shared_latency=game.shared_latency,
    )  # fmt: skip
    tp = tiered_cache._prepare(stand_in, route.dtype, owner="CoupledGame")
    theta = read_real("CoupledGame.damping", game.damping)
    if theta.ndim or not (0 < float(theta) <= 1):
        raise InputError(f"CoupledGame.damping = {game.damping!r}: must be a scalar in (0, 1]")
    batch = route.batch_shape
    try:
        shape = np.broadcast_shapes(batch, d.shape[:-2], cap.shape[:-2], tp.batch_shape)
    except ValueError:
        raise InputError("CoupledGame: distance/capacity batch axes do not match routing") from None
    if shape != batch:
        raise InputError(
            f"CoupledGame: distance {d.shape} / capacity {cap.shape} / credits "
            f"{tp.batch_shape + (k, t)} must broadcast to the routing game's batch shape {batch}"
        )
    dt = route.dtype
    per_batch = lambda a, tail: (  # noqa: E731
        np.broadcast_to(a.reshape(tp.batch_shape + tail), batch + tail).reshape((n,) + tail)
    )
    kk = tp.dims[0]  # k, or k + 1 with the pool
    reach = per_batch(tp.reach, (kk, kk)).astype(dt)
    capacity = np.broadcast_to(cap, batch + (k, t)).reshape(n, k, t)
    # A padded worker (worker_mask False) does not exist: it holds nothing. (Its capacity
    # would otherwise serve its peers in the joint optimum, whose SC then depends on padding.)
    capacity = np.where(np.asarray(route.game.worker_mask, bool)[:, :, None], capacity, 0.0)
    if tp.pool:
        capacity = np.concatenate([capacity, per_batch(tp.capacity, (kk, t))[:, k:]], 1)
    tokens = np.asarray(route.game.tokens, np.float64)
    eta = np.asarray(route.game.shareable, np.float64)
    miss = eta * tokens
    size = np.maximum(miss, 1e-9 * tokens)
    return _Prepared(
        route=route, reach=reach,
        capacity=capacity.astype(dt), credit=per_batch(tp.credit, (kk, t)).astype(dt),
        size=size.astype(dt), miss=miss.astype(dt), pool=tp.pool,
    )  # fmt: skip


def _uniform(route: batching.Prepared) -> np.ndarray:
    mask = np.asarray(route.game.worker_mask, np.float64)  # (N, K)
    share = mask / mask.sum(-1, keepdims=True)
    d = np.asarray(route.game.demand, np.float64)
    return (d[:, :, None] * share[:, None, :]).astype(route.dtype)


def solve(
    game: CoupledGame,
    *,
    tol: float | None = None,
    max_iters: int | None = None,
    outer_tol: float = 1e-6,
    max_outer: int = 50,
    caching_rounds: int = 200,
    dtype=None,
):
    """The coupled fixed point for every instance (see the module docstring).

    With ``game.caching`` False this returns :func:`poa_jax.solve_equilibrium` of the routing
    game unchanged (a :class:`~poa_jax.Solution`).

    Returns:
      A :class:`CoupledSolution`.
    """
    from poa_jax import solve as rsolve

    if not isinstance(game, CoupledGame):
        raise InputError(f"game: expected a CoupledGame, got {type(game).__name__}")
    if not game.caching:
        return rsolve.solve_equilibrium(game.routing, tol=tol, max_iters=max_iters, dtype=dtype)
    check_tol(tol)
    _check_positive("outer_tol", outer_tol)
    max_outer = _integer("max_outer", max_outer, 1)
    caching_rounds = _integer("caching_rounds", caching_rounds, 1)
    p = _prepare(game, dtype)
    tol, max_iters = rsolve._resolve(p.route.dtype, tol, max_iters)
    r = p.route
    g = r.game
    n, j, k = g.demand.shape[0], r.num_classes, r.num_workers
    t = p.capacity.shape[-1]
    dt = r.dtype
    theta = float(game.damping)
    eta = np.asarray(g.shareable, np.float64)
    total = np.maximum(np.asarray(g.demand, np.float64).sum(-1), np.finfo(float).tiny)

    def route(h, x0):
        out = _chunked(_route_batch, (g, h.astype(dt), x0), LANES, tol=tol, max_iters=max_iters)
        return out

    def tiered(x, y0):
        rm = (np.swapaxes(x, -1, -2) * p.miss[:, None, :]).astype(dt)  # (N, K, J)
        if p.pool:  # the pool requests nothing
            rm = np.concatenate([rm, np.zeros_like(rm[:, :1])], 1)
        args = (p.reach, rm, p.capacity, p.credit, p.size, y0.astype(dt))
        return _chunked(
            tiered_kernels._eq_batch, args, LANES, tol=tiered_cache.TOL[np.dtype(dt)],
            max_rounds=caching_rounds, pool=p.pool,
        )  # fmt: skip

    hit = np.zeros((n, j, k))
    rt = route(hit, _uniform(r))
    x = rt["flows"]
    kk = p.reach.shape[-1]
    y = np.zeros((n, kk, t, j), dt)
    rounds = np.zeros(n, np.int32)
    residual = np.full(n, np.inf)
    done = np.zeros(n, bool)
    cgap = np.zeros(n)
    for it in range(1, max_outer + 1):
        ct = tiered(x, y)
        y_new = ct["placement"]
        h_new = eta[:, :, None] * np.swapaxes(
            np.asarray(_hit_batch(p.reach, p.credit, y_new))[:, :k], 1, 2
        )
        h_next = (1 - theta) * hit + theta * h_new
        rt_new = route(h_next, x)
        x_new = rt_new["flows"]
        res = np.maximum(
            np.abs(h_next - hit).max((-1, -2)), np.abs(x_new - x).sum((-1, -2)) / total
        )
        keep = done  # converged instances stay where they converged
        hit = np.where(keep[:, None, None], hit, h_next)
        x = np.where(keep[:, None, None], x, x_new)
        y = np.where(keep[:, None, None, None], y, y_new)
        rt = {kk: np.where(keep.reshape((-1,) + (1,) * (v.ndim - 1)), rt[kk], v)
              for kk, v in rt_new.items()}  # fmt: skip
        cgap = np.where(keep, cgap, ct["gap"])
        residual = np.where(keep, residual, res)
        rounds = np.where(keep, rounds, it)
        # Converged: the alternation has settled *and* both stages met their own tolerances
        # (a routing stage out of iterations keeps its instance going, warm-started).
        stages = (rt_new["status"] == loop.CONVERGED) & (ct["status"] == loop.CONVERGED)
        done = done | ((res <= outer_tol) & stages)
        if done.all():
            break
    # non-finite: the alternation's residual, the cost or the routing stage (e.g. an overflow)
    finite = np.isfinite(residual) & np.isfinite(rt["social_cost"])
    finite &= rt["status"] != loop.NONFINITE
    status = np.where(
        finite, np.where(done, loop.CONVERGED, loop.MAX_ITERS), loop.NONFINITE
    ).astype(np.int32)
    sh = r.batch_shape
    return CoupledSolution(
        flows=x.reshape(sh + (j, k)),
        placement=y[:, :k].reshape(sh + (k, t, j)),
        shared=y[:, k, 0].reshape(sh + (j,)) if p.pool else None,
        hit=hit.reshape(sh + (j, k)),
        social_cost=rt["social_cost"].reshape(sh),
        rounds=rounds.reshape(sh),
        residual=residual.reshape(sh),
        status=status.reshape(sh),
        converged=(status == loop.CONVERGED).reshape(sh),
        routing_gap=rt["gap"].reshape(sh),
        caching_gap=cgap.reshape(sh),
    )


@dataclasses.dataclass(frozen=True)
class CoupledPoAResult:
    """PoA of the coupled game; ``...`` the batch shape.

    Attributes:
      poa: ``(...)`` SC(coupled fixed point) / SC(best joint point found), ≥ 1; NaN where
        either cost is not finite (status 2).
      price_of_stability: ``(...)`` equal to ``poa`` (one fixed point is computed).
      equilibrium: the :class:`CoupledSolution`.
      optimum_cost: ``(...)`` SC of the best joint (routing, placement) found.
      optimum_flows: ``(..., J, K)``; optimum_placement: ``(..., K, T, J)``; optimum_shared:
        ``(..., J)``, the shared pool's holding there (None without a pool).
      optimum_gap, optimum_status: ``(...)`` the optimum's relative Frank–Wolfe gap and
        status (:class:`CoupledOptimum`).
      converged: ``(...)`` the fixed point converged and the optimum is stationary
        (``optimum_gap ≤ optimum_tol``).
    """

    poa: np.ndarray
    price_of_stability: np.ndarray
    equilibrium: CoupledSolution
    optimum_cost: np.ndarray
    optimum_flows: np.ndarray
    optimum_placement: np.ndarray
    converged: np.ndarray
    optimum_shared: np.ndarray | None = None
    optimum_gap: np.ndarray | None = None
    optimum_status: np.ndarray | None = None

    @property
    def equilibrium_costs(self) -> np.ndarray:
        """``(..., 1)`` SC of the fixed point: the one equilibrium computed (the field every
        game's result has)."""
        return np.asarray(self.equilibrium.social_cost)[..., None]

    @property
    def equilibrium_count(self) -> np.ndarray:
        """``(...)`` ones: one fixed point is computed."""
        return np.ones(np.shape(self.poa), np.int64)


def price_of_anarchy(
    game: CoupledGame,
    *,
    tol: float | None = None,
    max_iters: int | None = None,
    outer_tol: float = 1e-6,
    max_outer: int = 50,
    optimum_steps: int = 300,
    lr: float = 0.05,
    dtype=None,
    optimum_starts: int = 4,
    seed: int = 0,
    optimum_tol: float | None = None,
    optimum_rounds: int = 40,
    **routing_kw,
):
    """PoA of the coupled game; with ``caching=False`` exactly :func:`poa_jax.price_of_anarchy`
    of the routing game (``routing_kw``, e.g. ``starts``, ``method``, and ``optimum_starts``,
    ``seed`` passed on). With caching on, the joint optimum descends from the fixed point and
    ``optimum_starts`` generated starts (seeded by ``seed``); ``routing_kw`` is then only
    checked: ``starts`` (an integer >= 1), ``method`` (``auto`` or ``projection``, the routing
    stage's projection dynamics), ``descent_steps`` (an integer >= 0). The optimum is refined
    until its Frank–Wolfe gap is ≤ ``optimum_tol`` (default :data:`OPT_TOL`) or for
    ``optimum_rounds`` rounds (module docstring); ``converged`` needs both the fixed point and
    that."""
    from poa_jax import poa as rpoa

    if not isinstance(game, CoupledGame):
        raise InputError(f"game: expected a CoupledGame, got {type(game).__name__}")
    _check_starts(optimum_starts)
    if not game.caching:
        return rpoa.price_of_anarchy(
            game.routing, tol=tol, max_iters=max_iters, dtype=dtype,
            optimum_starts=optimum_starts, seed=seed, **routing_kw,
        )  # fmt: skip
    _check_routing_kw(routing_kw)
    _check_optimum(optimum_steps, lr, seed)
    _check_rounds(optimum_tol, optimum_rounds)
    eq = solve(game, tol=tol, max_iters=max_iters, outer_tol=outer_tol, max_outer=max_outer,
               dtype=dtype)  # fmt: skip
    opt = _joint_optimum(game, eq, optimum_steps, lr, dtype, optimum_starts, seed,
                         optimum_tol, optimum_rounds)  # fmt: skip
    sh = opt.social_cost.shape
    sc_eq = eq.social_cost.reshape(sh)
    poa = rpoa._ratio(sc_eq, opt.social_cost)  # NaN where a cost is not finite
    return CoupledPoAResult(
        poa=poa, price_of_stability=poa, equilibrium=eq, optimum_cost=opt.social_cost,
        optimum_flows=opt.flows, optimum_placement=opt.placement,
        converged=eq.converged & opt.converged, optimum_shared=opt.shared,
        optimum_gap=opt.gap, optimum_status=opt.status,
    )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class CoupledOptimum:
    """The best joint (routing, placement) found; ``...`` the batch shape.

    Attributes:
      flows: ``(..., J, K)``; placement: ``(..., K, T, J)``.
      social_cost: ``(...)`` routing SC there, never above the coupled fixed point's.
      gap: ``(...)`` its relative Frank–Wolfe gap over the joint feasible set
        (:func:`_fw_step`): 0 exactly at a first-order stationary point.
      status: ``(...)`` 0 stationary (``gap ≤ optimum_tol``), 1 out of rounds, 2 a non-finite
        cost; converged: ``status == 0``.
    """

    flows: np.ndarray
    placement: np.ndarray
    social_cost: np.ndarray
    shared: np.ndarray | None = None
    gap: np.ndarray | None = None
    status: np.ndarray | None = None
    converged: np.ndarray | None = None


def solve_optimum(
    game: CoupledGame,
    *,
    tol: float | None = None,
    max_iters: int | None = None,
    outer_tol: float = 1e-6,
    max_outer: int = 50,
    optimum_steps: int = 300,
    lr: float = 0.05,
    dtype=None,
    optimum_starts: int = 4,
    seed: int = 0,
    optimum_tol: float | None = None,
    optimum_rounds: int = 40,
) -> CoupledOptimum:
    """Joint descent on (routing, placement) from the coupled fixed point and
    ``optimum_starts`` generated starts (a local optimum: the social cost is not convex, and
    more starts find lower optima), never worse than that fixed point, refined until its
    Frank–Wolfe gap is ≤ ``optimum_tol`` or for ``optimum_rounds`` rounds (module docstring).

    With ``game.caching`` False this returns :func:`poa_jax.solve_optimum` of the routing game
    unchanged (a :class:`~poa_jax.Solution`), as :func:`solve` does for the equilibrium.
    """
    from poa_jax import solve as rsolve

    if not isinstance(game, CoupledGame):
        raise InputError(f"game: expected a CoupledGame, got {type(game).__name__}")
    _check_starts(optimum_starts)
    if not game.caching:
        return rsolve.solve_optimum(game.routing, tol=tol, max_iters=max_iters, dtype=dtype)
    _check_optimum(optimum_steps, lr, seed)
    _check_rounds(optimum_tol, optimum_rounds)
    eq = solve(game, tol=tol, max_iters=max_iters, outer_tol=outer_tol, max_outer=max_outer,
               dtype=dtype)  # fmt: skip
    return _joint_optimum(game, eq, optimum_steps, lr, dtype, optimum_starts, seed,
                          optimum_tol, optimum_rounds)  # fmt: skip


def _check_rounds(optimum_tol, optimum_rounds) -> None:
    if optimum_tol is not None:
        _check_positive("optimum_tol", optimum_tol)
    _integer("optimum_rounds", optimum_rounds, 0, 10_000)


def _check_starts(starts) -> None:
    _integer("optimum_starts", starts, 0, MAX_STARTS)


def _check_optimum(optimum_steps, lr, seed) -> tuple[int, int]:
    """The joint descent's options, checked before anything is solved: ``(steps, seed)``."""
    _check_positive("lr", lr)
    return _integer("optimum_steps", optimum_steps, 1), _seed(seed)


def _check_positive(name: str, v) -> None:
    number = isinstance(v, (int, float, np.integer, np.floating))
    if isinstance(v, (bool, np.bool_)) or not number or not (np.isfinite(v) and v > 0):
        raise InputError(f"{name} = {v!r}: must be finite and > 0")


def _check_routing_kw(kw: dict) -> None:
    """The routing game's PoA options, with caching on: checked, then unused (the routing
    stage is :mod:`poa_jax.kernels.vi`'s projection dynamics; one fixed point is computed)."""
    unknown = sorted(set(kw) - {"starts", "method", "descent_steps"})
    if unknown:
        raise InputError(
            f"{', '.join(unknown)}: not an option of the coupled game's price_of_anarchy"
        )
    if "starts" in kw:
        _starts(kw["starts"])
    if "descent_steps" in kw:
        _integer("descent_steps", kw["descent_steps"], 0)
    method = kw.get("method", "auto")
    if method not in ("auto", "projection"):
        raise InputError(
            f"method {method!r}: the coupled game's routing stage runs projection dynamics; "
            "must be 'auto' or 'projection'"
        )


def _joint_optimum(game: CoupledGame, eq: CoupledSolution, optimum_steps, lr, dtype,
                   starts: int = 0, seed: int = 0, optimum_tol=None,
                   optimum_rounds: int = 40):  # fmt: skip
    """Joint descent from the fixed point and ``starts`` generated starts (routing starts of
    :func:`poa_jax.solve.starting_flows` past the uniform one, with random placements); the
    best point over all of them and the fixed point itself; then, while its Frank–Wolfe gap
    exceeds ``optimum_tol``, up to ``optimum_rounds`` rounds of ``optimum_steps`` descent
    steps (kept where they lower SC) and :data:`FW_ITERS` polish steps
    (:func:`_fw_polish_one`, which never raise it); an instance whose round lowered nothing
    stops there."""
    from poa_jax.solve import starting_flows

    _check_starts(starts)
    optimum_steps, seed = _check_optimum(optimum_steps, lr, seed)
    _check_rounds(optimum_tol, optimum_rounds)
    p = _prepare(game, dtype)
    r = p.route
    n, j, k = r.game.demand.shape[0], r.num_classes, r.num_workers
    t = p.capacity.shape[-1]
    kk = p.reach.shape[-1]
    dt = r.dtype
    x0 = eq.flows.reshape(n, j, k).astype(dt)
    y0 = eq.placement.reshape(n, k, t, j).astype(dt)
    if p.pool:  # the pool's holding as one more row, in its only tier
        row = np.zeros((n, 1, t, j), dt)
        row[:, 0, 0] = eq.shared.reshape(n, j)
        y0 = np.concatenate([y0, row], 1)
    xs, ys = x0[:, None], y0[:, None]
    if starts:
        xr = starting_flows(r, int(starts) + 1, seed)[:, 1:].astype(dt)
        # Drawn from the seed alone and shared by every instance (as the routing starts): an
        # instance's optimum does not depend on the rest of the batch.
        yr = np.random.default_rng([seed, 0xC0]).random((int(starts), kk, t, j))
        yr = np.broadcast_to(yr, (n,) + yr.shape)
        rep = lambda a: np.repeat(a, int(starts), axis=0)  # noqa: E731
        yr = _chunked(
            tiered_kernels._retract_batch,
            (yr.reshape(-1, kk, t, j).astype(dt), rep(p.capacity), rep(p.size)), LANES,
        ).reshape(n, int(starts), kk, t, j)  # fmt: skip
        xs, ys = np.concatenate([xs, xr], 1), np.concatenate([ys, yr], 1)
    s = xs.shape[1]
    rep = lambda a: jax.tree_util.tree_map(lambda v: np.repeat(np.asarray(v), s, axis=0), a)  # noqa: E731
    out = _chunked(
        _joint_batch,
        (rep(r.game), rep(p.reach), rep(p.credit), rep(p.capacity), rep(p.size),
         xs.reshape((n * s,) + xs.shape[2:]), ys.reshape((n * s,) + ys.shape[2:])),
        LANES, steps=int(optimum_steps), lr=float(lr),
    )  # fmt: skip
    sc = out["social_cost"].reshape(n, s)
    i = np.argmin(sc, -1)
    rows = np.arange(n)
    o_sc = sc[rows, i]
    o_x = out["flows"].reshape((n, s) + out["flows"].shape[1:])[rows, i]
    o_y = out["placement"].reshape((n, s) + out["placement"].shape[1:])[rows, i]
    sh = r.batch_shape
    sc_eq = eq.social_cost.reshape(n)
    better = o_sc < sc_eq
    opt_sc = np.where(better, o_sc, sc_eq)
    opt_x = np.where(better[:, None, None], o_x, x0)
    opt_y = np.where(better[:, None, None, None], o_y, y0)
    tol = OPT_TOL[np.dtype(dt)] if optimum_tol is None else float(optimum_tol)
    # Later calls take subsets padded to the first call's size: no new compiles.
    size = max(1, min(LANES, 1 << max(n - 1, 0).bit_length()))

    def call(fn, idx, x, y, **kw):
        pad = np.resize(np.arange(idx.size), -(-idx.size // size) * size)
        tm = jax.tree_util.tree_map
        args = tm(lambda a: np.asarray(a)[idx][pad], (r.game, p.reach, p.credit, p.capacity,
                                                      p.size))  # fmt: skip
        out = _chunked(fn, (*args, x[pad], y[pad]), size, **kw)
        return tm(lambda o: np.asarray(o)[: idx.size], out)

    everyone = np.arange(n)
    gap = np.array(call(_gap_batch, everyone, opt_x, opt_y))
    stalled = np.zeros(n, bool)
    for _ in range(int(optimum_rounds)):
        act = np.flatnonzero(np.isfinite(opt_sc) & ~(gap <= tol) & ~stalled)
        if act.size == 0:
            break
        # The descent first (kept where it lowers SC), the polish last (it never raises SC,
        # and its end point is the stationary one: in float32 the descent's last steps
        # wander at rounding level around the optimum, with gaps ~1e-4).
        des = call(_joint_batch, act, opt_x[act], opt_y[act], steps=int(optimum_steps),
                   lr=float(lr))  # fmt: skip
        ok = des["social_cost"] < opt_sc[act]
        x1 = np.where(ok[:, None, None], des["flows"], opt_x[act])
        y1 = np.where(ok[:, None, None, None], des["placement"], opt_y[act])
        pol = call(_polish_batch, act, x1, y1, iters=FW_ITERS)
        # A round that lowers nothing would repeat itself (it is deterministic): in float32,
        # rounding hides what is left below a gap of ~1e-4 on some instances.
        stalled[act] = pol["social_cost"] >= opt_sc[act]
        opt_sc[act], opt_x[act], opt_y[act] = pol["social_cost"], pol["flows"], pol["placement"]
        gap[act] = pol["gap"]
    status = tiered_cache._optimum_status(opt_sc, gap, tol)
    return CoupledOptimum(
        flows=opt_x.reshape(sh + (j, k)),
        placement=opt_y[:, :k].reshape(sh + (k, t, j)),
        shared=opt_y[:, k, 0].reshape(sh + (j,)) if p.pool else None,
        social_cost=opt_sc.reshape(sh),
        gap=gap.reshape(sh),
        status=status.reshape(sh),
        converged=(status == 0).reshape(sh),
    )
