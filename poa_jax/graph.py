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
    * OD pairs are the entries with positive demand between different zones, in file order
      (origin-major); ``demand_scale`` (any shape) multiplies them and becomes the batch axes.
    * A positive demand with no path between its zones is an error naming the trips file and
      line (:func:`poa_jax.tntp.check_connected`).
    """
    tntp.check_connected(net, trips)
    name = Path(net.path).name
    for e in range(net.num_links):
        pw = float(net.power[e])
        if 0.0 < pw < 1.0:
            line = int(net.link_lines[e]) if net.link_lines is not None else "?"
            raise InputError(
                f"{name}:{line}: power = {pw!r}: poa_jax's latency family needs power = 0 or "
                ">= 1 (convex link costs)"
            )
    fft, b, cap, pw = net.free_flow_time, net.b, net.capacity, net.power
    const = pw == 0
    a = fft + net.fixed_cost + np.where(const, fft * b, 0.0)
    c = np.where(const, 0.0, fft * b / cap ** np.where(const, 1.0, pw))
    lat = Latency(a=a, c=c, p=np.where(const, 1.0, pw))
    m = trips.matrix
    o, d = np.nonzero((m > 0) & ~np.eye(m.shape[0], dtype=bool))
    order = np.lexsort((d, o))
    o, d = o[order], d[order]
    scale = np.asarray(demand_scale, np.float64)
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


def write_tntp_flows(path, game: GraphGame, link_flows: ArrayLike) -> None:
    """Writes one instance's link flows (and link costs at them) as a TNTP flow file."""
    f = np.asarray(link_flows, np.float64)
    if f.shape != (game.num_links,):
        raise InputError(
            f"link_flows has shape {f.shape}: one instance's flows, ({game.num_links},), expected"
        )
    lat = game.latency
    fields = [np.broadcast_to(np.asarray(getattr(lat, k), np.float64), f.shape)
              for k in ("a", "b", "c", "p", "d", "kappa", "rho_max")]  # fmt: skip
    cost = np.asarray(Latency(*fields).value(f))
    tail = np.asarray(game.tail) + 1
    head = np.asarray(game.head) + 1
    tntp.write_flows(path, tail, head, f, cost)
