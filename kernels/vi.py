"""Equilibria of cost maps on a product of simplices: three best-response loops.

A *nonatomic game on parallel resources* is given by demands ``d (J,)``, an allowed-resource
mask ``(J, K)`` and a cost map ``F: x (J, K) ↦ c (J, K)``. A flow ``x`` is feasible when each
row lies on its simplex ``{x_j ≥ 0, Σ_k x_jk = d_j}``. It is an *equilibrium* (Wardrop) when
every row uses only resources of minimal cost, i.e. it solves the variational inequality
``⟨F(x*), y − x*⟩ ≥ 0`` for all feasible ``y``. Its *relative gap* is

    gap(x) = (Σ_jk x_jk c_jk − Σ_j d_j min_k c_jk) / Σ_jk x_jk c_jk  ≥ 0,

zero exactly at an equilibrium. Nothing here knows what the resources are.

Solvers (each solves one instance; callers ``vmap``):

* :func:`projection` — scaled projection dynamics (a diagonal projected-Newton step), with
  optional heavy-ball momentum ``β`` restarted on every reversal,

      x⁺ = P_s(x − α F(x)/s + β_n (x − x⁻)),   β_n = β if the last two steps agreed
      (⟨Δ, Δ⁻⟩_s > 0), else 0;   α halved when successive steps reverse, grown while they agree.

  ``s`` ≈ the diagonal of the Jacobian of ``F``, so ``α = 1`` is a Newton step per row and
  resource; the step control absorbs what the diagonal misses (several rows loading the same
  resource). It follows the best-response dynamics, so with a positive externality (several
  equilibria, some unstable) it settles in a stable one. Momentum is for what the step control
  cannot fix: near an unstable equilibrium whose unstable direction is weak (restricted, scaled
  Jacobian with an eigenvalue ``−δ``, ``δ ~ 10⁻³``) plain dynamics escape by a factor ``1 + αδ``
  per step, hundreds of steps; heavy ball escapes at a rate of order ``√δ`` (the effect known
  for accelerated gradient methods at saddle points), and the restart keeps it from
  overshooting along the stiff directions. The best point seen is returned.
  With ``newton=True`` (for a column-separable ``F``: column ``k`` depends only on column ``k``
  of ``x``, as on parallel resources) each iteration also tries an **active-set Newton step**:
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
Each solver is a factory ``*_iteration(...)`` returning an :class:`Iteration` — a pair of pure
functions ``init(x0) → (state, error)`` and ``step(state) → (state, error)`` plus
``solution(state) → x`` (the optax ``GradientTransformation`` shape) — and a convenience
function that runs it with the bounded driver :func:`run`. The batch edge
(:mod:`poa_jax.batching`) drives the same pairs in fixed-length rounds and compacts unfinished
instances between rounds, so slow lanes do not hold a whole batch.

* :func:`smoothed_response` — averaged best response ``x⁺ = x + β(R(x) − x)`` for a smooth
  response map ``R`` (e.g. a logit choice), with β grown after a step that lowers the residual
  ``‖R(x) − x‖₁ / Σd`` and halved after one that does not. The residual is its gap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from poa_jax.kernels import loop
from poa_jax.kernels.linalg import solve_small
from poa_jax.kernels.simplex import project_rows

__all__ = [
    "Iteration",
    "VIResult",
    "relative_gap",
    "gap_resolution",
    "run",
    "projection",
    "projection_iteration",
    "extragradient",
    "extragradient_iteration",
    "frank_wolfe",
    "frank_wolfe_iteration",
    "smoothed_response",
    "smoothed_response_iteration",
]

CostFn = Callable[[jax.Array], jax.Array]


class Iteration(NamedTuple):
    """A solver as pure functions over a documented state (one instance)."""

    init: Callable[[jax.Array], tuple[Any, jax.Array]]  # x0 (J, K) → (state, error of x0)
    step: Callable[[Any], tuple[Any, jax.Array]]  # state → (state, error of new state)
    solution: Callable[[Any], jax.Array]  # state → flow (J, K) whose error was reported


class VIResult(NamedTuple):
    """One instance's solution."""

    x: jax.Array  # (J, K) flow, rows on their simplices
    gap: jax.Array  # () relative gap (or fixed-point residual) at x
    steps: jax.Array  # () int32 iterations taken
    status: jax.Array  # () int32, see kernels.loop


