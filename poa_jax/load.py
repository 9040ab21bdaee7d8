r"""Load: open loop (arrival rate λ) and closed loop (concurrency C) on a P/D deployment.

The serving model (coefficients from :mod:`poa_jax.serving`). One prefill worker serves every
request; ``K`` decode workers are the router's choice. Request classes ``j`` (prompt templates)
with mix ``π_j`` (Σ π = 1), ``L_j`` prompt tokens and shareable prefix fraction ``η_j``; a flow
``x[j, k] = X·π_j·S[j, k]`` (requests/s; ``S`` rows on simplices) at throughput ``X``.

*Prefix cache on the decode workers* (the form of :func:`poa_jax.game.hit_fraction`): a hit
means the prefix's KV is already on the decode worker, so only the uncached tokens
``n[j,k] = L_j(1 − h[j,k])`` are prefilled and transferred. With ``X_k = Σ_j x[j,k]``

    h[j,k] = η_j·x[j,k] / (x[j,k] + ρ_res·(1 + X_k/M_k)),
    M_k = B_max / (m·max(α + β·B_max, γ·B_max))

where ``ρ_res`` is the preset's ``residency`` (requests/s) and ``M_k`` the worker's cache as a
*flow*: by Little's law the throughput that keeps ``B_max`` sequences (the KV capacity)
resident for their residence time, ``m`` decode steps at a full cache. Every term of the
eviction is a rate, so ``h`` is dimensionless and the model does not depend on the time unit
(scaling every time by ``s`` scales every rate by ``1/s`` and leaves ``h`` unchanged).

*Prefill (shared).* Uncached token rate ``Λ = Σ x·n`` and token-weighted length
``n̄ = Σ x·n² / Λ``. An iteration of ``T`` tokens takes ``t_P(T) = a + b·T + c·n̄·T``; the
per-iteration budget ``B_tok`` limits the worker to ``κ_P = B_tok / t_P(B_tok)`` tokens/s. With
``ρ_P = Λ/κ_P`` and the amortised per-request service time ``S_P = n̄/κ_P``, the waiting time is
M/D/1 (Pollaczek–Khinchine with deterministic service):

    W_P = ρ_P·S_P / (2(1 − ρ_P))

*KV transfer.* Link ``l`` carries ``Σ_{k on l} Σ_j x n`` tokens/s against its capacity ``κ_l``;
a processor-sharing link (M/G/1-PS, as :mod:`poa_jax.topology`): ``τ_kv = L_k + n·s_k/(1 − ρ_l)``.

*TTFT* of class ``j`` on decode worker ``k`` (mean):

    TTFT[j,k] = t_P(n[j,k]) + W_P + τ_kv[j,k]

*Decode* on worker ``k`` with throughput ``X_k = Σ_j x[j,k]``: the batch is the fixed point
``B = X_k·m·(α + β·B)`` (memory-bound roofline), ``B = X_k·m·α/(1 − X_k·m·β)``, so the
decode time is ``m·ITL = m·α/(1 − X_k·m·β)``. Capacity: ``μ_k = B*/(m(α + β B*))`` where
``B* = min(α/(γ − β), B_max)`` is where the step turns compute-bound or the KV cache is full
(the cliff). Admission waits for a free slot are M/D/1 with service ``1/μ_k``:

    D_k = m·α/(1 − X_k·m·β) + ρ_k/(2μ_k(1 − ρ_k)),     ρ_k = X_k/μ_k.

The reported ITL is the step time at the stage's batch ``B_k = X_k·D_k`` (Little), with the cliff:
``ITL_k = max(α + β·B_k, γ·B_k)·max(1, B_k/B_max)``.

In the **open loop** every singular term continues linearly (value and slope matched) above
``ρ_max = 0.99`` of its capacity, as the latency family does (DESIGN §2.1), so overloaded points
are finite and flagged. The **closed loop** uses the exact singular terms (``1/(1 − ρ)``, no
continuation; ``stage_costs(..., exact=True)``): a closed system cannot run above capacity, and
with the exact terms ``SC(X·π·S) → ∞`` as ``X`` approaches the capacity of the routing, so
``C = X·R(X)`` has its root strictly below capacity for every ``C`` and the throughput
saturates at capacity as ``C → ∞`` (with the continuation it grew without bound).

*True cost and social cost* (DESIGN §2.2): ``c[j,k] = TTFT[j,k] + D_k``, ``SC = Σ x·c``; mean
latency ``R = SC/X``. **Little's law**: the number of requests in the system is ``Σ x·c = X·R``.

**Open loop** (``X = λ`` given): the routing equilibrium of a policy (:mod:`poa_jax.policies`:
``r = w_true·c + w_prefill·P + w_decode·D`` with Dynamo's ``P = W_k + L(1 − credit·h)``,
``D = Σ_j x L + L``; logit response for ``τ > 0``) at that load.

**Closed loop** (concurrency ``C``): find ``X`` and the equilibrium ``S`` with

    C = X·R(X) = SC(X·π·S)                                                (Little's law)

solved jointly in one bounded loop per point: each iteration takes one step of the routing
dynamics at the current ``X`` (scaled projection for ``τ = 0`` — and for the optimum, on the
marginal cost ``∂SC/∂x`` — or averaged logit response for ``τ > 0``) and then Newton steps in
``X`` on ``g(X) = SC(X·π·S) − C`` (increasing in ``X`` on ``(0, X_cap(S))``, ``+∞`` at the
capacity ``X_cap``: one root), every ``X`` kept strictly below capacity at the current shares
(:func:`_feasible_x`: backtracking towards the last feasible ``X``). It stops when the routing gap
is below ``tol`` and ``|g|/C`` below ``little_tol``; a final Newton polish at the final routing
makes ``|X·R − C|/C`` reach rounding (≤ 1e-12 in float64 below capacity; far past it, where
``SC ∝ 1/(1 − ρ)``, float64 cannot place ``X`` that finely, and a point whose residual stays
above ``little_tol`` is reported out of iterations). The **coordinated optimum** at the
same ``C`` minimises ``R`` (equivalently maximises ``X``), and ``PoA = R_eq/R_opt = X_opt/X_eq``.
``SC`` is not convex (the cache term), so the optimum is a *local* optimum: the best converged
one over several starts (by default :func:`closed_loop` uses two: a whole-class assignment and
the uniform routing).

Batching: every function below acts on one point; :func:`solve` flattens a batch of points ×
starts, pads it to fixed-size chunks and runs ``jit(vmap(·))`` once per chunk shape (no
recompilation for a new batch of the same shape). Nothing raises inside a batch; each point
reports ``status`` (0 converged, 1 max iterations, 2 non-finite), gap and iterations.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from poa_jax import serving
from poa_jax.errors import InputError
from poa_jax.kernels import loop
from poa_jax.kernels.simplex import project_rows
from poa_jax.policies import Policy
from poa_jax.starts import start_shares
from poa_jax.validation import INT32_MAX, SEED_MAX, as_array, check, integer

__all__ = [
    "Model",
    "Workload",
    "model_arrays",
    "workload",
    "workload_variants",
    "router_settings",
    "stage_costs",
    "social_cost",
    "ClosedLoop",
    "solve",
    "closed_loop",
    "open_loop",
    "default_chunk",
]

RHO_MAX = 0.99
#: Dirichlet concentration of the variants' class mixes: 5 gives mixes whose classes carry
#: roughly 5–40% of the traffic each (Dirichlet(1) makes classes of 0.1%, whose hit fraction
#: swings with their routing and slows every solver without changing any latency).
MIX_CONCENTRATION = 5.0
#: Default optimum starts of :func:`closed_loop` / :func:`open_loop`: the whole-class
#: assignment and the uniform routing (the best converged one is kept).
OPT_STARTS = 2
#: Quantiles of TTFT reported.
QUANTILES = (0.5, 0.9, 0.99)


class Model(NamedTuple):
    """Arrays of one deployment (leading batch axes allowed); ``K`` decode-worker slots.

    Fields ``pa, pb, pc, budget, m: ()``; ``alpha, beta, gamma, bmax, kv_lat, kv_spt,
    residency, cache, link_cap: (K,)``; ``link: (K, K)`` one-hot (worker k uses link l);
    ``mask: (K,)`` bool, which slots are workers. ``residency`` and ``cache`` are flows
    (requests/s): ``cache = M_k = B_max/(m·max(α + β·B_max, γ·B_max))`` (module docstring).
    """

    pa: jax.Array
    pb: jax.Array
    pc: jax.Array
    budget: jax.Array
    m: jax.Array
    alpha: jax.Array
    beta: jax.Array
    gamma: jax.Array
    bmax: jax.Array
    kv_lat: jax.Array
    kv_spt: jax.Array
    link: jax.Array
    link_cap: jax.Array
    residency: jax.Array
    cache: jax.Array
    mask: jax.Array


class Workload(NamedTuple):
    """Request classes: ``tokens L (J,)``, ``shareable η (J,)``, ``mix π (J,)`` (Σ π = 1)."""

    tokens: jax.Array
    shareable: jax.Array
    mix: jax.Array


def model_arrays(p: serving.ServingPreset | str, workers: int | None = None, fit=None) -> Model:
    """:class:`Model` (NumPy, float64) of a preset, padded to ``workers`` decode slots."""
    p = serving.preset(p) if isinstance(p, str) else serving.check_preset(p)
    co = serving.coefficients(p, fit)
    k = len(co.decode_alpha)
    kk = k if workers is None else int(workers)
    if kk < k:
        raise InputError(f"workers = {kk}: must be >= the preset's {k} decode workers")

    def pad(v, fill):
        out = np.full(kk, fill, np.float64)
        out[:k] = v
        return out

    onehot = np.zeros((kk, kk))
    onehot[np.arange(k), co.link] = 1.0
    # The hit model's eviction residency·(1 + X_k/M_k) needs M_k as a flow (requests/s), as
    # X_k is: by Little's law the flow that keeps B_max sequences resident for their residence
    # time, m steps at a full cache (module docstring).
    bmax = np.asarray(co.decode_bmax, np.float64)
    step = np.maximum(co.decode_alpha + co.decode_beta * bmax, co.decode_gamma * bmax)
    cache_flow = bmax / (float(co.output_tokens) * step)
    return Model(
        pa=np.float64(co.prefill_a),
        pb=np.float64(co.prefill_b),
        pc=np.float64(co.prefill_c),
        budget=np.float64(co.budget),
        m=np.float64(co.output_tokens),
        alpha=pad(co.decode_alpha, 1.0),
        beta=pad(co.decode_beta, 0.0),
        gamma=pad(co.decode_gamma, 1.0),
        bmax=pad(co.decode_bmax, 1.0),
        kv_lat=pad(co.kv_latency, 0.0),
        kv_spt=pad(co.kv_sec_per_token, 0.0),
        link=onehot,
        link_cap=pad(co.link_tokens_per_s, np.inf),
        residency=pad(p.residency, 1.0),
        cache=pad(cache_flow, 1.0),
        mask=np.arange(kk) < k,
    )


def workload(p: serving.ServingPreset | str) -> Workload:
    """The preset's base workload: ``templates`` classes of ``prompt_tokens``, equal mix."""
    p = serving.preset(p) if isinstance(p, str) else serving.check_preset(p)
    j = p.templates
    return Workload(
        tokens=np.full(j, float(p.prompt_tokens)),
        shareable=np.full(j, float(p.shareable)),
        mix=np.full(j, 1.0 / j),
    )


