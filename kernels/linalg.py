"""Small dense linear solves, unrolled, for batches of tiny systems.

A game's Newton step solves ``K`` systems of size ``J × J`` (``J`` = a handful of classes) per
instance. Gauss–Jordan elimination written with static indexing over a loop of length ``n``
compiles to a few fused vector kernels under ``vmap``; a pivot search would need dynamic row
swaps (gathers and scatters), which cost more than the arithmetic. Without pivoting a zero or
tiny pivot gives non-finite or inaccurate entries: callers must treat the result as a proposal
and check it (the Newton step in :mod:`poa_jax.kernels.vi` is accepted only if it lowers the gap).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["solve_small"]


def solve_small(a: jax.Array, b: jax.Array) -> jax.Array:
    """Solves ``a x = b`` for ``a (n, n)``, ``b (n, m)`` by Gauss–Jordan without pivoting.

    Example:
      >>> import jax.numpy as jnp
      >>> solve_small(jnp.array([[2.0, 0.0], [1.0, 1.0]]), jnp.array([[4.0], [5.0]])).tolist()
      [[2.0], [3.0]]
    """
    n = a.shape[-1]
    aug = jnp.concatenate([a, b], axis=-1)
    rows = jnp.arange(n)[:, None]
    for i in range(n):
        row = aug[i] / aug[i, i]
        aug = jnp.where(rows == i, row[None, :], aug - aug[:, i : i + 1] * row[None, :])
    return aug[:, n:]
