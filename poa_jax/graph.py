r"""Routing games on resource graphs: links with latencies, demand per origin–destination pair.

A graph game has nodes ``0..V−1`` and directed links ``e = 0..E−1`` (``tail[e] → head[e]``), each
with a latency ``t_e(f_e)`` of the family of :mod:`poa_jax.latency` in its link flow ``f_e``.
Demand ``d_w`` travels from ``origins[w]`` to ``destinations[w]`` for each OD pair
``w = 0..W−1``; a strategy is a path. With path flows ``x_π ≥ 0`` (``Σ_{π ∈ Π_w} x_π = d_w``)
the link flows are ``f = Δ x`` (``Δ`` the link–path incidence) and

    c_π(x)   = Σ_{e ∈ π} t_e(f_e)                      (path cost)
    SC(x)    = Σ_π x_π c_π = Σ_e f_e t_e(f_e)           (total travel time)
    Φ(f)     = Σ_e ∫_0^{f_e} t_e(s) ds                  (Beckmann potential)
    gap(x)   = (Σ_π x_π c_π − Σ_w d_w min_{π ∈ Π_w} c_π) / Σ_π x_π c_π
    AEC(x)   = (Σ_π x_π c_π − Σ_w d_w min_{π ∈ Π_w} c_π) / Σ_w d_w   (average excess cost)

where the minimum runs over *all* paths of the graph (a shortest-path computation), not only
the paths that carry flow. A Wardrop equilibrium has gap 0 and minimises ``Φ``; the system
optimum minimises ``SC``, i.e. is the equilibrium of the marginal link costs
``t_e(f_e) + f_e t'_e(f_e)``.

Nodes below ``first_thru_node`` are zone centroids (TNTP's ``<FIRST THRU NODE>``, 0-based here):
paths may start or end there but not pass through.

Batching: ``latency`` fields ``(..., E)``, ``demand (..., W)`` and ``link_mask (..., E)`` carry
leading batch axes; the topology (``tail``, ``head``, ``origins``, ``destinations``,
``num_nodes``, ``first_thru_node``) is shared by the batch. Different topologies are batched on
their union graph with ``link_mask`` switching links off per instance.

Parallel workers are the special case ``V = 2``: one origin, one destination, one link per
worker (:func:`from_parallel`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from jax.typing import ArrayLike

from poa_jax import tntp
from poa_jax.errors import InputError
from poa_jax.latency import Latency

__all__ = ["GraphGame", "read_tntp", "from_tntp", "write_tntp_flows"]


@dataclasses.dataclass(frozen=True)
class GraphGame:
    """A (batch of) routing game(s) on a directed graph.

    Attributes:
      tail, head: ``(E,)`` int node indices (0-based) of each link's start and end.
      latency: :class:`~poa_jax.latency.Latency`, fields ``(..., E)``, in the link flow.
      origins, destinations: ``(W,)`` int node indices of each OD pair.
      demand: ``(..., W)`` flow per OD pair, finite and ≥ 0.
      num_nodes: ``V``; every index above is below it.
      first_thru_node: nodes ``< first_thru_node`` may not be passed through (0: none).
      link_mask: ``(..., E)`` boolean, which links exist in each instance (default all).
      names: optional ``(E,)`` link labels (for tables and the TNTP writer).
    """

    tail: ArrayLike
    head: ArrayLike
    latency: Latency
    origins: ArrayLike
    destinations: ArrayLike
    demand: ArrayLike
    num_nodes: int
    first_thru_node: int = 0
    link_mask: ArrayLike = True
    names: tuple[str, ...] | None = None

    @property
    def num_links(self) -> int:
        return int(np.shape(self.tail)[0])

    @property
    def num_pairs(self) -> int:
        return int(np.shape(self.origins)[0])


# --------------------------------------------------------------------------- TNTP networks


def from_tntp(net: tntp.TNTPNetwork, trips: tntp.TNTPTrips, demand_scale: ArrayLike = 1.0):
    """A :class:`GraphGame` from parsed TNTP files (:mod:`poa_jax.tntp`).

    * Nodes and zones become 0-based; ``first_thru_node`` too.
    * The BPR time ``fft·(1 + b (f/cap)^power)`` is the latency ``a + c f^p`` with
      ``a = fft + toll_factor·toll + distance_factor·length`` (the generalised cost's fixed part),
      ``c = fft·b / cap^power`` and ``p = power``; ``power = 0`` (a constant) folds ``fft·b`` into
      ``a``. The family is convex only for ``p ≥ 1``: ``0 < power < 1`` is an error naming the
      file and line.
    * OD pairs are the entries with positive demand between different zones, sorted by
      (origin, destination) zone, whatever the order of the trips file; ``demand_scale`` (any
      shape, finite and ``>= 0``, not empty) multiplies them and becomes the batch axes.
    * A positive demand with no path between its zones is an error naming the trips file and
      line (:func:`poa_jax.tntp.check_connected`); so is a trips file whose only positive
      demand is intra-zonal (nothing to route).
    * A self-loop link row (``init node = term node``; :func:`poa_jax.tntp.read_net` reads
      them) and a BPR coefficient ``fft·b / cap^power`` that is not finite (a tiny capacity)
      are errors naming the net file and line.
    """
    scale = _demand_scale(demand_scale)
    tntp.check_connected(net, trips)
    name = Path(net.path).name

    def where(e: int) -> str:
        return f"{name}:{int(net.link_lines[e]) if net.link_lines is not None else '?'}"

    for e in range(net.num_links):
        pw = float(net.power[e])
        if 0.0 < pw < 1.0:
            raise InputError(
                f"{where(e)}: power = {pw!r}: poa_jax's latency family needs power = 0 or "
                ">= 1 (convex link costs)"
            )
    loops = np.flatnonzero(np.asarray(net.init_node) == np.asarray(net.term_node))
    if loops.size:
        e = int(loops[0])
        raise InputError(
            f"{where(e)}: link {int(net.init_node[e])} -> {int(net.term_node[e])} is a self-loop "
            "(a link from a node to itself): graph games need init node != term node"
        )
    fft, b, cap, pw = net.free_flow_time, net.b, net.capacity, net.power
    const = pw == 0
    a = fft + net.fixed_cost + np.where(const, fft * b, 0.0)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore", under="ignore"):
        c = np.where(const, 0.0, fft * b / cap ** np.where(const, 1.0, pw))
    for label, arr in (("fft + toll/distance cost", a), ("fft*b/capacity^power", c)):
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            e = int(bad[0])
            raise InputError(
                f"{where(e)}: {label} = {float(arr[e])!r} (capacity {float(cap[e])!r}, fft "
                f"{float(fft[e])!r}, b {float(b[e])!r}, power {float(pw[e])!r}): the link's "
                "latency coefficient must be finite"
            )
    lat = Latency(a=a, c=c, p=np.where(const, 1.0, pw))
    m = trips.matrix
    o, d = np.nonzero((m > 0) & ~np.eye(m.shape[0], dtype=bool))
    if o.size == 0 and np.any(m > 0):
        z = int(np.flatnonzero(np.diag(m) > 0)[0])
        lo = trips.line_of
        line = int(lo[z, z]) if lo.shape == m.shape and lo[z, z] > 0 else 0
        raise InputError(
            f"{Path(trips.path).name}{f':{line}' if line else ''}: the only positive demand is "
            f"intra-zonal (origin = destination, e.g. zone {z + 1}): there is no OD pair to route"
        )
    if o.size == 0:
        raise InputError(
            f"{Path(trips.path).name}: every demand entry is 0: there is no OD pair to route"
        )
    order = np.lexsort((d, o))
    o, d = o[order], d[order]
    return GraphGame(
        tail=(net.init_node - 1).astype(np.int64),
        head=(net.term_node - 1).astype(np.int64),
        latency=lat,
        origins=o.astype(np.int64),
        destinations=d.astype(np.int64),
        demand=scale[..., None] * m[o, d],
        num_nodes=net.num_nodes,
        first_thru_node=net.first_thru_node - 1,
        names=tuple(f"{i}->{j}" for i, j in zip(net.init_node, net.term_node, strict=True)),
    )


def _demand_scale(value) -> np.ndarray:
    """``demand_scale`` as a float array: finite, ``>= 0``, at least one entry."""
    try:
        scale = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        raise InputError(
            f"demand_scale = {value!r}: must be a number or an array of numbers"
        ) from None
    if scale.size == 0:
        raise InputError(
            f"demand_scale has shape {scale.shape}: empty batch, needs at least one instance"
        )
    bad = ~(np.isfinite(scale) & (scale >= 0))
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        where = f"[{', '.join(map(str, idx))}]" if idx else ""
        raise InputError(f"demand_scale{where} = {scale[idx].item()!r}: must be finite and >= 0")
    return scale


def read_tntp(net_path, trips_path, demand_scale: ArrayLike = 1.0) -> GraphGame:
    """Reads a TNTP net and trips file into a :class:`GraphGame` (see :func:`from_tntp`).

    Example:
      >>> import poa_jax as pj
      >>> net, trips, _ = pj.tntp.bundled("Braess-Example")
      >>> g = pj.read_tntp(net, trips)
      >>> g.num_links, g.num_pairs
      (5, 1)
    """
    return from_tntp(tntp.read_net(net_path), tntp.read_trips(trips_path), demand_scale)


def write_tntp_flows(path, game: GraphGame, link_flows: ArrayLike, instance=None) -> None:
    """Writes one instance's link flows (and link costs at them) as a TNTP flow file.

    ``instance`` picks the latency of a batched game (an index into its batch shape, an int or
    a tuple; e.g. ``cluster_game(..., demand=[100, 200])`` has latencies ``(2, E)``): it may be
    left out when the latency holds one instance.
    """
    f = np.asarray(link_flows, np.float64)
    e = game.num_links
    if f.shape != (e,):
        raise InputError(f"link_flows has shape {f.shape}: one instance's flows, ({e},), expected")
    lat = game.latency
    names = ("a", "b", "c", "p", "d", "kappa", "rho_max")
    fields = {k: np.asarray(getattr(lat, k), np.float64) for k in names}
    for k, v in fields.items():
        if v.ndim and v.shape[-1] not in (1, e):
            raise InputError(
                f"GraphGame.latency.{k} has shape {v.shape}: last axis must be E = {e} (or 1)"
            )
    try:
        batch = np.broadcast_shapes(*(v.shape[:-1] for v in fields.values() if v.ndim))
    except ValueError:
        raise InputError("GraphGame.latency: leading (batch) axes do not broadcast") from None
    if instance is None:
        if int(np.prod(batch, dtype=np.int64)) != 1:
            raise InputError(
                f"write_tntp_flows: the game's latency has batch shape {batch}: pass instance= "
                "(the index of the instance whose flows these are)"
            )
        idx = (0,) * len(batch)
    else:
        idx = (instance,) if not isinstance(instance, tuple) else instance
        ok = len(idx) == len(batch) and all(
            isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_))
            and -n <= int(i) < n
            for i, n in zip(idx, batch, strict=False)
        )  # fmt: skip
        if not ok:
            raise InputError(
                f"write_tntp_flows: instance = {instance!r}: must index the latency's batch "
                f"shape {batch} (one integer per axis)"
            )
        idx = tuple(int(i) for i in idx)
    one = [
        np.broadcast_to(np.broadcast_to(v, batch + v.shape[-1:])[idx] if v.ndim else v, f.shape)
        for v in fields.values()
    ]
    cost = np.asarray(Latency(*one).value(f))
    tail = np.asarray(game.tail) + 1
    head = np.asarray(game.head) + 1
    tntp.write_flows(path, tail, head, f, cost)
