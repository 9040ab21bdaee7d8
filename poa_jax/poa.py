r"""Price of Anarchy and price of stability of a router policy (DESIGN §2.2).

    PoA(θ) = SC(worst equilibrium of θ found) / SC(opt),   PoS(θ) = SC(best found) / SC(opt).

With the cache externality equilibria need not be unique, so the equilibrium is solved from
several starts (:func:`poa_jax.solve.starting_flows`: greedy, uniform, herds, random) and the
worst and best *converged* ones are kept (all of them, flagged, if none converged). The optimum is
multi-start and warm-started from every equilibrium found; the optimum's cost is additionally the
minimum over those equilibria, so ``SC(opt) ≤ SC(eq)`` and ``PoA ≥ PoS ≥ 1`` by construction.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from poa_jax import batching, solve, tolerances
from poa_jax.game import RoutingGame
from poa_jax.graph import GraphGame
from poa_jax.kernels.loop import CONVERGED
from poa_jax.policies import Policy, selfish
from poa_jax.validation import MAX_STARTS, integer

__all__ = ["PoAResult", "price_of_anarchy"]


@dataclasses.dataclass(frozen=True)
class PoAResult:
    """Per-instance PoA results; ``...`` is the batch shape, ``S`` the number of starts.

    Attributes:
      poa: ``(...)`` SC(worst equilibrium) / SC(opt), ≥ 1; 1 where both costs are exactly 0;
        NaN where either cost is not finite (e.g. float32 overflow: status 2, not converged).
      price_of_stability: ``(...)`` SC(best equilibrium) / SC(opt), in [1, poa]; NaN as ``poa``.
      equilibrium: :class:`~poa_jax.Solution` of the worst equilibrium.
      best_equilibrium: :class:`~poa_jax.Solution` of the best equilibrium.
      optimum: :class:`~poa_jax.Solution` of the optimum. Where the best equilibrium is
        cheaper than the optimum found (which prefers a converged stationary point over a
        point cheaper by at most ``tol``), its flows and cost are the equilibrium's, so that
        SC(opt) ≤ SC(eq) exactly; ``gap`` and ``status`` then stay those of the stationary
        point, whose cost is within ``tol`` of the one reported.
      equilibrium_costs: ``(..., S)`` SC of every start's equilibrium (NaN where it did not
        converge), sorted worst first.
      converged_starts: ``(...)`` how many starts converged.
      converged: ``(...)`` worst equilibrium and optimum both converged (and ``poa`` finite).
      start_flows: ``(..., S, J, K)`` where every start ended, in start order (routing games;
        ``None`` for the others): pass them as ``x0`` to warm-start neighbouring games.
    """

    poa: np.ndarray
    price_of_stability: np.ndarray
    equilibrium: solve.Solution
    best_equilibrium: solve.Solution
    optimum: solve.Solution
    equilibrium_costs: np.ndarray
    converged_starts: np.ndarray
    converged: np.ndarray
    start_flows: np.ndarray | None = None

    @property
    def optimum_cost(self) -> np.ndarray:
        """``(...)`` SC(opt), as every game's result names it (``optimum.social_cost``)."""
        return self.optimum.social_cost


def _ratio(eq_cost, opt_cost) -> np.ndarray:
    """``eq_cost / opt_cost``: NaN where either cost is not finite (an overflowed solve must
    not read as PoA 1), 1 where both are exactly 0."""
    eq_cost, opt_cost = np.asarray(eq_cost), np.asarray(opt_cost)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(opt_cost > 0, eq_cost / np.where(opt_cost > 0, opt_cost, 1), eq_cost / 0.0)
        r = np.where((eq_cost == 0) & (opt_cost == 0), 1.0, r)
    return np.where(np.isfinite(eq_cost) & np.isfinite(opt_cost), r, np.nan)


def _pick(out: dict, idx: np.ndarray) -> dict:
    rows = np.arange(idx.shape[0])
    return {k: np.asarray(v)[rows, idx] for k, v in out.items()}


