r"""Γ_R — the routing congestion game with a cache externality, on parallel workers.

Request classes ``j = 1..J`` (prompt templates / prefix groups) with rate ``d_j``, prompt tokens
``L_j`` and shareable-prefix fraction ``η_j``; workers ``k = 1..K`` with latency ``ℓ_k``
(:mod:`poa_jax.latency`), prefill time ``s_k`` and a prefix cache. A routing is a flow
``x[j, k] ≥ 0`` with ``Σ_k x[j, k] = d_j`` (DESIGN §2.2).

Cache affinity (the positive externality). The hit fraction of class ``j`` on worker ``k``

    h[j, k] = η_j · x[j, k] / (x[j, k] + r_k·(1 + X_k/M_k)),     X_k = Σ_j x[j, k],

rises with the class's own flow there (its prefix stays resident) and falls with the worker's
total flow relative to its cache size ``M_k`` (eviction pressure); ``r_k > 0`` (``residency``) is
the flow at which an otherwise idle worker keeps half of a class's shareable prefix. It is
monotone in both directions and bounded by ``η_j``. With ``η = 0`` (the default) there is no
cache and the game is the classic nonatomic routing game.

True cost of a class-``j`` request on worker ``k`` and the social cost:

    W_k     = Σ_j x[j, k]·L_j·(1 − h[j, k])                 (uncached prefill work on k)
    c[j, k] = ℓ_k(W_k) + s_k(L_j·(1 − h[j, k]))
    SC(x)   = Σ_{j,k} x[j, k]·c[j, k]                       (mean latency = SC / Σ_j d_j)

With the defaults ``L = 1, η = 0, s = 0`` this is ``c[j, k] = ℓ_k(X_k)``.

Arrays: ``demand, tokens, shareable: (..., J)``; latency, prefill, ``residency, cache_size,
worker_mask: (..., K)``; leading axes are batch axes and broadcast. Padded workers (to batch
topologies of different sizes) have ``worker_mask`` False and carry no flow.

The functions below act on **one** instance (unbatched fields); :mod:`poa_jax.solve` batches.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from poa_jax.latency import Latency, PrefillTime

__all__ = [
    "RoutingGame",
    "hit_fraction",
    "worker_work",
    "decode_load",
    "true_cost",
    "social_cost",
    "social_cost_gradient",
    "true_cost_slope",
    "social_cost_curvature",
]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RoutingGame:
    """A (batch of) routing game(s) on parallel workers.

    Attributes:
      demand: request rate per class, ``(..., J)``, finite and ≥ 0.
      latency: :class:`~poa_jax.latency.Latency` with fields ``(..., K)``, load = uncached
        prefill work ``W_k`` (tokens per unit time; requests when ``tokens`` is 1).
      tokens: prompt tokens per request ``L_j``, ``(..., J)``, > 0. Default 1.
      shareable: shareable-prefix fraction ``η_j`` in [0, 1], ``(..., J)``. Default 0 (no cache).
      residency: half-saturation flow ``r_k`` of the hit curve, ``(..., K)``, > 0. Default 1.
      cache_size: cache size ``M_k`` in request units, ``(..., K)``, > 0 (``inf``: no eviction).
      prefill: :class:`~poa_jax.latency.PrefillTime` per worker, ``(..., K)``. Default 0.
      worker_mask: which workers exist, ``(..., K)`` boolean. Default all.

    Example:
      >>> import poa_jax as pj
      >>> pigou = pj.RoutingGame(demand=[1.0], latency=pj.Latency(a=[0.0, 1.0], b=[1.0, 0.0]))
      >>> round(float(pj.price_of_anarchy(pigou).poa), 6)
      1.333333
    """

    demand: ArrayLike
    latency: Latency
    tokens: ArrayLike = 1.0
    shareable: ArrayLike = 0.0
    residency: ArrayLike = 1.0
    cache_size: ArrayLike = float("inf")
    prefill: PrefillTime = dataclasses.field(default_factory=PrefillTime)
    worker_mask: ArrayLike = True


# --------------------------------------------------------------------------- one instance


def hit_fraction(g: RoutingGame, x: jax.Array) -> jax.Array:
    """``h[j, k]`` for flow ``x (J, K)``; zero where ``η = 0``."""
    load = jnp.sum(x, axis=0)  # X_k
    eviction = g.residency * (1.0 + load / g.cache_size)
    return g.shareable[:, None] * x / (x + eviction[None, :])


def worker_work(g: RoutingGame, x: jax.Array, h: jax.Array) -> jax.Array:
    """Uncached prefill work ``W_k = Σ_j x[j,k]·L_j·(1 − h[j,k])``, ``(K,)``."""
    return jnp.sum(x * g.tokens[:, None] * (1.0 - h), axis=0)


def decode_load(g: RoutingGame, x: jax.Array) -> jax.Array:
    """Resident (decode) token load ``D_k = Σ_j x[j,k]·L_j``, ``(K,)``."""
    return jnp.sum(x * g.tokens[:, None], axis=0)


def true_cost(g: RoutingGame, x: jax.Array) -> jax.Array:
    """``c[j, k] = ℓ_k(W_k) + s_k(L_j(1 − h[j, k]))``, ``(J, K)``."""
    h = hit_fraction(g, x)
    w = worker_work(g, x, h)
    return g.latency.value(w)[None, :] + g.prefill.value(g.tokens[:, None] * (1.0 - h))


def social_cost(g: RoutingGame, x: jax.Array) -> jax.Array:
    """``SC(x) = Σ x·c`` over existing workers, ``()``."""
    return jnp.sum(jnp.where(g.worker_mask[None, :], x * true_cost(g, x), 0.0))


def social_cost_gradient(g: RoutingGame, x: jax.Array) -> jax.Array:
    r"""The marginal cost ``∂SC/∂x[j, k]`` in closed form, ``(J, K)`` (zero on absent workers).

    With ``e_k = r_k(1 + X_k/M_k)``, ``q = x + e``, ``A = η e/q²`` and ``u = η x/q²`` (so that
    ``∂h[i,k]/∂x[j,k] = δ_ij A[i,k] − u[i,k]·r_k/M_k``), ``n = L(1 − h)`` and
    ``SC = Σ_k X_k ℓ_k(W_k) + Σ_{i,k} x[i,k] s_k(n[i,k])``:

        ∂W_k/∂x[j,k]  = n[j,k] − x[j,k] L_j A[j,k] + (r_k/M_k)·Σ_i x[i,k] L_i u[i,k]
        ∂SC/∂x[j,k]   = ℓ_k(W_k) + X_k ℓ'_k(W_k)·∂W_k/∂x[j,k] + s_k(n[j,k])
                        − x[j,k] s'_k(n[j,k]) L_j A[j,k]
                        + (r_k/M_k)·Σ_i x[i,k] s'_k(n[i,k]) L_i u[i,k]

    Equal to ``jax.grad(social_cost)`` (tested) at about half its cost: it shares ``h`` and
    ``W`` with the cost and curvature evaluated at the same point.
    """
    load = jnp.sum(x, axis=0)  # X_k
    evict_slope = g.residency / g.cache_size  # ∂e_k/∂X_k (0 for an infinite cache)
    evict = (g.residency * (1.0 + load / g.cache_size))[None, :]
    q = x + evict
    eta = g.shareable[:, None]
    tok = g.tokens[:, None]
    h = eta * x / q
    a_own = eta * evict / q**2
    u = eta * x / q**2
    n = tok * (1.0 - h)
    w = jnp.sum(x * n, axis=0)
    ds = g.prefill.derivative(n)
    dw = n - x * tok * a_own + (evict_slope * jnp.sum(x * tok * u, axis=0))[None, :]
    grad = (
        g.latency.value(w)[None, :]
        + (load * g.latency.derivative(w))[None, :] * dw
        + g.prefill.value(n)
        - x * ds * tok * a_own
        + (evict_slope * jnp.sum(x * ds * tok * u, axis=0))[None, :]
    )
    return jnp.where(g.worker_mask[None, :], grad, 0.0)


def true_cost_slope(g: RoutingGame, x: jax.Array) -> jax.Array:
    """Diagonal congestion slope ``ℓ'_k(W_k)·L_j(1 − h[j,k])``, ``(J, K)`` (metric for solvers).

    The cache term's own derivative is left out: it is a preconditioner, not a Jacobian.
    """
    h = hit_fraction(g, x)
    w = worker_work(g, x, h)
    n = g.tokens[:, None] * (1.0 - h)
    return g.latency.derivative(w)[None, :] * n


def social_cost_curvature(g: RoutingGame, x: jax.Array) -> jax.Array:
    """Diagonal curvature of ``SC`` in ``x[j, k]``, cache derivatives left out, ``(J, K)``.

    Without the cache term ``∂²SC/∂x_jk² = 2ℓ'_k(W_k)·L_j + X_k·ℓ''_k(W_k)·L_j²`` exactly; with it,
    ``L_j`` is replaced by the uncached ``L_j(1 − h[j,k])``.
    """
    h = hit_fraction(g, x)
    w = worker_work(g, x, h)
    n = g.tokens[:, None] * (1.0 - h)
    load = jnp.sum(x, axis=0)
    lat = g.latency
    return 2.0 * lat.derivative(w)[None, :] * n + (load * lat.second_derivative(w))[None, :] * n**2