def workload_variants(p: serving.ServingPreset | str, count: int, seed: int = 0) -> Workload:
    """``count`` workload variants ``(count, J)``: variant 0 is the base workload; the others
    draw the class mix from Dirichlet(``MIX_CONCENTRATION``) and each template's shareable
    fraction uniformly in ``[η/2, min(1, 3η/2)]`` around the preset's ``η`` (seeded)."""
    if isinstance(count, bool) or int(count) != count or count < 1:
        raise InputError(f"variants = {count!r}: must be an integer >= 1")
    base = workload(p)
    j = base.tokens.shape[0]
    rng = np.random.default_rng(seed)
    eta0 = float(base.shareable[0])
    mix = np.concatenate(
        [base.mix[None], rng.dirichlet(np.full(j, MIX_CONCENTRATION), size=count - 1)]
    )
    eta = np.concatenate(
        [base.shareable[None], rng.uniform(eta0 / 2, min(1.0, 1.5 * eta0), size=(count - 1, j))]
    )
    return Workload(tokens=np.broadcast_to(base.tokens, (count, j)).copy(), shareable=eta, mix=mix)


def router_settings(
    taus=(0.0, 0.2, 0.5, 0.8), omegas=(0.1, 0.5, 1.0, 2.0)
) -> tuple[list[str], Policy]:
    """The (τ, ω) grid of Dynamo KV-router settings (default 4 × 4 = 16): labels and a
    :class:`~poa_jax.policies.Policy` with fields ``(S,)``."""
    t, o = np.meshgrid(np.asarray(taus, float), np.asarray(omegas, float), indexing="ij")
    t, o = t.ravel(), o.ravel()
    if np.any(t < 0) or np.any(o < 0) or not (np.all(np.isfinite(t)) and np.all(np.isfinite(o))):
        raise InputError("router settings: tau and omega must be finite and >= 0")
    labels = [f"dynamo(tau={a:g},omega={b:g})" for a, b in zip(t, o, strict=True)]
    n = len(labels)
    pol = Policy(
        w_true=np.zeros(n), w_prefill=o, w_decode=np.ones(n), tau=t, credit=np.ones(n),
        span_floor=np.full(n, 0.1),
    )  # fmt: skip
    return labels, pol


# --------------------------------------------------------------------------- one point


def _singular(rho, scale, exact=False):
    """``scale·ρ/(1 − ρ)``, continued linearly above ``ρ_max`` (``exact``: the singular form
    itself, ``+inf`` at ``ρ ≥ 1`` — the closed loop keeps every evaluated point below it)."""
    if exact:
        ok = rho < 1.0
        r = jnp.where(ok, rho, 0.0)
        return jnp.where(ok, scale * r / (1.0 - r), jnp.inf)
    r = jnp.minimum(rho, RHO_MAX)
    val = scale * r / (1.0 - r)
    slope = scale / (1.0 - r) ** 2
    return val + slope * jnp.maximum(rho - RHO_MAX, 0.0)


def _ps(rho, exact=False):
    """Processor-sharing stretch ``1/(1 − ρ)``, continued linearly above ``ρ_max``
    (``exact``: ``+inf`` at ``ρ ≥ 1``)."""
    if exact:
        ok = rho < 1.0
        return jnp.where(ok, 1.0 / (1.0 - jnp.where(ok, rho, 0.0)), jnp.inf)
    r = jnp.minimum(rho, RHO_MAX)
    return 1.0 / (1.0 - r) + jnp.maximum(rho - RHO_MAX, 0.0) / (1.0 - r) ** 2


def decode_capacity(md: Model) -> jax.Array:
    """``μ_k`` requests/s per decode worker ``(K,)`` (roofline ridge or KV cliff)."""
    ridge = jnp.where(
        md.gamma > md.beta, md.alpha / jnp.maximum(md.gamma - md.beta, 1e-30), jnp.inf
    )
    bstar = jnp.minimum(ridge, md.bmax)
    return bstar / (md.m * (md.alpha + md.beta * bstar))


def _decode_time(md: Model, xk, exact=False):
    """``(D_k, memory-bound part m·ITL, ρ_k)`` for worker loads ``xk (K,)``."""
    mu = decode_capacity(md)
    rho = xk / mu
    if exact:  # μ_k < 1/(mβ): below capacity 1 − X m β > 0
        ok = rho < 1.0
        den = 1.0 - jnp.where(ok, xk, 0.0) * md.m * md.beta
        mem = jnp.where(ok, md.m * md.alpha / den, jnp.inf)
        return mem + _singular(rho, 0.5 / mu, True), mem, rho
    # m·α/(1 − X m β), continued linearly above ρ_max·μ (where 1 − X m β stays > 0).
    xbar = RHO_MAX * mu
    xc = jnp.minimum(xk, xbar)
    den = 1.0 - xc * md.m * md.beta
    mem = md.m * md.alpha / den
    mem = mem + md.m * md.alpha * md.m * md.beta / den**2 * jnp.maximum(xk - xbar, 0.0)
    wait = _singular(rho, 0.5 / mu)
    return mem + wait, mem, rho