def price_of_anarchy(
    game: RoutingGame,
    policy: Policy | None = None,
    *,
    starts: int = tolerances.DEFAULT_STARTS,
    tol: float | None = None,
    max_iters: int | None = None,
    method: str = "auto",
    optimum_starts: int = 4,
    descent_steps: int = 0,
    seed: int = 0,
    dtype=None,
    x0=None,
    continuation=None,
) -> PoAResult:
    """PoA and price of stability of ``policy`` for every game in the batch.

    Args:
      game: a :class:`~poa_jax.RoutingGame` batch, a caching game
        (:class:`~poa_jax.SelfishCachingGame`, :class:`~poa_jax.TieredCacheGame`,
        :class:`~poa_jax.CoupledGame`: their own result types, selfish policy only), or a
        :class:`~poa_jax.graph.GraphGame` batch
        (selfish policy; one equilibrium — the link flows are unique for increasing latencies —
        so PoS = PoA; ``equilibrium`` and ``optimum`` are
        :class:`~poa_jax.graph_solve.GraphSolution`; ``starts`` and the optimum options do not
        apply).
      policy: router policy (default selfish), fields broadcast with the batch.
      starts: equilibrium starts per instance; for a :class:`~poa_jax.SelfishCachingGame`
        at least 16 (its own default): fewer are raised to 16 without notice, for the
        best-response search that finds its equilibria above 16 nodes.
      tol, max_iters, method, dtype: as :func:`~poa_jax.solve_equilibrium`.
      optimum_starts: generated optimum starts (uniform, herds, random; for the fluid tiered
        game random dense and sparse placements; for the coupled game herding and random
        flows with random placements), in addition to the equilibria found. With
        the cache term SC is not convex and has several local minima: more starts find lower
        optima (benchmarks/RESULTS.md).
      descent_steps: optax Adam steps per optimum start before the polish.
      seed: seed for random starts.
      x0: optional equilibrium starts ``(..., S, J, K)`` (routing games) in place of the
        generated ones, e.g. the ``start_flows`` of a neighbouring load point (a warm start).
        Each class's row is rescaled to its demand (a row summing to zero starts uniform) and
        workers a topology lacks are zeroed, so another game's flows are a valid start.
      continuation: optional levels ``[(rows, sources), …]`` over the flattened batch (routing
        games): each level's ``rows`` are solved together, a row with ``sources[i] ≥ 0`` from
        where the same start ended at instance ``sources[i]`` (solved at an earlier level,
        rescaled as for ``x0``), one with ``-1`` from the generated starts. Every instance must
        be in exactly one level. The optimum is then solved for the whole batch at once. This
        is how a sweep warm-starts load point ``u`` from ``u − 1`` (:mod:`poa_jax.sweep`).

    Returns:
      A :class:`PoAResult`.

    Example:
      >>> import poa_jax as pj
      >>> mm1 = pj.RoutingGame(demand=[0.75], latency=pj.Latency(
      ...     a=[1.0, 4.0], d=[1.0, 0.0], kappa=[1.0, float("inf")]))
      >>> round(float(pj.price_of_anarchy(mm1).poa), 6)
      1.5
    """
    if (x0 is not None or continuation is not None) and not isinstance(game, RoutingGame):
        raise solve.InputError(
            f"x0, continuation: warm starts apply to routing games only, not {type(game).__name__}"
        )
    # --- issue 4: the caching games (poa_jax.caching / tiered_cache / coupled) -------------
    from poa_jax import caching, coupled, tiered_cache

    if isinstance(game, (caching.SelfishCachingGame, tiered_cache.TieredCacheGame)):
        solve._selfish_only(policy)
        kw = solve._rounds_kw(max_iters)
        # Checked, not passed on: neither game's optimum runs the routing game's Adam descent
        # (it was silently ignored).
        if integer("descent_steps", descent_steps, 0) != 0:
            hint = ""
            if isinstance(game, tiered_cache.TieredCacheGame):
                hint = "; its optimum descends tiered_cache.price_of_anarchy's optimum_steps"
            raise solve.InputError(
                f"descent_steps = {descent_steps!r}: does not apply to a "
                f"{type(game).__name__} (leave it 0{hint})"
            )
        if isinstance(game, caching.SelfishCachingGame):
            caching._starts(starts)
            return caching.price_of_anarchy(game, starts=max(int(starts), 16), seed=seed,
                                            dtype=dtype, tol=tol, method=method, **kw)  # fmt: skip
        caching.check_method(method, "the fluid tiered game is solved by best response")
        return tiered_cache.price_of_anarchy(game, starts=starts, seed=seed, tol=tol, dtype=dtype,
                                             optimum_starts=optimum_starts, **kw)  # fmt: skip
    if isinstance(game, coupled.CoupledGame):
        solve._selfish_only(policy)
        return coupled.price_of_anarchy(
            game, tol=tol, max_iters=max_iters, dtype=dtype, starts=starts, method=method,
            optimum_starts=optimum_starts, descent_steps=descent_steps, seed=seed,
        )  # fmt: skip
    # --- end issue 4 ----------------------------------------------------------------------
    if isinstance(game, GraphGame):
        solve.not_for_graphs(
            starts=(starts, tolerances.DEFAULT_STARTS), optimum_starts=(optimum_starts, 4),
            descent_steps=(descent_steps, 0), seed=(seed, 0), x0=(x0, None),
            continuation=(continuation, None),
        )  # fmt: skip
        return _graph_poa(game, policy, tol, max_iters, method, dtype)
    if method not in solve.METHODS:
        raise solve.InputError(f"method {method!r} is unknown: must be one of {solve.METHODS}")
    tol, max_iters = solve._resolve(dtype, tol, max_iters)
    # Checked here, not after the equilibrium solve that makes the optimum's starts.
    bad = isinstance(optimum_starts, bool) or not isinstance(optimum_starts, (int, np.integer))
    if bad or not 1 <= optimum_starts <= MAX_STARTS:
        raise solve.InputError(
            f"optimum_starts = {optimum_starts!r}: must be an integer >= 1 (and <= {MAX_STARTS})"
        )
    seed, descent_steps, _ = solve._optimum_options(seed, descent_steps)
    prep = batching.prepare(game, policy if policy is not None else selfish(), dtype)
    solve._check_method(prep, method)
    if continuation is not None:
        if x0 is not None:
            raise solve.InputError("x0 and continuation: give one or the other")
        eq = _continued(prep, continuation, starts, seed, method, tol, max_iters)
    else:
        x0 = (
            solve.starting_flows(prep, starts, seed, greedy=True)
            if x0 is None
            else warm_starts(prep, x0)
        )
        eq = jax.device_get(solve._equilibria_flat(prep, x0, method, tol, max_iters))
        eq = {k: np.asarray(v) for k, v in eq.items()}
    starts = eq["flows"].shape[1]
    sc = eq["social_cost"]  # (N, S)
    ok = eq["status"] == CONVERGED
    any_ok = ok.any(-1, keepdims=True)
    use = np.where(any_ok, ok, True)  # if no start converged, rank them all (flagged)
    worst = np.argmax(np.where(use, sc, -np.inf), -1)
    best = np.argmin(np.where(use, sc, np.inf), -1)

    opt_x0 = np.concatenate(
        [solve.starting_flows(prep, optimum_starts, seed + 1), eq["flows"].astype(prep.dtype)],
        axis=1,
    )
    opt = jax.device_get(batching.optima(
        prep.game, opt_x0, tol=tol, max_iters=max_iters, descent_steps=int(descent_steps),
        lr=0.05,
    ))  # fmt: skip
    opt = {k: np.asarray(v).copy() for k, v in opt.items()}
    # SC(opt) ≤ every equilibrium's SC exactly (not only up to re-evaluation rounding).
    best_sc = sc[np.arange(sc.shape[0]), best]
    lower = best_sc < opt["social_cost"]
    if lower.any():
        picked = _pick(eq, best)
        for k in ("flows", "social_cost", "overloaded"):
            opt[k][lower] = picked[k][lower]

    shape = prep.batch_shape
    w = solve._to_solution(_pick(eq, worst), prep)
    b = solve._to_solution(_pick(eq, best), prep)
    o = solve._to_solution(opt, prep)
    poa = _ratio(w.social_cost, o.social_cost)
    pos = _ratio(b.social_cost, o.social_cost)
    costs = np.where(ok, sc, np.nan)
    costs = -np.sort(-np.where(np.isnan(costs), -np.inf, costs), axis=-1)
    costs = np.where(np.isinf(costs), np.nan, costs)
    return PoAResult(
        poa=poa,
        price_of_stability=pos,
        equilibrium=w,
        best_equilibrium=b,
        optimum=o,
        equilibrium_costs=costs.reshape(shape + (starts,)),
        converged_starts=ok.sum(-1).reshape(shape),
        converged=w.converged & o.converged & np.isfinite(poa),
        start_flows=eq["flows"].reshape(shape + eq["flows"].shape[1:]),
    )


