r"""Γ_KV, discrete form — the selfish caching game of Chun et al. (PODC 2004), batched.

Nodes ``i = 1..n`` (workers) on a topology with a distance (transfer-cost) matrix ``D (n, n)``,
one object (a prefix block). Each node chooses to cache it (``x_i = 1``) or not. With placement
cost ``α_i ≥ 0``, demand ``w_i ≥ 0`` and miss cost ``m_i > 0`` (the cost of recomputing when no
replica is worth fetching; ``+inf`` by default), node ``i``'s cost at profile ``x`` is

    c_i(x) = α_i                                  if x_i = 1,
           = w_i · min(d_i(x), m_i)               if x_i = 0,      d_i(x) = min_{j: x_j=1} D[i, j]

(``d_i = +inf`` when nobody caches). The social cost is ``SC(x) = Σ_i c_i(x)``. A cached copy
serves every other node at its distance: the positive externality. ``x`` is a **pure Nash
equilibrium** when no node gains by switching alone:

    x_i = 1  ⇒  α_i ≤ w_i · min(d_{i,−i}(x), m_i),      x_i = 0  ⇒  w_i · min(d_i(x), m_i) ≤ α_i,

with ``d_{i,−i}`` the distance to the nearest *other* replica. Ties count as equilibria (a node
switches only when strictly better, by more than ``tie·α_i``: relative, so scaling every cost
by the same factor changes no equilibrium).

*Miss-cost convention.* With the default ``m = +inf`` a node with no replica anywhere pays
``+inf``, so the empty profile is never an equilibrium nor an optimum ("at least one replica",
the setting of Chun et al.'s examples); any finite ``m_i > α_i`` gives the same equilibria and
optimum. The issue's oracles (two clusters, star, K5, line of 12) hold under it (tests).

**PoA and price of stability.** ``PoA = SC(worst pure NE) / SC(opt)``,
``PoS = SC(best pure NE) / SC(opt)``.

* ``n ≤ exhaustive_max`` (default 16): all ``2ⁿ`` profiles are enumerated, batched
  (:mod:`poa_jax.kernels.coverage`: subset-DP nearest-replica tables met in the middle,
  ``2ⁿ`` walked in slabs of ``2¹²``), so every pure NE, their number, the worst and the best,
  and the optimum are **exact**. The fetch costs ``w_i·min(D[i, j], m_i)`` are formed once per
  pair (bit for bit the per-profile ``w_i·min(d_i(x), m_i)``: rounding is monotone), and each
  profile's SC is summed node by node in node order.
* Larger ``n``: pure NE by sequential best-response dynamics from ``starts`` profiles (empty,
  full, random densities); the equilibria are exact NE (verified), but only those found. The
  optimum is bracketed: an **upper bound** = the best profile found (the equilibria, improved by
  single-flip local search), and a **lower bound** = the Lagrangian (= LP) relaxation of the
  equivalent uncapacitated facility-location problem,

      OPT ≥ L(v) = Σ_i v_i + Σ_j min(0, α_j + Σ_i min(0, w_i D[i,j] − v_i))
                   + Σ_i min(0, w_i m_i − v_i)          for every v ∈ ℝⁿ,

  maximised by optax (Adam on ``−L``, the best value kept: every iterate is a valid bound).
  ``poa`` is then worst-found / upper bound (a lower bound on the true PoA over the equilibria
  found) and ``poa_upper`` worst-found / lower bound.

Arrays: ``distance (..., n, n)``, ``placement_cost, demand, miss_cost (..., n)`` or scalars;
leading axes are batch axes and broadcast. Profiles are reported as booleans ``(..., n)``.

References: B.-G. Chun, K. Chaudhuri, H. Wee, M. Barreno, C. Papadimitriou, J. Kubiatowicz,
"Selfish caching in distributed systems: a game-theoretic analysis", PODC 2004.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from poa_jax.batching import float_dtype
from poa_jax.errors import InputError
from poa_jax.kernels import coverage
from poa_jax.kernels.loop import CONVERGED, MAX_ITERS
from poa_jax.validation import INT32_MAX, MAX_STARTS, SEED_MAX, as_array, check

__all__ = [
    "SelfishCachingGame",
    "CachingPoAResult",
    "Exhaustive",
    "BestResponse",
    "complete_distance",
    "cluster_distance",
    "line_distance",
    "star_distance",
    "enumerate_profiles",
    "best_response",
    "lower_bound",
    "local_search",
    "price_of_anarchy",
    "CachingOptimum",
    "solve_optimum",
    "social_cost",
    "is_equilibrium",
    "paradox_search",
]

#: Largest n solved by exhaustive enumeration by default (2¹⁶ profiles per instance).
EXHAUSTIVE_MAX = 16
#: Relative tie tolerance of the equilibrium test, by dtype.
TIE = {np.dtype(np.float64): 1e-9, np.dtype(np.float32): 1e-5}
#: Distinct equilibria kept per instance (their total number is always reported).
KEEP = 64
#: Profiles per call on the exhaustive path (instances × 2^{min(n,12)}): 128 instances of n = 12,
#: a 4 MiB slab (2-core CPU, N = 2048, CPU time per instance about flat from 32 to 128 per
#: call, 1.5× worse at 512 where the slab leaves the caches).
SLAB_BUDGET = 2**19
#: Lanes per call of the best-response and local-search kernels.
LANES = 1024


@dataclasses.dataclass(frozen=True)
class SelfishCachingGame:
    """A (batch of) selfish caching game(s).

    Attributes:
      distance: ``(..., n, n)`` transfer cost between nodes; finite, ≥ 0, zero diagonal, and
        symmetric unless ``symmetric=False``.
      placement_cost: ``α``, ``(..., n)`` or scalar, finite and ≥ 0.
      demand: ``w``, ``(..., n)`` or scalar, finite and ≥ 0; default ones.
      miss_cost: ``m``, ``(..., n)`` or scalar, > 0 (``inf`` allowed); default ``inf``.
      symmetric: whether the distance must be symmetric (the presets are).

    Example:
      >>> import poa_jax as pj
      >>> star = pj.SelfishCachingGame(pj.caching.star_distance(4), 1.5)
      >>> r = pj.price_of_anarchy(star)
      >>> round(float(r.poa), 6), float(r.price_of_stability), r.equilibrium_costs[:2].tolist()
      (1.272727, 1.0, [7.0, 5.5])
    """

    distance: ArrayLike
    placement_cost: ArrayLike
    demand: ArrayLike | None = None
    miss_cost: ArrayLike | None = None
    symmetric: bool = True

    def __post_init__(self):
        # Shape-only checks, at construction; the values are checked before solving.
        check_bool("SelfishCachingGame.symmetric", self.symmetric)
        need_axis("SelfishCachingGame.distance", self.distance, "node", ndim=2)


# --------------------------------------------------------------------------- presets


def complete_distance(n: int, d: float = 1.0) -> np.ndarray:
    """``K_n``: ``n`` workers, every pair at distance ``d`` (the GPUs of one NVLink node).

    Args:
      n: workers, an integer >= 1.
      d: distance between any two of them, finite and >= 0.

    Returns:
      ``(n, n)`` float64, ``d`` off the diagonal and 0 on it.

    Example:
      >>> import poa_jax as pj
      >>> pj.caching.complete_distance(3, 0.5).tolist()
      [[0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]]
    """
    n = _preset_int("complete_distance", "n", n)
    d = _preset_length("complete_distance", "d", d)
    return d * (1.0 - np.eye(n))


def cluster_distance(
    nodes: int, per_node: int, inside: float = 0.0, across: float = 1.0
) -> np.ndarray:
    """``nodes`` groups of ``per_node`` workers: ``inside`` within a group (NVLink inside a
    node), ``across`` between groups (InfiniBand between nodes).

    Worker ``i`` is in group ``i // per_node``.

    Args:
      nodes: groups (nodes), an integer >= 1.
      per_node: workers per group, an integer >= 1.
      inside: distance within a group, finite and >= 0.
      across: distance between groups, finite and >= 0.

    Returns:
      ``(nodes·per_node, nodes·per_node)`` float64 with a zero diagonal.

    Example:
      >>> import poa_jax as pj
      >>> pj.caching.cluster_distance(2, 2, inside=0.1, across=1.0).tolist()
      [[0.0, 0.1, 1.0, 1.0], [0.1, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.1], [1.0, 1.0, 0.1, 0.0]]
    """
    nodes = _preset_int("cluster_distance", "nodes", nodes)
    per_node = _preset_int("cluster_distance", "per_node", per_node)
    inside = _preset_length("cluster_distance", "inside", inside)
    across = _preset_length("cluster_distance", "across", across)
    g = np.repeat(np.arange(nodes), per_node)
    d = np.where(g[:, None] == g[None, :], inside, across).astype(np.float64)
    np.fill_diagonal(d, 0.0)
    return d


def line_distance(n: int, spacing: float = 1.0) -> np.ndarray:
    """``n`` workers on a line, ``spacing`` apart: ``D[i, j] = spacing·|i − j|``.

    Args:
      n: workers, an integer >= 1.
      spacing: distance between neighbours, finite and >= 0.

    Returns:
      ``(n, n)`` float64.

    Example:
      >>> import poa_jax as pj
      >>> pj.caching.line_distance(3, 2.0).tolist()
      [[0.0, 2.0, 4.0], [2.0, 0.0, 2.0], [4.0, 2.0, 0.0]]
    """
    n = _preset_int("line_distance", "n", n)
    spacing = _preset_length("line_distance", "spacing", spacing)
    p = np.arange(n) * spacing
    return np.abs(p[:, None] - p[None, :])


def star_distance(leaves: int, spoke: float = 1.0, leaf_to_leaf: float | None = None):
    """A centre (worker 0) and ``leaves`` leaves: centre–leaf ``spoke``, leaf–leaf
    ``leaf_to_leaf``, by default ``2·spoke`` (through the centre).

    Args:
      leaves: leaves, an integer >= 1 (``leaves + 1`` workers in all).
      spoke: centre–leaf distance, finite and >= 0.
      leaf_to_leaf: leaf–leaf distance, finite and >= 0; default (None) ``2·spoke``.

    Returns:
      ``(leaves + 1, leaves + 1)`` float64.

    Example:
      >>> import poa_jax as pj
      >>> pj.caching.star_distance(2).tolist()
      [[0.0, 1.0, 1.0], [1.0, 0.0, 2.0], [1.0, 2.0, 0.0]]
    """
    leaves = _preset_int("star_distance", "leaves", leaves)
    spoke = _preset_length("star_distance", "spoke", spoke)
    ll = 2.0 * spoke if leaf_to_leaf is None else leaf_to_leaf
    ll = _preset_length("star_distance", "leaf_to_leaf", ll)
    n = leaves + 1
    d = np.full((n, n), ll, np.float64)
    d[0, :] = d[:, 0] = spoke
    np.fill_diagonal(d, 0.0)
    return d


def _preset_int(fn: str, name: str, v) -> int:
    try:
        return _integer(name, v, 1)
    except InputError as e:
        raise InputError(f"{fn}: {e}") from None


def _preset_length(fn: str, name: str, v) -> float:
    ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(
        v, (bool, np.bool_)
    )
    if not ok or not (np.isfinite(v) and v >= 0):
        raise InputError(f"{fn}: {name} = {v!r}: must be a finite number >= 0")
    return float(v)


# --------------------------------------------------------------------------- input checks


@dataclasses.dataclass(frozen=True)
class _Prepared:
    dist: np.ndarray  # (N, n, n)
    alpha: np.ndarray  # (N, n)
    demand: np.ndarray  # (N, n)
    miss: np.ndarray  # (N, n)
    batch_shape: tuple[int, ...]
    n: int
    dtype: np.dtype


_dtype = float_dtype  # float32 / float64 checked, x64 required for float64


def read_real(name: str, value) -> np.ndarray:
    """``value`` as a float64 array; :class:`InputError` naming ``name`` when it is None (a
    required field left out), complex or not numbers at all."""
    if value is None:
        raise InputError(f"{name}: required, got None (must be a number or an array of numbers)")
    try:
        is_complex = np.iscomplexobj(value)
    except (TypeError, ValueError):  # ragged, say: as_array names it
        is_complex = False
    if is_complex:
        raise InputError(f"{name}: must be real, got complex values")
    return as_array(name, value)


def check_bool(name: str, value) -> None:
    """:class:`InputError` unless ``value`` is a bool (a string such as ``"no"`` is truthy)."""
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name} = {value!r}: must be True or False")


def need_axis(name: str, value, what: str, ndim: int = 1) -> None:
    """:class:`InputError` when the last axis of ``value`` (with at least ``ndim`` axes) is
    empty: ``needs at least one {what}``. Shape only; values that cannot be read as arrays
    are left to the full checks, which name them."""
    try:
        shape = np.shape(value)
    except (TypeError, ValueError):
        return
    if len(shape) >= ndim and shape[-1] == 0:
        raise InputError(f"{name} has shape {shape}: needs at least one {what}")


def read_profiles(name: str, value, n: int) -> np.ndarray:
    """``value`` as bool profiles ``(..., n)``; :class:`InputError` naming ``name`` unless it
    holds booleans or 0/1 (``0.3`` or NaN would read as True) and its last axis is the ``n``
    nodes (a wrong length would otherwise be reshaped into other profiles silently)."""
    a = as_array(name, value, booleans=True)
    check(name, a, "zero_one")
    if a.ndim < 1 or a.shape[-1] != n:
        raise InputError(f"{name} has shape {a.shape}: its last axis must be the {n} nodes")
    return a != 0


def check_batch(owner: str, shape: tuple[int, ...]) -> None:
    """:class:`InputError` for an empty batch (a batch axis of length 0)."""
    if 0 in shape:
        raise InputError(
            f"{owner}: empty batch (the fields broadcast to batch shape {shape}): "
            "needs at least one instance"
        )


def check_distance(name: str, d: np.ndarray, symmetric: bool, hint: bool = True) -> None:
    """Finite, ≥ 0, square, zero diagonal and (if asked) symmetric; raises :class:`InputError`.

    ``hint``: the asymmetry message suggests ``symmetric=False`` (for games that take it).
    """
    if d.ndim < 2 or d.shape[-1] != d.shape[-2]:
        raise InputError(f"{name} has shape {d.shape}: must be (..., n, n)")
    check(name, d, "finite_ge0")
    diag = np.diagonal(d, axis1=-2, axis2=-1)
    if np.any(diag != 0):
        idx = tuple(int(i) for i in np.argwhere(diag != 0)[0])
        at = ", ".join(map(str, idx[:-1] + (idx[-1], idx[-1])))
        raise InputError(f"{name}[{at}] = {float(diag[idx])!r}: the diagonal must be 0")
    if symmetric:
        t = np.swapaxes(d, -1, -2)
        bad = np.abs(d - t) > 1e-12 * np.maximum(1.0, np.abs(d))
        if np.any(bad):
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            tr = idx[:-2] + (idx[-1], idx[-2])
            raise InputError(
                f"{name}[{', '.join(map(str, idx))}] = {float(d[idx])!r} but "
                f"{name}[{', '.join(map(str, tr))}] = {float(d[tr])!r}: must be symmetric"
                + (" (pass symmetric=False for a directed cost)" if hint else "")
            )


def _prepare(game: SelfishCachingGame, dtype=None) -> _Prepared:
    if not isinstance(game, SelfishCachingGame):
        raise InputError(f"game: expected a SelfishCachingGame, got {type(game).__name__}")
    dt = _dtype(dtype)
    check_bool("SelfishCachingGame.symmetric", game.symmetric)
    d = read_real("SelfishCachingGame.distance", game.distance)
    check_distance("SelfishCachingGame.distance", d, bool(game.symmetric))
    n = d.shape[-1]
    if n < 1:
        raise InputError(
            f"SelfishCachingGame.distance has shape {d.shape}: needs at least one node"
        )
    fields = {
        "placement_cost": (game.placement_cost, "finite_ge0"),
        "demand": (1.0 if game.demand is None else game.demand, "finite_ge0"),
        "miss_cost": (np.inf if game.miss_cost is None else game.miss_cost, "pos_or_inf"),
    }
    arrs = {}
    for k, (v, rule) in fields.items():
        name = f"SelfishCachingGame.{k}"
        a = read_real(name, v)
        check(name, a, rule)
        if a.ndim and a.shape[-1] not in (1, n):
            raise InputError(
                f"{name} has shape {a.shape}: its last axis must be the {n} nodes of distance "
                f"{d.shape} (or 1, or a scalar)"
            )
        arrs[k] = a if a.ndim else a[None]
    try:
        shape = np.broadcast_shapes(d.shape[:-2], *(a.shape[:-1] for a in arrs.values()))
    except ValueError:
        shapes = {k: a.shape for k, a in arrs.items()}
        raise InputError(
            f"SelfishCachingGame: batch axes do not broadcast: distance {d.shape}, {shapes}"
        ) from None
    check_batch("SelfishCachingGame", shape)
    big = int(np.prod(shape, dtype=np.int64))
    d = np.broadcast_to(d, shape + (n, n)).reshape(big, n, n).astype(dt)
    out = {k: np.broadcast_to(a, shape + (n,)).reshape(big, n).astype(dt) for k, a in arrs.items()}
    return _Prepared(d, out["placement_cost"], out["demand"], out["miss_cost"], shape, n, dt)


# --------------------------------------------------------------------------- one instance


def _fetch(near, demand, miss):
    """``w·min(d, m)``, and 0 (not NaN) for a node without demand."""
    return jnp.where(demand > 0, demand * jnp.minimum(near, miss), 0.0)


def _off(dist):
    n = dist.shape[-1]
    return jnp.where(jnp.eye(n, dtype=bool), jnp.asarray(jnp.inf, dist.dtype), dist)


def _near(dist_off, x):
    """``min_{j ∈ x, j ≠ i} D[i, j]``, ``(n,)``, for one profile ``x (n,)``."""
    return jnp.min(jnp.where(x[None, :], dist_off, jnp.inf), axis=1)


def _cost_one(dist, alpha, demand, miss, x):
    f = _fetch(_near(_off(dist), x), demand, miss)
    return jnp.sum(jnp.where(x, alpha, f))


def _stable_one(dist, alpha, demand, miss, x, tie):
    f = _fetch(_near(_off(dist), x), demand, miss)
    t = tie * alpha  # relative: the equilibria do not depend on the unit of cost
    return jnp.all(jnp.where(x, f >= alpha - t, f <= alpha + t))


def _scaled_costs(dist, demand, miss):
    """``C[i, j] = w_i·min(D[i, j], m_i)`` (``+inf`` on the diagonal) and the empty-profile
    cost ``e_i = w_i·m_i``, both 0 where ``w_i = 0``, so that ``_fetch(near, w, m) =
    min(e_i, min_{j ∈ S, j ≠ i} C[i, j])`` bit for bit: rounding ``w·x`` is monotone in ``x``,
    so it commutes with the minimum."""
    n = dist.shape[-1]
    pos = demand > 0
    c = jnp.where(pos[:, None], demand[:, None] * jnp.minimum(dist, miss[:, None]), 0.0)
    c = jnp.where(jnp.eye(n, dtype=bool), jnp.asarray(jnp.inf, dist.dtype), c)
    return c, jnp.where(pos, demand * miss, 0.0)


def _slab_one(dist, alpha, demand, miss, top, *, tie: float):
    """The slab of profiles with top bits ``top`` of one instance, ``(H, L)``: ``+SC`` at a pure
    NE, ``−SC`` elsewhere (``SC ≥ 0`` is never ``−0.0``, so the sign bit is the NE flag)."""
    n = dist.shape[0]
    c, e = _scaled_costs(dist, demand, miss)
    g_mid, g_low, member_top = coverage.slab_tables(c, e, top)
    t = tie * alpha  # relative: the equilibria do not depend on the unit of cost
    sc, ok = 0.0, True
    for i in range(n):  # unrolled: one elementwise pass over the slab
        f = jnp.minimum(g_mid[i][:, None], g_low[i][None, :])
        u = f - alpha[i]
        inside = coverage.slab_member(i, n, member_top)
        sc = sc + jnp.where(inside, alpha[i], f)
        # x_i = 1 is stable when leaving does not pay (−u ≤ t), x_i = 0 when joining does not
        # (u ≤ t); the same summation order and tests as SC(x) and the NE check profile by
        # profile, so the results are those of a direct evaluation.
        ok = ok & (jnp.where(inside, -u, u) <= t[i])
    return jnp.where(ok, sc, -sc)


def _fold_one(carry, z, top, *, keep: int):
    """Folds one slab ``z (H, L)`` (see :func:`_slab_one`) into the running optimum, NE count,
    worst and best NE, and (``keep > 0``) the ``keep`` worst NE."""
    opt_sc, opt_ix, count, worst_sc, worst_ix, best_sc, best_ix, top_sc, top_ix = carry
    h_size, l_size = z.shape
    ne, sc = ~jnp.signbit(z), jnp.abs(z)
    inf = jnp.asarray(jnp.inf, z.dtype)
    ne_hi, ne_lo = jnp.where(ne, sc, -inf), jnp.where(ne, sc, inf)
    base = top * (h_size * l_size)

    def decode(fill):
        return lambda row: jnp.where(~jnp.signbit(row), jnp.abs(row), fill)

    # Row-wise reductions first: the first index attaining the slab's extremum is then found
    # in one row (the slab is read once per quantity, not twice).
    rows = jnp.min(sc, axis=1)
    v = jnp.min(rows)
    better = v < opt_sc  # strict: the earliest slab keeps ties, as the smallest index
    opt_ix = jnp.where(better, base + coverage.first_in_slab(z, rows, v, jnp.abs), opt_ix)
    opt_sc = jnp.minimum(v, opt_sc)
    count = count + jnp.sum(ne, dtype=jnp.int32)
    rows = jnp.max(ne_hi, axis=1)
    v = jnp.max(rows)
    better = v > worst_sc
    worst_ix = jnp.where(better, base + coverage.first_in_slab(z, rows, v, decode(-inf)), worst_ix)
    worst_sc = jnp.maximum(v, worst_sc)
    rows = jnp.min(ne_lo, axis=1)
    v = jnp.min(rows)
    better = v < best_sc
    best_ix = jnp.where(better, base + coverage.first_in_slab(z, rows, v, decode(inf)), best_ix)
    best_sc = jnp.minimum(v, best_sc)
    if keep:  # the listing (a top-k over the slab) costs more than everything else here
        index = base + jnp.arange(h_size * l_size, dtype=jnp.int32)
        top_sc, pos = jax.lax.top_k(jnp.concatenate([top_sc, ne_hi.ravel()]), keep)
        top_ix = jnp.concatenate([top_ix, index])[pos]
    return opt_sc, opt_ix, count, worst_sc, worst_ix, best_sc, best_ix, top_sc, top_ix


def _fold_init(dtype, keep: int):
    inf = jnp.asarray(jnp.inf, dtype)
    return (
        inf, jnp.int32(0), jnp.int32(0), -inf, jnp.int32(0), inf, jnp.int32(0),
        jnp.full((keep,), -inf), jnp.zeros((keep,), jnp.int32),
    )  # fmt: skip


def _exhaustive_result(carry):
    opt_sc, opt_ix, count, worst_sc, worst_ix, best_sc, best_ix, top_sc, top_ix = carry
    nan = lambda v: jnp.where(jnp.isfinite(v), v, jnp.nan)  # noqa: E731
    return dict(
        optimum_cost=opt_sc, optimum_index=opt_ix, count=count,
        worst_cost=nan(worst_sc), worst_index=worst_ix, best_cost=nan(best_sc),
        best_index=best_ix, costs=nan(top_sc), indices=top_ix,
    )  # fmt: skip


def _br_one(dist, alpha, demand, miss, x0, *, max_rounds: int, tie: float):
    """Best-response dynamics from ``x0``; the profile, its SC, rounds and status."""
    off = _off(dist)
    t = tie * alpha  # relative: the equilibria do not depend on the unit of cost

    def deviation(x, i):
        near = jnp.min(jnp.where(x & (jnp.arange(x.shape[0]) != i), off[i], jnp.inf))
        f = _fetch(near, demand[i], miss[i])
        stay = jnp.where(x[i], alpha[i], f)
        switch = jnp.where(x[i], f, alpha[i]) + t[i]
        return stay, switch

    res = coverage.binary_best_response(deviation, x0, max_rounds=max_rounds)
    x = res.state
    return dict(
        profile=x,
        cost=_cost_one(dist, alpha, demand, miss, x),
        stable=_stable_one(dist, alpha, demand, miss, x, tie),
        rounds=res.steps,
        status=res.status,
    )


def _dedupe_one(profiles, costs, ok, *, keep: int):
    """Distinct equilibria of one instance's starts, worst first, NaN-padded to ``keep``."""
    s = profiles.shape[0]
    same = jnp.all(profiles[:, None, :] == profiles[None, :, :], axis=-1)
    earlier = jnp.tril(jnp.ones((s, s), bool), k=-1)
    dup = jnp.any(same & earlier & ok[None, :], axis=1)
    first = ok & ~dup
    order = jnp.argsort(-jnp.where(first, costs, -jnp.inf))
    k = min(keep, s)
    srt = jnp.where(first[order], costs[order], jnp.nan)[:k]
    pad = jnp.full((keep - k,), jnp.nan, costs.dtype)
    return jnp.concatenate([srt, pad]), jnp.sum(first, dtype=jnp.int32), order[:k]


