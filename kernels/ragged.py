r"""Gradient projection on *ragged* simplices: variables grouped into simplices of any size.

Variables ``x_p ≥ 0``, ``p = 0..P−1``, each in a group ``g(p)`` (``0..G−1``) with
``Σ_{p ∈ g} x_p = d_g``; groups have different sizes (OD pairs with different numbers of paths),
so instead of padding every group to the largest one they are stored flat, and every per-group
operation is a segment reduction — ``O(P)`` work, whatever the spread of group sizes.

Group reductions are segment reductions over the group index (measured on the CPU for 100 ×
2 048 variables in 528 groups: 0.5 ms, against 0.9–50 ms for a padded member table gathered and
reduced, 4 ms for a one-hot matrix product).

For a cost map ``F: x ↦ c`` (``P,``) and a positive diagonal curvature ``s`` (``P,``) the
iteration is the scaled projection dynamics of :func:`poa_jax.kernels.vi.projection` on the
ragged simplices,

    x⁺ = P_s(x − α F(x)/s),     P_s(z)_p = max(0, z_p − θ_g/s_p),   Σ_{p∈g} x⁺_p = d_g,

with each group's threshold ``θ_g`` found by Michelot's support elimination (``θ = (Σ_S z − d) /
Σ_S 1/s`` on the current support ``S``, drop the members that go negative, repeat) as group sums
— passes until no support changes (then exact: each group sums to its total). Unlike
Jayakrishnan et al.'s gradient projection, which moves flow only onto one least-cost path per
step, this moves every path of a group at once: with several nearly tied paths GP's least-cost
path flips between iterations and its step collapses (measured: 2 383 iterations against 47 for
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
from poa_jax.kernels.vi import Iteration, diagonal_metric

__all__ = [
    "group_max",
    "group_min",
    "group_sum",
    "relative_gap",
    "project_groups",
    "projection_iteration",
    "softmax_flows",
    "minimize_on_groups",
]

#: Bound on Michelot's support-elimination passes (exact once a pass changes nothing, which
#: takes at most the largest group's size; the passes stop there). ``None``: the number of
#: variables, which always suffices. A fixed 32 did not: a 512-path group that needed 57
#: passes came back with a group total of 1.5e33 instead of 0.70.
MAX_PASSES = None


def group_sum(v: jax.Array, group: jax.Array, num_groups: int) -> jax.Array:
    """``Σ_{p ∈ g} v_p`` per group, ``(G,)``."""
    return jax.ops.segment_sum(v, group, num_segments=num_groups)


def group_min(v: jax.Array, group: jax.Array, num_groups: int) -> jax.Array:
    """``min_{p ∈ g} v_p`` per group, ``(G,)`` (``+inf`` for an empty group)."""
    return jax.ops.segment_min(v, group, num_segments=num_groups)


def group_max(v: jax.Array, group: jax.Array, num_groups: int) -> jax.Array:
    """``max_{p ∈ g} v_p`` per group, ``(G,)`` (``−inf`` for an empty group)."""
    return jax.ops.segment_max(v, group, num_segments=num_groups)


def relative_gap(x, c, demand, group, valid) -> jax.Array:
    """Relative gap on ragged simplices (``0`` exactly at an equilibrium)."""
    return _gap_and_min(x, c, demand, group, valid)[0]


def _gap_and_min(x, c, demand, group, valid) -> tuple[jax.Array, jax.Array]:
    cmin = group_min(jnp.where(valid, c, jnp.inf), group, demand.shape[0])
    total = jnp.sum(jnp.where(valid, x * c, 0.0))
    best = jnp.sum(jnp.where(demand > 0, demand * cmin, 0.0))
    tiny = jnp.finfo(x.dtype).tiny
    return jnp.maximum(total - best, 0.0) / jnp.maximum(jnp.abs(total), tiny), cmin


def project_groups(z, demand, s, group, valid, max_passes: int | None = MAX_PASSES) -> jax.Array:
    """``P_s(z)`` onto the ragged simplices (see the module docstring), ``(P,)``.

    Michelot's passes run until no group's support changes (exact from then on) or
    ``max_passes``; the numerator and denominator of ``θ`` are one two-column segment sum.
    """
    tiny = jnp.finfo(z.dtype).tiny
    num_groups = demand.shape[0]
    if max_passes is None:
        max_passes = max(int(z.shape[0]), 1)  # every pass that changes drops a member
    inv = jnp.where(valid, 1.0 / s, 0.0)
    zm = jnp.where(valid, z, 0.0)

    def theta_on(support):
        both = jnp.stack([jnp.where(support, zm, 0.0), jnp.where(support, inv, 0.0)], axis=-1)
        sums = group_sum(both, group, num_groups)
        return (sums[:, 0] - demand) / jnp.maximum(sums[:, 1], tiny)

    def cond(c):
        i, _, changed = c
        return changed & (i < max_passes)

    def body(c):
        i, support, _ = c
        theta = theta_on(support)
        # (the member with the largest breakpoint never leaves: θ_S < its breakpoint if d > 0)
        new = support & (zm - theta[group] * inv > 0)
        return i + 1, new, jnp.any(new != support)

    _, support, _ = jax.lax.while_loop(cond, body, (0, valid, jnp.array(True)))
    theta = theta_on(support)
    y = jnp.where(support, jnp.maximum(zm - theta[group] * inv, 0.0), 0.0)
    # As in kernels.simplex: restore each group's total lost to rounding (|z| ≫ d), put a
    # total lost entirely on the group's largest breakpoints (in proportion to 1/s), and let a
    # NaN in a group's z or s propagate instead of dropping every member (all zeros).
    tot = group_sum(y, group, num_groups)
    y = y * jnp.where(tot > 0, demand / jnp.where(tot > 0, tot, 1.0), 1.0)[group]
    brk = jnp.where(valid, s * z, -jnp.inf)
    top = valid & (brk >= group_max(brk, group, num_groups)[group])
    share = jnp.where(top, inv, 0.0)
    fill = demand / jnp.maximum(group_sum(share, group, num_groups), tiny)
    lost = (tot <= 0) & (demand > 0)
    y = jnp.where(lost[group], share * fill[group], y)
    bad = group_sum(jnp.where(valid, jnp.isnan(z) | jnp.isnan(s), False).astype(z.dtype), group,
                    num_groups) > 0  # fmt: skip
    return jnp.where(bad[group] & valid, jnp.nan, y)


class _GState(NamedTuple):
    x: jax.Array  # (P,) flows
    c: jax.Array  # (P,) F(x)
    cmin: jax.Array  # (G,) least cost per group at x
    s: jax.Array  # (P,) curvature at x
    alpha: jax.Array  # () step size
    step: jax.Array  # (P,) previous step (oscillation detection)
    best_x: jax.Array  # (P,) point of smallest gap seen
    best_gap: jax.Array  # ()
    momentum: jax.Array  # () heavy-ball coefficient of the next step (0 after a reversal)


def projection_iteration(
    cost_fn: Callable[[jax.Array], jax.Array],
    scale_fn: Callable[[jax.Array], jax.Array],
    demand: jax.Array,
    group: jax.Array,
    valid: jax.Array,
    *,
    alpha0: float = 1.0,
    alpha_min: float = 1e-3,
    alpha_max: float = 4.0,
    grow: float = 1.2,
    momentum: float = 0.0,
) -> Iteration:
    """Scaled projection dynamics for the VI of ``cost_fn`` on ragged simplices.

    The iteration of :func:`poa_jax.kernels.vi.projection_iteration` (same step control, same
    heavy ball ``+ β_n (x − x⁻)``, ``β_n = momentum`` while the last two steps agree, else 0),
    with groups of any size in place of rows.

    Args:
      cost_fn: ``x (P,) → c (P,)``.
      scale_fn: ``x (P,) → s (P,)`` positive diagonal curvature (≈ ∂c_p/∂x_p).
      demand: ``(G,)`` group totals ``d ≥ 0``.
      group: ``(P,)`` int group of each variable.
      valid: ``(P,)`` bool; invalid variables (padding, unusable paths) stay at 0.
      alpha0, alpha_min, alpha_max, grow: step control (unit step = a diagonal Newton step).
      momentum: heavy-ball coefficient in ``[0, 1)``; 0 is the plain dynamics, bit for bit.

    Returns:
      An :class:`~poa_jax.kernels.vi.Iteration`; ``init`` takes a feasible ``x0 (P,)`` (each
      group summing to its demand, zero on invalid variables).
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum = {momentum!r}: must be in [0, 1)")

    def metric(x):
        return diagonal_metric(scale_fn(x), valid)

    def gap_of(x, c):
        return _gap_and_min(x, c, demand, group, valid)

    def step(st: _GState):
        # Costs relative to each group's least cost (projection is invariant to a constant per
        # group; it keeps c/s small where the metric is tiny).
        c = jnp.where(valid, st.c - jnp.where(demand > 0, st.cmin, 0.0)[group], 0.0)
        z = st.x - st.alpha * c / st.s
        if momentum:
            z = z + st.momentum * st.step
        y = project_groups(z, demand, st.s, group, valid)
        cy = cost_fn(y)
        gy, cmin_y = gap_of(y, cy)
        dx = y - st.x
        inner = jnp.sum(st.s * dx * st.step)
        norm = jnp.sqrt(jnp.sum(st.s * dx**2)) * jnp.sqrt(jnp.sum(st.s * st.step**2))  # as vi
        cos = inner / jnp.maximum(norm, jnp.finfo(norm.dtype).tiny)
        alpha = jnp.where(cos < 0, st.alpha * 0.5, jnp.where(cos > 0.5, st.alpha * grow, st.alpha))
        alpha = jnp.clip(alpha, alpha_min, alpha_max)
        finite = jnp.isfinite(gy)
        improved = finite & (gy < st.best_gap)
        beta = jnp.where(finite & (cos > 0), momentum, 0.0).astype(st.momentum.dtype)
        new = _GState(
            x=jnp.where(finite, y, st.x),
            c=jnp.where(finite, cy, st.c),
            cmin=jnp.where(finite, cmin_y, st.cmin),
            s=jnp.where(finite, metric(y), st.s),
            alpha=jnp.where(finite, alpha, st.alpha * 0.5),
            step=jnp.where(finite, dx, 0.0),
            best_x=jnp.where(improved, y, st.best_x),
            best_gap=jnp.where(improved, gy, st.best_gap),
            momentum=beta,
        )
        return new, new.best_gap

    def init(x0):
        x0 = jnp.where(valid, x0, 0.0)
        c0 = cost_fn(x0)
        g0, cmin0 = gap_of(x0, c0)
        alpha = jnp.asarray(alpha0, x0.dtype)
        zero = jnp.zeros((), x0.dtype)
        return _GState(x0, c0, cmin0, metric(x0), alpha, jnp.zeros_like(x0), x0, g0, zero), g0

    return Iteration(init, step, lambda st: st.best_x)


