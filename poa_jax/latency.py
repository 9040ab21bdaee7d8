r"""The latency family every resource shares, and the DistServe prefill-time form.

One family covers every classic form (DESIGN §2.1). A resource with load ``x ≥ 0`` has

    ℓ(x) = a + b·x + c·x^p + d·x/(κ − x)                  for 0 ≤ x ≤ x̄ = ρ_max·κ,
    ℓ(x) = ℓ(x̄) + ℓ'(x̄)·(x − x̄)                           for x > x̄,

with derivative ``ℓ'(x) = b + c·p·x^(p−1) + d·κ/(κ − x)²`` and integral (the Beckmann
potential term)

    Λ(x) = a·x + b·x²/2 + c·x^(p+1)/(p+1) + d·(−x − κ·ln(1 − x/κ))        (x ≤ x̄),
    Λ(x) = Λ(x̄) + ℓ(x̄)(x − x̄) + ℓ'(x̄)(x − x̄)²/2                          (x > x̄).

The continuation matches value and slope at ``x̄``, so ``ℓ`` is finite, non-decreasing and convex
for ``a, b, c, d ≥ 0``, ``p ≥ 1``, ``κ > 0`` and an overloaded point is a number, not NaN. With
``κ = ∞`` there is no singular term and no continuation.

Classic forms as constructors:

* :func:`affine` ``a + b·x``;  :func:`polynomial` ``a + c·x^p``;
* :func:`bpr` (Bureau of Public Roads) ``t0·(1 + α·(x/cap)^β)``: ``a = t0, c = t0·α/cap^β, p = β``;
* :func:`mm1` M/M/1 sojourn time ``1/(μ − x)``: ``a = d = 1/μ, κ = μ``;
* :func:`davidson` ``t0·(1 + J·x/(cap − x))``: ``a = t0, d = t0·J, κ = cap``.

Prefill service time of a request with ``n`` uncached tokens (DistServe, OSDI'24, §3 and
``simdistserve/estimators/time_estimator.py``): ``s(n) = a + b·n + c·n²``.

Fields are arrays broadcastable against each other with one entry per resource on the last
axis; leading axes are batch axes. Only the load ``x`` is differentiable (``custom_jvp`` rules
supply the exact derivatives ``Λ' = ℓ``, ``ℓ'`` and ``ℓ''``, which also keeps gradients finite
at ``x = 0`` and for ``κ = ∞``); parameters are data.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = [
    "Latency",
    "PrefillTime",
    "affine",
    "polynomial",
    "bpr",
    "mm1",
    "davidson",
    "distserve_prefill",
]

_FIELDS = ("a", "b", "c", "p", "d", "kappa", "rho_max")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Latency:
    """``ℓ(x) = a + b·x + c·x^p + d·x/(κ − x)``, linear above ``ρ_max·κ``; fields ``(..., K)``.

    Example:
      >>> import poa_jax as pj
      >>> lat = pj.latency.mm1(mu=2.0)          # 1/(2 − x)
      >>> float(lat.value(1.0))
      1.0
    """

    a: ArrayLike = 0.0
    b: ArrayLike = 0.0
    c: ArrayLike = 0.0
    p: ArrayLike = 1.0
    d: ArrayLike = 0.0
    kappa: ArrayLike = float("inf")
    rho_max: ArrayLike = 0.99

    def value(self, x: ArrayLike) -> jax.Array:
        """``ℓ(x)``, elementwise; ``x`` broadcasts against the fields."""
        return _value(*self._at(x))

    def derivative(self, x: ArrayLike) -> jax.Array:
        """``ℓ'(x)``, elementwise."""
        return _derivative(*self._at(x))

    def second_derivative(self, x: ArrayLike) -> jax.Array:
        """``ℓ''(x)`` (0 in the linear continuation); a solver metric, not differentiated."""
        return _second(*self._at(x))

    def integral(self, x: ArrayLike) -> jax.Array:
        """``Λ(x) = ∫_0^x ℓ``, elementwise (Beckmann potential term)."""
        return _integral(*self._at(x))

    def saturation(self) -> jax.Array:
        """``x̄ = ρ_max·κ``, the load where the linear continuation starts (``inf`` if none)."""
        a = self._arrays()
        return _xbar(a[5], a[6])

    def _arrays(self):
        return tuple(jnp.asarray(getattr(self, f)) for f in _FIELDS)

    def _at(self, x: ArrayLike):
        # Explicit broadcasting (load against fields), so strict rank promotion stays clean.
        x = jnp.asarray(x)
        fields = self._arrays()
        shape = jnp.broadcast_shapes(x.shape, *(f.shape for f in fields))
        return (jnp.broadcast_to(x, shape), *(jnp.broadcast_to(f, shape) for f in fields))

    def as_numpy(self) -> dict[str, np.ndarray]:
        """Fields as NumPy arrays (host side)."""
        return {f: np.asarray(getattr(self, f)) for f in _FIELDS}


