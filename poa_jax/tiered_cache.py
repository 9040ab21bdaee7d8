r"""Γ_KV, fluid form — KV-block placement over a tier hierarchy, selfish and coordinated.

Workers ``w = 1..W`` on a topology with distance ``D (W, W)``; private tiers ``t = 1..T``
(G1 HBM, G2 host DRAM, G3 local SSD, G4 networked storage) with capacity ``C[w, t] ≥ 0`` (in
block-size units) and credit ``v_t ∈ [0, 1]`` (Dynamo's KV-router credits: G1 1.0, G2 0.75,
G3 0.25; the G4 default is the shared credit 0.5); prefix blocks ``b = 1..B`` of size
``s_b > 0``, requested by worker ``w`` at rate ``r[w, b] ≥ 0``, each miss costing ``m[w, b] ≥ 0``
(the prefill time of the block's tokens). A placement is ``y[w, t, b] ∈ [0, 1]``, the fraction of
block ``b`` that ``w`` keeps in tier ``t``, feasible when

    Σ_t y[w, t, b] ≤ 1   (a block's pages are in one place),    Σ_b s_b·y[w, t, b] ≤ C[w, t].

Own credit and peer credit (fetching a peer's copy at the distance between them, valued at the
shared credit ``σ = peer_credit``, default 0.5, discounted by ``exp(−D)``):

    own[w, b]  = Σ_t v_t·y[w, t, b],         h[u, b] = Σ_t y[u, t, b],
    peer[w, b] = 1 − Π_{u ≠ w} (1 − σ·e^{−D[w, u]}·h[u, b]).

Credits may differ per worker, ``v[w, t]`` (below ``v_t`` stands for ``v[w, t]``).

**Costs in time** (``access_latency`` given). With ``ℓ[w, t]`` the cost of reading a unit of
block size from ``w``'s tier ``t``, ``D[w, u]`` the cost of moving a unit from ``u`` to ``w``,
and a miss cost in proportion to the block, ``m[w, b] = κ_w·s_b`` (recompute per unit of size),
every value is the share of a miss's cost that a fetch saves:

    v[w, t] = max(0, 1 − ℓ[w, t]/κ_w),        reach[w, u] = max(0, 1 − D[w, u]/κ_w)

(replacing ``σ·e^{−D}``): a hit in tier ``t`` then costs ``r·m·(1 − v) = r·ℓ·s_b``, the read
instead of the recompute, a peer's copy alone costs ``r·D·s_b``, and a tier or a peer slower than
recomputing is never used for the worker's own requests.

A request pays the recompute cost on the part neither its own tiers nor its peers cover,
discounted independently (the fluid model of "own tier first, then a peer, then recompute"):

    C_w(y) = Σ_b r[w, b]·m[w, b]·(1 − own[w, b])·(1 − peer[w, b]),        SC(y) = Σ_w C_w(y).

A block cached anywhere lowers what the others pay (``peer`` rises in ``h``): the positive
externality; a worker free-rides on blocks its neighbours hold.

**Shared pool** (``shared_capacity`` given): a pool ``P`` of capacity ``C_P`` (G4 networked
storage) holding ``z[b] ∈ [0, 1]`` of each block, ``Σ_b s_b·z[b] ≤ C_P``, read by every worker
at value ``σ_P`` (``shared_credit``, default 0.5; with costs in time ``max(0, 1 − ℓ_P[w]/κ_w)``):
one more factor ``(1 − σ_P·z[b])`` in every worker's ``1 − peer``. Nobody owns the pool: it is
filled by a cooperative player, the cluster's KV manager, that best-responds to the *social*
cost. SC is linear in ``z``, with slope ``−β_P[b]``,

    β_P[b] = Σ_w r·m[w, b]·(1 − own[w, b])·σ_P·Π_{u ≠ w}(1 − reach[w, u]·h[u, b]),

so its best response is the knapsack by ``β_P/s`` (exact). At an equilibrium every worker
best-responds selfishly and the pool socially; PoA then measures the workers' selfishness
alongside a benevolent pool. (The kernels carry the pool as one more worker with no requests,
one tier and ``reach[w, P] = σ_P``.)

**Solvers** (equations in :mod:`poa_jax.tiered_kernels`): a worker's best response is a
fractional knapsack (blocks by density into tiers by credit); equilibria by sequential best
response from ``starts`` placements to a relative best-response gap; the optimum by projected
gradient descent (optax's cosine schedule) started from every equilibrium found and a uniform
fill, keeping the best point seen, then polished by block-coordinate descent (each worker's
exact coordinated best response, an LP solved by a greedy), so ``SC(opt) ≤ SC(eq)`` by
construction. The optimum is certified by an upper bound on its first-order (Frank–Wolfe) gap
(``optimum.gap``, status 0 where it is within tolerance). It is a local optimum: ``poa`` is
SC(worst equilibrium found) / SC(best placement found), a lower bound on the true PoA over the
equilibria found, and exact only where the optimum is (tests compare with scipy).

Arrays: ``distance (..., W, W)``, ``rates (..., W, B)``, ``capacity (..., W, T)``,
``credit (..., T)`` or ``access_latency (..., W, T)``, ``miss_cost (..., W, B)`` (or
``(..., 1, B)``), ``size (..., B)``; leading axes are batch axes and broadcast.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from jax.typing import ArrayLike

from poa_jax.caching import (
    _chunked,
    _compacted,
    _dtype,
    _integer,
    _seed,
    check_batch,
    check_bool,
    check_distance,
    check_tol,
    need_axis,
    read_real,
)
from poa_jax.caching import _starts as _count_starts
from poa_jax.errors import InputError
from poa_jax.kernels import loop
from poa_jax.tiered_kernels import (
    DESCENT_ROUND,
    _br_batch,
    _cert_batch,
    _costs_batch,
    _descent_round,
    _eq_batch,
    _retract_batch,
    _sweep_batch,
)
from poa_jax.validation import MAX_STARTS, check

__all__ = [
    "TieredCacheGame",
    "TieredPoAResult",
    "DYNAMO_CREDITS",
    "worker_costs",
    "social_cost",
    "best_response",
    "solve_equilibrium",
    "solve_optimum",
    "stationarity_gap",
    "price_of_anarchy",
    "capacity_paradox",
]

#: Credits of G1 HBM, G2 host DRAM, G3 local SSD, G4 networked storage (the shared credit).
DYNAMO_CREDITS = (1.0, 0.75, 0.25, 0.5)
TOL = {np.dtype(np.float64): 1e-9, np.dtype(np.float32): 1e-5}
#: The optimum's default tolerance on its relative first-order gap (stationarity certificate,
#: :func:`poa_jax.tiered_kernels._stationarity_lanes`). Certified points sit far below it
#: (float64 ~1e-8 and under, float32 ~1e-6); points still moving sit at 1e-4 … 1e-1.
OPT_TOL = {np.dtype(np.float64): 1e-6, np.dtype(np.float32): 1e-5}
LANES = 8  # instances per call: 256 -> 8 took the 256-instance optimum from 21.5 s to 17.4 s (CPU)
#: Instances per call of the optimum's descent, polish and certificate, on the kernels' minor
#: axis (see :func:`_optimum_lanes`). 2-core CPU, float32, W, T, B = 8, 4, 256, 512 instances
#: from the equilibrium, 300 steps + polish, steady, two interleaved runs: 16 → 8.5 s,
#: 32 → 7.8 / 7.2 s, 48 → 7.1 s, 64 → 9.6 / 7.5 s, 128 → 11.5 s. (The descent alone, 100
#: steps on a loaded machine, had measured 74 µs per instance and step at 64, 92 at 32.) On
#: an accelerator :data:`OPT_LANES_ACCEL` (the sixth session's H200 measurement ran at 64).
OPT_LANES = 32
OPT_LANES_ACCEL = 64


def _opt_lanes() -> int:
    import jax

    return OPT_LANES if jax.default_backend() == "cpu" else OPT_LANES_ACCEL


@dataclasses.dataclass(frozen=True)
class TieredCacheGame:
    """A (batch of) fluid tiered KV-cache game(s); see the module docstring.

    Attributes:
      distance: ``(..., W, W)`` finite, ≥ 0, zero diagonal, symmetric unless ``symmetric=False``.
      rates: ``(..., W, B)`` request rate per worker and block, finite, ≥ 0.
      capacity: ``(..., W, T)`` tier capacity in block-size units, finite, ≥ 0.
      credit: ``(..., T)`` hit credit per tier in [0, 1]; default :data:`DYNAMO_CREDITS`
        (its first ``T``).
      miss_cost: ``(..., W, B)`` recompute cost of a miss, finite, ≥ 0 (``(..., 1, B)`` or
        ``(B,)``: the same for every worker); default 1.
      size: ``(..., B)`` block size, finite, > 0; default 1.
      peer_credit: ``σ`` in [0, 1], credit of a peer's copy at distance 0; default (None) 0.5.
        Not used with ``access_latency``.
      symmetric: whether ``distance`` must be symmetric.
      access_latency: ``(..., W, T)`` (or ``(..., 1, T)``, ``(T,)``), instead of ``credit``:
        the cost of serving a request from worker ``w``'s tier ``t``, per unit of block size,
        in ``miss_cost``'s unit (finite, ≥ 0). The credits become per worker,
        ``v[w, t] = max(0, 1 − ℓ[w, t]/κ_w)`` with ``κ_w = miss_cost[w, b]/size[b]``, which
        must be the same for all of a worker's blocks (a miss costs in proportion to the
        block's tokens); a tier slower than recomputing is worth nothing. ``distance`` is then
        the transfer cost per unit of block size, in the same unit: a peer's copy saves
        ``max(0, 1 − D[w, u]/κ_w)`` of a miss.
      shared_capacity: ``(...)`` or scalar, finite, ≥ 0: a shared pool (G4 networked storage)
        of this capacity that every worker reads; filled by a cooperative player (the
        cluster's KV manager) that minimises SC given the workers' placements. None: no pool.
      shared_credit: value of the pool's copy to every worker, in [0, 1] (default 0.5, the
        shared-tier credit); not with ``access_latency``.
      shared_latency: ``(..., W)`` or scalar, with ``access_latency``: the cost of reading a
        unit of block size from the pool; the pool's copy saves ``max(0, 1 − ℓ_P[w]/κ_w)``.

    Example:
      >>> import numpy as np, poa_jax as pj
      >>> g = pj.TieredCacheGame(distance=np.zeros((2, 2)), rates=[[3.0, 1.0], [3.0, 1.0]],
      ...                        capacity=[[1.0], [1.0]])
      >>> r = pj.price_of_anarchy(g)
      >>> bool(r.poa >= 1.0), bool(r.converged)
      (True, True)
    """

    distance: ArrayLike
    rates: ArrayLike
    capacity: ArrayLike
    credit: ArrayLike | None = None
    miss_cost: ArrayLike = 1.0
    size: ArrayLike = 1.0
    peer_credit: float | None = None
    symmetric: bool = True
    access_latency: ArrayLike | None = None
    shared_capacity: ArrayLike | None = None
    shared_credit: float | None = None
    shared_latency: ArrayLike | None = None

    def __post_init__(self):
        # Shape-only checks, at construction; the values are checked before solving.
        check_bool("TieredCacheGame.symmetric", self.symmetric)
        need_axis("TieredCacheGame.distance", self.distance, "worker", ndim=2)
        need_axis("TieredCacheGame.rates", self.rates, "block", ndim=2)
        need_axis("TieredCacheGame.capacity", self.capacity, "tier", ndim=2)


@dataclasses.dataclass(frozen=True)
class _Prepared:
    reach: np.ndarray  # (N, W, W) σ·exp(−D) or max(0, 1 − D/κ), zero diagonal
    rm: np.ndarray  # (N, W, B) r·m
    capacity: np.ndarray  # (N, W, T)
    credit: np.ndarray  # (N, W, T) per worker
    size: np.ndarray  # (N, B)
    batch_shape: tuple[int, ...]
    dims: tuple[int, int, int]  # W, T, B; W counts the shared pool, the last row, if any
    dtype: np.dtype
    workers: int = 0  # the workers, without the pool
    pool: bool = False


def _field(name, value, rule):
    """``name`` is the qualified field name, e.g. ``"TieredCacheGame.rates"``."""
    a = read_real(name, value)
    check(name, a, rule)
    return a


def _prepare(game: TieredCacheGame, dtype=None, owner: str = "TieredCacheGame") -> _Prepared:
    """Checked and broadcast fields. ``owner``: the class the messages name (a
    :class:`~poa_jax.CoupledGame` checks its tier fields through a stand-in game; its
    distance, always symmetric, is checked before)."""
    if not isinstance(game, TieredCacheGame):
        raise InputError(f"game: expected a TieredCacheGame, got {type(game).__name__}")
    dt = _dtype(dtype)
    check_bool(f"{owner}.symmetric", game.symmetric)
    d = read_real(f"{owner}.distance", game.distance)
    check_distance(f"{owner}.distance", d, bool(game.symmetric), hint=owner == "TieredCacheGame")
    w = d.shape[-1]
    if w < 1:
        raise InputError(f"{owner}.distance has shape {d.shape}: needs at least one worker")
    rates = _field(f"{owner}.rates", game.rates, "finite_ge0")
    if rates.ndim < 2 or rates.shape[-2] != w:
        raise InputError(
            f"{owner}.rates has shape {rates.shape}: must be (..., W, B) with W = {w} "
            f"workers (the distance matrix is {d.shape})"
        )
    b = rates.shape[-1]
    if b < 1:
        raise InputError(f"{owner}.rates has shape {rates.shape}: needs at least one block")
    cap = _field(f"{owner}.capacity", game.capacity, "finite_ge0")
    if cap.ndim < 2 or cap.shape[-2] != w:
        raise InputError(
            f"{owner}.capacity has shape {cap.shape}: must be (..., W, T) with W = {w}"
        )
    t = cap.shape[-1]
    if t < 1:
        raise InputError(f"{owner}.capacity has shape {cap.shape}: needs at least one tier")
    latency = None
    if game.access_latency is not None:
        if game.credit is not None:
            raise InputError(
                f"{owner}: give credit or access_latency, not both (with access_latency "
                "the credits are derived from it: v[w, t] = max(0, 1 − ℓ[w, t]·s_b/m[w, b]))"
            )
        latency = _field(f"{owner}.access_latency", game.access_latency, "finite_ge0")
        if latency.ndim == 1:
            latency = latency[None, :]  # (T,): the same for every worker
        if latency.ndim < 2 or latency.shape[-1] != t or latency.shape[-2] not in (1, w):
            raise InputError(
                f"{owner}.access_latency has shape {latency.shape}: must be (..., W, T) "
                f"= (..., {w}, {t}), (..., 1, T) or (T,) for the tiers of capacity {cap.shape}"
            )
        credit = np.ones((t,))  # placeholder for the batch shape; replaced below
    elif game.credit is None:
        if t > len(DYNAMO_CREDITS):
            raise InputError(f"{owner}.credit: needed for T = {t} > 4 tiers")
        credit = np.asarray(DYNAMO_CREDITS[:t])
    else:
        credit = _field(f"{owner}.credit", game.credit, "unit")
    if credit.ndim < 1 or credit.shape[-1] != t:
        raise InputError(
            f"{owner}.credit has shape {credit.shape}: its last axis must be the {t} "
            f"tiers of capacity {cap.shape}"
        )
    miss = _field(f"{owner}.miss_cost", game.miss_cost, "finite_ge0")
    if miss.ndim == 1:
        miss = miss[None, :]  # (B,): the same for every worker
    if miss.ndim and (
        miss.shape[-1] not in (1, b) or (miss.ndim >= 2 and miss.shape[-2] not in (1, w))
    ):
        raise InputError(
            f"{owner}.miss_cost has shape {miss.shape}: must be (..., W, B) = "
            f"(..., {w}, {b}), (..., 1, B) for one value per block, (B,) or a scalar"
        )
    size = _field(f"{owner}.size", game.size, "finite_gt0")
    if size.ndim and size.shape[-1] not in (1, b):
        raise InputError(f"{owner}.size has shape {size.shape}: must end in B = {b}")
    if latency is not None and game.peer_credit is not None:
        raise InputError(
            f"{owner}.peer_credit: not used with access_latency, where a peer's copy is "
            "valued by its transfer cost (distance[w, u] per unit of block size); leave it None"
        )
    sigma = 0.5 if game.peer_credit is None else game.peer_credit
    sigma = _field(f"{owner}.peer_credit", sigma, "unit")
    if sigma.ndim:
        raise InputError(f"{owner}.peer_credit: must be a scalar")
    pool_cap, pool_lat, pool_sigma = _pool_fields(game, w, latency is not None, owner)
    batch = {
        "distance": d.shape[:-2], "rates": rates.shape[:-2], "capacity": cap.shape[:-2],
        "credit": credit.shape[:-1], "miss_cost": miss.shape[:-2] if miss.ndim >= 2 else (),
        "size": size.shape[:-1] if size.ndim else (),
        "access_latency": latency.shape[:-2] if latency is not None else (),
        "shared_capacity": pool_cap.shape if pool_cap is not None else (),
        "shared_latency": pool_lat.shape[:-1] if pool_lat is not None and pool_lat.ndim else (),
    }  # fmt: skip
    try:
        shape = np.broadcast_shapes(*batch.values())
    except ValueError:
        listed = ", ".join(f"{k} {v}" for k, v in batch.items() if v)
        raise InputError(f"{owner}: the fields' batch axes do not broadcast: {listed}") from None
    check_batch(owner, shape)
    n = int(np.prod(shape, dtype=np.int64))

    def bc(a, tail):
        return np.broadcast_to(a, shape + tail).reshape((n,) + tail).astype(dt)

    m_full = np.broadcast_to(miss, shape + (w, b))
    rm = np.broadcast_to(rates, shape + (w, b)) * m_full
    if latency is None:
        credit = np.broadcast_to(credit[..., None, :], shape + (w, t))
        reach = float(sigma) * np.exp(-d)
    else:
        kappa = _recompute_rate(m_full, np.broadcast_to(size, shape + (b,)), owner)
        credit = _saved(np.broadcast_to(latency, shape + (w, t)), kappa)
        reach = _saved(np.broadcast_to(d, shape + (w, w)), kappa)
    reach = reach * (1.0 - np.eye(w))
    real = w
    cap = np.broadcast_to(cap, shape + (w, t))
    if pool_cap is not None:
        # The pool is one more worker: no requests, one tier (credit 1) of the pool's capacity,
        # read by every worker at the pool's value; it reads nobody.
        if latency is None:
            to_pool = np.full(shape + (w,), float(pool_sigma))
        else:
            lat_p = np.broadcast_to(pool_lat if pool_lat.ndim else pool_lat[None], shape + (w,))
            to_pool = _saved(lat_p[..., None], kappa)[..., 0]
        grow = np.zeros(shape + (w + 1, w + 1))
        grow[..., :w, :w] = reach
        grow[..., :w, w] = to_pool
        reach = grow
        rm = np.concatenate([rm, np.zeros(shape + (1, b))], -2)
        row = np.zeros(shape + (1, t))
        row[..., 0, 0] = np.broadcast_to(pool_cap, shape)
        cap = np.concatenate([cap, row], -2)
        one = np.zeros(shape + (1, t))
        one[..., 0, 0] = 1.0
        credit = np.concatenate([np.broadcast_to(credit, shape + (w, t)), one], -2)
        w += 1
    return _Prepared(
        reach=bc(reach, (w, w)), rm=bc(rm, (w, b)), capacity=bc(cap, (w, t)),
        credit=bc(credit, (w, t)), size=bc(size, (b,)), batch_shape=shape, dims=(w, t, b),
        dtype=dt, workers=real, pool=pool_cap is not None,
    )  # fmt: skip


def _pool_fields(game: TieredCacheGame, w: int, time_costs: bool, owner: str = "TieredCacheGame"):
    """``(capacity, latency, credit)`` of the shared pool (None where not given), checked."""
    given = [k for k in ("shared_credit", "shared_latency") if getattr(game, k) is not None]
    if game.shared_capacity is None:
        if given:
            raise InputError(f"{owner}.{given[0]}: needs shared_capacity (the pool)")
        return None, None, None
    cap = _field(f"{owner}.shared_capacity", game.shared_capacity, "finite_ge0")
    if time_costs:
        if game.shared_credit is not None:
            raise InputError(
                f"{owner}.shared_credit: not used with access_latency; give "
                "shared_latency, the pool's read cost per unit of block size"
            )
        if game.shared_latency is None:
            raise InputError(
                f"{owner}.shared_latency: needed with access_latency and a shared pool"
            )
        lat = _field(f"{owner}.shared_latency", game.shared_latency, "finite_ge0")
        if lat.ndim and lat.shape[-1] not in (1, w):
            raise InputError(
                f"{owner}.shared_latency has shape {lat.shape}: must be (..., W) with "
                f"W = {w}, or a scalar"
            )
        return cap, lat, None
    if game.shared_latency is not None:
        raise InputError(
            f"{owner}.shared_latency: only with access_latency (costs in time); give shared_credit"
        )
    sigma = 0.5 if game.shared_credit is None else game.shared_credit
    sigma = _field(f"{owner}.shared_credit", sigma, "unit")
    if sigma.ndim:
        raise InputError(f"{owner}.shared_credit: must be a scalar")
    return cap, None, sigma


def _recompute_rate(miss, size, owner: str = "TieredCacheGame"):
    """``κ_w = m[w, b]/s_b``, ``(..., W, 1)``: worker ``w``'s recompute cost per unit of block
    size, which must not depend on the block (a miss costs in proportion to the block's
    tokens); blocks whose miss costs nothing are left out (nothing to save: never cached)."""
    kappa = miss / size[..., None, :]  # (..., W, B)
    pos = miss > 0
    lo = np.where(pos, kappa, np.inf).min(-1)
    hi = np.where(pos, kappa, 0.0).max(-1)
    lo = np.where(pos.any(-1), lo, 0.0)
    bad = ~(hi <= lo * (1.0 + 1e-9))
    if np.any(bad):
        i = np.argwhere(bad)[0]
        raise InputError(
            f"{owner}.miss_cost: with access_latency, a miss must cost in proportion to "
            "the block size (miss_cost[w, b] = κ_w·size[b] where it is > 0), so that a hit in "
            f"tier t costs ℓ[w, t]·size[b]; worker {int(i[-1])} has miss_cost/size from "
            f"{float(lo[tuple(i)]):g} to {float(hi[tuple(i)]):g} over its blocks"
        )
    return hi[..., None]


def _saved(cost, kappa):
    """``max(0, 1 − cost/κ_w)``: the share of a miss's cost saved by paying ``cost`` per unit of
    block size instead (a tier's access latency, a peer's transfer cost); 0 where ``κ = 0``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(kappa > 0, 1.0 - cost / np.where(kappa > 0, kappa, 1.0), 0.0)
    return np.clip(v, 0.0, 1.0)


