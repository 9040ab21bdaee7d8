r"""One-instance solvers for the routing game: equilibria of a policy and the social optimum.

Each function solves **one** game (unbatched fields) from given starts; :mod:`poa_jax.batching`
vmaps them. They pick a kernel from :mod:`poa_jax.kernels` and wire the game's costs into it:

* equilibrium, ``τ = 0``: the Wardrop condition on the perceived cost ``r`` (a variational
  inequality on the product of simplices), by adaptive extragradient in the metric of the
  diagonal slope of ``r`` (``method="extragradient"``, default), or by Frank–Wolfe with exact
  line search (``method="frank_wolfe"``), valid where ``r`` has a potential: always without the
  cache term, where ``∇Φ = L_j·r_j`` with ``Φ = Σ_k Λ_k(W_k)`` (selfish) or
  ``Σ_k (ω W_k² + D_k²)/2`` (Dynamo, load-balanced).
* equilibrium, ``τ > 0``: the logit fixed point ``x = d·p(r(x))`` by adaptive averaging
  (``method="logit"``); its gap is the residual ``‖d·p(r(x)) − x‖₁ / Σd``.
* optimum: ``min SC(x)``. Each start takes ``descent_steps`` optax Adam steps over the softmax
  parametrisation (global exploration), then extragradient on the marginal cost ``∇SC``
  (autodiff) to the stated gap ``(Σ x·∇SC − Σ_j d_j min_k ∇SC_jk) / SC(x)``, which for convex
  ``SC`` bounds the relative suboptimality. The best candidate among the polished points *and
  the starts themselves* is returned, so warm-starting from an equilibrium guarantees
  ``SC(opt) ≤ SC(eq)``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from poa_jax import game as _game
from poa_jax import policies as _pol
from poa_jax.kernels import descent, loop, vi

__all__ = ["equilibrium", "optimum", "marginal_gap", "overloaded"]


def _mask(g: _game.RoutingGame, x: jax.Array) -> jax.Array:
    return jnp.broadcast_to(g.worker_mask[None, :], x.shape)


def overloaded(g: _game.RoutingGame, x: jax.Array) -> jax.Array:
    """True when an existing worker's load is past ``ρ_max·κ`` (in the linear continuation)."""
    h = _game.hit_fraction(g, x)
    w = _game.worker_work(g, x, h)
    return jnp.any(g.worker_mask & (w > g.latency.saturation()))


def _summary(g, res: vi.VIResult) -> dict:
    return dict(
        flows=res.x,
        social_cost=_game.social_cost(g, res.x),
        gap=res.gap,
        iterations=res.steps,
        status=res.status,
        overloaded=overloaded(g, res.x),
    )


def equilibrium(g, pol, x0, *, method: str, tol: float, max_iters: int) -> dict:
    """Equilibrium of policy ``pol`` in game ``g`` from ``x0 (J, K)``; a dict of results."""
    mask = _mask(g, x0)
    cost = functools.partial(_pol.perceived_cost, pol, g)
    if method == "logit":
        response = lambda x: _pol.logit_response(pol, g, x, g.demand, mask)
        res = vi.smoothed_response(response, x0, g.demand, mask, tol=tol, max_steps=max_iters)
    elif method == "frank_wolfe":
        res = vi.frank_wolfe(
            cost, x0, g.demand, mask, row_weights=g.tokens, tol=tol, max_steps=max_iters
        )
    elif method == "projection":
        slope = functools.partial(_pol.perceived_slope, pol, g)
        res = vi.projection(
            cost, slope, x0, g.demand, mask, tol=tol, max_steps=max_iters, separable=True
        )
    elif method == "extragradient":
        slope = functools.partial(_pol.perceived_slope, pol, g)
        res = vi.extragradient(cost, slope, x0, g.demand, mask, tol=tol, max_steps=max_iters)
    else:  # checked by the public API; kept for direct callers
        raise ValueError(f"unknown method {method!r}")
    return _summary(g, res)


def marginal_gap(g, x: jax.Array, grad: jax.Array) -> jax.Array:
    """``(Σ x·∇SC − Σ_j d_j min_k ∇SC_jk) / SC(x)``, clipped at 0."""
    mask = _mask(g, x)
    lin = jnp.sum(jnp.where(mask, x * grad, 0.0))
    best = jnp.sum(g.demand * jnp.min(jnp.where(mask, grad, jnp.inf), axis=-1))
    sc = _game.social_cost(g, x)
    return jnp.maximum(lin - best, 0.0) / jnp.maximum(sc, jnp.finfo(x.dtype).tiny)


def optimum(g, x0s, *, tol: float, max_iters: int, descent_steps: int, lr: float) -> dict:
    """Social optimum of ``g`` from starts ``x0s (S, J, K)``: the best candidate found."""
    mask = _mask(g, x0s[0])
    sc = functools.partial(_game.social_cost, g)
    grad = jax.grad(sc)
    scale = functools.partial(_game.social_cost_curvature, g)
    gap_fn = functools.partial(marginal_gap, g)

    def one(x0):
        x = x0
        if descent_steps > 0:
            x, _ = descent.minimize_on_simplices(
                sc, x0, g.demand, mask, optimizer=optax.adam(lr), steps=descent_steps
            )
        return vi.projection(
            grad, scale, x, g.demand, mask, tol=tol, max_steps=max_iters, gap_fn=gap_fn,
            separable=True,
        )  # fmt: skip

    polished = jax.vmap(one)(x0s)
    raw_gap = jax.vmap(lambda x: gap_fn(x, grad(x)))(x0s)
    cand_x = jnp.concatenate([polished.x, x0s])
    cand_gap = jnp.concatenate([polished.gap, raw_gap])
    cand_steps = jnp.concatenate([polished.steps, jnp.zeros_like(polished.steps)])
    cand_sc = jax.vmap(sc)(cand_x)
    # NaN never wins the argmin; a non-finite candidate only survives if all are.
    i = jnp.argmin(jnp.where(jnp.isnan(cand_sc), jnp.inf, cand_sc))
    x = cand_x[i]
    gap = cand_gap[i]
    return dict(
        flows=x,
        social_cost=cand_sc[i],
        gap=gap,
        iterations=cand_steps[i],
        status=loop.status_of(gap, tol),
        overloaded=overloaded(g, x),
    )