def _lagrangian(dist, alpha, demand, miss, v):
    c = demand[:, None] * dist  # c[i, j]: node i served by a replica at j
    open_j = jnp.minimum(0.0, alpha + jnp.sum(jnp.minimum(0.0, c - v[:, None]), axis=0))
    missv = jnp.where(jnp.isinf(miss), 0.0, jnp.minimum(0.0, demand * miss - v))
    return jnp.sum(v) + jnp.sum(open_j) + jnp.sum(missv)


def _bound_one(dist, alpha, demand, miss, *, steps: int, lr: float):
    """Best Lagrangian lower bound seen by Adam ascent (each iterate is a valid bound)."""
    off = _off(dist)
    near = _fetch(jnp.min(off, axis=1), demand, miss)  # w_i·(distance to the nearest other)
    v0 = jnp.minimum(alpha, near)
    # Adam's steps are relative to this scale: the typical size of a node's cost.
    scale = jnp.mean(alpha) + jnp.mean(jnp.where(jnp.isfinite(v0), v0, 0.0))
    scale = jnp.where(scale > 0, scale, 1.0)
    opt = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.01))
    fn = lambda u: -_lagrangian(dist, alpha, demand, miss, u * scale)  # noqa: E731
    vg = jax.value_and_grad(fn)

    def body(_, carry):
        u, state, best = carry
        val, g = vg(u)
        upd, state = opt.update(g, state, u)
        return optax.apply_updates(u, upd), state, jnp.maximum(best, -val)

    u0 = v0 / scale
    u, _, best = jax.lax.fori_loop(0, steps, body, (u0, opt.init(u0), -fn(u0)))
    return jnp.maximum(best, -fn(u))