def _prefill_wait(md: Model, lam, nbar, exact=False):
    """``(W_P, ρ_P)``: M/D/1 wait at the budget-limited token capacity ``κ_P = B/t_P(B)``."""
    s_budget = md.pa + (md.pb + md.pc * nbar) * md.budget
    kappa = md.budget / s_budget
    rho = lam / kappa
    return _singular(rho, 0.5 * nbar / kappa, exact), rho


class Stages(NamedTuple):
    """Per-point model quantities at a flow (see module docstring)."""

    cost: jax.Array  # (J, K) c = TTFT + D
    ttft: jax.Array  # (J, K) mean TTFT
    shift: jax.Array  # (J, K) TTFT without the prefill wait (own prefill + KV transfer)
    hit: jax.Array  # (J, K)
    wait: jax.Array  # () W_P
    rho_prefill: jax.Array  # ()
    decode: jax.Array  # (K,) D_k
    decode_mem: jax.Array  # (K,) m·ITL memory-bound part
    rho_decode: jax.Array  # (K,)
    rho_link: jax.Array  # (K,) by link index


def stage_costs(md: Model, wl: Workload, x: jax.Array, exact: bool = False) -> Stages:
    """All stage quantities at flow ``x (J, K)`` for one point. ``exact``: the singular terms
    without the linear continuation above ``ρ_max`` (``+inf`` at or above capacity), the form
    the closed loop solves (module docstring)."""
    mask = md.mask
    x = jnp.where(mask[None, :], x, 0.0)
    xk = jnp.sum(x, axis=0)
    evict = md.residency * (1.0 + xk / md.cache)
    h = wl.shareable[:, None] * x / (x + evict[None, :])
    n = wl.tokens[:, None] * (1.0 - h)
    lam = jnp.sum(x * n)
    tiny = jnp.finfo(x.dtype).tiny
    nbar = jnp.where(lam > 0, jnp.sum(x * n * n) / jnp.maximum(lam, tiny), jnp.mean(wl.tokens))
    wait, rho_p = _prefill_wait(md, lam, nbar, exact)
    own = md.pa + md.pb * n + md.pc * n * n
    tok_k = jnp.sum(x * n, axis=0)
    link_load = md.link.T @ tok_k  # (L,)
    rho_l = jnp.where(jnp.isinf(md.link_cap), 0.0, link_load / md.link_cap)
    stretch = md.link @ _ps(rho_l, exact)  # (K,)
    kv = md.kv_lat[None, :] + n * md.kv_spt[None, :] * stretch[None, :]
    dec, mem, rho_d = _decode_time(md, xk, exact)
    shift = own + kv
    ttft = shift + wait
    cost = ttft + dec[None, :]
    return Stages(cost, ttft, shift, h, wait, rho_p, dec, mem, rho_d, rho_l)


def social_cost(md: Model, wl: Workload, x: jax.Array, exact: bool = False) -> jax.Array:
    """``SC = Σ x·c`` (requests in the system, by Little's law); ``exact`` as
    :func:`stage_costs` (the closed loop's model)."""
    st = stage_costs(md, wl, x, exact)
    return jnp.sum(jnp.where(md.mask[None, :], x * st.cost, 0.0))


def _perceived(md, wl, pol, x, st):
    tok = wl.tokens[:, None]
    n = tok * (1.0 - st.hit)
    w_k = jnp.sum(x * n, axis=0)
    prefill = w_k[None, :] + tok * jnp.maximum(1.0 - pol.credit * st.hit, 0.0)
    decode = jnp.sum(x * tok, axis=0)[None, :] + tok
    return pol.w_true * st.cost + pol.w_prefill * prefill + pol.w_decode * decode


def _slope(md, wl, pol, x, st, exact=False):
    """Diagonal slope of the perceived cost (cache derivative left out), a metric."""
    tok = wl.tokens[:, None]
    n = tok * (1.0 - st.hit)
    xk = jnp.sum(x, axis=0)
    ddec = jax.jvp(lambda v: _decode_time(md, v, exact)[0], (xk,), (jnp.ones_like(xk),))[1]
    true = ddec[None, :] + n * (st.wait / jnp.maximum(jnp.sum(x * n), 1e-30))
    return pol.w_true * true + pol.w_prefill * n + pol.w_decode * tok


def _logit(pol, r, mask, demand):
    lo = jnp.min(jnp.where(mask, r, jnp.inf), axis=-1, keepdims=True)
    hi = jnp.max(jnp.where(mask, r, -jnp.inf), axis=-1, keepdims=True)
    span = jnp.maximum(hi - lo, pol.span_floor * jnp.abs(hi))
    flat = span <= jnp.finfo(r.dtype).eps * jnp.maximum(jnp.abs(hi), 1.0)
    tau = jnp.maximum(pol.tau, 1e-30)
    z = jnp.where(flat, 0.0, -(r - lo) / (jnp.where(flat, 1.0, span) * tau))
    p = jax.nn.softmax(jnp.where(mask, z, -jnp.inf), axis=-1)
    return demand[:, None] * jnp.where(mask, p, 0.0)


def _rel_gap(x, c, demand, mask):
    total = jnp.sum(jnp.where(mask, x * c, 0.0))
    best = jnp.sum(demand * jnp.min(jnp.where(mask, c, jnp.inf), axis=-1))
    return jnp.maximum(total - best, 0.0) / jnp.maximum(jnp.abs(total), 1e-300)


#: Step growth while successive routing steps agree; the projection step may grow to
#: ``ALPHA_MAX`` (the metric is a conservative diagonal: the cache term's own derivative, which
#: flattens the cost, is left out), the logit averaging weight to 1.
GROW = 1.5
ALPHA_MAX = 4.0
#: Iterations per round between compactions of the unfinished lanes (:func:`solve`).
ROUND = 16


class _State(NamedTuple):
    """Loop state of one lane (one point × start)."""

    shares: jax.Array  # (J, K) rows on the unit simplex over workers
    x_rate: jax.Array  # () throughput X
    alpha: jax.Array  # () routing step (projection) or averaging weight (logit)
    prev: jax.Array  # (J, K) previous routing step (oscillation detection)
    err: jax.Array  # () max(gap/tol, little/little_tol) of this state; ≤ 1 means done
    gap: jax.Array  # () routing gap of this state
    k: jax.Array  # () int32 iterations


def _little_slope(md, wl, x, st, exact=True):
    """``dSC(X·π·S)/dX`` at fixed shares, hit fractions held: ``R + W_P'(Λ)·Λ + Σ_k X_k² D_k'/X``
    (the link and hit-rate terms, both tiny, left out) — Newton's derivative without a jvp."""
    xk = jnp.sum(x, axis=0)
    xr = jnp.maximum(jnp.sum(xk), 1e-300)
    n = wl.tokens[:, None] * (1.0 - st.hit)
    lam = jnp.sum(x * n)
    nbar = jnp.where(lam > 0, jnp.sum(x * n * n) / jnp.maximum(lam, 1e-300), 1.0)
    dw = jax.jvp(lambda v: _prefill_wait(md, v, nbar, exact)[0], (lam,), (jnp.ones_like(lam),))[1]
    dd = jax.jvp(lambda v: _decode_time(md, v, exact)[0], (xk,), (jnp.ones_like(xk),))[1]
    sc = jnp.sum(jnp.where(md.mask[None, :], x * st.cost, 0.0))
    return sc / xr + dw * lam + jnp.sum(jnp.where(md.mask, xk * xk * dd, 0.0)) / xr


