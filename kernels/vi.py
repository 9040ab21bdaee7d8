"""Equilibria of cost maps on a product of simplices: three best-response loops.

A *nonatomic game on parallel resources* is given by demands ``d (J,)``, an allowed-resource
mask ``(J, K)`` and a cost map ``F: x (J, K) ↦ c (J, K)``. A flow ``x`` is feasible when each
row lies on its simplex ``{x_j ≥ 0, Σ_k x_jk = d_j}``. It is an *equilibrium* (Wardrop) when
every row uses only resources of minimal cost, i.e. it solves the variational inequality
``⟨F(x*), y − x*⟩ ≥ 0`` for all feasible ``y``. Its *relative gap* is

    gap(x) = (Σ_jk x_jk c_jk − Σ_j d_j min_k c_jk) / Σ_jk x_jk c_jk  ≥ 0,

zero exactly at an equilibrium. Nothing here knows what the resources are.

Solvers (each solves one instance; callers ``vmap``):

* :func:`projection` — scaled projection dynamics (a diagonal projected-Newton step),

      x⁺ = P_s(x − α F(x)/s),   α halved when successive steps reverse, grown while they agree.

  ``s`` ≈ the diagonal of the Jacobian of ``F``, so ``α = 1`` is a Newton step per row and
  resource; the step control absorbs what the diagonal misses (several rows loading the same
  resource). It follows the best-response dynamics, so with a positive externality (several
  equilibria, some unstable) it settles in a stable one. The best point seen is returned.
  With ``separable=True`` (column ``k`` of ``F`` depends only on column ``k`` of ``x``, as on
  parallel resources) each iteration also tries an **active-set Newton step**:
  the Jacobian is ``K`` blocks ``B_k = ∂F[:, k]/∂x[:, k]`` of size ``J × J``, obtained with ``J``
  forward-mode products; on the support ``A`` of the projected point it solves

      c_jk + Σ_i B_k[j, i]·Δx_ik = μ_j  (jk ∈ A),   Δx_jk = 0  (jk ∉ A),   Σ_k Δx_jk = 0,

  by a Schur complement on the row multipliers ``μ`` (one ``J × J`` solve per resource and one for
  ``μ``), and keeps the Newton point when it has the smaller gap, in the endgame only (gap below
  ``newton_below``): Newton is attracted to unstable equilibria too. Once the support is
  identified this converges quadratically.
* :func:`extragradient` — Korpelevich's extragradient in a diagonal metric ``s`` with a
  self-adaptive step (Khobotov's rule)::

      y  = P_s(x − α F(x)/s),   accept if  α‖F(x) − F(y)‖_{1/s} ≤ ν‖x − y‖_s,
      x⁺ = P_s(x − α F(y)/s)     (else halve α and retry from x).

  It needs no potential and converges for monotone (and locally for pseudo-monotone) maps;
  ``s`` ≈ the diagonal of the Jacobian makes a unit step a Newton-like step per resource.
* :func:`frank_wolfe` — conditional gradient for maps that are the gradient of a convex
  potential ``Φ`` up to a positive weight per row (``∇Φ = w_j F_j``): all-or-nothing direction
  ``y_j = d_j e_{argmin F_j}``, exact line search by bisection on ``⟨∇Φ(x + α(y − x)), y − x⟩``.
* :func:`smoothed_response` — averaged best response ``x⁺ = x + β(R(x) − x)`` for a smooth
  response map ``R`` (e.g. a logit choice), with β grown after a step that lowers the residual
  ``‖R(x) − x‖₁ / Σd`` and halved after one that does not. The residual is its gap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from poa_jax.kernels import loop
from poa_jax.kernels.simplex import project_rows

__all__ = [
    "VIResult",
    "relative_gap",
    "projection",
    "extragradient",
    "frank_wolfe",
    "smoothed_response",
]

CostFn = Callable[[jax.Array], jax.Array]


class VIResult(NamedTuple):
    """One instance's solution."""

    x: jax.Array  # (J, K) flow, rows on their simplices
    gap: jax.Array  # () relative gap (or fixed-point residual) at x
    steps: jax.Array  # () int32 iterations taken
    status: jax.Array  # () int32, see kernels.loop