def _xbar(kappa, rho):
    return jnp.where(jnp.isinf(kappa), jnp.inf, rho * kappa)


def _singular(x, d, kappa):
    """``(κ, d, x)`` for the singular term, made inert (``κ = 1, d = 0, x = 0``) where κ = ∞."""
    finite = ~jnp.isinf(kappa)
    return jnp.where(finite, kappa, 1.0), jnp.where(finite, d, 0.0), jnp.where(finite, x, 0.0)


def _base(x, a, b, c, p, d, kappa):
    """Value and slope of the un-continued family at ``x ≤ x̄`` (``x ≥ 0``)."""
    k, dd, xs = _singular(x, d, kappa)
    gap = k - xs
    xp1 = jnp.power(x, p - 1.0)  # x^(p−1); p ≥ 1 so 0^0 = 1 gives the right slope at 0
    val = a + b * x + c * x * xp1 + dd * xs / gap
    der = b + c * p * xp1 + dd * k / gap**2
    return val, der


def _split(x, kappa, rho):
    x = jnp.maximum(x, 0.0)
    xbar = _xbar(kappa, rho)
    xc = jnp.minimum(x, xbar)
    # (x − xc) is 0 below x̄; where x̄ = inf, xc = x and the difference is exactly 0.
    return x, xc, jnp.where(jnp.isinf(xbar), 0.0, x - xc)


@jax.custom_jvp
def _value(x, a, b, c, p, d, kappa, rho):
    x, xc, over = _split(x, kappa, rho)
    val, der = _base(xc, a, b, c, p, d, kappa)
    return val + der * over


@jax.custom_jvp
def _derivative(x, a, b, c, p, d, kappa, rho):
    x, xc, _ = _split(x, kappa, rho)
    return _base(xc, a, b, c, p, d, kappa)[1]


def _second(x, a, b, c, p, d, kappa, rho):
    x, xc, over = _split(x, kappa, rho)
    k, dd, xs = _singular(xc, d, kappa)
    # c·p·(p−1)·x^(p−2): zero for p = 1; at x = 0 it is 2c for p = 2 and 0 for p > 2
    # (0^0 = 1, 0^(p−2) = 0), and taken as 0 for 1 < p < 2 (where it is infinite).
    live = (xc > 0) | (p >= 2)
    poly = jnp.where(
        live & (p > 1), c * p * (p - 1.0) * jnp.power(jnp.where(live, xc, 1.0), p - 2.0), 0.0
    )
    sec = poly + 2.0 * dd * k / (k - xs) ** 3
    return jnp.where(over > 0, 0.0, sec)


@jax.custom_jvp
def _integral(x, a, b, c, p, d, kappa, rho):
    x, xc, over = _split(x, kappa, rho)
    k, dd, xs = _singular(xc, d, kappa)
    lam = (
        a * xc
        + b * xc**2 / 2
        + c * jnp.power(xc, p + 1.0) / (p + 1.0)
        + dd * (-xs - k * jnp.log1p(-xs / k))
    )
    val, der = _base(xc, a, b, c, p, d, kappa)
    return lam + val * over + der * over**2 / 2