def _continued(prep, levels, starts, seed, method, tol, max_iters) -> dict:
    """Equilibria level by level (see ``continuation`` of :func:`price_of_anarchy`)."""
    n = int(np.prod(prep.batch_shape, dtype=np.int64))
    seen = np.zeros(n, np.int64)
    levels = [(np.asarray(r, np.int64).reshape(-1), np.asarray(s, np.int64).reshape(-1))
              for r, s in levels]  # fmt: skip
    for i, (rows, src) in enumerate(levels):  # all checked before anything compiles
        if rows.shape != src.shape:
            raise solve.InputError(
                f"continuation[{i}]: rows {rows.shape} and sources {src.shape} differ in length"
            )
        if rows.size and (rows.min() < 0 or rows.max() >= n or src.min() < -1 or src.max() >= n):
            raise solve.InputError(f"continuation[{i}]: indices must be in [0, {n}) (-1: cold)")
        if np.any(seen[src[src >= 0]] == 0):
            raise solve.InputError(f"continuation[{i}]: a source is not solved at an earlier level")
        np.add.at(seen, rows, 1)
    if not np.all(seen == 1):
        raise solve.InputError(
            f"continuation: every instance must be in exactly one level "
            f"({int(np.sum(seen == 0))} missing, {int(np.sum(seen > 1))} repeated)"
        )
    out = None
    for rows, src in levels:
        if rows.size == 0:
            continue
        warm = src >= 0
        sub = batching.take(prep, rows)
        x = solve.starting_flows(sub, starts, seed, greedy=True)
        if warm.any():
            x[warm] = _rescale(
                out["flows"][src[warm]], np.asarray(sub.game.worker_mask)[warm],
                np.asarray(sub.game.demand)[warm], prep.dtype,
            )  # fmt: skip
        res = jax.device_get(solve._equilibria_flat(sub, x, method, tol, max_iters))
        if out is None:
            out = {k: np.zeros((n,) + np.shape(v)[1:], np.asarray(v).dtype) for k, v in res.items()}
        for k, v in res.items():
            out[k][rows] = v
    return out


