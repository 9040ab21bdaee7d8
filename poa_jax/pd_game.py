r"""Γ_PD — the prefill/decode resource game (DESIGN §2.4).

A budget of ``G`` GPUs is split into a prefill pool of ``n_P`` and a decode pool of ``n_D``
workers of ``tp`` GPUs each, under the shared constraint ``tp·(n_P + n_D) ≤ G``. At offered
load ``λ`` (requests/s, split evenly over a pool's workers) each pool's utility is its SLO
attainment from the latency model of :mod:`poa_jax.load` (coefficients of a
:mod:`poa_jax.serving` preset; prompts of ``n = L(1 − η)`` uncached tokens):

    U_P(n_P) = P(TTFT ≤ SLO_TTFT),   TTFT = t_P(n) + τ_kv + W_P,   W_P: M/D/1 wait (atom 1 − ρ,
               exponential tail of mean ρS/(2(1 − ρ)); :mod:`poa_jax.queueing`), ρ = λn/(n_P κ_P)
    U_D(n_D) = P(TPOT ≤ SLO_ITL),    TPOT = α/(1 − X m β) + W_D/m,   X = λ/n_D,
               W_D: M/D/1 admission wait with service 1/μ_D
    U(0) = 0;  an overloaded pool (ρ ≥ 1) has U = 0.

* **Selfish demands.** Each pool best-responds to maximise its own utility net of a GPU price
  ``p`` (default 1e-3 attainment per GPU: it asks only for GPUs that help):
  ``d_i = min argmax_n U_i(n) − p·tp·n``. If ``d_P + d_D`` exceeds the budget, **proportional
  rationing**: ``n_i = ⌊d_i·W/(d_P + d_D)⌋`` (``W = ⌊G/tp⌋`` workers), the leftover worker to
  the larger remainder.
* **Variational equilibrium** of the shared-constraint game (Rosen's normalised equilibrium,
  the paper's Proposition 1): the KKT conditions with one common multiplier ``μ`` for
  ``Σ g ≤ G`` — **equal marginal SLO improvement per GPU**, ``U_P'(g_P) = U_D'(g_D) = μ``. With
  utilities that depend on the own allocation only, it maximises ``U_P + U_D`` on the budget;
  on worker steps, by exact enumeration. For continuous concave utilities
  :func:`variational_equilibrium_2` solves ``U_1'(g) = U_2'(G − g)`` by bisection (with
  ``w_i·log(1 + g)``: ``g_1 = (w_1(G + 2) − (w_1 + w_2))/(w_1 + w_2)``, clipped to ``[0, G]``).
* **Coordinated optimum.** Maximum goodput with both SLOs met: ``λ·U_P·U_D`` (the rate of
  requests meeting both, independence assumed), exact enumeration of all splits, batched over
  loads. ``PoA = goodput(opt)/goodput(eq)`` (≥ 1): ``inf`` when the equilibrium's goodput is 0
  and the optimum's is not; ``1`` when both are 0 (no split meets the SLOs at that load, so
  selfishness loses nothing).
* **Numerics.** The pool-utility tables ``(N, W+1)`` are small and always computed in float64
  (inside ``jax.enable_x64``), whatever the global JAX setting, so float32 and float64 sessions
  choose the same splits. Ties — scores within ``TIE_RTOL = 1e-12`` relative of the best, far
  above float64 rounding of the table — go to fewer GPUs (then fewer prefill workers).
* **Limits.** The optimum and the variational equilibrium enumerate all ``(W+1)²`` splits per
  load, so the budget is capped at ``MAX_GPUS = 4096`` GPUs (``W ≤ 4096`` workers); loads
  must be finite, > 0 and small enough that the Dynamo planner's replica counts fit in int64.
  A prompt is charged at least one uncached token (``n = max(L(1 − η), 1)``: with
  ``shareable = 1`` the last token is still computed).
* **Baselines.** AIConfigurator's rate matching scores a split by
  ``min(0.9·prefill_rate, 0.92·decode_rate)/GPUs`` (requests/s per GPU) and picks the best;
  Dynamo's planner sizes each pool as ``ceil(demand/engine_rate)``.

General continuous games for the oracles (Cournot, Kelly): :func:`nash_equilibrium` iterates
Gauss–Seidel best responses, each a golden-section maximisation of a player's (concave)
payoff on its action interval.

Example:
  >>> import jax.numpy as jnp
  >>> from poa_jax import pd_game
  >>> round(float(pd_game.variational_equilibrium_2(
  ...     lambda g: 2.0 * jnp.log1p(g), lambda g: jnp.log1p(g), 10.0)), 6)
  7.0
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from poa_jax import load, serving, validation
from poa_jax.errors import InputError

__all__ = [
    "PDResult",
    "pool_utilities",
    "solve_pd",
    "variational_equilibrium_2",
    "nash_equilibrium",
    "aiconfigurator_score",
    "aiconfigurator_split",
    "dynamo_planner",
    "engine_rates",
    "MAX_GPUS",
    "TIE_RTOL",
]

#: Largest GPU budget of :func:`solve_pd`: the exact enumeration holds ``(W+1)²`` splits per load.
MAX_GPUS = 4096
#: Relative tie tolerance of the split choice (the tables are float64: module docstring).
TIE_RTOL = 1e-12
_INT64_MAX = float(2**63)  # replica counts must stay below this

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


# --------------------------------------------------------------------------- continuous games


def variational_equilibrium_2(u1: Callable, u2: Callable, budget: float, steps: int = 100):
    """Variational equilibrium of two pools sharing ``g_1 + g_2 ≤ G`` with concave increasing
    utilities: ``g_1`` with ``U_1'(g_1) = U_2'(G − g_1)`` (bisection; clipped to ``[0, G]``)."""
    if not (np.isfinite(budget) and budget > 0):
        raise InputError(f"budget = {budget!r}: must be finite and > 0")
    d1, d2 = jax.grad(u1), jax.grad(u2)
    g = jnp.asarray(float(budget))

    def body(_, c):
        lo, hi = c
        mid = 0.5 * (lo + hi)
        more = d1(mid) > d2(g - mid)  # pool 1's marginal gain is larger: give it more
        return jnp.where(more, mid, lo), jnp.where(more, hi, mid)

    lo, hi = jax.lax.fori_loop(0, steps, body, (jnp.zeros_like(g), g))
    return 0.5 * (lo + hi)


def _argmax_golden(f: Callable, lo, hi, steps: int):
    a, b = lo, hi
    c = b - _GOLDEN * (b - a)
    d = a + _GOLDEN * (b - a)

    def body(_, s):
        a, b, c, d = s
        left = f(c) >= f(d)
        a2 = jnp.where(left, a, c)
        b2 = jnp.where(left, d, b)
        return a2, b2, b2 - _GOLDEN * (b2 - a2), a2 + _GOLDEN * (b2 - a2)

    a, b, _, _ = jax.lax.fori_loop(0, steps, body, (a, b, c, d))
    return 0.5 * (a + b)


def nash_equilibrium(
    payoff: Callable[[int, jax.Array], jax.Array],
    lo,
    hi,
    x0=None,
    *,
    rounds: int = 200,
    golden_steps: int = 80,
) -> tuple[np.ndarray, float]:
    """Pure Nash equilibrium of a continuous game by Gauss–Seidel best responses.

    Args:
      payoff: ``payoff(i, a)`` → player ``i``'s payoff at the action profile ``a (P,)``,
        concave (unimodal) in ``a[i]``.
      lo, hi: ``(P,)`` action intervals.
      x0: start (default the interval midpoints).
      rounds: best-response rounds; golden_steps: golden-section steps per best response.

    Returns:
      ``(a, change)``: the profile and the largest action change of the last round.
    """
    lo = jnp.asarray(lo, float)
    hi = jnp.asarray(hi, float)
    a0 = 0.5 * (lo + hi) if x0 is None else jnp.asarray(x0, float)
    p = a0.shape[0]

    @jax.jit
    def run(a):
        def one_round(_, c):
            a, _ = c
            old = a
            for i in range(p):
                f = lambda v, i=i, a=a: payoff(i, a.at[i].set(v))
                a = a.at[i].set(_argmax_golden(f, lo[i], hi[i], golden_steps))
            return a, jnp.max(jnp.abs(a - old))

        return jax.lax.fori_loop(0, rounds, one_round, (a, jnp.asarray(jnp.inf, a.dtype)))

    a, change = run(a0)
    return np.asarray(a), float(change)


# --------------------------------------------------------------------------- baselines


def aiconfigurator_score(prefill_rate, decode_rate, gpus) -> np.ndarray:
    """AIConfigurator's rate matching ``min(0.9·prefill_rate, 0.92·decode_rate)/gpus``."""
    gpus = np.asarray(gpus, np.float64)
    if np.any(gpus <= 0):
        raise InputError("aiconfigurator_score: gpus must be > 0")
    return np.minimum(0.9 * np.asarray(prefill_rate), 0.92 * np.asarray(decode_rate)) / gpus