def _max_rho(md, wl, shares, x_rate):
    """Largest utilisation (prefill, decode workers, links) at throughput ``X`` and shares."""
    st = stage_costs(md, wl, x_rate * wl.mix[:, None] * shares)
    rho_d = jnp.max(jnp.where(md.mask, st.rho_decode, 0.0))
    return jnp.maximum(jnp.maximum(st.rho_prefill, rho_d), jnp.max(st.rho_link))


#: Bound on the halvings of :func:`_feasible_x` (each loop stops far earlier in practice).
FEASIBLE_STEPS = 200


def _feasible_x(md, wl, shares, lo, x):
    """A throughput strictly below capacity at ``shares`` (every ``ρ < 1``): ``lo`` is first
    shrunk until it is below capacity, then ``x`` is moved halfway towards it until it is.
    Every utilisation increases with ``X`` at fixed shares, so the feasible set is an interval
    ``(0, X_cap)`` and both loops end."""
    ok = lambda v: _max_rho(md, wl, shares, v) < 1.0

    def shrink(c):
        v, i = c
        r = _max_rho(md, wl, shares, v)
        return v * jnp.clip((1.0 - 1e-3) / jnp.maximum(r, 1e-300), 0.5, 0.999), i + 1

    lo = jax.lax.while_loop(
        lambda c: ~ok(c[0]) & (c[1] < FEASIBLE_STEPS), shrink, (lo, jnp.int32(0))
    )[0]
    return jax.lax.while_loop(
        lambda c: ~ok(c[0]) & (c[1] < FEASIBLE_STEPS),
        lambda c: (lo + 0.5 * (c[0] - lo), c[1] + 1),
        (x, jnp.int32(0)),
    )[0]


#: Passes of the local search of :func:`_assignment` (class moves, then one class exchange).
ASSIGN_PASSES = 2


def _assignment(md, wl, shares, x_rate, exact=False):
    """A whole-class assignment found by discrete local search at fixed throughput ``X``:
    shares ``(J, K)`` with one-hot rows (every class on one worker).

    Why: the cache term makes ``SC`` concave along directions that exchange classes between
    workers at fixed worker totals (a class concentrated on one worker hits its prefix; split
    over two it hits less on both). The optimum segregates classes (whole classes per worker, a
    few split to balance the totals) and is one of many local minima; the spread start points
    (uniform, herding) lie on a ridge: for identical workers the uniform routing is a stationary
    saddle (gap 0), for near-identical ones the descent creeps along the exchange direction with
    a gap of ~1e-5 and its diagonal metric, blind to that curvature, cannot speed it up. Whole
    classes are also sticky (moving a little flow to an empty worker gets no hit there), so the
    descent does not leave a poor split either: the split is chosen discretely, and the descent
    then balances the split classes.

    Classes are placed in decreasing mix (the unplaced ones keep ``shares``) on the worker of
    least ``SC(X·π·S)``; then ``ASSIGN_PASSES`` passes of moving each class to its best worker
    and exchanging the best pair of classes' workers. Between placements ``SC`` never
    increases; ``J·K·(1 + ASSIGN_PASSES) + ASSIGN_PASSES·J²`` cost evaluations.
    """
    nj = shares.shape[0]
    rows = jnp.eye(shares.shape[1], dtype=shares.dtype)
    valid = md.mask
    order = jnp.argsort(-wl.mix)
    sc = jax.vmap(lambda c: social_cost(md, wl, x_rate * wl.mix[:, None] * c, exact))

    def best(cand, ok, cur):
        # Candidates at or above capacity (exact model: SC = inf) are never taken.
        v = sc(cand)
        ok = ok & jnp.isfinite(v)
        pick = cand[jnp.argmin(jnp.where(ok, v, jnp.inf))]
        return jnp.where(jnp.any(ok), pick, cur)

    def move(i, s):
        row = (jnp.arange(nj) == order[i % nj])[None, :, None]
        return best(jnp.where(row, rows[:, None, :], s[None]), valid, s)

    a, b = (x.ravel()[:, None] for x in jnp.meshgrid(jnp.arange(nj), jnp.arange(nj)))
    idx = jnp.arange(nj)[None, :]
    perm = jnp.where(idx == a, b, jnp.where(idx == b, a, idx))  # (J², J): classes a, b exchanged

    def exchange(s):
        return best(s[perm], jnp.ones(perm.shape[0], bool), s)  # row a ↔ b; a = b: no change

    s = jax.lax.fori_loop(0, nj, move, shares)
    return jax.lax.fori_loop(
        0, ASSIGN_PASSES, lambda _, s: exchange(jax.lax.fori_loop(0, nj, move, s)), s
    )


def _init_one(md, wl, pol, c_target, s0, *, closed, newton, assign=False):
    mask = jnp.broadcast_to(md.mask[None, :], s0.shape)
    s0 = project_rows(s0, jnp.ones(s0.shape[0], s0.dtype), None, mask)

    def rate(s):
        if not closed:
            return c_target
        # X0 = C / R(0), refined by exact Newton steps at the start shares.
        x_small = 1e-9 * wl.mix[:, None] * s
        r0 = jnp.sum(x_small * stage_costs(md, wl, x_small, True).cost) / 1e-9
        return _newton_x(md, wl, s, c_target / jnp.maximum(r0, 1e-300), c_target, newton)

    x0 = rate(s0)
    if assign:
        s0 = _assignment(md, wl, s0, x0, closed)
        x0 = rate(s0)
    dt = s0.dtype
    return _State(
        s0, x0, jnp.asarray(1.0, dt), jnp.zeros_like(s0), jnp.asarray(jnp.inf, dt),
        jnp.asarray(jnp.inf, dt), jnp.int32(0),
    )  # fmt: skip


def _step_one(md, wl, pol, c_target, s: _State, *, closed, optimum, logit, tol, little_tol):
    """Measures the state; if not done, one routing step at the current ``X`` and one Newton
    step on ``X``. A done lane is returned unchanged (with its error)."""
    mask = jnp.broadcast_to(md.mask[None, :], s.shares.shape)
    tiny = jnp.finfo(s.shares.dtype).tiny  # 1e-300 exceeded the demand of loads ~1e-300
    demand = s.x_rate * wl.mix
    x = demand[:, None] * s.shares
    st = stage_costs(md, wl, x, closed)
    if optimum:
        cost = jax.grad(lambda y: social_cost(md, wl, y, closed))(x)
        slope = 2.0 * _slope(md, wl, Policy(1.0, 0.0, 0.0, 0.0, 1.0, 0.1), x, st, closed)
    else:
        cost = _perceived(md, wl, pol, x, st)
        slope = _slope(md, wl, pol, x, st, closed)
    if logit:
        target = _logit(pol, cost, mask, demand)
        gap = jnp.sum(jnp.abs(target - x)) / jnp.maximum(jnp.sum(demand), tiny)
    else:
        gap = _rel_gap(x, cost, demand, mask)
    sc = jnp.sum(jnp.where(mask, x * st.cost, 0.0))
    little = jnp.abs(sc - c_target) / c_target if closed else jnp.zeros_like(sc)
    err = jnp.maximum(gap / tol, little / little_tol)
    done = err <= 1.0
    if logit:
        y = x + s.alpha * (target - x)
        amax = 1.0
    else:
        w = jnp.where(mask, jnp.maximum(slope, 1e-12 * jnp.max(jnp.abs(slope)) + tiny), 1.0)
        # Each class's step loads a worker that every other class also uses: a Jacobi step
        # scaled by the number of classes does not overshoot on shared resources.
        w = w * jnp.sum(wl.mix > 0)
        mean = jnp.sum(jnp.where(mask, x * cost, 0.0), -1) / jnp.maximum(demand, tiny)
        cen = jnp.where(mask, cost - mean[:, None], 0.0)
        y = project_rows(x - s.alpha * cen / w, demand, w, mask)
        amax = ALPHA_MAX
    dx = y - x
    cos = jnp.sum(dx * s.prev) / jnp.maximum(jnp.sqrt(jnp.sum(dx**2) * jnp.sum(s.prev**2)), tiny)
    alpha = jnp.where(cos < 0, s.alpha * 0.5, jnp.where(cos > 0.5, s.alpha * GROW, s.alpha))
    alpha = jnp.clip(alpha, 1e-3, amax)
    shares = jnp.where(demand[:, None] > 0, y / jnp.maximum(demand[:, None], tiny), s.shares)
    if closed:
        dg = _little_slope(md, wl, x, st)
        xr = jnp.clip(s.x_rate - (sc - c_target) / jnp.maximum(dg, tiny), 0.1 * s.x_rate,
                      10.0 * s.x_rate)  # fmt: skip
        # Stay strictly below capacity at the new shares (the exact model is +inf there).
        xr = _feasible_x(md, wl, shares, s.x_rate, xr)
    else:
        xr = s.x_rate
    new = _State(shares, xr, alpha, dx, err, gap, s.k + 1)
    old = s._replace(err=err, gap=gap)
    return jax.tree_util.tree_map(lambda a, b: jnp.where(done, a, b), old, new)