def _pack(p: _Prepared):
    return (p.reach, p.rm, p.capacity, p.credit, p.size)


# --------------------------------------------------------------------------- public


def _placement(p: _Prepared, y, name="y", shared=None) -> np.ndarray:
    """``(N, W, T, B)`` placements in the kernels' form from ``y (..., W, T, B)`` and, with a
    shared pool, the pool's holding ``shared (..., B)`` (default empty; a ``y`` with one row
    more than the workers already holds the pool as its last row); finite numbers."""
    w, t, b = p.dims
    a = read_real(name, y)
    check(name, a, "finite")
    if p.pool and a.ndim >= 3 and a.shape[-3] == p.workers:
        z = np.zeros(b) if shared is None else read_real("shared", shared)
        check("shared", z, "finite")
        try:
            z = np.broadcast_to(z, p.batch_shape + (b,))
        except ValueError:
            raise InputError(f"shared has shape {z.shape}: must be (..., {b})") from None
        row = np.zeros(p.batch_shape + (1, t, b))
        row[..., 0, 0, :] = z
        a = np.concatenate([np.broadcast_to(a, p.batch_shape + a.shape[-3:]), row], -3)
    elif shared is not None:
        raise InputError("shared: the game has no shared pool (shared_capacity)")
    try:
        return np.broadcast_to(a, p.batch_shape + (w, t, b)).reshape(-1, w, t, b).astype(p.dtype)
    except ValueError:
        raise InputError(
            f"{name} has shape {a.shape}: must be (..., {p.workers}, {t}, {b})"
        ) from None


