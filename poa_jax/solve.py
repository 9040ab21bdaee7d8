"""Public solvers: ``solve_equilibrium`` and ``solve_optimum`` over batches of routing games.

Both accept a :class:`~poa_jax.RoutingGame` whose fields carry any leading batch axes, check it
eagerly (bad input raises :class:`~poa_jax.InputError` before compiling), solve every instance in
one jitted, vmapped call, and return a :class:`Solution` with per-instance outcomes. Nothing
raises inside a batch: an instance that did not converge says so in ``status``.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from poa_jax import batching, tolerances
from poa_jax.errors import InputError
from poa_jax.game import RoutingGame
from poa_jax.graph import GraphGame
from poa_jax.kernels.loop import CONVERGED
from poa_jax.policies import Policy, selfish
from poa_jax.starts import start_shares

__all__ = ["Solution", "solve_equilibrium", "solve_optimum", "METHODS", "starting_flows"]

METHODS = ("auto", "projection", "extragradient", "frank_wolfe")
STATUS_NAMES = {0: "converged", 1: "max_iterations", 2: "non_finite"}


@dataclasses.dataclass(frozen=True)
class Solution:
    """Per-instance results; ``...`` is the game's batch shape.

    Attributes:
      flows: ``(..., J, K)`` routing, rows on their simplices.
      social_cost: ``(...)`` ``SC = Σ x·c`` (true cost, whatever the policy).
      mean_latency: ``(...)`` ``SC / Σ_j d_j``.
      gap: ``(...)`` relative gap at ``flows`` (see :mod:`poa_jax.kernels.vi`).
      iterations: ``(...)`` int, iterations of the loop that produced ``flows``.
      status: ``(...)`` int, 0 converged, 1 max iterations, 2 non-finite.
      converged: ``(...)`` bool, ``status == 0``.
      overloaded: ``(...)`` bool, a worker runs past ``ρ_max·κ`` (finite costs, flagged).
    """

    flows: np.ndarray
    social_cost: np.ndarray
    mean_latency: np.ndarray
    gap: np.ndarray
    iterations: np.ndarray
    status: np.ndarray
    converged: np.ndarray
    overloaded: np.ndarray


def _resolve(dtype, tol, max_iters):
    """Checks ``tol``/``max_iters`` (before anything touches a device); fills defaults.

    ``tol`` bounds a relative gap, which is at most 1: ``tol >= 1`` would accept every start.
    """
    from poa_jax.validation import INT32_MAX, integer, number

    if tol is None:
        tol = tolerances.default_tol(batching.float_dtype(dtype))
    else:
        tol = number("tol", tol)
    if not (np.isfinite(tol) and 0 < tol < 1):
        raise InputError(f"tol = {tol!r}: must be in (0, 1) (a relative gap is at most 1)")
    max_iters = tolerances.DEFAULT_MAX_ITERS if max_iters is None else max_iters
    return tol, integer("max_iters", max_iters, 1, INT32_MAX)


def _check_method(prep: batching.Prepared, method: str) -> None:
    """Refuses a ``method`` that would be ignored or invalid for some instance of ``prep``.

    Logit policies (``τ > 0``) are solved by logit averaging whatever ``method`` says, so they
    take ``"auto"`` only; ``"frank_wolfe"`` needs a potential, which the cache term
    (``shareable > 0``) breaks unless the policy ignores cache hits (load-balanced).
    """
    tau = np.asarray(prep.policy.tau)
    if method != "auto" and np.any(tau > 0):
        i = _where(prep, int(np.argmax(tau > 0)))
        raise InputError(
            f"method {method!r}: policy.tau{i} = {float(tau[np.argmax(tau > 0)])!r} > 0, and "
            "logit policies (tau > 0) are solved by logit averaging: use method 'auto'"
        )
    if method == "frank_wolfe":
        cache = np.any(np.asarray(prep.game.shareable) > 0, axis=-1)
        pol = prep.policy
        hits = (np.asarray(pol.w_true) > 0) | (np.asarray(pol.w_prefill) > 0)
        bad = cache & hits
        if bad.any():
            i = _where(prep, int(np.argmax(bad)))
            raise InputError(
                f"method 'frank_wolfe': needs a potential, which the cache term breaks "
                f"(RoutingGame.shareable{i} > 0 with a policy that sees cache hits): use "
                "'projection' or 'extragradient'"
            )


def _where(prep: batching.Prepared, flat: int) -> str:
    """``"[i, j]"``: the batch index of flat instance ``flat`` (``""`` when unbatched)."""
    if not prep.batch_shape:
        return ""
    idx = np.unravel_index(flat, prep.batch_shape)
    return f"[{', '.join(str(int(v)) for v in idx)}]"


def rescale_starts(a, mask, demand, dtype) -> np.ndarray:
    """Flows ``a (N, S, J, K)`` rescaled per class row to ``demand (N, J)`` on ``mask (N, K)``:
    masked workers zeroed, a row summing to zero uniform over the existing workers."""
    mask = np.asarray(mask, bool)[:, None, None, :]
    a = np.where(mask, np.asarray(a, np.float64), 0.0)
    # Each row over its largest entry first: a row summing past the float64 maximum had a total
    # of inf, share 0 and an all-zero start, the cheapest "optimum" (SC 0, converged).
    top = a.max(-1, keepdims=True)
    a = a / np.where(top > 0, top, 1.0)
    total = a.sum(-1, keepdims=True)
    uniform = mask / mask.sum(-1, keepdims=True)
    share = np.where(total > 0, a / np.where(total > 0, total, 1.0), uniform)
    return (share * np.asarray(demand, np.float64)[:, None, :, None]).astype(dtype)


def _read_starts(x0) -> np.ndarray:
    from poa_jax.validation import as_array, check

    a = as_array("x0", x0)
    check("x0", a, "finite_ge0")
    return a


def _optimum_starts(prep: batching.Prepared, x0) -> np.ndarray:
    """Extra optimum starts ``x0 (..., J, K)`` or ``(..., S, J, K)`` as ``(N, S, J, K)``,
    checked and rescaled as :func:`poa_jax.poa.warm_starts` does."""
    a = _read_starts(x0)
    j, k = prep.num_classes, prep.num_workers
    nb = len(prep.batch_shape)
    if a.ndim <= nb + 2:  # one start per instance
        a, s = a[..., None, :, :] if a.ndim >= 2 else a, 1
    else:
        s = a.shape[-3]
    want = prep.batch_shape + (s, j, k)
    try:
        if a.ndim > nb + 3:
            raise ValueError
        a = np.broadcast_to(a, want)
    except ValueError:
        raise InputError(
            f"x0 has shape {a.shape}: must broadcast to {prep.batch_shape + (j, k)} "
            f"(one start) or {prep.batch_shape + ('S', j, k)} (S starts)"
        ) from None
    a = a.reshape((-1, s, j, k))
    return rescale_starts(a, prep.game.worker_mask, prep.game.demand, prep.dtype)


def starting_flows(
    prep: batching.Prepared, starts: int, seed: int = 0, greedy: bool = False
) -> np.ndarray:
    """Start flows ``(N, S, J, K)``.

    With ``greedy`` start 0 is :func:`poa_jax.solvers.greedy_start` for the prepared policy
    (classes placed one at a time on their cheapest worker) and start 1 the uniform split;
    without, start 0 is uniform. The others are :func:`poa_jax.starts.start_shares`: herds,
    then random mixes drawn from ``seed`` alone and shared by every instance, so that an
    instance's starts — and its results — do not depend on the rest of the batch or on how a
    sweep is chunked.
    """
    demand = np.asarray(prep.game.demand, np.float64)  # (N, J)
    shares = start_shares(np.asarray(prep.game.worker_mask), starts, seed)  # (N, S, K)
    x0 = demand[:, None, :, None] * shares[:, :, None, :]
    if greedy:  # the greedy start replaces the last generated one: still `starts` in all
        g0 = np.asarray(batching.greedy_starts(prep.game, prep.policy), np.float64)
        x0 = np.concatenate([g0[:, None], x0[:, : starts - 1]], axis=1)
    return x0.astype(prep.dtype)


def _to_solution(out: dict, prep: batching.Prepared, batch_shape=None) -> Solution:
    out = jax.device_get(out)
    shape = prep.batch_shape if batch_shape is None else batch_shape
    r = {k: np.asarray(v).reshape(shape + np.asarray(v).shape[1:]) for k, v in out.items()}
    total = np.asarray(prep.game.demand).sum(-1).reshape(shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(total > 0, r["social_cost"] / np.where(total > 0, total, 1), 0.0)
    return Solution(
        flows=r["flows"],
        social_cost=r["social_cost"],
        mean_latency=mean,
        gap=r["gap"],
        iterations=r["iterations"],
        status=r["status"],
        converged=r["status"] == CONVERGED,
        overloaded=r["overloaded"],
    )


def _equilibria_flat(prep, x0, method, tol, max_iters) -> dict:
    """Solves prepared instances from ``x0 (N, S, J, K)``; dispatches on τ = 0 / τ > 0."""
    tau = np.asarray(prep.policy.tau)
    logit = tau > 0
    groups = []
    if np.any(~logit):
        m = "projection" if method == "auto" else method
        groups.append((np.flatnonzero(~logit), m))
    if np.any(logit):
        groups.append((np.flatnonzero(logit), "logit"))
    if len(groups) == 1:
        return batching.equilibria(
            prep.game, prep.policy, x0, method=groups[0][1], tol=tol, max_iters=max_iters
        )
    parts = {}
    for idx, m in groups:
        sub = batching.take(prep, idx)
        parts[m] = (idx, jax.device_get(batching.equilibria(
            sub.game, sub.policy, x0[idx], method=m, tol=tol, max_iters=max_iters
        )))  # fmt: skip
    first = next(iter(parts.values()))[1]
    n = x0.shape[0]
    out = {
        k: np.empty((n,) + np.asarray(v).shape[1:], np.asarray(v).dtype) for k, v in first.items()
    }
    for idx, res in parts.values():
        for k, v in res.items():
            out[k][idx] = v
    return out


def not_for_graphs(**given) -> None:
    """:class:`InputError` for an option given a value other than its default (``name=(value,
    default)``) where the game is a :class:`~poa_jax.graph.GraphGame`: the path solvers have
    one equilibrium (the link flows are unique) and their own starts, so it would be ignored."""
    for name, (value, default) in given.items():
        if default is None:
            same = value is None
        else:
            plain = type(value) is not bool and not isinstance(value, np.ndarray)
            same = plain and value == default
        if not same:
            raise InputError(
                f"{name} = {value!r}: does not apply to a GraphGame (the path solvers find the "
                "unique link flows from their own starts)"
            )


def solve_equilibrium(
    game: RoutingGame,
    policy: Policy | None = None,
    *,
    tol: float | None = None,
    max_iters: int | None = None,
    method: str = "auto",
    x0=None,
    dtype=None,
) -> Solution:
    """Equilibrium of ``policy`` for every game in the batch, from one start each.

    The equilibrium condition (DESIGN §2.2): every class uses only workers of minimal perceived
    cost (``τ = 0``), or routes by the logit response (``τ > 0``).

    Args:
      game: a :class:`~poa_jax.RoutingGame`, fields with leading batch axes ``...``, or a
        :class:`~poa_jax.graph.GraphGame` (Wardrop equilibrium; result a
        :class:`~poa_jax.graph_solve.GraphSolution` with ``link_flows`` and ``potential``), or
        a caching game, selfish policy: :class:`~poa_jax.SelfishCachingGame` (best response from
        many starts, :func:`poa_jax.caching.best_response`; ``x0 (..., S, n)`` bool, ``max_iters``
        bounds the rounds), :class:`~poa_jax.TieredCacheGame`
        (:func:`poa_jax.tiered_cache.solve_equilibrium`; ``x0`` a placement ``(..., W, T, B)``)
        or :class:`~poa_jax.CoupledGame` (the fixed point, :func:`poa_jax.coupled.solve`).
      policy: a :class:`~poa_jax.policies.Policy` (default selfish); fields broadcast with ``...``.
        Graph games take the selfish policy only.
      tol: relative-gap tolerance in (0, 1) (default by dtype, :mod:`poa_jax.tolerances`).
      max_iters: iteration bound (default 1000).
      method: ``auto`` (= ``projection``: projection dynamics with an endgame Newton step;
        logit averaging for τ > 0, which takes ``auto`` only), ``projection``,
        ``extragradient`` or ``frank_wolfe`` (needs a potential: no cache term, or
        load-balanced; refused otherwise). Graph games: ``auto``
        (= ``paths``), ``paths`` or ``frank_wolfe`` (:mod:`poa_jax.graph_solve`).
      x0: optional start flows ``(..., J, K)``, finite and >= 0; each class's row is rescaled
        to its demand (a row summing to zero starts uniform) and missing workers are zeroed, as
        for :func:`~poa_jax.price_of_anarchy`'s and :func:`solve_optimum`'s ``x0``. Default
        the greedy start (:func:`poa_jax.solvers.greedy_start`: classes placed one at a time,
        all-or-nothing, on their cheapest worker), not the uniform split: with the cache term
        they can settle in different equilibria.
      dtype: float32 or float64 (default: JAX's default float).

    Returns:
      A :class:`Solution`.

    Example:
      >>> import poa_jax as pj
      >>> g = pj.RoutingGame(demand=[1.0], latency=pj.Latency(a=[0.0, 1.0], b=[1.0, 0.0]))
      >>> sol = pj.solve_equilibrium(g)
      >>> sol.flows.round(4).tolist(), bool(sol.converged)
      ([[1.0, 0.0]], True)
    """
    if isinstance(game, GraphGame):
        _selfish_only(policy)
        not_for_graphs(x0=(x0, None))
        return _graph(game, False, tol, max_iters, method, dtype)
    cached = _caching_equilibrium(game, policy, tol, max_iters, x0, dtype, method)
    if cached is not None:
        return cached
    if method not in METHODS:
        raise InputError(f"method {method!r} is unknown: must be one of {', '.join(METHODS)}")
    tol, max_iters = _resolve(dtype, tol, max_iters)
    prep = batching.prepare(game, policy if policy is not None else selfish(), dtype)
    _check_method(prep, method)
    if x0 is None:
        start = starting_flows(prep, 1, greedy=True)
    else:
        start = _user_start(prep, x0)[:, None]
    out = _equilibria_flat(prep, start, method, tol, max_iters)
    out = {k: np.asarray(v)[:, 0] for k, v in jax.device_get(out).items()}
    return _to_solution(out, prep)


def _user_start(prep, x0) -> np.ndarray:
    a = _read_starts(x0)
    j, k = prep.num_classes, prep.num_workers
    try:
        a = np.broadcast_to(a, prep.batch_shape + (j, k))
    except ValueError:
        want = prep.batch_shape + (j, k)
        raise InputError(f"x0 has shape {a.shape}: must broadcast to {want}") from None
    # Rescaled, not left to the solvers' Euclidean projection: shares [0.9, 0.1] of a demand of
    # 10 started at [5.4, 4.6] instead of [9, 1], and with the cache term 107 of 200 random
    # games settled in another equilibrium than price_of_anarchy's from the same x0.
    a = a.reshape((-1, 1, j, k))
    return rescale_starts(a, prep.game.worker_mask, prep.game.demand, prep.dtype)[:, 0]


def solve_optimum(
    game: RoutingGame,
    *,
    tol: float | None = None,
    max_iters: int | None = None,
    starts: int = 2,
    descent_steps: int = 0,
    lr: float = 0.05,
    x0=None,
    seed: int = 0,
    dtype=None,
    method: str = "auto",
) -> Solution:
    """Coordinated optimum ``argmin SC(x)`` for every game in the batch, multi-start.

    Args:
      game: a :class:`~poa_jax.RoutingGame` batch, a :class:`~poa_jax.graph.GraphGame`, a
        :class:`~poa_jax.SelfishCachingGame` (exact by enumeration up to n = 16, else local
        search with the LP lower bound: :class:`poa_jax.caching.CachingOptimum`) or a
        :class:`~poa_jax.TieredCacheGame` (projected gradient from no cache, a uniform fill,
        the equilibria and ``starts`` random placements, or from ``x0``:
        :class:`poa_jax.tiered_cache.TieredSolution`) or a
        :class:`~poa_jax.CoupledGame` (joint descent from the coupled fixed point and
        ``starts`` generated starts: :class:`poa_jax.coupled.CoupledOptimum`).
      tol: gap tolerance on the marginal-cost condition (default by dtype).
      max_iters: iteration bound of the polish (default 1000).
      starts: number of generated starts (uniform, herds, random; see :func:`starting_flows`).
      descent_steps: optax Adam steps over the softmax parametrisation before the polish
        (an integer >= 0).
      lr: Adam learning rate (finite, > 0).
      x0: optional extra warm starts ``(..., S', J, K)`` or ``(..., J, K)``, e.g. equilibria:
        finite and >= 0; each class's row is rescaled to its demand (a row summing to zero
        starts uniform) and missing workers are zeroed, as for
        :func:`~poa_jax.price_of_anarchy`'s ``x0``.
      seed: seed of the random starts (an integer >= 0).
      dtype: float32 or float64.
      method: for a :class:`~poa_jax.graph.GraphGame`: ``auto`` (= ``paths``), ``paths`` or
        ``frank_wolfe`` on the marginal link costs, or ``descent`` (optax Adam on path
        logits). ``starts``, ``descent_steps`` and ``x0`` do not apply there: with the convex
        link costs of the family the optimum is unique.

    Returns:
      A :class:`Solution` (``social_cost`` is the optimum; ``gap`` its optimality gap), or a
      :class:`~poa_jax.graph_solve.GraphSolution` for a graph game.
    """
    if isinstance(game, GraphGame):
        not_for_graphs(starts=(starts, 2), descent_steps=(descent_steps, 0), lr=(lr, 0.05),
                       x0=(x0, None), seed=(seed, 0))  # fmt: skip
        return _graph(game, True, tol, max_iters, method, dtype)
    cached = _caching_optimum(game, x0, seed, dtype, starts)
    if cached is not None:
        return cached
    if method != "auto":
        raise InputError(f"method {method!r}: routing-game optima take method 'auto' only")
    tol, max_iters = _resolve(dtype, tol, max_iters)
    seed, descent_steps, lr = _optimum_options(seed, descent_steps, lr)
    prep = batching.prepare(game, None, dtype)
    extra = None if x0 is None else _optimum_starts(prep, x0)
    x0s = starting_flows(prep, starts, seed)
    if extra is not None:
        x0s = np.concatenate([x0s, extra], axis=1)
    out = batching.optima(
        prep.game, x0s, tol=tol, max_iters=max_iters, descent_steps=descent_steps, lr=lr
    )
    return _to_solution(out, prep)


def _optimum_options(seed, descent_steps, lr=0.05) -> tuple[int, int, float]:
    """Checks the optimum's ``seed``, ``descent_steps`` and ``lr``."""
    from poa_jax.validation import INT32_MAX, SEED_MAX, integer, number

    seed = integer("seed", seed, 0, SEED_MAX)
    descent_steps = integer("descent_steps", descent_steps, 0, INT32_MAX)
    lr = number("lr", lr)
    if not (np.isfinite(lr) and lr > 0):
        raise InputError(f"lr = {lr!r}: must be finite and > 0")
    return seed, descent_steps, lr


def _rounds_kw(max_iters) -> dict:
    """``max_iters`` as the caching solvers' ``max_rounds`` keyword, checked under the name the
    caller used."""
    if max_iters is None:
        return {}
    from poa_jax.validation import INT32_MAX, integer

    return {"max_rounds": integer("max_iters", max_iters, 1, INT32_MAX)}


def _caching_equilibrium(game, policy, tol, max_iters, x0, dtype, method="auto"):
    """The caching games' equilibria (their own result types), or None for other games."""
    from poa_jax import caching, coupled, tiered_cache

    if not isinstance(game, (caching.SelfishCachingGame, tiered_cache.TieredCacheGame,
                             coupled.CoupledGame)):  # fmt: skip
        return None
    _selfish_only(policy)
    kw = _rounds_kw(max_iters)
    if isinstance(game, caching.SelfishCachingGame):
        caching.check_method(method)
        return caching.best_response(game, x0=x0, dtype=dtype, tol=tol, **kw)
    if isinstance(game, tiered_cache.TieredCacheGame):
        caching.check_method(method, "the fluid tiered game is solved by best response")
        return tiered_cache.solve_equilibrium(game, tol=tol, y0=x0, dtype=dtype, **kw)
    if x0 is not None:
        raise InputError("x0: the coupled game starts from its own fixed-point iteration")
    return coupled.solve(game, tol=tol, max_iters=max_iters, dtype=dtype)


def _caching_optimum(game, x0, seed, dtype, starts):
    """The discrete and fluid caching games' optima, or None for other games."""
    from poa_jax import caching, coupled, tiered_cache

    if isinstance(game, caching.SelfishCachingGame):
        if x0 is not None:
            raise InputError("x0: the discrete caching optimum takes no start")
        # at least the discrete game's own 16 starts, as price_of_anarchy
        starts = max(caching._starts(starts), 16)
        return caching.solve_optimum(game, starts=starts, seed=seed, dtype=dtype)
    if isinstance(game, tiered_cache.TieredCacheGame):
        if x0 is None:  # SC is not convex: start from nothing, a uniform fill, equilibria
            eq = tiered_cache.solve_equilibrium(game, seed=seed, dtype=dtype).placement
            t = eq.shape[-2]
            if int(starts) != starts or starts < 0:
                raise InputError(f"starts = {starts!r}: must be an integer >= 0")
            prep = tiered_cache._prepare(game, dtype)
            rnd = tiered_cache._optimum_starts(prep, starts, seed)[:, :, : prep.workers]
            rnd = rnd.reshape(eq.shape[:-3] + rnd.shape[1:]).astype(eq.dtype)
            x0 = np.concatenate(
                [np.stack([np.zeros_like(eq), np.full_like(eq, 1.0 / t), eq], axis=-4), rnd],
                axis=-4,
            )
        return tiered_cache.solve_optimum(game, y0=x0, dtype=dtype)
    if isinstance(game, coupled.CoupledGame):
        if x0 is not None:
            raise InputError("x0: the coupled optimum starts from the coupled fixed point")
        return coupled.solve_optimum(game, dtype=dtype, optimum_starts=starts, seed=seed)
    return None


def _selfish_only(policy) -> None:
    if policy is None:
        return
    if not isinstance(policy, Policy):
        raise InputError(f"policy: expected a pj.policies.Policy, got {type(policy).__name__}")
    ref = selfish()
    same = all(
        np.all(np.asarray(getattr(policy, f)) == getattr(ref, f))
        for f in ("w_true", "w_prefill", "w_decode", "tau")
    )
    if not same:
        raise InputError(
            "policy: graph and caching games are solved for the selfish (Wardrop) policy only"
        )


def _graph(game, optimum: bool, tol, max_iters, method: str, dtype):
    from poa_jax.graph_solve import solve_graph

    return solve_graph(
        game, optimum=optimum, tol=tol, max_iters=max_iters,
        method="paths" if method == "auto" else method, dtype=dtype,
    )  # fmt: skip
