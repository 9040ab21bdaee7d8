r"""One-instance solvers for the routing game: equilibria of a policy and the social optimum.

Each solver is three pure functions over a carry ``(state, error, steps)`` for **one** game:
``*_init`` (start), ``*_advance`` (at most ``n`` more iterations, resumable) and ``*_finish``
(results). :mod:`poa_jax.batching` vmaps them and drives ``advance`` in rounds, compacting the
unfinished instances between rounds. They wire the game's costs into :mod:`poa_jax.kernels`:

* equilibrium, ``τ = 0``: the Wardrop condition on the perceived cost ``r`` (a variational
  inequality on the product of simplices), by scaled projection dynamics with heavy-ball
  momentum (:data:`EQ_MOMENTUM`) and an endgame active-set Newton step
  (``method="projection"``, default; parallel workers make the cost map
  column-separable), by adaptive extragradient (``"extragradient"``), or by Frank–Wolfe with exact
  line search (``"frank_wolfe"``), valid where ``r`` has a potential: always without the cache
  term, where ``∇Φ = L_j·r_j`` with ``Φ = Σ_k Λ_k(W_k)`` (selfish) or ``Σ_k (ω W_k² + D_k²)/2``
  (Dynamo, load-balanced).
* equilibrium, ``τ > 0``: the logit fixed point ``x = d·p(r(x))`` by adaptive averaging
  (``method="logit"``); its error is the residual ``‖d·p(r(x)) − x‖₁ / Σd``.
* optimum: ``min SC(x)`` from several starts. Each start takes ``descent_steps`` optax Adam
  steps over the softmax parametrisation (global exploration; 0 by default), then projection
  dynamics with Newton on the marginal cost ``∇SC`` (closed form,
  :func:`poa_jax.game.social_cost_gradient`) to the gap
  ``(Σ x·∇SC − Σ_j d_j min_k ∇SC_jk) / SC(x)``, which for convex ``SC`` bounds the relative
  suboptimality. The best candidate among the polished points *and the starts themselves* is
  returned, so warm-starting from an equilibrium guarantees ``SC(opt) ≤ SC(eq)``.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from poa_jax import game as _game
from poa_jax import policies as _pol
from poa_jax.kernels import descent, loop, vi

__all__ = [
    "Carry",
    "greedy_start",
    "equilibrium",
    "equilibrium_init",
    "equilibrium_advance",
    "equilibrium_finish",
    "equilibrium_pending",
    "optimum",
    "optimum_init",
    "optimum_advance",
    "optimum_finish",
    "best_candidate",
    "optimum_pending",
    "marginal_gap",
    "overloaded",
    "snap_support",
]


#: Gap below which the active-set Newton step is tried (phase 2). Above it the projection
#: dynamics run alone (phase 1): Newton costs ~3 projection steps and is attracted to unstable
#: equilibria, so it only pays in the endgame. Measured on 1000 cache-on 5×6 games (float64,
#: 2-core CPU): a threshold of 1e-3 took 2.5–9× longer to tol 1e-6 and converged less (selfish
#: 91.6% vs 93.7%); from 1e-7 it trims the equilibria's iterations to tol 1e-9 by ~10%.
NEWTON_BELOW = 1e-7
#: The optimum's threshold: Newton on ∇SC did not pay at any tolerance measured (it doubled the
#: time to tol 1e-9 at equal convergence), so it is in effect off.
OPT_NEWTON_BELOW = 1e-12


#: Heavy-ball coefficient of the equilibrium's projection dynamics (restarted on a reversal;
#: :func:`poa_jax.kernels.vi.projection_iteration`). Measured on 2 000 cache-on 5×6 games
#: (float64, tol 1e-5, greedy start, 1 000 iterations at most): β = 0 converges 94.5% in a
#: mean of 243 iterations, 0.5 98.8% in 150, 0.8 99.85% in 119; but the larger β, the more
#: often float32 and float64 settle in different equilibria from the same start (10.4% of
#: 1 000 games at β = 0, 11.4% at 0.5, 15.7% at 0.8), so 0.5. benchmarks/RESULTS.md, ninth
#: session.
EQ_MOMENTUM = 0.5
#: The optimum's (projection dynamics on ∇SC): 0.5 as well. With the cache term SC has several
#: local minima and the heavy ball changes which one a start reaches, but over several starts
#: the best optimum is as low as without it (random_games, 500 float64 / 2 000 float32
#: instances, 1–64 starts: above the best known optimum at 59.4% vs 60.0% of instances with 4
#: starts, 31.0% vs 33.8% with 16; the default scenario with its 16 starts: 10.4% of points
#: either way) in 25–33% fewer iterations. With a single start it is a lottery either way: on
#: the default scenario 20 of 192 points came out higher and 8 lower (mean PoA −0.9%), which
#: is why scenarios default to 4 optimum starts. benchmarks/RESULTS.md, tenth session.
OPT_MOMENTUM = 0.5


class Carry(NamedTuple):
    """Resumable solver carry for one instance (leading ``S`` axis for multi-start optima)."""

    state: Any  # the kernel's state (see kernels.vi)
    error: jax.Array  # () gap of the state's solution
    steps: jax.Array  # () int32 iterations so far


def _mask(g: _game.RoutingGame, x: jax.Array) -> jax.Array:
    return jnp.broadcast_to(g.worker_mask[None, :], x.shape)


def overloaded(g: _game.RoutingGame, x: jax.Array) -> jax.Array:
    """True when an existing worker's load is past ``ρ_max·κ`` (in the linear continuation)."""
    h = _game.hit_fraction(g, x)
    w = _game.worker_work(g, x, h)
    return jnp.any(g.worker_mask & (w > g.latency.saturation()))