def _check_feasible(p: _Prepared, y: np.ndarray, name: str = "y") -> None:
    """:class:`InputError` unless the kernel placements ``y (N, W', T, B)`` are feasible to
    the rounding of a float32 solve (whatever the dtype now: a float32 solution may have been
    cast): ``y ≥ 0``, ``Σ_t y ≤ 1`` per block and ``Σ_b s_b·y ≤ C`` per tier. (A float32 best
    response places a block by differences of cumulative sizes: off by up to
    ``ulp(Σ_b s_b)``, 2e-4 of a block at 2 048 blocks.)"""
    y = y.astype(np.float64)
    size = p.size.astype(np.float64)  # (N, B)
    slack = 16 * np.finfo(np.float32).eps * size.sum(-1)[:, None, None]  # (N, 1, 1): size units
    held = y.sum(-2)  # (N, W', B)
    used = np.einsum("nwtb,nb->nwt", y, size)
    cap = p.capacity.astype(np.float64)
    bad = [
        (y.min(-2) < -slack / size[:, None], "holds {:.9g} of block {}: must be >= 0", y.min(-2)),
        (held > 1 + slack / size[:, None], "holds {:.9g} of block {}: Σ_t y must be <= 1", held),
        (used > cap + slack * (1 + cap), "uses {:.9g} of tier {}'s capacity {:.9g}", used),
    ]
    for mask, text, val in bad:
        if mask.any():
            i, w, k = (int(v) for v in np.argwhere(mask)[0])
            who = "the shared pool" if p.pool and w == p.workers else f"worker {w}"
            at = f" (instance {i})" if p.batch_shape else ""
            extra = (float(cap[i, w, k]),) if val is used else ()
            raise InputError(
                f"{name}: not a feasible placement{at}: {who} "
                + text.format(float(val[i, w, k]), k, *extra)
            )


