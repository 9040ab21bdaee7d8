r"""Router policies as perceived costs ``r[j, k](x; θ)`` (DESIGN §2.2).

Every policy is one parametric form, so policies with different parameters batch together:

    r[j, k] = w_true·c[j, k] + w_prefill·P[j, k] + w_decode·D[j, k]
    P[j, k] = W_k + L_j·max(1 − credit·h[j, k], 0)       (prefill tokens: queued + this request's)
    D[j, k] = D_k + L_j                                   (resident KV tokens + this request's)

with ``c``, ``W``, ``D``, ``h`` from :mod:`poa_jax.game`. ``P`` and ``D`` are Dynamo's
``prefill_blocks`` and ``decode_blocks`` in token units: the block size divides both and cancels
in the argmin and in the min–max normalisation below. In the fluid model the router's view of a
worker's active work is the flow routed there.

* :func:`selfish` — ``r = c``: Wardrop equilibrium of the true cost.
* :func:`dynamo` — Dynamo's KV router (Gen 1, ``lib/kv-router/src/scheduling/selector.rs``):
  ``r = ω·prefill_blocks + decode_blocks``, the overlap credited at ``credits[0]`` (device tier,
  G1; the host/disk credits 0.75/0.25 apply to hits in lower tiers, which the KV-cache game
  supplies). ``τ = 0`` is the argmin router (Wardrop equilibrium of ``r``); ``τ > 0`` is the
  fluid limit of its softmax sampling, a logit response over min–max-normalised costs,

      p[j, k] ∝ exp(−(r[j, k] − min_k r[j, ·]) / ((max_k r[j, ·] − min_k r[j, ·])·τ)),

  uniform where all costs are equal; its equilibrium is the fixed point ``x_j = d_j·p_j(x)``.
  Applied to a fluid, Dynamo's exact normalisation is discontinuous where a class's costs are
  nearly equal (a difference of 1e-9 is stretched to the full range), so the fixed point may
  not exist and averaging cycles, the fluid image of the herding Dynamo users report. The span
  is therefore floored, ``max(max_k r − min_k r, span_floor·max_k r)`` (default ``span_floor =
  0.1``: costs within 10% of each other are told apart proportionally, not all-or-nothing). Set
  it lower to approach the exact rule; non-convergence is then reported per instance.
* :func:`load_balanced` — ``r = D``: route to the least-loaded worker (Dynamo with ``ω = 0``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from poa_jax import game as _game
from poa_jax.errors import InputError
from poa_jax.validation import as_array, check

__all__ = [
    "Policy",
    "selfish",
    "dynamo",
    "load_balanced",
    "from_name",
    "NAMES",
    "perceived_cost",
    "perceived_slope",
    "logit_response",
]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Policy:
    """Parameters of the perceived cost; each field a scalar or an array over batch axes."""

    w_true: ArrayLike = 1.0
    w_prefill: ArrayLike = 0.0
    w_decode: ArrayLike = 0.0
    tau: ArrayLike = 0.0
    credit: ArrayLike = 1.0
    span_floor: ArrayLike = 0.1


def selfish() -> Policy:
    """Wardrop/selfish routing: every request takes a worker of least true cost."""
    return Policy(w_true=1.0, w_prefill=0.0, w_decode=0.0, tau=0.0, credit=1.0)


def dynamo(
    omega: ArrayLike = 1.0,
    tau: ArrayLike = 0.0,
    credits: Sequence[float] = (1.0, 0.75, 0.25),
    span_floor: ArrayLike = 0.1,
) -> Policy:
    """Dynamo's KV router ``ω·prefill_blocks + decode_blocks`` at temperature ``τ``.

    Args:
      omega: overlap score weight / prefill load scale ``ω ≥ 0`` (Dynamo default 1.0).
      tau: router temperature ``τ ≥ 0`` (default 0.0: argmin).
      credits: overlap credits for the device, host and disk tiers (Dynamo 1.0/0.75/0.25),
        each finite and in [0, 1]; the routing game's hits are device hits, so ``credits[0]``
        applies.
      span_floor: relative floor of the min–max span for ``τ > 0`` (see the module docstring).
    """
    credits = tuple(credits)
    if len(credits) != 3:
        raise InputError(f"dynamo.credits has {len(credits)} entries: must be 3 (G1, G2, G3)")
    for i, v in enumerate(credits):  # overlap credits are fractions of a hit: in [0, 1]
        check(f"dynamo.credits[{i}]", as_array(f"dynamo.credits[{i}]", v), "unit")
    # Named as the caller wrote them (the Policy fields they become are w_prefill, tau, ...).
    for name, v in (("omega", omega), ("tau", tau), ("span_floor", span_floor)):
        check(f"dynamo.{name}", as_array(f"dynamo.{name}", v), "finite_ge0")
    return Policy(
        w_true=0.0, w_prefill=omega, w_decode=1.0, tau=tau, credit=credits[0],
        span_floor=span_floor,
    )  # fmt: skip


def load_balanced() -> Policy:
    """Least-loaded routing: perceived cost is the worker's resident token load."""
    return Policy(w_true=0.0, w_prefill=0.0, w_decode=1.0, tau=0.0, credit=0.0)


