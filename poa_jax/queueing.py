r"""Tail latency from queueing models, without simulation (DESIGN §2.5).

**M/M/1 sojourn.** Arrival rate ``λ``, service rate ``μ > λ``: the sojourn time is exponential
with rate ``μ − λ``,

    P(T ≤ t) = 1 − e^{−(μ−λ)t},      t_q = −ln(1 − q)/(μ − λ)      (P99 = ln(100)/(μ − λ)).

**M/G/1 waiting time** (Pollaczek–Khinchine mean, exponential tail approximation). Service time
``S`` with mean ``E[S]`` and squared coefficient of variation ``c_s²`` (0 for deterministic
service, M/D/1), ``ρ = λ·E[S] < 1``:

    E[W] = ρ·E[S]·(1 + c_s²) / (2(1 − ρ))
    P(W > t) ≈ ρ·exp(−ρ·t / E[W])          (an atom 1 − ρ at 0: an arrival finds the server idle)

The tail is exact for M/M/1 (``c_s² = 1``: rate ``(1 − ρ)/E[S] = μ − λ``) and the heavy-traffic
(Kingman) limit in general; its mean matches the PK mean exactly. The sojourn time of a request
with deterministic own service ``s`` is ``s + W``.

**Mixtures.** A request served by component ``i`` (a worker, a class × worker pair) with
probability ``w_i`` has latency ``T_i = s_i + W_i`` where ``W_i`` has an atom ``1 − p_i`` at 0 and
the tail ``p_i·e^{−θ_i t}``. The mixture CDF

    F(t) = Σ_i w_i·1[t ≥ s_i]·(1 − p_i·e^{−θ_i (t − s_i)})

is non-decreasing, so its ``q``-quantile is found by bisection on ``t`` (fixed step count:
64 halvings of ``[min s_i, max s_i + ln(1/(1 − q))/min θ_i]``, exact to rounding).

Everything is elementwise JAX (``jit``/``vmap`` ready); inputs are checked by the callers.

Example:
  >>> from poa_jax import queueing as qu
  >>> round(float(qu.mm1_sojourn_quantile(0.99, lam=0.5, mu=1.0)), 4)   # ln(100)/0.5
  9.2103
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

__all__ = [
    "mm1_sojourn_cdf",
    "mm1_sojourn_quantile",
    "mg1_mean_wait",
    "mg1_wait_tail",
    "mg1_sojourn_quantile",
    "mixture_cdf",
    "mixture_quantile",
]

BISECTION_STEPS = 64


def mm1_sojourn_cdf(t: ArrayLike, lam: ArrayLike, mu: ArrayLike) -> jax.Array:
    """``P(T ≤ t) = 1 − exp(−(μ − λ)t)`` for ``t ≥ 0`` (0 below); 0 everywhere when
    ``λ ≥ μ`` (an unstable queue: the sojourn time is infinite)."""
    t = jnp.asarray(t)
    rate = jnp.asarray(mu) - jnp.asarray(lam)
    cdf = -jnp.expm1(-jnp.where(rate > 0, rate, 0.0) * jnp.maximum(t, 0.0))
    return jnp.where((t >= 0) & (rate > 0), cdf, 0.0)


def mm1_sojourn_quantile(q: ArrayLike, lam: ArrayLike, mu: ArrayLike) -> jax.Array:
    """``t_q = −ln(1 − q)/(μ − λ)``; ``inf`` when ``λ ≥ μ``."""
    rate = jnp.asarray(mu) - jnp.asarray(lam)
    return jnp.where(
        rate > 0, -jnp.log1p(-jnp.asarray(q)) / jnp.where(rate > 0, rate, 1.0), jnp.inf
    )


def mg1_mean_wait(lam: ArrayLike, mean_service: ArrayLike, scv: ArrayLike = 0.0) -> jax.Array:
    """Pollaczek–Khinchine ``E[W] = ρE[S](1 + c_s²)/(2(1 − ρ))``; ``inf`` for ``ρ ≥ 1``."""
    rho = jnp.asarray(lam) * jnp.asarray(mean_service)
    val = rho * mean_service * (1.0 + jnp.asarray(scv)) / (2.0 * (1.0 - rho))
    return jnp.where(rho < 1, val, jnp.inf)


def mg1_wait_tail(t: ArrayLike, rho: ArrayLike, mean_wait: ArrayLike) -> jax.Array:
    """``P(W > t) ≈ ρ·exp(−ρt/E[W])`` (``t ≥ 0``); 1 below 0."""
    t = jnp.asarray(t)
    rho = jnp.clip(jnp.asarray(rho), 0.0, 1.0)
    theta = rho / jnp.maximum(jnp.asarray(mean_wait), 1e-300)
    return jnp.where(t < 0, 1.0, rho * jnp.exp(-theta * jnp.maximum(t, 0.0)))


def mg1_sojourn_quantile(
    q: ArrayLike, lam: ArrayLike, mean_service: ArrayLike, scv: ArrayLike = 0.0,
    shift: ArrayLike | None = None,
) -> jax.Array:  # fmt: skip
    """``q``-quantile of ``s + W`` for an M/G/1 queue (``s`` defaults to ``E[S]``).

    Closed form of the approximation: ``t_q = s`` if ``q ≤ 1 − ρ``, else
    ``s + (E[W]/ρ)·ln(ρ/(1 − q))``.
    """
    rho = jnp.asarray(lam) * jnp.asarray(mean_service)
    w = mg1_mean_wait(lam, mean_service, scv)
    s = jnp.asarray(mean_service) if shift is None else jnp.asarray(shift)
    q = jnp.asarray(q)
    tail = (w / jnp.maximum(rho, 1e-300)) * jnp.log(jnp.maximum(rho, 1e-300) / (1.0 - q))
    return jnp.where(q <= 1.0 - rho, s, s + tail)


def mixture_cdf(t, weights, shift, p, theta) -> jax.Array:
    """``F(t) = Σ_i w_i·1[t ≥ s_i]·(1 − p_i e^{−θ_i (t − s_i)})`` for scalar ``t``; components
    ``(M,)``."""
    d = t - shift
    comp = jnp.where(d >= 0, 1.0 - p * jnp.exp(-theta * jnp.maximum(d, 0.0)), 0.0)
    return jnp.sum(weights * comp) / jnp.maximum(jnp.sum(weights), 1e-300)


def mixture_quantile(q, weights, shift, p, theta) -> jax.Array:
    """``q``-quantile of the mixture (module docstring) by bisection on its CDF.

    Args:
      q: quantile in (0, 1), scalar.
      weights: ``(M,)`` ≥ 0 component probabilities (normalised here).
      shift: ``(M,)`` deterministic part ``s_i``.
      p: ``(M,)`` probability of waiting (atom ``1 − p`` at no wait), in [0, 1].
      theta: ``(M,)`` exponential tail rate of the wait, > 0.
    """
    used = weights > 0
    lo = jnp.min(jnp.where(used, shift, jnp.inf))
    th = jnp.min(jnp.where(used & (p > 0), theta, jnp.inf))
    span = jnp.where(jnp.isfinite(th), -jnp.log1p(-q) / jnp.where(jnp.isfinite(th), th, 1.0), 0.0)
    hi = jnp.max(jnp.where(used, shift, -jnp.inf)) + span
    lo = jnp.where(jnp.isfinite(lo), lo, 0.0)
    hi = jnp.where(jnp.isfinite(hi), jnp.maximum(hi, lo), lo)

    def body(_, c):
        a, b = c
        mid = 0.5 * (a + b)
        below = mixture_cdf(mid, weights, shift, p, theta) < q
        return jnp.where(below, mid, a), jnp.where(below, b, mid)

    a, b = jax.lax.fori_loop(0, BISECTION_STEPS, body, (lo, hi))
    return 0.5 * (a + b)