def aiconfigurator_split(
    prefill_rate_per_worker: float, decode_rate_per_worker: float, max_workers: int, tp: int
) -> tuple[int, int, float]:
    """The split ``(n_P, n_D)`` (≥ 1 each, ``n_P + n_D ≤ max_workers``) with the highest
    rate-matching score; ties (within ``TIE_RTOL`` relative) go to fewer GPUs, then fewer
    prefill workers. Returns ``(n_P, n_D, score)``.

    ``O(max_workers)``: for a fixed ``n_P`` the score rises in ``n_D`` while decode is the
    bottleneck and falls after, so only ``n_D ∈ {⌊x⌋, ⌈x⌉}`` (``x = 0.9·n_P·r_P/(0.92·r_D)``,
    clipped to ``[1, max_workers − n_P]``) can be best."""
    w = validation.integer("max_workers", max_workers, 0)
    if w < 2:
        raise InputError(f"max_workers = {max_workers!r}: must be >= 2 (one worker per pool)")
    tp = validation.integer("tp", tp, 1)
    pr = validation.number("prefill_rate_per_worker", prefill_rate_per_worker)
    dr = validation.number("decode_rate_per_worker", decode_rate_per_worker)
    for name, v in (("prefill_rate_per_worker", pr), ("decode_rate_per_worker", dr)):
        if not (math.isfinite(v) and v > 0):
            raise InputError(f"{name} = {v!r}: must be finite and > 0")
    n_p = np.arange(1, w, dtype=np.float64)
    x = 0.9 * n_p * pr / (0.92 * dr)
    hi = w - n_p
    cand = np.clip(np.stack([np.floor(x), np.ceil(x)]), 1.0, hi)  # (2, w−1)
    n_p = np.broadcast_to(n_p, cand.shape).ravel()
    n_d = cand.ravel()
    score = aiconfigurator_score(n_p * pr, n_d * dr, (n_p + n_d) * tp)
    top = score.max()
    tie = score >= top - TIE_RTOL * abs(top)
    size = np.where(tie, n_p + n_d, np.inf)
    i = np.lexsort((n_p, size))[0]  # fewest GPUs, then fewest prefill workers
    return int(n_p[i]), int(n_d[i]), float(score[i])