NAMES = ("selfish", "dynamo", "load_balanced")


def from_name(name: str, **params) -> Policy:
    """A policy by name (``selfish``, ``dynamo``, ``load_balanced``) with keyword parameters."""
    makers = {"selfish": selfish, "dynamo": dynamo, "load_balanced": load_balanced}
    if name not in makers:
        raise InputError(f"policy {name!r} is unknown: must be one of {', '.join(NAMES)}")
    try:
        return makers[name](**params)
    except TypeError as e:
        raise InputError(f"policy {name!r}: bad parameters {params}: {e}") from None


# --------------------------------------------------------------------------- one instance


def perceived_cost(pol: Policy, g: _game.RoutingGame, x: jax.Array) -> jax.Array:
    """``r[j, k]`` for one instance, ``(J, K)``."""
    h = _game.hit_fraction(g, x)
    w = _game.worker_work(g, x, h)
    tok = g.tokens[:, None]
    c = g.latency.value(w)[None, :] + g.prefill.value(tok * (1.0 - h))
    prefill = w[None, :] + tok * jnp.maximum(1.0 - pol.credit * h, 0.0)
    decode = _game.decode_load(g, x)[None, :] + tok
    return pol.w_true * c + pol.w_prefill * prefill + pol.w_decode * decode


def perceived_slope(pol: Policy, g: _game.RoutingGame, x: jax.Array) -> jax.Array:
    """Diagonal slope of ``r`` in ``x[j, k]`` (cache derivatives left out), ``(J, K)``."""
    h = _game.hit_fraction(g, x)
    tok = jnp.broadcast_to(g.tokens[:, None], x.shape)
    return (
        pol.w_true * _game.true_cost_slope(g, x)
        + pol.w_prefill * tok * (1.0 - h)
        + pol.w_decode * tok
    )


def logit_response(
    pol: Policy, g: _game.RoutingGame, x: jax.Array, demand: jax.Array, mask: jax.Array
) -> jax.Array:
    """Min–max-normalised logit response ``d_j·p_j(r(x))`` at temperature ``τ > 0``, ``(J, K)``."""
    r = perceived_cost(pol, g, x)
    lo = jnp.min(jnp.where(mask, r, jnp.inf), axis=-1, keepdims=True)
    hi = jnp.max(jnp.where(mask, r, -jnp.inf), axis=-1, keepdims=True)
    span = jnp.maximum(hi - lo, pol.span_floor * jnp.abs(hi))
    flat = span <= jnp.finfo(x.dtype).eps * jnp.abs(hi)  # relative: no cost unit assumed
    z = -(r - lo) / (jnp.where(flat, 1.0, span) * pol.tau)
    z = jnp.where(flat, 0.0, z)
    p = jax.nn.softmax(jnp.where(mask, z, -jnp.inf), axis=-1)
    return demand[:, None] * jnp.where(mask, p, 0.0)