def _local_search_one(dist, alpha, demand, miss, x0, *, max_steps: int):
    """Best-improvement single-flip local search on SC from ``x0``."""
    n = x0.shape[0]
    flips = jnp.eye(n, dtype=bool)
    cost = lambda x: _cost_one(dist, alpha, demand, miss, x)  # noqa: E731

    def cond(c):
        x, sc, k, moved = c
        return moved & (k < max_steps)

    def body(c):
        x, sc, k, _ = c
        cand = x[None, :] ^ flips  # (n, n): profile with bit i flipped
        scs = jax.vmap(cost)(cand)
        i = jnp.argmin(scs)
        better = scs[i] < sc * (1 - 1e-12)
        return jnp.where(better, cand[i], x), jnp.where(better, scs[i], sc), k + 1, better

    x, sc, _, _ = jax.lax.while_loop(cond, body, (x0, cost(x0), jnp.int32(0), jnp.bool_(True)))
    return x, sc


# --------------------------------------------------------------------------- batch edge


def _v(fn, **kw):
    return jax.vmap(functools.partial(fn, **kw))


# The slab and its reductions are two compiled calls on purpose: in one, XLA fuses the slab's
# elementwise pass into every reduction that reads it and recomputes it four or five times.
@functools.partial(jax.jit, static_argnames=("tie",))
def _slab_batch(dist, alpha, demand, miss, top, *, tie):
    fn = jax.vmap(functools.partial(_slab_one, tie=tie), in_axes=(0, 0, 0, 0, None))
    return fn(dist, alpha, demand, miss, top)


