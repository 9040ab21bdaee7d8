"""Projection onto scaled simplices, one row per player.

A *product of simplices* is the feasible set of every nonatomic routing game here: row ``j``
of a flow ``x (J, K)`` lies on ``{y ≥ 0, Σ_k y_k = d_j, y_k = 0 where mask_k is False}``.

The projection is taken in the diagonal metric ``‖v‖²_w = Σ_k w_k v_k²`` (``w > 0``)::

    P_w(z) = argmin_y Σ_k w_k (y_k − z_k)² / 2   s.t.  y ≥ 0, Σ_k y_k = d

KKT gives ``y_k = max(0, z_k − θ/w_k)`` with the scalar ``θ`` fixed by ``Σ_k y_k = d``. The sum is
piecewise linear and decreasing in ``θ`` with breakpoints ``θ_k = w_k z_k``; on the support
``S``, ``θ = (Σ_S z_i − d) / (Σ_S 1/w_i)``. With ``w = 1`` this is the Euclidean projection,
the same map as ``optax.projections.projection_simplex``.

The support is found without sorting and without a loop. For any set ``A`` let ``θ_A`` solve
``Σ_A (z_i − θ/w_i) = d``. Since ``Σ_A (z_i − θ/w_i) ≤ Σ_k max(0, z_k − θ/w_k)`` for every ``θ``
and both sides decrease in ``θ``, ``θ_A ≤ θ*``, with equality for the true support, which is a
top set ``A_k = {i : θ_i ≥ θ_k}`` of the breakpoints. Hence

    θ* = max_k θ_{A_k},

``K`` candidate thresholds from one ``K × K`` comparison — exact, branch-free and, for the small
``K`` of a game, several times faster under ``vmap`` on a CPU than sorting or Michelot's
iterative support elimination (Michelot 1986; Condat 2016 surveys the alternatives).

Everything here acts on one row (``z: (K,)``); callers ``vmap`` over rows and instances.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["project_simplex", "project_rows"]

#: Rows up to this length are projected with unrolled scalar code (O(K²) elementwise ops);
#: longer rows use a K × K comparison matrix.
UNROLL_MAX = 16


def project_simplex(
    z: jax.Array,
    total: jax.Array | float = 1.0,
    weights: jax.Array | None = None,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Projects ``z (K,)`` onto ``{y ≥ 0, Σ y = total, y[~mask] = 0}`` in the metric ``weights``.

    ``θ* = max_k θ_{A_k}`` over the top sets of the breakpoints (see the module docstring).

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
    brk = jnp.where(m, w * z, -jnp.inf)  # breakpoints θ_k
    K = z.shape[-1]
    if K <= UNROLL_MAX:
        # Scalar slices, unrolled: elementwise ops only, which XLA fuses into one pass over the
        # batch (reductions over a length-K minor axis are slow on CPU backends).
        zs, ivs, bs = ([a[i] for i in range(K)] for a in (zm, inv_w, brk))
        theta = jnp.asarray(-jnp.inf, dtype)
        for k in range(K):
            num, den = -total, jnp.zeros((), dtype)
            for i in range(K):
                top = bs[i] >= bs[k]
                num, den = num + jnp.where(top, zs[i], 0.0), den + jnp.where(top, ivs[i], 0.0)
            theta = jnp.where(m[k], jnp.maximum(theta, num / jnp.maximum(den, tiny)), theta)
    else:
        top = (brk[None, :] >= brk[:, None]) & m[None, :]  # top[k, i]: i ∈ A_k
        num = jnp.sum(jnp.where(top, zm[None, :], 0.0), axis=-1) - total
        den = jnp.sum(jnp.where(top, inv_w[None, :], 0.0), axis=-1)
        theta = jnp.max(jnp.where(m, num / jnp.maximum(den, tiny), -jnp.inf))
    y = jnp.where(m, jnp.maximum(zm - theta * inv_w, 0.0), 0.0)
    # Restore the exact total lost to rounding by rescaling (y ≥ 0 keeps it on the simplex).
    s = jnp.sum(y)
    y = jnp.where(s > 0, y * (total / jnp.where(s > 0, s, 1.0)), y)
    # Where rounding lost the whole total (|z| ≫ total: θ rounds to the largest breakpoint),
    # the limit of the projection puts it on the largest breakpoints, in proportion to 1/w.
    return jnp.where((s > 0) | ~(total > 0), y, _on_top(brk, inv_w, total, tiny)).astype(dtype)


def _on_top(brk, inv_w, total, tiny):
    """``total`` spread over the coordinates at the largest breakpoint, in proportion to 1/w.

    A NaN breakpoint (a NaN in an allowed ``z`` or ``w``) makes the whole row NaN: its maximum
    is NaN, nothing compares ``>=`` it, and the row used to come back as finite zeros, off its
    simplex (a solver then read a gap of 0). Only this fallback is touched: the projection of
    finite inputs is unchanged to the bit, whatever loop runs it."""
    top_value = jnp.max(brk, axis=-1)
    top = [brk[..., i] >= top_value for i in range(brk.shape[-1])]
    share = jnp.stack([jnp.where(t, inv_w[..., i], 0.0) for i, t in enumerate(top)], axis=-1)
    out = share * (total / jnp.maximum(jnp.sum(share, axis=-1, keepdims=True), tiny))
    return jnp.where(jnp.isnan(top_value)[..., None], jnp.nan, out)


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