@_value.defjvp
def _value_jvp(primals, tangents):
    # Differentiable in the load only: parameter tangents are ignored (parameters are data).
    out = _value(*primals)
    return out, _derivative(*primals) * tangents[0]


@_derivative.defjvp
def _derivative_jvp(primals, tangents):
    # ℓ'' in closed form (0 in the linear continuation), so jax.hessian of ℓ is exact.
    out = _derivative(*primals)
    return out, _second(*primals) * tangents[0]


@_integral.defjvp
def _integral_jvp(primals, tangents):
    # Λ' = ℓ exactly: autodiff through the clamp max(x, 0) halves the slope at x = 0 and
    # x^(p−1) at x = 0 gives 0·∞ = NaN for p = 1.
    out = _integral(*primals)
    return out, _value(*primals) * tangents[0]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PrefillTime:
    """DistServe prefill service time ``s(n) = a + b·n + c·n²`` for ``n`` uncached tokens.

    Fields ``(..., K)``, one entry per worker. Published anchor (DistServe, OPT-13B, TP=1,
    A100-80G, milliseconds): ``a = 18.10, b = 0.1019, c = 7.12e-6``.
    """

    a: ArrayLike = 0.0
    b: ArrayLike = 0.0
    c: ArrayLike = 0.0

    def _at(self, n: ArrayLike):
        n = jnp.asarray(n)
        f = [jnp.asarray(v) for v in (self.a, self.b, self.c)]
        shape = jnp.broadcast_shapes(n.shape, *(v.shape for v in f))
        return (jnp.broadcast_to(n, shape), *(jnp.broadcast_to(v, shape) for v in f))

    def value(self, n: ArrayLike) -> jax.Array:
        """``s(n)``, elementwise; ``n`` broadcasts against the fields."""
        n, a, b, c = self._at(n)
        return a + b * n + c * n**2

    def derivative(self, n: ArrayLike) -> jax.Array:
        """``s'(n) = b + 2·c·n``."""
        n, _, b, c = self._at(n)
        return b + 2 * c * n


def affine(a: ArrayLike = 0.0, b: ArrayLike = 1.0) -> Latency:
    """``ℓ(x) = a + b·x``."""
    return Latency(a=a, b=b)


def polynomial(a: ArrayLike = 0.0, c: ArrayLike = 1.0, p: ArrayLike = 1.0) -> Latency:
    """``ℓ(x) = a + c·x^p`` (``p ≥ 1``)."""
    return Latency(a=a, c=c, p=p)


def bpr(t0: ArrayLike, capacity: ArrayLike, alpha: ArrayLike = 0.15, beta: ArrayLike = 4.0):
    """Bureau of Public Roads ``t0·(1 + α·(x/capacity)^β)`` (TNTP: ``b`` is α, ``power`` β)."""
    t0, capacity, alpha, beta = map(jnp.asarray, (t0, capacity, alpha, beta))
    return Latency(a=t0, c=t0 * alpha / capacity**beta, p=beta)


def mm1(mu: ArrayLike, rho_max: ArrayLike = 0.99) -> Latency:
    """M/M/1 mean sojourn time ``1/(μ − x)`` for arrival rate ``x`` and service rate ``μ``."""
    mu = jnp.asarray(mu)
    return Latency(a=1.0 / mu, d=1.0 / mu, kappa=mu, rho_max=rho_max)


def davidson(
    t0: ArrayLike, capacity: ArrayLike, j: ArrayLike = 0.25, rho_max: ArrayLike = 0.99
) -> Latency:
    """Davidson's ``t0·(1 + J·x/(capacity − x))``, singular at capacity."""
    t0 = jnp.asarray(t0)
    return Latency(a=t0, d=t0 * jnp.asarray(j), kappa=capacity, rho_max=rho_max)


def distserve_prefill(a: ArrayLike, b: ArrayLike, c: ArrayLike) -> PrefillTime:
    """``s(n) = a + b·n + c·n²`` (DistServe's prefill form)."""
    return PrefillTime(a=a, b=b, c=c)