# --------------------------------------------------------------------------- equilibrium


def greedy_start(g, pol) -> jax.Array:
    """A start near a stable equilibrium: classes placed one at a time, all-or-nothing.

    Classes in decreasing order of demand each go wholly to the worker of least perceived cost
    given the classes already placed, as a system filling up from empty would route them. With
    the cache externality the uniform split sits near the symmetric, often unstable equilibrium,
    from which the dynamics escape slowly; this start halves the median iteration count on the
    cache-on family (benchmarks/RESULTS.md).
    """
    J, K = g.demand.shape[-1], g.worker_mask.shape[-1]
    dtype = g.demand.dtype
    order = jnp.argsort(-g.demand)

    def place(i, x):
        j = order[i]

        def cost_on(k):
            trial = x.at[j].set(jax.nn.one_hot(k, K, dtype=dtype) * g.demand[j])
            return _pol.perceived_cost(pol, g, trial)[j, k]

        ck = jnp.where(g.worker_mask, jax.vmap(cost_on)(jnp.arange(K)), jnp.inf)
        return x.at[j].set(jax.nn.one_hot(jnp.argmin(ck), K, dtype=dtype) * g.demand[j])

    return jax.lax.fori_loop(0, J, place, jnp.zeros((J, K), dtype))


def _equilibrium_iteration(g, pol, method: str, phase: int = 2) -> vi.Iteration:
    mask = _mask(g, jnp.zeros((g.demand.shape[-1], g.worker_mask.shape[-1]), bool))
    cost = functools.partial(_pol.perceived_cost, pol, g)
    if method == "logit":
        response = lambda x: _pol.logit_response(pol, g, x, g.demand, mask)
        return vi.smoothed_response_iteration(response, g.demand, mask)
    if method == "frank_wolfe":
        return vi.frank_wolfe_iteration(cost, g.demand, mask, row_weights=g.tokens)
    slope = functools.partial(_pol.perceived_slope, pol, g)
    if method == "projection":
        return vi.projection_iteration(
            cost, slope, g.demand, mask, newton=phase == 2, newton_below=NEWTON_BELOW,
            momentum=EQ_MOMENTUM,
        )  # fmt: skip
    if method == "extragradient":
        return vi.extragradient_iteration(cost, slope, g.demand, mask)
    raise ValueError(f"unknown method {method!r}")  # checked by the public API