def _advance_one(md, wl, pol, c_target, s, *, budget, max_iters, **kw):
    def cond(c):
        st, b = c
        return loop.pending(st.err, st.k, 1.0, max_iters) & (b < budget)

    def body(c):
        st, b = c
        return _step_one(md, wl, pol, c_target, st, **kw), b + 1

    return jax.lax.while_loop(cond, body, (s, jnp.int32(0)))[0]


def _newton_x(md, wl, shares, x_rate, c_target, steps: int):
    """Exact Newton steps (jvp) on ``g(X) = SC(X·π·S) − C`` at fixed shares, exact singular
    model, safeguarded: each step within ``[X/10, 10X]`` and strictly below capacity
    (:func:`_feasible_x`), where ``g`` has its root for every ``C``. Returns the iterate of
    least ``|g|`` (the start included): near capacity ``g`` is known only to ~``ε/(1 − ρ)``
    and a step from a root can land a few ulps off it, on a larger ``|g|`` (the final polish
    took points that had met ``little_tol`` back above it). ``SC`` is evaluated at
    ``(X·π)·S``, the flow :func:`_step_one` and :func:`_outputs` evaluate, so the least
    ``|g|`` here is the residual reported."""

    def g_of(v):
        return social_cost(md, wl, (v * wl.mix)[:, None] * shares, True) - c_target

    def body(_, c):
        xr, best, err = c
        g, dg = jax.jvp(g_of, (xr,), (jnp.ones_like(xr),))
        better = jnp.abs(g) < err
        best, err = jnp.where(better, xr, best), jnp.where(better, jnp.abs(g), err)
        nxt = xr - g / jnp.maximum(dg, 1e-300)
        nxt = jnp.clip(nxt, 0.1 * xr, 10.0 * xr)
        return _feasible_x(md, wl, shares, xr, nxt), best, err

    x0 = _feasible_x(md, wl, shares, x_rate, x_rate)
    inf = jnp.asarray(jnp.inf, x0.dtype)
    xr, best, err = jax.lax.fori_loop(0, steps, body, (x0, x0, inf))
    return jnp.where(jnp.abs(g_of(xr)) < err, xr, best)


def _finish_one(md, wl, pol, c_target, s: _State, *, closed, tol, little_tol):
    xr = _newton_x(md, wl, s.shares, s.x_rate, c_target, 4) if closed else s.x_rate
    if not closed:
        c_target = social_cost(md, wl, xr * wl.mix[:, None] * s.shares)
    return _outputs(md, wl, s.shares, xr, c_target, s.gap, s.k, tol, closed, little_tol)


def _outputs(md, wl, shares, xr, c_target, gap, iters, tol, exact=False, little_tol=None):
    """The point's report. ``status`` is converged only where the routing gap is within
    ``tol`` and, given ``little_tol``, Little's law within it after the final polish (out of
    iterations otherwise: far past capacity float64 cannot resolve ``X`` finely enough)."""
    x = xr * wl.mix[:, None] * shares
    st = stage_costs(md, wl, x, exact)
    mask = md.mask[None, :]
    sc = jnp.sum(jnp.where(mask, x * st.cost, 0.0))
    r = sc / jnp.maximum(xr, 1e-300)
    w = jnp.where(mask, x, 0.0) / jnp.maximum(xr, 1e-300)
    q = _ttft_quantiles(w, st.shift, st.wait, st.rho_prefill)
    xk = jnp.sum(x, axis=0)
    batch = xk * st.decode
    itl = jnp.maximum(md.alpha + md.beta * batch, md.gamma * batch) * jnp.maximum(
        1.0, batch / md.bmax
    )
    share_k = xk / jnp.maximum(xr, 1e-300)
    little = jnp.abs(xr * r - c_target) / jnp.where(c_target > 0, c_target, 1.0)
    status = loop.status_of(gap, tol)
    if little_tol is not None:
        status = jnp.where((status == loop.CONVERGED) & (little > little_tol), loop.MAX_ITERS,
                           status)  # fmt: skip
    status = jnp.where(jnp.isfinite(r), status, loop.NONFINITE)
    return dict(
        throughput=xr,
        latency=r,
        ttft_mean=jnp.sum(w * st.ttft),
        ttft_p50=q[0],
        ttft_p90=q[1],
        ttft_p99=q[2],
        itl=jnp.sum(jnp.where(md.mask, share_k * itl, 0.0)),
        itl_max=jnp.max(jnp.where(md.mask, itl, 0.0)),
        decode_batch=jnp.max(jnp.where(md.mask, batch, 0.0)),
        rho_prefill=st.rho_prefill,
        rho_decode=jnp.max(jnp.where(md.mask, st.rho_decode, 0.0)),
        hit_rate=jnp.sum(w * st.hit),
        little_residual=little,
        gap=gap,
        iterations=iters,
        status=status,
        overloaded=(st.rho_prefill > RHO_MAX)
        | jnp.any(md.mask & (st.rho_decode > RHO_MAX))
        | jnp.any(st.rho_link > RHO_MAX),
        shares=shares,
    )


def _ttft_quantiles(w, shift, wait, rho):
    """TTFT quantiles of the mixture over (class, worker) of ``shift + W`` where the prefill
    wait ``W`` has an atom ``1 − ρ`` at 0 and an exponential tail of mean ``W/ρ``
    (:func:`poa_jax.queueing.mixture_quantile`)."""
    from poa_jax.queueing import mixture_quantile

    p = jnp.clip(rho, 0.0, 1.0)
    theta = p / jnp.maximum(wait, 1e-300)
    qs = jnp.asarray(QUANTILES, w.dtype)
    return jax.vmap(
        lambda q: mixture_quantile(q, w.ravel(), shift.ravel(), jnp.full(w.size, p),
                                   jnp.full(w.size, theta))
    )(qs)  # fmt: skip


# --------------------------------------------------------------------------- batches


class ClosedLoop(NamedTuple):
    """Batched results; ``...`` the batch shape. Floats in seconds, requests/s, tokens.

    ``throughput`` X, ``latency`` R (mean, = C/X), ``ttft_mean/p50/p90/p99``, ``itl`` (X-weighted
    over workers) and ``itl_max``, ``decode_batch`` (largest), ``rho_prefill``, ``rho_decode``,
    ``hit_rate``, ``little_residual`` ``|X·R − C|/C``, ``gap``, ``iterations``, ``status``,
    ``converged``, ``overloaded``, ``shares (..., J, K)``, ``duplicate`` (a start after the
    first that was stopped on entering a small ball around the first start's equilibrium, whose
    result it reports).
    """

    throughput: np.ndarray
    latency: np.ndarray
    ttft_mean: np.ndarray
    ttft_p50: np.ndarray
    ttft_p90: np.ndarray
    ttft_p99: np.ndarray
    itl: np.ndarray
    itl_max: np.ndarray
    decode_batch: np.ndarray
    rho_prefill: np.ndarray
    rho_decode: np.ndarray
    hit_rate: np.ndarray
    little_residual: np.ndarray
    gap: np.ndarray
    iterations: np.ndarray
    status: np.ndarray
    converged: np.ndarray
    overloaded: np.ndarray
    shares: np.ndarray
    duplicate: np.ndarray