def worker_costs(game: TieredCacheGame, y, dtype=None, shared=None) -> np.ndarray:
    """``C_w(y)`` for placements ``y (..., W, T, B)`` (and the pool's ``shared (..., B)``),
    ``(..., W)``."""
    p = _prepare(game, dtype)
    out = np.asarray(_costs_batch(p.reach, p.rm, p.credit, _placement(p, y, shared=shared)))
    return out[:, : p.workers].reshape(p.batch_shape + (p.workers,))


def social_cost(game: TieredCacheGame, y, dtype=None, shared=None) -> np.ndarray:
    """``SC(y)``, ``(...)``."""
    return worker_costs(game, y, dtype, shared).sum(-1)


def best_response(game: TieredCacheGame, y, worker: int, dtype=None, shared=None):
    """Worker ``worker``'s best response to ``y``: ``(placement (..., T, B), its cost (...))``."""
    p = _prepare(game, dtype)
    w = p.workers
    worker = _integer("worker", worker, 0, w - 1)
    yy = _placement(p, y, shared=shared)
    idx = np.full(yy.shape[0], int(worker), np.int32)
    br, cost = _br_batch(*_pack(p), yy, idx)
    return (np.asarray(br).reshape(p.batch_shape + br.shape[1:]),
            np.asarray(cost).reshape(p.batch_shape))  # fmt: skip


