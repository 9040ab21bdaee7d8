r"""Gradient projection on *ragged* simplices: variables grouped into simplices of any size.

Variables ``x_p ≥ 0``, ``p = 0..P−1``, each in a group ``g(p)`` (``0..G−1``) with
``Σ_{p ∈ g} x_p = d_g``; groups have different sizes (OD pairs with different numbers of paths),
so instead of padding every group to the largest one they are stored flat, and every per-group
operation is a segment reduction — ``O(P)`` work, whatever the spread of group sizes.

Group reductions use a *member table* ``members (G, M)``: the variables of each group, padded
with ``P`` (a dummy). Reductions are then gathers plus a short reduction per group — on CPU
backends several times faster than scatter-based segment reductions.

For a cost map ``F: x ↦ c`` (``P,``) and a positive diagonal curvature ``s`` (``P,``) the
iteration is the scaled projection dynamics of :func:`poa_jax.kernels.vi.projection` on the
ragged simplices,

    x⁺ = P_s(x − α F(x)/s),     P_s(z)_p = max(0, z_p − θ_g/s_p),   Σ_{p∈g} x⁺_p = d_g,

with each group's threshold ``θ_g`` found by Michelot's support elimination (``θ = (Σ_S z − d)
/ Σ_S 1/s`` on the current support ``S``, drop the members that go negative, repeat) as group
sums — a fixed number of passes, then an exact rescale to the group total. Unlike Jayakrishnan
et al.'s gradient projection, which moves flow only onto one least-cost path per step, this
moves every path of a group at once: with several nearly tied paths GP's least-cost path flips
between iterations and its step collapses (measured: 2 383 iterations against 47 for
Frank–Wolfe on a 5-path instance). ``α`` is controlled by oscillation: halved when successive
steps reverse, grown while they agree. The relative gap

    gap(x) = (Σ_p x_p c_p − Σ_g d_g min_{p ∈ g} c_p) / Σ_p x_p c_p

is the error; the point of smallest gap seen is the solution. Everything acts on one
instance; callers ``vmap``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from poa_jax.kernels.vi import Iteration

__all__ = [
    "group_min",
    "group_sum",
    "relative_gap",
    "project_groups",
    "projection_iteration",
]

#: Support-elimination passes of the group projection (the support is exact after at most
#: the group size; the remainder is fixed by rescaling).
PASSES = 4


def group_sum(v: jax.Array, members: jax.Array) -> jax.Array:
    """``Σ_{p ∈ g} v_p`` per group, ``(G,)``; ``members (G, M)`` padded with ``len(v)``."""
    return jnp.sum(jnp.concatenate([v, jnp.zeros((1,), v.dtype)])[members], axis=-1)


def group_min(v: jax.Array, members: jax.Array) -> jax.Array:
    """``min_{p ∈ g} v_p`` per group, ``(G,)`` (``+inf`` for an empty group)."""
    return jnp.min(jnp.concatenate([v, jnp.full((1,), jnp.inf, v.dtype)])[members], axis=-1)


def relative_gap(x, c, demand, members, valid) -> jax.Array:
    """Relative gap on ragged simplices (``0`` exactly at an equilibrium)."""
    cmin = group_min(jnp.where(valid, c, jnp.inf), members)
    total = jnp.sum(jnp.where(valid, x * c, 0.0))
    best = jnp.sum(jnp.where(demand > 0, demand * cmin, 0.0))
    tiny = jnp.finfo(x.dtype).tiny
    return jnp.maximum(total - best, 0.0) / jnp.maximum(jnp.abs(total), tiny)


def project_groups(z, demand, s, group, members, valid, passes: int = PASSES) -> jax.Array:
    """``P_s(z)`` onto the ragged simplices (see the module docstring), ``(P,)``."""
    tiny = jnp.finfo(z.dtype).tiny
    inv = jnp.where(valid, 1.0 / s, 0.0)
    zm = jnp.where(valid, z, 0.0)

    def theta_on(support):
        num = group_sum(jnp.where(support, zm, 0.0), members) - demand
        den = group_sum(jnp.where(support, inv, 0.0), members)
        return num / jnp.maximum(den, tiny)

    support = valid
    # the member with the largest breakpoint never leaves the support
    brk = jnp.where(valid, z * s, -jnp.inf)
    top = brk >= group_max(brk, members)[group]
    for _ in range(passes):
        theta = theta_on(support)
        support = support & ((zm - theta[group] * inv > 0) | top)
    theta = theta_on(support)
    y = jnp.where(support, jnp.maximum(zm - theta[group] * inv, 0.0), 0.0)
    total = group_sum(y, members)
    scale = jnp.where(total > 0, demand / jnp.where(total > 0, total, 1.0), 0.0)
    return y * scale[group]


def group_max(v: jax.Array, members: jax.Array) -> jax.Array:
    """``max_{p ∈ g} v_p`` per group, ``(G,)`` (``−inf`` for an empty group)."""
    return jnp.max(jnp.concatenate([v, jnp.full((1,), -jnp.inf, v.dtype)])[members], axis=-1)


class _GState(NamedTuple):
    x: jax.Array  # (P,) flows
    c: jax.Array  # (P,) F(x)
    s: jax.Array  # (P,) curvature at x
    alpha: jax.Array  # () step size
    step: jax.Array  # (P,) previous step (oscillation detection)
    best_x: jax.Array  # (P,) point of smallest gap seen
    best_gap: jax.Array  # ()


def projection_iteration(
    cost_fn: Callable[[jax.Array], jax.Array],
    scale_fn: Callable[[jax.Array], jax.Array],
    demand: jax.Array,
    group: jax.Array,
    members: jax.Array,
    valid: jax.Array,
    *,
    alpha0: float = 1.0,
    alpha_min: float = 1e-3,
    alpha_max: float = 4.0,
    grow: float = 1.2,
) -> Iteration:
    """Scaled projection dynamics for the VI of ``cost_fn`` on ragged simplices.

    Args:
      cost_fn: ``x (P,) → c (P,)``.
      scale_fn: ``x (P,) → s (P,)`` positive diagonal curvature (≈ ∂c_p/∂x_p).
      demand: ``(G,)`` group totals ``d ≥ 0``.
      group: ``(P,)`` int group of each variable.
      members: ``(G, M)`` int member table (the variables of each group, padded with ``P``).
      valid: ``(P,)`` bool; invalid variables (padding, unusable paths) stay at 0.
      alpha0, alpha_min, alpha_max, grow: step control (unit step = a diagonal Newton step).

    Returns:
      An :class:`~poa_jax.kernels.vi.Iteration`; ``init`` takes a feasible ``x0 (P,)`` (each
      group summing to its demand, zero on invalid variables).
    """
    tiny = jnp.finfo(demand.dtype).tiny

    def metric(x):
        s = scale_fn(x)
        eps = jnp.finfo(s.dtype).eps
        floor = jnp.maximum(jnp.max(jnp.where(valid, s, 0.0)), 1.0) * eps**0.5
        return jnp.where(valid, jnp.maximum(s, floor), 1.0)

    def gap_of(x, c):
        return relative_gap(x, c, demand, members, valid)

    def step(st: _GState):
        # Costs centred on each group's flow-weighted mean (projection is invariant to a
        # constant per group; it keeps c/s small where the metric is tiny).
        mean = group_sum(jnp.where(valid, st.x * st.c, 0.0), members) / jnp.maximum(demand, tiny)
        c = jnp.where(valid, st.c - mean[group], 0.0)
        y = project_groups(st.x - st.alpha * c / st.s, demand, st.s, group, members, valid)
        cy = cost_fn(y)
        gy = gap_of(y, cy)
        dx = y - st.x
        inner = jnp.sum(st.s * dx * st.step)
        norm = jnp.sqrt(jnp.sum(st.s * dx**2) * jnp.sum(st.s * st.step**2))
        cos = inner / jnp.maximum(norm, jnp.finfo(norm.dtype).tiny)
        alpha = jnp.where(cos < 0, st.alpha * 0.5, jnp.where(cos > 0.5, st.alpha * grow, st.alpha))
        alpha = jnp.clip(alpha, alpha_min, alpha_max)
        finite = jnp.isfinite(gy)
        improved = finite & (gy < st.best_gap)
        new = _GState(
            x=jnp.where(finite, y, st.x),
            c=jnp.where(finite, cy, st.c),
            s=jnp.where(finite, metric(y), st.s),
            alpha=jnp.where(finite, alpha, st.alpha * 0.5),
            step=jnp.where(finite, dx, 0.0),
            best_x=jnp.where(improved, y, st.best_x),
            best_gap=jnp.where(improved, gy, st.best_gap),
        )
        return new, new.best_gap

    def init(x0):
        x0 = jnp.where(valid, x0, 0.0)
        c0 = cost_fn(x0)
        g0 = gap_of(x0, c0)
        alpha = jnp.asarray(alpha0, x0.dtype)
        return _GState(x0, c0, metric(x0), alpha, jnp.zeros_like(x0), x0, g0), g0

    return Iteration(init, step, lambda st: st.best_x)
