r"""Equilibria and optima of graph games (:mod:`poa_jax.graph`), batched.

Two methods, one result type (:class:`GraphSolution`):

* ``"paths"`` (default) — **path-based projection dynamics with column generation.** Each OD
  pair ``w`` keeps a set of paths ``Π_w`` (the union over the batch, padded to ``P`` per pair,
  with a mask per instance). On the restricted sets the equilibrium is the variational
  inequality of the path costs ``c = Δᵀ t(Δ x)`` on the product of the OD simplices, solved by
  the scaled projection dynamics of :mod:`poa_jax.kernels.vi` with the diagonal metric
  ``s_π = Σ_{e∈π} t'_e(f_e)`` (Jayakrishnan et al.'s gradient projection, Jacobi form, step
  controlled by oscillation). Every round of ``ROUND_ITERS`` iterations ends with a shortest-path
  computation at the current link costs (:func:`poa_jax.kernels.graphs.shortest_paths`): its
  distances give the *true* gap (minimum over all paths of the graph, not only the stored
  ones) and its tree paths that are not yet stored are added (column generation). An instance
  has converged when its true gap is at most ``tol``.
* ``"frank_wolfe"`` — **link-based Frank–Wolfe**: all-or-nothing loading on the shortest-path
  trees, exact line search by bisection on ``⟨t(f + α(y − f)), y − f⟩`` (the derivative of the
  Beckmann potential along the direction). The classic method; it converges sublinearly and is
  kept as the reference and for comparison (benchmarks/RESULTS.md).

* ``"descent"`` (optima only) — **gradient descent with optax**: Adam on softmax logits of the
  path flows (one softmax per OD pair) minimising ``SC`` directly, ``DESCENT_STEPS`` steps from
  the uniform split over the path set that column generation builds for the marginal costs. It
  is an independent check of the optimum's value (SiouxFalls: within 1e-3 of the published
  optimum after 3 000 steps, gap ~2e-3) and reports its own gap and status; it is not the
  fast path.

The optimum is the same computation on the marginal link cost ``t_e + f_e t'_e`` (metric
``2t'_e + f_e t''_e``), whose "potential" is ``SC`` itself; its gap is measured with marginal
costs, divided by ``SC``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from poa_jax.errors import InputError
from poa_jax.graph import GraphGame
from poa_jax.kernels import graphs, loop, ragged
from poa_jax.latency import Latency
from poa_jax.validation import as_array, check, integer

__all__ = ["GraphSolution", "solve_graph", "GRAPH_METHODS"]

GRAPH_METHODS = ("paths", "frank_wolfe", "descent")
#: optax Adam steps and learning rate of the descent optimum (``method="descent"``).
DESCENT_STEPS = 3000
DESCENT_LR = 0.05
#: Projection iterations between two shortest-path (column generation / true gap) checks.
#: SiouxFalls UE, N = 400, 2-core CPU: 25 → 35.4 s, 75 → 29.1 s, 150 → 32.1 s.
ROUND_ITERS = 75
#: CPU chunks hold about this many bytes of path state (8 path-sized arrays per lane).
CPU_CHUNK_BYTES = 2 << 20
ALPHA_MAX = 4.0
#: Heavy-ball coefficient of the path projection dynamics (:mod:`poa_jax.kernels.ragged`).
#: SiouxFalls, 24 demand scalings in [0.5, 1.5], float64, tol 1e-6 (user equilibria): mean
#: iterations 409 → 276 at 0.5, 210 at 0.8, 192 at 0.9 (max 900 → 750, 450, 351); link flows
#: unique, and the same to 1e-3 of the largest (the tolerance's reach). benchmarks/RESULTS.md,
#: ninth session.
MOMENTUM = 0.8
_LAT = ("a", "b", "c", "p", "d", "kappa", "rho_max")
_LAT_RULES = dict(
    a="finite_ge0", b="finite_ge0", c="finite_ge0", p="p", d="finite_ge0",
    kappa="pos_or_inf", rho_max="open_unit",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class GraphSolution:
    """Per-instance results of a graph game; ``...`` is the batch shape.

    Attributes:
      link_flows: ``(..., E)`` link flows ``f``.
      path_flows: ``(..., P)`` flows on the stored paths (not unique: never compare them).
      paths: the stored paths, ``((od_pair, (link, link, …)), …)`` in the order of
        ``path_flows`` (shared by the batch; empty for Frank–Wolfe, which keeps link flows only).
      social_cost: ``(...)`` total travel time ``Σ_e f_e t_e(f_e)``.
      potential: ``(...)`` Beckmann objective ``Σ_e ∫_0^{f_e} t_e``.
      mean_latency: ``(...)`` ``SC / Σ_w d_w``.
      gap: ``(...)`` relative gap against the shortest paths of the graph (marginal costs for the
        optimum).
      average_excess_cost: ``(...)`` ``(Σ x·c − Σ_w d_w min c_w) / Σ_w d_w``.
      iterations: ``(...)`` projection (or Frank–Wolfe) iterations.
      status: ``(...)`` 0 converged, 1 stopped short of ``tol`` (out of iterations, or the
        restricted path problems solved 10⁴ times tighter than ``tol`` with no new path and
        the gap still above it: rounding), 2 non-finite.
      converged: ``(...)`` bool.
      overloaded: ``(...)`` a link runs past ``ρ_max·κ``.
    """

    link_flows: np.ndarray
    path_flows: np.ndarray
    paths: tuple[tuple[int, tuple[int, ...]], ...]
    social_cost: np.ndarray
    potential: np.ndarray
    mean_latency: np.ndarray
    gap: np.ndarray
    average_excess_cost: np.ndarray
    iterations: np.ndarray
    status: np.ndarray
    converged: np.ndarray
    overloaded: np.ndarray


# --------------------------------------------------------------------------- preparation


@dataclasses.dataclass(frozen=True, eq=False)
class _Topology:
    """Static structure shared by a batch (hashed by identity of its content digest)."""

    tail: np.ndarray
    head: np.ndarray
    inlinks: np.ndarray
    thru: np.ndarray
    origins: np.ndarray  # (O,) distinct origins
    origin_index: np.ndarray  # (W,) row in `origins` per pair
    destinations: np.ndarray  # (W,)
    key: bytes

    def __hash__(self):
        return hash(self.key)

    def __eq__(self, other):
        return isinstance(other, _Topology) and self.key == other.key

    @property
    def num_links(self) -> int:
        return self.tail.shape[0]


class _Prepared(NamedTuple):
    latency: Latency  # fields (N, E)
    demand: jax.Array  # (N, W)
    link_mask: jax.Array  # (N, E) bool
    topo: _Topology
    batch_shape: tuple[int, ...]
    dtype: np.dtype


def _ints(name: str, value, n: int | None = None) -> np.ndarray:
    a = np.asarray(value)
    if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
        raise InputError(f"{name}: must be a 1-D array of integers, got shape {a.shape} {a.dtype}")
    if n is not None and a.shape[0] != n:
        raise InputError(f"{name} has {a.shape[0]} entries: must have {n}")
    return a.astype(np.int64)


def _count(name: str, value, minimum: int) -> int:
    """An integer field (``4``, ``4.0``); strings, bools and fractions are errors."""
    if isinstance(value, (str, bytes)):
        raise InputError(f"{name} = {value!r}: must be an integer >= {minimum}")
    return integer(name, value, minimum)


def prepare_graph(game: GraphGame, dtype) -> _Prepared:
    """Checks and flattens a graph game batch. Raises :class:`InputError` before compiling."""
    from poa_jax.batching import float_dtype

    dt = float_dtype(dtype)
    v = _count("GraphGame.num_nodes", game.num_nodes, 2)
    tail = _ints("GraphGame.tail", game.tail)
    e = tail.shape[0]
    if e == 0:
        raise InputError("GraphGame.tail: the graph needs at least one link")
    head = _ints("GraphGame.head", game.head, e)
    origins = _ints("GraphGame.origins", game.origins)
    w = origins.shape[0]
    if w == 0:
        raise InputError("GraphGame.origins: at least one OD pair is needed")
    dest = _ints("GraphGame.destinations", game.destinations, w)
    for name, a in (("tail", tail), ("head", head), ("origins", origins), ("destinations", dest)):
        bad = np.flatnonzero((a < 0) | (a >= v))
        if bad.size:
            i = int(bad[0])
            raise InputError(
                f"GraphGame.{name}[{i}] = {int(a[i])}: unknown node (must be in 0..{v - 1})"
            )
    loops = np.flatnonzero(tail == head)
    if loops.size:
        raise InputError(f"GraphGame.tail/head[{int(loops[0])}]: a link from a node to itself")
    same = np.flatnonzero(origins == dest)
    if same.size:
        raise InputError(f"GraphGame.origins/destinations[{int(same[0])}]: origin = destination")
    ftn = _count("GraphGame.first_thru_node", game.first_thru_node, 0)
    if not 0 <= ftn <= v:
        raise InputError(f"GraphGame.first_thru_node = {ftn}: must be in 0..{v}")

    demand = as_array("GraphGame.demand", game.demand)
    if demand.ndim == 0 or demand.shape[-1] != w:
        raise InputError(f"GraphGame.demand has shape {demand.shape}: last axis must be W = {w}")
    check("GraphGame.demand", demand, "finite_ge0")
    lat = {}
    for f in _LAT:
        name = f"GraphGame.latency.{f}"
        lat[f] = as_array(name, getattr(game.latency, f))
        check(name, lat[f], _LAT_RULES[f])
        if lat[f].ndim and lat[f].shape[-1] not in (1, e):
            raise InputError(f"{name} has shape {lat[f].shape}: last axis must be E = {e} (or 1)")
    if game.names is not None:
        try:
            names = None if isinstance(game.names, str) else tuple(game.names)
        except TypeError:
            names = None
        if names is None or len(names) != e:
            got = "a string" if names is None else f"{len(names)} entries"
            raise InputError(f"GraphGame.names has {got}: must be E = {e} link labels (or None)")
    # NaN, 2, 0.5 are not booleans
    mask = as_array("GraphGame.link_mask", game.link_mask, booleans=True)
    check("GraphGame.link_mask", mask, "zero_one")
    mask = mask.astype(bool)
    if mask.ndim and mask.shape[-1] not in (1, e):
        raise InputError(f"GraphGame.link_mask has shape {mask.shape}: last axis must be E = {e}")
    parts = [demand.shape[:-1], mask.shape[:-1]] + [a.shape[:-1] for a in lat.values()]
    try:
        batch = tuple(np.broadcast_shapes(*parts))
    except ValueError:
        raise InputError(
            f"GraphGame: leading (batch) axes do not broadcast: demand {demand.shape}, "
            f"link_mask {mask.shape}, latency {[a.shape for a in lat.values()]}"
        ) from None
    n = int(np.prod(batch, dtype=np.int64))
    if n == 0:
        raise InputError(f"GraphGame: empty batch, shape {batch}: needs at least one instance")

    def flat(a, last):
        a = a.reshape(1) if a.ndim == 0 else a
        return np.broadcast_to(a, batch + (last,)).reshape(n, last)

    to = functools.partial(jnp.asarray, dtype=dt)
    thru = np.arange(v) >= ftn
    uorig, oidx = np.unique(origins, return_inverse=True)
    inl = graphs.in_links(head, v)
    key = (
        b"".join(a.astype(np.int64).tobytes() for a in (tail, head, origins, dest))
        + bytes([v % 256, ftn % 256])
        + np.array([v, ftn, e, w], np.int64).tobytes()
    )
    topo = _Topology(tail, head, inl, thru, uorig, oidx.astype(np.int64), dest, key)
    mask_f = flat(mask, e)
    demand_f = flat(demand, w)
    _check_connected(topo, mask_f, demand_f, v)
    return _Prepared(
        Latency(**{f: to(flat(lat[f], e)) for f in _LAT}),
        to(demand_f),
        jnp.asarray(mask_f),
        topo,
        batch,
        dt,
    )


def _check_connected(topo: _Topology, mask: np.ndarray, demand: np.ndarray, v: int) -> None:
    """Every OD pair with demand > 0 must have a path in its instance (host BFS per pattern)."""
    for pattern in np.unique(mask, axis=0):
        rows = np.flatnonzero((mask == pattern).all(-1))
        need = (demand[rows] > 0).any(0)
        adj = [[] for _ in range(v)]
        for e_ in np.flatnonzero(pattern):
            adj[topo.tail[e_]].append(topo.head[e_])
        for oi, o in enumerate(topo.origins):
            seen = np.zeros(v, bool)
            seen[o] = True
            stack = [o]
            while stack:
                u = stack.pop()
                if u != o and not topo.thru[u]:
                    continue
                for h in adj[u]:
                    if not seen[h]:
                        seen[h] = True
                        stack.append(h)
            pairs = np.flatnonzero((topo.origin_index == oi) & need & ~seen[topo.destinations])
            if pairs.size:
                wi = int(pairs[0])
                raise InputError(
                    f"GraphGame.demand[..., {wi}] > 0 from node {int(o)} to node "
                    f"{int(topo.destinations[wi])}, but no path connects them"
                    + (" (with this instance's link_mask)" if not pattern.all() else "")
                )


# --------------------------------------------------------------------------- link costs


def _link_cost(lat: Latency, f: jax.Array, marginal: bool) -> jax.Array:
    t = lat.value(f)
    return t + f * lat.derivative(f) if marginal else t


def _link_slope(lat: Latency, f: jax.Array, marginal: bool) -> jax.Array:
    d1 = lat.derivative(f)
    return 2.0 * d1 + f * lat.second_derivative(f) if marginal else d1


def _measures(lat, demand, link_mask, f, topo: _Topology, marginal: bool):
    """True gap, AEC, SC, potential and the tree paths at link flows ``f`` (one instance)."""
    t = _link_cost(lat, f, marginal)
    cost = jnp.where(link_mask, t, jnp.inf)
    dist, pred = graphs.shortest_paths(cost, topo.tail, topo.origins, topo.inlinks, topo.thru)
    best = dist[jnp.asarray(topo.origin_index), jnp.asarray(topo.destinations)]  # (W,)
    true_t = lat.value(f)
    sc = jnp.sum(jnp.where(link_mask, f * true_t, 0.0))
    total = jnp.sum(jnp.where(link_mask, f * t, 0.0))
    lower = jnp.sum(jnp.where(demand > 0, demand * best, 0.0))
    shortfall = total - lower
    tiny = jnp.finfo(f.dtype).tiny
    gap = jnp.maximum(shortfall, 0.0) / jnp.maximum(jnp.abs(sc), tiny)
    aec = jnp.maximum(shortfall, 0.0) / jnp.maximum(jnp.sum(demand), tiny)
    potential = jnp.sum(jnp.where(link_mask, lat.integral(f), 0.0))
    over = jnp.any(link_mask & (f > lat.saturation()))
    # Flows that do not carry each pair's demand from its origin to its destination (a link
    # flow leaving or entering a node off balance), or that cost less than the shortest paths
    # allow, are not a solution whatever the gap says: never report them converged. The bounds
    # are far above rounding (√eps relative) and far below any real imbalance.
    v = topo.inlinks.shape[0]
    fm = jnp.where(link_mask, f, 0.0)
    div = jnp.zeros(v, f.dtype).at[jnp.asarray(topo.tail)].add(fm)
    div = div.at[jnp.asarray(topo.head)].add(-fm)
    want = jnp.zeros(v, f.dtype).at[jnp.asarray(topo.origins[topo.origin_index])].add(demand)
    want = want.at[jnp.asarray(topo.destinations)].add(-demand)
    slack = jnp.sqrt(jnp.finfo(f.dtype).eps)
    balanced = jnp.max(jnp.abs(div - want)) <= slack * jnp.maximum(jnp.sum(demand), tiny)
    balanced &= jnp.all(~link_mask | (f >= -slack * jnp.maximum(jnp.sum(demand), tiny)))
    balanced &= shortfall >= -slack * jnp.maximum(jnp.abs(total), jnp.abs(lower))
    # The shortfall is the difference of two rounded sums (Σ f·t and Σ d·dist), so it is not
    # known below ~eps·(|Σ f·t| + |Σ d·dist|); in float32 a negative rounded shortfall clipped
    # to 0 read as "gap 0, converged" with a true gap of 4× tol. Report at least that floor, so
    # a gap below the dtype's resolution is never claimed (float64: ~1e-15, no change).
    noise = (
        jnp.finfo(f.dtype).eps
        * (jnp.sum(jnp.where(link_mask, jnp.abs(f * t), 0.0)) + jnp.abs(lower))
        / jnp.maximum(jnp.abs(sc), tiny)
    )
    gap = jnp.maximum(gap, noise)
    gap = jnp.where(jnp.isfinite(gap) & balanced, gap, jnp.inf)
    aec = jnp.where(balanced, aec, jnp.inf)
    return gap, aec, sc, potential, over, pred


# --------------------------------------------------------------------------- path-based
#
# Paths are stored flat, in the order they were found (each with its OD pair as its group), with
# a dense incidence matrix (P, E): f = xᵀΔ and c = Δt are matrix products, which vmap turns into
# (N, P) × (P, E) products. Measured on SiouxFalls (100 instances, 2 048 path slots, CPU): 1.2 ms
# for the link flows against 3.8 ms with gather tables and more with scatter (segment sums); the
# flat layout avoids padding every OD pair to the largest one (6× the slots on SiouxFalls).
# Per-pair reductions are segment reductions over the pair index of each path.


class _PathCarry(NamedTuple):
    state: object
    error: jax.Array
    steps: jax.Array


class _Paths(NamedTuple):
    """The stored paths as arrays (shared by the batch); sizes padded to powers of two."""

    group: jax.Array  # (P,) OD pair of each path (padding: 0)
    valid: jax.Array  # (P,) real path
    incidence: jax.Array  # (P, E) number of times each path uses each link (0/1)
    common: jax.Array  # (W, E) links on every stored path of the pair (1) or not (0)


def _path_maps(lat, link_mask, paths: _Paths):
    inc = paths.incidence.astype(lat.a.dtype)

    def flows(x):
        return x @ inc

    def path_sum(t):
        return inc @ t

    # A stored path through a link absent in this instance is not a strategy here.
    absent = path_sum(jnp.where(link_mask, 0.0, 1.0).astype(lat.a.dtype))
    return flows, path_sum, paths.valid & (absent == 0)


def _path_iteration(lat, demand, link_mask, paths: _Paths, marginal: bool):
    flows, path_sum, valid = _path_maps(lat, link_mask, paths)
    common = paths.common.astype(lat.a.dtype)
    cost = lambda x: path_sum(_link_cost(lat, flows(x), marginal))

    def scale(x):
        # Curvature of moving flow between paths of a pair: links every one of its paths uses
        # (a shared prefill link, a common first mile) see no change, so they are left out;
        # counting them made the unit step ~100× too short on a 5-path cluster.
        slope = _link_slope(lat, flows(x), marginal)
        return path_sum(slope) - (common @ slope)[paths.group]

    it = ragged.projection_iteration(cost, scale, demand, paths.group, valid, alpha_max=ALPHA_MAX,
                                     momentum=MOMENTUM)  # fmt: skip
    return it, flows


def _path_init(lat, demand, link_mask, x0, alpha, paths, *, marginal):
    it, _ = _path_iteration(lat, demand, link_mask, paths, marginal)
    state, err = it.init(x0)
    return _PathCarry(state._replace(alpha=alpha), err, jnp.int32(0))


def _path_advance(lat, demand, link_mask, carry, tol, paths, *, marginal, budget, max_iters):
    it, _ = _path_iteration(lat, demand, link_mask, paths, marginal)
    return _PathCarry(
        *loop.advance(
            it.step, carry.state, carry.error, carry.steps,
            tol=tol, max_steps=max_iters, budget=budget,
        )
    )  # fmt: skip


def _path_check(lat, demand, link_mask, carry, paths, *, marginal, topo):
    it, flows = _path_iteration(lat, demand, link_mask, paths, marginal)
    x = it.solution(carry.state)
    f = flows(x)
    gap, aec, sc, pot, over, pred = _measures(lat, demand, link_mask, f, topo, marginal)
    tree = graphs.trace_paths(pred, topo.tail, topo.origin_index, topo.destinations)
    return dict(x=x, f=f, gap=gap, aec=aec, sc=sc, potential=pot, over=over, tree=tree)


_V = jax.vmap


@functools.partial(jax.jit, static_argnames=("marginal",))
def _j_path_init(lat, demand, link_mask, x0, alpha, paths, *, marginal):
    fn = functools.partial(_path_init, marginal=marginal)
    return _V(fn, in_axes=(0, 0, 0, 0, 0, None))(lat, demand, link_mask, x0, alpha, paths)


@functools.partial(jax.jit, static_argnames=("marginal", "budget", "max_iters"))
def _j_path_advance(lat, demand, link_mask, carry, tol, paths, *, marginal, budget, max_iters):
    fn = functools.partial(_path_advance, marginal=marginal, budget=budget, max_iters=max_iters)
    return _V(fn, in_axes=(0, 0, 0, 0, 0, None))(lat, demand, link_mask, carry, tol, paths)


@functools.partial(jax.jit, static_argnames=("marginal", "topo"))
def _j_path_check(lat, demand, link_mask, carry, paths, *, marginal, topo):
    fn = functools.partial(_path_check, marginal=marginal, topo=topo)
    return _V(fn, in_axes=(0, 0, 0, 0, None))(lat, demand, link_mask, carry, paths)


@functools.partial(jax.jit, static_argnames=("topo", "marginal"))
def _j_trees(lat, link_mask, *, topo, marginal):
    def one(lat, link_mask):
        t = _link_cost(lat, jnp.zeros_like(lat.a), marginal)
        cost = jnp.where(link_mask, t, jnp.inf)
        _, pred = graphs.shortest_paths(cost, topo.tail, topo.origins, topo.inlinks, topo.thru)
        return graphs.trace_paths(pred, topo.tail, topo.origin_index, topo.destinations)

    return _V(one)(lat, link_mask)


class _PathSet:
    """Host-side union of the paths found: flat, in the order found, each with its OD pair."""

    def __init__(self, num_pairs: int, num_links: int, topo: _Topology | None = None):
        self.index: dict[tuple[int, tuple[int, ...]], int] = {}
        self.num_pairs = num_pairs
        self.num_links = num_links
        self.topo = topo

    def _check(self, w: int, path: tuple[int, ...]) -> None:
        """A stored path must run from its pair's origin to its destination, link to link, with
        no node twice (a shortest-path tree that cycled produced walks that never touched the
        origin, reported as converged)."""
        t = self.topo
        if t is None:
            return
        o, d = int(t.origins[t.origin_index[w]]), int(t.destinations[w])
        nodes = [int(t.tail[path[0]])] + [int(t.head[e]) for e in path]
        linked = all(int(t.tail[e]) == nodes[i] for i, e in enumerate(path))
        if nodes[0] != o or nodes[-1] != d or not linked or len(set(nodes)) != len(nodes):
            raise RuntimeError(
                f"internal error: the shortest-path tree of OD pair {w} ({o} -> {d}) traced the "
                f"links {list(path)} (nodes {nodes}), not a path from {o} to {d}; no result "
                "is reported rather than a wrong one"
            )

    @property
    def size(self) -> int:
        return len(self.index)

    def add_trees(self, trees: np.ndarray) -> np.ndarray:
        """Adds the tree paths ``trees (n, W, V−1)`` (links from the destination back, −1 padded);
        returns the ``(n, W)`` flat index of each (−1 for an empty path)."""
        n, w, depth = trees.shape
        keys = np.concatenate(
            [np.broadcast_to(np.arange(w)[None, :, None], (n, w, 1)), trees], axis=-1
        ).reshape(n * w, depth + 1)
        uniq, inv = np.unique(keys, axis=0, return_inverse=True)
        flat = np.full(uniq.shape[0], -1, np.int64)
        for u, row in enumerate(uniq):
            path = tuple(int(e) for e in row[:0:-1] if e >= 0)
            if path:
                self._check(int(row[0]), path)
                flat[u] = self.index.setdefault((int(row[0]), path), len(self.index))
        return flat[inv.reshape(-1)].reshape(n, w)

    def arrays(self) -> _Paths:
        """Gather tables; every size is rounded up to a power of two (few compiled shapes)."""
        p = _bucket(self.size + 1)  # ≥ one padding slot
        group = np.zeros(p, np.int32)
        valid = np.zeros(p, bool)
        incidence = np.zeros((p, self.num_links), np.float32)
        by_pair = [[] for _ in range(self.num_pairs)]
        for (w, path), k in self.index.items():
            group[k], valid[k] = w, True
            by_pair[w].append(k)
            np.add.at(incidence[k], list(path), 1.0)
        common = np.zeros((self.num_pairs, self.num_links), np.float32)
        for w, ks in enumerate(by_pair):
            if ks:
                common[w] = np.all(incidence[ks] > 0, axis=0)
        return _Paths(
            jnp.asarray(group),
            jnp.asarray(valid),
            jnp.asarray(incidence),
            jnp.asarray(common),
        )

    def paths(self) -> tuple[tuple[int, tuple[int, ...]], ...]:
        return tuple(sorted(self.index, key=self.index.get))


def _bucket(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def _chunks(idx: np.ndarray, cap: int):
    """``idx`` in chunks of ``cap`` lanes or, for the remainder, of the smallest of ``cap / 2``,
    ``cap / 4``, ``cap / 8`` that holds it, padded by repeating the first lane (four compiled
    shapes at most; one size for all would run a few stragglers in a full-width program)."""
    ladder = [max(cap >> i, 1) for i in range(4)]
    size = next((s for s in reversed(ladder) if s >= idx.size), cap)
    for lo in range(0, idx.size, size):
        part = idx[lo : lo + size]
        yield np.concatenate([part, np.full(size - part.size, part[0], part.dtype)]), part.size


def _chunk_cap(n: int, num_paths: int, dtype) -> int:
    """Lanes per call: the backend's cap, and on a CPU few enough that a chunk's path arrays
    (8 per lane) stay near ``CPU_CHUNK_BYTES``. SiouxFalls UE, 2 048 path slots, 2-core CPU:
    4.5 instances/s in 1 024-lane chunks; 8.8/s (16 MB budget, 64 lanes), 10.3/s (4 MB, 32),
    11.0/s (2 MB, 16) and 10.4/s (1 MB, 8)."""
    from poa_jax.batching import MAX_CHUNK, MAX_CHUNK_ACCELERATOR

    cap = min(n, MAX_CHUNK.get(jax.default_backend(), MAX_CHUNK_ACCELERATOR))
    if jax.default_backend() == "cpu":
        per_lane = 8 * np.dtype(dtype).itemsize * num_paths
        cap = min(cap, max(_bucket(CPU_CHUNK_BYTES // per_lane + 1) // 2, 8))
    return cap


def _solve_paths(prep: _Prepared, *, marginal: bool, tol: float, max_iters: int) -> dict:
    from poa_jax.batching import _put, _take

    topo = prep.topo
    lat, demand, mask = prep.latency, prep.demand, prep.link_mask
    n, w = demand.shape
    pathset = _PathSet(w, topo.num_links, topo)
    flat = pathset.add_trees(np.asarray(_j_trees(lat, mask, topo=topo, marginal=marginal)))
    paths = pathset.arrays()
    x0 = np.zeros((n, paths.group.shape[0]), prep.dtype)
    rows, cols = np.nonzero(flat >= 0)
    x0[rows, flat[rows, cols]] = np.asarray(demand)[rows, cols]
    alpha = jnp.ones(n, prep.dtype)
    carry = _j_path_init(lat, demand, mask, jnp.asarray(x0), alpha, paths, marginal=marginal)
    check = functools.partial(_j_path_check, marginal=marginal, topo=topo)
    out = {
        k: np.array(v) for k, v in jax.device_get(check(lat, demand, mask, carry, paths)).items()
    }
    # The inner solver stops a little below tol so that the true gap (never below the
    # restricted one) lands under tol once the path sets are complete.
    inner = np.full(n, 0.5 * tol)
    todo = np.flatnonzero(~(out["gap"] <= tol))
    while todo.size:
        for idx, _ in _chunks(todo, _chunk_cap(n, paths.group.shape[0], prep.dtype)):
            args = _take((lat, demand, mask), idx)
            sub = _j_path_advance(
                *args, _take(carry, idx), jnp.asarray(inner[idx], prep.dtype), paths,
                marginal=marginal, budget=ROUND_ITERS, max_iters=max_iters,
            )  # fmt: skip
            res = jax.device_get(check(*args, sub, paths))
            carry = _put(carry, idx, sub)
            for k, v in res.items():
                out[k][idx] = v
        steps = np.asarray(carry.steps)
        gap = out["gap"][todo]
        # A non-finite gap or inner error (overflow) never improves and never tightens `inner`:
        # those lanes stop here, flagged, instead of looping forever.
        finite = np.isfinite(gap) & np.isfinite(np.asarray(carry.error)[todo])
        todo = todo[~(gap <= tol) & (steps[todo] < max_iters) & finite]
        if not todo.size:
            break
        before = pathset.size
        pathset.add_trees(out["tree"][todo])
        if pathset.size != before:
            new = pathset.arrays()
            x = out["x"]
            if new.group.shape[0] != x.shape[1]:
                x = np.pad(x, ((0, 0), (0, new.group.shape[0] - x.shape[1])))
            paths, old = new, carry
            # Restart from the current flows with the step size reached (added paths carry no
            # flow yet); iteration counts continue.
            carry = _j_path_init(lat, demand, mask, jnp.asarray(x), old.state.alpha, paths,
                                 marginal=marginal)  # fmt: skip
            carry = carry._replace(steps=old.steps)
            out["x"] = x
        else:
            # No new path and still above tol: the restricted problems need a tighter solve.
            err = np.asarray(carry.error)
            tight = todo[err[todo] <= inner[todo]]
            inner[tight] *= 0.1
            if np.all(inner[todo] < 1e-4 * tol):
                break
    out["steps"] = np.asarray(carry.steps)
    out["paths"] = pathset.paths()
    out["x"] = out["x"][:, : pathset.size]
    return out


# --------------------------------------------------------------------------- Frank–Wolfe


class _FWState(NamedTuple):
    f: jax.Array  # (E,) link flows
    gap: jax.Array


def _fw_step(lat, demand, link_mask, st: _FWState, *, topo: _Topology, marginal: bool):
    t = _link_cost(lat, st.f, marginal)
    cost = jnp.where(link_mask, t, jnp.inf)
    _, pred = graphs.shortest_paths(cost, topo.tail, topo.origins, topo.inlinks, topo.thru)
    y = graphs.all_or_nothing(pred, topo.tail, topo.origin_index, topo.destinations, demand,
                              topo.num_links)  # fmt: skip
    d = y - st.f

    def slope(a):
        return jnp.sum(jnp.where(link_mask, d * _link_cost(lat, st.f + a * d, marginal), 0.0))

    def bisect(_, lo_hi):
        lo, hi = lo_hi
        mid = 0.5 * (lo + hi)
        neg = slope(mid) < 0
        return jnp.where(neg, mid, lo), jnp.where(neg, hi, mid)

    lo, hi = jax.lax.fori_loop(0, 40, bisect, (jnp.zeros((), t.dtype), jnp.ones((), t.dtype)))
    alpha = jnp.where(slope(jnp.ones((), t.dtype)) <= 0, 1.0, 0.5 * (lo + hi))
    f = st.f + alpha * d
    gap = _measures(lat, demand, link_mask, f, topo, marginal)[0]
    return _FWState(f, gap), gap


@functools.partial(jax.jit, static_argnames=("topo", "marginal", "tol", "max_iters"))
def _j_fw(lat, demand, link_mask, *, topo, marginal, tol, max_iters):
    def one(lat, demand, link_mask):
        cost = jnp.where(link_mask, _link_cost(lat, jnp.zeros_like(lat.a), marginal), jnp.inf)
        _, pred = graphs.shortest_paths(cost, topo.tail, topo.origins, topo.inlinks, topo.thru)
        f0 = graphs.all_or_nothing(pred, topo.tail, topo.origin_index, topo.destinations, demand,
                                   topo.num_links)  # fmt: skip
        g0 = _measures(lat, demand, link_mask, f0, topo, marginal)[0]
        step = functools.partial(_fw_step, lat, demand, link_mask, topo=topo, marginal=marginal)
        res = loop.iterate(step, _FWState(f0, g0), tol=tol, max_steps=max_iters, error0=g0)
        gap, aec, sc, pot, over, _ = _measures(lat, demand, link_mask, res.state.f, topo, marginal)
        return dict(f=res.state.f, gap=gap, aec=aec, sc=sc, potential=pot, over=over,
                    steps=res.steps)  # fmt: skip

    return _V(one)(lat, demand, link_mask)


# --------------------------------------------------------------------------- descent


@functools.partial(jax.jit, static_argnames=("topo", "steps", "lr"))
def _j_descent(lat, demand, link_mask, paths, *, topo, steps, lr):
    def one(lat, demand, link_mask):
        flows, _, valid = _path_maps(lat, link_mask, paths)

        def sc(x):
            f = flows(x)
            return jnp.sum(jnp.where(link_mask, f * lat.value(f), 0.0))

        z0 = jnp.zeros(paths.group.shape, demand.dtype)  # uniform over the stored paths
        x, _ = ragged.minimize_on_groups(
            sc, z0, demand, paths.group, valid, optimizer=optax.adam(lr), steps=steps
        )
        f = flows(x)
        gap, aec, val, pot, over, _ = _measures(lat, demand, link_mask, f, topo, True)
        return dict(x=x, f=f, gap=gap, aec=aec, sc=val, potential=pot, over=over)

    return _V(one)(lat, demand, link_mask)


def _solve_descent(prep: _Prepared, *, tol: float, max_iters: int) -> dict:
    """The optimum by optax Adam over softmax path logits, on the path set that column
    generation builds for the marginal costs; started from the uniform split over those paths
    (not from the projection solution), so it checks the optimum's value independently."""
    ref = _solve_paths(prep, marginal=True, tol=tol, max_iters=max_iters)
    pathset = _PathSet(prep.demand.shape[1], prep.topo.num_links, prep.topo)
    for key in ref["paths"]:
        pathset.index[key] = len(pathset.index)
    paths = pathset.arrays()
    out = _j_descent(
        prep.latency, prep.demand, prep.link_mask, paths,
        topo=prep.topo, steps=DESCENT_STEPS, lr=DESCENT_LR,
    )  # fmt: skip
    out = jax.device_get(out)
    out = {k: np.asarray(v) for k, v in out.items()}
    out["x"] = out["x"][:, : pathset.size]
    out["steps"] = np.full(prep.demand.shape[0], DESCENT_STEPS, np.int32)
    out["paths"] = pathset.paths()
    return out