def dynamo_planner(demand, engine_rate) -> np.ndarray:
    """Dynamo's planner: replicas ``ceil(demand / engine_rate)`` (same units, e.g. tokens/s).

    Raises:
      InputError: a demand not finite or < 0, an engine rate NaN or ≤ 0 (``inf`` allowed: no
        replica needed), or a replica count that does not fit in int64.
    """
    demand = validation.as_array("dynamo_planner: demand", demand)
    rate = validation.as_array("dynamo_planner: engine_rate", engine_rate)
    validation.check("dynamo_planner: engine_rate", rate, "pos_or_inf")
    validation.check("dynamo_planner: demand", demand, "finite_ge0")
    with np.errstate(over="ignore"):
        q = np.ceil(demand / rate)
    big = ~(q < _INT64_MAX)
    if np.any(big):
        idx = tuple(int(i) for i in np.argwhere(big)[0]) if big.ndim else ()
        where = f"[{', '.join(map(str, idx))}]" if idx else ""
        raise InputError(
            f"dynamo_planner: demand{where} / engine_rate = {float(q[idx])!r} replicas: must be "
            f"< 2**63 (an int64 count)"
        )
    return q.astype(np.int64)


# --------------------------------------------------------------------------- serving Γ_PD


def engine_rates(p: serving.ServingPreset | str) -> tuple[float, float]:
    """Per-worker capacity ``(prefill, decode)`` in requests/s: ``κ_P/n`` (budget-limited, with
    ``n = L(1 − η)`` uncached tokens) and the decode ``μ_D``."""
    p = serving.preset(p) if isinstance(p, str) else serving.check_preset(p)
    md = load.model_arrays(p)
    n = _uncached_tokens(p)
    s_b = md.pa + (md.pb + md.pc * n) * md.budget
    kappa = md.budget / s_b
    with jax.enable_x64(True):  # float64 whatever the global setting (module docstring)
        mu = float(np.asarray(load.decode_capacity(jax.tree_util.tree_map(jnp.asarray, md)))[0])
    return float(kappa / n), mu


