r"""The routing game on the fused Pallas kernel (:mod:`poa_jax.kernels.pallas_vi`).

Drop-in replacements for :func:`poa_jax.batching.equilibria` and :func:`poa_jax.batching.optima`
(same flattened inputs, same output dicts) that run the scaled projection dynamics of
:mod:`poa_jax.solvers` inside one GPU kernel per block of instances, the state on chip for all
iterations. :func:`use_fused` says when they apply; elsewhere the pure-JAX path is the solver and
the reference.

The cost fields are the game's formulas (DESIGN §2.2, :mod:`poa_jax.game`,
:mod:`poa_jax.policies`) written for lane vectors (one entry per instance, batch last), one worker
(column of the flow) at a time: a worker's costs depend only on its own column, so the kernel
evaluates them in a loop over the workers (its Triton IR is one column's worth, not ``K``):

* equilibrium of a policy (``τ = 0``): cost ``r = w_true·c + w_prefill·P + w_decode·D`` with the
  cache term, metric :func:`poa_jax.policies.perceived_slope`, gap
  ``(Σ x·r − Σ_j d_j min_k r) / Σ x·r``;
* optimum: cost ``∇SC`` (:func:`poa_jax.game.social_cost_gradient`), metric
  :func:`poa_jax.game.social_cost_curvature`, gap ``(Σ x·∇SC − Σ_j d_j min_k ∇SC) / SC(x)``
  (:func:`poa_jax.solvers.marginal_gap`).

The iteration is the pure-JAX one *without* its active-set Newton endgame, which the pure-JAX
solvers only try below a gap of 1e-7 (equilibria) and 1e-12 (optima): at the float32 tolerance
1e-5 both paths run the same iteration, and for tighter tolerances the fused path converges
linearly where the pure-JAX one finishes with Newton. ``τ > 0`` (logit fixed point), the other
methods and optax descent before the polish stay on the pure-JAX path.

Static specialisations (:func:`kernel_variant`, decided on the host for each call; each is its
own compiled kernel): where every latency power ``p`` is one of ``1, …, 8`` the power
``x^(p−1)`` is taken by squaring instead of ``powf``, and where every worker of every lane is
present the kernel reads no mask. On the benchmark family (5 × 6, cache on) they take the SASS
instructions of one iteration from 7 088 to 5 347 (equilibrium, memory layout) and from 7 858
to 6 282 (optimum), with the projection's multiply-add sums, and the kernel's 64-bit offsets
(:func:`poa_jax.kernels.pallas_vi.wide_offsets`) to 4 342 and 5 178
(``benchmarks/kernel_resources.py``).

Slow lanes: a program's loop runs until the slowest lane of its block stops, and iteration
counts are heavy-tailed (float32 cache-on 5×6 at tol 1e-5: median 84, mean 151, 1.7% at the
1 000 bound; 12% of the lanes take ≥ 300 and 45% of the lane-iterations). The driver
therefore runs the kernel in rounds of :data:`ROUNDS` iterations and compacts the unfinished lanes
between rounds (the state is resumable, so results do not depend on the rounds).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from poa_jax import game as _game
from poa_jax import solvers as _solvers
from poa_jax.game import RoutingGame
from poa_jax.kernels import loop
from poa_jax.kernels import pallas_vi as pv
from poa_jax.policies import Policy

__all__ = [
    "ROUNDS",
    "fused_equilibria",
    "fused_optima",
    "use_fused",
    "flops_per_iteration",
    "slot_occupancy",
    "FusedUnavailable",
]

FusedUnavailable = pv.FusedUnavailable

#: Iteration budgets of the successive rounds (the last repeats until ``max_iters``); between
#: rounds the unfinished lanes are compacted. The first round covers the median lane.
ROUNDS = (160, 160, 320)
#: Lanes per kernel call (a few sizes compile: CHUNK, CHUNK/8, …); the GPU wants wide calls.
CHUNK = {"gpu": 1 << 18, "cpu": 1 << 10, "interpret": 1 << 10}
#: Lanes per program and Triton warps (one instance per thread).
BLOCK, NUM_WARPS = 128, 4
#: Where a program keeps the instances' grids during the loop: ``"registers"`` or ``"memory"``
#: (:func:`poa_jax.kernels.pallas_vi.projection_kernel`'s ``state``). ``"memory"``: on sm_90 it
#: issues 34% (equilibrium) and 29% (optimum) fewer instructions per iteration than the
#: register layout, spills nothing (the register layout spills ~0.9 KB per thread) and fits
#: 16–20 warps per SM against 8 (``benchmarks/kernel_resources.py``, 2026-11-29). The one GPU
#: timing of the two (H200, 2026-11-27) was level, within a driver that recompiled every round.
STATE = "memory"
#: Largest J·K the kernel is built for (its state lives in registers: 5 (J, K) arrays).
MAX_ENTRIES = 64

_LAT = ("a", "b", "c", "p", "d", "kappa", "rho_max")
_PRE = ("a", "b", "c")


def use_fused(
    game: RoutingGame | None = None,
    policy: Policy | None = None,
    *,
    dtype=np.float32,
    method: str = "projection",
    num_classes: int | None = None,
    num_workers: int | None = None,
    descent_steps: int = 0,
) -> bool:
    """True where the fused kernel applies: a GPU, float32, projection method, ``τ = 0``,
    ``J·K ≤`` :data:`MAX_ENTRIES`, no descent before the optimum polish.

    ``game``/``policy`` are the flattened (prepared) batch; ``policy=None`` is the optimum.
    """
    if jax.default_backend() != "gpu" or np.dtype(dtype) != np.float32:
        return False
    if method not in ("projection", "auto") or descent_steps:
        return False
    if game is not None:
        num_classes = np.shape(game.demand)[-1]
        num_workers = np.shape(game.worker_mask)[-1]
    if num_classes is not None and num_workers is not None:
        if num_classes * num_workers > MAX_ENTRIES:
            return False
    if policy is not None and np.any(np.asarray(policy.tau) > 0):
        return False
    return True


# --------------------------------------------------------------------------- lane-form model


#: Largest latency power ``p`` for which the kernel takes ``x^(p−1)`` by multiplication.
SMALL_POWER = 8


def small_integer_powers(p) -> bool:
    """True where every latency power ``p`` of a batch is one of ``1, …,`` :data:`SMALL_POWER`
    (BPR's 4, M/M/1-like fits): the kernel is then built with ``x^(p−1)`` by squaring
    (:func:`_small_power`) instead of ``powf``, ~9% of an iteration's instructions on sm_90.
    Decided on the host, per call: a batch with any other power compiles the ``powf`` kernel."""
    p = jnp.asarray(p)  # reduced where it lives (a GPU batch's powers stay there)
    return bool(jnp.all((p == jnp.round(p)) & (p >= 1) & (p <= SMALL_POWER)))


def _small_power(x, q):
    """``x**q`` for ``q`` in ``{0, …, 7}`` by squaring: 3 multiplies and 3 selects (``powf``
    from libdevice is ~90 instructions with its special cases). Same special values as ``pow``
    for ``x ≥ 0``: ``x⁰ = 1`` (also for 0, ∞ and NaN), ``0^q = 0``, ``∞^q = ∞``; within an ulp
    or two of it elsewhere."""
    b2 = q >= 4.0
    q = q - jnp.where(b2, 4.0, 0.0)
    b1 = q >= 2.0
    b0 = q - jnp.where(b1, 2.0, 0.0) >= 1.0
    x2 = x * x
    r = jnp.where(b0, x, jnp.ones_like(x))
    r = jnp.where(b1, r * x2, r)
    return jnp.where(b2, r * (x2 * x2), r)


def _latency(f, w, second: bool = False, small_power: bool = False):
    """``ℓ(w)``, ``ℓ'(w)`` (and ``ℓ''(w)``) of one worker, fields and ``w`` lane vectors.

    The formulas of :mod:`poa_jax.latency` with one power shared by value and slopes; with
    ``small_power`` (every ``p`` in ``1, …,`` :data:`SMALL_POWER`, checked by the caller) the
    power is taken by :func:`_small_power`.
    """
    a, b, c, p, d, kappa, rho = (f[n] for n in _LAT)
    finite = ~jnp.isinf(kappa)
    xbar = jnp.where(finite, rho * kappa, jnp.inf)
    x = jnp.maximum(w, 0.0)
    xc = jnp.minimum(x, xbar)
    over = jnp.where(finite, x - xc, 0.0)
    k = jnp.where(finite, kappa, 1.0)
    dd = jnp.where(finite, d, 0.0)
    xs = jnp.where(finite, xc, 0.0)
    gap = k - xs
    xp1 = _small_power(xc, p - 1.0) if small_power else jnp.power(xc, p - 1.0)
    sing = dd * k / (gap * gap)
    der = b + c * p * xp1 + sing
    val = a + b * xc + c * xc * xp1 + dd * xs / gap + der * over
    if not second:
        return val, der
    pos = xc > 0
    poly = jnp.where(pos & (p > 1), c * p * (p - 1.0) * xp1 / jnp.where(pos, xc, 1.0), 0.0)
    sec = jnp.where(over > 0, 0.0, poly + 2.0 * sing / gap)
    return val, der, sec


def _column(xk, w, g, reciprocal: bool = False):
    """Hit fractions and loads of worker ``k`` from its column ``x_k`` (``J`` lane vectors):
    ``(e, q, h, n, X, W)``, with ``q, h, n`` lists over the classes (with ``reciprocal``, ``q``
    holds ``1/q``, and ``h`` is taken with it: one division per class for the optimum's three
    uses)."""
    J = len(xk)
    X = pv.lane_sum(xk)
    e = w["residency"] * (1.0 + X / w["cache_size"])
    q = [xk[j] + e for j in range(J)]
    if reciprocal:
        q = [1.0 / v for v in q]
        h = [g["shareable"][j] * xk[j] * q[j] for j in range(J)]
    else:
        h = [g["shareable"][j] * xk[j] / q[j] for j in range(J)]
    n = [g["tokens"][j] * (1.0 - h[j]) for j in range(J)]
    W = pv.lane_sum([xk[j] * n[j] for j in range(J)])
    return e, q, h, n, X, W


def _latency_of(w):
    return {f: w["lat_" + f] for f in _LAT}


def _prefill(w, n):
    return w["pre_a"] + w["pre_b"] * n + w["pre_c"] * n * n


def _equilibrium_field(xk, w, g, small_power: bool = False) -> pv.Field:
    """Perceived cost and slope of the policy on worker ``k``
    (:func:`poa_jax.policies.perceived_cost`); ``xk`` the column, ``w`` the worker's fields."""
    J = len(xk)
    _, _, h, n, _, W = _column(xk, w, g)
    D = pv.lane_sum([xk[j] * g["tokens"][j] for j in range(J)])
    wt, wp, wd, credit = (g[f] for f in ("w_true", "w_prefill", "w_decode", "credit"))
    lat, dlat = _latency(_latency_of(w), W, small_power=small_power)
    cost, scale = [], []
    for j in range(J):
        tok = g["tokens"][j]
        c = lat + _prefill(w, n[j])
        pre = W + tok * jnp.maximum(1.0 - credit * h[j], 0.0)
        dec = D + tok
        cost.append(wt * c + wp * pre + wd * dec)
        scale.append(wt * dlat * n[j] + wp * n[j] + wd * tok)
    return pv.Field(cost, scale)


def _optimum_field(xk, w, g, small_power: bool = False, full_mask: bool = False) -> pv.Field:
    """``∇SC``, the diagonal curvature and worker ``k``'s term of ``SC``
    (:func:`poa_jax.game.social_cost_gradient`); ``xk`` the column, ``w`` the worker's fields."""
    J = len(xk)
    e, r, _, n, X, W = _column(xk, w, g, reciprocal=True)
    lat, dlat, d2lat = _latency(_latency_of(w), W, second=True, small_power=small_power)
    m = None if full_mask else w["worker_mask"] > 0.5  # full_mask: every worker present
    on = (lambda v: v) if m is None else (lambda v: jnp.where(m, v, 0.0))  # noqa: E731
    slope_e = w["residency"] / w["cache_size"]
    tok = g["tokens"]
    a_own, u, ds, s = [], [], [], []
    for j in range(J):
        eta, r2 = g["shareable"][j], r[j] * r[j]
        a_own.append(eta * e * r2)
        u.append(eta * xk[j] * r2)
        ds.append(w["pre_b"] + 2.0 * w["pre_c"] * n[j])
        s.append(_prefill(w, n[j]))
    cross_w = slope_e * pv.lane_sum([xk[i] * tok[i] * u[i] for i in range(J)])
    cross_s = slope_e * pv.lane_sum([xk[i] * ds[i] * tok[i] * u[i] for i in range(J)])
    cost, scale, sc = [], [], []
    for j in range(J):
        dw = n[j] - xk[j] * tok[j] * a_own[j] + cross_w
        grad = lat + X * dlat * dw + s[j] - xk[j] * ds[j] * tok[j] * a_own[j] + cross_s
        cost.append(on(grad))
        scale.append(2.0 * dlat * n[j] + X * d2lat * n[j] * n[j])
        sc.append(on(xk[j] * (lat + s[j])))
    return pv.Field(cost, scale, pv.lane_sum(sc))


#: Arithmetic of the fields at one point, per instance (counted from the code above; the
#: power and the divisions count one each). Equilibrium: per worker 12 (X, e) + 14 (latency);
#: per entry 6 (q, h, n) + 2 (W) + 2 (D) + 5 (prefill, c) + 5 (P) + 1 (D + L) + 5 (r) + 5
#: (slope). Optimum: per worker 12 + 20 (latency with ℓ'') + 4 (e slope, crosses) ; per entry
#: 6 + 2 + 6 (A, u) + 3 (s') + 4 (s) + 8 (crosses) + 13 (∇SC, mask) + 7 (curvature) + 4 (SC).
FIELD_FLOPS = {
    "equilibrium": lambda J, K: K * 26 + J * K * 31,
    "optimum": lambda J, K: K * 36 + J * K * 53,
}


def flops_per_iteration(kind: str, num_classes: int = 5, num_workers: int = 6) -> int:
    """Arithmetic per instance-iteration of the fused kernel (``kind``: equilibrium/optimum)."""
    field = FIELD_FLOPS[kind](num_classes, num_workers)
    return pv.flops_per_iteration(num_classes, num_workers, field, _momentum(kind) > 0)


# --------------------------------------------------------------------------- packing


def _params(game: RoutingGame, policy: Policy | None, n: int, dtype) -> tuple[dict, dict]:
    """The game's fields batch-last: per-worker ``(K, N)`` arrays, and the shared ``(J, N)`` /
    ``(N,)`` ones (the kernel's ``workers`` and ``shared``)."""
    t = lambda a: jnp.asarray(a, dtype).T
    w = dict(
        residency=t(game.residency), cache_size=t(game.cache_size),
        worker_mask=t(game.worker_mask),
    )  # fmt: skip
    for f in _LAT:
        w["lat_" + f] = t(getattr(game.latency, f))
    for f in _PRE:
        w["pre_" + f] = t(getattr(game.prefill, f))
    p = dict(tokens=t(game.tokens), shareable=t(game.shareable))
    if policy is not None:
        for f in ("w_true", "w_prefill", "w_decode", "credit"):
            p[f] = jnp.broadcast_to(jnp.asarray(getattr(policy, f), dtype), (n,))
    return w, p


@functools.cache
def _kernel(kind: str, tol: float, max_iters: int, interpret: bool, block: int, num_warps,
            state: str = "registers", momentum: float = 0.0,
            small_power: bool = False, full_mask: bool = False):  # fmt: skip
    field = _equilibrium_field if kind == "equilibrium" else _optimum_field
    field = functools.partial(field, small_power=small_power)
    if kind != "equilibrium":  # the optimum's field masks ∇SC and SC by the worker mask itself
        field = functools.partial(field, full_mask=full_mask)
    return pv.projection_kernel(
        field, tol=tol, max_iters=max_iters, block=block, interpret=interpret,
        num_warps=None if interpret else num_warps, num_stages=None if interpret else 1,
        state=state, momentum=momentum, full_mask=full_mask,
    )  # fmt: skip


def kernel_variant(params, mask) -> dict:
    """The static specialisations of the kernel that a call's inputs allow, decided on the
    host: ``small_power`` (:func:`small_integer_powers`) and ``full_mask`` (every worker of
    every lane present: no mask is read, ~7% fewer instructions per iteration)."""
    return dict(small_power=small_integer_powers(params[0]["lat_p"]),
                full_mask=bool(jnp.all(mask)))  # fmt: skip


def _momentum(kind: str) -> float:
    """The pure-JAX solver's heavy-ball coefficient for ``kind`` (the fused kernel runs the same
    iteration; :data:`poa_jax.solvers.EQ_MOMENTUM`)."""
    return float(_solvers.EQ_MOMENTUM if kind == "equilibrium" else _solvers.OPT_MOMENTUM)


def _sizes(block: int, chunk: int) -> list[int]:
    """Call sizes, largest first: ``chunk, chunk/8, chunk/64, …`` down to the block."""
    sizes, size = [], max(chunk, block)
    while size >= block:
        sizes.append(size)
        size //= 8
    return sizes


def _plan(m: int, sizes: list[int]) -> list[tuple[int, int]]:
    """``(start, size)`` of the calls that advance ``m`` lanes, ``sizes`` descending: the
    largest size that the rest fills, and the smallest one, padded, for a rest below it. Pad
    slots are thus fewer than the smallest size (one large padded call for any rest would
    leave up to ``chunk − 1`` of them: 62% of the slots of a 10⁵-lane round at chunk 2¹⁸)."""
    out, lo = [], 0
    while lo < m:
        size = next((z for z in sizes if z <= m - lo), sizes[-1])
        out.append((lo, size))
        lo += size
    return out


def slot_occupancy(iterations, rounds=ROUNDS, block: int = BLOCK) -> float:
    """Share of the kernel's lane-iteration slots that do work, for lanes that need
    ``iterations`` (in lane order), under the driver's schedule (:func:`_run`).

    Each round the unfinished lanes, in order, are cut into programs of ``block`` lanes; a
    program runs until its slowest lane has used the round's budget or stopped, and the lanes
    that stopped earlier idle, masked, until then. Short rounds waste fewer slots and cost
    more launches and compactions.
    """
    rem = np.asarray(iterations, np.int64).ravel()
    busy = int(rem.sum())
    rem = rem[rem > 0]
    slots, r = 0, 0
    while rem.size:
        budget = rounds[min(r, len(rounds) - 1)]
        r += 1
        used = np.minimum(np.concatenate([rem, np.zeros(-rem.size % block, np.int64)]), budget)
        slots += int(used.reshape(-1, block).max(axis=1).sum()) * block
        rem = rem - np.minimum(rem, budget)
        rem = rem[rem > 0]
    return busy / slots if slots else 1.0


def _run(kind, params, demand, mask, x0, *, tol, max_iters, interpret, rounds, block, num_warps,
         chunk=None, state=None):  # fmt: skip
    """Runs the kernel in rounds, compacting unfinished lanes in between; ``x0 (J, K, N)``,
    ``params = (workers, shared)`` (:func:`_params`).

    Every call has one of a few sizes (:func:`_sizes`), so that a handful of programs ever
    compile; the lanes of a round are cut into calls of those sizes (:func:`_plan`), the last
    padded with copies of a lane whose result is dropped.
    """
    rounds = tuple(int(r) for r in rounds) or (int(max_iters),)
    if min(rounds) < 1:  # a round of 0 iterations makes no progress: the loop never ended
        raise ValueError(f"rounds = {rounds!r}: every round budget must be >= 1 iteration")
    kern = _kernel(kind, float(tol), int(max_iters), bool(interpret), int(block), num_warps,
                   state or STATE, _momentum(kind), **kernel_variant(params, mask))  # fmt: skip
    if chunk is None:
        chunk = CHUNK.get("interpret" if interpret else jax.default_backend(), CHUNK["gpu"])
    sizes = _sizes(block, chunk)
    state = pv.start_state(x0, demand, mask)
    args = (*params, demand, mask)
    n = x0.shape[-1]
    todo = np.arange(n)
    try:
        r = 0
        while todo.size:
            budget = rounds[min(r, len(rounds) - 1)]
            r += 1
            for lo, size in _plan(todo.size, sizes):
                part = todo[lo : lo + size]
                pad = size - part.size
                # Fixed shapes (one of `sizes`) everywhere, so that nothing recompiles when the
                # number of unfinished lanes changes: the call's pad slots compute a copy of a
                # real lane, and their results go to index n (past the end), which is dropped.
                idx = np.concatenate([part, np.full(pad, part[0], part.dtype)])
                dest = np.concatenate([part, np.full(pad, n, part.dtype)])
                sub = kern.advance(*_take_lanes(args, idx), _take_lanes(state, idx), budget)
                state = _put_lanes(state, dest, sub)
            todo = np.flatnonzero(np.asarray(_pending(state, tol, max_iters)))
        return state
    except pv.FusedUnavailable:
        raise
    except Exception as e:  # lowering/compilation failures surface here; the caller falls back
        if interpret:
            raise
        raise pv.FusedUnavailable(f"fused {kind} kernel failed to build or run: {e}") from e


@functools.partial(jax.jit, static_argnames=("tol", "max_iters"))
def _pending(state, tol, max_iters):
    return loop.pending(state.best_gap, state.steps, tol, max_iters)


@jax.jit
def _take_lanes(tree, idx):
    return jax.tree_util.tree_map(lambda a: a[..., idx], tree)


@jax.jit
def _put_lanes(tree, idx, sub):
    """Lanes ``idx`` of ``tree`` set from ``sub``; an index past the end is dropped."""
    return jax.tree_util.tree_map(lambda a, b: a.at[..., idx].set(b, mode="drop"), tree, sub)


def _lanes(game, policy, x0):
    """One lane per (instance, start), as :func:`poa_jax.batching._lanes`; ``x0 (N, S, J, K)``."""
    n, s = x0.shape[:2]
    idx = np.repeat(np.arange(n), s)
    tree = (game, policy)
    if s > 1:
        tree = jax.tree_util.tree_map(lambda a: jnp.asarray(a)[idx] if jnp.ndim(a) else a, tree)
    return tree, jnp.reshape(jnp.asarray(x0), (n * s,) + x0.shape[2:])


def _inputs(game, policy, x):
    dtype = x.dtype
    n, J, K = x.shape
    mask = jnp.broadcast_to(jnp.asarray(game.worker_mask)[:, None, :], (n, J, K))
    return (
        _params(game, policy, n, dtype),  # (workers, shared)
        jnp.asarray(game.demand, dtype).T,
        jnp.transpose(mask, (1, 2, 0)),
        jnp.transpose(x, (1, 2, 0)),
    )


_DEFAULTS = dict(rounds=ROUNDS, block=BLOCK, num_warps=NUM_WARPS, chunk=None, state=None)


def fused_equilibria(
    game: RoutingGame, policy: Policy, x0, *, tol: float, max_iters: int,
    interpret: bool = False, method: str = "projection", **kernel_options,
) -> dict:  # fmt: skip
    """Equilibria for ``x0 (N, S, J, K)`` on the fused kernel; as :func:`batching.equilibria`.

    Args:
      game, policy: prepared (flattened) batch, fields ``(N, J)`` / ``(N, K)`` / ``(N,)``;
        ``policy.tau`` must be 0.
      x0: starts ``(N, S, J, K)``, each its own lane.
      tol, max_iters: relative-gap tolerance and iteration bound.
      interpret: Pallas interpret mode (CPU tests); otherwise compiled (GPU).
      method: must be ``projection`` (the kernel's iteration).
      kernel_options: ``rounds``, ``block``, ``num_warps``, ``chunk``, ``state`` (defaults
        :data:`ROUNDS`, :data:`BLOCK`, :data:`NUM_WARPS`, :data:`CHUNK`, :data:`STATE`).

    Returns:
      ``dict(flows (N, S, J, K), social_cost, gap, iterations, status, overloaded (N, S))``.

    Raises:
      FusedUnavailable: the kernel cannot be compiled here (catch it and use the pure-JAX path).
      ValueError: ``τ > 0`` or another method.
    """
    if method not in ("projection", "auto"):
        raise ValueError(f"fused equilibria run the projection method, not {method!r}")
    if np.any(np.asarray(policy.tau) > 0):
        raise ValueError("fused equilibria need τ = 0 (the logit fixed point is pure-JAX only)")
    opts = {**_DEFAULTS, **kernel_options}
    n, s = np.shape(x0)[:2]
    (g, p), x = _lanes(game, policy, x0)
    params, demand, mask, xt = _inputs(g, p, x)
    st = _run("equilibrium", params, demand, mask, xt, tol=tol, max_iters=max_iters,
              interpret=interpret, **opts)  # fmt: skip
    out = _eq_finish(g, p, st, tol=tol)
    return {k: jnp.reshape(v, (n, s) + v.shape[1:]) for k, v in out.items()}


@functools.partial(jax.jit, static_argnames=("tol",))
def _eq_finish(g, p, st: pv.FusedState, *, tol):
    x = jnp.transpose(st.best_x, (2, 0, 1))
    snap = functools.partial(_solvers.snap_support, tol=tol)
    x, gap = jax.vmap(snap)(g, p, x, st.best_gap)
    return dict(
        flows=x,
        social_cost=jax.vmap(_game.social_cost)(g, x),
        gap=gap,
        iterations=st.steps,
        status=loop.status_of(gap, tol),
        overloaded=jax.vmap(_solvers.overloaded)(g, x),
    )


def fused_optima(
    game: RoutingGame, x0, *, tol: float, max_iters: int, descent_steps: int = 0,
    lr: float = 0.05, interpret: bool = False, **kernel_options,
) -> dict:  # fmt: skip
    """Social optima for ``x0 (N, S, J, K)``: best of S starts; as :func:`batching.optima`.

    Every start is polished by the fused kernel; the best candidate among the polished points
    and the raw starts is chosen exactly as :func:`poa_jax.solvers.optimum_finish` does.

    Args:
      game: prepared batch, fields ``(N, ...)``.
      x0: starts ``(N, S, J, K)``.
      tol, max_iters: gap tolerance and iteration bound.
      descent_steps: must be 0 (optax descent is pure-JAX only); ``lr`` is accepted and unused.
      interpret, kernel_options: as :func:`fused_equilibria`.

    Returns:
      ``dict(flows (N, J, K), social_cost, gap, iterations, status, overloaded (N,))``.
    """
    del lr
    if descent_steps:
        raise ValueError("fused optima take descent_steps = 0 (optax descent is pure-JAX)")
    opts = {**_DEFAULTS, **kernel_options}
    x0 = jnp.asarray(x0)
    n, s = x0.shape[:2]
    (g, _), x = _lanes(game, None, x0)
    params, demand, mask, xt = _inputs(g, None, x)
    st = _run("optimum", params, demand, mask, xt, tol=tol, max_iters=max_iters,
              interpret=interpret, **opts)  # fmt: skip
    return _opt_finish(game, st, x0, tol=tol)


@functools.partial(jax.jit, static_argnames=("tol",))
def _opt_finish(game, st: pv.FusedState, x0s, *, tol):
    n, s = x0s.shape[:2]
    polished = jnp.reshape(jnp.transpose(st.best_x, (2, 0, 1)), x0s.shape)
    gap = jnp.reshape(st.best_gap, (n, s))
    steps = jnp.reshape(st.steps, (n, s))
    return jax.vmap(functools.partial(_select, tol=tol))(game, polished, gap, steps, x0s)


def _select(g, polished, gap, steps, x0s, *, tol):
    """:func:`poa_jax.solvers.optimum_finish` on one instance, from the kernel's polished points."""
    return _solvers.best_candidate(g, polished, gap, steps, x0s, tol=tol)
