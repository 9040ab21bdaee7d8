"""The one bounded iteration driver every solver in ``kernels`` uses.

The carry holds the solver state, the step count and the current error; the error starts at
``+inf`` so that at least one step runs, and the loop stops on
``~(error <= tol) | (steps >= max_steps)`` (a NaN error stops it too and is reported as
non-finite). This is the pattern of ``optimistix/_iterate.py`` and optax's line search.

Under ``vmap`` a ``while_loop`` runs until the slowest lane stops (jax-ml/jax#20628); finished
lanes keep computing but their state is frozen by ``jnp.where`` inside the batched loop, so the
results equal a per-instance loop. The iteration counts reported per instance are exact.

Status codes (per instance, ``int32``): ``CONVERGED = 0``, ``MAX_ITERS = 1``, ``NONFINITE = 2``.

**Fixed-trip rounds** (``POA_JAX_ROUND_LOOP=fixed`` in the environment, read at import, or
``advance(..., fixed=True)``): :func:`advance` runs exactly ``budget`` trips of a ``fori_loop``
whose body freezes finished lanes itself, instead of a ``while_loop`` that stops once no lane is
pending. Same results and iteration counts, bit for bit. On a GPU a batched ``while_loop``
copies its predicate to the host and waits for it every trip; a loop of known trip count needs
no such sync, so the host can queue a whole round (a profile on an H200 showed the device busy
only 36% of a round, 2026-11-27). On the CPU the early exit is worth more: off by default.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "CONVERGED",
    "MAX_ITERS",
    "NONFINITE",
    "LoopResult",
    "advance",
    "iterate",
    "pending",
    "status_of",
]

#: Default of :func:`advance`'s ``fixed``: rounds of exactly ``budget`` trips (see above).
FIXED_TRIP = os.environ.get("POA_JAX_ROUND_LOOP", "while") == "fixed"

CONVERGED = 0
MAX_ITERS = 1
NONFINITE = 2


class LoopResult(NamedTuple):
    """Outcome of :func:`iterate` for one instance."""

    state: Any  # the solver state after the last step
    error: jax.Array  # () the convergence measure at that state
    steps: jax.Array  # () int32, steps taken
    status: jax.Array  # () int32, CONVERGED / MAX_ITERS / NONFINITE


def status_of(error: jax.Array, tol: float | jax.Array) -> jax.Array:
    """Status code from a final error: converged, non-finite, or out of iterations."""
    return jnp.where(
        jnp.isfinite(error),
        jnp.where(error <= tol, CONVERGED, MAX_ITERS),
        NONFINITE,
    ).astype(jnp.int32)


def pending(error: jax.Array, steps: jax.Array, tol, max_steps) -> jax.Array:
    """True while a lane still has work: not converged, not out of steps, not NaN."""
    return (~(error <= tol)) & (steps < max_steps) & ~jnp.isnan(error)


def advance(
    step: Callable[[Any], tuple[Any, jax.Array]],
    state: Any,
    error: jax.Array,
    steps: jax.Array,
    *,
    tol: float | jax.Array,
    max_steps: int,
    budget: int,
    stop_below: float | jax.Array = 0.0,
    fixed: bool | None = None,
) -> tuple[Any, jax.Array, jax.Array]:
    """Runs at most ``budget`` more steps from ``(state, error, steps)``; see :func:`iterate`.

    Resumable: the batch edge calls it in fixed-length rounds and drops finished instances
    between rounds, so that one slow instance does not hold a whole batch (jax-ml/jax#20628).
    ``stop_below`` also stops a lane once its error falls below it (end of a solver phase).
    ``fixed`` (default: :data:`FIXED_TRIP` where ``budget < max_steps``, i.e. for rounds, not
    whole solves): exactly ``budget`` trips, finished lanes frozen by the body (a static
    ``budget`` gives the loop a known trip count); same results.
    """

    def live(err, k):
        return pending(err, k, tol, max_steps) & ~(err < stop_below)

    # A fixed-trip loop pays every trip; it is meant for short rounds, so the default takes
    # it only where the budget is below the iteration bound (never for a whole solve).
    if (FIXED_TRIP and budget < max_steps) if fixed is None else fixed:

        def trip(_, carry):
            s, err, k = carry
            on = live(err, k)
            s_new, err_new = step(s)
            s = jax.tree_util.tree_map(lambda a, b: jnp.where(on, a, b), s_new, s)
            err = jnp.where(on, jnp.asarray(err_new, error.dtype), err)
            return s, err, k + on.astype(k.dtype)

        carry = (state, jnp.asarray(error), jnp.asarray(steps, jnp.int32))
        return jax.lax.fori_loop(0, budget, trip, carry)

    def cond(carry):
        _, err, k, b = carry
        return live(err, k) & (b < budget)

    def body(carry):
        s, _, k, b = carry
        s, err = step(s)
        return s, jnp.asarray(err, error.dtype), k + 1, b + 1

    state, error, steps, _ = jax.lax.while_loop(
        cond, body, (state, error, jnp.asarray(steps, jnp.int32), jnp.int32(0))
    )
    return state, error, steps


def iterate(
    step: Callable[[Any], tuple[Any, jax.Array]],
    state: Any,
    *,
    tol: float | jax.Array,
    max_steps: int,
    error0: jax.Array | None = None,
) -> LoopResult:
    """Runs ``state, error = step(state)`` until ``error <= tol`` or ``max_steps`` steps.

    Args:
      step: one iteration; returns the new state and the error *of the new state*.
      state: initial state (a pytree).
      tol: stop once the error is at most this.
      max_steps: hard bound on the number of steps.
      error0: the error of the initial state, if known (lets an already-converged start stop
        after zero steps); defaults to ``+inf``.

    Returns:
      A :class:`LoopResult`.
    """
    dtype = jax.tree_util.tree_leaves(state)[0].dtype
    err0 = jnp.asarray(jnp.inf, dtype) if error0 is None else jnp.asarray(error0, dtype)
    state, err, k = advance(
        step, state, err0, jnp.int32(0), tol=tol, max_steps=max_steps, budget=max_steps
    )
    return LoopResult(state, err, k, status_of(err, tol))