def _uncached_tokens(p) -> float:
    """``n = max(L(1 − η), 1)``: at least the last prompt token is computed."""
    return max(p.prompt_tokens * (1.0 - p.shareable), 1.0)


def _pool_utils(md, n_tok, ttft_slo, itl_slo, rate, workers):
    """``(U_P, U_D)`` for ``workers (W,)`` workers per pool at ``rate`` (one load)."""
    w = jnp.maximum(workers, 1.0)
    # Prefill: M/D/1 on tokens at the budget-limited capacity.
    s_b = md.pa + (md.pb + md.pc * n_tok) * md.budget
    kappa = md.budget / s_b
    rho = rate * n_tok / (w * kappa)
    mean_w = 0.5 * (n_tok / kappa) * rho / jnp.maximum(1.0 - rho, 1e-300)
    shift = md.pa + md.pb * n_tok + md.pc * n_tok**2 + jnp.max(md.kv_lat + n_tok * md.kv_spt)
    slack = ttft_slo - shift
    theta = rho / jnp.maximum(mean_w, 1e-300)
    u_p = jnp.where(slack >= 0, 1.0 - jnp.clip(rho, 0, 1) * jnp.exp(-theta * slack), 0.0)
    u_p = jnp.where((rho < 1) & (workers > 0), u_p, 0.0)
    # Decode: memory-bound ITL at the batch fixed point plus the admission wait per token.
    mu = load.decode_capacity(md)[0]
    x = rate / w
    rd = x / mu
    itl = md.alpha[0] / jnp.maximum(1.0 - x * md.m * md.beta[0], 1e-300)
    mean_d = 0.5 * rd / (mu * jnp.maximum(1.0 - rd, 1e-300))
    slack_d = (itl_slo - itl) * md.m
    theta_d = rd / jnp.maximum(mean_d, 1e-300)
    u_d = jnp.where(slack_d >= 0, 1.0 - jnp.clip(rd, 0, 1) * jnp.exp(-theta_d * slack_d), 0.0)
    u_d = jnp.where((rd < 1) & (workers > 0), u_d, 0.0)
    return u_p, u_d


@jax.jit
def _utils_batch(md, n_tok, ttft_slo, itl_slo, rates, workers):
    return jax.vmap(lambda r: _pool_utils(md, n_tok, ttft_slo, itl_slo, r, workers))(rates)