def equilibrium_init(g, pol, x0, *, method: str) -> Carry:
    """Starts the equilibrium solver of policy ``pol`` in game ``g`` at ``x0 (J, K)``."""
    state, err = _equilibrium_iteration(g, pol, method).init(x0)
    return Carry(state, err, jnp.int32(0))


def phase_of(error: jax.Array, below: float = NEWTON_BELOW) -> jax.Array:
    """1 while the gap is above ``below`` (projection only), else 2 (with Newton)."""
    return jnp.where(error < below, 2, 1)


def equilibrium_advance(g, pol, carry: Carry, *, method, tol, max_iters, budget, phase) -> Carry:
    """At most ``budget`` more iterations of ``phase`` (stops at ``tol`` or ``max_iters``; phase
    1 also stops when the gap falls below :data:`NEWTON_BELOW`)."""
    it = _equilibrium_iteration(g, pol, method, phase)
    stop = NEWTON_BELOW if (phase == 1 and method == "projection") else 0.0
    return Carry(
        *loop.advance(
            it.step, carry.state, carry.error, carry.steps,
            tol=tol, max_steps=max_iters, budget=budget, stop_below=stop,
        )
    )  # fmt: skip


def equilibrium_pending(carry: Carry, *, tol, max_iters, method: str = "projection") -> jax.Array:
    """Work left for this instance: 0 none, else the phase it is in (1 or 2). Only
    ``projection`` has a phase 2 (the Newton endgame); the other methods' iteration is the same
    in both, so their lanes stay in phase 1 (one program, one call per round, not two)."""
    p = loop.pending(carry.error, carry.steps, tol, max_iters)
    return jnp.where(p, phase_of(carry.error) if method == "projection" else 1, 0)


#: :func:`snap_support` tries to clear flows below ``SNAP·√tol`` of their class's demand.
SNAP = 1.0


def snap_support(g, pol, x: jax.Array, gap: jax.Array, *, tol: float):
    """A converged Wardrop point with its near-empty flows cleared, where that is no worse.

    At a *degenerate* equilibrium (a worker left unused whose cost equals the used ones', as
    in Pigou's network) the relative gap grows with the square of the distance: a point with
    flow ``ε`` on the unused worker has gap ``~ε²`` but a social cost ``~ε`` off, so a gap
    within ``tol`` leaves SC (and PoA, the price of stability) only ``~√tol`` accurate
    (float32 Pigou: PoS 1.33309 for 4/3). Each class's flows below ``SNAP·√tol·d_j`` are moved
    onto its other used workers in proportion to their flows; the result is kept where its
    gap is no larger (Pigou: ``[1 − ε, ε] → [1, 0]``, gap 0, SC 1). A genuinely interior small
    flow is kept: clearing it leaves a worker cheaper than the used ones, a larger gap.
    Returns ``(x, gap)``, the gap at least :func:`poa_jax.kernels.vi.gap_resolution` of ``x``.
    """
    mask = _mask(g, x)
    d = g.demand[:, None]
    small = mask & (x < SNAP * (tol**0.5) * d) & (x > 0)
    keep = mask & ~small
    kept = jnp.sum(jnp.where(keep, x, 0.0), axis=-1, keepdims=True)
    tiny = jnp.finfo(x.dtype).tiny
    snapped = jnp.where(keep, x * (d / jnp.maximum(kept, tiny)), 0.0)
    snapped = jnp.where(kept > 0, snapped, x)  # a class whose flows are all small: as it was
    c_snap = _pol.perceived_cost(pol, g, snapped)
    new_gap = vi.relative_gap(snapped, c_snap, g.demand, mask)
    use = jnp.any(small) & (new_gap <= gap)
    # Never a gap finer than the dtype resolves (vi.gap_resolution): float32 at tol 1e-7 read
    # "gap 0, converged" where the true gap was up to 2.8× tol.
    res_x = vi.gap_resolution(x, _pol.perceived_cost(pol, g, x), g.demand, mask)
    res_snap = vi.gap_resolution(snapped, c_snap, g.demand, mask)
    gap = jnp.where(use, jnp.maximum(new_gap, res_snap), jnp.maximum(gap, res_x))
    return jnp.where(use, snapped, x), gap