def _row_min(c: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.min(jnp.where(mask, c, jnp.inf), axis=-1)


def run(it: Iteration, x0: jax.Array, *, tol: float, max_steps: int) -> VIResult:
    """Runs an :class:`Iteration` from ``x0`` with :func:`poa_jax.kernels.loop.iterate`."""
    state, err0 = it.init(x0)
    out = loop.iterate(it.step, state, tol=tol, max_steps=max_steps, error0=err0)
    return VIResult(it.solution(out.state), out.error, out.steps, out.status)


def relative_gap(x: jax.Array, c: jax.Array, demand: jax.Array, mask: jax.Array) -> jax.Array:
    """Relative gap ``(Σ x·c − Σ_j d_j min_k c_jk) / Σ x·c`` (clipped at 0 against rounding)."""
    total = jnp.sum(jnp.where(mask, x * c, 0.0))
    best = jnp.sum(jnp.where(demand > 0, demand * _row_min(c, mask), 0.0))
    tiny = jnp.finfo(x.dtype).tiny
    return jnp.maximum(total - best, 0.0) / jnp.maximum(jnp.abs(total), tiny)


def gap_resolution(
    x: jax.Array, c: jax.Array, demand: jax.Array, mask: jax.Array, denominator=None
) -> jax.Array:
    """The smallest relative gap the dtype can certify at ``x``:
    ``eps·(Σ|x·c| + Σ_j d_j |min_k c_jk|) / |den|`` (``den = Σ x·c`` unless given).

    The gap subtracts two rounded sums, so below about ``eps`` times their size it is rounding,
    not a distance to equilibrium (float32: a true gap of 2.8× a tolerance of 1e-7 read as 0).
    Solvers report ``max(gap, gap_resolution)`` at the end, never a gap finer than that.
    """
    total = jnp.sum(jnp.where(mask, x * c, 0.0))
    den = jnp.abs(total) if denominator is None else jnp.abs(denominator)
    size = jnp.sum(jnp.where(mask, jnp.abs(x * c), 0.0))
    size = size + jnp.sum(jnp.where(demand > 0, demand * jnp.abs(_row_min(c, mask)), 0.0))
    return jnp.finfo(x.dtype).eps * size / jnp.maximum(den, jnp.finfo(x.dtype).tiny)


# --------------------------------------------------------------------------- projection


def diagonal_metric(s: jax.Array, mask: jax.Array) -> jax.Array:
    """The step metric: ``s`` clipped to ``[√eps·S, S]`` where ``mask``, 1 elsewhere; ``S`` is
    the largest finite ``s`` over the mask (1 where none is positive)."""
    # A floor relative to the largest curvature keeps the metric positive definite where a
    # resource's cost is flat (a constant-latency link); such a resource then absorbs the slack
    # of its row in the projection, which is the exact Newton step for it.
    # The floor is relative, so the iteration does not depend on the cost units (costs × κ
    # scale s by κ and leave x − αF/s unchanged); 1 stands in only where every s is 0.
    # An infinite (overflowed) curvature stands in as S, the stiffest finite one: taken as is,
    # it would pin its entry (a zero step and an infinite projection weight), and as the
    # floor's reference it made every step zero (the instance ran out of iterations). A NaN
    # curvature stays NaN: its steps are rejected and the instance is reported unconverged.
    eps = jnp.finfo(s.dtype).eps
    smax = jnp.max(jnp.where(mask & (s < jnp.inf), s, 0.0))
    top = jnp.where(smax > 0, smax, 1.0)
    floor = top * eps**0.5
    return jnp.where(mask, jnp.minimum(jnp.maximum(s, floor), top), 1.0)


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
    # Over the existing resources only: a masked (padding) column's slope, whatever its
    # parameters, set the shift, and a game padded with a steep worker took other iterations.
    diag = jnp.where(jnp.transpose(mask), jnp.abs(jnp.diagonal(B, axis1=1, axis2=2)), 0.0)
    lam = jnp.finfo(dtype).eps ** 0.5 * jnp.maximum(jnp.max(diag), jnp.finfo(dtype).tiny)
    # M_k = A (B_k + λI) A + (I − A): identity on inactive entries keeps their Δx at 0.
    # (A·(B + λI)·A by selection, not products: 0·∞ is NaN where an inactive slope overflows.)
    both = (a[:, :, None] * a[:, None, :]) > 0
    M = jnp.where(both, B + lam * eye[None], 0.0) + eye[None] * (1.0 - a)[:, :, None]
    Minv_A = jax.vmap(solve_small)(M, jnp.broadcast_to(eye, (K, J, J)) * a[:, None, :])
    G = jnp.sum(Minv_A, axis=0)  # Σ_k M_k⁻¹ A_k
    rhs = jnp.einsum("kji,ik->j", Minv_A, c)  # Σ_k M_k⁻¹ A_k c_k
    empty = ~jnp.any(active, axis=-1)
    G = jnp.where(empty[:, None] | empty[None, :], eye, G)
    mu = solve_small(G, jnp.where(empty, 0.0, rhs)[:, None])[:, 0]
    dx = jnp.einsum("kji,ik->jk", Minv_A, mu[:, None] - c)
    y = x + jnp.where(active, dx, 0.0)
    ok = jnp.all(jnp.isfinite(y))
    y = project_rows(jnp.where(ok, y, x), demand, None, mask)
    return y


class _PState(NamedTuple):
    x: jax.Array  # (J, K) current iterate
    c: jax.Array  # (J, K) F(x)
    s: jax.Array  # (J, K) metric at x (evaluated with F(x), so common terms are computed once)
    alpha: jax.Array  # () step size
    step: jax.Array  # (J, K) previous projection step, for oscillation detection
    best_x: jax.Array  # (J, K) point of smallest gap seen
    best_gap: jax.Array  # () its gap
    momentum: jax.Array  # () heavy-ball coefficient of the next step (0 after a reversal)


def projection_iteration(
    cost_fn: CostFn,
    scale_fn: CostFn,
    demand: jax.Array,
    mask: jax.Array,
    *,
    alpha0: float = 1.0,
    alpha_min: float = 1e-3,
    alpha_max: float = 1.0,
    grow: float = 1.2,
    newton: bool = False,
    newton_below: float = 1e-3,
    gap_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    momentum: float = 0.0,
) -> Iteration:
    """Scaled projection dynamics (+ heavy ball, + endgame Newton) for the VI of ``cost_fn``.

    Args:
      cost_fn: ``x (J, K) → c (J, K)``, finite for every feasible ``x``.
      scale_fn: ``x (J, K) → s (J, K)``, diagonal metric (≈ ∂c_jk/∂x_jk), floored to > 0.
      demand: ``(J,)`` row totals ``d ≥ 0``.
      mask: ``(J, K)`` boolean, allowed resources.
      alpha0, alpha_min, alpha_max: initial, smallest and largest step (1 = diagonal Newton).
      grow: step growth factor while successive steps agree in direction.
      newton: try the active-set Newton step each iteration; needs a column-separable ``F``
        (column ``k`` depends only on ``x[:, k]``).
      newton_below: the Newton point is considered only once the gap is below this.
      gap_fn: ``(x, F(x)) → ()`` convergence measure; defaults to :func:`relative_gap`.
      momentum: heavy-ball coefficient ``β ∈ [0, 1)`` (module docstring); 0 is the plain
        dynamics, bit for bit.

    Returns:
      An :class:`Iteration` whose solution is the point of smallest gap seen.
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum = {momentum!r}: must be in [0, 1)")
    if gap_fn is None:
        gap_fn = lambda x, c: relative_gap(x, c, demand, mask)

    def step(st: _PState):
        s = st.s
        c = _centred(st.c, st.x, demand, mask)
        z = st.x - st.alpha * c / s
        if momentum:
            z = z + st.momentum * st.step
        y = project_rows(z, demand, s, mask)
        cy = cost_fn(y)
        gy = gap_fn(y, cy)
        if newton:
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
        # √a·√b, not √(a·b): the product of two norms² underflows in float32 when costs are
        # small (both scale with the cost unit).
        norm = jnp.sqrt(jnp.sum(s * dx**2)) * jnp.sqrt(jnp.sum(s * st.step**2))
        cos = inner / jnp.maximum(norm, jnp.finfo(norm.dtype).tiny)
        alpha = jnp.where(cos < 0, st.alpha * 0.5, jnp.where(cos > 0.5, st.alpha * grow, st.alpha))
        alpha = jnp.clip(alpha, alpha_min, alpha_max)
        finite = jnp.isfinite(gy)
        improved = finite & (gy < st.best_gap)
        beta = jnp.where(finite & (cos > 0), momentum, 0.0).astype(st.momentum.dtype)
        new = _PState(
            x=jnp.where(finite, y, st.x),
            c=jnp.where(finite, cy, st.c),
            s=jnp.where(finite, diagonal_metric(scale_fn(y), mask), st.s),
            alpha=jnp.where(finite, alpha, st.alpha * 0.5),
            step=jnp.where(finite, dx, 0.0),
            best_x=jnp.where(improved, y, st.best_x),
            best_gap=jnp.where(improved, gy, st.best_gap),
            momentum=beta,
        )
        return new, new.best_gap

    def init(x0):
        x0 = project_rows(x0, demand, None, mask)
        c0 = cost_fn(x0)
        g0 = gap_fn(x0, c0)
        alpha = jnp.asarray(alpha0, x0.dtype)
        s0 = diagonal_metric(scale_fn(x0), mask)
        zero = jnp.zeros((), x0.dtype)
        return _PState(x0, c0, s0, alpha, jnp.zeros_like(x0), x0, g0, zero), g0

    return Iteration(init, step, lambda st: st.best_x)


def projection(cost_fn, scale_fn, x0, demand, mask, *, tol: float, max_steps: int, **options):
    """Runs :func:`projection_iteration` from ``x0 (J, K)``; returns a :class:`VIResult`."""
    it = projection_iteration(cost_fn, scale_fn, demand, mask, **options)
    return run(it, x0, tol=tol, max_steps=max_steps)


# --------------------------------------------------------------------------- extragradient


class _EGState(NamedTuple):
    x: jax.Array  # (J, K) current iterate
    alpha: jax.Array  # () step size
    y: jax.Array  # (J, K) last trial point; its gap is the loop's error
    # The solution returned is the feasible point whose gap was measured last (y). Measuring
    # the gap at y reuses F(y), which extragradient needs anyway: one cost evaluation saved.


def extragradient_iteration(
    cost_fn: CostFn,
    scale_fn: CostFn,
    demand: jax.Array,
    mask: jax.Array,
    *,
    alpha0: float = 0.5,
    alpha_max: float = 1.0,
    nu: float = 0.9,
    gap_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
) -> Iteration:
    """Adaptive extragradient for the VI of ``cost_fn`` on the product of simplices.

    Args:
      cost_fn: ``x (J, K) → c (J, K)``, finite for every feasible ``x``.
      scale_fn: ``x (J, K) → s (J, K)``, positive diagonal metric (≈ ∂c_jk/∂x_jk).
      demand: ``(J,)`` row totals ``d ≥ 0``.
      mask: ``(J, K)`` boolean, allowed resources (each row with demand has one).
      alpha0, alpha_max: initial and largest step (unit step = diagonal Newton step).
      nu: Khobotov's acceptance constant in (0, 1).
      gap_fn: ``(x, F(x)) → ()`` convergence measure; defaults to :func:`relative_gap`.

    Returns:
      An :class:`Iteration`.
    """
    if gap_fn is None:
        gap_fn = lambda x, c: relative_gap(x, c, demand, mask)

    def step(st: _EGState):
        c = cost_fn(st.x)
        s = diagonal_metric(scale_fn(st.x), mask)
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

    def init(x0):
        x0 = project_rows(x0, demand, None, mask)
        return _EGState(x0, jnp.asarray(alpha0, x0.dtype), x0), gap_fn(x0, cost_fn(x0))

    return Iteration(init, step, lambda st: st.y)


def extragradient(cost_fn, scale_fn, x0, demand, mask, *, tol: float, max_steps: int, **options):
    """Runs :func:`extragradient_iteration` from ``x0 (J, K)``; returns a :class:`VIResult`."""
    it = extragradient_iteration(cost_fn, scale_fn, demand, mask, **options)
    return run(it, x0, tol=tol, max_steps=max_steps)


# --------------------------------------------------------------------------- Frank–Wolfe


def _all_or_nothing(c: jax.Array, demand: jax.Array, mask: jax.Array) -> jax.Array:
    k = jnp.argmin(jnp.where(mask, c, jnp.inf), axis=-1)
    return demand[:, None] * jax.nn.one_hot(k, c.shape[-1], dtype=c.dtype)


def frank_wolfe_iteration(
    cost_fn: CostFn,
    demand: jax.Array,
    mask: jax.Array,
    *,
    row_weights: jax.Array | None = None,
    line_search_steps: int = 40,
) -> Iteration:
    """Frank–Wolfe with exact line search, for cost maps with a convex potential.

    The potential's gradient is ``row_weights[:, None] * cost_fn(x)`` (weights > 0); the line
    search finds the root of the convex potential's directional derivative on ``[0, 1]`` by
    ``line_search_steps`` bisections (relative precision 2^-steps).

    Args and Returns: as :func:`extragradient_iteration` (``row_weights (J,)`` defaults to
    ones).
    """
    w = jnp.ones_like(demand) if row_weights is None else row_weights.astype(demand.dtype)

    def dphi(x, direction):
        return jnp.sum(jnp.where(mask, w[:, None] * cost_fn(x) * direction, 0.0))

    def step(x):
        dtype = x.dtype
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

    def init(x0):
        x0 = project_rows(x0, demand, None, mask)
        return x0, relative_gap(x0, cost_fn(x0), demand, mask)

    return Iteration(init, step, lambda x: x)


def frank_wolfe(cost_fn, x0, demand, mask, *, tol: float, max_steps: int, **options):
    """Runs :func:`frank_wolfe_iteration` from ``x0 (J, K)``; returns a :class:`VIResult`."""
    return run(
        frank_wolfe_iteration(cost_fn, demand, mask, **options), x0, tol=tol, max_steps=max_steps
    )


# --------------------------------------------------------------------------- smoothed response


class _SRState(NamedTuple):
    x: jax.Array  # (J, K) current point
    r: jax.Array  # (J, K) response R(x)
    beta: jax.Array  # () averaging weight
    res: jax.Array  # () residual at x


def _residual(x, r, demand):
    tiny = jnp.finfo(x.dtype).tiny
    return jnp.sum(jnp.abs(r - x)) / jnp.maximum(jnp.sum(demand), tiny)


def smoothed_response_iteration(
    response_fn: CostFn,
    demand: jax.Array,
    mask: jax.Array,
    *,
    beta0: float = 0.5,
    beta_min: float = 1e-3,
) -> Iteration:
    """Fixed point ``x = R(x)`` of a smooth response map by adaptive averaging.

    Args:
      response_fn: ``x (J, K) → R(x) (J, K)``, each row on its simplex.
      demand, mask: as :func:`extragradient_iteration`.
      beta0, beta_min: initial and smallest averaging weight.

    Returns:
      An :class:`Iteration` whose error is the residual ``‖R(x) − x‖₁ / Σd``.
    """

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

    def init(x0):
        x0 = project_rows(x0, demand, None, mask)
        r0 = response_fn(x0)
        res0 = _residual(x0, r0, demand)
        return _SRState(x0, r0, jnp.asarray(beta0, x0.dtype), res0), res0

    return Iteration(init, step, lambda st: st.x)


def smoothed_response(response_fn, x0, demand, mask, *, tol: float, max_steps: int, **options):
    """Runs :func:`smoothed_response_iteration` from ``x0``; returns a :class:`VIResult`."""
    it = smoothed_response_iteration(response_fn, demand, mask, **options)
    return run(it, x0, tol=tol, max_steps=max_steps)
