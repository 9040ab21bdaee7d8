r"""Projection of short columns onto the capped simplex ``{y ≥ 0, Σ_k y_k ≤ 1}``, as slices.

A column ``z = (z_1, …, z_K)`` is given as ``K`` equally shaped arrays (the column index is a
Python tuple index, the array axes are independent columns): every operation is elementwise
over those arrays, with no slicing, gather or reduction over a short axis — the form in which
XLA's CPU emitters vectorise best, for the small ``K`` (a handful) this kernel is for.

The Euclidean projection onto ``{y ≥ 0, Σ_k y_k ≤ 1}`` is ``max(z, 0)`` where
``Σ_k max(z_k, 0) ≤ 1``, and otherwise the projection onto the simplex ``{y ≥ 0, Σ y = 1}``,
``y_k = max(z_k − θ, 0)`` with (the top-set formula of :mod:`poa_jax.kernels.simplex`)

    θ = max_k (Σ_{i ≤ k} u_i − 1) / k,      u_1 ≥ u_2 ≥ … ≥ u_K  the sorted ``z``,

computed relative to the largest entry (``θ − u_1`` from the differences ``u_i − u_1``), so that
columns far from the origin (``|z| ≫ 1/eps``) lose nothing to rounding.

The sort is a fixed compare-exchange network (optimal for ``K ≤ 4``, odd–even transposition
beyond), so the whole map is branch-free. Maxima are written as compare + select, which XLA's
CPU backend emits about twice as fast as ``maximum`` (whose NaN propagation costs extra
instructions); a NaN input gives an unspecified finite-or-NaN output.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = ["project_capped_columns", "sorting_network"]

_NETWORKS = {
    1: (),
    2: ((0, 1),),
    3: ((0, 1), (1, 2), (0, 1)),
    4: ((0, 1), (2, 3), (0, 2), (1, 3), (1, 2)),
}


def sorting_network(k: int) -> tuple[tuple[int, int], ...]:
    """Compare-exchange pairs ``(i, j)``, ``i < j``, that sort ``k`` values (descending when
    each pair puts the larger value at ``i``)."""
    if k in _NETWORKS:
        return _NETWORKS[k]
    return tuple((i, i + 1) for r in range(k) for i in range(r % 2, k - 1, 2))


def _max(a, b):
    return jnp.where(a > b, a, b)


def project_capped_columns(zs, barrier: bool = True) -> list[jax.Array]:
    """Projects every column ``(zs[0][i], …, zs[K-1][i])`` onto ``{y ≥ 0, Σ_k y_k ≤ 1}``.

    Args:
      zs: a sequence of ``K ≥ 1`` arrays of one shape and float dtype.
      barrier: materialise the per-column threshold ``θ`` (an optimisation barrier) so that
        XLA does not recompute the sorting network once per output array.

    Returns:
      The ``K`` projected arrays (a list).

    Example:
      >>> import jax.numpy as jnp
      >>> ys = project_capped_columns([jnp.array([0.5, 0.2]), jnp.array([0.2, 1.0]),
      ...                              jnp.array([-1.0, 0.4])])
      >>> [[round(float(v), 3) for v in y] for y in ys]
      [[0.5, 0.0], [0.2, 0.8], [0.0, 0.2]]
    """
    zs = list(zs)
    u = list(zs)
    for i, j in sorting_network(len(u)):
        c = u[i] > u[j]
        u[i], u[j] = jnp.where(c, u[i], u[j]), jnp.where(c, u[j], u[i])
    # θ relative to the largest entry: θ = u_1 + θ', θ' = max_k (Σ_{i ≤ k} (u_i − u_1) − 1)/k
    # sums differences of order 1 where the top set is, so a large column (|z| ≫ 1 / eps) keeps
    # its total; ``max(z − u_1 − θ', 0)`` (the shift first) is exact for entries near the top.
    top = u[0]
    css = jnp.full_like(top, -1.0)
    theta = css
    for k in range(1, len(u)):
        css = css + (u[k] - top)
        theta = _max(theta, css * (1.0 / (k + 1)))
    total = functools.reduce(jnp.add, [_max(z, 0.0) for z in zs])
    over = total > 1.0
    shift, theta = jnp.where(over, top, 0.0), jnp.where(over, theta, 0.0)
    if barrier:
        shift, theta = jax.lax.optimization_barrier((shift, theta))
    return [_max((z - shift) - theta, 0.0) for z in zs]