def equilibrium_finish(g, pol, carry: Carry, *, method, tol) -> dict:
    """Per-instance results from a carry (Wardrop points through :func:`snap_support`)."""
    x = _equilibrium_iteration(g, pol, method).solution(carry.state)
    gap = carry.error
    if method != "logit":
        x, gap = snap_support(g, pol, x, gap, tol=tol)
    return dict(
        flows=x,
        social_cost=_game.social_cost(g, x),
        gap=gap,
        iterations=carry.steps,
        status=loop.status_of(gap, tol),
        overloaded=overloaded(g, x),
    )


def equilibrium(g, pol, x0, *, method: str, tol: float, max_iters: int) -> dict:
    """Equilibrium in one call (no compaction): init, advance to the end, finish."""
    c = equilibrium_init(g, pol, x0, method=method)
    for phase in (1, 2):
        c = equilibrium_advance(g, pol, c, method=method, tol=tol, max_iters=max_iters,
                                budget=max_iters, phase=phase)  # fmt: skip
    return equilibrium_finish(g, pol, c, method=method, tol=tol)


# --------------------------------------------------------------------------- optimum


def marginal_gap(g, x: jax.Array, grad: jax.Array) -> jax.Array:
    """``(Σ x·∇SC − Σ_j d_j min_k ∇SC_jk) / SC(x)``, clipped at 0."""
    mask = _mask(g, x)
    lin = jnp.sum(jnp.where(mask, x * grad, 0.0))
    best = jnp.sum(g.demand * jnp.min(jnp.where(mask, grad, jnp.inf), axis=-1))
    sc = _game.social_cost(g, x)
    return jnp.maximum(lin - best, 0.0) / jnp.maximum(sc, jnp.finfo(x.dtype).tiny)


def marginal_resolution(g, x: jax.Array) -> jax.Array:
    """The smallest :func:`marginal_gap` the dtype can certify at ``x``
    (:func:`poa_jax.kernels.vi.gap_resolution` of ``∇SC`` over ``SC``)."""
    grad = _game.social_cost_gradient(g, x)
    return vi.gap_resolution(x, grad, g.demand, _mask(g, x), _game.social_cost(g, x))


def _optimum_iteration(g, phase: int = 2) -> vi.Iteration:
    mask = _mask(g, jnp.zeros((g.demand.shape[-1], g.worker_mask.shape[-1]), bool))
    grad = functools.partial(_game.social_cost_gradient, g)
    scale = functools.partial(_game.social_cost_curvature, g)
    gap_fn = functools.partial(marginal_gap, g)
    return vi.projection_iteration(
        grad, scale, g.demand, mask, gap_fn=gap_fn, newton=phase == 2,
        newton_below=OPT_NEWTON_BELOW, momentum=OPT_MOMENTUM,
    )  # fmt: skip


def optimum_init(g, x0, *, descent_steps: int, lr: float) -> Carry:
    """Starts the optimum polish from one start ``x0 (J, K)`` (after optional optax descent).

    Each start is its own lane: the batch edge compacts starts independently, so a slow start
    does not hold its instance's other starts (they would otherwise run, masked, as long).
    """
    x = x0
    if descent_steps > 0:
        mask = _mask(g, x0)
        sc = functools.partial(_game.social_cost, g)
        x, _ = descent.minimize_on_simplices(
            sc, x0, g.demand, mask, optimizer=optax.adam(lr), steps=descent_steps
        )
    state, err = _optimum_iteration(g).init(x)
    return Carry(state, err, jnp.int32(0))