def _row_min(c: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.min(jnp.where(mask, c, jnp.inf), axis=-1)


def relative_gap(x: jax.Array, c: jax.Array, demand: jax.Array, mask: jax.Array) -> jax.Array:
    """Relative gap ``(Σ x·c − Σ_j d_j min_k c_jk) / Σ x·c`` (clipped at 0 against rounding)."""
    total = jnp.sum(jnp.where(mask, x * c, 0.0))
    best = jnp.sum(jnp.where(demand > 0, demand * _row_min(c, mask), 0.0))
    tiny = jnp.finfo(x.dtype).tiny
    return jnp.maximum(total - best, 0.0) / jnp.maximum(jnp.abs(total), tiny)


# --------------------------------------------------------------------------- projection


def _metric(s: jax.Array, mask: jax.Array) -> jax.Array:
    # A floor relative to the largest curvature keeps the metric positive definite where a
    # resource's cost is flat (a constant-latency link); such a resource then absorbs the slack
    # of its row in the projection, which is the exact Newton step for it.
    eps = jnp.finfo(s.dtype).eps
    floor = jnp.maximum(jnp.max(jnp.where(mask, s, 0.0)), 1.0) * eps**0.5
    return jnp.where(mask, jnp.maximum(s, floor), 1.0)


def _centred(c: jax.Array, x: jax.Array, demand: jax.Array, mask: jax.Array) -> jax.Array:
    """``c`` minus each row's flow-weighted mean cost (the row minimum where the row is empty).

    Projection onto a row's simplex is invariant to adding a constant to the row, so this
    changes nothing mathematically; numerically it keeps ``c/s`` small on a flat resource
    (tiny metric ``s``), whose flow is otherwise recovered from a difference of huge numbers.
    """
    tiny = jnp.finfo(c.dtype).tiny
    mean = jnp.sum(jnp.where(mask, x * c, 0.0), -1) / jnp.maximum(demand, tiny)
    ref = jnp.where(demand > 0, mean, _row_min(c, mask))
    return jnp.where(mask, c - ref[:, None], 0.0)


def _newton_point(cost_fn, x, c, demand, mask):
    """Active-set Newton point for a column-separable ``F`` (see module docstring)."""
    J, K = x.shape
    dtype = x.dtype
    # Column i of every block B_k at once: perturb row i on all resources together.
    tangents = jnp.broadcast_to(jnp.eye(J, dtype=dtype)[:, :, None], (J, J, K))
    jv = jax.vmap(lambda t: jax.jvp(cost_fn, (x,), (t,))[1])(tangents)  # (i, j, k) = B_k[j, i]
    B = jnp.transpose(jv, (2, 1, 0))  # (K, J, J): B[k, j, i]
    active = (x > 0) & mask  # (J, K)
    a = jnp.transpose(active).astype(dtype)  # (K, J)
    eye = jnp.eye(J, dtype=dtype)
    # Levenberg–Marquardt shift: without the cache term B_k = ℓ'_k·L Lᵀ has rank one (only the
    # worker's aggregate load is determined), so the plain Newton system is singular.
    diag = jnp.abs(jnp.diagonal(B, axis1=1, axis2=2))  # (K, J)
    lam = jnp.finfo(dtype).eps ** 0.5 * jnp.maximum(jnp.max(diag), jnp.finfo(dtype).tiny)
    # M_k = A (B_k + λI) A + (I − A): identity on inactive entries keeps their Δx at 0.
    M = a[:, :, None] * (B + lam * eye) * a[:, None, :] + eye * (1.0 - a)[:, :, None]
    Minv_A = jnp.linalg.solve(M, jnp.broadcast_to(eye, (K, J, J)) * a[:, None, :])  # (K, J, J)
    G = jnp.sum(Minv_A, axis=0)  # Σ_k M_k⁻¹ A_k
    rhs = jnp.einsum("kji,ik->j", Minv_A, c)  # Σ_k M_k⁻¹ A_k c_k
    empty = ~jnp.any(active, axis=-1)
    G = jnp.where(empty[:, None] | empty[None, :], eye, G)
    mu = jnp.linalg.solve(G, jnp.where(empty, 0.0, rhs))
    dx = jnp.einsum("kji,ik->jk", Minv_A, mu[:, None] - c)
    y = x + jnp.where(active, dx, 0.0)
    ok = jnp.all(jnp.isfinite(y))
    y = project_rows(jnp.where(ok, y, x), demand, None, mask)
    return y


class _PState(NamedTuple):
    x: jax.Array  # (J, K) current iterate
    c: jax.Array  # (J, K) F(x)
    alpha: jax.Array  # () step size
    step: jax.Array  # (J, K) previous projection step, for oscillation detection
    best_x: jax.Array  # (J, K) point of smallest gap seen
    best_gap: jax.Array  # () its gap


def projection(
    cost_fn: CostFn,
    scale_fn: CostFn,
    x0: jax.Array,
    demand: jax.Array,
    mask: jax.Array,
    *,
    tol: float,
    max_steps: int,
    alpha0: float = 1.0,
    alpha_min: float = 1e-3,
    alpha_max: float = 1.0,
    grow: float = 1.2,
    separable: bool = False,
    newton_below: float = 1e-3,
    gap_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
) -> VIResult:
    """Solves the VI of ``cost_fn`` by scaled projection dynamics (+ endgame Newton).

    Args:
      cost_fn: ``x (J, K) → c (J, K)``, finite for every feasible ``x``.
      scale_fn: ``x (J, K) → s (J, K)``, diagonal metric (≈ ∂c_jk/∂x_jk), floored to > 0.
      x0: start ``(J, K)`` (projected onto the feasible set first).
      demand: ``(J,)`` row totals ``d ≥ 0``.
      mask: ``(J, K)`` boolean, allowed resources.
      tol: stop when the gap is at most this.
      max_steps: iteration bound.
      alpha0, alpha_min, alpha_max: initial, smallest and largest step (1 = diagonal Newton).
      grow: step growth factor while successive steps agree in direction.
      separable: ``F``'s column ``k`` depends only on ``x[:, k]``; enables the Newton step.
      newton_below: the Newton point is considered only once the gap is below this.
      gap_fn: ``(x, F(x)) → ()`` convergence measure; defaults to :func:`relative_gap`.

    Returns:
      A :class:`VIResult` at the point of smallest gap seen.
    """
    dtype = x0.dtype
    if gap_fn is None:
        gap_fn = lambda x, c: relative_gap(x, c, demand, mask)

    def step(st: _PState):
        s = _metric(scale_fn(st.x), mask)
        c = _centred(st.c, st.x, demand, mask)
        y = project_rows(st.x - st.alpha * c / s, demand, s, mask)
        cy = cost_fn(y)
        gy = gap_fn(y, cy)
        if separable:
            z = _newton_point(cost_fn, y, _centred(cy, y, demand, mask), demand, mask)
            cz = cost_fn(z)
            gz = gap_fn(z, cz)
            # Newton is attracted to every equilibrium, unstable ones included, while the
            # projection step follows the best-response dynamics to stable ones: Newton is only
            # trusted in the endgame, once the dynamics have brought the gap down.
            better = jnp.isfinite(gz) & (gz < gy) & (gy < newton_below)
            y = jnp.where(better, z, y)
            cy = jnp.where(better, cz, cy)
            gy = jnp.where(better, gz, gy)
        # Step control by oscillation, not by the gap: escaping a saddle toward a stable
        # equilibrium can raise the gap for a while, and a gap test would stall there. Steps
        # that reverse direction (an overshoot) halve α; steps that agree grow it.
        dx = y - st.x
        inner = jnp.sum(s * dx * st.step)
        norm = jnp.sqrt(jnp.sum(s * dx**2) * jnp.sum(s * st.step**2))
        cos = inner / jnp.maximum(norm, jnp.finfo(dtype).tiny)
        alpha = jnp.where(cos < 0, st.alpha * 0.5, jnp.where(cos > 0.5, st.alpha * grow, st.alpha))
        alpha = jnp.clip(alpha, alpha_min, alpha_max)
        finite = jnp.isfinite(gy)
        improved = finite & (gy < st.best_gap)
        new = _PState(
            x=jnp.where(finite, y, st.x),
            c=jnp.where(finite, cy, st.c),
            alpha=jnp.where(finite, alpha, st.alpha * 0.5),
            step=jnp.where(finite, dx, 0.0),
            best_x=jnp.where(improved, y, st.best_x),
            best_gap=jnp.where(improved, gy, st.best_gap),
        )
        return new, new.best_gap

    x0 = project_rows(x0, demand, None, mask)
    c0 = cost_fn(x0)
    g0 = gap_fn(x0, c0)
    init = _PState(x0, c0, jnp.asarray(alpha0, dtype), jnp.zeros_like(x0), x0, g0)
    out = loop.iterate(step, init, tol=tol, max_steps=max_steps, error0=g0)
    return VIResult(out.state.best_x, out.error, out.steps, out.status)


# --------------------------------------------------------------------------- extragradient


class _EGState(NamedTuple):
    x: jax.Array  # (J, K) current iterate
    alpha: jax.Array  # () step size
    y: jax.Array  # (J, K) last trial point; its gap is the loop's error
    # The solution returned is the feasible point whose gap was measured last (y). Measuring
    # the gap at y reuses F(y), which extragradient needs anyway: one cost evaluation saved.


def extragradient(
    cost_fn: CostFn,
    scale_fn: CostFn,
    x0: jax.Array,
    demand: jax.Array,
    mask: jax.Array,
    *,
    tol: float,
    max_steps: int,
    alpha0: float = 0.5,
    alpha_max: float = 1.0,
    nu: float = 0.9,
    gap_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
) -> VIResult:
    """Solves the VI of ``cost_fn`` on the product of simplices by adaptive extragradient.

    Args:
      cost_fn: ``x (J, K) → c (J, K)``, finite for every feasible ``x``.
      scale_fn: ``x (J, K) → s (J, K)``, positive diagonal metric (≈ ∂c_jk/∂x_jk).
      x0: feasible start ``(J, K)``.
      demand: ``(J,)`` row totals ``d ≥ 0``.
      mask: ``(J, K)`` boolean, allowed resources (each row with demand has one).
      tol: stop when the relative gap is at most this.
      max_steps: iteration bound.
      alpha0, alpha_max: initial and largest step (unit step = diagonal Newton step).
      nu: Khobotov's acceptance constant in (0, 1).
      gap_fn: ``(x, F(x)) → ()`` convergence measure; defaults to :func:`relative_gap`.

    Returns:
      A :class:`VIResult`.
    """
    dtype = x0.dtype
    if gap_fn is None:
        gap_fn = lambda x, c: relative_gap(x, c, demand, mask)

    def step(st: _EGState):
        c = cost_fn(st.x)
        s = _metric(scale_fn(st.x), mask)
        y = project_rows(st.x - st.alpha * _centred(c, st.x, demand, mask) / s, demand, s, mask)
        cy = cost_fn(y)
        lhs = st.alpha * jnp.sqrt(jnp.sum(jnp.where(mask, (c - cy) ** 2 / s, 0.0)))
        rhs = nu * jnp.sqrt(jnp.sum(jnp.where(mask, s * (st.x - y) ** 2, 0.0)))
        ok = lhs <= rhs
        x_new = project_rows(
            st.x - st.alpha * _centred(cy, st.x, demand, mask) / s, demand, s, mask
        )
        x = jnp.where(ok, x_new, st.x)
        alpha = jnp.where(ok, jnp.minimum(st.alpha * 1.5, alpha_max), st.alpha * 0.5)
        # Keep alpha away from underflow; a stalled lane then ends at max_steps, reported.
        alpha = jnp.maximum(alpha, 1e-12)
        return _EGState(x, alpha, y), gap_fn(y, cy)

    x0 = project_rows(x0, demand, None, mask)
    gap0 = gap_fn(x0, cost_fn(x0))
    init = _EGState(x0, jnp.asarray(alpha0, dtype), x0)
    out = loop.iterate(step, init, tol=tol, max_steps=max_steps, error0=gap0)
    return VIResult(out.state.y, out.error, out.steps, out.status)


# --------------------------------------------------------------------------- Frank–Wolfe


def _all_or_nothing(c: jax.Array, demand: jax.Array, mask: jax.Array) -> jax.Array:
    k = jnp.argmin(jnp.where(mask, c, jnp.inf), axis=-1)
    return demand[:, None] * jax.nn.one_hot(k, c.shape[-1], dtype=c.dtype)


def frank_wolfe(
    cost_fn: CostFn,
    x0: jax.Array,
    demand: jax.Array,
    mask: jax.Array,
    *,
    row_weights: jax.Array | None = None,
    tol: float,
    max_steps: int,
    line_search_steps: int = 40,
) -> VIResult:
    """Frank–Wolfe with exact line search, for cost maps with a convex potential.

    The potential's gradient is ``row_weights[:, None] * cost_fn(x)`` (weights > 0); the line
    search finds the root of the convex potential's directional derivative on ``[0, 1]`` by
    ``line_search_steps`` bisections (relative precision 2^-steps).

    Args and Returns: as :func:`extragradient` (``row_weights (J,)`` defaults to ones).
    """
    dtype = x0.dtype
    w = jnp.ones_like(demand) if row_weights is None else row_weights.astype(dtype)

    def dphi(x, direction):
        return jnp.sum(jnp.where(mask, w[:, None] * cost_fn(x) * direction, 0.0))

    def step(x):
        c = cost_fn(x)
        direction = _all_or_nothing(c, demand, mask) - x

        def bisect(_, lohi):
            lo, hi = lohi
            mid = 0.5 * (lo + hi)
            neg = dphi(x + mid * direction, direction) < 0
            return jnp.where(neg, mid, lo), jnp.where(neg, hi, mid)

        full = dphi(x + direction, direction) <= 0
        lo, hi = jax.lax.fori_loop(
            0, line_search_steps, bisect, (jnp.zeros((), dtype), jnp.ones((), dtype))
        )
        a = jnp.where(full, 1.0, 0.5 * (lo + hi))
        x = x + a * direction
        return x, relative_gap(x, cost_fn(x), demand, mask)

    x0 = project_rows(x0, demand, None, mask)
    gap0 = relative_gap(x0, cost_fn(x0), demand, mask)
    out = loop.iterate(step, x0, tol=tol, max_steps=max_steps, error0=gap0)
    return VIResult(out.state, out.error, out.steps, out.status)


# --------------------------------------------------------------------------- smoothed response


class _SRState(NamedTuple):
    x: jax.Array  # (J, K) current point
    r: jax.Array  # (J, K) response R(x)
    beta: jax.Array  # () averaging weight
    res: jax.Array  # () residual at x


def _residual(x, r, demand):
    tiny = jnp.finfo(x.dtype).tiny
    return jnp.sum(jnp.abs(r - x)) / jnp.maximum(jnp.sum(demand), tiny)


def smoothed_response(
    response_fn: CostFn,
    x0: jax.Array,
    demand: jax.Array,
    mask: jax.Array,
    *,
    tol: float,
    max_steps: int,
    beta0: float = 0.5,
    beta_min: float = 1e-3,
) -> VIResult:
    """Fixed point ``x = R(x)`` of a smooth response map by adaptive averaging.

    Args:
      response_fn: ``x (J, K) → R(x) (J, K)``, each row on its simplex.
      x0, demand, mask, tol, max_steps: as :func:`extragradient`.
      beta0, beta_min: initial and smallest averaging weight.

    Returns:
      A :class:`VIResult` whose ``gap`` is the residual ``‖R(x) − x‖₁ / Σd``.
    """
    dtype = x0.dtype

    def step(st: _SRState):
        x = st.x + st.beta * (st.r - st.x)
        r = response_fn(x)
        res = _residual(x, r, demand)
        ok = (res <= st.res) | (st.beta <= beta_min)
        beta = jnp.where(ok, jnp.minimum(st.beta * 1.5, 1.0), jnp.maximum(st.beta * 0.5, beta_min))
        new = _SRState(
            jnp.where(ok, x, st.x), jnp.where(ok, r, st.r), beta, jnp.where(ok, res, st.res)
        )
        return new, new.res

    x0 = project_rows(x0, demand, None, mask)
    r0 = response_fn(x0)
    res0 = _residual(x0, r0, demand)
    init = _SRState(x0, r0, jnp.asarray(beta0, dtype), res0)
    out = loop.iterate(step, init, tol=tol, max_steps=max_steps, error0=res0)
    return VIResult(out.state.x, out.error, out.steps, out.status)
