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

**Unrolled trips** (``POA_JAX_LOOP_UNROLL=U`` in the environment, read at import, or
``advance(..., unroll=U)``): each trip of the loop runs ``U`` steps, each guarded by the lane's
own stopping test, so a lane that stops part-way through a trip is frozen for the rest of it.
The same iteration, and the loop makes ``U`` times fewer trips. In float64 the routing solvers
give the same iteration counts and flows to 1e-12 (tested); in float32 the last bits can differ
where XLA compiles the longer body differently, as they do with the call size. The
same H200 profile put ~58 µs of kernels in each trip against ~100 µs of launch, predicate copy
and wait, so ``U`` steps per trip amortise that overhead ``U`` times. On the CPU a trip costs
no sync, and ``U`` copies of the body cost compile time: 1 by default.
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
    "describe",
    "iterate",
    "pending",
    "status_of",
]

#: Default of :func:`advance`'s ``fixed``: rounds of exactly ``budget`` trips (see above).
FIXED_TRIP = os.environ.get("POA_JAX_ROUND_LOOP", "while") == "fixed"


def _unroll_from_env() -> int:
    raw = os.environ.get("POA_JAX_LOOP_UNROLL", "1")
    try:
        u = int(raw)
    except ValueError:
        u = 0
    if u < 1:
        raise ValueError(f"POA_JAX_LOOP_UNROLL = {raw!r}: must be an integer >= 1")
    return u


#: Default of :func:`advance`'s ``unroll``: steps per loop trip (see above).
UNROLL = _unroll_from_env()


def describe() -> str:
    """The round loop this process runs: ``while`` or ``fixed``, and ``xU`` where unrolled."""
    kind = "fixed" if FIXED_TRIP else "while"
    return kind if UNROLL == 1 else f"{kind} x{UNROLL}"


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
    unroll: int | None = None,
) -> tuple[Any, jax.Array, jax.Array]:
    """Runs at most ``budget`` more steps from ``(state, error, steps)``; see :func:`iterate`.

    Resumable: the batch edge calls it in fixed-length rounds and drops finished instances
    between rounds, so that one slow instance does not hold a whole batch (jax-ml/jax#20628).
    ``stop_below`` also stops a lane once its error falls below it (end of a solver phase).
    ``fixed`` (default: :data:`FIXED_TRIP` where ``budget < max_steps``, i.e. for rounds, not
    whole solves): exactly ``budget`` steps, finished lanes frozen by the body (a static
    ``budget`` gives the loop a known trip count); same results. ``unroll`` (default
    :data:`UNROLL`): steps per loop trip, each guarded; the same iteration.
    """
    unroll = UNROLL if unroll is None else int(unroll)
    if unroll < 1:
        raise ValueError(f"unroll = {unroll}: must be >= 1")

    def live(err, k):
        return pending(err, k, tol, max_steps) & ~(err < stop_below)

    def guarded(on, s, err, k):
        """One step where ``on``; the state, error and count unchanged elsewhere."""
        s_new, err_new = step(s)
        s = jax.tree_util.tree_map(lambda a, b: jnp.where(on, a, b), s_new, s)
        err = jnp.where(on, jnp.asarray(err_new, error.dtype), err)
        return s, err, k + on.astype(k.dtype)

    # A fixed-trip loop pays every trip; it is meant for short rounds, so the default takes
    # it only where the budget is below the iteration bound (never for a whole solve).
    if (FIXED_TRIP and budget < max_steps) if fixed is None else fixed:

        def trip(_, carry):
            s, err, k = carry
            return guarded(live(err, k), s, err, k)

        carry = (state, jnp.asarray(error), jnp.asarray(steps, jnp.int32))
        return jax.lax.fori_loop(0, budget, trip, carry, unroll=min(unroll, max(budget, 1)))

    def cond(carry):
        _, err, k, b = carry
        return live(err, k) & (b < budget)

    if unroll == 1:

        def body(carry):
            s, _, k, b = carry
            s, err = step(s)
            return s, jnp.asarray(err, error.dtype), k + 1, b + 1

    else:

        def body(carry):
            # The first step needs no guard: the loop's condition is this lane's (under vmap
            # the batched loop freezes lanes whose condition is false, as for unroll = 1).
            s, _, k, b = carry
            s, err = step(s)
            err, k, b = jnp.asarray(err, error.dtype), k + 1, b + 1
            for _ in range(unroll - 1):
                s, err, k2 = guarded(live(err, k) & (b < budget), s, err, k)
                b = b + (k2 - k)
                k = k2
            return s, err, k, b

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