def default_chunk() -> int:
    """Largest lane count per compiled call: 1024 on CPU, 16384 on an accelerator."""
    return 1024 if jax.default_backend() == "cpu" else 16384


_STATIC = ("closed", "optimum", "logit", "tol", "little_tol", "max_iters", "newton", "budget")


@functools.partial(jax.jit, static_argnames=("closed", "newton", "assign"))
def _init_batch(md, wl, pol, target, s0, *, closed, newton, assign):
    fn = functools.partial(_init_one, closed=closed, newton=newton, assign=assign)
    return jax.vmap(fn)(md, wl, pol, target, s0)


@functools.partial(
    jax.jit,
    static_argnames=("closed", "optimum", "logit", "tol", "little_tol", "max_iters", "budget"),
)
def _advance_batch(md, wl, pol, target, s, *, closed, optimum, logit, tol, little_tol,
                   max_iters, budget):  # fmt: skip
    fn = functools.partial(
        _advance_one, budget=budget, max_iters=max_iters, closed=closed, optimum=optimum,
        logit=logit, tol=tol, little_tol=little_tol,
    )  # fmt: skip
    return jax.vmap(fn)(md, wl, pol, target, s)


@functools.partial(jax.jit, static_argnames=("closed", "tol", "little_tol"))
def _finish_batch(md, wl, pol, target, s, *, closed, tol, little_tol):
    fn = functools.partial(_finish_one, closed=closed, tol=tol, little_tol=little_tol)
    return jax.vmap(fn)(md, wl, pol, target, s)


def starting_shares(j: int, mask: np.ndarray, starts: int, seed: int = 0) -> np.ndarray:
    """Start shares ``(N, S, J, K)`` for masks ``(N, K)``: :func:`poa_jax.starts.start_shares`
    (uniform, 90% of every class on worker 0, 1, … — herding, the cache-affine equilibria —
    then seeded random mixes shared by every point), the same for every class."""
    n, k = mask.shape
    s = start_shares(mask, starts, seed)[:, :, None, :]
    return np.broadcast_to(s, (n, starts, j, k)).copy()


def _dtype():
    return np.float64 if jax.config.jax_enable_x64 else np.float32


def _tols(tol, little_tol, dt):
    f64 = dt == np.float64
    tol = (1e-6 if f64 else 1e-4) if tol is None else float(tol)
    little_tol = (1e-11 if f64 else 1e-5) if little_tol is None else float(little_tol)
    for name, v in (("tol", tol), ("little_tol", little_tol)):
        if not (np.isfinite(v) and v > 0):
            raise InputError(f"{name} = {v!r}: must be finite and > 0")
    return tol, little_tol


def _flat(tree, n):
    return jax.tree_util.tree_map(
        lambda a: np.broadcast_to(np.asarray(a), (n,) + np.shape(a)[1:]), tree
    )


def _buckets(chunk: int) -> list[int]:
    """Lane counts compiled for: 64·4^i up to ``chunk`` (and ``chunk`` itself)."""
    out, b = [], 64
    while b < chunk:
        out.append(b)
        b *= 4
    return out + [chunk]


def _take(tree, idx):
    return jax.tree_util.tree_map(lambda a: a[idx], tree)


def _run_lanes(md, wl, pol, tgt, s0, *, closed, optimum, logit, tol, little_tol, max_iters,
               newton, chunk, ref=None, dup_tol=0.0, assign=False):  # fmt: skip
    """Init (``assign``: from :func:`_assignment` of the start shares), rounds of ``ROUND``
    iterations with compaction of unfinished lanes, finish.

    ``ref (total, J, K)``: shares of a converged equilibrium of the same point (NaN where
    none); a lane whose shares come within ``dup_tol`` (max norm) of it between rounds stops
    there, flagged in the returned ``"duplicate"`` (the caller substitutes the reference).
    """
    total = tgt.shape[0]
    dup = np.zeros(total, bool)
    sizes = _buckets(chunk)

    def pieces(idx):
        # Split lane indices into padded pieces of a compiled size (padding repeats lanes).
        out = []
        for lo in range(0, len(idx), chunk):
            part = idx[lo : lo + chunk]
            size = next(b for b in sizes if b >= len(part))
            out.append((part, np.resize(part, size)))
        return out

    state = None
    for part, pad in pieces(np.arange(total)):
        st = jax.device_get(_init_batch(
            _take(md, pad), _take(wl, pad), _take(pol, pad), tgt[pad], s0[pad],
            closed=closed, newton=newton, assign=assign,
        ))  # fmt: skip
        keep = len(part)
        st = jax.tree_util.tree_map(lambda a, m=keep: np.asarray(a)[:m], st)
        if state is None:
            state = jax.tree_util.tree_map(lambda a: np.empty((total,) + a.shape[1:], a.dtype), st)
        for full, piece in zip(state, st, strict=True):
            full[part] = piece
    kw = dict(closed=closed, optimum=optimum, logit=logit, tol=tol, little_tol=little_tol,
              max_iters=max_iters)  # fmt: skip
    while True:
        active = np.flatnonzero(
            ~(state.err <= 1.0) & (state.k < max_iters) & ~np.isnan(state.err) & ~dup
        )
        if ref is not None and active.size:
            near = np.max(np.abs(state.shares[active] - ref[active]), axis=(-2, -1)) <= dup_tol
            dup[active[near]] = True
            active = active[~near]
        if active.size == 0:
            break
        for part, pad in pieces(active):
            st = jax.device_get(_advance_batch(
                _take(md, pad), _take(wl, pad), _take(pol, pad), tgt[pad], _take(state, pad),
                budget=ROUND, **kw,
            ))  # fmt: skip
            for full, piece in zip(state, st, strict=True):
                full[part] = np.asarray(piece)[: len(part)]
    outs = []
    for part, pad in pieces(np.arange(total)):
        res = jax.device_get(_finish_batch(
            _take(md, pad), _take(wl, pad), _take(pol, pad), tgt[pad], _take(state, pad),
            closed=closed, tol=tol, little_tol=little_tol,
        ))  # fmt: skip
        outs.append({k: np.asarray(v)[: len(part)] for k, v in res.items()})
    out = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
    out["duplicate"] = dup
    return out


def _check_policy(pol, n: int) -> None:
    """The rules :func:`poa_jax.batching.prepare` applies to a routing game's policy: every
    field finite and >= 0, a scalar or ``(n,)``, and ``w_true + w_prefill + w_decode > 0``
    (a cost to route by). Unchecked, a negative ``tau`` ran as the argmin router and all-zero
    weights as a uniform split, both reported converged, and a NaN weight came back as a
    non-finite status from inside the solve."""
    if not isinstance(pol, Policy):
        raise InputError(f"policy: expected a pj.policies.Policy, got {type(pol).__name__}")
    w = 0.0
    for f in Policy.__dataclass_fields__:
        name = f"policy.{f}"
        a = as_array(name, getattr(pol, f))
        if a.ndim > 1 or (a.ndim == 1 and a.shape[0] not in (1, n)):
            raise InputError(f"{name}: shape {a.shape}: must be a scalar or ({n},), one per point")
        check(name, a, "finite_ge0")
        if f in ("w_true", "w_prefill", "w_decode"):
            w = w + a
    if np.any(w <= 0):
        raise InputError("policy: w_true + w_prefill + w_decode must be > 0 (a cost to route by)")