@functools.partial(jax.jit, static_argnames=("keep", "first", "last"))
def _fold_batch(carry, z, top, *, keep, first, last):
    if first:  # carry is None
        carry = jax.vmap(lambda _: _fold_init(z.dtype, keep))(jnp.arange(z.shape[0]))
    carry = jax.vmap(functools.partial(_fold_one, keep=keep), in_axes=(0, 0, None))(carry, z, top)
    return jax.vmap(_exhaustive_result)(carry) if last else carry


def _exhaustive_batch(dist, alpha, demand, miss, *, keep, tie):
    """All ``2ⁿ`` profiles of a chunk of instances, slab by slab (dispatched asynchronously)."""
    slabs = 2 ** coverage.block_split(dist.shape[-1])[0]
    carry = None
    for top in range(slabs):
        z = _slab_batch(dist, alpha, demand, miss, jnp.int32(top), tie=tie)
        carry = _fold_batch(
            carry, z, jnp.int32(top), keep=keep, first=top == 0, last=top == slabs - 1
        )
    return carry


@functools.partial(jax.jit, static_argnames=("max_rounds", "tie"))
def _br_batch(dist, alpha, demand, miss, x0, *, max_rounds, tie):
    """``x0 (N, S, n)``: every instance from its ``S`` starts (its data is not repeated)."""
    one = functools.partial(_br_one, max_rounds=max_rounds, tie=tie)
    return jax.vmap(jax.vmap(one, in_axes=(None, None, None, None, 0)))(
        dist, alpha, demand, miss, x0
    )


@functools.partial(jax.jit, static_argnames=("keep",))
def _dedupe_batch(profiles, costs, ok, *, keep):
    return _v(_dedupe_one, keep=keep)(profiles, costs, ok)


@functools.partial(jax.jit, static_argnames=("steps", "lr"))
def _bound_batch(dist, alpha, demand, miss, *, steps, lr):
    return _v(_bound_one, steps=steps, lr=lr)(dist, alpha, demand, miss)


@functools.partial(jax.jit, static_argnames=("max_steps",))
def _local_batch(dist, alpha, demand, miss, x0, *, max_steps):
    return _v(_local_search_one, max_steps=max_steps)(dist, alpha, demand, miss, x0)


@functools.partial(jax.jit, static_argnames=("tie",))
def _check_batch(dist, alpha, demand, miss, x, *, tie):
    cost = jax.vmap(_cost_one)(dist, alpha, demand, miss, x)
    stable = jax.vmap(functools.partial(_stable_one, tie=tie))(dist, alpha, demand, miss, x)
    return cost, stable


def chunk_threads() -> int:
    """Chunks :func:`_chunked` runs at once: ``POA_JAX_CHUNK_THREADS`` if set, else the CPU
    count on the CPU backend and 1 on an accelerator.

    On the CPU, XLA splits each fused loop over its thread pool, and the small loops of these
    solvers leave the cores partly idle; two calls in flight fill them (2-core CPU, fluid
    8 × 4 × 256, N = 512: steady 5.05–5.09 s → 4.28–4.43 s; the equilibria's 8-lane calls
    0.82 → 0.43–0.57 s; 4 threads as 2).
    """
    raw = os.environ.get("POA_JAX_CHUNK_THREADS")
    if raw is None:
        return (os.cpu_count() or 1) if jax.default_backend() == "cpu" else 1
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise InputError(f"POA_JAX_CHUNK_THREADS = {raw!r}: must be an integer >= 1")
    return n