# --------------------------------------------------------------------------- public


def solve_graph(
    game: GraphGame,
    *,
    optimum: bool,
    tol: float | None = None,
    max_iters: int | None = None,
    method: str = "paths",
    dtype=None,
) -> GraphSolution:
    """Wardrop equilibrium (``optimum=False``) or system optimum of every graph game in a batch.

    Called by :func:`poa_jax.solve_equilibrium` / :func:`poa_jax.solve_optimum` for a
    :class:`~poa_jax.graph.GraphGame`; see the module docstring for the methods.
    """
    if method not in GRAPH_METHODS:
        raise InputError(f"method {method!r} is unknown for graph games: must be one of "
                         f"{', '.join(GRAPH_METHODS)}")  # fmt: skip
    from poa_jax.solve import _resolve

    tol, max_iters = _resolve(dtype, tol, max_iters)
    prep = prepare_graph(game, dtype)
    if method == "descent" and not optimum:
        raise InputError("method 'descent' computes optima only (solve_optimum)")
    if method == "descent":
        out = _solve_descent(prep, tol=tol, max_iters=max_iters)
        paths = out["paths"]
        x = np.asarray(out["x"])
    elif method == "paths":
        out = _solve_paths(prep, marginal=optimum, tol=tol, max_iters=max_iters)
        paths = out["paths"]
        x = np.asarray(out["x"])
    else:
        out = jax.device_get(_j_fw(prep.latency, prep.demand, prep.link_mask, topo=prep.topo,
                                   marginal=optimum, tol=tol, max_iters=max_iters))  # fmt: skip
        paths = ()
        x = np.zeros((np.shape(prep.demand)[0], 0), prep.dtype)
    shape = prep.batch_shape
    r = lambda a: np.asarray(a).reshape(shape + np.asarray(a).shape[1:])
    gap = r(out["gap"])
    status = np.where(np.isnan(gap) | np.isinf(gap), loop.NONFINITE,
                      np.where(gap <= tol, loop.CONVERGED, loop.MAX_ITERS))  # fmt: skip
    total = r(np.asarray(prep.demand).sum(-1))
    sc = r(out["sc"])
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(total > 0, sc / np.where(total > 0, total, 1), 0.0)
    return GraphSolution(
        link_flows=r(out["f"]),
        path_flows=r(x),
        paths=paths,
        social_cost=sc,
        potential=r(out["potential"]),
        mean_latency=mean,
        gap=gap,
        average_excess_cost=r(out["aec"]),
        iterations=r(out.get("steps")),
        status=status.astype(np.int32),
        converged=status == loop.CONVERGED,
        overloaded=r(out["over"]),
    )