#: Trailing shape of each :class:`Model` field (``K`` decode slots) and the rule on its values.
_MODEL_RULES = {
    "pa": ((), "finite_ge0"), "pb": ((), "finite_ge0"), "pc": ((), "finite_ge0"),
    "budget": ((), "finite_gt0"), "m": ((), "finite_gt0"), "alpha": (("K",), "finite_gt0"),
    "beta": (("K",), "finite_ge0"), "gamma": (("K",), "finite_ge0"),
    "bmax": (("K",), "finite_gt0"), "kv_lat": (("K",), "finite_ge0"),
    "kv_spt": (("K",), "finite_ge0"), "link": (("K", "K"), "zero_one"),
    "link_cap": (("K",), "pos_or_inf"), "residency": (("K",), "finite_gt0"),
    "cache": (("K",), "pos_or_inf"), "mask": (("K",), "zero_one"),
}  # fmt: skip
#: The same for :class:`Workload` (``J`` classes).
_WORKLOAD_RULES = {"tokens": "finite_gt0", "shareable": "unit", "mix": "finite_ge0"}


def _check_arrays(md: Model, wl: Workload, n: int) -> None:
    """The rules of :func:`solve`'s ``md`` and ``wl`` (the ones :func:`model_arrays` and
    :func:`workload` build from a checked preset): every field with leading axis ``N`` (or 1;
    the scalar fields may also be unbatched) and trailing shape as :class:`Model` /
    :class:`Workload`; rates, times and capacities finite and > 0 (``link_cap`` and ``cache``
    may be inf), coefficients >= 0 with ``pa + pb + pc > 0``; ``link`` and ``mask`` 0/1, every
    point with a worker and every worker on one link; ``shareable`` in [0, 1], ``mix`` >= 0
    summing to 1; the budget at least every class's prompt (a prompt fits in one iteration, as
    :func:`poa_jax.serving.check_preset`). Unchecked, a mix summing to 1.5, negative tokens or a
    budget below a prompt were solved and reported converged, a zero budget came back NaN."""
    if not isinstance(md, Model):
        raise InputError(f"md: expected a load.Model, got {type(md).__name__}")
    if not isinstance(wl, Workload):
        raise InputError(f"wl: expected a load.Workload, got {type(wl).__name__}")
    arr = {}
    k = np.shape(md.mask)[-1] if np.ndim(md.mask) else 0
    j = np.shape(wl.tokens)[-1] if np.ndim(wl.tokens) else 0
    fields = [(f"md.{f}", getattr(md, f), tuple(k for _ in dims), rule)
              for f, (dims, rule) in _MODEL_RULES.items()]  # fmt: skip
    fields += [(f"wl.{f}", getattr(wl, f), (j,), rule) for f, rule in _WORKLOAD_RULES.items()]
    for name, v, base, rule in fields:
        a = as_array(name, v, booleans=name in ("md.mask", "md.link"))
        lead = a.ndim == len(base) + 1 and a.shape[1:] == base and a.shape[0] in (1, n)
        if not (lead or a.shape == base == ()):
            raise InputError(
                f"{name}: shape {a.shape}: must be {(n, *base)} (leading axis N = {n}, one per "
                "point, or 1)"
            )
        check(name, a, rule)
        arr[name] = a
    if k < 1 or j < 1:
        raise InputError("md.mask, wl.tokens: need K >= 1 worker slots and J >= 1 classes")
    if np.any(arr["md.pa"] + arr["md.pb"] + arr["md.pc"] <= 0):
        raise InputError("md.pa + md.pb + md.pc: must be > 0 (a prefill iteration takes time)")
    mask = arr["md.mask"].astype(bool)
    if not np.all(mask.any(-1)):
        i = int(np.argmin(mask.any(-1)))
        raise InputError(f"md.mask[{i}]: every point needs at least one decode worker")
    rows = arr["md.link"].sum(-1)
    if np.any(mask & (rows != 1)):
        raise InputError("md.link: every decode worker's row must be one-hot (one link each)")
    total = arr["wl.mix"].sum(-1)
    if np.any(np.abs(total - 1.0) > 1e-6):
        i = int(np.argmax(np.abs(total - 1.0))) if total.ndim else 0
        raise InputError(f"wl.mix[{i}]: sums to {float(np.ravel(total)[i])!r}: must sum to 1")
    longest = np.broadcast_to(arr["wl.tokens"].max(-1), (n,))
    budget = np.broadcast_to(arr["md.budget"], (n,))
    if np.any(budget < longest):
        i = int(np.argmax(budget < longest))
        raise InputError(
            f"md.budget[{i}] = {float(budget[i])!r}: must be >= the longest prompt, "
            f"wl.tokens = {float(longest[i])!r} (a prompt must fit in one iteration)"
        )


def solve(
    md: Model,
    wl: Workload,
    pol: Policy,
    target,
    *,
    closed: bool = True,
    optimum: bool = False,
    starts: int = 1,
    seed: int = 0,
    tol: float | None = None,
    little_tol: float | None = None,
    max_iters: int = 400,
    newton: int = 3,
    chunk: int | None = None,
    extra_iters: int = 64,
    dup_tol: float = 1e-3,
) -> ClosedLoop:
    """Solves ``N`` points (every argument has a leading axis ``N``), ``starts`` starts each.

    Lanes (point × start) with ``τ > 0`` (logit response) and ``τ = 0`` (projection) are
    solved by separately compiled loops. Every lane runs rounds of ``ROUND`` iterations; between
    rounds the unfinished lanes are compacted into the smallest compiled batch size
    (64·4^i ≤ ``chunk``) that holds them, so a few slow lanes do not hold a whole batch
    (jax-ml/jax#20628). Shapes are fixed per size: a new batch of the same size does not
    recompile.

    Args:
      md, wl, pol: :class:`Model`, :class:`Workload`, :class:`~poa_jax.policies.Policy` with
        leading axis ``N`` on every field (use :func:`numpy.broadcast_to` to share).
      target: ``(N,)`` concurrency ``C`` (closed loop) or rate ``λ`` (open loop), > 0.
      closed: closed loop (Little's law) or open loop.
      optimum: the coordinated optimum instead of the policy's equilibrium.
      starts: starts per point (see :func:`starting_shares`). For the optimum, start 0 is a
        whole-class assignment found by discrete search (:func:`_assignment`: ``SC`` is
        non-convex along class exchanges, the spread starts sit on a saddle or ridge), then the
        spread starts.
      tol, little_tol: routing-gap and Little's-law tolerances (defaults by dtype: 1e-6 and
        1e-11 in float64).
      max_iters: iteration bound per start (at most ``INT32_MAX``: the counters are int32).
      newton: exact Newton steps on ``X`` from the start (closed loop), an integer >= 0.
      chunk: largest lanes per compiled call (default :func:`default_chunk`).
      extra_iters: iteration bound of the starts after the first. The herding starts of a
        cache-affine argmin router (τ = 0) drift slowly along class-exchange directions (the
        cache term rewards concentration, the load term does not see it): 73% do not converge
        in 400 iterations, and on the benchmark grid a bound of 64 instead of 400 changes the
        worst equilibrium at 0.1% of the points, by < 1e-5 relative (benchmarks/_results_issue5.md).
      dup_tol: a start after the first stops, as a duplicate, once its shares are within
        ``dup_tol`` (max norm, checked every ``ROUND`` iterations) of its point's converged first
        start: it reports the first start's equilibrium (``duplicate`` True). 0 disables.

    Returns:
      A :class:`ClosedLoop` with fields ``(N, S, ...)``.
    """
    dt = _dtype()
    tol, little_tol = _tols(tol, little_tol, dt)
    # The loop counters are int32: a bound past INT32_MAX wrapped inside the compiled loop
    # (``k < 2**40`` is False there, True on the host) and the rounds never ended.
    max_iters = integer("max_iters", max_iters, 1, INT32_MAX)
    extra_iters = integer("extra_iters", extra_iters, 1, INT32_MAX)
    newton = integer("newton", newton, 0, INT32_MAX)
    seed = integer("seed", seed, 0, SEED_MAX)
    if not (np.isfinite(dup_tol) and dup_tol >= 0):
        raise InputError(f"dup_tol = {dup_tol!r}: must be finite and >= 0")
    target = np.asarray(target, np.float64)
    if target.ndim != 1:
        raise InputError(f"target: must be a 1-D array of loads, got shape {target.shape}")
    if not np.all(np.isfinite(target) & (target > 0)):
        i = int(np.argmax(~(np.isfinite(target) & (target > 0))))
        name = "concurrency" if closed else "rate"
        raise InputError(f"{name}[{i}] = {float(target[i])!r}: must be finite and > 0")
    n = target.shape[0]
    _check_policy(pol, n)
    _check_arrays(md, wl, n)
    mask = np.asarray(md.mask, bool)
    if mask.ndim == 1:
        mask = np.broadcast_to(mask, (n, mask.shape[0]))
    j = np.shape(wl.tokens)[-1]
    s0 = starting_shares(j, mask, starts, seed)  # (N, S, J, K)
    if optimum:
        # Start 0 of the optimum is a whole-class assignment (:func:`_assignment`, searched from
        # the uniform routing); the spread starts (uniform, herding, …) follow.
        s0 = np.concatenate([s0[:, :1], s0[:, :-1]], axis=1)
    cast = lambda a: np.asarray(a, dt) if np.asarray(a).dtype.kind == "f" else np.asarray(a)
    md_n = jax.tree_util.tree_map(cast, _flat(md, n))
    wl_n = jax.tree_util.tree_map(cast, _flat(wl, n))
    pol_n = jax.tree_util.tree_map(lambda a: np.broadcast_to(np.asarray(a, dt), (n,)), pol)
    rep = lambda tree: jax.tree_util.tree_map(lambda a: np.repeat(a, starts, axis=0), tree)
    md_l, wl_l, pol_l = rep(md_n), rep(wl_n), rep(pol_n)  # lanes: point-major, start-minor
    tgt_l = np.repeat(target.astype(dt), starts)
    s0_l = s0.reshape((n * starts,) + s0.shape[2:]).astype(dt)
    chunk = default_chunk() if chunk is None else integer("chunk", chunk, 1, INT32_MAX)
    logit = (np.asarray(pol_l.tau) > 0) & (not optimum)
    first = np.arange(n * starts) % starts == 0
    out = None
    # Phase 0 solves the first start of every point; phase 1 the other starts, each stopped
    # early once it enters a ``dup_tol`` ball around its point's converged first start (it is
    # then converging to the same equilibrium: its result is the first start's).
    for phase in (0, 1) if starts > 1 else (0,):
        ref = None
        if phase == 1:
            head = np.flatnonzero(first)
            conv = out["status"][head] == loop.CONVERGED
            ref = np.where(conv[:, None, None], out["shares"][head], np.nan)
            ref = np.repeat(ref, starts, axis=0)
        for flag in (False, True):
            idx = np.flatnonzero((logit == flag) & (first == (phase == 0)))
            if idx.size == 0:
                continue
            res = _run_lanes(
                _take(md_l, idx), _take(wl_l, idx), _take(pol_l, idx), tgt_l[idx], s0_l[idx],
                closed=closed, optimum=optimum, logit=flag, tol=tol, little_tol=little_tol,
                max_iters=int(max_iters if phase == 0 else extra_iters), newton=int(newton),
                chunk=chunk, ref=None if ref is None else ref[idx], dup_tol=dup_tol,
                assign=optimum and phase == 0,
            )  # fmt: skip
            if out is None:
                out = {k: np.empty((n * starts,) + v.shape[1:], v.dtype) for k, v in res.items()}
            for k, v in res.items():
                out[k][idx] = v
            dup = idx[res["duplicate"]]
            head = dup - dup % starts
            for k in out:
                if k not in ("iterations", "duplicate"):
                    out[k][dup] = out[k][head]
    out = {k: v.reshape((n, starts) + v.shape[1:]) for k, v in out.items()}
    out["converged"] = out["status"] == loop.CONVERGED
    return ClosedLoop(**{f: out[f] for f in ClosedLoop._fields})