def _optimum_starts(p: _Prepared, k: int, seed: int) -> np.ndarray:
    """``(N, k, W, T, B)`` random starts for the optimum, alternately dense (uniform on
    ``[0, 1]``, retracted by the descent) and sparse (each worker keeps each block whole in one
    random tier with probability ½).

    They break the symmetry the equilibria and the uniform fill share: where peers reach far
    (``reach`` near 1), the best placements share the blocks out between neighbours, which a
    descent from a symmetric start rarely finds (tests: 2–5% lower SC on such instances).

    Drawn from ``seed`` alone, ``(k, W, T, B)``, and shared by every instance: an instance's
    optimum does not depend on the rest of the batch.
    """
    n = p.rm.shape[0]
    w, t, b = p.dims
    rng = np.random.default_rng([seed, 0x0B7])
    dense = rng.random((k, w, t, b))
    keep = rng.random((k, w, 1, b)) < 0.5
    tier = rng.integers(0, t, (k, w, 1, b)) == np.arange(t)[:, None]
    sparse = (keep & tier).astype(np.float64)
    one = np.where((np.arange(k) % 2 == 0)[:, None, None, None], dense, sparse)
    return np.array(np.broadcast_to(one, (n, k, w, t, b)))


def _starts(p: _Prepared, starts: int, seed: int) -> np.ndarray:
    """``(N, S, W, T, B)``: start 0 empty, then random placements (retracted on device), drawn
    from ``seed`` alone, ``(S, W, T, B)``, and shared by every instance (an instance's
    equilibria do not depend on the rest of the batch)."""
    n = p.rm.shape[0]
    w, t, b = p.dims
    y = np.random.default_rng(seed).random((starts, w, t, b))
    y[0] = 0.0
    return np.array(np.broadcast_to(y, (n, starts, w, t, b)), p.dtype)


def _check_lr(lr) -> None:
    number = isinstance(lr, (int, float, np.integer, np.floating))
    if isinstance(lr, (bool, np.bool_)) or not number or not (np.isfinite(lr) and lr > 0):
        raise InputError(f"lr = {lr!r}: must be finite and > 0")


@dataclasses.dataclass(frozen=True)
class TieredSolution:
    """Placements and outcomes; ``...`` the batch shape.

    Attributes:
      placement: ``(..., W, T, B)``.
      social_cost: ``(...)``.
      gap: ``(...)`` relative best-response gap (equilibria) or an upper bound on the relative
        first-order gap (optima, :func:`solve_optimum`).
      rounds: ``(...)`` best-response rounds (equilibria) or descent steps (optima).
      status: ``(...)`` 0 converged, 1 out of rounds, 2 non-finite.
      converged: ``(...)`` bool.
      shared: ``(..., B)`` the shared pool's holding of each block, or None without a pool.
    """

    placement: np.ndarray
    social_cost: np.ndarray
    gap: np.ndarray
    rounds: np.ndarray
    status: np.ndarray
    converged: np.ndarray
    shared: np.ndarray | None = None