_rescale = solve.rescale_starts  # shared with solve_optimum's x0


def warm_starts(prep: batching.Prepared, x0) -> np.ndarray:
    """``x0 (..., S, J, K)`` as starts ``(N, S, J, K)`` for ``prep``: each class's row rescaled
    to its demand (uniform over existing workers where it sums to zero), missing workers zeroed.

    Raises:
      InputError: ``x0`` not finite and ≥ 0, or its shape not ``batch + (S, J, K)``.
    """
    a = solve._read_starts(x0)
    j, k = prep.num_classes, prep.num_workers
    nb = len(prep.batch_shape)
    if a.ndim != nb + 3 or a.shape[:nb] != prep.batch_shape or a.shape[-2:] != (j, k):
        want = prep.batch_shape + ("S", j, k)
        raise solve.InputError(f"x0 has shape {a.shape}: must be {want} (S starts)")
    a = a.reshape((-1,) + a.shape[nb:])
    return _rescale(a, prep.game.worker_mask, prep.game.demand, prep.dtype)


def _graph_poa(game, policy, tol, max_iters, method, dtype) -> PoAResult:
    """PoA of a graph game: one Wardrop equilibrium and the system optimum."""
    solve._selfish_only(policy)
    eq = solve._graph(game, False, tol, max_iters, method, dtype)
    opt = solve._graph(game, True, tol, max_iters, method, dtype)
    # SC(opt) ≤ SC(eq) exactly: where the equilibrium is cheaper (PoA = 1 up to the tolerance),
    # it is the better optimum.
    lower = eq.social_cost < opt.social_cost
    if np.any(lower):
        fix = {}
        for f in ("link_flows", "social_cost", "potential", "mean_latency", "overloaded"):
            a, b = np.asarray(getattr(opt, f)).copy(), np.asarray(getattr(eq, f))
            sel = lower.reshape(lower.shape + (1,) * (a.ndim - lower.ndim))
            fix[f] = np.where(sel, b, a)
        opt = dataclasses.replace(opt, **fix)
    poa = _ratio(eq.social_cost, opt.social_cost)
    ok = eq.converged
    return PoAResult(
        poa=poa,
        price_of_stability=poa,
        equilibrium=eq,
        best_equilibrium=eq,
        optimum=opt,
        equilibrium_costs=np.where(ok, eq.social_cost, np.nan)[..., None],
        converged_starts=ok.astype(np.int64),
        converged=ok & opt.converged,
    )