def pick(res: ClosedLoop, which: str = "worst") -> tuple[ClosedLoop, np.ndarray]:
    """One start per point: the worst (lowest throughput) or best converged one (where none
    converged, the worst or best of the finite ones, any if none is finite: argmin/argmax read
    a NaN throughput as the extreme, and a NaN start was picked over a finite unconverged
    one). Returns the picked results ``(N, ...)`` and the number of converged starts."""
    thr = np.asarray(res.throughput, np.float64)
    ok = np.asarray(res.converged, bool)
    finite = np.isfinite(thr)
    fallback = np.where(finite.any(-1, keepdims=True), finite, True)
    use = np.where(ok.any(-1, keepdims=True), ok, fallback)
    if which == "worst":
        idx = np.argmin(np.where(use, thr, np.inf), -1)
    else:
        idx = np.argmax(np.where(use, thr, -np.inf), -1)
    rows = np.arange(thr.shape[0])
    picked = ClosedLoop(*(np.asarray(f)[rows, idx] for f in res))
    return picked, ok.sum(-1)


def closed_loop(
    preset: serving.ServingPreset | str,
    concurrency,
    policy: Policy | None = None,
    *,
    optimum: bool = False,
    starts: int | None = None,
    **options,
) -> ClosedLoop:
    """Closed-loop solve of one preset at concurrencies ``C (N,)`` for one policy (the worst
    equilibrium over ``starts``, default 1), or with ``optimum`` the coordinated optimum: the
    best converged start (a local optimum: ``SC`` is not convex) over ``starts``, default
    ``OPT_STARTS`` (the whole-class assignment and the uniform routing). See :func:`solve` for
    ``options``.

    The optimum alone is not capped by any equilibrium: where SC is far from convex (open
    loop far past capacity, ρ ≫ 1, where the cost is continued linearly) a converged optimum
    can cost more than an equilibrium at the same load. The PoA of
    :func:`poa_jax.serving_sweep.solve_grid` (and ``poa-jax sweep --preset``) takes the
    better of the optimum and the converged equilibria, so it is never below 1.

    Example:
      >>> import jax; jax.config.update("jax_enable_x64", True)
      >>> from poa_jax import load, policies
      >>> r = load.closed_loop("llama70b-1p2d", [8.0, 512.0], policies.dynamo())
      >>> bool(abs(r.throughput[0] * r.latency[0] - 8.0) < 1e-9)
      True
    """
    conc = _loads("concurrency", concurrency)
    return _one_preset(preset, conc, policy, True, optimum, starts, options)


def open_loop(
    preset: serving.ServingPreset | str,
    rate,
    policy: Policy | None = None,
    *,
    optimum: bool = False,
    starts: int | None = None,
    **options,
) -> ClosedLoop:
    """Open-loop solve (arrival rate ``λ (N,)`` req/s) of one preset for one policy (starts as
    :func:`closed_loop`)."""
    lam = _loads("rate", rate)
    return _one_preset(preset, lam, policy, False, optimum, starts, options)


def _loads(name, v) -> np.ndarray:
    try:
        a = np.atleast_1d(np.asarray(v, np.float64))
    except (TypeError, ValueError):
        raise InputError(f"{name} = {v!r}: must be numbers") from None
    if a.ndim != 1 or a.size == 0:
        raise InputError(f"{name}: must be a non-empty list of numbers")
    bad = ~(np.isfinite(a) & (a > 0))
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(f"{name}[{i}] = {float(a[i])!r}: must be finite and > 0")
    return a


def _one_preset(preset, loads, policy, closed, optimum, starts, options):
    from poa_jax.policies import dynamo

    p = serving.preset(preset) if isinstance(preset, str) else serving.check_preset(preset)
    md = model_arrays(p)
    wl = workload(p)
    pol = dynamo() if policy is None else policy
    if not isinstance(pol, Policy):
        raise InputError(f"policy: expected a pj.policies.Policy, got {type(pol).__name__}")
    if starts is None:
        starts = OPT_STARTS if optimum else 1
    n = loads.shape[0]
    b = lambda tree: jax.tree_util.tree_map(lambda a: np.broadcast_to(a, (n,) + np.shape(a)), tree)
    res = solve(b(md), b(wl), pol, loads, closed=closed, optimum=optimum, starts=starts, **options)
    return pick(res, "best" if optimum else "worst")[0]
