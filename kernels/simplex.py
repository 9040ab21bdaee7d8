"""Projection onto scaled simplices, one row per player.

A *product of simplices* is the feasible set of every nonatomic routing game here: row ``j``
of a flow ``x (J, K)`` lies on ``{y ≥ 0, Σ_k y_k = d_j, y_k = 0 where mask_k is False}``.

The projection is taken in the diagonal metric ``‖v‖²_w = Σ_k w_k v_k²`` (``w > 0``)::

    P_w(z) = argmin_y Σ_k w_k (y_k − z_k)² / 2   s.t.  y ≥ 0, Σ_k y_k = d

KKT gives ``y_k = max(0, z_k − θ/w_k)`` with the scalar ``θ`` fixed by ``Σ_k y_k = d``. The sum is
piecewise linear and decreasing in ``θ`` with breakpoints ``θ_k = w_k z_k``; sorting the
breakpoints in decreasing order, the support is a prefix of length ``m`` and
``θ = (Σ_{i≤m} z_i − d) / (Σ_{i≤m} 1/w_i)`` for the largest ``m`` whose ``θ`` stays below the
``m``-th breakpoint (Held, Wolfe & Crowder 1974; Duchi et al. 2008 for ``w = 1``). With ``w = 1``
this is the Euclidean projection, the same map as ``optax.projections.projection_simplex``.

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
    # Masked coordinates get breakpoint -inf so that they sort last and never enter the support.
    breaks = jnp.where(m, w * z, -jnp.inf)
    order = jnp.argsort(-breaks)
    z_sorted = jnp.where(m, z, 0.0)[order]
    inv_sorted = inv_w[order]
    breaks_sorted = breaks[order]
    cum_z = jnp.cumsum(z_sorted)
    cum_inv = jnp.cumsum(inv_sorted)
    safe_inv = jnp.where(cum_inv > 0, cum_inv, 1.0)
    theta_m = (cum_z - total) / safe_inv
    valid = (theta_m < breaks_sorted) & (inv_sorted > 0)
    # valid holds on a prefix; the support size is the last index where it holds (at least 1).
    idx = jnp.arange(z.shape[-1])
    last = jnp.max(jnp.where(valid, idx, 0))
    theta = theta_m[last]
    y = jnp.where(m, jnp.maximum(z - theta * inv_w, 0.0), 0.0)
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