def _chunked(fn, arrays, chunk: int, **kw):
    """Calls jitted ``fn(*arrays)`` on fixed-size chunks of the leading axis (one compile per
    size); ``arrays`` is a tuple of arrays or pytrees of arrays.

    The chunk is ``min(chunk, next power of two ≥ N)``; a short last chunk is padded by
    repeating its first row. Chunks run :func:`chunk_threads` at a time, except the first
    call of a signature, which runs alone (it compiles). Chunks are independent, so the
    results do not depend on how many run at once.
    """
    tm = jax.tree_util.tree_map
    n = jax.tree_util.tree_leaves(arrays)[0].shape[0]
    if n == 0:  # the games' checks reject empty batches; a safety net for internal callers
        raise InputError("empty batch: nothing to solve (a batch axis has length 0)")
    size = max(1, min(chunk, 1 << max(n - 1, 0).bit_length()))

    def one(lo):
        sub = tm(lambda a: a[lo : lo + size], arrays)
        short = size - min(size, n - lo)
        if short:
            pad = lambda s, k=short: np.concatenate(
                [np.asarray(s), np.repeat(np.asarray(s)[:1], k, 0)]
            )  # noqa: E731, E501
            sub = tm(pad, sub)
        out = jax.device_get(fn(*sub, **kw))
        return tm(lambda o, m=size - short: np.asarray(o)[:m], out)

    starts = list(range(0, n, size))
    threads = chunk_threads()
    # The first call of a shape runs alone: it compiles, and concurrent first calls would
    # compile the same program twice.
    leaves = jax.tree_util.tree_leaves(arrays)
    shapes = tuple((np.shape(a)[1:], str(getattr(a, "dtype", type(a)))) for a in leaves)
    sig = (fn, size, repr(sorted(kw.items())), shapes)
    parts = []
    if sig not in _COMPILED:
        parts.append(one(starts.pop(0)))
        _COMPILED.add(sig)
    if threads > 1 and len(starts) > 1:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            parts += list(pool.map(one, starts))
    else:
        parts += [one(lo) for lo in starts]
    return tm(lambda *p: np.concatenate(p), *parts)