def _split(p: _Prepared, pl: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Kernel placements ``(N, W', T, B)`` → the workers' ``(..., W, T, B)`` and the pool's
    ``(..., B)`` (None without a pool)."""
    sh = p.batch_shape
    work = pl[:, : p.workers]
    shared = pl[:, p.workers, 0].reshape(sh + pl.shape[-1:]) if p.pool else None
    return work.reshape(sh + work.shape[1:]), shared


def _kernel_starts(p: _Prepared, y0) -> np.ndarray:
    """``(N, S, W', T, B)`` from starts ``(..., S, W, T, B)`` or ``(..., W, T, B)`` (the
    workers only: the pool starts empty; or with the pool as one more row)."""
    w, t, b = p.dims
    x = read_real("y0", y0)
    check("y0", x, "finite")
    if x.ndim < 3 or x.shape[-2:] != (t, b) or x.shape[-3] not in (p.workers, w):
        raise InputError(f"y0 has shape {x.shape}: must be (..., [S,] {p.workers}, {t}, {b})")
    if x.ndim <= len(p.batch_shape) + 3:  # no starts axis: one start (leading axes broadcast)
        x = x[..., None, :, :, :]
    if x.shape[-3] != w:
        x = np.concatenate([x, np.zeros(x.shape[:-3] + (1, t, b))], -3)
    try:
        x = np.broadcast_to(x, p.batch_shape + x.shape[-4:])
    except ValueError:
        raise InputError(
            f"y0 has shape {np.shape(y0)}: its batch axes must be {p.batch_shape}"
        ) from None
    return x.reshape(-1, x.shape[-4], w, t, b)


def solve_equilibrium(
    game: TieredCacheGame,
    *,
    starts: int = 4,
    seed: int = 0,
    tol: float | None = None,
    max_rounds: int = 200,
    y0=None,
    dtype=None,
    _all: bool = False,
):
    """Selfish equilibria by sequential best response from ``starts`` placements (batched).

    Returns the worst converged equilibrium per instance as a :class:`TieredSolution` (with
    ``_all``, the raw per-start dict ``(N, S, ...)`` for :func:`price_of_anarchy`).
    """
    check_tol(tol)
    max_rounds = _integer("max_rounds", max_rounds, 1)
    starts = _count_starts(starts)
    seed = _seed(seed)
    p = _prepare(game, dtype)
    tol = TOL[p.dtype] if tol is None else float(tol)
    n = p.rm.shape[0]
    if y0 is not None:
        x = _placement(p, y0, "y0")[:, None]
    else:
        x = _starts(p, starts, seed)
    s = x.shape[1]
    rep = lambda a: np.repeat(a, s, axis=0)  # noqa: E731
    flat_y = x.reshape((n * s,) + x.shape[2:])
    args = tuple(rep(a) for a in _pack(p))
    flat_y = _chunked(_retract_batch, (flat_y, args[2], args[4]), LANES)
    out = _chunked(_eq_batch, args + (flat_y,), LANES, tol=tol, max_rounds=max_rounds,
                   pool=p.pool)  # fmt: skip
    out = {k: v.reshape((n, s) + v.shape[1:]) for k, v in out.items()}
    if _all:
        return p, out
    return _pick(p, out, worst=True)


def _pick(p, out, worst: bool) -> TieredSolution:
    ok = out["status"] == loop.CONVERGED
    use = np.where(ok.any(-1, keepdims=True), ok, True)
    sc = out["social_cost"]
    i = (
        np.argmax(np.where(use, sc, -np.inf), -1)
        if worst
        else np.argmin(np.where(use, sc, np.inf), -1)
    )
    rows = np.arange(sc.shape[0])
    sh = p.batch_shape
    r = {k: v[rows, i] for k, v in out.items()}
    placement, shared = _split(p, r["placement"])
    return TieredSolution(
        placement=placement,
        shared=shared,
        social_cost=r["social_cost"].reshape(sh),
        gap=r["gap"].reshape(sh),
        rounds=r["rounds"].reshape(sh),
        status=r["status"].reshape(sh),
        converged=(r["status"] == loop.CONVERGED).reshape(sh),
    )


def _optimum_status(sc, gap, tol):
    """0 stationary (``gap ≤ tol``), 1 out of steps, 2 a non-finite cost."""
    bad = ~np.isfinite(sc)
    return np.where(bad, 2, np.where(gap <= tol, 0, 1)).astype(np.int32)


def solve_optimum(
    game: TieredCacheGame,
    *,
    y0=None,
    steps: int = 1500,
    lr: float = 0.2,
    tol: float | None = None,
    polish_sweeps: int = 10,
    dtype=None,
) -> TieredSolution:
    """Coordinated placement by projected gradient descent with optax from ``y0`` (batched).

    ``y0 (..., S, W, T, B)`` or ``(..., W, T, B)``: starts (default: one empty placement and
    one uniform fill); the best point seen over all starts is kept.

    The descent runs ``steps`` steps from each start, except that a start whose first
    :data:`~poa_jax.tiered_kernels.DESCENT_ROUND` steps lower SC by no more than ``tol``
    (relative) stops there (an equilibrium often is such a start; ``rounds`` reports the steps
    each optimum's start ran). Then at most ``polish_sweeps`` passes of
    block-coordinate descent: each worker in turn takes its coordinated best response, the
    placement that minimises SC given the others (SC is linear in one worker's placement; an
    LP solved exactly by a greedy, :func:`poa_jax.tiered_kernels._social_lmo`). Each instance
    stops after its own pass that lowers nothing, whatever else is in the batch. On 8 workers
    × 4 tiers × 256 blocks the descent alone stays within 1e-5 of the equilibrium it starts
    from while the polish lowers SC by ~1% (a PoA understated by as much without it). It then
    certifies the point it returns. ``gap`` is an upper bound on its relative Frank–Wolfe
    gap, ``max_{y'} ⟨−∇SC(y), y' − y⟩ / SC(y)`` over the feasible placements: 0 exactly at a
    stationary point (a KKT point of SC; SC is not convex, so it may be a local optimum). The
    bound is the LP dual priced by the projection's multipliers and by the coordinated best
    responses' prices, tight at a stationary point and loose away from one. ``status`` is 0
    (converged) where ``gap ≤ tol`` (default :data:`OPT_TOL`: 1e-6 in float64, 1e-5 in
    float32), 1 where the descent and the polish stopped short of that, 2 for a non-finite
    cost.
    """
    steps = _integer("steps", steps, 1)
    polish_sweeps = _integer("polish_sweeps", polish_sweeps, 0, 10_000)
    _check_lr(lr)
    check_tol(tol)
    p = _prepare(game, dtype)
    tol = OPT_TOL[p.dtype] if tol is None else float(tol)
    n = p.rm.shape[0]
    w, t, b = p.dims
    if y0 is None:
        x = np.stack([np.zeros((n, w, t, b)), np.full((n, w, t, b), 1.0 / t)], 1)
    else:
        x = _kernel_starts(p, y0)
    x = x.astype(p.dtype)
    s = x.shape[1]
    rep = lambda a: np.repeat(a, s, axis=0)  # noqa: E731
    args = tuple(rep(a) for a in _pack(p))
    lanes = _opt_lanes()
    desc = _descend(args, x.reshape(n * s, w, t, b), int(steps), float(lr), tol, lanes)
    y = desc["placement"]
    if polish_sweeps:  # the polish's last LP prices also price the certificate
        y, prices = _compacted(_sweep_batch, args, (y, np.zeros_like(desc["lam"])), lanes,
                               int(polish_sweeps))  # fmt: skip
        out = _chunked(_cert_batch, args + (y, desc["lam"], desc["c"], prices), lanes, tol=tol)
    else:
        out = _chunked(_cert_batch, args + (y, desc["lam"], desc["c"]), lanes)
    out["placement"] = y
    sc = out["social_cost"].reshape(n, s)
    i = np.argmin(sc, -1)
    rows = np.arange(n)
    sh = p.batch_shape
    placement, shared = _split(p, out["placement"].reshape(n, s, w, t, b)[rows, i])
    sc, gap = sc[rows, i], out["gap"].reshape(n, s)[rows, i]
    status = _optimum_status(sc, gap, tol)
    return TieredSolution(
        placement=placement,
        shared=shared,
        social_cost=sc.reshape(sh),
        gap=gap.reshape(sh),
        rounds=desc["steps"].reshape(n, s)[rows, i].reshape(sh),
        status=status.reshape(sh),
        converged=(status == loop.CONVERGED).reshape(sh),
    )


def _descend(args, x, steps: int, lr: float, tol: float, lanes: int) -> dict:
    """The optimum's descent on every start ``x (M, W, T, B)``, in rounds of
    :data:`~poa_jax.tiered_kernels.DESCENT_ROUND` steps (:func:`poa_jax.caching._compacted`):
    a start whose first round lowers SC by no more than ``tol`` relative leaves its slot
    there, every other after ``steps``. Returns ``dict(placement, lam, c, steps)``: the best
    point seen, the last multipliers and step scale (the certificate's warm start) and the
    steps each start ran."""
    m = x.shape[0]
    rnd = min(DESCENT_ROUND, steps)
    full, rem = divmod(steps, rnd)
    dt = x.dtype
    state = (x, np.zeros(x.shape[:3], dt), x, np.full(m, np.inf, dt), np.ones(m, dt),
             np.zeros(m, np.int32), np.ones(m, bool))  # fmt: skip
    state = _compacted(_descent_round(n=rnd, steps=steps, lr=lr, rtol=tol), args, state, lanes,
                       full)  # fmt: skip
    left = np.flatnonzero(state[6] & (state[5] == full * rnd))
    if rem and left.size:  # the last, shorter round of those still descending
        fn = _descent_round(n=rem, steps=steps, lr=lr, rtol=tol)
        out, _ = _chunked(fn, tuple(a[left] for a in args + state), lanes)
        for a, b in zip(state, out, strict=True):
            a[left] = b
    return dict(placement=state[2], lam=state[1], c=state[4], steps=state[5])


def stationarity_gap(game: TieredCacheGame, y, dtype=None, shared=None) -> np.ndarray:
    """Upper bound on the relative first-order (Frank–Wolfe) gap of placement ``y``, ``(...)``.

    The certificate :func:`solve_optimum` reports as ``gap``, for any feasible placement
    ``y (..., W, T, B)`` (and the pool's ``shared (..., B)``): 0 (to rounding) exactly where no
    feasible direction lowers SC to first order. Priced without a warm start
    (``CERT_ITERS_COLD`` dual steps), so it may be looser than the solver's own.

    Raises:
      InputError: ``y`` (or ``shared``) not finite, or not a feasible placement beyond the
        rounding of a float32 solve (the bound may read 0 at an infeasible point).
    """
    p = _prepare(game, dtype)
    y = _placement(p, y, shared=shared)
    _check_feasible(p, y)
    return _stationarity(p, y)


def _stationarity(p: _Prepared, y: np.ndarray) -> np.ndarray:
    """:func:`stationarity_gap` of kernel placements ``y (N, W', T, B)``, unchecked."""
    gap = _chunked(_cert_batch, _pack(p) + (y,), _opt_lanes())["gap"]
    return np.asarray(gap).reshape(p.batch_shape)


@dataclasses.dataclass(frozen=True)
class TieredPoAResult:
    """PoA of fluid tiered games; ``...`` the batch shape, ``S`` the equilibrium starts.

    Attributes:
      poa: ``(...)`` SC(worst equilibrium found) / SC(best placement found), ≥ 1; NaN where
        either cost is not finite (e.g. float32 overflow: status 2, not converged).
      price_of_stability: ``(...)`` SC(best equilibrium found) / SC(best placement found).
      optimum_cost: ``(...)`` SC of the best placement found (an upper bound on SC(opt)).
      equilibrium_costs: ``(..., S)`` the distinct equilibria found, by SC, worst first, then
        NaN: the converged starts' costs, where two that agree within the equilibrium
        tolerance (relative) count once.
      equilibrium_count: ``(...)`` how many distinct equilibria were found.
      equilibrium: worst equilibrium (:class:`TieredSolution`); best_equilibrium; optimum.
      converged: ``(...)`` the worst equilibrium converged and the optimum is certified
        stationary (``optimum.gap ≤ optimum_tol``).
    """

    poa: np.ndarray
    price_of_stability: np.ndarray
    optimum_cost: np.ndarray
    equilibrium_costs: np.ndarray
    equilibrium_count: np.ndarray
    equilibrium: TieredSolution
    best_equilibrium: TieredSolution
    optimum: TieredSolution
    converged: np.ndarray


def _distinct_worst_first(costs: np.ndarray, rtol: float) -> tuple[np.ndarray, np.ndarray]:
    """``costs (N, S)`` (NaN = none) → the distinct values, largest first, NaN-padded, and their
    count ``(N,)``; a value within ``rtol`` (relative) of the next larger one is a repeat."""
    c = -np.sort(-np.where(np.isnan(costs), -np.inf, costs), axis=-1)  # worst first, NaN last
    prev = np.concatenate([np.full(c.shape[:-1] + (1,), np.inf), c[..., :-1]], -1)
    with np.errstate(invalid="ignore"):
        new = np.isfinite(c) & ~(prev - c <= rtol * np.maximum(np.abs(c), np.finfo(c.dtype).tiny))
    kept = -np.sort(-np.where(new, c, -np.inf), axis=-1)
    return np.where(np.isinf(kept), np.nan, kept), new.sum(-1)


def price_of_anarchy(
    game: TieredCacheGame,
    *,
    starts: int = 4,
    seed: int = 0,
    tol: float | None = None,
    max_rounds: int = 200,
    optimum_steps: int = 1500,
    optimum_starts: int = 4,
    optimum_tol: float | None = None,
    polish_sweeps: int = 10,
    lr: float = 0.2,
    dtype=None,
) -> TieredPoAResult:
    """PoA and price of stability of every fluid tiered game in the batch.

    Equilibria from ``starts`` starts (:func:`solve_equilibrium`); the optimum by
    :func:`solve_optimum` warm-started from every equilibrium found, a uniform fill and
    ``optimum_starts`` random placements (:func:`_optimum_starts`), and never above the best
    equilibrium. ``converged`` needs both the worst equilibrium (best-response gap ≤ ``tol``)
    and the optimum (first-order gap ≤ ``optimum_tol``, :func:`solve_optimum`).
    """
    optimum_starts = _integer("optimum_starts", optimum_starts, 0, MAX_STARTS)
    optimum_steps = _integer("optimum_steps", optimum_steps, 1)
    polish_sweeps = _integer("polish_sweeps", polish_sweeps, 0, 10_000)
    _check_lr(lr)
    check_tol(optimum_tol)
    p, out = solve_equilibrium(game, starts=starts, seed=seed, tol=tol, max_rounds=max_rounds,
                               dtype=dtype, _all=True)  # fmt: skip
    worst, best = _pick(p, out, True), _pick(p, out, False)
    n, s = out["social_cost"].shape
    w, t, b = p.dims
    uni = np.full((n, 1, w, t, b), 1.0 / t, p.dtype)
    rnd = _optimum_starts(p, optimum_starts, seed).astype(p.dtype)
    y0 = np.concatenate([out["placement"], uni, rnd], 1)
    y0 = y0.reshape(p.batch_shape + y0.shape[1:])
    opt = solve_optimum(game, y0=y0, steps=optimum_steps, lr=lr, tol=optimum_tol,
                        polish_sweeps=polish_sweeps, dtype=dtype)  # fmt: skip
    lower = best.social_cost < opt.social_cost
    if np.any(lower):
        # the best equilibrium costs less than the descent's point (rounding, a short descent):
        # it becomes the optimum, certified on its own
        placement = np.where(lower[..., None, None, None], best.placement, opt.placement)
        shared = None if opt.shared is None else np.where(lower[..., None], best.shared, opt.shared)
        # (certified where lower only: an overflowed instance's non-finite placement is unused)
        fin = lambda a: None if a is None else np.where(np.isfinite(a), a, 0.0)  # noqa: E731
        cert = _stationarity(p, _placement(p, fin(placement), shared=fin(shared)))
        gap = np.where(lower, cert, opt.gap)
        sc = np.where(lower, best.social_cost, opt.social_cost)
        status = _optimum_status(sc, gap, OPT_TOL[p.dtype] if optimum_tol is None else optimum_tol)
        opt = dataclasses.replace(
            opt, placement=placement, social_cost=sc, shared=shared, gap=gap, status=status,
            converged=status == loop.CONVERGED,
        )  # fmt: skip
    ok = out["status"] == loop.CONVERGED
    rtol = max(TOL[p.dtype] if tol is None else float(tol), 100 * float(np.finfo(p.dtype).eps))
    costs, count = _distinct_worst_first(np.where(ok, out["social_cost"], np.nan), rtol)
    costs, count = costs.reshape(p.batch_shape + (s,)), count.reshape(p.batch_shape)
    from poa_jax.poa import _ratio  # (poa imports this module lazily)

    # NaN where a cost is not finite (a float32 overflow must not read as PoA 1)
    poa = _ratio(worst.social_cost, opt.social_cost)
    pos = _ratio(best.social_cost, opt.social_cost)
    return TieredPoAResult(
        poa=poa, price_of_stability=pos, optimum_cost=opt.social_cost, equilibrium_costs=costs,
        equilibrium_count=count, equilibrium=worst, best_equilibrium=best, optimum=opt,
        converged=worst.converged & opt.converged,
    )  # fmt: skip


def capacity_paradox(
    game: TieredCacheGame,
    *,
    worker: int | str = 0,
    tier: int = 0,
    extra: float = 1.0,
    starts: int = 4,
    seed: int = 0,
    dtype=None,
) -> dict:
    """Does adding ``extra`` capacity to ``(worker, tier)`` raise the equilibrium SC? (batched)

    ``worker = "shared"`` adds it to the shared pool instead (``tier`` is then ignored).
    Equilibria from the same ``starts`` before and after; the worst and the best converged
    ones are compared. Returns ``(...)`` arrays ``worst_rise``, ``best_rise`` (> 0: a cache
    paradox) and the counts of instances where each is positive beyond ``1e-9`` relative.
    """
    p = _prepare(game, dtype)
    w, t = p.workers, p.dims[1]
    real = isinstance(extra, (int, float, np.integer, np.floating))
    if isinstance(extra, (bool, np.bool_)) or not real or not (np.isfinite(extra) and extra > 0):
        raise InputError(f"extra = {extra!r}: must be finite and > 0")
    if worker == "shared":
        if not p.pool:
            raise InputError("worker = 'shared': the game has no shared pool (shared_capacity)")
        pool = np.broadcast_to(np.asarray(game.shared_capacity, np.float64), p.batch_shape)
        more = dataclasses.replace(game, shared_capacity=pool + extra)
    else:
        whole = all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
                    for v in (worker, tier))  # fmt: skip
        if not whole or not (0 <= worker < w and 0 <= tier < t):
            raise InputError(
                f"(worker, tier) = ({worker!r}, {tier}): must index capacity (W={w}, T={t}), "
                "or worker = 'shared' for the shared pool"
            )
        cap = np.broadcast_to(np.asarray(game.capacity, np.float64), p.batch_shape + (w, t))
        cap = cap.copy()
        cap[..., worker, tier] += extra
        more = dataclasses.replace(game, capacity=cap)
    picks = []
    for g in (game, more):  # one solve each, the worst and the best equilibrium picked
        pg, out = solve_equilibrium(g, starts=starts, seed=seed, dtype=dtype, _all=True)
        picks.append([_pick(pg, out, k) for k in (True, False)])
    before, after = picks
    rise_w = after[0].social_cost - before[0].social_cost
    rise_b = after[1].social_cost - before[1].social_cost
    tol = 1e-9 * np.maximum(before[1].social_cost, 1e-300)
    ok = before[0].converged & after[0].converged & before[1].converged & after[1].converged
    return dict(
        worst_rise=rise_w, best_rise=rise_b, converged=ok,
        worst_paradoxes=int(np.sum(ok & (rise_w > tol))),
        best_paradoxes=int(np.sum(ok & (rise_b > tol))), instances=int(np.prod(p.batch_shape)),
    )  # fmt: skip