def softmax_flows(z, demand, group, valid) -> jax.Array:
    """``x_p = d_g · softmax_g(z)_p`` over the valid members of each group, ``(P,)``."""
    num_groups = demand.shape[0]
    zm = jnp.where(valid, z, -jnp.inf)
    top = group_max(zm, group, num_groups)
    e = jnp.where(valid, jnp.exp(zm - jnp.where(jnp.isfinite(top), top, 0.0)[group]), 0.0)
    total = group_sum(e, group, num_groups)
    return demand[group] * e / jnp.where(total > 0, total, 1.0)[group]


def minimize_on_groups(objective, z0, demand, group, valid, *, optimizer, steps: int):
    """Minimises ``objective(x)`` over the ragged simplices with an optax optimiser on the
    logits of :func:`softmax_flows`, ``steps`` steps; returns the best ``x`` seen and its value.
    """
    loss = lambda z: objective(softmax_flows(z, demand, group, valid))
    grad = jax.value_and_grad(loss)

    def body(_, c):
        z, opt, best_x, best = c
        val, g = grad(z)
        x = softmax_flows(z, demand, group, valid)
        better = val < best
        updates, opt = optimizer.update(g, opt, z)
        return (z + updates, opt, jnp.where(better, x, best_x), jnp.where(better, val, best))

    x0 = softmax_flows(z0, demand, group, valid)
    init = (z0, optimizer.init(z0), x0, jnp.asarray(jnp.inf, z0.dtype))
    _, _, x, val = jax.lax.fori_loop(0, steps, body, init)
    return x, val