def _compacted(fn, arrays, state, lanes: int, max_rounds: int):
    """Rounds of jitted ``fn(*arrays, *state) -> (state, more)`` on ``lanes`` instances at a
    time, each instance until its own ``more`` is false or it has had ``max_rounds`` rounds.

    ``arrays`` and ``state`` (tuples of arrays, or one array for ``state``) have the instances
    on their leading axis; ``state`` is returned updated. A finished instance leaves its slot
    at once and the next one waiting takes it, so a call costs what its live lanes need, not
    what the slowest instance of a fixed chunk needs (the polish of the fluid optimum: 8.2
    passes per 64-instance chunk → 5.1 per instance). Slots empty once nothing waits are
    filled with a copy of a live lane (its result is dropped), so every call has one shape,
    ``min(lanes, next power of two ≥ N)``. :func:`chunk_threads` slot sets run at once,
    drawing from one queue; an instance's rounds never depend on which others share its call.
    """
    single = not isinstance(state, tuple)
    states = tuple(np.array(a, copy=True) for a in ((state,) if single else state))
    n = states[0].shape[0]
    if n == 0 or max_rounds < 1:
        return states[0] if single else states
    size = max(1, min(lanes, 1 << max(n - 1, 0).bit_length()))
    waiting = iter(range(n))
    lock = threading.Lock()
    compiled = threading.Event()
    sig = (fn, size, tuple((np.shape(a)[1:], str(np.asarray(a).dtype)) for a in arrays + states))
    if sig in _COMPILED:
        compiled.set()

    def run(first: bool):
        try:
            slots_loop(first)
        finally:  # a failed first call must not leave the others waiting
            compiled.set()

    def slots_loop(first: bool):
        slots = np.full(size, -1)
        rounds = np.zeros(size, int)
        while True:
            with lock:
                for k in np.flatnonzero(slots < 0):
                    slots[k] = next(waiting, -1)
                    rounds[k] = 0
            live = slots >= 0
            if not live.any():
                return
            if not first:
                compiled.wait()
            idx = np.where(live, slots, slots[live][0])
            new, more = jax.device_get(fn(*(a[idx] for a in arrays + states)))
            new = (new,) if single else new
            if first:
                _COMPILED.add(sig)
                compiled.set()
                first = False
            rounds += live
            for a, b in zip(states, new, strict=True):
                a[slots[live]] = b[live]
            slots[live & (~np.asarray(more, bool) | (rounds >= max_rounds))] = -1

    threads = min(chunk_threads(), -(-n // size))
    if threads > 1:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            jobs = [pool.submit(run, i == 0) for i in range(threads)]
            for job in jobs:
                job.result()
    else:
        run(True)
    return states[0] if single else states


#: Call signatures :func:`_chunked` has run (their programs are compiled).
_COMPILED: set = set()


def _bits_of(index: np.ndarray, n: int) -> np.ndarray:
    return ((np.asarray(index)[..., None] >> np.arange(n)) & 1).astype(bool)


@dataclasses.dataclass(frozen=True)
class Exhaustive:
    """Exact results of full enumeration; ``...`` the batch shape, ``E = keep``.

    Attributes:
      optimum_cost: ``(...)`` min SC over all profiles.
      optimum: ``(..., n)`` bool, an optimal profile.
      equilibrium_count: ``(...)`` number of pure Nash equilibria.
      equilibrium_costs: ``(..., E)`` SC of the ``E`` worst equilibria, worst first, NaN-padded
        (all of them when ``equilibrium_count ≤ E``).
      equilibria: ``(..., E, n)`` bool, the corresponding profiles (meaningless where NaN).
      worst_cost, best_cost: ``(...)`` SC of the worst and best pure equilibrium (NaN if none).
      worst_equilibrium, best_equilibrium: ``(..., n)`` bool.
    """

    optimum_cost: np.ndarray
    optimum: np.ndarray
    equilibrium_count: np.ndarray
    equilibrium_costs: np.ndarray
    equilibria: np.ndarray
    worst_cost: np.ndarray
    best_cost: np.ndarray
    worst_equilibrium: np.ndarray
    best_equilibrium: np.ndarray


def enumerate_profiles(
    game: SelfishCachingGame, *, keep: int = KEEP, dtype=None, chunk: int | None = None
) -> Exhaustive:
    """Exact optimum and pure Nash equilibria by enumerating all ``2ⁿ`` profiles (batched).

    Args:
      game: a :class:`SelfishCachingGame` batch with ``n ≤ 24`` (``2ⁿ`` work per instance).
      keep: equilibria listed per instance, ``≥ 0`` (the count, the worst and the best are exact
        regardless; ``keep = 0`` skips the listing, which is the costliest part).
      dtype: float32 or float64 (default JAX's default float).
      chunk: instances per compiled call (default: ``SLAB_BUDGET`` profiles per call).

    Returns:
      An :class:`Exhaustive`.
    """
    p = _prepare(game, dtype)
    if p.n > 24:
        raise InputError(f"enumerate_profiles: n = {p.n} nodes: must be <= 24 (2^n profiles)")
    keep = _integer("keep", keep, 0)
    slab = 2 ** sum(coverage.block_split(p.n)[1:])
    if chunk is None:
        chunk = max(1, 1 << int(np.log2(max(SLAB_BUDGET // slab, 1))))
    chunk = _positive_int("chunk", chunk)
    out = _chunked(
        _exhaustive_batch, (p.dist, p.alpha, p.demand, p.miss), chunk,
        keep=keep, tie=TIE[p.dtype],
    )  # fmt: skip
    sh = p.batch_shape
    costs = out["costs"].reshape(sh + (keep,))
    return Exhaustive(
        optimum_cost=out["optimum_cost"].reshape(sh),
        optimum=_bits_of(out["optimum_index"], p.n).reshape(sh + (p.n,)),
        equilibrium_count=out["count"].reshape(sh),
        equilibrium_costs=costs,
        equilibria=_bits_of(out["indices"], p.n).reshape(sh + (keep, p.n)),
        worst_cost=out["worst_cost"].reshape(sh),
        best_cost=out["best_cost"].reshape(sh),
        worst_equilibrium=_bits_of(out["worst_index"], p.n).reshape(sh + (p.n,)),
        best_equilibrium=_bits_of(out["best_index"], p.n).reshape(sh + (p.n,)),
    )


def _integer(name, v, low: int, high: int = INT32_MAX) -> int:
    """``v`` as an ``int``, or :class:`InputError`: a whole number (not a bool) in
    ``[low, high]`` (a Python int of any size is refused by the bound, not by NumPy)."""
    number = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
    ok = number and not isinstance(v, np.bool_)
    ok = ok and (isinstance(v, int) or bool(np.isfinite(v))) and int(v) == v and low <= v <= high
    if not ok:
        raise InputError(f"{name} = {v!r}: must be an integer >= {low} (and <= {high})")
    return int(v)


def _positive_int(name, v) -> int:
    return _integer(name, v, 1)


def _seed(v) -> int:
    return _integer("seed", v, 0, SEED_MAX)


def _starts(v) -> int:
    return _integer("starts", v, 1, MAX_STARTS)


def check_tol(tol) -> None:
    """``tol`` of the generic entry points: None or finite and > 0 (:class:`InputError`)."""
    if tol is None:
        return
    number = isinstance(tol, (int, float, np.integer, np.floating))
    if isinstance(tol, (bool, np.bool_)) or not number or not (np.isfinite(tol) and tol > 0):
        raise InputError(f"tol = {tol!r}: must be finite and > 0")


def check_method(
    method,
    solver: str = "the discrete caching game is solved by enumeration "
    "(n <= exhaustive_max) or best response",
) -> None:
    """``method`` of the generic entry points for games with one solver: ``"auto"`` only."""
    if method != "auto":
        raise InputError(f"method {method!r}: {solver}; must be 'auto'")


def start_profiles(batch: int, n: int, starts: int, seed: int = 0) -> np.ndarray:
    """``(batch, starts, n)`` bool: start 0 empty, 1 full, then random with random densities.

    The random starts are drawn from ``seed`` alone, ``(starts, n)``, and shared by every
    instance: an instance's starts, and so its results, do not depend on the rest of the batch.
    """
    rng = np.random.default_rng(seed)
    dens = rng.uniform(0.05, 0.6, size=(starts, 1))
    x = rng.random((starts, n)) < dens
    x[0] = False
    if starts > 1:
        x[1] = True
    return np.array(np.broadcast_to(x, (batch, starts, n)))


@dataclasses.dataclass(frozen=True)
class BestResponse:
    """Best-response dynamics from ``S`` starts; ``...`` the batch shape.

    Attributes:
      profiles: ``(..., S, n)`` bool, final profile of every start.
      costs: ``(..., S)`` their SC.
      stable: ``(..., S)`` bool, the profile is a pure NE (checked independently of the loop).
      rounds: ``(..., S)`` rounds of best response run.
      status: ``(..., S)`` 0 converged (a round without a switch), 1 out of rounds.
      equilibrium_costs: ``(..., E)`` distinct equilibria found, worst first, NaN-padded.
      equilibrium_count: ``(...)`` number of distinct equilibria found.
      worst, best: ``(..., n)`` bool, worst and best equilibrium found (start 0's profile if none).
    """

    profiles: np.ndarray
    costs: np.ndarray
    stable: np.ndarray
    rounds: np.ndarray
    status: np.ndarray
    equilibrium_costs: np.ndarray
    equilibrium_count: np.ndarray
    worst: np.ndarray
    best: np.ndarray


def best_response(
    game: SelfishCachingGame,
    *,
    starts: int = 16,
    seed: int = 0,
    max_rounds: int = 100,
    keep: int = KEEP,
    x0=None,
    dtype=None,
    tol: float | None = None,
) -> BestResponse:
    """Pure Nash equilibria by sequential best-response dynamics from many starts (batched).

    Args:
      game: a :class:`SelfishCachingGame` batch.
      starts: starts per instance (:func:`start_profiles`), ignored when ``x0`` is given.
      seed: seed of the random starts, an integer >= 0.
      max_rounds: bound on best-response rounds per start.
      keep: distinct equilibria listed per instance.
      x0: optional starts ``(..., S, n)`` bool.
      dtype: float32 or float64.
      tol: accepted for :func:`poa_jax.solve_equilibrium`: None or finite and > 0. The
        equilibria are exact (ties within :data:`TIE`), so it changes nothing.

    Returns:
      A :class:`BestResponse`.
    """
    check_tol(tol)
    starts = _starts(starts)
    seed = _seed(seed)
    p = _prepare(game, dtype)
    max_rounds = _positive_int("max_rounds", max_rounds)
    keep = _positive_int("keep", keep)
    big = p.dist.shape[0]
    if x0 is None:
        x = start_profiles(big, p.n, starts, seed)
    else:
        x = read_profiles("x0", x0, p.n)
        try:
            x = np.broadcast_to(x, p.batch_shape + x.shape[-2:]).reshape(big, -1, p.n)
        except ValueError:
            raise InputError(f"x0 has shape {np.shape(x0)}: must be (..., S, {p.n})") from None
    s = x.shape[1]
    out = _chunked(
        _br_batch, (p.dist, p.alpha, p.demand, p.miss, x), max(1, LANES // s),
        max_rounds=max_rounds, tie=TIE[p.dtype],
    )  # fmt: skip
    prof = out["profile"].reshape(big, s, p.n)
    cost = out["cost"].reshape(big, s)
    stable = out["stable"].reshape(big, s)
    costs, count, order = _dedupe_batch(prof, cost, stable, keep=keep)
    costs, count, order = (np.asarray(a) for a in (costs, count, order))
    rows = np.arange(big)
    worst = prof[rows, order[:, 0]]
    best_i = np.argmin(np.where(stable, cost, np.inf), axis=1)
    best = prof[rows, best_i]
    sh = p.batch_shape
    return BestResponse(
        profiles=prof.reshape(sh + (s, p.n)),
        costs=cost.reshape(sh + (s,)),
        stable=stable.reshape(sh + (s,)),
        rounds=out["rounds"].reshape(sh + (s,)),
        status=out["status"].reshape(sh + (s,)),
        equilibrium_costs=costs.reshape(sh + (keep,)),
        equilibrium_count=count.reshape(sh),
        worst=worst.reshape(sh + (p.n,)),
        best=best.reshape(sh + (p.n,)),
    )


def lower_bound(
    game: SelfishCachingGame, *, steps: int = 400, lr: float = 0.05, dtype=None
) -> np.ndarray:
    """Lagrangian (= LP-relaxation) lower bound on SC(opt), ``(...)``; see the module notes."""
    p = _prepare(game, dtype)
    steps = _positive_int("steps", steps)
    real = isinstance(lr, (int, float, np.integer, np.floating))
    if isinstance(lr, (bool, np.bool_)) or not real or not (np.isfinite(lr) and lr > 0):
        raise InputError(f"lr = {lr!r}: must be finite and > 0")
    out = _chunked(
        _bound_batch, (p.dist, p.alpha, p.demand, p.miss), LANES, steps=steps, lr=float(lr)
    )
    return np.asarray(out).reshape(p.batch_shape)


def local_search(
    game: SelfishCachingGame, x0, *, max_steps: int | None = None, dtype=None
) -> tuple[np.ndarray, np.ndarray]:
    """Single-flip best-improvement local search from ``x0 (..., n)``: ``(profile, SC)``."""
    p = _prepare(game, dtype)
    x = read_profiles("x0", x0, p.n)
    try:
        x = np.broadcast_to(x, p.batch_shape + (p.n,)).reshape(-1, p.n)
    except ValueError:
        raise InputError(
            f"x0 has shape {x.shape}: must broadcast to the batch, {p.batch_shape + (p.n,)}"
        ) from None
    steps = 4 * p.n if max_steps is None else _positive_int("max_steps", max_steps)
    prof, sc = _chunked(
        _local_batch, (p.dist, p.alpha, p.demand, p.miss, x), LANES, max_steps=steps
    )
    return prof.reshape(p.batch_shape + (p.n,)), sc.reshape(p.batch_shape)


def social_cost(game: SelfishCachingGame, x, dtype=None) -> np.ndarray:
    """``SC(x)`` for profiles ``x (..., n)`` bool, ``(...)``."""
    return _evaluate(game, x, dtype)[0]


def is_equilibrium(game: SelfishCachingGame, x, dtype=None) -> np.ndarray:
    """Whether profiles ``x (..., n)`` are pure Nash equilibria, ``(...)`` bool."""
    return _evaluate(game, x, dtype)[1]


def _evaluate(game, x, dtype):
    p = _prepare(game, dtype)
    x = read_profiles("x", x, p.n)
    try:
        shape = np.broadcast_shapes(p.batch_shape, x.shape[:-1])
    except ValueError:
        raise InputError(f"x has shape {x.shape}: must broadcast to (..., {p.n})") from None

    def b(a, tail):
        a = a.reshape(p.batch_shape + tail)
        return np.broadcast_to(a, shape + tail).reshape((-1,) + tail)

    xs = np.broadcast_to(x, shape + (p.n,)).reshape(-1, p.n)
    nn, n1 = (p.n, p.n), (p.n,)
    cost, stable = _check_batch(
        b(p.dist, nn), b(p.alpha, n1), b(p.demand, n1), b(p.miss, n1), xs, tie=TIE[p.dtype]
    )
    return np.asarray(cost).reshape(shape), np.asarray(stable).reshape(shape)


# --------------------------------------------------------------------------- PoA


@dataclasses.dataclass(frozen=True)
class CachingPoAResult:
    """PoA of a batch of selfish caching games; ``...`` the batch shape. Every field is an
    ndarray (0-d for one game); costs and ratios are in the game's dtype.

    Attributes:
      poa: ``(...)`` SC(worst equilibrium) / SC(opt). Exact where ``exact``; otherwise worst
        found / best profile found (a lower bound on the true PoA).
      price_of_stability: ``(...)`` SC(best equilibrium) / SC(opt) (exact where ``exact``;
        otherwise best found / best profile found, an estimate and no bound either way: the
        best found is ≥ the best equilibrium, the best profile found ≥ SC(opt); best found /
        ``optimum_lower_bound`` is an upper bound). NaN where no equilibrium was found.
      poa_upper: ``(...)`` worst found / ``optimum_lower_bound`` (= ``poa`` where exact).
      optimum_cost: ``(...)`` SC(opt) (exact), or the best profile found (an upper bound).
      optimum_lower_bound: ``(...)`` = ``optimum_cost`` where exact, else the LP bound.
      equilibrium_costs: ``(..., E)`` distinct pure equilibria (all, or all found), worst first,
        NaN-padded.
      equilibrium_count: ``(...)`` number of pure equilibria (exact), or distinct ones found.
      worst_equilibrium, best_equilibrium, optimum: ``(..., n)`` bool profiles.
      exact: ``(...)`` bool, solved by exhaustive enumeration.
      converged: ``(...)`` bool, an equilibrium was found (when exact: one exists, always so
        for a symmetric distance; a directed one can have none).
      status: ``(...)`` 0 converged, 1 no equilibrium found.
      iterations: ``(...)`` best-response rounds of the slowest start (0 when exact).
    """

    poa: np.ndarray
    price_of_stability: np.ndarray
    poa_upper: np.ndarray
    optimum_cost: np.ndarray
    optimum_lower_bound: np.ndarray
    equilibrium_costs: np.ndarray
    equilibrium_count: np.ndarray
    worst_equilibrium: np.ndarray
    best_equilibrium: np.ndarray
    optimum: np.ndarray
    exact: np.ndarray
    converged: np.ndarray
    status: np.ndarray
    iterations: np.ndarray


def _ratio(a, b):
    """``a / b`` in their dtype (``inf`` for ``a > 0 = b``, 1 for ``0 / 0``), an ndarray."""
    a, b = np.asarray(a), np.asarray(b)
    dt = np.result_type(a, b)
    one, inf = np.ones((), dt), np.asarray(np.inf, dt)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(b > 0, a / np.where(b > 0, b, one), np.where(a > 0, inf, one))
    return np.asarray(r, dt)


def price_of_anarchy(
    game: SelfishCachingGame,
    *,
    starts: int = 16,
    seed: int = 0,
    max_rounds: int = 100,
    keep: int = KEEP,
    exhaustive_max: int = EXHAUSTIVE_MAX,
    bound_steps: int = 400,
    dtype=None,
    tol: float | None = None,
    method: str = "auto",
) -> CachingPoAResult:
    """PoA and price of stability of every selfish caching game in the batch.

    ``n ≤ exhaustive_max``: exact, by :func:`enumerate_profiles`. Larger ``n``:
    :func:`best_response` from ``starts`` starts, :func:`local_search` from the best equilibrium
    for the optimum's upper bound and :func:`lower_bound` for its lower bound. Every option is
    checked whichever path runs; ``tol`` (None or finite and > 0) and ``method`` (``"auto"``)
    are accepted for :func:`poa_jax.price_of_anarchy` and change nothing (the equilibria are
    exact). The ratios are in the game's dtype, as the costs.

    Returns:
      A :class:`CachingPoAResult` (``exact`` says which numbers are exact).
    """
    check_tol(tol)
    check_method(method)
    starts = _starts(starts)
    seed = _seed(seed)
    max_rounds = _positive_int("max_rounds", max_rounds)
    keep = _integer("keep", keep, 0)
    exhaustive_max = _integer("exhaustive_max", exhaustive_max, 0)
    bound_steps = _positive_int("bound_steps", bound_steps)
    p = _prepare(game, dtype)
    sh, n = p.batch_shape, p.n
    if n <= exhaustive_max:
        ex = enumerate_profiles(game, keep=keep, dtype=dtype)
        found = np.asarray(ex.equilibrium_count > 0)
        poa = _ratio(ex.worst_cost, ex.optimum_cost)
        return CachingPoAResult(
            poa=poa,
            price_of_stability=_ratio(ex.best_cost, ex.optimum_cost),
            poa_upper=poa,
            optimum_cost=ex.optimum_cost,
            optimum_lower_bound=ex.optimum_cost,
            equilibrium_costs=ex.equilibrium_costs,
            equilibrium_count=ex.equilibrium_count,
            worst_equilibrium=ex.worst_equilibrium,
            best_equilibrium=ex.best_equilibrium,
            optimum=ex.optimum,
            exact=np.ones(sh, bool),
            converged=found,
            status=np.where(found, CONVERGED, MAX_ITERS).astype(np.int32),
            iterations=np.zeros(sh, np.int32),
        )
    # keep = 0 lists none (as on the exact path), but the worst needs one column
    br = best_response(game, starts=starts, seed=seed, max_rounds=max_rounds,
                       keep=max(keep, 1), dtype=dtype)  # fmt: skip
    found = np.asarray(br.stable.any(-1))
    worst = br.equilibrium_costs[..., 0]
    best_sc = np.asarray(np.where(br.stable, br.costs, np.inf).min(-1), p.dtype)
    opt_x, opt_sc, lb = _searched_optimum(game, p, br, best_sc, bound_steps, dtype)
    best_found = np.where(found, best_sc, np.nan)  # NaN, as the worst, when none was found
    return CachingPoAResult(
        poa=_ratio(worst, opt_sc),
        price_of_stability=_ratio(best_found, opt_sc),
        poa_upper=_ratio(worst, lb),
        optimum_cost=opt_sc,
        optimum_lower_bound=lb,
        equilibrium_costs=br.equilibrium_costs[..., :keep],
        equilibrium_count=br.equilibrium_count,
        worst_equilibrium=br.worst,
        best_equilibrium=br.best,
        optimum=opt_x,
        exact=np.zeros(sh, bool),
        converged=found,
        status=np.where(found, CONVERGED, MAX_ITERS).astype(np.int32),
        iterations=np.asarray(br.rounds.max(-1)),
    )


def _searched_optimum(game, p: _Prepared, br: BestResponse, best_sc, bound_steps: int, dtype):
    """Best profile by local search from every start's final profile (an upper bound on
    SC(opt), never above ``best_sc``) and the LP lower bound: ``(profile, SC, bound)``."""
    sh, n = p.batch_shape, p.n
    s = br.profiles.shape[-2]
    rep = lambda a: np.repeat(a[:, None], s, axis=1)  # noqa: E731
    many = SelfishCachingGame(rep(p.dist), rep(p.alpha), rep(p.demand), rep(p.miss), False)
    xs, scs = local_search(many, br.profiles.reshape(-1, s, n), dtype=dtype)
    pick = np.argmin(scs, axis=-1)
    rows = np.arange(scs.shape[0])
    opt_x = xs[rows, pick].reshape(sh + (n,))
    opt_sc = np.asarray(np.minimum(scs[rows, pick].reshape(sh), best_sc), p.dtype)
    lb = np.asarray(np.minimum(lower_bound(game, steps=bound_steps, dtype=dtype), opt_sc), p.dtype)
    return opt_x, opt_sc, lb


@dataclasses.dataclass(frozen=True)
class CachingOptimum:
    """The coordinated optimum of selfish caching games; ``...`` the batch shape.

    Attributes:
      profile: ``(..., n)`` bool, the best profile found (optimal where ``exact``).
      social_cost: ``(...)`` its SC: SC(opt) where ``exact``, else an upper bound.
      lower_bound: ``(...)`` = ``social_cost`` where exact, else the LP-relaxation bound.
      exact: ``(...)`` bool, found by enumerating all ``2ⁿ`` profiles.
    """

    profile: np.ndarray
    social_cost: np.ndarray
    lower_bound: np.ndarray
    exact: np.ndarray


def solve_optimum(
    game: SelfishCachingGame,
    *,
    exhaustive_max: int = EXHAUSTIVE_MAX,
    starts: int = 16,
    seed: int = 0,
    bound_steps: int = 400,
    dtype=None,
) -> CachingOptimum:
    """SC-minimising profiles: exact by enumeration for ``n ≤ exhaustive_max``; above, local
    search from best-response starts with the LP lower bound (as :func:`price_of_anarchy`)."""
    exhaustive_max = _integer("exhaustive_max", exhaustive_max, 0)
    starts = _starts(starts)
    seed = _seed(seed)
    bound_steps = _positive_int("bound_steps", bound_steps)
    p = _prepare(game, dtype)
    if p.n <= exhaustive_max:
        ex = enumerate_profiles(game, keep=0, dtype=dtype)
        c = ex.optimum_cost
        return CachingOptimum(ex.optimum, c, c, np.ones(p.batch_shape, bool))
    br = best_response(game, starts=starts, seed=seed, dtype=dtype)
    best_sc = np.where(br.stable, br.costs, np.inf).min(-1)
    x, sc, lb = _searched_optimum(game, p, br, best_sc, bound_steps, dtype)
    return CachingOptimum(x, sc, lb, np.zeros(p.batch_shape, bool))


# --------------------------------------------------------------------------- cache paradox


def paradox_search(
    distance,
    placement_cost,
    demand=None,
    *,
    miss_cost=None,
    dtype=None,
) -> dict:
    """Exact search for a discrete cache paradox in a batch of games (``n + 1 ≤ 16`` nodes).

    For each instance, two comparisons, both by exhaustive enumeration:

    * **adding a cache node**: the game on the first ``n`` nodes (the last node removed)
      against the full game; a paradox when the *original nodes'* cost at the worst (or best)
      equilibrium rises, i.e. ``SC_{n+1}(x) − c_{new}(x) > SC_n(x')`` for the worst (best)
      equilibria ``x, x'``;
    * **adding capacity** (cheaper placement at node 0, ``α_0 → α_0/2``): a paradox when the
      worst (best) equilibrium's SC rises.

    Args:
      distance: ``(B, n+1, n+1)``; placement_cost, demand, miss_cost: ``(B, n+1)`` or
        broadcastable (:class:`SelfishCachingGame`'s fields; ``miss_cost`` default ``inf``).

    The enumeration picks the equilibria in ``dtype``; the rises are then recomputed in float64
    from their profiles (a difference of two close float32 sums would be rounding), and a rise
    counts as a paradox past ``TIE[dtype]`` relative to the game's cost (the ties
    within which the enumeration's worst and best are arbitrary).

    Returns:
      A dict of float64 arrays of the batch shape: ``node_worst``, ``node_best`` (cost rise of
      the original nodes, > 0 = paradox), ``capacity_worst``, ``capacity_best`` (SC rise); the
      counts ``node_paradox_worst`` … ``capacity_paradox_best`` and ``instances``.
    """
    full = SelfishCachingGame(distance, placement_cost, demand, miss_cost)
    p = _prepare(full, dtype)
    n1 = p.n
    if n1 > 16:
        raise InputError(f"paradox_search: n + 1 = {n1} nodes: must be <= 16")
    if n1 < 2:
        raise InputError(
            f"paradox_search: n + 1 = {n1} node: needs at least 2 (the last one is the node added)"
        )
    sh = p.batch_shape
    small = SelfishCachingGame(p.dist[:, :-1, :-1], p.alpha[:, :-1], p.demand[:, :-1],
                               p.miss[:, :-1])  # fmt: skip
    alpha2 = p.alpha.copy()
    alpha2[:, 0] *= 0.5
    cheaper = SelfishCachingGame(p.dist, alpha2, p.demand, p.miss)
    ex = {k: enumerate_profiles(g, keep=0, dtype=dtype)
          for k, g in (("full", full), ("small", small), ("cheap", cheaper))}  # fmt: skip
    prep = {"full": p, "small": _prepare(small, dtype), "cheap": _prepare(cheaper, dtype)}

    def costs(game, which, nodes=None):
        """Float64 node costs of an enumerated equilibrium, summed over ``nodes``: the
        enumeration picks the profiles in ``dtype``, the rises are differences of costs that
        can be close, so they are recomputed exactly from the profiles."""
        q = prep[game]
        c = _node_costs(q, getattr(ex[game], which).reshape(-1, q.n))
        return c[:, : nodes or q.n].sum(-1).reshape(sh)

    rises, tol = {}, TIE[p.dtype]
    for kind, which in (("worst", "worst_equilibrium"), ("best", "best_equilibrium")):
        before = costs("small", which)
        rises[f"node_{kind}"] = costs("full", which, nodes=n1 - 1) - before
        full_cost = costs("full", which)
        rises[f"capacity_{kind}"] = costs("cheap", which) - full_cost
    # a rise counts when it passes the ties of the enumeration (relative TIE[dtype])
    scale = np.abs(costs("full", "worst_equilibrium"))
    counts = {f"{k.split('_')[0]}_paradox_{k.split('_')[1]}": int(np.sum(v > tol * scale))
              for k, v in rises.items()}  # fmt: skip
    return dict(**rises, **counts, instances=int(np.prod(sh)))


def _node_costs(p: _Prepared, x: np.ndarray) -> np.ndarray:
    """Per-node costs ``(N, n)`` at profiles ``x (N, n)`` (NumPy; for reports)."""
    d = np.where(np.eye(p.n, dtype=bool), np.inf, p.dist.astype(np.float64))
    near = np.where(x[:, None, :], d, np.inf).min(-1)
    with np.errstate(invalid="ignore"):
        f = np.where(p.demand > 0, p.demand * np.minimum(near, p.miss), 0.0)
    return np.where(x, p.alpha, f)
