"""Gradient descent with optax over a simplex parametrisation (one instance, one start).

The feasible set is a product of simplices (see :mod:`poa_jax.kernels.simplex`). Each row is
parametrised by logits ``z_j`` with ``x_j = d_j · softmax(z_j)`` over its allowed resources, so
any optax optimiser runs unconstrained. The best point seen is kept (descent with a fixed step
need not be monotone), so the result is never worse than the start.

Softmax descent explores well but converges slowly onto faces of the simplex (a resource with
zero optimal flow needs ``z → −∞``); :mod:`poa_jax` uses it as the global, multi-start phase and
finishes with a projected Newton-like polish (:func:`poa_jax.kernels.vi.extragradient` on the
gradient), which converges to the stated gap.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

__all__ = ["softmax_flows", "minimize_on_simplices"]


def softmax_flows(z: jax.Array, demand: jax.Array, mask: jax.Array) -> jax.Array:
    """``x_j = d_j softmax(z_j)`` over allowed resources: ``z (J, K)``, ``demand (J,)``."""
    p = jax.nn.softmax(jnp.where(mask, z, -jnp.inf), axis=-1)
    return demand[:, None] * jnp.where(mask, p, 0.0)


def minimize_on_simplices(
    objective: Callable[[jax.Array], jax.Array],
    x0: jax.Array,
    demand: jax.Array,
    mask: jax.Array,
    *,
    optimizer: optax.GradientTransformation,
    steps: int,
) -> tuple[jax.Array, jax.Array]:
    """Runs ``steps`` optax updates on ``objective(softmax_flows(z))`` from ``x0``.

    Args:
      objective: ``x (J, K) → ()``, differentiable.
      x0: feasible start ``(J, K)``.
      demand: ``(J,)``; mask: ``(J, K)`` boolean.
      optimizer: any optax transformation (e.g. ``optax.adam(0.1)``).
      steps: number of updates (fixed: this phase explores, it does not certify).

    Returns:
      ``(x_best, f_best)``: the best flow seen ``(J, K)`` and its objective ``()``.
    """
    dtype = x0.dtype
    share = x0 / jnp.maximum(demand[:, None], jnp.finfo(dtype).tiny)
    z0 = jnp.log(jnp.maximum(share, 1e-6)).astype(dtype)

    def f(z):
        return objective(softmax_flows(z, demand, mask))

    value_and_grad = jax.value_and_grad(f)

    def body(_, carry):
        z, opt_state, z_best, f_best = carry
        val, g = value_and_grad(z)
        better = val < f_best
        z_best = jnp.where(better, z, z_best)
        f_best = jnp.where(better, val, f_best)
        # Masked logits carry no gradient information; zero them so Adam's moments stay finite.
        g = jnp.where(mask, g, 0.0)
        updates, opt_state = optimizer.update(g, opt_state, z)
        return optax.apply_updates(z, updates), opt_state, z_best, f_best

    init = (z0, optimizer.init(z0), z0, objective(x0).astype(dtype))
    z, _, z_best, f_best = jax.lax.fori_loop(0, steps, body, init)
    f_last = f(z)
    better = f_last < f_best
    z_best = jnp.where(better, z, z_best)
    f_best = jnp.where(better, f_last, f_best)
    x_best = softmax_flows(z_best, demand, mask)
    # If no step improved on the start, return x0 itself (softmax of log-shares rounds it).
    improved = f_best < objective(x0)
    return jnp.where(improved, x_best, x0), jnp.minimum(f_best, objective(x0))
