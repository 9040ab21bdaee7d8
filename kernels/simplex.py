"""Projection onto scaled simplices, one row per player.

A *product of simplices* is the feasible set of every nonatomic routing game here: row ``j``
of a flow ``x (J, K)`` lies on ``{y ≥ 0, Σ_k y_k = d_j, y_k = 0 where mask_k is False}``.

The projection is taken in the diagonal metric ``‖v‖²_w = Σ_k w_k v_k²`` (``w > 0``)::

    P_w(z) = argmin_y Σ_k w_k (y_k − z_k)² / 2   s.t.  y ≥ 0, Σ_k y_k = d

KKT gives ``y_k = max(0, z_k − θ/w_k)`` with the scalar ``θ`` fixed by ``Σ_k y_k = d``. The sum is
piecewise linear and decreasing in ``θ`` with breakpoints ``θ_k = w_k z_k``; on the support
``S``, ``θ = (Σ_S z_i − d) / (Σ_S 1/w_i)``. The support is found without sorting by Michelot's
finite algorithm (Michelot 1986; Condat 2016 surveys the alternatives). With ``w = 1`` this is the
Euclidean projection, the same map as ``optax.projections.projection_simplex``.

Everything here acts on one row (``z: (K,)``); callers ``vmap`` over rows and instances.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["project_simplex", "project_rows"]


def project_simplex(
    z: jax.Array,
    total: jax.Array | float = 1.0,
    weights: jax.Array | None = None,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Projects ``z (K,)`` onto ``{y ≥ 0, Σ y = total, y[~mask] = 0}`` in the metric ``weights``.

    Michelot's algorithm (1986), sort-free: start with every allowed coordinate in the support,
    compute ``θ`` for that support, drop the coordinates with ``z_k − θ/w_k ≤ 0`` and repeat. The
    support only shrinks and ``θ`` only grows, so at most ``K`` passes reach the exact
    projection; all ``K`` are run (a fixed-shape loop, cheap for the small ``K`` of a game, and
    without the sort that dominates on CPU backends).

    Args:
      z: point to project, ``(K,)``.
      total: the simplex's total mass ``d ≥ 0`` (scalar).
      weights: positive metric weights ``(K,)``; ``None`` means Euclidean.
      mask: boolean ``(K,)``; coordinates where it is False are fixed at zero. At least one
        coordinate must be unmasked (callers guarantee it; a fully masked row returns zeros).

    Returns:
      The projection, ``(K,)``, same dtype as ``z``.

    Example:
      >>> import jax.numpy as jnp
      >>> project_simplex(jnp.array([0.5, 0.2, -1.0]), 1.0).round(3).tolist()
      [0.65, 0.35, 0.0]
    """
    dtype = z.dtype
    w = jnp.ones_like(z) if weights is None else weights.astype(dtype)
    m = jnp.ones(z.shape, bool) if mask is None else mask
    total = jnp.asarray(total, dtype)
    inv_w = jnp.where(m, 1.0 / w, 0.0)
    zm = jnp.where(m, z, 0.0)
    tiny = jnp.finfo(dtype).tiny

    def theta_of(support):
        num = jnp.sum(jnp.where(support, zm, 0.0)) - total
        return num / jnp.maximum(jnp.sum(jnp.where(support, inv_w, 0.0)), tiny)

    def body(_, support):
        # Never empty the support: the coordinate with the largest breakpoint always stays.
        keep = support & (zm - theta_of(support) * inv_w > 0)
        top = jnp.argmax(jnp.where(m, w * z, -jnp.inf))
        return keep | (jnp.arange(z.shape[-1]) == top) & m

    support = jax.lax.fori_loop(0, z.shape[-1], body, m, unroll=True)
    theta = theta_of(support)
    y = jnp.where(support, jnp.maximum(zm - theta * inv_w, 0.0), 0.0)
    # Restore the exact total lost to rounding by rescaling (y ≥ 0 keeps it on the simplex).
    s = jnp.sum(y)
    y = jnp.where(s > 0, y * (total / jnp.where(s > 0, s, 1.0)), y)
    return y.astype(dtype)


def project_rows(
    z: jax.Array,
    totals: jax.Array,
    weights: jax.Array | None = None,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Row-wise :func:`project_simplex`.

    Args: ``z (J, K)``, ``totals (J,)``, ``weights (J, K)`` or None, ``mask (J, K)`` or None.
    """
    w = jnp.ones_like(z) if weights is None else weights
    m = jnp.ones(z.shape, bool) if mask is None else jnp.broadcast_to(mask, z.shape)
    return jax.vmap(project_simplex)(z, totals, w, m)