def pool_utilities(
    p: serving.ServingPreset | str, rates, gpus: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """``U_P, U_D (N, W+1)`` for ``0..W`` workers per pool at loads ``rates (N,)``, and ``W``."""
    p = serving.preset(p) if isinstance(p, str) else serving.check_preset(p)
    rates = _rates(rates)
    w = _workers(p, gpus)
    n_tok = _uncached_tokens(p)
    with jax.enable_x64(True):  # a small table: float64 whatever the global setting
        md = jax.tree_util.tree_map(jnp.asarray, load.model_arrays(p))
        u_p, u_d = _utils_batch(
            md, n_tok, float(p.ttft_slo), float(p.itl_slo), jnp.asarray(rates),
            jnp.arange(w + 1, dtype=jnp.float64),
        )  # fmt: skip
        return np.asarray(u_p, np.float64), np.asarray(u_d, np.float64), w


class PDResult(NamedTuple):
    """Γ_PD outcomes per load ``(N,)``; splits as worker counts ``(n_P, n_D)``."""

    rate: np.ndarray
    demands: np.ndarray  # (N, 2) selfish demands
    selfish: np.ndarray  # (N, 2) after proportional rationing
    variational: np.ndarray  # (N, 2)
    optimum: np.ndarray  # (N, 2)
    goodput_selfish: np.ndarray
    goodput_variational: np.ndarray
    goodput_optimum: np.ndarray
    poa_selfish: np.ndarray
    poa_variational: np.ndarray
    aiconfigurator: np.ndarray  # (2,) split by rate matching (load-independent)
    dynamo: np.ndarray  # (N, 2) planner replicas
    workers: int  # W = ⌊G/tp⌋


def _rates(rates) -> np.ndarray:
    """Loads ``(N,)``: a scalar or a non-empty 1-D array of finite numbers > 0."""
    if rates is None:
        raise InputError("rates = None: must be a 1-D array of loads (requests/s)")
    try:
        raw = np.asarray(rates)
    except (TypeError, ValueError) as e:
        raise InputError(f"rates: cannot be read as an array of numbers ({e})") from None
    if raw.dtype.kind not in "iuf":
        raise InputError(
            f"rates: must be numbers (requests/s), got dtype {raw.dtype} ({rates!r:.60})"
        )
    r = np.atleast_1d(raw.astype(np.float64))
    if r.ndim != 1:
        raise InputError(f"rates: must be a scalar or a 1-D array of loads, got shape {r.shape}")
    if r.size == 0:
        raise InputError("rates: must hold at least one load, got an empty array")
    bad = ~(np.isfinite(r) & (r > 0))
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(f"rate[{i}] = {float(r[i])!r}: must be finite and > 0")
    return r


def _workers(p, gpus) -> int:
    if isinstance(gpus, bool | np.bool_) or not isinstance(gpus, int | np.integer):
        raise InputError(f"gpus = {gpus!r}: must be an integer number of GPUs")
    if gpus < p.tp:
        raise InputError(
            f"gpus = {gpus}: the budget must hold at least one worker (tp = {p.tp} GPUs)"
        )
    if gpus > MAX_GPUS:
        raise InputError(
            f"gpus = {gpus}: must be <= MAX_GPUS = {MAX_GPUS} (the optimum enumerates all "
            f"(W+1)² splits per load)"
        )
    return int(gpus) // p.tp


def _real(name: str, v, *, positive: bool) -> float:
    if isinstance(v, bool | np.bool_) or not isinstance(v, numbers.Real):
        raise InputError(f"{name} = {v!r}: must be a real number (a scalar)")
    f = float(v)
    if not (math.isfinite(f) and (f > 0 if positive else f >= 0)):
        raise InputError(f"{name} = {v!r}: must be finite and {'>' if positive else '>='} 0")
    return f


def _ration(d, w):
    tot = d.sum(-1, keepdims=True)
    over = tot > w
    share = d * w / np.maximum(tot, 1)
    base = np.floor(share).astype(np.int64)
    left = w - base.sum(-1)
    frac = share - base
    give = np.where(frac[:, 0] >= frac[:, 1], 0, 1)
    extra = np.zeros_like(base)
    extra[np.arange(len(d)), give] = np.maximum(left, 0)
    return np.where(over, base + extra, d)


def solve_pd(
    p: serving.ServingPreset | str,
    rates,
    gpus: int,
    *,
    price: float = 1e-3,
    ttft_slo: float | None = None,
    itl_slo: float | None = None,
) -> PDResult:
    """Selfish demands, variational equilibrium, coordinated optimum and PoA of Γ_PD at loads
    ``rates (N,)`` on ``gpus`` GPUs; AIConfigurator and Dynamo-planner splits alongside.

    Raises:
      InputError: an unknown or invalid preset (:func:`poa_jax.serving.check_preset`); an SLO
        or a price that is not a real scalar, an SLO not finite and > 0, a price not finite
        and >= 0; loads that are not a non-empty 1-D array of finite numbers > 0, or so large
        that the Dynamo planner's replicas overflow int64; a budget that is not an integer,
        smaller than one worker or above ``MAX_GPUS``. All before anything is compiled.
    """
    import dataclasses

    p = serving.preset(p) if isinstance(p, str) else serving.check_preset(p)
    if ttft_slo is not None:
        p = dataclasses.replace(p, ttft_slo=_real("ttft_slo", ttft_slo, positive=True))
    if itl_slo is not None:
        p = dataclasses.replace(p, itl_slo=_real("itl_slo", itl_slo, positive=True))
    price = _real("price", price, positive=False)
    rates = _rates(rates)
    w = _workers(p, gpus)
    pr, dr = engine_rates(p)
    with np.errstate(over="ignore"):
        need = np.maximum(rates / pr, rates / dr)
    if not np.all(need < _INT64_MAX):
        i = int(np.argmax(~(need < _INT64_MAX)))
        raise InputError(
            f"rate[{i}] = {float(rates[i])!r}: must be < 2**63 × the engine rate (the Dynamo "
            "planner's replica count must fit in int64)"
        )
    dyn = np.stack([dynamo_planner(rates, pr), dynamo_planner(rates, dr)], -1)
    u_p, u_d, w = pool_utilities(p, rates, gpus)
    n = np.arange(w + 1)
    net_p = u_p - price * p.tp * n
    net_d = u_d - price * p.tp * n
    d = np.stack([np.argmax(net_p, -1), np.argmax(net_d, -1)], -1)  # smallest maximiser
    selfish = _ration(d, w)
    # All splits with n_P + n_D ≤ W: (W+1, W+1) per load, a chunk of loads at a time.
    ok = (n[:, None] + n[None, :]) <= w
    size = (n[:, None] + n[None, :]).astype(float)
    chunk = max(1, 2**22 // (w + 1) ** 2)

    def best(combine, scale):
        # Exact enumeration; ties (within TIE_RTOL relative) go to fewer GPUs, then fewer
        # prefill workers (row-major order).
        out = []
        for a in range(0, len(rates), chunk):
            sl = slice(a, a + chunk)
            score = np.where(ok, combine(u_p[sl, :, None], u_d[sl, None, :]), -np.inf)
            score = score * scale[sl, None, None]
            top = np.max(score, axis=(1, 2), keepdims=True)
            tie = score >= top - TIE_RTOL * np.maximum(np.abs(top), 1e-300)
            flat = np.where(tie, size, np.inf).reshape(len(score), -1).argmin(-1)
            out.append(np.stack(np.unravel_index(flat, (w + 1, w + 1)), -1))
        return np.concatenate(out)

    ve = best(np.add, np.ones_like(rates))
    opt = best(np.multiply, rates)
    rows = np.arange(len(rates))

    def gp(split):
        return rates * u_p[rows, split[:, 0]] * u_d[rows, split[:, 1]]

    g_s, g_v, g_o = gp(selfish), gp(ve), gp(opt)
    with np.errstate(divide="ignore", invalid="ignore"):
        poa_s = np.where(g_s > 0, g_o / g_s, np.where(g_o > 0, np.inf, 1.0))
        poa_v = np.where(g_v > 0, g_o / g_v, np.where(g_o > 0, np.inf, 1.0))
    aic = np.asarray(aiconfigurator_split(pr, dr, max(w, 2), p.tp)[:2]) if w >= 2 else np.zeros(2)
    return PDResult(
        rate=rates, demands=d, selfish=selfish, variational=ve, optimum=opt,
        goodput_selfish=g_s, goodput_variational=g_v, goodput_optimum=g_o,
        poa_selfish=poa_s, poa_variational=poa_v, aiconfigurator=aic, dynamo=dyn, workers=w,
    )  # fmt: skip