def optimum_advance(g, carry: Carry, *, tol, max_iters, budget, phase) -> Carry:
    """At most ``budget`` more iterations of ``phase`` for one start."""
    it = _optimum_iteration(g, phase)
    stop = OPT_NEWTON_BELOW if phase == 1 else 0.0
    return Carry(
        *loop.advance(
            it.step, carry.state, carry.error, carry.steps,
            tol=tol, max_steps=max_iters, budget=budget, stop_below=stop,
        )
    )  # fmt: skip


def optimum_pending(carry: Carry, *, tol, max_iters) -> jax.Array:
    """Work left for one start: 0 none, else the phase it is in (1 or 2)."""
    p = loop.pending(carry.error, carry.steps, tol, max_iters)
    return jnp.where(p, phase_of(carry.error, OPT_NEWTON_BELOW), 0)


def optimum_finish(g, carry: Carry, x0s: jax.Array, *, tol) -> dict:
    """The best candidate among the polished starts (``carry`` with a leading start axis ``S``)
    and the raw starts ``x0s (S, J, K)``."""
    polished = jax.vmap(_optimum_iteration(g).solution)(carry.state)
    return best_candidate(g, polished, carry.error, carry.steps, x0s, tol=tol)


def best_candidate(g, polished, gap, steps, x0s, *, tol) -> dict:
    """The optimum's result from polished points ``(S, J, K)`` with their gaps and steps, and
    the raw starts ``x0s (S, J, K)`` (any solver's polish: the XLA loop or the fused kernel)."""
    grad = functools.partial(_game.social_cost_gradient, g)
    raw_gap = jax.vmap(lambda x: marginal_gap(g, x, grad(x)))(x0s)
    cand_x = jnp.concatenate([polished, x0s])
    # Never a gap finer than the dtype resolves (see marginal_resolution).
    cand_gap = jnp.maximum(
        jnp.concatenate([gap, raw_gap]), jax.vmap(lambda x: marginal_resolution(g, x))(cand_x)
    )
    cand_steps = jnp.concatenate([steps, jnp.zeros_like(steps)])
    cand_sc = jax.vmap(functools.partial(_game.social_cost, g))(cand_x)
    # The lowest cost wins, but a converged candidate is preferred over one that is cheaper by
    # no more than the tolerance (a raw start can win by rounding alone). NaN never wins.
    finite = jnp.where(jnp.isnan(cand_sc), jnp.inf, cand_sc)
    i_all = jnp.argmin(finite)
    i_conv = jnp.argmin(jnp.where(cand_gap <= tol, finite, jnp.inf))
    any_conv = jnp.any(cand_gap <= tol)
    close = finite[i_conv] <= finite[i_all] * (1.0 + tol)
    i = jnp.where(any_conv & close, i_conv, i_all)
    x = cand_x[i]
    return dict(
        flows=x,
        social_cost=cand_sc[i],
        gap=cand_gap[i],
        iterations=cand_steps[i],
        status=loop.status_of(cand_gap[i], tol),
        overloaded=overloaded(g, x),
    )


def optimum(g, x0s, *, tol: float, max_iters: int, descent_steps: int, lr: float) -> dict:
    """Optimum in one call (no compaction)."""

    def one(x0):
        c = optimum_init(g, x0, descent_steps=descent_steps, lr=lr)
        for phase in (1, 2):
            c = optimum_advance(g, c, tol=tol, max_iters=max_iters, budget=max_iters, phase=phase)
        return c

    return optimum_finish(g, jax.vmap(one)(x0s), x0s, tol=tol)
